"""The ``runs`` table is kept for ``[privacy] job_runs_days``, as the other histories are:
every delivery round that sent something, every skip and every campaign run adds a row, so
a worker of a few years held millions, each read by ``runs list`` and the leader's poll
every two seconds. What the worker still needs is kept: a job's last good run (the night's
training is skipped when nothing changed since it), a running worker's last ``check`` run
(``runs workers``), and anything still ``running``."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from recocamp import privacy
from recocamp.settings import PrivacySettings, Settings
from recocamp.store import runs
from recocamp.store.schema import runs as runs_table
from tests.conftest import NOW


def _run(connection: sa.Connection, job: str, worker: str, at: datetime, status: str) -> int:
    run_id = runs.start(connection, job, worker, at)
    if status != "running":
        runs.finish(connection, run_id, status, at, {"sent": 1})
    return run_id


def test_purge_deletes_runs_past_retention_and_keeps_what_the_worker_reads(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default drop folders, relative, are looked at here
    settings = Settings()
    days = settings.privacy.job_runs_days
    old, recent = NOW - timedelta(days=days + 1), NOW - timedelta(days=days - 1)
    with engine.begin() as connection:
        runs.heartbeat(connection, "h:1:live", recent, None)
        runs.heartbeat(connection, "h:2:gone", recent, None)
        runs.stopped(connection, "h:2:gone", recent)
        runs.heartbeat(connection, "h:3:killed", old, None)  # SIGKILL: never stopped
        gone = [
            _run(connection, "deliver", "h:1:live", old, "ok"),
            _run(connection, "train", "h:1:live", old, "ok"),
            _run(connection, "campaign:winback", "h:1:live", old, "interrupted"),
            _run(connection, "check", "h:2:gone", old, "error"),
            _run(connection, "check", "h:3:killed", old, "error"),
            _run(connection, "check", "h:1:live", old - timedelta(days=1), "error"),
            _run(connection, "train", "h:1:live", old + timedelta(hours=2), "error"),
        ]
        kept = [
            _run(connection, "train", "h:1:live", old + timedelta(hours=1), "ok"),  # last good
            _run(connection, "check", "h:1:live", old, "error"),  # a live worker's last
            _run(connection, "import", "h:1:live", old, "running"),
            _run(connection, "deliver", "h:1:live", recent, "ok"),
        ]
    report = privacy.purge(engine, settings, NOW)
    with engine.connect() as connection:
        left = connection.execute(sa.select(runs_table.c.id).order_by(runs_table.c.id))
        assert list(left.scalars()) == sorted(kept)
        assert runs.last_ok_counts(connection, "train") == {"sent": 1}
    assert report.job_runs == len(gone)
    assert privacy.purge(engine, settings, NOW).job_runs == 0  # idempotent


def test_runs_young_enough_to_resume_are_never_purged() -> None:
    """A campaign run is resumed up to ``[worker] resume_window_s`` (at most a week) after
    its instant: a retention shorter than that could delete an interrupted run before the
    next scheduling worker resumed it."""
    with pytest.raises(ValueError, match="job_runs_days"):
        PrivacySettings(job_runs_days=7)


def test_purge_deletes_workers_gone_for_the_retention_period(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every start of a worker adds a ``workers`` row (``host:pid:nonce``): a worker
    restarted by each deploy, or a container's every start, left one for good. One whose
    last heartbeat is older than ``job_runs_days`` (stopped, or killed and never stopped)
    goes with its runs; a live one, and one gone more recently, stay (``runs workers``)."""
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    days = settings.privacy.job_runs_days
    old, recent = NOW - timedelta(days=days + 1), NOW - timedelta(days=days - 1)
    with engine.begin() as connection:
        runs.heartbeat(connection, "h:1:live", NOW, NOW)
        runs.heartbeat(connection, "h:2:stopped-lately", recent, None)
        runs.stopped(connection, "h:2:stopped-lately", recent)
        runs.heartbeat(connection, "h:3:stopped-long-ago", old, None)
        runs.stopped(connection, "h:3:stopped-long-ago", old)
        runs.heartbeat(connection, "h:4:killed-long-ago", old, None)
    report = privacy.purge(engine, settings, NOW)
    with engine.connect() as connection:
        left = [row.id for row in runs.all_workers(connection)]
    assert sorted(left) == ["h:1:live", "h:2:stopped-lately"]
    assert report.workers == 2
    assert privacy.purge(engine, settings, NOW).workers == 0  # idempotent
