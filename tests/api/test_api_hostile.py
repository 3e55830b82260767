"""Hostile input through the real app on SQLite and PostgreSQL: 422 bodies and logs never
carry the address sent, forms and webhooks with odd fields get a 4xx (or a rejected event),
never a 500, and the pages behind signed links carry the headers that keep personal data out
of caches, referrers and frames."""

from __future__ import annotations

import base64
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import BaseModel, Field

from recocamp import tokens
from recocamp.api.app import create_app
from recocamp.clock import FixedClock
from recocamp.store.schema import audit_log, contact_events, customers, suppressions
from tests.api_shop import NOW, SIGNING_KEY, Reply, bearer, call, settings_for

ADDRESS = "anna.hostile@example.test"
CUSTOMER = "90001"
PRIVATE = ec.generate_private_key(ec.SECP256R1())
PUBLIC = base64.b64encode(
    PRIVATE.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
).decode()


@pytest.fixture
def app(engine: sa.Engine, tmp_path: Path) -> FastAPI:
    """The API on an empty store with one customer (created through the API itself)."""
    settings = settings_for(tmp_path / "models")
    esp = settings.esp.model_copy(update={"webhook_public_key": PUBLIC})
    app = create_app(settings.model_copy(update={"esp": esp}), engine, FixedClock(NOW))
    created = call(
        app,
        "PUT",
        f"/v1/customers/{CUSTOMER}",
        headers=bearer("shop"),
        json={"source": "test", "email": ADDRESS, "first_name": "Anna"},
    )
    assert created.status == 200, created.text
    return app


def snapshot(app: FastAPI) -> tuple[Any, ...]:
    """Everything a refused request must leave as it was."""
    engine: sa.Engine = app.state.service.engine
    with engine.connect() as connection:
        return tuple(
            tuple(
                tuple(row)
                for row in connection.execute(sa.select(table).order_by(*table.primary_key.columns))
            )
            for table in (customers, audit_log, contact_events, suppressions)
        )


def no_address(reply: Reply, caplog: pytest.LogCaptureFixture, *addresses: str) -> None:
    for address in (ADDRESS, *addresses):
        assert address not in reply.text
        assert all(address not in r.getMessage() for r in caplog.records)
        assert all(address not in str(r.args) for r in caplog.records)


# -- 422 bodies name the field, never the value ----------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/customers/M%FCller"),  # Latin-1, not UTF-8
        ("PUT", "/v1/customers/M%F6ller"),
        ("GET", "/v1/customers/M%FCller/next-best-offer"),
        ("GET", "/v1/customers/M%FCller/forecast"),
        ("GET", "/v1/items/%ED%A0%80/similar"),  # a lone surrogate's bytes
        ("DELETE", "/v1/privacy/customers/M%FCller"),
    ],
)
def test_an_id_that_is_not_utf_8_in_the_path_is_refused(
    app: FastAPI, method: str, path: str
) -> None:
    """The server decodes a path's percent-escapes with replacement characters, so a shop
    sending its ids in Latin-1 (``M%FCller``) created the customer ``M\ufffdller``, and
    ``Möller`` was the same customer: a 400, nothing stored."""
    before = snapshot(app)
    key = "dpo" if method == "DELETE" else "shop"
    body = {"source": "crm"} if method == "PUT" else None
    reply = call(app, method, path, headers=bearer(key), json=body)
    assert reply.status == 400, reply.text
    assert reply.json() == {
        "detail": "the path is not UTF-8 once its %-escapes are decoded: "
        "percent-encode the UTF-8 bytes of ids"
    }
    assert snapshot(app) == before


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"email": ["a@b.c"], "source": "t"}, ["body", "email"]),  # the case
        ({"email": {"to": "a@b.c"}, "source": "t"}, ["body", "email"]),
        ({"email": "a@b.c\x00", "source": "t"}, ["body", "email"]),  # pattern: echoed the value
        ({"email": "a@b.c" + "x" * 320, "source": "t"}, ["body", "email"]),
        ({"email": "a@b.c"}, ["body", "source"]),  # missing: pydantic's input is the whole body
        ({"email": "a@b.c", "source": "t", "surprise": "a@b.c"}, ["body", "surprise"]),
        ({"email": "a@b.c", "source": "t", "birthday": "a@b.c"}, ["body", "birthday"]),
        ({"source": "t", "a@b.c": 1}, ["body", "<address>"]),  # an unknown key is the loc
    ],
)
def test_422_names_the_field_and_never_echoes_the_address(
    app: FastAPI, caplog: pytest.LogCaptureFixture, body: dict[str, Any], loc: list[str]
) -> None:
    before = snapshot(app)
    with caplog.at_level(logging.DEBUG):
        reply = call(app, "PUT", f"/v1/customers/{CUSTOMER}", json=body, headers=bearer("shop"))
    assert reply.status == 422, reply.text
    detail = reply.json()["detail"]
    assert loc in [d["loc"] for d in detail]
    assert all(set(d) == {"type", "loc", "msg"} for d in detail)
    assert "@" not in reply.text
    no_address(reply, caplog, "a@b.c")
    assert snapshot(app) == before


