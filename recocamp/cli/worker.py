"""Worker commands: ``recocamp worker`` (also ``--demo``, the demo shop's week on a simulated
clock) and ``recocamp runs …``."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from recocamp import metrics
from recocamp.cli.common import (
    MAX_ROWS,
    CampaignsDir,
    Output,
    TemplatesDir,
    app,
    clock,
    console,
    current_settings,
    day_count,
    engine_for,
    errors_to_exit,
    log_levels,
    parse_as_of,
    print_error,
    print_warning,
    show,
    tombstone_key_problem,
    warn_no_campaigns,
    warn_weak_secrets,
    within,
)
from recocamp.cli.demo import demo_settings, demo_shop
from recocamp.clock import FixedClock
from recocamp.delivery.esp import check_provider
from recocamp.errors import ConfigError, mask_addresses
from recocamp.measure import jobs as measure_jobs
from recocamp.settings import Settings
from recocamp.store import queries, runs
from recocamp.store.engine import Engine
from recocamp.worker.process import Worker, record_reserve

runs_app = typer.Typer(help="The history of job and campaign runs; workers.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
log = logging.getLogger(__name__)


# six weeks before the UCI data ends: the report can measure what the campaigns did
DEMO_START = "2011-10-25T00:00:00"


@app.command("worker")
def worker(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option(help="Run what is due now, deliver, and exit.")] = False,
    campaigns: CampaignsDir = Path("campaigns"),
    templates: TemplatesDir = Path("templates"),
    metrics_port: Annotated[
        int | None,
        typer.Option(
            callback=within(0, 65535), help="Prometheus metrics port (0: off; default: settings)."
        ),
    ] = None,
    demo: Annotated[
        bool,
        typer.Option(
            help="Build the demo shop if needed and run its schedule on a simulated clock, "
            "through a local fake ESP, as fast as the jobs go."
        ),
    ] = False,
    days: Annotated[
        int, typer.Option(callback=day_count, help="--demo: days to simulate (1 to 36,500).")
    ] = 7,
    start: Annotated[str, typer.Option(help="--demo: the simulated start.")] = DEMO_START,
) -> None:
    """Run the schedule: campaigns, training, imports, delivery, KPI snapshots, purges."""
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit's BLAS (see model.py)
    levels = {
        "recocamp": logging.INFO if not demo else logging.WARNING,
        # overlaps and misses are logged (and counted) by the worker itself
        "apscheduler.scheduler": logging.ERROR,
    }
    ctx.with_resource(log_levels(levels))  # put back when the command ends
    if demo:
        with errors_to_exit():
            _demo(campaigns, templates, start, days)
        return
    with errors_to_exit():
        settings = current_settings()
        warn_weak_secrets(settings)
        _warn_tombstone_keys(settings)
        check_provider(settings)  # its deliver job would fail every few seconds, for ever
        process = Worker(settings, engine_for(settings), campaigns, templates, clock)
        if not once:  # a reload asked while it starts (seconds of checks) must not end it
            process.install_signals((signal.SIGHUP,))
        broken = process.load()  # each broken file is logged with its problems
        warn_no_campaigns(campaigns)
        if once:
            outcomes = process.run_due_once()
            console.print(", ".join(f"{job}: {what}" for job, what in outcomes.items()))
            failed = [job for job, what in outcomes.items() if what == "error"]
            if failed:  # recorded with their errors: a cron job running --once notices too
                print_error(
                    f"{', '.join(failed)} failed (`recocamp runs list --job {failed[0]}` "
                    "shows why); the rest ran"
                )
            if broken:  # the rest ran; a cron job running --once still notices
                print_error(f"{_broken_text(broken)}; the rest ran")
                raise typer.Exit(2)
            if failed:
                raise typer.Exit(1)
            return
        _serve_metrics(
            settings.worker.metrics_host,
            settings.worker.metrics_port if metrics_port is None else metrics_port,
        )
        process.install_signals()
        process.start()
        console.print(
            f"worker {process.id} running {len(process.specs)} jobs; SIGTERM or Ctrl-C stops it"
        )
        if broken:
            print_warning(f"{_broken_text(broken)} (fix them: the worker reloads them)")
        process.wait()
        if not process.shutdown():
            # running jobs (a training, an import) cannot be cut short, and the interpreter
            # would wait for their threads: leave now, the next worker resumes what matters
            logging.shutdown()
            os._exit(3)
        if process.lost is not None:  # not a signal: a supervisor should see a failure
            print_error(process.lost)
            raise typer.Exit(1)


def _warn_tombstone_keys(settings: Settings) -> None:
    """The worker starts (campaigns, delivery and the rest need no tombstone), but says at
    once that its imports will be refused until the missing key is back."""
    unknown = tombstone_key_problem(settings, adopt=True)
    if unknown:
        print_warning(unknown)


def _broken_text(broken: list[ConfigError]) -> str:
    """The broken campaign files in one line (their problems are in the log above)."""
    names = ", ".join(str(failure.path) for failure in broken)
    return f"{len(broken)} broken campaign file(s) not run: {names}"


def _demo(campaigns: Path, templates: Path, start: str, days: int) -> None:
    """``worker --demo``: the demo shop's week, compressed (see ``Worker.simulate``)."""
    from recocamp.delivery.esp.fake_server import FakeEsp, create_app, running

    settings, demo_dir = current_settings(), Path("demo")
    zone = settings.shop.zone
    begin = parse_as_of(start, zone, "--start")  # bad input: before the shop is built
    engine, untrained = demo_shop(settings, demo_dir)
    _history(engine, settings, clock.now())
    fake = FakeEsp(data_dir=demo_dir / "fake-esp")
    with running(create_app(fake)) as url:
        process = Worker(
            demo_settings(settings, url, demo_dir), engine, campaigns, templates, FixedClock(begin)
        )
        process.load()
        first = begin.astimezone(zone)
        console.print(
            f"simulating {days} days of the schedule from {first:%a %d %b %Y %H:%M} "
            f"({len(process.specs)} jobs; polling jobs hourly); SIGTERM or Ctrl-C stops it"
        )
        with _stopped_by_signals(process):
            if untrained:
                console.print("training the first model (a minute or so) …")
                _show(process, begin, "train", process.run("train"))
            process.simulate(
                begin + timedelta(days=days),
                lambda at, job, status: _show(process, at, job, status),
            )
        if process.stopped_by:
            when = process.clock.now().astimezone(zone)
            console.print(
                f"{process.stopped_by}: stopped at the simulated {when:%a %d %b %Y %H:%M}, the "
                "job running then finished or stopped between batches (`recocamp runs list`; "
                "an interrupted campaign run is resumed by the next worker)"
            )
    stats = fake.stats()
    console.print(
        f"fake ESP: {stats['received']:,} e-mails, {stats['unique_send_keys']:,} "
        f"unique send keys, {stats['duplicates']} duplicates "
        f"({demo_dir / 'fake-esp'}/messages.jsonl); history: `recocamp runs list`"
    )


