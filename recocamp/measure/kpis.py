"""Retention KPIs, exactly as defined in DESIGN.md §Retention KPIs. Pure: orders in, numbers out.

Window ``W`` days ending at ``as_of`` (exclusive), previous window ``[as_of − 2W, as_of − W)``;
days are calendar days in the shop's zone where one is given (:func:`window_starts`):

- orders: distinct orders of known customers with a purchase line in the window;
  guest orders are counted separately (``guest_orders``); an order whose lines were stamped
  on both sides of a window's edge (23:59 and 00:01) counts in each window, with the revenue
  of its lines inside it (``store.queries.order_parts``: one row per order and instant);
- purchase_frequency = orders / customers with an order;
- average_order_value = revenue of those orders / orders (postage and fees included);
- repeat_purchase_rate = customers with ≥ 2 orders / customers with ≥ 1;
- guest_checkout_rate = guest orders / (guest orders + customer orders);
- churn_rate = previous-window customers without an order in the window / previous-window
  customers;
- clv = average_order_value × purchase_frequency / churn_rate (revenue per customer over the
  expected lifetime, in units of W; ``None`` when churn_rate is 0).

Ratios whose denominator is zero are ``None`` rather than a made-up 0. So are churn_rate and
clv when the history (``data_start``, the first order on record) starts after the previous
window does: its customers would be only those of the days the history reaches, not the
previous window's (on UCI, from 2010-12-01, the 365-day churn of 2011-12-09 came from 9
days of orders: 12.9 %, and a CLV of 15,616 from it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo


@dataclass(frozen=True, slots=True)
class OrderTotal:
    """One order's purchase lines summed: who, when (first line), how much. The KPIs take
    an order's lines of one instant each (``store.queries.order_parts``), counted by id."""

    order_id: str
    customer_id: str | None
    ordered_at: datetime
    revenue: float


@dataclass(frozen=True, slots=True)
class Kpis:
    as_of: datetime
    window_days: int
    orders: int
    customers: int
    guest_orders: int
    purchase_frequency: float | None
    average_order_value: float | None
    repeat_purchase_rate: float | None
    guest_checkout_rate: float | None
    churn_rate: float | None
    clv: float | None

    def as_dict(self) -> dict[str, object]:
        values: dict[str, object] = {name: getattr(self, name) for name in self.__slots__}
        values["as_of"] = self.as_of.isoformat()
        return values


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def window_starts(
    as_of: datetime, window_days: int, zone: tzinfo | None = None
) -> tuple[datetime, datetime]:
    """The first instants of the window and of the previous one: ``W`` and ``2W`` calendar
    days before ``as_of`` in ``zone`` (the shop's), or ``W`` × 24 hours without one. In
    hours, a day's one-day window on the night the clocks went back began at 01:00 (its
    first hour's orders were in no day), and on the night they went forward at 23:00 the day
    before (that hour's orders in two days)."""
    if zone is None:
        at, window = as_of.astimezone(UTC), timedelta(days=window_days)
        return at - window, at - 2 * window
    local = as_of.astimezone(zone)
    start = (local - timedelta(days=window_days)).astimezone(UTC)
    return start, (local - timedelta(days=2 * window_days)).astimezone(UTC)


def compute(
    orders: Iterable[OrderTotal],
    as_of: datetime,
    window_days: int,
    data_start: datetime | None = None,
    zone: tzinfo | None = None,
) -> Kpis:
    """KPIs for the window ending at ``as_of``; ``orders`` must cover ``[as_of − 2W, as_of)``
    and ``data_start`` is the first order on record (None: the orders cover both windows);
    ``zone`` is the shop's, whose calendar days the windows count (:func:`window_starts`)."""
    as_of = as_of.astimezone(UTC)
    start, previous_start = window_starts(as_of, window_days, zone)
    partial = data_start is not None and data_start > previous_start
    ids: dict[str, set[str]] = {}  # customer → order ids: an order's parts count once
    previous_customers: set[str] = set()
    revenue = 0.0
    guests: set[str] = set()
    for order in orders:
        if start <= order.ordered_at < as_of:
            if order.customer_id is None:
                guests.add(order.order_id)
                continue
            ids.setdefault(order.customer_id, set()).add(order.order_id)
            revenue += order.revenue
        elif previous_start <= order.ordered_at < start and order.customer_id is not None:
            previous_customers.add(order.customer_id)
    per_customer = Counter({customer: len(found) for customer, found in ids.items()})
    guest_orders = len(guests)
    count = sum(per_customer.values())
    customers = len(per_customer)
    frequency = _ratio(count, customers)
    aov = _ratio(revenue, count)
    churned = len(previous_customers - per_customer.keys())
    churn = None if partial else _ratio(churned, len(previous_customers))
    clv = aov * frequency / churn if aov is not None and frequency is not None and churn else None
    return Kpis(
        as_of=as_of,
        window_days=window_days,
        orders=count,
        customers=customers,
        guest_orders=guest_orders,
        purchase_frequency=frequency,
        average_order_value=aov,
        repeat_purchase_rate=_ratio(sum(1 for n in per_customer.values() if n >= 2), customers),
        guest_checkout_rate=_ratio(guest_orders, guest_orders + count),
        churn_rate=churn,
        clv=clv,
    )
