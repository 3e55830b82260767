"""Postmark's documented API as pure functions: what the fake ESP checks and answers.

The fake ESP (:mod:`recocamp.esp.fake_server`) is only useful if a real Postmark client
cannot tell it from Postmark, so every rule here comes from Postmark's API reference
(postmarkapp.com/developer): the message fields and their limits (Email API), the error
codes and HTTP statuses (API overview), the search parameters (Messages API, Bounce API)
and the shapes of the answers, checked against responses recorded from the real service
(postmarker's test cassettes). Where the reference is silent the fake picks one answer and
the README lists it under "Where the fake ESP differs from Postmark".

Nothing here reads the clock or does I/O; the server passes ``now`` in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from email.message import EmailMessage
from email.utils import getaddresses
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

EASTERN = ZoneInfo("America/New_York")  # "Our API uses Eastern Time Zone"
STREAMS = {"outbound": "Transactional", "broadcast": "Broadcasts", "inbound": "Inbound"}
MAX_BATCH = 500
MAX_RECIPIENTS = 50  # To + Cc + Bcc
MAX_EMAIL_BYTES = 10 * 1024 * 1024  # /email
MAX_BATCH_BYTES = 50 * 1024 * 1024  # /email/batch
MAX_PAGE = 500
MAX_WINDOW = 10_000  # count + offset
LIMITS = {
    "From": 255,
    "Subject": 2000,
    "Tag": 1000,
    "TextBody": 5 * 1024 * 1024,
    "HtmlBody": 5 * 1024 * 1024,
}
# Postmark's answer to a longer metadata name or value (ErrorCode 300, HTTP 422 for /email):
# "Invalid metadata content. Field names are limited to 20 characters and field values are
# limited to 80 characters in length."
METADATA_NAME_MAX = 20
METADATA_VALUE_MAX = 80
TRACK_LINKS = ("None", "HtmlAndText", "HtmlOnly", "TextOnly")
# Postmark's support article "What does Error Code 300 mean?" gives these two patterns
MAILBOX = re.compile(r"^[a-z0-9.!#$%&'`*+\-/=^_{}|~]+$", re.IGNORECASE)
DOMAIN = re.compile(r"^((\.)?[a-zA-Z0-9\-])+$")
BOUNCE_TYPES = {
    "bounce": ("HardBounce", 1, "Hard bounce", True),
    "complaint": ("SpamComplaint", 100001, "Spam complaint", False),  # 512: SpamNotification
}
STRING_FIELDS = (
    "From",
    "To",
    "Cc",
    "Bcc",
    "ReplyTo",
    "Subject",
    "Tag",
    "HtmlBody",
    "TextBody",
    "MessageStream",
    "TrackLinks",
)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A Postmark error answer: HTTP status and the ``{"ErrorCode", "Message"}`` body."""

    status: int
    code: int
    message: str

    def body(self) -> dict[str, Any]:
        return {"ErrorCode": self.code, "Message": self.message}


def unauthorised(given: str | None) -> Refusal:
    """ErrorCode 10 with HTTP 401, worded as Postmark words a missing and a wrong token."""
    if not given:
        return Refusal(
            401,
            10,
            "No Account or Server API tokens were supplied in the HTTP "
            "headers. Please add a header for either X-Postmark-Server-Token or "
            "X-Postmark-Account-Token.",
        )
    return Refusal(
        401,
        10,
        "The Server Token you provided in the X-Postmark-Server-Token "
        "request header was invalid. "
        "Please verify that you are using a valid token.",
    )


def invalid(message: str) -> Refusal:
    """ErrorCode 300 (send validation), HTTP 422. Messages never repeat an address."""
    return Refusal(422, 300, message)


def field_error(name: str) -> Refusal:
    return Refusal(422, 403, f"Invalid request field(s): '{name}'.")


def stamp(moment: datetime) -> str:
    """A timestamp the way Postmark writes one: Eastern Time with its offset."""
    return moment.astimezone(EASTERN).isoformat()


# --- sending -----------------------------------------------------------------------------


