"""The worker's jobs (see ``worker.scheduler.job_table``): thin and idempotent, each loads
its inputs, calls a stage and returns counts for the run log."""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from recocamp import forecast as forecasting
from recocamp import metrics, privacy
from recocamp.campaigns import render
from recocamp.campaigns.files import Campaign
from recocamp.campaigns.run import RunOptions
from recocamp.clock import Clock
from recocamp.data import drop_folder
from recocamp.delivery.campaign_send import send_campaign
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp import Provider, make_provider
from recocamp.domain import DeliveryReport
from recocamp.errors import ModelError, Problem
from recocamp.measure import jobs as measure_jobs
from recocamp.ratelimit import RateLimiter
from recocamp.recommender import training
from recocamp.settings import Settings
from recocamp.store import forecasts, queries, registry, runs
from recocamp.store.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    """What every job of a worker needs. ``renderer`` holds the last templates that passed
    ``check`` (the worker replaces it on a good reload); ``limiter`` is the worker's share of
    the provider's rate limit; ``stop`` is set on SIGTERM."""

    settings: Settings
    engine: Engine
    templates: Path
    clock: Clock
    stop: threading.Event
    renderer: render.Renderer
    limiter: RateLimiter


Counts = dict[str, Any]


def _deliverer(ctx: JobContext, provider: Provider) -> Deliverer:
    return Deliverer(
        ctx.engine,
        provider,
        ctx.settings.esp,
        ctx.clock,
        sleep=ctx.stop.wait,
        renderer=ctx.renderer,
        stopping=ctx.stop.is_set,
        limiter=ctx.limiter,
    )


def run_campaign(
    ctx: JobContext, campaign: Campaign, as_of: datetime, key: str | None = None
) -> Counts:
    """A scheduled campaign run decided at ``as_of`` (as the run ``key``: a resumed run's
    own): plan, enqueue, deliver (big runs by several processes); a stop between chunks
    raises ``Interrupted``."""
    provider = make_provider(ctx.settings)
    try:
        options = RunOptions(
            issued_at=ctx.clock.now(),
            stopping=ctx.stop.is_set,
            renderer=ctx.renderer,
            run_key=key,
        )
        report = send_campaign(
            ctx.engine,
            ctx.settings,
            campaign,
            ctx.templates,
            as_of,
            _deliverer(ctx, provider),
            options,
        )
    finally:
        provider.close()
    for reason, number in report.counts.items():
        metrics.DECISIONS.labels(campaign.name, reason).inc(number)
    counts: Counts = {
        "decisions": dict(report.counts),
        "enqueued": report.enqueued,
        "already_enqueued": report.already_enqueued,
    }
    if report.delivery is not None:
        counts |= _delivery_counts(campaign.name, report.delivery)
    return counts


def _delivery_counts(campaign: str | None, report: DeliveryReport) -> Counts:
    counts = {
        name: getattr(report, name)
        for name in ("sent", "rejected", "failed", "retried", "cancelled", "reconciled")
    }
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
    """The nightly training: the recommender, then the purchase forecasts as of ``now``'s
    shop-local day (``forecast.refresh``: stored, replacing the previous version). Skipped
    while a model is live, a forecast is stored and nothing changed since the last training
    (no purchase line stored since, same ``[recommender]`` and ``[forecast]`` settings): a
    shop whose feed is quiet keeps its model and forecast (whose ``as_of`` says how old it
    is) instead of spending the night refitting them. Either way, every customer who objected
    to profiling is removed from every saved model (:func:`_unprofile`)."""
    data = _training_inputs(ctx)
    if unchanged_since_last_training(ctx.engine, data):
        return {"outcome": "skipped_no_new_data", **data, **_unprofile(ctx)}
    zone = ctx.settings.shop.zone
    result = training.train(ctx.engine, ctx.settings.recommender, now=now, as_of=now, zone=zone)
    if result.seconds:
        metrics.TRAIN_SECONDS.set(result.seconds.get("total", 0.0))
    if result.outcome == "promoted":
        metrics.MODEL_INFO.clear()
        metrics.MODEL_INFO.labels(result.version).set(1)
    return {
        "outcome": result.outcome,
        "version": result.version,
        "reason": result.reason,
        "cache_rows": result.cache_rows,
        **_forecast(ctx, now),
        **data,
        **_unprofile(ctx),
    }


def _unprofile(ctx: JobContext) -> Counts:
    """Every objector out of every saved model (``privacy.objection``): each way an objection
    comes in does it at once; this nightly sweep catches one recorded while a model was being
    trained (in its data, saved after the scrub) and any the store holds from before."""
    return privacy.unprofile(ctx.engine, ctx.settings).counts()


def _forecast(ctx: JobContext, now: datetime) -> Counts:
    """Store the forecasts; a forecast that cannot be made keeps the previous one stored and
    says why in the run's counts (the recommender's result stands either way)."""
    try:
        return forecasting.refresh(ctx.engine, ctx.settings, now).counts()
    except ModelError as exc:
        log.warning("forecast not stored: %s", exc)
        return {"forecast_error": str(exc)[:500]}


def _training_inputs(ctx: JobContext) -> Counts:
    with ctx.engine.connect() as connection:
        last_line, lines = queries.purchase_lines_seen(connection)
    configured = (
        ctx.settings.recommender.model_dump_json() + ctx.settings.forecast.model_dump_json()
    )
    digest = hashlib.sha256(configured.encode()).hexdigest()
    return {
        "last_purchase_line": int(last_line or 0),
        "purchase_lines": int(lines),
        "settings": digest[:16],
    }


def unchanged_since_last_training(engine: Engine, data: Counts) -> bool:
    """A live model, a stored forecast, and the last good training saw the same lines and
    settings as ``data``: the night's training would make the same model again."""
    with engine.connect() as connection:
        if registry.live(connection) is None or forecasts.current_version(connection) is None:
            return False
        previous = runs.last_ok_counts(connection, "train")
    return isinstance(previous, dict) and all(previous.get(k) == v for k, v in data.items())


def import_files(ctx: JobContext, now: datetime) -> Counts:
    report = drop_folder.import_drop_folder(ctx.engine, ctx.settings, now)
    if not report.imported:
        return report.counts()
    return report.counts() | _unprofile(ctx)  # a customers file may record objections


def snapshot_kpis(ctx: JobContext, now: datetime) -> Counts:
    return {"rows": measure_jobs.snapshot_kpis(ctx.engine, ctx.settings, now)}


def purge(ctx: JobContext, now: datetime) -> Counts:
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
