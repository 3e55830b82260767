"""The outbox: every e-mail is a row before it goes out and after, so nothing is sent twice.

Life of a message (``outbox.state``)::

    queued ──claim──▶ claimed ──provider accepted──▶ sent ──webhook──▶ delivered | bounced
      ▲                  │ ├─ retry (429/5xx/timeout, per-message retry) ─▶ queued (later)
      │                  │ └─ rejected for good / out of attempts ────────▶ failed
      └── reconcile ─────┘ (claim of a dead worker: looked up at the provider first)
    queued/claimed ── recipient opted out (consent withdrawn, …), suppressed or moved ──▶ cancelled
    queued ──claim, every offered item bought since it was queued──▶ cancelled

- **Enqueue** inserts under the unique send key (campaign/customer/period) with ON CONFLICT
  DO NOTHING: re-running a campaign slot adds nothing.
- **Claim** is one ``UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED) RETURNING``:
  two workers never get the same row (PostgreSQL skips locked rows, SQLite serialises
  writers), and the claim is committed *before* the HTTP request.
- A claim records the worker (``host:pid:nonce``). A claim whose worker is gone (same host,
  process dead) or whose lease ran out is *stale*; :func:`stale_claims` finds them and the
  deliverer asks the provider whether it accepted them before putting them back in the queue.

Bodies are stored as JSON: ``{"html", "text", "headers"}`` for a rendered e-mail, or
``{"template": {"html", "text", "context", "subject"}, "headers"}`` for one whose body and
subject are rendered by the deliverer when it goes out (campaign runs enqueue those, see
``domain.BodyTemplate``; rows queued before subjects went with the body have no
``"subject"``). The ``subject`` column holds the subject rendered when the e-mail was queued
until the deliverer writes the one it renders (:func:`set_subjects`, before the request): a
sent e-mail's row shows what was sent, and a version before this one sends that column.
Documents of ``COMPRESS_FROM`` bytes or more (rendered bodies) are zlib-compressed with a
4 kB window; a deferred body's context (~2.3 kB on the demo shop) is stored as it is: zlib
took 61 µs to save 1.4 kB of it and 20 µs to unpack, orjson encodes it in 5 µs, and
``benchmarks/send.py`` spends every microsecond of a 2-core machine. A stored body starts
with ``{`` when it is plain JSON (a zlib stream never does).
"""

from __future__ import annotations

import functools
import os
import socket
import zlib
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from secrets import token_hex
from typing import Any

import orjson
import sqlalchemy as sa

from recocamp.domain import (
    BodyTemplate,
    OutgoingEmail,
    address_forms,
    composed,
    email_hash,
    email_hashes,
    email_problem,
    id_forms,
    returned_in_full,
)
from recocamp.errors import mask_addresses
from recocamp.store.queries import suppression_insert, upsert_statement
from recocamp.store.schema import (
    campaign_pauses,
    customers,
    outbox,
    purchase_line,
    purchases,
    suppressions,
)

COMPRESS_FROM = 4096  # bytes of JSON
LIVE_STATES = ("queued", "claimed", "sent", "delivered", "bounced")  # count as contacts


def send_key(campaign: str, customer_id: str, period: str) -> str:
    return f"{campaign}/{customer_id}/{period}"


def worker_id() -> str:
    """``host:pid:nonce``, and ``:space`` where the process's pid namespace is known (see
    :func:`process_alive`)."""
    space = pid_space()
    return f"{socket.gethostname()}:{os.getpid()}:{token_hex(4)}" + (f":{space}" if space else "")