def validate(raw: object, streams: Mapping[str, str] = STREAMS) -> Refusal | dict[str, Any]:
    """One message of ``POST /email`` or ``/email/batch``, checked and normalised.

    Returns the fields the fake stores, or the refusal Postmark documents for the first
    problem: 403 for a field of the wrong type, 300 for a missing sender, recipient or body,
    an illegal address, more than 50 recipients or a field over its limit, 1235/1236 for a
    stream that does not exist or cannot send.
    """
    if not isinstance(raw, dict):
        return Refusal(422, 403, "Incompatible JSON: a message must be a JSON object.")
    typed = _typed(raw)
    if isinstance(typed, Refusal):
        return typed
    sender = _sender(raw.get("From"))
    if isinstance(sender, Refusal):
        return sender
    recipients: dict[str, list[dict[str, str]]] = {}
    for name in ("To", "Cc", "Bcc"):
        parsed = addresses(name, raw.get(name))
        if isinstance(parsed, Refusal):
            return parsed
        recipients[name] = parsed
    content = _content(raw, recipients, streams)
    if isinstance(content, Refusal):
        return content
    everyone = recipients["To"] + recipients["Cc"] + recipients["Bcc"]
    people = {
        "To": everyone[0]["Email"],
        "ToFull": recipients["To"],
        "Cc": recipients["Cc"],
        "Bcc": recipients["Bcc"],
    }
    return {"From": raw["From"], "FromEmail": sender, **people, **content, **typed}


def _typed(raw: dict[str, Any]) -> Refusal | dict[str, Any]:
    """The optional structured fields: 403 when one has the wrong JSON type, 300 when a
    metadata name or value is longer than Postmark allows."""
    for name in STRING_FIELDS:
        if raw.get(name) is not None and not isinstance(raw[name], str):
            return field_error(name)
    headers = raw.get("Headers") or []
    if isinstance(headers, dict):  # a mapping is how some clients write them
        headers = [{"Name": k, "Value": v} for k, v in headers.items()]
    if not isinstance(headers, list) or not all(
        isinstance(h, dict)
        and isinstance(h.get("Name"), str)
        and isinstance(h.get("Value", ""), str)
        for h in headers
    ):
        return field_error("Headers")
    metadata = raw.get("Metadata") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in metadata.values()
    ):
        return field_error("Metadata")
    for name, value in metadata.items():
        if len(name) > METADATA_NAME_MAX or len(str(value)) > METADATA_VALUE_MAX:
            return invalid(
                "Invalid metadata content. Field names are limited to "
                f"{METADATA_NAME_MAX} characters and field values are limited to "
                f"{METADATA_VALUE_MAX} characters in length. The '{name[:100]}' "
                "field in your metadata content exceeds these limits."
            )
    attachments = raw.get("Attachments") or []
    if not isinstance(attachments, list) or not all(
        isinstance(a, dict) and isinstance(a.get("Name"), str) for a in attachments
    ):
        return field_error("Attachments")
    if raw.get("TrackOpens") is not None and not isinstance(raw["TrackOpens"], bool):
        return field_error("TrackOpens")
    return {
        "Headers": {h["Name"]: h.get("Value", "") for h in headers},
        "Metadata": metadata,
        "Attachments": [a["Name"] for a in attachments],
        "TrackOpens": bool(raw.get("TrackOpens")),
    }


def _sender(value: object) -> Refusal | str:
    if not value:
        return invalid("Invalid 'From' value.")
    parsed = addresses("From", value)
    if isinstance(parsed, Refusal):
        return parsed
    if len(parsed) != 1 or len(str(value)) > LIMITS["From"]:
        return invalid("Invalid 'From' value.")
    return parsed[0]["Email"]


def addresses(field: str, value: object) -> Refusal | list[dict[str, str]]:
    """``"a@x, Name <b@y>"`` as Postmark lists recipients: ``[{"Email", "Name"}, …]``."""
    if not value:
        return []
    found = _parse(field, str(value))
    return found if isinstance(found, Refusal) else [dict(pair) for pair in found]


