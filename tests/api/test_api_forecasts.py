"""The stored forecasts through the real app, on a really trained shop (SQLite and
PostgreSQL): the train job stores them (no objector), ``GET /v1/customers/{id}/forecast``
answers them, and the privacy rights reach them: an objection deletes the customer's row at
once, export includes it, erasure removes it (also one erased while the forecast was made)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from fastapi import FastAPI

from recocamp import forecast, privacy
from recocamp.api.forecasts import OBJECTED
from recocamp.clock import FixedClock
from recocamp.forecast.history import day_number
from recocamp.forecast.outlook import forecast as forecast_now
from recocamp.forecast.outlook import risk_tier
from recocamp.store import forecasts as store
from recocamp.store import runs
from recocamp.store.schema import forecast_versions
from recocamp.worker.process import Worker
from tests.api_shop import NOW, OBJECTOR, bearer, call, engine_of, settings_for
from tests.conftest import ROOT

PATH = "/v1/customers/{}/forecast"
KEYS = {
    "customer_id",
    "expected_purchase_days",
    "likely_purchase_days",
    "p_active",
    "churn_risk",
    "expected_revenue",
    "lifetime_value",
    "next_purchase_by",
    "overdue_ratio",
}


def stored(app: FastAPI) -> list[forecast.CustomerForecast]:
    with engine_of(app).connect() as connection:
        return store.stored_forecasts(connection)


def refreshed(app: FastAPI) -> FastAPI:
    forecast.refresh(engine_of(app), app.state.service.settings, NOW)
    return app


def test_the_train_job_stores_the_forecast_once_and_skips_when_nothing_changed(
    shop: tuple[sa.Engine, Path], tmp_path: Path
) -> None:
    engine, artifacts = shop
    settings = settings_for(artifacts)
    (tmp_path / "campaigns").mkdir()
    worker = Worker(settings, engine, tmp_path / "campaigns", ROOT / "templates", FixedClock(NOW))
    worker.load()

    def train(at: datetime) -> dict[str, Any]:
        assert worker.run("train", as_of=at) == "ok"
        with engine.connect() as connection:
            return dict(runs.recent(connection, "train")[0].counts)

    try:
        counts = train(NOW)
        assert counts["outcome"] != "skipped_no_new_data"
        with engine.connect() as connection:
            version = store.current_version(connection)
            rows = store.stored_forecasts(connection)
        assert version is not None and counts["forecast_version"] == version.version
        assert version.as_of == NOW.astimezone(settings.shop.zone).date()
        assert (version.horizon_days, version.customers, counts["forecast_customers"]) == (
            90,
            len(rows),
            len(rows),
        )
        assert OBJECTOR not in {row.customer_id for row in rows} and len(rows) > 100
        # what is stored is what the forecaster makes as of that day, with the live model
        purchases = forecast.purchase_days(engine, settings, day_number(version.as_of))
        expected = forecast_now(purchases, day_number(version.as_of), 90, version.model)
        assert [r.as_dict() for r in expected] == [
            forecast.CustomerForecast(*row).as_dict() for row in rows
        ]
        assert train(NOW + timedelta(days=1))["outcome"] == "skipped_no_new_data"
        with engine.begin() as connection:  # a shop upgraded to forecasts: none stored yet
            connection.execute(sa.delete(forecast_versions))
        later = NOW + timedelta(days=2)
        assert train(later)["outcome"] != "skipped_no_new_data"
        with engine.connect() as connection:
            newest = store.current_version(connection)
            versions = connection.execute(sa.select(forecast_versions.c.version)).scalars().all()
            newer = store.stored_forecasts(connection)
        assert newest is not None and versions == [newest.version]  # only the newest is kept
        assert newest.as_of == version.as_of + timedelta(days=2)
        assert [r.customer_id for r in newer] == [r.customer_id for r in rows]  # old rows gone
        assert newer != rows  # two days later: the same customers, less likely to be active
    finally:  # its job locks' connection (PostgreSQL) closed before the database goes
        worker.shutdown()


def test_the_api_answers_the_stored_forecast(app: FastAPI) -> None:
    row = stored(refreshed(app))[0]
    reply = call(app, "GET", PATH.format(row.customer_id), headers=bearer("reader"))
    assert reply.status == 200, reply.text
    answer = reply.json()
    assert set(answer) == KEYS | {"model", "as_of", "horizon_days"}
    with engine_of(app).connect() as connection:
        version = store.current_version(connection)
    assert version is not None
    assert answer == forecast.document(version, row)
    assert (answer["as_of"], answer["horizon_days"]) == ("2012-01-05", 90)
    assert answer["churn_risk"] == risk_tier(row.p_active)
    median = forecast.poisson_median(np.array([row.expected_purchase_days]))[0]
    assert answer["likely_purchase_days"] == median  # from the stored expectation
    unknown = call(app, "GET", PATH.format("nobody-42"), headers=bearer("reader"))
    assert unknown.status == 404 and "nobody-42" in unknown.json()["detail"]
    denied = call(app, "GET", PATH.format(row.customer_id), headers=bearer("dpo"))
    assert denied.status == 403


def test_a_customer_without_a_forecast_gets_a_404_that_says_why(app: FastAPI) -> None:
    customer = stored(refreshed(app))[0].customer_id
    with engine_of(app).begin() as connection:
        connection.execute(sa.delete(forecast_versions))
    reply = call(app, "GET", PATH.format(customer), headers=bearer("reader"))
    assert reply.status == 404 and "no forecast for customer" in reply.json()["detail"]


def test_an_objecting_customer_has_no_forecast_and_an_objection_deletes_it_at_once(
    app: FastAPI,
) -> None:
    rows = stored(refreshed(app))
    assert OBJECTOR not in {row.customer_id for row in rows}
    objector = call(app, "GET", PATH.format(OBJECTOR), headers=bearer("reader"))
    assert (objector.status, objector.json()) == (404, {"detail": OBJECTED})
    customer = rows[0].customer_id
    change = {"source": "account page", "objected_to_profiling": True}
    put = call(app, "PUT", f"/v1/customers/{customer}", json=change, headers=bearer("shop"))
    assert put.status == 200, put.text
    assert customer not in {row.customer_id for row in stored(app)}
    assert len(stored(app)) == len(rows) - 1
    reply = call(app, "GET", PATH.format(customer), headers=bearer("reader"))
    assert (reply.status, reply.json()) == (404, {"detail": OBJECTED})


def test_a_customer_who_withdrew_an_objection_is_told_the_next_run_makes_a_forecast(
    app: FastAPI,
) -> None:
    """Their row went with the objection; the stored forecast is older than the withdrawal,
    so the 404 names that, not a missing purchase. The next run makes one again."""
    customer = stored(refreshed(app))[0].customer_id
    for objected in (True, False):
        change = {"source": "account page", "objected_to_profiling": objected}
        put = call(app, "PUT", f"/v1/customers/{customer}", json=change, headers=bearer("shop"))
        assert put.status == 200, put.text
    reply = call(app, "GET", PATH.format(customer), headers=bearer("reader"))
    assert (reply.status, reply.json()) == (
        404,
        {
            "detail": f"no forecast for customer {customer!r} since their objection to "
            f"profiling was withdrawn ({NOW.date().isoformat()}): the next forecast run makes one"
        },
    )
    forecast.refresh(engine_of(app), app.state.service.settings, NOW + timedelta(hours=1))
    again = call(app, "GET", PATH.format(customer), headers=bearer("reader"))
    assert again.status == 200, again.text


def test_export_includes_the_forecast_and_erasure_removes_it(app: FastAPI) -> None:
    row = stored(refreshed(app))[0]
    exported = call(app, "GET", f"/v1/privacy/customers/{row.customer_id}", headers=bearer("dpo"))
    assert exported.status == 200, exported.text
    (held,) = exported.json()["tables"]["forecasts"]
    assert held["customer_id"] == row.customer_id
    assert held["p_active"] == row.p_active and held["churn_risk"] == row.churn_risk
    erased = call(app, "DELETE", f"/v1/privacy/customers/{row.customer_id}", headers=bearer("dpo"))
    assert erased.status == 200, erased.text
    assert erased.json()["rows"]["forecasts"] == 1
    assert row.customer_id not in {r.customer_id for r in stored(app)}
    reply = call(app, "GET", PATH.format(row.customer_id), headers=bearer("reader"))
    assert reply.status == 404


def test_a_customer_erased_while_the_forecast_was_made_is_not_stored(app: FastAPI) -> None:
    engine, settings = engine_of(app), app.state.service.settings
    day = day_number(NOW.astimezone(settings.shop.zone).date())
    purchases = forecast.purchase_days(engine, settings, day)
    rows = forecast_now(purchases, day, 90, "bgnbd")
    erased = rows[0].customer_id
    assert privacy.erase(engine, settings, erased, NOW + timedelta(seconds=1), "test") is not None
    version = store.ForecastVersion("v", "bgnbd", NOW.date(), 90, 365, len(rows), None, NOW)
    with engine.begin() as connection:
        kept = store.replace(connection, version, rows)
    assert kept == len(rows) - 1
    assert erased not in {row.customer_id for row in stored(app)}


def test_the_app_has_the_route_in_its_schema(app: FastAPI) -> None:
    schema = call(app, "GET", "/openapi.json").json()
    operation = schema["paths"]["/v1/customers/{customer_id}/forecast"]["get"]
    assert set(operation["responses"]) >= {"200", "401", "403", "404"}
    fields = schema["components"]["schemas"]["ForecastOut"]["properties"]
    assert fields["likely_purchase_days"]["type"] == "integer"
    assert "hurdle | blend" in fields["model"]["description"]
