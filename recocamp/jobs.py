"""Thin jobs: load inputs, call the pure stages, write outputs. Each one is idempotent.

``send_campaign`` = plan + record decisions + compose + enqueue + deliver (which renders
the bodies). Re-running the same slot (campaign × shop-local day) adds nothing: decisions
are unique per run key and customer, e-mails per send key; a crash in the middle resumes
where it stopped, because already enqueued send keys are skipped before anything is
composed again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from recocamp import campaigns as campaign_files
from recocamp import compose, drop_folder, metrics, outbox, planner, render, training
from recocamp.campaigns import Campaign
from recocamp.clock import Clock, SystemClock
from recocamp.deliver import Deliverer, DeliveryReport, RateLimiter, drain_in_processes
from recocamp.domain import OutgoingEmail
from recocamp.errors import ConfigError, Interrupted, Problem
from recocamp.esp import Provider, make_provider
from recocamp.settings import Settings
from recocamp.store import registry, views
from recocamp.store.queries import _insert
from recocamp.store.schema import decisions as decisions_table
from recocamp.store.schema import purchases
from recocamp.store.schema import runs as runs_table

log = logging.getLogger(__name__)
CHUNK = 1000
PARALLEL_FROM = 5000  # smaller runs are delivered by a thread: starting processes costs ~1 s
Progress = Callable[[int], None]


@dataclass
class RunReport:
    campaign: str
    run_key: str
    counts: dict[str, int] = field(default_factory=dict)
    enqueued: int = 0
    already_enqueued: int = 0
    delivery: DeliveryReport | None = None


def signing_key(settings: Settings) -> bytes:
    if settings.signing_key is None:
        raise ConfigError(Path("settings.toml"), [Problem(
            "sending needs a secret for unsubscribe links: set RECOCAMP_SIGNING_KEY",
            key="signing_key")])  # fmt: skip
    return settings.signing_key.get_secret_value().encode()


def run_key(campaign: str, now: datetime, zone: ZoneInfo) -> str:
    return f"{campaign}/{now.astimezone(zone).date().isoformat()}"


@dataclass
class Planned:
    """One campaign run, decided: what ``enqueue_decisions`` records and enqueues."""

    report: RunReport
    decided: Sequence[planner.Decision]
    by_customer: dict[str, planner.CustomerView]

    @property
    def sends(self) -> int:
        return sum(d.outcome in (planner.Outcome.SEND, planner.Outcome.DEFER) for d in self.decided)


def plan_run(engine: sa.Engine, settings: Settings, campaign: Campaign,
             now: datetime) -> Planned:  # fmt: skip
    """Load the planner's snapshot and decide for every customer at ``now``."""
    signing_key(settings)  # refuse before any work, not after planning
    own = run_key(campaign.name, now, ZoneInfo(settings.shop.time_zone))
    with engine.connect() as connection:
        snapshot = views.load(connection, settings, now, own_run=own)
    return plan_views(settings, campaign, snapshot.views, snapshot.items, snapshot.popular, now)


def plan_views(settings: Settings, campaign: Campaign, customers: Sequence[planner.CustomerView],
               items: Any, popular: Any, now: datetime) -> Planned:  # fmt: skip
    zone = ZoneInfo(settings.shop.time_zone)
    context = planner.Context(now, items, popular, campaign_files.caps_defaults(settings), zone)
    decided = planner.plan(campaign, customers, context)
    report = RunReport(campaign.name, run_key(campaign.name, now, zone), planner.counts(decided))
    return Planned(report, decided, {v.customer.id: v for v in customers})


@dataclass(frozen=True)
class RunOptions:
    """How a campaign run reports progress and stops; the defaults suit one-off runs."""

    issued_at: datetime | None = None  # link tokens' issue time: the real time when deciding
    #                                    for a simulated ``--as-of`` (a token must not look
    #                                    15 years old to the unsubscribe page)
    max_wait_s: float = 0.0  # wait this long for retries before leaving them to the worker
    on_progress: Progress = lambda n: None  # decisions recorded and enqueued
    stopping: Callable[[], bool] = lambda: False  # checked between chunks and batches
    renderer: render.Renderer | None = None  # default: the templates directory as it is now


