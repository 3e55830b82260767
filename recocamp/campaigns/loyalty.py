"""Engagement points and loyalty tiers, the scoring method of the retention guides.

Points come from purchases (per order and per currency unit spent) and from engagement
events (reviews, newsletter sign-ups, …) with the weights in ``[loyalty]`` settings; the
tier is the highest one whose threshold the points reach. Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from recocamp.campaigns.segments import History
from recocamp.settings import LoyaltySettings


@dataclass(frozen=True, slots=True)
class Standing:
    points: int
    tier: str
    next_tier: str | None
    points_to_next: int | None


def points(history: History, events: Mapping[str, int], table: LoyaltySettings) -> int:
    """``events`` counts engagement events by kind (``review``, ``newsletter_signup``)."""
    earned = table.points_per_order * history.count
    # whole points for whole currency units; rounded first, since a float sum of prices that
    # make exactly 500.00 may be 499.99999999999994 (and 0.29 × 100 is 28.999999999999996)
    earned += math.floor(round(table.points_per_currency_unit * max(history.spend, 0.0), 9))
    earned += table.points_per_review * events.get("review", 0)
    earned += table.points_per_newsletter_signup * events.get("newsletter_signup", 0)
    return earned


def standing(total: int, tiers: Sequence[tuple[str, int]]) -> Standing:
    """The tier reached with ``total`` points and how far the next one is."""
    reached = [name for name, threshold in tiers if total >= threshold]
    current = reached[-1] if reached else tiers[0][0]
    above = [(name, threshold) for name, threshold in tiers if threshold > total]
    if not above:
        return Standing(total, current, None, None)
    name, threshold = above[0]
    return Standing(total, current, name, threshold - total)


def tiers_of(table: LoyaltySettings) -> list[tuple[str, int]]:
    return [(tier.name, tier.min_points) for tier in table.tiers]
