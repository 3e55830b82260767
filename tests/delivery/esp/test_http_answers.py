"""Answers a provider, or a broken proxy in front of it, can give, from a real HTTP server:
a body that trickles without end, one that never stops growing, and a compressed one.

httpx's timeout bounds each read, not a whole answer: a body arriving a byte per read held
the deliverer (and its claims, past their lease) for as long as the body lasted.
"""

from __future__ import annotations

import contextlib
import gzip
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from recocamp.delivery.esp import http as esp_http
from recocamp.delivery.esp.brevo import Brevo
from recocamp.delivery.esp.mailpit import Mailpit
from recocamp.delivery.esp.postmark import Postmark
from recocamp.delivery.esp.sendgrid import SendGrid
from recocamp.domain import OutgoingEmail, SendStatus
from recocamp.errors import TransientDeliveryError
from tests.local_http import QuietHandler, serving

Body = Callable[[BaseHTTPRequestHandler], None]  # writes status, headers and body


def _message() -> OutgoingEmail:
    return OutgoingEmail(
        send_key="winback:2026-01-15:1",
        to="kunde1@example.org",
        subject="Neu für dich",
        html="<p>Hallo</p>",
        text="Hallo",
        headers=(("X-Recocamp-Send-Key", "winback:2026-01-15:1"),),
        campaign="winback",
    )


