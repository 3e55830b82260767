"""Campaign measurement, pure: touches and orders in, attribution and uplift out.

**Touches.** A *treated* touch is an e-mail a run queued, whatever became of it (sent,
refused, cancelled before it went out, still waiting: intent to treat, see
``store.measure``); a *holdout* touch is a holdout decision: that customer would have been
mailed. Both are timed at their run's decision instant, so both groups' windows open together
(see ``store.measure``). Both are units of analysis: a customer mailed by a weekly campaign
four times is four units (whose intervals count the customer once, see **Uplift**).

**Attribution (last touch).** Every order of a customer belongs to the customer's latest
touch at or before it (of touches at one instant, the campaign named last, whatever the
arm), if the order falls inside that touch's window ``[at, at + W)`` (``[measure]
attribution_window_days``, default 7). Holdout touches take part in the same
competition, so a holdout customer's "would-have" orders are counted exactly like a
recipient's, and an order after a later e-mail of another campaign belongs to that one in
both groups alike. Orders are whole orders of purchase lines (no returns or adjustments,
postage included, as in the KPIs).

**Uplift** compares treated with holdout units per campaign, and per A/B variant (every
variant against the campaign's whole holdout, which is drawn before variants are), on

- conversion rate: share of units with ≥ 1 attributed order;
- revenue per recipient and orders per recipient: means over all units, zeros included;

with absolute uplift (treated − holdout) and relative uplift (treated / holdout − 1) and
their intervals (methods in :mod:`recocamp.measure.statistics`). The holdout and the variant
are drawn per customer, so the intervals take a customer's touches together (cluster-robust,
see there): a weekly campaign's dozen touches of one customer are not a dozen independent
units. Variants are also compared with each
other the same way. Only touches whose window has closed by ``as_of`` count; the others are
reported as pending. A comparison with fewer than ``min_group_size`` customers in a group or
fewer than ``min_conversions`` conversions in both groups together, or groups without any
spread (each customer of a group did the same), says "not enough data yet" instead of
numbers that only look precise.

Both groups meet the same rules: the planner draws the holdout among customers who would
get the e-mail (after consent, audience, caps and offers), and a holdout decision counts as a
contact for the held-out customer's later caps and cooldown (see ``planner``), and each
customer stays in the arm the run assigned them to, whatever happened to the e-mail later.

**Cohorts**, **NPS** and **KPI changes** (week/month/quarter over the previous one) are here
too; see their functions.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from recocamp.domain import Touch as Touch  # a shared value, re-exported
from recocamp.domain import composed
from recocamp.measure import statistics as stats
from recocamp.measure.kpis import OrderTotal
from recocamp.measure.statistics import Interval, Sample

METRICS = ("conversion_rate", "revenue_per_recipient", "orders_per_recipient")


@dataclass(frozen=True, slots=True)
class Result:
    """What one touch got: its attributed orders and their revenue."""

    touch: Touch
    orders: int = 0
    revenue: float = 0.0

    @property
    def converted(self) -> bool:
        return self.orders > 0


def attribute(
    touches: Iterable[Touch], orders: Iterable[OrderTotal], window: timedelta
) -> list[Result]:
    """Last-touch attribution: each order goes to its customer's latest touch at or before
    it, when the order is inside that touch's window. Returns one result per touch."""
    per_customer: dict[str, list[Touch]] = defaultdict(list)
    # ids compared composed (``domain.composed``, the one rule): orders a version before ids
    # were composed stored under 'Jose' + U+0301 are the mailed 'José''s, and went to nobody
    for touch in touches:
        per_customer[composed(touch.customer_id)].append(touch)
    # touches of one instant (campaigns on the same cron decide at its fire time) go by the
    # campaign's name, never by the arm: sorted holdouts last, a customer held out of one
    # campaign and mailed by another at 09:00 gave the mailed customer's orders to the
    # holdout, and every campaign's holdout gained what its mailed customers lost
    timelines = {
        c: sorted(ts, key=lambda t: (t.at, t.campaign, t.key)) for c, ts in per_customer.items()
    }
    times = {c: [t.at for t in ts] for c, ts in timelines.items()}
    tally: dict[tuple[str, int], tuple[int, float]] = {}
    for order in orders:
        customer = None if order.customer_id is None else composed(order.customer_id)
        if customer is None or customer not in timelines:
            continue
        index = bisect.bisect_right(times[customer], order.ordered_at) - 1
        if index >= 0 and order.ordered_at < times[customer][index] + window:
            count, revenue = tally.get((customer, index), (0, 0.0))
            tally[(customer, index)] = (count + 1, revenue + order.revenue)
    return [
        Result(touch, *tally.get((customer, index), (0, 0.0)))
        for customer, timeline in timelines.items()
        for index, touch in enumerate(timeline)
    ]


