"""The statements of the privacy rights: export, erasure and the retention purge.

What is erased where, in which order, and what is kept is decided by ``privacy`` (the
rules); this module only reads and writes. Where personal data lives is read from the schema
by column names the rules give (:func:`ties`), so a table added later is covered the day it
appears. Every statement runs on the caller's ``Connection``: an erasure is one transaction
(serialised by ``tombstones.serialise``), and so is one purge; only :func:`empty_wal`, which
must run after the commit, takes the engine.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Column as Column  # re-exported: the schema types the rules walk
from sqlalchemy import MetaData as MetaData

from recocamp.domain import OutgoingEmail, address_forms, email_hashes, id_forms
from recocamp.store import outbox
from recocamp.store.schema import (
    audit_log,
    contact_events,
    customers,
    decisions,
    erasures,
    purchases,
    suppressions,
)
from recocamp.store.schema import outbox as outbox_table

log = logging.getLogger(__name__)
Record = dict[str, Any]  # a row as column name → stored value


def empty_body() -> bytes:
    """An outbox body with nothing in it, in the outbox's own format."""
    return outbox.pack(OutgoingEmail(send_key="", to="", subject="", html="", text=""))


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose rows a privacy request selects: rows naming one of ``ids``, and rows holding
    ``email`` — not when ``exclusive`` (the address is shared and the request is for ``ids``
    alone: a row that holds the address and names nobody cannot be attributed to them)."""

    ids: tuple[str, ...]
    email: str | None  # trimmed and lower-case
    exclusive: bool = False

    @classmethod
    def of(cls, customer_id: str, email: str | None) -> Subject:
        return cls((customer_id,), email.strip().lower() if email else None)

    @property
    def forms(self) -> tuple[str, ...]:
        """``ids`` in every Unicode form rows may name them by (``domain.id_forms``): orders
        exported by another system name ``José`` decomposed, and they are his."""
        return id_forms(self.ids)


@dataclass(frozen=True, slots=True)
class Ties:
    """How rows of one table are tied to a person: customer-id and address columns."""

    table: sa.Table
    customer: tuple[sa.Column[Any], ...]
    address: tuple[sa.Column[Any], ...]

    def by_address(self, email: str) -> Any:
        """Rows holding ``email`` in any case and in any of the Unicode forms it is known by
        (``domain.address_forms``): a second account typed on another keyboard holds the same
        address decomposed. SQLite's ``lower()`` folds ASCII letters only, so each form is
        also asked for with its other letters in either case (:func:`cased_forms`)."""
        forms = cased_forms(address_forms(email))
        return sa.or_(*[sa.func.lower(c).in_(forms) for c in self.address])

    def where(self, subject: Subject) -> Any:
        clauses = [column.in_(subject.forms) for column in self.customer]
        if subject.email and self.address and not subject.exclusive:
            clauses.append(self.by_address(subject.email))
        return sa.or_(*clauses) if clauses else sa.false()


CASED_LETTERS = 6  # non-ASCII letters of an address asked for in both cases (2**6 forms)


def cased_forms(forms: tuple[str, ...]) -> tuple[str, ...]:
    """``forms`` (lower-case) and each with its first ``CASED_LETTERS`` non-ASCII letters in
    every mix of cases that has one character per letter: what SQLite's ASCII-only
    ``lower()`` makes of ``JÜRGEN@…`` is ``jÜrgen@…``. (PostgreSQL's ``lower()`` folds them
    all; the extra forms match nothing there.)"""
    found: dict[str, None] = {}
    for form in forms:
        letters = [i for i, ch in enumerate(form) if _casable(ch)][:CASED_LETTERS]
        for mask in range(2 ** len(letters)):
            chars = list(form)
            for bit, i in enumerate(letters):
                if mask >> bit & 1:
                    chars[i] = chars[i].upper()
            found["".join(chars)] = None
    return tuple(found)


def _casable(ch: str) -> bool:
    """A non-ASCII letter with a one-character capital (not ß: its capital is SS)."""
    upper = ch.upper()
    return not ch.isascii() and len(upper) == 1 and upper != ch


@dataclass(frozen=True, slots=True)
class Person:
    """Who is being erased, and the anonymous stand-in that replaces them."""

    subject: Subject
    stand_in: str
    send_keys: tuple[str, ...]  # of their e-mails: provider events may name only those

    def where(self, tie: Ties) -> Any:
        return tie.where(self.subject)


def ties(schema: MetaData, customer_key: re.Pattern[str], address: re.Pattern[str]) -> list[Ties]:
    """Every table with a text column whose name matches ``customer_key`` or ``address``
    (the ``customers`` table itself by its ``id``)."""
    found = []
    for table in schema.sorted_tables:
        text = [c for c in table.columns if isinstance(c.type, sa.String)]
        customer = tuple(c for c in text if customer_key.match(c.name))
        if table.name == customers.name:
            customer = (table.c.id,)
        addresses = tuple(c for c in text if address.match(c.name))
        if customer or addresses:
            found.append(Ties(table, customer, addresses))
    return found


def named_columns(schema: MetaData, pattern: re.Pattern[str]) -> list[Column[Any]]:
    """Columns whose name matches ``pattern``, flags aside (``channel_email`` is no address)."""
    return [
        c
        for t in schema.sorted_tables
        for c in t.columns
        if pattern.match(c.name) and not isinstance(c.type, sa.Boolean)
    ]


def _count(result: Any) -> int:
    return max(0, int(result.rowcount or 0))


# --- export --------------------------------------------------------------------------------


def customer_email(connection: sa.Connection, customer_id: str) -> tuple[bool, str | None]:
    """Whether the customers table holds ``customer_id`` (in any Unicode form: ``id_forms``,
    the id as given first), and the address it holds."""
    forms = id_forms((customer_id,))
    c = customers.c
    query = sa.select(c.email).where(c.id.in_(forms)).order_by((c.id == customer_id).desc())
    row = connection.execute(query.limit(1)).first()
    return (False, None) if row is None else (True, row.email)


def records(connection: sa.Connection, customer_id: str) -> list[tuple[str, str | None]]:
    """``(id, address)`` of every customers row of ``customer_id`` in any Unicode form
    (``domain.id_forms``): two systems' sign-ups may hold the id composed and decomposed."""
    c = customers.c
    query = sa.select(c.id, c.email).where(c.id.in_(id_forms((customer_id,)))).order_by(c.id)
    return [(row.id, row.email) for row in connection.execute(query)]


