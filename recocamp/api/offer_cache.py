"""Next-best offers at request time: what the shop API's widget endpoint answers.

An answer is built from

- the customer's state in the store: profile (objection, erasure), the cached top-N row of
  the live model, the order history (purchase lines, built as for a campaign run);
- the live model held in memory (item factors, item similarities, popularity: loaded once
  per process, replaced when another model goes live);
- the catalogue held in memory (stock, titles, prices);
- the offer rules of ``offers`` (``sources_for`` + ``select``), the ones the campaign
  planner applies, so a widget and an e-mail offer the same items for the same rules.

Which list a customer gets: customers who objected to profiling (or were erased) get the
recent-popularity list only; a customer who bought something since the model's data cutoff,
or who has a history but no cached list (new, or objection withdrawn), is re-scored now
from their history (``model.rescore``: implicit's ``recalculate_user`` for the factors, the
hybrid's own-items and kNN parts from the new row); everybody else gets the cached list;
unknown customers and customers without a history get recent popularity.

Answers are cached per process, keyed by customer and query, and *checked against the store
on every request* with a fingerprint of everything the answer depends on for that customer
(objection, erasure, the cached row's model version, the number of purchase lines), read in
one indexed statement. On SQLite the check is skipped while ``PRAGMA data_version`` says no
connection committed anything since the answer was last checked. So a purchase event, an
objection or an erasure is visible to the very next request, in every process. The live
model and the catalogue are looked up again every ``[api] refresh_s`` seconds (and at once
when a customer's cached row names a model this process has not loaded yet).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import sqlalchemy as sa

from recocamp import metrics
from recocamp.campaigns import offers, segments
from recocamp.campaigns.audience import history_of
from recocamp.campaigns.segments import History
from recocamp.clock import Clock
from recocamp.domain import Item
from recocamp.errors import ModelError
from recocamp.recommender import models as model
from recocamp.recommender.matrix import TrainingData
from recocamp.recommender.ranking import (
    Mode,
    Recommender,
    objects_to_profiling,
    personal_or_popular,
)
from recocamp.settings import Settings
from recocamp.store import registry, views
from recocamp.store.schema import customers, items, purchases, recommendations

log = logging.getLogger(__name__)
_CACHED, _CHECKED, _COMPUTED = (metrics.API_ANSWERS.labels(o) for o in ("cached", "checked",
                                                                          "computed"))  # fmt: skip
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
        """The JSON body of the next-best-offer endpoint (``api_offers.OffersOut``)."""
        return {
            "customer_id": self.customer_id, "mode": self.mode.value,
            "personalised": self.personalised, "basis": self.basis, "basis_reason": self.why,
            "model_version": self.model_version,
            "items": [{"item_id": o.item_id, "title": o.title, "category": o.category,
                       "price": o.price, "url": o.url, "image_url": o.image_url,
                       "score": round(o.score, 6), "reason": o.why, "source": o.source}
                      for o in self.offers],
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Live:
    """The live model in memory: what request-time scoring and explanations need."""

    version: str
    fitted: Recommender
    data: TrainingData
    columns: dict[str, int]
    data_cutoff: datetime

    @classmethod
    def load(cls, row: Any, settings: Settings) -> Live:
        fitted, data, _ = model.load(Path(row.path), settings.recommender)
        return cls(row.version, fitted, data, model.item_columns(data), row.data_cutoff)

    def rescore(self, history: History, top_n: int, half_life: float | None,
                skip: frozenset[str] = frozenset()) -> list[list[Any]]:  # fmt: skip
        """A fresh personal top-N (mixed mode, without ``skip``) from the current history."""
        events = [
            (item, number, order.at.timestamp())
            for number, order in enumerate(history.orders)
            for item in order.items
        ]
        rows = model.history_rows(self.data, self.columns, events, half_life)
        scores = np.asarray(model.rescore(self.fitted, self.data, rows), dtype=np.float64)
        for item in skip:
            column = self.columns.get(item)
            if column is not None:
                scores[column] = -np.inf
        order = np.lexsort((np.arange(len(scores)), -scores))[:top_n]
        return [[str(self.data.items[c]), round(float(scores[c]), 6)]
                for c in order if np.isfinite(scores[c])]  # fmt: skip

    def because(self, bought: frozenset[str], targets: list[str]) -> dict[str, str]:
        return model.because(self.fitted, self.data, self.columns, bought, targets)

    def similar(self, item_id: str, n: int) -> list[tuple[str, float]]:
        return model.similar(self.fitted, self.data, item_id, n)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What every answer of one generation shares; a new generation invalidates answers."""

    generation: int
    catalogue: dict[str, Item]
    catalogue_mark: tuple[Any, ...]
    live: Live | None
    popular: list[list[Any]]
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


