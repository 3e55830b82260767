"""Ctrl-C during ``recocamp send``: it stops between batches, says what went out and what
waits, and a second ``send`` (or ``outbox deliver``) sends the rest, each e-mail once."""

from __future__ import annotations

import os
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


def _send_stopped_by_ctrl_c(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeEsp(token="test-token")
    with running(create_app(fake)) as url:
        shop = make_shop(tmp_path / "shop", f"sqlite:///{tmp_path / 'shop' / 'shop.db'}", url)
        monkeypatch.chdir(shop)
        for name, value in environment(shop).items():
            monkeypatch.setenv(name, value)
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