def sharers(connection: sa.Connection, tied: Sequence[Ties], subject: Subject) -> set[str]:
    """The other customer ids that rows holding the subject's address name (another account
    under the same address, in the customers table or in any other table tied by address)."""
    if not subject.email:
        return set()
    found: set[str] = set()
    for tie in tied:
        for column in tie.customer if tie.address else ():
            query = (
                sa.select(column)
                .where(tie.by_address(subject.email), column.is_not(None))
                .where(column.not_in(subject.forms))
                .distinct()
            )
            found |= set(connection.execute(query).scalars())
    return found


def tied_rows(connection: sa.Connection, tie: Ties, subject: Subject) -> list[Record]:
    """The rows of one table tied to the subject, as stored."""
    rows = connection.execute(sa.select(tie.table).where(tie.where(subject)))
    return [dict(row._mapping) for row in rows]


def audit_entries(connection: sa.Connection, customer_ids: Sequence[str]) -> list[Record]:
    """The audit log's entries about the customers, oldest first."""
    a = audit_log.c
    query = sa.select(audit_log).where(a.subject_type == "customer", a.subject_id.in_(customer_ids))
    return [dict(row._mapping) for row in connection.execute(query.order_by(a.id))]


def suppression(connection: sa.Connection, email: str) -> tuple[str, datetime] | None:
    """Why and since when the address is suppressed; None when it is not."""
    row = connection.execute(
        sa.select(suppressions)
        .where(suppressions.c.email_hash.in_(email_hashes(email)))
        .order_by(suppressions.c.created_at)
    ).first()
    return None if row is None else (row.reason, row.created_at)


# --- erasure -------------------------------------------------------------------------------


def holds_any(connection: sa.Connection, tied: Sequence[Ties], subject: Subject) -> bool:
    """Does any of the tables hold a row tied to the subject?"""
    for tie in tied:
        query = sa.select(sa.literal(1)).select_from(tie.table).where(tie.where(subject)).limit(1)
        if connection.execute(query).first() is not None:
            return True
    return False


def new_erasure(connection: sa.Connection, now: datetime, via: str) -> int:
    """The ``erasures`` row of an erasure under way; its id names the stand-in."""
    result = connection.execute(sa.insert(erasures).values(erased_at=now, via=via[:64], rows={}))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def finish_erasure(connection: sa.Connection, erasure_id: int, rows: dict[str, int]) -> None:
    connection.execute(sa.update(erasures).where(erasures.c.id == erasure_id).values(rows=rows))


def send_keys(connection: sa.Connection, customer_ids: Sequence[str]) -> tuple[str, ...]:
    """The send keys of the customers' e-mails."""
    query = sa.select(outbox_table.c.send_key).where(outbox_table.c.customer_id.in_(customer_ids))
    return tuple(connection.execute(query).scalars())


def delete_rows(connection: sa.Connection, tie: Ties, person: Person) -> int:
    return _count(connection.execute(sa.delete(tie.table).where(person.where(tie))))


def unlink_purchases(connection: sa.Connection, tie: Ties, person: Person) -> int:
    """Order lines lose their customer."""
    return _count(
        connection.execute(sa.update(tie.table).where(person.where(tie)).values(customer_id=None))
    )


def stand_in_decisions(connection: sa.Connection, tie: Ties, person: Person) -> int:
    """Decisions name the stand-in."""
    return _count(
        connection.execute(
            sa.update(tie.table).where(person.where(tie)).values(customer_id=person.stand_in)
        )
    )


