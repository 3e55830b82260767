"""A deliverer against a Postmark that answers wrongly (a proxy in front of it, a broken
release): a local HTTP server, the real Postmark provider, real SQLite, a fixed clock.

Exactly once holds only if an answer that is not Postmark's is never read as "not sent".
"""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
import sqlalchemy as sa

from recocamp.clock import FixedClock
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp.postmark import Postmark
from recocamp.errors import DeliveryError
from recocamp.store.schema import outbox as outbox_table
from tests.conftest import NOW
from tests.delivery.test_deliver import ESP, Sleeper, fill, states
from tests.local_http import QuietHandler, serving

Search = Callable[[], tuple[int, str, bytes]]  # → status, content type, body
First = Callable[[list[str]], bytes | None]  # the first batch's keys → its answer (None: lost)


def _lost(keys: list[str]) -> bytes | None:
    return None


class BrokenPostmark:
    """Takes every batch; answers the first one with ``first`` (by default not at all: the
    connection drops, as on a timeout or a proxy's reset) and the search with ``search``
    (by default Postmark's answer for the batches it took)."""

    def __init__(self, search: Search | None = None, first: First = _lost) -> None:
        self.batches: list[list[str]] = []  # the send keys of each batch it took
        owner = self

        class Handler(QuietHandler):
            def do_POST(self) -> None:
                batch = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
                keys = [m["Metadata"]["send_key"] for m in batch]
                owner.batches.append(keys)
                answer = first(keys) if len(owner.batches) == 1 else _accepted(keys)
                if answer is None:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(2)  # taken, never answered
                    return
                self._answer(200, "application/json", answer)

            def do_GET(self) -> None:
                key = parse_qs(urlsplit(self.path).query)["metadata_send_key"][0]
                self._answer(*(search() if search else owner.found(key)))

            def _answer(self, status: int, kind: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server, self.url = serving(Handler)

    def found(self, key: str) -> tuple[int, str, bytes]:
        """Postmark's search answer for ``key``: the message if a batch carried it."""
        taken = [{"MessageID": f"id-{key}"} for batch in self.batches if key in batch][:1]
        return _json({"TotalCount": len(taken), "Messages": taken})

    def taken(self) -> Counter[str]:
        return Counter(key for batch in self.batches for key in batch)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _accepted(keys: list[str]) -> bytes:
    return orjson.dumps([{"ErrorCode": 0, "Message": "OK", "MessageID": f"id-{k}"} for k in keys])


@pytest.fixture
def broken() -> Iterator[Callable[..., BrokenPostmark]]:
    made: list[BrokenPostmark] = []

    def make(search: Search | None = None, first: First = _lost) -> BrokenPostmark:
        made.append(BrokenPostmark(search, first))
        return made[-1]

    yield make
    for server in made:
        server.close()


def _deliverer(engine: sa.Engine, esp: BrokenPostmark) -> tuple[Deliverer, Postmark]:
    clock = FixedClock(NOW)
    provider = Postmark(esp.url, "token", "shop@example.test", timeout_s=5)
    deliverer = Deliverer(
        engine, provider, ESP, clock, sleep=Sleeper(clock), rng=random.Random(1), worker="w1"
    )
    return deliverer, provider


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
    engine: sa.Engine, broken: Callable[..., BrokenPostmark], search: Search
) -> None:
    """The batch's answer was lost, so the deliverer asks Postmark which messages it took;
    an answer without Postmark's ``Messages`` list was read as "none of them", and the
    whole batch, which Postmark had taken, went out a second time."""
    fill(engine, 3)
    esp = broken(search)
    deliverer, provider = _deliverer(engine, esp)
    with pytest.raises(DeliveryError, match=r"search|base_url"):  # a redirect: base_url
        deliverer.drain(max_wait_s=600)
    provider.close()
    assert len(esp.batches) == 1  # nothing sent twice
    assert states(engine) == Counter({"claimed": 3})  # left for a lookup that can answer


def test_postmarks_own_none_found_sends_the_batch_again(
    engine: sa.Engine, broken: Callable[..., BrokenPostmark]
) -> None:
    """The other side: Postmark's answer listing no message means it took none of them."""
    fill(engine, 3)
    esp = broken(lambda: _json({"TotalCount": 0, "Messages": []}))
    deliverer, provider = _deliverer(engine, esp)
    report = deliverer.drain(max_wait_s=600)
    provider.close()
    assert report.sent == 3 and sorted(esp.taken().values()) == [2, 2, 2]  # lost, sent again
    assert states(engine) == Counter({"sent": 3})


def _one_entry(entry: Any) -> First:
    """Postmark's answer to the first batch with its second entry replaced by ``entry``."""

    def answer(keys: list[str]) -> bytes:
        entries = orjson.loads(_accepted(keys))
        entries[1] = entry
        return orjson.dumps(entries)

    return answer


WRONG_ENTRIES = {
    "a string": "OK",
    "no ErrorCode": {"Message": "OK", "MessageID": "id-x"},
    "ErrorCode not a number": {"ErrorCode": "zero", "Message": "OK"},
    "ErrorCode null": {"ErrorCode": None, "Message": "OK"},
    "accepted without MessageID": {"ErrorCode": 0, "Message": "OK"},
    "accepted with MessageID null": {"ErrorCode": 0, "Message": "OK", "MessageID": None},
}


@pytest.mark.parametrize("entry", WRONG_ENTRIES.values(), ids=WRONG_ENTRIES.keys())
def test_a_batch_answer_with_an_entry_that_is_not_postmarks_is_looked_up(
    engine: sa.Engine, broken: Callable[..., BrokenPostmark], entry: Any
) -> None:
    """Postmark took the batch, and one entry of its answer is not Postmark's shape: that
    message was queued again unasked (sent twice) or the drain stopped on a ValueError,
    KeyError or TypeError, or an id ``"None"`` was recorded. The batch is looked up, as an
    answer of the wrong length is, and every message is sent once and recorded with its id."""
    fill(engine, 3)
    esp = broken(first=_one_entry(entry))
    deliverer, provider = _deliverer(engine, esp)
    report = deliverer.drain(max_wait_s=600)
    provider.close()
    assert report.sent == 3 and list(esp.taken().values()) == [1, 1, 1]
    assert states(engine) == Counter({"sent": 3})
    with engine.connect() as connection:
        ids = connection.execute(sa.select(outbox_table.c.provider_message_id)).scalars()
        assert sorted(ids) == sorted(f"id-{key}" for key in esp.taken())
