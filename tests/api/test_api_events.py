"""Live events on real stores: purchase orders (validated with the importer's rules, all or
nothing, idempotent on the order id) and customer profile/consent changes (audited)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from recocamp import privacy, tokens
from recocamp.api.app import create_app
from recocamp.clock import FixedClock
from recocamp.data import profiles
from recocamp.domain import email_hash, stored_price
from recocamp.store import tombstones
from recocamp.store.schema import (
    audit_log,
    contact_events,
    customers,
    engagement_events,
    purchases,
    recommendations,
    suppressions,
)
from tests.api_shop import (
    NOW,
    SIGNING_KEY,
    Closing,
    Reply,
    answered,
    bearer,
    call,
    engine_of,
    make_app,
    settings_for,
)
from tests.conftest import impatient

EVENTS = "/v1/events/purchases"


@pytest.fixture
def app(engine: sa.Engine, tmp_path: Path) -> FastAPI:
    return make_app(engine, tmp_path)


def order(order_id: str = "A1", customer: str | None = "c1", **changes: Any) -> dict[str, Any]:
    document = {
        "order_id": order_id,
        "customer_id": customer,
        "ordered_at": "2012-01-04T18:30:00+01:00",
        "lines": [
            {"item_id": "i1", "quantity": 2, "unit_price": 3.5},
            {"item_id": "i2", "quantity": 1, "unit_price": 10.0},
        ],
    }
    return document | changes


def lines(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [
            tuple(r)
            for r in connection.execute(
                sa.select(
                    purchases.c.order_id,
                    purchases.c.line_no,
                    purchases.c.customer_id,
                    purchases.c.item_id,
                    purchases.c.quantity,
                    purchases.c.unit_price,
                    purchases.c.ordered_at,
                    purchases.c.is_return,
                ).order_by(purchases.c.order_id, purchases.c.line_no)
            )
        ]


def post(app: FastAPI, body: object, key: str = "shop") -> Reply:
    """``body`` as JSON, or a string sent as it is (JSON extensions such as NaN)."""
    if isinstance(body, str):
        headers = {"content-type": "application/json", **bearer(key)}
        return call(app, "POST", EVENTS, content=body.encode(), headers=headers)
    return call(app, "POST", EVENTS, json=body, headers=bearer(key))


def test_one_order_is_stored_with_the_importers_semantics(app: FastAPI) -> None:
    reply = post(app, order())
    assert reply.status == 200, reply.text
    assert reply.json() == {
        "orders": 1,
        "new_orders": 1,
        "duplicate_orders": [],
        "lines_written": 2,
        "lines_skipped": {},
        "erased_customer_lines": 0,
    }
    at = datetime(2012, 1, 4, 17, 30, tzinfo=UTC)
    assert lines(engine_of(app)) == [
        ("A1", 1, "c1", "i1", 2, 3.5, at, False),
        ("A1", 2, "c1", "i2", 1, 10.0, at, False),
    ]


def test_a_batch_with_a_guest_a_return_and_an_adjustment(app: FastAPI) -> None:
    batch = {
        "orders": [
            order("B1", None, ordered_at="2012-01-04 09:00:00"),  # guest; shop zone: Berlin
            order(
                "B2",
                lines=[
                    {"item_id": "i1", "quantity": -1, "unit_price": 3.5},
                    {"item_id": "i3", "quantity": 1, "unit_price": 0.0},
                ],
            ),
        ]
    }
    reply = post(app, batch)
    assert reply.status == 200, reply.text
    assert reply.json()["lines_skipped"] == {"adjustment": 1}
    stored = lines(engine_of(app))
    assert [(r[0], r[2], r[7]) for r in stored] == [
        ("B1", None, False),
        ("B1", None, False),
        ("B2", "c1", True),
    ]
    assert stored[0][6] == datetime(2012, 1, 4, 8, 0, tzinfo=UTC)  # 09:00 in Berlin


def test_the_same_order_again_changes_nothing(app: FastAPI) -> None:
    assert post(app, order()).status == 200
    before = lines(engine_of(app))
    again = post(app, {"orders": [order(), order("A2")]})
    assert again.status == 200
    assert again.json()["duplicate_orders"] == ["A1"] and again.json()["new_orders"] == 1
    assert [r for r in lines(engine_of(app)) if r[0] == "A1"] == before


def test_an_order_stored_with_other_lines_is_a_409_and_nothing_is_written(app: FastAPI) -> None:
    assert post(app, order()).status == 200
    before = lines(engine_of(app))
    changed = order(lines=[{"item_id": "other", "quantity": 9, "unit_price": 1.0}])
    reply = post(app, {"orders": [changed, order("A2")]})
    assert reply.status == 409, reply.text
    assert reply.json() == {"detail": "already stored with other lines: order(s) 'A1'"}
    assert lines(engine_of(app)) == before


@pytest.mark.parametrize(
    ("first", "again"),
    [("c1", "c2"), ("c1", None), (None, "c1")],
    ids=["another-customer", "as-guest", "guest-claimed"],
)
def test_an_order_stored_under_another_customer_is_a_409_and_nothing_is_written(
    app: FastAPI, first: str | None, again: str | None
) -> None:
    """The digest leaves the customer out (an erasure unlinks the lines), so the same
    lines under another customer, or as a guest order, were a 200 "duplicate" that kept
    the order where it was without a word: the shop believed the order was its customer's
    and no offer or campaign ever saw it."""
    assert post(app, order(customer=first)).status == 200
    before = lines(engine_of(app))
    reply = post(app, {"orders": [order("A2", customer=again), order(customer=again)]})
    assert reply.status == 409, reply.text
    assert reply.json() == {
        "detail": "already stored under another customer or as a guest order: order(s) 'A1'"
    }
    assert lines(engine_of(app)) == before


def test_an_order_of_an_erased_customer_posted_again_is_a_duplicate(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """Its stored lines lost the customer with the erasure; posted again it is detached the
    same way, so it is the same order, not a conflict."""
    app = make_app(engine, tmp_path)
    assert put(app, {"source": "signup", "email": "x@example.test"}).status == 200
    assert post(app, order("A1")).status == 200
    assert erase(app).status == 200
    reply = post(app, order("A1"))
    assert reply.status == 200, reply.text
    assert reply.json()["duplicate_orders"] == ["A1"]


@pytest.mark.parametrize(
    ("body", "loc", "value"),
    [
        pytest.param(order(ordered_at="yesterday"), ["body", "ordered_at"], "yesterday", id="time"),
        pytest.param(
            order(ordered_at="0001-01-01T00:00:00+05:00"),
            ["body", "ordered_at"],
            "0001-01-01T00:00:00+05:00",
            id="time-out-of-range",
        ),
        pytest.param(
            {"orders": [order("X1"), order("X1")]},
            ["body", "orders", 1, "order_id"],
            "X1",
            id="twice",
        ),
        pytest.param(
            {"orders": [order("X1"), order("X2", ordered_at="13/01/2012")]},
            ["body", "orders", 1, "ordered_at"],
            "13/01/2012",
            id="second-order",
        ),
        pytest.param(
            '{"order_id": "N", "ordered_at": "2012-01-04T10:00:00+00:00", "lines": '
            '[{"item_id": "i1", "quantity": 1, "unit_price": NaN}]}',
            ["body", "lines", 0, "unit_price"],
            "nan",
            id="nan-price",
        ),
    ],
)
def test_bad_input_is_422_naming_the_field_not_the_value_and_writes_nothing(
    app: FastAPI, body: Any, loc: list[Any], value: str
) -> None:
    reply = post(app, body)
    assert reply.status == 422, reply.text
    assert loc in [d["loc"] for d in reply.json()["detail"]]
    assert all(set(d) == {"type", "loc", "msg"} for d in reply.json()["detail"])
    assert f'"{value}"' not in reply.text  # the value sent is not echoed
    assert lines(engine_of(app)) == []


def test_an_orders_bad_time_is_one_problem_however_many_lines_it_has(app: FastAPI) -> None:
    """The time is the order's, but each line was parsed with it and said so: an order of
    1,000 lines with a bad ``ordered_at`` got 1,000 identical problems."""
    many = [{"item_id": f"i{k}", "quantity": 1, "unit_price": 1.0} for k in range(50)]
    reply = post(app, {"orders": [order("X1", ordered_at="2012-13-01T10:00:00", lines=many)]})
    assert reply.status == 422, reply.text
    assert [e["loc"] for e in reply.json()["detail"]] == [["body", "orders", 0, "ordered_at"]]


def test_a_field_has_one_loc_whichever_check_refused_it(app: FastAPI) -> None:
    """A 422's ``loc`` is the path to the field in the body sent. pydantic put the body
    union's tag in it ("order" for one order, "batch" for ``{"orders": […]}``), a key no
    body has, while the checks after it did not: the same line's quantity was at
    ``["body", "order", "lines", 0, "quantity"]`` when a string and at ``["body", "lines",
    0, …]`` for the importer's rules, so a client could not map either to its form."""
    line = {"item_id": "i1", "quantity": "2", "unit_price": 1.0}
    one = {"order_id": "A", "ordered_at": "2012-01-04T10:00:00+00:00", "lines": [line]}
    for body, loc in (
        (one, ["body", "lines", 0, "quantity"]),
        ({"orders": [one]}, ["body", "orders", 0, "lines", 0, "quantity"]),
        ({"orders": [{**one, "lines": "x"}]}, ["body", "orders", 0, "lines"]),
    ):
        reply = post(app, body)
        assert reply.status == 422, reply.text
        assert loc in [d["loc"] for d in reply.json()["detail"]], reply.text
    assert lines(engine_of(app)) == []


