"""Next-best offers at request time: what the shop API's widget endpoint answers, cached.

An answer is built from

- the customer's state in the store: profile (objection, erasure), the cached top-N row of
  the live model, the order history (purchase lines, built as for a campaign run);
- the live model held in memory (item factors, item similarities, popularity: loaded once
  per process, replaced when another model goes live);
- the catalogue held in memory (stock, titles, prices);
- which list the customer gets, and the re-scoring, of ``recommender.serving`` (the rules
  the CLI applies too);
- the offer rules of ``offers`` (``sources_for`` + ``select``), the ones the campaign
  planner applies, so a widget and an e-mail offer the same items for the same rules.

Answers are cached per process, by customer and query, and dropped when what they depend on
changes — only those: the triggers of migration 0013 name, in the writing transaction, the
customers a commit touches (purchase lines, objection, erasure) and "everything" when a model
goes live, whoever writes (this API, an import, the CLI, the worker); ``store.notifications``
brings the news to every process:

- SQLite (one host): before a request is served, ``PRAGMA data_version`` says whether anything
  was committed since the last look, and only then the change log's new rows are read (one
  indexed range read shared by the requests queued meanwhile). So a purchase event is
  reflected in the very next request for that customer, in every process, and every other
  cached answer is still served as it is.
- PostgreSQL (any number of hosts): a listener thread per process receives the triggers'
  ``NOTIFY`` on commit and drops the answers named; the process that took the event drops
  them before it answers the event (:meth:`OfferService.forget`), the others as soon as the
  notification arrives (a round trip of the database's). While the listener is not connected
  nothing is served from the cache, and each (re)connection drops everything (notifications
  of the gap are lost).

The new answer — the purchase folded in by re-scoring the customer's history — is computed by
the next request for that customer in a worker thread, off the event loop, which goes on
serving cached answers meanwhile. It reads only the lines new since the customer's last
answer (``histories``: the history that answer was built on, and its repurchase intervals,
extended; read whole whenever that is not shown exact), and re-scores the customer with
numpy on the live model (one small least-squares solve and a sparse row product,
``recommender.serving``) — once for all processes: the process that re-scores hands the list
to a writer thread, which stores it (``offer_lists``) for the model and the history's line
totals it was computed from, and another process whose history read shows the same totals
(and highest line id) under the same live model takes that list instead of re-scoring (one
indexed row read; ``Tally.shared``). Only customers the rules re-score look for one; a list
that does not match (a later purchase, another model, or not written yet: the other process
asked first) is ignored and the customer re-scored here, so every answer after a purchase
reflects it in every process, as before. An objection or an erasure deletes the list in its
own transaction, and a list re-scored before either committed is not written after it
(``store.serving.share_list``). The model's ranking without the customer's items, which pads
a big buyer's short discover lists, is written to the list once the process that re-scored
computed it for an answer of its own (from the scores at hand), and the other process pads
from it rather than re-scoring; a list padded from the ranking with their items (rare: a
short mixed list) still re-scores for it. The live
model and the catalogue are looked up again every ``[api] refresh_s`` seconds in the
background (at once when a model goes live, and when a customer's cached row names a model
this process has not loaded yet). After a model went live no answer is computed from the old
generation: the request that heard it waits for a look begun after the change (a customer
without a cached row gets a list computed from the model in memory, and nothing else would
tell it is the retired one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from recocamp import metrics
from recocamp.api import histories
from recocamp.campaigns import offers
from recocamp.campaigns.segments import History
from recocamp.clock import Clock
from recocamp.domain import Item, id_forms
from recocamp.errors import ModelError
from recocamp.recommender import models as model
from recocamp.recommender import serving
from recocamp.recommender.ranking import Mode, objects_to_profiling
from recocamp.recommender.serving import Live, Personal, Ranked
from recocamp.recommender.training import popular_list
from recocamp.settings import Settings
from recocamp.store import notifications, registry, views
from recocamp.store import serving as store
from recocamp.store.engine import Connection, Engine

log = logging.getLogger(__name__)
_CACHED, _COMPUTED = (metrics.API_ANSWERS.labels(o) for o in ("cached", "computed"))
MAX_N = 50  # offers per request
PAD_CANDIDATES = 200  # model-ranked items considered when the shared lists run short
STALE_BASES = 10_000  # histories of dropped bases kept per process for the next answer
SCORES_HELD = 256  # re-scored bases per process whose scores of every item are kept


MAX_FILTERS = 100  # values of `category`, and of `exclude`, in one request (a cart's items)
CACHED_FILTERS = 20  # a query with more filter values is answered, not kept: each kept answer
# holds its query, and 100,000 of them with thousands of made-up exclusions each took ~38 GB


class Query(NamedTuple):
    """What the shop asks for: how many offers, which mode, which categories, what not.
    (A named tuple: it is built and hashed on every request.)"""

    n: int = 5
    mode: Mode = Mode.MIXED
    categories: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()

    @property
    def kept(self) -> bool:
        """Whether its answer is worth keeping (see :data:`CACHED_FILTERS`)."""
        return len(self.categories) + len(self.exclude) <= CACHED_FILTERS


@dataclass(frozen=True, slots=True)
class Answer:
    customer_id: str
    mode: Mode
    basis: str  # personal | recalculated | popular
    why: str  # personal_or_popular's reason, or "recalculated: history changed since training"
    model_version: str | None
    offers: list[offers.Offer]

    @property
    def personalised(self) -> bool:
        return self.basis != "popular"

    def document(self) -> dict[str, Any]:
        """The JSON body of the next-best-offer endpoint (``api.offers.OffersOut``)."""
        return {
            "customer_id": self.customer_id,
            "mode": self.mode.value,
            "personalised": self.personalised,
            "basis": self.basis,
            "basis_reason": self.why,
            "model_version": self.model_version,
            "items": [
                {
                    "item_id": o.item_id,
                    "title": o.title,
                    "category": o.category,
                    "price": o.price,
                    "url": o.url,
                    "image_url": o.image_url,
                    "score": round(o.score, 6),
                    "reason": o.why,
                    "source": o.source,
                }
                for o in self.offers
            ],
        }


def load_live(row: Any, settings: Settings) -> Live:
    """The live model of a registry row, loaded from its artifact directory."""
    fitted, data, _ = model.load(settings.locate(row.path), settings.recommender)
    return Live.of(row.version, fitted, data, row.data_cutoff)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What every answer of one generation shares; a new generation invalidates answers."""

    generation: int
    catalogue: dict[str, Item]
    catalogue_mark: tuple[Any, ...]
    live: Live | None
    popular: Ranked
    checked: float  # monotonic time of the last look for a new model / catalogue
    # why the model live in the registry is not loaded (its artifacts are missing or
    # damaged: popularity is served meanwhile, and /readyz says not ready); None when loaded
    load_error: str | None = None
    # the service's epoch when this look began: a snapshot older than the latest "everything
    # changed" (a model went live) is not used for a new answer (see OfferService.snapshot)
    epoch: int = 0
    # ``store.erasures_mark`` now, and when ``live`` was loaded (see :attr:`scrubbed`)
    erasures: int = 0
    loaded_erasures: int = 0
    # ``popular`` (the e-mail's list, ``top_n`` long) and more of the same ranking, up to
    # :data:`MAX_N`: it pads an answer without a personal ranking to pad from (see _select)
    more_popular: Ranked = field(default_factory=list)

    @property
    def scrubbed(self) -> bool:
        """Whether somebody was erased since ``live`` was loaded: the saved model's files no
        longer hold them, but the model in memory does, and its row for the id may be the
        erased person's (an id signed up again). Then no customer's list is taken from the
        model's own rows (``serving.personal_list``'s ``listable``) until a model is loaded
        again: re-scored from the store's history instead."""
        return self.erasures != self.loaded_erasures


