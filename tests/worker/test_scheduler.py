"""The schedule table and its APScheduler wiring: cron in time zones across DST, a
persistent job store that keeps next run times, coalescing and misfires (``--once``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger

from recocamp.campaigns.files import Campaign, load
from recocamp.settings import cron_trigger, load_settings
from recocamp.store import runs
from recocamp.store.engine import make_engine
from recocamp.worker import scheduler
from recocamp.worker.process import Worker
from tests.worker_shop import CAMPAIGN, make_shop, wait_for

BERLIN = ZoneInfo("Europe/Berlin")


def campaign(
    tmp_path: Path, cron: str, zone: str = "Europe/Berlin", name: str = "everyone"
) -> Campaign:
    text = (
        CAMPAIGN.replace('cron = "0 9 * * THU"', f'cron = "{cron}"')
        .replace('time_zone = "Europe/Berlin"', f'time_zone = "{zone}"')
        .replace('name = "everyone"', f'name = "{name}"')
    )
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return load(path)[0]


def fires(trigger: BaseTrigger, start: datetime, count: int) -> list[datetime]:
    times: list[datetime] = []
    previous: datetime | None = None
    now = start
    for _ in range(count):
        nxt: datetime = trigger.get_next_fire_time(previous, now)
        times.append(nxt)
        # via UTC: adding to a local time in a repeated DST hour would drop its fold
        previous, now = nxt, nxt.astimezone(UTC) + timedelta(microseconds=1)
    return times


def test_the_table_has_every_job_once_with_scope_and_grace(tmp_path: Path) -> None:
    settings = load_settings(None)
    table = scheduler.job_table(settings, [campaign(tmp_path, "0 9 * * *")])
    by_id = {spec.id: spec for spec in table}
    assert list(by_id) == [
        "import",
        "train",
        "kpi_snapshot",
        "purge",
        "deliver",
        "campaign:everyone",
    ]
    assert {i for i, s in by_id.items() if s.scope == "every_worker"} == {"deliver"}
    assert by_id["train"].misfire_grace_s == settings.worker.misfire_grace_s
    assert by_id["deliver"].misfire_grace_s == round(settings.worker.deliver_every_s)
    assert by_id["campaign:everyone"].campaign == "everyone"
    disabled = campaign(tmp_path, "0 9 * * *", name="off").model_copy(update={"enabled": False})
    assert "campaign:off" not in {s.id for s in scheduler.job_table(settings, [disabled])}


def test_a_campaign_cron_keeps_its_wall_time_across_both_dst_changes(tmp_path: Path) -> None:
    trigger = scheduler.job_table(load_settings(None), [campaign(tmp_path, "0 9 * * *")])[-1]
    spring = fires(trigger.trigger, datetime(2026, 3, 27, 12, tzinfo=UTC), 2)  # 29 March
    autumn = fires(trigger.trigger, datetime(2026, 10, 23, 12, tzinfo=UTC), 2)  # 25 October
    assert [t.astimezone(UTC).hour for t in spring] == [8, 7]  # 09:00 CET, then 09:00 CEST
    assert [t.astimezone(UTC).hour for t in autumn] == [7, 8]  # 09:00 CEST, then 09:00 CET
    assert all(t.astimezone(BERLIN).hour == 9 for t in spring + autumn)


def test_a_wall_time_that_dst_skips_runs_late_and_one_it_repeats_runs_once(
    tmp_path: Path,
) -> None:
    """A time the clocks skip runs an hour late (APScheduler's rule); one they repeat ran
    twice, which a campaign run could live with (idempotent per shop-local day) but the
    night's training, snapshot and purge could not: it runs once, at its first occurrence."""
    settings = load_settings(None)
    table = scheduler.job_table(settings, [campaign(tmp_path, "30 2 * * *")])
    trigger = table[-1]
    spring = fires(trigger.trigger, datetime(2026, 3, 28, 12, tzinfo=UTC), 2)
    autumn = fires(trigger.trigger, datetime(2026, 10, 24, 12, tzinfo=UTC), 2)
    # 02:30 does not exist on 29 March in Berlin: the run comes at 01:30 UTC = 03:30 CEST
    assert [t.astimezone(UTC).strftime("%d %H:%M") for t in spring] == ["29 01:30", "30 00:30"]
    # 02:30 happens twice on 25 October (CEST, then CET): it runs at the first one
    assert [t.astimezone(UTC).strftime("%d %H:%M") for t in autumn] == ["25 00:30", "26 01:30"]
    train = scheduler.job_table(
        settings.model_copy(
            update={
                "worker": settings.worker.model_copy(update={"train_cron": "30 2 * * *"}),
                "shop": settings.shop.model_copy(update={"time_zone": "Europe/Berlin"}),
            }
        ),
        [],
    )[1]
    assert train.id == "train"
    nights = fires(train.trigger, datetime(2026, 10, 24, 12, tzinfo=UTC), 2)
    assert [t.astimezone(UTC).strftime("%d %H:%M") for t in nights] == ["25 00:30", "26 01:30"]


def test_an_hourly_cron_fires_once_per_wall_clock_hour_when_clocks_go_back(
    engine: sa.Engine, paused: BackgroundScheduler
) -> None:
    """Every slot of the repeated hour once (02:00, 02:30 CEST), not again in CET; kept so
    through the job store (the trigger is stored pickled)."""
    trigger = scheduler.once_per_wall_time(cron_trigger("*/30 * * * *", timezone=BERLIN))
    scheduler.sync(
        paused, [scheduler.JobSpec("train", trigger, "leader", 60)], scheduler.SHARED, "leader"
    )
    again = scheduler.make_scheduler()
    again.start(paused=True)
    scheduler.attach_shared(again, engine)
    stored = again.get_job("train", jobstore=scheduler.SHARED).trigger
    scheduler.quiesce(again)
    again.shutdown(wait=False)
    times = fires(stored, datetime(2026, 10, 24, 23, 10, tzinfo=UTC), 5)
    assert [t.astimezone(BERLIN).strftime("%H:%M%z") for t in times] == [
        "01:30+0200",
        "02:00+0200",
        "02:30+0200",
        "03:00+0100",
        "03:30+0100",
    ]
    # a schedule that starts inside the repeated hour (nothing fired before) takes its slot
    [first] = fires(stored, datetime(2026, 10, 25, 1, 10, tzinfo=UTC), 1)
    assert first.astimezone(UTC) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)  # 02:30 CET