def plan_and_enqueue(engine: sa.Engine, settings: Settings, campaign: Campaign,
                     templates: Path, now: datetime,
                     options: RunOptions = RunOptions()) -> RunReport:  # fmt: skip
    """Decide at ``now`` and enqueue (nothing is delivered)."""
    planned = plan_run(engine, settings, campaign, now)
    return enqueue_decisions(engine, settings, campaign, templates, planned, now, options)


def enqueue_decisions(engine: sa.Engine, settings: Settings, campaign: Campaign,
                      templates: Path, planned: Planned, now: datetime,
                      options: RunOptions = RunOptions()) -> RunReport:  # fmt: skip
    """Record every decision and enqueue the e-mails of sends and deferrals, chunk by chunk
    (a crash or a stop loses at most the chunk in flight, and the re-run skips what is
    enqueued). Bodies are rendered by whoever delivers them (``domain.BodyTemplate``); only
    the subject is rendered here."""
    key = signing_key(settings)
    renderer = options.renderer or render.Renderer(templates, limits=settings.templates)
    report = planned.report
    period = report.run_key.rpartition("/")[2]
    issued_at = options.issued_at or now
    for chunk in _chunks(planned.decided):
        if options.stopping():
            raise Interrupted(f"campaign run {report.run_key} stopped after "
                              f"{report.enqueued:,} e-mails enqueued")  # fmt: skip
        wanted = [d for d in chunk if d.outcome in (planner.Outcome.SEND, planner.Outcome.DEFER)]
        keys = {d.customer_id: outbox.send_key(campaign.name, d.customer_id, period)
                for d in wanted}  # fmt: skip
        with engine.connect() as connection:
            done = outbox.existing_keys(connection, campaign.name, list(keys.values()))
        emails = [  # composed outside the write transaction: a deliverer may be draining
            _email(d, planned.by_customer[d.customer_id], campaign, settings, renderer, key,
                   now, issued_at, keys[d.customer_id])
            for d in wanted if keys[d.customer_id] not in done
        ]  # fmt: skip
        with engine.begin() as connection:
            _record_decisions(connection, report.run_key, chunk, now)
            report.enqueued += outbox.enqueue(connection, emails, now)
        report.already_enqueued += len(done)
        options.on_progress(len(chunk))
    log.info("campaign %s run %s: %d decisions, %d enqueued, %d already enqueued",
             campaign.name, report.run_key, len(planned.decided), report.enqueued,
             report.already_enqueued)  # fmt: skip
    return report


Queued = tuple[OutgoingEmail, str, str | None, datetime]


def _email(decision: planner.Decision, view: planner.CustomerView, campaign: Campaign,
           settings: Settings, renderer: render.Renderer, key: bytes, now: datetime,
           issued_at: datetime, send_key: str) -> Queued:  # fmt: skip
    link = compose.links(settings, key, decision.customer_id, campaign.name, issued_at)
    email = compose.compose(decision, view, campaign, settings, renderer, link, send_key,
                            defer_body=True)  # fmt: skip
    return email, decision.customer_id, decision.variant, decision.send_at or now


def _chunks(decided: Sequence[planner.Decision]) -> Iterator[Sequence[planner.Decision]]:
    for start in range(0, len(decided), CHUNK):
        yield decided[start : start + CHUNK]


def _record_decisions(connection: sa.Connection, key: str,
                      chunk: Sequence[planner.Decision], now: datetime) -> None:  # fmt: skip
    rows = [
        {"run_key": key, "campaign": d.campaign, "customer_id": d.customer_id,
         "outcome": d.outcome.value, "reason": d.reason, "variant": d.variant,
         "holdout": d.outcome is planner.Outcome.HOLDOUT, "decided_at": now}
        for d in chunk
    ]  # fmt: skip
    statement = _insert(connection, decisions_table).on_conflict_do_nothing(
        index_elements=["run_key", "customer_id"])  # fmt: skip
    connection.execute(statement, rows)


