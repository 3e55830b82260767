"""The worker: one per SQLite database, reloads, resumes, graceful stop, drop folder, metrics."""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from prometheus_client import REGISTRY

from recocamp.campaigns import check as worker_checks
from recocamp.campaigns import run as jobs
from recocamp.clock import FixedClock
from recocamp.data.drop_folder import import_drop_folder
from recocamp.delivery.esp.fake_server import FakeEsp, Faults, running
from recocamp.delivery.esp.fake_server import create_app as create_fake
from recocamp.errors import Interrupted, StoreError
from recocamp.settings import Settings, load_settings
from recocamp.store import runs
from recocamp.store.engine import make_engine
from recocamp.store.schema import models
from recocamp.worker import leadership, scheduler
from recocamp.worker.process import RETRY_FAILED_S, Worker
from tests.worker_shop import (
    CUSTOMERS,
    make_shop,
    recocamp,
    scalar,
    scalar_int,
    scalar_text,
    start_worker,
    wait_for,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SECRETS = {"RECOCAMP_SIGNING_KEY": "worker-test-key", "RECOCAMP_ESP_TOKEN": "test-token"}


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def esp() -> Iterator[tuple[FakeEsp, str]]:
    fake = FakeEsp(token="test-token")
    with running(create_fake(fake)) as url:
        yield fake, url


def clocked_worker(tmp_path: Path) -> tuple[Worker, FixedClock]:
    """A worker of a new shop on a fixed clock set to now (the shop's orders are recent
    *now*), its campaigns loaded, and that clock."""
    shop = sqlite_shop(tmp_path)
    settings = load_settings(shop / "settings.toml")
    clock = FixedClock(datetime.now(UTC))
    process = Worker(
        settings, make_engine(settings.database_url), shop / "campaigns", shop / "templates", clock
    )
    process.load()
    return process, clock


def refused_once(process: Worker, statement: str, message: str, due: datetime) -> None:
    """Run ``everyone`` for ``due`` while the store refuses every ``statement`` (INSERT,
    UPDATE) on its runs with ``message``; the run raises it; then the store takes them again."""
    refusal = (
        f"CREATE TRIGGER refused BEFORE {statement} ON runs WHEN NEW.job = 'campaign:everyone' "
        f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
    )
    with process.engine.begin() as connection:
        connection.execute(sa.text(refusal))
    with pytest.raises(sa.exc.SQLAlchemyError, match=message):
        process.run("campaign:everyone", as_of=due)
    with process.engine.begin() as connection:
        connection.execute(sa.text("DROP TRIGGER refused"))


def worker_for(shop: Path) -> Worker:
    settings = load_settings(shop / "settings.toml")
    process = Worker(
        settings, make_engine(settings.database_url), shop / "campaigns", shop / "templates"
    )
    process.load()
    return process


def dead_run(process: Worker, decided_at: datetime) -> tuple[int, str]:
    """A run of ``everyone`` decided at ``decided_at`` by a worker that died: its id and key."""
    key = jobs.run_key("everyone", decided_at, process.campaigns["everyone"].schedule.zone)
    with process.engine.begin() as connection:
        dead = runs.start(
            connection,
            "campaign:everyone",
            "elsewhere:1:dead",
            decided_at,
            as_of=decided_at,
            run_key=key,
        )
    return dead, key


def sqlite_shop(
    tmp_path: Path,
    esp_url: str = "http://127.0.0.1:1",
    customers: int = CUSTOMERS,
    **worker: object,
) -> Path:
    return make_shop(
        tmp_path / "shop",
        f"sqlite:///{tmp_path / 'shop' / 'shop.db'}",
        esp_url,
        customers,
        **worker,
    )


def test_a_second_worker_on_one_sqlite_database_is_refused(tmp_path: Path, secrets: None) -> None:
    shop = sqlite_shop(tmp_path)
    first, second = worker_for(shop), worker_for(shop)
    first.start(loop=False)
    try:
        with pytest.raises(StoreError, match="SQLite supports one worker"):
            second.start(loop=False)
        refused = recocamp(shop, "worker", "--once")  # another process is refused too
        assert refused.returncode == 1 and "SQLite supports one worker" in refused.stderr
    finally:
        first.shutdown()
    lock = shop / "shop.db.worker-lock"
    assert not lock.exists()  # a clean stop leaves no lock file behind
    assert recocamp(shop, "worker", "--once").returncode == 0  # free again after a stop
    assert not lock.exists()
    lock.write_text("pid 5991")  # left by a killed worker: nobody holds its lock
    assert recocamp(shop, "worker", "--once").returncode == 0
    assert not lock.exists()


def test_a_second_worker_through_a_link_to_the_database_file_is_refused(
    tmp_path: Path, secrets: None
) -> None:
    """The lock file was named after the database path as written: a second worker whose
    ``database_url`` reaches the same file through a symbolic link (a mounted volume, a
    ``current`` link) locked ``<link>.worker-lock`` beside the link and ran as a second
    leader on one SQLite file. The lock sits beside the file the path leads to."""
    shop = sqlite_shop(tmp_path)
    link = tmp_path / "elsewhere" / "recocamp.db"
    link.parent.mkdir()
    link.symlink_to(shop / "shop.db")
    first = worker_for(shop)
    first.start(loop=False)
    linked = make_engine(f"sqlite:///{link}")
    try:
        with pytest.raises(StoreError, match="SQLite supports one worker"):
            leadership.for_engine(linked).register()
    finally:
        linked.dispose()
        first.shutdown()
    assert not (link.parent / "recocamp.db.worker-lock").exists()


def test_a_deleted_lock_file_is_taken_again_and_never_gives_two_leaders(
    tmp_path: Path, secrets: None
) -> None:
    """An operator who deletes ``shop.db.worker-lock`` (it looks like a stale pid file) while
    the worker runs: the worker takes it again within a poll, so a second worker is still
    refused; one that got in first makes the running worker step down (one leader at a time),
    and the one that stepped down leaves the other's lock file alone when it stops."""
    shop = sqlite_shop(tmp_path)
    lock = shop / "shop.db.worker-lock"
    first, second, third = worker_for(shop), worker_for(shop), worker_for(shop)
    first.start(loop=False)
    try:
        first.tick()
        assert first.leader_since is not None
        lock.unlink()
        first.tick()  # its next poll
        assert lock.read_text() == f"pid {os.getpid()}" and first.leader_since is not None
        with pytest.raises(StoreError, match="SQLite supports one worker"):
            second.start(loop=False)
        lock.unlink()
        third.start(loop=False)  # got in before the first worker's next poll
        try:
            third.tick()
            first.tick()
            assert third.leader_since is not None and first.leader_since is None
            first.shutdown()
            assert lock.exists()  # the third worker's: a fourth is still refused
            refused = recocamp(shop, "worker", "--once")
            assert refused.returncode == 1 and "SQLite supports one worker" in refused.stderr
        finally:
            third.shutdown()
    finally:
        first.shutdown()
    assert not lock.exists()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_a_worker_whose_sqlite_file_is_deleted_or_replaced_stops(
    tmp_path: Path, secrets: None, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    """``rm shop.db`` or a backup moved over it while the worker runs: its open connections
    keep writing into the old file, which nobody reads any more (imports would delete the
    dropped files they put there, mail would be recorded sent there alone). It stops
    within a poll, saying why, instead of running on."""
    shop = sqlite_shop(tmp_path)
    database = shop / "shop.db"
    process = worker_for(shop)
    process.start(loop=False)
    try:
        process.tick()
        assert process.leader_since is not None and not process.stop.is_set()
        if how == "deleted":
            database.unlink()
        else:
            backup = shop / "backup.db"
            backup.write_bytes(database.read_bytes())
            os.replace(backup, database)
        with caplog.at_level(logging.ERROR, logger="recocamp.worker"):
            process.tick()
        assert process.stop.is_set() and process.lost is not None
        assert f"{database} was {how}" in process.lost and process.lost in caplog.text
    finally:
        process.shutdown()


def _cron(process: Worker, job: str) -> str:
    found = process.scheduler.get_job(job, jobstore=scheduler.SHARED)
    assert found is not None
    return str(found.trigger)


def test_reload_takes_a_good_change_and_keeps_the_last_good_set_on_a_broken_one(
    tmp_path: Path, secrets: None, caplog: pytest.LogCaptureFixture
) -> None:
    shop = sqlite_shop(tmp_path, reload_check_s=1e-6)
    process = worker_for(shop)
    process.start(loop=False)
    try:
        process.tick()
        assert process.leader_since is not None and "day_of_week='thu'" in _cron(
            process, "campaign:everyone"
        )
        path = shop / "campaigns" / "everyone.toml"
        path.write_text(path.read_text().replace('"0 9 * * THU"', '"0 10 * * FRI"'))
        process.tick()
        assert "day_of_week='fri'" in _cron(process, "campaign:everyone")
        good = path.read_text()
        path.write_text(good.replace("[audience]", "[audience]\nlapsed_days = 3\n"))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
        with caplog.at_level(logging.ERROR, logger="recocamp.worker"):
            process.tick()
        assert "its last good version keeps running" in caplog.text
        assert "everyone.toml" in caplog.text and "reload refused" not in caplog.text
        assert "day_of_week='fri'" in _cron(process, "campaign:everyone")  # the last good one
        assert "everyone" in process.campaigns
        assert REGISTRY.get_sample_value("recocamp_campaign_files_broken") == 1
        with process.engine.connect() as connection:
            [check] = runs.recent(connection, "check")
        assert check.status == "error" and check.counts["kept_last_good"] == 1
        assert "everyone.toml" in check.error and "last good version keeps running" in check.error
        path.write_text(good.replace('"0 10 * * FRI"', '"0 11 * * SAT"'))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
        process.tick()  # fixed: the new version replaces the last good one
        assert "day_of_week='sat'" in _cron(process, "campaign:everyone") and not process.broken
        (shop / "campaigns" / "everyone.toml").unlink()
        process.tick()  # a campaign whose file is removed leaves the schedule
        assert process.scheduler.get_job("campaign:everyone", jobstore=scheduler.SHARED) is None
    finally:
        process.shutdown()


def test_a_stop_between_chunks_loses_nothing_and_the_rerun_completes(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = sqlite_shop(tmp_path, customers=25)
    process = worker_for(shop)
    calls = iter([False, True])  # the first chunk goes through, then the worker is stopped
    options = jobs.RunOptions(stopping=lambda: next(calls, True), chunk_size=10)
    now = datetime.now(UTC)
    campaign, templates = process.campaigns["everyone"], shop / "templates"
    with pytest.raises(Interrupted, match="10 e-mails enqueued"):
        jobs.plan_and_enqueue(process.engine, process.settings, campaign, templates, now, options)
    again = jobs.plan_and_enqueue(process.engine, process.settings, campaign, templates, now)
    assert (again.enqueued, again.already_enqueued) == (15, 10)
    with process.engine.connect() as connection:
        keys = connection.execute(sa.text("SELECT send_key FROM outbox")).scalars().all()
        decided = connection.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one()
    assert len(keys) == len(set(keys)) == 25 and decided == 25


def test_an_unfinished_campaign_run_is_resumed_with_its_own_instant(
    tmp_path: Path, secrets: None, esp: tuple[FakeEsp, str]
) -> None:
    fake, url = esp
    shop = sqlite_shop(tmp_path, url)
    process = worker_for(shop)
    decided_at = datetime.now(UTC) - timedelta(hours=1)
    dead, key = dead_run(process, decided_at)
    with process.engine.begin() as connection:
        old = runs.start(
            connection,
            "campaign:everyone",
            "elsewhere:1:dead",
            decided_at - timedelta(days=2),
            as_of=decided_at - timedelta(days=2),
        )
    process.start(loop=False)
    try:
        process.tick()  # leader now: finds the dead worker's run and resumes it
        deadline = time.monotonic() + 60
        while fake.stats()["received"] < 60 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        process.shutdown()
    with process.engine.connect() as connection:
        rows = {r.id: r for r in runs.recent(connection, "campaign:everyone")}
    resumed = next(r for r in rows.values() if r.resumed_from == dead)
    assert rows[dead].status == "interrupted" and resumed.status == "ok"
    assert resumed.run_key == key and resumed.as_of == decided_at
    assert rows[old].status == "interrupted"  # not left running for ever, but too old to
    assert not any(r.resumed_from == old for r in rows.values())  # resume (resume_window_s)
    assert fake.stats() == {
        "received": 60,
        "unique_send_keys": 60,
        "duplicates": 0,
        "without_send_key": 0,
    }


def test_sigterm_stops_after_the_batch_and_a_restart_delivers_the_rest_exactly_once(
    tmp_path: Path, esp: tuple[FakeEsp, str]
) -> None:
    fake, url = esp
    fake.set_faults(Faults(latency_ms=500))
    metrics_port = free_port()
    shop = sqlite_shop(tmp_path, url, metrics_port=metrics_port)
    worker = start_worker(shop)
    try:
        wait_for(lambda: recocamp(shop, "runs", "trigger", "campaign:everyone").returncode == 0)
        wait_for(lambda: fake.stats()["received"] >= 10)
        fake.set_faults(Faults(latency_ms=3000))  # the rest cannot go out before the signal
        served = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        assert "recocamp_scheduler_leader 1.0" in served
        assert "# TYPE recocamp_emails_total counter" in served
        worker.send_signal(signal.SIGHUP)  # a reload request is harmless mid-run
        wait_for(lambda: "reloaded 1 campaign" in (shop / "worker-0.log").read_text(), 10)
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        stopped_in = time.monotonic() - started
    finally:
        worker.kill()
    partial = fake.stats()["received"]
    assert partial < 60 and stopped_in < 20  # it did not go on to send everything
    fake.set_faults(Faults())
    again = start_worker(shop)
    try:
        wait_for(lambda: fake.stats()["received"] >= 60)
        again.send_signal(signal.SIGTERM)
        assert again.wait(30) == 0
    finally:
        again.kill()
    assert fake.stats() == {
        "received": 60,
        "unique_send_keys": 60,
        "duplicates": 0,
        "without_send_key": 0,
    }
    log = (shop / "worker-0.log").read_text()
    assert "SIGTERM: stopping after the current batch" in log and "reloaded" in log


def test_dropped_files_are_imported_once_and_broken_ones_set_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("recocamp.data.drop_folder.SETTLE_S", 0.0)
    drop = tmp_path / "incoming"
    drop.mkdir()
    (drop / "customers-1.csv").write_text(
        "id,email,consent_basis,consent_at\nd1,d1@example.test,double_opt_in,2026-01-01\n"
    )
    with gzip.open(drop / "purchases-1.csv.gz", "wt") as handle:
        handle.write(
            "order_id,customer_id,item_id,quantity,unit_price,ordered_at\n"
            "o1,d1,i1,2,3.5,2026-01-02T10:00:00\no2,d1,i2,one,3.5,2026-01-03\n"
        )
    (drop / "notes.csv").write_text("a,b\n1,2\n")
    (drop / "readme.txt").write_text("not a csv")
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        ingest={"drop_dir": drop, "processed_dir": drop / "done", "keep_processed_days": 7},
    )
    engine = make_engine(settings.database_url)
    from recocamp.store.engine import upgrade

    upgrade(engine)
    report = import_drop_folder(engine, settings, datetime.now(UTC))
    assert (report.imported, report.rejected) == (1, 2)
    assert sorted(p.name for p in (drop / "done").iterdir()) == ["customers-1.csv"]
    rejected = drop / "rejected"
    assert "line 3" in (rejected / "purchases-1.csv.gz.errors.txt").read_text()
    assert "unknown kind of file" in (rejected / "notes.csv.errors.txt").read_text()
    assert (drop / "readme.txt").exists()
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM purchases")).scalar_one() == 0
    (drop / "customers-2.csv").write_bytes((drop / "done" / "customers-1.csv").read_bytes())
    assert import_drop_folder(engine, settings, datetime.now(UTC)).already_imported == 1
    assert (drop / "done" / "customers-2.csv").exists()
    engine.dispose()


def test_job_runs_are_recorded_and_counted(tmp_path: Path, secrets: None) -> None:
    shop = sqlite_shop(tmp_path)
    process = worker_for(shop)
    before = (
        REGISTRY.get_sample_value("recocamp_job_runs_total", {"job": "train", "outcome": "ok"})
        or 0.0
    )
    assert process.run("train") == "ok"
    assert process.run("no-such-job") == "skipped"
    after = REGISTRY.get_sample_value("recocamp_job_runs_total", {"job": "train", "outcome": "ok"})
    assert after == before + 1
    with process.engine.connect() as connection:
        [row] = runs.recent(connection, "train")
    assert row.status == "ok" and row.counts["outcome"] == "promoted" and row.finished_at
    assert row.seconds > 0  # measured, whatever the worker's clock says
    assert (REGISTRY.get_sample_value("recocamp_train_duration_seconds") or 0.0) > 0
    assert process.run("train") == "ok"  # nothing new since: the model stays, no refit
    with process.engine.connect() as connection:
        assert runs.recent(connection, "train")[0].counts["outcome"] == "skipped_no_new_data"
    with process.engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO purchases (order_id, line_no, customer_id, item_id, quantity, "
                "unit_price, ordered_at, is_return) VALUES ('new', 0, 'w1', 'i1', 1, 3.0, "
                ":at, false)"
            ),
            {"at": datetime.now(UTC).replace(tzinfo=None)},
        )
    assert process.run("train") == "ok"
    with process.engine.connect() as connection:
        assert runs.recent(connection, "train")[0].counts["outcome"] != "skipped_no_new_data"
    process.engine.dispose()


def broken_beside(shop: Path) -> Path:
    """A second campaign file, ``late.toml``, whose cron has hour 25 (line 6)."""
    good = (shop / "campaigns" / "everyone.toml").read_text()
    path = shop / "campaigns" / "late.toml"
    path.write_text(
        good.replace('name = "everyone"', 'name = "late"').replace(
            '"0 9 * * THU"', '"0 25 * * THU"'
        )
    )
    return path


def test_a_broken_campaign_file_is_left_out_and_everything_else_runs(
    tmp_path: Path,
    secrets: None,
    esp: tuple[FakeEsp, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, url = esp
    shop = sqlite_shop(tmp_path, url, reload_check_s=1e-6)
    path = broken_beside(shop)
    with caplog.at_level(logging.ERROR, logger="recocamp.worker"):
        process = worker_for(shop)
    [failure] = process.broken
    assert failure.path == path and "late.toml" in caplog.text and "line 6" in caplog.text
    assert set(process.campaigns) == {"everyone"}  # the good one is scheduled, the rest too
    assert {"campaign:everyone", "deliver", "import", "purge"} <= set(process.specs)
    assert "campaign:late" not in process.specs
    assert REGISTRY.get_sample_value("recocamp_campaign_files_broken") == 1
    process.start(loop=False)
    try:
        with process.engine.connect() as connection:
            [check] = runs.recent(connection, "check")  # written once it registered
        assert check.status == "error" and check.worker == process.id
        for shown in ("late.toml", "line 6", "schedule.cron", "0 25 * * THU"):
            assert shown in check.error  # file, line, key and value, as `check` says them
        process.tick()  # it leads and schedules as always
        assert process.scheduler.get_job("campaign:everyone", jobstore=scheduler.SHARED)
        shown = recocamp(shop, "runs", "workers").stdout
        assert process.id in shown and "late.toml" in shown and "schedule.cron" in shown
        assert process.run("campaign:everyone") == "ok"  # the good campaign runs and delivers
        # The scheduler's periodic delivery may have claimed a batch of the run's e-mails and
        # still be sending it when the run's own drain finds nothing left: wait for the mail.
        wait_for(lambda: fake.stats()["received"] >= 60)
        assert fake.stats() == {
            "received": 60,
            "unique_send_keys": 60,
            "duplicates": 0,
            "without_send_key": 0,
        }
        path.write_text(path.read_text().replace('"0 25 * * THU"', '"0 9 * * FRI"'))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
        process.tick()  # fixed: the reload takes it, and the status clears
        assert set(process.campaigns) == {"everyone", "late"} and not process.broken
        assert process.scheduler.get_job("campaign:late", jobstore=scheduler.SHARED)
        assert REGISTRY.get_sample_value("recocamp_campaign_files_broken") == 0
        with process.engine.connect() as connection:
            assert [r.status for r in runs.recent(connection, "check")] == ["ok", "error"]
    finally:
        process.shutdown()
    process.engine.dispose()


def test_a_file_broken_at_start_holds_back_no_other_change(
    tmp_path: Path, secrets: None, caplog: pytest.LogCaptureFixture
) -> None:
    shop = sqlite_shop(tmp_path, reload_check_s=1e-6)
    broken_beside(shop)
    process = worker_for(shop)
    process.start(loop=False)
    try:
        process.tick()
        good = (shop / "campaigns" / "everyone.toml").read_text()
        (shop / "campaigns" / "second.toml").write_text(
            good.replace('name = "everyone"', 'name = "second"').replace(
                '"0 9 * * THU"', '"0 8 * * MON"'
            )
        )
        with caplog.at_level(logging.ERROR, logger="recocamp.worker"):
            process.tick()  # the new campaign is taken although late.toml is still broken
        assert set(process.campaigns) == {"everyone", "second"}
        assert "day_of_week='mon'" in _cron(process, "campaign:second")
        assert "day_of_week='thu'" in _cron(process, "campaign:everyone")
        assert process.scheduler.get_job("campaign:late", jobstore=scheduler.SHARED) is None
        assert "late.toml" in caplog.text and "broken, left out" in caplog.text
        assert REGISTRY.get_sample_value("recocamp_campaign_files_broken") == 1
        with process.engine.connect() as connection:
            last = runs.recent(connection, "check")[0]
        assert last.counts == {"campaigns": 2, "broken_files": 1, "kept_last_good": 0}
        assert "broken, left out" in last.error and "late.toml" in last.error
    finally:
        process.shutdown()
    process.engine.dispose()


def test_worker_once_does_the_rest_then_exits_2_naming_the_broken_file(tmp_path: Path) -> None:
    shop = sqlite_shop(tmp_path)
    broken_beside(shop)
    result = recocamp(shop, "worker", "--once")
    assert result.returncode == 2  # a cron job running --once notices
    assert "deliver: ok" in result.stdout  # after the delivery round ran
    for shown in ("late.toml", "line 6", "schedule.cron", "0 25 * * THU"):
        assert shown in result.stderr
    assert "1 broken campaign file(s) not run" in result.stderr
    checks = recocamp(shop, "runs", "list", "--job", "check", "--format", "json")
    [check] = json.loads(checks.stdout)
    assert check["status"] == "error" and "late.toml" in check["error"]


def test_broken_settings_still_stop_the_worker_before_anything_runs(tmp_path: Path) -> None:
    shop = sqlite_shop(tmp_path)
    settings = shop / "settings.toml"
    settings.write_text(settings.read_text().replace("batch_size = 5", "batch_size = -5"))
    result = recocamp(shop, "worker", "--once")
    assert result.returncode == 2 and "batch_size" in result.stderr
    assert "deliver" not in result.stdout
    engine = make_engine(f"sqlite:///{shop / 'shop.db'}")
    assert scalar(engine, "SELECT count(*) FROM workers") == 0  # nothing registered
    engine.dispose()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_failure_while_becoming_leader_gives_the_lock_back(
    tmp_path: Path, db_url: str, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = make_shop(tmp_path / "shop", db_url, "http://127.0.0.1:1", customers=5)
    process = worker_for(shop)
    process.start(loop=False)
    broken = iter([True])

    def attach(sched: BackgroundScheduler, engine: sa.Engine) -> None:
        if next(broken, False):
            raise sa.exc.OperationalError("attach", {}, Exception("the database went away"))
        real(sched, engine)

    real = scheduler.attach_shared
    monkeypatch.setattr(scheduler, "attach_shared", attach)
    try:
        with pytest.raises(sa.exc.OperationalError):
            process.tick()
        other = leadership.AdvisoryLockLeadership(process.engine)
        assert process.leader_since is None and other.try_acquire()  # nobody holds it
        other.release()
        process.tick()
        assert process.leader_since is not None  # the next round leads for real
        assert process.scheduler.get_job("campaign:everyone", jobstore=scheduler.SHARED)
    finally:
        process.shutdown()
        process.engine.dispose()


# --- a template that would run forever (issue 15) ----------------------------------------

FOREVER = (  # passes check (the sample customer is 12748), then 10**10 slow iterations
    "{% extends 'base.html' %}{% block content %}{% set s = 'x' * 999999 %}<p>Hi</p>\n"
    "{% if customer.id != '12748' %}\n"
    "{% for i in range(100000) %}{% for j in range(100000) %}{% if s.count('xy') %}{% endif %}"
    "{% endfor %}{% endfor %}{% endif %}{% endblock %}"
)


def trigger(engine: sa.Engine, *jobs: str) -> bool:
    """Make ``jobs`` due now at once (``recocamp runs trigger``), once the worker has
    scheduled them."""
    sched = scheduler.make_scheduler()
    scheduler.attach_shared(sched, engine)
    sched.start(paused=True)
    try:
        if not set(jobs) <= {j.id for j in sched.get_jobs(jobstore=scheduler.SHARED)}:
            return False
        for job in jobs:
            sched.modify_job(job, jobstore=scheduler.SHARED, next_run_time=datetime.now(UTC))
        return True
    finally:
        scheduler.quiesce(sched)
        sched.shutdown(wait=False)


def two_campaigns(shop: Path) -> None:
    """``everyone`` (healthy) mails who ordered 8-60 days ago, ``stuck`` the others with
    the template above."""
    healthy = (shop / "campaigns" / "everyone.toml").read_text()
    (shop / "campaigns" / "everyone.toml").write_text(
        healthy.replace("lapsed_days = [0, 60]", "lapsed_days = [8, 60]")
    )
    (shop / "campaigns" / "stuck.toml").write_text(
        healthy.replace('name = "everyone"', 'name = "stuck"')
        .replace("lapsed_days = [0, 60]", "lapsed_days = [0, 8]")
        .replace('html = "cross_sell.html"', 'html = "stuck.html"')
    )
    (shop / "templates" / "stuck.html").write_text(FOREVER)


BY_STATE = "SELECT count(*) FROM outbox WHERE campaign = '{}' AND state {}"


def all_in(engine: sa.Engine, campaign: str, state: str) -> bool:
    """Every e-mail of ``campaign`` is in ``state``, and there is at least one."""
    every = scalar_int(engine, BY_STATE.format(campaign, "IS NOT NULL"))
    return every == scalar_int(engine, BY_STATE.format(campaign, f"= '{state}'")) > 0


def stop_after_a_heartbeat(
    engine: sa.Engine, worker: subprocess.Popen[bytes], timeout: float
) -> int:
    """Wait for the worker's next heartbeat (it still beats), then SIGTERM; its exit code."""
    beat = scalar(engine, "SELECT max(heartbeat_at) FROM workers")
    wait_for(lambda: scalar(engine, "SELECT max(heartbeat_at) FROM workers") != beat, 10)
    worker.send_signal(signal.SIGTERM)
    return worker.wait(timeout)


@pytest.mark.timeout(360)  # its own waits allow for a 15-fold slowdown: up to 300 s
def test_a_template_that_would_run_forever_fails_its_messages_and_blocks_nothing(
    tmp_path: Path, esp: tuple[FakeEsp, str]
) -> None:
    fake, url = esp
    # a stuck render takes 8 s of CPU, several times that in wall time on a loaded machine
    # (its limit counts CPU time; 2 cores shared with a parallel suite went past 40 s): a stop
    # waits for the one in flight, so the timeout leaves room for a 15-fold slowdown
    shop = sqlite_shop(tmp_path, url, shutdown_timeout_s=120)
    with (shop / "settings.toml").open("a") as settings:
        settings.write("[templates]\nrender_time_s = 8\n")
    two_campaigns(shop)
    engine = make_engine(f"sqlite:///{shop / 'shop.db'}")
    worker = start_worker(shop)
    try:
        wait_for(lambda: trigger(engine, "campaign:stuck", "campaign:everyone"))
        wait_for(lambda: all_in(engine, "everyone", "sent"))
        assert stop_after_a_heartbeat(engine, worker, 180) == 0  # 3: jobs ran after the timeout
    finally:
        worker.kill()
    assert scalar(engine, BY_STATE.format("stuck", "IN ('sent', 'claimed')")) == 0
    # the healthy campaign went out while the stuck one was still rendering (not after it)
    last_sent = "SELECT max(updated_at) FROM outbox WHERE campaign = 'everyone'"
    first_failed = (
        "SELECT min(updated_at) FROM outbox WHERE campaign = 'stuck' AND state = 'failed'"
    )
    assert scalar_text(engine, last_sent) < scalar_text(engine, first_failed)
    sent = scalar(engine, BY_STATE.format("everyone", "= 'sent'"))
    assert fake.stats() == {
        "received": sent,
        "unique_send_keys": sent,
        "duplicates": 0,
        "without_send_key": 0,
    }
    with engine.connect() as connection:
        errors = (
            connection.execute(sa.text("SELECT last_error FROM outbox WHERE state = 'failed'"))
            .scalars()
            .all()
        )
    assert errors and all(
        "stuck.html: line 3: rendering took longer than 8 s" in e or "ran out of render time" in e
        for e in errors
    )
    log = (shop / "worker-0.log").read_text()
    assert "SIGTERM: stopping" in log and "Traceback" not in log
    engine.dispose()


ONE_CALL = (  # passes check (the sample customer is 12748); then, for every other customer,
    # one C call that never returned: ten to the billionth power, holding the GIL throughout
    "{% extends 'base.html' %}{% block content %}<p>Hi</p>\n"
    "{% if customer.id != '12748' %}\n{{ 1|round(-10**9) }}{% endif %}{% endblock %}"
)


def test_a_template_whose_one_call_never_returns_fails_its_messages_and_blocks_nothing(
    tmp_path: Path, esp: tuple[FakeEsp, str]
) -> None:
    """A time budget is checked between operations: one C call that runs for ever held
    every thread of the worker (the healthy campaign, the deliverer, the heartbeat and the
    shutdown), so such a call is refused before it runs."""
    fake, url = esp
    shop = sqlite_shop(tmp_path, url)
    two_campaigns(shop)
    (shop / "templates" / "stuck.html").write_text(ONE_CALL)
    engine = make_engine(f"sqlite:///{shop / 'shop.db'}")
    worker = start_worker(shop)
    try:
        wait_for(lambda: trigger(engine, "campaign:stuck", "campaign:everyone"))
        wait_for(lambda: all_in(engine, "everyone", "sent") and all_in(engine, "stuck", "failed"))
        assert stop_after_a_heartbeat(engine, worker, 60) == 0
    finally:
        worker.kill()
    assert fake.stats()["received"] == scalar_int(engine, BY_STATE.format("everyone", "= 'sent'"))
    with engine.connect() as connection:
        errors = connection.execute(
            sa.text("SELECT last_error FROM outbox WHERE state = 'failed'")
        ).scalars()
        assert all("stuck.html: line 3: round to -1,000,000,000 digits" in str(e) for e in errors)
    engine.dispose()


def test_reload_refuses_a_template_past_a_limit_and_keeps_its_heartbeat(
    tmp_path: Path, secrets: None, caplog: pytest.LogCaptureFixture
) -> None:
    shop = sqlite_shop(tmp_path, reload_check_s=1e-6)
    two_campaigns(shop)
    process = worker_for(shop)
    process.start(loop=False)
    try:
        process.tick()
        (shop / "templates" / "stuck.html").write_text(
            "{% extends 'base.html' %}{% block content %}\n{{ 9**(9**9) }}{% endblock %}"
        )
        os.utime(shop / "templates" / "stuck.html", ns=(time.time_ns(), time.time_ns() + 10**9))
        with caplog.at_level(logging.ERROR, logger="recocamp.worker"):
            process.tick()
        assert "reload refused" in caplog.text and "stuck.html" in caplog.text
        assert "line 2" in caplog.text and "4,096 bits" in caplog.text
        (shop / "templates" / "stuck.html").write_text(
            "{% extends 'base.html' %}{% block content %}\n{% include '_offer.html' %}"
            "{% endblock %}"
        )
        os.utime(shop / "templates" / "stuck.html", ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            process.tick()
        assert (
            "reload refused" in caplog.text and "template not found: '_offer.html'" in caplog.text
        )
        assert "worker loop" not in caplog.text and "Traceback" not in caplog.text
        assert set(process.campaigns) == {"everyone", "stuck"}  # the last good set runs on
        before = scalar(process.engine, "SELECT heartbeat_at FROM workers")
        time.sleep(0.01)
        process.tick()
        assert scalar(process.engine, "SELECT heartbeat_at FROM workers") != before
    finally:
        process.shutdown()
        process.engine.dispose()


def test_a_resume_skipped_because_the_campaign_runs_is_tried_again_later(
    tmp_path: Path, secrets: None, esp: tuple[FakeEsp, str]
) -> None:
    """The leader resumes a dead worker's campaign run while the same campaign is running
    (its job lock is held): the resume is skipped. Once the lock is free, the next round
    resumes it; it was remembered as resumed and never tried again (its mail never sent)."""
    fake, url = esp
    process = worker_for(sqlite_shop(tmp_path, url))
    decided_at = datetime.now(UTC) - timedelta(hours=1)  # the worker runs on the real clock
    dead, _ = dead_run(process, decided_at)

    def skipped() -> bool:
        with process.engine.connect() as connection:
            return any(r.status == "skipped" for r in runs.recent(connection, "campaign:everyone"))

    process.start(loop=False)
    try:
        with process.leadership.job_lock("campaign:everyone") as held:
            assert held
            process.tick()  # leader now: finds the dead run, and its resume is skipped
            wait_for(skipped, 30)
        process.tick()
        wait_for(lambda: fake.stats()["received"] >= 60, 30)
    finally:
        process.shutdown()
    with process.engine.connect() as connection:
        resumed = [r for r in runs.recent(connection, "campaign:everyone") if r.resumed_from]
    assert [(r.resumed_from, r.status) for r in resumed] == [(dead, "ok")]
    assert fake.stats()["duplicates"] == 0


def test_a_resume_waiting_for_its_campaign_is_recorded_skipped_once_not_every_poll(
    tmp_path: Path,
) -> None:
    """While the campaign of a dead worker's run is running here (its job lock held: the
    next scheduled run, a long one), the leader tries the resume again each poll: each try
    wrote a 'skipped' row and a log line, one every 2 s for as long as that run went on
    (an hour: 1,800 rows in runs list). The first try is recorded; the rest are not."""
    process = worker_for(sqlite_shop(tmp_path))
    dead, _ = dead_run(process, datetime.now(UTC) - timedelta(hours=1))
    tried = threading.Semaphore(0)
    real = process.run

    def run(job_id: str, **kwargs: Any) -> str:
        try:
            return real(job_id, **kwargs)
        finally:
            tried.release()

    process.run = run  # type: ignore[method-assign]  # the resumes the scheduler runs
    process.start(loop=False)
    try:
        with process.leadership.job_lock("campaign:everyone") as held:
            assert held
            for _ in range(4):
                process.tick()  # the leader's poll: finds the dead run, tries to resume it
                assert tried.acquire(timeout=30)
    finally:
        process.shutdown()
    with process.engine.connect() as connection:
        rows = runs.recent(connection, "campaign:everyone")
    assert [r.status for r in rows if r.id != dead] == ["skipped"]
    assert not any(r.resumed_from == dead for r in rows)  # still to resume


def test_abandon_records_the_runs_still_going_interrupted(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``worker --demo`` does when a job outlasts the shutdown timeout after a signal
    and the process must exit: the run is not left ``running`` for ever."""
    from recocamp.worker import jobs as worker_jobs

    shop = sqlite_shop(tmp_path)
    process = worker_for(shop)
    seen: list[tuple[str, str]] = []

    def stuck(*_args: object, **_kwargs: object) -> None:
        process.abandon("SIGTERM: the demo stopped before the run ended")  # the watcher
        with process.engine.connect() as connection:
            row = connection.execute(sa.text("SELECT status, error FROM runs")).one()
            seen.append((row.status, row.error))
        raise RuntimeError("the process would be gone by now")

    monkeypatch.setattr(worker_jobs, "send_campaign", stuck)
    assert process.run("campaign:everyone") == "error"
    assert seen == [("interrupted", "SIGTERM: the demo stopped before the run ended")]
    process.abandon("nothing runs now")  # a run that has ended is not touched
    with process.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT status FROM runs")).scalar_one() == "error"


def test_a_job_past_the_shutdown_timeout_is_recorded_interrupted_before_the_exit(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``recocamp worker`` exits 3 when a job (a training) still runs after the shutdown
    timeout: its run must not stay ``running`` for ever in ``runs list``, nor the worker
    look alive and leading in ``runs workers``."""
    from recocamp.worker import jobs as worker_jobs

    release = threading.Event()

    def stuck(*_args: object) -> dict[str, object]:
        release.wait(30)
        return {}

    monkeypatch.setitem(worker_jobs.JOBS, "train", stuck)
    process = worker_for(sqlite_shop(tmp_path, shutdown_timeout_s=0.5))
    process.start(loop=False)
    try:
        process.tick()  # leader
        process.scheduler.add_job(process.run, args=["train"], jobstore=scheduler.LOCAL)
        wait_for(lambda: scalar(process.engine, "SELECT status FROM runs WHERE job = 'train'"))
        assert process.shutdown() is False  # the caller exits 3 now
        with process.engine.connect() as connection:
            [train] = runs.recent(connection, "train")
            [worker] = runs.all_workers(connection)
        assert train.status == "interrupted" and "shutdown" in (train.error or "")
        assert worker.stopped_at is not None and worker.leader_since is None
    finally:
        release.set()
        process.leadership.release()  # the process would have exited, closing the lock file


def test_ctrl_c_during_worker_once_stops_its_jobs_and_keeps_the_lock_until_they_end(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C on ``worker --once`` while a job runs: the job is told to stop (a campaign run
    stops between chunks, as under the long-running worker), and the SQLite worker lock is
    held until it has ended — released at once, a ``recocamp worker`` started next would run
    beside the job still going."""
    import _thread

    from recocamp.worker import jobs as worker_jobs

    shop = sqlite_shop(tmp_path)
    lock = shop / "shop.db.worker-lock"
    assert recocamp(shop, "worker", "--once").returncode == 0  # stores the schedule
    assert recocamp(shop, "runs", "trigger", "train").returncode == 0
    seen: list[tuple[bool, bool]] = []

    def interrupted(ctx: worker_jobs.JobContext, _as_of: datetime) -> dict[str, object]:
        _thread.interrupt_main()  # Ctrl-C while the job runs
        stopped = ctx.stop.wait(10)
        time.sleep(0.5)  # a job finishing its chunk
        seen.append((stopped, lock.exists()))
        return {}

    monkeypatch.setitem(worker_jobs.JOBS, "train", interrupted)
    process = worker_for(shop)
    # a process started in the background (CI's) ignores SIGINT, and interrupt_main then
    # does nothing: Ctrl-C's handler, as a terminal's process has it
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            process.run_due_once()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == [(True, True)]  # told to stop; the lock still held while it ran
    assert not lock.exists()
    with process.engine.connect() as connection:
        [train] = runs.recent(connection, "train")
    assert train.status == "ok"  # recorded, not left running


def test_sigterm_during_worker_once_stops_its_jobs_as_ctrl_c_does(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cron's ``timeout`` sends SIGTERM to ``worker --once``: it ended the process at once, the
    run left ``running`` for ever. Now the job is told to stop and recorded, the lock held
    until it has ended, and the process's own SIGTERM handler is back afterwards."""
    from recocamp.worker import jobs as worker_jobs

    shop = sqlite_shop(tmp_path)
    lock = shop / "shop.db.worker-lock"
    assert recocamp(shop, "worker", "--once").returncode == 0  # stores the schedule
    assert recocamp(shop, "runs", "trigger", "train").returncode == 0
    seen: list[tuple[bool, bool]] = []

    def terminated(ctx: worker_jobs.JobContext, _as_of: datetime) -> dict[str, object]:
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to the main thread
        stopped = ctx.stop.wait(10)
        seen.append((stopped, lock.exists()))
        return {}

    monkeypatch.setitem(worker_jobs.JOBS, "train", terminated)
    before = signal.getsignal(signal.SIGTERM)
    process = worker_for(shop)
    with pytest.raises(KeyboardInterrupt):
        process.run_due_once()
    assert seen == [(True, True)] and process.stopped_by == "SIGTERM"
    assert not lock.exists() and signal.getsignal(signal.SIGTERM) is before
    with process.engine.connect() as connection:
        [train] = runs.recent(connection, "train")
    assert train.status == "ok"  # recorded, not left running


def test_a_campaign_run_whose_start_the_store_refused_runs_later_for_its_instant(
    tmp_path: Path, secrets: None
) -> None:
    """The store refuses the run's first row (locked past its busy timeout by a long import
    in another process, a full disk) when a campaign falls due: the scheduler had moved its
    next run time on, and with no row there was nothing to resume, so the campaign sent
    nothing that day and ``runs list`` showed nothing. It is tried again, as a run that
    failed is, for the instant it was due."""
    process, clock = clocked_worker(tmp_path)
    due = clock.now() - timedelta(minutes=2)
    process.start(loop=False)
    try:
        refused_once(process, "INSERT", "database or disk is full", due)
        process.tick()  # too soon: a store that refused a moment ago is not asked at once
        assert process.scheduler.get_jobs(jobstore=scheduler.LOCAL) == [
            process.scheduler.get_job("deliver", jobstore=scheduler.LOCAL)
        ]
        clock.advance(timedelta(seconds=RETRY_FAILED_S + 1))
        process.tick()

        def ran() -> list[Any]:
            with process.engine.connect() as connection:
                found = runs.recent(connection, "campaign:everyone")
            return [r for r in found if r.status == "ok"]

        [done] = wait_for(ran, 30)
    finally:
        process.shutdown()
        process.engine.dispose()
    assert done.as_of == due and done.run_key == jobs.run_key(
        "everyone", due, ZoneInfo("Europe/Berlin")
    )
    assert done.counts["enqueued"] == CUSTOMERS


def test_a_campaign_run_whose_end_the_store_refused_runs_again_for_its_instant(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database goes away mid-run (a restart, a failover: measured on PostgreSQL under
    two worker processes) and is still away when the run's failure is to be recorded: its
    row stayed ``running`` on a live worker, which no leader resumes, so the customers the
    run had not reached got nothing for as long as the worker ran. Now it runs again for its
    instant, as a run whose start was refused does, and its first row says why it ended."""
    from recocamp.worker import jobs as worker_jobs

    process, clock = clocked_worker(tmp_path)
    due = clock.now() - timedelta(minutes=2)
    real = worker_jobs.run_campaign

    def cut_off(*args: Any) -> Any:  # the first run loses the database before its first chunk
        monkeypatch.setattr(worker_jobs, "run_campaign", real)
        raise sa.exc.OperationalError("INSERT", {}, Exception("the connection is lost"))

    monkeypatch.setattr(worker_jobs, "run_campaign", cut_off)
    process.start(loop=False)
    try:
        refused_once(process, "UPDATE", "the database system is shutting down", due)
        [cut] = recent_runs(process)
        assert cut.status == "running"
        clock.advance(timedelta(seconds=RETRY_FAILED_S + 1))
        process.tick()
        [done] = wait_for(lambda: [r for r in recent_runs(process) if r.status == "ok"], 30)
    finally:
        process.shutdown()
        process.engine.dispose()
    assert done.as_of == due and done.resumed_from == cut.id
    assert done.counts["enqueued"] == CUSTOMERS
    [cut] = [r for r in recent_runs(process) if r.id == cut.id]
    assert cut.status == "interrupted" and "could not be recorded" in cut.error


def recent_runs(process: Worker) -> list[Any]:
    with process.engine.connect() as connection:
        return list(runs.recent(connection, "campaign:everyone"))


def test_a_broken_campaign_file_quoting_an_address_is_recorded_without_it(
    tmp_path: Path, secrets: None
) -> None:
    """The worker records a broken campaign file's problems as its ``check`` run, which
    ``runs list`` and ``runs workers`` print: a subject that names the shop's reply address
    was stored and shown with it (the log line had it masked)."""
    shop = sqlite_shop(tmp_path)
    path = shop / "campaigns" / "everyone.toml"
    path.write_text(
        path.read_text().replace('de = "Für Sie"', 'de = "Fragen? antwort@shop.example {{ x"')
    )
    process = worker_for(shop)
    process.start(loop=False)
    process.shutdown()
    process.engine.dispose()
    error = scalar_text(process.engine, "SELECT error FROM runs WHERE job = 'check'")
    assert "{{ x" in error and "<address>" in error and "antwort@" not in error
    shown = recocamp(shop, "runs", "list", "--job", "check", "--format", "json")
    assert shown.returncode == 0 and "everyone.toml" in shown.stdout
    assert "antwort@" not in shown.stdout + shown.stderr


def test_sigterm_during_the_delivery_of_worker_once_ends_the_batch_and_holds_no_claim(
    tmp_path: Path, secrets: None, esp: tuple[FakeEsp, str]
) -> None:
    """``worker --once`` ends with a delivery round on its main thread, where SIGTERM (cron's
    ``timeout``) and Ctrl-C raise ``KeyboardInterrupt``: it came in the middle of a batch —
    rendering it, or waiting for the provider's answer — and the claims stayed taken until
    their lease ran out, a batch the provider took not recorded sent. Now the round stops as
    the worker's does: the batch in flight is finished and recorded, the rest stays queued."""
    fake, url = esp
    shop = sqlite_shop(tmp_path, url)
    process = worker_for(shop)
    campaign, templates = process.campaigns["everyone"], shop / "templates"
    now = datetime.now(UTC)
    jobs.plan_and_enqueue(process.engine, process.settings, campaign, templates, now)
    fake.set_faults(Faults(latency_ms=2000))  # a batch is in flight for two seconds

    def claimed() -> int:
        return scalar_int(process.engine, "SELECT count(*) FROM outbox WHERE state = 'claimed'")

    worker = start_worker(shop, "--once")
    try:
        wait_for(claimed)
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    finally:
        worker.kill()
    sent = scalar_int(process.engine, "SELECT count(*) FROM outbox WHERE state = 'sent'")
    queued = scalar_int(process.engine, "SELECT count(*) FROM outbox WHERE state = 'queued'")
    process.engine.dispose()
    assert claimed() == 0 and 0 < sent < CUSTOMERS and sent + queued == CUSTOMERS
    assert fake.stats()["received"] == sent


def test_a_campaign_run_due_as_the_worker_stops_is_left_to_the_next_worker(
    tmp_path: Path, secrets: None, esp: tuple[FakeEsp, str]
) -> None:
    """SIGTERM just after the scheduler handed a due campaign to a thread (or while it waited
    for a free one): the scheduler had saved its next run time, and the run, finding the
    worker stopping, returned without a trace, so that day's run was lost. It is recorded
    interrupted, for its instant, and the next worker resumes it."""
    fake, url = esp
    shop = sqlite_shop(tmp_path, url)
    first = worker_for(shop)
    first.start(loop=False)
    due = datetime.now(UTC) - timedelta(minutes=1)  # the shop's orders are recent *now*
    try:
        first.tick()
        first.stop.set()  # SIGTERM
        assert first.run("campaign:everyone", as_of=due) == "skipped"
    finally:
        first.shutdown()
    second = worker_for(shop)
    second.start(loop=False)
    try:
        second.tick()  # the leader: resumes what the first worker left
        wait_for(lambda: fake.stats()["received"] >= CUSTOMERS, 30)
    finally:
        second.shutdown()
    with second.engine.connect() as connection:
        rows = runs.recent(connection, "campaign:everyone")
    second.engine.dispose()
    key = jobs.run_key("everyone", due, ZoneInfo("Europe/Berlin"))
    assert sorted((r.status, r.run_key, r.as_of, r.resumed_from is not None) for r in rows) == [
        ("interrupted", key, due, False),
        ("ok", key, due, True),
    ]
    assert fake.stats()["duplicates"] == 0


def test_a_resume_the_scheduler_takes_up_late_still_runs(
    tmp_path: Path, secrets: None, esp: tuple[FakeEsp, str]
) -> None:
    """The leader hands a dead worker's campaign run to the scheduler to resume it; when the
    scheduler's loop took it up more than a second later (busy saving a job's next run time
    while an import held the SQLite write lock, a slow PostgreSQL), APScheduler's default
    misfire grace of one second dropped it as missed: remembered as resumed, it was never
    tried again, and its mail never sent."""
    fake, url = esp
    process = worker_for(sqlite_shop(tmp_path, url))
    dead, key = dead_run(process, datetime.now(UTC) - timedelta(hours=1))
    process.start(loop=False)
    try:
        process.scheduler.pause()  # its loop busy elsewhere
        process.tick()  # the leader: hands the dead worker's run to the scheduler
        time.sleep(1.5)  # taken up later than the default grace (at least: never sooner)
        process.scheduler.resume()
        wait_for(lambda: fake.stats()["received"] >= CUSTOMERS, 30)
    finally:
        process.shutdown()
    with process.engine.connect() as connection:
        resumed = [r for r in runs.recent(connection, "campaign:everyone") if r.resumed_from]
    process.engine.dispose()
    assert [(r.resumed_from, r.run_key, r.status) for r in resumed] == [(dead, key, "ok")]


def test_a_change_to_a_template_in_a_subfolder_is_reloaded(tmp_path: Path, secrets: None) -> None:
    """Templates may sit in subfolders (``{% include 'parts/_sign.html' %}``: the renderer's
    snapshot takes the whole tree), but the worker looked for changes among the folder's
    top-level files only: an edited partial in a subfolder was never checked nor taken, and
    every e-mail went on with the old text until a restart."""
    shop = sqlite_shop(tmp_path, reload_check_s=1e-6)
    parts = shop / "templates" / "parts"
    parts.mkdir()
    (parts / "_sign.html").write_text("<p>Your shop team</p>\n")
    base = shop / "templates" / "base.html"
    base.write_text(base.read_text().replace("</body>", "{% include 'parts/_sign.html' %}</body>"))
    process = worker_for(shop)
    process.start(loop=False)
    try:
        process.tick()
        assert process.context.renderer.sources is not None
        assert process.context.renderer.sources["parts/_sign.html"] == "<p>Your shop team</p>\n"
        (parts / "_sign.html").write_text("<p>Greetings from the shop</p>\n")
        os.utime(parts / "_sign.html", ns=(time.time_ns(), time.time_ns() + 10**9))
        process.tick()
        sources = process.context.renderer.sources
        assert sources is not None
        assert sources["parts/_sign.html"] == "<p>Greetings from the shop</p>\n"
    finally:
        process.shutdown()
        process.engine.dispose()


def test_worker_once_says_which_job_failed_and_exits_1(tmp_path: Path) -> None:
    """``--once`` printed ``train: ran`` for a training that failed (its error was recorded,
    so the scheduler saw the job return) and exited 0: a cron job running it never noticed.
    Each job shows its run's status, and a failed one makes the exit 1 after the rest ran."""
    shop = sqlite_shop(tmp_path)
    assert recocamp(shop, "worker", "--once").returncode == 0  # stores the schedule
    engine = make_engine(f"sqlite:///{shop / 'shop.db'}")
    with engine.begin() as connection:  # nothing to learn from: the training fails
        connection.execute(sa.text("DELETE FROM purchases"))
    engine.dispose()
    assert recocamp(shop, "runs", "trigger", "train").returncode == 0
    result = recocamp(shop, "worker", "--once")
    assert "train: error" in result.stdout and "deliver: ok" in result.stdout
    assert result.returncode == 1 and "train" in result.stderr


def test_a_campaigns_folder_gone_for_a_while_keeps_the_schedule(
    tmp_path: Path, secrets: None, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole ``campaigns/`` folder gone (a deploy that swaps it, a volume not mounted for
    a moment) read as every campaign deleted: each left the schedule, losing its next run
    time — one due meanwhile never ran. A folder that is not there is no change to take:
    the campaigns keep running, with their next run times, and the worker says why."""
    shop = sqlite_shop(tmp_path, reload_check_s=1e-6)
    process = worker_for(shop)
    process.start(loop=False)
    try:
        process.tick()
        job = process.scheduler.get_job("campaign:everyone", jobstore=scheduler.SHARED)
        assert job is not None
        due = job.next_run_time
        (shop / "campaigns").rename(shop / "campaigns.old")
        with caplog.at_level(logging.ERROR, logger="recocamp.worker"):
            process.tick()
        assert f"{shop / 'campaigns'} is not a folder" in caplog.text
        job = process.scheduler.get_job("campaign:everyone", jobstore=scheduler.SHARED)
        assert job is not None and job.next_run_time == due
        (shop / "campaigns.old").rename(shop / "campaigns")
        process.tick()
        job = process.scheduler.get_job("campaign:everyone", jobstore=scheduler.SHARED)
        assert job is not None and job.next_run_time == due
    finally:
        process.shutdown()
        process.engine.dispose()


def test_a_template_no_campaign_uses_that_is_not_utf8_stops_nothing(
    tmp_path: Path, secrets: None
) -> None:
    """An old template saved in Latin-1 that no campaign uses: ``check`` passes, but the
    worker's template snapshot refused the whole folder — the worker would not start (exit 2:
    no delivery, imports or purges), and once running it took no change any more (each
    reload failed the loop's round)."""
    shop = sqlite_shop(tmp_path, reload_check_s=1e-6)
    old = shop / "templates" / "old"
    old.mkdir()
    (old / "newsletter.html").write_bytes("<p>Grüße</p>".encode("latin-1"))
    result = recocamp(shop, "worker", "--once")
    assert result.returncode == 0 and "deliver: ok" in result.stdout, result.stderr
    process = worker_for(shop)
    process.start(loop=False)
    try:
        process.tick()
        assert set(process.campaigns) == {"everyone"}
        path = shop / "campaigns" / "everyone.toml"
        path.write_text(path.read_text().replace('"0 9 * * THU"', '"0 10 * * FRI"'))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
        process.tick()
        assert "day_of_week='fri'" in _cron(process, "campaign:everyone")
    finally:
        process.shutdown()
        process.engine.dispose()


def test_a_stylesheet_that_is_not_utf8_is_named_not_a_traceback(tmp_path: Path) -> None:
    """``email.css`` saved in Latin-1: ``check`` and the worker ended in a UnicodeDecodeError
    traceback (exit 1); it is a problem naming the file and the line, exit 2, as for any
    template file that is not UTF-8."""
    shop = sqlite_shop(tmp_path)
    sheet = shop / "templates" / "email.css"
    sheet.write_bytes(sheet.read_bytes() + "\n/* Grüße */\n".encode("latin-1"))
    lines = sheet.read_bytes().count(b"\n")
    for command in (("check",), ("worker", "--once")):
        result = recocamp(shop, *command)
        assert result.returncode == 2, (command, result.stderr)
        assert f"templates/email.css: line {lines}: not UTF-8" in result.stderr, command
        assert "Traceback" not in result.stderr and "UnicodeDecodeError" not in result.stderr


def test_a_named_pipe_among_the_campaign_files_is_refused_not_read_for_ever(
    tmp_path: Path,
) -> None:
    """``campaigns/x.toml`` a named pipe (FIFO): reading it waits for a writer for ever, so
    ``check`` and the worker hung at start, and a worker that met one on a reload hung its
    loop (no heartbeat, no leadership, no reload any more). It is a broken file, named."""
    shop = sqlite_shop(tmp_path)
    os.mkfifo(shop / "campaigns" / "pipe.toml")
    checked = recocamp(shop, "check")
    assert checked.returncode == 2 and "pipe.toml" in checked.stderr
    assert "not a regular file" in checked.stderr
    once = recocamp(shop, "worker", "--once")
    assert once.returncode == 2 and "deliver: ok" in once.stdout
    assert "1 broken campaign file(s) not run" in once.stderr and "pipe.toml" in once.stderr


def test_a_stylesheet_that_is_a_named_pipe_hangs_nothing(tmp_path: Path) -> None:
    """``templates/email.css`` a named pipe: the loader read it whenever it was built, and
    ``check`` and the worker hung for ever; it is no file, as a missing one is none."""
    shop = sqlite_shop(tmp_path)
    sheet = shop / "templates" / "email.css"
    sheet.unlink()
    os.mkfifo(sheet)
    assert recocamp(shop, "check").returncode == 0
    assert recocamp(shop, "worker", "--once").returncode == 0


def _live_model_versions() -> set[str]:
    """The versions ``recocamp_live_model`` shows as live (value 1)."""
    return {
        sample.labels["version"]
        for family in REGISTRY.collect()
        if family.name == "recocamp_live_model"
        for sample in family.samples
        if sample.value == 1
    }


def _model_row(version: str, status: str) -> dict[str, object]:
    at = datetime(2026, 11, 1, tzinfo=UTC)
    return {
        "version": version,
        "name": "popularity",
        "trained_at": at,
        "data_cutoff": at,
        "fingerprint": version,
        "params": {},
        "metrics": {},
        "path": "",
        "popular": [],
        "status": status,
    }


def test_the_live_model_metric_names_the_model_the_registry_holds_live(
    tmp_path: Path, secrets: None
) -> None:
    """``recocamp_live_model{version}`` was set only when this worker's own training promoted
    a model: a worker started on a store with a live model showed none, and after `recocamp
    models promote` or `rollback` it went on naming the model before. Each tick reads it."""
    process = worker_for(sqlite_shop(tmp_path))
    process.start(loop=False)
    try:
        process.tick()
        assert _live_model_versions() == set()
        with process.engine.begin() as connection:
            connection.execute(sa.insert(models).values(_model_row("m1", "live")))
        process.tick()  # a model live before the worker trained anything
        assert _live_model_versions() == {"m1"}
        with process.engine.begin() as connection:  # as `models promote m2` switches them
            connection.execute(
                sa.update(models).where(models.c.version == "m1").values(status="retired")
            )
            connection.execute(sa.insert(models).values(_model_row("m2", "live")))
        process.tick()
        assert _live_model_versions() == {"m2"}
    finally:
        process.shutdown()
    process.engine.dispose()


def test_a_worker_renders_with_the_templates_it_checked(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker froze the templates, then checked the files as they were a moment later:
    a template saved in between ran unchecked. Here a broken one is frozen and its fix
    lands during the check: the check passed the fix, and every e-mail rendered the broken
    version. What is frozen is what is checked; the fix is taken at the next reload."""
    shop = sqlite_shop(tmp_path, reload_check_s=1e-6)
    process = worker_for(shop)
    process.start(loop=False)
    path = shop / "templates" / "cross_sell.html"
    good = path.read_text()
    broken = good.replace("{% endblock %}", "{{ 9**(9**9) }}{% endblock %}")
    fixed = good.replace("{% endblock %}", "<p>fixed</p>{% endblock %}")
    real_check = worker_checks.campaign_problems

    def saved_meanwhile(*args: Any) -> Any:
        if path.read_text() == broken:  # the marketer's fix lands while the check runs
            path.write_text(fixed)
            os.utime(path, ns=(time.time_ns(), time.time_ns() + 2 * 10**9))
        return real_check(*args)

    monkeypatch.setattr(worker_checks, "campaign_problems", saved_meanwhile)
    try:
        process.tick()
        path.write_text(broken)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
        process.tick()
        sources = process.context.renderer.sources
        assert sources is not None and sources["cross_sell.html"] == good  # kept, not broken
        process.tick()
        sources = process.context.renderer.sources
        assert sources is not None and sources["cross_sell.html"] == fixed
    finally:
        process.shutdown()
        process.engine.dispose()


def test_a_slow_reload_never_stops_the_heartbeat(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload checks every campaign's templates, each render allowed its whole
    ``render_time_s``: tens of seconds with slow templates. The heartbeat goes on meanwhile,
    so other workers never count this one dead (and resume its runs, or take its share of
    the provider's rate)."""
    shop = sqlite_shop(tmp_path, leader_poll_s=0.1)
    two_campaigns(shop)
    process = worker_for(shop)
    checking, release = threading.Event(), threading.Event()
    real_check = worker_checks.campaign_problems

    def slow_check(*args: Any) -> Any:
        checking.set()
        release.wait(60)
        return real_check(*args)

    monkeypatch.setattr(worker_checks, "campaign_problems", slow_check)
    process.start()
    try:
        process.reload_requested.set()
        assert checking.wait(30)
        before = scalar(process.engine, "SELECT heartbeat_at FROM workers")
        wait_for(lambda: scalar(process.engine, "SELECT heartbeat_at FROM workers") != before, 30)
        assert not release.is_set()  # beat while the reload was still checking
    finally:
        release.set()
        process.shutdown()
        process.engine.dispose()


def test_a_resumed_run_keeps_its_day_when_the_campaign_zone_changed_meanwhile(
    tmp_path: Path, secrets: None, esp: tuple[FakeEsp, str]
) -> None:
    """A run's day (its run key, and so every send key) is its instant's date in the
    schedule's zone. A run left unfinished, then the campaign file's ``time_zone`` changed,
    then resumed: the resume computed the day in the new zone, another day, so it was
    recorded (and decided, send keys and all) as that other day's run, whose own run then
    took it for itself; only the caps kept the first run's customers from a second e-mail."""
    fake, url = esp
    process = worker_for(sqlite_shop(tmp_path, url))
    decided_at = datetime.now(UTC) - timedelta(hours=1)
    berlin = jobs.run_key("everyone", decided_at, ZoneInfo("Europe/Berlin"))
    old_zone = next(  # a zone whose day differs from Berlin's at this instant (+14 or -11)
        name
        for name in ("Pacific/Kiritimati", "Pacific/Pago_Pago")
        if jobs.run_key("everyone", decided_at, ZoneInfo(name)) != berlin
    )
    current = process.campaigns["everyone"]
    before = current.model_copy(
        update={"schedule": current.schedule.model_copy(update={"time_zone": old_zone})}
    )
    chunks: list[int] = []
    with pytest.raises(Interrupted):  # the first worker enqueued a chunk, then died
        jobs.plan_and_enqueue(
            process.engine,
            process.settings,
            before,
            process.templates_dir,
            decided_at,
            jobs.RunOptions(
                chunk_size=20, on_progress=chunks.append, stopping=lambda: bool(chunks)
            ),
        )
    key = jobs.run_key("everyone", decided_at, ZoneInfo(old_zone))
    with process.engine.begin() as connection:
        dead = runs.start(
            connection,
            "campaign:everyone",
            "elsewhere:1:dead",
            decided_at,
            as_of=decided_at,
            run_key=key,
        )
    enqueued = scalar_int(process.engine, "SELECT count(*) FROM outbox")
    assert 0 < enqueued < CUSTOMERS
    process.start(loop=False)  # its campaign file now says Europe/Berlin
    try:
        process.tick()  # the leader: resumes the dead worker's run
        wait_for(lambda: fake.stats()["received"] >= CUSTOMERS, 30)
        time.sleep(0.5)  # any second e-mail would be on its way now
    finally:
        process.shutdown()
    with process.engine.connect() as connection:
        resumed = [r for r in runs.recent(connection, "campaign:everyone") if r.resumed_from]
        recipients = connection.execute(sa.text("SELECT customer_id FROM outbox")).scalars().all()
    process.engine.dispose()
    assert [(r.resumed_from, r.run_key, r.status) for r in resumed] == [(dead, key, "ok")]
    assert sorted(recipients) == sorted(f"w{n}" for n in range(CUSTOMERS))
    assert fake.stats()["received"] == CUSTOMERS


def test_a_reload_the_store_refused_is_taken_at_the_next_round(
    tmp_path: Path, secrets: None
) -> None:
    """A reload whose schedule the store refused to save (SQLite locked past its busy
    timeout by a long import, a full disk) had already taken the files as checked: the
    change was never looked at again, so a changed cron kept its old time (and a new
    campaign stayed out of the schedule) until another edit or a restart. It is tried again
    at the next round."""
    shop = sqlite_shop(tmp_path, reload_check_s=3600)
    process = worker_for(shop)
    process.start(loop=False)
    try:
        process.tick()
        assert process.leader_since is not None
        path = shop / "campaigns" / "everyone.toml"
        path.write_text(path.read_text().replace('"0 9 * * THU"', '"0 10 * * FRI"'))
        with process.engine.begin() as connection:
            connection.execute(
                sa.text(
                    "CREATE TRIGGER refused BEFORE DELETE ON apscheduler_jobs "
                    "BEGIN SELECT RAISE(ABORT, 'database is locked'); END"
                )
            )
        process.reload_requested.set()  # SIGHUP: the change is taken now
        with pytest.raises(sa.exc.SQLAlchemyError, match="database is locked"):
            process.tick()
        with process.engine.begin() as connection:
            connection.execute(sa.text("DROP TRIGGER refused"))
        process.tick()  # the next round: no SIGHUP, no further change
        assert "day_of_week='fri'" in _cron(process, "campaign:everyone")
    finally:
        process.shutdown()
        process.engine.dispose()


def test_the_runs_of_a_killed_worker_are_not_left_running_for_ever(
    tmp_path: Path, secrets: None
) -> None:
    """A worker killed mid-run (SIGKILL, the kernel's OOM killer during a training, its host
    gone) left its training, import or snapshot ``running`` in ``runs list`` for ever, and a
    campaign run too old to resume as well: only campaign runs young enough to resume were
    looked at. The scheduling worker records them ``interrupted``; a live worker's run and a
    campaign run still to resume are not its business."""
    process, clock = clocked_worker(tmp_path)
    now = clock.now()
    with process.engine.begin() as connection:
        runs.heartbeat(connection, "elsewhere:2:alive", now, None)
        training = runs.start(connection, "train", "elsewhere:1:dead", now - timedelta(days=3))
        old = runs.start(
            connection,
            "campaign:everyone",
            "elsewhere:1:dead",
            now - timedelta(days=2),
            as_of=now - timedelta(days=2),
        )
        alive = runs.start(connection, "kpi_snapshot", "elsewhere:2:alive", now)
    process.start(loop=False)
    try:
        process.scheduler.pause()  # nothing of the schedule runs meanwhile
        process.tick()
    finally:
        process.shutdown()
    with process.engine.connect() as connection:
        found = {row.id: row for row in runs.recent(connection, limit=100)}
    assert found[training].status == found[old].status == "interrupted"
    assert "its worker stopped or died" in (found[training].error or "")
    assert found[training].finished_at == now
    assert found[alive].status == "running"
    assert not any(row.resumed_from == old for row in found.values())  # too old to resume


def test_an_import_past_the_shutdown_timeout_is_recorded_interrupted_too(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import records its run only when it ends (an idle poll of the drop folder leaves
    no history), so one still running when the worker had to exit 3 left no trace at all:
    ``runs list`` showed no import, where a training is recorded ``interrupted``."""
    from recocamp.worker import jobs as worker_jobs

    entered, release = threading.Event(), threading.Event()

    def stuck(*_args: object) -> dict[str, object]:
        entered.set()
        release.wait(30)
        return {}

    monkeypatch.setitem(worker_jobs.JOBS, "import", stuck)
    process = worker_for(sqlite_shop(tmp_path, shutdown_timeout_s=0.5))
    process.start(loop=False)
    try:
        process.tick()  # leader
        process.scheduler.add_job(process.run, args=["import"], jobstore=scheduler.LOCAL)
        assert entered.wait(30)
        assert process.shutdown() is False  # the caller exits 3 now
        with process.engine.connect() as connection:
            [imported] = runs.recent(connection, "import")
        assert imported.status == "interrupted" and "shutdown" in (imported.error or "")
    finally:
        release.set()
        process.leadership.release()  # the process would have exited, closing the lock file


def test_worker_once_resumes_an_unfinished_campaign_run(
    tmp_path: Path, secrets: None, esp: tuple[FakeEsp, str]
) -> None:
    """``worker --once`` under cron: cron's ``timeout`` (SIGTERM) stops a campaign run at its
    next chunk, recorded ``interrupted`` to be resumed by the next scheduling worker; but
    ``--once`` ran only the jobs its schedule had due, so where it is the only worker the
    customers after that chunk never got the day's e-mail. It resumes such runs as the
    scheduling worker does, with their own instant."""
    fake, url = esp
    shop = sqlite_shop(tmp_path, url)
    process = worker_for(shop)
    decided_at = datetime.now(UTC) - timedelta(hours=1)
    dead, key = dead_run(process, decided_at)
    with process.engine.begin() as connection:
        runs.mark_interrupted(connection, dead, decided_at, "SIGTERM")
    outcomes = process.run_due_once()
    assert outcomes[f"resume:{dead}"] == "ok", outcomes
    with process.engine.connect() as connection:
        [resumed] = [r for r in runs.recent(connection) if r.resumed_from == dead]
    assert resumed.status == "ok" and resumed.run_key == key and resumed.as_of == decided_at
    assert fake.stats()["received"] == CUSTOMERS


def test_a_run_of_this_worker_is_not_resumed_while_it_runs(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The machine slept under a campaign run (or the database held the heartbeat off for a
    while): on waking, the worker's own heartbeat is older than ``5 × leader_poll_s`` until
    its thread writes the next one, and the resume took the worker's own run, still going,
    for a dead worker's: marked ``interrupted`` mid-run and resumed beside it (skipped as
    already running, a row and a log line each poll until the run ended)."""
    from recocamp.worker import jobs as worker_jobs

    process, clock = clocked_worker(tmp_path)
    seen: list[object] = []

    def slept(*_args: object) -> dict[str, object]:
        clock.advance(timedelta(minutes=10))  # the machine slept under the run
        seen.append(process.resume_unfinished())
        seen.append(scalar(process.engine, "SELECT status FROM runs WHERE job LIKE 'campaign:%'"))
        return {}

    monkeypatch.setattr(worker_jobs, "run_campaign", slept)
    process.start(loop=False)
    try:
        process.tick()  # the leader, its heartbeat written now
        assert process.run("campaign:everyone", as_of=clock.now()) == "ok"
    finally:
        process.shutdown()
        process.engine.dispose()
    assert seen == [0, "running"]


def test_worker_once_ends_the_runs_a_killed_worker_left_running(
    tmp_path: Path, secrets: None
) -> None:
    """Under cron, ``worker --once`` is the only scheduling worker: a training it ran when
    it was killed (the OOM killer) stayed ``running`` in ``runs list`` for ever."""
    process = worker_for(sqlite_shop(tmp_path))
    with process.engine.begin() as connection:
        training = runs.start(
            connection, "train", "elsewhere:1:dead", datetime.now(UTC) - timedelta(hours=3)
        )
    process.run_due_once()
    with process.engine.connect() as connection:
        [row] = [r for r in runs.recent(connection, "train") if r.id == training]
    assert row.status == "interrupted" and "its worker stopped or died" in (row.error or "")


def _restarted_across(shop: Path, slot: datetime) -> Worker:
    """A worker started after the daily ``everyone`` run's slot passed while none was up:
    the stored schedule still has it due at ``slot``."""
    local = slot.astimezone(ZoneInfo("Europe/Berlin"))
    path = shop / "campaigns" / "everyone.toml"
    cron = f'cron = "{local.minute} {local.hour} * * *"'
    path.write_text(path.read_text().replace('cron = "0 9 * * THU"', cron))
    process = worker_for(shop)
    sched = scheduler.make_scheduler()
    sched.start(paused=True)
    scheduler.attach_shared(sched, process.engine)
    scheduler.sync(sched, list(process.specs.values()), scheduler.SHARED, "leader")
    sched.modify_job("campaign:everyone", jobstore=scheduler.SHARED, next_run_time=slot)
    scheduler.quiesce(sched)
    sched.shutdown(wait=False)
    return process


@pytest.mark.parametrize("late", [timedelta(minutes=1), timedelta(hours=2)])
def test_a_daily_campaign_slot_passed_while_the_worker_restarted(
    tmp_path: Path, secrets: None, esp: tuple[FakeEsp, str], late: timedelta
) -> None:
    """Back a minute after the slot: the day's run runs once, for its slot. Back after the
    misfire grace time (1 h): not run, by the README's rule — but recorded skipped with the
    slot and the rule; it was only logged at INFO, the day's campaign gone without a trace
    in runs list."""
    fake, url = esp
    slot = (datetime.now(UTC) - late).replace(second=0, microsecond=0)
    process = _restarted_across(sqlite_shop(tmp_path, url), slot)
    process.start(loop=False)
    try:
        process.tick()  # the leader: the stored schedule has the slot due
        wait_for(lambda: [r for r in recent_runs(process) if r.status != "running"], 30)
    finally:
        process.shutdown()
    rows = recent_runs(process)
    process.engine.dispose()
    if late < timedelta(hours=1):
        assert [(r.job, r.status, r.as_of) for r in rows] == [("campaign:everyone", "ok", slot)]
        assert fake.stats()["received"] == CUSTOMERS and fake.stats()["duplicates"] == 0
        return
    assert [(r.job, r.status) for r in rows] == [("campaign:everyone", "skipped")]
    assert f"due {slot:%Y-%m-%d %H:%M:%S} UTC" in rows[0].error
    assert "misfire_grace_s = 3600" in rows[0].error
    assert fake.stats()["received"] == 0


def test_sigterm_while_a_job_waits_on_the_database_lock_exits_within_the_timeout(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job (and the heartbeat) waiting on SQLite's write lock, held by another process
    past the busy timeout (10 s), when SIGTERM comes: the worker must exit within
    ``shutdown_timeout_s`` as the README says. It waited the timeout, then up to 5 s for
    each of its loop and heartbeat threads, then 10 s more to record the run interrupted
    in the locked store: 2 s became 22, and a supervisor's SIGKILL (Docker's after 10 s)
    came first."""
    from recocamp.worker import jobs as worker_jobs

    monkeypatch.setitem(worker_jobs.JOBS, "train", lambda *_args: {})  # once the lock is free
    shop = sqlite_shop(tmp_path, shutdown_timeout_s=2)
    process = worker_for(shop)
    process.start()
    holder = sqlite3.connect(shop / "shop.db", isolation_level=None)
    try:
        wait_for(lambda: process.leader_since is not None, 10)
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        process.scheduler.add_job(process.run, args=["train"], jobstore=scheduler.LOCAL)
        time.sleep(0.5)  # the job waits on the lock to record its start
        began = time.monotonic()
        clean = process.shutdown()
        took = time.monotonic() - began
    finally:
        holder.rollback()
        holder.close()
    assert clean is False  # the caller exits 3 now
    assert took < 2 + 0.5, f"{took:.1f} s"
    process.leadership.release()  # the process would have exited, closing the lock file
    process.engine.dispose()


def test_worker_once_beats_like_a_worker_while_it_runs_and_leaves_no_row(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``worker --once`` wrote no heartbeat: while it ran a campaign run, another worker saw
    that run as a dead worker's (``unfinished_campaign_runs``: the scheduling worker would
    mark it interrupted and resume it beside --once's) and did not count --once in the
    provider's shared rate (``live_worker_count``). It beats like a worker while it runs
    and its row goes when it ends (cron runs it every few minutes: a row each would pile up)."""
    from recocamp.worker import jobs as worker_jobs

    process, clock = clocked_worker(tmp_path)
    now = clock.now()
    dead, _key = dead_run(process, now - timedelta(hours=1))
    with process.engine.begin() as connection:
        runs.mark_interrupted(connection, dead, now - timedelta(hours=1), "SIGTERM")
    poll = process.settings.worker.leader_poll_s
    seen: list[object] = []

    def running(*_args: object) -> dict[str, object]:
        with process.engine.connect() as connection:  # what another worker sees now
            found = runs.unfinished_campaign_runs(
                connection,
                now - timedelta(days=1),
                dead_before=now - timedelta(seconds=5 * poll),
                failed_before=now - timedelta(hours=1),
            )
            seen.append([row.id for row in found])
            seen.append(runs.live_worker_count(connection, now - timedelta(seconds=5 * poll)))
        return {}

    monkeypatch.setattr(worker_jobs, "run_campaign", running)
    outcomes = process.run_due_once()
    assert outcomes[f"resume:{dead}"] == "ok", outcomes
    assert seen == [[], 1]  # its own run is a live worker's, and it counts
    with process.engine.connect() as connection:  # gone: cron runs it every few minutes
        assert [w for w in runs.all_workers(connection) if w.id == process.id] == []
    process.engine.dispose()


def test_a_lock_that_hangs_on_release_holds_no_clean_exit_past_the_timeout(
    tmp_path: Path, secrets: None
) -> None:
    """A clean stop gave the scheduler lock back with no time limit after recording the
    worker stopped: on PostgreSQL ``pg_advisory_unlock`` on a connection that hangs (a
    server gone quiet, a cut network without a reset) held the exit past
    ``shutdown_timeout_s``, until a supervisor's SIGKILL."""
    process = worker_for(sqlite_shop(tmp_path, shutdown_timeout_s=1))
    process.start(loop=False)
    given_back = process.leadership.release
    hung = threading.Event()

    def hang() -> None:
        hung.wait(20)

    process.leadership.release = hang  # type: ignore[method-assign]
    try:
        process.tick()  # leader
        began = time.monotonic()
        assert process.shutdown() is True
        took = time.monotonic() - began
    finally:
        hung.set()
        given_back()
        process.engine.dispose()
    assert took < 1 + 0.5, f"{took:.1f} s"
    with process.engine.connect() as connection:
        [row] = [w for w in runs.all_workers(connection) if w.id == process.id]
    assert row.stopped_at is not None


def test_the_demo_exits_within_the_timeout_when_the_store_hangs_under_a_stuck_job(
    tmp_path: Path, secrets: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``worker --demo`` stopped by a signal with a job still running past
    ``shutdown_timeout_s`` records it interrupted and exits 3; the record waited for the
    store with no limit, so a store locked by another process (SQLite's busy timeout, 10 s;
    a PostgreSQL lock, for ever) held the exit past the timeout."""
    from recocamp.cli import worker as worker_cli

    shop = sqlite_shop(tmp_path, shutdown_timeout_s=1)
    process = worker_for(shop)
    exited: list[tuple[int, float]] = []
    began = time.monotonic()
    monkeypatch.setattr(os, "_exit", lambda code: exited.append((code, time.monotonic())))
    monkeypatch.setattr(logging, "shutdown", lambda: None)
    holder = sqlite3.connect(shop / "shop.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        process.stopped_by = "SIGTERM"
        process.stop.set()
        began = time.monotonic()
        worker_cli.exit_if_stuck(process, threading.Event())  # the job never ends
    finally:
        holder.rollback()
        holder.close()
        process.engine.dispose()
    [(code, at)] = exited
    assert code == 3
    assert at - began < 1 + 0.5, f"{at - began:.1f} s"


def test_a_run_due_when_its_cron_changed_is_recorded_not_dropped(
    tmp_path: Path, secrets: None, esp: tuple[FakeEsp, str]
) -> None:
    """No worker up across a campaign's slot, and its file edited meanwhile (another cron):
    the new worker reschedules the job from now by its new rule, and the run still due for
    the old slot went with the old schedule, with no trace in runs list (a missed run is
    recorded skipped). It is recorded skipped, naming the slot and why."""
    fake, url = esp
    shop = sqlite_shop(tmp_path, url)
    slot = (datetime.now(UTC) - timedelta(minutes=10)).replace(second=0, microsecond=0)
    _restarted_across(shop, slot).engine.dispose()
    path = shop / "campaigns" / "everyone.toml"
    path.write_text(re.sub(r'cron = "[^"]*"', 'cron = "0 9 * * THU"', path.read_text()))
    process = worker_for(shop)
    process.start(loop=False)
    try:
        process.tick()  # the leader: the schedule is synchronised with the edited file
    finally:
        process.shutdown()
    rows = recent_runs(process)
    process.engine.dispose()
    assert [(r.job, r.status) for r in rows] == [("campaign:everyone", "skipped")]
    assert f"due {slot:%Y-%m-%d %H:%M:%S} UTC" in rows[0].error
    assert "schedule changed" in rows[0].error
    assert fake.stats()["received"] == 0
