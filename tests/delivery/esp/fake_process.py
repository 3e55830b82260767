"""``recocamp fake-esp`` started as its own process, as a user starts it, for the tests that
talk to it over real HTTP (Postmark's client, the control routes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(token: str, *options: str) -> tuple[subprocess.Popen[bytes], str]:
    """``recocamp fake-esp --token TOKEN …`` on a free loopback port, once it answers."""
    port = free_port()
    command = [sys.executable, "-m", "recocamp", "fake-esp", "--port", str(port)]
    process = subprocess.Popen(
        [*command, "--token", token, *options],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/_stats")
            return process, url
        except httpx.TransportError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError("the fake ESP did not start") from None
            time.sleep(0.1)
