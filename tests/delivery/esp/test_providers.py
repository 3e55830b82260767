"""Provider contract: each ESP module against ``httpx.MockTransport`` answers modelled on the
provider's documented responses (Postmark, SendGrid, Brevo, Mailpit).

What every provider must do the same way: put the rendered message and our headers on the
wire, turn the documented success answer into ``ACCEPTED`` + message id, and map 429/5xx,
401/403, 413 and transport failures onto ``recocamp.errors`` (``http.py``). What each does
its own way (Postmark's per-message batch codes and lookup, SendGrid's 400 field, Brevo's
idempotency key) is tested per provider below.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.headerregistry import HeaderRegistry
from email.utils import format_datetime
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from recocamp.delivery.esp import Provider, make_provider, postmark
from recocamp.delivery.esp import http as esp_http
from recocamp.delivery.esp.brevo import Brevo, idempotency_key
from recocamp.delivery.esp.fake import FakeProvider
from recocamp.delivery.esp.mailpit import Mailpit
from recocamp.delivery.esp.postmark import Postmark
from recocamp.delivery.esp.sendgrid import SendGrid
from recocamp.domain import OutgoingEmail, SendResult, SendStatus
from recocamp.errors import (
    BatchTooLargeError,
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from recocamp.settings import EspSettings, Settings
from recocamp.tokens import provider_key

BASE_URL = "http://esp.test"
TOKEN = "server-token-5f1e"
FROM = "shop@example.test"
NOW = 1_768_478_400.0  # 2026-01-15T12:00:00Z, the clock of the Retry-After tests

Answer = Callable[[httpx.Request, int], httpx.Response]  # (request, its number) → response


def email(n: int = 1, to: str | None = None) -> OutgoingEmail:
    key = f"winback:2026-01-15:{n}"
    return OutgoingEmail(
        send_key=key,
        to=to or f"kunde{n}@example.org",
        subject=f"Neu für dich, Nr. {n}",
        html=f"<p>Hallo <b>{n}</b></p>",
        text=f"Hallo {n}",
        headers=(
            ("X-Recocamp-Send-Key", key),
            ("List-Unsubscribe", f"<https://shop.example.test/u/{n}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        ),
        campaign="winback",
    )


class Recorder:
    """A MockTransport handler: keeps every request, answers with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.answer(request, len(self.requests) - 1)

    @property
    def bodies(self) -> list[Any]:
        return [json.loads(request.content) for request in self.requests]


def reply(status: int, headers: dict[str, str] | None = None, body: Any = None) -> Answer:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(status, headers=headers, json=body)

    return answer


def failing(exc_type: type[httpx.TransportError]) -> Answer:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        raise exc_type("simulated transport failure", request=request)

    return answer


# --- the four providers, described once --------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One message as a provider put it on the wire, in provider-neutral terms."""

    sender: str
    to: str
    subject: str
    html: str
    text: str
    headers: dict[str, str]

    @classmethod
    def of(cls, message: OutgoingEmail, sender: str = FROM, key: bytes | None = None) -> Sent:
        """The message as it leaves: the send-key header holds the send key's digest
        (``tokens.provider_key``, under ``key``: none here but for ``make_provider``'s),
        never the send key."""
        headers = dict(message.headers)
        headers["X-Recocamp-Send-Key"] = provider_key(key, message.send_key)
        return cls(sender, message.to, message.subject, message.html, message.text, headers)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[httpx.BaseTransport | None], Provider]
    path: str  # POST path of a send
    auth: tuple[str, str] | None  # (header, value) the token travels in
    accepted: Answer  # the documented success answer
    message_id: Callable[[int], str]  # the id the n-th accepted message gets
    decode: Callable[[Any], list[Sent]]  # the JSON body of one request → its messages
    unauthorized: Any = field(default=None)  # the documented 401 body


def _postmark_id(n: int) -> str:
    return f"b7bc2f4a-e38e-4336-af7d-e6c392c2f81{n}"


def _postmark_accepted(request: httpx.Request, n: int) -> httpx.Response:
    answers = [
        {
            "To": m["To"],
            "SubmittedAt": "2026-01-15T07:00:00.1794748-05:00",
            "MessageID": _postmark_id(i),
            "ErrorCode": 0,
            "Message": "OK",
        }
        for i, m in enumerate(json.loads(request.content))
    ]
    return httpx.Response(200, json=answers)