@pytest.mark.parametrize(
    "body",
    [
        {"order_id": "A", "ordered_at": "2012-01-01", "lines": []},
        {
            "order_id": "A",
            "ordered_at": "2012-01-01",
            "lines": [{"item_id": "i", "quantity": "x", "unit_price": 1}],
        },
        {
            "order_id": "",
            "ordered_at": "2012-01-01",
            "lines": [{"item_id": "i", "quantity": 1, "unit_price": 1}],
        },
        {"orders": []},
        {"order_id": "A", "surprise": 1},
        [],
        "text",
        {
            "order_id": "A\x00B",
            "ordered_at": "2012-01-01",
            "lines": [{"item_id": "i", "quantity": 1, "unit_price": 1}],
        },
    ],
)
def test_malformed_bodies_are_422(app: FastAPI, body: Any) -> None:
    assert post(app, body).status == 422
    assert lines(engine_of(app)) == []


def test_bodies_over_the_limit_are_413(engine: sa.Engine, tmp_path: Path) -> None:
    app = make_app(engine, tmp_path, max_body_bytes=2048)
    many = {"orders": [order(f"O{n}") for n in range(40)]}
    assert post(app, many).status == 413
    assert lines(engine) == []


# -- profile, consent and contact preferences -------------------------------------------------


def person(engine: sa.Engine, customer: str = "c1") -> Any:
    with engine.connect() as connection:
        return connection.execute(sa.select(customers).where(customers.c.id == customer)).first()


def audits(engine: sa.Engine) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [
            (r.action, r.actor, r.subject_id, r.details)
            for r in connection.execute(sa.select(audit_log).order_by(audit_log.c.id))
        ]


