"""The HTTP face on real stores: unsubscribe links and ESP webhooks, and what they change."""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from fastapi import FastAPI

from recocamp import privacy, tokens
from recocamp.api.app import app_from_environment, create_app
from recocamp.campaigns.files import load_all
from recocamp.campaigns.planner import Outcome, context_for, decide
from recocamp.campaigns.run import load_snapshot
from recocamp.clock import FixedClock
from recocamp.data import profiles
from recocamp.delivery.esp.fake_server import postmark_event, running
from recocamp.domain import ConsentBasis, Customer, OutgoingEmail, email_hash
from recocamp.logs import EmailRedactor
from recocamp.settings import EspSettings, Settings
from recocamp.store import outbox
from recocamp.store.engine import make_engine
from recocamp.store.queries import upsert_customers
from recocamp.store.schema import audit_log, contact_events, customers, suppressions
from recocamp.store.schema import outbox as outbox_table
from tests.api_shop import ENTRIES, Reply, bearer, call
from tests.conftest import NOW, ROOT, impatient, sessions_on

SIGNING_KEY = "k" * 32
SECRET = "hook-secret"
SETTINGS = Settings(signing_key=SIGNING_KEY, webhook_secret=SECRET)
CUSTOMER = "c1"
ADDRESS = "Anna@Example.test"
SEND_KEY = "winback/c1/2026-01-13"
MESSAGE_ID = "0d3c2a4e-5b6f-4a1b-9c8d-7e6f5a4b3c2d"
RECORD: dict[str, Any] = {
    "MessageID": MESSAGE_ID,
    "To": ADDRESS,
    "Metadata": {"send_key": SEND_KEY},
}


def make_app(engine: sa.Engine, settings: Settings = SETTINGS) -> FastAPI:
    return create_app(settings, engine, FixedClock(NOW))


@pytest.fixture
def store(engine: sa.Engine) -> sa.Engine:
    """One customer with consent and one e-mail the provider accepted two days ago."""
    sent_at = NOW - timedelta(days=2)
    person = Customer(
        CUSTOMER,
        ADDRESS,
        "Anna",
        consent_basis=ConsentBasis.DOUBLE_OPT_IN,
        consent_at=NOW - timedelta(days=400),
    )
    mail = OutgoingEmail(SEND_KEY, ADDRESS, "We miss you", "<p>hi</p>", "hi", campaign="winback")
    with engine.begin() as connection:
        upsert_customers(connection, [person], sent_at)
        assert outbox.enqueue(connection, [(mail, CUSTOMER, None, sent_at)], sent_at) == 1
        row_id = connection.execute(sa.select(outbox_table.c.id)).scalar_one()
        outbox.mark_sent(connection, {row_id: MESSAGE_ID}, sent_at)
    return engine


def token(purpose: str = "unsubscribe", key: str = SIGNING_KEY) -> str:
    issued = NOW - timedelta(days=2)
    return tokens.sign(key.encode(), CUSTOMER, "winback", purpose, issued)


@dataclass(frozen=True)
class State:
    unsubscribed_at: Any
    suppressed: dict[str, str]  # email hash → reason
    events: list[tuple[str, str, str | None]]  # kind, provider, customer
    audits: list[tuple[str, str | None]]  # action, subject
    outbox: str


def state(engine: sa.Engine) -> State:
    with engine.connect() as connection:
        unsubscribed = connection.execute(
            sa.select(customers.c.unsubscribed_at).where(customers.c.id == CUSTOMER)
        ).scalar_one()
        suppressed = {r.email_hash: r.reason for r in connection.execute(sa.select(suppressions))}
        events = [
            (r.kind, r.provider, r.customer_id)
            for r in connection.execute(sa.select(contact_events).order_by(contact_events.c.id))
        ]
        audits = [(r.action, r.subject_id) for r in connection.execute(sa.select(audit_log))]
        row = connection.execute(sa.select(outbox_table.c.state)).scalar_one()
    return State(unsubscribed, suppressed, events, audits, row)


UNTOUCHED = State(None, {}, [], [], "sent")


# -- health ---------------------------------------------------------------------------------


def test_health(engine: sa.Engine) -> None:
    reply = call(make_app(engine), "GET", "/health")
    assert (reply.status, reply.json()) == (200, {"status": "ok"})


