"""The replenishment blend (recommender.repeat) against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from recocamp.recommender import matrix, repeat
from recocamp.recommender.matrix import DAY, Lines

CUT = 1_700_000_000.0


def test_item_signals_are_smoothed_repurchase_rates_and_log_popularity() -> None:
    # item 0: three buyers, two of them in >= 2 orders; item 1: one buyer, once; item 2: none
    orders = sp.csr_matrix(np.array([[2.0, 0, 0], [3.0, 1.0, 0], [1.0, 0, 0]]))
    popularity = np.array([4.0, 0.0, 0.0], dtype=np.float32)
    signals = repeat.ItemSignals.of(orders, popularity, np.array([0.0, 2.0, 0.0]))
    expected = [math.log(3 / 8), math.log(1 / 6), math.log(1 / 5)]
    assert signals.propensity == pytest.approx(expected)
    assert signals.popularity == pytest.approx([math.log(5), 0.0, 0.0])
    assert signals.month == pytest.approx([0.0, math.log(3), 0.0])


def test_month_buyers_counts_distinct_customers_of_the_last_30_days() -> None:
    # x: A twice in one week and B, within 30 days; y: C 40 days ago (too old); z: after
    lines = Lines.from_ids(
        np.array(["A", "A", "B", "C", "A"]),
        np.array(["x", "x", "x", "y", "z"]),
        np.array(["o1", "o2", "o3", "o4", "o5"]),
        np.array([CUT - 3 * DAY, CUT - 9 * DAY, CUT - 29 * DAY, CUT - 40 * DAY, CUT + DAY]),
    )
    data = matrix.build(lines, CUT)
    assert [str(i) for i in data.items] == ["x", "y"]
    assert repeat.month_buyers(data).tolist() == [2.0, 0.0]


def test_ranked_scales_each_customers_blend_to_the_unit_interval() -> None:
    # customer 0 owns items 0 (1 order, today), 1 (3 orders, today), 2 (1 order, 1 day ago);
    # customer 1 owns item 3 only. Weights: +count, -recency.
    orders = sp.csr_matrix(np.array([[1.0, 3.0, 1.0, 0.0], [0, 0, 0, 2.0]]))
    last_days = sp.csr_matrix(np.array([[1e-9, 1e-9, 1.0, 0.0], [0, 0, 0, 5.0]]))
    items = repeat.ItemSignals(np.zeros(4), np.zeros(4), np.zeros(4))
    weights = (1.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    scores = repeat.ranked(orders, last_days, items, no_scores(2, 4), weights, np.zeros(4))
    # blends: ln 2, ln 4 = 2 ln 2, ln 2 − ln 2 = 0 → scaled 0.5005, 1, 0.001; one item → 1
    assert scores[0] == pytest.approx([0.001 + 0.999 * 0.5, 1.0, 0.001, 0.0])
    assert scores[1] == pytest.approx([0.0, 0.0, 0.0, 1.0])


def test_equal_blends_are_ordered_by_the_tie_break() -> None:
    orders = sp.csr_matrix(np.array([[1.0, 1.0]]))
    items = repeat.ItemSignals(np.zeros(2), np.zeros(2), np.zeros(2))
    weights = (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    scores = repeat.ranked(orders, orders, items, no_scores(1, 2), weights, np.array([0.2, 0.9]))
    assert scores[0, 1] > scores[0, 0] > 0


def test_the_model_scores_of_own_items_enter_the_blend() -> None:
    """Stacking: two own items with the same history are ordered by the hybrid's ALS and
    item-kNN scores of them, with the fitted weights; the pair signals read exactly the
    scores at the own pairs."""
    orders = sp.csr_matrix(np.array([[1.0, 1.0, 0.0]]))
    last_days = sp.csr_matrix(np.array([[3.0, 3.0, 0.0]]))
    items = repeat.ItemSignals(np.zeros(3), np.zeros(3), np.zeros(3))
    scores = repeat.Collaborative(np.array([[0.2, 0.6, 1.0]]), np.array([[0.9, 0.1, 0.0]]))
    _row, col, signals = repeat.pair_signals(orders, last_days, items, scores)
    assert col.tolist() == [0, 1]
    als, knn = repeat.SIGNALS.index("als"), repeat.SIGNALS.index("knn")
    assert signals[:, als].tolist() == [0.2, 0.6] and signals[:, knn].tolist() == [0.9, 0.1]
    by_als = repeat.ranked(orders, last_days, items, scores, _only("als"), np.zeros(3))
    by_knn = repeat.ranked(orders, last_days, items, scores, _only("knn"), np.zeros(3))
    assert by_als[0].tolist() == pytest.approx([0.001, 1.0, 0.0])  # 0.2 < 0.6; item 2 not owned
    assert by_knn[0].tolist() == pytest.approx([1.0, 0.001, 0.0])  # 0.9 > 0.1


def _only(signal: str) -> tuple[float, ...]:
    return tuple(1.0 if name == signal else 0.0 for name in repeat.SIGNALS)


def no_scores(rows: int, items: int) -> repeat.Collaborative:
    return repeat.Collaborative.none((rows, items))


def _pairs(n: int) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """One own item per customer: bought again in the window when its last purchase was
    recent (< 30 days), with every tenth case flipped (not separable)."""
    rng = np.random.default_rng(0)
    last = rng.uniform(1, 120, n)
    again = (last < 30) ^ (np.arange(n) % 10 == 0)
    rows = np.arange(n)
    column = np.zeros(n, dtype=np.int64)
    orders = sp.csr_matrix((rng.integers(1, 4, n).astype(float), (rows, column)), shape=(n, 1))
    last_days = sp.csr_matrix((last, (rows, column)), shape=(n, 1))
    bought = sp.csr_matrix((again.astype(float), (rows, column)), shape=(n, 1))
    return orders, last_days, bought


def test_the_fit_learns_that_stale_items_are_bought_less() -> None:
    orders, last_days, bought = _pairs(400)
    items = repeat.ItemSignals(np.zeros(1), np.zeros(1), np.zeros(1))
    weights = repeat.fit_weights(orders, last_days, items, no_scores(400, 1), bought)
    assert weights is not None and len(weights) == len(repeat.SIGNALS)
    assert weights[repeat.SIGNALS.index("recency")] < -0.5


def test_the_fit_learns_to_trust_a_model_score_that_predicts_repurchase() -> None:
    """The ALS score of the own item decides the label (every tenth flipped); the knn score
    is noise: the fit gives ALS a clearly positive weight and knn next to none."""
    orders, last_days, _bought = _pairs(400)
    rng = np.random.default_rng(1)
    als = rng.uniform(0, 1, (400, 1))
    again = (als[:, 0] > 0.5) ^ (np.arange(400) % 10 == 0)
    bought = sp.csr_matrix(again.astype(float)[:, None])
    scores = repeat.Collaborative(als, rng.uniform(0, 1, (400, 1)))
    items = repeat.ItemSignals(np.zeros(1), np.zeros(1), np.zeros(1))
    weights = repeat.fit_weights(orders, last_days, items, scores, bought)
    assert weights is not None
    assert weights[repeat.SIGNALS.index("als")] > 2.0
    assert abs(weights[repeat.SIGNALS.index("knn")]) < 0.5


def test_nothing_to_learn_from_a_window_without_repurchases() -> None:
    orders, last_days, _bought = _pairs(50)
    items = repeat.ItemSignals(np.zeros(1), np.zeros(1), np.zeros(1))
    nothing = sp.csr_matrix((50, 1))
    assert repeat.fit_weights(orders, last_days, items, no_scores(50, 1), nothing) is None
