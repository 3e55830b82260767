"""Matrix building: id maps, distinct-order confidence, decay, popularity window, item age."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recocamp.recommender.matrix import DAY, Lines, build

CUT = 100 * DAY


def lines(*rows: tuple[str, str, str, float]) -> Lines:
    customer, item, order, day = zip(*rows, strict=True)
    return Lines.from_ids(np.array(customer), np.array(item), np.array(order), np.array(day) * DAY)


def test_confidence_counts_distinct_orders_with_log_weighting() -> None:
    data = build(
        lines(
            ("c1", "x", "o1", 10),
            ("c1", "x", "o1", 10),  # the same item twice in one order: once
            ("c1", "x", "o2", 20),
            ("c1", "y", "o2", 20),
            ("c2", "y", "o3", 30),
            ("c2", "z", "o4", 150),  # after the cutoff: ignored
        ),
        CUT,
    )
    assert list(data.customers) == ["c1", "c2"] and list(data.items) == ["x", "y"]
    assert data.orders.toarray().tolist() == [[2, 1], [0, 1]]
    assert data.confidence[0, 0] == pytest.approx(1 + math.log(3))
    assert data.confidence[1, 1] == pytest.approx(1 + math.log(2))
    assert data.last_days[0, 0] == pytest.approx(80) and data.last_days[1, 1] == pytest.approx(70)
    np.testing.assert_array_equal(data.rows_of(np.array(["c2", "zz", "c1"])), [1, -1, 0])


def test_popularity_window_and_item_age() -> None:
    data = build(
        lines(
            ("c1", "x", "o1", 5),
            ("c2", "x", "o2", 95),
            ("c3", "y", "o3", 96),
            ("c3", "y", "o4", 97),
            ("c4", "y", "o5", 98),
        ),
        CUT,
        popularity_days=10,
    )
    assert data.popularity.tolist() == [1, 2]  # x: only c2 within 10 days; y: c3, c4 (distinct)
    assert data.age_days.tolist() == pytest.approx([95, 4])


def test_half_life_decay_halves_old_orders() -> None:
    data = build(
        lines(("c1", "x", "o1", 90), ("c1", "y", "o2", 100 - 30 - 10)), CUT, half_life_days=30
    )
    # x: one order 10 days old → 0.5 ** (1/3); y: 40 days old → 0.5 ** (4/3)
    assert data.confidence[0, 0] == pytest.approx(1 + math.log1p(0.5 ** (10 / 30)), rel=1e-5)
    assert data.confidence[0, 1] == pytest.approx(1 + math.log1p(0.5 ** (40 / 30)), rel=1e-5)


def test_empty_lines_build_an_empty_matrix() -> None:
    empty = Lines.from_ids(np.array([]), np.array([]), np.array([]), np.array([]))
    data = build(empty, CUT)
    assert data.shape == (0, 0)
    assert data.rows_of(np.array(["c1"])).tolist() == [-1]


def test_distinct_orders_key_does_not_overflow_at_real_shop_sizes() -> None:
    from recocamp.recommender.matrix import _first_line_per_order_and_item

    rows = np.array([999_999, 999_999, 999_999, 5])
    cols = np.array([99_999, 99_999, 99_999, 3])
    orders = np.array([150_000_000, 150_000_000, 150_000_001, 150_000_000])
    # the same (customer, item) in two orders, once twice in the same order
    assert sorted(_first_line_per_order_and_item(rows, cols, orders).tolist()) == [0, 2, 3]