def test_a_pydantic_error_raised_in_a_handler_is_a_422_without_the_value(app: FastAPI) -> None:
    class Contact(BaseModel):
        email: Annotated[str, Field(max_length=5)]

    def reads_a_body_itself() -> None:
        Contact.model_validate({"email": ADDRESS})

    app.add_api_route("/v1/test-only", reads_a_body_itself, methods=["POST"])
    reply = call(app, "POST", "/v1/test-only")
    assert reply.status == 422 and reply.json()["detail"][0]["loc"] == ["email"]
    assert "@" not in reply.text


def test_a_query_parameter_is_not_echoed_either(app: FastAPI) -> None:
    reply = call(
        app, "GET", f"/v1/customers/{CUSTOMER}/next-best-offer?n=a@b.c", headers=bearer("shop")
    )
    assert reply.status == 422 and reply.json()["detail"][0]["loc"] == ["query", "n"]
    assert "@" not in reply.text


# -- the preferences form -------------------------------------------------------------------


def link(kind: str = "p", purpose: str = "preferences", customer: str = CUSTOMER) -> str:
    token = tokens.sign(SIGNING_KEY.encode(), customer, "winback", purpose, NOW - timedelta(days=1))
    return f"/{kind}/{token}"


FORM = {"content-type": "application/x-www-form-urlencoded"}


BAD_FORMS = [
    b"action=pause&weeks=%C2%B2",  # '²': str.isdigit() but not int() (the case)
    "action=pause&weeks=²".encode(),
    "action=pause&weeks=٤".encode(),  # ARABIC-INDIC DIGIT FOUR: int() reads 4
    b"action=pause&weeks=4.0",
    b"action=pause&weeks=-4",
    b"action=pause&weeks=%2B4",
    b"action=pause&weeks=" + b"9" * 5000,
    b"action=pause",
    b"action=save&frequency=hourly",
    b"action=save&frequency=%00",
    b"action=pause&weeks=4&" + b"&".join(b"f%d=1" % i for i in range(30)),  # too many fields
    b"action=pause&weeks=%FF",  # not UTF-8
    b"action=pause\xff&weeks=4",
    b"action=%00pause&weeks=4",
    b"act%00ion=pause&weeks=4",
    b"action=" + b"x" * 5000,
    b"action=launch",
    b"",
    b"%",
    b"&&&==",
]


def test_bad_preference_forms_get_a_400_page_and_change_nothing(app: FastAPI) -> None:
    before = snapshot(app)
    for body in BAD_FORMS:
        reply = call(app, "POST", link(), content=body, headers=FORM)
        assert reply.status == 400, body
        assert reply.headers["content-type"].startswith("text/html") and "<html" in reply.text
    assert snapshot(app) == before


def test_the_pause_form_still_works(app: FastAPI) -> None:
    reply = call(app, "POST", link(), content=b"action=pause&weeks=4", headers=FORM)
    assert reply.status == 303
    engine: sa.Engine = app.state.service.engine
    with engine.connect() as connection:
        until = connection.execute(sa.select(customers.c.paused_until)).scalar_one()
    assert until is not None and until.replace(tzinfo=NOW.tzinfo) == NOW + timedelta(weeks=4)