@functools.cache
def pid_space() -> str:
    """The number of this process's pid namespace (Linux), "" where there is none to read.
    Two containers on one host with the host's name (``--network host``) number their
    processes each from 1: a pid says nothing about a process of another namespace."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    return "".join(c for c in link if c.isdigit())


def pack(email: OutgoingEmail) -> bytes:
    document: dict[str, Any] = {"headers": list(email.headers)}
    if email.template is None:
        document.update(html=email.html, text=email.text)
    else:
        template = email.template
        document["template"] = {
            "html": template.html,
            "text": template.text,
            "context": template.context,
        }
        if template.subject is not None:
            document["template"]["subject"] = template.subject
    data = orjson.dumps(document, option=orjson.OPT_NON_STR_KEYS)
    if len(data) < COMPRESS_FROM:
        return data
    packer = zlib.compressobj(1, zlib.DEFLATED, 12)
    return packer.compress(data) + packer.flush()


def load_body(data: bytes) -> Any:
    """A stored body's JSON document (plain or compressed, see the module docstring);
    raises ``zlib.error`` or ``ValueError`` for bytes that are neither."""
    return orjson.loads(data if data[:1] == b"{" else zlib.decompress(data))


# what a claim reads back (``_unpack``, in this order): no dates, each of which costs a parse
# per row
_CLAIMED_COLUMNS = (
    outbox.c.id,
    outbox.c.attempts,
    outbox.c.customer_id,
    outbox.c.send_key,
    outbox.c.recipient,
    outbox.c.subject,
    outbox.c.body,
    outbox.c.campaign,
    outbox.c.claimed_by,
)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    attempts: int
    customer_id: str
    email: OutgoingEmail
    claimed_by: str | None = None

    def rendered(self, html: str, text: str, subject: str | None = None) -> Claimed:
        """This claim with its e-mail's body (and subject) rendered (see
        ``OutgoingEmail.rendered``)."""
        email = self.email.rendered(html, text, subject)
        return Claimed(self.id, self.attempts, self.customer_id, email, self.claimed_by)


def _unpack(row: Any) -> Claimed:
    """A claimed row as the deliverer needs it (positional: a claim unpacks every e-mail it
    sends, and keyword arguments and a generator per row were a tenth of the unpacking)."""
    row_id, attempts, customer_id, key, recipient, subject, body, campaign, claimed_by = row
    document = load_body(body)
    deferred = document.get("template")
    template = (
        BodyTemplate(
            deferred["html"], deferred["text"], deferred["context"], deferred.get("subject")
        )
        if deferred
        else None
    )
    email = OutgoingEmail(
        key,
        recipient,
        subject,
        document.get("html", ""),
        document.get("text", ""),
        tuple(map(tuple, document["headers"])),
        campaign,
        template,
    )
    return Claimed(row_id, attempts, customer_id, email, claimed_by)


def enqueue(
    connection: sa.Connection,
    emails: Iterable[tuple[OutgoingEmail, str, str | None, datetime]],
    now: datetime,
) -> int:
    """Insert (email, customer id, variant, not before) rows; returns how many were new."""
    rows = [
        {
            "send_key": e.send_key,
            "campaign": e.campaign,
            "customer_id": customer,
            "variant": v,
            "recipient": e.to,
            "subject": e.subject,
            "body": pack(e),
            "state": "queued",
            "attempts": 0,
            "not_before": not_before,
            "created_at": now,
            "updated_at": now,
        }
        for e, customer, v, not_before in emails
    ]
    if not rows:
        return 0
    statement = upsert_statement(connection, outbox).on_conflict_do_nothing(
        index_elements=["send_key"]
    )
    if connection.dialect.name == "sqlite":  # sqlite3's executemany sums rowcounts, in C
        return int(connection.execute(statement, rows).rowcount)
    # rowcount of an executemany is -1 on psycopg; RETURNING counts what was really inserted
    return len(connection.execute(statement.returning(outbox.c.id), rows).all())


def existing_keys(connection: sa.Connection, prefix_campaign: str, keys: Sequence[str]) -> set[str]:
    """Which of ``keys`` (send keys of one campaign) the outbox holds, each also in its
    customer id's other Unicode forms (``domain.id_forms``; the campaign and the period are
    ASCII): an e-mail enqueued under a decomposed id before migration 0023 composed the
    stored ids keeps its key (the one the provider knows), and the same run resumed after
    the upgrade, deciding for the composed id, would enqueue it again. An id stored in
    neither form is found by its customer id (:func:`_held_in_other_forms`)."""
    forms: dict[str, set[str]] = {}
    for key in keys:
        for form in id_forms((key,)):
            forms.setdefault(form, set()).add(key)
    wanted = list(forms)
    found: set[str] = set()
    for start in range(0, len(wanted), 5000):
        chunk = wanted[start : start + 5000]
        query = sa.select(outbox.c.send_key).where(
            outbox.c.campaign == prefix_campaign, outbox.c.send_key.in_(chunk)
        )
        for held in connection.execute(query).scalars():
            found |= forms[held]
    return found | _held_in_other_forms(connection, prefix_campaign, set(keys) - found)


def _held_in_other_forms(connection: sa.Connection, campaign: str, keys: set[str]) -> set[str]:
    """Which of ``keys`` the outbox holds in a form that is neither the key's composed nor
    its decomposed one (an older version stored the id as a file gave it, one accent
    composed, another not): found by the customer id, which migration 0023 composed, and
    compared composed. Only keys that are not ASCII are looked for (none, in most shops)."""
    by_customer: dict[str, dict[str, str]] = {}
    for key in keys:
        if not key.isascii() and key.startswith(f"{campaign}/"):
            customer = key[len(campaign) + 1 : key.rindex("/")]
            by_customer.setdefault(composed(customer), {})[composed(key)] = key
    if not by_customer:
        return set()
    wanted = list(by_customer)
    # the keys' periods: a customer's e-mails of other mailings of the campaign are not read
    periods = {key.rpartition("/")[2] for held in by_customer.values() for key in held.values()}
    period = sa.or_(*(outbox.c.send_key.endswith(f"/{p}", autoescape=True) for p in periods))
    found: set[str] = set()
    for start in range(0, len(wanted), 5000):
        query = sa.select(outbox.c.customer_id, outbox.c.send_key).where(
            outbox.c.campaign == campaign,
            outbox.c.customer_id.in_(wanted[start : start + 5000]),
            period,
        )
        for customer, held in connection.execute(query):
            wanted_key = by_customer[customer].get(composed(held))
            if wanted_key is not None:
                found.add(wanted_key)
    return found


def _claimable(now: datetime, campaign: str | None) -> sa.Select[Any]:
    query = sa.select(outbox.c.id).where(
        outbox.c.state == "queued",
        outbox.c.not_before <= now,
        outbox.c.campaign.not_in(sa.select(campaign_pauses.c.campaign)),
    )
    return query.where(outbox.c.campaign == campaign) if campaign else query


def claim(
    engine: sa.Engine, worker: str, now: datetime, limit: int, campaign: str | None = None
) -> list[Claimed]:
    """Atomically take up to ``limit`` due messages; cancel those whose recipient opted out,
    and leave out the offers bought since a message was queued (:func:`_without_bought`)."""
    chosen = (
        _claimable(now, campaign)
        .order_by(outbox.c.not_before, outbox.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    statement = (
        sa.update(outbox)
        .where(outbox.c.id.in_(chosen.scalar_subquery()))
        .values(
            state="claimed",
            claimed_by=worker,
            claimed_at=now,
            attempts=outbox.c.attempts + 1,
            updated_at=now,
        )
        .returning(*_CLAIMED_COLUMNS)
    )
    with engine.begin() as connection:
        claimed = [_unpack(row) for row in connection.execute(statement)]
        blocked, paused, moved = _opted_out(connection, claimed, now)
        if blocked:
            _set(connection, blocked, now, state="cancelled", last_error="recipient opted out")
        if paused:
            _set(connection, paused, now, state="cancelled", last_error=PAUSED)
        blocked |= paused | _cancel_objected(connection, claimed, now)
        # queued before addresses had to be one plain local@domain: "a@x, b@y" would reach
        # a second person, who never consented, with the customer's signed links
        unsendable = {
            c.id for c in claimed if c.id not in blocked and email_problem(c.email.to.strip())
        }
        if unsendable:
            wrong = "not one plain e-mail address (queued before addresses were checked)"
            _set(connection, unsendable, now, state="cancelled", last_error=wrong)
        blocked |= unsendable
        moved -= blocked
        if moved:
            _set(connection, moved, now, state="cancelled", last_error=MOVED)
        kept, sold = _without_bought(
            connection, [c for c in claimed if c.id not in blocked | moved], worker, now
        )
        if sold:
            _set(connection, sold, now, state="cancelled", last_error=BOUGHT)
    return kept


MOVED = "the customer's address changed since it was queued"
# An e-mail claimed this long after it was queued waited (its campaign paused, no deliverer):
# what its customer bought meanwhile is looked up, as for one deferred to a later hour. A
# run's own claims come sooner, and are not looked up (see :func:`_without_bought`).
WAITED = timedelta(minutes=5)
PAUSED = "the customer paused e-mails after it was queued"
PROFILED = "the customer objected to profiling after it was queued: its offers were theirs"
BOUGHT = "the customer bought (or returned in full) every item it offers after it was queued"


def _without_bought(
    connection: sa.Connection, claimed: Sequence[Claimed], worker: str, now: datetime
) -> tuple[list[Claimed], set[int]]:
    """The claims (just made by ``worker`` at ``now``) with the offers their customer bought
    since the e-mail was queued left out, and the ids of those left with no offer. A run
    chooses the offers when it decides; an e-mail deferred to the end of its customer's quiet
    hours (or put back for a retry) goes out hours later: an item bought meanwhile was still
    offered as "picked for you" (or "about time to restock") the morning after the order.
    Purchase lines ordered from the row's creation (the run's instant, whose history the
    offers were chosen from) up to ``now`` count. Only e-mails that were to wait, or that
    waited (``WAITED``: a campaign paused and resumed a day later), are looked at: one sent
    as it was queued had no hours to wait (and the look-up cost a fresh run's claims a sixth
    more CPU). The deliverer renders the
    subject line from the offers left, as it renders the body (``domain.BodyTemplate``). A
    body rendered when it was queued cannot be changed and goes as it is, as does a subject
    rendered when it was queued (a row of a version before subjects went with the body)."""
    offering = {
        c.id
        for c in claimed
        if c.email.template is not None and c.email.template.context.get("offers")
    }
    found = _bought_since(connection, worker, now) if offering else {}
    bought = {row_id: items for row_id, items in found.items() if row_id in offering}
    if not bought:
        return list(claimed), set()
    kept: list[Claimed] = []
    sold: set[int] = set()
    for c in claimed:
        template = c.email.template
        if c.id not in bought or template is None:
            kept.append(c)
            continue
        offers = [o for o in template.context["offers"] if o.get("item_id") not in bought[c.id]]
        if not offers:
            sold.add(c.id)
            continue
        context = {**template.context, "offers": offers}
        email = replace(c.email, template=replace(template, context=context))
        kept.append(replace(c, email=email))
    return kept, sold


def _bought_since(connection: sa.Connection, worker: str, now: datetime) -> dict[int, set[str]]:
    """Per row ``worker`` claimed at ``now`` that was to wait (``not_before`` after its
    creation) or waited anyway (queued more than ``WAITED`` before ``now``: its campaign was
    paused until it was resumed, the deliverer was down or refused by the provider): the
    items its customer bought (purchase lines: not a return, quantity and price above 0) from
    the row's creation up to ``now``, and the items it returned in full meanwhile
    (:func:`_returned_since`). The claim's own marks pick the rows: a list of their ids cost
    more to bind than the look-up."""
    p = purchases.c
    waited = (
        sa.select(outbox.c.id, outbox.c.customer_id, outbox.c.created_at)
        .where(
            outbox.c.state == "claimed",
            outbox.c.claimed_by == worker,
            outbox.c.claimed_at == now,
            sa.or_(outbox.c.not_before > outbox.c.created_at, outbox.c.created_at < now - WAITED),
        )
        .subquery()
    )
    rows = connection.execute(
        sa.select(waited.c.id, p.item_id)
        .join(purchases, p.customer_id == waited.c.customer_id)
        .where(
            p.ordered_at >= waited.c.created_at,
            p.ordered_at <= now,
            purchase_line(),
        )
    )
    found: dict[int, set[str]] = {}
    for row_id, item in rows:
        found.setdefault(row_id, set()).add(item)
    for row_id, item in _returned_since(connection, waited, now):
        found.setdefault(row_id, set()).add(item)
    return found


def _returned_since(
    connection: sa.Connection, waited: sa.Subquery, now: datetime
) -> list[tuple[int, str]]:
    """``(row id, item)`` of the ``waited`` rows whose customer sent an item back from the
    row's creation up to ``now`` and has returned it in full by then (``domain.returned_in_full``
    over the whole history, as ``views`` reads it for the planner). Such an item is offered
    in no mode (README, Returned items): a replenishment mail queued before the return asked
    the customer to restock what they had just sent back."""
    p = purchases.c
    back = connection.execute(
        sa.select(waited.c.id, p.customer_id, p.item_id)
        .join(purchases, p.customer_id == waited.c.customer_id)
        .where(p.is_return.is_(True), p.ordered_at >= waited.c.created_at, p.ordered_at <= now)
        .distinct()
    ).all()
    if not back:
        return []
    net: dict[tuple[str, str], float] = {}
    for customer, item, quantity, is_return in connection.execute(
        sa.select(p.customer_id, p.item_id, p.quantity, p.is_return).where(
            p.customer_id.in_(sorted({row[1] for row in back})),
            p.item_id.in_(sorted({row[2] for row in back})),
            sa.or_(purchase_line(), p.is_return.is_(True)),
            p.ordered_at <= now,
        )
    ):
        key = (customer, item)
        net[key] = net.get(key, 0.0) + (-abs(quantity) if is_return else quantity)
    gone = returned_in_full(net)
    return [(row_id, item) for row_id, customer, item in back if (customer, item) in gone]


def cancel_profiled(connection: sa.Connection, customer_ids: Collection[str], now: datetime) -> int:
    """Cancel the queued e-mails with offers of customers who have just objected to profiling
    (in the objection's transaction): their offers were chosen by the profile they objected
    to, and the next run decides for them by the rule-based fallback. A mail without offers
    (a survey) stays. One claimed already is the deliverer's, perhaps on its way out: it is
    marked (``last_error`` PROFILED) and cancelled wherever it would go out later than now —
    put back for a retry, it was claimed again and sent after the objection. How many."""
    offered = _queued_of(connection, customer_ids, _has_offers)
    _set(connection, offered, now, state="cancelled", last_error=PROFILED)
    claimed = _queued_of(connection, customer_ids, _has_offers, state="claimed")
    _set(connection, claimed, now, last_error=PROFILED)
    return len(offered)


def _queued_of(
    connection: sa.Connection,
    customer_ids: Collection[str],
    chosen: Callable[[bytes], bool],
    state: str = "queued",
) -> list[int]:
    """The e-mails of ``customer_ids`` in ``state`` whose stored body ``chosen`` picks."""
    ids = sorted(set(customer_ids))
    found: list[int] = []
    for start in range(0, len(ids), 5000):
        rows = connection.execute(
            sa.select(outbox.c.id, outbox.c.body).where(
                outbox.c.customer_id.in_(ids[start : start + 5000]), outbox.c.state == state
            )
        )
        found += [row.id for row in rows if chosen(row.body)]
    return found


REBASED = (
    "the customer's consent became existing_customer after it was queued: it was written "
    "for their earlier basis"
)


def cancel_rebased(connection: sa.Connection, customer_ids: Collection[str], now: datetime) -> int:
    """Cancel the queued e-mails of customers whose consent basis is now ``existing_customer``
    (in the change's transaction) that were written for another basis (a double opt-in):
    the existing-customer exception (UWG §7(3)) allows offers like what they bought, with
    the notice of their right to object, and no survey; a campaign may allow double opt-in
    alone. The deliverer's check at claim time knows neither the campaign's bases nor the
    basis a mail was written for, and the mail went out. The next run decides under the new
    basis; a mail written with the notice stays; one claimed already is on its way out. How
    many."""
    rebased = _queued_of(connection, customer_ids, lambda body: not _for_existing_customers(body))
    _set(connection, rebased, now, state="cancelled", last_error=REBASED)
    return len(rebased)


def _for_existing_customers(body: bytes) -> bool:
    """Whether a stored body was written under the existing-customer basis: a deferred one's
    context says (its notice); a body rendered when it was queued cannot tell, and counts as
    one that was not."""
    template = load_body(body).get("template")
    return template is not None and bool(template["context"].get("existing_customer_notice"))


def _has_offers(body: bytes) -> bool:
    """Whether a stored body carries offers: a deferred one's context says; a body rendered
    when it was queued cannot tell, and counts as one that does."""
    template = load_body(body).get("template")
    return template is None or bool(template["context"].get("offers"))


def _opted_out(
    connection: sa.Connection, claimed: Sequence[Claimed], now: datetime
) -> tuple[set[int], set[int], set[int]]:
    """Claimed messages whose recipient unsubscribed, was erased, switched e-mail off,
    withdrew their consent (basis ``none``: no campaign may mail them) or got suppressed
    since; of the others, those whose customer paused e-mails until after ``now``
    (``PAUSED``: the planner sends them nothing then, and mail queued before the pause, for
    the morning after quiet hours or a retry, went out during it); and of the rest, those
    whose customer's address is another one now (or none, ``MOVED``): the mail carries
    their signed links to the preferences page and the data download, and the old address
    may be a typo that reached a stranger, or a mailbox given up. Addresses are compared
    trimmed, lower-case and composed, as suppressions compare them. One read of the
    customers for all three."""
    if not claimed:
        return set(), set(), set()
    c = customers.c
    stopped = sa.or_(
        c.unsubscribed_at.is_not(None),
        c.erased_at.is_not(None),
        c.channel_email.is_(False),
        c.consent_basis == "none",
    )
    rows = connection.execute(
        sa.select(c.id, c.email, c.paused_until, stopped.label("stopped")).where(
            c.id.in_({m.customer_id for m in claimed})
        )
    ).all()
    gone = {row.id for row in rows if row.stopped}
    resting = {row.id for row in rows if row.paused_until is not None and row.paused_until > now}
    current = {row.id: row.email for row in rows}
    # one address may have several mails in a batch (two campaigns): every one of them counts
    hashes = {c.id: email_hashes(c.email.to) for c in claimed}
    suppressed = set(
        connection.execute(
            sa.select(suppressions.c.email_hash).where(
                suppressions.c.email_hash.in_({h for forms in hashes.values() for h in forms})
            )
        ).scalars()
    )
    blocked = {
        c.id for c in claimed if c.customer_id in gone or not suppressed.isdisjoint(hashes[c.id])
    }
    paused = {c.id for c in claimed if c.id not in blocked and c.customer_id in resting}
    moved = {
        c.id
        for c in claimed
        if c.id not in blocked | paused
        and c.customer_id in current
        and address_forms(current[c.customer_id] or "")[0] != address_forms(c.email.to)[0]
    }
    return blocked, paused, moved


def _set(
    connection: sa.Connection,
    ids: Iterable[int],
    now: datetime,
    *,
    by: str | None = None,
    **values: Any,
) -> None:
    """Set ``values`` on the rows ``ids`` (those still claimed by ``by``, when given)."""
    ids = list(ids)
    for start in range(0, len(ids), 5000):
        connection.execute(
            sa.update(outbox)
            .where(outbox.c.id.in_(ids[start : start + 5000]), _owned(by))
            .values(updated_at=now, **values)
        )


def _owned(by: str | None) -> Any:
    """Rows still claimed by ``by``: a deliverer records only what it still holds, so one
    whose claim was taken over (a lease that ran out) cannot overwrite the new owner."""
    if by is None:
        return sa.true()
    return sa.and_(outbox.c.state == "claimed", outbox.c.claimed_by == by)


def set_subjects(
    connection: sa.Connection, subjects: dict[int, str], now: datetime, by: str
) -> None:
    """Write the subjects the deliverer rendered for its claims (only those it still holds)
    before it sends them: the row then shows what went out, also to whoever settles the claim
    after a crash (the provider may have taken it)."""
    if not subjects:
        return
    connection.execute(
        sa.update(outbox)
        .where(outbox.c.id == sa.bindparam("row_id"), _owned(by))
        .values(subject=sa.bindparam("line"), updated_at=now),
        [{"row_id": i, "line": line} for i, line in subjects.items()],
    )


def mark_sent(
    connection: sa.Connection, sent: dict[int, str], now: datetime, by: str | None = None
) -> None:
    """Record what the provider accepted, with its message ids (one statement per batch)."""
    if not sent:
        return
    connection.execute(
        sa.update(outbox)
        .where(outbox.c.id == sa.bindparam("row_id"), _owned(by))
        .values(
            state="sent",
            provider_message_id=sa.bindparam("message_id"),
            sent_at=now,
            updated_at=now,
            last_error=None,
        ),
        [{"row_id": i, "message_id": m} for i, m in sent.items()],
    )


def renew(
    connection: sa.Connection, claimed: Sequence[Claimed], by: str, now: datetime
) -> set[int]:
    """Renew the lease of the claims that ``by`` still holds and return those that may go
    out: a claim taken over meanwhile (its lease ran out) is its new owner's to send, and
    one whose recipient opted out or moved since it was claimed is cancelled, as a claim
    does."""
    ids = [c.id for c in claimed]
    held: set[int] = set()
    for start in range(0, len(ids), 5000):
        statement = (
            sa.update(outbox)
            .where(outbox.c.id.in_(ids[start : start + 5000]), _owned(by))
            .values(claimed_at=now, updated_at=now)
            .returning(outbox.c.id)
        )
        held.update(connection.execute(statement).scalars())
    return held - _cancel_opted_out(connection, [c for c in claimed if c.id in held], now)


def recheck(
    connection: sa.Connection, claimed: Sequence[Claimed], by: str, now: datetime
) -> set[int]:
    """The claims that ``by`` still holds and that may go out, read just before their
    request (the lease left alone: see :func:`renew`). Rendering a batch and the rate limit
    take a while: an erasure meanwhile cancelled the row and blanked it, while the deliverer
    still held the address and sent to it (the row then said "cancelled"); an unsubscribe
    meanwhile was mailed. Those are cancelled (written only when there are some)."""
    ids = [c.id for c in claimed]
    held: set[int] = set()
    for start in range(0, len(ids), 5000):
        query = sa.select(outbox.c.id).where(outbox.c.id.in_(ids[start : start + 5000]), _owned(by))
        held.update(connection.execute(query).scalars())
    return held - _cancel_opted_out(connection, [c for c in claimed if c.id in held], now)


def _cancel_opted_out(
    connection: sa.Connection, claimed: Sequence[Claimed], now: datetime
) -> set[int]:
    """Cancel the claims whose recipient opted out or moved (:func:`_opted_out`); their ids."""
    blocked, paused, moved = _opted_out(connection, claimed, now)
    if blocked:
        _set(connection, blocked, now, state="cancelled", last_error="recipient opted out")
    if paused:
        _set(connection, paused, now, state="cancelled", last_error=PAUSED)
    if moved:
        _set(connection, moved, now, state="cancelled", last_error=MOVED)
    return blocked | paused | moved | _cancel_objected(connection, claimed, now)


def _cancel_objected(
    connection: sa.Connection, claimed: Sequence[Claimed], now: datetime
) -> set[int]:
    """Cancel the claims that an objection to profiling marked while they were claimed
    (:func:`cancel_profiled`): they have not gone out yet; their ids."""
    ids = [c.id for c in claimed]
    marked: set[int] = set()
    for start in range(0, len(ids), 5000):
        query = sa.select(outbox.c.id).where(
            outbox.c.id.in_(ids[start : start + 5000]), outbox.c.last_error == PROFILED
        )
        marked.update(connection.execute(query).scalars())
    _set(connection, marked, now, state="cancelled")
    return marked


def retry_later(
    connection: sa.Connection,
    delays: dict[int, float],
    errors: dict[int, str],
    now: datetime,
    max_attempts: int,
    by: str | None = None,
    *,
    refund: bool = False,
) -> int:
    """Back to the queue after ``delays[id]`` seconds, or failed when out of attempts.

    ``refund``: the whole request failed (a provider-wide 429 or 5xx, an outage), which says
    nothing about these messages, so the attempt is given back: an outage longer than the
    retries never turns mail into failures (a gap), it only waits.
    """
    if not delays:
        return 0
    ids = list(delays)
    rows = connection.execute(
        sa.select(outbox.c.id, outbox.c.attempts).where(outbox.c.id.in_(ids), _owned(by))
    ).all()
    mine = {r.id for r in rows}
    out = set() if refund else {r.id for r in rows if r.attempts >= max_attempts}
    for row_id in out:
        _set(connection, [row_id], now, by=by, state="failed", last_error=_said(errors[row_id]))
    again = [
        {"row_id": i, "not_before": now + timedelta(seconds=delays[i]), "error": _said(errors[i])}
        for i in ids
        if i in mine and i not in out
    ]
    if again:
        spent = outbox.c.attempts - 1 if refund else outbox.c.attempts
        connection.execute(
            sa.update(outbox)
            .where(outbox.c.id == sa.bindparam("row_id"), _owned(by))
            .values(
                state="queued",
                not_before=sa.bindparam("not_before"),
                attempts=spent,
                # an objection's mark stays: the next claim cancels the mail (_cancel_objected)
                last_error=sa.case(
                    (outbox.c.last_error == PROFILED, PROFILED), else_=sa.bindparam("error")
                ),
                updated_at=now,
                claimed_by=None,
            ),
            again,
        )
    return len(out)


def fail(
    connection: sa.Connection, errors: dict[int, str], now: datetime, by: str | None = None
) -> None:
    for row_id, error in errors.items():
        _set(connection, [row_id], now, by=by, state="failed", last_error=_said(error))


def release(
    connection: sa.Connection, ids: Iterable[int], now: datetime, by: str | None = None
) -> None:
    """Back to the queue untouched (the attempt did not reach the provider)."""
    _set(
        connection, ids, now, by=by, state="queued", claimed_by=None, attempts=outbox.c.attempts - 1
    )


def take_over(
    connection: sa.Connection,
    stale: Sequence[Claimed],
    me: str,
    now: datetime,
    *,
    lease_s: float,
    dead: Collection[str],
) -> list[Claimed]:
    """Make stale claims ours before settling them: only rows still claimed by the worker
    we found them with move, so two deliverers settling the same dead worker's claims never
    both act on one row (one would resend what the other just sent). And only rows still
    stale: held by a ``dead`` worker, or with their lease run out (``lease_s`` before
    ``now``). A live holder may have renewed its lease (``renew``), or released the row and
    claimed it again, since the claims were read; taking such a row over would queue it
    again while its holder sends it (two copies)."""
    if not stale:
        return []
    pairs = [(c.id, c.claimed_by) for c in stale]
    expired = now - timedelta(seconds=lease_s)
    statement = (
        sa.update(outbox)
        .where(
            outbox.c.state == "claimed",
            sa.tuple_(outbox.c.id, outbox.c.claimed_by).in_(pairs),
            sa.or_(outbox.c.claimed_at <= expired, outbox.c.claimed_by.in_(sorted(dead))),
        )
        .values(claimed_by=me, claimed_at=now, updated_at=now)
        .returning(outbox.c.id)
    )
    taken = set(connection.execute(statement).scalars())
    return [c for c in stale if c.id in taken]


def stale_claims(
    connection: sa.Connection, now: datetime, lease_s: float, alive: Callable[[str], bool]
) -> list[Claimed]:
    """Claims whose lease ran out or whose worker is gone (bodies are read only for those)."""
    claims = connection.execute(
        sa.select(outbox.c.id, outbox.c.claimed_by, outbox.c.claimed_at).where(
            outbox.c.state == "claimed"
        )
    ).all()
    expired = now - timedelta(seconds=lease_s)
    ids = [r.id for r in claims if r.claimed_at <= expired or not alive(r.claimed_by or "")]
    found: list[Claimed] = []
    for start in range(0, len(ids), 5000):
        rows = connection.execute(
            sa.select(*_CLAIMED_COLUMNS).where(
                outbox.c.id.in_(ids[start : start + 5000]), outbox.c.state == "claimed"
            )
        )
        found += [_unpack(row) for row in rows]
    return found


# Deliverers draining in this process right now: a worker runs several at once (a campaign
# run's and the periodic one), and one must not take another's claims for a dead worker's.
draining: set[str] = set()


def process_alive(claimed_by: str, me: str) -> bool:
    """Is the worker that holds a claim still running? Only answerable on the same host and
    in the same pid namespace: two containers sharing the host's name (``--network host``)
    each number their processes from 1, and a worker that found another container's live
    worker's pid free here (or its own: both pid 1) took over its claims while it sent
    them, and sent them again."""
    host, _, rest = claimed_by.partition(":")
    pid_text, _, rest = rest.partition(":")
    _nonce, _, space = rest.partition(":")
    if claimed_by == me:
        return True
    elsewhere = host != socket.gethostname() or (space and space != pid_space())
    if elsewhere or not pid_text.isdigit():  # (an id of before the space was added has none)
        return True  # another machine or another container: trust the lease
    if int(pid_text) == os.getpid():
        return claimed_by in draining  # else: a deliverer of this process that did not finish
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def next_due(connection: sa.Connection, campaign: str | None = None) -> datetime | None:
    query = sa.select(sa.func.min(outbox.c.not_before)).where(
        outbox.c.state == "queued",
        outbox.c.campaign.not_in(sa.select(campaign_pauses.c.campaign)),
    )
    if campaign:
        query = query.where(outbox.c.campaign == campaign)
    value: datetime | None = connection.execute(query).scalar_one_or_none()
    return value


def queued(connection: sa.Connection, campaign: str | None = None) -> int:
    """Messages waiting in the queue (retries, quiet hours), one campaign's or all."""
    query = sa.select(sa.func.count()).select_from(outbox).where(outbox.c.state == "queued")
    if campaign:
        query = query.where(outbox.c.campaign == campaign)
    return int(connection.execute(query).scalar_one())


def run_states(connection: sa.Connection, campaign: str, period: str) -> dict[str, int]:
    """One campaign run's messages by state: their send keys end with the run's period
    (:func:`send_key`)."""
    query = (
        sa.select(outbox.c.state, sa.func.count())
        .where(
            outbox.c.campaign == campaign,
            outbox.c.send_key.endswith(f"/{period}", autoescape=True),
        )
        .group_by(outbox.c.state)
    )
    return {state: int(number) for state, number in connection.execute(query)}


def status(connection: sa.Connection) -> dict[str, dict[str, int]]:
    query = sa.select(outbox.c.campaign, outbox.c.state, sa.func.count()).group_by(
        outbox.c.campaign, outbox.c.state
    )
    table: dict[str, dict[str, int]] = {}
    for campaign, state, number in connection.execute(query):
        table.setdefault(campaign, {})[state] = int(number)
    return table


PURGED_REASON = "the reason was deleted with the body ([privacy] outbox_body_days)"


@dataclass(frozen=True, slots=True)
class Failure:
    """Failed messages of one campaign with one error (as stored: addresses masked), and one
    of their customers to preview."""

    campaign: str
    error: str
    messages: int
    customer_id: str


def failures(connection: sa.Connection, limit: int = 20) -> list[Failure]:
    """Why messages failed, per campaign and error, the most frequent ``limit`` first: a
    count of failures alone left the operator with nothing to fix (``outbox status``)."""
    number = sa.func.count().label("number")
    query = (
        sa.select(outbox.c.campaign, outbox.c.last_error, number, sa.func.min(outbox.c.customer_id))
        .where(outbox.c.state == "failed")
        .group_by(outbox.c.campaign, outbox.c.last_error)
        .order_by(number.desc(), outbox.c.campaign, outbox.c.last_error)
        .limit(limit)
    )
    return [
        Failure(campaign, error or PURGED_REASON, int(count), customer)
        for campaign, error, count, customer in connection.execute(query)
    ]


def retry_failed(connection: sa.Connection, now: datetime, campaign: str | None = None) -> int:
    """Put failed messages back in the queue with fresh attempts (not suppressed ones)."""
    query = (
        sa.update(outbox)
        .where(outbox.c.state == "failed")
        .values(state="queued", attempts=0, not_before=now, updated_at=now, claimed_by=None)
    )
    if campaign:
        query = query.where(outbox.c.campaign == campaign)
    return int(connection.execute(query).rowcount or 0)


def pause(connection: sa.Connection, campaign: str, reason: str, now: datetime) -> bool:
    """Stop delivering ``campaign`` (claims skip it) until :func:`resume`; False when it was
    paused already, whose first reason is kept."""
    statement = upsert_statement(connection, campaign_pauses).values(
        campaign=campaign, paused_at=now, reason=reason[:1000]
    )
    inserted = connection.execute(
        statement.on_conflict_do_nothing(index_elements=["campaign"]).returning(
            campaign_pauses.c.campaign
        )
    ).first()  # rowcount is -1 on psycopg: RETURNING tells what was inserted
    return inserted is not None


def resume(connection: sa.Connection, campaign: str) -> bool:
    deleted = connection.execute(
        sa.delete(campaign_pauses).where(campaign_pauses.c.campaign == campaign)
    )
    return bool(deleted.rowcount)


def paused(connection: sa.Connection) -> dict[str, str]:
    return {r.campaign: r.reason for r in connection.execute(sa.select(campaign_pauses))}


def suppress(
    connection: sa.Connection, addresses: Sequence[str], reason: str, source: str, now: datetime
) -> None:
    """Keep ``addresses`` from being mailed again (by their hash); an address suppressed
    already keeps its first reason, unless that was an unsubscribe
    (``queries.suppression_insert``)."""
    if not addresses:
        return
    rows = [
        {"email_hash": email_hash(address), "reason": reason, "source": source, "created_at": now}
        for address in addresses
    ]
    connection.execute(suppression_insert(connection), rows)


def _said(error: str) -> str:
    """An error as stored: at most 1,000 characters and no e-mail address (a provider's
    message may quote the recipient)."""
    return mask_addresses(error)[:1000]