def test_a_serve_worker_freezes_its_start_up_heap_and_a_test_app_does_not(
    engine: sa.Engine,
) -> None:
    """A serve worker's imports, live model and catalogue leave the collector's full passes
    once loaded (``settle_heap``); an app built for a test leaves the test's collector alone."""

    async def start(app: FastAPI) -> int:
        async with app.router.lifespan_context(app):
            return gc.get_freeze_count()

    threshold = gc.get_threshold()
    gc.unfreeze()
    try:
        assert asyncio.run(start(make_app(engine))) == 0
        assert gc.get_threshold() == threshold
        app = create_app(SETTINGS, engine, FixedClock(NOW), settle=True)
        assert asyncio.run(start(app)) > 0
        assert gc.get_threshold()[0] > threshold[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_a_serve_worker_closes_its_database_connections_when_it_stops(
    engine: sa.Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``recocamp serve``'s app makes its engine (``app_from_environment``), so it closes
    the engine's connections when it stops; it closed its change listener's alone, and the
    pooled ones were left to the garbage collector (psycopg: "connection deleted while
    still open") or to the process's end, which the server sees as a client gone without a
    word."""
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", db_url)
    monkeypatch.chdir(tmp_path)
    threshold = gc.get_threshold()

    async def serve_one_request() -> Any:
        app = app_from_environment()
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
                assert (await client.get("/health")).status_code == 200
        return app.state.service.engine

    try:
        served: sa.Engine = asyncio.run(serve_one_request())
    finally:
        gc.unfreeze()  # a serve worker's settling of its heap (see the test above)
        gc.set_threshold(*threshold)
    pool = served.pool
    assert served is not engine and isinstance(pool, sa.pool.QueuePool)
    assert pool.checkedin() == 0  # nothing left open in it
    if engine.dialect.name == "postgresql":  # the server's view: no session of its left
        engine.dispose()
        assert sessions_on(engine, engine.url.database or "") == []


def test_liveness_readiness_docs_and_metrics(engine: sa.Engine) -> None:
    app = make_app(engine)
    assert call(app, "GET", "/healthz").json() == {"status": "ok"}
    assert call(app, "GET", "/readyz").json() == {
        "status": "ready",
        "model_version": None,
        "detail": None,
    }
    assert call(app, "GET", "/docs").status == 200
    schema = call(app, "GET", "/openapi.json").json()
    assert "/v1/customers/{customer_id}/next-best-offer" in schema["paths"]
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    call(app, "GET", f"/u/{token()}")
    metrics = call(app, "GET", "/metrics").text
    assert 'route="/u/{token}"' in metrics and 'route="/readyz",status="200"' in metrics
    assert token() not in metrics and CUSTOMER not in metrics  # templates, never raw paths


def test_not_ready_on_a_database_without_the_schema(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    reply = call(make_app(engine), "GET", "/readyz")
    assert reply.status == 503 and "recocamp db upgrade" in reply.json()["detail"]
    engine.dispose()


def test_not_ready_on_a_server_out_of_reach_names_neither_its_address_nor_its_user(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # nothing listens on the discard port: the driver's refusal names host, port and user
    url = "postgresql+psycopg://shop_owner:hunter2@127.0.0.1:9/shopdb?connect_timeout=5"
    engine = make_engine(url)
    with caplog.at_level("WARNING", logger="recocamp.api.app"):
        reply = call(make_app(engine), "GET", "/readyz")
    assert reply.status == 503
    assert reply.json()["detail"] == "the database does not answer: the server's log says more"
    assert "the database does not answer (OperationalError)" in caplog.text
    for secret in ("127.0.0.1", "port 9", "shop_owner", "hunter2", "shopdb"):
        assert secret not in reply.text and secret not in caplog.text
    engine.dispose()


def test_cors_is_off_unless_origins_are_listed(engine: sa.Engine) -> None:
    asked = {"origin": "https://shop.example", "access-control-request-method": "GET"}
    closed = call(make_app(engine), "OPTIONS", "/healthz", headers=asked)
    assert "access-control-allow-origin" not in closed.headers
    settings = SETTINGS.model_copy(
        update={"api": SETTINGS.api.model_copy(update={"cors_origins": ("https://shop.example",)})}
    )
    opened = call(make_app(engine, settings), "OPTIONS", "/healthz", headers=asked)
    assert opened.headers["access-control-allow-origin"] == "https://shop.example"
    other = call(
        make_app(engine, settings),
        "OPTIONS",
        "/healthz",
        headers={**asked, "origin": "https://evil.example"},
    )
    assert "access-control-allow-origin" not in other.headers


def test_the_new_webhook_path_and_the_old_one_are_the_same(store: sa.Engine) -> None:
    payload = json.dumps(postmark_event("delivery", RECORD, NOW)).encode()
    for path in ("/v1/webhooks/postmark", "/webhooks/postmark"):
        reply = call(make_app(store), "POST", path, content=payload, headers=basic(SECRET))
        assert reply.status == 200
    assert state(store).events == [("delivered", "postmark", CUSTOMER)]  # the second: duplicate


# -- unsubscribe links ----------------------------------------------------------------------


def test_get_shows_a_form_and_changes_nothing(store: sa.Engine) -> None:
    reply = call(make_app(store), "GET", f"/u/{token()}")
    assert reply.status == 200
    assert '<form method="post">' in reply.text and "<button" in reply.text
    assert ADDRESS.lower() not in reply.text.lower()  # pages carry no address
    assert state(store) == UNTOUCHED


def test_one_click_post_unsubscribes_once(store: sa.Engine) -> None:
    app, link = make_app(store), f"/u/{token()}"
    form = {
        "content": b"List-Unsubscribe=One-Click",
        "headers": {"content-type": "application/x-www-form-urlencoded"},
    }
    reply = call(app, "POST", link, **form)
    assert reply.status == 200
    assert "Unsubscribed" in reply.text
    after = state(store)
    assert after.unsubscribed_at == NOW
    assert after.suppressed == {email_hash(ADDRESS): "unsubscribed"}
    assert after.events == [("unsubscribed", "link", CUSTOMER)]
    assert after.audits == [("unsubscribe", CUSTOMER)]

    again = call(app, "POST", link, **form)
    assert again.status == 200
    assert state(store) == after  # one event, one audit entry, first instant kept


def test_each_unsubscribe_is_an_event_of_its_own_and_a_repeat_is_none(store: sa.Engine) -> None:
    """The unsubscribe link and the preferences page's button of one e-mail had one event
    key: once the customer re-subscribed and unsubscribed again, the second unsubscribe was
    dropped as a duplicate of the first (the audit log had it, the contact events did not).
    A repeat while the customer stays unsubscribed — the mail client retrying the one-click
    POST, the other link of the same e-mail — is still none."""
    clock = FixedClock(NOW)
    settings = Settings(signing_key=SIGNING_KEY, webhook_secret=SECRET, api_keys=ENTRIES)
    app = create_app(settings, store, clock)
    one_click = {
        "content": b"List-Unsubscribe=One-Click",
        "headers": {"content-type": "application/x-www-form-urlencoded"},
    }
    link, page = f"/u/{token()}", f"/p/{token('preferences')}"

    def unsubscribe_twice_and_retry() -> State:
        assert call(app, "POST", page, data={"action": "unsubscribe"}).status == 303
        assert call(app, "POST", link, **one_click).status == 200
        assert call(app, "POST", link, **one_click).status == 200
        return state(store)

    first = unsubscribe_twice_and_retry()
    assert first.events == [("unsubscribed", "link", CUSTOMER)]
    assert first.audits == [("unsubscribe", CUSTOMER)]
    clock.advance(timedelta(days=1))
    back = {
        "source": "account page",
        "unsubscribed": False,
        "consent_basis": "double_opt_in",
        "consent_at": clock.now().isoformat(),
    }
    put = call(app, "PUT", f"/v1/customers/{CUSTOMER}", json=back, headers=bearer("shop"))
    assert put.status == 200 and "resubscribed" in put.json()["changed"], put.text
    clock.advance(timedelta(days=1))
    second = unsubscribe_twice_and_retry()
    assert second.unsubscribed_at == NOW + timedelta(days=2)
    assert second.events == [("unsubscribed", "link", CUSTOMER)] * 2
    assert [entry for entry in second.audits if entry[0] == "unsubscribe"] == [
        ("unsubscribe", CUSTOMER)
    ] * 2
    with store.connect() as connection:
        times = connection.execute(sa.select(contact_events.c.at).order_by(contact_events.c.id))
        assert list(times.scalars()) == [NOW, NOW + timedelta(days=2)]


def test_confirm_button_post_without_body_unsubscribes(store: sa.Engine) -> None:
    assert call(make_app(store), "POST", f"/u/{token()}").status == 200
    assert state(store).unsubscribed_at == NOW


def tamper(value: str) -> str:
    """Change a character in the middle of the token (the last one may be spare bits)."""
    at = len(value) // 2
    return f"{value[:at]}{'B' if value[at] == 'A' else 'A'}{value[at + 1 :]}"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(lambda: tamper(token()), id="tampered-signature"),
        pytest.param(lambda: token(purpose="preferences"), id="other-purpose"),
        pytest.param(lambda: token(key="another key"), id="other-key"),
        pytest.param(lambda: "garbage", id="garbage"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_invalid_link_is_400_and_changes_nothing(
    store: sa.Engine, bad: Callable[[], str], method: str
) -> None:
    reply = call(make_app(store), method, f"/u/{bad()}")
    assert reply.status == 400
    assert state(store) == UNTOUCHED


def test_expired_link_is_400(store: sa.Engine) -> None:
    """A preferences link expires; an unsubscribe link does not (test_links)."""
    old = tokens.sign(
        SIGNING_KEY.encode(), CUSTOMER, "winback", "preferences", NOW - timedelta(days=401)
    )
    form = {"action": "unsubscribe"}
    assert call(make_app(store), "POST", f"/p/{old}", data=form).status == 400
    assert state(store) == UNTOUCHED


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_links_are_off_without_signing_key(store: sa.Engine, method: str) -> None:
    app = make_app(store, Settings(webhook_secret=SECRET))
    assert call(app, method, f"/u/{token()}").status == 503
    assert state(store) == UNTOUCHED


# -- webhooks -------------------------------------------------------------------------------


def basic(password: str, user: str = "postmark") -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def post_hook(
    engine: sa.Engine, kind: str, headers: Mapping[str, str], provider: str = "postmark"
) -> Reply:
    payload = json.dumps(postmark_event(kind, RECORD, NOW - timedelta(hours=1))).encode()
    return call(
        make_app(engine),
        "POST",
        f"/webhooks/{provider}",
        content=payload,
        headers={"content-type": "application/json", **headers},
    )


def test_postmark_bounce_suppresses_and_marks_the_outbox(store: sa.Engine) -> None:
    reply = post_hook(store, "bounce", basic(SECRET))
    assert (reply.status, reply.json()) == (200, {"accepted": 1, "duplicates": 0})
    after = state(store)
    assert after.suppressed == {email_hash(ADDRESS): "bounced"}
    assert after.outbox == "bounced"
    assert after.events == [("bounced", "postmark", CUSTOMER)]
    assert after.unsubscribed_at is None  # a bounce is not an opt-out


@pytest.mark.parametrize("kind", ["bounce", "complaint", "delivery", "unsubscribe"])
def test_retried_webhook_is_a_harmless_duplicate(store: sa.Engine, kind: str) -> None:
    first = post_hook(store, kind, basic(SECRET))
    assert (first.status, first.json()) == (200, {"accepted": 1, "duplicates": 0})
    after = state(store)
    again = post_hook(store, kind, basic(SECRET))
    assert (again.status, again.json()) == (200, {"accepted": 0, "duplicates": 1})
    assert state(store) == after


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param(basic("wrong"), 401, id="wrong-password"),
        pytest.param({"authorization": f"Bearer {SECRET}x"}, 401, id="wrong-bearer"),
        pytest.param({"authorization": SECRET}, 401, id="no-scheme"),
        pytest.param({}, 401, id="missing"),
    ],
)
def test_postmark_webhook_wrong_credentials_store_nothing(
    store: sa.Engine, headers: dict[str, str], status: int
) -> None:
    reply = post_hook(store, "bounce", headers)
    assert reply.status == status
    assert state(store) == UNTOUCHED


def test_bearer_secret_is_accepted(store: sa.Engine) -> None:
    reply = post_hook(store, "delivery", {"authorization": f"Bearer {SECRET}"}, provider="brevo")
    # a Postmark body posted to the Brevo endpoint has no Brevo event: authenticated, ignored
    assert (reply.status, reply.json()) == (200, {"accepted": 0, "duplicates": 0})


def test_webhooks_off_without_secret(store: sa.Engine) -> None:
    payload = json.dumps(postmark_event("bounce", RECORD, NOW)).encode()
    app = make_app(store, Settings(signing_key=SIGNING_KEY))
    reply = call(app, "POST", "/webhooks/postmark", content=payload, headers=basic(SECRET))
    assert reply.status == 503
    assert state(store) == UNTOUCHED


def test_webhook_for_provider_without_webhooks_is_404(store: sa.Engine) -> None:
    assert post_hook(store, "bounce", basic(SECRET), provider="mailpit").status == 404
    assert state(store) == UNTOUCHED


def test_webhook_body_not_json_is_400(store: sa.Engine) -> None:
    reply = call(
        make_app(store), "POST", "/webhooks/postmark", content=b"<xml/>", headers=basic(SECRET)
    )
    assert reply.status == 400
    assert state(store) == UNTOUCHED


def test_sendgrid_webhook_without_public_key_is_503(store: sa.Engine) -> None:
    reply = call(
        make_app(store), "POST", "/webhooks/sendgrid", content=b"[]", headers=basic(SECRET)
    )
    assert reply.status == 503


def test_signed_sendgrid_bounce_suppresses(store: sa.Engine) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    esp = EspSettings(provider="sendgrid", webhook_public_key=base64.b64encode(public).decode())
    app = make_app(store, Settings(esp=esp))
    event = {
        "event": "bounce",
        "type": "bounce",
        "email": ADDRESS,
        "send_key": SEND_KEY,
        "sg_event_id": "e1",
        "sg_message_id": f"{MESSAGE_ID}.filter0001",
        "timestamp": int(NOW.timestamp()) - 60,
    }
    payload = json.dumps([event]).encode()
    stamp = str(int(NOW.timestamp()))
    signature = private.sign(stamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    headers = {
        "x-twilio-email-event-webhook-signature": base64.b64encode(signature).decode(),
        "x-twilio-email-event-webhook-timestamp": stamp,
    }
    tampered = call(app, "POST", "/webhooks/sendgrid", content=payload + b" ", headers=headers)
    assert tampered.status == 401
    assert state(store) == UNTOUCHED
    reply = call(app, "POST", "/webhooks/sendgrid", content=payload, headers=headers)
    assert (reply.status, reply.json()) == (200, {"accepted": 1, "duplicates": 0})
    after = state(store)
    assert (after.outbox, after.suppressed) == ("bounced", {email_hash(ADDRESS): "bounced"})
    assert after.events == [("bounced", "sendgrid", CUSTOMER)]


def stored_details(engine: sa.Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(r.details) for r in connection.execute(sa.select(contact_events))]


def _post_postmark(store: sa.Engine, event: dict[str, Any]) -> Any:
    """One Postmark webhook event, posted as Postmark does (JSON, Basic auth)."""
    return call(
        make_app(store),
        "POST",
        "/v1/webhooks/postmark",
        content=json.dumps(event).encode(),
        headers={"content-type": "application/json", **basic(SECRET)},
    )


@pytest.mark.parametrize(
    "changes",
    [
        {"Description": "d" * 20_000},
        {"Type": "t" * 500, "Description": "d" * 20_000},
        {"Description": "a\x00b"},  # PostgreSQL text cannot hold NUL: replaced, not rejected
        {"Description": 550},
    ],
)
def test_a_bounce_with_long_stored_text_still_suppresses(
    store: sa.Engine, changes: dict[str, Any]
) -> None:
    reply = _post_postmark(
        store, postmark_event("bounce", RECORD, NOW - timedelta(hours=1)) | changes
    )
    assert (reply.status, reply.json()) == (200, {"accepted": 1, "duplicates": 0})
    assert state(store).suppressed == {email_hash(ADDRESS): "bounced"}
    [details] = stored_details(store)
    assert len(details["description"]) <= 1000 and len(details["type"]) <= 200
    assert "\x00" not in details["description"]
    if len(str(changes["Description"])) > 1000:
        assert details["description"].endswith(" [… truncated]")
        assert details["description"].startswith("d" * 900)


def test_a_bounce_text_with_a_lone_surrogate_is_stored_so_the_customer_can_be_exported(
    store: sa.Engine,
) -> None:
    """JSON may escape half a UTF-16 pair (``"\\ud800"``); Python reads it as a code point
    that no UTF-8 can hold. A bounce's Description so written was stored as it came (NUL
    was replaced, this was not), and every answer holding the customer's data was a 500
    from then on: the export (GDPR Art. 15) could not be encoded as UTF-8 ever again."""
    settings = Settings(signing_key=SIGNING_KEY, webhook_secret=SECRET, api_keys=ENTRIES)
    app = make_app(store, settings)
    event = postmark_event("bounce", RECORD, NOW - timedelta(hours=1))
    body = json.dumps(event | {"Description": "550 mailbox \ud800 unknown"}).encode()
    assert b"\\ud800" in body
    reply = call(
        app,
        "POST",
        "/v1/webhooks/postmark",
        content=body,
        headers={"content-type": "application/json", **basic(SECRET)},
    )
    assert (reply.status, reply.json()) == (200, {"accepted": 1, "duplicates": 0})
    assert state(store).suppressed == {email_hash(ADDRESS): "bounced"}
    exported = call(app, "GET", f"/v1/privacy/customers/{CUSTOMER}", headers=bearer("dpo"))
    assert exported.status == 200
    [stored] = exported.json()["tables"]["contact_events"]
    assert stored["details"]["description"] == "550 mailbox \ufffd unknown"


@pytest.mark.parametrize(
    ("reason", "kind", "opted_out"),
    [
        ("HardBounce", "bounced", False),  # a bounce is no opt-out
        ("SpamComplaint", "complained", True),
        ("ManualSuppression", "unsubscribed", True),
    ],
)
def test_a_postmark_subscription_change_is_what_its_suppression_reason_says(
    store: sa.Engine, reason: str, kind: str, opted_out: bool
) -> None:
    """Postmark posts a SubscriptionChange whenever an address joins the suppression list,
    also after a hard bounce or a complaint ("Subscription change webhook"): it was recorded
    as an unsubscribe, an opt-out (``unsubscribed_at``) for every hard bounce."""
    event = postmark_event("unsubscribe", RECORD, NOW - timedelta(hours=1))
    reply = _post_postmark(store, event | {"SuppressionReason": reason})
    assert (reply.status, reply.json()) == (200, {"accepted": 1, "duplicates": 0})
    after = state(store)
    assert after.suppressed == {email_hash(ADDRESS): kind}
    assert after.events == [(kind, "postmark", CUSTOMER)]
    assert (after.unsubscribed_at is not None) is opted_out


def test_two_manual_postmark_suppressions_at_one_moment_suppress_both_addresses(
    store: sa.Engine,
) -> None:
    """Postmark posts a SubscriptionChange with ``MessageID`` null for a suppression made
    through its API or UI (Origin ``Customer`` or ``Admin``: "Subscription change
    webhook"), and a bulk suppression puts many addresses on the list at once. Keyed by
    message id and time alone, the second address's event was the first's "duplicate":
    answered 200 and dropped, and that address was mailed again."""
    others = ["bert@example.test", "carla@example.test"]
    for address in others:
        event: dict[str, Any] = {
            "RecordType": "SubscriptionChange",
            "MessageID": None,
            "ServerID": 1,
            "MessageStream": "broadcast",
            "ChangedAt": "2026-01-15T10:53:34.416071Z",
            "Recipient": address,
            "Origin": "Customer",
            "SuppressSending": True,
            "SuppressionReason": "ManualSuppression",
            "Tag": None,
            "Metadata": {},
        }
        reply = _post_postmark(store, event)
        assert (reply.status, reply.json()) == (200, {"accepted": 1, "duplicates": 0})
    assert state(store).suppressed == {email_hash(a): "unsubscribed" for a in others}
    again = _post_postmark(store, event)  # Postmark's retry of the last one: still one event
    assert (again.status, again.json()) == (200, {"accepted": 0, "duplicates": 1})


def test_a_postmark_unsubscribe_request_by_mail_is_an_opt_out_a_re_subscription_lifts(
    store: sa.Engine,
) -> None:
    """Postmark's bounce type ``Unsubscribe`` is "Unsubscribe or Remove request": the
    recipient answered the mail asking to be taken off. It was recorded as a hard bounce:
    the address suppressed as "bounced", the customer still subscribed on their page with
    no audited unsubscribe, and their later re-subscription lifted nothing (only an
    unsubscribe's suppression is lifted), so they were never mailed again."""
    event = postmark_event("bounce", RECORD, NOW - timedelta(hours=1))
    reply = _post_postmark(store, event | {"Type": "Unsubscribe", "Inactive": False})
    assert (reply.status, reply.json()) == (200, {"accepted": 1, "duplicates": 0})
    after = state(store)
    assert after.unsubscribed_at == NOW - timedelta(hours=1)
    assert after.suppressed == {email_hash(ADDRESS): "unsubscribed"}
    assert after.events == [("unsubscribed", "postmark", CUSTOMER)]
    assert after.audits == [("unsubscribe", CUSTOMER)]
    later = NOW + timedelta(days=1)
    with store.begin() as connection:
        changed = profiles.apply(
            connection,
            CUSTOMER,
            {"consent_basis": "double_opt_in", "consent_at": later},
            at=later,
            actor="test",
            source="test",
            unsubscribed=False,
        )
    assert "resubscribed" in changed.fields
    assert state(store).suppressed == {}


@pytest.mark.parametrize("bounce_type", ["Blocked", "SpamNotification"])
def test_a_postmark_isp_block_of_our_mail_suppresses_nobody(
    store: sa.Engine, bounce_type: str
) -> None:
    """Postmark's ``Blocked`` ("ISP block: due to content or blacklisting") and
    ``SpamNotification`` are about our message or IP, not the address: a soft bounce (as
    SendGrid's ``blocked``), recorded, nobody suppressed, unless Postmark deactivated it."""
    event = postmark_event("bounce", RECORD, NOW - timedelta(hours=1))
    reply = _post_postmark(store, event | {"Type": bounce_type, "Inactive": False})
    assert (reply.status, reply.json()) == (200, {"accepted": 1, "duplicates": 0})
    after = state(store)
    assert after.suppressed == {} and after.unsubscribed_at is None
    assert after.events == [("soft_bounced", "postmark", CUSTOMER)]


def test_a_brevo_event_finds_its_mail_by_the_send_key_brevo_echoes(store: sa.Engine) -> None:
    """The provider puts the send key in ``X-Mailin-custom``, which Brevo echoes in every
    event ("Transactional webhooks"): a bounce whose message id recocamp never learnt (a
    resend Brevo answered ``duplicate_parameter``) still marks that mail bounced. Mail sent
    now carries the key's digest there (``tests/delivery/test_send_key_webhooks.py``); this
    is the plain key of mail sent by an older version."""
    bounce = {
        "event": "hard_bounce",
        "email": ADDRESS,
        "id": 123456,
        "message-id": "<unknown-to-us@smtp-relay.mailin.fr>",
        "X-Mailin-custom": SEND_KEY,
        "ts_event": int(NOW.timestamp()) - 3600,
    }
    reply = call(
        make_app(store),
        "POST",
        "/v1/webhooks/brevo",
        content=json.dumps(bounce).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {SECRET}"},
    )
    assert (reply.status, reply.json()) == (200, {"accepted": 1, "duplicates": 0})
    after = state(store)
    assert after.outbox == "bounced"
    assert after.suppressed == {email_hash(ADDRESS): "bounced"}


def test_a_webhook_the_store_cannot_take_now_is_429_for_brevo_to_post_again(
    store: sa.Engine,
) -> None:
    """The database is locked past its busy timeout: the answer is 429 with Retry-After (a
    500 made Brevo drop the hard bounce for good, as it drops any 5xx), nothing is stored,
    no address in the answer; the post Brevo sends again is stored. Over real HTTP."""
    if store.dialect.name != "sqlite":
        pytest.skip("a SQLite file lock")
    bounce = {
        "event": "hard_bounce",
        "email": ADDRESS,
        "id": 123456,
        "message-id": "<202601151200.1@smtp-relay.mailin.fr>",
        "ts_event": int(NOW.timestamp()) - 3600,
        "reason": "550 5.1.1 user unknown",
    }
    served = impatient(store)
    hold = store.raw_connection()
    try:
        with running(create_app(SETTINGS, served, FixedClock(NOW))) as url:
            hook, auth = f"{url}/v1/webhooks/brevo", {"authorization": f"Bearer {SECRET}"}
            hold.execute("BEGIN IMMEDIATE")  # another writer holds the lock
            busy = httpx.post(hook, json=bounce, headers=auth, timeout=10)
            hold.rollback()
            assert busy.status_code == 429 and busy.headers["retry-after"] == "60"
            assert "@" not in busy.text
            assert state(store) == UNTOUCHED
            again = httpx.post(hook, json=bounce, headers=auth, timeout=10)
        assert (again.status_code, again.json()) == (200, {"accepted": 1, "duplicates": 0})
        assert state(store).suppressed == {email_hash(ADDRESS): "bounced"}
    finally:
        hold.close()
        served.dispose()


def test_a_post_of_events_recocamp_does_not_use_waits_for_no_lock(store: sa.Engine) -> None:
    """A post with no event recocamp uses (Brevo's "request", SendGrid's "processed":
    most of what a provider posts) writes nothing, so it takes no write lock: while an
    import holds SQLite's, it is answered 200 at once, not 429 after the busy timeout."""
    if store.dialect.name != "sqlite":
        pytest.skip("a SQLite file lock")
    served = impatient(store)
    hold = store.raw_connection()
    try:
        hold.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        reply = call(
            make_app(served),
            "POST",
            "/v1/webhooks/brevo",
            content=json.dumps({"event": "request", "email": ADDRESS, "id": 1}).encode(),
            headers={"content-type": "application/json", "authorization": f"Bearer {SECRET}"},
        )
        hold.rollback()
    finally:
        hold.close()
        served.dispose()
    assert (reply.status, reply.json()) == (200, {"accepted": 0, "duplicates": 0})


def test_an_address_too_long_to_act_on_is_still_rejected(store: sa.Engine) -> None:
    event = postmark_event("bounce", RECORD, NOW) | {"Email": "a" * 400 + "@example.test"}
    reply = _post_postmark(store, event)
    assert reply.status == 200 and reply.json()["rejected"][0].startswith("[0].Email")
    assert state(store) == UNTOUCHED


def signed_sendgrid(store: sa.Engine, events: list[dict[str, Any]]) -> Reply:
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    esp = EspSettings(provider="sendgrid", webhook_public_key=base64.b64encode(public).decode())
    payload = json.dumps(events).encode()
    stamp = str(int(NOW.timestamp()))
    signature = private.sign(stamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    headers = {
        "x-twilio-email-event-webhook-signature": base64.b64encode(signature).decode(),
        "x-twilio-email-event-webhook-timestamp": stamp,
    }
    app = make_app(store, Settings(esp=esp))
    return call(app, "POST", "/v1/webhooks/sendgrid", content=payload, headers=headers)


def test_a_sendgrid_bounce_with_a_long_reason_and_type_still_suppresses(
    store: sa.Engine,
) -> None:
    event = {
        "event": "bounce",
        "type": "x" * 300,
        "reason": "r" * 20_000,
        "email": ADDRESS,
        "send_key": SEND_KEY,
        "sg_event_id": "e1",
        "timestamp": int(NOW.timestamp()) - 60,
    }
    reply = signed_sendgrid(store, [event])
    assert (reply.status, reply.json()) == (200, {"accepted": 1, "duplicates": 0})
    assert state(store).suppressed == {email_hash(ADDRESS): "bounced"}
    [details] = stored_details(store)
    assert len(details["reason"]) == 1000 and details["reason"].endswith(" [… truncated]")


def test_postmark_complaint_unsubscribes(store: sa.Engine) -> None:
    reply = post_hook(store, "complaint", basic(SECRET))
    assert (reply.status, reply.json()) == (200, {"accepted": 1, "duplicates": 0})
    after = state(store)
    assert after.unsubscribed_at == NOW - timedelta(hours=1)  # when the complaint happened
    assert after.suppressed == {email_hash(ADDRESS): "complained"}
    assert after.events == [("complained", "postmark", CUSTOMER)]
    assert after.audits == [("unsubscribe", CUSTOMER)]
    assert after.outbox == "sent"  # the e-mail itself did arrive


def test_a_complaint_read_before_an_erasure_commits_is_not_written_after_it(
    store: sa.Engine,
) -> None:
    """A webhook reads which customer its mail was for, and writes the event (their id and
    send key) and the opt-out (an audit entry naming them) afterwards. An erasure that
    committed in between left those rows naming the erased customer for good: the webhook
    wrote them after the erasure had blanked everything else. The webhook and an erasure
    now serialise as every other check-then-write does (``tombstones.serialise``): the
    erasure waits for the webhook's commit (here: an impatient one gives up and is asked
    again) and then erases the event too."""
    if store.dialect.name != "sqlite":
        pytest.skip("the interleaving is forced on SQLite's write lock")
    eraser = impatient(store)
    tried: list[str] = []

    def erase_now() -> None:
        try:
            privacy.erase(eraser, SETTINGS, CUSTOMER, NOW, via="test")
            tried.append("erased")
        except sa.exc.OperationalError:  # the webhook holds the write lock: later
            tried.append("waited")

    def between(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if not tried and statement.startswith("SELECT") and "FROM outbox" in statement:
            erase_now()  # the webhook has read the customer of its mail, and not yet written

    sa.event.listen(store, "after_cursor_execute", between)
    try:
        reply = post_hook(store, "complaint", basic(SECRET))
    finally:
        sa.event.remove(store, "after_cursor_execute", between)
    assert reply.status == 200
    if tried == ["waited"]:
        erase_now()
    eraser.dispose()
    assert tried[-1] == "erased"
    with store.connect() as connection:
        events = connection.execute(sa.select(contact_events)).all()
        audits = connection.execute(sa.select(audit_log.c.subject_id)).scalars().all()
    assert len(events) == 1
    assert (events[0].customer_id, events[0].send_key) == (None, None)
    assert CUSTOMER not in audits


def test_postmark_delivery_marks_the_outbox_only(store: sa.Engine) -> None:
    reply = post_hook(store, "delivery", basic(SECRET))
    assert (reply.status, reply.json()) == (200, {"accepted": 1, "duplicates": 0})
    after = state(store)
    assert (after.outbox, after.suppressed, after.unsubscribed_at) == ("delivered", {}, None)


# -- the consequence for the next decision ----------------------------------------------------


def next_decision(engine: sa.Engine) -> tuple[bool, Outcome, str]:
    campaigns, failures = load_all(ROOT / "campaigns", SETTINGS, ROOT / "templates")
    assert failures == []
    winback = next(c for c in campaigns if c.name == "winback")
    with engine.connect() as connection:
        snapshot = load_snapshot(connection, SETTINGS, NOW)
    (view,) = [v for v in snapshot.views if v.customer.id == CUSTOMER]
    context = context_for(SETTINGS, NOW, snapshot.items, snapshot.popular)
    decision = decide(winback, view, context, winback.policy(context.policy))
    return view.suppressed, decision.outcome, decision.reason


def test_bounce_blocks_the_next_decision(store: sa.Engine) -> None:
    suppressed, _, reason = next_decision(store)
    assert not suppressed and reason != "suppressed"  # the planner got past consent before
    assert post_hook(store, "bounce", basic(SECRET)).status == 200
    assert next_decision(store) == (True, Outcome.SKIP, "suppressed")


def test_link_unsubscribe_blocks_the_next_decision(store: sa.Engine) -> None:
    assert call(make_app(store), "POST", f"/u/{token()}").status == 200
    assert next_decision(store) == (True, Outcome.SKIP, "unsubscribed")


def test_addresses_are_masked_in_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("recocamp.test_redaction")
    redactor = EmailRedactor()
    logger.addFilter(redactor)
    try:
        with caplog.at_level(logging.INFO, logger="recocamp.test_redaction"):
            logger.info("mail to %s bounced (customer %s)", "Anna.B+shop@Example.co.uk", "c1")
    finally:
        logger.removeFilter(redactor)
    assert caplog.messages == ["mail to <address> bounced (customer c1)"]
