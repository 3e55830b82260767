"""The worker's schedule in one table, and its APScheduler 3 wiring.

:func:`job_table` says what runs when; everything else here puts that table into an
APScheduler ``BackgroundScheduler``:

=================  =====================================  ==========  =======================
job                trigger                                runs on     misfire grace
=================  =====================================  ==========  =======================
campaign:<name>    the campaign's cron, in its time zone  the leader  ``misfire_grace_s``
train              ``[worker] train_cron`` (shop zone)    the leader  ``misfire_grace_s``
import             every ``import_every_s``               the leader  one interval
kpi_snapshot       ``[worker] kpi_snapshot_cron``         the leader  ``misfire_grace_s``
purge              ``[worker] purge_cron``                the leader  ``misfire_grace_s``
deliver            every ``deliver_every_s``              every one   one interval
=================  =====================================  ==========  =======================

A cron job fires once per local wall-clock slot (:class:`WallTimeCron`: 02:30 on the night
the clocks go back runs once, not at both of its instants).

Every job has ``coalesce=True`` (runs missed while the worker was down run once, not once
per missed slot), ``max_instances=1`` (a run that overlaps its own previous run is skipped
and logged) and an explicit misfire grace time (a run later than that is skipped; the worker
records a cron job's missed run in ``runs``, as skipped).

Leader jobs live in a persistent job store in the recocamp database (``apscheduler_jobs``),
so their next run times survive restarts: a run that fell due while no worker was up runs
when one comes back (within the grace time). That store is attached only while this worker
is the leader (see ``leadership``); ``deliver`` lives in a memory store on every worker.
Jobs are synchronised with the table without losing their next run time: a job whose
trigger did not change keeps it. A persistent job can only name an importable function
with picklable arguments, so every job is ``worker.dispatch(job_id)``, which finds the
running worker of this process and runs the job through it. (APScheduler stores a job's
state pickled: whoever may write to the database can make a worker run code. The database
is the trust boundary anyway — it holds the customers and the outbox — so restrict writes
to it accordingly.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from apscheduler.job import Job
from apscheduler.jobstores.memory import MemoryJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import STATE_RUNNING
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from recocamp.campaigns.files import Campaign
from recocamp.settings import Settings, cron_trigger
from recocamp.store.engine import Engine
from recocamp.store.jobstore import job_store
from recocamp.store.runs import CAMPAIGN_PREFIX

log = logging.getLogger(__name__)
DISPATCH = "recocamp.worker:dispatch"
SHARED, LOCAL = "shared", "local"
Scope = Literal["leader", "every_worker"]


@dataclass(frozen=True)
class JobSpec:
    """One row of the schedule."""

    id: str
    trigger: BaseTrigger
    scope: Scope
    misfire_grace_s: int

    @property
    def campaign(self) -> str | None:
        return (
            self.id.removeprefix(CAMPAIGN_PREFIX) if self.id.startswith(CAMPAIGN_PREFIX) else None
        )


def job_table(settings: Settings, campaigns: Iterable[Campaign]) -> list[JobSpec]:
    """The whole schedule: the fixed jobs, then one job per enabled campaign."""
    w, zone = settings.worker, settings.shop.time_zone
    grace = w.misfire_grace_s

    def cron(expression: str) -> CronTrigger:
        return once_per_wall_time(cron_trigger(expression, timezone=zone))

    table = [
        JobSpec(
            "import",
            IntervalTrigger(seconds=w.import_every_s),
            "leader",
            max(1, round(w.import_every_s)),
        ),
        JobSpec("train", cron(w.train_cron), "leader", grace),
        JobSpec("kpi_snapshot", cron(w.kpi_snapshot_cron), "leader", grace),
        JobSpec("purge", cron(w.purge_cron), "leader", grace),
        JobSpec(
            "deliver",
            IntervalTrigger(seconds=w.deliver_every_s),
            "every_worker",
            max(1, round(w.deliver_every_s)),
        ),
    ]
    table += [
        JobSpec(
            f"{CAMPAIGN_PREFIX}{c.name}", once_per_wall_time(c.schedule.trigger()), "leader", grace
        )
        for c in campaigns
        if c.enabled
    ]
    return table


class WallTimeCron(CronTrigger):  # type: ignore[misc]  # untyped library
    """A cron trigger that fires once per local wall-clock slot. APScheduler 3 fires a wall
    time that the clocks repeat (02:30 in Berlin on the night they go back) at both of its
    instants, CEST then CET: the night's training, snapshot and purge ran twice (a campaign
    run is idempotent per day, the rest is not). A fire time in the repeated hour's second
    pass is skipped when the schedule already passed its first one (``previous_fire_time``
    at or after it); a schedule that starts inside the second pass (nothing fired before)
    takes its slot. Module-level: the persistent job store pickles it."""

    def get_next_fire_time(self, previous_fire_time: Any, now: datetime) -> Any:
        fire = super().get_next_fire_time(previous_fire_time, now)
        while fire is not None and _repeat_passed(fire, previous_fire_time):
            after = fire.astimezone(UTC) + timedelta(microseconds=1)
            fire = super().get_next_fire_time(fire, max(after, now.astimezone(UTC)))
        return fire


def _repeat_passed(fire: datetime, previous: datetime | None) -> bool:
    """Whether ``fire`` is the second instant of a wall time the clocks repeat and the
    schedule fired at or after its first instant."""
    if previous is None or fire.fold != 1:
        return False
    first = fire.replace(fold=0)
    return first.utcoffset() != fire.utcoffset() and previous.astimezone(UTC) >= first.astimezone(
        UTC
    )


def once_per_wall_time(trigger: CronTrigger) -> WallTimeCron:
    """``trigger`` (a crontab's, :func:`recocamp.settings.cron_trigger`) as a
    :class:`WallTimeCron`: same fields, zone and bounds."""
    once: WallTimeCron = WallTimeCron.__new__(WallTimeCron)
    once.__setstate__(trigger.__getstate__())
    return once


class _Scheduler(BackgroundScheduler):  # type: ignore[misc]  # untyped library
    """APScheduler 3's background scheduler, whose loop outlives a job store that fails.

    After handing a due job to a thread, APScheduler saves the job's next run time
    (``update_job``) outside any ``try``: a store that refused that write (SQLite locked past
    its busy timeout by a long import, a full disk, a read-only file, a PostgreSQL connection
    gone) raised out of ``_process_jobs`` and ended the scheduler's thread. The worker ran on,
    heartbeat and leadership and all, and never ran a job again (delivery included) until it
    was restarted. Here the round is logged and tried again after the store's retry interval,
    as APScheduler does itself when reading due jobs fails. The job whose next run time was
    not saved is still due then: it runs again (a campaign run decides for the same instant,
    same run key and send keys: nothing is sent twice) or is skipped while it still runs."""

    def _process_jobs(self) -> float | None:
        try:
            wait: float | None = super()._process_jobs()
        except Exception:
            log.exception(
                "scheduler: the job store failed; trying again in %g s",
                self.jobstore_retry_interval,
            )
            return float(self.jobstore_retry_interval)
        return wait


def make_scheduler() -> BackgroundScheduler:
    """A scheduler in UTC with a small thread pool and the memory store for local jobs."""
    return _Scheduler(
        timezone="UTC",
        jobstores={LOCAL: MemoryJobStore()},
        executors={"default": {"type": "threadpool", "max_workers": 8}},
        job_defaults={"coalesce": True, "max_instances": 1},
    )


def attach_shared(scheduler: BackgroundScheduler, engine: Engine) -> None:
    """The persistent store of leader jobs (becoming the leader). It gets an engine of its
    own: the store disposes of its engine when it is detached."""
    store, own = job_store(engine)
    try:
        scheduler.add_jobstore(store, SHARED)
    except ValueError:  # attached already
        own.dispose()


@contextmanager
def held(scheduler: BackgroundScheduler) -> Iterator[None]:
    """A running scheduler paused for the block (one paused already stays so). Attaching
    the persistent store wakes the scheduler's thread, which ran a job the store had due
    before :func:`sync` saw it: a run for a slot of the old schedule, decided by the new
    one (a campaign whose cron moved to Thursdays ran on a Sunday), or not, by luck."""
    pause = scheduler.state == STATE_RUNNING
    if pause:
        scheduler.pause()
    try:
        yield
    finally:
        if pause:
            scheduler.resume()


def detach_shared(scheduler: BackgroundScheduler) -> None:
    """Stop scheduling leader jobs (stepping down); their rows stay for the next leader."""
    with suppress(KeyError):  # not attached
        scheduler.remove_jobstore(SHARED, shutdown=True)


def quiesce(scheduler: BackgroundScheduler) -> None:
    """Make sure no job starts any more, before ``shutdown``. APScheduler 3 looks for due
    jobs once more *after* ``shutdown`` and advances a due job's next run time although it
    can no longer run it: that would silently skip a campaign due at that moment, so the
    persistent store goes first (its jobs stay due for the next leader)."""
    if scheduler.running:
        scheduler.pause()
    detach_shared(scheduler)
    with suppress(KeyError):
        scheduler.remove_all_jobs(jobstore=LOCAL)


def _signature(trigger: BaseTrigger) -> tuple[str, str, str]:
    return type(trigger).__name__, str(trigger), str(getattr(trigger, "timezone", ""))


def sync(
    scheduler: BackgroundScheduler,
    specs: Sequence[JobSpec],
    store: str,
    scope: Scope,
    dropped: Callable[[str, datetime], None] | None = None,
    now: datetime | None = None,
) -> dict[str, str]:
    """Make ``store`` hold exactly the ``scope`` jobs of ``specs``; returns what changed.

    A job whose trigger and grace time are unchanged is left alone, so it keeps the next run
    time it has (a missed run survives a restart). A changed trigger is rescheduled from now:
    a cron job's run still due then (at or before ``now``: no worker was up across its slot,
    the file was edited meanwhile) is not run, and is handed to ``dropped`` (job, slot) to
    be recorded; it went without a trace.
    """
    wanted = {s.id: s for s in specs if s.scope == scope}
    existing = {job.id: job for job in scheduler.get_jobs(jobstore=store)}
    changes: dict[str, str] = {}
    for job_id in existing.keys() - wanted.keys():
        scheduler.remove_job(job_id, jobstore=store)
        changes[job_id] = "removed"
    for job_id, spec in wanted.items():
        job = existing.get(job_id)
        if job is None:
            _add(scheduler, spec, store)
            changes[job_id] = "added"
        elif _same_but_twice(job, spec):  # stored before WallTimeCron: its due run stays
            scheduler.modify_job(job_id, jobstore=store, trigger=spec.trigger)
            changes[job_id] = "once per wall-clock slot"
        elif _signature(job.trigger) != _signature(spec.trigger) or (
            job.misfire_grace_time != spec.misfire_grace_s
        ):
            if dropped is not None and _due_slot(job, now):
                dropped(job_id, job.next_run_time)
            scheduler.remove_job(job_id, jobstore=store)
            _add(scheduler, spec, store)
            changes[job_id] = "rescheduled"
    if changes:
        log.info("schedule (%s): %s", store, ", ".join(f"{k} {v}" for k, v in changes.items()))
    return changes


def _same_but_twice(job: Job, spec: JobSpec) -> bool:
    """A job stored with APScheduler's plain cron trigger (which fired a repeated wall time
    twice) whose schedule is otherwise ``spec``'s: its trigger is replaced, its next run time
    kept (rescheduled from now, a slot due while a deploy restarted the worker was lost)."""
    return (
        type(job.trigger) is CronTrigger
        and isinstance(spec.trigger, WallTimeCron)
        and _signature(job.trigger)[1:] == _signature(spec.trigger)[1:]
        and job.misfire_grace_time == spec.misfire_grace_s
    )


def _due_slot(job: Job, now: datetime | None) -> bool:
    """Whether ``job`` has a cron slot due at ``now`` (a poll's is the next poll's)."""
    due = job.next_run_time
    return (
        now is not None
        and due is not None
        and due <= now
        and not isinstance(job.trigger, IntervalTrigger)
    )


def _add(scheduler: BackgroundScheduler, spec: JobSpec, store: str) -> None:
    scheduler.add_job(
        DISPATCH,
        trigger=spec.trigger,
        args=[spec.id],
        id=spec.id,
        name=spec.id,
        jobstore=store,
        misfire_grace_time=spec.misfire_grace_s,
        coalesce=True,
        max_instances=1,
        replace_existing=True,
    )
