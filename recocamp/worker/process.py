"""The worker: one long-running process that runs the schedule (``recocamp worker``).

On start it checks every campaign file like ``check``: broken ones are left out and
reported (log, a ``check`` run shown by ``runs workers``, a gauge) and everything else runs;
broken settings stop it. It registers itself (``workers`` table,
heartbeat every ``[worker] leader_poll_s`` on a thread of its own, so that nothing the loop
does — a reload checking slow templates — makes it look dead) and then, in one loop thread:

- **leadership**: tries to become the scheduling leader (``leadership``); the leader
  attaches the persistent job store and runs the leader jobs of the table in ``scheduler``;
  a follower only delivers. A leader that loses its lock steps down at once.
- **resume**: the leader resumes campaign runs that a dead or stopped worker left
  unfinished, with their original instant (same run key, same send keys: no duplicates,
  no gaps), if they are younger than ``[worker] resume_window_s``; and a campaign run whose
  first row the store refused (locked, disk full) is run again for its instant a while later.
- **reload**: when a file in ``campaigns/`` or ``templates/`` changes (or on SIGHUP), the
  campaigns are checked again, with the same rule as at start, file by file: every good
  file runs as it now is; a broken one is logged with every problem and keeps its last
  good version if this process ran one (else it stays out); a deleted one leaves. One
  template snapshot renders every campaign, so a template change that breaks a kept
  version refuses the whole reload (see :meth:`Worker.reload`).

Every job run is recorded in ``runs`` (started, finished, status, counts, error), logged
as one ``key=value`` line and counted in Prometheus metrics (``metrics``; served on
``[worker] metrics_port``). SIGTERM/SIGINT stop the worker: no new job starts, running
ones stop at their next chunk or batch boundary (campaign runs are marked
``interrupted`` and resumed later), and the process exits within
``[worker] shutdown_timeout_s``.
"""

from __future__ import annotations

import logging
import signal
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.triggers.interval import IntervalTrigger

from recocamp import metrics
from recocamp.campaigns import check as checks
from recocamp.campaigns.files import Campaign
from recocamp.campaigns.render import Renderer
from recocamp.campaigns.run import run_key
from recocamp.clock import Clock, FixedClock, SystemClock
from recocamp.errors import ConfigError, Interrupted
from recocamp.ratelimit import RateLimiter
from recocamp.settings import Settings
from recocamp.store import outbox, registry, runs
from recocamp.store.engine import Engine, SQLAlchemyError
from recocamp.store.runs import CAMPAIGN_PREFIX, CHECK_JOB
from recocamp.worker import jobs, leadership, scheduler

log = logging.getLogger(__name__)
RECORD_S = 2.0  # of shutdown_timeout_s (at most half), kept to record how the worker ended
RETRY_FAILED_S = 300.0  # a campaign run that failed (a database hiccup) is tried again then
ORPHANED = "its worker stopped or died before it ended"
UNRECORDED_END = "its end could not be recorded (the database was away): run again for its instant"
_current: Worker | None = None  # the worker of this process, for dispatch()


def dispatch(job_id: str) -> str | None:
    """Every scheduled job's entry point (see ``scheduler``): run it through this process's
    worker; returns its run's status (``--once`` prints it)."""
    worker = _current
    if worker is None:  # pragma: no cover - a job fired after the worker went away
        log.warning("job %s fired without a running worker: ignored", job_id)
        return None
    return worker.run(job_id)


