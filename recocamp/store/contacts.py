"""Contact events, suppressions and unsubscribes: what comes back from ESPs and customers.

Every event is stored once (unique ``event_key``); only a *new* event changes anything, so a
webhook retried by the provider, or an unsubscribe link clicked twice, is harmless.
Bounces, complaints and unsubscribes put the address's hash on the suppression list;
complaints and unsubscribes also set the customer's ``unsubscribed_at``, which every later
decision sees (and which cancels e-mails still waiting in the outbox). An event dated
after it arrived (a provider's clock, a time field anyone may write: 1900-9000 pass the
webhook's check) counts from ``now``: an ``unsubscribed_at`` in the year 8000 outlived every
consent that could re-subscribe the customer (none may lie in the future), and the
retention purge never reached the event.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from recocamp.domain import SUPPRESSING, Event, email_hash
from recocamp.store.privacy import Ties
from recocamp.store.queries import audit, suppression_insert, upsert_statement
from recocamp.store.schema import contact_events, customers, outbox
from recocamp.store.tombstones import serialise

OPT_OUTS = frozenset({"complained", "unsubscribed"})
KEY_MAX = 200  # contact_events.event_key
OUTBOX_STATES = {"delivered": "delivered", "bounced": "bounced"}
# states of an e-mail the provider took that may be recorded with an empty message id
UNRECORDED_STATES = ("sent", "delivered", "bounced")
References = Callable[[str], Sequence[str]]  # a send key → the keys its provider may know it by


@dataclass(frozen=True, slots=True)
class Applied:
    new: int
    duplicates: int


def apply(
    connection: sa.Connection,
    events: Sequence[Event],
    now: datetime,
    references: References | None = None,
) -> Applied:
    """Store the new ones of ``events`` and apply their consequences. Each event reads
    whose mail it is (the outbox row) and then writes rows naming that customer (the event,
    an audited opt-out): serialised with erasures (``tombstones.serialise``), or an erasure
    committing between the read and the write left those rows naming the erased customer.
    No events (a post of kinds recocamp does not use): no lock, nothing to wait for.
    ``references``: the send key as the provider may name it (see :func:`_outbox_row`)."""
    if not events:
        return Applied(0, 0)
    serialise(connection, erasing=False)
    new = 0
    for reported in events:
        event = replace(reported, at=now) if reported.at > now else reported
        row = _outbox_row(connection, event, references)
        inserted = connection.execute(
            upsert_statement(connection, contact_events)
            .on_conflict_do_nothing(index_elements=["event_key"])
            .returning(contact_events.c.id),
            {
                "event_key": bounded_key(event.event_key),
                "kind": event.kind,
                "provider": event.provider,
                "customer_id": row.customer_id if row else None,
                "campaign": row.campaign if row else None,
                "send_key": row.send_key if row else None,  # no e-mail of ours: an
                # erased customer's (their send keys were rewritten) or a stranger's; the key
                # names a customer, so it is not kept
                "at": event.at,
                "details": {k: v for k, v in event.details.items() if v is not None},
            },
        ).first()  # rowcount is -1 on psycopg: RETURNING tells what was inserted
        if inserted is not None:
            new += 1
            _consequences(connection, event, row, now)
    return Applied(new, len(events) - new)


def bounded_key(key: str) -> str:
    """An event key as stored: at most ``KEY_MAX`` characters, and still one per event. A
    longer one (a provider's long id, a long customer id) keeps its start and ends in the
    SHA-256 of the whole: cut to its first 200 characters, two events whose keys differed
    only after them were one, and the second was dropped as a duplicate."""
    if len(key) <= KEY_MAX:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{key[: KEY_MAX - len(digest) - 1]}~{digest}"


def _outbox_row(
    connection: sa.Connection, event: Event, references: References | None = None
) -> Any:
    """The e-mail an event is about: by the send key it names, else by the provider's
    message id. Providers name a digest of the send key (``tokens.provider_key``: Postmark's
    metadata, SendGrid's custom args, Brevo's ``X-Mailin-custom``), which only
    ``references`` turns into one; the plain send key is what mail sent by an older version
    carries. An e-mail whose provider message id is not recorded is found among those by
    their digests: one the provider accepted but whose deliverer died before it recorded the
    id (still ``claimed``, NULL id, until the next deliverer looks it up or resends it), and
    one recorded sent with an empty id (Brevo's ``duplicate_parameter`` answer to a resend, a
    SendGrid 202 without ``X-Message-Id``), whose events had no other way to it."""
    query = sa.select(
        outbox.c.id,
        outbox.c.send_key,
        outbox.c.customer_id,
        outbox.c.campaign,
        outbox.c.recipient,
        outbox.c.state,
    )
    if event.send_key:
        row = connection.execute(query.where(outbox.c.send_key == event.send_key)).first()
        if row is not None:
            return row
    if event.message_id:
        where = outbox.c.provider_message_id == event.message_id
        row = connection.execute(query.where(where)).first()
        if row is not None:
            return row
    if event.send_key and "/" not in event.send_key and references is not None:
        # a digest (a send key has a "/"): a plain key of a purged or erased e-mail (sent by
        # an older version) does not make every event of a post read the unrecorded e-mails
        unrecorded = query.where(
            sa.or_(
                sa.and_(outbox.c.state == "claimed", outbox.c.provider_message_id.is_(None)),
                sa.and_(outbox.c.state.in_(UNRECORDED_STATES), outbox.c.provider_message_id == ""),
            )
        )
        for row in connection.execute(unrecorded):
            if event.send_key in references(row.send_key):
                return row
    return None


def _consequences(connection: sa.Connection, event: Event, row: Any, now: datetime) -> None:
    address = event.email or (row.recipient if row else None)
    if event.kind in SUPPRESSING and address:
        suppress(connection, address, event.kind, event.provider, now)
    if event.kind in OPT_OUTS and row is not None:
        unsubscribe(connection, row.customer_id, event.at, source=f"{event.provider} {event.kind}")
    state = OUTBOX_STATES.get(event.kind)
    if state and row is not None and row.state in ("sent", "delivered"):
        connection.execute(
            sa.update(outbox).where(outbox.c.id == row.id).values(state=state, updated_at=now)
        )


def suppress(
    connection: sa.Connection, address: str, reason: str, source: str, now: datetime
) -> None:
    connection.execute(
        suppression_insert(connection),
        {
            "email_hash": email_hash(address),
            "reason": reason,
            "source": source[:64],
            "created_at": now,
        },
    )


def unsubscribe(connection: sa.Connection, customer_id: str, at: datetime, source: str) -> bool:
    """Set ``unsubscribed_at`` (first time only), suppress the address, audit it. Every
    other customer holding the address (a family's shared one) is marked unsubscribed too:
    the suppression stops their mail as well, and their page said "subscribed" while no
    consent of theirs could lift it (a re-subscription lifts it: ``profiles.resubscribe``)."""
    row = connection.execute(
        sa.select(customers.c.email, customers.c.unsubscribed_at).where(
            customers.c.id == customer_id
        )
    ).first()
    if row is None or row.unsubscribed_at is not None:
        return False
    sharing = _sharing(connection, customer_id, row.email) if row.email else []
    connection.execute(
        sa.update(customers)
        .where(customers.c.id.in_([customer_id, *sharing]))
        .values(unsubscribed_at=at, updated_at=at)
    )
    for person, why in [
        (customer_id, source),
        *((other, f"{source} (shared address)") for other in sharing),
    ]:
        audit(
            connection,
            at=at,
            actor=why[:200],
            action="unsubscribe",
            subject_type="customer",
            subject_id=person,
            details={},
        )
    if row.email:
        suppress(connection, row.email, "unsubscribed", source, at)
    return True


def _sharing(connection: sa.Connection, customer_id: str, address: str) -> list[str]:
    """The other customers, not erased nor unsubscribed, who hold ``address`` (any case,
    any Unicode form: ``privacy.Ties.by_address``), in id order."""
    c = customers.c
    holders = Ties(customers, (c.id,), (c.email,)).by_address(address)
    query = sa.select(c.id).where(
        holders, c.id != customer_id, c.unsubscribed_at.is_(None), c.erased_at.is_(None)
    )
    return [str(found) for found in connection.execute(query.order_by(c.id)).scalars()]


def record_link_unsubscribe(
    connection: sa.Connection, customer_id: str, campaign: str, issued: datetime, now: datetime
) -> bool:
    """A click on a signed unsubscribe link (one-click POST, its confirm page, or the
    preferences page's button). One contact event per unsubscribe: the key names the link
    and the unsubscribe the click made or repeats (the customer's ``unsubscribed_at`` after
    it). The key named the link alone, which the unsubscribe link and the preferences page
    of one e-mail share: once the customer re-subscribed and unsubscribed again, the second
    unsubscribe was dropped as a duplicate (the audit log had it). A repeat while the
    customer stays unsubscribed (a mail client retrying the one-click POST, the e-mail's
    other link) is still one event. The customer's row is locked first (PostgreSQL; SQLite's
    callers hold the write lock): a retry arriving at once waits, then sees the unsubscribe
    and repeats it, rather than making a second one."""
    held = connection.execute(
        sa.select(customers.c.unsubscribed_at)
        .where(customers.c.id == customer_id)
        .with_for_update()
    ).first()
    changed = unsubscribe(connection, customer_id, now, source=f"link {campaign}")
    since = now if changed else (held.unsubscribed_at if held else None)
    stamp = since.astimezone(UTC).isoformat() if since else "none"  # the stored instant
    connection.execute(
        upsert_statement(connection, contact_events).on_conflict_do_nothing(
            index_elements=["event_key"]
        ),
        {
            "event_key": bounded_key(
                f"link:{customer_id}:{campaign}:{int(issued.timestamp())}:{stamp}"
            ),
            "kind": "unsubscribed",
            "provider": "link",
            "customer_id": customer_id,
            "campaign": campaign,
            "send_key": None,
            "at": now,
            "details": {},
        },
    )
    return changed
