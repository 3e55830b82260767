"""Loyalty points and tiers at their boundaries."""

from __future__ import annotations

from datetime import UTC, datetime

from recocamp.campaigns.loyalty import points, standing, tiers_of
from recocamp.campaigns.segments import History, Order
from recocamp.settings import LoyaltySettings

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
