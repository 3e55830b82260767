"""The mailpit provider against a real HTTP server that authenticates as Mailpit does.

Mailpit's send API (``POST /api/v1/send``) takes HTTP Basic credentials from
``--send-api-auth-file`` (or the web UI's password file it falls back to), ``user:password``
(mailpit.axllent.org, "Web UI & API server", "Send API endpoint dedicated authentication").
The provider sent ``Authorization: Bearer <token>``, which such a Mailpit refuses: every
message failed with a 401 whatever token was set.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import SecretStr

from recocamp.delivery.esp import check_provider
from recocamp.delivery.esp.fake_server import running
from recocamp.delivery.esp.mailpit import Mailpit
from recocamp.domain import SendStatus
from recocamp.errors import ConfigError
from recocamp.settings import EspSettings, Settings
from tests.delivery.test_deliver import email

CREDENTIALS = ("sender", "s3cret:with-colon")
FROM = "shop@example.test"


def mailpit_app(received: list[dict[str, object]]) -> FastAPI:
    """``POST /api/v1/send`` behind Basic authentication: 401 without the credentials."""
    app = FastAPI()

    @app.post("/api/v1/send")
    async def send(request: Request) -> JSONResponse:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        try:
            given = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            given = ""
        if scheme != "Basic" or given.partition(":")[::2] != CREDENTIALS:
            return JSONResponse({"Error": "Unauthorised"}, 401)
        received.append(await request.json())
        return JSONResponse({"ID": f"id-{len(received)}"}, 200)

    return app


@pytest.fixture
def mailpit() -> Iterator[tuple[list[dict[str, object]], str]]:
    received: list[dict[str, object]] = []
    with running(mailpit_app(received)) as url:
        yield received, url


def test_mailpit_with_a_send_api_password_file_accepts_the_mail(
    mailpit: tuple[list[dict[str, object]], str],
) -> None:
    received, url = mailpit
    provider = Mailpit(url, ":".join(CREDENTIALS), FROM)
    try:
        [result] = provider.send_batch([email(1)])
    finally:
        provider.close()
    assert (result.status, result.message_id) == (SendStatus.ACCEPTED, "id-1")
    assert received[0]["To"] == [{"Email": "c1@example.test"}]


def test_a_mailpit_token_that_is_no_user_password_pair_is_refused_without_repeating_it() -> None:
    with pytest.raises(ConfigError) as caught:
        Mailpit("http://127.0.0.1:9", "just-a-token-4711", FROM)
    assert "RECOCAMP_ESP_TOKEN" in str(caught.value)
    assert "4711" not in str(caught.value)


def test_a_worker_with_such_a_mailpit_token_refuses_to_start() -> None:
    settings = Settings(esp=EspSettings(provider="mailpit"), esp_token=SecretStr("no-colon"))
    with pytest.raises(ConfigError):
        check_provider(settings)
    keyed = Settings(esp=EspSettings(provider="mailpit"), signing_key=SecretStr("k" * 32))
    check_provider(keyed)  # no token: fine