def test_a_campaign_in_another_zone_runs_on_its_own_clock(tmp_path: Path) -> None:
    trigger = scheduler.job_table(
        load_settings(None), [campaign(tmp_path, "0 9 * * *", zone="America/New_York")]
    )[-1]
    [first] = fires(trigger.trigger, datetime(2026, 3, 8, 0, tzinfo=UTC), 1)  # US DST day
    assert first == datetime(2026, 3, 8, 13, tzinfo=UTC)  # 09:00 EDT


@pytest.fixture
def paused(engine: sa.Engine) -> Iterator[BackgroundScheduler]:
    sched = scheduler.make_scheduler()
    sched.start(paused=True)
    scheduler.attach_shared(sched, engine)
    yield sched
    scheduler.quiesce(sched)
    sched.shutdown(wait=False)


def test_sync_keeps_next_run_times_and_reschedules_only_what_changed(
    engine: sa.Engine, paused: BackgroundScheduler, tmp_path: Path
) -> None:
    sched = paused
    settings = load_settings(None)
    table = scheduler.job_table(settings, [campaign(tmp_path, "0 9 * * *")])
    changes = scheduler.sync(sched, table, scheduler.SHARED, "leader")
    assert set(changes.values()) == {"added"} and "deliver" not in changes
    missed = datetime.now(UTC) - timedelta(hours=3)
    sched.modify_job(
        "campaign:everyone",
        jobstore=scheduler.SHARED,
        next_run_time=missed,
    )
    assert scheduler.sync(sched, table, scheduler.SHARED, "leader") == {}
    # a restart: a new scheduler on the same database sees the missed run time
    again = scheduler.make_scheduler()
    again.start(paused=True)
    scheduler.attach_shared(again, engine)
    job = again.get_job("campaign:everyone", jobstore=scheduler.SHARED)
    assert job is not None and job.next_run_time == missed
    moved = scheduler.job_table(settings, [campaign(tmp_path, "0 10 * * FRI")])
    assert scheduler.sync(again, moved, scheduler.SHARED, "leader") == {
        "campaign:everyone": "rescheduled"
    }
    job = again.get_job("campaign:everyone", jobstore=scheduler.SHARED)
    assert job.next_run_time.astimezone(BERLIN).weekday() == 4  # Friday
    assert scheduler.sync(again, scheduler.job_table(settings, []), scheduler.SHARED, "leader") == {
        "campaign:everyone": "removed"
    }
    scheduler.quiesce(again)
    again.shutdown(wait=False)


def _shop_worker(tmp_path: Path, db_url: str, **worker: object) -> Worker:
    shop = make_shop(tmp_path / "shop", db_url, "http://127.0.0.1:1", customers=30, **worker)
    settings = load_settings(shop / "settings.toml")
    process = Worker(settings, make_engine(db_url), shop / "campaigns", shop / "templates")
    process.load()
    return process


