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

import numpy as np
import scipy.sparse as sp

DAY = 86400.0


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
        return self._subset(self.at < epoch)

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
    first = _first_line_per_order_and_item(rows, cols, lines.order)
    r, c, at = rows[first], cols[first], lines.at[first]
    weight = np.ones(len(first), dtype=np.float32)
    if half_life_days is not None:
        weight = (0.5 ** ((cutoff - at) / DAY / half_life_days)).astype(np.float32)
    orders = _summed(r, c, np.ones(len(first), dtype=np.float32), shape)
    confidence = _summed(r, c, weight, shape)
    confidence.data = (1.0 + np.log1p(confidence.data)).astype(np.float32)
    last_days = _latest(r, c, at, shape)
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


def _first_line_per_order_and_item(
    rows: np.ndarray, cols: np.ndarray, order: np.ndarray
) -> np.ndarray:
    """Indices of one line per (customer, item, order): an item counts once per order.

    A lexsort over (pair, order) rather than one packed integer key: customers × items ×
    orders can exceed int64 at real-shop sizes (1 M × 100 k × 100 M)."""
    n_items = int(cols.max()) + 1 if len(cols) else 1
    pair = rows.astype(np.int64) * n_items + cols.astype(np.int64)  # < 2**63 for any shop
    order = np.asarray(order, dtype=np.int64)
    ranked = np.lexsort((order, pair))
    sorted_pair, sorted_order = pair[ranked], order[ranked]
    first = np.ones(len(ranked), dtype=bool)
    first[1:] = (sorted_pair[1:] != sorted_pair[:-1]) | (sorted_order[1:] != sorted_order[:-1])
    picked: np.ndarray = np.sort(ranked[first])
    return picked


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


def _latest(r: np.ndarray, c: np.ndarray, at: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """The latest time per (customer, item): the entries grouped by row (duplicates kept),
    sorted within each row so equal columns are neighbours, and each run's maximum is the
    pair's latest time; cheaper than a lexsort over all lines."""
    by_row = np.argsort(r, kind="stable")
    indptr = np.r_[0, np.cumsum(np.bincount(r, minlength=shape[0]))]
    grouped = sp.csr_matrix((at[by_row], c[by_row], indptr), shape=shape)  # duplicates kept
    grouped.has_sorted_indices = False
    grouped.sort_indices()
    row_of = np.repeat(np.arange(shape[0]), np.diff(grouped.indptr))
    indices, data = grouped.indices, grouped.data
    change = (indices[1:] != indices[:-1]) | (row_of[1:] != row_of[:-1])
    starts = np.flatnonzero(np.r_[True, change]) if len(data) else np.zeros(0, dtype=np.int64)
    latest = np.maximum.reduceat(data, starts) if len(starts) else data
    return sp.csr_matrix((latest, (row_of[starts], indices[starts])), shape=shape)


def _age_days(cols: np.ndarray, at: np.ndarray, cutoff: float, n_items: int) -> np.ndarray:
    first = np.full(n_items, cutoff, dtype=np.float64)
    np.minimum.at(first, cols, at)
    return ((cutoff - first) / DAY).astype(np.float32)
