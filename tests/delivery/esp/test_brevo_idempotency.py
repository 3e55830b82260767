"""Brevo's idempotency key against a real HTTP server that keeps Brevo's documented rule.

Brevo ("Batch email idempotency", developers.brevo.com/docs/heterogenous-versions-batch-emails):
a request whose ``headers.idempotencyKey`` was used within the TTL (30 minutes there, 15 in
the 2021 changelog) is not processed, and the API answers the error code
``duplicate_parameter``. That is the answer recocamp's resend after a lost answer gets:
it must be read as "sent once already", never as a failure of the message (which recorded
a delivered e-mail as failed and counted it against the campaign's error rate) nor as a
rejection of the recipient. The HTTP status of that answer is not documented; the stand-in
uses 400, Brevo's status for its other request errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from recocamp import tokens
from recocamp.clock import FixedClock
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp.brevo import Brevo, idempotency_key
from recocamp.delivery.esp.fake_server import running
from recocamp.domain import SendStatus
from recocamp.store import outbox
from recocamp.store.schema import outbox as outbox_table
from recocamp.store.schema import suppressions
from recocamp.tokens import provider_key
from tests.conftest import NOW
from tests.delivery.test_deliver import ESP, Sleeper, email, states, store

KEY = "brevo-api-key"
FROM = "shop@example.test"


@dataclass
class BrevoStandIn:
    """``POST /v3/smtp/email`` as Brevo documents it: 201 ``{"messageId"}`` once per key,
    ``duplicate_parameter`` for a key seen before; ``stall_s`` holds the first answer back
    after the message was taken (the client's read timeout: a lost answer)."""

    stall_s: float = 0.0
    taken: dict[str, dict[str, Any]] = field(default_factory=dict)
    requests: int = 0
    proxy_pages: int = 0  # the first requests a proxy in front answers 200 with its own page

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v3/smtp/email")
        async def send(request: Request) -> Response:
            if self.proxy_pages:  # nothing reaches Brevo
                self.proxy_pages -= 1
                return Response("<html><body>OK</body></html>", 200, media_type="text/html")
            self.requests += 1
            if request.headers.get("api-key") != KEY:
                return JSONResponse({"code": "unauthorized", "message": "Key not found"}, 401)
            body = await request.json()
            key = body["headers"]["idempotencyKey"]
            if key in self.taken:
                return JSONResponse(
                    {"code": "duplicate_parameter", "message": "idempotencyKey already used"},
                    400,
                )
            self.taken[key] = body
            if self.requests == 1 and self.stall_s:
                await asyncio.sleep(self.stall_s)
            return JSONResponse({"messageId": f"<{len(self.taken)}@smtp-relay.mailin.fr>"}, 201)

        return app


@pytest.fixture
def brevo() -> Iterator[tuple[BrevoStandIn, str]]:
    stand_in = BrevoStandIn(stall_s=1.5)
    with running(stand_in.app()) as url:
        yield stand_in, url


def test_a_resend_brevo_answers_duplicate_parameter_is_accepted(
    brevo: tuple[BrevoStandIn, str],
) -> None:
    stand_in, url = brevo
    stand_in.stall_s = 0.0
    provider = Brevo(url, KEY, FROM)
    try:
        first = provider.send_batch([email(1)])
        again = provider.send_batch([email(1)])
    finally:
        provider.close()
    assert [r.status for r in first + again] == [SendStatus.ACCEPTED, SendStatus.ACCEPTED]
    assert first[0].message_id == "<1@smtp-relay.mailin.fr>"
    reference = provider_key(None, email(1).send_key)
    assert list(stand_in.taken) == [idempotency_key(reference)]
    # echoed by Brevo in the message's webhook events: they find it by the send key's digest
    [sent] = stand_in.taken.values()
    assert sent["headers"]["X-Mailin-custom"] == reference


def test_a_lost_answer_resent_to_brevo_is_recorded_sent_once(
    engine: sa.Engine, brevo: tuple[BrevoStandIn, str]
) -> None:
    """The first answer never comes (read timeout after Brevo took the message); the
    deliverer resends with the same key, Brevo refuses it as a duplicate: the mail is sent,
    once, and the recipient is not suppressed."""
    stand_in, url = brevo
    store(engine, [email(0)])
    clock = FixedClock(NOW)
    provider = Brevo(url, KEY, FROM, timeout_s=0.3)
    try:
        report = Deliverer(
            engine, provider, ESP, clock, sleep=Sleeper(clock), rng=random.Random(1)
        ).drain(max_wait_s=60)
    finally:
        provider.close()
    assert stand_in.requests == 2 and len(stand_in.taken) == 1
    assert report.sent == 1 and report.failed == 0 and report.rejected == 0
    assert states(engine) == Counter({"sent": 1})
    with engine.connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(suppressions))
        assert count.scalar_one() == 0


