"""A campaign run delivered while it is enqueued: the first e-mails go out while the rest
are still being decided (chunk by chunk, see ``campaigns.run``), by a thread or, for big
runs, by several delivering processes."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import datetime
from itertools import chain
from pathlib import Path
from typing import Any

from recocamp.campaigns import render
from recocamp.campaigns.files import Campaign
from recocamp.campaigns.run import (
    Planned,
    RunOptions,
    RunReport,
    enqueue_decisions,
    plan_run,
    projected_sends,
)
from recocamp.clock import SystemClock
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.processes import drain_in_processes
from recocamp.domain import DeliveryReport
from recocamp.settings import Settings
from recocamp.store.engine import Engine

PARALLEL_FROM = 5000  # smaller runs are delivered by a thread: starting processes costs ~1 s


def send_campaign(
    engine: Engine,
    settings: Settings,
    campaign: Campaign,
    templates: Path,
    now: datetime,
    deliverer: Deliverer,
    options: RunOptions = RunOptions(),
) -> RunReport:
    """Plan, then enqueue while the same campaign is being delivered."""
    planned = plan_run(engine, settings, campaign, now, options.run_key)
    return deliver_planned(engine, settings, campaign, templates, planned, now, deliverer, options)


def deliver_planned(
    engine: Engine,
    settings: Settings,
    campaign: Campaign,
    templates: Path,
    planned: Planned,
    now: datetime,
    deliverer: Deliverer,
    options: RunOptions = RunOptions(),
) -> RunReport:
    """Decide and enqueue ``planned`` while it is delivered: by ``deliverer`` in a thread, or,
    for a big run, by several delivering processes (``[esp] delivery_processes``), because
    rendering the bodies is the expensive part and one process renders on one core. Which of
    the two goes by the e-mails projected from the first chunk, decided before delivery
    starts (a fraction of a second); the rest is decided while the first chunks go out."""
    chunks = iter(planned.chunks(options.chunk(settings)))
    first = next(chunks, None)
    processes = delivery_processes(settings, projected_sends(first, len(planned.customers)))
    if not isinstance(deliverer.clock, SystemClock):
        processes = 1  # delivering processes run on the real clock: not for a simulated one

    def drain(producing: Callable[[], bool]) -> DeliveryReport:
        if processes > 1:  # they send at this limiter's rate: lent, so nobody else does
            renderer = deliverer.renderer or render.Renderer(templates, limits=settings.templates)
            with deliverer.limiter.lend() as rate:
                if rate is None:  # another run's processes hold the rate: this one yields
                    return deliverer.drain(campaign.name, options.max_wait_s, producing)
                return drain_in_processes(
                    engine,
                    settings,
                    renderer,
                    campaign.name,
                    processes,
                    options.max_wait_s,
                    producing,
                    deliverer.on_progress,
                    options.stopping,
                    rate,
                )
        return deliverer.drain(campaign.name, options.max_wait_s, producing)

    return while_delivering(
        drain,
        lambda: enqueue_decisions(
            engine,
            settings,
            campaign,
            templates,
            planned,
            now,
            options,
            chain([] if first is None else [first], chunks),
        ),
    )


def delivery_processes(settings: Settings, sends: int) -> int:
    """How many processes deliver a run of ``sends`` e-mails (1: a thread of this one)."""
    if sends < PARALLEL_FROM:
        return 1
    wanted = settings.esp.delivery_processes or os.cpu_count() or 1
    return max(1, min(wanted, sends // (PARALLEL_FROM // 2)))


def while_delivering(
    drain: Callable[[Callable[[], bool]], DeliveryReport], produce: Callable[[], RunReport]
) -> RunReport:
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
