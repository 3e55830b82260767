"""Customer and item ids holding a slash through every route that takes one, on a really
trained shop: ids are any printable text (``domain.id_problem``), the purchase events and
imports take ``DE/1001``, so the profile, forecast, export and erasure routes must serve it
too. The server decodes ``DE%2F1001`` to ``DE/1001`` before routing: a plain ``{id}`` stops at
the slash and answered 404 "Not Found", so such a customer could not object, be exported or
be erased through the API."""

from __future__ import annotations

import urllib.parse
from datetime import timedelta

import sqlalchemy as sa
from fastapi import FastAPI
from prometheus_client import REGISTRY

from recocamp import forecast
from recocamp.store.schema import items
from tests.api_shop import NOW, bearer, call, engine_of

SLASHED = "DE/1001"
QUOTED = urllib.parse.quote(SLASHED, safe="")
IDS = {"customer_id", "item_id"}


def bought_by(app: FastAPI, customer: str) -> None:
    """One stored order of ``customer``, two days before ``NOW``."""
    with engine_of(app).connect() as connection:
        item = connection.execute(sa.select(items.c.id).order_by(items.c.id).limit(1)).scalar()
    order = {
        "order_id": f"order-of-{customer}",
        "customer_id": customer,
        "ordered_at": (NOW - timedelta(days=2)).isoformat(),
        "lines": [{"item_id": item, "quantity": 1, "unit_price": 3.5}],
    }
    posted = call(app, "POST", "/v1/events/purchases", json=order, headers=bearer("shop"))
    assert posted.status == 200, posted.text


def test_a_customer_id_holding_a_slash_objects_has_a_forecast_is_exported_and_erased(
    app: FastAPI,
) -> None:
    bought_by(app, SLASHED)
    profile = {"source": "account page", "first_name": "Dora"}
    put = call(app, "PUT", f"/v1/customers/{QUOTED}", json=profile, headers=bearer("shop"))
    assert put.status == 200, put.text
    assert put.json()["customer_id"] == SLASHED and put.json()["changed"] == ["first_name"]
    forecast.refresh(engine_of(app), app.state.service.settings, NOW)
    labels = {"method": "GET", "route": "/v1/customers/{customer_id}/forecast", "status": "200"}
    before = REGISTRY.get_sample_value("recocamp_http_requests_total", labels) or 0.0
    got = call(app, "GET", f"/v1/customers/{QUOTED}/forecast", headers=bearer("reader"))
    assert got.status == 200, got.text
    assert got.json()["customer_id"] == SLASHED
    assert REGISTRY.get_sample_value("recocamp_http_requests_total", labels) == before + 1
    objection = {"source": "account page", "objected_to_profiling": True}
    put = call(app, "PUT", f"/v1/customers/{QUOTED}", json=objection, headers=bearer("shop"))
    assert put.status == 200 and put.json()["changed"] == ["objected_to_profiling"], put.text
    exported = call(app, "GET", f"/v1/privacy/customers/{QUOTED}", headers=bearer("dpo"))
    assert exported.status == 200, exported.text
    assert exported.json()["customer_ids"] == [SLASHED]
    erased = call(app, "DELETE", f"/v1/privacy/customers/{QUOTED}", headers=bearer("dpo"))
    assert erased.status == 200, erased.text
    assert erased.json()["customer_ids"] == [SLASHED]
    gone = call(app, "GET", f"/v1/privacy/customers/{QUOTED}", headers=bearer("dpo"))
    assert gone.status == 404
    assert gone.json()["detail"] == f"we hold no data about customer {SLASHED!r}"


def test_the_last_segment_names_the_resource_and_a_put_takes_the_rest_as_the_id(
    app: FastAPI,
) -> None:
    """The id is greedy: ``/v1/customers/a/b/forecast`` is the forecast of ``a/b`` (the
    suffix routes are matched from the end), and ``PUT /v1/customers/x/forecast``, having no
    suffix, sets the customer ``x/forecast`` (README, Shop API)."""
    put = call(app, "PUT", "/v1/customers/x/forecast", json={"source": "t"}, headers=bearer("shop"))
    assert put.status == 200, put.text
    assert put.json()["customer_id"] == "x/forecast" and put.json()["created"]
    for path in ("/v1/customers/x%2Fforecast/forecast", "/v1/customers/x/forecast/forecast"):
        reply = call(app, "GET", path, headers=bearer("reader"))
        assert reply.status == 404 and "'x/forecast'" in reply.json()["detail"], path
    unknown = call(app, "GET", "/v1/customers/x/forecast", headers=bearer("reader"))
    assert unknown.json() == {"detail": "we know no customer 'x'"}
    empty = call(app, "GET", "/v1/customers//forecast", headers=bearer("reader"))
    assert empty.status == 422 and empty.json()["detail"][0]["type"] == "string_too_short"


def test_every_route_taking_an_id_takes_one_holding_a_slash(app: FastAPI) -> None:
    """Every documented operation with a customer or item id in its path, present and
    future, reaches its endpoint with ``DE%2F1001`` (a 404 of its own at most, never the
    router's "Not Found" or a 405 of another route at the path)."""
    paths = call(app, "GET", "/openapi.json").json()["paths"]
    taking = {
        (path, method.upper())
        for path, operations in paths.items()
        for method, operation in operations.items()
        if {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"} & IDS
    }
    assert taking == {
        ("/v1/customers/{customer_id}/next-best-offer", "GET"),
        ("/v1/customers/{customer_id}/forecast", "GET"),
        ("/v1/items/{item_id}/similar", "GET"),
        ("/v1/customers/{customer_id}", "PUT"),
        ("/v1/privacy/customers/{customer_id}", "GET"),
        ("/v1/privacy/customers/{customer_id}", "DELETE"),
    }
    for path, method in sorted(taking):
        url = path.format(customer_id=QUOTED, item_id=QUOTED)
        body = {"json": {"source": "t"}} if method == "PUT" else {}
        reply = call(app, method, url, headers=bearer("all"), **body)
        assert reply.status in (200, 404), (method, path, reply.text)
        assert reply.json().get("detail") != "Not Found", (method, path)
