"""Loyalty points and tiers at their boundaries."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from recocamp.campaigns.loyalty import engagement, points, standing, tiers_of
from recocamp.campaigns.segments import History, Order
from recocamp.domain import ConsentBasis, Customer
from recocamp.settings import LoyaltySettings, LoyaltyTier

TABLE = LoyaltySettings(points_per_order=0)  # 1 point per currency unit; silver from 500
AT = datetime(2024, 6, 4, tzinfo=UTC)


def spent(*amounts: float) -> History:
    return History(tuple(Order(AT, amount, frozenset(), frozenset()) for amount in amounts))


def test_a_spend_of_exactly_a_threshold_reaches_the_tier() -> None:
    """0.01 + 405.53 + 94.46 is 500.00, though its float sum is 499.99999999999994: the
    customer has 500 points and is silver, not 499 and bronze."""
    total = points(spent(0.01, 405.53, 94.46), {}, TABLE)
    assert total == 500
    assert standing(total, tiers_of(TABLE)).tier == "silver"


def test_a_rate_that_is_no_binary_fraction_still_counts_whole_points() -> None:
    table = LoyaltySettings(points_per_order=0, points_per_currency_unit=0.29)
    assert points(spent(100.0), {}, table) == 29  # 0.29 × 100 is 28.999999999999996 in floats


def test_tiers_start_at_their_threshold() -> None:
    tiers = tiers_of(TABLE)
    assert standing(499, tiers).tier == "bronze"
    assert standing(499, tiers).points_to_next == 1
    assert standing(500, tiers).tier == "silver"
    assert standing(10_000, tiers).next_tier is None


def signed_up(**changes: object) -> Customer:
    """A customer whose double opt-in was confirmed a day before ``AT``."""
    base = Customer(
        "c1",
        "c1@example.test",
        consent_basis=ConsentBasis.DOUBLE_OPT_IN,
        consent_at=AT - timedelta(days=1),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_a_confirmed_double_opt_in_is_one_newsletter_sign_up_from_its_time_on() -> None:
    assert engagement(signed_up(), {"review": 2}, AT) == {"review": 2, "newsletter_signup": 1}
    at_now = signed_up(consent_at=AT)
    assert engagement(at_now, {}, AT) == {"newsletter_signup": 1}  # at now: counted
    assert engagement(at_now, {}, AT - timedelta(microseconds=1)) == {}  # not yet
    assert engagement(signed_up(consent_at=None), {}, AT) == {}


def test_only_a_double_opt_in_is_a_sign_up_and_an_unsubscribe_keeps_it() -> None:
    for basis in (ConsentBasis.EXISTING_CUSTOMER, ConsentBasis.NONE):
        assert engagement(signed_up(consent_basis=basis), {"review": 1}, AT) == {"review": 1}
    gone = signed_up(unsubscribed_at=AT - timedelta(hours=1))
    assert engagement(gone, {}, AT) == {"newsletter_signup": 1}


def test_engagement_earns_its_points_on_top_of_purchases() -> None:
    table = LoyaltySettings(points_per_review=25, points_per_newsletter_signup=50)
    events = engagement(signed_up(), {"review": 2}, AT)
    assert points(spent(100.0), events, table) == 10 + 100 + 2 * 25 + 50
    assert standing(points(spent(100.0), events, table), tiers_of(table)).points_to_next == 290


def test_below_the_lowest_threshold_a_customer_has_no_tier() -> None:
    """A shop whose first tier starts above 0 (``member`` from 100 points): a customer with
    40 points has reached none. They were given the first tier anyway, so a campaign for
    ``loyalty_tiers = ["member"]`` thanked them for a membership they had not earned."""
    table = LoyaltySettings(
        tiers=(
            LoyaltyTier(name="member", min_points=100),
            LoyaltyTier(name="gold", min_points=2000),
        )
    )
    tiers = tiers_of(table)
    below = standing(40, tiers)
    assert (below.tier, below.next_tier, below.points_to_next) == (None, "member", 60)
    assert standing(100, tiers).tier == "member"