@contextmanager
def _stopped_by_signals(process: Worker) -> Iterator[None]:
    """SIGTERM/SIGINT stop the demo as they stop the real worker: the handlers note the
    signal, a thread sets ``stop`` (:meth:`Worker.wait`), the job running stops between
    chunks or finishes, no other starts, and the worker is recorded stopped. A job that
    runs past ``[worker] shutdown_timeout_s`` after the signal (a training) is recorded
    interrupted and the process exits 3 at once, as the real worker does."""
    done = threading.Event()
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    before = {each: signal.getsignal(each) for each in handled}  # put back: tests run in-process
    process.install_signals()
    threading.Thread(
        target=exit_if_stuck, args=(process, done), name="demo-signals", daemon=True
    ).start()
    try:
        yield
    finally:
        done.set()
        process.shutdown()  # no scheduler runs: records the worker stopped, ends the thread
        for each, handler in before.items():
            if handler is not None:  # None: not set from Python, nothing to put back
                signal.signal(each, handler)


def exit_if_stuck(process: Worker, done: threading.Event) -> None:
    """The demo's watcher: once a signal stops it, a job still running past ``[worker]
    shutdown_timeout_s`` (``done`` not set) is recorded interrupted and the process exits 3,
    within the timeout even when the store hangs (the record is waited for at most the
    worker's reserve for it)."""
    process.wait()  # until a signal (or the demo's end) sets stop
    timeout = process.settings.worker.shutdown_timeout_s
    reserve = record_reserve(timeout)  # the exit comes within the timeout, as the worker's
    if done.is_set() or done.wait(timeout - reserve):
        return
    why = f"{process.stopped_by}: the demo stopped before the run ended"
    process.abandon_within(why, reserve)
    print_error(
        f"a job still ran {timeout:.0f} s after {process.stopped_by}: recorded interrupted, "
        "exiting anyway"
    )
    logging.shutdown()
    os._exit(3)


