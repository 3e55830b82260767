"""What the forecasts read and write: purchase lines as arrays (DESIGN.md, Forecast
definitions), the stored forecasts (one version, the newest, replaced whole), the customers
per churn-risk tier of every version ever stored (kept when its rows go), and the predictions
of the versions kept to judge their horizon once it has ended (checkpoints)."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
import sqlalchemy as sa

from recocamp.domain import CustomerForecast
from recocamp.store import tombstones
from recocamp.store.queries import (
    drop_unprofiled_forecasts,
    epoch_seconds,
    held_decomposed,
    profiled,
)
from recocamp.store.schema import (
    audit_log,
    erasures,
    forecast_checkpoints,
    forecast_tiers,
    forecast_versions,
    forecasts,
    items,
    purchase_line,
    purchases,
)

CHUNK = 5000
TIERS = ("low", "medium", "high")  # forecast_tiers' count columns, by churn risk


def purchase_lines(
    connection: sa.Connection, until: datetime, chunk: int = 100_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(customer ids, UTC epoch seconds, revenue)`` of the purchase lines before ``until`` of
    customers (not guests) who neither objected to profiling nor were erased (a forecast is
    profiling). A purchase line has quantity > 0, unit price > 0 and is no return; a service
    line (postage, fees) counts only when its order has a product line. Lines stored under
    two Unicode forms of one id (an older version's decomposed, a file's composed since) are
    one customer's, named as :func:`one_form` says."""
    p = purchases.c
    service = sa.select(items.c.id).where(items.c.is_service.is_(True))
    purchase = purchase_line()
    product_orders = sa.select(p.order_id).where(purchase, p.item_id.not_in(service))
    epoch = epoch_seconds(connection, p.ordered_at)  # exact to SQLite's millisecond
    query = sa.select(p.customer_id, epoch, p.quantity * p.unit_price).where(
        purchase,
        p.customer_id.is_not(None),
        p.ordered_at < until,
        *profiled(connection, p.customer_id),  # any Unicode form of an objector's id
        sa.or_(p.item_id.not_in(service), p.order_id.in_(product_orders)),
    )
    ids: list[str] = []
    seconds: list[float] = []
    revenue: list[float] = []
    odd: set[str] = set()  # ids with another Unicode form (never an ASCII one)
    result = connection.execute(query)
    while rows := result.fetchmany(chunk):
        for customer_id, at, value in rows:
            ids.append(customer_id)
            seconds.append(float(at))
            revenue.append(float(value))
            if not customer_id.isascii():
                odd.add(customer_id)
    names = one_form(connection, odd)
    if names:
        ids = [names.get(customer_id, customer_id) for customer_id in ids]
    return np.array(ids, dtype=object), np.array(seconds), np.array(revenue)


def one_form(connection: sa.Connection, ids: Iterable[str]) -> dict[str, str]:
    """For ids of which several Unicode forms hold lines, the one name of them all: the form
    the customers table holds (``registry.stored_id``'s: the composed one, else the
    decomposed one an older version stored), composed where it holds neither. Each form
    was forecast apart, each with part of the customer's purchase days, and the API,
    campaigns and preferences page found the one under the record's id."""
    forms: dict[str, set[str]] = {}
    for customer_id in ids:
        forms.setdefault(unicodedata.normalize("NFC", customer_id), set()).add(customer_id)
    split = {composed: held for composed, held in forms.items() if len(held) > 1}
    if not split:
        return {}
    stored = held_decomposed(connection, split)
    return {
        form: stored.get(composed, composed) for composed, held in split.items() for form in held
    }


class ForecastVersion(NamedTuple):
    """One stored forecast: which forecaster, at which ``as_of`` (shop-local midnight,
    history before it) for which horizon, and the split it was chosen on (JSON or None)."""

    version: str
    model: str
    as_of: date
    horizon_days: int
    lifetime_days: int
    customers: int
    chosen_on: dict[str, Any] | None
    created_at: datetime


ROW_COLUMNS = CustomerForecast._fields


