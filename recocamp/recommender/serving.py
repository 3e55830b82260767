"""Which list a customer gets at request time, and the re-scoring behind it: pure rules.

The offer API (``api.offer_cache``) reads a customer's state from the store and holds the
live model in memory; the decisions it makes from them live here, values in and values out,
so the CLI and the API apply one rule:

- customers who objected to profiling (or were erased) get the recent-popularity list only
  (``ranking.objects_to_profiling``, then ``ranking.personal_or_popular`` for the reason);
- a customer who bought something the model did not learn (since its data cutoff, or dated
  before it but stored after the training read the lines: :meth:`Live.changed`), or who has
  a history but no cached list (new, or objection withdrawn), is re-scored now from their
  history
  (:meth:`Live.rescore`: implicit's ``recalculate_user`` for the factors, the hybrid's
  own-items and kNN parts from the new row);
- a customer the model was trained on who has no cached list because they were not active
  within ``cache_active_days`` of the data cutoff gets the list the cache would have held,
  computed now (:meth:`Live.listed`, the same computation as the cache's);
- everybody else gets the cached list; unknown customers and customers without a history
  get recent popularity.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np

from recocamp.domain import Item, composed
from recocamp.recommender import models as model
from recocamp.recommender.matrix import TrainingData
from recocamp.recommender.ranking import Recommender, personal_or_popular, ranked_lists

Ranked = Sequence[Sequence[Any]]  # [[item_id, score], …], best first: the cached top-N's
# shape; a list computed here holds (item_id, score) tuples (see :meth:`Live.ranked`)


class Bought(Protocol):
    """One order as the rules read it (``campaigns.segments.Order`` is one)."""

    @property
    def at(self) -> datetime: ...

    @property
    def items(self) -> frozenset[str]: ...


class Purchases(Protocol):
    """A customer's order history as the rules read it (``campaigns.segments.History``)."""

    @property
    def orders(self) -> Sequence[Bought]: ...

    @property
    def count(self) -> int: ...

    @property
    def last_at(self) -> datetime | None: ...

    @property
    def returned(self) -> frozenset[str]:
        """Items returned in full: in no order of ``orders``, though the model may have
        learnt their purchase."""
        ...


@dataclass(frozen=True, slots=True)
class Cached:
    """A customer's row of the live model's cached top-N."""

    items: Ranked
    model_version: str