def put(app: FastAPI, body: dict[str, Any], customer: str = "c1") -> Reply:
    return call(app, "PUT", f"/v1/customers/{customer}", json=body, headers=bearer("shop"))


@pytest.mark.parametrize("shop_locale", ["de", "en"])
def test_a_new_customer_without_a_locale_gets_the_shops_default_locale(
    closing: Closing, engine: sa.Engine, tmp_path: Path, shop_locale: str
) -> None:
    """README: the e-mail's language is "the customer's, else the shop's default_locale".
    A customer created without one was stored as "en" whatever the shop's locale (default
    "de"), so a German shop's customers got English mail."""
    settings = settings_for(tmp_path)
    shop = settings.shop.model_copy(update={"default_locale": shop_locale})
    app = closing(create_app(settings.model_copy(update={"shop": shop}), engine, FixedClock(NOW)))
    assert put(app, {"source": "checkout", "email": "a@example.test"}).status == 200
    assert put(app, {"source": "checkout", "locale": "en"}, customer="c2").status == 200
    assert (person(engine).locale, person(engine, "c2").locale) == (shop_locale, "en")


def test_a_customer_is_created_and_changed_with_an_audit_trail(app: FastAPI) -> None:
    engine = engine_of(app)
    created = put(
        app,
        {
            "source": "checkout",
            "email": "Anna@Example.test",
            "first_name": "Anna",
            "locale": "de",
            "consent_basis": "double_opt_in",
            "consent_at": "2012-01-04T10:00:00+01:00",
            "consent_source": "newsletter",
            "at": "2012-01-04T10:05:00+01:00",
        },
    )
    assert created.status == 200, created.text
    assert created.json()["created"] is True
    row = person(engine)
    assert (row.email, row.locale, row.consent_basis) == (
        "Anna@Example.test",
        "de",
        "double_opt_in",
    )
    assert row.consent_at == datetime(2012, 1, 4, 9, 0, tzinfo=UTC)
    changed = put(
        app, {"source": "account page", "frequency_preference": "weekly", "channel_email": True}
    )
    assert changed.json() == {
        "customer_id": "c1",
        "created": False,
        "changed": ["frequency_preference"],
        "kept_newer": [],
        "model_artifacts": None,  # no objection in this change: no model was touched
        "models_left": [],
    }
    trail = audits(engine)
    assert [t[:3] for t in trail] == [
        ("customer_created", "api:shop", "c1"),
        ("customer_changed", "api:shop", "c1"),
    ]
    first, second = trail[0][3], trail[1][3]
    assert first["source"] == "checkout" and "email" in first["fields"]
    assert first["values"]["consent_basis"] == "double_opt_in"
    assert "Anna" not in str(first) and "example.test" not in str(first).lower()
    assert second == {
        "source": "account page",
        "fields": ["frequency_preference"],
        "values": {"frequency_preference": "weekly"},
    }
    assert person(engine).updated_at == NOW  # the second change happened "now"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"source": "x", "consent_basis": "double_opt_in"}, "consent_at"),
        ({"source": "x", "email": "no-at-sign"}, "email"),
        ({"source": "x", "email": "no-at-sign@x.test, b@y.test"}, "email"),  # two recipients
        ({"source": "x", "email": "no-at-sign@x.test\r\nBcc: b@y.test"}, "email"),
        ({"source": "x", "email": "no-at-sign@x.test."}, "email"),  # x.test's mailbox
        ({"source": "x", "time_zone": "Mars/Olympus"}, "time_zone"),
        ({"source": "x", "at": (NOW + timedelta(days=1)).isoformat()}, "at"),
        ({"source": "x", "consent_at": "2012-01-01T10:00:00"}, "consent_at"),  # no offset
        ({"source": "x", "frequency_preference": "hourly"}, "frequency_preference"),
        ({"source": "x", "paused_until": "0001-01-01T00:00:00+01:00"}, "paused_until"),
        ({"first_name": "no source"}, "source"),
    ],
)
def test_bad_profile_changes_are_422_naming_the_field(
    app: FastAPI, body: dict[str, Any], field: str
) -> None:
    reply = put(app, body)
    assert reply.status == 422, reply.text
    assert field in [d["loc"][-1] for d in reply.json()["detail"]]
    assert "no-at-sign" not in reply.text  # addresses are redacted even when wrong
    assert person(engine_of(app)) is None


def test_an_address_is_stored_trimmed_as_the_import_stores_it(app: FastAPI) -> None:
    """``PUT`` kept ``"  b@example.test "`` as given while the import trims: the same
    customer's address then differed between the two ways in, and the padded one failed the
    deliverer's plain-address check."""
    assert put(app, {"source": "signup", "email": "  b@example.test "}).status == 200
    assert person(engine_of(app)).email == "b@example.test"


def test_a_delayed_sync_does_not_undo_a_newer_change(engine: sa.Engine, tmp_path: Path) -> None:
    """A CRM sync delayed by an hour carries ``objected_to_profiling: false`` and
    ``channel_email: true`` from before the customer objected and opted out on the
    preferences page: applied because it arrived last, it undid both and profiling went on.
    A field changed after the change's ``at`` keeps its newer value and is named in
    ``kept_newer``; the rest of the change applies, and a later change still does."""
    app = make_app(engine, tmp_path, FixedClock(NOW))
    earlier = (NOW - timedelta(hours=1)).isoformat()
    assert put(app, {"source": "signup", "email": "b@example.test"}).status == 200
    own = {"source": "preferences page", "objected_to_profiling": True, "channel_email": False}
    assert put(app, {**own, "at": (NOW - timedelta(minutes=5)).isoformat()}).status == 200
    stale = {
        "source": "crm",
        "at": earlier,
        "objected_to_profiling": False,
        "channel_email": True,
        "first_name": "Bea",
    }
    reply = put(app, stale)
    assert reply.status == 200, reply.text
    assert (reply.json()["changed"], reply.json()["kept_newer"]) == (
        ["first_name"],
        ["channel_email", "objected_to_profiling"],
    )
    row = person(engine)
    assert (row.objected_to_profiling, row.channel_email, row.first_name) == (True, False, "Bea")
    later = put(app, {"source": "crm", "objected_to_profiling": False})  # at: now
    assert later.json()["changed"] == ["objected_to_profiling"]
    assert person(engine).objected_to_profiling is False