class Worker:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        campaigns_dir: Path,
        templates_dir: Path,
        clock: Clock | None = None,
    ) -> None:
        self.settings, self.engine = settings, engine
        self.campaigns_dir, self.templates_dir = campaigns_dir, templates_dir
        self.clock = clock or SystemClock()
        self.id = outbox.worker_id()
        self.stop = threading.Event()
        self.reload_requested = threading.Event()
        self.leadership = leadership.for_engine(engine)
        self.scheduler = scheduler.make_scheduler()
        self.campaigns: dict[str, Campaign] = {}
        self.specs: dict[str, scheduler.JobSpec] = {}
        self.leader_since: datetime | None = None
        self.broken: list[ConfigError] = []  # campaign files that failed the last check
        self._files: tuple[Any, ...] = ()
        self._resuming: set[int] = set()
        self._waiting: set[int | None] = set()  # resumes recorded skipped, tried each poll
        # (campaign job, instant) → (when, resumed run) of runs the store refused to record
        self._unrecorded: dict[tuple[str, datetime], tuple[datetime, int | None]] = {}
        self.signals: list[str] = []  # received, not yet acted on (see install_signals)
        self.stopped_by: str | None = None  # the signal that stopped it (SIGTERM, SIGINT)
        self.lost: str | None = None  # why it stopped by itself (see Leadership.gone)
        # job → its run's id (None: a quiet job's, not recorded yet) and start while it runs
        self._running: dict[str, tuple[int | None, datetime]] = {}  # (see abandon)
        self.last: dict[str, tuple[dict[str, Any], str | None]] = {}  # job → counts, error
        self._loop_thread: threading.Thread | None = None
        self._heartbeat_thread: threading.Thread | None = None
        self._reload_checked = 0.0
        self.live_model_shown: tuple[str | None] | None = None  # in recocamp_live_model
        # the running worker's and --once's: a run missed past its grace leaves a trace
        self.scheduler.add_listener(self._not_run, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        limiter = RateLimiter(settings.esp.rate_limit_per_s, self.stop.wait)
        self.context = jobs.JobContext(
            settings,
            engine,
            templates_dir,
            self.clock,
            self.stop,
            Renderer(templates_dir, limits=settings.templates),
            limiter,
        )

    # -- campaigns and the schedule -------------------------------------------------------

    def load(self) -> list[ConfigError]:
        """Check every campaign and template and take the campaigns that pass; returns the
        broken files, each with every problem (as ``check`` reports them). A broken campaign
        never stops the others, the deliverer, imports or purges: it is left out, logged,
        counted in ``recocamp_campaign_files_broken`` and recorded as a ``check`` run once
        the worker registers (``runs list``, ``runs workers``), and the rest runs. (Broken
        settings stop the worker before this: nothing could run.) The same rule as
        :meth:`reload`, with no last good version yet."""
        good, failures, renderer = self._check()
        kept = self._last_good(failures)
        self._log_files(failures, kept)
        self._use([*good, *kept.values()], renderer)
        self.broken = failures
        metrics.CAMPAIGN_FILES_BROKEN.set(len(failures))
        return failures

    def _last_good(self, failures: list[ConfigError]) -> dict[str, Campaign]:
        """The last good version this process runs of each broken campaign file that is still
        there (a file deleted since is removed); a file never good here has none."""
        return {
            f.path.stem: self.campaigns[f.path.stem]
            for f in failures
            if f.path.stem in self.campaigns and f.path.exists()
        }

    def _log_files(self, failures: list[ConfigError], kept: Mapping[str, Campaign]) -> None:
        for failure in failures:
            log.error("campaign file %s: %s", _fate(failure, kept), failure)

    def _record_files(self, failures: list[ConfigError]) -> None:
        """Say which campaign files are broken (or that none is any more, after some were):
        a ``check`` run of this worker with every problem, each saying whether the file's
        last good version keeps running or the file is left out, which ``runs workers``
        shows. Written once the worker has registered (a worker refused writes nothing),
        and not at every start of a worker whose files are all good."""
        previous, self.broken = self.broken, failures
        metrics.CAMPAIGN_FILES_BROKEN.set(len(failures))
        if not failures and not previous:
            return
        now = self.clock.now()
        counts = {
            "campaigns": len(self.campaigns),
            "broken_files": len(failures),
            "kept_last_good": sum(f.path.stem in self.campaigns for f in failures),
        }
        error = "\n".join(f"{_fate(f, self.campaigns)}: {f}" for f in failures) or None
        with self.engine.begin() as connection:
            run_id = runs.start(connection, CHECK_JOB, self.id, now)
            runs.finish(connection, run_id, "error" if failures else "ok", now, counts, error)

    def _check(self) -> tuple[list[Campaign], list[ConfigError], Renderer]:
        """The campaigns and templates as they are now: the good ones, every problem, and
        the templates frozen before the check, which checks them as frozen (it read the
        files a moment later: a template saved in between was rendered unchecked)."""
        self._files = self._fingerprint()
        renderer = Renderer.frozen(self.templates_dir, self.settings.templates)
        good, failures = checks.campaign_problems(
            self.settings, self.campaigns_dir, self.templates_dir, renderer.sources
        )
        return good, failures, renderer

    def _use(self, good: list[Campaign], renderer: Renderer) -> None:
        """The campaigns and templates that passed ``check``: what runs and renders now."""
        self.campaigns = {c.name: c for c in good}
        table = scheduler.job_table(self.settings, good)
        self.specs = {spec.id: spec for spec in table}
        self.context.renderer = renderer

    def reload(self) -> bool:
        """Take the campaigns and templates as they are now, file by file: every good file
        as it is, the last good version of a broken one (if this process ran one; else it
        stays out), a deleted file leaves. One template snapshot renders every campaign
        (``Renderer.frozen``, also for queued mail), so a kept version must pass ``check``
        with the new templates too; when one does not (a template it uses broke), the whole
        reload is refused and the last good campaigns and templates keep running. Returns
        whether the reload was taken."""
        if not self.campaigns_dir.is_dir():
            return self._folder_gone()
        good, failures, renderer = self._check()
        kept = self._last_good(failures)
        stale = [
            name
            for name, campaign in kept.items()
            if checks.template_problems(
                campaign, self.templates_dir, self.settings.templates, sources=renderer.sources
            )
        ]
        if stale:
            log.error(
                "reload refused: the templates as they are now break running campaign(s) %s",
                ", ".join(sorted(stale)),
            )
            for failure in failures:
                log.error("reload refused, keeping the last good campaigns: %s", failure)
            self._record_files(failures)
            return False
        self._log_files(failures, kept)
        self._use([*good, *kept.values()], renderer)
        self._record_files(failures)
        if self.leader_since is not None:
            self._sync_leader_jobs()
        log.info(
            "reloaded %d campaign(s): %s", len(self.campaigns), ", ".join(sorted(self.campaigns))
        )
        return True

    def _folder_gone(self) -> bool:
        """The campaigns folder is not there (a deploy swapping it, a volume not mounted for
        a moment): read as every file deleted, every campaign left the schedule and lost its
        next run time, so a run due meanwhile never came. Not a change to take: the running
        campaigns keep running; the folder's return is the next change."""
        self._files = self._fingerprint()
        log.error(
            "reload refused: %s is not a folder (any more); the %d campaign(s) running keep "
            "running (delete the campaign files to stop them)",
            self.campaigns_dir,
            len(self.campaigns),
        )
        return False

    def _fingerprint(self) -> tuple[Any, ...]:
        """What tells the campaign files and templates of now from those last checked: each
        file's name, modification and size. The templates' whole tree, as the renderer's
        snapshot takes it (a partial in a subfolder was not looked at: an edit to it was
        never checked nor taken); the campaign files at the top of their folder, as they are
        loaded. A file gone between listing and looking (an editor's swap file) is left out."""
        found = []
        for directory, pattern in ((self.campaigns_dir, "*"), (self.templates_dir, "**/*")):
            if not directory.is_dir():
                continue
            for path in sorted(directory.glob(pattern)):
                try:
                    seen = path.stat()
                except OSError:
                    continue
                if stat.S_ISREG(seen.st_mode):
                    found.append((str(path), seen.st_mtime_ns, seen.st_size))
        return tuple(found)

    # -- running jobs -----------------------------------------------------------------------

    def run(
        self, job_id: str, *, as_of: datetime | None = None, resumed_from: int | None = None
    ) -> str:
        """Run one job now, record it, and return its status."""
        spec = self.specs.get(job_id)
        if spec is None:
            log.warning("job %s is not in the schedule (any more): not run", job_id)
            return "skipped"
        if self.stop.is_set():
            if spec.campaign is not None and resumed_from is None:
                self._left_to_the_next_worker(spec.campaign, as_of or self._scheduled(spec))
            return "skipped"
        with self._exclusive(spec) as held:
            if not held:
                if resumed_from is not None:  # not resumed: the next round tries it again
                    return self._resume_waits(job_id, resumed_from)
                return self._skip(job_id, "already running")
            self._waiting.discard(resumed_from)
            return self._run(spec, as_of or self._scheduled(spec), resumed_from)

    def _resume_waits(self, job_id: str, resumed_from: int) -> str:
        """A resume whose campaign is running (its next scheduled run, here or on another
        worker): tried again at each poll until that run ends. Recorded ``skipped`` at the
        first try only; each try wrote a row and a log line, every 2 s for as long as the
        other run went on."""
        self._resuming.discard(resumed_from)
        if resumed_from in self._waiting:
            return "skipped"
        self._waiting.add(resumed_from)
        return self._skip(job_id, f"already running: run {resumed_from} is resumed after it")

    def _left_to_the_next_worker(self, name: str, as_of: datetime) -> None:
        """A campaign run that starts while the worker stops (SIGTERM just after the
        scheduler handed it to a thread, or while it waited for a free one): the scheduler
        has saved its next run time already, so returning without a trace lost that day's
        run. It is recorded ``interrupted`` for its instant, and the next scheduling worker
        resumes it (``unfinished_campaign_runs``). A resumed run needs no row: the one it
        resumes is still unresumed."""
        campaign = self.campaigns.get(name)
        if campaign is None:
            return
        now, key = self.clock.now(), run_key(name, as_of, campaign.schedule.zone)
        with self.engine.begin() as connection:
            run_id = runs.start(
                connection, f"{CAMPAIGN_PREFIX}{name}", self.id, now, as_of=as_of, run_key=key
            )
            why = "the worker was stopping when it fell due: resumed by the next worker"
            runs.finish(connection, run_id, "interrupted", now, {}, why)
        log.info("campaign run %s left to the next worker: this one is stopping", key)

    def _scheduled(self, spec: scheduler.JobSpec) -> datetime:
        """The instant a campaign run decides for: its trigger's latest fire time (within
        the grace time), not the moment it got a thread. A 23:30 run that starts after
        midnight still belongs to its day (run key), so the next day's run is not lost."""
        now = self.clock.now()
        if spec.campaign is None:
            return now
        earliest = now - timedelta(seconds=spec.misfire_grace_s)
        fired, at = None, spec.trigger.get_next_fire_time(None, earliest)
        while at is not None and at <= now:
            fired = at
            at = spec.trigger.get_next_fire_time(at, at.astimezone(UTC) + timedelta(seconds=1))
        return fired.astimezone(UTC) if fired is not None else now

    @contextmanager
    def _exclusive(self, spec: scheduler.JobSpec) -> Iterator[bool]:
        if spec.scope != "leader":
            yield True
            return
        with self.leadership.job_lock(spec.id) as held:
            yield held

    def _skip(self, job_id: str, why: str) -> str:
        with self.engine.begin() as connection:
            runs.skipped(connection, job_id, self.id, self.clock.now(), why)
        metrics.JOB_RUNS.labels(job_id, "skipped").inc()
        log.info("job=%s status=skipped reason=%r", job_id, why)
        return "skipped"

    def _run(self, spec: scheduler.JobSpec, as_of: datetime, resumed_from: int | None) -> str:
        campaign = self.campaigns.get(spec.campaign) if spec.campaign else None
        key = self._run_key(campaign, as_of, resumed_from) if campaign else None
        quiet = spec.scope == "every_worker" or spec.id == "import"  # an idle poll: no history
        begun = self.clock.now()
        try:
            run_id = None if quiet else self._started(spec.id, begun, as_of, key, resumed_from)
        except SQLAlchemyError:
            if campaign is not None:
                self._unrecorded_run(spec.id, as_of, resumed_from)
            raise
        self._running[spec.id] = (run_id, begun)
        started = time.perf_counter()
        status, error = "ok", None
        counts: dict[str, Any] = {}
        try:
            counts = self._call(spec, campaign, as_of, key)
        except Interrupted as exc:
            status, error = "interrupted", str(exc)
        except Exception as exc:  # one failing job never takes the worker down
            status, error = "error", f"{type(exc).__name__}: {exc}"
            log.exception("job %s failed", spec.id)
        finally:
            self._running.pop(spec.id, None)
        seconds = time.perf_counter() - started
        if quiet and status == "ok" and not any(counts.values()):
            return status
        if run_id is None:
            run_id = self._started(spec.id, begun, as_of, key, resumed_from)
        try:
            with self.engine.begin() as connection:
                runs.finish(connection, run_id, status, self.clock.now(), counts, error, seconds)
        except SQLAlchemyError:
            if campaign is not None:  # see _unrecorded_run
                self._unrecorded_run(spec.id, as_of, run_id)
            raise
        self._observe(spec.id, status, seconds, counts, run_id)
        self.last[spec.id] = (counts, error)
        return status

    def _run_key(self, campaign: Campaign, as_of: datetime, resumed_from: int | None) -> str:
        """The run's key: a resumed run's own, the day it was first decided for. Computed
        again from the schedule's zone, a zone changed in the campaign file meanwhile made
        it another day's run, decided and recorded as that day's."""
        if resumed_from is not None:
            with self.engine.connect() as connection:
                key = runs.run_key_of(connection, resumed_from)
            if key is not None:
                return key
        return run_key(campaign.name, as_of, campaign.schedule.zone)

    def _unrecorded_run(self, job: str, as_of: datetime, resumed_from: int | None) -> None:
        """A campaign run whose first row the store refused (locked past its busy timeout by
        a long import elsewhere, a full disk): the scheduler has moved its next run time on
        and there is no row to resume, so the day's run was lost without a trace. It is tried
        again for the same instant ``RETRY_FAILED_S`` later (:meth:`resume_unfinished`), as a
        run that failed is.

        So is one whose end the store refused (``resumed_from``: its row): the database went
        away mid-run (a restart, a failover) and was still away when the run's failure was
        to be recorded. Its row stayed ``running`` on a live worker, which no leader resumes
        (``unfinished_campaign_runs``), so the customers after the last chunk written got
        nothing until this worker stopped. The run again marks that row ``interrupted``."""
        log.error(
            "campaign run %s for %s could not be recorded: tried again in %g s",
            job,
            as_of.isoformat(),
            RETRY_FAILED_S,
        )
        self._unrecorded[(job, as_of)] = (self.clock.now(), resumed_from)

    def _started(
        self, job: str, begun: datetime, as_of: datetime, key: str | None, resumed_from: int | None
    ) -> int:
        is_campaign = job.startswith(CAMPAIGN_PREFIX)
        with self.engine.begin() as connection:
            if resumed_from is not None:  # still ``running`` if its end was not recorded
                runs.mark_interrupted(connection, resumed_from, begun, UNRECORDED_END)
            return runs.start(
                connection,
                job,
                self.id,
                begun,
                as_of=as_of if is_campaign else None,
                run_key=key,
                resumed_from=resumed_from,
            )

    def _call(
        self, spec: scheduler.JobSpec, campaign: Campaign | None, as_of: datetime, key: str | None
    ) -> dict[str, Any]:
        if spec.campaign is not None:
            if campaign is None:
                raise ConfigError(
                    self.campaigns_dir / f"{spec.campaign}.toml",
                    [jobs.missing_campaign(spec.campaign)],
                )
            return jobs.run_campaign(self.context, campaign, as_of, key)
        job: Callable[[jobs.JobContext, datetime], dict[str, Any]] = jobs.JOBS[spec.id]
        return job(self.context, as_of)

    def _observe(
        self, job: str, status: str, seconds: float, counts: dict[str, Any], run_id: int
    ) -> None:
        metrics.JOB_RUNS.labels(job, status).inc()
        metrics.JOB_SECONDS.labels(job).observe(seconds)
        shown = " ".join(f"{k}={v}" for k, v in counts.items() if not isinstance(v, dict))
        log.info("job=%s run=%d status=%s seconds=%.2f %s", job, run_id, status, seconds, shown)

    # -- leadership, resume, reload: the loop -----------------------------------------------

    def tick(self) -> None:
        """One round of the loop: leadership, resume, reload (and the heartbeat and rate
        share where no heartbeat thread runs: tests driving the loop themselves)."""
        if (lost := self.leadership.gone()) is not None:
            log.error("%s", lost)
            self.lost = self.stopped_by = lost
            self.stop.set()
            return
        self._lead()
        if self._heartbeat_thread is None:  # tests driving the loop themselves
            self._heartbeat_and_share_rate()
        if self.leader_since is not None:
            self.scheduler.wakeup()  # notice jobs triggered from outside (`runs trigger`)
            self.resume_unfinished()
            self.end_orphaned_runs()
        if self.reload_requested.is_set() or self._files_changed():
            self.reload_requested.clear()
            try:
                self.reload()
            except Exception:
                # the files were taken as checked, the schedule not (the store refused it:
                # locked past its busy timeout, a full disk); nothing would look at them
                # again until the next edit, the schedule stale meanwhile: next round
                self.reload_requested.set()
                raise

    def _files_changed(self) -> bool:
        if time.monotonic() - self._reload_checked < self.settings.worker.reload_check_s:
            return False
        self._reload_checked = time.monotonic()
        return self._fingerprint() != self._files

    def _heartbeat_and_share_rate(self) -> None:
        """This worker's heartbeat, and its share of ``[esp] rate_limit_per_s`` (the
        provider's limit for all workers together), in one transaction; with it the live
        model for ``recocamp_live_model``, which a training of this worker is not the only
        one to switch (another worker's, ``models promote``, ``rollback``)."""
        now = self.clock.now()
        alive_after = now - timedelta(seconds=5 * self.settings.worker.leader_poll_s)
        with self.engine.begin() as connection:
            runs.heartbeat(connection, self.id, now, self.leader_since)
            alive = runs.live_worker_count(connection, alive_after)
            live = registry.live_version(connection)
        self.context.limiter.share(self.settings.esp.rate_limit_per_s, alive)
        if self.live_model_shown != (live,):
            metrics.show_live_model(live)
            self.live_model_shown = (live,)

    def _lead(self) -> None:
        if self.leader_since is not None:
            if not self.leadership.held():
                self._step_down()
            return
        if self.leadership.try_acquire():
            self._become_leader()

    def _become_leader(self) -> None:
        """Attach the schedule, then say so; a failure on the way gives the lock back, so
        another worker can lead instead of one that holds the lock and schedules nothing."""
        try:
            with scheduler.held(self.scheduler):  # its thread runs nothing stored meanwhile
                scheduler.attach_shared(self.scheduler, self.engine)
                self._sync_leader_jobs()
        except Exception:
            scheduler.detach_shared(self.scheduler)
            self.leadership.resign()
            raise
        self.leader_since = self.clock.now()
        metrics.LEADER.set(1)
        log.info("worker %s is the scheduling leader", self.id)

    def _sync_leader_jobs(self) -> None:
        """The persistent schedule as :attr:`specs` says; a run still due for a slot of a
        job whose schedule changed is recorded skipped (:meth:`_record_dropped`)."""
        scheduler.sync(
            self.scheduler,
            list(self.specs.values()),
            scheduler.SHARED,
            "leader",
            dropped=self._record_dropped,
            now=self.clock.now(),
        )

    def _record_dropped(self, job_id: str, due: datetime) -> None:
        """A run still due when its job's cron or grace time changed (no worker up across
        its slot, the file or the settings edited meanwhile): the job is rescheduled from
        now by its new rule and that slot is not run; recorded, as a missed run is."""
        self._record_not_run(
            job_id,
            f"not run: due {due.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, its schedule changed "
            "(cron or misfire grace time) before it ran; the new schedule runs from now",
        )

    def _step_down(self) -> None:
        scheduler.detach_shared(self.scheduler)
        self.leader_since = None
        metrics.LEADER.set(0)
        log.warning("worker %s stepped down: it no longer holds the scheduler lock", self.id)

    def resume_unfinished(self) -> int:
        """Start resuming campaign runs left unfinished — by a dead or stopped worker, or
        failed more than ``RETRY_FAILED_S`` ago — in the scheduler's threads (this loop
        must keep its heartbeat); returns how many were started."""
        now, w = self.clock.now(), self.settings.worker
        with self.engine.connect() as connection:
            found = runs.unfinished_campaign_runs(
                connection,
                now - timedelta(seconds=w.resume_window_s),
                dead_before=now - timedelta(seconds=5 * w.leader_poll_s),
                failed_before=now - timedelta(seconds=RETRY_FAILED_S),
            )
        # this worker's own runs still going are alive, whatever its heartbeat says: stale
        # for a moment after the machine slept, or while the database held it off
        mine = {run_id for run_id, _ in list(self._running.values()) if run_id is not None}
        found = [row for row in found if row.id not in self._resuming and row.id not in mine]
        for row in found:
            self._resuming.add(row.id)
            with self.engine.begin() as connection:
                runs.mark_interrupted(connection, row.id, now, "its worker stopped or died")
            log.info(
                "resuming campaign run %s (run %d, decided for %s)",
                row.run_key,
                row.id,
                row.as_of.isoformat(),
            )
            self._run_soon(row.job, f"resume:{row.id}", row.as_of, row.id)
        return len(found) + self._retry_unrecorded(now)

    def end_orphaned_runs(self) -> int:
        """Record ``interrupted`` the runs a dead worker left ``running`` that no resume
        takes (a training, an import, a snapshot, a campaign run past ``resume_window_s``):
        killed under them (SIGKILL, the OOM killer in a training, its host gone), they
        showed ``running`` in ``runs list`` for ever. Read first: most rounds find none, and
        the loop writes nothing then. Returns how many were ended."""
        now = self.clock.now()
        dead_before = now - timedelta(seconds=5 * self.settings.worker.leader_poll_s)
        with self.engine.connect() as connection:
            found = runs.orphaned_runs(connection, dead_before=dead_before, worker=self.id)
        if not found:
            return 0
        with self.engine.begin() as connection:
            for run_id in found:
                runs.mark_interrupted(connection, run_id, now, ORPHANED)
        log.warning("%d run(s) of stopped or dead workers recorded interrupted", len(found))
        return len(found)

    def _retry_unrecorded(self, now: datetime) -> int:
        """Start again the campaign runs whose start the store refused ``RETRY_FAILED_S``
        ago or more (:meth:`_unrecorded_run`), within ``[worker] resume_window_s``."""
        window = timedelta(seconds=self.settings.worker.resume_window_s)
        started = 0
        for (job, as_of), (failed_at, resumed_from) in list(self._unrecorded.items()):
            if (now - failed_at).total_seconds() < RETRY_FAILED_S:
                continue
            del self._unrecorded[(job, as_of)]
            if as_of < now - window:
                log.error("campaign run %s for %s not tried again: too old", job, as_of)
                continue
            self._run_soon(job, f"retry:{job}:{as_of.isoformat()}", as_of, resumed_from)
            started += 1
        return started

    def _run_soon(self, job: str, name: str, as_of: datetime, resumed_from: int | None) -> None:
        """Run a campaign job for ``as_of`` in the scheduler's threads as soon as it takes
        it up, however late: with APScheduler's default misfire grace (one second) a run
        taken up later — its loop busy saving a next run time while the store was locked —
        was dropped as missed, and as it was remembered as resumed, never tried again."""
        self.scheduler.add_job(
            self.run,
            args=[job],
            id=name,
            kwargs={"as_of": as_of, "resumed_from": resumed_from},
            jobstore=scheduler.LOCAL,
            misfire_grace_time=None,
            replace_existing=True,
        )

    def _beat(self, until: threading.Event) -> None:
        """The heartbeat on a thread of its own, until ``until`` is set (the worker's
        ``stop``; ``--once``'s end): a reload checking slow templates (each render may take
        its whole ``[templates] render_time_s``) held the loop for tens of seconds, the
        heartbeat with it, so other workers counted this one dead: the leader resumed the
        campaign run it was still sending, and the others took its share of the provider's
        rate on top of what it still sent."""
        while not until.is_set():
            try:
                self._heartbeat_and_share_rate()
            except Exception:  # the database may be away for a moment: try again
                log.exception("worker heartbeat")
            until.wait(self.settings.worker.leader_poll_s)

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.tick()
            except Exception:  # the database may be away for a moment: try again
                log.exception("worker loop")
            self.stop.wait(self.settings.worker.leader_poll_s)

    # -- life cycle ----------------------------------------------------------------------------

    def start(self, *, loop: bool = True) -> None:
        """Register, start the scheduler (delivery on every worker) and the loop thread
        (tests drive :meth:`tick` themselves with ``loop=False``)."""
        global _current
        self.leadership.register()
        self._record_files(self.broken)
        _current = self
        self.scheduler.start()
        scheduler.sync(self.scheduler, list(self.specs.values()), scheduler.LOCAL, "every_worker")
        if loop:
            self._heartbeat_thread = threading.Thread(
                target=self._beat, args=(self.stop,), name="worker-heartbeat", daemon=True
            )
            self._heartbeat_thread.start()
            self._loop_thread = threading.Thread(target=self._loop, name="worker-loop", daemon=True)
            self._loop_thread.start()

    def _not_run(self, event: JobEvent) -> None:
        """A run skipped because the previous one still runs, or missed beyond its grace."""
        outcome = "overlap" if event.code == EVENT_JOB_MAX_INSTANCES else "missed"
        metrics.JOB_RUNS.labels(event.job_id, outcome).inc()
        spec = self.specs.get(event.job_id)
        if (
            outcome == "missed"
            and spec is not None
            and not isinstance(spec.trigger, IntervalTrigger)
        ):
            self._record_missed(spec, event.scheduled_run_time)
            return
        level = logging.DEBUG if event.job_id == "deliver" else logging.INFO
        log.log(level, "job=%s status=%s", event.job_id, outcome)

    def _record_missed(self, spec: scheduler.JobSpec, due: datetime) -> None:
        """A scheduled run (a campaign's day, the night's training, snapshot or purge) taken
        up later than its misfire grace time — no worker up then, or no free thread — is not
        run, by the README's rule; it was only logged at INFO and counted, so the day's
        campaign was gone with no trace in ``runs list``. Recorded ``skipped`` with the slot
        and the rule; a poll (delivery, imports) missed is the next poll's, not recorded."""
        now = self.clock.now()
        late = (now - due).total_seconds()
        grace = spec.misfire_grace_s
        why = (
            f"missed: due {due.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, taken up {late:,.0f} s "
            f"late, past the misfire grace time ([worker] misfire_grace_s = {grace} s)"
        )
        self._record_not_run(spec.id, why)

    def _record_not_run(self, job_id: str, why: str) -> None:
        """A scheduled run that will not run, logged and recorded ``skipped`` with ``why``."""
        log.warning("job=%s status=missed reason=%r", job_id, why)
        try:
            with self.engine.begin() as connection:
                runs.skipped(connection, job_id, self.id, self.clock.now(), why)
        except SQLAlchemyError:  # the database may be away: the log line stays
            log.exception("the missed run of %s could not be recorded", job_id)

    def install_signals(
        self, which: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    ) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads. The handlers only set a plain attribute: a
        handler runs on the main thread between two bytecodes, possibly inside a lock that
        ``Event.set`` would need again (a deadlock); :meth:`wait` turns it into ``stop``.
        ``which``: SIGHUP alone before the start-up's check of the campaign files (a reload
        asked meanwhile is taken once the worker runs; by default it ended the process)."""

        def note(signum: int, _frame: FrameType | None) -> None:
            self.signals.append(signal.Signals(signum).name)  # list.append takes no lock

        for each in which:
            signal.signal(each, note)

    def wait(self) -> None:
        """Block the main thread until SIGTERM/SIGINT (SIGHUP asks for a reload)."""
        while not self.stop.is_set():
            while self.signals:
                signalled = self.signals.pop(0)
                if signalled == "SIGHUP":
                    self.reload_requested.set()
                else:
                    log.info("%s: stopping after the current batch", signalled)
                    self.stopped_by = signalled
                    self.stop.set()
            time.sleep(0.2)

    def abandon_within(self, why: str, seconds: float) -> None:
        """:meth:`abandon` waited for at most ``seconds``: the exit that follows must come
        even when the store is what hangs (SQLite's write lock held elsewhere, a PostgreSQL
        connection gone quiet)."""
        _within(seconds, lambda: self.abandon(why), "the runs still going as interrupted")

    def abandon(self, why: str) -> None:
        """The process exits now with runs still going (a training past the shutdown
        timeout): they are recorded ``interrupted`` with ``why``, not left ``running`` for
        ever, and the worker stopped. A campaign run so marked is resumed by the next
        scheduling worker (``unfinished_campaign_runs``), as one whose worker vanished. A
        quiet job's run (an import: recorded when it ends, an idle poll leaves no history)
        is recorded here, else it left no trace at all."""
        now = self.clock.now()
        with self.engine.begin() as connection:
            for job, (run_id, begun) in list(self._running.items()):
                if run_id is None:
                    run_id = runs.start(connection, job, self.id, begun)
                runs.mark_interrupted(connection, run_id, now, why)
            runs.stopped(connection, self.id, now)

    def shutdown(self) -> bool:
        """Stop: no new runs, wait for running ones; True when everything finished in time.
        Else the runs still going are recorded ``interrupted`` and the worker stopped
        (:meth:`abandon`): the caller exits the process now.

        All of it within ``[worker] shutdown_timeout_s``, as the README promises: the jobs get
        the timeout less :data:`RECORD_S` (at most half of it), kept to record the end. A
        store that hangs (SQLite's write lock held by another process, which a busy write
        waits 10 s for; a PostgreSQL lock) holds no step past the deadline: the loop and
        heartbeat threads were joined 5 s each and the record waited for the lock, so a 2 s
        timeout became 22 s and a supervisor's SIGKILL came first. Giving the scheduler lock
        back too: an unlock on a PostgreSQL connection that hangs is left to the session's
        end (the lock goes with it)."""
        global _current
        self.stop.set()
        timeout = self.settings.worker.shutdown_timeout_s
        deadline = time.monotonic() + timeout
        reserve = record_reserve(timeout)
        finished = threading.Event()

        def wait() -> None:
            if self.scheduler.running:
                scheduler.quiesce(self.scheduler)
                self.scheduler.shutdown(wait=True)
            finished.set()

        threading.Thread(target=wait, name="worker-shutdown", daemon=True).start()
        clean = finished.wait(timeout - reserve)
        for thread in (self._loop_thread, self._heartbeat_thread):
            if thread is not None:  # daemon threads: they end with the process
                thread.join(timeout=max(0.0, deadline - reserve - time.monotonic()))
        left = max(0.0, deadline - time.monotonic())
        if not clean:  # the caller exits the process now: the locks go with it
            log.error(
                "jobs still running after %g s: exiting anyway (campaign runs are "
                "resumed by the next scheduling worker)",
                timeout,
            )
            # recorded, not left ``running`` for ever (and the worker not shown alive); the
            # exit must come even when the database is what hangs
            why = (
                f"{self.stopped_by or 'stop'}: still running {timeout:g} s after the "
                "worker was stopped ([worker] shutdown_timeout_s); the worker exited"
            )
            self.abandon_within(why, left)
            return False
        _within(left, self._stopped, "the worker stopped")
        # on PostgreSQL an unlock on a connection that hangs: its session's end frees it
        left = max(0.0, deadline - time.monotonic())
        _within(left, self.leadership.release, "the scheduler lock given back")
        metrics.LEADER.set(0)
        _current = None
        return True

    def _gone(self) -> None:
        """``--once`` ended: its row goes (its runs have ended). Run from cron every few
        minutes, a row kept per invocation (288 a day, for ``job_runs_days``) would fill the
        table whose live rows every poll of the scheduling worker reads."""
        with self.engine.begin() as connection:
            runs.forget_worker(connection, self.id)

    def _stopped(self) -> None:
        with self.engine.begin() as connection:
            runs.stopped(connection, self.id, self.clock.now())

    def run_due_once(self) -> dict[str, str]:
        """``--once``: every leader job that is due now (by the persistent schedule, with its
        coalescing and misfire rules), then one delivery round; returns job → outcome. It
        beats like a worker while it runs and is recorded stopped at its end: without a
        heartbeat its runs looked like a dead worker's to another worker (resumed beside
        it) and it took no share of the provider's rate (``live_worker_count``)."""
        global _current
        _current = self
        outcomes: dict[str, str] = {}
        terminated = _sigterm_as_ctrl_c(self)
        ended = threading.Event()
        beating: threading.Thread | None = None
        try:
            self.leadership.register()
            if self.leadership.try_acquire():
                self.leader_since = self.clock.now()
            self._heartbeat_and_share_rate()  # before any run: its runs are a live worker's
            beating = threading.Thread(
                target=self._beat, args=(ended,), name="worker-heartbeat", daemon=True
            )
            beating.start()
            self._record_files(self.broken)
            if self.leader_since is not None:
                outcomes = self._fire_due()
            else:
                log.info("another worker schedules: --once only delivers")
            outcomes["deliver"] = self._stoppable(lambda: self.run("deliver"))
        finally:
            if beating is not None:  # ended before it is recorded stopped (a beat undoes it)
                ended.set()
                beating.join(self.settings.worker.shutdown_timeout_s)
                _within(self.settings.worker.shutdown_timeout_s, self._gone, "--once's end")
            self.leadership.release()
            self.leader_since, _current = None, None
            if terminated is not None:
                signal.signal(signal.SIGTERM, terminated)
        return outcomes

    def _stoppable(self, work: Callable[[], str]) -> str:
        """``work`` (``--once``'s delivery round) in a thread of its own, while the main
        thread waits: SIGTERM and Ctrl-C raise ``KeyboardInterrupt`` there (see
        :func:`_sigterm_as_ctrl_c`), and raised inside the round it broke off a batch being
        rendered or sent, its claims held until their lease ran out and a batch the provider
        took not recorded sent. Here it tells the round to stop as the worker's SIGTERM does
        (the batch in flight is finished and recorded, the rest stays queued), waits for it,
        then raises on. (It waits on an event: a ``Thread.join`` that the interrupt breaks
        marks the thread ended while it runs, and the interpreter then exits under it.)"""
        outcome: dict[str, Any] = {}
        ended = threading.Event()

        def run() -> None:
            try:
                outcome["status"] = work()
            except BaseException as exc:  # raised again on the calling thread
                outcome["error"] = exc
            finally:
                ended.set()

        threading.Thread(target=run, name="worker-once-deliver").start()
        try:
            while not ended.wait(0.2):
                pass
        except KeyboardInterrupt:
            self.stopped_by = self.stopped_by or "SIGINT"
            self.stop.set()
            while not ended.wait(0.2):
                pass
            raise
        if "error" in outcome:
            raise outcome["error"]
        return str(outcome["status"])

    def _fire_due(self) -> dict[str, str]:
        outcomes: dict[str, str] = {}
        done = threading.Condition()

        def listen(event: JobEvent) -> None:
            with done:
                outcomes.setdefault(event.job_id, _outcome(event))
                done.notify_all()

        # not EVENT_JOB_MAX_INSTANCES: in --once only the job's own run, still going, makes a
        # firing overlap (its next slot came while it ran); that run's end is its outcome
        self.scheduler.add_listener(listen, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED)
        self.scheduler.start(paused=True)
        scheduler.attach_shared(self.scheduler, self.engine)
        self._sync_leader_jobs()
        now = self.clock.now()
        due = {
            j.id
            for j in self.scheduler.get_jobs(jobstore=scheduler.SHARED)
            if j.next_run_time is not None and j.next_run_time <= now
        }
        # what a stop (cron's ``timeout``) or a crash left unfinished: under cron no other
        # worker may ever resume it, and the customers after its last chunk got nothing
        try:
            self.resume_unfinished()
            self.end_orphaned_runs()
        except Exception:  # the database may be away for a moment: the due jobs run anyway
            log.exception("worker --once: unfinished runs not resumed nor ended")
        due |= {j.id for j in self.scheduler.get_jobs(jobstore=scheduler.LOCAL)}
        self.scheduler.resume()
        try:
            with done:
                while not due <= outcomes.keys() and not self.stop.is_set():
                    done.wait(1.0)
        except KeyboardInterrupt:  # Ctrl-C: what runs stops at its next chunk or batch
            self.stopped_by = self.stopped_by or "SIGINT"
            self.stop.set()
            raise
        finally:  # the jobs end before the caller releases the worker lock
            scheduler.quiesce(self.scheduler)
            self.scheduler.shutdown(wait=True)
        return {job: outcomes.get(job, "not run") for job in sorted(due)}

    # -- the demo's compressed schedule ------------------------------------------------------

    def simulate(self, until: datetime, on_run: Callable[[datetime, str, str], None]) -> None:
        """Run the schedule on a simulated clock up to ``until``, job after job at its fire
        time, as fast as the jobs go (``recocamp worker --demo``). The clock must be a
        ``FixedClock`` at the start; cron jobs fire by their own triggers, polling jobs
        (delivery, imports) hourly. Nothing is scheduled for real. Once ``stop`` is set (a
        signal, through :meth:`wait` on another thread) no further job starts; the one
        running stops between chunks (campaigns) or finishes."""
        clock = self.clock
        if not isinstance(clock, FixedClock):
            raise TypeError("simulate() needs a FixedClock")
        start = clock.now()
        triggers = {spec.id: _simulated(spec.trigger, start) for spec in self.specs.values()}
        upcoming = {job: t.get_next_fire_time(None, start) for job, t in triggers.items()}
        self.leadership.register()
        try:
            while upcoming and not self.stop.is_set():  # stop: see install_signals
                job, at = min(upcoming.items(), key=lambda pair: pair[1])
                if at > until:
                    return
                clock.advance(at - clock.now())
                on_run(at, job, self.run(job))
                following = triggers[job].get_next_fire_time(at, at + timedelta(microseconds=1))
                if following is None:
                    del upcoming[job]
                else:
                    upcoming[job] = following.astimezone(UTC)
        finally:
            self.leadership.release()