@lru_cache(maxsize=1024)  # the same From on every message of a campaign
def _parse(field: str, value: str) -> Refusal | tuple[tuple[tuple[str, str], ...], ...]:
    if any(c in value for c in '<"(\\'):
        pairs = getaddresses([value])  # names, quoting, comments: the full RFC 5322 parser
    else:  # plain "a@x, b@y": 30 times cheaper, and a batch has 500 of them
        pairs = [("", part.strip()) for part in value.split(",")]
    found = []
    for name, email in pairs:
        if not email:
            continue
        mailbox, at, domain = email.rpartition("@")
        if not at:
            return invalid(
                f"Error parsing '{field}': Illegal email address. It must contain the '@' symbol."
            )
        if not MAILBOX.match(mailbox) or not DOMAIN.match(domain):
            return invalid(f"Error parsing '{field}': Illegal email address.")
        found.append((("Email", email), ("Name", name)))
    if not found:
        return invalid(f"Error parsing '{field}': Illegal email address.")
    return tuple(found)


def _content(
    raw: dict[str, Any], recipients: dict[str, list[dict[str, str]]], streams: Mapping[str, str]
) -> Refusal | dict[str, Any]:
    everyone = sum(len(v) for v in recipients.values())
    if everyone == 0:
        return invalid("Zero recipients specified")
    if everyone > MAX_RECIPIENTS:
        return invalid(f"Maximum of {MAX_RECIPIENTS} recipients allowed per email message.")
    if not raw.get("TextBody") and not raw.get("HtmlBody"):
        return invalid("Provide either email TextBody or HtmlBody or both.")
    for name, limit in LIMITS.items():
        if len(raw.get(name) or "") > limit:
            return invalid(f"The '{name}' field is longer than {limit:,} characters.")
    stream = raw.get("MessageStream") or "outbound"
    if stream not in streams:
        return Refusal(422, 1235, "The 'MessageStream' provided does not exist on this server.")
    if streams[stream] == "Inbound":
        return Refusal(422, 1236, "Sending is not supported for this stream type.")
    track_links = raw.get("TrackLinks") or "None"
    if track_links not in TRACK_LINKS:
        return invalid(f"Invalid 'TrackLinks' value: use one of {', '.join(TRACK_LINKS)}.")
    return {
        "Subject": raw.get("Subject") or "",
        "TextBody": raw.get("TextBody"),
        "HtmlBody": raw.get("HtmlBody"),
        "Tag": raw.get("Tag"),
        "ReplyTo": raw.get("ReplyTo"),
        "MessageStream": stream,
        "TrackLinks": track_links,
    }


def recipients_of(record: Mapping[str, Any]) -> list[str]:
    return [r["Email"] for name in ("ToFull", "Cc", "Bcc") for r in record[name]]


# --- searching ---------------------------------------------------------------------------

Found = Refusal | tuple[int, list[dict[str, Any]]]  # a refusal, or the total and one page


def paging(params: Mapping[str, str], code: int) -> Refusal | tuple[int, int]:
    """``count`` (1–500) and ``offset`` are required; count + offset ≤ 10,000."""
    try:
        count, offset = int(params["count"]), int(params["offset"])
    except (KeyError, ValueError):
        return Refusal(
            422,
            code,
            "The 'count' and 'offset' query parameters are required and must be integers.",
        )
    if not 0 < count <= MAX_PAGE or offset < 0 or count + offset > MAX_WINDOW:
        return Refusal(
            422,
            code,
            f"'count' must be 1 to {MAX_PAGE}, 'offset' at least 0, "
            f"and count + offset cannot exceed {MAX_WINDOW:,}.",
        )
    return count, offset


def window(params: Mapping[str, str], code: int) -> Refusal | tuple[datetime, datetime]:
    """``fromdate``/``todate``: a date or a date/time in Eastern Time, both inclusive (a
    ``todate`` without a time covers that whole day)."""
    bounds = []
    for name, default, end in (("fromdate", datetime.min, False), ("todate", datetime.max, True)):
        value = params.get(name)
        try:
            bounds.append(_when(value, end) if value else default.replace(tzinfo=EASTERN))
        except ValueError:
            return Refusal(
                422,
                code,
                f"The '{name}' parameter must be a date or a date/time, "
                "e.g. 2021-01-01 or 2021-01-01T12:00:00.",
            )
    return bounds[0], bounds[1]