def test_objection_drops_the_personal_list_at_once(app: FastAPI) -> None:
    engine = engine_of(app)
    assert put(app, {"source": "signup", "email": "b@example.test"}).status == 200
    with engine.begin() as connection:
        connection.execute(
            sa.insert(recommendations).values(customer_id="c1", model_version="v", items=[["i", 1]])
        )
    assert put(app, {"source": "account page", "objected_to_profiling": True}).status == 200
    with engine.connect() as connection:
        assert connection.execute(sa.select(recommendations)).first() is None
    assert person(engine).objected_to_profiling is True


def test_unsubscribe_and_resubscribe_only_with_a_new_consent(
    engine: sa.Engine, tmp_path: Path
) -> None:
    clock = FixedClock(NOW)
    app = make_app(engine, tmp_path, clock)
    consent = {"consent_basis": "double_opt_in", "consent_at": "2011-06-01T10:00:00+00:00"}
    assert put(app, {"source": "signup", "email": "c@example.test", **consent}).status == 200
    assert put(app, {"source": "account page", "unsubscribed": True}).status == 200
    assert person(engine).unsubscribed_at == NOW
    with engine.connect() as connection:
        hashes = set(connection.execute(sa.select(suppressions.c.email_hash)).scalars())
    assert hashes == {email_hash("c@example.test")}

    old = put(app, {"source": "account page", "unsubscribed": False})
    assert old.status == 422 and old.json()["detail"][0]["loc"] == ["body", "unsubscribed"]
    assert person(engine).unsubscribed_at == NOW

    later = clock.advance(timedelta(days=3))
    renewed = {"consent_basis": "double_opt_in", "consent_at": later.isoformat()}
    reply = put(app, {"source": "double opt-in confirmed", "unsubscribed": False, **renewed})
    assert reply.status == 200, reply.text
    assert reply.json()["changed"] == ["consent_at", "resubscribed"]
    assert person(engine).unsubscribed_at is None
    with engine.connect() as connection:
        assert connection.execute(sa.select(suppressions)).first() is None


def test_a_new_consent_basis_needs_its_own_consent_time(app: FastAPI) -> None:
    """The double opt-in's time must not stand as the time of another basis: a change of
    basis without its consent_at, or with the stored one, is refused and changes nothing."""
    engine = engine_of(app)
    doi = {"consent_basis": "double_opt_in", "consent_at": "2011-06-01T10:00:00+00:00"}
    assert put(app, {"source": "signup", "email": "c@example.test", **doi}).status == 200
    before = person(engine), audits(engine)
    for stale in ({}, {"consent_at": doi["consent_at"]}):
        reply = put(app, {"source": "t", "consent_basis": "existing_customer", **stale})
        assert reply.status == 422, reply.text
        assert reply.json()["detail"][0]["loc"] == ["body", "consent_at"]
        assert "consent_basis" in reply.json()["detail"][0]["msg"]
    assert (person(engine), audits(engine)) == before

    own = {"consent_basis": "existing_customer", "consent_at": "2011-12-24T09:00:00+00:00"}
    assert put(app, {"source": "checkout", **own}).status == 200
    row = person(engine)
    assert (row.consent_basis, row.consent_at) == (
        "existing_customer",
        datetime(2011, 12, 24, 9, tzinfo=UTC),
    )
    same_basis = put(app, {"source": "t", "consent_basis": "existing_customer"})
    assert same_basis.status == 200 and same_basis.json()["changed"] == []
    withdrawn = put(app, {"source": "account page", "consent_basis": "none"})  # needs no time
    assert withdrawn.status == 200 and withdrawn.json()["changed"] == ["consent_basis"]
    again = put(app, {"source": "t", "consent_basis": "double_opt_in"})
    assert again.status == 422 and again.json()["detail"][0]["loc"] == ["body", "consent_at"]


def test_a_consent_in_the_future_is_refused(app: FastAPI) -> None:
    future = {"consent_basis": "double_opt_in", "consent_at": (NOW + timedelta(days=1)).isoformat()}
    reply = put(app, {"source": "signup", **future})
    assert reply.status == 422 and reply.json()["detail"][0]["loc"] == ["body", "consent_at"]


def erase(app: FastAPI, customer: str = "c1") -> Reply:
    return call(app, "DELETE", f"/v1/privacy/customers/{customer}", headers=bearer("dpo"))