def test_bad_feedback_forms_get_a_400_page(app: FastAPI) -> None:
    for body in (
        b"token=x&score=%FF",
        b"token=%00&score=5",
        b"&".join(b"f%d=1" % i for i in range(30)),
    ):
        reply = call(app, "POST", "/v1/feedback", content=body, headers=FORM)
        assert reply.status == 400 and reply.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("a@b.c", "&lt;address&gt;: is longer than 4000 characters"),
        ("x\n2026-01-01 INFO recocamp: forged", "a field name is too long or holds a control"),
    ],
)
def test_a_form_field_is_named_in_errors_without_an_address_or_a_line_break(
    engine: sa.Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str, said: str
) -> None:
    """A form's error names the field at fault, whose name the sender chose: an address
    there reached the feedback page's English error text and the preferences page's log, and
    a line break in it wrote a log line of the sender's making."""
    settings = settings_for(tmp_path / "models")
    english = settings.model_copy(
        update={"shop": settings.shop.model_copy(update={"default_locale": "en"})}
    )
    app = create_app(english, engine, FixedClock(NOW))
    created = call(
        app, "PUT", f"/v1/customers/{CUSTOMER}", headers=bearer("shop"), json={"source": "t"}
    )
    assert created.status == 200
    body = urlencode({"action": "pause", "weeks": "4", name: "x" * 4001}).encode()
    with caplog.at_level(logging.DEBUG):
        page = call(app, "POST", link(), content=body, headers=FORM)
        answer = call(app, "POST", "/v1/feedback", content=body, headers=FORM)
    assert page.status == 400 and answer.status == 400
    assert said in answer.text  # the problem is still said
    no_address(answer, caplog, "a@b.c")
    no_address(page, caplog, "a@b.c")
    assert "forged" not in answer.text
    assert all("\n" not in r.getMessage() for r in caplog.records), caplog.records


def test_feedback_json_nested_past_the_parsers_stack_is_a_400(app: FastAPI) -> None:
    """5,000 levels fit the 16 KB cap and exceed the JSON parser's recursion limit."""
    before = snapshot(app)
    for body in (b"[" * 5_000 + b"]" * 5_000, b'{"token": ' + b"[" * 8_000):
        reply = call(
            app, "POST", "/v1/feedback", content=body, headers={"content-type": "application/json"}
        )
        assert reply.status == 400, (reply.status, reply.text[:200])
    assert snapshot(app) == before


# -- webhooks with odd fields -----------------------------------------------------------------