@dataclass(frozen=True, slots=True)
class _Entry:
    generation: int
    body: bytes
    # a "buy again" answer names the items due at the time it was built: it holds until one
    # more falls due or two swap places (``Repurchases.changes_after``), no data change needed
    until: datetime | None = None

    def holds(self, generation: int, clock: Clock) -> bool:
        return generation == self.generation and (self.until is None or clock.now() < self.until)


@dataclass(frozen=True, slots=True)
class Basis:
    """What every answer for one customer shares, the costly part of an answer (the store's
    reads and the re-scoring of the history): computed once per change of the customer, not
    once per query (a shop asks for the home page, "new for you" and "buy again" of one
    customer, and a purchase used to recompute each from scratch). After a change, the next
    basis extends this one's history by the new lines (``histories``)."""

    generation: int
    kept: histories.Kept
    personal: Personal
    owned: frozenset[str]  # the history's items and categories (unions over every order)
    categories: frozenset[str]
    padding: dict[bool, Ranked] = field(default_factory=dict)  # see :meth:`padded`
    # the reasons worked out so far, by item (None: no bought item is like it): see :meth:`explain`
    reasons: dict[str, str | None] = field(default_factory=dict)
    # the re-scored personal list's scores of every item, for :meth:`padded`, while the
    # service holds them (a few hundred bases: one float per item each)
    held: list[np.ndarray] = field(default_factory=list)
    # the list this process shared for the other processes, until its discover padding is
    # shared too (see OfferService._share_padding)
    sharing: list[store.SharedList] = field(default_factory=list)

    @classmethod
    def of(cls, generation: int, kept: histories.Kept, personal: Personal) -> Basis:
        history, scores = kept.history, personal.scores
        held = [] if scores is None else [scores]
        personal = replace(personal, scores=None)
        return cls(generation, kept, personal, history.items, history.categories, held=held)

    @property
    def history(self) -> History:
        return self.kept.history

    def explain(self, live: Live | None, catalogue: dict[str, Item], items: list[str]) -> None:
        """Work out the reasons of these items (``serving.explained``: per item, independent of
        the others) and keep them. Only the offers chosen need one: a basis used to explain its
        whole personal list and the 200 items of a padding ranking to show five."""
        new = [item for item in dict.fromkeys(items) if item not in self.reasons]
        if not new:
            return
        found = serving.explained(live, catalogue, [[item, 0.0] for item in new], self.owned)
        self.reasons.update({item: found.get(item) for item in new})

    def padded(self, live: Live, discover: bool, half_life: float | None) -> Ranked:
        """The live model's full ranking of the history (without the customer's own items in
        discover mode), computed once per basis, from the personal list's scores where it
        was re-scored: a big buyer's short lists need it for every query. (Two threads may
        both compute it; they compute the same list.)"""
        found = self.padding.get(discover)
        if found is None:
            skip = self.owned if discover else frozenset()
            held = self.held[:1]  # re-scored for the personal list already
            scores = held[0] if held else live.scores(self.history, half_life)
            found = self.padding[discover] = live.ranked(scores, PAD_CANDIDATES, skip)
        return found