# --- uplift ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Group:
    """A group of units (treated or holdout) reduced to what the intervals need: the
    samples are of customers (their touches taken together, :meth:`Sample.clustered`) and
    ``effective`` the conversion counts scaled to the effective sample size."""

    units: int
    converted: int
    orders: Sample
    revenue: Sample
    customers: int = 0
    effective: tuple[float, float] = (0.0, 0.0)

    @classmethod
    def of(cls, results: Sequence[Result]) -> Group:
        by_customer: dict[str, list[Result]] = defaultdict(list)
        for result in results:
            by_customer[result.touch.customer_id].append(result)
        clusters = [by_customer[customer] for customer in sorted(by_customer)]
        return cls(
            units=len(results),
            converted=sum(1 for r in results if r.converted),
            orders=Sample.clustered([[float(r.orders) for r in c] for c in clusters]),
            revenue=Sample.clustered([[r.revenue for r in c] for c in clusters]),
            customers=len(clusters),
            effective=stats.effective_counts(
                [(sum(1 for r in c if r.converted), len(c)) for c in clusters]
            ),
        )

    @property
    def conversion_rate(self) -> float | None:
        return self.converted / self.units if self.units else None

    def value(self, metric: str) -> float | None:
        if not self.units:
            return None
        if metric == "conversion_rate":
            return self.converted / self.units
        return self.revenue.mean if metric == "revenue_per_recipient" else self.orders.mean


@dataclass(frozen=True, slots=True)
class Comparison:
    """One metric, treated against control: both values, absolute and relative uplift."""

    metric: str
    treated: float
    control: float
    treated_interval: Interval
    control_interval: Interval
    absolute: float
    absolute_interval: Interval
    relative: float | None
    relative_interval: Interval | None


@dataclass(frozen=True, slots=True)
class Uplift:
    """Treated against control for one campaign (``variant`` None: all variants) or one
    variant against another (``against`` names the control variant)."""

    campaign: str
    variant: str | None
    treated: Group
    control: Group
    enough: bool
    note: str
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    against: str = "holdout"
    pending: int = 0
    switched: int = 0  # customers left out: found in both groups compared (see ``uplifts``)
    erased: tuple[int, int] = (0, 0)  # (mailed, held-out) units left out: customer erased


@dataclass(frozen=True, slots=True)
class Thresholds:
    min_group_size: int = 100
    min_conversions: int = 10
    confidence: float = stats.CONFIDENCE


def compare(
    campaign: str,
    variant: str | None,
    treated: Sequence[Result],
    control: Sequence[Result],
    thresholds: Thresholds,
    against: str = "holdout",
) -> Uplift:
    """Uplift of ``treated`` over ``control``, or "not enough data yet" with the reason."""
    t, c = Group.of(treated), Group.of(control)
    other = "the holdout" if against == "holdout" else f"variant {against}"
    note = _shortfall(t, c, thresholds, other)
    if note:
        return Uplift(campaign, variant, t, c, False, note, against=against)
    level = thresholds.confidence
    comparisons = {
        "conversion_rate": _rates(t, c, level),
        "revenue_per_recipient": _means("revenue_per_recipient", t.revenue, c.revenue, level),
        "orders_per_recipient": _means("orders_per_recipient", t.orders, c.orders, level),
    }
    return Uplift(campaign, variant, t, c, True, "", comparisons, against)


