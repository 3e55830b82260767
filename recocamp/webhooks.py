"""Provider webhooks → :class:`Event` values, and their authentication. Pure.

What each provider posts (bounce, complaint, delivery, unsubscribe, open, click) becomes one
:class:`Event` with a stable ``event_key`` (the provider's event id, else a digest of the
event), so a webhook the provider retries is recorded once. ``store.contacts.apply`` turns
events into suppressions, unsubscribes, outbox states and contact events.

Authentication, per provider:

- Postmark and Brevo do not sign; they post to a URL with HTTP Basic credentials (Postmark)
  or a bearer token / Basic credentials (Brevo): the password or token must equal
  ``RECOCAMP_WEBHOOK_SECRET``.
- SendGrid signs every post (ECDSA P-256 over timestamp + body): the signature is checked
  with ``[esp] webhook_public_key`` and must be at most 10 minutes old.
- Mailpit posts no delivery events.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from recocamp.errors import RecocampError

SUPPRESSING = frozenset({"bounced", "complained", "unsubscribed"})
MAX_SIGNATURE_AGE_S = 600


class WebhookError(RecocampError):
    """A webhook that is not authentic or cannot be read; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Event:
    provider: str
    kind: str  # delivered | bounced | soft_bounced | complained | unsubscribed | opened | clicked
    event_key: str
    at: datetime
    email: str | None = None
    message_id: str | None = None
    send_key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


# -- authentication -------------------------------------------------------------------------


def check_shared_secret(headers: Mapping[str, str], secret: str | None) -> None:
    """Basic credentials (any user, password = secret) or ``Bearer <secret>``."""
    if not secret:
        raise WebhookError("webhooks are off: set RECOCAMP_WEBHOOK_SECRET", status=503)
    given = headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() == "basic":
        try:
            value = base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            value = ""
    elif scheme.lower() != "bearer":
        value = ""
    if not hmac.compare_digest(value.encode(), secret.encode()):
        raise WebhookError("webhook credentials missing or wrong", status=401)


def check_sendgrid_signature(headers: Mapping[str, str], body: bytes, public_key: str | None,
                             now: datetime) -> None:  # fmt: skip
    if not public_key:
        raise WebhookError("set [esp] webhook_public_key to accept SendGrid webhooks", 503)
    signature = headers.get("x-twilio-email-event-webhook-signature", "")
    stamp = headers.get("x-twilio-email-event-webhook-timestamp", "")
    if (
        not (stamp.isascii() and stamp.isdigit())
        or abs(now.timestamp() - int(stamp)) > MAX_SIGNATURE_AGE_S
    ):
        raise WebhookError("missing or stale signature timestamp", status=401)
    try:
        key = load_der_public_key(base64.b64decode(public_key))
        assert isinstance(key, ec.EllipticCurvePublicKey)
        key.verify(base64.b64decode(signature), stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, binascii.Error, AssertionError):
        raise WebhookError("invalid SendGrid signature", status=401) from None


# -- parsing --------------------------------------------------------------------------------


def parse(provider: str, body: bytes) -> list[Event]:
    try:
        document = json.loads(body)
    except ValueError:
        raise WebhookError("the body is not JSON") from None
    parser = {"postmark": _postmark, "sendgrid": _sendgrid, "brevo": _brevo}.get(provider)
    if parser is None:
        raise WebhookError(f"no webhooks for provider {provider!r}", status=404)
    items = document if isinstance(document, list) else [document]
    events = [parser(item) for item in items if isinstance(item, dict)]
    return [e for e in events if e is not None]


def _digest(item: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()[:32]


def _when(value: Any) -> datetime:
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return datetime.fromtimestamp(0, UTC)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


POSTMARK_KINDS = {"Delivery": "delivered", "SpamComplaint": "complained", "Open": "opened",
                  "Click": "clicked", "SubscriptionChange": "unsubscribed"}  # fmt: skip
HARD_BOUNCES = frozenset({"HardBounce", "BadEmailAddress", "ManuallyDeactivated", "Blocked",
                          "SpamNotification", "Unsubscribe"})  # fmt: skip


def _postmark(item: dict[str, Any]) -> Event | None:
    record = str(item.get("RecordType", ""))
    kind = POSTMARK_KINDS.get(record)
    if record == "Bounce":
        hard = item.get("Inactive") or item.get("Type") in HARD_BOUNCES
        kind = "bounced" if hard else "soft_bounced"
    if kind is None or (record == "SubscriptionChange" and not item.get("SuppressSending")):
        return None
    at = next((item[k] for k in ("BouncedAt", "DeliveredAt", "ChangedAt", "ReceivedAt")
               if item.get(k)), 0)  # fmt: skip
    ident = item.get("ID") or f"{item.get('MessageID')}:{at}"
    return Event(
        provider="postmark", kind=kind, event_key=f"postmark:{record}:{ident}", at=_when(at),
        email=item.get("Email") or item.get("Recipient"), message_id=item.get("MessageID"),
        send_key=(item.get("Metadata") or {}).get("send_key"),
        details={"type": item.get("Type"), "description": item.get("Description")},
    )  # fmt: skip


SENDGRID_KINDS = {"delivered": "delivered", "spamreport": "complained", "open": "opened",
                  "click": "clicked", "unsubscribe": "unsubscribed",
                  "group_unsubscribe": "unsubscribed", "dropped": "bounced"}  # fmt: skip


def _sendgrid(item: dict[str, Any]) -> Event | None:
    name = str(item.get("event", ""))
    kind = SENDGRID_KINDS.get(name)
    if name == "bounce":
        kind = "soft_bounced" if item.get("type") == "blocked" else "bounced"
    if kind is None:
        return None
    message_id = str(item.get("sg_message_id", "")).split(".")[0] or None
    return Event(
        provider="sendgrid", kind=kind,
        event_key=f"sendgrid:{item.get('sg_event_id') or _digest(item)}",
        at=_when(item.get("timestamp", 0)), email=item.get("email"), message_id=message_id,
        send_key=item.get("send_key"), details={"reason": item.get("reason")},
    )  # fmt: skip


BREVO_KINDS = {"delivered": "delivered", "hard_bounce": "bounced", "soft_bounce": "soft_bounced",
               "spam": "complained", "unsubscribed": "unsubscribed", "opened": "opened",
               "unique_opened": "opened", "click": "clicked", "invalid_email": "bounced",
               "blocked": "bounced"}  # fmt: skip


def _brevo(item: dict[str, Any]) -> Event | None:
    kind = BREVO_KINDS.get(str(item.get("event", "")))
    if kind is None:
        return None
    ident = item.get("id")
    parts = (ident, item.get("event"), item.get("message-id"), item.get("email"))
    key = ":".join(str(p) for p in parts) if ident else _digest(item)
    return Event(
        provider="brevo", kind=kind, event_key=f"brevo:{key}",
        at=_when(item.get("ts_event") or item.get("date") or 0), email=item.get("email"),
        message_id=item.get("message-id"), details={"reason": item.get("reason")},
    )  # fmt: skip
