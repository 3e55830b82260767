"""Delivery commands: ``send``, ``outbox …``, ``fake-esp``.

Kept apart from ``cli.py`` so each file stays readable; they register on the same app.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated

import sqlalchemy as sa
import typer
from rich.table import Table

from recocamp.campaigns.files import Campaign
from recocamp.campaigns.render import Renderer
from recocamp.campaigns.run import RunOptions, RunReport
from recocamp.cli.main import (
    CampaignsDir,
    TemplatesDir,
    _engine,
    _errors_to_exit,
    _one_campaign,
    _progress,
    _settings,
    app,
    clock,
    console,
    parse_as_of,
)
from recocamp.delivery.campaign_send import send_campaign
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp import make_provider
from recocamp.domain import DeliveryReport
from recocamp.settings import Settings
from recocamp.store import outbox

outbox_app = typer.Typer(help="The outbox: status, deliver, retry, resume.", no_args_is_help=True)
app.add_typer(outbox_app, name="outbox")
log = logging.getLogger(__name__)

WaitOption = Annotated[
    float, typer.Option(help="Seconds to wait for retries coming due before leaving them.")
]


def _deliver(settings: Settings, engine: sa.Engine, campaign: str | None, wait: float,
             templates: Path, total: int | None = None) -> DeliveryReport:  # fmt: skip
    provider = make_provider(settings)
    try:
        deliverer = Deliverer(engine, provider, settings.esp, clock,
                              renderer=Renderer(templates, limits=settings.templates))  # fmt: skip
        with _progress() as bar:
            bar.phase("delivering", total)
            deliverer.on_progress = bar.advance
            return deliverer.drain(campaign, max_wait_s=wait)
    finally:
        provider.close()


@app.command("send")
def send(
    campaign: str,
    as_of: Annotated[str | None, typer.Option(help="Decide as if it were this time.")] = None,
    wait: WaitOption = 30.0,
    campaigns: CampaignsDir = Path("campaigns"),
    templates: TemplatesDir = Path("templates"),
) -> None:
    """Plan, render, enqueue and deliver one campaign run (idempotent per shop-local day)."""

    with _errors_to_exit():
        settings = _settings()
        chosen = _one_campaign(settings, campaign, campaigns, templates)
        settings.require_signing_key()
        now = parse_as_of(as_of, settings.shop.zone) if as_of else clock.now()
        report = _send_run(settings, _engine(settings), chosen, templates, now, wait)
    _print_run(report)


def _send_run(settings: Settings, engine: sa.Engine, campaign: Campaign, templates: Path,
              now: datetime, wait: float) -> RunReport:  # fmt: skip
    """One campaign run with two progress bars: planning and enqueueing, and delivering
    (which renders the bodies) alongside it."""
    provider = make_provider(settings)
    try:
        deliverer = Deliverer(engine, provider, settings.esp, clock,
                              renderer=Renderer(templates, limits=settings.templates))  # fmt: skip
        with _progress() as bar:
            rendering = bar.progress.add_task(f"{campaign.name}: planning", total=None)
            sending = bar.progress.add_task(f"{campaign.name}: delivering", total=None)
            deliverer.on_progress = lambda n: bar.progress.advance(sending, n)
            options = RunOptions(
                issued_at=clock.now(),
                max_wait_s=wait,
                on_progress=lambda n: bar.progress.advance(rendering, n),
            )
            return send_campaign(engine, settings, campaign, templates, now, deliverer, options)
    finally:
        provider.close()


def _print_run(report: RunReport) -> None:
    table = Table(title=f"send {report.campaign} ({report.run_key})")
    table.add_column("")
    table.add_column("customers", justify="right")
    for reason, number in report.counts.items():
        table.add_row(f"decision: {reason}", f"{number:,}")
    table.add_row("enqueued now", f"{report.enqueued:,}")
    table.add_row("already enqueued earlier", f"{report.already_enqueued:,}")
    console.print(table)
    if report.delivery is not None:
        _print_delivery(report.delivery)


def _print_delivery(d: DeliveryReport) -> None:
    console.print(
        f"delivered to the ESP: {d.sent:,} sent, {d.rejected:,} rejected (suppressed), "
        f"{d.failed:,} failed, {d.cancelled:,} cancelled, {d.retried:,} retries scheduled, "
        f"{d.reconciled:,} reconciled, {d.requests:,} requests; {d.waiting:,} waiting "
        "(quiet hours or retry) for `recocamp outbox deliver` or the worker"
    )
    for campaign, reason in d.paused.items():
        console.print(f"[bold red]paused:[/] {campaign}: {reason} (`recocamp outbox resume`)")


@outbox_app.command("status")
def outbox_status() -> None:
    """Messages per campaign and state, and paused campaigns."""
    with _errors_to_exit():
        settings = _settings()
        with _engine(settings).connect() as connection:
            table_data = outbox.status(connection)
            pauses = outbox.paused(connection)
    states = ("queued", "claimed", "sent", "delivered", "bounced", "failed", "cancelled")
    table = Table(title="outbox")
    table.add_column("campaign")
    for state in states:
        table.add_column(state, justify="right")
    for campaign, counts in sorted(table_data.items()):
        table.add_row(campaign, *(f"{counts.get(s, 0):,}" for s in states))
    console.print(table)
    for campaign, reason in pauses.items():
        console.print(f"[bold red]paused:[/] {campaign}: {reason}")


@outbox_app.command("deliver")
def outbox_deliver(
    campaign: Annotated[str | None, typer.Option(help="Only this campaign.")] = None,
    wait: WaitOption = 0.0,
    templates: TemplatesDir = Path("templates"),
) -> None:
    """Send what is due now (after reconciling claims of crashed workers)."""
    with _errors_to_exit():
        settings = _settings()
        report = _deliver(settings, _engine(settings), campaign, wait, templates)
    _print_delivery(report)


@outbox_app.command("retry")
def outbox_retry(
    failed: Annotated[bool, typer.Option("--failed", help="Queue failed messages again.")] = False,
    campaign: Annotated[str | None, typer.Option(help="Only this campaign.")] = None,
) -> None:
    """Queue failed messages again (suppressed recipients are cancelled when claimed)."""
    if not failed:
        raise typer.BadParameter("say what to retry: --failed", param_hint="--failed")
    with _errors_to_exit():
        settings = _settings()
        with _engine(settings).begin() as connection:
            number = outbox.retry_failed(connection, clock.now(), campaign)
    console.print(f"{number:,} failed message(s) queued again; `recocamp outbox deliver` sends")


@outbox_app.command("resume")
def outbox_resume(campaign: str) -> None:
    """Let a campaign paused by its error rate deliver again."""
    with _errors_to_exit():
        settings = _settings()
        with _engine(settings).begin() as connection:
            resumed = outbox.resume(connection, campaign)
    console.print(f"{campaign}: {'resumed' if resumed else 'was not paused'}")


@app.command("fake-esp")
def fake_esp(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8025,
    data_dir: Annotated[Path | None, typer.Option(help="Also store messages here.")] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Where to post webhooks.")] = None,
    rate_429: Annotated[float, typer.Option(help="Share of requests answered 429.")] = 0.0,
    rate_5xx: Annotated[float, typer.Option(help="Share of requests answered 500.")] = 0.0,
    rate_drop: Annotated[float, typer.Option(help="Share accepted but never answered.")] = 0.0,
    latency_ms: Annotated[float, typer.Option(help="Added latency per request.")] = 0.0,
    token: Annotated[
        str | None,
        typer.Option(
            help="The only server token accepted (others get Postmark's 401); default: any.",
            envvar="RECOCAMP_FAKE_ESP_TOKEN",
        ),
    ] = None,
) -> None:
    """Run the local stand-in ESP (Postmark's API) until interrupted."""
    import uvicorn

    from recocamp.delivery.esp.fake_server import FakeEsp, Faults, create_app

    faults = Faults(latency_ms=latency_ms, rate_429=rate_429, rate_5xx=rate_5xx,
                    rate_drop=rate_drop)  # fmt: skip
    esp = FakeEsp(data_dir, faults, webhook_url, token or None)
    console.print(f"fake ESP on http://{host}:{port} (GET /_stats)")
    uvicorn.run(create_app(esp), host=host, port=port, log_level="warning")


DEMO_AS_OF = "2011-12-13T10:00:00"


@app.command("demo")
def demo(
    as_of: Annotated[str, typer.Option(help="Decide as if it were this time.")] = DEMO_AS_OF,
    demo_dir: Annotated[Path, typer.Option(help="Where generated files go.")] = Path("demo"),
    campaigns: CampaignsDir = Path("campaigns"),
    templates: TemplatesDir = Path("templates"),
) -> None:
    """The whole loop on the demo shop: build it, train, run every campaign through a local
    fake ESP (started in this process), and show what went out."""

    from recocamp.campaigns.check import campaign_problems
    from recocamp.cli.main import train
    from recocamp.delivery.esp.fake_server import FakeEsp, create_app, running

    with _errors_to_exit():
        settings = _settings()
        engine, untrained = _demo_shop(settings, demo_dir)
        if untrained:
            train(as_of=as_of, model=None)
        loaded, failures = campaign_problems(settings, campaigns, templates)
        if failures:
            raise failures[0]
        fake = FakeEsp(data_dir=demo_dir / "fake-esp")
        with running(create_app(fake)) as url:
            local = _demo_settings(settings, url, demo_dir)
            now = parse_as_of(as_of, settings.shop.zone)
            for campaign in loaded:
                _print_run(_send_run(local, engine, campaign, templates, now, 5.0))
        stats = fake.stats()
    console.print(
        f"fake ESP received {stats['received']:,} e-mails, {stats['unique_send_keys']:,} unique "
        f"send keys, {stats['duplicates']} duplicates; they are in {demo_dir / 'fake-esp'}"
        "/messages.jsonl"
    )


def _demo_shop(settings: Settings, demo_dir: Path) -> tuple[sa.Engine, bool]:
    """The demo shop's database, migrated, built from the data when it has no purchases;
    and whether no model is live yet (`demo` and `worker --demo` train one first)."""
    from recocamp.cli.main import demo_data
    from recocamp.store import queries, registry
    from recocamp.store.engine import upgrade
    from recocamp.store.schema import purchases

    engine = _engine(settings, migrated=False)
    upgrade(engine)
    with engine.connect() as connection:
        empty = queries.count(connection, purchases) == 0
    if empty:
        demo_data(source=None, synthetic=False, demo_dir=demo_dir)
    with engine.connect() as connection:
        return engine, registry.live(connection) is None


def _demo_settings(settings: Settings, url: str, demo_dir: Path) -> Settings:
    """The demo's postmark provider points at the in-process fake ESP; a signing key for
    the links is made once and kept in ``demo/signing.key`` unless the environment has one."""
    from secrets import token_urlsafe

    from pydantic import SecretStr

    key = settings.signing_key
    if key is None:
        path = demo_dir / "signing.key"
        if not path.exists():
            demo_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(token_urlsafe(32))
            path.chmod(0o600)
        key = SecretStr(path.read_text().strip())
    esp = settings.esp.model_copy(update={"provider": "postmark", "base_url": url})
    update = {"esp": esp, "esp_token": SecretStr("demo"), "signing_key": key}
    return settings.model_copy(update=update)
