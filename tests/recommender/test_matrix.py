"""Matrix building: id maps, distinct-order confidence, decay, popularity window, item age."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from recocamp.domain import Purchase
from recocamp.recommender.matrix import DAY, Lines, build
from recocamp.recommender.training import load_lines
from recocamp.store import queries

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
    from recocamp.recommender.matrix import first_line_per_order_and_item

    rows = np.array([999_999, 999_999, 999_999, 5])
    cols = np.array([99_999, 99_999, 99_999, 3])
    pair = rows * 100_000 + cols  # 1 M customers × 100 k items × 150 M orders > 2**63
    orders = np.array([150_000_000, 150_000_000, 150_000_001, 150_000_000])
    # the same (customer, item) in two orders, once twice in the same order; by pair, order
    assert first_line_per_order_and_item(pair, orders).tolist() == [3, 0, 2]


def test_packed_and_lexsorted_distinct_orders_pick_the_same_first_lines() -> None:
    """Both sorts of the (pair, order) groups take each group's lowest line index, in
    (pair, order) order, whatever the order of equal keys within a sort."""
    from recocamp.recommender.matrix import first_line_per_order_and_item

    rng = np.random.default_rng(11)
    pair, order = rng.integers(0, 50, 2000), rng.integers(0, 40, 2000)
    packed = first_line_per_order_and_item(pair, order)
    huge = first_line_per_order_and_item(pair, order + 2**62)  # too large to pack
    assert packed.tolist() == huge.tolist()
    groups: dict[tuple[int, int], int] = {}
    for index, key in enumerate(zip(pair.tolist(), order.tolist(), strict=True)):
        groups.setdefault(key, index)
    assert packed.tolist() == [groups[key] for key in sorted(groups)]


def test_the_store_to_matrix_path_equals_a_plain_reference(engine: sa.Engine) -> None:
    """Lines read from a real store and built into matrices by the vectorised code equal
    the definitions computed line by line in plain Python (distinct orders per pair, the
    latest line, distinct recent buyers per item, first sale), with the same item repeated
    within orders, orders spanning items and lines after the cutoff."""
    rng = np.random.default_rng(5)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows: list[Purchase] = []
    for number in range(400):
        customer, at = f"c{rng.integers(40):02d}", start + timedelta(hours=int(rng.integers(3000)))
        for line in range(int(rng.integers(1, 5))):
            item = f"i{rng.integers(25):02d}"
            rows.append(Purchase(f"o{number}", line + 1, customer, item, 1, 2.0, at))
    with engine.begin() as connection:
        queries.insert_purchases(connection, rows, None)
    cutoff = start + timedelta(days=100)
    data = build(load_lines(engine), cutoff.timestamp(), popularity_days=30, half_life_days=20)
    before = [row for row in rows if row.ordered_at < cutoff]
    pairs: dict[tuple[str, str], dict[str, float]] = {}
    for row in before:
        assert row.customer_id is not None
        orders = pairs.setdefault((row.customer_id, row.item_id), {})
        orders[row.order_id] = row.ordered_at.timestamp()
    assert list(data.customers) == sorted({c for c, _ in pairs})
    assert list(data.items) == sorted({i for _, i in pairs})
    since = cutoff.timestamp() - 30 * DAY
    for (customer, item), orders in pairs.items():
        r, c = list(data.customers).index(customer), list(data.items).index(item)
        weights = [0.5 ** ((cutoff.timestamp() - at) / DAY / 20) for at in orders.values()]
        assert data.orders[r, c] == len(orders)
        assert data.confidence[r, c] == pytest.approx(1 + math.log1p(sum(weights)), rel=1e-5)
        latest = (cutoff.timestamp() - max(orders.values())) / DAY
        assert data.last_days[r, c] == pytest.approx(latest, rel=1e-6)
    assert data.orders.nnz == data.last_days.nnz == len(pairs)
    recent = {(c, i) for (c, i), orders in pairs.items() if max(orders.values()) >= since}
    expected = [sum(1 for _, i in recent if i == item) for item in data.items]
    assert data.popularity.tolist() == expected
    first = {i: min(r.ordered_at for r in before if r.item_id == i) for i in data.items}
    ages = [(cutoff - first[i]).total_seconds() / DAY for i in data.items]
    np.testing.assert_allclose(data.age_days, ages, rtol=1e-6)


def test_negative_order_codes_are_grouped_as_the_store_codes_are() -> None:
    """``Lines`` is public: a caller's order codes may be negative; packing them into one key
    would merge distinct (customer, item, order) groups, so they take the lexsort."""
    lines = Lines(
        np.array([0, 0, 0]),
        np.array([0, 1, 1]),
        np.array([2, -1, -1]),
        np.zeros(3),
        np.array(["c"]),
        np.array(["a", "b"]),
    )
    data = build(lines, 1.0)
    assert data.orders.toarray().tolist() == [[1.0, 1.0]]