def _when(value: str, end_of_day: bool) -> datetime:
    if "T" not in value and " " not in value:
        day = date.fromisoformat(value)
        moment = datetime.combine(day, time.max if end_of_day else time.min)
    else:
        moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=EASTERN)


def listing(
    params: Mapping[str, str], code: int
) -> Refusal | tuple[tuple[int, int], tuple[datetime, datetime]]:
    """The paging and the date window every list endpoint takes, or the first refusal."""
    page, span = paging(params, code), window(params, code)
    if isinstance(page, Refusal):
        return page
    return span if isinstance(span, Refusal) else (page, span)


def newest_first(found: list[dict[str, Any]], page: tuple[int, int]) -> Found:
    """The total and one page of ``found`` (stored oldest first), newest first."""
    count, offset = page
    found.reverse()
    return len(found), found[offset : offset + count]


def search_messages(records: Iterable[dict[str, Any]], params: Mapping[str, str]) -> Found:
    """``GET /messages/outbound``: newest first; ``messagestream`` defaults to ``outbound``."""
    asked = listing(params, 700)
    if isinstance(asked, Refusal):
        return asked
    page, span = asked
    status = (params.get("status") or "sent").lower()
    if status not in ("queued", "sent", "processed"):
        return Refusal(422, 700, "The 'status' parameter must be queued, sent or processed.")
    found = [r for r in records if status != "queued" and _matches(r, params, span)]
    return newest_first(found, page)


def _matches(
    record: dict[str, Any], params: Mapping[str, str], span: tuple[datetime, datetime]
) -> bool:
    if record["MessageStream"] != (params.get("messagestream") or "outbound"):
        return False
    if not span[0] <= datetime.fromisoformat(record["ReceivedAt"]) <= span[1]:
        return False
    checks: dict[str, Callable[[str], bool]] = {
        "recipient": lambda v: v.lower() in (e.lower() for e in recipients_of(record)),
        "fromemail": lambda v: v.lower() == record["FromEmail"].lower(),
        "tag": lambda v: v == record["Tag"],
        "subject": lambda v: v.lower() in record["Subject"].lower(),
    }
    for name, value in params.items():
        if name in checks and value and not checks[name](value):
            return False
        meta = name.removeprefix("metadata_")
        if meta != name and str(record["Metadata"].get(meta)) != value:
            return False
    return True


def search_bounces(bounces: Iterable[dict[str, Any]], params: Mapping[str, str]) -> Found:
    """``GET /bounces``: filters type, inactive, emailFilter, tag, messageID, dates, stream."""
    asked = listing(params, 1000)
    if isinstance(asked, Refusal):
        return asked
    page, span = asked
    stream = params.get("messagestream") or "outbound"
    inactive = params.get("inactive")
    if inactive not in (None, "", "true", "false", "True", "False"):
        return Refusal(422, 1000, "The 'inactive' parameter must be true or false.")
    found = [
        b
        for b in bounces
        if b["MessageStream"] == stream
        and span[0] <= datetime.fromisoformat(b["BouncedAt"]) <= span[1]
        and params.get("type", b["Type"]) == b["Type"]
        and (not inactive or str(b["Inactive"]).lower() == inactive.lower())
        and params.get("emailFilter", "").lower() in b["Email"].lower()
        and params.get("tag", b["Tag"]) == b["Tag"]
        and params.get("messageID", b["MessageID"]) == b["MessageID"]
    ]
    return newest_first(found, page)


# --- answers -----------------------------------------------------------------------------


def summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """One message of the outbound search, in Postmark's field names."""
    return {
        "Tag": record["Tag"],
        "MessageID": record["MessageID"],
        "MessageStream": record["MessageStream"],
        "To": record["ToFull"],
        "Cc": record["Cc"],
        "Bcc": record["Bcc"],
        "Recipients": recipients_of(record),
        "ReceivedAt": record["ReceivedAt"],
        "From": record["From"],
        "Subject": record["Subject"],
        "Attachments": record["Attachments"],
        "Status": "Sent",
        "TrackOpens": record["TrackOpens"],
        "TrackLinks": record["TrackLinks"],
        "Metadata": record["Metadata"],
        "Sandboxed": True,
    }


