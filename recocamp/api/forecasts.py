"""Shop API, forecasts: ``GET /v1/customers/{id}/forecast`` (scope ``offers:read``).

The stored forecast of one customer (``forecast.stored``: made by the worker's ``train``
job), never one computed on request. A forecast is profiling: a customer who objected to it
(or was erased) gets a 404 that says so and no data, even in the moment between their
objection and the next training (the objection deletes the row at once; the check here
covers a forecast written concurrently).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, Field

from recocamp import forecast
from recocamp.api import lean as api_lean
from recocamp.api.auth import OffersRead
from recocamp.api.pages import PrivateJSON
from recocamp.recommender.ranking import objects_to_profiling
from recocamp.store import forecasts as store
from recocamp.store import registry
from recocamp.store.engine import Engine

OBJECTED = "no forecast: the customer objected to profiling"


class ForecastOut(BaseModel):
    customer_id: str
    expected_purchase_days: float = Field(
        description="Expected purchase days in the horizon: what totals, expected revenue and "
        "lifetime value add up."
    )
    likely_purchase_days: int = Field(
        description="The likely count of purchase days in the horizon: the median of the "
        "forecast's Poisson distribution (0 up to an expectation of ln 2 ≈ 0.69). The point "
        "forecast to compare with one customer's actual count; do not add it up."
    )
    p_active: float = Field(description="Chance of at least one purchase day in the horizon.")
    churn_risk: Literal["low", "medium", "high"] = Field(
        description="high: p_active below 1/3; medium: below 2/3; else low."
    )
    expected_revenue: float = Field(description="Expected revenue in the horizon.")
    lifetime_value: float = Field(description="Expected revenue over [forecast] lifetime_days.")
    next_purchase_by: date | None = Field(
        description="Last purchase day plus the customer's mean gap between purchase days "
        "(rounded down: overdue_ratio is above 1 exactly when this day is before as_of); with "
        "one purchase day, the shop's typical gap (the median of repeat customers' own gaps). "
        "Null only while the shop has no repeat customer."
    )
    overdue_ratio: float | None = Field(
        description="Days since the last purchase day over that gap (null likewise)."
    )
    model: str = Field(description=f"The forecaster: {' | '.join(forecast.FORECASTERS)}.")
    as_of: date = Field(description="Shop-local midnight the forecast was made at.")
    horizon_days: int = Field(description="The horizon: [as_of, as_of + horizon_days).")


def router(engine: Engine, problems: dict[int | str, Any]) -> APIRouter:
    api = APIRouter(tags=["forecasts"], default_response_class=PrivateJSON)

    @api.get(
        "/v1/customers/{customer_id:path}/forecast", response_model=ForecastOut, responses=problems
    )
    def customer_forecast(customer_id: api_lean.PathId, key: OffersRead) -> dict[str, Any]:
        """The customer's stored purchase forecast: purchase days and revenue expected in the
        horizon, chance of buying again, churn risk, lifetime value, when the next purchase
        is due. 404 for an unknown customer, one without a forecast (no purchase before
        ``as_of``, or none stored yet) and one who objected to profiling."""
        with engine.connect() as connection:
            customer_id = registry.stored_id(connection, customer_id)
            person = registry.customer(connection, customer_id)
            version = store.current_version(connection)
            row = store.customer_forecast(connection, customer_id)
            withdrawn = (
                store.objection_withdrawn_at(connection, customer_id)
                if row is None and person is not None
                else None
            )
        if objects_to_profiling(person):
            raise HTTPException(404, OBJECTED)
        if version is None or row is None:
            if person is None:
                raise HTTPException(404, f"we know no customer {customer_id!r}")
            raise HTTPException(404, _why_none(customer_id, version, withdrawn))
        return forecast.document(version, row)

    return api


def _why_none(
    customer_id: str, version: store.ForecastVersion | None, withdrawn: datetime | None
) -> str:
    """Why a known customer who does not object has no forecast. An objection withdrawn after
    the stored forecast was made (or with none stored) is the reason where there is one: their
    row was dropped while they objected, and only the next forecast run makes a new one."""
    if withdrawn is not None and (version is None or withdrawn >= version.created_at):
        return (
            f"no forecast for customer {customer_id!r} since their objection to profiling was "
            f"withdrawn ({withdrawn.date().isoformat()}): the next forecast run makes one"
        )
    return (
        f"no forecast for customer {customer_id!r}: no purchase before the stored "
        "forecast's as_of, or none stored yet"
    )