def replace(
    connection: sa.Connection, version: ForecastVersion, rows: Iterable[CustomerForecast]
) -> int:
    """Make ``version`` the stored forecast: every older version and its rows go, the new rows
    are written, and rows of customers who objected to profiling or were erased while the
    forecast was computed are dropped again (serialised against erasure like every write
    about customers: an erasure either committed before, and is seen here, or waits and
    removes the rows itself). The kept rows' customers per churn-risk tier are recorded for
    good (``forecast_tiers``), and their expected purchase days are kept to judge the horizon
    when it is the first version after the last kept one's horizon (``_checkpoint``). Returns
    the rows kept. Storing a version again (the same name: a clock held still) replaces its
    records. Call in one transaction."""
    tombstones.serialise(connection, erasing=False)
    _forget_records_of(connection, version.version)
    connection.execute(sa.delete(forecasts))
    connection.execute(sa.delete(forecast_versions))
    connection.execute(sa.insert(forecast_versions).values(**version._asdict()))
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append({"version": version.version, **row._asdict()})
        if len(batch) >= CHUNK:
            connection.execute(sa.insert(forecasts), batch)
            batch = []
    if batch:
        connection.execute(sa.insert(forecasts), batch)
    drop_unprofiled_forecasts(connection)
    _drop_erased_since(connection, version.created_at)
    kept = int(connection.execute(sa.select(sa.func.count()).select_from(forecasts)).scalar_one())
    connection.execute(
        sa.update(forecast_versions)
        .where(forecast_versions.c.version == version.version)
        .values(customers=kept)
    )
    _count_tiers(connection, version, _checkpoint(connection, version))
    return kept


def _count_tiers(connection: sa.Connection, version: ForecastVersion, kept: bool) -> None:
    """Keep the new version's customers per churn-risk tier (what is left after the drops)."""
    f = forecasts.c
    query = sa.select(f.churn_risk, sa.func.count()).group_by(f.churn_risk)
    counts: dict[str, int] = {tier: int(n) for tier, n in connection.execute(query)}
    connection.execute(
        sa.insert(forecast_tiers).values(
            version=version.version,
            model=version.model,
            as_of=version.as_of,
            horizon_days=version.horizon_days,
            predictions_kept=kept,
            created_at=version.created_at,
            **{tier: counts.get(tier, 0) for tier in TIERS},
        )
    )


def _checkpoint(connection: sa.Connection, version: ForecastVersion) -> bool:
    """Keep the new version's expected purchase days when the last kept version's horizon
    has ended by its ``as_of`` (or none is kept): one version per horizon, so nightly
    versions cost two copies at most, the open horizon and the last closed one. Versions
    kept before the last closed one go. Returns whether the new version is kept."""
    t = forecast_tiers.c
    kept = connection.execute(
        sa.select(t.version, t.as_of, t.horizon_days)
        .where(t.predictions_kept.is_(True))
        .order_by(t.as_of, t.created_at)
    ).all()
    if kept and kept[-1].as_of + timedelta(days=kept[-1].horizon_days) > version.as_of:
        return False
    closed = [row.version for row in kept]  # every kept horizon has ended by now
    _forget(connection, closed[:-1])
    f = forecasts.c
    connection.execute(
        sa.insert(forecast_checkpoints).from_select(
            ["version", "customer_id", "expected_purchase_days"],
            sa.select(f.version, f.customer_id, f.expected_purchase_days).where(
                f.version == version.version
            ),
        )
    )
    return True


def _forget(connection: sa.Connection, versions: list[str]) -> None:
    if versions:
        connection.execute(
            sa.delete(forecast_checkpoints).where(forecast_checkpoints.c.version.in_(versions))
        )
        connection.execute(
            sa.update(forecast_tiers)
            .where(forecast_tiers.c.version.in_(versions))
            .values(predictions_kept=False)
        )


def _forget_records_of(connection: sa.Connection, name: str) -> None:
    connection.execute(
        sa.delete(forecast_checkpoints).where(forecast_checkpoints.c.version == name)
    )
    connection.execute(sa.delete(forecast_tiers).where(forecast_tiers.c.version == name))


def _drop_erased_since(connection: sa.Connection, since: datetime) -> None:
    """A customer erased after the purchase lines were read has no customers row any more
    (the check above cannot see them), but erasure left them no order lines: drop those."""
    recent = sa.select(erasures.c.id).where(erasures.c.erased_at >= since).limit(1)
    if connection.execute(recent).first() is None:
        return
    has_orders = (
        sa.select(purchases.c.id).where(purchases.c.customer_id == forecasts.c.customer_id).exists()
    )
    connection.execute(sa.delete(forecasts).where(~has_orders))


def current_version(connection: sa.Connection) -> ForecastVersion | None:
    """The stored forecast's version, None before the first one."""
    v = forecast_versions.c
    query = sa.select(*(getattr(v, name) for name in ForecastVersion._fields))
    row = connection.execute(query.order_by(v.created_at.desc()).limit(1)).first()
    return None if row is None else ForecastVersion(*row)


