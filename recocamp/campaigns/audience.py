"""The planner's audience, pure: the store's rows in, one :class:`CustomerView` per customer out.

``store.views`` reads what a campaign run plans with (customers, their orders, contacts,
suppressions, recommendation lists, the catalogue); this module gives it meaning: order
histories without service items (a gift-wrap line is no interest in gift wrap), RFM scores
across the customer base, the loyalty standing (orders, spend, reviews and the newsletter
sign-up, ``loyalty.engagement``) and each customer's row of the live forecast. A
customer who objected to profiling has neither an RFM score nor a forecast: scoring their
recency, frequency and spend against the customer base into segments such as ``at_risk``
is the profiling they objected to (GDPR Art. 21(2), 4(4)), as a churn forecast is, so an
``rfm_segments`` rule never matches them. ``campaigns.run.load_snapshot`` joins the
two for the run and the CLI alike.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from recocamp.campaigns.loyalty import engagement, points, standing, tiers_of
from recocamp.campaigns.planner import CustomerView
from recocamp.campaigns.predictive import LiveForecast
from recocamp.campaigns.segments import History, Order, rfm_scores
from recocamp.domain import CustomerOrder, Item, PlanningRows, email_hashes
from recocamp.settings import LoyaltySettings


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the planner plans with: the views, the catalogue, the cold-start list and the
    forecast live at ``now`` (None when none is)."""

    views: list[CustomerView]
    items: dict[str, Item]
    popular: list[list[Any]]
    forecast: LiveForecast | None = None


def snapshot(
    rows: PlanningRows,
    loyalty: LoyaltySettings,
    now: datetime,
    forecast: LiveForecast | None = None,
) -> Snapshot:
    """The planner's views of every customer at ``now``, in customer id order."""
    predicted = {} if forecast is None else forecast.rows
    histories = histories_of(rows.orders, rows.items, rows.returned)
    scores = rfm_scores(histories, now)
    tiers = tiers_of(loyalty)
    views = []
    for record in rows.customers:
        customer = record.customer
        history = histories.get(customer.id, History(()))
        suppressed = bool(
            rows.suppressed
            and customer.email
            and not rows.suppressed.isdisjoint(email_hashes(customer.email))
        )
        events = engagement(customer, rows.engagement.get(customer.id, {}), now)
        views.append(
            CustomerView(
                customer=customer,
                history=history,
                personal=rows.personal.get(customer.id),
                contacts=rows.contacts.get(customer.id, ()),
                suppressed=suppressed,
                standing=standing(points(history, events, loyalty), tiers),
                rfm=None if customer.objected_to_profiling else scores.get(customer.id),
                frequency_preference=record.frequency_preference,
                paused_until=record.paused_until,
                channel_email=record.channel_email,
                forecast=None if customer.objected_to_profiling else predicted.get(customer.id),
            )
        )
    return Snapshot(views, rows.items, rows.popular, forecast)


def histories_of(
    orders: Iterable[CustomerOrder],
    catalogue: Mapping[str, Item],
    returned: Mapping[str, frozenset[str]] | None = None,
) -> dict[str, History]:
    """Every customer's history, oldest order first, without the items each returned in full
    (``returned``: customer → items, ``domain.returned_in_full``)."""
    per_customer: dict[str, list[Order]] = defaultdict(list)
    gone = returned or {}
    for order in orders:
        per_customer[order.customer_id].append(
            _order(order, catalogue, gone.get(order.customer_id, NONE))
        )
    return {
        c: History(tuple(sorted(o, key=lambda x: x.at)), gone.get(c, NONE))
        for c, o in per_customer.items()
    }


def history_of(
    orders: Iterable[CustomerOrder],
    catalogue: Mapping[str, Item],
    returned: frozenset[str] = frozenset(),
) -> History:
    """One customer's history (the shop API's view), oldest order first, without the items
    they returned in full (``returned``)."""
    found = [_order(order, catalogue, returned) for order in orders]
    return History(tuple(sorted(found, key=lambda order: order.at)), returned)


NONE: frozenset[str] = frozenset()


def _order(order: CustomerOrder, catalogue: Mapping[str, Item], returned: frozenset[str]) -> Order:
    """Service items (postage, gift wrap) count for revenue, not as items or categories;
    items missing from the catalogue count as items without a category. Items returned in
    full are not bought (the order keeps its time and revenue: the visit happened)."""
    bought, categories = set(), set()
    for item in order.items.difference(returned) if returned else order.items:
        known = catalogue.get(item)
        if known is None or not known.is_service:
            bought.add(item)
            if known is not None:
                categories.add(known.category)
    return Order(order.at, order.revenue, frozenset(bought), frozenset(categories))
