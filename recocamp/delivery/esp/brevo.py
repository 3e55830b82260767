"""Brevo: ``POST /v3/smtp/email``, one message per request, with an idempotency key.

The key is a UUID derived from the send key's keyed digest (UUID v5 of
``tokens.provider_key``: stable across retries, processes and key rotations, see Rotation
below, and, unlike a UUID of the send key itself, no test of a guessed customer id), so a
resend of
the same e-mail within Brevo's idempotency window (15–30 minutes) is dropped by Brevo
itself: that is what makes the resend after an ambiguous failure safe
(``resend_is_safe``). Brevo answers such a resend with the error code
``duplicate_parameter`` and sends nothing ("Batch email idempotency": the key was used, so
the first request went through): that answer is the message's acceptance, not a failure,
whose message id is unknown: the send key's digest goes in ``X-Mailin-custom`` (the send
key names the shop's customer id), which Brevo echoes in its webhook events
("Transactional webhooks"), so they find the message without it. A 201 carries
``messageId`` (Brevo's SendEmailResponse); a 2xx without one (a proxy's or a captive
portal's page, an empty body) is not Brevo's answer: ambiguous, so the message is sent
again under its key (it was recorded sent, and was lost if Brevo never had it). A 400
about the recipient is permanent for that message.

**Rotation.** The digest is made under the key that signed the e-mail's own unsubscribe link
(its ``List-Unsubscribe`` header, written when it was queued and stored with it): the signing
key, or a retired one (``RECOCAMP_SIGNING_KEYS_RETIRED``) for an e-mail queued before the
key was rotated. So a resend after a rotation carries the idempotency key of the first
request, and Brevo drops it (under the new signing key it was a new message, sent twice).
An e-mail without such a link, or whose link's key is no longer configured, is digested
under the signing key. A retired key may be known (that is why it was retired): a digest
under it lets whoever holds it test customer ids against the e-mail's ``X-Mailin-custom``,
which tells them nothing the same e-mail's links do not (a token sealed under that key
opens under it, see ``tokens``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx

from recocamp.delivery.esp.http import (
    about_recipient,
    error_body,
    headers_of,
    json_body,
    make_client,
    request,
    text_field,
    without_id,
)
from recocamp.domain import OutgoingEmail, SendResult, SendStatus
from recocamp.errors import PermanentDeliveryError
from recocamp.tokens import TokenError, provider_key, verify_any

NAMESPACE = uuid.UUID("5b0c4c8e-7e36-4f0e-9d7c-3f3a9a3c2f11")
# Brevo's answer to a key used within its TTL: an earlier request with it was processed
DUPLICATE = "duplicate_parameter"
# the token of an unsubscribe link in a List-Unsubscribe header (``campaigns.compose``)
UNSUBSCRIBE_LINK = re.compile(r"<[^<>]*/u/([^<>/?#\s]+)>")
# which key signed a link, whenever it was issued: "now" for verify_any past every token
ANY_TIME = datetime(9999, 1, 1, tzinfo=UTC)


def idempotency_key(ref: str) -> str:
    """The idempotency key (Brevo wants a UUID) of a send key's digest ``ref``."""
    return str(uuid.uuid5(NAMESPACE, ref))


class Brevo:
    name = "brevo"
    batch_limit = 1
    resend_is_safe = True

    def __init__(
        self,
        base_url: str,
        token: str,
        from_email: str,
        timeout_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
        key: bytes | None = None,
        retired: tuple[bytes, ...] = (),
    ) -> None:
        self.client = make_client(base_url, {"api-key": token}, timeout_s, transport)
        self.from_email = from_email
        self.key = key  # the signing key: what the send keys become at Brevo
        self.keys = () if key is None else (key, *retired)  # an e-mail's links' key: _ref

    def _ref(self, message: OutgoingEmail) -> str:
        """The send key's digest under the key that signed the e-mail's unsubscribe link
        (see Rotation in the module docstring), else under the signing key."""
        key = self.key
        for name, value in message.headers:
            found = UNSUBSCRIBE_LINK.search(value) if name.lower() == "list-unsubscribe" else None
            if found and self.keys:
                try:
                    _, position = verify_any(
                        self.keys, found.group(1), "unsubscribe", ANY_TIME, max_age_days=None
                    )
                except TokenError:
                    break
                key = self.keys[position]
                break
        return provider_key(key, message.send_key)

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        return [self._send(message) for message in messages]

    def _send(self, message: OutgoingEmail) -> SendResult:
        response = request(
            self.client,
            self.name,
            "POST",
            "/v3/smtp/email",
            json=_payload(message, self.from_email, self._ref(message)),
        )
        if response.status_code < 300:
            message_id = text_field(json_body(response), "messageId")
            if not message_id:  # not Brevo's answer: the same key makes a resend harmless
                raise without_id(
                    self.name,
                    response.status_code,
                    "Brevo's messageId",
                    ": sent again under the same idempotency key",
                )
            return SendResult(message.send_key, SendStatus.ACCEPTED, message_id=message_id)
        body = error_body(self.name, response)
        if body.get("code") == DUPLICATE:  # a resend after a lost answer: sent once already
            return SendResult(message.send_key, SendStatus.ACCEPTED, message_id="")
        detail = f"brevo {body.get('code', response.status_code)}: {body.get('message', '')}"
        if response.status_code == 400 and about_recipient(str(body.get("message", ""))):
            return SendResult(message.send_key, SendStatus.REJECTED, error=detail[:500])
        raise PermanentDeliveryError(detail[:500])

    def lookup(self, send_keys: Sequence[str]) -> dict[str, str] | None:
        return None

    def close(self) -> None:
        self.client.close()


def _payload(message: OutgoingEmail, from_email: str, ref: str) -> dict[str, Any]:
    headers = dict(headers_of(message, ref))
    headers["idempotencyKey"] = idempotency_key(ref)
    # Brevo echoes X-Mailin-custom in each webhook event of the message: its events find
    # the outbox row by the digest (``store.contacts``), also when the message id is unknown
    # (a duplicate_parameter)
    headers["X-Mailin-custom"] = ref
    return {
        "sender": {"email": from_email},
        "to": [{"email": message.to}],
        "subject": message.subject,
        "htmlContent": message.html,
        "textContent": message.text,
        "headers": headers,
        "tags": [message.campaign] if message.campaign else [],
    }