def test_an_erased_customer_comes_back_only_by_a_new_sign_up(
    engine: sa.Engine, tmp_path: Path
) -> None:
    clock = FixedClock(NOW)
    app = make_app(engine, tmp_path, clock)
    consent = {"consent_basis": "double_opt_in", "consent_at": "2011-06-01T10:00:00+00:00"}
    profile = {"source": "crm sync", "email": "Erin@Example.test", "first_name": "Erin", **consent}
    assert put(app, profile).status == 200
    assert erase(app).status == 200
    clock.advance(timedelta(days=1))

    again = put(app, profile)  # the shop's CRM sends the old profile again
    assert again.status == 410 and "erin" not in again.text.lower()
    same_address = put(app, {"source": "signup", "email": " erin@example.TEST"}, customer="c2")
    assert same_address.status == 410
    stale = put(app, {**profile, "new_sign_up": True})  # the consent is older than the erasure
    assert stale.status == 422 and stale.json()["detail"][0]["loc"] == ["body", "consent_at"]
    assert person(engine) is None and person(engine, "c2") is None

    fresh = {"consent_basis": "double_opt_in", "consent_at": clock.now().isoformat()}
    back = put(app, {**profile, **fresh, "source": "signup", "new_sign_up": True})
    assert back.status == 200 and back.json()["created"] is True, back.text
    assert person(engine).email == "Erin@Example.test"
    lifted = [row for row in audits(engine) if row[0] == "erasure_lifted"]
    assert lifted == [("erasure_lifted", "api:shop", "c1", {"source": "signup", "tombstones": 1})]
    assert put(app, {"source": "account page", "first_name": "Erin B."}).status == 200

    assert erase(app).status == 200  # erased again; she signs up under a new id
    fresh = {
        "consent_basis": "double_opt_in",
        "consent_at": clock.advance(timedelta(days=1)).isoformat(),
    }
    renewed = {"source": "signup", "email": "erin@example.test", "new_sign_up": True, **fresh}
    assert put(app, renewed, customer="c2").status == 200
    assert put(app, profile).status == 410  # the old record stays erased
    assert person(engine) is None and person(engine, "c2").email == "erin@example.test"