def hook(app: FastAPI, provider: str, payload: bytes) -> Reply:
    if provider == "sendgrid":
        stamp = str(int(NOW.timestamp()))
        signature = PRIVATE.sign(stamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
        headers = {
            "x-twilio-email-event-webhook-signature": base64.b64encode(signature).decode(),
            "x-twilio-email-event-webhook-timestamp": stamp,
        }
    else:
        headers = {"authorization": "Bearer hook-secret"}
    return call(
        app,
        "POST",
        f"/v1/webhooks/{provider}",
        content=payload,
        headers={"content-type": "application/json", **headers},
    )


ODD_EVENTS = [  # (provider, event, the field named in the answer)
    ("postmark", {"RecordType": "Delivery", "ID": 5, "Metadata": "x"}, "Metadata"),
    ("postmark", {"RecordType": "Bounce", "Email": [ADDRESS], "Type": "HardBounce"}, "Email"),
    ("postmark", {"RecordType": "Bounce", "Email": ADDRESS, "BouncedAt": 1e20}, "BouncedAt"),
    (
        "postmark",
        {"RecordType": "Bounce", "Email": ADDRESS, "BouncedAt": "0001-01-01T00:00:00+05:00"},
        "BouncedAt",
    ),
    ("postmark", {"RecordType": "Bounce", "Email": ADDRESS, "BouncedAt": "yesterday"}, "BouncedAt"),
    ("postmark", {"RecordType": "Bounce", "Email": ADDRESS, "MessageID": "m\x00"}, "MessageID"),
    ("postmark", {"RecordType": "Delivery", "Recipient": ADDRESS, "Inactive": {}}, "Inactive"),
    ("postmark", {"RecordType": "SpamComplaint", "Email": ADDRESS, "ID": -1}, "ID"),
    (
        "postmark",
        {"RecordType": "Delivery", "Metadata": {"send_key": "k" * 201}},
        "Metadata.send_key",
    ),
    ("sendgrid", {"event": "bounce", "email": ADDRESS, "timestamp": 1e20}, "timestamp"),
    ("sendgrid", {"event": "bounce", "email": ADDRESS, "timestamp": True}, "timestamp"),
    ("sendgrid", {"event": "delivered", "email": 7, "timestamp": 1}, "email"),
    # (a reason we only store is kept as its JSON text: it must not drop the event)
    ("sendgrid", {"event": "dropped", "email": ADDRESS, "sg_message_id": ["x"]}, "sg_message_id"),
    ("brevo", {"event": "hard_bounce", "email": ADDRESS, "ts_event": -1e20}, "ts_event"),
    ("brevo", {"event": "spam", "email": ADDRESS, "id": 1.5}, "id"),
    ("brevo", {"event": "delivered", "message-id": {"$ne": None}}, "message-id"),
]


def test_an_event_with_a_wrong_field_is_rejected_by_name_and_stores_nothing(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    before = snapshot(app)
    for provider, event, field in ODD_EVENTS:
        with caplog.at_level(logging.DEBUG):
            reply = hook(app, provider, json.dumps(event).encode())
        assert reply.status == 200, (event, reply.text)
        answer = reply.json()
        assert (answer["accepted"], answer["duplicates"]) == (0, 0), event
        assert [r.split(":")[0] for r in answer["rejected"]] == [f"[0].{field}"], event
        no_address(reply, caplog)
    assert snapshot(app) == before


def test_the_good_events_of_a_batch_are_applied_and_the_bad_one_named(app: FastAPI) -> None:
    good = {
        "event": "bounce",
        "type": "bounce",
        "email": ADDRESS,
        "sg_event_id": "e1",
        "timestamp": int(NOW.timestamp()) - 60,
    }
    bad = {
        "event": "bounce",
        "email": "b@example.test",
        "timestamp": "1e20",
        "sg_message_id": ["two problems", "one event"],
    }
    rejected_before = (
        REGISTRY.get_sample_value(
            "recocamp_webhook_events_total", {"provider": "sendgrid", "outcome": "rejected"}
        )
        or 0
    )
    reply = hook(app, "sendgrid", json.dumps([bad, 3, good]).encode())
    assert reply.status == 200, reply.text
    assert reply.json()["accepted"] == 1
    assert [r.split(":")[0] for r in reply.json()["rejected"]] == [
        "[0].sg_message_id",
        "[0].timestamp",
        "[1]",
    ]
    sample = REGISTRY.get_sample_value
    labels = {"provider": "sendgrid", "outcome": "rejected"}
    assert sample("recocamp_webhook_events_total", labels) == rejected_before + 2
    engine: sa.Engine = app.state.service.engine
    with engine.connect() as connection:
        kinds = connection.execute(sa.select(contact_events.c.kind)).scalars().all()
    assert kinds == ["bounced"]


def test_json_extensions_nan_and_infinity_are_rejected_events(app: FastAPI) -> None:
    for number in (b"NaN", b"Infinity", b"-Infinity"):
        reply = hook(app, "brevo", b'{"event": "delivered", "ts_event": %s}' % number)
        assert reply.status == 200 and reply.json()["rejected"][0].startswith("[0].ts_event")


def test_bodies_that_are_no_events_are_400(app: FastAPI) -> None:
    before = snapshot(app)
    for payload in (b"[" * 100_000 + b"]" * 100_000, b"17", b'"text"', b"null", b"\xff", b"{"):
        for provider in ("postmark", "sendgrid", "brevo"):
            assert hook(app, provider, payload).status == 400, (provider, payload[:10])
    assert snapshot(app) == before


# -- headers of the pages behind signed links ------------------------------------------------


PRIVATE_HEADERS = {
    "cache-control": "no-store",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
}


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", link(), None, 200),
        ("GET", link() + "/data.json", None, 200),
        ("POST", link(), b"action=pause&weeks=4", 303),
        ("POST", link(), b"action=pause&weeks=3", 400),
        ("GET", link("u", "unsubscribe"), None, 200),
        ("POST", link("u", "unsubscribe"), b"List-Unsubscribe=One-Click", 200),
        ("GET", link(purpose="unsubscribe"), None, 400),  # a link for another purpose
        ("GET", link(customer="nobody") + "/data.json", None, 404),
        ("GET", link() + "/elsewhere", None, 404),
        ("GET", "/v1/feedback?token=x&score=5", None, 400),
    ],
)
def test_pages_with_personal_data_are_not_cached_framed_or_referred(
    app: FastAPI, method: str, path: str, body: bytes | None, status: int
) -> None:
    reply = call(app, method, path, content=body, headers=FORM)
    assert reply.status == status, reply.text
    for name, value in PRIVATE_HEADERS.items():
        assert reply.headers.get(name) == value, name
    policy = [p.strip() for p in reply.headers["content-security-policy"].split(";")]
    assert "frame-ancestors 'none'" in policy


def test_a_page_keeps_its_own_policy_and_gains_frame_ancestors(app: FastAPI) -> None:
    token = tokens.sign(SIGNING_KEY.encode(), CUSTOMER, "nps", "feedback", NOW, survey="nps")
    reply = call(app, "GET", f"/v1/feedback?token={token}&score=9")
    policy = [p.strip() for p in reply.headers["content-security-policy"].split(";")]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy


def test_api_answers_are_left_alone(app: FastAPI) -> None:
    reply = call(app, "GET", "/healthz")
    assert "x-frame-options" not in reply.headers and "cache-control" not in reply.headers
