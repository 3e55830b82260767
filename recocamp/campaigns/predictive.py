"""Forecast-driven audiences, pure: the live stored forecast, the audience's forecast keys, the
lapsed-days fallback, and the words each decision records about them.

A campaign whose ``[audience]`` has a forecast key (``churn_risk``, ``p_active_below``,
``overdue_ratio_at_least``, ``lifetime_value_top_share``) is decided by the stored forecast
when one is *live* at the run's ``now``: its ``as_of`` is on or before the run's shop-local day
and its horizon ``[as_of, as_of + H)`` has not closed (an older forecast predicts a period that
is over; a newer one was made with purchases after ``now``, as when planning ``--as-of`` a past
day). Then:

- a customer with a stored forecast matches when every forecast key given holds;
- a customer without one goes by ``fallback_lapsed_days``: new since ``as_of`` (whom the
  lapsed rule does not take either), or holding a history the forecast did not (an objection
  withdrawn after it was made, orders imported since): "none for this customer" had kept
  them out of the campaign until a forecast run, which a quiet shop's worker skips;
- a customer who ordered since ``as_of`` (an order with a product line at or after its
  midnight) goes by ``fallback_lapsed_days``: their row was made before that order (the
  nightly forecast is as of the day's midnight, a morning campaign sees the morning's
  orders), and "at risk and overdue" would mail a winback to someone who just bought;
- a customer who objected to profiling has no forecast and goes by ``fallback_lapsed_days``
  (last order in ``[min, max)`` days ago), never by a forecast, even one stored before the
  objection.

With no live forecast at all, ``fallback_lapsed_days`` replaces the forecast keys for every
customer; a campaign without it then matches nobody. Every other audience rule applies either
way. ``lifetime_value_top_share = s`` keeps the ``ceil(s × n)`` highest lifetime values among
the ``n`` customers of the live forecast, and every customer tied with the last of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import NamedTuple
from zoneinfo import ZoneInfo

from recocamp.campaigns import segments
from recocamp.campaigns.files import Audience
from recocamp.campaigns.segments import History
from recocamp.domain import RISK_CUTS, CustomerForecast


@dataclass(frozen=True, slots=True)
class LiveForecast:
    """The stored forecast a run plans with: which forecaster made it as of which day (and
    the instant that day starts in the shop's zone), every customer's row, and the lifetime
    values highest first (for the top-share cut)."""

    model: str
    as_of: date
    horizon_days: int
    rows: Mapping[str, CustomerForecast]
    values: tuple[float, ...]  # lifetime values, highest first
    starts_at: datetime  # as_of's midnight in the shop's zone: orders from here are not in it

    @classmethod
    def of(
        cls,
        model: str,
        as_of: date,
        horizon_days: int,
        rows: Iterable[CustomerForecast],
        zone: ZoneInfo,
    ) -> LiveForecast:
        by_customer = {row.customer_id: row for row in rows}
        values = tuple(sorted((row.lifetime_value for row in by_customer.values()), reverse=True))
        starts_at = datetime.combine(as_of, time(), tzinfo=zone)
        return cls(model, as_of, horizon_days, by_customer, values, starts_at)

    def ordered_since(self, history: History) -> bool:
        """Whether the customer placed an order with a product line at or after ``as_of``'s
        midnight (a purchase day the forecast has not seen; service lines alone are none).
        Newest first, stopping at the first order before it: a run asks for every customer,
        and a wholesale customer has thousands of older orders."""
        for order in reversed(history.orders):  # oldest first
            if order.at < self.starts_at:
                return False
            if order.items:
                return True
        return False

    @property
    def label(self) -> str:
        return f"{self.model} {self.as_of.isoformat()}"

    def value_cut(self, share: float) -> float:
        """The lowest lifetime value in the top ``share`` of customers (ties included)."""
        if not self.values:
            return math.inf
        keep = max(1, math.ceil(round(share * len(self.values), 9)))
        return self.values[min(keep, len(self.values)) - 1]


def live_at(as_of: date, horizon_days: int, now: datetime, zone: ZoneInfo) -> bool:
    """Whether a forecast as of ``as_of`` speaks for ``now``'s shop-local day (see above)."""
    day = now.astimezone(zone).date()
    return as_of <= day < as_of + timedelta(days=horizon_days)


# the audience code of a customer no forecast speaks for, in a campaign without a fallback
# (``planner.AudienceRule.NO_FORECAST``): recorded as the first forecast key, the report
# counted them under "forecast chance of ordering again too high" with no forecast live
NO_FORECAST = "no_forecast"


class Trigger(NamedTuple):
    """The forecast keys' verdict on one customer: the audience key that failed (None when the
    customer matches) and the words that say why, for the decision's reason."""

    failed: str | None
    detail: str


def trigger(
    audience: Audience,
    objected: bool,
    row: CustomerForecast | None,
    live: LiveForecast | None,
    history: History,
    now: datetime,
    zone: ZoneInfo | None = None,
) -> Trigger:
    """The predictive trigger for one customer (call only when ``audience.uses_forecast``);
    ``zone``: the customer's, where the fallback counts its days (``segments.lapsed_between``)."""
    if objected:
        return _fallback(audience, history, now, "objected to profiling", zone)
    if live is None:
        return _fallback(audience, history, now, "no live forecast", zone)
    if row is None:
        return _fallback(audience, history, now, f"not in {live.label}", zone)  # fits the column
    if live.ordered_since(history):
        why = f"ordered since the forecast {live.label}"
        return _fallback(audience, history, now, why, zone)
    failed = _forecast_miss(audience, row, live)
    if failed is not None:
        return failed
    below, least = audience.p_active_below, audience.overdue_ratio_at_least
    p_active = shown(row.p_active, 2, below, *RISK_CUTS)
    words = f"forecast {live.label}: churn_risk={row.churn_risk} (p_active {p_active}"
    if row.overdue_ratio is not None:
        overdue = shown(row.overdue_ratio, 1, least)
        words += f", overdue {overdue}×"
    if audience.lifetime_value_top_share is not None:
        words += f", value {row.lifetime_value:.0f}"
    return Trigger(None, f"{words})")


def _forecast_miss(audience: Audience, row: CustomerForecast, live: LiveForecast) -> Trigger | None:
    """The first forecast key the customer's row fails, in FORECAST_KEYS order. The words
    start with the forecaster and its ``as_of`` (``live.label``), as a match's do: the
    reason names the forecast that drove the decision, and a reason cut to its column keeps
    that part (a match's words ended with it, and ``quiet_hours_deferred — `` with a
    lifetime value ran past the column: "…, value 500, rhythm 2026-0…")."""
    said = f"forecast {live.label}:"
    if audience.churn_risk and row.churn_risk not in audience.churn_risk:
        p_active = shown(row.p_active, 2, *RISK_CUTS)
        return Trigger("churn_risk", f"{said} churn_risk={row.churn_risk} (p_active {p_active})")
    below = audience.p_active_below
    if below is not None and not row.p_active < below:
        p_active = shown(row.p_active, 2, below)
        return Trigger("p_active_below", f"{said} p_active {p_active} ≥ {bound(below)}")
    least = audience.overdue_ratio_at_least
    if least is not None:
        if row.overdue_ratio is None:
            return Trigger("overdue_ratio_at_least", f"{said} overdue unknown (no gap)")
        if row.overdue_ratio < least:
            overdue = shown(row.overdue_ratio, 2, least)
            words = f"{said} overdue {overdue}× < {bound(least)}×"
            return Trigger("overdue_ratio_at_least", words)
    share = audience.lifetime_value_top_share
    if share is not None:
        cut = live.value_cut(share)
        if row.lifetime_value < cut:
            value, low = shown_below(row.lifetime_value, cut, 0)
            words = f"{said} value {value} < {low} (top {share:.0%})"
            return Trigger("lifetime_value_top_share", words)
    return None


def shown(value: float, places: int, *thresholds: float | None) -> str:
    """``value`` to ``places`` decimals, or to more where the number so printed would stand
    on another side of one of the ``thresholds`` (below, at, above) than ``value`` does:
    rounded to two places, a customer at overdue ratio 0.996 skipped by
    ``overdue_ratio_at_least = 1`` read "overdue 1.00× < 1×", one at p_active 0.33331
    skipped by ``p_active_below = 0.3333`` "p_active 0.33 ≥ 0.3333", and a medium churn
    risk at 0.334 "churn_risk=medium (p_active 0.33)", high by the tiers' cut-offs
    (``RISK_CUTS``). Some number of places (at worst the shortest repr) prints ``value``
    itself, so the loop ends on the right side of every threshold."""
    cuts = [(cut, _side(value, cut)) for cut in thresholds if cut is not None]
    for more in range(places, 18):
        text = f"{value:.{more}f}"
        if all(_side(float(text), cut) == side for cut, side in cuts):
            return text
    return repr(value)


def _side(value: float, threshold: float) -> int:
    return (value > threshold) - (value < threshold)


def shown_below(value: float, cut: float, places: int) -> tuple[str, str]:
    """``value`` and ``cut`` (``value < cut``) to the same number of decimals, at least
    ``places``, with as many as it takes for the printed value to stay below the printed
    cut (a lifetime value of 99.6 under a cut of 99.7 read "value 100 < 100")."""
    for more in range(places, 18):
        low, high = f"{value:.{more}f}", f"{cut:.{more}f}"
        if float(low) < float(high):
            return low, high
    return repr(value), repr(cut)


def bound(threshold: float) -> str:
    """An audience key's threshold as short as it reads, never rounded: ``:g`` keeps six
    significant digits, and ``p_active_below = 0.1234567`` read 0.123457."""
    text = f"{threshold:g}"
    return text if float(text) == threshold else repr(threshold)


def _fallback(
    audience: Audience, history: History, now: datetime, why: str, zone: ZoneInfo | None
) -> Trigger:
    """The rule-based path: ``fallback_lapsed_days``, or no match when the campaign has none."""
    rule = audience.fallback_lapsed_days
    if rule is None:  # no forecast key judged them: not a forecast's verdict (NO_FORECAST)
        return Trigger(NO_FORECAST, f"{why}, no fallback_lapsed_days")
    days = segments.days_since_last_order(history, now, zone)
    lapsed = "never ordered" if days is None else f"lapsed {math.floor(days)} days"
    detail = (
        f"objected to profiling: lapsed rule ({lapsed})"
        if why == "objected to profiling"
        else f"{lapsed} ({why})"
    )
    matched = segments.lapsed_between(history, now, *rule, zone)
    return Trigger(None if matched else "fallback_lapsed_days", detail)
