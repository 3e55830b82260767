"""Forecast commands: ``recocamp forecast`` and ``recocamp forecast-evaluate``."""

from __future__ import annotations

import json
import sys
from datetime import datetime, time, timedelta
from typing import Annotated
from zoneinfo import ZoneInfo

import numpy as np
import typer
from rich.table import Table

from recocamp import forecast as forecasting
from recocamp.cli.common import (
    MAX_ROWS,
    OpenHorizon,
    Output,
    app,
    check_horizon,
    check_year,
    clock,
    console,
    current_settings,
    engine_for,
    errors_to_exit,
    print_error,
    show,
    within,
)
from recocamp.settings import Settings
from recocamp.store import forecasts as forecast_store

Day = Annotated[
    str | None, typer.Option(help="A date, YYYY-MM-DD: midnight in the shop's time zone.")
]
Horizon = Annotated[
    int | None,
    typer.Option(callback=within(7, 730), help="Horizon H in days, 7 to 730 (default: settings)."),
]


def _day(value: str | None, option: str, zone: ZoneInfo) -> int:
    """The shop-local day number of ``--as-of``/``--cutoff`` (today in the shop without it)."""
    if value is None:
        return forecasting.day_number(clock.now().astimezone(zone).date())
    try:
        day = datetime.strptime(value, "%Y-%m-%d").date()
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not a date (YYYY-MM-DD)", param_hint=option
        ) from None
    check_year(day.year, value, option)
    return forecasting.day_number(day)


def _purchase_days(settings: Settings, day: int) -> forecasting.PurchaseDays:
    """Purchase days of every profiled customer strictly before the shop-local ``day``."""
    return forecasting.purchase_days(engine_for(settings), settings, day)