def send_campaign(engine: sa.Engine, settings: Settings, campaign: Campaign, templates: Path,
                  now: datetime, deliverer: Deliverer,
                  options: RunOptions = RunOptions()) -> RunReport:  # fmt: skip
    """Plan, then enqueue while the same campaign is being delivered."""
    planned = plan_run(engine, settings, campaign, now)
    return deliver_planned(engine, settings, campaign, templates, planned, now, deliverer,
                           options)  # fmt: skip


def deliver_planned(engine: sa.Engine, settings: Settings, campaign: Campaign, templates: Path,
                    planned: Planned, now: datetime, deliverer: Deliverer,
                    options: RunOptions = RunOptions()) -> RunReport:  # fmt: skip
    """Enqueue ``planned`` while it is delivered: by ``deliverer`` in a thread, or, for a big
    run, by several delivering processes (``[esp] delivery_processes``), because rendering
    the bodies is the expensive part and one process renders on one core."""
    processes = delivery_processes(settings, planned.sends)
    if not isinstance(deliverer.clock, SystemClock):
        processes = 1  # delivering processes run on the real clock: not for a simulated one

    def drain(producing: Callable[[], bool]) -> DeliveryReport:
        if processes > 1:
            renderer = deliverer.renderer or render.Renderer(templates, limits=settings.templates)
            return drain_in_processes(engine, settings, renderer, campaign.name, processes,
                                      options.max_wait_s, producing, deliverer.on_progress,
                                      options.stopping, deliverer.limiter.rate)  # fmt: skip
        return deliverer.drain(campaign.name, options.max_wait_s, producing)

    return while_delivering(drain, lambda: enqueue_decisions(
        engine, settings, campaign, templates, planned, now, options))  # fmt: skip


