"""Erasure (GDPR Art. 17): the customer removed everywhere, and kept out.

In one transaction, serialised against every way in (``tombstones.serialise``): the customer
row goes; tables that feed non-identifying aggregates keep their rows with the person taken
out (:data:`KEEPS`): order lines lose their customer (popularity and revenue KPIs stay
right), decisions, e-mails and audit entries name an anonymous stand-in (``erased-<n>``, one
per erasure: the campaign counts stay right) and lose addresses, subjects, bodies and event
details; every other row tied to the customer (``holdings.ties``) is deleted (the top-N
cache entry at once), and a tombstone is written (``store.tombstones``: keyed hashes of the
id and the address, no personal data) that every way in checks, so no re-import, drop-folder
file, API call or purchase event brings them back. Then the customer's rows are removed from
every saved model's artifacts and from every file recocamp writes (``erasure_files``: kept
drop-folder files, rejected files, the demo's files), and on SQLite the freed pages are
overwritten (``secure_delete``) and the write-ahead log is emptied. ``files_clean`` is true
only when all of that succeeded; what erasure cannot reach is listed
(``erasure_files.NOT_COVERED``). The model trained next learns from none of it.

Kept on purpose: the suppression list's SHA-256 of the address (it is what keeps an address
that bounced, complained or unsubscribed from being mailed again if a feed brings it back),
an ``erasures`` row saying when, through which channel and how many rows, and the tombstone
(keyed hashes only; lifted by a new sign-up with a fresh consent, see ``api.events``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from recocamp import metrics
from recocamp.data import erasure_files
from recocamp.privacy.holdings import ties
from recocamp.recommender import models as model
from recocamp.settings import Settings
from recocamp.store import notifications, registry, tombstones
from recocamp.store import privacy as store
from recocamp.store.engine import Connection, Engine
from recocamp.store.privacy import MetaData, Person, Ties
from recocamp.store.queries import audit
from recocamp.store.schema import metadata

log = logging.getLogger(__name__)
STAND_IN = "erased-"  # + the erasure's id: the anonymous stand-in of an erased customer


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
    "purchases": store.unlink_purchases,
    "decisions": store.stand_in_decisions,
    "outbox": store.blank_emails,
    "contact_events": store.blank_contact_events,
}


def erase(
    engine: Engine,
    settings: Settings,
    customer_id: str,
    now: datetime,
    via: str,
    schema: MetaData = metadata,
) -> ErasureReport | None:
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
        notifications.erased(connection, customer_id)
        audit(
            connection,
            at=now,
            actor=via[:200],
            action="customer_erased",
            subject_type="erasure",
            subject_id=str(erasure_id),
            details={"rows": rows},
        )
    artifacts, missing = _scrub_artifacts(engine, settings, {customer_id})
    files = erasure_files.scrub(erasure_files.written_dirs(settings), customer_id, email)
    clean = store.empty_wal(engine) and not files.failed and not missing
    metrics.PRIVACY_REQUESTS.labels("erasure", via).inc()
    log.info(
        "erasure %d via %s: rows %s, %d model(s), %d file(s) scrubbed, %d not",
        erasure_id,
        via,
        rows,
        artifacts,
        len(files.rewritten),
        len(files.failed),
    )
    return ErasureReport(
        erasure_id,
        rows,
        artifacts,
        clean,
        len(files.rewritten),
        tuple(str(path) for path in (*missing, *files.failed)),
    )


def _erase_rows(connection: Connection, tie: Ties, person: Person) -> int:
    keep = KEEPS.get(tie.table.name, store.delete_rows)
    return keep(connection, tie, person)


def _scrub_artifacts(
    engine: Engine, settings: Settings, customer_ids: set[str]
) -> tuple[int, list[Path]]:
    """Remove the customers from every saved model that still has artifacts; returns how
    many held them, and the directories of models that should have artifacts (candidate,
    live, rollback target) but have none there: a model that cannot be found cannot be
    scrubbed, so the erasure is not clean (it must not pass for one). A relative
    ``models.path`` (older versions) is relative to the settings file's directory."""
    with engine.connect() as connection:
        paths = registry.artifact_paths(connection)
        kept = registry.kept_artifact_paths(connection)
    scrubbed, missing = 0, []
    for path in paths:
        directory = settings.locate(path)
        if not (directory / "model.npz").exists():
            if path in kept:
                log.error("model artifacts missing at %s: the erasure cannot clean them", directory)
                missing.append(directory)
            continue
        if model.drop_customers(directory, customer_ids):
            scrubbed += 1
    return scrubbed, missing
