"""The stored forecast read as one: its version and that version's own rows."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
import sqlalchemy as sa

from recocamp.domain import CustomerForecast
from recocamp.store import forecasts as forecast_store
from recocamp.store.forecasts import ForecastVersion

NOW = datetime(2026, 1, 20, 9, tzinfo=UTC)


def version(name: str, model: str, as_of: date) -> ForecastVersion:
    return ForecastVersion(name, model, as_of, 90, 365, 1, None, NOW)


def row(customer_id: str, churn_risk: str) -> CustomerForecast:
    return CustomerForecast(customer_id, 1.0, 0.9, churn_risk, 10.0, 5.0, None, 0.1)


def test_a_forecast_stored_between_the_two_reads_is_read_whole(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``forecast --stored`` and the report read the version, then every row, each read
    seeing the latest commit: a forecast the nightly job stored in between was shown with
    the one before's model, ``as_of`` and horizon. Both are read as one now."""
    old = version("rhythm-v1", "rhythm", date(2026, 1, 19))
    new = version("bgnbd-v2", "bgnbd", date(2026, 1, 20))
    with engine.begin() as connection:
        forecast_store.replace(connection, old, [row("a", "high")])
    real = forecast_store.current_version
    calls: list[ForecastVersion | None] = []

    def then_stored(connection: sa.Connection) -> ForecastVersion | None:
        found = real(connection)
        calls.append(found)
        if len(calls) == 1:  # the nightly job commits a new forecast right after this read
            with engine.begin() as other:
                forecast_store.replace(other, new, [row("b", "low")])
        return found

    monkeypatch.setattr(forecast_store, "current_version", then_stored)
    with engine.connect() as connection:
        stored = forecast_store.current_with_rows(connection)
    assert stored is not None
    got, rows = stored
    assert (got.model, got.as_of, [(r.customer_id, r.churn_risk) for r in rows]) == (
        "bgnbd",
        date(2026, 1, 20),
        [("b", "low")],
    )


def test_no_forecast_stored_reads_none(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        assert forecast_store.current_with_rows(connection) is None
    with engine.begin() as connection:
        forecast_store.replace(connection, version("v1", "naive", NOW.date()), [])
    with engine.connect() as connection:
        stored = forecast_store.current_with_rows(connection)
    assert stored is not None and stored[1] == [] and stored[0].model == "naive"