@dataclass(frozen=True, slots=True)
class Live:
    """The live model in memory: what request-time scoring and explanations need."""

    version: str
    fitted: Recommender
    data: TrainingData
    columns: dict[str, int]
    data_cutoff: datetime

    @classmethod
    def of(cls, version: str, fitted: Recommender, data: TrainingData, cutoff: datetime) -> Live:
        """The live model of a loaded artifact (the id↔column map is built once, here)."""
        model.prepare_to_serve(fitted)
        return cls(version, fitted, data, model.item_columns(data), cutoff)

    def rescore(
        self,
        history: Purchases,
        top_n: int,
        half_life: float | None,
        skip: frozenset[str] = frozenset(),
    ) -> Ranked:
        """A fresh personal top-N (mixed mode, without ``skip``) from the current history."""
        return self.ranked(self.scores(history, half_life), top_n, skip)

    def scores(self, history: Purchases, half_life: float | None) -> np.ndarray:
        """Every item's score from the current history (``models.rescore``): the history's
        items as model columns, one order at a time (a big buyer has thousands of lines)."""
        columns = self.columns
        codes: list[int] = []
        numbers: list[int] = []
        times: list[float] = []
        for number, order in enumerate(history.orders):
            found = [column_of(columns, item) for item in order.items]
            known = [column for column in found if column is not None]
            codes += known
            numbers += [number] * len(known)
            times += [order.at.timestamp()] * len(known)
        rows = model.event_rows(
            self.data,
            np.array(codes, dtype=np.int64),
            np.array(numbers),
            np.array(times),
            half_life,
        )
        return np.asarray(model.rescore(self.fitted, self.data, rows), dtype=np.float64)

    def ranked(self, scores: np.ndarray, top_n: int, skip: frozenset[str] = frozenset()) -> Ranked:
        """The top-N of :meth:`scores` without ``skip`` (``scores`` is left as it is)."""
        if skip:  # the columns looked up at C speed: a wholesale buyer owns thousands
            scores = scores.copy()
            columns = self.columns
            found = [c for c in (column_of(columns, item) for item in skip) if c is not None]
            scores[np.array(found, dtype=np.int64)] = -np.inf
        order = best_first(scores, top_n)
        values = scores[order]
        finite = np.isfinite(values)
        # whole arrays to Python values at once: element by element, numpy's scalars cost
        # more than the sort (a padding ranking has 200 entries, computed per basis)
        # tuples, not lists: a tuple of a string and a float leaves the garbage collector's
        # books at its first collection, and a serving process keeps hundreds of thousands
        # of these (a personal list and a padding ranking per cached customer); every full
        # collection walks the objects it tracks, holding the interpreter lock meanwhile
        items = self.data.items[order[finite]].tolist()
        return [
            (str(item), round(value, 6))
            for item, value in zip(items, values[finite].tolist(), strict=True)
        ]

    def changed(self, customer_id: str, history: Purchases) -> bool:
        """Whether ``history`` holds purchases this model did not learn: an order at or after
        its data cutoff, or one dated before it but stored after the training read the lines
        (yesterday's orders imported in the morning, an event retried after an outage). The
        latter is told by the history's (order, item) pairs before the cutoff, of the items
        the model has (not service items, nor items it never saw: they change no score),
        against the sum of the customer's row of distinct-order counts, which counts the same
        pairs: orders
        are stored whole, so a late one adds pairs (fewer pairs are lines taken away, as an
        erasure's unlinking does: nothing bought); the pairs of items returned in full
        (``returned``, left out of the history's orders) are taken off the row's sum. A
        customer the model does not hold has no row to compare (the rules re-score them as
        not cached)."""
        row = int(self.data.rows_of(np.array([customer_id]))[0])
        return self._changed(row, history)

    def changed_many(
        self, customer_ids: Sequence[str], histories: Sequence[Purchases]
    ) -> list[bool]:
        """:meth:`changed` of many customers, their rows found in one search: a campaign's
        snapshot asks it of every buyer (one at a time, the search cost ~50 µs of the ~55
        each: a minute at a million)."""
        if not customer_ids:
            return []
        rows = self.data.rows_of(np.array(customer_ids, dtype=str)).tolist()
        return [self._changed(row, history) for row, history in zip(rows, histories, strict=True)]

    def _changed(self, row: int, history: Purchases) -> bool:
        """:meth:`changed` of the customer of ``row`` (-1: one the model does not hold)."""
        cutoff = self.data_cutoff
        if history.last_at is not None and history.last_at >= cutoff:
            return True
        if row < 0:
            return False
        orders, columns = self.data.orders, self.columns
        start, end = int(orders.indptr[row]), int(orders.indptr[row + 1])
        learnt = round(float(orders.data[start:end].sum()))
        if history.returned:  # their orders were learnt, but are in no order of the history
            gone = [c for c in (column_of(columns, i) for i in history.returned) if c is not None]
            if gone:  # the row's own slice: indexing the matrix cost ~300 µs
                held = np.isin(orders.indices[start:end], gone)
                learnt -= round(float(orders.data[start:end][held].sum()))
        before = [order.items for order in history.orders if order.at < cutoff]
        if sum(map(len, before)) <= learnt:  # the common case, without a look-up per item
            return False
        known = (column_of(columns, item) is not None for items in before for item in items)
        return sum(known) > learnt

    def listed(self, customer_id: str, top_n: int) -> list[list[Any]] | None:
        """The customer's top-N exactly as the cache holds it for the customers it keeps
        (None for a customer the model was not trained on)."""
        row = int(self.data.rows_of(np.array([customer_id]))[0])
        if row < 0:
            return None
        return next(ranked_lists(self.fitted, self.data, np.array([row]), top_n))[1]

    def because(self, bought: frozenset[str], targets: list[str]) -> dict[str, str]:
        return model.because(self.fitted, self.data, self.columns, bought, targets)

    def similar(self, item_id: str, n: int) -> list[tuple[str, float]]:
        return model.similar(self.fitted, self.data, item_id, n)


