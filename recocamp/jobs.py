"""Thin jobs: load inputs, call the pure stages, write outputs. Each one is idempotent.

``send_campaign`` = plan + record decisions + render + enqueue + deliver. Re-running the
same slot (campaign × shop-local day) adds nothing: decisions are unique per run key and
customer, e-mails per send key; a crash in the middle resumes where it stopped, because
already enqueued send keys are skipped before anything is rendered again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from recocamp import campaigns as campaign_files
from recocamp import compose, outbox, planner, render
from recocamp.campaigns import Campaign
from recocamp.deliver import Deliverer, DeliveryReport
from recocamp.domain import OutgoingEmail
from recocamp.errors import ConfigError, Problem
from recocamp.settings import Settings
from recocamp.store import views
from recocamp.store.queries import _insert
from recocamp.store.schema import decisions as decisions_table

log = logging.getLogger(__name__)
CHUNK = 1000
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


def plan_and_enqueue(engine: sa.Engine, settings: Settings, campaign: Campaign,
                     templates: Path, now: datetime, on_progress: Progress = lambda n: None,
                     issued_at: datetime | None = None) -> RunReport:  # fmt: skip
    """Decide at ``now``; link tokens carry ``issued_at`` (the real time when ``now`` is a
    simulated ``--as-of``: a token must not look 15 years old to the unsubscribe page)."""
    signing_key(settings)  # refuse before any work, not after planning
    zone = ZoneInfo(settings.shop.time_zone)
    with engine.connect() as connection:
        snapshot = views.load(connection, settings, now)
    context = planner.Context(now, snapshot.items, snapshot.popular,
                              campaign_files.caps_defaults(settings), zone)  # fmt: skip
    decided = planner.plan(campaign, snapshot.views, context)
    by_customer = {v.customer.id: v for v in snapshot.views}
    report = RunReport(campaign.name, run_key(campaign.name, now, zone), planner.counts(decided))
    return enqueue_decisions(engine, settings, campaign, templates, decided, by_customer, now,
                             report, on_progress, issued_at)  # fmt: skip


def enqueue_decisions(engine: sa.Engine, settings: Settings, campaign: Campaign,
                      templates: Path, decided: Sequence[planner.Decision],
                      by_customer: dict[str, planner.CustomerView], now: datetime,
                      report: RunReport, on_progress: Progress = lambda n: None,
                      issued_at: datetime | None = None) -> RunReport:  # fmt: skip
    """Record every decision and enqueue the e-mails of sends and deferrals, chunk by chunk
    (a crash loses at most the chunk in flight, and the re-run skips what is enqueued)."""
    key = signing_key(settings)
    renderer = render.Renderer(templates)
    period = report.run_key.rpartition("/")[2]
    for chunk in _chunks(decided):
        wanted = [d for d in chunk if d.outcome in (planner.Outcome.SEND, planner.Outcome.DEFER)]
        keys = {d.customer_id: outbox.send_key(campaign.name, d.customer_id, period)
                for d in wanted}  # fmt: skip
        with engine.connect() as connection:
            done = outbox.existing_keys(connection, campaign.name, list(keys.values()))
        emails = [  # rendered outside the write transaction: a deliverer may be draining
            _email(d, by_customer[d.customer_id], campaign, settings, renderer, key,
                   now, issued_at or now, keys[d.customer_id])
            for d in wanted if keys[d.customer_id] not in done
        ]  # fmt: skip
        with engine.begin() as connection:
            _record_decisions(connection, report.run_key, chunk, now)
            report.enqueued += outbox.enqueue(connection, emails, now)
        report.already_enqueued += len(done)
        on_progress(len(chunk))
    log.info("campaign %s run %s: %d decisions, %d enqueued, %d already enqueued",
             campaign.name, report.run_key, len(decided), report.enqueued,
             report.already_enqueued)  # fmt: skip
    return report


Queued = tuple[OutgoingEmail, str, str | None, datetime]


def _email(decision: planner.Decision, view: planner.CustomerView, campaign: Campaign,
           settings: Settings, renderer: render.Renderer, key: bytes, now: datetime,
           issued_at: datetime, send_key: str) -> Queued:  # fmt: skip
    link = compose.links(settings, key, decision.customer_id, campaign.name, issued_at)
    email = compose.compose(decision, view, campaign, settings, renderer, link, send_key)
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
                  now: datetime, deliverer: Deliverer, max_wait_s: float = 0.0,
                  on_progress: Progress = lambda n: None,
                  issued_at: datetime | None = None) -> RunReport:  # fmt: skip
    """Plan + render + enqueue, while ``deliverer`` drains the same campaign in a thread."""
    return while_delivering(deliverer, campaign.name, max_wait_s, lambda: plan_and_enqueue(
        engine, settings, campaign, templates, now, on_progress, issued_at))  # fmt: skip


def while_delivering(deliverer: Deliverer, campaign: str, max_wait_s: float,
                     produce: Callable[[], RunReport]) -> RunReport:  # fmt: skip
    """Run ``produce`` (which enqueues) while the deliverer drains: the first e-mails go out
    while the rest are still being rendered, so HTTP round trips overlap with rendering."""
    producing = threading.Event()
    producing.set()
    outcome: dict[str, Any] = {}

    def drain() -> None:
        try:
            outcome["report"] = deliverer.drain(campaign, max_wait_s, producing.is_set)
        except BaseException as exc:  # re-raised in the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=drain, name=f"deliver-{campaign}")
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
