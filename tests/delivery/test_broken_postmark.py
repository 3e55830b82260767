"""A deliverer against a Postmark that answers wrongly (a proxy in front of it, a broken
release): a local HTTP server, the real Postmark provider, real SQLite, a fixed clock.

Exactly once holds only if an answer that is not Postmark's is never read as "not sent".
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from recocamp.clock import FixedClock
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp.postmark import Postmark
from recocamp.errors import DeliveryError
from tests.conftest import NOW
from tests.delivery.test_deliver import ESP, Sleeper, fill, states

Search = Callable[[], tuple[int, str, bytes]]  # → status, content type, body


class BrokenPostmark:
    """Takes every batch; drops the connection instead of answering the first one (the
    answer was lost: a timeout, a proxy's reset) and answers the search with ``search``."""

    def __init__(self, search: Search) -> None:
        self.batches: list[list[str]] = []  # the send keys of each batch it took
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                batch = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.batches.append([m["Metadata"]["send_key"] for m in batch])
                if len(owner.batches) == 1:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(2)  # taken, never answered
                    return
                answer = [{"ErrorCode": 0, "Message": "OK", "MessageID": f"id-{n}"} for n in batch]
                self._answer(200, "application/json", orjson.dumps(answer))

            def do_GET(self) -> None:
                self._answer(*search())

            def _answer(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def broken() -> Iterator[Callable[[Search], BrokenPostmark]]:
    made: list[BrokenPostmark] = []

    def make(search: Search) -> BrokenPostmark:
        made.append(BrokenPostmark(search))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _json(body: Any) -> tuple[int, str, bytes]:
    return 200, "application/json", orjson.dumps(body)


SEARCH_ANSWERS: dict[str, Search] = {
    "maintenance page": lambda: (200, "text/html", b"<html>back soon</html>"),
    "empty object": lambda: _json({}),
    "Messages not a list": lambda: _json({"TotalCount": 1, "Messages": {"0": {}}}),
    "message without id": lambda: _json({"TotalCount": 1, "Messages": [{"Status": "Sent"}]}),
    "redirect": lambda: (302, "text/html", b""),
}


@pytest.mark.parametrize("search", SEARCH_ANSWERS.values(), ids=SEARCH_ANSWERS.keys())
def test_a_search_answer_that_is_not_postmarks_sends_nothing_again(
    engine: sa.Engine, broken: Callable[[Search], BrokenPostmark], search: Search
) -> None:
    """The batch's answer was lost, so the deliverer asks Postmark which messages it took;
    an answer without Postmark's ``Messages`` list was read as "none of them", and the
    whole batch, which Postmark had taken, went out a second time."""
    fill(engine, 3)
    esp = broken(search)
    clock = FixedClock(NOW)
    provider = Postmark(esp.url, "token", "shop@example.test", timeout_s=5)
    deliverer = Deliverer(
        engine, provider, ESP, clock, sleep=Sleeper(clock), rng=random.Random(1), worker="w1"
    )
    with pytest.raises(DeliveryError, match="search"):
        deliverer.drain(max_wait_s=600)
    provider.close()
    assert len(esp.batches) == 1  # nothing sent twice
    assert states(engine) == Counter({"claimed": 3})  # left for a lookup that can answer


def test_postmarks_own_none_found_sends_the_batch_again(
    engine: sa.Engine, broken: Callable[[Search], BrokenPostmark]
) -> None:
    """The other side: Postmark's answer listing no message means it took none of them."""
    fill(engine, 3)
    esp = broken(lambda: _json({"TotalCount": 0, "Messages": []}))
    clock = FixedClock(NOW)
    provider = Postmark(esp.url, "token", "shop@example.test", timeout_s=5)
    deliverer = Deliverer(
        engine, provider, ESP, clock, sleep=Sleeper(clock), rng=random.Random(1), worker="w1"
    )
    report = deliverer.drain(max_wait_s=600)
    provider.close()
    taken = Counter(key for batch in esp.batches for key in batch)
    assert report.sent == 3 and sorted(taken.values()) == [2, 2, 2]  # lost once, sent again
    assert states(engine) == Counter({"sent": 3})
