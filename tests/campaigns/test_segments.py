"""Segments and loyalty: fixed clocks, time zones, and real customers cut from the UCI file."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recocamp.campaigns import loyalty
from recocamp.campaigns.segments import (
    EMPTY,
    History,
    Order,
    Repurchases,
    Rfm,
    birthday_today,
    bought_category,
    due_for_replenishment,
    lapsed_between,
    last_contacted_within,
    orders_between,
    rfm_scores,
    spend_between,
)
from recocamp.settings import Settings

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def order(
    days_ago: float,
    revenue: float = 10.0,
    items: tuple[str, ...] = ("x",),
    cats: tuple[str, ...] = ("kitchen",),
) -> Order:
    return Order(NOW - timedelta(days=days_ago), revenue, frozenset(items), frozenset(cats))


def history(*orders: Order) -> History:
    return History(tuple(sorted(orders, key=lambda o: o.at)))


def test_lapsed_counts_and_spend() -> None:
    h = history(order(200, 50), order(90, 25, cats=("garden",)))
    assert lapsed_between(h, NOW, 60, 180) and not lapsed_between(h, NOW, 91, 180)
    assert not lapsed_between(EMPTY, NOW, 0, 1000)
    assert orders_between(h, 2, 2) and not orders_between(h, 3)
    assert spend_between(h, 75, 75) and not spend_between(h, 76)
    assert bought_category(h, ["garden", "toys"]) and not bought_category(h, ["toys"])


@pytest.mark.parametrize(
    ("birthday", "instant", "zone", "expected"),
    [
        (date(1990, 6, 1), NOW, ZoneInfo("Europe/Berlin"), True),
        (
            date(1990, 6, 2),
            datetime(2024, 6, 1, 23, 30, tzinfo=UTC),
            ZoneInfo("Europe/Berlin"),
            True,
        ),  # 01:30 on the 2nd
        (
            date(1990, 6, 2),
            datetime(2024, 6, 1, 23, 30, tzinfo=UTC),
            ZoneInfo("America/New_York"),
            False,
        ),
        (date(1992, 2, 29), datetime(2023, 2, 28, 12, tzinfo=UTC), ZoneInfo("UTC"), True),
        (
            date(1992, 2, 29),
            datetime(2024, 2, 28, 12, tzinfo=UTC),
            ZoneInfo("UTC"),
            False,
        ),  # 2024 has the 29th
        (None, NOW, ZoneInfo("UTC"), False),
    ],
)
def test_birthday_in_the_customers_zone(
    birthday: date | None, instant: datetime, zone: ZoneInfo, expected: bool
) -> None:
    assert birthday_today(birthday, instant, zone) is expected


def test_replenishment_is_due_when_the_usual_interval_has_passed() -> None:
    h = history(
        order(100, items=("coffee", "filter")),
        order(70, items=("coffee",)),
        order(40, items=("coffee",)),
        order(60, items=("tea",)),
        order(55, items=("tea",)),
        order(10, items=("filter",)),
    )
    # coffee every 30 days, last 40 days ago: due (×1.33); tea every 5 days, last 55 ago (×11)
    # filter: every 90 days, last 10 days ago: not due
    assert due_for_replenishment(h, NOW) == ["tea", "coffee"]


def test_repurchases_extended_by_new_orders_are_those_of_the_whole_history() -> None:
    """The shop API extends a customer's intervals by their new orders (a purchase event)
    instead of recomputing every item's: an order dated before the newest kept one (a late
    event) and an item's second order (its first interval) must come out as a whole read."""
    kept = history(
        order(100, items=("coffee", "filter")),
        order(70, items=("coffee",)),
        order(40, items=("coffee",)),
        order(10, items=("tea",)),
    )
    new = (order(85, items=("coffee", "tea")), order(2, items=("filter",)))
    whole = history(*sorted((*kept.orders, *new), key=lambda o: o.at))
    extended = Repurchases.of(kept).extended(new)
    assert extended == Repurchases.of(whole)
    # coffee every 15 days (100, 85, 70, 40), last 40 days ago; tea once in 75 days, last 10
    # days ago; filter every 98 days, last 2 days ago
    assert extended.usual["coffee"] == 15 * 86400
    assert extended.due(NOW) == due_for_replenishment(whole, NOW) == ["coffee"]
    assert Repurchases.of(kept).due(NOW) == ["coffee"]  # every 30 days, 40 days ago
    assert extended.due(NOW, min_orders=5) == []