def _shortfall(t: Group, c: Group, thresholds: Thresholds, other: str) -> str:
    """Why there are no numbers yet, naming the groups as the report does: the mailed
    customers and the holdout (or the variant compared with)."""
    smallest = thresholds.min_group_size
    if c.units == 0:
        if other != "the holdout":
            return f"not enough data yet: nobody got {other}"
        # the draw is per customer at random: a campaign with holdout_percent > 0 may not
        # have held any of its first few customers out (10 %: none of 8 for 43 % of them)
        return (
            "no holdout: nobody of this campaign was held out (its holdout_percent is 0, "
            "or too few customers were decided yet for the random draw to hold one out), "
            "so its uplift is not measured"
        )
    # customers, not touches: the intervals take a customer's touches together (a weekly
    # campaign's 13 touches of 10 customers are 10 units of evidence, not 130)
    if min(t.customers, c.customers) < max(smallest, 2):
        return (
            f"not enough data yet: {t.customers} mailed customers and {c.customers} in "
            f"{other}, at least {max(smallest, 2)} each needed"
        )
    # one at least, whatever ``min_conversions`` says (0 is allowed): without an order in
    # either group neither has any spread, and the per-recipient intervals were 0.00 … 0.00
    needed = max(thresholds.min_conversions, 1)
    if t.converted + c.converted < needed:
        return (
            f"not enough data yet: {t.converted + c.converted} conversions, at least "
            f"{needed} needed"
        )
    # each group all alike (every mailed customer one £20 box, nobody held out any): Welch's
    # interval had no spread to come from and read "+20.00 (+20.00 … +20.00)", certainty
    if any(t_.variance == 0 and c_.variance == 0 for t_, c_ in _per_recipient(t, c)):
        who = "every held-out customer" if other == "the holdout" else f"every one of {other}"
        return (
            f"not enough data yet: every mailed customer and {who} did the same (no spread "
            "to measure an interval from)"
        )
    return ""


def _per_recipient(t: Group, c: Group) -> tuple[tuple[Sample, Sample], ...]:
    return ((t.revenue, c.revenue), (t.orders, c.orders))


def _rates(t: Group, c: Group, level: float) -> Comparison:
    """The rates are the touches'; the intervals take the effective counts (clusters)."""
    pt, pc = t.converted / t.units, c.converted / c.units
    (xt, nt), (xc, nc) = t.effective, c.effective
    ratio = stats.risk_ratio(xt, nt, xc, nc, level)
    return Comparison(
        "conversion_rate",
        pt,
        pc,
        stats.wilson(xt, nt, level),
        stats.wilson(xc, nc, level),
        pt - pc,
        stats.newcombe(xt, nt, xc, nc, level),
        pt / pc - 1 if pc else None,
        Interval(ratio.low - 1, ratio.high - 1) if ratio else None,
    )


def _means(metric: str, t: Sample, c: Sample, level: float) -> Comparison:
    ratio = stats.ratio_of_means(t, c, level)
    return Comparison(
        metric,
        t.mean,
        c.mean,
        stats.mean_interval(t, level),
        stats.mean_interval(c, level),
        t.mean - c.mean,
        stats.welch(t, c, level),
        t.mean / c.mean - 1 if c.mean else None,
        Interval(ratio.low - 1, ratio.high - 1) if ratio else None,
    )


def closed(
    results: Iterable[Result], as_of: datetime, window: timedelta
) -> tuple[list[Result], int]:
    """Results whose attribution window has ended by ``as_of``, and how many are pending."""
    done, pending = [], 0
    for result in results:
        if result.touch.at + window <= as_of:
            done.append(result)
        elif result.touch.at < as_of:
            pending += 1
    return done, pending


