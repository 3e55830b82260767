"""Privacy: what we hold about a customer (GDPR Art. 15/20), erasure (Art. 17), retention.

Where personal data lives is read from the schema (``store.schema.metadata``), not listed by
hand, so a table somebody adds later is covered the day it appears:

- a text column named ``customer_id`` or ``…_customer_id`` ties a row to a customer (the
  ``customers`` table itself by its ``id``), and so does a text column holding an address
  (``email``, ``…_email``, ``recipient``), matched case-insensitively;
- :data:`PERSONAL` names every column that identifies a person; a test fails for any such
  column of a table that neither ties rows to a customer nor has a rule here.

**Export** (:func:`export`): every row of every table tied to the customer, with e-mail
bodies unpacked, plus the audit entries about them and whether their address is suppressed.

**Erasure** (:func:`erase`), in one transaction: the customer row goes; tables that feed
non-identifying aggregates keep their rows with the person taken out (:data:`KEEPS`):
order lines lose their customer (popularity and revenue KPIs stay right), decisions,
e-mails and audit entries name an anonymous stand-in (``erased-<n>``, one per erasure: the
campaign counts stay right) and lose addresses, subjects, bodies and event details; every
other row tied to the customer is deleted (the top-N cache entry at once), and a tombstone
is written (``store.tombstones``: keyed hashes of the id and the address, no personal
data) that every way in checks, so no re-import, drop-folder file, API call or purchase
event brings them back. Then the customer's rows are removed from every saved model's
artifacts and from every file recocamp writes (``erasure_files``: kept drop-folder files,
rejected files, the demo's files), and on SQLite the freed pages are overwritten
(``secure_delete``) and the write-ahead log is emptied. ``files_clean`` is true only when
all of that succeeded; what erasure cannot reach is listed (``erasure_files.NOT_COVERED``).
The model trained next learns from none of it.

Kept on purpose: the suppression list's SHA-256 of the address (it is what keeps an address
that bounced, complained or unsubscribed from being mailed again if a feed brings it back),
an ``erasures`` row saying when, through which channel and how many rows, and the tombstone
(keyed hashes only; lifted by a new sign-up with a fresh consent, see ``api_events``).

**Retention** (:func:`purge`, ``[privacy]`` settings; the worker runs it daily): bodies,
subjects and addresses of e-mails that left the outbox are blanked after
``outbox_body_days`` (the row stays for caps and measurement), contact events are deleted
after ``contact_events_days``, decisions after ``decisions_days``, anonymised audit entries
of erased customers after ``erased_audit_days``, and the artifacts of retired or rejected
models (which hold pseudonymous customer rows) after ``retired_model_days`` — except the
rollback target — and imported drop-folder files after ``[ingest] keep_processed_days``
(0, the default: they are deleted as soon as they are imported). Customers, their orders,
consent records and the audit log of living customers are kept as long as the shop keeps
the customer.
"""

from __future__ import annotations

import base64
import logging
import re
import shutil
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from recocamp import metrics
from recocamp.data import drop_folder, erasure_files
from recocamp.domain import OutgoingEmail, email_hash
from recocamp.recommender import models as model
from recocamp.settings import Settings
from recocamp.store import outbox, registry, tombstones
from recocamp.store.queries import audit
from recocamp.store.schema import (
    audit_log,
    contact_events,
    customers,
    decisions,
    erasures,
    metadata,
    models,
    purchases,
    suppressions,
)
from recocamp.store.schema import outbox as outbox_table

log = logging.getLogger(__name__)
CUSTOMER_KEY = re.compile(r"^(?:.+_)?customer_id$")
ADDRESS = re.compile(r"^(?:(?:.+_)?email|recipient)$")
PERSONAL = re.compile(
    r"^(?:(?:.+_)?customer_id|(?:.+_)?email|recipient|(?:first|last|full|middle)_name|"
    r"phone(?:_number)?|birthday|date_of_birth|(?:street_|postal_|home_)?address|ip_address)$"
)
FINAL_STATES = ("sent", "delivered", "bounced", "failed", "cancelled")


def empty_body() -> bytes:
    """An outbox body with nothing in it, in the outbox's own format."""
    return outbox.pack(OutgoingEmail(send_key="", to="", subject="", html="", text=""))


@dataclass(frozen=True, slots=True)
class Ties:
    """How rows of one table are tied to a person: customer-id and address columns."""

    table: sa.Table
    customer: tuple[sa.Column[Any], ...]
    address: tuple[sa.Column[Any], ...]

    def where(self, customer_id: str, email: str | None) -> Any:
        clauses = [column == customer_id for column in self.customer]
        if email:
            clauses += [sa.func.lower(column) == email.strip().lower() for column in self.address]
        return sa.or_(*clauses) if clauses else sa.false()