def fingerprint_query() -> sa.Select[Any]:
    """Everything an answer depends on for one customer, in one indexed statement."""
    c, r, p = customers.c, recommendations.c, purchases.c
    customer = sa.bindparam("customer_id", type_=sa.String)

    def one(column: Any, table: sa.Table, where: Any) -> Any:
        return sa.select(column).select_from(table).where(where).scalar_subquery()

    return sa.select(
        one(c.objected_to_profiling, customers, c.id == customer),
        one(c.erased_at.is_not(None), customers, c.id == customer),
        one(r.model_version, recommendations, r.customer_id == customer),
        one(sa.func.count(), purchases, p.customer_id == customer),
    )


class OfferService:
    """Next-best offers and similar items for one process (see the module docstring)."""

    def __init__(self, engine: sa.Engine, settings: Settings, clock: Clock,
                 monotonic: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.engine, self.settings, self.clock = engine, settings, clock
        self.monotonic = monotonic
        self.cache = _Cache(settings.api.response_cache_entries)
        self._snapshot: Snapshot | None = None
        self._refreshing = threading.Lock()
        self._computing = threading.Lock()
        self._statement = fingerprint_query()
        self._compiled = self._statement.compile(dialect=engine.dialect)
        self._raw: Any = None  # the event loop's own SQLite connection, for the fast path
        self._refresh_s = settings.api.refresh_s
        self._pooled: Any = None
        self._cursor: Any = None  # on the checking connection, reused for data_version
        self._last_version: tuple[float, int | None] = (-math.inf, None)
        self.inline = engine.dialect.name == "sqlite"

    # --- the generation: live model and catalogue ------------------------------------------

    def snapshot(self, force: bool = False) -> Snapshot:
        """The current generation; looks for a new live model or catalogue change when
        ``refresh_s`` has passed (one thread looks, the others go on with the old one)."""
        current = self._snapshot
        due = current is None or force or (
            self.monotonic() - current.checked >= self.settings.api.refresh_s)  # fmt: skip
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
            in_stock = sa.func.sum(sa.case((items.c.in_stock, 1), else_=0))
            mark = tuple(connection.execute(sa.select(
                sa.func.count(), sa.func.max(items.c.updated_at), in_stock)).one())  # fmt: skip
            same_model = (live_row is None and (old is None or old.live is None)) or (
                live_row is not None and old is not None and old.live is not None
                and old.live.version == live_row.version)  # fmt: skip
            if old is not None and same_model and old.catalogue_mark == mark:
                return Snapshot(old.generation, old.catalogue, mark, old.live, old.popular,
                                self.monotonic())  # fmt: skip
            catalogue = views.catalogue(connection)
            popular = views.recent_popular(connection, self.clock.now(),
                                           self.settings.recommender.top_n)  # fmt: skip
        live = old.live if old is not None and same_model else self._load(live_row)
        generation = 1 if old is None else old.generation + 1
        log.info("serving generation %d: model %s, %d items", generation,
                 live.version if live else None, len(catalogue))  # fmt: skip
        return Snapshot(generation, catalogue, mark, live, popular, self.monotonic())

    def _load(self, row: Any) -> Live | None:
        if row is None:
            return None
        started = time.perf_counter()
        try:
            live = Live.load(row, self.settings)
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
        if self._cursor is None:
            self._cursor = self._connection().cursor()
        taken_at = time.perf_counter()
        value = int(self._cursor.execute("PRAGMA data_version").fetchone()[0])
        self._last_version = (taken_at, value)
        return value

    def fingerprint(self, customer_id: str) -> tuple[Any, ...]:
        if self.inline:
            return tuple(self._connection().execute(
                str(self._compiled), [customer_id] * len(self._compiled.positiontup or ())
            ).fetchone())  # fmt: skip
        with self.engine.connect() as connection:
            return tuple(connection.execute(self._statement, {"customer_id": customer_id}).one())

    def _connection(self) -> sqlite3.Connection:
        """This process's checking connection (kept out of the pool for good)."""
        if self._raw is None:
            self._pooled = self.engine.raw_connection()
            self._raw = self._pooled.driver_connection
            self._raw.isolation_level = None  # autocommit: a read never holds a transaction
        return self._raw  # type: ignore[no-any-return]

    def lookup(self, customer_id: str, query: Query, entered: float = math.inf
               ) -> tuple[bytes | None, Any]:  # fmt: skip
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
            found = self.fingerprint(customer_id)
            if found == entry.fingerprint:
                entry.data_version = version
                _CHECKED.inc()
                return entry.body, None
        else:
            found = self.fingerprint(customer_id)
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
            if found is not None and entry is not None and entry.fingerprint == found and (
                    entry.generation == snapshot.generation):  # fmt: skip
                return entry.body  # computed by the request before this one
            answer = self.answer(customer_id, query, snapshot)
            if answer.model_version is not None and snapshot.live is not None and (
                    answer.model_version != snapshot.live.version):  # fmt: skip
                snapshot = self.snapshot(force=True)  # a new model went live: load it now
                answer = self.answer(customer_id, query, snapshot)
            body = json.dumps(answer.document(), separators=(",", ":")).encode()
            if found is not None:
                self.cache.put((customer_id, query),
                               _Entry(snapshot.generation, found, version, body))  # fmt: skip
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
            person = connection.execute(
                sa.select(customers.c.objected_to_profiling, customers.c.erased_at).where(
                    customers.c.id == customer_id)).first()  # fmt: skip
            cached = registry.cached(connection, customer_id)
            orders = views.customer_orders(connection, customer_id, now)
        history = history_of(orders, snapshot.catalogue)
        objected = objects_to_profiling(person)
        known = person is not None or cached is not None or history.count > 0
        personal, why, version = self._personal(snapshot, history, cached, objected, known)
        chosen = self._select(snapshot, query, history, personal, now)
        basis = "popular" if personal is None else why.split(":")[0]
        return Answer(customer_id, query.mode, basis, why, version, chosen)

    def _personal(
        self, snapshot: Snapshot, history: History, cached: Any, objected: bool, known: bool
    ) -> tuple[list[list[Any]] | None, str, str | None]:
        """The personal list (None: popularity), the reason, and the model version."""
        live = snapshot.live
        if live is None:
            return None, "popular: no live model yet", None
        if not objected:
            changed = history.last_at is not None and history.last_at >= live.data_cutoff
            if changed or (cached is None and history.count > 0):
                top_n = self.settings.recommender.top_n
                half_life = self.settings.recommender.time_decay_half_life_days
                reason = "changed since training" if changed else "not in the cached lists"
                rescored = live.rescore(history, top_n, half_life)
                return rescored, f"recalculated: {reason}", live.version
            if cached is not None:
                return list(cached.items), "personal", str(cached.model_version)
        _, why = personal_or_popular(known, objected, None, [])
        return None, why, live.version

    def _select(self, snapshot: Snapshot, query: Query, history: History,
                personal: list[list[Any]] | None, now: datetime) -> list[offers.Offer]:  # fmt: skip
        """The shared offer rules over the planner's candidate lists; where they leave fewer
        than ``n`` offers (a big buyer in discover mode owns every cached and popular item),
        the live model's full ranking of the customer's history pads the list, after the
        items an e-mail would have offered."""
        live, owned = snapshot.live, history.items
        because = self._because(snapshot, personal or [], owned)
        due = segments.due_for_replenishment(history, now) if query.mode is Mode.REPLENISH else []
        sources = offers.sources_for(query.mode, personal, snapshot.popular, owned, due, because)
        rules = offers.Rules(mode=query.mode, count=query.n, categories=query.categories,
                             exclude_items=query.exclude)  # fmt: skip
        chosen = offers.select(sources, snapshot.catalogue, rules, owned, history.categories)
        if len(chosen) >= query.n or personal is None or live is None or history.count == 0:
            return chosen
        settings = self.settings.recommender
        ranking = live.rescore(
            history,
            PAD_CANDIDATES,
            settings.time_decay_half_life_days,
            skip=owned if query.mode is Mode.DISCOVER else frozenset(),
        )
        because = because | self._because(snapshot, ranking, owned)
        sources.append(offers.Candidates(ranking, "personal", because))
        return offers.select(sources, snapshot.catalogue, rules, owned, history.categories)

    @staticmethod
    def _because(snapshot: Snapshot, ranked: list[list[Any]], owned: frozenset[str]
                 ) -> dict[str, str]:  # fmt: skip
        """Per new item of ``ranked``: the title of the most similar item the customer bought."""
        if not ranked or snapshot.live is None or not owned:
            return {}
        targets = [str(entry[0]) for entry in ranked if str(entry[0]) not in owned]
        explained = snapshot.live.because(owned, targets)
        titles = snapshot.catalogue
        return {target: titles[bought].title if bought in titles else bought
                for target, bought in explained.items()}  # fmt: skip

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
