"""Segments and loyalty: fixed clocks, time zones, and real customers cut from the UCI file."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
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


# coffee every 30 days, last 40 days ago; tea every 5 days, last 55 days ago; filter every
# 90 days, last 10 days ago
PANTRY = history(
    order(100, items=("coffee", "filter")),
    order(70, items=("coffee",)),
    order(40, items=("coffee",)),
    order(60, items=("tea",)),
    order(55, items=("tea",)),
    order(10, items=("filter",)),
)


def test_replenishment_is_due_when_the_usual_interval_has_passed() -> None:
    h = PANTRY
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
    # an item never bought before starts its own times, without an interval yet
    first = Repurchases.of(kept).extended([order(1, items=("soap",))])
    assert first == Repurchases.of(history(*kept.orders, order(1, items=("soap",))))
    assert "soap" in first.times and "soap" not in first.usual


def test_a_due_list_holds_until_an_item_falls_due_or_two_swap_places() -> None:
    """What a cached "buy again" answer is built on, and when it stops holding."""
    h = PANTRY
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


def test_two_due_items_that_meet_after_the_year_9999_never_change_the_list() -> None:
    """Soap every 10 days, milk every 9.999999: milk's ratio catches up with soap's in some
    100 million days. That moment is past what a datetime holds: the list never changes
    (it raised OverflowError, and the offers API answered 500 for such a customer)."""
    h = history(
        *(order(days, items=("soap",)) for days in (50, 40, 30)),
        *(order(20 + 9.999999 * n, items=("milk",)) for n in (2, 1, 0)),
    )
    repurchases = Repurchases.of(h)
    assert repurchases.due(NOW) == ["soap", "milk"]
    assert repurchases.changes_after(NOW) is None


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


# --- edges the rules above leave open ----------------------------------------------------


def test_lapsed_days_are_half_open_and_contacts_count_strictly_inside_the_window() -> None:
    """``lapsed_days = [min, max)``: a last order exactly ``min`` days ago is in, exactly
    ``max`` days ago out; a contact exactly ``days`` ago is outside ``not_contacted_days``,
    and one still to come (queued for the end of quiet hours) inside."""
    h = history(order(200), order(90))
    assert lapsed_between(h, NOW, 90, 180) and not lapsed_between(h, NOW, 30, 90)
    assert lapsed_between(h, NOW, 89.5, 90.5)
    assert not last_contacted_within([NOW - timedelta(days=3)], NOW, 3)
    assert last_contacted_within([NOW - timedelta(days=3) + timedelta(seconds=1)], NOW, 3)
    assert last_contacted_within([NOW + timedelta(hours=9)], NOW, 3)
    assert last_contacted_within([NOW - timedelta(days=10), NOW - timedelta(days=1)], NOW, 3)
    # no upper bound: any count or spend from the lower one up
    assert orders_between(h, 1) and orders_between(h, 2) and not orders_between(h, 1, 1)
    assert spend_between(h, 1.0) and spend_between(h, 20.0) and not spend_between(h, 1.0, 19.99)


@pytest.mark.parametrize(
    ("birthday", "today", "expected"),
    [
        (date(1992, 2, 29), date(2100, 2, 28), True),  # 2100 is no leap year
        (date(1992, 2, 29), date(2000, 2, 28), False),  # 2000 is one: the 29th comes
        (date(1992, 2, 29), date(2000, 2, 29), True),
        (date(1992, 3, 1), date(2023, 2, 28), False),
    ],
)
def test_a_leap_day_birthday_in_century_years(birthday: date, today: date, expected: bool) -> None:
    instant = datetime(today.year, today.month, today.day, 12, tzinfo=UTC)
    assert birthday_today(birthday, instant, ZoneInfo("UTC")) is expected


def test_replenishment_is_due_exactly_at_the_usual_interval_and_ties_go_by_item() -> None:
    h = history(
        order(60, items=("tea", "soap")),
        order(30, items=("tea", "soap")),
        order(20, items=("salt",)),
        order(20, items=("salt",)),  # twice at one instant: no interval to wait out
    )
    assert due_for_replenishment(h, NOW) == ["soap", "tea"]  # both exactly 30 of 30 days
    assert due_for_replenishment(h, NOW - timedelta(seconds=1)) == []
    assert due_for_replenishment(h, NOW, min_orders=2) == ["soap", "tea"]
    assert due_for_replenishment(h, NOW, min_orders=3) == []
    assert Repurchases.of(h).due(NOW) == ["soap", "tea"]  # two orders are enough by default
    # every 40 days (gaps 30 and 50), last 10 days ago: not due, whatever the order before
    rice = history(
        order(90, items=("rice",)), order(60, items=("rice",)), order(10, items=("rice",))
    )
    assert due_for_replenishment(rice, NOW) == []
    assert due_for_replenishment(rice, NOW + timedelta(days=30)) == ["rice"]
    # naive times (no zone) measure the same intervals against a naive now
    naive = History(tuple(replace(o, at=o.at.replace(tzinfo=None)) for o in h.orders))
    assert due_for_replenishment(naive, NOW.replace(tzinfo=None)) == ["soap", "tea"]


def test_rfm_scores_are_quintiles_of_rank_with_ties_at_their_average_rank() -> None:
    """Ten customers with 1…10 orders of 10 each, all last bought yesterday: frequency and
    monetary score 1 + ⌊5·rank / 10⌋ (two per quintile); the tied recency shares the average
    rank 4.5, score 1 + ⌊5·4.5 / 10⌋ = 3. Five customers with 1, 1, 1, 2, 3 orders: the
    three tied share rank 1, score 1 + ⌊5·1 / 5⌋ = 2; then 1 + ⌊5·3 / 5⌋ = 4 and 5."""
    ten = {f"c{k:02}": history(*(order(1 + j) for j in range(k))) for k in range(1, 11)}
    scores = rfm_scores(ten, NOW)
    assert [scores[c].frequency for c in sorted(ten)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert [scores[c].monetary for c in sorted(ten)] == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert {scores[c].recency for c in ten} == {3}
    counts = {"a": 1, "b": 1, "c": 1, "d": 2, "e": 3}
    five = {c: history(*(order(1 + j) for j in range(n))) for c, n in counts.items()}
    assert [rfm_scores(five, NOW)[c].frequency for c in "abcde"] == [2, 2, 2, 4, 5]
    # an order at ``now`` itself is the most recent of all (0 days, not "unknown")
    recent = {"now": history(order(0)), "earlier": history(order(0.5))}
    assert [rfm_scores(recent, NOW)[c].recency for c in ("now", "earlier")] == [3, 1]


def test_the_rfm_segment_table_cell_by_cell() -> None:
    """Every recency (rows, 5 first) × combined frequency-monetary score (columns 1–5), as
    the table in segments.RFM_SEGMENTS reads with its first match winning."""
    grid = {
        5: [
            "new_customers",
            "potential_loyalists",
            "potential_loyalists",
            "champions",
            "champions",
        ],
        4: ["promising", "potential_loyalists", "potential_loyalists"] + ["loyal_customers"] * 2,
        3: ["about_to_sleep", "need_attention", "need_attention"] + ["loyal_customers"] * 2,
        2: ["hibernating", "hibernating", "at_risk", "at_risk", "cant_lose_them"],
        1: ["lost", "lost", "at_risk", "at_risk", "cant_lose_them"],
    }
    for recency, names in grid.items():
        assert [Rfm(recency, fm, fm).segment for fm in range(1, 6)] == names, recency


@pytest.mark.parametrize(
    ("frequency", "monetary", "combined"),
    [(1, 2, 2), (2, 3, 3), (3, 4, 4), (4, 5, 5), (1, 4, 3), (2, 5, 4), (1, 5, 3), (5, 4, 5)],
)
def test_the_combined_score_is_the_mean_rounded_half_up(
    frequency: int, monetary: int, combined: int
) -> None:
    """Half-way means go up whichever scores make them (half to even gave (2, 3) a 2 and
    (3, 4) a 4): read through the recency-2 row, whose segments change between 2 and 3 and
    between 4 and 5."""
    row = ["hibernating", "hibernating", "at_risk", "at_risk", "cant_lose_them"]
    assert Rfm(2, frequency, monetary).segment == row[combined - 1]
    assert Rfm(2, monetary, frequency).segment == row[combined - 1]
