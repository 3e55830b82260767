"""Segments: pure predicates and scores over one customer's history and ``now``.

A :class:`History` is what the planner knows about a customer's purchases (built once per
run from the store). Everything here is a plain function, so campaign audiences are
testable with fixed clocks and composable in any order.

RFM: recency, frequency and monetary value are scored 1–5 by quintile across the customer
base (5 = best: most recent, most orders, highest spend), and named with the widely used
segment table (champions, loyal customers, at risk, …).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

import numpy as np

from recocamp.campaigns.caps import days_before


@dataclass(frozen=True, slots=True)
class Order:
    """One order of the customer: when, how much, which items and categories."""

    at: datetime
    revenue: float
    items: frozenset[str]
    categories: frozenset[str]


@dataclass(frozen=True, slots=True)
class History:
    orders: tuple[Order, ...]  # oldest first
    # items returned in full (``domain.returned_in_full``): in no order's items, and never
    # to be offered to the customer in any mode (``offers.select``)
    returned: frozenset[str] = frozenset()

    @property
    def count(self) -> int:
        return len(self.orders)

    @property
    def spend(self) -> float:
        """The orders' revenue, rounded to 9 places: summed in floating point, 9.50 and
        3 × 29.90 + 0.80 are 99.99999999999999, and ``min_spend = 100`` left out a customer
        who spent exactly 100.00 (as a float sum of prices that make 500.00 may be below it,
        ``loyalty.points``)."""
        return round(sum(order.revenue for order in self.orders), 9)

    @property
    def last_at(self) -> datetime | None:
        return self.orders[-1].at if self.orders else None

    @property
    def categories(self) -> frozenset[str]:
        return frozenset().union(*(order.categories for order in self.orders))

    @property
    def items(self) -> frozenset[str]:
        return frozenset().union(*(order.items for order in self.orders))


EMPTY = History(())


def days_since_last_order(
    history: History, now: datetime, zone: ZoneInfo | None = None
) -> float | None:
    """Days since the last order; with ``zone``, on the wall clock there (calendar days, as
    the caps and ``not_contacted_days`` count them), else in periods of 24 hours."""
    last = history.last_at
    if last is None:
        return None
    if zone is None:
        return (now - last).total_seconds() / 86400
    return (_wall(now, zone) - _wall(last, zone)).total_seconds() / 86400


def _wall(at: datetime, zone: ZoneInfo) -> datetime:
    return at.astimezone(zone).replace(tzinfo=None)


def lapsed_between(
    history: History,
    now: datetime,
    min_days: float,
    max_days: float,
    zone: ZoneInfo | None = None,
) -> bool:
    """Last order at least ``min_days`` and less than ``max_days`` ago; with the customer's
    ``zone``, calendar days there: in hours, a weekly 10:00 run after the spring-forward change
    found an order at 09:30 sixty days before 59.98 days old, and the customer came a week
    late for ``lapsed_days = [60, …]`` (and after the autumn change, never for ``[…, 180]``)."""
    days = days_since_last_order(history, now, zone)
    return days is not None and min_days <= days < max_days


def orders_between(history: History, low: int, high: int | None = None) -> bool:
    return history.count >= low and (high is None or history.count <= high)


def spend_between(history: History, low: float, high: float | None = None) -> bool:
    return history.spend >= low and (high is None or history.spend <= high)


def bought_category(history: History, categories: Iterable[str]) -> bool:
    return not history.categories.isdisjoint(categories)


def birthday_today(birthday: date | None, now: datetime, zone: ZoneInfo) -> bool:
    """Is it the customer's birthday in their own zone? 29 February counts on 28 February
    in years without it."""
    if birthday is None:
        return False
    today = now.astimezone(zone).date()
    month, day = birthday.month, birthday.day
    if (month, day) == (2, 29) and not _leap(today.year):
        day = 28
    return (today.month, today.day) == (month, day)


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def due_for_replenishment(history: History, now: datetime, min_orders: int = 2) -> list[str]:
    """Items bought in at least ``min_orders`` orders whose usual interval (the median gap
    between those orders) has passed since the last purchase; most overdue first."""
    return Repurchases.of(history).due(now, min_orders)


@dataclass(frozen=True, slots=True)
class Repurchases:
    """Per item, the times of the orders that hold it (whole microseconds, oldest first) and
    the usual interval of the items bought more than once: what :func:`due_for_replenishment`
    reads. The shop API keeps it with a customer's history, so that a new order costs the
    medians of its own items only (a big buyer's whole history cost 12 ms a request).
    Intervals depend only on each item's times, so :meth:`extended` gives what :meth:`of`
    gives for the whole history, whatever the times of the new orders."""

    times: Mapping[str, tuple[int, ...]]
    usual: Mapping[str, float]  # seconds; items in at least 2 orders

    @classmethod
    def of(cls, history: History) -> Repurchases:
        times: dict[str, list[int]] = {}
        for order in history.orders:  # whole microseconds: the intervals of timedelta, cheaper
            at = _microseconds(order.at)
            for item in order.items:
                times.setdefault(item, []).append(at)
        kept = {item: tuple(when) for item, when in times.items()}
        return cls(kept, {item: _usual(when) for item, when in kept.items() if len(when) > 1})

    def extended(self, orders: Iterable[Order]) -> Repurchases:
        """These plus the items of ``orders`` (new orders, at any time)."""
        times, usual = dict(self.times), dict(self.usual)
        changed: set[str] = set()
        for order in orders:
            at = _microseconds(order.at)
            for item in order.items:
                when = [*times.get(item, ()), at]
                if len(when) > 1 and when[-2] > at:
                    when.sort()
                times[item] = tuple(when)
                changed.add(item)
        for item in changed:
            if len(times[item]) > 1:
                usual[item] = _usual(times[item])
        return Repurchases(times, usual)

    def due(self, now: datetime, min_orders: int = 2) -> list[str]:
        """See :func:`due_for_replenishment` (``min_orders`` below 2 counts as 2: an item
        bought once has no interval)."""
        overdue = []
        moment = _microseconds(now)
        for item, usual in self.usual.items():
            when = self.times[item]
            if len(when) < min_orders:
                continue
            waited = (moment - when[-1]) / 1e6  # as timedelta.total_seconds() divides
            if usual > 0 and waited >= usual:
                overdue.append((waited / usual, item))
        return [item for _, item in sorted(overdue, key=lambda pair: (-pair[0], pair[1]))]

    def changes_after(self, now: datetime, min_orders: int = 2) -> datetime | None:
        """The first moment after ``now`` from which :meth:`due` may answer otherwise, or
        None if it never will: an item falls due, or two due items swap places (a due item's
        ratio grows at 1 / its interval, so one with a shorter interval overtakes another;
        the first overtaking is always between neighbours of today's order). A cached answer
        built on ``due(now)`` holds until then, no longer."""
        moment = _microseconds(now)
        ratios = []  # (ratio now, item, last time, interval), interval in microseconds
        first = math.inf
        for item, usual in self.usual.items():
            when = self.times[item]
            if len(when) < min_orders or usual <= 0:
                continue
            interval = usual * 1e6
            if (moment - when[-1]) / 1e6 >= usual:
                ratios.append(((moment - when[-1]) / interval, item, when[-1], interval))
            else:
                first = min(first, math.ceil(when[-1] + interval))
        ratios.sort(key=lambda row: (-row[0], row[1]))
        for (_, _, ahead, slow), (_, _, behind, fast) in pairwise(ratios):
            if fast < slow:  # (t - ahead) / slow = (t - behind) / fast
                first = min(first, max(moment + 1, math.ceil(_meet(ahead, slow, behind, fast))))
        if first == math.inf:
            return None
        try:
            return now + (int(first) - moment) * _MICROSECOND
        except OverflowError:  # two intervals a hair apart meet after the calendar's year 9999
            return None


def _meet(ahead: int, slow: float, behind: int, fast: float) -> float:
    """When the ratio of the item bought ``behind`` (interval ``fast``) reaches that of the
    one bought ``ahead`` (interval ``slow``): (t - ahead) / slow = (t - behind) / fast."""
    return (behind * slow - ahead * fast) / (slow - fast)


def _usual(when: tuple[int, ...]) -> float:
    """The median gap, in seconds, between consecutive times (oldest first)."""
    return statistics.median([(b - a) / 1e6 for a, b in pairwise(when)])


def _microseconds(at: datetime) -> int:
    """``at`` in whole microseconds since the epoch (naive times against a naive epoch, so
    that differences are what subtracting the datetimes gives)."""
    return (at - (_EPOCH if at.tzinfo is not None else _NAIVE_EPOCH)) // _MICROSECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def last_contacted_within(
    contacts: Iterable[datetime],
    now: datetime,
    days: float,
    zone: ZoneInfo | None = None,
    schedule: ZoneInfo | None = None,
) -> bool:
    """A contact in the last ``days``, or one still to come: an e-mail queued for the end of
    quiet hours goes out after ``now``, and the caps count it already. With the customer's
    ``zone``, whole calendar days there, as the caps count them (``caps.days_before``): in
    hours, a weekly 10:00 run found the week across the spring-forward change (167 h)
    "within seven days" of the last one and left the customer out. ``schedule``: the
    campaign's zone, as the caps read it (``caps.days_before``)."""
    if zone is not None and float(days).is_integer():
        since = days_before(now, int(days), zone, schedule)
    else:
        since = now - timedelta(days=days)
    return any(at > since for at in contacts)


# --- RFM ---------------------------------------------------------------------------------

RFM_SEGMENTS: tuple[tuple[str, tuple[int, int], tuple[int, int]], ...] = (
    # (name, recency range, combined frequency+monetary score range); the first match wins
    ("champions", (5, 5), (4, 5)),
    ("loyal_customers", (3, 5), (4, 5)),
    ("potential_loyalists", (4, 5), (2, 3)),
    ("new_customers", (5, 5), (1, 1)),
    ("promising", (4, 4), (1, 1)),
    ("cant_lose_them", (1, 2), (5, 5)),
    ("at_risk", (1, 2), (3, 4)),
    ("need_attention", (3, 3), (2, 3)),
    ("about_to_sleep", (3, 3), (1, 1)),
    ("hibernating", (2, 2), (1, 2)),
    ("lost", (1, 1), (1, 2)),
)
OTHERS = "others"  # the segment of a score no rule above matches


@dataclass(frozen=True, slots=True)
class Rfm:
    recency: int
    frequency: int
    monetary: int

    @property
    def segment(self) -> str:
        """The first of ``RFM_SEGMENTS`` whose recency and F+M ranges hold the scores. The
        F+M score is the mean of the two rounded half up: (2, 3) is 3 as (3, 4) is 4
        (Python's round goes half to even, which made the first 2 and the second 4)."""
        fm = (self.frequency + self.monetary + 1) // 2
        for name, (r_low, r_high), (fm_low, fm_high) in RFM_SEGMENTS:
            if r_low <= self.recency <= r_high and fm_low <= fm <= fm_high:
                return name
        return OTHERS


def rfm_scores(histories: Mapping[str, History], now: datetime) -> dict[str, Rfm]:
    """Quintile scores across all customers with at least one order."""
    active = [cid for cid, history in histories.items() if history.count]
    if not active:
        return {}
    recency = np.array([-(days_since_last_order(histories[c], now) or 0.0) for c in active])
    frequency = np.array([histories[c].count for c in active], dtype=float)
    monetary = np.array([histories[c].spend for c in active])
    r, f, m = (_quintiles(values) for values in (recency, frequency, monetary))
    return {cid: Rfm(int(r[n]), int(f[n]), int(m[n])) for n, cid in enumerate(active)}


def _quintiles(values: np.ndarray) -> np.ndarray:
    """1–5 by rank; ties share the score of their average rank (0-based, as rankdata's
    "average" method minus one: O(n log n), where a loop over distinct values was O(n²))."""
    from scipy.stats import rankdata  # here: importing scipy.stats costs 0.7 s, and most
    #                                   processes that import this module never rank

    ranks = rankdata(values, method="average") - 1
    scores: np.ndarray = 1 + np.floor(5 * ranks / len(values)).clip(0, 4)
    return scores.astype(int)