class Previous(NamedTuple):
    """What a new basis takes over from the one a change dropped (same generation): the
    history, to extend, and the offers' reasons, which hold while the customer's items do
    (``serving.explained`` reads the live model, the catalogue and the items bought, nothing
    else): a purchase of an item bought before changes none of them, so neither process
    works them out again."""

    kept: histories.Kept
    reasons: dict[str, str | None]
    owned: int  # how many items the reasons were worked out for (see OfferService.basis)


@dataclass
class _Cache:
    """Answers by customer, then query; the customer cached first is evicted first. Reads
    take no lock (a dict lookup is atomic); writes take :attr:`lock`."""

    size: int
    entries: dict[str, dict[Query, _Entry]] = field(default_factory=dict)
    bases: dict[str, Basis] = field(default_factory=dict)  # only of customers in entries
    # the histories of customers whose answers a change dropped, by generation, for their
    # next basis to extend (see :class:`Basis`); the oldest go first beyond STALE_BASES
    stale: dict[str, tuple[int, Previous]] = field(default_factory=dict)
    count: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, customer_id: str, query: Query) -> _Entry | None:
        found = self.entries.get(customer_id)
        return None if found is None else found.get(query)

    def basis(self, customer_id: str, generation: int) -> Basis | None:
        found = self.bases.get(customer_id)
        return found if found is not None and found.generation == generation else None

    def put(self, customer_id: str, query: Query, entry: _Entry) -> None:
        """Under :attr:`lock`."""
        if self.size <= 0:
            return
        while self.count >= self.size and self.entries:
            evicted = next(iter(self.entries))
            self.count -= len(self.entries.pop(evicted))
            self.bases.pop(evicted, None)
        queries = self.entries.setdefault(customer_id, {})
        self.count += query not in queries
        queries[query] = entry

    def previous(self, customer_id: str, generation: int) -> Previous | None:
        """The history (and reasons) of the basis a change dropped, if it belongs to this
        generation."""
        found = self.stale.get(customer_id)
        return found[1] if found is not None and found[0] == generation else None

    def put_basis(self, customer_id: str, basis: Basis) -> None:
        """Under :attr:`lock`, after :meth:`put` of one of the customer's answers."""
        if customer_id in self.entries:
            self.bases[customer_id] = basis
            self.stale.pop(customer_id, None)

    def forget(self, customer_id: str) -> bool:
        """Under :attr:`lock`. The customer's basis is kept aside for the next one to extend."""
        dropped = self.entries.pop(customer_id, None)
        basis = self.bases.pop(customer_id, None)
        if basis is not None and self.size > 0:
            self.stale.pop(customer_id, None)
            while len(self.stale) >= STALE_BASES:
                del self.stale[next(iter(self.stale))]
            previous = Previous(basis.kept, basis.reasons, len(basis.owned))
            self.stale[customer_id] = (basis.generation, previous)
        self.count -= len(dropped or ())
        return dropped is not None

    def clear(self) -> None:
        """Under :attr:`lock`."""
        self.entries, self.bases, self.stale, self.count = {}, {}, {}, 0


class _Reasons(Mapping[str, str]):
    """A basis' reasons as ``offers.select`` reads them, for one selection: an item whose
    reason is not worked out yet reads as none and is noted in :attr:`asked`, so that only
    the offers chosen are explained (one call for all of them; see :meth:`Basis.explain`).
    The customer's own items have none (an offer of one says "you bought this before")."""

    def __init__(self, known: dict[str, str | None], owned: frozenset[str]) -> None:
        self.known, self.owned = known, owned
        self.asked: list[str] = []

    def __getitem__(self, item: str) -> str:
        if item not in self.known:
            if item not in self.owned:
                self.asked.append(item)
            raise KeyError(item)
        found = self.known[item]
        if found is None:
            raise KeyError(item)
        return found

    def __iter__(self) -> Iterator[str]:
        return (item for item, reason in self.known.items() if reason is not None)

    def __len__(self) -> int:
        return sum(1 for reason in self.known.values() if reason is not None)