def objection_withdrawn_at(connection: sa.Connection, customer_id: str) -> datetime | None:
    """When the customer last withdrew an objection to profiling, by the audit log (the one
    record of it: ``customer_changed`` with ``objected_to_profiling`` false among its values),
    None where they never did. Their stored forecast was dropped while they objected; one
    made before this time holds no row of theirs. A customer's audit entries are few, so
    they are read whole and the JSON looked into here, the same on every database."""
    a = audit_log.c
    query = (
        sa.select(a.at, a.details)
        .where(
            a.subject_type == "customer",
            a.subject_id == customer_id,
            a.action == "customer_changed",
        )
        .order_by(a.at.desc(), a.id.desc())
    )
    for at, details in connection.execute(query):
        values = details.get("values", {}) if isinstance(details, dict) else {}
        if values.get("objected_to_profiling") is False:
            return at  # type: ignore[no-any-return]
    return None


def customer_forecast(connection: sa.Connection, customer_id: str) -> CustomerForecast | None:
    """The customer's row of the stored forecast, None when it holds none."""
    f = forecasts.c
    query = sa.select(*(getattr(f, name) for name in ROW_COLUMNS)).where(
        f.customer_id == customer_id,
        f.version.in_(sa.select(forecast_versions.c.version)),
    )
    row = connection.execute(query.limit(1)).first()
    return None if row is None else CustomerForecast(*row)


def rows_of(connection: sa.Connection, version: ForecastVersion) -> list[CustomerForecast] | None:
    """The rows of ``version`` (read by :func:`current_version`), in customer-id order; None
    where another version was stored since. Each read sees the latest commit (SQLite opens
    no transaction for a SELECT; PostgreSQL reads committed): every stored row read apart
    from the version gave a forecast stored between the two reads under the old version's
    model and ``as_of``, and the campaign reasons named the wrong forecast."""
    f = forecasts.c
    query = (
        sa.select(*(getattr(f, name) for name in ROW_COLUMNS))
        .where(f.version == version.version)
        .order_by(f.customer_id)
    )
    rows = [CustomerForecast(*row) for row in connection.execute(query)]
    if not rows and current_version(connection) != version:
        return None
    return rows


def current_with_rows(
    connection: sa.Connection,
) -> tuple[ForecastVersion, list[CustomerForecast]] | None:
    """The stored forecast's version and its own rows (:func:`rows_of`; read again where a
    newer one was stored between the two reads), or None: ``forecast --stored`` and the
    report read the version and then every row, so a forecast stored in between showed its
    rows under the one before's model, ``as_of`` and horizon."""
    version = current_version(connection)
    while version is not None:
        rows = rows_of(connection, version)
        if rows is not None:
            return version, rows
        version = current_version(connection)
    return None


def stored_forecasts(connection: sa.Connection) -> list[CustomerForecast]:
    """Every row of the stored forecast, in customer-id order."""
    f = forecasts.c
    query = sa.select(*(getattr(f, name) for name in ROW_COLUMNS)).order_by(f.customer_id)
    return [CustomerForecast(*row) for row in connection.execute(query)]


class TierCounts(NamedTuple):
    """Customers per churn-risk tier of one stored forecast version (aggregate counts)."""

    version: str
    model: str
    as_of: date
    horizon_days: int
    low: int
    medium: int
    high: int
    predictions_kept: bool
    created_at: datetime


def tier_history(connection: sa.Connection) -> list[TierCounts]:
    """The tier counts of every forecast version ever stored, oldest first."""
    t = forecast_tiers.c
    query = sa.select(*(getattr(t, name) for name in TierCounts._fields))
    return [TierCounts(*row) for row in connection.execute(query.order_by(t.as_of, t.created_at))]


def kept_predictions(connection: sa.Connection, version: str) -> tuple[list[str], np.ndarray]:
    """``(customer ids, expected purchase days)`` of a version kept to be judged, in
    customer-id order; customers who objected to profiling or were erased since are left out
    (their rows are deleted when they do; this is the second lock)."""
    k = forecast_checkpoints.c
    query = (
        sa.select(k.customer_id, k.expected_purchase_days)
        .where(k.version == version, *profiled(connection, k.customer_id))
        .order_by(k.customer_id)
    )
    rows = connection.execute(query).all()
    return [row[0] for row in rows], np.array([float(row[1]) for row in rows])
