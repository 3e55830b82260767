"""The HTTP protocol ``recocamp serve`` runs (``api.protocol``): a request is stamped as its
head is parsed, after its bytes were read and before its task starts, and the app keeps that
stamp as the time the offer cache's freshness rule compares with its last look at the store."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import uvicorn
from starlette.types import Message, Receive, Scope, Send
from typer.testing import CliRunner
from uvicorn.importer import import_from_string
from uvicorn.server import ServerState

from recocamp.api import lean
from recocamp.api.app import HttpMetrics
from recocamp.api.protocol import HTTP, StampedHttpTools
from recocamp.cli import app as cli

PIPELINED = b"GET /a HTTP/1.1\r\nHost: shop\r\n\r\nGET /b HTTP/1.1\r\nHost: shop\r\n\r\n"


class Transport(asyncio.Transport):
    """A connection's far end as the protocol sees it: what it writes is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def test_serve_runs_the_stamping_protocol(
    cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``recocamp serve`` hands uvicorn this protocol (by import string: each worker process
    imports it)."""
    ran: dict[str, object] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **options: ran.update(options))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    result = cli_store.invoke(cli, ["serve", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert import_from_string(ran["http"]) is StampedHttpTools


def test_a_request_is_stamped_as_it_is_parsed_and_the_app_keeps_the_stamp() -> None:
    """Two pipelined requests read at once: both are stamped while the bytes are parsed, the
    second before the first one's task even starts; each task sees its own stamp."""
    seen: list[tuple[float, float]] = []  # (the scope's stamp, when the task started)

    async def shop(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope[lean.ENTERED], time.perf_counter()))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def run() -> tuple[float, float, bytes]:
        config = uvicorn.Config(HttpMetrics(shop), http=HTTP, lifespan="off")
        config.load()
        protocol = StampedHttpTools(config, ServerState(), {}, asyncio.get_running_loop())
        transport = Transport()
        protocol.connection_made(transport)
        before = time.perf_counter()
        protocol.data_received(PIPELINED)
        after = time.perf_counter()
        for _ in range(1000):  # a few passes of the loop answer both
            if len(seen) == 2 and transport.written.count(b"HTTP/1.1 200") == 2:
                break
            await asyncio.sleep(0)
        protocol.connection_lost(None)
        return before, after, bytes(transport.written)

    before, after, written = asyncio.run(run())
    assert written.count(b"HTTP/1.1 200") == 2
    (first, first_started), (second, second_started) = seen
    assert before <= first <= second <= after  # while the bytes read were parsed
    assert second < first_started < second_started  # before either task started


def test_without_the_protocol_the_app_stamps_a_request_as_it_enters() -> None:
    """Test clients and other servers: the app's own time, as before."""
    stamps: list[float] = []

    async def shop(scope: Scope, receive: Receive, send: Send) -> None:
        stamps.append(scope[lean.ENTERED])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def run() -> None:
        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            pass

        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        await HttpMetrics(shop)(scope, receive, send)

    before = time.perf_counter()
    asyncio.run(run())
    assert before <= stamps[0] <= time.perf_counter()