def _history(engine: Engine, settings: Settings, now: datetime) -> None:
    """The KPI snapshots of every day the shop has orders (the report's history)."""
    with engine.connect() as connection:
        first, last = queries.first_order_time(connection), queries.latest_order_time(connection)
    if first is None or last is None:
        return
    zone = settings.shop.zone
    with console.status("KPI history: a snapshot of every day with orders …"):
        measure_jobs.backfill(
            engine, settings, first.astimezone(zone).date(), last.astimezone(zone).date(), now
        )


def _show(process: Worker, at: datetime, job: str, status: str) -> None:
    line = job_line(process, at, job, status)
    if line is not None:
        console.print(line, highlight=False, soft_wrap=True, markup=False)


def job_line(process: Worker, at: datetime, job: str, status: str) -> str | None:
    """The demo's line for a job that ran (None for an idle poll). A job's error is the
    exception's text, which may quote an address (a provider's answer, a file's value) or
    brackets rich would read as markup: masked, and printed as it is."""
    counts, error = process.last.pop(job, ({}, None))
    if not counts and not error and status in ("ok", "skipped"):
        return None  # an idle poll
    when = at.astimezone(process.settings.shop.zone)
    said = mask_addresses(error) if error else _counts_text(counts)
    return f"{when:%a %d %b %H:%M}  {job:<20} {status:<8} {said}"


def _serve_metrics(host: str, port: int) -> None:
    if not port:
        return
    from prometheus_client import start_http_server

    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # another worker on this host has the port: run without
        log.warning("metrics not served on %s:%d: %s", host, port, exc)
        return
    metrics.LEADER.set(0)
    log.info("metrics on http://%s:%d/metrics", host, port)


@runs_app.command("list")
def runs_list(
    job: Annotated[str | None, typer.Option(help="Only this job (e.g. campaign:winback).")] = None,
    limit: Annotated[
        int, typer.Option(callback=within(1, MAX_ROWS), help="Show the newest LIMIT runs.")
    ] = 30,
    format: Annotated[Output, typer.Option("--format")] = Output.table,
) -> None:
    """The latest job and campaign runs, newest first (times in UTC)."""
    with errors_to_exit(), engine_for(current_settings()).connect() as connection:
        rows = runs.recent(connection, job, limit)
        total = runs.count(connection, job)
    if format is Output.json:
        print(json.dumps([_run_json(row) for row in rows], indent=2))
        return
    table = Table(title="runs")
    for column in ("id", "job", "status", "started (UTC)", "seconds", "counts / error", "worker"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row.id),
            row.job,
            row.status,
            f"{row.started_at:%Y-%m-%d %H:%M:%S}",
            _seconds_text(row),
            mask_addresses(row.error) if row.error else _counts_text(runs.masked(row.counts)),
            row.worker,
        )
    table.caption = (
        f"newest {len(rows):,} of {total:,} runs"
        + (f" of {job}" if job else "")
        + ("; --limit N shows more" if total > len(rows) else "")
    )
    show(table)


