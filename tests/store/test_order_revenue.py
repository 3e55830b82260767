"""``order_totals`` and ``order_parts`` count the same lines, purchase lines as DESIGN.md and
``domain.Purchase.is_purchase`` define them (no return, quantity and unit price above 0),
both through ``schema.purchase_line``: an order's parts sum to its total, and a return, an
adjustment or a free line counts in neither."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import sqlalchemy as sa

from recocamp.campaigns.offers import Candidates, Rules, select
from recocamp.domain import Item, Purchase
from recocamp.recommender.ranking import Mode
from recocamp.store import queries, views
from tests.conftest import NOW

DAY = timedelta(days=1)


def test_an_orders_parts_sum_to_its_total_and_both_count_purchase_lines_alone(
    engine: sa.Engine,
) -> None:
    first, second = NOW - timedelta(minutes=1), NOW + timedelta(minutes=1)
    lines = [
        Purchase("o1", 1, "c1", "i1", 2, 3.5, first),
        Purchase("o1", 2, "c1", "i2", 1, 10.0, second),  # stamped apart: two parts
        Purchase("o1", 3, "c1", "POST", 1, 4.0, second),  # a service line counts
        Purchase("o1", 4, "c1", "i3", 1, 0.0, second),  # free: no purchase
        Purchase("o2", 1, "c2", "i1", -1, 3.5, first, is_return=True),  # a return
        Purchase("o3", 1, None, "i1", 1, 3.5, first),  # a guest's
        Purchase("o4", 1, "c2", "i9", -2, 1.0, first),  # an adjustment
        Purchase("o5", 1, "c2", "i1", 1, 3.5, NOW + 2 * DAY),  # past the window
    ]
    with engine.begin() as connection:
        queries.insert_purchases(connection, lines, None)
    start, end = NOW - DAY, NOW + DAY
    expected: dict[tuple[str, str | None], float] = defaultdict(float)
    for line in lines:
        if line.is_purchase and start <= line.ordered_at < end:
            expected[line.order_id, line.customer_id] += line.quantity * line.unit_price
    with engine.connect() as connection:
        totals = queries.order_totals(connection, start, end)
        parts = queries.order_parts(connection, start, end)
    assert {(o, c): revenue for o, c, _, revenue in totals} == expected
    assert dict(expected) == {("o1", "c1"): 21.0, ("o3", None): 3.5}
    summed: dict[tuple[str, str | None], float] = defaultdict(float)
    for order, customer, _, revenue in parts:
        summed[order, customer] += revenue
    assert summed == expected
    assert sorted((o, at) for o, _, at, _ in parts) == [
        ("o1", first),
        ("o1", second),
        ("o3", first),
    ]
    assert sorted((o, at) for o, _, at, _ in totals) == [("o1", first), ("o3", first)]


def test_the_cold_start_list_counts_buyers_of_purchase_lines_alone(engine: sa.Engine) -> None:
    """With no live model, offers are the items most customers bought in the last 90 days (``days``)
    (``views.recent_popular``). It counted lines of price 0 (an adjustment, a free sample:
    no purchase) as purchases, so an item handed out free to many outranked every item
    they paid for."""
    at = NOW - DAY
    lines = [Purchase(f"f{n}", 1, f"c{n}", "FREE", 1, 0.0, at) for n in range(3)] + [
        Purchase("p1", 1, "c9", "PAID", 1, 5.0, at)
    ]
    with engine.begin() as connection:
        queries.insert_purchases(connection, lines, None)
        assert views.recent_popular(connection, NOW, 5, days=90) == [["PAID", 1.0]]


def test_the_cold_start_list_leaves_out_service_items(engine: sa.Engine) -> None:
    """Postage, fees and the like (``is_service``) are on most orders but never offered
    (``offers.offerable``), and a trained model's list leaves them out (its lines do). The
    list made from recent sales counted them: with ``n`` 1 its three places (``3n``) went to
    POST, DOT and M, every one bought by more customers than the mug, and a customer without
    history was offered nothing; the mug's score was a third of the top, not 1."""
    at = NOW - DAY
    services = ["POST", "DOT", "M"]
    lines = [
        Purchase(f"{code}{n}", 1, f"c{n}", code, 1, 2.0, at) for code in services for n in range(3)
    ] + [Purchase("p1", 1, "c9", "mug", 1, 5.0, at)]
    catalogue = [Item(code, code, "service", 2.0, is_service=True) for code in services]
    with engine.begin() as connection:
        queries.upsert_items(connection, [*catalogue, Item("mug", "Mug", "home", 5.0)], NOW)
        queries.insert_purchases(connection, lines, None)
        popular = views.recent_popular(connection, NOW, 1, days=90)
        items = views.catalogue(connection)
    assert popular == [["mug", 1.0]]
    rules = Rules(mode=Mode.MIXED, count=1)
    chosen = select([Candidates(popular, "popular")], items, rules, frozenset(), frozenset())
    assert [offer.item_id for offer in chosen] == ["mug"]