@pytest.fixture
def serve() -> Iterator[Callable[[Body], str]]:
    """Start a local server answering every POST with ``body``; yields its base URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(body: Body) -> str:
        class Handler(QuietHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with contextlib.suppress(OSError):  # the client hung up: as the tests want
                    body(self)

        server, url = serving(Handler)
        servers.append(server)
        return url

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _ok_headers(handler: BaseHTTPRequestHandler) -> None:
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.end_headers()


def _trickle(handler: BaseHTTPRequestHandler) -> None:
    """A 200 whose body sends a space every 50 ms for 30 s: each read is quick, the whole
    answer is not."""
    _ok_headers(handler)
    handler.wfile.write(b"[")
    for _ in range(600):
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.05)


def _endless(handler: BaseHTTPRequestHandler) -> None:
    """A 200 whose body grows at full speed, up to 1 GB."""
    _ok_headers(handler)
    chunk = b" " * 65_536
    for _ in range(16_384):
        handler.wfile.write(chunk)


def _gzipped(handler: BaseHTTPRequestHandler) -> None:
    """Postmark's documented batch answer, gzip-compressed as a proxy may send it."""
    answer = [{"ErrorCode": 0, "Message": "OK", "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c3"}]
    body = gzip.compress(orjson.dumps(answer))
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _broken_gzip(handler: BaseHTTPRequestHandler) -> None:
    """A 200 that says gzip and is not."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Encoding", "gzip")
    handler.send_header("Content-Length", "9")
    handler.end_headers()
    handler.wfile.write(b"not gzip!")


def _trickling_429(handler: BaseHTTPRequestHandler) -> None:
    """A 429 naming its wait, whose body then never ends."""
    handler.send_response(429)
    handler.send_header("Retry-After", "7")
    handler.end_headers()
    for _ in range(600):
        handler.wfile.write(b" ")
        handler.wfile.flush()
        time.sleep(0.05)


def test_an_answer_that_does_not_end_in_timeout_s_is_ambiguous(
    serve: Callable[[Body], str],
) -> None:
    provider = Postmark(serve(_trickle), "token", "shop@example.test", timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(TransientDeliveryError) as caught:
        provider.send_batch([_message()])
    provider.close()
    assert time.monotonic() - started < 10  # the body would have taken 30 s
    assert caught.value.ambiguous  # the status line came: looked up before any resend
    assert "did not end in time" in str(caught.value)


def test_an_answer_larger_than_the_limit_is_ambiguous(
    serve: Callable[[Body], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(esp_http, "MAX_ANSWER_BYTES", 1_000_000)
    provider = Postmark(serve(_endless), "token", "shop@example.test", timeout_s=30)
    with pytest.raises(TransientDeliveryError) as caught:
        provider.send_batch([_message()])
    provider.close()
    assert caught.value.ambiguous
    assert "larger than 1,000,000 bytes" in str(caught.value)


def test_a_compressed_answer_is_read_once_decoded(serve: Callable[[Body], str]) -> None:
    provider = Postmark(serve(_gzipped), "token", "shop@example.test", timeout_s=5)
    [result] = provider.send_batch([_message()])
    provider.close()
    assert result.status is SendStatus.ACCEPTED
    assert result.message_id == "b7bc2f4a-e38e-4336-af7d-e6c3"


def test_an_undecodable_answer_is_ambiguous_not_an_httpx_error(
    serve: Callable[[Body], str],
) -> None:
    provider = Postmark(serve(_broken_gzip), "token", "shop@example.test", timeout_s=5)
    with pytest.raises(TransientDeliveryError) as caught:
        provider.send_batch([_message()])
    provider.close()
    assert caught.value.ambiguous
    assert "DecodingError" in str(caught.value)


def test_a_429_is_taken_from_its_status_line_whatever_its_body(
    serve: Callable[[Body], str],
) -> None:
    provider = Postmark(serve(_trickling_429), "token", "shop@example.test", timeout_s=0.5)
    with pytest.raises(TransientDeliveryError) as caught:
        provider.send_batch([_message()])
    provider.close()
    assert caught.value.status == 429
    assert caught.value.retry_after == 7


def _ok_with(body: bytes) -> Body:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


@pytest.mark.parametrize("body", [b"OK", b"{}", b'{"ID": null}'], ids=["text", "{}", "null"])
def test_a_mailpit_2xx_without_its_id_is_accepted(
    serve: Callable[[Body], str], body: bytes
) -> None:
    """Mailpit took the message (2xx) but its answer lacks ``ID`` (a proxy, another
    version): a text body was failed permanently (``retry-failed`` then sent it twice), an
    object without ``ID`` raised KeyError out of the provider. Accepted, the id unknown (a
    local catcher; Brevo's and SendGrid's are tried again, see their tests)."""
    provider = Mailpit(serve(_ok_with(body)), "", "shop@example.test", timeout_s=5)
    [result] = provider.send_batch([_message()])
    provider.close()
    assert result.status is SendStatus.ACCEPTED
    assert result.message_id == ""


@pytest.mark.parametrize(
    "body",
    [b'{"messageId": null}', b'{"messageId": {"id": 1}}', b"[]", b"", b"<html>OK</html>"],
    ids=["null", "object", "list", "empty", "html"],
)
def test_a_brevo_2xx_without_its_message_id_is_ambiguous_not_sent(
    serve: Callable[[Body], str], body: bytes
) -> None:
    """A 2xx without Brevo's text ``messageId`` (a proxy's page, an empty body) is not
    Brevo's answer: ambiguous, to be sent again under the same idempotency key. It was
    recorded sent (a mail Brevo may never have had: lost); before that, a ``messageId``
    that is not text was recorded as its Python spelling (``"None"``)."""
    provider = Brevo(serve(_ok_with(body)), "key", "shop@example.test", timeout_s=5)
    with pytest.raises(TransientDeliveryError, match="without Brevo's messageId") as info:
        provider.send_batch([_message()])
    provider.close()
    assert info.value.ambiguous and info.value.status == 200


@pytest.mark.parametrize("body", [b"", b"<html>OK</html>"], ids=["empty", "html"])
def test_a_sendgrid_2xx_without_its_message_id_is_ambiguous_not_sent(
    serve: Callable[[Body], str], body: bytes
) -> None:
    """SendGrid answers a send 202 with ``X-Message-Id``; a 200 page without it (a proxy in
    front) was recorded sent, and the mail lost if SendGrid never had it. Ambiguous now:
    tried again within ``max_attempts``."""
    provider = SendGrid(serve(_ok_with(body)), "SG.key", "shop@example.test", timeout_s=5)
    with pytest.raises(TransientDeliveryError, match="without SendGrid's X-Message-Id") as info:
        provider.send_batch([_message()])
    provider.close()
    assert info.value.ambiguous and info.value.status == 200


def test_a_sendgrid_202_without_its_message_id_is_accepted(serve: Callable[[Body], str]) -> None:
    """SendGrid's own status, its header dropped on the way (a proxy): taken, the id
    unknown; trying it again would send it twice."""

    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(202)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    provider = SendGrid(serve(answer), "SG.key", "shop@example.test", timeout_s=5)
    [result] = provider.send_batch([_message()])
    provider.close()
    assert result.status is SendStatus.ACCEPTED and result.message_id == ""
