"""What a provider receives names no customer: the send key (``campaign/customer/period``)
reaches it only as ``tokens.provider_key``, a digest keyed with the signing key, in the
``X-Recocamp-Send-Key`` header (which the recipient's mailbox keeps too), Postmark's
``Metadata``, SendGrid's ``custom_args`` (SendGrid: "Don't place PII in this field",
kept long-term and visible to its employees) and Brevo's ``X-Mailin-custom``; Brevo's
idempotency key is a UUID of that digest, not of the send key (an unkeyed UUID5 of it let
anyone test a guessed customer id against it).

Each provider is built by ``make_provider`` from settings with a signing key, as the
deliverer builds it, and sends the e-mail ``compose`` made, to ``httpx.MockTransport``."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from typer.testing import CliRunner

from recocamp.cli import app as cli
from recocamp.delivery.esp import make_provider
from recocamp.domain import SEND_KEY_HEADER, OutgoingEmail, SendStatus
from recocamp.errors import ConfigError
from recocamp.settings import EspSettings, Settings
from recocamp.tokens import provider_key

CUSTOMER = "cust-4711"
SEND_KEY = f"winback/{CUSTOMER}/2026-01-15"
SIGNING_KEY = "k" * 32
BASE_URL = "http://esp.test"
NOW = datetime(2026, 1, 15, 12, tzinfo=UTC)

ANSWERS = {
    "postmark": lambda request: httpx.Response(
        200, json=[{"ErrorCode": 0, "MessageID": "pm-1", "Message": "OK"}]
    ),
    "sendgrid": lambda request: httpx.Response(202, headers={"X-Message-Id": "sg-1"}),
    "brevo": lambda request: httpx.Response(201, json={"messageId": "<1@smtp-relay.mailin.fr>"}),
    "mailpit": lambda request: httpx.Response(200, json={"ID": "mp-1"}),
}


def email() -> OutgoingEmail:
    """An e-mail as ``compose`` makes it: its send-key header holds the send key."""
    return OutgoingEmail(
        send_key=SEND_KEY,
        to="anna@example.org",
        subject="Neu für dich",
        html="<p>Hallo</p>",
        text="Hallo",
        headers=(
            ("List-Unsubscribe", "<https://shop.example.test/u/TOKEN>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            (SEND_KEY_HEADER, SEND_KEY),
        ),
        campaign="winback",
    )


def settings(provider: str) -> Settings:
    return Settings(
        esp=EspSettings(provider=provider, base_url=BASE_URL, from_email="news@shop.test"),
        esp_token="user:token",
        signing_key=SIGNING_KEY,
    )


def sent_to(provider_name: str) -> httpx.Request:
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return ANSWERS[provider_name](request)

    provider = make_provider(settings(provider_name), transport=httpx.MockTransport(answer))
    try:
        [result] = provider.send_batch([email()])
    finally:
        provider.close()
    assert result.status is SendStatus.ACCEPTED and result.send_key == SEND_KEY
    [request] = requests
    return request


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_no_customer_id_reaches_the_provider(name: str) -> None:
    request = sent_to(name)
    assert CUSTOMER not in request.content.decode()
    assert CUSTOMER not in str(request.url) and CUSTOMER not in str(request.headers)


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_the_send_key_header_carries_the_keyed_digest(name: str) -> None:
    body = json.loads(sent_to(name).content)
    reference = provider_key(SIGNING_KEY.encode(), SEND_KEY)
    if name == "postmark":
        headers = {h["Name"]: h["Value"] for h in body[0]["Headers"]}
    else:
        headers = body["Headers" if name == "mailpit" else "headers"]
    assert headers[SEND_KEY_HEADER] == reference
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"  # the rest kept


def test_sendgrid_custom_args_and_brevo_custom_header_carry_the_digest() -> None:
    reference = provider_key(SIGNING_KEY.encode(), SEND_KEY)
    sendgrid = json.loads(sent_to("sendgrid").content)
    assert sendgrid["custom_args"] == {"send_key": reference, "campaign": "winback"}
    brevo = json.loads(sent_to("brevo").content)
    assert brevo["headers"]["X-Mailin-custom"] == reference
    assert brevo["headers"]["idempotencyKey"] == str(
        uuid.uuid5(uuid.UUID("5b0c4c8e-7e36-4f0e-9d7c-3f3a9a3c2f11"), reference)
    )


def test_brevo_idempotency_key_is_the_same_in_another_process() -> None:
    """A resend after a lost answer (another deliverer, after a crash) must reuse the key:
    the digest depends on the signing key and the send key only."""
    first = json.loads(sent_to("brevo").content)["headers"]["idempotencyKey"]
    again = json.loads(sent_to("brevo").content)["headers"]["idempotencyKey"]
    assert first == again and uuid.UUID(first).version == 5


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_a_provider_is_not_made_without_the_signing_key(name: str) -> None:
    """Without ``RECOCAMP_SIGNING_KEY`` (a worker or ``outbox deliver`` started without it)
    the digest was plain SHA-256 of the send key: anyone with the provider's data could test
    a guessed customer id against it, and an e-mail taken under the key before was not found
    by Postmark's search nor deduplicated by Brevo's idempotency key: sent twice. Refused,
    naming the variable, before anything is sent."""
    requests: list[httpx.Request] = []
    unkeyed = settings(name).model_copy(update={"signing_key": None})
    with pytest.raises(ConfigError, match="RECOCAMP_SIGNING_KEY"):
        make_provider(unkeyed, transport=httpx.MockTransport(requests.append))  # type: ignore[arg-type]
    assert requests == []


def test_a_worker_without_the_signing_key_refuses_to_start(
    cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOCAMP_ESP_TOKEN", "t")
    monkeypatch.delenv("RECOCAMP_SIGNING_KEY", raising=False)
    result = cli_store.invoke(cli, ["worker", "--once"])
    assert result.exit_code == 2 and "RECOCAMP_SIGNING_KEY" in result.stderr, result.output
    assert "deliver:" not in result.stdout