def uplifts(
    results: Sequence[Result],
    thresholds: Thresholds,
    pending: Mapping[str, int] | None = None,
    erased: Mapping[str, tuple[int, int]] | None = None,
    earlier: Iterable[Touch] = (),
) -> list[Uplift]:
    """Per campaign: all variants against the holdout, each variant against the holdout, and
    each pair of variants against each other (the first named is the control).

    The holdout and the variant are stable per customer, until ``holdout_percent`` or the
    variants' weights change: then a customer can be mailed one week and held out the next,
    and the holdout holds customers the campaign already mailed (their e-mails' effect
    included). Such customers are left out of both groups compared, and counted
    (``switched``); before, they were counted in both. ``earlier``: touches before the
    report's window (``store.measure.earlier_arms``), which count for the switch alone: a
    customer mailed before it and held out in it carries that e-mail's effect as well.
    ``erased``: per campaign, the (mailed, held-out) units whose customer was erased since,
    left out before (see ``store.measure.touches``) and told with the campaign's overall
    row. A campaign with
    pending touches only (its first run within the window) gets an overall row without
    figures: left out, its run looked as if it had never been recorded."""
    by_campaign: dict[str, list[Result]] = defaultdict(list)
    for result in results:
        by_campaign[result.touch.campaign].append(result)
    waiting_only = {c for c, n in (pending or {}).items() if n and c not in by_campaign}
    before: dict[str, list[Touch]] = defaultdict(list)
    for touch in earlier:
        before[touch.campaign].append(touch)
    found: list[Uplift] = []
    for campaign in sorted(by_campaign.keys() | waiting_only):
        if campaign in waiting_only:
            found.append(_all_pending(campaign, (pending or {})[campaign], erased))
            continue
        seen = [r.touch for r in by_campaign[campaign]] + before[campaign]
        # of the report's units: a customer who switched before its window and has no touch
        # inside it is no unit left out of its groups
        units = {r.touch.customer_id for r in by_campaign[campaign]}
        crossed = _in_two_groups(seen, lambda touch: touch.holdout) & units
        rows = [r for r in by_campaign[campaign] if r.touch.customer_id not in crossed]
        holdout = [r for r in rows if r.touch.holdout]
        treated = [r for r in rows if not r.touch.holdout]
        overall = compare(campaign, None, treated, holdout, thresholds)
        waiting = (pending or {}).get(campaign, 0)
        gone = (erased or {}).get(campaign, (0, 0))
        found.append(replace(overall, pending=waiting, switched=len(crossed), erased=gone))
        mailed = [r.touch for r in treated] + [t for t in before[campaign] if not t.holdout]
        mixed = _in_two_groups(mailed, lambda touch: touch.variant) & {
            r.touch.customer_id for r in treated
        }
        variants = sorted({r.touch.variant for r in treated if r.touch.variant is not None})
        arms = {
            v: [r for r in treated if r.touch.variant == v and r.touch.customer_id not in mixed]
            for v in variants
        }
        found += [
            replace(compare(campaign, v, arms[v], holdout, thresholds), switched=len(crossed))
            for v in variants
        ]
        found += [
            replace(
                compare(campaign, b, arms[b], arms[a], thresholds, against=a),
                switched=len(mixed),
            )
            for n, a in enumerate(variants)
            for b in variants[n + 1 :]
        ]
    return found


def _all_pending(
    campaign: str, waiting: int, erased: Mapping[str, tuple[int, int]] | None
) -> Uplift:
    """The overall row of a campaign none of whose touches has its window over yet."""
    nobody = Group.of([])
    note = "not enough data yet: every touch is still inside its attribution window"
    gone = (erased or {}).get(campaign, (0, 0))
    return Uplift(campaign, None, nobody, nobody, False, note, pending=waiting, erased=gone)


def _in_two_groups(touches: Iterable[Touch], group: Callable[[Touch], object]) -> set[str]:
    """Customers whose touches fall in more than one ``group``."""
    seen: dict[str, set[object]] = defaultdict(set)
    for touch in touches:
        seen[touch.customer_id].add(group(touch))
    return {customer for customer, groups in seen.items() if len(groups) > 1}


# --- cohorts -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cohort:
    """Customers whose first order fell in ``month``; ``retention[k - 1]`` is the share of
    them with an order in the k-th calendar month after it (None: not over yet)."""

    month: date
    customers: int
    retention: tuple[float | None, ...]
    data_start: bool = False  # the month of the first order on record (see ``cohorts``)


