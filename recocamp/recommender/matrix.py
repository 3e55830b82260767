"""Purchase lines → the customer × item matrices every recommender trains on. Pure numpy/scipy.

``implicit`` works on integer indices only, so this module owns the id ↔ index maps: row
``r`` is customer ``customers[r]``, column ``c`` is item ``items[c]``.

What counts (shared/data/README.md): purchase lines of known customers (no guests, no
returns, no adjustments), no service codes, no customers who objected to profiling — the
caller's query already applies those rules; this module only encodes and weights.

Confidence (documented weighting, the one the reference ALS used): for each (customer, item),
``n`` = number of distinct orders containing the item, optionally time-decayed with a half
life (an order ``t`` days before the cutoff counts ``0.5 ** (t / half_life)``), and
``confidence = 1 + ln(1 + n)``: buying something in many orders matters, with diminishing
returns, and a single bulk order of 500 units does not dominate.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo

import numpy as np
import scipy.sparse as sp

DAY = 86400.0


def days_later(epoch: float, days: float, zone: tzinfo = UTC) -> float:
    """``epoch`` moved by ``days`` calendar days of ``zone`` (the same wall time, 23 or 25
    hours to a day that changes the clocks): a split named by a shop-local date starts and
    ends at that zone's midnight, as ``recocamp evaluate --cutoff DATE`` names it, not an
    hour off for every clock change between (``days`` × 86,400 seconds)."""
    if zone is UTC:
        return epoch + days * DAY
    return (datetime.fromtimestamp(epoch, zone) + timedelta(days=days)).timestamp()


@dataclass(frozen=True, slots=True)
class Lines:
    """Purchase lines as parallel arrays of integer codes plus the id vocabularies.

    ``customer_ids`` and ``item_ids`` are sorted, and code ``n`` means ``customer_ids[n]``,
    so code order is id order. Integer codes keep 20 M lines in a few hundred MB and make
    every ``np.unique`` a fast integer sort. ``order`` codes identify orders; ``at`` is UTC
    epoch seconds.
    """

    customer: np.ndarray
    item: np.ndarray
    order: np.ndarray
    at: np.ndarray
    customer_ids: np.ndarray
    item_ids: np.ndarray

    @classmethod
    def from_ids(
        cls, customers: np.ndarray, items: np.ndarray, orders: np.ndarray, at: np.ndarray
    ) -> Lines:
        """Encode string ids (small data, tests); the store path encodes while reading."""
        customer_ids, customer = np.unique(np.asarray(customers, dtype=str), return_inverse=True)
        item_ids, item = np.unique(np.asarray(items, dtype=str), return_inverse=True)
        order = np.unique(np.asarray(orders, dtype=str), return_inverse=True)[1]
        return cls(
            customer.astype(np.int64),
            item.astype(np.int64),
            order.astype(np.int64),
            np.asarray(at, dtype=np.float64),
            customer_ids,
            item_ids,
        )

    def __len__(self) -> int:
        return len(self.at)

    def _subset(self, keep: np.ndarray) -> Lines:
        return Lines(
            self.customer[keep],
            self.item[keep],
            self.order[keep],
            self.at[keep],
            self.customer_ids,
            self.item_ids,
        )

    def before(self, epoch: float) -> Lines:
        """The lines before ``epoch``; these lines themselves when all are (training on all
        data: no copy of every array)."""
        keep = self.at < epoch
        return self if bool(keep.all()) else self._subset(keep)

    def between(self, start: float, end: float) -> Lines:
        return self._subset((self.at >= start) & (self.at < end))


@dataclass(frozen=True, slots=True)
class TrainingData:
    """Everything the models need, computed once per training run.

    ``orders`` holds distinct-order counts (customer × item); ``confidence`` the weighted
    matrix; ``last_days`` days from a customer's last purchase of an item to the cutoff (0 where
    never bought); ``popularity`` distinct customers per item in the recent window;
    ``age_days`` days since each item's first sale.
    """

    customers: np.ndarray
    items: np.ndarray
    orders: sp.csr_matrix
    confidence: sp.csr_matrix
    last_days: sp.csr_matrix
    popularity: np.ndarray
    age_days: np.ndarray
    cutoff: float
    # The lines it was built from (all of them, a reference, not a copy): the models that
    # need the order of baskets (TIFU-KNN) read those before ``cutoff``. None once loaded
    # from saved artifacts, which keep only the matrices.
    lines: Lines | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.customers), len(self.items))

    def active_rows(self, days: float | None) -> np.ndarray:
        """Rows of the customers whose last purchase lies at most ``days`` before the cutoff
        (every row when ``days`` is None): those whose top-N is worth caching."""
        if days is None:
            return np.arange(self.shape[0])
        last = self.last_days.tocsr()
        filled = np.diff(last.indptr) > 0
        latest = np.full(self.shape[0], np.inf)
        if filled.any():
            latest[filled] = np.minimum.reduceat(last.data, last.indptr[:-1][filled])
        active: np.ndarray = np.flatnonzero(latest <= days)
        return active

    def rows_of(self, customer_ids: np.ndarray) -> np.ndarray:
        """Row index of each id, -1 for customers the data does not know."""
        position = np.searchsorted(self.customers, customer_ids)
        position = np.clip(position, 0, max(len(self.customers) - 1, 0))
        known = len(self.customers) > 0
        found = known & (self.customers[position] == customer_ids) if known else False
        return np.where(found, position, -1)


def build(
    lines: Lines,
    cutoff: float,
    *,
    popularity_days: float = 90.0,
    half_life_days: float | None = None,
) -> TrainingData:
    """Encode ids and build the matrices from lines strictly before ``cutoff`` (epoch s)."""
    source, lines = lines, lines.before(cutoff)
    customer_codes, rows = _present(lines.customer, len(lines.customer_ids))
    item_codes, cols = _present(lines.item, len(lines.item_ids))
    customers, items = lines.customer_ids[customer_codes], lines.item_ids[item_codes]
    shape = (len(customers), len(items))
    pairs = _Pairs.of(rows, cols, lines.order, shape)
    orders = pairs.matrix(pairs.orders.astype(np.float32))
    if half_life_days is None:
        confidence = pairs.matrix(pairs.orders.astype(np.float32))
    else:  # float32 sums in the order scipy adds them, as ever
        first = np.sort(pairs.first)
        at = lines.at[first]
        weight = (0.5 ** ((cutoff - at) / DAY / half_life_days)).astype(np.float32)
        confidence = _summed(rows[first], cols[first], weight, shape)
    confidence.data = (1.0 + np.log1p(confidence.data)).astype(np.float32)
    last_days = pairs.matrix(np.maximum.reduceat(lines.at[pairs.first], pairs.starts))
    # distinct customers per item in the recent window: the pairs whose latest line is in it
    since = cutoff - popularity_days * DAY
    popularity = np.bincount(last_days.indices[last_days.data >= since], minlength=shape[1])
    last_days.data = ((cutoff - last_days.data) / DAY).astype(np.float32)
    return TrainingData(
        customers=customers,
        items=items,
        orders=orders,
        confidence=confidence,
        last_days=last_days,
        popularity=popularity.astype(np.float32),
        age_days=_age_days(cols, lines.at, cutoff, len(items)),
        cutoff=cutoff,
        lines=source,
    )


@dataclass(frozen=True, slots=True)
class _Pairs:
    """The lines that count, one per (customer, item, order), grouped by (customer, item).

    ``first``: the first line (lowest index) of each (customer, item, order), sorted by
    (customer, item), then order: one sort of the lines gives every matrix, as each
    (customer, item) run is a CSR entry in row-major order (no COO → CSR conversion, no
    second sort for the latest times). ``starts``: where each pair's run begins in
    ``first``; ``orders``: the run's length (distinct orders)."""

    first: np.ndarray
    starts: np.ndarray
    orders: np.ndarray
    indptr: np.ndarray
    indices: np.ndarray
    shape: tuple[int, int]

    @classmethod
    def of(
        cls, rows: np.ndarray, cols: np.ndarray, order: np.ndarray, shape: tuple[int, int]
    ) -> _Pairs:
        pair = rows.astype(np.int64) * max(shape[1], 1) + cols.astype(np.int64)
        first = first_line_per_order_and_item(pair, np.asarray(order, dtype=np.int64))
        keys = pair[first]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else keys
        orders = np.diff(np.r_[starts, len(keys)])
        per_row = np.bincount(rows[first[starts]], minlength=shape[0])
        indptr = np.r_[0, np.cumsum(per_row)]
        return cls(first, starts, orders, indptr, cols[first[starts]], shape)

    def matrix(self, values: np.ndarray) -> sp.csr_matrix:
        """A CSR matrix with one value per pair (``values`` in pair order)."""
        matrix = sp.csr_matrix((values, self.indices, self.indptr), shape=self.shape)
        matrix.has_canonical_format = True  # sorted, one entry per (row, column)
        return matrix


