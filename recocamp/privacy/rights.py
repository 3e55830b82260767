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
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from recocamp import metrics
from recocamp.data import drop_folder, erasure_files
from recocamp.recommender import models as model
from recocamp.settings import Settings
from recocamp.store import outbox, registry, tombstones
from recocamp.store import privacy as store
from recocamp.store.engine import Connection, Engine
from recocamp.store.privacy import Column, MetaData, Person, Ties
from recocamp.store.queries import audit
from recocamp.store.schema import metadata

log = logging.getLogger(__name__)
CUSTOMER_KEY = re.compile(r"^(?:.+_)?customer_id$")
ADDRESS = re.compile(r"^(?:(?:.+_)?email|recipient)$")
PERSONAL = re.compile(
    r"^(?:(?:.+_)?customer_id|(?:.+_)?email|recipient|(?:first|last|full|middle)_name|"
    r"phone(?:_number)?|birthday|date_of_birth|(?:street_|postal_|home_)?address|ip_address)$"
)
FINAL_STATES = ("sent", "delivered", "bounced", "failed", "cancelled")
STAND_IN = "erased-"  # + the erasure's id: the anonymous stand-in of an erased customer


def ties(schema: MetaData = metadata) -> list[Ties]:
    """Every table that holds rows about a customer, found by column names."""
    return store.ties(schema, CUSTOMER_KEY, ADDRESS)


def personal_columns(schema: MetaData = metadata) -> list[Column[Any]]:
    """Columns that identify a person by their name (flags like ``channel_email`` do not)."""
    return store.named_columns(schema, PERSONAL)


# --- export --------------------------------------------------------------------------------


def export(engine: Engine, customer_id: str, now: datetime,
           schema: MetaData = metadata) -> dict[str, Any] | None:  # fmt: skip
    """Everything we hold about one customer as a JSON-ready document; None if nothing."""
    with engine.connect() as connection:
        _, email = store.customer_email(connection, customer_id)
        tables = {}
        for tie in ties(schema):
            found = [_document(row) for row in store.tied_rows(connection, tie, customer_id, email)]
            if found:
                tables[tie.table.name] = found
        audits = [_document(row) for row in store.audit_entries(connection, customer_id)]
        suppressed = store.suppression(connection, email) if email else None
    if not tables and not audits:
        return None
    return {
        "customer_id": customer_id, "exported_at": now.isoformat(),
        "about": "Everything recocamp holds about this customer (GDPR Art. 15 and 20): one "
                 "list of rows per table; e-mail bodies unpacked.",
        "tables": tables, "audit_log": audits,
        "suppressed": None if suppressed is None else {
            "reason": suppressed[0], "since": suppressed[1].isoformat()},
    }  # fmt: skip


def _document(row: store.Record) -> dict[str, Any]:
    return {k: _json(v) for k, v in row.items()}


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


Keep = Callable[[Connection, Ties, Person], int]

# tables that keep their rows, with the person taken out (the rest lose the rows)
KEEPS: dict[str, Keep] = {
    "purchases": store.unlink_purchases,  # popularity and revenue KPIs stay right
    "decisions": store.stand_in_decisions,  # the campaign counts stay right
    "outbox": store.blank_emails,
    "contact_events": store.blank_contact_events,
}


def erase(engine: Engine, settings: Settings, customer_id: str, now: datetime, via: str,
          schema: MetaData = metadata) -> ErasureReport | None:  # fmt: skip
    """Remove a customer everywhere (see the module docstring); None if we hold nothing.
    Needs the tombstones' key (``tombstones.KeyMissing`` without it): an erasure that a
    re-import could undo is not done at all."""
    key = tombstones.key_of(settings)
    if key is None:
        raise tombstones.KeyMissing("erasure")
    with engine.begin() as connection, store.scrubbing(connection):
        tombstones.serialise(connection, erasing=True)  # first: see serialise (SQLite too)
        known, email = store.customer_email(connection, customer_id)
        tied = ties(schema)
        if not known and not store.holds_any(connection, tied, customer_id, email):
            return None
        erasure_id = store.new_erasure(connection, now, via)
        tombstones.record(connection, key, customer_id, email, now)
        keys = store.send_keys(connection, customer_id)
        who = Person(customer_id, email, f"{STAND_IN}{erasure_id}", keys)
        rows = {tie.table.name: _erase_rows(connection, tie, who) for tie in tied}
        rows["audit_log"] = store.stand_in_audit(connection, who)
        rows = {name: number for name, number in rows.items() if number}
        store.finish_erasure(connection, erasure_id, rows)
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
    clean = store.empty_wal(engine) and not files.failed
    metrics.PRIVACY_REQUESTS.labels("erasure", via).inc()
    log.info("erasure %d via %s: rows %s, %d model(s), %d file(s) scrubbed, %d not", erasure_id,
             via, rows, artifacts, len(files.rewritten), len(files.failed))  # fmt: skip
    return ErasureReport(erasure_id, rows, artifacts, clean, len(files.rewritten),
                         tuple(str(path) for path in files.failed))  # fmt: skip


def _erase_rows(connection: Connection, tie: Ties, person: Person) -> int:
    keep = KEEPS.get(tie.table.name, store.delete_rows)
    return keep(connection, tie, person)


def _scrub_artifacts(engine: Engine, customer_ids: set[str]) -> int:
    """Remove the customers from every saved model that still has artifacts."""
    with engine.connect() as connection:
        paths = registry.artifact_paths(connection)
    scrubbed = 0
    for path in paths:
        directory = Path(path)
        if (directory / "model.npz").exists() and model.drop_customers(directory, customer_ids):
            scrubbed += 1
    return scrubbed


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


def purge(engine: Engine, settings: Settings, now: datetime) -> PurgeReport:
    """Remove personal data past its retention period (``[privacy]``); safe to run often."""
    days = settings.privacy
    def before(period: int) -> datetime:
        return now - timedelta(days=period)

    with engine.begin() as connection, store.scrubbing(connection):
        bodies = store.blank_bodies(connection, FINAL_STATES, before(days.outbox_body_days))
        events = store.delete_contact_events(connection, before(days.contact_events_days))
        decided = store.delete_decisions(connection, before(days.decisions_days))
        audits = store.delete_stand_in_audit(connection, STAND_IN, before(days.erased_audit_days))
        directories = _old_artifacts(connection, now - timedelta(days=days.retired_model_days))
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)
    orphans = _scrub_orphans(engine)
    store.empty_wal(engine)
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


def _scrub_orphans(engine: Engine) -> int:
    """Remove from saved models every customer the store holds no order lines of any more:
    somebody erased while that model was being trained (erasure scrubs the models that
    existed then; this catches the one that was still being written)."""
    with engine.connect() as connection:
        paths = [Path(p) for p in registry.artifact_paths(connection)]
        known = store.customers_with_orders(connection)
    removed = 0
    for directory in paths:
        if (directory / "model.npz").exists():
            gone = model.customer_ids(directory) - known
            removed += model.drop_customers(directory, gone) if gone else 0
    return removed


def _old_artifacts(connection: Connection, before: datetime) -> list[Path]:
    """Artifact directories of retired/rejected models trained before ``before``."""
    keep = registry.previous_live(connection)
    return [
        Path(path)
        for version, path in registry.retired_before(connection, before)
        if (keep is None or version != keep.version) and Path(path).exists()
    ]