def test_an_erased_id_with_white_space_around_it_is_refused_not_taken_as_another(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """Imports trim ids, so `` c1`` in a file is ``c1`` and its tombstone holds; the API
    took `` c1`` as another customer, whom no tombstone names: the erased customer came
    back through ``PUT`` and their reviews with them. Every id with white space at an end
    is a 422 now, naming the field, and nothing is stored."""
    app = make_app(engine, tmp_path)
    assert put(app, {"source": "signup", "email": "x@example.test"}).status == 200
    assert erase(app).status == 200
    for padded in ("c1%20", "%20c1"):
        again = put(app, {"source": "crm sync", "email": "new@example.test"}, customer=padded)
        assert again.status == 422, again.text
        assert again.json()["detail"][0]["loc"] == ["path", "customer_id"]
    review = {"review_id": "R1", "customer_id": "c1 ", "occurred_at": "2012-01-04T18:30:00Z"}
    reviewed = call(app, "POST", "/v1/events/reviews", json=review, headers=bearer("shop"))
    assert reviewed.status == 422 and reviewed.json()["detail"][0]["loc"] == [
        "body",
        "customer_id",
    ]
    with engine.connect() as connection:
        held = connection.execute(sa.select(customers.c.id)).scalars().all()
        reviews = connection.execute(sa.select(sa.func.count()).select_from(engagement_events))
        assert (held, reviews.scalar_one()) == ([], 0)


def test_an_erased_id_in_another_unicode_form_is_gone_until_a_new_sign_up(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """``José`` erased composed came back decomposed through ``PUT``; now it is 410, and a
    new sign-up under the decomposed form lifts the tombstone, so later changes are taken."""
    clock = FixedClock(NOW)
    app = make_app(engine, tmp_path, clock)
    composed, decomposed = "Jos%C3%A9", "Jose%CC%81"  # URL-encoded: José, Jose + U+0301
    assert put(app, {"source": "signup", "email": "j@example.test"}, composed).status == 200
    assert erase(app, "Jos\u00e9").status == 200
    clock.advance(timedelta(days=1))
    profile = {"source": "crm sync", "email": "new@example.test"}
    assert put(app, profile, decomposed).status == 410
    fresh = {"consent_basis": "double_opt_in", "consent_at": clock.now().isoformat()}
    signed = put(app, {**profile, **fresh, "new_sign_up": True}, decomposed)
    assert signed.status == 200, signed.text
    assert put(app, {"source": "account page", "first_name": "J"}, decomposed).status == 200
    assert person(engine, "Jos\u00e9") is not None and person(engine, "Jose\u0301") is None


def test_an_id_in_another_unicode_form_is_one_customer_through_the_api(app: FastAPI) -> None:
    """Files read ids composed (Unicode NFC); the API took them as given, so ``Mu`` +
    U+0308 ``ller`` from one system and ``Müller`` from another were two customers between a
    file and the API (and within the API): the API composes its ids, in bodies and paths,
    as files do. PUT under the decomposed form stores the composed id, the composed form
    changes that record, and orders and reviews name it."""
    decomposed, composed = "Mu\u0308ller", "M\u00fcller"
    created = put(app, {"source": "signup", "email": "m@example.test"}, "Mu%CC%88ller")
    assert created.status == 200, created.text
    assert created.json()["customer_id"] == composed and created.json()["created"] is True
    again = put(app, {"source": "account page", "first_name": "M"}, "M%C3%BCller")
    assert again.status == 200 and again.json()["created"] is False, again.text
    item = "To\u0308pfchen"
    bought = [{"item_id": item, "quantity": 1, "unit_price": 2.0}]
    reply = post(app, order("O\u03081", decomposed, lines=bought))
    assert reply.status == 200, reply.text
    assert {(r[0], r[2], r[3]) for r in lines(engine_of(app))} == {
        ("\u00d61", composed, "T\u00f6pfchen")
    }
    review = {
        "review_id": "E\u03081",
        "customer_id": decomposed,
        "occurred_at": "2012-01-04T18:30:00Z",
    }
    reviewed = call(app, "POST", "/v1/events/reviews", json=review, headers=bearer("shop"))
    assert reviewed.status == 200, reviewed.text
    with engine_of(app).connect() as connection:
        held = connection.execute(sa.select(customers.c.id)).scalars().all()
        e = engagement_events.c
        told = connection.execute(sa.select(e.event_id, e.customer_id)).all()
    assert held == [composed] and [tuple(r) for r in told] == [("\u00cb1", composed)]
    assert person(engine_of(app), decomposed) is None


def test_a_path_finds_a_customer_an_older_version_stored_decomposed(app: FastAPI) -> None:
    """Versions that took API ids as given stored ``Mu`` + U+0308 ``ller`` decomposed; a
    path is composed now, and then looks up the composed form first, then the decomposed
    one: PUT under either form changes the stored record (no second, composed one) and the
    forecast route knows the customer."""
    decomposed, composed = "Mu\u0308ller", "M\u00fcller"
    with engine_of(app).begin() as connection:
        profiles.apply(
            connection, decomposed, {"first_name": "M"}, at=NOW, actor="old", source="old"
        )
    for given in ("Mu%CC%88ller", "M%C3%BCller"):
        changed = put(app, {"source": "account page", "first_name": given[:2]}, given)
        assert changed.status == 200, changed.text
        assert changed.json()["created"] is False and changed.json()["customer_id"] == decomposed
    assert person(engine_of(app), composed) is None
    assert person(engine_of(app), decomposed).first_name == "M%"
    path = "/v1/customers/M%C3%BCller/forecast"
    known = call(app, "GET", path, headers=bearer("shop"))
    assert known.status == 404 and "we know no customer" not in known.text, known.text
    offers = call(app, "GET", "/v1/customers/Mu%CC%88ller/next-best-offer", headers=bearer("shop"))
    assert offers.status == 200, offers.text


def test_orders_of_an_erased_customer_are_kept_as_guest_orders(
    engine: sa.Engine, tmp_path: Path
) -> None:
    app = make_app(engine, tmp_path)
    assert put(app, {"source": "signup", "email": "x@example.test"}).status == 200
    assert post(app, order("A1")).status == 200
    assert erase(app).status == 200
    reply = post(app, {"orders": [order("A2"), order("A3", customer="c2")]})
    assert reply.status == 200, reply.text
    assert reply.json()["erased_customer_lines"] == 2 and reply.json()["lines_written"] == 4
    owners = {(row[0], row[1]): row[2] for row in lines(engine)}
    assert owners == {
        ("A1", 1): None,
        ("A1", 2): None,
        ("A2", 1): None,
        ("A2", 2): None,
        ("A3", 1): "c2",
        ("A3", 2): "c2",
    }
    assert person(engine) is None


def test_without_the_key_erased_customers_cannot_be_checked_so_nothing_is_written(
    engine: sa.Engine, tmp_path: Path
) -> None:
    app = make_app(engine, tmp_path)
    assert put(app, {"source": "signup", "email": "x@example.test"}).status == 200
    assert erase(app).status == 200
    settings = settings_for(tmp_path).model_copy(update={"signing_key": None})
    unkeyed = create_app(settings, engine, FixedClock(NOW))
    before = lines(engine), audits(engine)
    refused = call(
        unkeyed,
        "PUT",
        "/v1/customers/c1",
        json={"source": "crm", "first_name": "X"},
        headers=bearer("shop"),
    )
    assert refused.status == 503 and "RECOCAMP_SIGNING_KEY" in refused.text
    assert call(unkeyed, "POST", EVENTS, json=order("A9"), headers=bearer("shop")).status == 503
    assert (lines(engine), audits(engine)) == before and person(engine) is None
    kept = call(unkeyed, "DELETE", "/v1/privacy/customers/c9", headers=bearer("dpo"))
    assert kept.status == 503 and "nothing was erased" in kept.text


@pytest.mark.parametrize("route", ["customer", "purchase", "unsubscribe link"])
def test_sqlite_an_erasure_between_a_requests_check_and_its_write_is_not_undone(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    """SQLite: a PUT, an order or an unsubscribe link of c1 has checked the tombstones (none)
    and not written yet when c1's erasure runs on another connection. Either the erasure
    waits for the request (its check holds the write lock) or the request must not bring c1
    back: never both a tombstone and c1's profile, orders or contact events."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL serialises checks and erasures with an advisory lock")
    app = make_app(engine, tmp_path)
    assert put(app, {"source": "signup", "email": "x@example.test"}).status == 200
    eraser = impatient(engine)
    outcome: list[bool | str] = []  # erased, or SQLite's error
    checks: dict[str, Callable[..., object]] = {
        "purchase": tombstones.erased_ids,
        "unsubscribe link": tombstones.void_link,
    }
    check = checks.get(route, tombstones.matches)

    def check_then_erase(*args: object, **kwargs: object) -> object:
        found = check(*args, **kwargs)
        try:  # on another connection, while the request's transaction is open
            erased = privacy.erase(eraser, settings_for(tmp_path), "c1", NOW, via="test")
            outcome.append(erased is not None)
        except sa.exc.OperationalError as exc:
            outcome.append(str(exc.orig))
        return found

    monkeypatch.setattr(tombstones, check.__name__, check_then_erase)
    if route == "customer":
        reply = put(app, {"source": "crm sync", "first_name": "Erin"})
    elif route == "purchase":
        reply = post(app, order("A1"))
    else:
        token = tokens.sign(SIGNING_KEY.encode(), "c1", "winback", "unsubscribe", NOW)
        reply = call(app, "POST", f"/u/{token}")
    monkeypatch.undo()
    eraser.dispose()
    with engine.connect() as connection:
        tombstoned = tombstones.count(connection) == 1
        mine = contact_events.c.customer_id == "c1"
        events = connection.execute(sa.select(contact_events.c.id).where(mine)).all()
    back = person(engine) is not None or bool(events) or any(r[2] == "c1" for r in lines(engine))
    assert len(outcome) == 1 and tombstoned != back, (outcome, reply.status)


def test_a_store_that_is_busy_is_a_503_in_the_apis_shape_with_retry_after(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """SQLite's write lock held past the busy timeout (an import, the worker), or PostgreSQL
    out of reach: the request failed with Starlette's plain-text 500 "Internal Server
    Error", which a shop's client reads as a bug of ours, not as "send it again", and whose
    body is not the API's JSON. Now 503 ``{"detail"}`` with ``Retry-After``, nothing
    written (the transaction rolled back)."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's write lock makes the store busy on demand")
    app = make_app(impatient(engine), tmp_path)
    holder = engine.raw_connection()
    try:
        holder.execute("BEGIN IMMEDIATE")
        reply = answered(app, "POST", EVENTS, json=order(), headers=bearer("shop"))
        changed = answered(
            app,
            "PUT",
            "/v1/customers/c1",
            json={"source": "t", "email": "x@example.test"},
            headers=bearer("shop"),
        )
    finally:
        holder.rollback()
        holder.close()
    for answer in (reply, changed):
        assert answer.status == 503, answer.text
        assert answer.json() == {
            "detail": "the store is busy or out of reach: send the request again later"
        }
        assert answer.headers["retry-after"] == "5"
    assert lines(engine) == [] and person(engine) is None


# -- strict JSON types, order times, media types and body limits ------------------------------


def one_line(**line: Any) -> dict[str, Any]:
    return order(lines=[{"item_id": "i1", "quantity": 1, "unit_price": 3.5} | line])


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ({"quantity": True}, "quantity"),
        ({"quantity": "1"}, "quantity"),
        ({"quantity": 1.5}, "quantity"),
        ({"unit_price": "3.5"}, "unit_price"),
        ({"unit_price": False}, "unit_price"),
        ({"is_return": 0}, "is_return"),
        ({"is_return": "false"}, "is_return"),
    ],
)
def test_strings_and_booleans_are_not_numbers(
    app: FastAPI, line: dict[str, Any], field: str
) -> None:
    reply = post(app, one_line(**line))
    assert reply.status == 422, reply.text
    assert ["body", "lines", 0, field] in [d["loc"] for d in reply.json()["detail"]]
    assert lines(engine_of(app)) == []