def ties(schema: sa.MetaData = metadata) -> list[Ties]:
    """Every table that holds rows about a customer, found by column names."""
    found = []
    for table in schema.sorted_tables:
        text = [c for c in table.columns if isinstance(c.type, sa.String)]
        customer = tuple(c for c in text if CUSTOMER_KEY.match(c.name))
        if table.name == customers.name:
            customer = (table.c.id,)
        address = tuple(c for c in text if ADDRESS.match(c.name))
        if customer or address:
            found.append(Ties(table, customer, address))
    return found


def personal_columns(schema: sa.MetaData = metadata) -> list[sa.Column[Any]]:
    """Columns that identify a person by their name (flags like ``channel_email`` do not)."""
    return [c for t in schema.sorted_tables for c in t.columns
            if PERSONAL.match(c.name) and not isinstance(c.type, sa.Boolean)]  # fmt: skip


# --- export --------------------------------------------------------------------------------


def export(engine: sa.Engine, customer_id: str, now: datetime,
           schema: sa.MetaData = metadata) -> dict[str, Any] | None:  # fmt: skip
    """Everything we hold about one customer as a JSON-ready document; None if nothing."""
    with engine.connect() as connection:
        person = connection.execute(
            sa.select(customers).where(customers.c.id == customer_id)).first()  # fmt: skip
        email = person.email if person is not None else None
        tables = {}
        for tie in ties(schema):
            rows = connection.execute(sa.select(tie.table).where(tie.where(customer_id, email)))
            found = [{k: _json(v) for k, v in row._mapping.items()} for row in rows]
            if found:
                tables[tie.table.name] = found
        audits = [{k: _json(v) for k, v in row._mapping.items()} for row in connection.execute(
            sa.select(audit_log).where(audit_log.c.subject_type == "customer",
                                       audit_log.c.subject_id == customer_id)
            .order_by(audit_log.c.id))]  # fmt: skip
        suppressed = connection.execute(sa.select(suppressions).where(
            suppressions.c.email_hash == email_hash(email))).first() if email else None  # fmt: skip
    if not tables and not audits:
        return None
    return {
        "customer_id": customer_id, "exported_at": now.isoformat(),
        "about": "Everything recocamp holds about this customer (GDPR Art. 15 and 20): one "
                 "list of rows per table; e-mail bodies unpacked.",
        "tables": tables, "audit_log": audits,
        "suppressed": None if suppressed is None else {
            "reason": suppressed.reason, "since": suppressed.created_at.isoformat()},
    }  # fmt: skip