def delivery_processes(settings: Settings, sends: int) -> int:
    """How many processes deliver a run of ``sends`` e-mails (1: a thread of this one)."""
    if sends < PARALLEL_FROM:
        return 1
    wanted = settings.esp.delivery_processes or os.cpu_count() or 1
    return max(1, min(wanted, sends // (PARALLEL_FROM // 2)))


def while_delivering(drain: Callable[[Callable[[], bool]], DeliveryReport],
                     produce: Callable[[], RunReport]) -> RunReport:  # fmt: skip
    """Run ``produce`` (which enqueues) while ``drain`` delivers in a thread: the first
    e-mails go out while the rest are still being enqueued."""
    producing = threading.Event()
    producing.set()
    outcome: dict[str, Any] = {}

    def deliver() -> None:
        try:
            outcome["report"] = drain(producing.is_set)
        except BaseException as exc:  # re-raised in the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=deliver, name="deliver")
    thread.start()
    try:
        report = produce()
    finally:
        producing.clear()
        thread.join()
    if "error" in outcome:
        raise outcome["error"]
    report.delivery = outcome["report"]
    return report


# --- the worker's jobs (see ``scheduler.job_table``) ------------------------------------------


@dataclass
class JobContext:
    """What every job of a worker needs. ``renderer`` holds the last templates that passed
    ``check`` (the worker replaces it on a good reload); ``limiter`` is the worker's share of
    the provider's rate limit; ``stop`` is set on SIGTERM."""

    settings: Settings
    engine: sa.Engine
    templates: Path
    clock: Clock
    stop: threading.Event
    renderer: render.Renderer
    limiter: RateLimiter


Counts = dict[str, Any]


def _deliverer(ctx: JobContext, provider: Provider) -> Deliverer:
    return Deliverer(ctx.engine, provider, ctx.settings.esp, ctx.clock, sleep=ctx.stop.wait,
                     renderer=ctx.renderer, stopping=ctx.stop.is_set,
                     limiter=ctx.limiter)  # fmt: skip


def run_campaign(ctx: JobContext, campaign: Campaign, as_of: datetime) -> Counts:
    """A scheduled campaign run decided at ``as_of``: plan, enqueue, deliver (big runs by
    several processes); a stop between chunks raises ``Interrupted``."""
    provider = make_provider(ctx.settings)
    try:
        options = RunOptions(issued_at=ctx.clock.now(), stopping=ctx.stop.is_set,
                             renderer=ctx.renderer)  # fmt: skip
        report = send_campaign(ctx.engine, ctx.settings, campaign, ctx.templates, as_of,
                               _deliverer(ctx, provider), options)  # fmt: skip
    finally:
        provider.close()
    for reason, number in report.counts.items():
        metrics.DECISIONS.labels(campaign.name, reason).inc(number)
    counts: Counts = {"decisions": dict(report.counts), "enqueued": report.enqueued,
                      "already_enqueued": report.already_enqueued}  # fmt: skip
    if report.delivery is not None:
        counts |= _delivery_counts(campaign.name, report.delivery)
    return counts


def _delivery_counts(campaign: str | None, report: DeliveryReport) -> Counts:
    counts = {name: getattr(report, name) for name in (
        "sent", "rejected", "failed", "retried", "cancelled", "reconciled")}  # fmt: skip
    for name, number in counts.items():
        if number:
            metrics.EMAILS.labels(campaign or "all", name).inc(number)
    return counts | {"waiting": report.waiting}


def deliver(ctx: JobContext, now: datetime) -> Counts:
    """Every worker, every few seconds: send what is due (retries, deferred mail, other
    workers' runs), after reconciling claims of crashed workers."""
    provider = make_provider(ctx.settings)
    try:
        report = _deliverer(ctx, provider).drain()
    finally:
        provider.close()
    counts = _delivery_counts(None, report)
    return counts if any(v for k, v in counts.items() if k != "waiting") else {}


def train(ctx: JobContext, now: datetime) -> Counts:
    """The nightly training. Skipped while a model is live and nothing changed since the
    last training (no purchase line stored since, same ``[recommender]`` settings): a shop
    whose feed is quiet keeps its model instead of spending the night refitting it."""
    data = _training_inputs(ctx)
    if _unchanged_since_last_training(ctx.engine, data):
        return {"outcome": "skipped_no_new_data", **data}
    zone = ZoneInfo(ctx.settings.shop.time_zone)
    result = training.train(ctx.engine, ctx.settings.recommender, now=now, as_of=now, zone=zone)
    if result.seconds:
        metrics.TRAIN_SECONDS.set(result.seconds.get("total", 0.0))
    if result.outcome == "promoted":
        metrics.MODEL_INFO.clear()
        metrics.MODEL_INFO.labels(result.version).set(1)
    return {"outcome": result.outcome, "version": result.version, "reason": result.reason,
            "cache_rows": result.cache_rows, **data}  # fmt: skip


def _training_inputs(ctx: JobContext) -> Counts:
    with ctx.engine.connect() as connection:
        last_line, lines = connection.execute(
            sa.select(sa.func.max(purchases.c.id), sa.func.count())).one()  # fmt: skip
    digest = hashlib.sha256(ctx.settings.recommender.model_dump_json().encode()).hexdigest()
    return {"last_purchase_line": int(last_line or 0), "purchase_lines": int(lines),
            "settings": digest[:16]}  # fmt: skip


def _unchanged_since_last_training(engine: sa.Engine, data: Counts) -> bool:
    with engine.connect() as connection:
        if registry.live(connection) is None:
            return False
        previous = connection.execute(
            sa.select(runs_table.c.counts).where(runs_table.c.job == "train",
                                                 runs_table.c.status == "ok")
            .order_by(runs_table.c.id.desc()).limit(1)).scalar()  # fmt: skip
    return isinstance(previous, dict) and all(previous.get(k) == v for k, v in data.items())


def import_files(ctx: JobContext, now: datetime) -> Counts:
    report = drop_folder.import_drop_folder(ctx.engine, ctx.settings, now)
    return report.counts()


def snapshot_kpis(ctx: JobContext, now: datetime) -> Counts:
    from recocamp import measure_jobs

    return {"rows": measure_jobs.snapshot_kpis(ctx.engine, ctx.settings, now)}


def purge(ctx: JobContext, now: datetime) -> Counts:
    from recocamp import privacy

    return dict(privacy.purge(ctx.engine, ctx.settings, now).counts())


JOBS: dict[str, Callable[[JobContext, datetime], Counts]] = {
    "import": import_files,
    "train": train,
    "kpi_snapshot": snapshot_kpis,
    "purge": purge,
    "deliver": deliver,
}


def missing_campaign(name: str) -> Problem:
    return Problem("the campaign's file is gone or broken since it was scheduled", value=name)
