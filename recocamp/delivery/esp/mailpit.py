"""Mailpit (a local mail catcher): ``POST /api/v1/send``, one message per request.

For people who already run Mailpit to look at e-mails in a browser. It answers ``{"ID": …}``.
It offers no reliable lookup by our send key, so after a crash a message whose fate is
unknown is resent (at-least-once); for a local catcher that is the right trade.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from recocamp.delivery.esp.http import about_recipient, json_body, make_client, request
from recocamp.domain import OutgoingEmail, SendResult, SendStatus
from recocamp.errors import PermanentDeliveryError


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
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.client = make_client(base_url, headers, timeout_s, transport)
        self.from_email = from_email

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        return [self._send(message) for message in messages]

    def _send(self, message: OutgoingEmail) -> SendResult:
        response = request(
            self.client, self.name, "POST", "/api/v1/send", json=_payload(message, self.from_email)
        )
        body = json_body(response)
        if response.status_code < 300 and isinstance(body, dict):
            return SendResult(message.send_key, SendStatus.ACCEPTED, message_id=str(body["ID"]))
        detail = response.text[:300]
        if response.status_code == 400 and about_recipient(detail):
            return SendResult(message.send_key, SendStatus.REJECTED, error=f"mailpit: {detail}")
        raise PermanentDeliveryError(f"mailpit: HTTP {response.status_code}: {detail}")

    def lookup(self, send_keys: Sequence[str]) -> dict[str, str] | None:
        return None

    def close(self) -> None:
        self.client.close()


def _payload(message: OutgoingEmail, from_email: str) -> dict[str, Any]:
    return {
        "From": {"Email": from_email},
        "To": [{"Email": message.to}],
        "Subject": message.subject,
        "HTML": message.html,
        "Text": message.text,
        "Headers": dict(message.headers),
        "Tags": [message.campaign] if message.campaign else [],
    }