@app.command("forecast")
def forecast_command(
    as_of: Day = None,
    horizon_days: Horizon = None,
    format: Annotated[Output, typer.Option("--format")] = Output.table,
    limit: Annotated[
        int, typer.Option(callback=within(1, MAX_ROWS), help="Rows of the table (JSON has all).")
    ] = 30,
    stored: Annotated[
        bool,
        typer.Option(
            "--stored",
            help="Print the forecast the worker's train job stored (what the shop API "
            "serves) instead of computing one now.",
        ),
    ] = False,
) -> None:
    """Per-customer forecasts: purchase days in the horizon (expected, and the likely count),
    chance of buying again, churn risk, expected revenue, lifetime value, when the next
    purchase is due."""
    if stored:
        if as_of is not None or horizon_days is not None:
            raise typer.BadParameter(
                "the stored forecast has its own as_of and horizon", param_hint="--stored"
            )
        _print_stored(format, limit)
        return
    with errors_to_exit():
        settings = current_settings()
        zone = settings.shop.zone
        day = _day(as_of, "--as-of", zone)
        horizon = horizon_days or settings.forecast.horizon_days
        purchases = _purchase_days(settings, day)
        newest = forecasting.newest_day(engine_for(settings), settings, clock.now())
        model, chosen_on, reason = forecasting.live_model(purchases, day, horizon, newest)
        rows = forecasting.forecast(purchases, day, horizon, model, settings.forecast.lifetime_days)
    if format is Output.json:
        document = {
            "as_of": forecasting.day_of(day).isoformat(),
            "horizon_days": horizon,
            "model": model,
            "customers": forecasting.documents(rows),
        }
        json.dump(document, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
        return
    _print_forecasts(rows, model, chosen_on, day, horizon, limit, reason)


def _print_stored(format: Output, limit: int) -> None:
    with errors_to_exit(), engine_for(current_settings()).connect() as connection:
        stored = forecast_store.current_with_rows(connection)
    if stored is None:
        print_error("no forecast stored yet: the worker's train job stores one")
        raise typer.Exit(1)
    version, rows = stored
    day = forecasting.day_number(version.as_of)
    customers = rows
    if format is Output.json:
        document = {
            "as_of": version.as_of.isoformat(),
            "horizon_days": version.horizon_days,
            "model": version.model,
            "version": version.version,
            "created_at": version.created_at.isoformat(),
            "customers": forecasting.documents(customers),
        }
        json.dump(document, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
        return
    console.print(f"stored forecast {version.version}, made {version.created_at.isoformat()}")
    reason = (version.chosen_on or {}).get("reason")  # older versions stored none
    _print_forecasts(customers, version.model, None, day, version.horizon_days, limit, reason)


def _print_forecasts(
    rows: list[forecasting.CustomerForecast],
    model: str,
    chosen_on: forecasting.Evaluation | None,
    day: int,
    horizon: int,
    limit: int,
    reason: str | None,
) -> None:
    first = forecasting.day_of(day)
    console.print(
        f"{len(rows):,} customers, horizon {first.isoformat()} to "
        f"{(first + timedelta(days=horizon - 1)).isoformat()} ({horizon} days), model {model}"
    )
    if chosen_on is not None:
        q = chosen_on.qualities[model]
        console.print(
            f"chosen on the horizon before: log score {_or_dash(q.log_score)}, "
            f"MAE {q.mae:.3f} (likely count {q.mae_point:.3f}), AUC {_or_na(q.auc)} "
            f"(forecast-evaluate --cutoff {forecasting.day_of(chosen_on.cutoff).isoformat()})"
        )
    elif reason is not None:
        console.print(f"({reason})", soft_wrap=True)
    risks = {tier: sum(r.churn_risk == tier for r in rows) for tier in ("high", "medium", "low")}
    console.print("churn risk: " + ", ".join(f"{tier} {n:,}" for tier, n in risks.items()))
    table = Table(title=f"the {min(limit, len(rows))} customers with the highest lifetime value")
    for heading in (
        "customer",
        "purchase days",
        "likely",
        "P(buys again)",
        "churn risk",
        "revenue",
        "lifetime value",
        "next purchase by",
        "overdue ×",
    ):
        table.add_column(heading, justify="left" if heading == "customer" else "right")
    top = sorted(rows, key=lambda r: (-r.lifetime_value, r.customer_id))[:limit]
    likely = forecasting.poisson_median(np.array([r.expected_purchase_days for r in top]))
    for r, point in zip(top, likely.tolist(), strict=True):
        table.add_row(
            r.customer_id,
            f"{r.expected_purchase_days:.2f}",
            str(point),
            f"{r.p_active:.0%}",
            r.churn_risk,
            f"{r.expected_revenue:,.2f}",
            f"{r.lifetime_value:,.2f}",
            r.next_purchase_by.isoformat() if r.next_purchase_by else "—",
            "—" if r.overdue_ratio is None else f"{r.overdue_ratio:.1f}",
        )
    show(table)


@app.command("forecast-evaluate")
def forecast_evaluate(
    cutoff: Annotated[str, typer.Option(help="Split date, YYYY-MM-DD (shop time).")],
    horizon_days: Horizon = None,
    format: Annotated[Output, typer.Option("--format")] = Output.table,
    open_horizon: OpenHorizon = False,
) -> None:
    """Every forecaster on history before --cutoff against the horizon after it: the log score
    (mean Poisson log loss, what the live choice compares), MAE of purchase days (of the
    expectation, and of the likely count, its Poisson median), total predicted vs actual, AUC of
    buying again, Spearman, calibration by decile. The horizon must be closed: the store's
    newest purchase reaches its last day (else exit 2, or a warning with --open-horizon)."""
    with errors_to_exit():
        settings = current_settings()
        zone = settings.shop.zone
        day = _day(cutoff, "--cutoff", zone)
        horizon = horizon_days or settings.forecast.horizon_days
        split_at = datetime.combine(forecasting.day_of(day), time(), tzinfo=zone)
        check_horizon(engine_for(settings), split_at, horizon, zone, open_horizon)
        purchases = _purchase_days(settings, day + horizon)
        _require_history(purchases, day)
        evaluation = forecasting.evaluate(purchases, day, horizon)
    if format is Output.json:
        document = {
            "cutoff": forecasting.day_of(day).isoformat(),
            "horizon_days": horizon,
            "models": {name: q.as_dict() for name, q in evaluation.qualities.items()},
        }
        json.dump(document, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
        return
    _print_evaluation(evaluation)


def _require_history(purchases: forecasting.PurchaseDays, day: int) -> None:
    """Exit 2 where no purchase day the forecast counts is before the cutoff, as
    ``check_horizon`` exits for a cutoff before the store's first line: the lines before it
    can all be none (postage alone, an objector's orders), and the evaluation then failed
    with exit 1 as if a model had."""
    if len(purchases.day) and int(purchases.day.min()) < day:
        return
    first = (
        f"the first purchase day is {forecasting.day_of(int(purchases.day.min())).isoformat()}"
        if len(purchases.day)
        else "none counts"
    )
    print_error(
        f"no purchase before the cutoff {forecasting.day_of(day).isoformat()} ({first}; service "
        "lines alone, returns, guests' and objectors' orders are nobody's purchase day): "
        "nothing to evaluate"
    )
    raise typer.Exit(2)


def _or_dash(value: float | None) -> str:
    """A measure to three decimals, a dash where there is none (a log score is none where a
    forecast of 0 met a purchase)."""
    return "—" if value is None else f"{value:.3f}"


def _or_na(value: float | None) -> str:
    """An AUC to three decimals, ``n/a`` where it is undefined (nobody bought in the horizon,
    or everybody did): never 0.000, which would read as a forecast ranking them backwards."""
    return "n/a" if value is None else f"{value:.3f}"


def _print_evaluation(evaluation: forecasting.Evaluation) -> None:
    first = forecasting.day_of(evaluation.cutoff)
    any_quality = next(iter(evaluation.qualities.values()))
    table = Table(
        title=f"forecasts at cutoff {first.isoformat()}, horizon {evaluation.horizon_days} days, "
        f"{any_quality.customers:,} customers, {any_quality.actual_total:,.0f} purchase days"
    )
    headings = (
        "model",
        "log score",
        "MAE",
        "MAE likely",
        "predicted total",
        "AUC buys again",
        "Spearman",
    )
    for heading in headings:
        table.add_column(heading, justify="left" if heading == "model" else "right")
    for name, q in evaluation.qualities.items():
        table.add_row(
            name,
            _or_dash(q.log_score),
            f"{q.mae:.3f}",
            f"{q.mae_point:.3f}",
            f"{q.predicted_total:,.0f}",
            _or_na(q.auc),
            _or_dash(q.spearman),
        )
    show(table)
    calibration = Table(title="calibration by decile of the forecast: mean purchase days")
    calibration.add_column("decile", justify="right")
    for name in evaluation.qualities:
        calibration.add_column(f"{name} predicted", justify="right")
        calibration.add_column(f"{name} actual", justify="right")
    deciles = zip(*(q.calibration for q in evaluation.qualities.values()), strict=True)
    for row in deciles:
        cells = [str(row[0].decile)]
        for d in row:
            cells += [f"{d.predicted:.2f}", f"{d.actual:.2f}"]
        calibration.add_row(*cells)
    show(calibration)
