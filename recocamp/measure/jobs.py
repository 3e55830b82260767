"""Measurement jobs, thin and idempotent: load from the store, call the pure stages, write.

- :func:`snapshot_kpis` is the worker's daily job: the KPI snapshot (every window in
  ``[measure] snapshot_window_days``) and the RFM segment sizes of the last complete
  shop-local day before ``now``, and of the days missed since the newest snapshot. A day is
  written once and computed again the next ``[measure] restate_days`` nights (orders that
  arrive late); running it twice a day writes those days again and nothing else.
- :func:`backfill` does the same for a range of past days (history for a shop that starts
  using recocamp, or for the demo shop, whose orders are from 2010–2011). KPIs can be
  computed as of any instant, so a backfilled day equals the day the job would have written.
- :func:`gather` collects everything the report shows as of an instant; :func:`store_report`
  renders it and keeps it for ``GET /reports/latest``.

A snapshot day ``D`` is the window ending at the end of ``D`` in the shop's zone (as of the
next local midnight, exclusive), so it covers all of ``D``'s orders.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from recocamp.campaigns import labels
from recocamp.campaigns.segments import OTHERS, History, Order, Rfm, rfm_scores
from recocamp.errors import ModelError
from recocamp.forecast import stored as forecast
from recocamp.forecast.history import day_number, day_of
from recocamp.forecast.outlook import closed as covered
from recocamp.measure import attribution as measure
from recocamp.measure import kpis, report
from recocamp.measure.attribution import Thresholds
from recocamp.measure.kpis import OrderTotal
from recocamp.settings import Settings
from recocamp.store import forecasts as forecast_store
from recocamp.store import measure as store
from recocamp.store import queries, registry
from recocamp.store.engine import Engine
from recocamp.store.forecasts import TierCounts

log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
CHUNK_DAYS = 31


def local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def day_end(day: date, zone: ZoneInfo) -> datetime:
    """The first instant after ``day`` in ``zone`` (a snapshot's ``as_of``), DST-aware."""
    return local_midnight(day + timedelta(days=1), zone)


def last_complete_day(now: datetime, zone: ZoneInfo) -> date:
    return now.astimezone(zone).date() - timedelta(days=1)


def snapshot_kpis(
    engine: Engine, settings: Settings, now: datetime, as_of: datetime | None = None
) -> int:
    """The daily job: snapshot the last complete shop-local day before ``as_of`` (default
    ``now``), and the days missed since the newest snapshot (the worker was down, a run
    missed its grace time: a misfire is skipped), at most ``history_days`` back; returns rows
    written (0 when all was done). Missing days were never written before: the trend lines
    bridged them with a straight segment and the week/month/quarter changes that needed them
    were silently left out. Rows record ``now`` as computed_at: a snapshot taken ``--as-of``
    a past day read as computed that day."""
    day = last_complete_day(as_of or now, settings.shop.zone)
    with engine.connect() as connection:
        newest = store.newest_snapshot_day(connection, day)
    first = day
    oldest = day - timedelta(days=settings.measure.history_days)
    if newest is not None and newest < day:
        first = max(newest + timedelta(days=1), oldest)
    written = _restate(engine, settings, day, newest, now) + backfill(
        engine, settings, first, day, now
    )
    log.info("kpi snapshot of %s … %s: %d rows written", first, day, written)
    return written


def _restate(
    engine: Engine, settings: Settings, day: date, newest: date | None, now: datetime
) -> int:
    """Compute again the ``[measure] restate_days`` days before ``day`` that were written:
    a shop whose orders arrive after the snapshot ran (its nightly export imported at 02:00,
    the snapshot at 00:30) had every day's snapshot without that day's orders, for good — a
    7-day window a seventh short, every day of the trend."""
    if newest is None or settings.measure.restate_days == 0:
        return 0
    measure = settings.measure
    first = day - timedelta(days=min(measure.restate_days, measure.history_days))
    last = min(newest, day - timedelta(days=1))
    if first > last:
        return 0
    return backfill(engine, settings, first, last, now, replace=True)


def backfill(
    engine: Engine,
    settings: Settings,
    first: date,
    last: date,
    now: datetime,
    *,
    replace: bool = False,
    on_days: Callable[[int], None] = lambda n: None,
) -> int:
    """Snapshot every day from ``first`` to ``last`` (inclusive) that is missing (all of them
    with ``replace``); returns rows written."""
    if first > last:
        raise ValueError(f"the first day {first} is after the last day {last}")
    zone = settings.shop.zone
    windows = settings.measure.snapshot_window_days
    with engine.connect() as connection:
        have = set() if replace else store.snapshot_keys(connection, first, last)
        have_segments = set() if replace else store.segment_days(connection, first, last)
        unsegmented = store.unsegmented(connection)
        data_start = queries.first_order_time(connection)
        parts = sorted(
            queries.order_parts(connection, EPOCH, day_end(last, zone)), key=lambda row: row[2]
        )
    # the KPIs take an order's lines of each instant (a window holds exactly its lines
    # inside it); the segments take whole orders
    totals = [OrderTotal(*row) for row in parts]
    times = [order.ordered_at for order in totals]
    segments = _SegmentTracker(_whole_orders(totals), unsegmented)
    days = [first + timedelta(days=n) for n in range((last - first).days + 1)]
    written = 0
    for start in range(0, len(days), CHUNK_DAYS):
        chunk = days[start : start + CHUNK_DAYS]
        kpi_rows: list[dict[str, Any]] = []
        segment_rows: list[dict[str, Any]] = []
        for day in chunk:
            as_of = day_end(day, zone)
            for window in windows:
                if (day, window) not in have:
                    found = _window(totals, times, as_of, window, zone)
                    result = kpis.compute(found, as_of, window, data_start, zone)
                    kpi_rows.append(_kpi_row(day, result, now))
            if day not in have_segments:
                sizes = sorted(segments.sizes(as_of).items())
                segment_rows += [
                    {"day": day, "segment": name, "customers": count, "computed_at": now}
                    for name, count in sizes
                ]
        if kpi_rows or segment_rows or replace:
            with engine.begin() as connection:
                redone = chunk if replace else ()
                written += store.write_snapshots(connection, kpi_rows, segment_rows, redone)
        on_days(len(chunk))
    return written


def _whole_orders(parts: Sequence[OrderTotal]) -> list[OrderTotal]:
    """Orders from their parts sorted by time: timed at the first, revenue summed (what
    ``queries.order_totals`` answers for the same lines)."""
    whole: dict[tuple[str, str | None], OrderTotal] = {}
    for part in parts:
        key = (part.order_id, part.customer_id)
        found = whole.get(key)
        whole[key] = part if found is None else replace(found, revenue=found.revenue + part.revenue)
    return sorted(whole.values(), key=lambda order: order.ordered_at)


def _window(
    totals: Sequence[OrderTotal],
    times: Sequence[datetime],
    as_of: datetime,
    window: int,
    zone: ZoneInfo,
) -> Sequence[OrderTotal]:
    low = bisect.bisect_left(times, kpis.window_starts(as_of, window, zone)[1])
    return totals[low : bisect.bisect_left(times, as_of)]


def _kpi_row(day: date, result: kpis.Kpis, now: datetime) -> dict[str, Any]:
    values = {name: getattr(result, name) for name in store.KPI_COLUMNS}
    return {
        "day": day,
        "window_days": result.window_days,
        "as_of": result.as_of,
        "computed_at": now,
        **values,
    }


class _SegmentTracker:
    """RFM segment sizes as of increasing instants, histories grown one order at a time
    (a year of daily snapshots would otherwise rebuild every history every day).

    ``unsegmented`` (objectors, erased customers) are in no segment's size, as the planner
    gives them no segment (``campaigns.audience``); their orders stay in the quintiles the
    others are scored by, as the planner's, so a size is the customers a campaign's
    ``rfm_segments`` rule could reach."""

    def __init__(
        self, orders: Sequence[OrderTotal], unsegmented: Collection[str] = frozenset()
    ) -> None:
        self.orders = [o for o in orders if o.customer_id is not None]
        self.unsegmented = unsegmented
        self.next = 0
        self.lists: dict[str, list[Order]] = {}
        self.histories: dict[str, History] = {}

    def sizes(self, as_of: datetime) -> Counter[str]:
        scores = self.scores(as_of)
        return Counter(s.segment for c, s in scores.items() if c not in self.unsegmented)

    def scores(self, as_of: datetime) -> dict[str, Rfm]:
        changed = set()
        while self.next < len(self.orders) and self.orders[self.next].ordered_at < as_of:
            order = self.orders[self.next]
            customer = str(order.customer_id)
            self.lists.setdefault(customer, []).append(
                Order(order.ordered_at, order.revenue, frozenset(), frozenset())
            )
            changed.add(customer)
            self.next += 1
        for customer in changed:
            self.histories[customer] = History(tuple(self.lists[customer]))
        return rfm_scores(self.histories, as_of)


# --- the report --------------------------------------------------------------------------


def gather(engine: Engine, settings: Settings, as_of: datetime, now: datetime) -> report.Data:
    """Everything the report shows, as of ``as_of`` (an instant; the report of the demo shop
    is as of a day in 2011)."""
    zone = settings.shop.zone
    m = settings.measure
    window = timedelta(days=m.attribution_window_days)
    start = as_of - timedelta(days=m.report_days)
    latest = last_complete_day(as_of, zone)
    first_day = latest - timedelta(days=m.history_days)
    with engine.connect() as connection:
        touches = store.touches(connection, start, as_of)
        erased = store.touches(connection, start, as_of, erased=True)
        earlier = store.earlier_arms(connection, start, {t.customer_id for t in touches})
        left_out = store.sends_left_out(connection, start, as_of)
        orders = [OrderTotal(*row) for row in queries.order_totals(connection, EPOCH, as_of)]
        reasons = labels.by_code(store.decision_reasons(connection, start, as_of))
        history = store.kpi_history(connection, first_day, latest)
        segment_sizes = store.segment_history(connection, first_day, latest)
        models = [_model_point(row) for row in registry.listing(connection)]
        # the overall NPS is of the last report_days, which may be more than history_days
        back = timedelta(days=max(m.history_days, m.report_days))
        answered = store.answers(connection, as_of - back, as_of)
        sent = store.surveys_sent(connection, {campaign for _, campaign, _, _ in answered})
    results = measure.attribute(touches, (o for o in orders if o.ordered_at >= start), window)
    done, _ = measure.closed(results, as_of, window)
    pending = Counter(r.touch.campaign for r in results if as_of - window < r.touch.at < as_of)
    thresholds = Thresholds(m.min_group_size, m.min_conversions, m.confidence)
    gone = _erased_units(erased, as_of, window)
    day = max((d for d, _ in history), default=None)
    return report.Data(
        shop=settings.shop.name,
        currency=settings.shop.currency,
        zone=settings.shop.time_zone,
        as_of=as_of,
        generated_at=now,
        attribution_days=m.attribution_window_days,
        report_days=m.report_days,
        sends_left_out=left_out,
        confidence=m.confidence,
        uplifts=measure.uplifts(done, thresholds, pending, gone, earlier),
        reasons=reasons,
        kpi_history=history,
        latest_day=day,
        changes=measure.changes(history, day, report.CHANGE_KPIS) if day else [],
        segments=segment_sizes,
        cohorts=measure.cohorts(orders, zone, as_of, m.cohort_months)[-m.cohort_months - 1 :],
        models=models,
        nps=replace(
            _nps(answered, sent, as_of, m.report_days, m.nps_min_responses, m.confidence, zone),
            partial=partial_months(as_of - back, as_of, zone),
        ),
        forecasts=forecasts(engine, settings, as_of),
    )


def _erased_units(
    touches: Sequence[measure.Touch], as_of: datetime, window: timedelta
) -> dict[str, tuple[int, int]]:
    """Per campaign, the (mailed, held-out) touches of erased customers whose window closed
    by ``as_of``: the units the uplift would have counted had they not been erased."""
    found: dict[str, tuple[int, int]] = {}
    for touch in touches:
        if touch.at + window <= as_of:
            mailed, held = found.get(touch.campaign, (0, 0))
            found[touch.campaign] = (mailed, held + 1) if touch.holdout else (mailed + 1, held)
    return found


def forecasts(engine: Engine, settings: Settings, as_of: datetime) -> report.ForecastSection:
    """The forecast sections as of ``as_of``: only versions made by then (``as_of`` midnight
    in the shop's zone at or before it), so a report of a past day shows that day's view."""
    zone = settings.shop.zone
    with engine.connect() as connection:
        tiers = [
            t
            for t in forecast_store.tier_history(connection)
            if local_midnight(t.as_of, zone) <= as_of
        ]
        stored = forecast_store.current_with_rows(connection)  # the version's own rows
        if stored is not None and local_midnight(stored[0].as_of, zone) > as_of:
            stored = None  # made after the day asked for
        before = None if stored is None else local_midnight(stored[0].as_of, zone)
        orders = [] if before is None else queries.order_totals(connection, EPOCH, before)
    section = report.ForecastSection(tiers=tiers, closed=_closed(engine, settings, tiers, as_of))
    if stored is None or not stored[1]:
        return section
    current, rows = stored
    at = local_midnight(current.as_of, zone)
    totals = sorted((OrderTotal(*row) for row in orders), key=lambda order: order.ordered_at)
    segments = {c: score.segment for c, score in _SegmentTracker(totals).scores(at).items()}
    values: dict[str, list[float]] = {}
    for row in rows:
        values.setdefault(segments.get(row.customer_id, OTHERS), []).append(row.lifetime_value)
    return replace(
        section,
        version=current.version,
        as_of=current.as_of,
        lifetime_days=current.lifetime_days,
        values=[
            report.SegmentValue(name, len(found), float(sum(found)))
            for name, found in sorted(values.items(), key=lambda kv: (-sum(kv[1]), kv[0]))
        ],
    )


def _closed(
    engine: Engine, settings: Settings, tiers: Sequence[TierCounts], as_of: datetime
) -> report.ClosedHorizon | None:
    """The newest version kept to be judged whose horizon ended by ``as_of``, judged where the
    data covers its last day (``forecast.newest_day``), else with a note saying so."""
    zone = settings.shop.zone
    ended = [
        t
        for t in tiers
        if t.predictions_kept
        and local_midnight(t.as_of + timedelta(days=t.horizon_days), zone) <= as_of
    ]
    if not ended:
        return None
    last = ended[-1]
    closed = report.ClosedHorizon(last.version, last.model, last.as_of, last.horizon_days, None)
    reach = forecast.newest_day(engine, settings, as_of)
    if not covered(day_number(last.as_of) + last.horizon_days, reach):
        # the clock passed the horizon, the data did not (a feed that stopped, an old export):
        # judged, every customer would have bought nothing (forecast-evaluate's rule too)
        seen = "no day" if reach is None else day_of(reach).isoformat()
        note = f"the data reaches {seen}, before its last day {closed.last_day}: it is not judged"
        return replace(closed, note=note)
    try:
        return replace(closed, quality=forecast.closed_horizon(engine, settings, last))
    except ModelError as error:
        return replace(closed, note=str(error))


def _model_point(row: Any) -> report.ModelPoint:
    metrics = row.metrics or {}
    candidate = metrics.get("candidate", {})
    popularity = metrics.get("popularity", {})
    values = {name: candidate.get(name) for name in ("recall", "ndcg", "hit_rate")}
    values["popularity_recall"] = popularity.get("recall")
    return report.ModelPoint(
        row.version,
        row.name,
        row.status,
        row.trained_at,
        row.data_cutoff,
        {k: float(v) for k, v in values.items() if v is not None},
    )


def _nps(
    answered: Sequence[tuple[str, str, int, datetime]],
    sent: Counter[str],
    as_of: datetime,
    days: int,
    minimum: int,
    confidence: float,
    zone: ZoneInfo,
) -> report.NpsSection:
    recent = [score for _, _, score, at in answered if at >= as_of - timedelta(days=days)]
    by_survey: dict[str, list[int]] = {}
    by_month: dict[date, list[int]] = {}
    for survey, _, score, at in answered:
        by_survey.setdefault(survey, []).append(score)
        local = at.astimezone(zone)
        by_month.setdefault(date(local.year, local.month, 1), []).append(score)
    return report.NpsSection(
        overall=measure.nps(recent, minimum, confidence),
        surveys=[
            (s, sent.get(s, 0), measure.nps(v, minimum, confidence))
            for s, v in sorted(by_survey.items())
        ],
        monthly=[
            (month, measure.nps(v, minimum, confidence)) for month, v in sorted(by_month.items())
        ],
    )


def partial_months(
    start: datetime, end: datetime, zone: ZoneInfo
) -> dict[date, tuple[date | None, date | None]]:
    """The shop-local months ``[start, end)`` covers in part: the first when ``start`` is not
    its first midnight (from that day), the last when ``end`` is not the next one's (before
    that day). The monthly NPS reads such a month's answers in part and says so: drawn beside
    whole months, a first month of a few days' answers read as a swing of the score."""
    found: dict[date, tuple[date | None, date | None]] = {}
    first = start.astimezone(zone)
    first_month = date(first.year, first.month, 1)
    if start != local_midnight(first_month, zone):
        found[first_month] = (first.date(), None)
    last = (end - timedelta(microseconds=1)).astimezone(zone)
    last_month = date(last.year, last.month, 1)
    following = date(last.year + last.month // 12, last.month % 12 + 1, 1)
    if end != local_midnight(following, zone):
        found[last_month] = (found.get(last_month, (None, None))[0], end.astimezone(zone).date())
    return found


def store_report(
    engine: Engine, settings: Settings, now: datetime, as_of: datetime | None = None
) -> int:
    """Render the report as of ``as_of`` (default ``now``) and keep it for
    ``/reports/latest``; returns its id."""
    data = gather(engine, settings, as_of or now, now)
    html = report.render_html(data)
    with engine.begin() as connection:
        return store.store_report(connection, html, report.summary(data), data.as_of, now)


def store_first_report(engine: Engine, settings: Settings, now: datetime) -> None:
    """Render the report as of ``now`` and keep it, unless a report was stored meanwhile
    (``store.store_first_report``: one first report whichever process renders it)."""
    data = gather(engine, settings, now, now)
    html = report.render_html(data)
    with engine.begin() as connection:
        store.store_first_report(connection, html, report.summary(data), data.as_of, now)