def _simulated(trigger: Any, start: datetime) -> Any:
    if isinstance(trigger, IntervalTrigger):
        return IntervalTrigger(hours=1, start_date=start, timezone=UTC)
    return trigger


def record_reserve(timeout: float) -> float:
    """Of a stop's ``timeout`` (``[worker] shutdown_timeout_s``), what is kept to record how
    the worker ended: :data:`RECORD_S`, at most half of it; the jobs get the rest."""
    return min(RECORD_S, timeout / 2)


def _within(seconds: float, record: Callable[[], None], what: str) -> None:
    """Run ``record`` (a write to the store) on a thread of its own and wait at most
    ``seconds`` for it: a store that hangs must not hold the worker's exit. A record that
    fails or is still waiting is logged; the thread, a daemon, ends with the process."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            record()
        except Exception as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="worker-record", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        log.error("could not record %s within %.1f s: the store did not answer", what, seconds)
    elif failed:
        log.error("could not record %s", what, exc_info=failed[0])


def _fate(failure: ConfigError, running: Mapping[str, Campaign]) -> str:
    """What became of a broken campaign file, for the log and the ``check`` run: a file
    whose campaign still runs runs its last good version."""
    if failure.path.stem in running:
        return "broken, its last good version keeps running"
    return "broken, left out"


_OUTCOME = {
    EVENT_JOB_EXECUTED: "ran",
    EVENT_JOB_ERROR: "error",
    EVENT_JOB_MISSED: "missed",
    EVENT_JOB_MAX_INSTANCES: "skipped (still running)",
}


def _outcome(event: JobEvent) -> str:
    """What became of a job ``--once`` fired: its run's status (``ok``, ``error``,
    ``interrupted``, ``skipped``) when it ran — "ran" hid a run that failed, which the worker
    records instead of raising — else why it did not run."""
    status = getattr(event, "retval", None)
    if event.code == EVENT_JOB_EXECUTED and isinstance(status, str):
        return status
    return _OUTCOME[event.code]


def _sigterm_as_ctrl_c(worker: Worker) -> Any:
    """``--once`` under cron's ``timeout`` (or a supervisor) gets SIGTERM: by default it ended
    the process at once, the run left ``running`` for ever. On the main thread it is made
    Ctrl-C's ``KeyboardInterrupt`` for the call (:meth:`Worker.run_due_once` stops the jobs
    at their next chunk and keeps the lock until they end); returns the handler to put back,
    None off the main thread (no handler can be set there)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        worker.stopped_by = "SIGTERM"
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)
