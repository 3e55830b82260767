"""The stored forecasts: computed by the nightly ``train`` job, read by the shop API and
``recocamp forecast --stored`` (reads and writes the store; the rest of the package is pure).

At the job's ``now`` the forecast is made as of that shop-local day's midnight (history
strictly before it) for ``[forecast] horizon_days``, with the live forecaster chosen by
:func:`~recocamp.forecast.outlook.live_model` on the last closed horizon before it (no day at
or after ``as_of`` is seen; the default ``blend`` where that horizon has not passed by the
clock nor the store's newest purchase line (:func:`newest_day`), or holds no purchase day).
It replaces the previous version in one transaction; customers who objected to profiling or
were erased get none (a forecast is profiling).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from recocamp.errors import ModelError, mask_addresses
from recocamp.forecast.evaluate import Quality, quality
from recocamp.forecast.history import PurchaseDays, day_number, day_of, local_days
from recocamp.forecast.outlook import (
    CustomerForecast,
    data_reaches,
    documents,
    forecast,
    live_model,
)
from recocamp.settings import Settings
from recocamp.store import forecasts as store
from recocamp.store import queries
from recocamp.store.engine import Engine
from recocamp.store.forecasts import ForecastVersion, TierCounts


def purchase_days(engine: Engine, settings: Settings, day: int) -> PurchaseDays:
    """Purchase days of every profiled customer strictly before the shop-local ``day``."""
    zone = settings.shop.zone
    until = datetime.combine(day_of(day), datetime.min.time(), tzinfo=zone)
    with engine.connect() as connection:
        ids, seconds, revenue = store.purchase_lines(connection, until)
    return PurchaseDays.from_lines(ids, local_days(seconds, zone), revenue)


def newest_day(engine: Engine, settings: Settings, now: datetime) -> int | None:
    """The last day the store's data covers at ``now`` (``outlook.data_reaches`` of its
    newest purchase line, any customer's, a guest's too), which says whether a horizon is
    closed (:func:`~recocamp.forecast.outlook.closed`); None without any purchase line."""
    zone = settings.shop.zone
    with engine.connect() as connection:
        latest = queries.latest_order_time(connection)
    if latest is None:
        return None
    today = day_number(now.astimezone(zone).date())
    return data_reaches(day_number(latest.astimezone(zone).date()), today)


@dataclass(frozen=True, slots=True)
class Refreshed:
    version: str
    model: str
    customers: int
    reason: str  # why this forecaster: chosen on the horizon before, or why the default

    def counts(self) -> dict[str, Any]:
        return {
            "forecast_version": self.version,
            "forecast_model": self.model,
            "forecast_customers": self.customers,
            "forecast_reason": self.reason,
        }


def refresh(
    engine: Engine, settings: Settings, now: datetime, as_of: datetime | None = None
) -> Refreshed:
    """Compute the forecasts as of ``as_of``'s shop-local day (default ``now``'s) and store
    them (see above); ``now`` names and dates the version."""
    day = day_number((now if as_of is None else as_of).astimezone(settings.shop.zone).date())
    horizon, lifetime = settings.forecast.horizon_days, settings.forecast.lifetime_days
    purchases = purchase_days(engine, settings, day)
    # One BLAS thread, as recommender/models.py holds its fits to: the regressions' small
    # matrix products ran 13 times slower on a pool of two threads on a busy two-core machine.
    with threadpool_limits(1, "blas"):
        model, chosen_on, reason = live_model(
            purchases, day, horizon, newest_day(engine, settings, now)
        )
        rows = forecast(purchases, day, horizon, model, lifetime)
    _require_finite(rows, model)
    split: dict[str, Any] = {"reason": reason}  # why this forecaster, and the split if any
    if chosen_on is not None:
        split |= {
            "cutoff": day_of(chosen_on.cutoff).isoformat(),
            "models": {name: q.as_dict() for name, q in chosen_on.qualities.items()},
        }
    version = ForecastVersion(
        version=f"{model}-{day_of(day).isoformat()}-h{horizon}-{now.astimezone(UTC):%Y%m%dT%H%M%S%fZ}",
        model=model,
        as_of=day_of(day),
        horizon_days=horizon,
        lifetime_days=lifetime,
        customers=len(rows),
        chosen_on=split,
        created_at=now,
    )
    with engine.begin() as connection:
        kept = store.replace(connection, version, rows)
    return Refreshed(version.version, model, kept, reason)


def _require_finite(rows: list[CustomerForecast], model: str) -> None:
    """A forecast with a value that is not a number is not stored (the previous one stays):
    the API could not answer it as JSON, and a campaign could not compare it."""
    broken = [
        row.customer_id
        for row in rows
        if not all(
            math.isfinite(value)
            for value in (
                row.expected_purchase_days,
                row.p_active,
                row.expected_revenue,
                row.lifetime_value,
                0.0 if row.overdue_ratio is None else row.overdue_ratio,
            )
        )
    ]
    if broken:
        # the message reaches the worker's run counts and train's output: an id may be an
        # address, masked as the API masks it
        raise ModelError(
            f"forecaster {model} gave values that are not numbers for {len(broken)} "
            f"customer(s), e.g. {mask_addresses(repr(broken[0]))}: not stored"
        )


def document(version: ForecastVersion, row: CustomerForecast) -> dict[str, Any]:
    """One customer's stored forecast as the API answers it: the keys of ``recocamp forecast
    --format json``'s customer objects, plus the forecaster, ``as_of`` and the horizon."""
    return documents([row])[0] | {
        "model": version.model,
        "as_of": version.as_of.isoformat(),
        "horizon_days": version.horizon_days,
    }


def closed_horizon(engine: Engine, settings: Settings, version: TierCounts) -> Quality:
    """How a kept version did once its horizon has ended: its stored expected purchase days
    against each customer's purchase days in ``[as_of, as_of + H)`` (customers who objected
    or were erased since are in neither)."""
    first = day_number(version.as_of)
    with engine.connect() as connection:
        ids, predicted = store.kept_predictions(connection, version.version)
    if not ids:
        raise ModelError(f"no customer of forecast {version.version} is left to judge it on")
    purchases = purchase_days(engine, settings, first + version.horizon_days)
    counts = purchases.count_in(first, first + version.horizon_days)
    row = {customer: n for n, customer in enumerate(purchases.customers.tolist())}
    actual = np.array([counts[row[c]] if c in row else 0.0 for c in ids])
    return quality(predicted, actual)