def _set_next_run(process: Worker, job: str, when: datetime) -> None:
    sched = scheduler.make_scheduler()
    sched.start(paused=True)
    scheduler.attach_shared(sched, process.engine)
    scheduler.sync(sched, list(process.specs.values()), scheduler.SHARED, "leader")
    sched.modify_job(job, jobstore=scheduler.SHARED, next_run_time=when)
    scheduler.quiesce(sched)
    sched.shutdown(wait=False)


def _runs(process: Worker, job: str) -> list[str]:
    with process.engine.connect() as connection:
        return list(
            connection.execute(
                sa.text("SELECT status FROM runs WHERE job = :job"), {"job": job}
            ).scalars()
        )


def test_once_runs_ten_missed_runs_once(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", "k")
    monkeypatch.setenv("RECOCAMP_ESP_TOKEN", "t")
    process = _shop_worker(tmp_path, db_url, train_cron="* * * * *")
    _set_next_run(process, "train", datetime.now(UTC) - timedelta(minutes=10))
    outcomes = process.run_due_once()
    assert outcomes["train"] == "ok" and outcomes["deliver"] == "ok"
    assert _runs(process, "train") == ["ok"]  # coalesced: one run for ten missed minutes
    with process.engine.connect() as connection:
        stamp = connection.execute(
            sa.text("SELECT next_run_time FROM apscheduler_jobs WHERE id = 'train'")
        ).scalar_one()
    assert stamp > datetime.now(UTC).timestamp() - 1  # the next run is the coming minute
    process.engine.dispose()


def test_once_skips_a_run_missed_by_more_than_the_grace_time(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", "k")
    monkeypatch.setenv("RECOCAMP_ESP_TOKEN", "t")
    two_hours_ago = (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    local = two_hours_ago.astimezone(BERLIN)
    process = _shop_worker(
        tmp_path,
        db_url,
        misfire_grace_s=3600,
        kpi_snapshot_cron=f"{local.minute} {local.hour} * * *",
    )
    _set_next_run(process, "kpi_snapshot", two_hours_ago)
    outcomes = process.run_due_once()
    assert outcomes["kpi_snapshot"] == "missed"
    # not run, and not without a trace: runs list says which slot was missed and why
    with process.engine.connect() as connection:
        [row] = runs.recent(connection, "kpi_snapshot")
    assert row.status == "skipped"
    assert f"due {two_hours_ago:%Y-%m-%d %H:%M:%S} UTC" in row.error
    assert "misfire_grace_s = 3600" in row.error
    process.engine.dispose()


@pytest.mark.parametrize(
    ("cron", "days"),
    [
        ("0 9 * * 1", ["Mon", "Mon", "Mon"]),
        ("0 9 * * 1-5", ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon"]),
        ("0 9 * * 0", ["Sun", "Sun"]),
        ("0 9 * * 7", ["Sun", "Sun"]),
        ("0 9 * * 5-7", ["Sun", "Fri", "Sat", "Sun"]),
        ("0 9 * * */2", ["Sun", "Tue", "Thu", "Sat", "Sun"]),
        ("0 9 * * 0,3", ["Sun", "Wed", "Sun"]),
        ("0 9 * * MON-FRI", ["Mon", "Tue", "Wed", "Thu", "Fri", "Mon"]),
        # a range of names from Sunday, as cron writes it (APScheduler 3 counts Sunday last)
        ("0 9 * * SUN-THU", ["Sun", "Mon", "Tue", "Wed", "Thu", "Sun"]),
        ("0 9 * * sun-tue,fri", ["Sun", "Mon", "Tue", "Fri", "Sun"]),
    ],
)
def test_a_numeric_weekday_means_what_it_means_in_cron(
    tmp_path: Path, cron: str, days: list[str]
) -> None:
    """cron counts weekdays from Sunday (0 and 7); APScheduler 3's ``from_crontab`` counts
    them from Monday: ``0 9 * * 1`` (Monday) ran on Tuesday, ``1-5`` from Tuesday to
    Saturday, and ``7`` was refused."""
    specs = scheduler.job_table(load_settings(None), [campaign(tmp_path, cron)])
    start = datetime(2026, 1, 3, 12, tzinfo=UTC)  # a Saturday, after 09:00
    fired = fires(specs[-1].trigger, start, len(days))
    assert [t.astimezone(BERLIN).strftime("%a") for t in fired] == days
    assert all(t.astimezone(BERLIN).hour == 9 for t in fired)


def _ran(process: Worker, job: str) -> int:
    with process.engine.connect() as connection:
        found = connection.execute(
            sa.text("SELECT count(*) FROM runs WHERE job = :job AND status = 'ok'"), {"job": job}
        ).scalar_one()
    return int(found)


def test_a_job_store_that_refuses_a_write_stops_nothing_for_good(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler saves a due job's next run time after handing it to a thread; a store
    that refuses that write (disk full, read-only, locked past the busy timeout) raised out
    of APScheduler's loop and ended its thread: the worker ran on — heartbeat, leader — and
    never ran a job again, deliveries included, until restarted. The schedule goes on once
    the store takes writes again."""
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", "k")
    monkeypatch.setenv("RECOCAMP_ESP_TOKEN", "t")
    process = _shop_worker(tmp_path, f"sqlite:///{tmp_path / 'shop.db'}")
    process.start(loop=False)
    try:
        process.scheduler.pause()
        process.tick()  # the leader: its jobs are in the persistent store
        assert process.leader_since is not None
        due = datetime.now(UTC) - timedelta(seconds=1)
        process.scheduler.modify_job("kpi_snapshot", jobstore=scheduler.SHARED, next_run_time=due)
        with process.engine.begin() as connection:  # the store refuses every write of a job
            connection.execute(
                sa.text(
                    "CREATE TRIGGER refused BEFORE UPDATE ON apscheduler_jobs "
                    "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
                )
            )
        process.scheduler.resume()
        wait_for(lambda: _ran(process, "kpi_snapshot"))  # handed to a thread before the write
        with process.engine.begin() as connection:
            connection.execute(sa.text("DROP TRIGGER refused"))
        process.scheduler.modify_job("purge", jobstore=scheduler.SHARED, next_run_time=due)
        process.scheduler.wakeup()  # as `runs trigger purge` is noticed
        wait_for(lambda: _ran(process, "purge"), seconds=30)
    finally:
        process.shutdown()
        process.engine.dispose()


def test_a_job_stored_before_wall_time_crons_keeps_its_due_run_and_takes_the_new_rule(
    engine: sa.Engine, paused: BackgroundScheduler
) -> None:
    """A job stored by a version whose cron fired a repeated wall time twice: its next run
    time is kept (a slot due while the deploy restarted the worker still runs), and its
    trigger becomes the one that fires once per wall-clock slot."""
    plain = cron_trigger("30 2 * * *", timezone=BERLIN)
    paused.add_job(
        scheduler.DISPATCH,
        trigger=plain,
        args=["train"],
        id="train",
        jobstore=scheduler.SHARED,
        misfire_grace_time=60,
    )
    due = datetime.now(UTC) - timedelta(minutes=5)
    paused.modify_job("train", jobstore=scheduler.SHARED, next_run_time=due)
    spec = scheduler.JobSpec("train", scheduler.once_per_wall_time(plain), "leader", 60)
    dropped: list[str] = []
    scheduler.sync(
        paused,
        [spec],
        scheduler.SHARED,
        "leader",
        dropped=lambda job, _at: dropped.append(job),
        now=datetime.now(UTC),
    )
    job = paused.get_job("train", jobstore=scheduler.SHARED)
    assert job.next_run_time == due and dropped == []
    assert isinstance(job.trigger, scheduler.WallTimeCron)


def test_once_reports_a_job_that_fell_due_again_while_it_ran_by_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job of ``--once`` whose next slot came while it ran (``* * * * *`` across a minute,
    a long training across its next slot) was reported "skipped (still running)": the
    overlap of its own second firing came first and was taken as its outcome, though the
    run went on and ended ok."""
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES

    from recocamp.worker import jobs as worker_jobs

    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", "k")
    monkeypatch.setenv("RECOCAMP_ESP_TOKEN", "t")
    process = _shop_worker(tmp_path, f"sqlite:///{tmp_path / 'shop.db'}", train_cron="0 3 * * *")
    _set_next_run(process, "train", datetime.now(UTC) - timedelta(minutes=1))
    overlapped = threading.Event()
    process.scheduler.add_listener(lambda _event: overlapped.set(), EVENT_JOB_MAX_INSTANCES)

    def train(*_args: object) -> dict[str, object]:  # its next slot comes while it runs
        process.scheduler.modify_job(
            "train", jobstore=scheduler.SHARED, next_run_time=datetime.now(UTC)
        )
        assert overlapped.wait(10)
        return {}

    monkeypatch.setitem(worker_jobs.JOBS, "train", train)
    outcomes = process.run_due_once()
    assert outcomes["train"] == "ok", outcomes
    process.engine.dispose()
