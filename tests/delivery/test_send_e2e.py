"""End to end with real servers: the fake ESP over HTTP, the API over HTTP, the CLI.

What is proven here is what a shop owner cares about: every e-mail arrives exactly once
(counted by send key at the ESP) under injected 429s, 5xx and lost answers, and after the
sending process is killed with SIGKILL; one-click unsubscribe works without cookies and
refuses a tampered token; a bounce webhook keeps the address out of the next run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from recocamp.api.app import create_app
from recocamp.cli import app
from recocamp.clock import SystemClock
from recocamp.delivery.esp.fake_server import FakeEsp, Faults, running
from recocamp.delivery.esp.fake_server import create_app as create_fake
from recocamp.settings import load_settings
from recocamp.store.engine import make_engine
from recocamp.store.schema import outbox
from recocamp.tokens import provider_key

ROOT = Path(__file__).resolve().parents[2]
AS_OF = "2011-12-15T10:00:00"
runner = CliRunner()


def settings_text(esp_url: str, api_url: str = "http://127.0.0.1:1", timeout_s: float = 1.0) -> str:
    return (
        'database_url = "sqlite:///shop.db"\n'
        "[demo]\nsynthetic_customers = 150\nsynthetic_items = 80\nsynthetic_days = 120\n"
        'online_retail_path = "missing.csv.gz"\n'
        f'[esp]\nprovider = "postmark"\nbase_url = "{esp_url}"\nbatch_size = 5\n'
        f"timeout_s = {timeout_s}\nretry_base_s = 0.05\nretry_max_s = 0.5\nmax_attempts = 30\n"
        "pause_error_rate = 0.9\nrate_limit_per_s = 1000\n"
        f'[api]\npublic_url = "{api_url}"\n'
    )


@pytest.fixture
def shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", "test-signing-key")
    monkeypatch.setenv("RECOCAMP_ESP_TOKEN", "test-token")
    monkeypatch.setenv("RECOCAMP_WEBHOOK_SECRET", "hook-secret")
    shutil.copytree(ROOT / "campaigns", tmp_path / "campaigns")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    (tmp_path / "settings.toml").write_text(settings_text("http://127.0.0.1:1"))
    assert runner.invoke(app, ["demo-data"]).exit_code == 0
    return tmp_path


@pytest.fixture
def esp() -> Iterator[tuple[FakeEsp, str]]:
    fake = FakeEsp(token="test-token")
    with running(create_fake(fake)) as url:
        yield fake, url


def outbox_counts() -> dict[str, int]:
    result = runner.invoke(app, ["outbox", "status"])
    assert result.exit_code == 0, result.output
    line = next(row for row in result.stdout.splitlines() if "cross_sell" in row)
    numbers = [int(cell.strip().replace(",", "")) for cell in line.split("│")[2:-1]]
    names = ("queued", "claimed", "sent", "delivered", "bounced", "failed", "cancelled")
    return dict(zip(names, numbers, strict=True))


def plan(as_of: str) -> dict[str, str]:
    result = runner.invoke(app, ["plan", "cross_sell", "--as-of", as_of, "--format", "json"])
    assert result.exit_code == 0, result.output
    return {d["customer_id"]: d["reason"] for d in json.loads(result.stdout)["decisions"]}


def test_exactly_once_under_429_5xx_and_lost_answers(shop: Path, esp: tuple[FakeEsp, str]) -> None:
    fake, url = esp
    fake.set_faults(
        Faults(
            rate_429=0.15, rate_5xx=0.15, rate_drop=0.15, drop_stall_s=3, retry_after_s=0.05, seed=3
        )
    )
    (shop / "settings.toml").write_text(settings_text(url))
    result = runner.invoke(app, ["send", "cross_sell", "--as-of", AS_OF, "--wait", "60"])
    assert result.exit_code == 0, result.output
    counts = outbox_counts()
    stats = fake.stats()
    assert counts["sent"] > 10 and counts["queued"] == counts["claimed"] == counts["failed"] == 0
    assert stats == {
        "received": counts["sent"],
        "unique_send_keys": counts["sent"],
        "duplicates": 0,
        "without_send_key": 0,
    }
    again = runner.invoke(app, ["send", "cross_sell", "--as-of", AS_OF, "--wait", "0"])
    assert again.exit_code == 0 and fake.stats()["received"] == counts["sent"]


def wait_for(predicate: Callable[[], object], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_sender_killed_mid_send_resumes_without_duplicates_or_gaps(
    shop: Path, esp: tuple[FakeEsp, str]
) -> None:
    fake, url = esp
    # the ESP stores the first batch but its answer never comes: the worker dies waiting
    fake.set_faults(Faults(rate_drop=1.0, drop_stall_s=60))
    (shop / "settings.toml").write_text(settings_text(url, timeout_s=50.0))
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = (shop / "sender.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "recocamp", "send", "cross_sell", "--as-of", AS_OF],
        cwd=shop,
        env=environment,
        stdout=log,
        stderr=log,
    )
    try:
        wait_for(lambda: fake.stats()["received"] >= 5 or process.poll() is not None)
        assert process.poll() is None, (shop / "sender.log").read_text()
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert outbox_counts()["claimed"] == 5  # the batch in flight when it died
    fake.set_faults(Faults())
    result = runner.invoke(app, ["outbox", "deliver"])
    assert result.exit_code == 0, result.output
    assert "5 reconciled" in result.stdout
    counts = outbox_counts()
    assert counts["queued"] == counts["claimed"] == 0 and counts["sent"] > 5
    assert fake.stats() == {
        "received": counts["sent"],
        "unique_send_keys": counts["sent"],
        "duplicates": 0,
        "without_send_key": 0,
    }


def test_one_click_unsubscribe_and_bounce_webhook_reach_the_next_run(
    shop: Path, esp: tuple[FakeEsp, str]
) -> None:
    fake, esp_url = esp
    settings = load_settings(shop / "settings.toml")
    engine = make_engine(settings.database_url)
    with running(create_app(settings, engine, SystemClock())) as api_url:
        (shop / "settings.toml").write_text(settings_text(esp_url, api_url))
        fake.webhook_url = api_url.replace("://", "://postmark:hook-secret@") + (
            "/webhooks/postmark"
        )
        assert runner.invoke(app, ["send", "cross_sell", "--as-of", AS_OF]).exit_code == 0
        first, second = fake.messages[0], fake.messages[1]
        header = first["Headers"]["List-Unsubscribe"]
        assert first["Headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        link = header.split(",")[0].strip("<> ")
        assert link.startswith(f"{api_url}/u/") and header == f"<{link}>"  # no mailto: none set
        tampered = link[:-3] + ("AAA" if not link.endswith("AAA") else "BBB")
        with httpx.Client() as client:
            assert client.post(tampered, data={"List-Unsubscribe": "One-Click"}).status_code == 400
            done = client.post(link, data={"List-Unsubscribe": "One-Click"})
            assert done.status_code == 200 and not done.cookies
            bounced = client.post(
                f"{esp_url}/_webhooks/bounce",
                json={"message_id": second["MessageID"]},
                headers={"X-Postmark-Server-Token": "test-token"},  # its --token guards /_…
            )
            assert bounced.json()["status"] == 200, bounced.text
    with engine.connect() as connection:  # the ESP knows no customer id: the outbox does
        rows = connection.execute(sa.select(outbox.c.provider_message_id, outbox.c.send_key))
        send_keys = {message_id: key for message_id, key in rows}
    engine.dispose()
    key = settings.signing_key_bytes()
    for message in fake.messages:  # header and metadata: the send key's keyed digest
        send_key = send_keys[message["MessageID"]]
        digest = provider_key(key, send_key)
        assert message["Headers"]["X-Recocamp-Send-Key"] == digest == message["send_key"]
        assert message["Metadata"]["send_key"] == digest
    reasons = plan("2011-12-16T10:00:00")
    assert reasons[send_keys[first["MessageID"]].split("/")[1]] == "unsubscribed"
    assert reasons[send_keys[second["MessageID"]].split("/")[1]] == "suppressed"
    assert outbox_counts()["bounced"] == 1


def test_failed_e_mails_say_why_and_what_to_do(shop: Path, esp: tuple[FakeEsp, str]) -> None:
    """A body that fails on a customer's data fails that e-mail (README: ``plan`` renders
    subjects only). ``send`` said "N failed" and nothing more: the reason sat in the outbox
    where no command showed it. The summary now points at ``outbox status``, which lists the
    failures per campaign and error with a customer to ``preview``."""
    _, url = esp
    (shop / "settings.toml").write_text(settings_text(url))
    html = shop / "templates" / "cross_sell.html"
    html.write_text(
        html.read_text().replace(  # the sample customer (check's render) passes, others fail
            "{% endblock %}",
            '{% if customer.id != "12748" %}{{ customer.first_name|number }}{% endif %}'
            "{% endblock %}",
        )
    )
    result = runner.invoke(app, ["send", "cross_sell", "--as-of", AS_OF], terminal_width=300)
    assert result.exit_code == 0, result.output
    failed = outbox_counts()["failed"]
    assert failed > 0
    assert "why they failed: `recocamp outbox status`" in " ".join(result.stdout.split())
    status = runner.invoke(app, ["outbox", "status"], terminal_width=300)
    assert status.exit_code == 0, status.output
    lines = [line for line in status.stdout.splitlines() if line.startswith("failed:")]
    assert len(lines) == 1, status.stdout
    where = "template cross_sell.html: line 6: fails to render: TypeError: the number filter"
    assert f"failed: cross_sell: {failed:,} e-mail(s): {where}" in lines[0]  # the edited line
    assert "(e.g. customer " in lines[0]
    assert "@" not in status.stdout
    hint = " ".join(status.stdout.split())
    assert "recocamp preview CAMPAIGN --customer ID --anyway" in hint
    assert "recocamp outbox retry --failed" in hint