@dataclass
class Tally:
    """What this process's cache did (for tests and logs; ``/metrics`` has the totals)."""

    computed: int = 0  # answers computed, not served from the cache
    bases: int = 0  # of those, how many read and re-scored the customer's history
    extended: int = 0  # of those bases, how many read only the lines new since the last one
    heard: int = 0  # customers reported changed (the change log or the notifications)
    forgotten: int = 0  # of those, how many had cached answers the change dropped
    cleared: int = 0  # times every answer was dropped (a model went live, a reconnection, …)
    shared: int = 0  # bases whose re-scored list another process wrote (not re-scored here)
    shares: int = 0  # re-scored lists this process wrote for the others


def _reasoned(
    offer: offers.Offer,
    because: Mapping[str, str],
    catalogue: dict[str, Item],
    owned: frozenset[str],
    categories: frozenset[str],
) -> offers.Offer:
    """The offer with the reason ``offers.select`` gives it with ``because`` as it is now:
    only a personal offer of an item not bought before reads it (``offers.why``); which
    offers are chosen does not depend on it."""
    if offer.source != "personal" or offer.item_id in owned:
        return offer
    item = catalogue[offer.item_id]
    why = offers.why(item, "personal", False, because.get(offer.item_id), categories)
    return offer if why == offer.why else replace(offer, why=why)


def _alive(service: OfferService | None) -> OfferService:
    if service is None:
        raise notifications.Gone
    return service