def _seconds_text(row: Any) -> str:
    """The measured duration; rows from before it was recorded fall back to the clock's."""
    if row.seconds is not None:
        return f"{row.seconds:.1f}"
    if row.finished_at is None:
        return "…"
    return f"{(row.finished_at - row.started_at).total_seconds():.1f}"


def _counts_text(counts: dict[str, Any]) -> str:
    parts = []
    for key, value in counts.items():
        if isinstance(value, dict):
            parts += [f"{k}={v}" for k, v in value.items()]
        elif value not in (0, None, ""):
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _run_json(row: Any) -> dict[str, Any]:
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": row.id,
        "job": row.job,
        "status": row.status,
        "worker": row.worker,
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "as_of": iso(row.as_of),
        "run_key": row.run_key,
        "counts": runs.masked(row.counts),  # stored unmasked by versions before c4e5b06
        "error": mask_addresses(row.error) if row.error else None,
        "resumed_from": row.resumed_from,
        "seconds": row.seconds,
    }


@runs_app.command("trigger")
def runs_trigger(job: str) -> None:
    """Make a scheduled job due now; the scheduling worker runs it within a few seconds."""
    from recocamp.worker import scheduler

    with errors_to_exit():
        settings = current_settings()
        engine = engine_for(settings)
        sched = scheduler.make_scheduler()
        scheduler.attach_shared(sched, engine)
        sched.start(paused=True)
        try:
            known = [j.id for j in sched.get_jobs(jobstore=scheduler.SHARED)]
            if job in known:
                sched.modify_job(job, jobstore=scheduler.SHARED, next_run_time=clock.now())
        finally:
            scheduler.quiesce(sched)
            sched.shutdown(wait=False)
    if job not in known:
        if not known:  # nothing to name yet: not the user's input
            print_error(f"no scheduled job {job!r} yet: the scheduling worker adds them")
            raise typer.Exit(1)
        print_error(f"no scheduled job {job!r} (known: {', '.join(sorted(known))})")
        raise typer.Exit(2)  # a typo in the name: bad input
    console.print(f"{job}: due now")


@runs_app.command("workers")
def runs_workers() -> None:
    """Workers with their heartbeat, and which one schedules."""
    with errors_to_exit(), engine_for(current_settings()).connect() as connection:
        rows = runs.all_workers(connection)
        checks = runs.latest_by_worker(connection, runs.CHECK_JOB, [row.id for row in rows])
    table = Table(title="workers")
    columns = ("worker", "started (UTC)", "heartbeat", "leader since", "stopped", "campaign files")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            row.id,
            f"{row.started_at:%Y-%m-%d %H:%M:%S}",
            f"{row.heartbeat_at:%Y-%m-%d %H:%M:%S}",
            f"{row.leader_since:%Y-%m-%d %H:%M:%S}" if row.leader_since else "",
            f"{row.stopped_at:%Y-%m-%d %H:%M:%S}" if row.stopped_at else "",
            _files_text(checks.get(row.id)),
        )
    show(table)
    for row in rows:  # the problems in full, unfolded: a table cell would fold paths and ids
        check = checks.get(row.id)
        if check is not None and check.status != "ok" and check.error:
            console.print(f"{row.id}: {mask_addresses(check.error)}", soft_wrap=True)


def _files_text(check: Any) -> str:
    """A worker's campaign files as its last check found them: ``ok``, or how many are
    broken; the problems follow the table (``runs list --job check`` keeps the history)."""
    if check is None or check.status == "ok":
        return "ok"
    return f"{check.counts.get('broken_files', '?')} broken (below)"
