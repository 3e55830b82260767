"""Engagement points and loyalty tiers, the scoring method of the retention guides.

Points come from purchases (per order and per currency unit spent) and from engagement
events (reviews, newsletter sign-ups) with the weights in ``[loyalty]`` settings; the
tier is the highest one whose threshold the points reach (none below the lowest). Reviews
are stored events (``POST /v1/events/reviews``, counted by ``store.views``); the newsletter
sign-up is read off the customer's consent record (:func:`engagement`). Pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from recocamp.campaigns.segments import History
from recocamp.domain import ConsentBasis, Customer
from recocamp.settings import LoyaltySettings

REVIEW = "review"
NEWSLETTER_SIGNUP = "newsletter_signup"


@dataclass(frozen=True, slots=True)
class Standing:
    points: int
    tier: str | None  # None below the lowest tier's threshold
    next_tier: str | None
    points_to_next: int | None


def points(history: History, events: Mapping[str, int], table: LoyaltySettings) -> int:
    """``events`` counts engagement events by kind (``review``, ``newsletter_signup``; see
    :func:`engagement`)."""
    earned = table.points_per_order * history.count
    # whole points for whole currency units; rounded first, since a float sum of prices that
    # make exactly 500.00 may be 499.99999999999994 (and 0.29 × 100 is 28.999999999999996)
    earned += math.floor(round(table.points_per_currency_unit * max(history.spend, 0.0), 9))
    earned += table.points_per_review * events.get(REVIEW, 0)
    earned += table.points_per_newsletter_signup * events.get(NEWSLETTER_SIGNUP, 0)
    return earned


def engagement(customer: Customer, stored: Mapping[str, int], now: datetime) -> dict[str, int]:
    """The customer's engagement events at ``now`` by kind: the ``stored`` ones (reviews up to
    ``now``) and one newsletter sign-up when their consent record shows a double opt-in
    confirmed at or before ``now``.

    A double opt-in is the shop's proof that the customer confirmed the newsletter sign-up,
    so it needs no event of its own. It counts once per customer: re-subscribing after an
    unsubscribe (a new double opt-in) earns nothing more. Unsubscribing later
    (``unsubscribed_at``) keeps the points: the sign-up happened, points once earned are a
    programme's fact, and withdrawing consent must cost the customer nothing (GDPR Art. 7(3)
    and (4)): a tier that drops when someone unsubscribes would read as a penalty for it.
    What counts is the record as it stands: a shop whose own data sets the basis to
    ``existing_customer`` or ``none`` says it holds no double opt-in any more, and we keep no
    other record of one, so the points go with it (unsubscribe instead of clearing the basis
    to keep them). A consent time past ``now`` (a planned or previewed past instant) has not
    happened yet."""
    found = {kind: number for kind, number in stored.items() if number}
    signed_up = (
        customer.consent_basis == ConsentBasis.DOUBLE_OPT_IN
        and customer.consent_at is not None
        and customer.consent_at <= now
    )
    if signed_up:
        found[NEWSLETTER_SIGNUP] = 1
    return found


def standing(total: int, tiers: Sequence[tuple[str, int]]) -> Standing:
    """The tier reached with ``total`` points and how far the next one is; none below the
    lowest threshold (a shop whose first tier starts at 100 points: a customer with 40 is no
    member yet, and was mailed as one by ``loyalty_tiers = ["member"]``)."""
    reached = [name for name, threshold in tiers if total >= threshold]
    current = reached[-1] if reached else None
    above = [(name, threshold) for name, threshold in tiers if threshold > total]
    if not above:
        return Standing(total, current, None, None)
    name, threshold = above[0]
    return Standing(total, current, name, threshold - total)


def tiers_of(table: LoyaltySettings) -> list[tuple[str, int]]:
    return [(tier.name, tier.min_points) for tier in table.tiers]
