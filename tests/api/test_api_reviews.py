"""``POST /v1/events/reviews`` on real stores: the contract (scope, strict body, times, the
review id's idempotency), erased customers refused, and the reviews' place in the privacy
rights: exported with the customer, deleted by their erasure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from recocamp.api.app import create_app
from recocamp.clock import FixedClock
from recocamp.store.schema import engagement_events
from tests.api_shop import NOW, Closing, Reply, bearer, call, engine_of, make_app, settings_for

REVIEWS = "/v1/events/reviews"
AT = "2012-01-04T18:30:00+01:00"


@pytest.fixture
def app(engine: sa.Engine, tmp_path: Path, closing: Closing) -> FastAPI:
    return closing(make_app(engine, tmp_path))


def review(review_id: str = "R1", customer: str = "c1", **changes: Any) -> dict[str, Any]:
    return {"review_id": review_id, "customer_id": customer, "occurred_at": AT} | changes


def post(app: FastAPI, body: object, key: str | None = "shop") -> Reply:
    headers = bearer(key) if key else {}
    return call(app, "POST", REVIEWS, json=body, headers=headers)


def stored(engine: sa.Engine) -> list[tuple[Any, ...]]:
    e = engagement_events.c
    query = sa.select(e.kind, e.event_id, e.customer_id, e.occurred_at, e.recorded_at)
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query.order_by(e.event_id))]


def test_a_review_is_stored_once_and_a_repeat_changes_nothing(app: FastAPI) -> None:
    first = post(app, review())
    assert first.status == 200, first.text
    assert first.json() == {"review_id": "R1", "created": True}
    at = datetime(2012, 1, 4, 17, 30, tzinfo=UTC)
    assert stored(engine_of(app)) == [("review", "R1", "c1", at, NOW)]
    same_instant = review(occurred_at="2012-01-04T17:30:00Z")  # another zone, the same time
    again = post(app, same_instant)
    assert again.status == 200 and again.json() == {"review_id": "R1", "created": False}
    assert stored(engine_of(app)) == [("review", "R1", "c1", at, NOW)]


@pytest.mark.parametrize(
    "changes",
    [{"customer_id": "c2"}, {"occurred_at": "2012-01-04T18:31:00+01:00"}],
    ids=["customer", "time"],
)
def test_the_same_review_id_with_other_content_is_a_409(
    app: FastAPI, changes: dict[str, str]
) -> None:
    assert post(app, review()).status == 200
    before = stored(engine_of(app))
    reply = post(app, review(**changes))
    assert reply.status == 409, reply.text
    assert reply.json() == {
        "detail": "review 'R1' is already stored with another customer or time "
        "(nothing was written)"
    }
    assert stored(engine_of(app)) == before


def test_without_a_key_401_without_the_scope_403(app: FastAPI) -> None:
    assert post(app, review(), key=None).status == 401
    assert post(app, review(), key="reader").status == 403  # offers:read only
    assert stored(engine_of(app)) == []


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        pytest.param(review(surprise=1), ["body", "surprise"], id="unknown-field"),
        pytest.param(review(review_id=""), ["body", "review_id"], id="empty-id"),
        pytest.param(review(review_id="R" * 65), ["body", "review_id"], id="long-id"),
        pytest.param(review(customer_id="c\x001"), ["body", "customer_id"], id="control"),
        pytest.param(review(occurred_at="2012-01-04 18:30"), ["body", "occurred_at"], id="naive"),
        pytest.param(review(occurred_at="yesterday"), ["body", "occurred_at"], id="not-a-time"),
        # a number is no ISO 8601 time (pydantic's lax mode read it as seconds since 1970)
        pytest.param(review(occurred_at=1325700000), ["body", "occurred_at"], id="seconds"),
        pytest.param(review(occurred_at="1325700000"), ["body", "occurred_at"], id="digits"),
        pytest.param(
            review(occurred_at="0001-01-01T00:00:00+05:00"), ["body", "occurred_at"], id="year"
        ),
        pytest.param(
            {"review_id": "R1", "occurred_at": AT}, ["body", "customer_id"], id="no-customer"
        ),
    ],
)
def test_a_malformed_review_is_422_naming_the_field(
    app: FastAPI, body: dict[str, Any], loc: list[str]
) -> None:
    reply = post(app, body)
    assert reply.status == 422, reply.text
    assert loc in [d["loc"] for d in reply.json()["detail"]]
    assert stored(engine_of(app)) == []


def test_a_review_dated_past_the_clock_skew_is_refused(app: FastAPI) -> None:
    soon = (NOW + timedelta(minutes=4)).isoformat()
    assert post(app, review("R1", occurred_at=soon)).status == 200
    for n, late in enumerate(((NOW + timedelta(minutes=6)).isoformat(), "2030-01-01T00:00Z")):
        reply = post(app, review(f"L{n}", occurred_at=late))
        assert reply.status == 422, reply.text
        assert reply.json()["detail"] == [
            {"type": "value_error", "loc": ["body", "occurred_at"], "msg": "lies in the future"}
        ]
    assert [row[1] for row in stored(engine_of(app))] == ["R1"]


def test_a_body_that_is_not_json_is_415(app: FastAPI) -> None:
    headers = {"content-type": "text/plain", **bearer("shop")}
    reply = call(app, "POST", REVIEWS, content=b'{"review_id": "R1"}', headers=headers)
    assert reply.status == 415


# -- privacy ----------------------------------------------------------------------------------


def erase(app: FastAPI, customer: str = "c1") -> Reply:
    return call(app, "DELETE", f"/v1/privacy/customers/{customer}", headers=bearer("dpo"))


def test_reviews_are_exported_and_erased_with_the_customer_and_stay_out(app: FastAPI) -> None:
    profile = {"source": "signup", "email": "c1@example.test"}
    put = call(app, "PUT", "/v1/customers/c1", json=profile, headers=bearer("shop"))
    assert put.status == 200
    assert post(app, review("R1")).status == 200
    assert post(app, review("R2", customer="c2")).status == 200  # someone else's

    exported = call(app, "GET", "/v1/privacy/customers/c1", headers=bearer("dpo"))
    assert exported.status == 200
    assert exported.json()["tables"]["engagement_events"] == [
        {
            "kind": "review",
            "event_id": "R1",
            "customer_id": "c1",
            "occurred_at": "2012-01-04T17:30:00+00:00",
            "recorded_at": NOW.isoformat(),
        }
    ]

    erased = erase(app)
    assert erased.status == 200, erased.text
    assert erased.json()["rows"]["engagement_events"] == 1
    assert [row[1:3] for row in stored(engine_of(app))] == [("R2", "c2")]

    refused = post(app, review("R3"))  # the shop posts another review of the erased id
    assert refused.status == 410, refused.text
    assert "erased" in refused.json()["detail"]
    assert post(app, review("R1")).status == 410  # also a repeat of an erased one
    assert [row[1] for row in stored(engine_of(app))] == ["R2"]


def test_without_the_key_an_erased_store_cannot_check_so_nothing_is_stored(
    engine: sa.Engine, tmp_path: Path, closing: Closing
) -> None:
    app = closing(make_app(engine, tmp_path))
    profile = {"source": "signup", "email": "c1@example.test"}
    assert call(app, "PUT", "/v1/customers/c1", json=profile, headers=bearer("shop")).status == 200
    assert erase(app).status == 200
    settings = settings_for(tmp_path).model_copy(update={"signing_key": None})
    unkeyed = create_app(settings, engine, FixedClock(NOW))
    reply = post(unkeyed, review("R9", customer="c9"))
    assert reply.status == 503 and "RECOCAMP_SIGNING_KEY" in reply.text
    assert stored(engine) == []