def test_json_numbers_stay_numbers(app: FastAPI) -> None:
    """JSON has one number type: 2.0 is a whole quantity, 4 a price."""
    reply = post(app, one_line(quantity=2.0, unit_price=4))
    assert reply.status == 200, reply.text
    assert [(q, float(p)) for _, _, _, _, q, p, *_ in lines(engine_of(app))] == [(2, 4.0)]


@pytest.mark.parametrize("price", [0.0001, 123456789.125, 999999999.9999, 4.35 * 100])
def test_a_precise_price_is_stored_as_sent(app: FastAPI, price: float) -> None:
    """The event's line goes through the file parser: a price to the store's 4 decimals is
    stored as sent (SQLite: the same float), also with a float's own noise (4.35 × 100 is
    434.99999999999994 in JavaScript as in Python: 435)."""
    reply = post(app, one_line(unit_price=price))
    assert reply.status == 200, reply.text
    stored = [float(p) for _, _, _, _, _, p, *_ in lines(engine_of(app))]
    assert [stored_price(p) for p in stored] == [stored_price(price)]  # as NUMERIC(14, 4) has it
    if engine_of(app).dialect.name == "sqlite":
        assert stored == [price]


@pytest.mark.parametrize("price", [0.00001, 1.5e-9, 1e-300, 2.00005])
def test_a_price_finer_than_the_store_keeps_is_refused(app: FastAPI, price: float) -> None:
    """PostgreSQL rounds a price to 4 decimals and SQLite kept it: 0.00001 was a sale on one
    store and a free line (left out of every figure) on the other. JSON writes some of
    these with an exponent; refused all the same, naming the field."""
    reply = post(app, one_line(unit_price=price))
    assert reply.status == 422, reply.text
    assert [d["loc"][-1] for d in reply.json()["detail"]] == ["unit_price"]
    assert "more than 4 decimals" in reply.text
    assert lines(engine_of(app)) == []


@pytest.mark.parametrize("field", ["channel_email", "objected_to_profiling", "unsubscribed"])
@pytest.mark.parametrize("value", [1, 0, "true", "false"])
def test_profile_flags_are_json_booleans(app: FastAPI, field: str, value: Any) -> None:
    reply = put(app, {"source": "account", field: value})
    assert reply.status == 422, reply.text
    assert reply.json()["detail"][0]["loc"] == ["body", field]
    assert person(engine_of(app)) is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("birthday", 1985),  # a birth year: read as 1985 seconds after 1970-01-01
        ("birthday", 0),
        ("birthday", "19850412"),  # ISO 8601's basic form: read as seconds, 1970-08-19
        ("consent_at", 1325376000),  # seconds since 1970, or milliseconds past 2e10
        ("consent_at", "1325376000"),
        ("at", 1325376000000),
        ("paused_until", 1325462400.5),
        ("paused_until", "1.3254624e9"),
    ],
)
def test_profile_times_and_dates_are_iso_8601_text_not_numbers(
    app: FastAPI, field: str, value: Any
) -> None:
    """pydantic's lax mode reads a JSON number, or a string of digits, as a Unix time: a
    shop sending a birth year stored 1970-01-01, and a date in ISO's basic form
    (``19850412``) a day in August 1970, without a word."""
    body = {"source": "account", field: value}
    if field == "consent_at":
        body["consent_basis"] = "double_opt_in"
    reply = put(app, body)
    assert reply.status == 422, reply.text
    assert ["body", field] in [d["loc"] for d in reply.json()["detail"]]
    assert "ISO 8601" in reply.text
    assert person(engine_of(app)) is None


