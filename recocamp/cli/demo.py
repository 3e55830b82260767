"""The demo: ``recocamp demo``, and the demo shop it shares with ``recocamp worker --demo``
(the database built when empty, the settings that send through the in-process fake ESP)."""

from __future__ import annotations

from pathlib import Path
from secrets import token_urlsafe
from typing import Annotated

import typer
from pydantic import SecretStr

from recocamp.campaigns.check import campaign_problems
from recocamp.cli.common import (
    CampaignsDir,
    TemplatesDir,
    app,
    console,
    current_settings,
    engine_for,
    ensure_folder,
    errors_to_exit,
    not_to_come,
    parse_as_of,
    write_output,
)
from recocamp.cli.data import build_demo_shop
from recocamp.cli.delivery import FUTURE_SEND, print_run, send_run
from recocamp.cli.recommender import train_and_show
from recocamp.errors import ConfigError, Problem
from recocamp.settings import Settings
from recocamp.store import queries, registry
from recocamp.store.engine import Engine, upgrade

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
    from recocamp.delivery.esp.fake_server import FakeEsp, create_app, running

    with errors_to_exit():
        settings = current_settings()
    now = parse_as_of(as_of, settings.shop.zone)  # bad input: before the shop is built
    not_to_come(now, settings.shop.zone, "--as-of", FUTURE_SEND)
    ensure_folder(demo_dir, "--demo-dir")
    with errors_to_exit():
        engine, untrained = demo_shop(settings, demo_dir)
        if untrained:
            train_and_show(settings, as_of, None)
        loaded, failures = campaign_problems(settings, campaigns, templates)
        if failures:
            raise failures[0]
        fake = FakeEsp(data_dir=demo_dir / "fake-esp")
        with running(create_app(fake)) as url:
            local = demo_settings(settings, url, demo_dir)
            for campaign in loaded:
                print_run(send_run(local, engine, campaign, templates, now, 5.0))
        stats = fake.stats()
    console.print(
        f"fake ESP received {stats['received']:,} e-mails, {stats['unique_send_keys']:,} unique "
        f"send keys, {stats['duplicates']} duplicates; they are in {demo_dir / 'fake-esp'}"
        "/messages.jsonl"
    )


def demo_shop(settings: Settings, demo_dir: Path) -> tuple[Engine, bool]:
    """The demo shop's database, migrated, built from the data when it has no purchases;
    and whether no model is live yet (`demo` and `worker --demo` train one first)."""
    engine = engine_for(settings, migrated=False)
    upgrade(engine)
    with engine.connect() as connection:
        empty = not queries.has_purchases(connection)
    if empty:
        build_demo_shop(engine, settings, None, False, demo_dir)
    with engine.connect() as connection:
        return engine, registry.live(connection) is None


def demo_settings(settings: Settings, url: str, demo_dir: Path) -> Settings:
    """The demo's postmark provider points at the in-process fake ESP; a signing key for
    the links is made once and kept in ``demo/signing.key`` unless the environment has one."""
    key = settings.signing_key
    if key is None:
        path = demo_dir / "signing.key"
        if not path.exists():
            demo_dir.mkdir(parents=True, exist_ok=True)
            write_output(path, token_urlsafe(32), "--demo-dir", private=True)
        text = path.read_text().strip()
        if not text:  # a key anyone knows would sign every demo link (Settings refuses it)
            raise ConfigError(
                path, [Problem("is empty: delete it and a new key is made", key="signing_key")]
            )
        key = SecretStr(text)
    esp = settings.esp.model_copy(update={"provider": "postmark", "base_url": url})
    update = {"esp": esp, "esp_token": SecretStr("demo"), "signing_key": key}
    return settings.model_copy(update=update)
