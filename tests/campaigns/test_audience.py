"""The planner's audience: the store's rows made into views, without a database."""

from __future__ import annotations

import hashlib
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from recocamp.campaigns.audience import history_of, snapshot
from recocamp.campaigns.loyalty import Standing
from recocamp.campaigns.predictive import LiveForecast
from recocamp.domain import (
    ConsentBasis,
    Contact,
    Customer,
    CustomerForecast,
    CustomerOrder,
    CustomerRecord,
    Item,
    PlanningRows,
    email_hash,
)
from recocamp.settings import LoyaltySettings

NOW = datetime(2024, 6, 1, 12, tzinfo=UTC)
ITEMS = {
    "mug": Item("mug", "Mug", "kitchen", 9.0),
    "wrap": Item("wrap", "Gift wrap", "services", 2.0, is_service=True),
}


def order(
    customer: str, order_id: str, days_ago: int, revenue: float, *items: str
) -> CustomerOrder:
    return CustomerOrder(
        customer, order_id, NOW - timedelta(days=days_ago), revenue, frozenset(items)
    )


def test_service_items_count_for_revenue_not_as_interest_and_orders_sort_oldest_first() -> None:
    history = history_of(
        [order("a", "2", 1, 11.0, "mug", "wrap"), order("a", "1", 9, 5.0, "old")], ITEMS
    )
    assert [o.at for o in history.orders] == [NOW - timedelta(days=9), NOW - timedelta(days=1)]
    assert history.items == {"mug", "old"}  # unknown items stay, without a category
    assert history.categories == {"kitchen"}
    assert history.spend == 16.0


def test_every_customer_gets_a_view_with_their_own_rows() -> None:
    contact = Contact("winback", NOW - timedelta(days=3))
    rows = PlanningRows(
        customers=[
            CustomerRecord(Customer("a", "a@example.com"), "weekly", None),
            CustomerRecord(Customer("b", "b@example.com")),
        ],
        orders=[order("a", "1", 5, 20.0, "mug")],
        personal={"a": [["mug", 1.0]]},
        contacts={"b": (contact,)},
        suppressed=frozenset({email_hash("B@example.com ")}),
        items=ITEMS,
        popular=[["mug", 1.0]],
    )
    found = snapshot(rows, LoyaltySettings(), NOW)
    a, b = found.views
    assert (a.customer.id, a.history.count, a.personal, a.contacts) == ("a", 1, [["mug", 1.0]], ())
    assert a.frequency_preference == "weekly" and not a.suppressed and a.rfm is not None
    assert (b.history.count, b.personal, b.contacts, b.suppressed) == (0, None, (contact,), True)
    assert a.standing is not None and found.items is ITEMS and found.popular == [["mug", 1.0]]


def test_a_suppression_holds_for_the_address_in_either_unicode_form() -> None:
    """A complaint recorded for ``Müller@…`` exported decomposed (``u`` + U+0308) by
    another system suppresses the address typed composed, and the other way round; a
    suppression hashed before addresses were composed (the form as given) still holds."""
    composed, decomposed = "m\u00fcller@example.com", "mu\u0308ller@example.com"
    assert email_hash(composed) == email_hash(decomposed) == email_hash(" M\u00dcLLER@example.com")
    old = hashlib.sha256(decomposed.encode()).hexdigest()  # as written before
    for stored in (email_hash(decomposed), old):
        rows = PlanningRows(
            customers=[
                CustomerRecord(Customer("m", composed)),
                CustomerRecord(Customer("n", "n@x.de")),
            ],
            orders=[],
            personal={},
            contacts={},
            suppressed=frozenset({stored}),
            items=ITEMS,
            popular=[],
        )
        m, n = snapshot(rows, LoyaltySettings(), NOW).views
        assert (m.suppressed, n.suppressed) == (True, False)


def test_a_customer_who_objected_to_profiling_has_no_rfm_segment() -> None:
    """An RFM segment (``at_risk``, ``cant_lose_them``) scores a customer's behaviour
    against the customer base: profiling, as a churn forecast is. An objector had one, so
    a campaign with ``rfm_segments`` picked them by it; now they have none (the rule never
    matches them), while the others' scores are as before."""
    rows = PlanningRows(
        customers=[
            CustomerRecord(Customer("a", "a@example.com")),
            CustomerRecord(Customer("b", "b@example.com", objected_to_profiling=True)),
        ],
        orders=[order("a", "1", 5, 20.0, "mug"), order("b", "2", 200, 900.0, "mug")],
        personal={},
        contacts={},
        suppressed=frozenset(),
        items=ITEMS,
        popular=[],
    )
    a, b = snapshot(rows, LoyaltySettings(), NOW).views
    assert a.rfm is not None and b.rfm is None
    assert b.history.count == 1 and b.standing is not None  # their own orders still count


def test_an_objector_has_no_forecast_even_where_the_forecast_holds_a_row() -> None:
    """The store leaves objectors out of the forecast; a row that is there anyway (an
    objection recorded after the forecast was stored) is not planned with either."""
    rows = PlanningRows(
        customers=[
            CustomerRecord(Customer("a", "a@example.com")),
            CustomerRecord(Customer("b", "b@example.com", objected_to_profiling=True)),
            CustomerRecord(Customer("c", "c@example.com")),
        ],
        orders=[order("a", "1", 5, 20.0, "mug"), order("b", "2", 200, 900.0, "mug")],
        personal={},
        contacts={},
        suppressed=frozenset(),
        items=ITEMS,
        popular=[],
    )
    row = {"a": CustomerForecast("a", 0.5, 0.39, "medium", 10.0, 30.0, None, None)}
    row["b"] = row["a"]._replace(customer_id="b")
    live = LiveForecast.of("blend", date(2024, 6, 1), 90, row.values(), ZoneInfo("UTC"))
    found = snapshot(rows, LoyaltySettings(), NOW, live)
    a, b, c = found.views
    assert (a.forecast, b.forecast, c.forecast) == (row["a"], None, None)
    assert found.forecast is live
    assert snapshot(rows, LoyaltySettings(), NOW).views[0].forecast is None


def test_reviews_and_the_newsletter_sign_up_count_in_the_loyalty_standing() -> None:
    """a: an order of 20 (10 + 20 points), 3 reviews (75), a double opt-in (50): 155; b: the
    same order and reviews, an existing-customer consent: no sign-up, 105."""
    consent_at = NOW - timedelta(days=9)
    rows = PlanningRows(
        customers=[
            CustomerRecord(
                Customer("a", None, consent_basis=ConsentBasis.DOUBLE_OPT_IN, consent_at=consent_at)
            ),
            CustomerRecord(
                Customer(
                    "b", None, consent_basis=ConsentBasis.EXISTING_CUSTOMER, consent_at=consent_at
                )
            ),
        ],
        orders=[order("a", "1", 5, 20.0, "mug"), order("b", "2", 5, 20.0, "mug")],
        personal={},
        contacts={},
        suppressed=frozenset(),
        items=ITEMS,
        popular=[],
        engagement={"a": {"review": 3}, "b": {"review": 3}},
    )
    table = LoyaltySettings(
        tiers=({"name": "member", "min_points": 0}, {"name": "vip", "min_points": 150})
    )
    a, b = snapshot(rows, table, NOW).views
    assert a.standing == Standing(155, "vip", None, None)
    assert b.standing == Standing(105, "member", "vip", 45)
