"""SendGrid's and Brevo's webhook events name an e-mail by the digest of its send key
(``tokens.provider_key``: their ``custom_args`` / ``X-Mailin-custom`` carry no customer id),
and still find it, through the real API, on the real SQLite store: also when the provider's
message id is not recorded (a deliverer that died after the provider took the mail; a resend
Brevo answered ``duplicate_parameter``, recorded sent without an id; a SendGrid 202 without
``X-Message-Id``)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import timedelta

import httpx
import orjson
import sqlalchemy as sa
from pydantic import SecretStr

from recocamp.api.app import create_app as create_api
from recocamp.clock import FixedClock
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp.brevo import Brevo
from recocamp.delivery.esp.fake_server import running
from recocamp.delivery.esp.sendgrid import SendGrid
from recocamp.settings import EspSettings, Settings
from recocamp.store import outbox
from recocamp.store.schema import contact_events, customers
from recocamp.tokens import provider_key
from tests.api_shop import call
from tests.conftest import NOW
from tests.delivery.esp.test_brevo_idempotency import FROM, KEY, BrevoStandIn
from tests.delivery.test_deliver import ESP, Sleeper, email, states, store
from tests.delivery.test_webhooks import PUBLIC, signed

SIGNING_KEY = "the-shops-signing-key-0123456789"


def settings() -> Settings:
    return Settings(
        signing_key=SecretStr(SIGNING_KEY),
        webhook_secret=SecretStr("hook"),
        esp=EspSettings(webhook_public_key=PUBLIC),
    )


def named(engine: sa.Engine) -> tuple[list[str | None], object]:
    with engine.connect() as connection:
        events = connection.execute(sa.select(contact_events.c.customer_id)).scalars().all()
        since = connection.execute(
            sa.select(customers.c.unsubscribed_at).where(customers.c.id == "c0")
        ).scalar_one()
    return list(events), since


def test_a_brevo_resend_recorded_without_id_is_found_by_its_digest(engine: sa.Engine) -> None:
    """A deliverer dies after Brevo took the mail; the next one resends it under the same
    idempotency key (another process: the key depends on the signing key and the send key
    only), Brevo answers duplicate_parameter: sent once, recorded without an id. Brevo's
    unsubscribe event (its own message id, our digest in X-Mailin-custom) names c0."""
    store(engine, [email(0)])
    stand_in = BrevoStandIn()
    with running(stand_in.app()) as url:
        first = Brevo(url, KEY, FROM, key=SIGNING_KEY.encode())
        then = Brevo(url, KEY, FROM, key=SIGNING_KEY.encode())
        try:
            claimed = outbox.claim(engine, "elsewhere:1:dead", NOW, 10)
            [result] = first.send_batch([c.email for c in claimed])  # then it died
            assert result.status == "accepted"
            clock = FixedClock(NOW + timedelta(seconds=ESP.claim_lease_s + 1))
            report = Deliverer(
                engine, then, ESP, clock, sleep=Sleeper(clock), rng=random.Random(1)
            ).drain(max_wait_s=60)
        finally:
            first.close()
            then.close()
    assert stand_in.requests == 2 and len(stand_in.taken) == 1 and report.sent == 1
    assert states(engine) == Counter({"sent": 1})
    [body] = stand_in.taken.values()
    reference = provider_key(SIGNING_KEY.encode(), email(0).send_key)
    assert body["headers"]["X-Mailin-custom"] == reference
    assert "c0/" not in orjson.dumps(body).decode()  # no customer id left the shop
    event = {
        "event": "unsubscribed",
        "email": "c0@example.test",
        "id": 7,
        "message-id": "<1@smtp-relay.mailin.fr>",
        "ts_event": int(NOW.timestamp()),
        "X-Mailin-custom": body["headers"]["X-Mailin-custom"],
    }
    posted = call(
        create_api(settings(), engine, FixedClock(NOW)),
        "POST",
        "/v1/webhooks/brevo",
        content=orjson.dumps(event),
        headers={"authorization": "Bearer hook"},
    )
    assert posted.status == 200, posted.text
    events, since = named(engine)
    assert events == ["c0"] and since is not None


def test_a_sendgrid_event_of_mail_accepted_without_message_id_names_the_customer(
    engine: sa.Engine,
) -> None:
    """SendGrid answered 202 without X-Message-Id (a proxy dropped the header): recorded
    sent without an id. Its events carry our custom args (the digest) and SendGrid's id."""
    store(engine, [email(0)])
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(202)

    clock = FixedClock(NOW)
    provider = SendGrid(
        "http://sg.test",
        "t",
        FROM,
        transport=httpx.MockTransport(answer),
        key=SIGNING_KEY.encode(),
    )
    try:
        report = Deliverer(engine, provider, ESP, clock).drain()
    finally:
        provider.close()
    assert report.sent == 1 and states(engine) == Counter({"sent": 1})
    [request] = requests
    custom = orjson.loads(request.content)["custom_args"]
    assert "c0" not in orjson.dumps(custom).decode()
    event = {
        "event": "unsubscribe",
        "email": "c0@example.test",
        "timestamp": int(NOW.timestamp()),
        "sg_event_id": "ev-1",
        "sg_message_id": "W7hXu2FPQ4Sz0iQjVwQd00.filter0001",
        **custom,  # SendGrid merges the custom args into each event
    }
    payload = orjson.dumps([event])
    posted = call(
        create_api(settings(), engine, FixedClock(NOW)),
        "POST",
        "/v1/webhooks/sendgrid",
        content=payload,
        headers=signed(payload, NOW),
    )
    assert posted.status == 200, posted.text
    events, since = named(engine)
    assert events == ["c0"] and since is not None