def column_of(columns: dict[str, int], item: str) -> int | None:
    """``item``'s column in a live model, None where it has none. A history read from the
    store names an item as its lines were stored, decomposed by an older version
    (``To`` + U+0308 ``pfchen``) where training learnt it composed (``training.sorted_ids``):
    such an id is looked up composed too, so the old lines count and an item returned in
    full under the old form is still left out. The other way round too: a model learnt
    before migration 0023 composed the stored ids names an item stored in one form only
    decomposed, and the lines now name it composed (looked up decomposed), until the next
    training."""
    found = columns.get(item)
    if found is None and not item.isascii():
        found = columns.get(composed(item))
        if found is None:
            found = columns.get(unicodedata.normalize("NFD", item))
    return found


def best_first(scores: np.ndarray, top_n: int) -> np.ndarray:
    """``np.lexsort((np.arange(len(scores)), -scores))[:top_n]``: the positions of the
    ``top_n`` highest scores, ties by position, NaN last. The full sort of every item cost
    more than the rest of a ranking (0.2 ms per list, three lists per purchase event); only
    the entries at or above the ``top_n``-th value are sorted here, ties at it included, so
    the order is the same entry for entry."""
    if top_n <= 0 or len(scores) <= 4 * top_n:
        return np.lexsort((np.arange(len(scores)), -scores))[:top_n]
    negated = -scores
    threshold = negated[np.argpartition(negated, top_n - 1)[:top_n]].max()
    if np.isnan(threshold):  # fewer than top_n numbers: NaN enters the list, as in the sort
        return np.lexsort((np.arange(len(scores)), negated))[:top_n]
    candidates = np.flatnonzero(negated <= threshold)  # by position
    return candidates[np.lexsort((candidates, negated[candidates]))][:top_n]


@dataclass(frozen=True, slots=True)
class Personal:
    """Which list a customer gets: ``items`` None means recent popularity; ``why`` is the
    reason an answer shows (``personal``, ``recalculated: …`` or ``popular: …``)."""

    items: Ranked | None
    why: str
    model_version: str | None
    # every item's score where ``items`` was re-scored now (``Live.scores``), for a longer list
    scores: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def basis(self) -> str:
        """``personal``, ``recalculated`` or ``popular``."""
        return "popular" if self.items is None else self.why.split(":")[0]


def personal_list(
    live: Live | None,
    history: Purchases,
    cached: Cached | None,
    *,
    customer_id: str,
    objected: bool,
    known: bool,
    top_n: int,
    half_life: float | None,
    unloadable: bool = False,
    rescored: Ranked | None = None,
    listable: bool = True,
) -> Personal:
    """The personal list of one customer (see the module docstring), or popularity.
    ``unloadable``: ``live`` is None because the live model's artifacts cannot be loaded
    (not because no model is live yet). ``rescored``: this very history's re-scored list
    on ``live``, computed elsewhere (another serving process): taken where the rules
    re-score, instead of re-scoring (its ``scores`` are then None). ``listable``: whether
    ``live``'s own row of a trained customer may be used (not once somebody was erased
    since it was loaded: the row may be the erased person's; re-scored from ``history``)."""
    if live is None:
        why = "the live model cannot be loaded" if unloadable else "no live model yet"
        return Personal(None, f"popular: {why}", None)
    if not objected:
        changed = live.changed(customer_id, history)
        listed = None
        if listable and not changed and cached is None and history.count > 0:
            listed = live.listed(customer_id, top_n)  # outside the cache's window
        if listed is not None:
            return Personal(listed, "personal", live.version)
        if changed or (cached is None and history.count > 0):
            reason = "changed since training" if changed else "not in the cached lists"
            if rescored is not None:
                return Personal(list(rescored), f"recalculated: {reason}", live.version)
            scores = live.scores(history, half_life)
            rescored = live.ranked(scores, top_n)
            return Personal(rescored, f"recalculated: {reason}", live.version, scores)
        if cached is not None:
            return Personal(list(cached.items), "personal", cached.model_version)
    _, why = personal_or_popular(known, objected, None, [])
    return Personal(None, why, live.version)


def explained(
    live: Live | None, catalogue: dict[str, Item], ranked: Ranked, owned: frozenset[str]
) -> dict[str, str]:
    """Per new item of ``ranked``: the title of the most similar item the customer bought
    (its id where the catalogue lacks it)."""
    if not ranked or live is None or not owned:
        return {}
    targets = [str(entry[0]) for entry in ranked if str(entry[0]) not in owned]
    return {
        target: catalogue[bought].title if bought in catalogue else bought
        for target, bought in live.because(owned, targets).items()
    }