def test_a_due_list_holds_until_an_item_falls_due_or_two_swap_places() -> None:
    """What a cached "buy again" answer is built on, and when it stops holding."""
    h = history(
        order(100, items=("coffee", "filter")),
        order(70, items=("coffee",)),
        order(40, items=("coffee",)),
        order(60, items=("tea",)),
        order(55, items=("tea",)),
        order(10, items=("filter",)),
    )
    # tea (×11, growing by 1/5 a day) stays ahead of coffee (×1.33, 1/30 a day); filter
    # (every 90 days, last 10 days ago) falls due in 80 days
    assert Repurchases.of(h).changes_after(NOW) == NOW + timedelta(days=80)
    assert due_for_replenishment(h, NOW + timedelta(days=80)) == ["tea", "coffee", "filter"]
    swapping = history(
        *(order(days, items=("soap",)) for days in (50, 40, 30)),
        *(order(days, items=("milk",)) for days in (8, 6, 4)),
    )
    # soap every 10 days, 30 days ago (×3, +0.1 a day); milk every 2 days, 4 days ago (×2,
    # +0.5 a day): (t + 30) / 10 = (t + 4) / 2 after t = 2.5 days
    repurchases = Repurchases.of(swapping)
    assert repurchases.due(NOW) == ["soap", "milk"]
    assert repurchases.changes_after(NOW) == NOW + timedelta(days=2.5)
    assert repurchases.due(NOW + timedelta(days=2.5, seconds=-1)) == ["soap", "milk"]
    assert repurchases.due(NOW + timedelta(days=2.5, seconds=1)) == ["milk", "soap"]
    assert repurchases.changes_after(NOW + timedelta(days=3)) is None  # milk ahead for good
    assert Repurchases.of(history(order(5), order(3))).changes_after(NOW, min_orders=3) is None


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["a", "b", "c", "d", "e"]),
        st.lists(st.integers(0, 400 * 24), min_size=1, max_size=6, unique=True),
        min_size=1,
    ),
    st.integers(0, 200 * 24),
)
def test_a_due_list_is_the_same_until_it_changes_and_differs_after(
    hours_ago: dict[str, list[int]], hours_ahead: int
) -> None:
    """Before ``changes_after`` every moment gives today's list; after it none does (an item
    that fell due stays due, and two items' ratios meet once)."""
    h = history(*(order(h / 24, items=(i,)) for i, hours in hours_ago.items() for h in hours))
    repurchases, now = Repurchases.of(h), NOW + timedelta(hours=hours_ahead)
    until = repurchases.changes_after(now)
    end = until if until is not None else now + timedelta(days=1000)
    today = repurchases.due(now)
    for share in (0.0, 0.25, 0.5, 0.9, 1.0):
        moment = now + (end - now - timedelta(seconds=1)) * share
        if moment >= now:
            assert repurchases.due(moment) == today
    if until is not None:
        assert repurchases.due(until + timedelta(hours=1)) != today


def test_last_contacted() -> None:
    assert last_contacted_within([NOW - timedelta(days=2)], NOW, 3)
    assert not last_contacted_within([NOW - timedelta(days=4)], NOW, 3)


def test_rfm_quintiles_and_names() -> None:
    base = {f"c{n}": history(*(order(5 * n + k) for k in range(10 - n))) for n in range(10)}
    scores = rfm_scores(base | {"never": EMPTY}, NOW)
    assert "never" not in scores
    assert scores["c0"] == Rfm(5, 5, 5) and scores["c0"].segment == "champions"
    assert scores["c9"] == Rfm(1, 1, 1) and scores["c9"].segment == "lost"
    assert Rfm(1, 5, 5).segment == "cant_lose_them" and Rfm(5, 1, 1).segment == "new_customers"


def test_loyalty_points_and_tiers() -> None:
    table = Settings().loyalty
    h = history(order(10, 300), order(5, 250.7))
    earned = loyalty.points(h, {"review": 2, "newsletter_signup": 1}, table)
    assert earned == 2 * 10 + 550 + 2 * 25 + 50
    standing = loyalty.standing(earned, loyalty.tiers_of(table))
    assert (standing.tier, standing.next_tier, standing.points_to_next) == (
        "silver",
        "gold",
        2000 - 670,
    )
    assert loyalty.standing(50_000, loyalty.tiers_of(table)).next_tier is None


def test_segments_on_real_uci_customers(uci_slice_rows: tuple[list[str], list[list[str]]]) -> None:
    _, rows = uci_slice_rows
    per_order: dict[tuple[str, str], tuple[datetime, float, set[str]]] = {}
    for invoice, code, _desc, qty, at, price, customer, _country in rows:
        if not customer or invoice.startswith("C") or int(qty) <= 0 or float(price) <= 0:
            continue
        when = datetime.fromisoformat(at).replace(tzinfo=ZoneInfo("Europe/London"))
        seen = per_order.get((customer, invoice), (when, 0.0, set()))
        per_order[(customer, invoice)] = (when, seen[1] + int(qty) * float(price), seen[2] | {code})
    orders: dict[str, list[Order]] = defaultdict(list)
    for (customer, _), (when, revenue, codes) in per_order.items():
        orders[customer].append(Order(when, revenue, frozenset(codes), frozenset()))
    histories = {c: History(tuple(sorted(o, key=lambda x: x.at))) for c, o in orders.items()}
    as_of = datetime(2010, 12, 22, tzinfo=UTC)
    # 17850 bought on many days in the first week and not after 2010-12-02 in the slice
    assert histories["17850"].count >= 30 and lapsed_between(histories["17850"], as_of, 14, 30)
    scores = rfm_scores(histories, as_of)
    assert set(scores) == set(histories) and all(1 <= s.recency <= 5 for s in scores.values())
    most = max(histories, key=lambda c: histories[c].count)
    assert scores[most].frequency == 5