def _json(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return outbox.load_body(value)
        except (zlib.error, ValueError):
            return {"base64": base64.b64encode(value).decode()}
    return value


# --- erasure -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErasureReport:
    erasure_id: int
    rows: dict[str, int]
    artifacts: int  # saved models the customer was removed from
    files_clean: bool  # every file we know of is clean: the SQLite write-ahead log could be
    # emptied (no reader held it) and every file of erasure_files.written_dirs was cleaned
    files: int = 0  # files of erasure_files.written_dirs rewritten without the customer
    files_left: tuple[str, ...] = ()  # files that could not be cleaned (their paths)
    not_covered: tuple[str, ...] = erasure_files.NOT_COVERED


@dataclass(frozen=True, slots=True)
class Person:
    """Who is being erased, and the anonymous stand-in that replaces them."""

    customer_id: str
    email: str | None
    stand_in: str
    send_keys: tuple[str, ...]  # of their e-mails: provider events may name only those


Keep = Callable[[sa.Connection, sa.Table, Any, Person], int]


def _purchases(connection: sa.Connection, table: sa.Table, where: Any, person: Person) -> int:
    return _count(connection.execute(sa.update(table).where(where).values(customer_id=None)))


def _decisions(connection: sa.Connection, table: sa.Table, where: Any, person: Person) -> int:
    return _count(connection.execute(sa.update(table).where(where).values(
        customer_id=person.stand_in)))  # fmt: skip


def _outbox(connection: sa.Connection, table: sa.Table, where: Any, person: Person) -> int:
    o = table.c
    state = sa.case((o.state.in_(("queued", "claimed")), "cancelled"), else_=o.state)
    return _count(connection.execute(sa.update(table).where(where).values(
        customer_id=person.stand_in, recipient="", subject="", body=empty_body(), state=state,
        send_key=sa.literal(f"erased/{person.stand_in}/") + sa.cast(o.id, sa.String),
        provider_message_id=None, last_error=None)))  # fmt: skip


def _contact_events(connection: sa.Connection, table: sa.Table, where: Any,
                    person: Person) -> int:  # fmt: skip
    e = table.c
    where = sa.or_(where, e.send_key.in_(person.send_keys)) if person.send_keys else where
    return _count(
        connection.execute(
            sa.update(table)
            .where(where)
            .values(
                customer_id=None,
                send_key=None,
                details={},
                event_key=sa.literal(f"erased/{person.stand_in}/") + sa.cast(e.id, sa.String),
            )
        )
    )


# tables that keep their rows, with the person taken out (the rest lose the rows)
KEEPS: dict[str, Keep] = {
    "purchases": _purchases,
    "decisions": _decisions,
    "outbox": _outbox,
    "contact_events": _contact_events,
}


def _count(result: Any) -> int:
    return max(0, int(result.rowcount or 0))


def erase(engine: sa.Engine, settings: Settings, customer_id: str, now: datetime, via: str,
          schema: sa.MetaData = metadata) -> ErasureReport | None:  # fmt: skip
    """Remove a customer everywhere (see the module docstring); None if we hold nothing.
    Needs the tombstones' key (``tombstones.KeyMissing`` without it): an erasure that a
    re-import could undo is not done at all."""
    key = tombstones.key_of(settings)
    if key is None:
        raise tombstones.KeyMissing("erasure")
    with engine.begin() as connection, _scrubbing(connection):
        tombstones.serialise(connection, erasing=True)  # first: see serialise (SQLite too)
        person = connection.execute(sa.select(customers.c.email).where(
            customers.c.id == customer_id)).first()  # fmt: skip
        email = person.email if person is not None else None
        tied = [(tie, tie.where(customer_id, email)) for tie in ties(schema)]
        if person is None and not any(_exists(connection, tie.table, where) for tie, where in tied):
            return None
        erasure_id = _new_erasure(connection, now, via)
        tombstones.record(connection, key, customer_id, email, now)
        keys = tuple(connection.execute(sa.select(outbox_table.c.send_key).where(
            outbox_table.c.customer_id == customer_id)).scalars())  # fmt: skip
        who = Person(customer_id, email, f"erased-{erasure_id}", keys)
        rows = {tie.table.name: _erase_rows(connection, tie, where, who) for tie, where in tied}
        rows["audit_log"] = _count(connection.execute(sa.update(audit_log).where(
            audit_log.c.subject_type == "customer", audit_log.c.subject_id == customer_id)
            .values(subject_id=who.stand_in, details={})))  # fmt: skip
        rows = {name: number for name, number in rows.items() if number}
        connection.execute(sa.update(erasures).where(erasures.c.id == erasure_id).values(rows=rows))
        audit(
            connection,
            at=now,
            actor=via[:200],
            action="customer_erased",
            subject_type="erasure",
            subject_id=str(erasure_id),
            details={"rows": rows},
        )
    artifacts = _scrub_artifacts(engine, {customer_id})
    files = erasure_files.scrub(erasure_files.written_dirs(settings), customer_id, email)
    clean = _empty_wal(engine) and not files.failed
    metrics.PRIVACY_REQUESTS.labels("erasure", via).inc()
    log.info("erasure %d via %s: rows %s, %d model(s), %d file(s) scrubbed, %d not", erasure_id,
             via, rows, artifacts, len(files.rewritten), len(files.failed))  # fmt: skip
    return ErasureReport(erasure_id, rows, artifacts, clean, len(files.rewritten),
                         tuple(str(path) for path in files.failed))  # fmt: skip


def _new_erasure(connection: sa.Connection, now: datetime, via: str) -> int:
    result = connection.execute(sa.insert(erasures).values(erased_at=now, via=via[:64], rows={}))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _exists(connection: sa.Connection, table: sa.Table, where: Any) -> bool:
    return connection.execute(sa.select(sa.literal(1)).select_from(table).where(where)
                              .limit(1)).first() is not None  # fmt: skip


def _erase_rows(connection: sa.Connection, tie: Ties, where: Any, person: Person) -> int:
    keep = KEEPS.get(tie.table.name)
    if keep is not None:
        return keep(connection, tie.table, where, person)
    return _count(connection.execute(sa.delete(tie.table).where(where)))


def _scrub_artifacts(engine: sa.Engine, customer_ids: set[str]) -> int:
    """Remove the customers from every saved model that still has artifacts."""
    with engine.connect() as connection:
        paths = list(connection.execute(sa.select(models.c.path)).scalars())
    scrubbed = 0
    for path in paths:
        directory = Path(path)
        if (directory / "model.npz").exists() and model.drop_customers(directory, customer_ids):
            scrubbed += 1
    return scrubbed


@contextmanager
def _scrubbing(connection: sa.Connection) -> Iterator[None]:
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


def _empty_wal(engine: sa.Engine, attempts: int = 20) -> bool:
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
    log.warning("the SQLite write-ahead log could not be emptied now: readers hold it; "
                "the next checkpoint overwrites it")  # fmt: skip
    return False


# --- retention -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What one purge removed (rows, or model artifact directories)."""

    outbox_bodies: int = 0
    contact_events: int = 0
    decisions: int = 0
    erased_audit_entries: int = 0
    model_artifacts: int = 0
    model_customer_rows: int = 0  # of customers erased while a model was being trained
    processed_files: int = 0  # imported drop-folder files past [ingest] keep_processed_days
    kept: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def counts(self) -> dict[str, int]:
        """What was removed, by kind (for the worker's job log and metrics)."""
        return {k: v for k, v in self.as_dict().items() if isinstance(v, int)}


KEPT = {
    "customers, orders, consent": "as long as the shop keeps the customer (erase to remove)",
    "suppression hashes": "always: they keep bounced, complained and unsubscribed addresses "
                          "from being mailed again",
    "erasures": "always: when and how a customer was erased, no identifier",
    "erasure tombstones": "always: keyed hashes of an erased customer's id and address, so "
                          "no feed brings them back (a new sign-up lifts them)",
    "rejected drop-folder files": "until the operator deletes them (erasure cleans them)",
    "rollback model": "the model that was live before the current one",
}  # fmt: skip


def purge(engine: sa.Engine, settings: Settings, now: datetime) -> PurgeReport:
    """Remove personal data past its retention period (``[privacy]``); safe to run often."""
    days = settings.privacy
    o, e, d, a = outbox_table.c, contact_events.c, decisions.c, audit_log.c
    with engine.begin() as connection, _scrubbing(connection):
        bodies = _count(connection.execute(sa.update(outbox_table).where(
            o.state.in_(FINAL_STATES), o.created_at < now - timedelta(days=days.outbox_body_days),
            sa.or_(o.recipient != "", o.subject != ""),
        ).values(recipient="", subject="", body=empty_body(), last_error=None)))  # fmt: skip
        events = _count(connection.execute(sa.delete(contact_events).where(
            e.at < now - timedelta(days=days.contact_events_days))))  # fmt: skip
        decided = _count(connection.execute(sa.delete(decisions).where(
            d.decided_at < now - timedelta(days=days.decisions_days))))  # fmt: skip
        audits = _count(connection.execute(sa.delete(audit_log).where(
            a.subject_type == "customer", a.subject_id.like("erased-%"),
            a.at < now - timedelta(days=days.erased_audit_days))))  # fmt: skip
        directories = _old_artifacts(connection, now - timedelta(days=days.retired_model_days))
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
    orphans = _scrub_orphans(engine)
    _empty_wal(engine)
    files = _old_processed_files(settings, now)
    report = PurgeReport(bodies, events, decided, audits, len(directories), orphans, files, KEPT)
    log.info("privacy purge: %s", {k: v for k, v in report.as_dict().items() if k != "kept"})
    return report


def _old_processed_files(settings: Settings, now: datetime) -> int:
    """Delete imported drop-folder files kept past ``[ingest] keep_processed_days``."""
    before = now - timedelta(days=settings.ingest.keep_processed_days)
    removed = 0
    for path in drop_folder.expired(settings.ingest.processed_dir, before):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def _scrub_orphans(engine: sa.Engine) -> int:
    """Remove from saved models every customer the store holds no order lines of any more:
    somebody erased while that model was being trained (erasure scrubs the models that
    existed then; this catches the one that was still being written)."""
    with engine.connect() as connection:
        paths = [Path(p) for p in connection.execute(sa.select(models.c.path)).scalars()]
        known = set(connection.execute(sa.select(purchases.c.customer_id).where(
            purchases.c.customer_id.is_not(None)).distinct()).scalars())  # fmt: skip
    removed = 0
    for directory in paths:
        if (directory / "model.npz").exists():
            gone = model.customer_ids(directory) - known
            removed += model.drop_customers(directory, gone) if gone else 0
    return removed


def _old_artifacts(connection: sa.Connection, before: datetime) -> list[Path]:
    """Artifact directories of retired/rejected models trained before ``before``."""
    keep = registry.previous_live(connection)
    rows = connection.execute(sa.select(models.c.version, models.c.path).where(
        models.c.status.in_(("retired", "rejected")), models.c.trained_at < before))  # fmt: skip
    return [
        Path(row.path)
        for row in rows
        if (keep is None or row.version != keep.version) and Path(row.path).exists()
    ]