def details(record: Mapping[str, Any]) -> dict[str, Any]:
    """``GET /messages/outbound/{id}/details``: the summary, the bodies, the events."""
    return {
        **summary(record),
        "TextBody": record["TextBody"] or "",
        "HtmlBody": record["HtmlBody"] or "",
        "Body": mime(record),
        "MessageEvents": record.get("Events", []),
    }


def mime(record: Mapping[str, Any]) -> str:
    """The message as the SMTP body Postmark keeps (``…/dump``): headers and both parts."""
    message = EmailMessage()
    message["From"] = record["From"]
    for name, key in (("To", "ToFull"), ("Cc", "Cc")):
        if record[key]:
            message[name] = ", ".join(r["Email"] for r in record[key])
    message["Subject"] = record["Subject"]
    message["Message-ID"] = f"<{record['MessageID']}@fake-esp.invalid>"
    for name, value in record["Headers"].items():
        message[name] = value
    if record["TextBody"]:
        message.set_content(record["TextBody"])
    if record["HtmlBody"]:
        if record["TextBody"]:
            message.add_alternative(record["HtmlBody"], subtype="html")
        else:
            message.set_content(record["HtmlBody"], subtype="html")
    if message.is_multipart():
        message.set_boundary(f"=_{record['MessageID']}")  # the same dump every time
    return message.as_string()


def event(kind: str, record: Mapping[str, Any], at: datetime) -> dict[str, Any]:
    """A ``MessageEvents`` entry of the details answer for a webhook the fake posted."""
    kinds = {
        "delivery": ("Delivered", {"DeliveryMessage": "250 OK"}),
        "bounce": ("Bounced", {"Summary": "Hard bounce"}),
        "complaint": ("Bounced", {"Summary": "Spam complaint"}),
        "unsubscribe": ("SubscriptionChanged", {"SuppressSending": "True", "Origin": "Recipient"}),
    }
    name, info = kinds[kind]
    return {"Recipient": record["To"], "ReceivedAt": stamp(at), "Type": name, "Details": info}


def bounce(kind: str, record: Mapping[str, Any], bounce_id: int, at: datetime) -> dict[str, Any]:
    """A bounce of ``GET /bounces`` for a hard bounce or spam complaint of ``record``."""
    type_, code, name, can_activate = BOUNCE_TYPES[kind]
    return {
        "RecordType": "Bounce",
        "ID": bounce_id,
        "Type": type_,
        "TypeCode": code,
        "Name": name,
        "Tag": record["Tag"] or "",
        "MessageID": record["MessageID"],
        "ServerID": 1,
        "MessageStream": record["MessageStream"],
        "Description": "The server was unable to deliver your message "
        "(ex: unknown user, mailbox not found).",
        "Details": "action: failed\r\n",
        "Email": record["To"],
        "From": record["FromEmail"],
        "BouncedAt": stamp(at),
        "DumpAvailable": False,
        "Inactive": True,
        "CanActivate": can_activate,
        "Subject": record["Subject"],
    }


def server(token: str | None, webhook_url: str | None) -> dict[str, Any]:
    """``GET /server``: the one server the fake is (a sandbox: nothing is delivered)."""
    inbound = "0" * 32
    return {
        "ID": 1,
        "Name": "recocamp fake ESP",
        "ApiTokens": [token] if token else [],
        "Color": "Purple",
        "SmtpApiActivated": False,
        "RawEmailEnabled": False,
        "DeliveryType": "Sandbox",
        "ServerLink": "",
        "InboundAddress": f"{inbound}@inbound.invalid",
        "InboundHookUrl": "",
        "BounceHookUrl": webhook_url or "",
        "OpenHookUrl": "",
        "DeliveryHookUrl": webhook_url or "",
        "ClickHookUrl": "",
        "PostFirstOpenOnly": False,
        "InboundDomain": "",
        "InboundHash": inbound,
        "InboundSpamThreshold": 0,
        "TrackOpens": False,
        "TrackLinks": "None",
        "IncludeBounceContentInHook": False,
        "EnableSmtpApiErrorHooks": False,
    }
