"""Three worker processes on one PostgreSQL database and a real fake-ESP server: one
scheduler at a time, a takeover within the configured time when the leader is killed, all
workers draining the outbox, and every e-mail delivered exactly once."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from recocamp.delivery.esp.fake_server import FakeEsp, Faults, running
from recocamp.delivery.esp.fake_server import create_app as create_fake
from recocamp.store import leadership as store_leadership
from recocamp.store import notifications, runs
from recocamp.store.engine import make_engine
from recocamp.worker import leadership
from tests.worker_shop import make_shop, recocamp, start_worker, wait_for

CUSTOMERS = 150
POLL_S = 0.5


@pytest.fixture
def esp() -> Iterator[tuple[FakeEsp, str]]:
    fake = FakeEsp(token="test-token")
    with running(create_fake(fake)) as url:
        yield fake, url


def leaders(engine: sa.Engine) -> list[Any]:
    """Workers that say they lead, are not stopped and sent a heartbeat in the last 2 s."""
    fresh = datetime.now(UTC).timestamp() - 2
    with engine.connect() as connection:
        rows = runs.all_workers(connection)
    return [
        r
        for r in rows
        if r.leader_since and not r.stopped_at and r.heartbeat_at.timestamp() >= fresh
    ]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_three_workers_one_scheduler_takeover_and_every_email_once(
    tmp_path: Path, db_url: str, engine: sa.Engine, esp: tuple[FakeEsp, str]
) -> None:
    fake, url = esp
    fake.set_faults(Faults(latency_ms=250))
    shop = make_shop(tmp_path / "shop", db_url, url, customers=CUSTOMERS, leader_poll_s=POLL_S)
    processes = [start_worker(shop) for _ in range(3)]
    try:
        wait_for(lambda: _live(engine) == 3 and len(leaders(engine)) == 1, 90)
        [first] = leaders(engine)
        assert recocamp(shop, "runs", "trigger", "campaign:everyone").returncode == 0
        wait_for(lambda: fake.stats()["received"] >= 30, 90)
        by_pid = {p.pid: p for p in processes}
        killed_at = datetime.now(UTC)
        by_pid[first.pid].kill()  # SIGKILL: no goodbye, its claims and its run stay behind
        by_pid[first.pid].wait(10)
        new = wait_for(lambda: [r for r in leaders(engine) if r.id != first.id], 30)[0]
        takeover = (new.leader_since - killed_at).total_seconds()
        wait_for(lambda: fake.stats()["received"] >= CUSTOMERS, 120)
        time.sleep(3 * POLL_S)  # give a duplicate, if there were one, time to arrive
        assert len(leaders(engine)) == 1
        for process in processes:
            if process.poll() is None:
                process.terminate()
        assert all(p.wait(30) in (0, -9) for p in processes)
    finally:
        for process in processes:
            process.kill()
    assert takeover < 5 * POLL_S + 5  # a follower asks every leader_poll_s (+ a slow machine)
    assert fake.stats() == {
        "received": CUSTOMERS,
        "unique_send_keys": CUSTOMERS,
        "duplicates": 0,
        "without_send_key": 0,
    }
    with engine.connect() as connection:
        history = runs.recent(connection, "campaign:everyone")
        senders = connection.execute(sa.text("SELECT DISTINCT claimed_by FROM outbox")).scalars()
        states: dict[str, int] = dict(
            connection.execute(sa.text("SELECT state, count(*) FROM outbox GROUP BY state")).all()
        )
    assert states == {"sent": CUSTOMERS}
    assert len({s.split(":")[1] for s in senders}) >= 2  # more than one worker delivered
    cut = next(r for r in history if r.worker == first.id)
    assert cut.status in ("interrupted", "ok")
    if cut.status == "interrupted":  # killed mid-run: the new leader resumed it, same instant
        resumed = next(r for r in history if r.resumed_from == cut.id)
        assert resumed.worker == new.id and resumed.as_of == cut.as_of
    _no_overlapping_leader_runs(engine, killed_at, first.id)


def _live(engine: sa.Engine) -> int:
    fresh = datetime.now(UTC).timestamp() - 2
    with engine.connect() as connection:
        rows = runs.all_workers(connection)
    return sum(1 for r in rows if not r.stopped_at and r.heartbeat_at.timestamp() >= fresh)


def _no_overlapping_leader_runs(engine: sa.Engine, killed_at: datetime, killed: str) -> None:
    """Runs of scheduled (leader) jobs by different workers never overlap in time."""
    with engine.connect() as connection:
        rows = [r for r in runs.recent(connection, limit=1000) if r.job != "deliver"]
    spans = sorted(
        (r.started_at, r.finished_at or (killed_at if r.worker == killed else None), r.worker)
        for r in rows
    )
    for (_, end, worker), (start, _, other) in itertools.pairwise(spans):
        if worker != other:
            assert end is not None and end <= start, (worker, other)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_lock_holding_sessions_ask_the_server_to_probe_them(engine: sa.Engine) -> None:
    """The leader's and the job locks' sessions set TCP keepalives on the server, which ends
    a session whose host stopped answering and so frees its locks in ~25 s, not the
    system's 2 h: the next worker can lead (``store.leadership.KEEPALIVE``)."""
    held = leadership.AdvisoryLockLeadership(engine)
    try:
        assert held.try_acquire()
        with held.job_lock("deliver") as got:
            assert got
            for connection in (held.connection, held.job_connection):
                assert connection is not None
                shown = {
                    name: connection.exec_driver_sql(f"SHOW {name}").scalar_one()
                    for name in store_leadership.KEEPALIVE
                }
                assert shown == {
                    "tcp_keepalives_idle": "10",
                    "tcp_keepalives_interval": "5",
                    "tcp_keepalives_count": "3",
                }
    finally:
        held.release()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_running_jobs_lock_lost_with_its_connection_is_taken_again(engine: sa.Engine) -> None:
    """The job locks' connection sits idle while a training runs for hours; a server's
    ``idle_session_timeout``, a restart or a cut connection ended it, and the lock with it,
    while the job ran on: a worker that led next could start the same job beside it. The
    leader takes the lock again at its next poll."""
    first = leadership.AdvisoryLockLeadership(engine)
    other = make_engine(engine.url.render_as_string(hide_password=False))  # another process
    second = leadership.AdvisoryLockLeadership(other)
    try:
        assert first.try_acquire()
        with first.job_lock("train") as got:
            assert got and first.job_connection is not None
            session = first.job_connection.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            first.job_connection.commit()
            assert notifications.end_session(engine, session)  # the training runs on
            assert first.held()  # the leader's next poll
            with second.job_lock("train") as also:
                assert not also  # the training is still running on the first worker
        with second.job_lock("train") as after:
            assert after  # once it ended
    finally:
        first.release()
        second.release()
        other.dispose()
