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

Answers are cached per process, keyed by customer and query, and *checked against the store
on every request* with a fingerprint of everything the answer depends on for that customer
(objection, erasure, the cached row's model version, the number of purchase lines), read in
one indexed statement (``store.serving``). On SQLite the check is skipped while ``PRAGMA
data_version`` says no connection committed anything since the answer was last checked. So
a purchase event, an objection or an erasure is visible to the very next request, in every
process. The live model and the catalogue are looked up again every ``[api] refresh_s``
seconds (and at once when a customer's cached row names a model this process has not
loaded yet).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

from recocamp import metrics
from recocamp.campaigns import offers, segments
from recocamp.campaigns.audience import history_of
from recocamp.campaigns.segments import History
from recocamp.clock import Clock
from recocamp.domain import Item
from recocamp.errors import ModelError
from recocamp.recommender import models as model
from recocamp.recommender import serving
from recocamp.recommender.ranking import Mode, objects_to_profiling
from recocamp.recommender.serving import Live, Personal, Ranked
from recocamp.settings import Settings
from recocamp.store import registry, views
from recocamp.store import serving as store
from recocamp.store.engine import Engine

log = logging.getLogger(__name__)
_CACHED, _CHECKED, _COMPUTED = (
    metrics.API_ANSWERS.labels(o) for o in ("cached", "checked", "computed")
)
MAX_N = 50  # offers per request
PAD_CANDIDATES = 200  # model-ranked items considered when the shared lists run short


class Query(NamedTuple):
    """What the shop asks for: how many offers, which mode, which categories, what not.
    (A named tuple: it is built and hashed on every request.)"""

    n: int = 5
    mode: Mode = Mode.MIXED
    categories: frozenset[str] = frozenset()
    exclude: frozenset[str] = frozenset()


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
    fitted, data, _ = model.load(Path(row.path), settings.recommender)
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


@dataclass(slots=True)
class _Entry:
    generation: int
    fingerprint: tuple[Any, ...]
    data_version: int | None
    body: bytes


@dataclass
class _Cache:
    """Answers by (customer, query), oldest evicted first; writes under a lock."""

    size: int
    entries: dict[tuple[str, Query], _Entry] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, key: tuple[str, Query], entry: _Entry) -> None:
        if self.size <= 0:
            return
        with self.lock:
            self.entries.pop(key, None)
            while len(self.entries) >= self.size:
                self.entries.pop(next(iter(self.entries)))
            self.entries[key] = entry


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
        self._snapshot: Snapshot | None = None
        self._refreshing = threading.Lock()
        self._computing = threading.Lock()
        self._refresh_s = settings.api.refresh_s
        self._freshness = store.Freshness(engine)
        self._last_version: tuple[float, int | None] = (-math.inf, None)
        self.inline = self._freshness.inline

    # --- the generation: live model and catalogue ------------------------------------------

    def snapshot(self, force: bool = False) -> Snapshot:
        """The current generation; looks for a new live model or catalogue change when
        ``refresh_s`` has passed (one thread looks, the others go on with the old one)."""
        current = self._snapshot
        due = (
            current is None
            or force
            or (self.monotonic() - current.checked >= self.settings.api.refresh_s)
        )
        if not due:
            assert current is not None
            return current
        if current is not None and not self._refreshing.acquire(blocking=force):
            return current
        if current is None:
            self._refreshing.acquire()
        try:
            self._snapshot = self._refresh(self._snapshot)
        finally:
            self._refreshing.release()
        return self._snapshot

    def _refresh(self, old: Snapshot | None) -> Snapshot:
        with self.engine.connect() as connection:
            live_row = registry.live(connection)
            mark = store.catalogue_mark(connection)
            same_model = (live_row is None and (old is None or old.live is None)) or (
                live_row is not None
                and old is not None
                and old.live is not None
                and old.live.version == live_row.version
            )
            if old is not None and same_model and old.catalogue_mark == mark:
                return Snapshot(
                    old.generation, old.catalogue, mark, old.live, old.popular, self.monotonic()
                )
            catalogue = views.catalogue(connection)
            popular = views.recent_popular(
                connection, self.clock.now(), self.settings.recommender.top_n
            )
        live = old.live if old is not None and same_model else self._load(live_row)
        generation = 1 if old is None else old.generation + 1
        log.info(
            "serving generation %d: model %s, %d items",
            generation,
            live.version if live else None,
            len(catalogue),
        )
        return Snapshot(generation, catalogue, mark, live, popular, self.monotonic())

    def _load(self, row: Any) -> Live | None:
        if row is None:
            return None
        started = time.perf_counter()
        try:
            live = load_live(row, self.settings)
        except ModelError:
            log.exception("cannot load the live model %s: serving popularity", row.version)
            return None
        log.info("loaded model %s in %.2fs", row.version, time.perf_counter() - started)
        return live

    # --- the per-request check ---------------------------------------------------------------

    def data_version(self, entered: float = math.inf) -> int | None:
        """SQLite's commit counter as seen by this process's checking connection.

        A reading taken after a request entered the app (``entered``, ``time.perf_counter``)
        is good for that request too: every commit its client could know of finished before
        the request arrived, hence before the reading. So requests queued on a busy process
        share one reading instead of one each (a read lock on the shared WAL index costs
        more than a cached answer)."""
        if not self.inline:
            return None
        taken_at, value = self._last_version
        if entered <= taken_at:
            return value
        taken_at = time.perf_counter()
        value = self._freshness.data_version()
        self._last_version = (taken_at, value)
        return value

    def fingerprint(self, customer_id: str) -> tuple[Any, ...]:
        return self._freshness.fingerprint(customer_id)

    def lookup(
        self, customer_id: str, query: Query, entered: float = math.inf
    ) -> tuple[bytes | None, Any]:
        """The cached answer while it is still right, else ``(None, check)`` with what
        :meth:`respond` needs; ``entered``: when the request entered the app (see
        :meth:`data_version`). Cheap: on SQLite call it on the event loop itself (its
        connection belongs to the calling thread); elsewhere in a worker thread."""
        snapshot = self._snapshot
        if snapshot is not None and self.monotonic() - snapshot.checked >= self._refresh_s:
            self._refresh_soon()
        entry = self.cache.entries.get((customer_id, query))
        version = self.data_version(entered)
        if snapshot is not None and entry is not None and entry.generation == snapshot.generation:
            if version is not None and version == entry.data_version:
                _CACHED.inc()
                return entry.body, None
            found = self._freshness.fingerprint(customer_id)
            if found == entry.fingerprint:
                entry.data_version = version
                _CHECKED.inc()
                return entry.body, None
        else:
            found = self._freshness.fingerprint(customer_id)
        _COMPUTED.inc()
        return None, (version, found)

    def respond(self, customer_id: str, query: Query, check: Any = None) -> bytes:
        """Compute, cache and return the answer's JSON; ``check`` comes from :meth:`lookup`
        (blocking: run it in a worker thread). One computation at a time per process: the
        threads that wait hold no GIL, so the event loop keeps serving cached answers at full
        speed while misses queue (and a key asked for twice meanwhile is computed once)."""
        version, found = check if check is not None else (None, None)
        with self._computing:
            entry = self.cache.entries.get((customer_id, query))
            snapshot = self.snapshot()
            if (
                found is not None
                and entry is not None
                and entry.fingerprint == found
                and (entry.generation == snapshot.generation)
            ):
                return entry.body  # computed by the request before this one
            answer = self.answer(customer_id, query, snapshot)
            if (
                answer.model_version is not None
                and snapshot.live is not None
                and (answer.model_version != snapshot.live.version)
            ):
                snapshot = self.snapshot(force=True)  # a new model went live: load it now
                answer = self.answer(customer_id, query, snapshot)
            body = json.dumps(answer.document(), separators=(",", ":")).encode()
            if found is not None:
                self.cache.put(
                    (customer_id, query), _Entry(snapshot.generation, found, version, body)
                )
        return body

    def _refresh_soon(self) -> None:
        """Look for a new model or catalogue in the background, without delaying requests."""
        if self._refreshing.locked():
            return
        threading.Thread(target=self.snapshot, name="recocamp-refresh", daemon=True).start()

    # --- the answer ------------------------------------------------------------------------------

    def answer(self, customer_id: str, query: Query, snapshot: Snapshot | None = None) -> Answer:
        """The next-best offers for one customer (see the module docstring)."""
        snapshot = snapshot or self.snapshot()
        now = self.clock.now()
        with self.engine.connect() as connection:
            flags = store.profiling_flags(connection, customer_id)
            row = registry.cached(connection, customer_id)
            orders = views.customer_orders(connection, customer_id, now)
        history = history_of(orders, snapshot.catalogue)
        cached = None if row is None else serving.Cached(row.items, str(row.model_version))
        known = flags is not None or cached is not None or history.count > 0
        recommender = self.settings.recommender
        personal = serving.personal_list(
            snapshot.live,
            history,
            cached,
            customer_id=customer_id,
            objected=objects_to_profiling(flags),
            known=known,
            top_n=recommender.top_n,
            half_life=recommender.time_decay_half_life_days,
        )
        chosen = self._select(snapshot, query, history, personal, now)
        return Answer(
            customer_id, query.mode, personal.basis, personal.why, personal.model_version, chosen
        )

    def _select(
        self, snapshot: Snapshot, query: Query, history: History, personal: Personal, now: datetime
    ) -> list[offers.Offer]:
        """The shared offer rules over the planner's candidate lists; where they leave fewer
        than ``n`` offers (a big buyer in discover mode owns every cached and popular item),
        the live model's full ranking of the customer's history pads the list, after the
        items an e-mail would have offered."""
        live, owned, ranked = snapshot.live, history.items, personal.items
        because = serving.explained(live, snapshot.catalogue, ranked or [], owned)
        due = segments.due_for_replenishment(history, now) if query.mode is Mode.REPLENISH else []
        sources = offers.sources_for(query.mode, ranked, snapshot.popular, owned, due, because)
        rules = offers.Rules(
            mode=query.mode,
            count=query.n,
            categories=query.categories,
            exclude_items=query.exclude,
        )
        chosen = offers.select(sources, snapshot.catalogue, rules, owned, history.categories)
        if len(chosen) >= query.n or ranked is None or live is None or history.count == 0:
            return chosen
        ranking = live.rescore(
            history,
            PAD_CANDIDATES,
            self.settings.recommender.time_decay_half_life_days,
            skip=owned if query.mode is Mode.DISCOVER else frozenset(),
        )
        because = because | serving.explained(live, snapshot.catalogue, ranking, owned)
        sources.append(offers.Candidates(ranking, "personal", because))
        return offers.select(sources, snapshot.catalogue, rules, owned, history.categories)

    # --- similar items -----------------------------------------------------------------------

    def similar(self, item_id: str, n: int) -> tuple[str, list[tuple[Item, float]]] | None:
        """In-stock items most like ``item_id`` per the live model: ``(version, items)``;
        None when no model is live or the model does not know the item."""
        snapshot = self.snapshot()
        live = snapshot.live
        if live is None or item_id not in live.columns:
            return None
        found: list[tuple[Item, float]] = []
        for other, score in live.similar(item_id, n * 4 + 10):
            item = snapshot.catalogue.get(other)
            if item is not None and item.in_stock and not item.is_service and other != item_id:
                found.append((item, score))
        return live.version, found[:n]

    def model_version(self) -> str | None:
        row = self.snapshot().live
        return row.version if row is not None else None

    def ready(self) -> bool:
        return self._snapshot is not None
