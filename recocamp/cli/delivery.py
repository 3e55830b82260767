"""Delivery commands: ``recocamp send``, ``outbox …`` and ``fake-esp``."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.table import Table

from recocamp.campaigns.files import Campaign, campaign_paths
from recocamp.campaigns.render import Renderer
from recocamp.campaigns.run import RunOptions, RunReport, run_key
from recocamp.cli.common import (
    CampaignsDir,
    TemplatesDir,
    app,
    clock,
    console,
    current_settings,
    engine_for,
    ensure_folder,
    errors_to_exit,
    flagged,
    not_to_come,
    one_campaign,
    parse_as_of,
    progress_bars,
    show,
    within,
)
from recocamp.delivery.campaign_send import send_campaign
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp import Provider, make_provider
from recocamp.domain import DeliveryReport
from recocamp.errors import ConfigError, Interrupted, Problem
from recocamp.settings import MAX_SECONDS, Settings
from recocamp.store import outbox
from recocamp.store.engine import Engine

outbox_app = typer.Typer(help="The outbox: status, deliver, retry, resume.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")
log = logging.getLogger(__name__)

WaitOption = Annotated[
    float,
    typer.Option(
        callback=within(0.0, float(MAX_SECONDS)),
        help="Seconds to wait for retries coming due before leaving them (at most a week).",
    ),
]
share = within(0.0, 1.0)  # a fault rate of the fake ESP


def _deliverer(
    settings: Settings,
    engine: Engine,
    provider: Provider,
    templates: Path,
    stopping: Callable[[], bool] = lambda: False,
) -> Deliverer:
    """The CLI's deliverer: the real clock, the templates as they are now; ``stopping``
    (Ctrl-C) ends it after the batch in flight, and cuts short a wait for retries."""
    renderer = Renderer(templates, limits=settings.templates)
    return Deliverer(
        engine,
        provider,
        settings.esp,
        clock,
        renderer=renderer,
        stopping=stopping,
        sleep=lambda seconds: _nap(seconds, stopping),
    )


def _nap(seconds: float, stopping: Callable[[], bool]) -> None:
    """``time.sleep`` that ends early once ``stopping()`` says so (within 0.2 s)."""
    end = time.monotonic() + seconds
    while not stopping() and (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.2))


@contextmanager
def _ctrl_c_stops() -> Iterator[Callable[[], bool]]:
    """Yields ``stopping()``, true once Ctrl-C was pressed: the first Ctrl-C asks the run to
    stop between chunks and batches (nothing half-written, nothing sent twice); a second
    one interrupts at once. The handler only appends to a list (no lock taken in it)."""
    pressed: list[int] = []

    def note(signum: int, _frame: FrameType | None) -> None:
        pressed.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the next one is at once
        # not console.print: it takes the console's lock, which the interrupted code may hold
        os.write(2, b"\nstopping after the batch in flight (Ctrl-C again: at once)\n")

    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, note)
    try:
        yield lambda: bool(pressed)
    finally:
        if before is not None:
            signal.signal(signal.SIGINT, before)


def _deliver(
    settings: Settings,
    engine: Engine,
    campaign: str | None,
    wait: float,
    templates: Path,
    total: int | None = None,
) -> DeliveryReport:
    provider = make_provider(settings)
    try:
        deliverer = _deliverer(settings, engine, provider, templates)
        with progress_bars() as bar:
            bar.phase("delivering", total)
            deliverer.on_progress = bar.advance
            return deliverer.drain(campaign, max_wait_s=wait)
    finally:
        provider.close()


# what a run as of a time still to come would leave (``send``, ``demo``)
FUTURE_SEND = (
    "the run's e-mails would wait in the outbox until then, and count against each of its "
    "customers' contact caps until then"
)


@app.command("send")
def send(
    campaign: str,
    as_of: Annotated[str | None, typer.Option(help="Decide as if it were this time.")] = None,
    wait: WaitOption = 30.0,
    campaigns: CampaignsDir = Path("campaigns"),
    templates: TemplatesDir = Path("templates"),
) -> None:
    """Plan, render, enqueue and deliver one campaign run (idempotent per day of the
    campaign's schedule zone)."""
    with errors_to_exit():
        settings = current_settings()
        chosen = one_campaign(settings, campaign, campaigns, templates)
        settings.require_signing_key()
        now = parse_as_of(as_of, settings.shop.zone) if as_of else clock.now()
        not_to_come(now, settings.shop.zone, "--as-of", FUTURE_SEND)
        engine = engine_for(settings)
        with _ctrl_c_stops() as stopping:
            try:
                report = send_run(settings, engine, chosen, templates, now, wait, stopping)
            except (Interrupted, KeyboardInterrupt):
                report = None
        if report is not None:
            print_run(report)
        if stopping():
            _print_stopped(engine, chosen.name, run_key(chosen.name, now, chosen.schedule.zone))
            raise typer.Exit(130)


def _print_stopped(engine: Engine, campaign: str, key: str) -> None:
    """After Ctrl-C: what of the run went out, what waits, and how it is finished."""
    with engine.connect() as connection:
        states = outbox.run_states(connection, campaign, key.rpartition("/")[2])
    gone = sum(states.get(state, 0) for state in ("sent", "delivered", "bounced"))
    waiting = states.get("queued", 0) + states.get("claimed", 0)
    console.print(
        f"stopped: run {key}: {gone:,} e-mail(s) went out, {waiting:,} still queued. "
        f"`recocamp send {campaign}` again (with the same --as-of, or the same day) enqueues "
        "the rest of the run and sends it, or `recocamp outbox deliver` sends what is "
        "queued: each e-mail once (its send key is the run's)",
        highlight=False,
    )


def send_run(
    settings: Settings,
    engine: Engine,
    campaign: Campaign,
    templates: Path,
    now: datetime,
    wait: float,
    stopping: Callable[[], bool] = lambda: False,
) -> RunReport:
    """One campaign run with two progress bars: planning and enqueueing, and delivering
    (which renders the bodies) alongside it (``send``, and ``demo`` for each campaign).
    ``stopping()`` ends it between chunks (``Interrupted``) and batches."""
    provider = make_provider(settings)
    try:
        deliverer = _deliverer(settings, engine, provider, templates, stopping)
        with progress_bars() as bar:
            rendering = bar.progress.add_task(f"{campaign.name}: planning", total=None)
            sending = bar.progress.add_task(f"{campaign.name}: delivering", total=None)
            deliverer.on_progress = lambda n: bar.progress.advance(sending, n)
            options = RunOptions(
                issued_at=clock.now(),
                max_wait_s=wait,
                on_progress=lambda n: bar.progress.advance(rendering, n),
                stopping=stopping,
            )
            return send_campaign(engine, settings, campaign, templates, now, deliverer, options)
    finally:
        provider.close()


def print_run(report: RunReport) -> None:
    """A run's decisions by reason, what it enqueued, and what the ESP was given."""
    table = Table(title=f"send {report.campaign} ({report.run_key})")
    table.add_column("")
    table.add_column("customers", justify="right")
    for reason, number in report.counts.items():
        table.add_row(f"decision: {reason}", f"{number:,}")
    table.add_row("enqueued now", f"{report.enqueued:,}")
    table.add_row("already enqueued earlier", f"{report.already_enqueued:,}")
    show(table)
    if report.delivery is not None:
        _print_delivery(report.delivery)


def _print_delivery(d: DeliveryReport) -> None:
    console.print(
        f"delivered to the ESP: {d.sent:,} sent, {d.rejected:,} rejected (suppressed), "
        f"{d.failed:,} failed, {d.cancelled:,} cancelled, {d.retried:,} retries scheduled, "
        f"{d.reconciled:,} reconciled, {d.requests:,} requests; {d.waiting:,} waiting "
        "(quiet hours or retry) for `recocamp outbox deliver` or the worker"
        + ("; why they failed: `recocamp outbox status`" if d.failed else "")
    )
    for campaign, reason in d.paused.items():
        console.print(
            flagged("paused:", "bold red", f"{campaign}: {reason} (`recocamp outbox resume`)")
        )


@outbox_app.command("status")
def outbox_status() -> None:
    """Messages per campaign and state, and paused campaigns."""
    with errors_to_exit():
        settings = current_settings()
        with engine_for(settings).connect() as connection:
            table_data = outbox.status(connection)
            pauses = outbox.paused(connection)
            failures = outbox.failures(connection)
    states = ("queued", "claimed", "sent", "delivered", "bounced", "failed", "cancelled")
    table = Table(title="outbox")
    table.add_column("campaign")
    for state in states:
        table.add_column(state, justify="right")
    for campaign, counts in sorted(table_data.items()):
        table.add_row(campaign, *(f"{counts.get(s, 0):,}" for s in states))
    show(table)
    for campaign, reason in pauses.items():
        console.print(flagged("paused:", "bold red", f"{campaign}: {reason}"))
    _print_failures(failures)


def _print_failures(failures: list[outbox.Failure]) -> None:
    """Why messages failed (a body that fails on a customer's data, a provider's refusal)
    and how to go on: the count alone left nothing to fix."""
    for failure in failures:
        text = (
            f"{failure.campaign}: {failure.messages:,} e-mail(s): {failure.error} "
            f"(e.g. customer {failure.customer_id})"
        )
        console.print(flagged("failed:", "bold red", text), soft_wrap=True)
    if failures:
        console.print(
            "`recocamp preview CAMPAIGN --customer ID --anyway` shows a template's failing "
            "line; once fixed, `recocamp outbox retry --failed` queues them again",
            highlight=False,
        )


@outbox_app.command("deliver")
def outbox_deliver(
    campaign: Annotated[str | None, typer.Option(help="Only this campaign.")] = None,
    wait: WaitOption = 0.0,
    templates: TemplatesDir = Path("templates"),
    campaigns: CampaignsDir = Path("campaigns"),
) -> None:
    """Send what is due now (after reconciling claims of crashed workers)."""
    with errors_to_exit():
        settings = current_settings()
        engine = engine_for(settings)
        if campaign is not None:
            _known_campaign(engine, campaign, campaigns)
        report = _deliver(settings, engine, campaign, wait, templates)
    _print_delivery(report)


@outbox_app.command("retry")
def outbox_retry(
    failed: Annotated[bool, typer.Option("--failed", help="Queue failed messages again.")] = False,
    campaign: Annotated[str | None, typer.Option(help="Only this campaign.")] = None,
    campaigns: CampaignsDir = Path("campaigns"),
) -> None:
    """Queue failed messages again (suppressed recipients are cancelled when claimed)."""
    if not failed:
        raise typer.BadParameter("say what to retry: --failed", param_hint="--failed")
    with errors_to_exit():
        settings = current_settings()
        engine = engine_for(settings)
        if campaign is not None:
            _known_campaign(engine, campaign, campaigns)
        with engine.begin() as connection:
            number = outbox.retry_failed(connection, clock.now(), campaign)
    console.print(f"{number:,} failed message(s) queued again; `recocamp outbox deliver` sends")


@outbox_app.command("pause")
def outbox_pause(
    campaign: str,
    reason: Annotated[
        str, typer.Option(help="Why, shown by `outbox status` (at most 200 characters).")
    ] = "paused by hand",
    campaigns: CampaignsDir = Path("campaigns"),
) -> None:
    """Hold back a campaign's waiting e-mails until `outbox resume` (a wrong price or link
    found after the run queued them): nothing of it is delivered meanwhile, by any worker."""
    with errors_to_exit():
        problem = pause_reason_problem(reason)
        if problem is not None:
            raise typer.BadParameter(problem, param_hint="--reason")
        settings = current_settings()
        engine = engine_for(settings)
        _known_campaign(engine, campaign, campaigns)
        with engine.begin() as connection:
            paused = outbox.pause(connection, campaign, reason, clock.now())
            waiting = outbox.status(connection).get(campaign, {})
    held = waiting.get("queued", 0) + waiting.get("claimed", 0)
    said = "paused" if paused else "was paused already (its reason kept)"
    console.print(
        f"{campaign}: {said}; {held:,} e-mail(s) wait (`recocamp outbox resume {campaign}`)"
    )


def pause_reason_problem(reason: str) -> str | None:
    """What is wrong with a pause's reason, None when nothing: it is shown on every
    `outbox status`, so one printable line of at most 200 characters."""
    if not reason.strip():
        return "say why, or leave the option out"
    if len(reason) > PAUSE_REASON_MAX:
        return f"{len(reason):,} characters, at most {PAUSE_REASON_MAX}"
    if not reason.isprintable():
        return "one line of printable characters (no control characters)"
    return None


PAUSE_REASON_MAX = 200


@outbox_app.command("resume")
def outbox_resume(campaign: str, campaigns: CampaignsDir = Path("campaigns")) -> None:
    """Let a campaign paused by its error rate deliver again."""
    with errors_to_exit():
        settings = current_settings()
        engine = engine_for(settings)
        _known_campaign(engine, campaign, campaigns)
        with engine.begin() as connection:
            resumed = outbox.resume(connection, campaign)
    console.print(f"{campaign}: {'resumed' if resumed else 'was not paused'}")


def _known_campaign(engine: Engine, name: str, campaigns: Path) -> None:
    """An outbox command's campaign is a campaign file's, or one the outbox still holds mail
    or a pause of (its file since removed); else a ConfigError naming those that exist (exit
    2): a typo must not say "was not paused" or deliver nothing, with exit 0."""
    with engine.connect() as connection:
        held = set(outbox.status(connection)) | set(outbox.paused(connection))
    files = {path.stem for path in campaign_paths(campaigns)} if campaigns.is_dir() else set()
    if name in files | held:
        return
    known = ", ".join(sorted(files | held)) or "none"
    raise ConfigError(campaigns / f"{name}.toml", [Problem(f"no such campaign (known: {known})")])


def _webhook_url(value: str | None) -> str | None:
    """``--webhook-url``: an http(s) URL with a host, or exit 2 naming it."""
    from recocamp.delivery.esp.fake_server import webhook_url_problem

    wrong = webhook_url_problem(value) if value is not None else None
    if wrong:
        raise typer.BadParameter(wrong)
    return value


@app.command("fake-esp")
def fake_esp(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(callback=within(1, 65535), help="Port.")] = 8025,
    data_dir: Annotated[Path | None, typer.Option(help="Also store messages here.")] = None,
    webhook_url: Annotated[
        str | None,
        typer.Option(callback=_webhook_url, help="Where to post webhooks (an http(s) URL)."),
    ] = None,
    rate_429: Annotated[
        float, typer.Option(callback=share, help="Share of requests answered 429 (0 to 1).")
    ] = 0.0,
    rate_5xx: Annotated[
        float, typer.Option(callback=share, help="Share of requests answered 500 (0 to 1).")
    ] = 0.0,
    rate_drop: Annotated[
        float, typer.Option(callback=share, help="Share accepted but never answered (0 to 1).")
    ] = 0.0,
    latency_ms: Annotated[
        float,
        typer.Option(callback=within(0.0, 60_000.0), help="Added latency per request (ms)."),
    ] = 0.0,
    token: Annotated[
        str | None,
        typer.Option(
            help="The only server token accepted (others get Postmark's 401), on the control "
            "routes (/_messages, /_faults, …) too; default: any, and those routes open.",
            envvar="RECOCAMP_FAKE_ESP_TOKEN",
        ),
    ] = None,
) -> None:
    """Run the local stand-in ESP (Postmark's API) until interrupted."""
    from recocamp.delivery.esp.fake_server import FakeEsp, Faults, serve

    if data_dir is not None:
        ensure_folder(data_dir, "--data-dir")
    faults = Faults(
        latency_ms=latency_ms, rate_429=rate_429, rate_5xx=rate_5xx, rate_drop=rate_drop
    )
    esp = FakeEsp(data_dir, faults, webhook_url, token or None, freeze_stored=True)
    console.print(f"fake ESP on http://{host}:{port} (GET /_stats)")
    if not token and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(
            f"warning: no --token: anyone who reaches {host}:{port} can read every message "
            "(addresses, signed links) at /_messages, and wipe or wedge the fake ESP"
        )
    serve(esp, host, port)
