"""SendGrid: ``POST /v3/mail/send``, one fully rendered message per request.

A 202 carries the message id in ``X-Message-Id`` (SendGrid, "X-Message-ID"); another 2xx
without it (a proxy's or a captive portal's 200 page) is not SendGrid's answer: ambiguous,
so the message is tried again, within ``max_attempts`` (it was recorded sent, and lost if
SendGrid never had it). A 202 without the header is taken (a proxy may drop headers: each
retry would be a duplicate). A 400 names the bad field in
``errors[].field``: a bad recipient (``personalizations.0.to…``) is permanent for that
message, anything else for the request. SendGrid offers no lookup by our send key (its
activity search is a paid add-on keyed by its own ids), so ``lookup`` answers None and a
message whose fate is unknown after a crash is resent: at-least-once on SendGrid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx

from recocamp.delivery.esp.http import error_body, headers_of, make_client, request, without_id
from recocamp.domain import OutgoingEmail, SendResult, SendStatus
from recocamp.errors import PermanentDeliveryError
from recocamp.tokens import provider_key

ACCEPTED = 202  # SendGrid's answer to a send it took


class SendGrid:
    name = "sendgrid"
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
        self.client = make_client(
            base_url, {"Authorization": f"Bearer {token}"}, timeout_s, transport
        )
        self.from_email = from_email
        self.key = key  # the signing key: what the send keys become at SendGrid

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        return [self._send(message) for message in messages]

    def _send(self, message: OutgoingEmail) -> SendResult:
        response = request(
            self.client,
            self.name,
            "POST",
            "/v3/mail/send",
            json=_payload(message, self.from_email, provider_key(self.key, message.send_key)),
        )
        if response.status_code < 300:
            message_id = response.headers.get("x-message-id", "")
            if not message_id and response.status_code != ACCEPTED:  # a proxy's page
                raise without_id(self.name, response.status_code, "SendGrid's X-Message-Id")
            return SendResult(message.send_key, SendStatus.ACCEPTED, message_id=message_id)
        listed = error_body(self.name, response).get("errors")
        errors = [e for e in listed if isinstance(e, dict)] if isinstance(listed, list) else []
        errors = errors or [{}]  # an answer that is not SendGrid's error shape names nothing
        fields = [str(e.get("field") or "") for e in errors]
        detail = "; ".join(str(e.get("message") or "") for e in errors)[:500]
        if response.status_code == 400 and any(
            f.startswith("personalizations.") and ".to" in f for f in fields
        ):
            return SendResult(message.send_key, SendStatus.REJECTED, error=f"sendgrid: {detail}")
        raise PermanentDeliveryError(f"sendgrid: HTTP {response.status_code}: {detail}")

    def lookup(self, send_keys: Sequence[str]) -> dict[str, str] | None:
        return None

    def close(self) -> None:
        self.client.close()


def _payload(message: OutgoingEmail, from_email: str, ref: str) -> dict[str, Any]:
    """The request; ``ref``: the send key's digest (``tokens.provider_key``), in the
    ``custom_args`` that SendGrid echoes in each event and in our send-key header. SendGrid
    stores custom args as "not PII", long-term and visible to its staff ("Don't place PII
    in this field", Event Webhook Reference): the send key names a customer id."""
    return {
        "personalizations": [{"to": [{"email": message.to}]}],
        "from": {"email": from_email},
        "subject": message.subject,
        "content": _content(message),
        "headers": dict(headers_of(message, ref)),
        "custom_args": {"send_key": ref, "campaign": message.campaign},
        "categories": [message.campaign] if message.campaign else [],
    }


def _content(message: OutgoingEmail) -> list[dict[str, str]]:
    """The parts that have text, plain first (SendGrid wants that order): SendGrid refuses a
    part of length 0 with a 400 for the whole message ("The content value must be a string at
    least one character in length", field ``content.0.value``), so a text template that
    renders to nothing cost the e-mail whose HTML part was fine."""
    parts = (("text/plain", message.text), ("text/html", message.html))
    return [{"type": kind, "value": value} for kind, value in parts if value]
