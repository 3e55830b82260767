"""Which of a customer's own items they buy again: the hybrid's replenishment order.

A plain distinct-order count ranks an item bought twice a year ago above one bought twice
last month, and a card bought once the same as a kitchen roll bought once (one is rarely
bought again, the other every month). The replenishment score is a linear blend, on each
(customer, own item) pair, of four signals that are cheap sparse operations:

- ``count``: ``ln(1 + distinct orders)`` with the item;
- ``recency``: ``ln(1 + days since the customer last bought it)`` (negative weight: stale
  items fade);
- ``propensity``: the item's smoothed repurchase rate over all customers,
  ``ln((customers with >= 2 orders + 1) / (customers + 5))``;
- ``popularity``: ``ln(1 + distinct recent customers)`` (what is selling now is rebought);
- ``month``: ``ln(1 + distinct customers in the last 30 days)`` (next to the 90-day figure:
  what is rising, e.g. a season's items, against what is fading);
- ``als`` and ``knn``: the hybrid's own normalised ALS and item-kNN scores of the item for
  this customer (stacking: how well the item fits the rest of the customer's basket, which a
  count cannot see; measured on UCI, recall@10 +0.003 at both cutoffs of the ablation).

The weights are a logistic regression of "bought again in the next ``horizon`` days" fitted
on a validation split that ends at the cutoff (:func:`fit_weights`, called by
``evaluate.tune_hybrid``), never on the test window. Within a customer only the order
matters, so the blend is scaled per row to ``(0, 1]`` (:func:`ranked`) before the hybrid adds
its repeat boost. Pure numpy/scipy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recocamp.recommender.matrix import DAY, TrainingData

SIGNALS = ("count", "recency", "propensity", "popularity", "month", "als", "knn")
MONTH_DAYS = 30.0
RIDGE = 1.0  # keeps the fit finite on tiny or separable data; negligible on thousands of pairs
NEWTON_STEPS = 25


@dataclass(frozen=True, slots=True)
class ItemSignals:
    """Per-item aggregates (they identify nobody): log repurchase propensity, log recent
    popularity, log customers of the last month."""

    propensity: np.ndarray
    popularity: np.ndarray
    month: np.ndarray

    @classmethod
    def of(cls, orders: sp.csr_matrix, popularity: np.ndarray, month: np.ndarray) -> ItemSignals:
        """From the distinct-order counts, the recent popularity and :func:`month_buyers`."""
        bought = np.asarray((orders > 0).sum(axis=0)).ravel()
        again = np.asarray((orders > 1).sum(axis=0)).ravel()
        return cls(
            np.log((again + 1.0) / (bought + 5.0)),
            np.log1p(popularity.astype(np.float64)),
            np.log1p(month.astype(np.float64)),
        )


@dataclass(frozen=True, slots=True)
class Collaborative:
    """The hybrid's per-row normalised model scores (dense rows × items, each row in [0, 1])
    that enter the blend as the ``als`` and ``knn`` signals."""

    als: np.ndarray
    knn: np.ndarray

    @classmethod
    def none(cls, shape: tuple[int, int]) -> Collaborative:
        """No model scores (the signals are 0): a blend of the history signals alone."""
        zeros = np.zeros(shape)
        return cls(zeros, zeros)


def month_buyers(data: TrainingData) -> np.ndarray:
    """Distinct customers per item (columns of ``data``) in the last :data:`MONTH_DAYS` days
    before the cutoff; zeros when the lines are gone (saved matrices only)."""
    if data.lines is None:
        return np.zeros(data.shape[1])
    lines = data.lines.between(data.cutoff - MONTH_DAYS * DAY, data.cutoff)
    column = np.zeros(len(lines.item_ids), dtype=np.int64)  # item code → column of data
    column[np.searchsorted(lines.item_ids, data.items)] = np.arange(data.shape[1])
    pairs = np.unique(lines.customer * np.int64(data.shape[1]) + column[lines.item])
    return np.bincount(pairs % data.shape[1], minlength=data.shape[1]).astype(np.float64)


def pair_signals(
    orders: sp.csr_matrix, last_days: sp.csr_matrix, items: ItemSignals, scores: Collaborative
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, column, signals)`` of every own pair of the given rows: signals is pairs × 7
    in :data:`SIGNALS` order. ``last_days`` has the pattern of ``orders`` (``matrix.build``);
    ``scores`` are dense rows × items like ``orders``."""
    owned = sp.coo_matrix(orders)
    keep = owned.data > 0
    row, col = owned.row[keep].astype(np.int64), owned.col[keep].astype(np.int64)
    last = np.asarray(sp.csr_matrix(last_days)[row, col]).ravel() if len(row) else np.zeros(0)
    signals = np.stack(
        [
            np.log1p(owned.data[keep].astype(np.float64)),
            np.log1p(np.maximum(last.astype(np.float64), 0.0)),
            items.propensity[col],
            items.popularity[col],
            items.month[col],
            scores.als[row, col].astype(np.float64),
            scores.knn[row, col].astype(np.float64),
        ],
        axis=1,
    )
    return row, col, signals


def ranked(
    orders: sp.csr_matrix,
    last_days: sp.csr_matrix,
    items: ItemSignals,
    scores: Collaborative,
    weights: tuple[float, ...],
    tie_break: np.ndarray,
) -> np.ndarray:
    """Dense rows × items: each own item's blended score scaled per row to ``(0, 1]`` (the
    best own item 1, others down to 0.001), 0 where not owned. ``tie_break`` (per item, in
    [0, 1]) orders equal blends: the more popular item first."""
    row, col, signals = pair_signals(orders, last_days, items, scores)
    blend = signals @ np.asarray(weights, dtype=np.float64) + 1e-6 * tie_break[col]
    n = orders.shape[0]
    low = np.full(n, np.inf)
    high = np.full(n, -np.inf)
    np.minimum.at(low, row, blend)
    np.maximum.at(high, row, blend)
    span = (high - low)[row]
    scaled = np.where(span > 0, 0.001 + 0.999 * (blend - low[row]) / np.where(span > 0, span, 1), 1)
    out = np.zeros(orders.shape)
    out[row, col] = scaled
    return out


def fit_weights(
    orders: sp.csr_matrix,
    last_days: sp.csr_matrix,
    items: ItemSignals,
    scores: Collaborative,
    bought: sp.csr_matrix,
) -> tuple[float, ...] | None:
    """Logistic-regression weights of :data:`SIGNALS` for "this own item is in ``bought``"
    (rows aligned with ``orders``), by Newton steps with a small ridge. ``None`` when the
    validation window has no repurchase or nothing else (nothing to learn from)."""
    row, col, signals = pair_signals(orders, last_days, items, scores)
    label = np.asarray(sp.csr_matrix(bought)[row, col]).ravel() > 0 if len(row) else np.zeros(0)
    if label.all() or not label.any():
        return None
    design = np.column_stack([signals, np.ones(len(signals))])
    w = np.zeros(design.shape[1])
    ridge = RIDGE * np.eye(len(w))
    ridge[-1, -1] = 0.0  # the intercept is not shrunk
    y = label.astype(np.float64)
    for _ in range(NEWTON_STEPS):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -30, 30)))
        gradient = design.T @ (p - y) + ridge @ w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + ridge
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(w)), gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return tuple(round(float(v), 6) for v in w[:-1])