def test_profile_times_and_dates_in_iso_8601_still_work(app: FastAPI) -> None:
    body = {
        "source": "account",
        "birthday": "1985-04-12",
        "consent_basis": "double_opt_in",
        "consent_at": "2011-12-01T10:00:00+01:00",
        "paused_until": "2012-02-01T00:00:00Z",
        "at": "2012-01-05T08:00:00Z",
    }
    assert put(app, body).status == 200
    found = person(engine_of(app))
    assert str(found.birthday) == "1985-04-12"
    assert found.consent_at.astimezone(UTC) == datetime(2011, 12, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "zone", ["localtime", "posixrules", "posix/Europe/Berlin", "right/Europe/Berlin"]
)
def test_a_customer_zone_is_an_iana_name_not_a_file_of_this_machine(
    app: FastAPI, zone: str
) -> None:
    """``ZoneInfo`` opens any file of the system's zone directory: ``localtime`` (this
    machine's own zone: another worker's may differ), ``right/…`` (clocks counting leap
    seconds, 27 s off) and ``posix/…`` were stored, and a worker whose zone data is the
    ``tzdata`` package has none of them: every campaign run stopped at that customer
    (ZoneInfoNotFoundError)."""
    reply = put(app, {"source": "account", "time_zone": zone})
    assert reply.status == 422, reply.text
    assert reply.json()["detail"][0]["loc"] == ["body", "time_zone"]
    assert person(engine_of(app)) is None
    assert put(app, {"source": "account", "time_zone": "Europe/Berlin"}).status == 200


def test_orders_dated_past_the_clock_skew_are_refused(app: FastAPI) -> None:
    soon = (NOW + timedelta(minutes=4)).isoformat()
    assert post(app, order("A1", ordered_at=soon)).status == 200
    for late in ((NOW + timedelta(minutes=6)).isoformat(), "2030-01-01T00:00:00+00:00"):
        reply = post(app, {"orders": [order("B1"), order("B2", ordered_at=late)]})
        assert reply.status == 422, reply.text
        assert reply.json()["detail"] == [
            {
                "type": "value_error",
                "loc": ["body", "orders", 1, "ordered_at"],
                "msg": "lies in the future",
            }
        ]
    assert {row[0] for row in lines(engine_of(app))} == {"A1"}


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_body_that_is_not_json_by_its_media_type_is_415(
    app: FastAPI, content_type: str | None, method: str
) -> None:
    headers = bearer("shop") | ({"content-type": content_type} if content_type else {})
    path = EVENTS if method == "POST" else "/v1/customers/c1"
    body = json.dumps(order() if method == "POST" else {"source": "x"}).encode()
    reply = call(app, method, path, content=body, headers=headers)
    assert reply.status == 415, reply.text
    assert "application/json" in reply.json()["detail"]
    assert lines(engine_of(app)) == [] and person(engine_of(app)) is None


def test_json_media_types_with_parameters_are_json(app: FastAPI) -> None:
    headers = bearer("shop") | {"content-type": "application/json; charset=utf-8"}
    reply = call(app, "POST", EVENTS, content=json.dumps(order()).encode(), headers=headers)
    assert reply.status == 200, reply.text


def test_a_number_too_long_for_python_is_named(app: FastAPI) -> None:
    body = json.dumps(one_line()).replace('"quantity": 1', '"quantity": ' + "9" * 5000)
    reply = post(app, body)
    assert reply.status == 400
    assert "number too long" in reply.json()["detail"]
    assert "4300 digits" in reply.json()["detail"]


def test_a_key_named_twice_in_one_object_is_a_400_and_stores_nothing(app: FastAPI) -> None:
    """``json.loads`` keeps the last of two keys: an order posted with its ``lines`` twice
    (a client that appends rather than replaces) lost its first lines without a word."""
    first = json.dumps(order()["lines"][:1])
    body = json.dumps(order()).replace('"lines": ', f'"lines": {first}, "lines": ', 1)
    reply = post(app, body)
    assert reply.status == 400, reply.text
    assert reply.json() == {"detail": "the body's JSON has the key 'lines' twice in one object"}
    nested = json.dumps(order()).replace('"quantity": 2', '"quantity": 2, "quantity": 5', 1)
    assert post(app, nested).status == 400
    again = call(
        app,
        "PUT",
        "/v1/customers/c1",
        content=b'{"source": "x", "email": "a@example.test", "email": "b@example.test"}',
        headers=bearer("shop") | {"content-type": "application/json"},
    )
    assert again.status == 400 and "'email' twice" in again.json()["detail"]
    assert lines(engine_of(app)) == [] and person(engine_of(app)) is None


def test_declared_and_chunked_bodies_over_the_limit_get_the_same_json_413(
    engine: sa.Engine, tmp_path: Path
) -> None:
    app = make_app(engine, tmp_path, max_body_bytes=2048)
    body = json.dumps({"orders": [order(f"O{n}") for n in range(40)]}).encode()
    headers = bearer("shop") | {"content-type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 500):
            yield body[start : start + 500]

    declared = call(app, "POST", EVENTS, content=body, headers=headers)
    chunked = call(app, "POST", EVENTS, content=chunks(), headers=headers)
    for reply in (declared, chunked):
        assert reply.status == 413
        assert reply.headers["content-type"] == "application/json"
        assert reply.json() == {
            "detail": "the body is larger than [api] max_body_bytes (2048 bytes)"
        }
    assert lines(engine) == []