def blank_emails(connection: sa.Connection, tie: Ties, person: Person) -> int:
    """E-mails name the stand-in and lose address, subject, body, provider id and error (and
    their send key ``campaign/customer/period``, which holds the customer id: it becomes
    ``erased/<stand-in>/<row id>/<period>``, keeping the period, which names the mailing and
    an NPS survey's "sent"); those not sent yet are cancelled."""
    o = tie.table.c
    found = connection.execute(sa.select(o.id, o.send_key).where(person.where(tie))).all()
    keys = [
        {"row": row_id, "key": f"erased/{person.stand_in}/{row_id}/{key.rpartition('/')[2]}"}
        for row_id, key in found
    ]
    if keys:
        rekey = sa.update(tie.table).where(o.id == sa.bindparam("row"))
        connection.execute(rekey.values(send_key=sa.bindparam("key")), keys)
    state = sa.case((o.state.in_(("queued", "claimed")), "cancelled"), else_=o.state)
    return _count(
        connection.execute(
            sa.update(tie.table)
            .where(person.where(tie))
            .values(
                customer_id=person.stand_in,
                recipient="",
                subject="",
                body=empty_body(),
                state=state,
                provider_message_id=None,
                last_error=None,
            )
        )
    )


def blank_contact_events(connection: sa.Connection, tie: Ties, person: Person) -> int:
    """Contact events (also those that name only one of the person's send keys) lose the
    customer, the send key and their details."""
    e = tie.table.c
    where = person.where(tie)
    where = sa.or_(where, e.send_key.in_(person.send_keys)) if person.send_keys else where
    return _count(
        connection.execute(
            sa.update(tie.table)
            .where(where)
            .values(
                customer_id=None,
                send_key=None,
                details={},
                event_key=sa.literal(f"erased/{person.stand_in}/") + sa.cast(e.id, sa.String),
            )
        )
    )


# The subject type of an erased customer's audit entries (migration 0024). Their subject id
# is the stand-in (``erased-<n>``), which a real customer id may also be: told apart by the
# type, not the id, so the purge of stand-ins' entries and a customer's own reads (export,
# last changes) never take one for the other.
ERASED_SUBJECT = "erased_customer"


def stand_in_audit(connection: sa.Connection, person: Person) -> int:
    """Audit entries about the person name the stand-in, as :data:`ERASED_SUBJECT`, and lose
    their details (their action and time stay)."""
    a = audit_log.c
    return _count(
        connection.execute(
            sa.update(audit_log)
            .where(a.subject_type == "customer", a.subject_id.in_(person.subject.forms))
            .values(subject_type=ERASED_SUBJECT, subject_id=person.stand_in, details={})
        )
    )


@contextmanager
def scrubbing(connection: sa.Connection) -> Iterator[None]:
    """SQLite overwrites what this connection deletes or rewrites, instead of leaving it in
    free pages of the database file."""
    sqlite = connection.dialect.name == "sqlite"
    if sqlite:
        connection.exec_driver_sql("PRAGMA secure_delete = ON")
    try:
        yield
    finally:
        if sqlite:
            connection.exec_driver_sql("PRAGMA secure_delete = OFF")


def empty_wal(engine: sa.Engine, attempts: int = 20) -> bool:
    """SQLite: copy the (overwritten) pages into the database file and truncate the
    write-ahead log, which still holds the old page images; retried while readers hold it."""
    if engine.dialect.name != "sqlite":
        return True
    for _ in range(attempts):
        with engine.connect() as connection:
            busy = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
        if busy is not None and busy[0] == 0:
            return True
        time.sleep(0.05)
    log.warning(
        "the SQLite write-ahead log could not be emptied now: readers hold it; "
        "the next checkpoint overwrites it"
    )
    return False


# --- retention -----------------------------------------------------------------------------


def blank_bodies(connection: sa.Connection, states: Sequence[str], before: datetime) -> int:
    """E-mails in ``states`` created before ``before`` lose address, subject, body and error
    (the row stays for caps and measurement)."""
    o = outbox_table.c
    return _count(
        connection.execute(
            sa.update(outbox_table)
            .where(
                o.state.in_(states),
                o.created_at < before,
                sa.or_(o.recipient != "", o.subject != ""),
            )
            .values(recipient="", subject="", body=empty_body(), last_error=None)
        )
    )


def delete_contact_events(connection: sa.Connection, before: datetime) -> int:
    return _count(connection.execute(sa.delete(contact_events).where(contact_events.c.at < before)))


def delete_decisions(connection: sa.Connection, before: datetime) -> int:
    return _count(connection.execute(sa.delete(decisions).where(decisions.c.decided_at < before)))


def delete_stand_in_audit(connection: sa.Connection, before: datetime) -> int:
    """Audit entries about erased customers' stand-ins (:data:`ERASED_SUBJECT`) before
    ``before``. They were recognised by their subject id's ``erased-`` prefix, and a real
    customer whose id starts so lost their entries with them."""
    a = audit_log.c
    return _count(
        connection.execute(
            sa.delete(audit_log).where(a.subject_type == ERASED_SUBJECT, a.at < before)
        )
    )


def customers_with_orders(connection: sa.Connection) -> set[str]:
    """Every customer the store holds order lines of."""
    p = purchases.c
    query = sa.select(p.customer_id).where(p.customer_id.is_not(None)).distinct()
    return set(connection.execute(query).scalars())
