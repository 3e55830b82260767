"""The ``runs`` and ``workers`` tables: what every worker ran, and who is alive and leading.

A run row is written when a job starts (``running``) and again when it ends (``ok``,
``error``, ``skipped`` or ``interrupted``), each in its own short transaction, so a worker
that dies mid-run leaves a ``running`` row behind: :func:`unfinished_campaign_runs` finds
those of dead workers (no heartbeat for a while) and the scheduling worker resumes them.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from recocamp.errors import mask_addresses
from recocamp.store.queries import upsert_statement
from recocamp.store.schema import runs, workers

CAMPAIGN_PREFIX = "campaign:"
CHECK_JOB = "check"  # the runs of a load or reload that found broken campaign files


def start(
    connection: sa.Connection,
    job: str,
    worker: str,
    now: datetime,
    *,
    as_of: datetime | None = None,
    run_key: str | None = None,
    resumed_from: int | None = None,
) -> int:
    statement = (
        sa.insert(runs)
        .values(
            job=job,
            worker=worker,
            status="running",
            started_at=now,
            as_of=as_of,
            run_key=run_key,
            counts={},
            resumed_from=resumed_from,
        )
        .returning(runs.c.id)
    )
    return int(connection.execute(statement).scalar_one())


def finish(
    connection: sa.Connection,
    run_id: int,
    status: str,
    now: datetime,
    counts: dict[str, Any],
    error: str | None = None,
    seconds: float | None = None,
) -> None:
    """``seconds``: the run's wall-clock duration (``now`` may come from a simulated clock).
    The error and the counts' texts are stored with e-mail addresses masked: ``runs list``
    and ``runs workers`` print them, and they may quote anything — a customer id (which can
    be an address), a broken campaign file's value (a subject naming the reply address), a
    driver's error (PostgreSQL's "Failing row contains (…)"), a provider's answer."""
    connection.execute(
        sa.update(runs)
        .where(runs.c.id == run_id)
        .values(
            status=status,
            finished_at=now,
            counts=masked(counts),
            error=mask_addresses(error)[:2000] if error else None,
            seconds=round(seconds, 3) if seconds is not None else None,
        )
    )


def masked(value: Any) -> Any:
    """``value`` (JSON: dicts, lists, texts, numbers) with addresses in its texts masked. Also
    for showing a stored run: a store written before runs were stored masked keeps its rows
    (``[privacy] job_runs_days``)."""
    if isinstance(value, str):
        return mask_addresses(value)
    if isinstance(value, dict):
        return {mask_addresses(str(k)): masked(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [masked(v) for v in value]
    return value


def skipped(connection: sa.Connection, job: str, worker: str, now: datetime, reason: str) -> None:
    run_id = start(connection, job, worker, now)
    finish(connection, run_id, "skipped", now, {}, reason)


def recent(connection: sa.Connection, job: str | None = None, limit: int = 50) -> list[Any]:
    query = sa.select(runs).order_by(runs.c.started_at.desc(), runs.c.id.desc()).limit(limit)
    if job:
        query = query.where(runs.c.job == job)
    return list(connection.execute(query))


def count(connection: sa.Connection, job: str | None = None) -> int:
    query = sa.select(sa.func.count()).select_from(runs)
    if job:
        query = query.where(runs.c.job == job)
    return int(connection.execute(query).scalar_one())


def unfinished_campaign_runs(
    connection: sa.Connection, since: datetime, *, dead_before: datetime, failed_before: datetime
) -> list[Any]:
    """Campaign runs to resume, decided after ``since`` and not resumed yet: interrupted;
    still ``running`` although their worker stopped or has sent no heartbeat since
    ``dead_before``; or failed before ``failed_before`` (a database hiccup mid-run)."""
    resumed = sa.select(runs.c.resumed_from).where(runs.c.resumed_from.is_not(None))
    alive = sa.select(workers.c.id).where(_alive(dead_before))
    query = (
        sa.select(runs)
        .where(
            runs.c.job.startswith(CAMPAIGN_PREFIX, autoescape=True),
            runs.c.as_of >= since,
            runs.c.id.not_in(resumed),
            sa.or_(
                runs.c.status == "interrupted",
                sa.and_(runs.c.status == "running", runs.c.worker.not_in(alive)),
                sa.and_(runs.c.status == "error", runs.c.finished_at < failed_before),
            ),
        )
        .order_by(runs.c.id)
    )
    return list(connection.execute(query))


def orphaned_runs(connection: sa.Connection, *, dead_before: datetime, worker: str) -> list[int]:
    """Runs still ``running`` on a worker other than ``worker`` that stopped or has sent no
    heartbeat since ``dead_before``: it was killed under them (SIGKILL, the OOM killer, its
    host gone) and nothing else would ever end them."""
    alive = sa.select(workers.c.id).where(_alive(dead_before))
    query = sa.select(runs.c.id).where(
        runs.c.status == "running", runs.c.worker != worker, runs.c.worker.not_in(alive)
    )
    return list(connection.execute(query.order_by(runs.c.id)).scalars())


def run_key_of(connection: sa.Connection, run_id: int) -> str | None:
    """The run key a run was recorded with (a resumed run decides as it)."""
    query = sa.select(runs.c.run_key).where(runs.c.id == run_id)
    found: str | None = connection.execute(query).scalar_one_or_none()
    return found


def mark_interrupted(connection: sa.Connection, run_id: int, now: datetime, why: str) -> None:
    """A ``running`` run whose worker is gone becomes ``interrupted`` (others stay as they
    are: an error keeps its message)."""
    connection.execute(
        sa.update(runs)
        .where(runs.c.id == run_id, runs.c.status == "running")
        .values(status="interrupted", finished_at=now, error=why)
    )


def delete_finished_before(connection: sa.Connection, before: datetime) -> int:
    """Delete the runs started before ``before`` (the retention purge), except what the
    worker still reads: anything ``running``, each job's last good run (its counts decide
    whether the night's training has anything new, :func:`last_ok_counts`) and the last
    ``check`` run of each worker not stopped that has sent a heartbeat since ``before``
    (``runs workers``; one killed never stops). Returns how many went."""
    last_ok = sa.select(sa.func.max(runs.c.id)).where(runs.c.status == "ok").group_by(runs.c.job)
    running = sa.select(workers.c.id).where(
        workers.c.stopped_at.is_(None), workers.c.heartbeat_at >= before
    )
    last_check = (
        sa.select(sa.func.max(runs.c.id))
        .where(runs.c.job == CHECK_JOB, runs.c.worker.in_(running))
        .group_by(runs.c.worker)
    )
    statement = sa.delete(runs).where(
        runs.c.started_at < before,
        runs.c.status != "running",
        runs.c.id.not_in(last_ok),
        runs.c.id.not_in(last_check),
    )
    return int(connection.execute(statement).rowcount)


# --- workers ------------------------------------------------------------------------------


def heartbeat(
    connection: sa.Connection, worker: str, now: datetime, leader_since: datetime | None
) -> None:
    """Insert or refresh this worker's row (one statement, any backend)."""
    pid = int(worker.split(":")[1])
    statement = upsert_statement(connection, workers).values(
        id=worker,
        host=socket.gethostname(),
        pid=pid,
        started_at=now,
        heartbeat_at=now,
        leader_since=leader_since,
    )
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["id"],
            set_={"heartbeat_at": now, "leader_since": leader_since, "stopped_at": None},
        )
    )


