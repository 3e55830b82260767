"""Retention: personal data removed when its period is over (``[privacy]`` settings).

The purge (:func:`purge`; the worker runs it daily, ``recocamp privacy purge`` and the API
on demand): bodies, subjects and addresses of e-mails that left the outbox are blanked after
``outbox_body_days`` (the row stays for caps and measurement), contact events are deleted
after ``contact_events_days``, decisions after ``decisions_days``, anonymised audit entries
of erased customers after ``erased_audit_days``, and the artifacts of retired or rejected
models (which hold pseudonymous customer rows) after ``retired_model_days`` — except the
rollback target; also those of a model a killed training left unregistered — and
imported drop-folder files after ``[ingest] keep_processed_days`` (0, the default: they
are deleted as soon as they are imported), and the worker's run history (``runs``) after
``job_runs_days``, but for what the worker still reads, and the workers (``runs workers``)
whose last heartbeat is as old. Customers, their orders, consent
records and the audit log of living customers are kept as long as the shop keeps the
customer (:data:`KEPT` says what is kept and why).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from recocamp.data import drop_folder
from recocamp.errors import ModelError
from recocamp.privacy import artifacts
from recocamp.recommender import models as model
from recocamp.settings import Settings
from recocamp.store import privacy as store
from recocamp.store import registry, runs
from recocamp.store.engine import Connection, Engine

log = logging.getLogger(__name__)
FINAL_STATES = ("sent", "delivered", "bounced", "failed", "cancelled")  # left the outbox


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
    job_runs: int = 0  # the worker's run history (``runs``)
    workers: int = 0  # workers without a heartbeat for as long (``runs workers``)
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
    "erasure times by id": "always: the keyed hash of an erased customer id and when, so "
    "links issued before the erasure stay void after a new sign-up",
    "rejected drop-folder files": "until the operator deletes them (erasure cleans them)",
    "rollback model": "the model that was live before the current one",
    "purchase forecasts": "the newest only: each training replaces them (erasure and an "
    "objection to profiling delete a customer's row)",
}


def purge(engine: Engine, settings: Settings, now: datetime) -> PurgeReport:
    """Remove personal data past its retention period (``[privacy]``); safe to run often."""
    days = settings.privacy

    def before(period: int) -> datetime:
        return now - timedelta(days=period)

    with engine.begin() as connection, store.scrubbing(connection):
        bodies = store.blank_bodies(connection, FINAL_STATES, before(days.outbox_body_days))
        events = store.delete_contact_events(connection, before(days.contact_events_days))
        decided = store.delete_decisions(connection, before(days.decisions_days))
        audits = store.delete_stand_in_audit(connection, before(days.erased_audit_days))
        job_runs = runs.delete_finished_before(connection, before(days.job_runs_days))
        gone_workers = runs.delete_workers_gone_before(connection, before(days.job_runs_days))
        # under the registry's lock, deleted before it is released: a model promoted
        # meanwhile is not retired any more, or finds its artifacts gone and stays retired
        registry.lock_models(connection)
        directories = _old_artifacts(connection, settings, before(days.retired_model_days))
        directories += _left_behind(connection, settings, before(days.retired_model_days))
        for directory in directories:
            shutil.rmtree(directory, ignore_errors=True)
    orphans = _scrub_orphans(engine, settings)
    store.empty_wal(engine)
    files = _old_processed_files(settings, now)
    report = PurgeReport(
        bodies,
        events,
        decided,
        audits,
        len(directories),
        orphans,
        files,
        job_runs,
        gone_workers,
        KEPT,
    )
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


def _scrub_orphans(engine: Engine, settings: Settings) -> int:
    """Remove from saved models every customer the store holds no order lines of any more:
    somebody erased while that model was being trained (erasure scrubs the models that
    existed then; this catches the one that was still being written)."""
    with engine.connect() as connection:
        paths = [settings.locate(p) for p in registry.artifact_paths(connection)]
        known = store.customers_with_orders(connection)
    removed = 0
    for directory in paths:
        if not (directory / "model.npz").exists():
            continue
        try:
            gone = model.customer_ids(directory) - known
            removed += model.drop_customers(directory, gone) if gone else 0
        except ModelError as exc:  # a damaged model: the others are still cleaned
            log.error("%s: the purge cannot clean them", exc)
    return removed


def _left_behind(connection: Connection, settings: Settings, before: datetime) -> list[Path]:
    """Model directories no registered model names (``artifacts.unregistered``: a training
    killed before it registered its model) trained before ``before``: they hold every
    customer's rows and factors, as a retired model does, and go when one would. A
    training under way writes one too, trained now: never before ``before``."""
    registered = [settings.locate(path) for path in registry.artifact_paths(connection)]
    left = artifacts.unregistered(settings, registered)
    return [directory for _, directory in left if _trained_at(directory) < before]


def _trained_at(directory: Path) -> datetime:
    """When the model in ``directory`` was trained: its ``meta.json``'s ``trained_at``, else
    (not written or not readable) when its ``model.npz`` was written."""
    try:
        at = datetime.fromisoformat(json.loads((directory / "meta.json").read_text())["trained_at"])
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return datetime.fromtimestamp((directory / "model.npz").stat().st_mtime, UTC)
        except OSError:  # gone meanwhile: nothing to remove
            return datetime.max.replace(tzinfo=UTC)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _old_artifacts(connection: Connection, settings: Settings, before: datetime) -> list[Path]:
    """Artifact directories of retired/rejected models trained before ``before`` (a
    relative ``models.path`` is relative to the settings file's directory)."""
    keep = registry.previous_live(connection)
    return [
        settings.locate(path)
        for version, path in registry.retired_before(connection, before)
        if (keep is None or version != keep.version) and settings.locate(path).exists()
    ]
