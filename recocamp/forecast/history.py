"""Purchase days per customer, and what forecasters see of them at a cutoff (pure).

A *purchase day* is a calendar day in the shop's time zone on which a customer has at least one
purchase line (DESIGN.md, Forecast definitions). Days are integers: days since 1970-01-01 of
the shop-local calendar. Everything is numpy arrays, so a million customers stay cheap.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cached_property
from zoneinfo import ZoneInfo

import numpy as np

from recocamp.forecast.btyd import BgNbd

EPOCH = date(1970, 1, 1)
FIT_SAMPLE = 200_000  # customers BG/NBD is fitted on, at most
WINDOWS = (30, 90, 180, 365)  # recent-activity windows in days, features of the own model


def day_number(day: date) -> int:
    return (day - EPOCH).days


def day_of(number: int) -> date:
    return date.fromordinal(EPOCH.toordinal() + int(number))


def local_days(epoch_seconds: np.ndarray, zone: ZoneInfo) -> np.ndarray:
    """Shop-local day numbers of UTC instants: the zone's offset is looked up once per distinct
    UTC hour, at its start and its last second, not once per line. Most zones change their
    offset on the UTC hour; where one changed within an hour (Tehran left summer time at
    19:30 UTC, St. John's changed at 00:01 local until 2011: days turn there), that hour's
    lines are looked up one by one."""
    seconds = np.asarray(epoch_seconds, dtype=np.float64)
    hours, where = np.unique(np.floor(seconds / 3600.0).astype(np.int64), return_inverse=True)
    where = where.ravel()
    starts = [int(hour) * 3600 for hour in hours.tolist()]
    offsets = np.array([_offset(start, zone) for start in starts], dtype=np.float64)
    ends = np.array([_offset(start + 3599, zone) for start in starts], dtype=np.float64)
    local = seconds + offsets[where]
    changing = np.flatnonzero((offsets != ends)[where])
    if len(changing):
        exact = [_offset(int(np.floor(s)), zone) for s in seconds[changing].tolist()]
        local[changing] = seconds[changing] + np.array(exact, dtype=np.float64)
    return np.floor(local / 86400.0).astype(np.int64)


def _offset(epoch: int, zone: ZoneInfo) -> float:
    offset = datetime.fromtimestamp(epoch, UTC).astimezone(zone).utcoffset()
    return offset.total_seconds() if offset is not None else 0.0


@dataclass(frozen=True)
class PurchaseDays:
    """Each customer's distinct purchase days (ascending) and the spend of each day.

    ``customers`` is sorted; the days of customer ``i`` are ``day[start[i]:start[i + 1]]``.
    """

    customers: np.ndarray
    start: np.ndarray
    day: np.ndarray
    spend: np.ndarray
    # histories already built, by cutoff: forecasters and their evaluation ask for the same ones
    seen: dict[int, History] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def from_lines(customer_ids: np.ndarray, days: np.ndarray, revenue: np.ndarray) -> PurchaseDays:
        """Purchase lines (customer, local day number, line revenue) folded into days."""
        customers, code = np.unique(np.asarray(customer_ids), return_inverse=True)
        code = code.ravel().astype(np.int64)
        days = np.asarray(days, dtype=np.int64)
        key = code * (1 << 32) + (days - days.min() if len(days) else days)
        order = np.argsort(key, kind="stable")
        key = key[order]
        first = np.ones(len(key), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        at = np.flatnonzero(first)
        spend = (
            np.add.reduceat(np.asarray(revenue, dtype=np.float64)[order], at)
            if len(at)
            else (np.zeros(0))
        )
        owner = code[order][at]
        start = np.searchsorted(owner, np.arange(len(customers) + 1))
        return PurchaseDays(customers, start, days[order][at], spend)

    @cached_property
    def owner(self) -> np.ndarray:
        """The customer index of every entry (once: every count and history asks for it)."""
        return np.repeat(np.arange(len(self.customers)), np.diff(self.start))

    def count_in(self, first: int, end: int) -> np.ndarray:
        """Purchase days per customer in ``[first, end)``."""
        inside = (self.day >= first) & (self.day < end)
        return np.bincount(self.owner[inside], minlength=len(self.customers)).astype(np.float64)


@dataclass(frozen=True)
class History:
    """What every forecaster knows of each customer with a purchase day before ``cutoff``.

    ``rows`` index into :class:`PurchaseDays`. Recency and rhythm are in days; BG/NBD's inputs
    (:attr:`x`, :attr:`t_x`, :attr:`T`) in weeks, as the literature counts them.
    """

    cutoff: int
    rows: np.ndarray
    days: np.ndarray  # purchase days before the cutoff (x + 1)
    first: np.ndarray
    last: np.ndarray
    spend: np.ndarray
    first_spend: np.ndarray  # spend on the first purchase day
    recent: np.ndarray  # purchase days in each of WINDOWS before the cutoff (rows × windows)
    # BG/NBD's expectations already computed, by span in days: several forecasters ask
    expectations: dict[int, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    # the learning forecasters' answers already computed, by (name, span in days): ``blend``
    # and the evaluation of every forecaster ask for the same ones
    forecasts: dict[tuple[str, int], np.ndarray] = field(
        default_factory=dict, compare=False, repr=False
    )
    # the samples already drawn, by size: both learning forecasters train on the same ones
    samples: dict[int, History] = field(default_factory=dict, compare=False, repr=False)

    @staticmethod
    def at(purchases: PurchaseDays, cutoff: int) -> History:
        if cutoff not in purchases.seen:
            purchases.seen[cutoff] = History._build(purchases, cutoff)
        return purchases.seen[cutoff]

    @staticmethod
    def _build(purchases: PurchaseDays, cutoff: int) -> History:
        before = purchases.day < cutoff
        owner = purchases.owner[before]
        n = len(purchases.customers)
        days = np.bincount(owner, minlength=n)
        rows = np.flatnonzero(days)
        start = purchases.start[rows]
        last_at = start + days[rows] - 1
        spend = np.bincount(owner, weights=purchases.spend[before], minlength=n)[rows]
        recent = np.stack([purchases.count_in(cutoff - w, cutoff)[rows] for w in WINDOWS], axis=1)
        return History(
            cutoff,
            rows,
            days[rows].astype(np.float64),
            purchases.day[start],
            purchases.day[last_at],
            spend,
            purchases.spend[start],
            recent,
        )

    @cached_property
    def textbook(self) -> BgNbd:
        """BG/NBD fitted on this history (once: several forecasters use it). Past
        FIT_SAMPLE customers it is fitted on a fixed random sample of that many: the estimates
        of four parameters settle long before, and the fit stays seconds at a million."""
        chosen = self.fit_sample()
        return BgNbd.fit(self.x[chosen], self.t_x[chosen], self.T[chosen])

    def expected(self, days: int) -> np.ndarray:
        """BG/NBD's expected purchase days in the next ``days`` days (computed once)."""
        if days not in self.expectations:
            value = self.textbook.expected(days / 7.0, self.x, self.t_x, self.T)
            value.setflags(write=False)  # shared by every caller
            self.expectations[days] = value
        return self.expectations[days]

    def fit_sample(self, size: int = FIT_SAMPLE) -> slice | np.ndarray:
        """The customers a population model is fitted on: all, or a fixed random sample of
        ``size`` (the same for the same cutoff)."""
        if len(self.rows) <= size:
            return slice(None)
        rng = np.random.default_rng(self.cutoff % 2**32)  # before 1970 a day number is < 0
        return np.sort(rng.choice(len(self.rows), size, replace=False))

    def sample(self, size: int) -> History:
        """This history cut to the customers of :meth:`fit_sample` (itself where it holds no
        more than ``size``), with models of its own: a training window of a big shop is
        described, BG/NBD's fit included, on the customers a regression learns from, not on
        all of them (at a million customers that fit and those features cost more than the
        regression)."""
        chosen = self.fit_sample(size)
        if isinstance(chosen, slice):
            return self
        if size not in self.samples:
            self.samples[size] = History(
                self.cutoff,
                self.rows[chosen],
                self.days[chosen],
                self.first[chosen],
                self.last[chosen],
                self.spend[chosen],
                self.first_spend[chosen],
                self.recent[chosen],
            )
        return self.samples[size]

    @property
    def x(self) -> np.ndarray:
        """Repeat purchase days."""
        return self.days - 1.0

    @property
    def t_x(self) -> np.ndarray:
        return np.asarray((self.last - self.first) / 7.0, dtype=np.float64)

    @property
    def T(self) -> np.ndarray:
        """Weeks from the first purchase day to the last day of history (cutoff − 1 day)."""
        return (self.cutoff - 1 - self.first) / 7.0

    @property
    def recency(self) -> np.ndarray:
        """Days since the last purchase day, counted from the cutoff (1 = the day before)."""
        return (self.cutoff - self.last).astype(np.float64)

    @property
    def gap(self) -> np.ndarray:
        """The customer's own rhythm: mean days between purchase days (NaN with one day)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = np.where(self.days > 1, (self.last - self.first) / (self.days - 1), np.nan)
        return np.asarray(gap, dtype=np.float64)

    @cached_property
    def typical_gap(self) -> float:
        """The shop's rhythm: the median over repeat customers of their own mean gap between
        purchase days (each customer counts once, so frequent buyers' many short gaps do not
        set it); NaN without a repeat customer. Stands in for the gap of one-time buyers."""
        own = self.gap[self.days > 1]
        return float(np.median(own)) if len(own) else float("nan")

    @property
    def overdue(self) -> np.ndarray:
        """Days since the last purchase day over the customer's own rhythm (NaN with one day)."""
        return np.asarray(self.recency / self.gap, dtype=np.float64)

    @property
    def repeat_spend(self) -> np.ndarray:
        """Mean spend per repeat purchase day, as Gamma-Gamma counts it (NaN without one)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.asarray((self.spend - self.first_spend) / self.x, dtype=np.float64)

    @property
    def spend_per_day(self) -> np.ndarray:
        return np.asarray(self.spend / self.days, dtype=np.float64)