def cohorts(
    orders: Iterable[OrderTotal], zone: ZoneInfo, as_of: datetime, max_months: int = 12
) -> list[Cohort]:
    """Monthly cohort retention in the shop's zone from orders before ``as_of`` (guests left
    out). Month k counts only once it has ended by ``as_of``.

    The cohort of the first month on record is marked ``data_start``: its "first orders" are
    every customer who ordered that month, also those who had ordered for years before the
    history a shop imported begins. On UCI (from December 2010) it held 885 customers who
    came back at 32–50 % a month against 15–30 % for the cohorts after it: read as first-time
    buyers, it says new customers were once twice as loyal; they are regulars."""
    months: dict[str, set[int]] = defaultdict(set)
    for order in orders:
        if order.customer_id is not None and order.ordered_at < as_of:
            local = order.ordered_at.astimezone(zone)
            # one customer in every Unicode form of the id (orders stored decomposed by a
            # version before ids were composed were a second, "new" customer)
            months[composed(order.customer_id)].add(local.year * 12 + local.month - 1)
    end = as_of.astimezone(zone)
    last_complete = end.year * 12 + end.month - 2  # the month before as_of's month
    members: dict[int, list[set[int]]] = defaultdict(list)
    for bought in months.values():
        members[min(bought)].append(bought)
    table = []
    for first in sorted(members):
        group = members[first]
        shares: list[float | None] = []
        for k in range(1, max_months + 1):
            if first + k > last_complete:
                shares.append(None)
                continue
            shares.append(sum(1 for bought in group if first + k in bought) / len(group))
        month = date(first // 12, first % 12 + 1, 1)
        table.append(Cohort(month, len(group), tuple(shares), first == min(members)))
    return table


# --- NPS ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Nps:
    """Net Promoter Score: % promoters (9–10) − % detractors (0–6), on −100…100."""

    responses: int
    promoters: int
    passives: int
    detractors: int
    score: float | None
    interval: Interval | None
    enough: bool
    distribution: tuple[int, ...]  # answers per score 0…10


def nps(
    scores: Iterable[int], min_responses: int = 30, confidence: float = stats.CONFIDENCE
) -> Nps:
    distribution = [0] * 11
    for answer in scores:
        if not 0 <= answer <= 10:
            raise ValueError(f"an NPS answer lies in 0…10, got {answer}")
        distribution[answer] += 1
    n = sum(distribution)
    promoters, detractors = distribution[9] + distribution[10], sum(distribution[:7])
    value = 100 * (promoters - detractors) / n if n else None
    interval = stats.nps_interval(promoters, detractors, n, confidence) if n else None
    return Nps(
        n,
        promoters,
        n - promoters - detractors,
        detractors,
        value,
        interval,
        n >= min_responses,
        tuple(distribution),
    )


# --- KPI changes -------------------------------------------------------------------------

# (label, window in days, lag in days): a KPI over the last W days against the W days before
PERIODS = (("week", 7, 7), ("month", 30, 30), ("quarter", 90, 90))


@dataclass(frozen=True, slots=True)
class Change:
    period: str
    window_days: int
    kpi: str
    current: float | None
    previous: float | None

    @property
    def relative(self) -> float | None:
        if self.current is None or not self.previous:
            return None
        return self.current / self.previous - 1


def changes(
    snapshots: Mapping[tuple[date, int], Mapping[str, float | None]], day: date, kpis: Sequence[str]
) -> list[Change]:
    """Each KPI over the week, month and quarter ending with ``day`` against the one before
    (snapshots keyed by day and window); periods without both snapshots are left out."""
    found = []
    for label, window, lag in PERIODS:
        now = snapshots.get((day, window))
        before = snapshots.get((day - timedelta(days=lag), window))
        if now is None or before is None:
            continue
        found += [Change(label, window, kpi, now.get(kpi), before.get(kpi)) for kpi in kpis]
    return found