class OfferService:
    """Next-best offers and similar items for one process (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        clock: Clock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine, self.settings, self.clock = engine, settings, clock
        self.monotonic = monotonic
        self.cache = _Cache(settings.api.response_cache_entries)
        self.tally = Tally()
        self._snapshot: Snapshot | None = None
        self._refreshing = threading.Lock()
        self._computing = threading.Lock()
        self._refresh_s = settings.api.refresh_s
        self._epoch = 0  # +1 whenever everything is dropped
        self._pending: set[str] | None = None  # changed while the one computation runs
        self._holding: deque[Basis] = deque()  # see :meth:`_hold`
        sqlite = engine.dialect.name == "sqlite"
        self._log = notifications.ChangeLog(engine) if sqlite else None
        self._seq: int | None = None  # the change log's last row read (SQLite)
        self._version_seen: int | None = None  # data_version when it was read
        self._last_reading: tuple[float, int | None] = (-math.inf, None)
        self.listener: notifications.Listener | None = None
        self._trusted = sqlite  # PostgreSQL: while the listener is connected
        # writes the lists re-scored here for the other processes, off the request path
        self._sharer = ThreadPoolExecutor(1, thread_name_prefix="recocamp-share")
        self._shared: Future[None] | None = None  # the latest write (see :meth:`flush`)

    # --- the generation: live model and catalogue ------------------------------------------

    def snapshot(self, force: bool = False) -> Snapshot:
        """The current generation; looks for a new live model or catalogue change when
        ``refresh_s`` has passed (one thread looks, the others go on with the old one). After
        "everything changed" (a model went live: :meth:`_everything`) the old generation is
        not used at all: the caller waits for a look that began after the change (the one
        :meth:`_everything` started in the background, or its own), so the first answer after
        a promote or rollback — for a customer without a cached row too, whose list is
        computed from the model in memory — comes from the new model."""
        current = self._snapshot
        stale = current is not None and current.epoch != self._epoch
        due = (
            current is None
            or force
            or stale
            or (self.monotonic() - current.checked >= self.settings.api.refresh_s)
        )
        if not due:
            assert current is not None
            return current
        wait = current is None or force or stale
        if not self._refreshing.acquire(blocking=wait):
            assert current is not None
            return current
        try:
            latest = self._snapshot
            if (
                not force
                and latest is not None
                and latest is not current
                and latest.epoch == self._epoch
            ):
                return latest  # looked at by another thread meanwhile, after the change
            self._snapshot = self._refresh(latest, self._epoch)
        finally:
            self._refreshing.release()
        return self._snapshot

    def _refresh(self, old: Snapshot | None, epoch: int) -> Snapshot:
        """A look at the registry and the catalogue, begun at ``epoch`` (read before the
        store is: a change heard during the look makes the result stale at once)."""
        with self.engine.connect() as connection:
            live_row = registry.live(connection)
            mark = store.catalogue_mark(connection)
            erasures = store.erasures_mark(connection)  # before the model's files are read
            same_model = (live_row is None and (old is None or old.live is None)) or (
                live_row is not None
                and old is not None
                and old.live is not None
                and old.live.version == live_row.version
            )
            if old is not None and same_model and old.catalogue_mark == mark:
                return replace(  # a new generation after an erasure: see ``scrubbed``
                    old,
                    generation=old.generation + (old.erasures != erasures),
                    catalogue_mark=mark,
                    checked=self.monotonic(),
                    load_error=None,
                    epoch=epoch,
                    erasures=erasures,
                )
            catalogue = views.catalogue(connection)
            top_n = self.settings.recommender.top_n
            days = self.settings.recommender.recent_popularity_days
            longer = views.recent_popular(
                connection, self.clock.now(), max(top_n, MAX_N), days=days
            )
        error, loaded = None, erasures
        if old is not None and same_model:
            live, loaded = old.live, old.loaded_erasures
        else:
            live, error = self._load(live_row, None if old is None else old.load_error)
        if live is not None and len(longer) < max(top_n, MAX_N):
            # the model stores its first top_n (``training.popular_list``): the rest from
            # the loaded model's popularity of every item, ranked the same way
            stored = {str(entry[0]) for entry in longer}
            ranking = popular_list(live.data, max(top_n, MAX_N) + len(stored))
            longer += [entry for entry in ranking if entry[0] not in stored]
            longer = longer[: max(top_n, MAX_N)]
        generation = 1 if old is None else old.generation + 1
        log.info(
            "serving generation %d: model %s, %d items",
            generation,
            live.version if live else None,
            len(catalogue),
        )
        return Snapshot(
            generation,
            catalogue,
            mark,
            live,
            longer[:top_n],
            self.monotonic(),
            error,
            epoch,
            erasures,
            loaded,
            longer,
        )

    def _load(self, row: Any, failed: str | None) -> tuple[Live | None, str | None]:
        """The live model, or None and why it cannot be loaded. A model that failed is
        tried again at every look (its files may be restored); the error is logged when it
        is new (``failed``: the last look's), not every ``refresh_s``."""
        if row is None:
            return None, None
        started = time.perf_counter()
        try:
            live = load_live(row, self.settings)
        except ModelError as exc:
            error = f"the live model {row.version} cannot be loaded: {exc}"
            if error != failed:
                log.error("%s; serving popularity", error)
            return None, error
        log.info("loaded model %s in %.2fs", row.version, time.perf_counter() - started)
        return live, None

    # --- what changed: dropping the answers it touches ---------------------------------------

    def catch_up(self, entered: float = math.inf) -> None:
        """SQLite: drop the answers of whatever was committed before a request that arrived
        by ``entered`` (``time.perf_counter``; ``lean.ENTERED``). ``PRAGMA data_version`` says
        whether anything was committed since the last look; only then are the change log's
        new rows read. A reading taken after the request arrived is good for it too (every
        commit its client could know of finished before it arrived), so requests queued on a
        busy process share one: ``recocamp serve`` stamps a request as it parses it
        (``api.protocol``), and the requests read in one pass of the event loop share the
        next pass's first look (one look a request cost ~13 µs of the loop's CPU). Call it
        on one thread (the event loop): the log's connection is its own."""
        if self._log is None or entered <= self._last_reading[0]:
            return
        taken_at = time.perf_counter()
        version = self._log.data_version()
        if self._seq is None:  # the first look: start after the newest row
            self._seq = self._log.last()
            self._everything()
        elif version != self._version_seen:
            self._seq, changed = self._log.since(self._seq)
            if changed is None:
                self._everything()
            else:
                self.forget(changed)
        self._version_seen = version
        self._last_reading = (taken_at, version)

    def forget(self, customer_ids: Iterable[str]) -> None:
        """Drop the cached answers of these customers (their data changed); the answer being
        computed for one of them now is not cached either."""
        with self.cache.lock:
            for customer_id in customer_ids:
                self.tally.forgotten += self.cache.forget(customer_id)
                self.tally.heard += 1  # last: a test waiting for it sees the rest done
                if self._pending is not None:
                    self._pending.add(customer_id)

    def _everything(self, refresh: bool = True) -> None:
        """Drop every answer (a model went live, notifications were lost) and look for a new
        model in the background (``refresh``)."""
        with self.cache.lock:
            self.cache.clear()
            self._epoch += 1
            self.tally.cleared += 1
        if refresh and self._snapshot is not None:
            self._refresh_soon(force=True)

    def _changed(self, customer_ids: notifications.Changed) -> None:
        """The listener's report (PostgreSQL)."""
        if customer_ids is None:
            self._everything()
        else:
            self.forget(customer_ids)

    def _connected(self, connected: bool) -> None:
        """The listener (re)connected or lost its connection: what was cached before may have
        missed notifications, and nothing is served from the cache while it is away. Trusted
        only once the cache is cleared (and distrusted before): trusted first, an answer
        computed while it was away could be cached under the old epoch in between."""
        if not connected:
            self._trusted = False
        self._everything(refresh=connected)
        if connected:
            self._trusted = True

    def start(self) -> None:
        """PostgreSQL: start listening for changes (once; the first lookup does it too)."""
        if self._log is None and self.listener is None:
            me = weakref.ref(self)  # the listener stops once this service is gone

            def changed(customer_ids: notifications.Changed) -> None:
                _alive(me())._changed(customer_ids)

            def connected(up: bool) -> None:
                _alive(me())._connected(up)

            self.listener = notifications.Listener(self.engine, changed, connected)
            self.listener.start()

    @property
    def trusted(self) -> bool:
        """Whether cached answers may be served: always on SQLite; on PostgreSQL while the
        listener is connected."""
        return self._trusted

    def close(self) -> None:
        if self.listener is not None:
            self.listener.stop()
        self._sharer.shutdown(wait=True)
        if self._log is not None:  # its connection is held out of the pool: dispose skips it
            self._log.close()

    def flush(self) -> None:
        """Wait for the re-scored lists handed to the writer so far to be written."""
        pending = self._shared
        if pending is not None:
            pending.result()

    # --- serving ---------------------------------------------------------------------------------

    def lookup(self, customer_id: str, query: Query, entered: float = math.inf) -> bytes | None:
        """The cached answer's JSON, or None: compute it with :meth:`respond`. ``entered``:
        when the request entered the app (see :meth:`catch_up`). Cheap: call it on the event
        loop itself."""
        snapshot = self._snapshot
        if snapshot is not None and self.monotonic() - snapshot.checked >= self._refresh_s:
            self._refresh_soon()
        if self._log is not None:
            if entered > self._last_reading[0]:  # catch_up's own test, without the call
                self.catch_up(entered)
        elif self.listener is None:
            self.start()
        entry = self.cache.get(customer_id, query)
        if (
            entry is not None
            and snapshot is not None
            and entry.generation == snapshot.generation
            and (entry.until is None or self.clock.now() < entry.until)  # _Entry.holds, inlined:
            and self._trusted  # the hot path of every cached answer
        ):
            _CACHED.inc()
            return entry.body
        _COMPUTED.inc()
        return None

    def respond(self, customer_id: str, query: Query) -> bytes:
        """Compute, cache and return the answer's JSON (blocking: run it in a worker thread).
        One computation at a time per process: the threads that wait hold no GIL, so the event
        loop keeps serving cached answers at full speed while misses queue (and a key asked
        for twice meanwhile is computed once). An answer is not cached when its customer's
        data changed, or everything was dropped, while it was computed: it may predate it; nor
        when the history left out a line dated after ``now`` (see :class:`histories.Kept`)."""
        with self._computing:
            entry = self.cache.get(customer_id, query)
            snapshot = self.snapshot()
            if entry is not None and entry.holds(snapshot.generation, self.clock) and self._trusted:
                return entry.body  # computed by the request before this one
            with self.cache.lock:
                epoch, self._pending = self._epoch, set()
            basis = previous = None
            if self._trusted:
                basis = self.cache.basis(customer_id, snapshot.generation)
                previous = self.cache.previous(customer_id, snapshot.generation)
            try:
                body, basis, until = self._compute(customer_id, query, snapshot, basis, previous)
            finally:
                with self.cache.lock:
                    pending, self._pending = self._pending, None
            with self.cache.lock:
                fresh = epoch == self._epoch and customer_id not in pending
                # a history that left out a line dated past ``now`` (an order's clock a
                # little ahead) is wrong once that time comes, and no change would drop it
                if self._trusted and fresh and query.kept and basis.kept.complete:
                    self.cache.put(customer_id, query, _Entry(basis.generation, body, until))
                    self.cache.put_basis(customer_id, basis)
            self.tally.computed += 1
        return body

    def _compute(
        self,
        customer_id: str,
        query: Query,
        snapshot: Snapshot,
        basis: Basis | None,
        previous: Previous | None = None,
    ) -> tuple[bytes, Basis, datetime | None]:
        """The answer's JSON, the basis it was built on (``basis`` reused if given, else
        a new one, extending ``previous`` where it can) and when the answer stops holding
        with no change of data (None: never)."""
        if basis is None:
            basis = self.basis(customer_id, snapshot, previous)
            self.tally.bases += 1
        model_version = basis.personal.model_version
        if (
            model_version is not None
            and snapshot.live is not None
            and (model_version != snapshot.live.version)
        ):
            snapshot = self.snapshot(force=True)  # a new model went live: load it now
            basis = self.basis(customer_id, snapshot)
        now = self.clock.now()
        answer = self._answer(customer_id, query, snapshot, basis, now)
        if basis.sharing and True in basis.padding:
            self._share_padding(customer_id, basis)
        until = None
        if query.mode is Mode.REPLENISH:
            until = basis.kept.repurchases().changes_after(now)
        return json.dumps(answer.document(), separators=(",", ":")).encode(), basis, until

    def _refresh_soon(self, force: bool = False) -> None:
        """Look for a new model or catalogue in the background, without delaying requests."""
        if self._refreshing.locked():
            return
        threading.Thread(
            target=self._refresh_quietly, args=(force,), name="recocamp-refresh", daemon=True
        ).start()

    def _refresh_quietly(self, force: bool) -> None:
        """A background look that fails (the database is away) is logged, not raised: the
        old generation goes on serving and the next request looks again."""
        try:
            self.snapshot(force)
        except Exception:
            log.warning("serving: could not look for a new model or catalogue", exc_info=True)

    # --- the answer ------------------------------------------------------------------------------

    def answer(self, customer_id: str, query: Query, snapshot: Snapshot | None = None) -> Answer:
        """The next-best offers for one customer (see the module docstring), uncached."""
        snapshot = snapshot or self.snapshot()
        basis = self.basis(customer_id, snapshot)
        return self._answer(customer_id, query, snapshot, basis, self.clock.now())

    def basis(
        self, customer_id: str, snapshot: Snapshot, previous: Previous | None = None
    ) -> Basis:
        """The customer's history and personal list, read and re-scored now; the history
        extends that of ``previous`` (read with this generation's catalogue) by the lines new
        since, where that is shown to give the whole history (``histories.read``), and the
        basis takes over its reasons where the customer's items are the same."""
        live = snapshot.live
        with self.engine.connect() as connection:
            flags = store.profiling_flags(connection, customer_id)
            row = registry.cached(connection, customer_id)
            kept, extended = histories.read(
                connection,
                customer_id,
                self.clock.now(),
                snapshot.catalogue,
                None if previous is None else previous.kept,
            )
            objected = objects_to_profiling(flags)
            sharable = (
                live is not None
                and not objected
                and kept.complete
                and (row is None or live.changed(customer_id, kept.history))
            )
            shared = self._shared_list(connection, customer_id, live, kept) if sharable else None
        self.tally.extended += extended
        history = kept.history
        cached = None if row is None else serving.Cached(row.items, str(row.model_version))
        known = flags is not None or cached is not None or history.count > 0
        recommender = self.settings.recommender
        personal = serving.personal_list(
            live,
            history,
            cached,
            customer_id=customer_id,
            objected=objected,
            known=known,
            top_n=recommender.top_n,
            half_life=recommender.time_decay_half_life_days,
            unloadable=snapshot.load_error is not None,
            rescored=None if shared is None else shared.items,
            listable=not snapshot.scrubbed,
        )
        basis = Basis.of(snapshot.generation, kept, personal)
        if extended and previous is not None and previous.owned == len(basis.owned):
            # an extended history holds every item of the one it extends: the same items
            basis.reasons.update(previous.reasons)  # see :class:`Previous`
        if shared is not None and personal.basis == "recalculated":
            self.tally.shared += 1
            if shared.padding is not None:  # re-scored for this very history: see _share
                basis.padding[True] = shared.padding
        elif sharable and basis.held and live is not None:
            self._share(customer_id, live, basis)
        if basis.held:
            self._hold(basis)
        return basis

    @property
    def _shaped_by(self) -> str:
        """The settings that shape a re-scored list besides the model (its length, the time
        decay, the padding's length): processes configured differently during a rolling
        change share no list."""
        recommender = self.settings.recommender
        half_life = recommender.time_decay_half_life_days
        return f"top_n={recommender.top_n} half_life={half_life} padding={PAD_CANDIDATES}"

    def _shared_list(
        self, connection: Connection, customer_id: str, live: Live | None, kept: histories.Kept
    ) -> store.SharedList | None:
        """The list another process re-scored for this model and this very history (the
        same line totals and highest id), or None: re-score here."""
        if live is None:
            return None
        identity = [live.version, self._shaped_by, kept.lines, kept.id_sum, kept.last_id]
        return store.shared_list(connection, customer_id, identity)

    def _share(self, customer_id: str, live: Live, basis: Basis) -> None:
        """Hand the list re-scored here to the writer thread, for the other processes: the
        answer does not wait for the write (nor fail with it)."""
        kept, items = basis.kept, basis.personal.items or []
        shared = store.SharedList(
            live.version,
            self._shaped_by,
            kept.lines,
            kept.id_sum,
            kept.last_id,
            [(str(item), float(score)) for item, score in items],
        )
        basis.sharing.append(shared)
        self._submit(customer_id, shared, True)

    def _share_padding(self, customer_id: str, basis: Basis) -> None:
        """The shared list again, with the ranking that pads a short discover list
        (``Basis.padded``), once this process computed it from the scores at hand: the other
        process pads from it rather than re-scoring the customer for their "new for you".
        Written when it is needed here, not with the list: most customers never need it."""
        with contextlib.suppress(IndexError):  # two threads: shared once
            shared = basis.sharing.pop()
            padding = [(str(item), float(score)) for item, score in basis.padding[True]]
            self._submit(customer_id, shared._replace(padding=padding), False)

    def _submit(self, customer_id: str, shared: store.SharedList, new: bool) -> None:
        with contextlib.suppress(RuntimeError):  # closed: nobody left to share with
            self._shared = self._sharer.submit(self._write_share, customer_id, shared, new)

    def _write_share(self, customer_id: str, shared: store.SharedList, new: bool = True) -> None:
        """``new``: a list, counted in ``tally.shares`` (else a list's padding, written later)."""
        try:
            with self.engine.begin() as connection:
                written = store.share_list(connection, customer_id, shared, self.clock.now())
        except Exception:
            log.warning("serving: could not share a re-scored list", exc_info=True)
            return
        self.tally.shares += written and new

    def _hold(self, basis: Basis) -> None:
        """Keep the basis' scores while it is among the SCORES_HELD latest re-scored."""
        with self.cache.lock:
            self._holding.append(basis)
            if len(self._holding) > SCORES_HELD:
                self._holding.popleft().held.clear()

    def _answer(
        self, customer_id: str, query: Query, snapshot: Snapshot, basis: Basis, now: datetime
    ) -> Answer:
        personal = basis.personal
        chosen = self._select(snapshot, query, basis, now)
        said, why = personal.basis, personal.why
        if said != "popular" and chosen and all(o.source == "popular" for o in chosen):
            # the rules left nothing of the customer's own lists (discover mode over a list
            # they bought, the request's filters): the answer is the popularity list's, and
            # "personalised" over the shop's best sellers was a false label
            said, why = "popular", f"popular: nothing of the {said} list fits the request"
        return Answer(customer_id, query.mode, said, why, personal.model_version, chosen)

    def _select(
        self, snapshot: Snapshot, query: Query, basis: Basis, now: datetime
    ) -> list[offers.Offer]:
        """The shared offer rules over the planner's candidate lists; where they leave fewer
        than ``n`` offers (a big buyer in discover mode owns every cached and popular item),
        the live model's full ranking of the customer's history pads the list, after the
        items an e-mail would have offered (popularity past ``top_n`` without one:
        :meth:`_padding`)."""
        personal, categories = basis.personal, basis.categories
        live, owned, ranked = snapshot.live, basis.owned, personal.items
        because = _Reasons(basis.reasons, owned)
        due = basis.kept.repurchases().due(now) if query.mode is Mode.REPLENISH else []
        sources = offers.sources_for(query.mode, ranked, snapshot.popular, owned, due, because)
        rules = offers.Rules(
            mode=query.mode,
            count=query.n,
            categories=query.categories,
            exclude_items=query.exclude,
        )
        catalogue = snapshot.catalogue
        returned = basis.history.returned  # offered in no mode: see offers.select
        chosen = offers.select(sources, catalogue, rules, owned, categories, returned)
        if len(chosen) < query.n:
            padding = self._padding(snapshot, query, basis, because)
            # the selection over the sources and the padding after them: every source was
            # read to its end, so it goes on over the padding's items not in any of them
            seen = {str(entry[0]) for source in sources for entry in source.ranked}
            rest = [entry for entry in padding.ranked if str(entry[0]) not in seen]
            more = replace(rules, count=query.n - len(chosen))
            padding = replace(padding, ranked=rest)
            chosen += offers.select([padding], catalogue, more, owned, categories, returned)
        if because.asked:  # the same offers, now with the reasons they lacked
            basis.explain(live, catalogue, because.asked)
            chosen = [_reasoned(o, because, catalogue, owned, categories) for o in chosen]
        return chosen

    def _padding(
        self, snapshot: Snapshot, query: Query, basis: Basis, because: _Reasons
    ) -> offers.Candidates:
        """What pads an answer the shared lists leave short: the live model's full ranking
        of a personal customer's history, else (an unknown, new or objecting customer,
        popularity only) recent popularity past the ``top_n`` an e-mail offers, so that
        ``n`` up to :data:`MAX_N` is answered in full either way: it was capped at
        ``top_n`` without a word."""
        live = snapshot.live
        if basis.personal.items is not None and live is not None and basis.history.count:
            discover = query.mode is Mode.DISCOVER
            half_life = self.settings.recommender.time_decay_half_life_days
            return offers.Candidates(basis.padded(live, discover, half_life), "personal", because)
        return offers.Candidates(snapshot.more_popular, "popular")

    # --- similar items -----------------------------------------------------------------------

    def stored_id(self, customer_id: str) -> str:
        """The form the store holds a composed customer id in (``registry.stored_id``)."""
        with self.engine.connect() as connection:
            return registry.stored_id(connection, customer_id)

    def similar(self, item_id: str, n: int) -> tuple[str, list[tuple[Item, float]]] | None:
        """In-stock items most like ``item_id`` per the live model: ``(version, items)``;
        None when no model is live or the model does not know the item. ``item_id`` is
        composed (``api.lean.PathId``); a model learnt from lines that versions before the
        API composed ids stored decomposed knows that form (tried next)."""
        snapshot = self.snapshot()
        live = snapshot.live
        if live is None:
            return None
        if item_id not in live.columns:
            known = [form for form in id_forms((item_id,)) if form in live.columns]
            if not known:
                return None
            item_id = known[0]
        pool = live.similar(item_id, offers.similar_pool(n))
        return live.version, offers.first_offerable(pool, snapshot.catalogue, n, item_id)

    def model_version(self) -> str | None:
        row = self.snapshot().live
        return row.version if row is not None else None

    def ready(self) -> bool:
        return self._snapshot is not None