def first_line_per_order_and_item(pair: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Indices of the first line of each (pair, order), sorted by pair, then order (an item
    counts once per order; the first line's time is the one used).

    One argsort of a packed (pair, order) key where it fits in int64 (a million customers ×
    50,000 items × 100,000 orders does), else a lexsort over both (1 M × 100 k × 100 M
    exceed it); either way the lowest line index of each group is taken, so the pick does
    not depend on the sort's stability. Negative order codes take the lexsort."""
    if len(pair) == 0:
        return np.zeros(0, dtype=np.int64)
    orders = int(order.max()) + 1
    packable = int(order.min()) >= 0  # codes are >= 0; a caller's may not be
    if packable and int(pair.max()) < (2**63 - 1) // orders - 1:
        key = pair * orders + order
        ranked = np.argsort(key)
        sorted_key = key[ranked]
        change = sorted_key[1:] != sorted_key[:-1]
    else:
        ranked = np.lexsort((order, pair))
        sorted_pair, sorted_order = pair[ranked], order[ranked]
        change = (sorted_pair[1:] != sorted_pair[:-1]) | (sorted_order[1:] != sorted_order[:-1])
    starts = np.flatnonzero(np.r_[True, change])
    first: np.ndarray = np.minimum.reduceat(ranked, starts)
    return first


def _summed(
    r: np.ndarray, c: np.ndarray, values: np.ndarray, shape: tuple[int, int]
) -> sp.csr_matrix:
    matrix = sp.csr_matrix((values, (r, c)), shape=shape, dtype=np.float32)
    matrix.sum_duplicates()
    return matrix


def _present(codes: np.ndarray, vocabulary: int) -> tuple[np.ndarray, np.ndarray]:
    """The codes that occur (ascending) and each line's index among them: ``np.unique``'s
    answer by counting, linear in the lines (the codes are small integers already)."""
    seen = np.bincount(codes, minlength=vocabulary) > 0
    index = np.cumsum(seen) - 1
    return np.flatnonzero(seen), index[codes].astype(np.int64)


def _age_days(cols: np.ndarray, at: np.ndarray, cutoff: float, n_items: int) -> np.ndarray:
    first = np.full(n_items, cutoff, dtype=np.float64)
    np.minimum.at(first, cols, at)
    return ((cutoff - first) / DAY).astype(np.float32)
