"""Provider webhooks, pure: every provider's payloads → events, and their authentication."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from recocamp.data import profiles
from recocamp.delivery.esp.fake_server import postmark_event
from recocamp.delivery.webhooks import (
    Event,
    WebhookError,
    check_sendgrid_signature,
    check_shared_secret,
    parse,
    read,
)
from recocamp.store import contacts
from recocamp.store.schema import contact_events, customers, suppressions
from tests.delivery.test_deliver import email as delivery_email
from tests.delivery.test_deliver import store as store_emails

AT = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
MESSAGE_ID = "0d3c2a4e-5b6f-4a1b-9c8d-7e6f5a4b3c2d"
RECORD: dict[str, Any] = {
    "MessageID": MESSAGE_ID,
    "To": "anna@example.test",
    "Metadata": {"send_key": "winback/c1/2026-01-15"},
}


def body(document: object) -> bytes:
    return json.dumps(document).encode()


def one(provider: str, document: object) -> Event:
    events = parse(provider, body(document))
    assert len(events) == 1, events
    return events[0]


# -- Postmark -------------------------------------------------------------------------------


def test_postmark_hard_bounce_from_the_fake_server_payload() -> None:
    event = one("postmark", postmark_event("bounce", RECORD, AT))
    assert event.provider == "postmark"
    assert event.kind == "bounced"
    assert event.email == "anna@example.test"
    assert event.message_id == MESSAGE_ID
    assert event.send_key == "winback/c1/2026-01-15"
    assert event.at == AT
    assert event.event_key.startswith("postmark:Bounce:")
    assert event.details["type"] == "HardBounce"


@pytest.mark.parametrize(
    ("bounce_type", "inactive", "kind"),
    [
        ("HardBounce", False, "bounced"),
        ("HardBounce", True, "bounced"),
        ("SoftBounce", True, "bounced"),  # Postmark deactivated the address: treat as hard
        ("SoftBounce", False, "soft_bounced"),
        ("Transient", False, "soft_bounced"),
        ("BadEmailAddress", False, "bounced"),
        ("Unsubscribe", False, "unsubscribed"),  # the recipient asked by mail: an opt-out
        ("Unsubscribe", True, "unsubscribed"),
        # about our message or sending IP, not the address (an ISP's block of a whole run
        # suppressed every recipient at that ISP for good)
        ("Blocked", False, "soft_bounced"),
        ("SpamNotification", False, "soft_bounced"),
        ("Blocked", True, "bounced"),  # unless Postmark deactivated the address itself
    ],
)
def test_postmark_bounce_hard_or_soft(bounce_type: str, inactive: bool, kind: str) -> None:
    payload = postmark_event("bounce", RECORD, AT) | {"Type": bounce_type, "Inactive": inactive}
    assert one("postmark", payload).kind == kind


@pytest.mark.parametrize(
    ("fake_kind", "kind", "email_key"),
    [
        ("complaint", "complained", "Email"),
        ("delivery", "delivered", "Recipient"),
        ("unsubscribe", "unsubscribed", "Recipient"),
    ],
)
def test_postmark_other_record_types(fake_kind: str, kind: str, email_key: str) -> None:
    payload = postmark_event(fake_kind, RECORD, AT)
    assert email_key in payload  # the address comes from the field Postmark uses
    event = one("postmark", payload)
    assert (event.kind, event.email, event.at) == (kind, "anna@example.test", AT)
    assert (event.message_id, event.send_key) == (MESSAGE_ID, "winback/c1/2026-01-15")


def test_postmark_subscription_change_without_suppression_is_no_event() -> None:
    payload = postmark_event("unsubscribe", RECORD, AT) | {"SuppressSending": False}
    assert parse("postmark", body(payload)) == []


def test_postmark_without_metadata_has_no_send_key() -> None:
    payload = postmark_event("delivery", RECORD | {"Metadata": {}}, AT) | {"Metadata": None}
    event = one("postmark", payload)
    assert event.send_key is None
    assert event.message_id == MESSAGE_ID


def test_postmark_unknown_record_type_is_ignored() -> None:
    payload = postmark_event("delivery", RECORD, AT) | {"RecordType": "Whatever"}
    assert parse("postmark", body(payload)) == []


def test_postmark_event_key_is_stable_and_distinguishes_events() -> None:
    bounce = postmark_event("bounce", RECORD, AT)
    first = one("postmark", bounce)
    again = one("postmark", json.loads(json.dumps(bounce)))
    assert first.event_key == again.event_key
    later_delivery = one("postmark", postmark_event("delivery", RECORD, AT + timedelta(hours=1)))
    delivery = one("postmark", postmark_event("delivery", RECORD, AT))
    assert len({first.event_key, delivery.event_key, later_delivery.event_key}) == 3
    other = RECORD | {"MessageID": "1f3c2a4e-5b6f-4a1b-9c8d-7e6f5a4b3c2d"}
    assert one("postmark", postmark_event("bounce", other, AT)).event_key != first.event_key


# -- SendGrid -------------------------------------------------------------------------------

SG_BASE: dict[str, Any] = {
    "email": "bert@example.test",
    "timestamp": int(AT.timestamp()),
    "sg_message_id": "abc123.filterdrecv-5645d9c87f-78xgx-1-5E8D2A37-3C.0",
    "send_key": "winback/c2/2026-01-15",
    "campaign": "winback",
}


def sendgrid_batch() -> list[dict[str, Any]]:
    kinds = [
        {"event": "processed"},
        {"event": "delivered", "response": "250 OK"},
        {"event": "bounce", "type": "bounce", "reason": "550 5.1.1 no such user"},
        {"event": "bounce", "type": "blocked", "reason": "421 try later"},
        {"event": "spamreport"},
        {"event": "unsubscribe"},
        {"event": "deferred"},
    ]
    return [SG_BASE | extra | {"sg_event_id": f"ev{n}"} for n, extra in enumerate(kinds)]


def test_sendgrid_batch_maps_each_event() -> None:
    events = parse("sendgrid", body(sendgrid_batch()))
    assert [e.kind for e in events] == [
        "delivered",
        "bounced",
        "soft_bounced",
        "complained",
        "unsubscribed",
    ]
    assert {e.message_id for e in events} == {"abc123"}
    assert {e.send_key for e in events} == {"winback/c2/2026-01-15"}
    assert {e.email for e in events} == {"bert@example.test"}
    assert {e.at for e in events} == {AT}
    assert [e.event_key for e in events] == [f"sendgrid:ev{n}" for n in (1, 2, 3, 4, 5)]
    assert events[1].details == {"reason": "550 5.1.1 no such user"}


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("Bounced Address", "bounced"),  # the address's own record: suppressed as it says
        ("Invalid", "bounced"),
        ("Spam Reporting Address", "complained"),
        ("unsubscribed address", "unsubscribed"),  # SendGrid's case varies
        ("Invalid SMTPAPI header", "soft_bounced"),  # about our message: nobody suppressed
        ("Spam Content (if Spam Checker app is enabled)", "soft_bounced"),
        ("Recipient List over Package Quota", "soft_bounced"),
        (None, "soft_bounced"),
    ],
)
def test_a_sendgrid_drop_suppresses_only_for_the_address_own_record(
    reason: str | None, kind: str
) -> None:
    """A dropped message was never tried: only a drop for the address's record (bounced,
    reported spam, unsubscribed, invalid) is about the recipient; one about our message or
    account must not suppress a customer for good."""
    item = SG_BASE | {"event": "dropped"} | ({"reason": reason} if reason else {})
    assert one("sendgrid", item).kind == kind


def test_sendgrid_without_event_id_uses_a_stable_digest() -> None:
    item = SG_BASE | {"event": "delivered"}
    first, second = one("sendgrid", item), one("sendgrid", dict(reversed(item.items())))
    assert first.event_key == second.event_key
    assert first.event_key.startswith("sendgrid:") and len(first.event_key) > len("sendgrid:")
    assert one("sendgrid", item | {"timestamp": 1}).event_key != first.event_key


def test_sendgrid_without_message_id() -> None:
    item = {k: v for k, v in SG_BASE.items() if k != "sg_message_id"} | {"event": "delivered"}
    assert one("sendgrid", item).message_id is None


# -- Brevo ----------------------------------------------------------------------------------

BREVO_BASE: dict[str, Any] = {
    "id": 26224,
    "email": "cleo@example.test",
    "date": "2026-01-15 13:00:00",
    "ts_event": int(AT.timestamp()),
    "message-id": "<202601151200.12345678901@smtp-relay.mailin.fr>",
    "subject": "We miss you",
}


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("hard_bounce", "bounced"),
        ("soft_bounce", "soft_bounced"),
        ("spam", "complained"),
        ("delivered", "delivered"),
        ("unsubscribed", "unsubscribed"),
    ],
)
def test_brevo_events(name: str, kind: str) -> None:
    event = one("brevo", BREVO_BASE | {"event": name, "reason": "why"})
    assert event.provider == "brevo"
    assert event.kind == kind
    assert event.email == "cleo@example.test"
    assert event.message_id == "<202601151200.12345678901@smtp-relay.mailin.fr>"
    assert event.at == AT  # ts_event wins over the local-time "date"
    assert event.send_key is None
    assert event.details == {"reason": "why"}


def test_brevo_event_keys_differ_per_message_and_kind() -> None:
    delivered = one("brevo", BREVO_BASE | {"event": "delivered"})
    assert delivered.event_key == one("brevo", BREVO_BASE | {"event": "delivered"}).event_key
    bounced = one("brevo", BREVO_BASE | {"event": "hard_bounce"})
    other = one("brevo", BREVO_BASE | {"event": "delivered", "message-id": "<other@x>"})
    assert len({delivered.event_key, bounced.event_key, other.event_key}) == 3


def test_stored_event_keys_and_reasons_hold_no_address() -> None:
    """A contact event is kept for two years, and one that names no e-mail of ours (a late
    bounce of an erased customer: their provider ids are gone) is tied to nobody, so neither
    export nor erasure finds it. Brevo's key held the address itself, and a bounce text
    quotes it: both are kept without it now (the key digests it, the text masks it)."""
    quoted = "550 5.1.1 <Cleo@Example.test>: Recipient address rejected; cleo@example.test"
    bounced = one("brevo", BREVO_BASE | {"event": "hard_bounce", "reason": quoted})
    assert bounced.email == "cleo@example.test"  # still what suppresses the address
    assert "cleo" not in bounced.event_key.lower() and bounced.event_key.startswith("brevo:")
    assert bounced.details == {
        "reason": "550 5.1.1 <<address>>: Recipient address rejected; <address>"
    }
    someone_else = one("brevo", BREVO_BASE | {"event": "hard_bounce", "email": "dan@example.test"})
    assert someone_else.event_key != bounced.event_key
    postmark = one("postmark", postmark_event("bounce", RECORD, AT) | {"Description": quoted})
    assert "cleo" not in json.dumps(postmark.details).lower()


def test_brevo_unknown_event_is_ignored() -> None:
    assert parse("brevo", body(BREVO_BASE | {"event": "request"})) == []


# -- unreadable bodies and unknown providers --------------------------------------------------


@pytest.mark.parametrize("raw", [b"not json", b"{", b"\xff\xfe", b""])
def test_body_that_is_not_json_is_400(raw: bytes) -> None:
    with pytest.raises(WebhookError) as caught:
        parse("postmark", raw)
    assert caught.value.status == 400


@pytest.mark.parametrize("provider", ["mailpit", "fake", "unknown"])
def test_unknown_provider_is_404(provider: str) -> None:
    with pytest.raises(WebhookError) as caught:
        parse(provider, body(postmark_event("bounce", RECORD, AT)))
    assert caught.value.status == 404


def test_non_object_items_are_skipped() -> None:
    document = [1, "x", None, postmark_event("delivery", RECORD, AT)]
    assert [e.kind for e in parse("postmark", body(document))] == ["delivered"]


# -- shared secret (Postmark, Brevo) --------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    "headers",
    [
        basic("postmark", "s3cret"),
        basic("", "s3cret"),
        basic("anyone", "s3cret"),
        {"authorization": "Bearer s3cret"},
        {"authorization": "bearer s3cret"},
    ],
)
def test_shared_secret_accepted(headers: dict[str, str]) -> None:
    """Accepted: the check returns without raising (a refusal raises WebhookError)."""
    check_shared_secret(headers, "s3cret")


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": ""},
        basic("postmark", "wrong"),
        basic("s3cret", ""),  # the secret as user name is not the password
        basic("postmark", "s3cret-and-more"),
        {"authorization": "Bearer wrong"},
        {"authorization": "Bearer"},
        {"authorization": "s3cret"},
        {"authorization": "Token s3cret"},
        {"authorization": "Basic not-base64!"},
        {"authorization": "Basic " + base64.b64encode(b"\xff:\xfe").decode()},
    ],
)
def test_shared_secret_refused(headers: dict[str, str]) -> None:
    with pytest.raises(WebhookError) as caught:
        check_shared_secret(headers, "s3cret")
    assert caught.value.status == 401


@pytest.mark.parametrize("secret", [None, ""])
def test_shared_secret_not_configured_is_503(secret: str | None) -> None:
    with pytest.raises(WebhookError) as caught:
        check_shared_secret({"authorization": "Bearer "}, secret)
    assert caught.value.status == 503


# -- SendGrid signature ---------------------------------------------------------------------

SIGNATURE = "x-twilio-email-event-webhook-signature"
TIMESTAMP = "x-twilio-email-event-webhook-timestamp"
PRIVATE = ec.generate_private_key(ec.SECP256R1())
PUBLIC = base64.b64encode(
    PRIVATE.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
).decode()
SG_BODY = body(sendgrid_batch())


def signed(
    payload: bytes, at: datetime, key: ec.EllipticCurvePrivateKey = PRIVATE
) -> dict[str, str]:
    stamp = str(int(at.timestamp()))
    signature = key.sign(stamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    return {SIGNATURE: base64.b64encode(signature).decode(), TIMESTAMP: stamp}


@pytest.mark.parametrize("age", [timedelta(0), timedelta(seconds=599), timedelta(seconds=-30)])
def test_sendgrid_signature_accepted(age: timedelta) -> None:
    """Accepted: the check returns without raising (a refusal raises WebhookError)."""
    check_sendgrid_signature(signed(SG_BODY, AT - age), SG_BODY, PUBLIC, AT)


def refused(headers: dict[str, str], payload: bytes = SG_BODY, key: str = PUBLIC) -> int:
    with pytest.raises(WebhookError) as caught:
        check_sendgrid_signature(headers, payload, key, AT)
    return caught.value.status


def test_sendgrid_tampered_body_is_401() -> None:
    headers = signed(SG_BODY, AT)
    assert refused(headers, SG_BODY.replace(b"bert@", b"eve@@")) == 401
    assert refused(headers, SG_BODY + b" ") == 401


def test_sendgrid_stale_or_future_timestamp_is_401() -> None:
    assert refused(signed(SG_BODY, AT - timedelta(seconds=601))) == 401
    assert refused(signed(SG_BODY, AT + timedelta(seconds=601))) == 401


def test_sendgrid_timestamp_is_part_of_what_is_signed() -> None:
    headers = signed(SG_BODY, AT) | {TIMESTAMP: str(int(AT.timestamp()) - 1)}
    assert refused(headers) == 401


def test_sendgrid_signed_by_another_key_is_401() -> None:
    assert refused(signed(SG_BODY, AT, ec.generate_private_key(ec.SECP256R1()))) == 401


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {TIMESTAMP: str(int(AT.timestamp()))},
        {SIGNATURE: "!!!not base64", TIMESTAMP: str(int(AT.timestamp()))},
        {SIGNATURE: base64.b64encode(b"junk").decode(), TIMESTAMP: str(int(AT.timestamp()))},
        {SIGNATURE: "", TIMESTAMP: "soon"},
        {SIGNATURE: "", TIMESTAMP: "-1"},
    ],
)
def test_sendgrid_missing_or_malformed_headers_are_401(headers: dict[str, str]) -> None:
    assert refused(headers) == 401


def test_sendgrid_public_key_that_is_not_a_key_is_401() -> None:
    assert refused(signed(SG_BODY, AT), key=base64.b64encode(b"not a key").decode()) == 401


def test_sendgrid_unicode_digit_timestamp_is_401() -> None:
    headers = signed(SG_BODY, AT) | {TIMESTAMP: "\u00b2"}  # '²', a latin-1 header byte
    assert refused(headers) == 401


@pytest.mark.parametrize("key", [None, ""])
def test_sendgrid_without_public_key_is_503(key: str | None) -> None:
    with pytest.raises(WebhookError) as caught:
        check_sendgrid_signature(signed(SG_BODY, AT), SG_BODY, key, AT)
    assert caught.value.status == 503


# -- typed reading: wrong fields reject the event, never the post ----------------------------


def test_an_empty_time_falls_back_to_the_next_and_a_numeric_id_is_its_text() -> None:
    payload = {
        "RecordType": "Bounce",
        "ID": 42,
        "Email": "anna@example.test",
        "BouncedAt": "",
        "ReceivedAt": "2026-01-15T07:00:00.1234567-05:00",
        "Type": "HardBounce",
    }
    event = one("postmark", payload)
    assert event.at == AT + timedelta(microseconds=123456)  # 7 digits, as Postmark sends
    assert event.event_key == "postmark:Bounce:42"


@pytest.mark.parametrize("kind", [["Bounce"], {"a": 1}, 7, None])
def test_a_kind_that_is_not_text_is_ignored_like_any_unknown_kind(kind: object) -> None:
    parsed = read("postmark", body({"RecordType": kind, "Email": ["x"]}))
    assert (parsed.events, parsed.rejected) == ([], [])


@pytest.mark.parametrize(
    ("stamp", "ok"),
    [
        (int(AT.timestamp()), True),
        (AT.timestamp() + 0.5, True),
        ("2026-01-15T12:00:00Z", True),
        ("2026-01-15 12:00:00", True),
        (-2208988800, True),
        (-2208988801, False),
        (1e20, False),
        (253402300800, False),
        ("9999-12-31T23:59:59-01:00", False),
        (True, False),
        ("x" * 65, False),
        ({"t": 1}, False),
    ],
)
def test_times_are_read_within_1900_to_9000(stamp: object, ok: bool) -> None:
    parsed = read("sendgrid", body([{"event": "delivered", "timestamp": stamp}]))
    assert (len(parsed.events), len(parsed.rejected)) == ((1, 0) if ok else (0, 1))


def test_sendgrid_timestamp_of_thousands_of_digits_is_401_not_a_crash() -> None:
    """``int()`` refuses more than 4,300 digits with ValueError: the check crashed (500)."""
    assert refused(signed(SG_BODY, AT) | {TIMESTAMP: "9" * 5000}) == 401


@pytest.mark.parametrize(
    ("date", "utc"),
    [
        ("2026-01-15 13:00:00", datetime(2026, 1, 15, 12, 0, tzinfo=UTC)),  # CET, UTC+1
        ("2026-07-15 14:00:00", datetime(2026, 7, 15, 12, 0, tzinfo=UTC)),  # CEST, UTC+2
    ],
)
def test_a_brevo_date_without_ts_event_is_paris_time(date: str, utc: datetime) -> None:
    """Brevo ("Transactional webhooks"): ts_event and ts_epoch are UTC, ``date`` is CET/CEST;
    read as UTC, an event without ts_event was one or two hours late."""
    payload = {k: v for k, v in BREVO_BASE.items() if k != "ts_event"}
    assert one("brevo", payload | {"event": "hard_bounce", "date": date}).at == utc


def test_long_event_keys_are_stored_once_per_event(engine: sa.Engine) -> None:
    """Keys were cut to their first 200 characters: two events whose provider ids differed
    only after that were one, and the second was dropped as a duplicate. A long key keeps
    its start and the SHA-256 of the whole; the same event again is still a duplicate."""
    at = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    prefix = "postmark:Open:" + "x" * 200

    def opened(suffix: str) -> Event:
        return Event(provider="postmark", kind="opened", event_key=prefix + suffix, at=at)

    with engine.begin() as connection:
        first = contacts.apply(connection, [opened("a"), opened("b")], at)
        again = contacts.apply(connection, [opened("b")], at)
        keys = connection.execute(sa.select(contact_events.c.event_key)).scalars().all()
    assert (first.new, first.duplicates, again.new, again.duplicates) == (2, 0, 0, 1)
    assert len(keys) == 2 and all(len(k) == 200 and k.startswith("postmark:Open:x") for k in keys)
    assert contacts.bounded_key("short") == "short"


def test_an_opt_out_dated_in_the_future_counts_from_when_it_arrived(engine: sa.Engine) -> None:
    """A provider's clock (or whoever writes the time field) dated an unsubscribe in the year
    8000, and recocamp took it as the customer's ``unsubscribed_at``: re-subscribing needs a
    consent after the unsubscribe, and no consent may lie in the future, so the customer
    could never be mailed again; the retention purge, which deletes events older than its
    horizon, never reached the event either. An event cannot have happened after it came."""
    sent = delivery_email(0)
    store_emails(engine, [sent])
    now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    future = datetime(8000, 1, 1, tzinfo=UTC)
    unsubscribed = Event("sendgrid", "unsubscribed", "sg:1", future, send_key=sent.send_key)
    with engine.begin() as connection:
        contacts.apply(connection, [unsubscribed], now)
    with engine.begin() as connection:
        opted_out = connection.execute(
            sa.select(customers.c.unsubscribed_at).where(customers.c.id == "c0")
        ).scalar_one()
        [stored] = connection.execute(sa.select(contact_events.c.at)).scalars().all()
        assert (opted_out, stored) == (now, now)
        later = now + timedelta(days=1)
        changed = profiles.apply(
            connection,
            "c0",
            {"consent_basis": "double_opt_in", "consent_at": later},
            at=later,
            actor="test",
            source="test",
            unsubscribed=False,
        )
    assert "resubscribed" in changed.fields


@pytest.mark.parametrize("kind", ["complained", "bounced"])
def test_a_complaint_or_bounce_after_an_unsubscribe_outlives_a_re_subscription(
    engine: sa.Engine, kind: str
) -> None:
    """Re-subscribing lifts the unsubscribe's suppression, and bounces and complaints stay.
    The customer unsubscribed by the link, then reported the mail as spam (or the address
    bounced): the suppression kept its first reason, "unsubscribed", and the
    re-subscription lifted it, so a complainer (a dead address) was mailed again. A
    bounce, complaint or rejection now replaces an unsubscribe's reason."""
    sent = delivery_email(0)
    store_emails(engine, [sent])
    now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    later = now + timedelta(days=1)
    reported = Event("postmark", kind, "pm:1", now + timedelta(hours=1), send_key=sent.send_key)
    with engine.begin() as connection:
        assert contacts.record_link_unsubscribe(connection, "c0", "winback", now, now)
        contacts.apply(connection, [reported], now + timedelta(hours=1))
        profiles.apply(
            connection,
            "c0",
            {"consent_basis": "double_opt_in", "consent_at": later},
            at=later,
            actor="test",
            source="test",
            unsubscribed=False,
        )
    with engine.connect() as connection:
        reasons = connection.execute(sa.select(suppressions.c.reason)).scalars().all()
    assert reasons == [kind]
