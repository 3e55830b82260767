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
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
)

from recocamp.domain import SUPPRESSING as SUPPRESSING  # shared values, re-exported
from recocamp.domain import Event as Event
from recocamp.domain import read_json
from recocamp.errors import RecocampError, mask_addresses
from recocamp.settings import sendgrid_key

MAX_SIGNATURE_AGE_S = 600
MAX_STAMP_DIGITS = 20  # seconds since the epoch; int() refuses over 4,300 digits (ValueError)


class WebhookError(RecocampError):
    """A webhook that is not authentic or cannot be read; ``status`` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


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


def check_sendgrid_signature(
    headers: Mapping[str, str], body: bytes, public_key: str | None, now: datetime
) -> None:
    if not public_key:
        raise WebhookError("set [esp] webhook_public_key to accept SendGrid webhooks", 503)
    signature = headers.get("x-twilio-email-event-webhook-signature", "")
    stamp = headers.get("x-twilio-email-event-webhook-timestamp", "")
    if (
        not (stamp.isascii() and stamp.isdigit() and len(stamp) <= MAX_STAMP_DIGITS)
        or abs(now.timestamp() - int(stamp)) > MAX_SIGNATURE_AGE_S
    ):
        raise WebhookError("missing or stale signature timestamp", status=401)
    try:
        key = sendgrid_key(public_key)  # the settings' own check: it loaded when they did
        key.verify(base64.b64decode(signature), stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, binascii.Error):
        raise WebhookError("invalid SendGrid signature", status=401) from None


# -- parsing --------------------------------------------------------------------------------
#
# Each event the provider posts is read through a pydantic model of the fields we use (types,
# lengths, no NUL, times within 1900-9000): a provider's format is checked, not trusted. Only
# the fields we act on are checked so: the kind, ids, the address, the message id, the time.
# A text we only store (a bounce's description, its type) is cut to its column with a marker
# instead (``CLIPPED``): a bounce must not be dropped for a long description. An
# event of a kind we do not use is ignored unread. An event we use whose fields are wrong is
# *rejected*: left out, named (index, field, problem; never its values) in the answer and the
# log, while the request's other events are applied and the answer is 200. Not 4xx: a retry
# would post the same bytes and fail again, and the providers' retry rules differ (Postmark
# retries any non-200 but 403 for hours, SendGrid any non-2xx for 24 hours and posts batches,
# so one bad event would hold back the valid ones with it; Brevo drops the post on a 4xx).
# A body that is not JSON, or not an object or a list, is answered 400 as a whole.

MAX_TEXT = 200  # ids, keys, types: the store's columns hold 200
MAX_ADDRESS = 320
MAX_REASON = 1000
NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT, pattern=NO_NUL)]
Address = Annotated[str, StringConstraints(max_length=MAX_ADDRESS, pattern=NO_NUL)]
CLIPPED = " [… truncated]"  # the end of a stored text that was longer than its column
# NUL, and half a UTF-16 pair (json.loads joins whole pairs, so what is left is alone)
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _clip(limit: int) -> Callable[[Any], Any]:
    def clip(value: Any) -> Any:
        """A text we only store (a bounce's description, its type): never a reason to drop
        the event, whose bounce or complaint must suppress the address. Longer than
        ``limit``: cut, with :data:`CLIPPED` at the end; NUL (PostgreSQL cannot hold it) and
        half a UTF-16 pair (JSON's ``\\ud800``, which no UTF-8 holds: every answer with the
        customer's data, their export too, failed to encode): U+FFFD; a number or another
        JSON value: its JSON text. An address in it is masked
        (``<address>``): a bounce text quotes the recipient ("550 5.1.1 <anna@…>: no such
        user"), and an event that names no e-mail of ours (a late one of an erased
        customer) is tied to nobody, so neither export nor erasure would find it there."""
        if value is None:
            return None
        text = value if isinstance(value, str) else json.dumps(value)
        text = mask_addresses(UNSTORABLE.sub("\ufffd", text))
        return text if len(text) <= limit else text[: limit - len(CLIPPED)] + CLIPPED

    return clip


_STRING = WithJsonSchema({"type": "string"})
# a bounce's description or reason, and its type (Postmark's Type, SendGrid's type): stored
# (the type also tells a hard bounce from a soft one, by a short known name), never rejected
Reason = Annotated[str, BeforeValidator(_clip(MAX_REASON)), _STRING]
StoredType = Annotated[str, BeforeValidator(_clip(MAX_TEXT)), _STRING]
EPOCH = datetime.fromtimestamp(0, UTC)
PARIS = ZoneInfo("Europe/Paris")  # CET/CEST, the zone of Brevo's ``date``


@dataclass(frozen=True, slots=True)
class Parsed:
    """The events of one post, and what was wrong with those left out (``rejected``: one
    line per problem, ``left_out`` events)."""

    events: list[Event]
    rejected: list[str]
    left_out: int


def read(provider: str, body: bytes) -> Parsed:
    """Every event of a provider's post; ``WebhookError`` if the post as a whole is unreadable."""
    parser = PARSERS.get(provider)
    if parser is None:
        raise WebhookError(f"no webhooks for provider {provider!r}", status=404)
    try:
        document = read_json(body)
    except ValueError as exc:  # names what is wrong: not JSON, a number too long, too deep
        raise WebhookError(str(exc)) from None
    if not isinstance(document, dict | list):
        raise WebhookError("the body is neither a JSON object nor a list of them")
    items = document if isinstance(document, list) else [document]
    events: list[Event] = []
    rejected: list[str] = []
    left_out = 0
    for index, item in enumerate(items):
        found = _one(parser, index, item)
        if isinstance(found, Event):
            events.append(found)
        elif found:
            rejected += found
            left_out += 1
    return Parsed(events, rejected, left_out)


def _one(
    parser: Callable[[dict[str, Any]], Event | None], index: int, item: object
) -> Event | list[str] | None:
    """One item of a post: its event, None (a kind we do not use), or its problems."""
    if not isinstance(item, dict):
        return [f"[{index}]: is not an object"]
    try:
        return parser(item)
    except ValidationError as exc:
        return [f"[{index}].{_where(e['loc'])}: {e['msg']}" for e in exc.errors()]
    except RecursionError:  # the digest of an event nested as deep as JSON allows
        return [f"[{index}]: is nested too deeply"]


def parse(provider: str, body: bytes) -> list[Event]:
    """The events of a post that can be read (see :func:`read`)."""
    return read(provider, body).events


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(event)"


def _digest(item: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()[:32]


def _moment(value: Any, zone: tzinfo = UTC) -> datetime:
    """A provider's time: seconds since the epoch or ISO 8601 (in ``zone`` unless it says)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a number of seconds or an ISO 8601 time")
    if isinstance(value, str) and len(value) > 64:
        raise ValueError("is too long for a time")
    try:
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            at = (parsed if parsed.tzinfo else parsed.replace(tzinfo=zone)).astimezone(UTC)
        else:
            at = datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError):
        raise ValueError("is out of range") from None
    except ValueError:
        raise ValueError("is not a time (seconds or ISO 8601)") from None
    if not 1900 <= at.year <= 9000:
        raise ValueError("must lie between the years 1900 and 9000")
    return at


def _maybe_moment(value: Any) -> datetime | None:
    """No time: left out, null or empty (the next field, or the epoch, stands in)."""
    return None if value is None or value == "" else _moment(value)


def _maybe_paris_moment(value: Any) -> datetime | None:
    """Brevo's ``date``: "YYYY-MM-DD HH:MM:SS" in CET/CEST (Brevo, "Transactional webhooks":
    ``ts_event`` and ``ts_epoch`` are UTC, ``date`` is CET/CEST), read as UTC it was an hour
    or two late."""
    return None if value is None or value == "" else _moment(value, PARIS)


_TIME = {"anyOf": [{"type": "number"}, {"type": "string", "format": "date-time"}, {"type": "null"}]}
Moment = Annotated[datetime | None, BeforeValidator(_maybe_moment), WithJsonSchema(_TIME)]
ParisMoment = Annotated[
    datetime | None, BeforeValidator(_maybe_paris_moment), WithJsonSchema(_TIME)
]


def _ident(value: Any) -> Any:
    """Postmark's and Brevo's event ids are numbers: read as their decimal text."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < 2**63:
            raise ValueError("must be a number from 0 to 2^63 - 1")
        return str(value)
    return value


Ident = Annotated[
    Text,
    BeforeValidator(_ident),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string"}]}),
]


def _kinds(names: Collection[str]) -> Any:
    """The field naming an event's kind; the schema lists those recocamp reads (others are
    ignored, so generated examples reach the fields that matter)."""
    return WithJsonSchema(
        {
            "type": "string",
            "enum": sorted(names),
            "description": "Other kinds are accepted and ignored.",
        }
    )


POSTMARK_KINDS = {
    "Delivery": "delivered",
    "SpamComplaint": "complained",
    "Open": "opened",
    "Click": "clicked",
    "SubscriptionChange": "unsubscribed",
}
# Postmark's bounce types that are the address's own record (it does not exist, is not an
# address, was turned off). Not ``Blocked`` ("ISP block: blocked from this ISP due to
# content or blacklisting") nor ``SpamNotification``
# ("delivered, but … classified as spam, bulk mail, or had rejected content"): those are about
# our message or our sending IP, like SendGrid's ``blocked``, and suppressing every recipient
# of a mailbox provider for good over one bad day would lose them; soft bounces, which
# suppress nobody. Postmark deactivates only hard bounces and spam complaints itself, and says
# so in ``Inactive``, which makes any type hard.
HARD_BOUNCES = frozenset(
    {
        "HardBounce",
        "BadEmailAddress",
        "ManuallyDeactivated",
    }
)
# ``Unsubscribe`` ("Unsubscribe or Remove request"): the recipient answered asking to be taken
# off, an opt-out like a click on the unsubscribe link (``unsubscribed_at``, audited, lifted
# by a re-subscription), not a dead address: as a hard bounce its suppression outlived
# every later consent, and the customer's page said "subscribed"
OPT_OUT_BOUNCES = {"Unsubscribe": "unsubscribed"}
POSTMARK_TIMES = ("BouncedAt", "DeliveredAt", "ChangedAt", "ReceivedAt")
# A SubscriptionChange is posted whenever an address joins a stream's suppression list:
# "after a Hard Bounce, Spam Complaint, Unsubscribe, or Manual Suppression" (Postmark,
# "Subscription change webhook"), named in SuppressionReason. Only an unsubscribe or a manual
# suppression is an opt-out; one after a hard bounce is that bounce (which is no opt-out:
# the customer's unsubscribed_at stays unset), one after a complaint that complaint.
SUPPRESSION_REASONS = {"HardBounce": "bounced", "SpamComplaint": "complained"}

SENDGRID_KINDS = {
    "delivered": "delivered",
    "spamreport": "complained",
    "open": "opened",
    "click": "clicked",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
}
# SendGrid drops a message without trying it, and says why: the address's own record
# (suppress it as that record says) or something about the message or the account (an
# invalid SMTPAPI header, spam content, a quota: suppressing the recipient for good over our
# own mistake would lose them; recorded as a soft bounce, which suppresses nobody)
SENDGRID_DROPS = {
    "bounced address": "bounced",
    "invalid": "bounced",
    "spam reporting address": "complained",
    "unsubscribed address": "unsubscribed",
}

BREVO_KINDS = {
    "delivered": "delivered",
    "hard_bounce": "bounced",
    "soft_bounce": "soft_bounced",
    "spam": "complained",
    "unsubscribed": "unsubscribed",
    "opened": "opened",
    "unique_opened": "opened",
    "click": "clicked",
    "invalid_email": "bounced",
    "blocked": "bounced",
}


class _Payload(BaseModel):
    """The fields of one provider event that recocamp reads; the others are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class _PostmarkMetadata(_Payload):
    send_key: Text | None = None


class PostmarkEvent(_Payload):
    record_type: Annotated[Text, _kinds({"Bounce", *POSTMARK_KINDS})] = Field(alias="RecordType")
    id: Ident | None = Field(None, alias="ID")
    message_id: Text | None = Field(None, alias="MessageID")
    email: Address | None = Field(None, alias="Email")
    recipient: Address | None = Field(None, alias="Recipient")
    metadata: _PostmarkMetadata | None = Field(None, alias="Metadata")
    type: StoredType | None = Field(None, alias="Type")
    description: Reason | None = Field(None, alias="Description")
    inactive: bool | None = Field(None, alias="Inactive")
    suppress_sending: bool | None = Field(None, alias="SuppressSending")
    suppression_reason: StoredType | None = Field(None, alias="SuppressionReason")
    bounced_at: Moment = Field(None, alias="BouncedAt")
    delivered_at: Moment = Field(None, alias="DeliveredAt")
    changed_at: Moment = Field(None, alias="ChangedAt")
    received_at: Moment = Field(None, alias="ReceivedAt")


def _postmark(item: dict[str, Any]) -> Event | None:
    record = item.get("RecordType")
    if not isinstance(record, str) or (record != "Bounce" and record not in POSTMARK_KINDS):
        return None  # a kind we do not use: not read
    e = PostmarkEvent.model_validate(item)
    kind = POSTMARK_KINDS.get(e.record_type)
    if e.record_type == "Bounce":
        hard = e.inactive or e.type in HARD_BOUNCES
        kind = OPT_OUT_BOUNCES.get(e.type or "") or ("bounced" if hard else "soft_bounced")
    if e.record_type == "SubscriptionChange":
        if not e.suppress_sending:  # a reactivation: nothing of ours to change
            return None
        kind = SUPPRESSION_REASONS.get(e.suppression_reason or "", "unsubscribed")
    if kind is None:
        return None
    raw_at = next((item[k] for k in POSTMARK_TIMES if item.get(k)), 0)  # the key as before
    at = e.bounced_at or e.delivered_at or e.changed_at or e.received_at or EPOCH
    # no ID (deliveries, opens, clicks, subscription changes): the message and the time; no
    # message either (a suppression made through Postmark's API or UI: MessageID null), the
    # whole event, whose address tells one of a bulk suppression's events from the next
    ident = e.id or (f"{e.message_id}:{raw_at}" if e.message_id else _digest(item))
    return Event(
        provider="postmark",
        kind=kind,
        event_key=f"postmark:{e.record_type}:{ident}",
        at=at,
        email=e.email or e.recipient,
        message_id=e.message_id,
        send_key=e.metadata.send_key if e.metadata else None,
        details={"type": e.type, "description": e.description},
    )


class SendgridEvent(_Payload):
    event: Annotated[Text, _kinds({"bounce", "dropped", *SENDGRID_KINDS})]
    type: StoredType | None = None
    sg_message_id: Text | None = None
    sg_event_id: Text | None = None
    timestamp: Moment = None
    email: Address | None = None
    send_key: Text | None = None
    reason: Reason | None = None


def _sendgrid(item: dict[str, Any]) -> Event | None:
    name = item.get("event")
    if not isinstance(name, str) or (name not in ("bounce", "dropped", *SENDGRID_KINDS)):
        return None
    e = SendgridEvent.model_validate(item)
    kind = SENDGRID_KINDS.get(e.event)
    if e.event == "bounce":
        kind = "soft_bounced" if e.type == "blocked" else "bounced"
    elif e.event == "dropped":
        kind = SENDGRID_DROPS.get((e.reason or "").strip().lower(), "soft_bounced")
    assert kind is not None
    message_id = (e.sg_message_id or "").split(".")[0] or None
    return Event(
        provider="sendgrid",
        kind=kind,
        event_key=f"sendgrid:{e.sg_event_id or _digest(item)}",
        at=e.timestamp or EPOCH,
        email=e.email,
        message_id=message_id,
        send_key=e.send_key,
        details={"reason": e.reason},
    )


class BrevoEvent(_Payload):
    event: Annotated[Text, _kinds(BREVO_KINDS)]
    id: Ident | None = None
    message_id: Text | None = Field(None, alias="message-id")
    email: Address | None = None
    ts_event: Moment = None
    date: ParisMoment = None
    reason: Reason | None = None
    # the header Brevo echoes in every event: the send key we set it to (``esp.brevo``)
    custom: Text | None = Field(None, alias="X-Mailin-custom")


def _brevo(item: dict[str, Any]) -> Event | None:
    name = item.get("event")
    if not isinstance(name, str) or name not in BREVO_KINDS:
        return None
    e = BrevoEvent.model_validate(item)
    # Brevo's id is the webhook's, not the event's: the key adds the kind, the message and
    # the address, digested (a key is kept for as long as the event, tied to nobody when
    # the event names no e-mail of ours, so it must not hold the address itself)
    parts = {"id": e.id, "event": e.event, "message-id": e.message_id, "email": e.email}
    key = f"{e.id}:{_digest(parts)}" if e.id else _digest(item)
    return Event(
        provider="brevo",
        kind=BREVO_KINDS[e.event],
        event_key=f"brevo:{key}",
        at=e.ts_event or e.date or EPOCH,
        email=e.email,
        message_id=e.message_id,
        send_key=e.custom,
        details={"reason": e.reason},
    )


PARSERS: dict[str, Callable[[dict[str, Any]], Event | None]] = {
    "postmark": _postmark,
    "sendgrid": _sendgrid,
    "brevo": _brevo,
}
MODELS: dict[str, type[_Payload]] = {
    "postmark": PostmarkEvent,
    "sendgrid": SendgridEvent,
    "brevo": BrevoEvent,
}


def json_schema() -> dict[str, Any]:
    """The JSON schema of a post (one event or a list; any provider's), for the OpenAPI
    document: what schemathesis generates hostile webhooks from."""
    events = [_inline(model.model_json_schema(by_alias=True)) for model in MODELS.values()]
    return {"anyOf": [*events, {"type": "array", "items": {"anyOf": events}}]}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its ``$defs`` references replaced by the definitions themselves."""
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(definitions[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return dict(resolve(schema))