def _postmark_sent(body: Any) -> list[Sent]:
    return [
        Sent(
            m["From"],
            m["To"],
            m["Subject"],
            m["HtmlBody"],
            m["TextBody"],
            {h["Name"]: h["Value"] for h in m["Headers"]},
        )
        for m in body
    ]


def _sendgrid_id(n: int) -> str:
    return f"W7hXu2FPQ4Sz0iQjVwQd0{n}"


def _sendgrid_accepted(request: httpx.Request, n: int) -> httpx.Response:
    return httpx.Response(202, headers={"X-Message-Id": _sendgrid_id(n)})


def _sendgrid_sent(body: Any) -> list[Sent]:
    [personalization] = body["personalizations"]
    [to] = personalization["to"]
    content = {part["type"]: part["value"] for part in body["content"]}
    return [
        Sent(
            body["from"]["email"],
            to["email"],
            body["subject"],
            content["text/html"],
            content["text/plain"],
            body["headers"],
        )
    ]


def _brevo_id(n: int) -> str:
    return f"<202601151200.{n}@smtp-relay.mailin.fr>"


def _brevo_accepted(request: httpx.Request, n: int) -> httpx.Response:
    return httpx.Response(201, json={"messageId": _brevo_id(n)})


def _brevo_sent(body: Any) -> list[Sent]:
    [to] = body["to"]
    # Brevo's own headers (test_brevo_idempotency.py checks them): the message's are the rest
    ours = ("idempotencyKey", "X-Mailin-custom")
    headers = {k: v for k, v in body["headers"].items() if k not in ours}
    return [
        Sent(
            body["sender"]["email"],
            to["email"],
            body["subject"],
            body["htmlContent"],
            body["textContent"],
            headers,
        )
    ]


def _mailpit_id(n: int) -> str:
    return f"iAfZVVe2UQfNSG5BAjgYw{n}"


def _mailpit_accepted(request: httpx.Request, n: int) -> httpx.Response:
    return httpx.Response(200, json={"ID": _mailpit_id(n)})


def _mailpit_sent(body: Any) -> list[Sent]:
    [to] = body["To"]
    return [
        Sent(
            body["From"]["Email"],
            to["Email"],
            body["Subject"],
            body["HTML"],
            body["Text"],
            body["Headers"],
        )
    ]


POSTMARK = Case(
    name="postmark",
    build=lambda t: Postmark(BASE_URL, TOKEN, FROM, transport=t),
    path="/email/batch",
    auth=("X-Postmark-Server-Token", TOKEN),
    accepted=_postmark_accepted,
    message_id=_postmark_id,
    decode=_postmark_sent,
    unauthorized={
        "ErrorCode": 10,
        "Message": "The Server Token you provided in the "
        "X-Postmark-Server-Token request header was invalid.",
    },
)
SENDGRID = Case(
    name="sendgrid",
    build=lambda t: SendGrid(BASE_URL, TOKEN, FROM, transport=t),
    path="/v3/mail/send",
    auth=("Authorization", f"Bearer {TOKEN}"),
    accepted=_sendgrid_accepted,
    message_id=_sendgrid_id,
    decode=_sendgrid_sent,
    unauthorized={
        "errors": [
            {
                "field": None,
                "help": None,
                "message": "The provided authorization grant is invalid, expired, or revoked",
            }
        ]
    },
)
BREVO = Case(
    name="brevo",
    build=lambda t: Brevo(BASE_URL, TOKEN, FROM, transport=t),
    path="/v3/smtp/email",
    auth=("api-key", TOKEN),
    accepted=_brevo_accepted,
    message_id=_brevo_id,
    decode=_brevo_sent,
    unauthorized={"code": "unauthorized", "message": "Key not found"},
)
MAILPIT = Case(
    name="mailpit",
    build=lambda t: Mailpit(BASE_URL, "", FROM, transport=t),
    path="/api/v1/send",
    auth=None,  # a local catcher: no token, no Authorization header
    accepted=_mailpit_accepted,
    message_id=_mailpit_id,
    decode=_mailpit_sent,
    unauthorized={"Error": "unauthorised"},
)
CASES = [POSTMARK, SENDGRID, BREVO, MAILPIT]
every_provider = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