def delete_workers_gone_before(connection: sa.Connection, before: datetime) -> int:
    """Delete the workers whose last heartbeat is older than ``before`` (the retention
    purge): each start of a worker adds a row, so a worker restarted by every deploy left
    one for good. A live worker beats every ``leader_poll_s``, so none of its rows goes; the
    runs of one deleted count as a dead worker's (:func:`orphaned_runs`), as they did."""
    statement = sa.delete(workers).where(workers.c.heartbeat_at < before)
    return int(connection.execute(statement).rowcount)


def forget_worker(connection: sa.Connection, worker: str) -> None:
    """Delete ``worker``'s row (``worker --once`` at its end): a run still ``running`` under
    it counts as a dead worker's (:func:`orphaned_runs`), as it should once it has ended."""
    connection.execute(sa.delete(workers).where(workers.c.id == worker))


def stopped(connection: sa.Connection, worker: str, now: datetime) -> None:
    connection.execute(
        sa.update(workers).where(workers.c.id == worker).values(stopped_at=now, leader_since=None)
    )


def _alive(after: datetime) -> Any:
    """Workers that have not stopped and sent a heartbeat since ``after``."""
    return sa.and_(workers.c.stopped_at.is_(None), workers.c.heartbeat_at >= after)


def live_worker_count(connection: sa.Connection, alive_after: datetime) -> int:
    query = sa.select(sa.func.count()).select_from(workers).where(_alive(alive_after))
    return int(connection.execute(query).scalar_one())


def all_workers(connection: sa.Connection, limit: int = 50) -> Sequence[Any]:
    query = sa.select(workers).order_by(workers.c.heartbeat_at.desc()).limit(limit)
    return list(connection.execute(query))


def last_ok_counts(connection: sa.Connection, job: str) -> Any:
    """The counts the last successful run of ``job`` recorded (None when there is none)."""
    query = (
        sa.select(runs.c.counts)
        .where(runs.c.job == job, runs.c.status == "ok")
        .order_by(runs.c.id.desc())
        .limit(1)
    )
    return connection.execute(query).scalar()


def latest_by_worker(
    connection: sa.Connection, job: str, worker_ids: Sequence[str]
) -> dict[str, Any]:
    """The newest run of ``job`` by each of ``worker_ids`` that has one, by worker."""
    if not worker_ids:
        return {}
    newest = (
        sa.select(sa.func.max(runs.c.id))
        .where(runs.c.job == job, runs.c.worker.in_(worker_ids))
        .group_by(runs.c.worker)
    )
    return {
        row.worker: row for row in connection.execute(sa.select(runs).where(runs.c.id.in_(newest)))
    }
