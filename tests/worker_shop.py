"""A small shop whose orders are recent *now*, for tests of the worker (which runs on the
real clock): customers with consent and orders in the last weeks, a few items, one campaign
that mails everyone who ordered in the last 60 days, and settings for a test worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import sqlalchemy as sa

from recocamp.data.ingest import Importer
from recocamp.data.sources.csv import write_customers, write_items, write_purchases
from recocamp.domain import ConsentBasis, Customer, Item, Purchase
from recocamp.store.engine import make_engine, upgrade

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = """name = "everyone"
description = "test: everyone who ordered in the last 60 days"
legal_basis = ["double_opt_in"]
holdout_percent = 0
[schedule]
cron = "0 9 * * THU"
time_zone = "Europe/Berlin"
[audience]
lapsed_days = [0, 60]
[offer]
mode = "mixed"
items = 2
[template]
subject = { de = "Für Sie", en = "For you" }
html = "cross_sell.html"
text = "cross_sell.txt"
"""


def write_shop(directory: Path, customers: int, now: datetime) -> dict[str, Path]:
    people = [
        Customer(
            id=f"w{n}",
            email=f"w{n}@example.test",
            first_name=f"N{n}",
            consent_basis=ConsentBasis.DOUBLE_OPT_IN,
            consent_at=now - timedelta(days=200),
        )
        for n in range(customers)
    ]
    items = [
        Item(id=f"i{n}", title=f"ITEM {n}", category="other", price=2.0 + n) for n in range(12)
    ]
    lines = [
        Purchase(
            order_id=f"o{n}",
            line_no=k,
            customer_id=f"w{n}",
            item_id=f"i{(n + 5 * k) % 12}",
            quantity=1,
            unit_price=3.0,
            ordered_at=now - timedelta(days=1 + n % 20),
        )
        for n in range(customers)
        for k in range(2)
    ]
    paths = {
        "customers": directory / "customers.csv",
        "items": directory / "items.csv",
        "purchases": directory / "purchases.csv",
    }
    write_customers(paths["customers"], people)
    write_items(paths["items"], items)
    write_purchases(paths["purchases"], lines)
    return paths


def settings_text(db_url: str, esp_url: str, **worker: object) -> str:
    options = {
        "leader_poll_s": 0.5,
        "deliver_every_s": 0.5,
        "metrics_port": 0,
        "shutdown_timeout_s": 20,
        **worker,
    }
    return (
        f'database_url = "{db_url}"\n'
        '[shop]\ntime_zone = "Europe/Berlin"\n'
        "[caps]\nquiet_hours_start = 00:00:00\nquiet_hours_end = 00:00:00\n"
        f'[esp]\nprovider = "postmark"\nbase_url = "{esp_url}"\nbatch_size = 5\n'
        "retry_base_s = 0.05\nretry_max_s = 0.5\nmax_attempts = 30\nrate_limit_per_s = 1000\n"
        "timeout_s = 5\n"
        "[worker]\n" + "".join(f"{k} = {v!r}\n" for k, v in options.items())
    )


CUSTOMERS = 60  # a shop's customers unless a test says otherwise


def make_shop(
    directory: Path, db_url: str, esp_url: str, customers: int = CUSTOMERS, **worker: object
) -> Path:
    """A shop directory (settings, campaigns, templates) and its filled database."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "campaigns").mkdir(exist_ok=True)
    (directory / "campaigns" / "everyone.toml").write_text(CAMPAIGN)
    shutil.copytree(ROOT / "templates", directory / "templates", dirs_exist_ok=True)
    (directory / "settings.toml").write_text(settings_text(db_url, esp_url, **worker))
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        now = datetime.now(UTC)
        paths = write_shop(directory / "data", customers, now)
        importer = Importer(engine, zone=UTC, now=now)
        importer.customers(paths["customers"])
        importer.items(paths["items"])
        importer.purchases(paths["purchases"])
    finally:
        engine.dispose()
    return directory


def environment(directory: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECOCAMP_")}
    return env | {
        "RECOCAMP_SETTINGS": str(directory / "settings.toml"),
        "RECOCAMP_SIGNING_KEY": "worker-test-key",
        "RECOCAMP_ESP_TOKEN": "test-token",
        "PYTHONUNBUFFERED": "1",
    }


def start_worker(directory: Path, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """``recocamp worker`` as a real process in the shop directory."""
    path = log or directory / f"worker-{len(list(directory.glob('worker-*.log')))}.log"
    command = [sys.executable, "-m", "recocamp", "worker", *args]
    with path.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            command, cwd=directory, env=environment(directory), stdout=out, stderr=subprocess.STDOUT
        )


def recocamp(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "recocamp", *args],
        cwd=directory,
        env=environment(directory),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


T = TypeVar("T")


def wait_for(condition: Callable[[], T], seconds: float = 60) -> T:
    """Poll ``condition`` until it returns something true (returned), or fail the test."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError("timed out")


def scalar(engine: sa.Engine, query: str) -> object:
    with engine.connect() as connection:
        return connection.execute(sa.text(query)).scalar()


def scalar_int(engine: sa.Engine, query: str) -> int:
    """``scalar`` for a ``count(*)``: an int to compare with ``<``."""
    value = scalar(engine, query)
    assert isinstance(value, int), (query, value)
    return value


def scalar_text(engine: sa.Engine, query: str) -> str:
    """``scalar`` for a text value (SQLite returns a timestamp read by ``sa.text`` as text:
    ISO strings of one format compare as their instants)."""
    value = scalar(engine, query)
    assert isinstance(value, str), (query, value)
    return value
