"""Ctrl-C during ``recocamp send``: it stops between batches, says what went out and what
waits, and a second ``send`` (or ``outbox deliver``) sends the rest, each e-mail once."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recocamp.cli import app
from recocamp.delivery.esp import postmark
from recocamp.delivery.esp.fake_server import FakeEsp, create_app, running
from recocamp.domain import OutgoingEmail, SendResult
from tests.worker_shop import environment, make_shop

runner = CliRunner()


def test_ctrl_c_stops_send_between_batches_and_says_how_to_finish_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # as in a terminal, whatever this test runs under (a background job ignores SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _send_stopped_by_ctrl_c(tmp_path, monkeypatch)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_names_the_run_of_the_campaigns_own_day_in_another_zone_than_the_shops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's key is the day in its schedule's zone (``run.run_key``); the message after
    Ctrl-C took the shop's, and for a campaign scheduled in another zone named a run of
    another day, of which nothing went out and nothing waits ("0 e-mail(s) went out, 0
    still queued"). Kiritimati (UTC+14) and Pago Pago (UTC-11) are never on the same day."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        said = _send_stopped_by_ctrl_c(
            tmp_path, monkeypatch, shop_zone="Pacific/Kiritimati", zone="Pacific/Pago_Pago"
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    started = re.search(r"send everyone \((everyone/[0-9-]+)\)", said)
    assert started is not None, said  # the run's own key, as the run reported it
    assert f"stopped: run {started[1]}: 5 e-mail(s) went out, " in said


def _send_stopped_by_ctrl_c(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shop_zone: str | None = None,
    zone: str | None = None,
) -> str:
    fake = FakeEsp(token="test-token")
    with running(create_app(fake)) as url:
        shop = make_shop(tmp_path / "shop", f"sqlite:///{tmp_path / 'shop' / 'shop.db'}", url)
        monkeypatch.chdir(shop)
        for name, value in environment(shop).items():
            monkeypatch.setenv(name, value)
        if shop_zone is not None:
            monkeypatch.setenv("RECOCAMP_SHOP__TIME_ZONE", shop_zone)
        if zone is not None:
            path = shop / "campaigns" / "everyone.toml"
            path.write_text(path.read_text().replace('"Europe/Berlin"', f'"{zone}"'))
        real = postmark.Postmark.send_batch
        batches: list[int] = []

        def first_then_ctrl_c(
            self: postmark.Postmark, messages: Sequence[OutgoingEmail]
        ) -> list[SendResult]:
            results = real(self, messages)
            batches.append(len(messages))
            if len(batches) == 1:  # Ctrl-C while the first batch is in flight
                handler = signal.getsignal(signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
                deadline = time.monotonic() + 30  # until the main thread has run the handler
                while signal.getsignal(signal.SIGINT) is handler and time.monotonic() < deadline:
                    time.sleep(0.01)
            return results

        monkeypatch.setattr(postmark.Postmark, "send_batch", first_then_ctrl_c)
        stopped = runner.invoke(app, ["send", "everyone"], terminal_width=300)
        assert stopped.exit_code == 130, stopped.output
        assert batches == [5]  # nothing after the batch in flight
        said = " ".join(stopped.stdout.split())
        assert "stopped: run everyone/" in said
        assert ": 5 e-mail(s) went out, " in said and "still queued" in said
        assert "`recocamp send everyone` again" in said and "`recocamp outbox deliver`" in said
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back

        monkeypatch.setattr(postmark.Postmark, "send_batch", real)
        again = runner.invoke(app, ["send", "everyone"], terminal_width=300)
        assert again.exit_code == 0, again.output
        rest = runner.invoke(app, ["outbox", "deliver"], terminal_width=300)
        assert rest.exit_code == 0, rest.output
    assert fake.stats() == {
        "received": 60,
        "unique_send_keys": 60,
        "duplicates": 0,
        "without_send_key": 0,
    }
    return said