def test_a_2xx_page_in_front_of_brevo_is_sent_again_not_recorded_sent(engine: sa.Engine) -> None:
    """A proxy answers the first request 200 with its own page (Brevo never had the mail):
    it was recorded sent, with no id, and lost. Not Brevo's answer: the deliverer sends it
    again under the same key, and Brevo takes it once."""
    stand_in = BrevoStandIn(proxy_pages=1)
    store(engine, [email(0)])
    clock = FixedClock(NOW)
    with running(stand_in.app()) as url:
        provider = Brevo(url, KEY, FROM)
        try:
            report = Deliverer(
                engine, provider, ESP, clock, sleep=Sleeper(clock), rng=random.Random(1)
            ).drain(max_wait_s=3600)
        finally:
            provider.close()
    assert stand_in.requests == 1 and len(stand_in.taken) == 1
    assert report.sent == 1 and states(engine) == Counter({"sent": 1})
    with engine.connect() as connection:
        stored = connection.execute(sa.select(outbox_table.c.provider_message_id)).scalar_one()
    assert stored == "<1@smtp-relay.mailin.fr>"


def test_an_email_resent_after_a_key_rotation_keeps_its_idempotency_key(engine: sa.Engine) -> None:
    """Claimed and taken by Brevo under the old signing key, its deliverer died before
    recording it; then the key was rotated (the old one retired). The next deliverer resends
    it: under an idempotency key from the new signing key Brevo took it as a new message and
    sent it twice. Its key comes from the key that signed its own unsubscribe link (made
    when it was queued), the same before and after the rotation: Brevo drops the resend."""
    old, new = b"the-shops-signing-key-of-last-year", b"the-shops-signing-key-from-today-on"
    token = tokens.sign(old, "c0", "winback", "unsubscribe", NOW)
    link = ("List-Unsubscribe", f"<https://shop.test/u/{token}>")
    store(engine, [dataclasses.replace(email(0), headers=(link, *email(0).headers))])
    stand_in = BrevoStandIn()
    with running(stand_in.app()) as url:
        before = Brevo(url, KEY, FROM, key=old)
        after = Brevo(url, KEY, FROM, key=new, retired=(old,))
        try:
            claimed = outbox.claim(engine, "elsewhere:1:dead", NOW, 10)  # then it died
            [result] = before.send_batch([c.email for c in claimed])
            assert result.status == SendStatus.ACCEPTED
            later = FixedClock(NOW + timedelta(seconds=ESP.claim_lease_s + 1))
            report = Deliverer(engine, after, ESP, later).drain()
        finally:
            before.close()
            after.close()
    assert stand_in.requests == 2 and len(stand_in.taken) == 1  # the resend: a duplicate
    assert report.failed == 0 and states(engine) == Counter({"sent": 1})
    [sent] = stand_in.taken.values()  # the webhooks' digest: under the old key, retired
    assert sent["headers"]["X-Mailin-custom"] == provider_key(old, email(0).send_key)


def test_the_brevo_provider_is_given_the_retired_keys() -> None:
    from pydantic import SecretStr

    from recocamp.delivery.esp import make_provider
    from recocamp.settings import Settings

    settings = Settings(
        signing_key=SecretStr("n" * 32),
        signing_keys_retired=SecretStr("o" * 32),
        esp_token=SecretStr(KEY),
    )
    esp = settings.esp.model_copy(update={"provider": "brevo"})
    provider = make_provider(settings.model_copy(update={"esp": esp}))
    try:
        assert isinstance(provider, Brevo) and provider.keys == (b"n" * 32, b"o" * 32)
    finally:
        provider.close()
