"""The fake ESP's control routes (``/_stats``, ``/_messages``, ``/_faults``, ``/_webhooks``).

A tester found them open with ``--token`` set (every message, addresses and working signed
links, one GET away; one DELETE wiped the store), a fault of ``"abc"`` turning every later
send into a 500, ``1e12`` ms of latency hanging sends and then the SIGTERM behind them, and
a webhook to ``"notaurl"`` answering 500. Each test drives ``recocamp fake-esp`` as its own
process over real HTTP, as a user starts it.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from recocamp.delivery.esp.fake_server import FakeEsp, Faults
from tests.delivery.esp import fake_process

TOKEN = "control-token"
CONTROL = {"X-Postmark-Server-Token": TOKEN}
MESSAGE = {"From": "shop@example.org", "To": "x@example.test", "TextBody": "hello"}


def start(*options: str) -> tuple[subprocess.Popen[bytes], str]:
    return fake_process.start(TOKEN, *options)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    process, url = start("--data-dir", str(tmp_path_factory.mktemp("fake-esp")))
    try:
        yield url
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def url(server: str) -> str:
    httpx.delete(f"{server}/_messages", headers=CONTROL).raise_for_status()
    httpx.post(f"{server}/_faults", json={}, headers=CONTROL).raise_for_status()
    return server


def send(url: str) -> dict[str, Any]:
    reply = httpx.post(f"{url}/email", json=MESSAGE, headers=CONTROL)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    return answer


def received(url: str) -> int:
    answer: int = httpx.get(f"{url}/_stats", headers=CONTROL).json()["received"]
    return answer


# --- the token ------------------------------------------------------------------------------


@pytest.mark.parametrize("given", [None, "wrong-token"])
def test_with_a_token_every_control_route_refuses_any_other_and_changes_nothing(
    url: str, given: str | None
) -> None:
    """401 with Postmark's ErrorCode 10, as the Postmark routes answer, and the store, the
    faults and the bounces are as they were."""
    sent = send(url)
    headers = {} if given is None else {"X-Postmark-Server-Token": given}
    calls = [
        ("GET", "/_stats", None),
        ("GET", "/_messages", None),
        ("DELETE", "/_messages", None),
        ("POST", "/_faults", {"rate_5xx": 1.0}),
        ("POST", "/_webhooks/bounce", {"message_id": sent["MessageID"]}),
    ]
    for method, path, body in calls:
        reply = httpx.request(method, f"{url}{path}", json=body, headers=headers)
        assert reply.status_code == 401, (path, reply.text)
        assert reply.json()["ErrorCode"] == 10
        assert "x@example.test" not in reply.text
    assert received(url) == 1  # not wiped
    send(url)  # no 500s switched on, the address not bounced
    listed = httpx.get(f"{url}/_messages", headers=CONTROL).json()
    assert [m["To"] for m in listed] == ["x@example.test", "x@example.test"]


# --- faults ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"rate_429": "abc"}, "'rate_429': Input should be a valid number (given 'abc')"),
        ({"rate_5xx": 1.5}, "'rate_5xx': Input should be less than or equal to 1"),
        ({"rate_drop": -0.1}, "'rate_drop': Input should be greater than or equal to 0"),
        ({"rate_429": True}, "'rate_429': Input should be a valid number (given True)"),
        ({"latency_ms": 1e12}, "'latency_ms': Input should be less than or equal to 60000"),
        ({"latency_ms": "5"}, "'latency_ms': Input should be a valid number"),
        ({"drop_stall_s": 1e9}, "'drop_stall_s': Input should be less than or equal to 600"),
        ({"seed": True}, "'seed': Input should be a valid integer"),
        ({"inactive": "a@example.test"}, "'inactive': Input should be a valid list"),
        ({"inactive": ["a@example.test", 5]}, "'inactive[1]': Input should be a valid string"),
        ({"rate_249": 0.5}, "'rate_249': Extra inputs are not permitted"),
        ([0.5], "'body': Input should be a valid dictionary"),
    ],
)
def test_a_fault_of_the_wrong_type_or_out_of_range_is_422_naming_it_and_not_applied(
    url: str, body: object, named: str
) -> None:
    """Before, ``"abc"`` was stored and every later send was a 500 (TypeError), and a
    string for ``inactive`` was read letter by letter. Addresses are never repeated."""
    reply = httpx.post(f"{url}/_faults", json=body, headers=CONTROL)
    assert reply.status_code == 422, reply.text
    assert reply.json()["ErrorCode"] == 403
    assert named in reply.json()["Message"]
    assert "a@example.test" not in reply.text
    send(url)  # the faults before (none) still apply


def test_valid_faults_are_applied_and_answered(url: str) -> None:
    faults = {"rate_429": 1, "retry_after_s": 2.5, "inactive": ["gone@example.test"]}
    reply = httpx.post(f"{url}/_faults", json=faults, headers=CONTROL)
    assert reply.status_code == 200
    assert reply.json() == {**Faults().model_dump(), **faults, "rate_429": 1.0}
    refused = httpx.post(f"{url}/email", json=MESSAGE, headers=CONTROL)
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "2.5")


def test_a_listing_limit_below_one_is_422_not_the_whole_store(url: str) -> None:
    """``limit=0`` sliced ``[-0:]`` (everything), ``limit=-1`` all but the first."""
    send(url)
    send(url)
    for limit in ("0", "-1"):
        reply = httpx.get(f"{url}/_messages", params={"limit": limit}, headers=CONTROL)
        assert reply.status_code == 422 and "'limit'" in reply.json()["Message"]
    one = httpx.get(f"{url}/_messages", params={"limit": 1}, headers=CONTROL).json()
    assert len(one) == 1


# --- webhooks -------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["notaurl", "ftp://example.test/hook", "http://", "http:x"])
def test_a_webhook_target_that_is_not_an_http_url_is_422_and_nothing_is_recorded(
    url: str, target: str
) -> None:
    sent = send(url)
    reply = httpx.post(
        f"{url}/_webhooks/bounce",
        json={"message_id": sent["MessageID"], "url": target},
        headers=CONTROL,
    )
    assert reply.status_code == 422, reply.text
    assert f"'url': {target!r} is not an http(s) URL with a host" in reply.json()["Message"]
    bounces = httpx.get(f"{url}/bounces", params={"count": 10, "offset": 0}, headers=CONTROL)
    assert bounces.json()["TotalCount"] == 0
    send(url)  # the address was not deactivated


def test_a_webhook_target_that_cannot_be_reached_is_502_saying_so(url: str) -> None:
    """Before: a 500. The bounce is recorded (as at Postmark, whose record does not depend
    on the endpoint) and the answer says the post failed, and where to."""
    sent = send(url)
    target = f"http://127.0.0.1:{fake_process.free_port()}/hook"  # nothing listens there
    reply = httpx.post(
        f"{url}/_webhooks/bounce",
        json={"message_id": sent["MessageID"], "url": target},
        headers=CONTROL,
    )
    assert reply.status_code == 502, reply.text
    message = reply.json()["Message"]
    assert f"the bounce was recorded, but posting its webhook to {target} failed" in message
    assert "ConnectError" in message and "x@example.test" not in message
    bounces = httpx.get(f"{url}/bounces", params={"count": 10, "offset": 0}, headers=CONTROL)
    assert bounces.json()["TotalCount"] == 1


def test_a_webhook_request_with_a_wrong_field_is_422_naming_it(url: str) -> None:
    reply = httpx.post(f"{url}/_webhooks/bounce", json={"message_id": 5}, headers=CONTROL)
    assert reply.status_code == 422
    assert "'message_id': Input should be a valid string" in reply.json()["Message"]


# --- shutdown -------------------------------------------------------------------------------


def test_sigterm_does_not_wait_for_a_stalled_answer(tmp_path: Path) -> None:
    """uvicorn waits for the requests in flight: a send stalled for 10 minutes (stored, the
    answer held back) held SIGTERM that long. Now the signal ends the stall: the client gets
    its answer and the process exits at once."""
    process, url = start()
    try:
        httpx.post(
            f"{url}/_faults", json={"rate_drop": 1.0, "drop_stall_s": 600}, headers=CONTROL
        ).raise_for_status()
        answers: list[int] = []
        client = threading.Thread(
            target=lambda: answers.append(
                httpx.post(f"{url}/email", json=MESSAGE, headers=CONTROL, timeout=60).status_code
            )
        )
        client.start()
        deadline = time.monotonic() + 30
        while received(url) < 1:  # stored: the request is now in its stall
            assert time.monotonic() < deadline, "the send never arrived"
            time.sleep(0.05)
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == -signal.SIGTERM  # uvicorn re-raises it once done
        client.join(20)
        assert time.monotonic() - started < 20 and answers == [200]
    finally:
        process.kill()
        process.wait(10)


def test_stop_cuts_a_latency_pause_short_from_another_thread() -> None:
    """Injected latency goes through the same pause; ``stop`` comes from the signal
    handler or, for :func:`running`, from the test's thread."""
    esp = FakeEsp(faults=Faults(latency_ms=60_000))

    async def pause_then_stop() -> float:
        started = time.monotonic()
        pausing = asyncio.create_task(esp.pause(esp.faults.latency_ms / 1000))
        await asyncio.sleep(0)  # the pause is waiting
        threading.Thread(target=esp.stop).start()
        await asyncio.wait_for(pausing, 10)
        return time.monotonic() - started

    assert asyncio.run(pause_then_stop()) < 10
    assert asyncio.run(asyncio.wait_for(esp.pause(60), 1)) is None  # stopped: no more pauses


def test_the_messages_file_is_readable_by_its_owner_alone(tmp_path: Path) -> None:
    """``messages.jsonl`` holds every message whole: addresses, bodies and their working
    signed links (a customer's data download and erasure). It was created 0666 less the
    umask (0644: every local user could read it), where ``privacy export --output`` and
    the demo's signing key are its owner's alone."""
    esp = FakeEsp(tmp_path / "esp")
    assert isinstance(esp.submit([MESSAGE])[0], dict)
    stored = tmp_path / "esp" / "messages.jsonl"
    assert "x@example.test" in stored.read_text()
    assert stored.stat().st_mode & 0o077 == 0, oct(stored.stat().st_mode)
