"""Mailpit (a local mail catcher): ``POST /api/v1/send``, one message per request.

For people who already run Mailpit to look at e-mails in a browser. It answers ``{"ID": …}``.
A Mailpit that wants credentials (``--send-api-auth-file``, or the web UI's password file,
which the send API falls back to) takes HTTP Basic ones, ``user:password``
(mailpit.axllent.org, "Web UI & API server"): ``RECOCAMP_ESP_TOKEN`` holds them so; without
it nothing is sent in the header (``--send-api-auth-accept-any``, or no authentication).
It offers no reliable lookup by our send key, so after a crash a message whose fate is
unknown is resent (at-least-once); for a local catcher that is the right trade.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from recocamp.delivery.esp.http import (
    about_recipient,
    headers_of,
    json_body,
    make_client,
    request,
    text_field,
)
from recocamp.domain import OutgoingEmail, SendResult, SendStatus
from recocamp.errors import ConfigError, PermanentDeliveryError, Problem
from recocamp.tokens import provider_key


class Mailpit:
    name = "mailpit"
    batch_limit = 1
    resend_is_safe = False

    def __init__(
        self,
        base_url: str,
        token: str,
        from_email: str,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        key: bytes | None = None,
    ) -> None:
        self.client = make_client(base_url, basic_auth(token), timeout_s, transport)
        self.from_email = from_email
        self.key = key  # the signing key: what the send keys become in the send-key header

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        return [self._send(message) for message in messages]

    def _send(self, message: OutgoingEmail) -> SendResult:
        response = request(
            self.client,
            self.name,
            "POST",
            "/api/v1/send",
            json=_payload(message, self.from_email, provider_key(self.key, message.send_key)),
        )
        if response.status_code < 300:  # taken, whatever the body says (a proxy's, no ID)
            message_id = text_field(json_body(response), "ID")
            return SendResult(message.send_key, SendStatus.ACCEPTED, message_id=message_id)
        detail = response.text[:300]
        if response.status_code == 400 and about_recipient(detail):
            return SendResult(message.send_key, SendStatus.REJECTED, error=f"mailpit: {detail}")
        raise PermanentDeliveryError(f"mailpit: HTTP {response.status_code}: {detail}")

    def lookup(self, send_keys: Sequence[str]) -> dict[str, str] | None:
        return None

    def close(self) -> None:
        self.client.close()


def basic_auth(token: str) -> dict[str, str]:
    """The Authorization header of a ``user:password`` token (none without a token). A token
    without the colon is refused here, not at Mailpit with a 401 on every message; the
    message never repeats the token."""
    if not token:
        return {}
    if ":" not in token:
        raise ConfigError(
            Path("settings.toml"),
            [
                Problem(
                    "the mailpit provider takes HTTP Basic credentials: set "
                    "RECOCAMP_ESP_TOKEN to user:password (as in Mailpit's password file)",
                    key="esp_token",
                )
            ],
        )
    return {"Authorization": "Basic " + base64.b64encode(token.encode()).decode()}


def _payload(message: OutgoingEmail, from_email: str, ref: str) -> dict[str, Any]:
    return {
        "From": {"Email": from_email},
        "To": [{"Email": message.to}],
        "Subject": message.subject,
        "HTML": message.html,
        "Text": message.text,
        "Headers": dict(headers_of(message, ref)),
        "Tags": [message.campaign] if message.campaign else [],
    }
