"""A SIGHUP while the worker starts (a reload asked as the service comes up: ``systemctl
reload`` after a deploy, a config tool) is a reload like any other: before, the worker
installed its handlers only after checking every campaign file and template, which takes
seconds (tens with slow templates), and a SIGHUP meanwhile ended the process by the
signal's default action, nothing recorded, the supervisor seeing a crash."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.worker.test_worker import sqlite_shop
from tests.worker_shop import environment, wait_for

# the worker as ``python -m recocamp worker``, but a SIGHUP reaches it while it checks its
# campaign files (sent by the process to itself at the start of the check: no timing luck)
HUP_DURING_CHECK = """
import os, signal
from recocamp.worker import process
check = process.Worker.load
def load(self):
    os.kill(os.getpid(), signal.SIGHUP)
    return check(self)
process.Worker.load = load
from recocamp.cli import app
app(prog_name="recocamp", args=["worker"])
"""


def test_a_sighup_while_the_worker_starts_is_a_reload(tmp_path: Path) -> None:
    shop = sqlite_shop(tmp_path)
    log = shop / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-c", HUP_DURING_CHECK],
            cwd=shop,
            env=environment(shop),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: worker.poll() is not None or "reloaded 1 campaign" in log.read_text())
        assert worker.poll() is None, log.read_text()  # -1: killed by the SIGHUP
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0, log.read_text()
    finally:
        worker.kill()
