"""``recocamp outbox pause``: the marketer's stop for a campaign whose e-mails already wait
(a wrong price or a broken link found after the run queued them). Only a campaign's own error
rate could pause it before; a campaign file disabled or deleted still let every queued e-mail
go out."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from recocamp.cli import app
from recocamp.delivery.esp.fake_server import FakeEsp, create_app, running
from tests.worker_shop import environment, make_shop

runner = CliRunner()


def test_a_paused_campaign_keeps_its_mail_until_resumed_then_sends_each_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeEsp(token="test-token")
    with running(create_app(fake)) as url:
        shop = make_shop(tmp_path / "shop", f"sqlite:///{tmp_path / 'shop' / 'shop.db'}", url)
        monkeypatch.chdir(shop)
        for name, value in environment(shop).items():
            monkeypatch.setenv(name, value)
        paused = runner.invoke(
            app, ["outbox", "pause", "everyone", "--reason", "wrong price"], terminal_width=300
        )
        assert paused.exit_code == 0, paused.output
        assert "everyone: paused; 0 e-mail(s) wait" in paused.stdout
        sent = runner.invoke(app, ["send", "everyone", "--wait", "0"], terminal_width=300)
        assert sent.exit_code == 0, sent.output
        assert fake.stats()["received"] == 0  # queued, none delivered
        status = runner.invoke(app, ["outbox", "status"], terminal_width=300)
        assert "paused: everyone: wrong price" in " ".join(status.stdout.split())
        again = runner.invoke(app, ["outbox", "pause", "everyone", "--reason", "other"])
        assert again.exit_code == 0 and "was paused already (its reason kept)" in again.stdout
        assert runner.invoke(app, ["outbox", "deliver"]).exit_code == 0
        assert fake.stats()["received"] == 0
        resumed = runner.invoke(app, ["outbox", "resume", "everyone"])
        assert resumed.exit_code == 0 and "everyone: resumed" in resumed.stdout
        delivered = runner.invoke(app, ["outbox", "deliver"], terminal_width=300)
        assert delivered.exit_code == 0, delivered.output
        stats = fake.stats()
        assert stats["received"] > 0 and stats["duplicates"] == 0


@pytest.mark.parametrize(
    ("reason", "said"),
    [
        ("", "say why"),
        ("x" * 201, "201 characters, at most 200"),
        ("wrong\nprice", "printable"),
    ],
)
def test_a_pause_reason_is_one_short_printable_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reason: str, said: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["outbox", "pause", "everyone", "--reason", reason])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert said in result.stderr and "--reason" in result.stderr


def test_an_unknown_campaign_is_named_without_the_hidden_files_beside_the_campaigns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """macOS's ``._winback.toml`` is no campaign (``files.campaign_paths``), yet the list of
    known campaigns in a typo's message named ``._winback``."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "winback.toml").write_text("")
    (tmp_path / "campaigns" / "._winback.toml").write_bytes(b"\x00\x05\x16\x07")
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["outbox", "pause", "nosuch"], terminal_width=300)
    assert result.exit_code == 2
    assert "no such campaign (known: winback)" in result.stderr
