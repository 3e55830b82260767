"""Measurement commands: ``recocamp kpis``, ``report`` and ``snapshots take|backfill``."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.table import Table
from rich.text import Text

from recocamp.campaigns import labels
from recocamp.cli.common import (
    Output,
    app,
    check_year,
    clock,
    console,
    current_settings,
    day_count,
    engine_for,
    errors,
    errors_to_exit,
    fmt,
    not_to_come,
    parse_as_of,
    print_json,
    progress_bars,
    show,
    write_output,
)
from recocamp.errors import ConfigError, Problem
from recocamp.measure import jobs as measure_jobs
from recocamp.measure import kpis as kpi_module
from recocamp.measure import report
from recocamp.store import queries

snapshots_app = typer.Typer(
    help="Daily KPI and segment snapshots: take one, backfill past days.", no_args_is_help=True
)
app.add_typer(snapshots_app, name="snapshots")

FUTURE_REPORT = (
    "a report as of a time to come would be stored and served as the latest; "
    "--no-store reads it without keeping it"
)
AsOf = Annotated[str | None, typer.Option(help="As if it were this date or time (default: now).")]


@app.command("kpis")
def kpis(
    as_of: Annotated[str | None, typer.Option(help="End of the window (default: now).")] = None,
    window_days: Annotated[
        int | None, typer.Option(callback=day_count, help="Window W in days (1 to 36,500).")
    ] = None,
    format: Annotated[Output, typer.Option("--format")] = Output.table,
) -> None:
    """Retention KPIs over the window ending at --as-of (definitions in README.md)."""
    with errors_to_exit():
        settings = current_settings()
        end = parse_as_of(as_of, settings.shop.zone)
        days = window_days or settings.kpis.window_days
        zone = settings.shop.zone
        with engine_for(settings).connect() as connection:
            rows = queries.order_parts(
                connection, kpi_module.window_starts(end, days, zone)[1], end
            )
            latest = queries.latest_order_time(connection)
            first = queries.first_order_time(connection)
        totals = [kpi_module.OrderTotal(*row) for row in rows]
        result = kpi_module.compute(totals, end, days, data_start=first, zone=zone)
    empty = _empty_window_note(result, latest, settings.shop.zone)
    if format is Output.json:
        print_json(result.as_dict(), indent=2)
        if empty:
            errors.print(f"note: {empty}", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"retention KPIs, {days} days to {result.as_of.isoformat()}")
    table.add_column("kpi")
    table.add_column("value", justify="right")
    for name, value in result.as_dict().items():
        if name not in ("as_of", "window_days"):
            table.add_row(name, fmt(value))
    show(table)
    if empty:
        console.print(f"note: {empty}", highlight=False, soft_wrap=True)


def _empty_window_note(result: kpi_module.Kpis, latest: datetime | None, zone: ZoneInfo) -> str:
    """All zeros without a word read like a dead shop; usually the window is just in the
    wrong place (the default ends now, imported history may end years ago)."""
    if result.orders or result.guest_orders:
        return ""
    if latest is None:
        return "the store holds no orders at all: import purchases first"
    start = kpi_module.window_starts(result.as_of, result.window_days, zone)[0].astimezone(zone)
    last = latest.astimezone(zone).date()
    return (
        f"the window {start:%Y-%m-%d} – {result.as_of.astimezone(zone):%Y-%m-%d} holds no "
        f"orders; the last order was on {last} (try --as-of "
        f"{last + timedelta(days=1)})"
    )


@app.command("report")
def report_command(
    as_of: AsOf = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML report here.")] = None,
    format: Annotated[Output, typer.Option("--format")] = Output.table,
    store: Annotated[bool, typer.Option(help="Keep it for GET /reports/latest.")] = True,
) -> None:
    """Campaign uplift against holdouts, KPI trends, cohorts, segments, NPS, model quality."""
    with errors_to_exit():
        settings = current_settings()
        engine = engine_for(settings)
        now = clock.now()
        end = parse_as_of(as_of, settings.shop.zone) if as_of else now
        if store:  # kept, it is what GET /reports/latest serves
            not_to_come(end, settings.shop.zone, "--as-of", FUTURE_REPORT)
        data = measure_jobs.gather(engine, settings, end, now)
        document = report.render_html(data) if html is not None or store else ""
        if html is not None:  # first: a path it cannot write stores nothing
            write_output(html, document, "--html")
        if store:
            from recocamp.store import measure as measure_store

            with engine.begin() as connection:
                measure_store.store_report(connection, document, report.summary(data), end, now)
    if format is Output.json:
        print_json(report.summary(data), indent=1)
    else:
        _print_tables(data)
    if html is not None:  # with JSON, stdout holds the document alone (``| jq`` reads it)
        (errors if format is Output.json else console).print(f"HTML report written to {html}")


def _print_tables(data: report.Data) -> None:
    console.print(
        Text.assemble(
            (data.shop, "bold"),
            f": report as of {data.as_of.isoformat()}, campaigns of "
            f"the last {data.report_days} days, {data.attribution_days}-day attribution "
            "window (last touch)",
        )
    )
    if data.sends_left_out:
        console.print(
            f"{data.sends_left_out:,} e-mails of runs whose decisions were deleted ([privacy] "
            "decisions_days) are left out: their holdout is gone",
            highlight=False,
        )
    # one at a time: a table that is not there says so as it is built, in its place
    for build in (_kpi_table, _changes_table, _uplift_table, _nps_table, _cohort_table):
        table = build(data)
        if table is not None:
            show(table)


def _kpi_table(data: report.Data) -> Table | None:
    latest = {w: v for (d, w), v in sorted(data.kpi_history.items()) if d == data.latest_day}
    if not latest:
        console.print("no KPI snapshots yet: run `recocamp snapshots backfill`")
        return None
    table = Table(title=f"retention KPIs of the windows ending {data.latest_day}")
    table.add_column("kpi")
    for window in latest:
        table.add_column(f"{window} d", justify="right")
    for kpi in next(iter(latest.values())):
        table.add_row(labels.kpi(kpi), *(fmt(values[kpi]) for values in latest.values()))
    return table


def _changes_table(data: report.Data) -> Table | None:
    if not data.changes:
        return None
    table = Table(title="this period against the previous one")
    for column in ("kpi", "period", "current", "previous", "change"):
        table.add_column(column, justify="left" if column in ("kpi", "period") else "right")
    for c in data.changes:
        change = "—" if c.relative is None else f"{100 * c.relative:+.1f} %"
        table.add_row(
            labels.kpi(c.kpi),
            f"{c.period} ({c.window_days} d)",
            fmt(c.current),
            fmt(c.previous),
            change,
        )
    return table


def _uplift_table(data: report.Data) -> Table | None:
    if not data.uplifts:
        console.print(f"no campaign touches in the last {data.report_days} days")
        return None
    level = f"{100 * data.confidence:g} %"
    waiting = [
        f"{u.pending:,} {u.campaign} touches are still inside their "
        f"{data.attribution_days}-day window and not counted yet"
        for u in data.uplifts
        if u.pending and u.variant is None
    ]
    table = Table(
        title=f"uplift against the holdout ({level} intervals; mailed − holdout, or "
        "variant against variant)",
        caption="; ".join(waiting) or None,
    )
    for column in (
        "campaign",
        "mailed",
        "holdout",
        "conversion",
        "uplift",
        "interval",
        "revenue/recipient uplift",
        "interval",
    ):
        table.add_column(column, justify="left" if column == "campaign" else "right")
    for u in data.uplifts:
        name = report.uplift_label(u)
        compared = f"{u.control.units:,}" + ("" if u.against == "holdout" else f" ({u.against})")
        if not u.enough:
            table.add_row(name, f"{u.treated.units:,}", compared, "", "", u.note)
            continue
        c, r = u.comparisons["conversion_rate"], u.comparisons["revenue_per_recipient"]
        table.add_row(
            name,
            f"{u.treated.units:,}",
            compared,
            f"{100 * c.treated:.1f} % vs {100 * c.control:.1f} %",
            f"{100 * c.absolute:+.1f} pp",
            f"{100 * c.absolute_interval.low:+.1f} … {100 * c.absolute_interval.high:+.1f} pp",
            f"{r.absolute:+,.2f}",
            f"{r.absolute_interval.low:+,.2f} … {r.absolute_interval.high:+,.2f}",
        )
    return table


def _nps_table(data: report.Data) -> Table | None:
    rows: list[tuple[str, int | None, Any]] = [("overall", None, data.nps.overall)]
    rows += [(s, sent, n) for s, sent, n in data.nps.surveys]
    if not data.nps.overall.responses and not data.nps.surveys:
        return None
    table = Table(title="NPS")
    for column in ("survey", "sent", "answers", "NPS", "interval"):
        table.add_column(column, justify="left" if column == "survey" else "right")
    for name, sent, n in rows:
        interval = f"{n.interval.low:.0f} … {n.interval.high:.0f}" if n.interval else ""
        score = "—" if n.score is None else f"{n.score:.0f}" + ("" if n.enough else " (few)")
        table.add_row(
            name, "" if sent is None else f"{sent:,}", f"{n.responses:,}", score, interval
        )
    return table


def _cohort_table(data: report.Data) -> Table | None:
    if not data.cohorts:
        return None
    months = max(len(c.retention) for c in data.cohorts)
    table = Table(title="cohort retention: % of each first-order month ordering in month k")
    table.add_column("cohort")
    table.add_column("customers", justify="right")
    for k in range(1, months + 1):
        table.add_column(str(k), justify="right")
    for c in data.cohorts:
        cells = ["" if v is None else f"{100 * v:.0f}" for v in c.retention]
        start = " (data start)" if c.data_start else ""
        table.add_row(f"{c.month:%Y-%m}{start}", f"{c.customers:,}", *cells)
    return table


@snapshots_app.command("take")
def snapshots_take(as_of: AsOf = None) -> None:
    """Snapshot the last complete shop-local day before --as-of (what the worker does daily)."""
    with errors_to_exit():
        settings = current_settings()
        now = clock.now()
        when = parse_as_of(as_of, settings.shop.zone) if as_of else now
        day = measure_jobs.last_complete_day(when, settings.shop.zone)
        _not_to_come(day, settings.shop.zone, "--as-of", as_of or "")
        written = measure_jobs.snapshot_kpis(engine_for(settings), settings, now, when)
    console.print(f"snapshot of {day}: {written} rows written" + ("" if written else " (had it)"))


def _not_to_come(day: date, zone: ZoneInfo, option: str, value: str) -> None:
    """A snapshot of a day that is not over yet (a typo of the year, ``--to 2062-…``) would
    be kept without that day's orders: the daily job skips a day it has, and the report
    would read it once the day came. Exit 2 naming the option, the value and the last
    complete day."""
    complete = measure_jobs.last_complete_day(clock.now(), zone)
    if day > complete:
        problem = Problem(
            f"{day} is not over yet (the last complete day is {complete}): its snapshot "
            "would be kept without the orders still to come",
            key=option,
            value=value,
        )
        raise ConfigError(Path("<command line>"), [problem])


def _day(value: str | None, option: str) -> date | None:
    if value is None:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            Path("<command line>"), [Problem("not a date (YYYY-MM-DD)", key=option, value=value)]
        ) from None
    check_year(day.year, value, option)
    return day


@snapshots_app.command("backfill")
def snapshots_backfill(
    first: Annotated[
        str | None,
        typer.Option("--from", help="First day (default: --to minus [measure] history_days)."),
    ] = None,
    last: Annotated[str | None, typer.Option("--to", help="Last day (default: yesterday).")] = None,
    replace: Annotated[bool, typer.Option(help="Recompute days already snapshotted.")] = False,
) -> None:
    """Snapshot past days (KPIs can be computed as of any day), e.g. the demo shop's 2011."""
    with errors_to_exit():
        settings = current_settings()
        zone = settings.shop.zone
        end = _day(last, "--to") or measure_jobs.last_complete_day(clock.now(), zone)
        _not_to_come(end, zone, "--to", last or "")
        start = _day(first, "--from") or end - timedelta(days=settings.measure.history_days)
        if start > end:
            problem = Problem(
                f"the first day is after the last day {end}", key="--from", value=str(start)
            )
            raise ConfigError(Path("<command line>"), [problem])
        with progress_bars() as bar:
            bar.phase("snapshot days", (end - start).days + 1)
            written = measure_jobs.backfill(
                engine_for(settings),
                settings,
                start,
                end,
                clock.now(),
                replace=replace,
                on_days=bar.advance,
            )
    console.print(f"snapshots {start} … {end}: {written:,} rows written")