def send(case: Case, answer: Answer, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
    provider = case.build(httpx.MockTransport(Recorder(answer)))
    try:
        return provider.send_batch(messages)
    finally:
        provider.close()


def send_error(case: Case, answer: Answer, expected: type[DeliveryError]) -> DeliveryError:
    with pytest.raises(expected) as info:
        send(case, answer, [email()])
    return info.value


def transient(case: Case, answer: Answer) -> TransientDeliveryError:
    error = send_error(case, answer, TransientDeliveryError)
    assert isinstance(error, TransientDeliveryError)
    assert case.name in str(error)
    return error


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """``recocamp.esp.http`` sees the time NOW (for HTTP dates and epoch resets)."""
    monkeypatch.setattr(esp_http, "time", SimpleNamespace(time=lambda: NOW))


# --- a successful send --------------------------------------------------------------------


@every_provider
def test_send_makes_the_documented_request_and_returns_accepted(case: Case) -> None:
    recorder = Recorder(case.accepted)
    message = email()
    provider = case.build(httpx.MockTransport(recorder))
    results = provider.send_batch([message])
    provider.close()

    assert results == [
        SendResult(message.send_key, SendStatus.ACCEPTED, message_id=case.message_id(0))
    ]
    [request] = recorder.requests
    assert request.method == "POST"
    assert str(request.url) == BASE_URL + case.path
    assert request.headers["content-type"] == "application/json"
    if case.auth is None:
        assert "authorization" not in request.headers
    else:
        assert request.headers[case.auth[0]] == case.auth[1]
    assert case.decode(json.loads(request.content)) == [Sent.of(message)]


@every_provider
def test_send_batch_answers_one_result_per_message_in_order(case: Case) -> None:
    recorder = Recorder(case.accepted)
    messages = [email(1), email(2), email(3)]
    provider = case.build(httpx.MockTransport(recorder))
    results = provider.send_batch(messages)
    provider.close()

    assert [(r.send_key, r.status, r.message_id) for r in results] == [
        (m.send_key, SendStatus.ACCEPTED, case.message_id(i)) for i, m in enumerate(messages)
    ]
    sent = [s for body in recorder.bodies for s in case.decode(body)]
    assert sent == [Sent.of(m) for m in messages]
    assert len(recorder.requests) == (1 if case is POSTMARK else 3)


@every_provider
def test_provider_flags_and_lookup_without_search(case: Case) -> None:
    recorder = Recorder(reply(500))
    provider = case.build(httpx.MockTransport(recorder))
    expected = {
        "postmark": (500, False),
        "sendgrid": (1, False),
        "brevo": (1, True),
        "mailpit": (1, False),
    }[case.name]
    assert (provider.batch_limit, provider.resend_is_safe) == expected
    assert provider.name == case.name
    if case is not POSTMARK:  # Postmark searches: see test_postmark_lookup_*
        assert provider.lookup(["winback:2026-01-15:1"]) is None
        assert recorder.requests == []
    provider.close()


# --- 429, 5xx: transient -----------------------------------------------------------------


@every_provider
def test_429_with_retry_after_seconds(case: Case) -> None:
    error = transient(case, reply(429, {"Retry-After": "7"}, {"message": "Too many requests"}))
    assert error.retry_after == 7.0
    assert error.ambiguous is False
    assert "429" in str(error)


@every_provider
def test_429_with_retry_after_http_date(case: Case, frozen_clock: None) -> None:
    when = format_datetime(datetime.fromtimestamp(NOW + 30, UTC), usegmt=True)
    error = transient(case, reply(429, {"Retry-After": when}))
    assert error.retry_after == 30.0
    assert error.ambiguous is False


@every_provider
def test_429_with_only_a_rate_limit_reset_epoch(case: Case, frozen_clock: None) -> None:
    reset = {
        "X-RateLimit-Limit": "600",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": str(int(NOW) + 12),
    }
    error = transient(case, reply(429, reset))
    assert error.retry_after == 12.0
    assert error.ambiguous is False


@every_provider
@pytest.mark.parametrize(
    ("status", "headers", "ambiguous", "retry_after"),
    [
        (500, {}, False, None),
        (503, {"Retry-After": "120"}, False, 120.0),
        (502, {}, True, None),
        (504, {}, True, None),
    ],
    ids=["500", "503", "502", "504"],
)
def test_server_errors_are_transient_and_proxy_errors_ambiguous(
    case: Case, status: int, headers: dict[str, str], ambiguous: bool, retry_after: float | None
) -> None:
    error = transient(case, reply(status, headers, {"message": "upstream trouble"}))
    # Postmark's 500: "in most cases the message is lost", not always: looked up first
    assert error.ambiguous is (ambiguous or (case is POSTMARK and status == 500))
    assert error.retry_after == retry_after
    assert str(status) in str(error)


# --- 401/403, 413 ----------------------------------------------------------------------------


@every_provider
@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_stop_with_a_hint_at_the_token(case: Case, status: int) -> None:
    error = send_error(case, reply(status, body=case.unauthorized), DeliveryError)
    assert not isinstance(error, TransientDeliveryError | PermanentDeliveryError)
    assert not isinstance(error, BatchTooLargeError)
    assert "RECOCAMP_ESP_TOKEN" in str(error)
    assert TOKEN not in str(error)


@every_provider
def test_413_is_batch_too_large(case: Case) -> None:
    error = send_error(case, reply(413, body={"message": "Payload too large"}), BatchTooLargeError)
    assert "413" in str(error)


# --- transport failures -----------------------------------------------------------------


@every_provider
@pytest.mark.parametrize(
    ("exc_type", "ambiguous"),
    [
        (httpx.ReadTimeout, True),
        (httpx.RemoteProtocolError, True),  # the connection dropped after the request went out
        (httpx.ConnectError, False),
        (httpx.ConnectTimeout, False),
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else str(value),
)
def test_transport_failures(
    case: Case, exc_type: type[httpx.TransportError], ambiguous: bool
) -> None:
    error = transient(case, failing(exc_type))
    assert error.ambiguous is ambiguous
    assert error.retry_after is None
    assert exc_type.__name__ in str(error)


# --- Postmark ----------------------------------------------------------------------------


def test_postmark_request_body_is_a_list_with_metadata_and_stream() -> None:
    recorder = Recorder(_postmark_accepted)
    provider = Postmark(
        BASE_URL, TOKEN, FROM, message_stream="outbound", transport=httpx.MockTransport(recorder)
    )
    messages = [email(1), email(2)]
    provider.send_batch(messages)
    provider.close()

    [body] = recorder.bodies
    assert isinstance(body, list)
    assert [(m["Metadata"], m["MessageStream"], m["Tag"], m["From"]) for m in body] == [
        # a digest of the send key (``tokens.provider_key``): no customer id, 80 characters
        (
            {"send_key": provider_key(None, m.send_key), "campaign": "winback"},
            "outbound",
            "winback",
            FROM,
        )
        for m in messages
    ]
    assert body[0]["Headers"][0] == {
        "Name": "X-Recocamp-Send-Key",
        "Value": provider_key(None, messages[0].send_key),
    }


def test_postmark_partial_batch_failure_maps_each_error_code() -> None:
    answers = [
        {
            "ErrorCode": 0,
            "Message": "OK",
            "MessageID": _postmark_id(0),
            "To": "kunde1@example.org",
            "SubmittedAt": "2026-01-15T07:00:00.1794748-05:00",
        },
        {
            "ErrorCode": 406,
            "Message": "You tried to send to recipient(s) that have been marked as inactive.",
        },
        {"ErrorCode": 300, "Message": "Invalid 'To' address: 'kunde3@@example'."},
        {"ErrorCode": 429, "Message": "Rate limit exceeded."},
    ]
    messages = [email(1), email(2), email(3, to="kunde3@@example"), email(4)]
    results = send(POSTMARK, reply(200, body=answers), messages)

    assert [(r.send_key, r.status) for r in results] == [
        (messages[0].send_key, SendStatus.ACCEPTED),
        (messages[1].send_key, SendStatus.REJECTED),
        (messages[2].send_key, SendStatus.REJECTED),
        (messages[3].send_key, SendStatus.RETRY),
    ]
    assert results[0].message_id == _postmark_id(0)
    assert [r.message_id for r in results[1:]] == [None, None, None]
    for result, code in zip(results[1:], ("406", "300", "429"), strict=True):
        assert result.error is not None
        assert code in result.error


def test_postmark_422_for_the_whole_request_is_permanent() -> None:
    body = {"ErrorCode": 402, "Message": "Received invalid JSON input."}
    error = send_error(POSTMARK, reply(422, body=body), PermanentDeliveryError)
    assert "422" in str(error)
    assert "invalid JSON" in str(error)


@pytest.mark.parametrize("code", [405, 412, 413])
def test_postmark_422_about_the_account_stops_the_run_and_fails_no_message(code: int) -> None:
    """Postmark's 422 with ErrorCode 405 (not allowed to send: the credits ran out), 412
    (account pending) or 413 (account may not send) is about the account: a plain
    ``DeliveryError``, whose claims go back, as for refused credentials. It was a
    ``PermanentDeliveryError``, which fails every message of the batch for good."""
    body = {"ErrorCode": code, "Message": "Not allowed to send: you have run out of credits."}
    error = send_error(POSTMARK, reply(422, body=body), DeliveryError)
    assert type(error) is DeliveryError
    assert f"ErrorCode {code}" in str(error) and "run out of credits" in str(error)


@pytest.mark.parametrize(
    ("code", "setting"),
    [(400, "from_email"), (401, "from_email"), (1235, "message_stream"), (1236, "message_stream")],
)
def test_postmark_422_about_our_sender_or_stream_stops_the_run(code: int, setting: str) -> None:
    """Sender signature missing or unconfirmed, a stream that does not exist or cannot send:
    our settings, the same for every message. It failed every message of the run for good."""
    body = {"ErrorCode": code, "Message": "The 'From' address is not a Sender Signature."}
    error = send_error(POSTMARK, reply(422, body=body), DeliveryError)
    assert type(error) is DeliveryError and f"[esp] {setting}" in str(error)


def test_postmark_422_too_many_batch_messages_splits_and_maintenance_is_retried() -> None:
    too_many = {"ErrorCode": 410, "Message": "You may send up to 500 messages per batch."}
    send_error(POSTMARK, reply(422, body=too_many), BatchTooLargeError)
    maintenance = {"ErrorCode": 100, "Message": "Maintenance."}
    error = transient(POSTMARK, reply(422, body=maintenance))
    assert not error.ambiguous  # refused: nothing was sent, nothing to look up


def test_postmark_batch_answer_of_the_wrong_length_is_ambiguous() -> None:
    with pytest.raises(TransientDeliveryError) as info:
        send(POSTMARK, reply(200, body=[]), [email(1), email(2)])
    assert info.value.ambiguous is True


def _postmark_search(request: httpx.Request, n: int) -> httpx.Response:
    """GET /messages/outbound: only winback:2026-01-15:1 was accepted before."""
    key = request.url.params["metadata_send_key"]
    found = key == provider_key(None, "winback:2026-01-15:1")
    messages = (
        [
            {
                "MessageID": "0ac29aee-e1cd-480d-b08d-4f48548ff48d",
                "Status": "Sent",
                "Metadata": {"send_key": key},
            }
        ]
        if found
        else []
    )
    return httpx.Response(200, json={"TotalCount": len(messages), "Messages": messages})


def test_postmark_lookup_searches_by_metadata_send_key() -> None:
    recorder = Recorder(_postmark_search)
    provider = Postmark(BASE_URL, TOKEN, FROM, transport=httpx.MockTransport(recorder))
    keys = ["winback:2026-01-15:1", "winback:2026-01-15:2"]
    found = provider.lookup(keys)
    provider.close()

    assert found == {"winback:2026-01-15:1": "0ac29aee-e1cd-480d-b08d-4f48548ff48d"}
    assert sorted(
        (r.method, r.url.path, r.url.params["metadata_send_key"]) for r in recorder.requests
    ) == sorted(("GET", "/messages/outbound", provider_key(None, key)) for key in keys)
    for request in recorder.requests:
        assert request.headers["X-Postmark-Server-Token"] == TOKEN
        assert request.url.params["count"] == "1"
        assert request.url.params["offset"] == "0"
        # Postmark searches only the "outbound" stream unless told otherwise
        assert request.url.params["messagestream"] == "broadcast"


def test_postmark_lookup_searches_several_keys_at_once() -> None:
    """A timed-out batch of 500 is looked up eight searches at a time, not one after the
    other: each of the first eight searches waits until all eight have arrived (one after
    the other they never would: the barrier breaks and the lookup fails)."""
    arrived = threading.Barrier(postmark.LOOKUP_THREADS, timeout=30)
    lock = threading.Lock()
    seen: list[str] = []

    def search(request: httpx.Request) -> httpx.Response:
        with lock:
            seen.append(request.url.params["metadata_send_key"])
            first = len(seen) <= postmark.LOOKUP_THREADS
        if first:
            arrived.wait()
        return _postmark_search(request, 0)

    provider = Postmark(BASE_URL, TOKEN, FROM, transport=httpx.MockTransport(search))
    keys = [f"winback:2026-01-15:{n}" for n in range(1, 501)]
    found = provider.lookup(keys)
    provider.close()
    assert found == {"winback:2026-01-15:1": "0ac29aee-e1cd-480d-b08d-4f48548ff48d"}
    assert sorted(seen) == sorted(provider_key(None, key) for key in keys)  # each once


def test_postmark_lookup_stops_at_a_failed_search() -> None:
    """A search Postmark cannot answer fails the whole lookup (unknown is not "not sent"),
    whichever thread ran it."""

    def search(request: httpx.Request) -> httpx.Response:
        if request.url.params["metadata_send_key"] == provider_key(None, "winback:2026-01-15:3"):
            return httpx.Response(404, json={"ErrorCode": 404, "Message": "no"})
        return _postmark_search(request, 0)

    provider = Postmark(BASE_URL, TOKEN, FROM, transport=httpx.MockTransport(search))
    with pytest.raises(DeliveryError, match="HTTP 404"):
        provider.lookup([f"winback:2026-01-15:{n}" for n in range(1, 501)])
    provider.close()


def test_postmark_lookup_maps_errors_like_a_send() -> None:
    provider = Postmark(
        BASE_URL, TOKEN, FROM, transport=httpx.MockTransport(Recorder(failing(httpx.ReadTimeout)))
    )
    with pytest.raises(TransientDeliveryError):
        provider.lookup(["winback:2026-01-15:1"])
    provider.close()


# --- SendGrid ------------------------------------------------------------------------------


def test_sendgrid_invalid_recipient_is_rejected_for_that_message() -> None:
    body = {
        "errors": [
            {
                "message": "Does not contain a valid address.",
                "field": "personalizations.0.to.0.email",
                "help": "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/"
                "errors.html#message.personalizations.to",
            }
        ]
    }
    message = email(1, to="kunde1@@example")
    results = send(SENDGRID, reply(400, body=body), [message])
    assert results == [
        SendResult(
            message.send_key,
            SendStatus.REJECTED,
            error="sendgrid: Does not contain a valid address.",
        )
    ]


@pytest.mark.parametrize(
    ("field_name", "text"),
    [
        ("from.email", "The from email does not contain a valid address."),
        ("content.0.value", "The content value must be a string at least one character in length."),
    ],
)
def test_sendgrid_400_about_another_field_is_permanent(field_name: str, text: str) -> None:
    body = {"errors": [{"message": text, "field": field_name, "help": None}]}
    error = send_error(SENDGRID, reply(400, body=body), PermanentDeliveryError)
    assert text in str(error)
    assert "400" in str(error)


def test_sendgrid_request_carries_the_send_key_digest_in_custom_args() -> None:
    recorder = Recorder(_sendgrid_accepted)
    message = email()
    provider = SendGrid(BASE_URL, TOKEN, FROM, transport=httpx.MockTransport(recorder))
    provider.send_batch([message])
    provider.close()
    [body] = recorder.bodies
    reference = provider_key(None, message.send_key)
    assert body["custom_args"] == {"send_key": reference, "campaign": "winback"}
    assert body["categories"] == ["winback"]


# --- Brevo ------------------------------------------------------------------------------------


def test_brevo_sends_the_idempotency_key_of_each_send_key() -> None:
    recorder = Recorder(_brevo_accepted)
    messages = [email(1), email(2)]
    provider = Brevo(BASE_URL, TOKEN, FROM, transport=httpx.MockTransport(recorder))
    provider.send_batch(messages)
    provider.close()

    keys = [body["headers"]["idempotencyKey"] for body in recorder.bodies]
    assert keys == [idempotency_key(provider_key(None, m.send_key)) for m in messages]
    assert keys[0] != keys[1]


def test_brevo_idempotency_key_is_a_stable_uuid() -> None:
    key = idempotency_key("winback:2026-01-15:1")
    assert uuid.UUID(key).version == 5
    assert idempotency_key("winback:2026-01-15:1") == key
    assert idempotency_key("winback:2026-01-15:2") != key
    # pinned: a resend after an upgrade must carry the key the first attempt carried
    assert idempotency_key("c1:42:1") == "aad85903-e09c-5eda-b5bb-ce0de49f88b5"


def test_brevo_400_about_the_recipient_is_rejected_other_400_permanent() -> None:
    bad_to = {"code": "invalid_parameter", "message": "email is not valid in to"}
    [result] = send(BREVO, reply(400, body=bad_to), [email(1, to="kunde1@@example")])
    assert result.status is SendStatus.REJECTED
    assert result.error == "brevo invalid_parameter: email is not valid in to"

    no_sender = {"code": "missing_parameter", "message": "sender is missing"}
    error = send_error(BREVO, reply(400, body=no_sender), PermanentDeliveryError)
    assert "sender is missing" in str(error)


@pytest.mark.parametrize("case", [BREVO, MAILPIT], ids=["brevo", "mailpit"])
@pytest.mark.parametrize(
    "text", ["valid sender email required", "invalid From email address", "Reply-To email bad"]
)
def test_a_400_about_our_own_address_suppresses_no_recipient(case: Case, text: str) -> None:
    """A typo in ``from_email`` is ours: the batch fails, nobody is rejected (suppressed)."""
    body = {"code": "invalid_parameter", "message": text} if case is BREVO else {"Error": text}
    error = send_error(case, reply(400, body=body), PermanentDeliveryError)
    assert text in str(error)


# --- make_provider -------------------------------------------------------------------------


SIGNING_KEY = b"k" * 32


def _settings(provider: str, token: str | None = TOKEN, **esp: Any) -> Settings:
    return Settings(
        esp=EspSettings(provider=provider, base_url=BASE_URL, from_email="news@shop.test", **esp),
        esp_token=token,
        signing_key=SIGNING_KEY.decode(),  # each provider names an e-mail by a digest under it
    )


@pytest.mark.parametrize(
    ("case", "cls"),
    [(POSTMARK, Postmark), (SENDGRID, SendGrid), (BREVO, Brevo), (MAILPIT, Mailpit)],
    ids=[c.name for c in CASES],
)
def test_make_provider_builds_the_configured_provider(case: Case, cls: type[Any]) -> None:
    token = None if case is MAILPIT else TOKEN
    recorder = Recorder(case.accepted)
    provider = make_provider(
        _settings(case.name, token, message_stream="outbound"),
        transport=httpx.MockTransport(recorder),
    )
    assert isinstance(provider, cls)
    message = email()
    assert provider.send_batch([message]) == [
        SendResult(message.send_key, SendStatus.ACCEPTED, message_id=case.message_id(0))
    ]
    provider.close()

    [request] = recorder.requests
    assert str(request.url) == BASE_URL + case.path
    if case.auth is not None:
        assert request.headers[case.auth[0]] == case.auth[1]
    sent = [Sent.of(message, "news@shop.test", SIGNING_KEY)]
    assert case.decode(json.loads(request.content)) == sent
    if case is POSTMARK:
        assert recorder.bodies[0][0]["MessageStream"] == "outbound"


@pytest.mark.parametrize("name", ["postmark", "sendgrid", "brevo"])
@pytest.mark.parametrize("token", [None, ""], ids=["unset", "empty"])
def test_make_provider_without_a_token_names_the_variable(name: str, token: str | None) -> None:
    with pytest.raises(ConfigError) as info:
        make_provider(_settings(name, token))
    assert "RECOCAMP_ESP_TOKEN" in str(info.value)
    assert name in str(info.value)


def test_make_provider_mailpit_needs_no_token() -> None:
    recorder = Recorder(_mailpit_accepted)
    provider = make_provider(_settings("mailpit", None), transport=httpx.MockTransport(recorder))
    provider.send_batch([email()])
    provider.close()
    [request] = recorder.requests
    assert "authorization" not in request.headers


def test_make_provider_fake() -> None:
    provider = make_provider(Settings(esp=EspSettings(provider="fake", batch_size=50)))
    assert isinstance(provider, FakeProvider)
    assert provider.batch_limit == 50


# --- retry_after() ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": " 0 "}, 0.0),
        (
            {"Retry-After": format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True)},
            90.0,
        ),
        ({"Retry-After": format_datetime(datetime.fromtimestamp(NOW - 90, UTC), usegmt=True)}, 0.0),
        ({"X-RateLimit-Reset": str(int(NOW) + 12)}, 12.0),
        ({"X-RateLimit-Reset": str(int(NOW) - 12)}, 0.0),
        ({"RateLimit-Reset": "5"}, 5.0),
        ({"x-sib-ratelimit-reset": "42"}, 42.0),
        ({"Retry-After": "3", "X-RateLimit-Reset": str(int(NOW) + 12)}, 3.0),
        ({"X-RateLimit-Reset": "soon", "RateLimit-Reset": "4"}, 4.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": ""}, None),
        ({"X-RateLimit-Reset": "tomorrow"}, None),
        ({}, None),
    ],
    ids=[
        "seconds",
        "zero",
        "http-date",
        "past-date",
        "epoch-reset",
        "past-epoch",
        "delta-reset",
        "brevo-reset",
        "retry-after-wins",
        "next-reset-header",
        "garbage",
        "empty",
        "garbage-reset",
        "none",
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert esp_http.retry_after(httpx.Headers(headers), now=NOW) == expected


@pytest.mark.parametrize(
    "headers",
    [{"Retry-After": "inf"}, {"Retry-After": "1e400"}, {"X-RateLimit-Reset": "Infinity"}],
    ids=["inf", "1e400", "reset-infinity"],
)
def test_retry_after_ignores_non_finite_values(headers: dict[str, str]) -> None:
    assert esp_http.retry_after(httpx.Headers(headers), now=NOW) is None


PROXY_PAGE = (
    b"<html><body><h1>400 Bad Request</h1><p>Request header too large</p>nginx</body></html>"
)


@pytest.mark.parametrize("case", [POSTMARK, SENDGRID, BREVO], ids=lambda c: c.name)
def test_a_4xx_html_page_instead_of_the_apis_json_error_fails_no_message(case: Case) -> None:
    """A 400 whose body is a proxy's HTML page, not the provider's JSON error: a plain
    ``DeliveryError`` (the claims go back, the run stops naming the answer). Each provider
    raised ``PermanentDeliveryError``, which failed every message of the request for good."""

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(400, content=PROXY_PAGE, headers={"Content-Type": "text/html"})

    error = send_error(case, answer, DeliveryError)
    assert type(error) is DeliveryError
    assert "HTTP 400" in str(error) and "base_url" in str(error)


@pytest.mark.parametrize(
    ("from_email", "on_the_wire"),
    [
        ("Shop Inc. <shop@example.test>", '"Shop Inc." <shop@example.test>'),
        ("Müller & Söhne <shop@example.test>", "Müller & Söhne <shop@example.test>"),
        ("shop@example.test", "shop@example.test"),
    ],
)
def test_postmark_from_quotes_a_name_with_a_period(from_email: str, on_the_wire: str) -> None:
    """``Shop Inc. <…>`` passes the settings; unquoted, its "." is obsolete RFC 5322 syntax
    (not to be generated; Postmark asks for such names quoted): it went out as written."""
    recorder = Recorder(_postmark_accepted)
    provider = Postmark(BASE_URL, TOKEN, from_email, transport=httpx.MockTransport(recorder))
    provider.send_batch([email()])
    provider.close()
    sent = recorder.bodies[0][0]["From"]
    assert sent == on_the_wire
    assert not HeaderRegistry()("From", sent).defects
