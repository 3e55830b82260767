"""The local stand-in ESP: a real HTTP server that answers as Postmark's API does.

``recocamp fake-esp`` runs it; the demo and the end-to-end tests point the postmark
provider at it, and a real Postmark client (``postmarker``) cannot tell it from Postmark
on the endpoints below (tests/delivery/esp/test_fake_postmark.py drives it with one). The rules
come from Postmark's API reference (:mod:`recocamp.esp.fake_contract`); where the fake
still differs, the README's table "Where the fake ESP differs from Postmark" says so.

It stores every message it accepts (in memory, and as JSON lines in ``--data-dir`` when
given) and counts duplicates by the ``X-Recocamp-Send-Key`` header (or ``Metadata.send_key``).

Postmark endpoints (``X-Postmark-Server-Token``; ``--token`` makes any other token a 401)
  ``POST /email``, ``POST /email/batch``        send one / up to 500 (per-message ErrorCode)
  ``GET  /messages/outbound``                   search: count, offset, recipient, fromemail,
                                                tag, status, subject, fromdate, todate,
                                                messagestream, metadata_<key>
  ``GET  /messages/outbound/{id}/details|dump`` one message, its SMTP source
  ``GET  /bounces``, ``/bounces/{id}``, ``/bounces/{id}/dump``, ``PUT /bounces/{id}/activate``
  ``GET  /server``
Control endpoints (open without ``--token``; with it, the same ``X-Postmark-Server-Token``:
what they answer holds addresses and working signed links, and they can wipe or wedge it)
  ``GET  /_stats``                 ``{"received", "unique_send_keys", "duplicates",
                                   "without_send_key"}``
  ``GET  /_messages``              what was received (``?send_key=``, ``?limit=``)
  ``POST /_faults``                switch fault injection (JSON body, see :class:`Faults`;
                                   a wrong type or a value out of range is 422 naming it)
  ``POST /_webhooks/{kind}``       a bounce, complaint, delivery or unsubscribe of a received
                                   message (``{"message_id"|"send_key", "url"}``): recorded
                                   (bounces deactivate the address, as at Postmark) and posted
                                   as Postmark's webhook to ``url`` or ``webhook_url`` (an
                                   http(s) URL; one that cannot be reached is 502)
  ``DELETE /_messages``            forget everything

Faults: ``latency_ms`` per request; ``rate_429`` / ``rate_5xx`` share of send requests
refused (nothing stored; 429 carries ``Retry-After: retry_after_s``, none when that is
null, as at Postmark, which documents no wait header); ``rate_drop`` share of send requests
*accepted and stored* whose answer never comes (the connection stalls past the client's
timeout: the nastiest case for exactly-once); ``inactive`` addresses answered with 406.
A shutdown (SIGTERM, Ctrl-C, the end of :func:`running`) cuts every injected pause short:
uvicorn waits for the requests in flight, and a pause must not hold it for a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import json
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from recocamp.delivery.esp import fake_contract as pm

SEND_KEY = "X-Recocamp-Send-Key"
RECORD_TYPES = {
    "bounce": "Bounce",
    "complaint": "SpamComplaint",
    "delivery": "Delivery",
    "unsubscribe": "SubscriptionChange",
}
FREEZE_EVERY = 10_000  # stored messages between two freezes (``freeze_stored``)
INACTIVE = "You tried to send to recipient(s) that have been marked as inactive."
MAX_LISTED = 100_000  # ``GET /_messages?limit=``


class Faults(BaseModel):
    """What ``POST /_faults`` switches on, checked strictly: ``"abc"`` for a rate used to be
    stored and turn every later send into a 500, ``1e12`` ms of latency to hang sends (and
    the shutdown behind them), a string for ``inactive`` to be read letter by letter."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    latency_ms: float = Field(default=0.0, ge=0.0, le=60_000.0)
    rate_429: float = Field(default=0.0, ge=0.0, le=1.0)
    rate_5xx: float = Field(default=0.0, ge=0.0, le=1.0)
    rate_drop: float = Field(default=0.0, ge=0.0, le=1.0)
    drop_stall_s: float = Field(default=30.0, ge=0.0, le=600.0)
    # None: a 429 without Retry-After, as Postmark answers (it documents no wait header)
    retry_after_s: float | None = Field(default=1.0, ge=0.0, le=3600.0)
    inactive: list[str] = Field(default_factory=list, max_length=10_000)
    seed: int | None = None


Control = TypeVar("Control", bound=BaseModel)  # the body of a control route


class WebhookRequest(BaseModel):
    """``POST /_webhooks/{kind}``: the message (by id or send key) and where to post."""

    model_config = ConfigDict(strict=True, extra="forbid")

    message_id: str | None = None
    send_key: str | None = None
    url: str | None = None


def _utc_now() -> datetime:
    return datetime.now(UTC)


class FakeEsp:
    """The state behind the server: messages, send-key counts, bounces, faults."""

    def __init__(
        self,
        data_dir: Path | None = None,
        faults: Faults | None = None,
        webhook_url: str | None = None,
        token: str | None = None,
        clock: Callable[[], datetime] = _utc_now,
        streams: Mapping[str, str] = pm.STREAMS,
        *,
        freeze_stored: bool = False,
    ) -> None:
        """``freeze_stored``: keep stored messages out of the garbage collector's walks (see
        :meth:`_store`); for a process of its own, as ``recocamp fake-esp`` runs it (it freezes
        the whole process's objects)."""
        self.freeze_stored, self.frozen_at = freeze_stored, 0
        self.data_dir = data_dir
        self.webhook_url = webhook_url
        self.token = token
        self.clock = clock
        self.streams = streams
        self.messages: list[dict[str, Any]] = []
        self.by_id: dict[str, dict[str, Any]] = {}
        self.keys: Counter[str] = Counter()
        self.without_key = 0
        self.bounces: dict[int, dict[str, Any]] = {}
        # addresses a hard bounce, a complaint or an unsubscribe turned off
        self.deactivated: set[str] = set()
        self.stopping = False
        self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self.set_faults(faults or Faults())
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self.rng = random.Random(faults.seed)

    def stop(self) -> None:
        """Cut every injected pause short, now and later (from any thread, or a signal
        handler): the server is shutting down and waits for the requests in flight."""
        self.stopping = True
        if self._wake is not None:
            loop, wake = self._wake
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing waits
                loop.call_soon_threadsafe(wake.set)

    def serving(self) -> None:
        """Pauses pause again: a server (re)starts with this fake."""
        self.stopping, self._wake = False, None

    async def pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (injected latency, a dropped answer) unless :meth:`stop` comes
        first. The event is made in the server's loop, on first use."""
        loop = asyncio.get_running_loop()
        if self._wake is None or self._wake[0] is not loop:
            self._wake = (loop, asyncio.Event())
        if self.stopping or seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake[1].wait(), seconds)

    def stats(self) -> dict[str, int]:
        """Duplicates are counted among messages that carry a send key; the others are
        ``without_send_key`` (a plain client's mail is not a duplicate of anything)."""
        return {
            "received": len(self.messages),
            "unique_send_keys": len(self.keys),
            "duplicates": sum(n - 1 for n in self.keys.values()),
            "without_send_key": self.without_key,
        }

    def reset(self) -> None:
        self.messages.clear()
        self.by_id.clear()
        self.keys.clear()
        self.without_key, self.frozen_at = 0, 0
        self.bounces.clear()
        self.deactivated.clear()

    def submit(self, raws: Sequence[object]) -> list[dict[str, Any] | pm.Refusal]:
        """Check every message first, then store the accepted ones in one go: an invalid
        message never leaves part of its batch stored behind an error."""
        received_at = pm.stamp(self.clock())
        off = self.deactivated | {a.lower() for a in self.faults.inactive}
        answers: list[dict[str, Any] | pm.Refusal] = []
        for raw in raws:
            checked = pm.validate(raw, self.streams)
            if isinstance(checked, pm.Refusal):
                answers.append(checked)
            elif off and any(a.lower() in off for a in pm.recipients_of(checked)):
                answers.append(pm.Refusal(422, 406, INACTIVE))
            else:
                answers.append(self._record(checked, received_at))
        self._store([a for a in answers if isinstance(a, dict)])
        return answers

    def _record(self, message: dict[str, Any], received_at: str) -> dict[str, Any]:
        key = str(message["Headers"].get(SEND_KEY) or message["Metadata"].get("send_key") or "")
        return {
            "MessageID": str(uuid.uuid4()),
            "ReceivedAt": received_at,
            "send_key": key,
            **message,
            "Events": [],
        }

    def _store(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self.messages.append(record)
            self.by_id[record["MessageID"]] = record
            if record["send_key"]:
                self.keys[record["send_key"]] += 1
            else:
                self.without_key += 1
        if self.freeze_stored and len(self.messages) >= self.frozen_at + FREEZE_EVERY:
            # every message is kept (dicts of dicts, never garbage): the collector's full walks
            # over them took 35 % of the server's CPU on benchmarks/send.py, frozen ~3 %; the
            # garbage of the moment is collected first, or freezing would keep it for good
            gc.collect()
            gc.freeze()
            self.frozen_at = len(self.messages)
        if self.data_dir is not None and records:
            lines = "".join(json.dumps(r) + "\n" for r in records)
            # every message whole (addresses, bodies, working signed links): its owner's
            # alone, from its first byte, as ``privacy export --output`` writes
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
            handle = os.open(self.data_dir / "messages.jsonl", flags, 0o600)
            with open(handle, "a", encoding="utf-8") as out:
                out.write(lines)

    def record_event(self, kind: str, record: dict[str, Any]) -> dict[str, Any] | None:
        """What Postmark records for a webhook event: a message event, and for a hard bounce
        or complaint a bounce that deactivates the address; an unsubscribe deactivates it
        without a bounce (a manual suppression: Postmark answers a send to it 406 as well).
        Returns the bounce, if any."""
        now = self.clock()
        record["Events"].append(pm.event(kind, record, now))
        if kind == "unsubscribe":
            self.deactivated.add(record["To"].lower())
        if kind not in pm.BOUNCE_TYPES:
            return None
        found = pm.bounce(kind, record, len(self.bounces) + 1, now)
        self.bounces[found["ID"]] = found
        self.deactivated.add(found["Email"].lower())
        return found


def create_app(esp: FakeEsp) -> FastAPI:
    app = FastAPI(title="recocamp fake ESP (Postmark's API)")
    app.state.esp = esp
    _add_error_handlers(app)
    _add_send_routes(app, esp)
    _add_message_routes(app, esp)
    _add_bounce_routes(app, esp)
    _add_control_routes(app, esp)
    return app


def _answer(refusal: pm.Refusal) -> JSONResponse:
    return JSONResponse(refusal.body(), refusal.status)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in Postmark's shape, ``{"ErrorCode", "Message"}``: a Postmark client
    reads ``ErrorCode`` from any 4xx/5xx body."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"ErrorCode": exc.status_code, "Message": str(exc.detail)}, exc.status_code
        )

    @app.exception_handler(RequestValidationError)
    async def bad_field(request: Request, exc: RequestValidationError) -> JSONResponse:
        names = ", ".join(f"'{e['loc'][-1]}'" for e in exc.errors())
        return JSONResponse(
            {"ErrorCode": 403, "Message": f"Invalid request field(s): {names}."}, 422
        )


def _add_send_routes(app: FastAPI, esp: FakeEsp) -> None:
    @app.post("/email")
    async def email(request: Request) -> Any:
        body = await _send_request(esp, request, pm.MAX_EMAIL_BYTES)
        if isinstance(body, JSONResponse):
            return body
        answer = esp.submit([body])[0]
        await _maybe_drop(esp)
        return _answer(answer) if isinstance(answer, pm.Refusal) else _accepted(answer)

    @app.post("/email/batch")
    async def batch(request: Request) -> Any:
        body = await _send_request(esp, request, pm.MAX_BATCH_BYTES)
        if isinstance(body, JSONResponse):
            return body
        if not isinstance(body, list):
            return _answer(
                pm.Refusal(
                    422,
                    403,
                    "Incompatible JSON: the batch endpoint expects a JSON array of messages.",
                )
            )
        if not body:
            return _answer(pm.invalid("The batch has no messages: send 1 to 500."))
        if len(body) > pm.MAX_BATCH:
            return _answer(
                pm.Refusal(
                    422, 410, "You may only send up to 500 messages in a single batched request."
                )
            )
        answers = esp.submit(body)
        await _maybe_drop(esp)
        return [a.body() if isinstance(a, pm.Refusal) else _accepted(a) for a in answers]


async def _send_request(esp: FakeEsp, request: Request, limit: int) -> Any:
    """Token, latency, injected refusals, then the JSON body (within ``limit`` bytes);
    a JSONResponse when the request ends here."""
    refused = _authorise(esp, request)
    if refused is not None:
        return _answer(refused)
    await _latency(esp)
    injected = _refusal(esp)
    if injected is not None:
        return injected
    body = await _json_body(request, limit)
    return _answer(body) if isinstance(body, pm.Refusal) else body


async def _json_body(request: Request, limit: int) -> Any:
    too_large = pm.Refusal(
        413, 300, f"Payload Too Large: this endpoint takes at most {limit // 2**20} MB."
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return too_large
    try:  # a batch is megabytes: orjson, not json
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return pm.Refusal(422, 402, "Invalid JSON")


def _accepted(record: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "To": ", ".join(pm.recipients_of(record)),
        "SubmittedAt": record["ReceivedAt"],
        "MessageID": record["MessageID"],
        "ErrorCode": 0,
        "Message": "OK",
    }


async def _maybe_drop(esp: FakeEsp) -> None:
    if esp.rng.random() < esp.faults.rate_drop:
        await esp.pause(esp.faults.drop_stall_s)  # stored, but the answer never comes


def _add_message_routes(app: FastAPI, esp: FakeEsp) -> None:
    @app.get("/messages/outbound")
    async def outbound(request: Request) -> Any:
        refused = _authorise(esp, request)
        found = refused or pm.search_messages(esp.messages, request.query_params)
        if isinstance(found, pm.Refusal):
            return _answer(found)
        total, page = found
        return {"TotalCount": total, "Messages": [pm.summary(m) for m in page]}

    @app.get("/messages/outbound/{message_id}/details")
    async def message_details(message_id: str, request: Request) -> Any:
        found = _authorise(esp, request) or _message(esp, message_id)
        return _answer(found) if isinstance(found, pm.Refusal) else pm.details(found)

    @app.get("/messages/outbound/{message_id}/dump")
    async def message_dump(message_id: str, request: Request) -> Any:
        found = _authorise(esp, request) or _message(esp, message_id)
        return _answer(found) if isinstance(found, pm.Refusal) else {"Body": pm.mime(found)}

    @app.get("/server")
    async def server(request: Request) -> Any:
        refused = _authorise(esp, request)
        return _answer(refused) if refused else pm.server(esp.token, esp.webhook_url)


def _message(esp: FakeEsp, message_id: str) -> dict[str, Any] | pm.Refusal:
    found = esp.by_id.get(message_id)
    return found if found is not None else pm.Refusal(422, 701, "This message was not found.")


def _add_bounce_routes(app: FastAPI, esp: FakeEsp) -> None:
    @app.get("/bounces")
    @app.get("/bounces/")
    async def bounces(request: Request) -> Any:
        refused = _authorise(esp, request)
        found = refused or pm.search_bounces(esp.bounces.values(), request.query_params)
        if isinstance(found, pm.Refusal):
            return _answer(found)
        total, page = found
        return {"TotalCount": total, "Bounces": page}

    @app.get("/bounces/{bounce_id}")
    async def one_bounce(bounce_id: str, request: Request) -> Any:
        found = _authorise(esp, request) or _bounce(esp, bounce_id)
        return _answer(found) if isinstance(found, pm.Refusal) else found

    @app.get("/bounces/{bounce_id}/dump")
    async def bounce_dump(bounce_id: str, request: Request) -> Any:
        found = _authorise(esp, request) or _bounce(esp, bounce_id)
        return _answer(found) if isinstance(found, pm.Refusal) else {}  # no dump is kept

    @app.put("/bounces/{bounce_id}/activate")
    async def activate(bounce_id: str, request: Request) -> Any:
        found = _authorise(esp, request) or _bounce(esp, bounce_id)
        if isinstance(found, pm.Refusal):
            return _answer(found)
        if not found["CanActivate"]:
            return _answer(
                pm.Refusal(
                    422, 1003, "Due to the type of bounce, this address cannot be reactivated."
                )
            )
        found["Inactive"] = False
        esp.deactivated.discard(found["Email"].lower())
        return {"Message": "OK", "Bounce": found}


def _bounce(esp: FakeEsp, bounce_id: str) -> dict[str, Any] | pm.Refusal:
    found = esp.bounces.get(int(bounce_id)) if bounce_id.isdigit() else None
    return found if found is not None else pm.Refusal(422, 1001, "This bounce was not found.")


def _add_control_routes(app: FastAPI, esp: FakeEsp) -> None:
    @app.get("/_stats")
    async def stats(request: Request) -> Any:
        refused = _authorise_control(esp, request)
        return _answer(refused) if refused else esp.stats()

    @app.get("/_messages")
    async def messages(
        request: Request,
        send_key: str | None = None,
        limit: int = Query(100, ge=1, le=MAX_LISTED),
    ) -> Any:
        refused = _authorise_control(esp, request)
        if refused:
            return _answer(refused)
        found = [m for m in esp.messages if send_key is None or m["send_key"] == send_key]
        return found[-limit:]

    @app.delete("/_messages")
    async def reset(request: Request) -> Any:
        refused = _authorise_control(esp, request)
        if refused:
            return _answer(refused)
        esp.reset()
        return esp.stats()

    @app.post("/_faults")
    async def faults(request: Request) -> Any:
        checked = await _control_body(esp, request, Faults)
        if isinstance(checked, JSONResponse):
            return checked
        esp.set_faults(checked)
        return esp.faults.model_dump()

    @app.post("/_webhooks/{kind}")
    async def webhook(kind: str, request: Request) -> Any:
        checked = await _control_body(esp, request, WebhookRequest)
        if isinstance(checked, JSONResponse):
            return checked
        return await _post_webhook(esp, kind, checked)


def _authorise_control(esp: FakeEsp, request: Request) -> pm.Refusal | None:
    """The control routes are open when the fake takes any token (the demo, the tests'
    in-process fakes); with ``--token`` they take that one, as the Postmark routes do."""
    return None if esp.token is None else _authorise(esp, request)


async def _control_body(
    esp: FakeEsp, request: Request, model: type[Control]
) -> Control | JSONResponse:
    """The token, then the JSON body as ``model``: 422 naming each field that is wrong."""
    refused = _authorise_control(esp, request)
    if refused is not None:
        return _answer(refused)
    body = await _json_body(request, pm.MAX_EMAIL_BYTES)
    if isinstance(body, pm.Refusal):
        return _answer(body)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(_problem(error) for error in exc.errors())
        return _answer(pm.Refusal(422, 403, f"Invalid request field(s): {problems}."))


def _problem(error: Mapping[str, Any]) -> str:
    """``'rate_429': Input should be a valid number (given 'abc')``; addresses (the items
    of ``inactive``) are never repeated, and the whole body is named ``body``."""
    loc = [str(part) for part in error["loc"]]
    name = loc[0] + "".join(f"[{part}]" for part in loc[1:]) if loc else "body"
    given = error.get("input")
    shown = (
        f" (given {given!r:.80})"
        if loc and loc[0] != "inactive" and isinstance(given, str | int | float)
        else ""
    )
    return f"'{name}': {error['msg']}{shown}"


async def _post_webhook(esp: FakeEsp, kind: str, asked: WebhookRequest) -> dict[str, Any]:
    """Record the event at the fake (as Postmark would), then post Postmark's webhook body
    to ``url`` (or ``--webhook-url``) when there is one: an http(s) URL with a host (422
    otherwise, nothing recorded); one that cannot be reached is a 502 that says so."""
    if kind not in RECORD_TYPES:
        raise HTTPException(404, f"unknown webhook kind {kind!r}")
    url = asked.url or esp.webhook_url
    wrong = webhook_url_problem(url) if url else None
    if wrong:
        raise HTTPException(422, f"Invalid request field(s): 'url': {wrong}.")
    record = esp.by_id.get(str(asked.message_id)) or next(
        (m for m in esp.messages if asked.send_key and m["send_key"] == asked.send_key), None
    )
    if record is None:
        raise HTTPException(404, "no such message")
    bounce = esp.record_event(kind, record)
    payload = postmark_event(kind, record, esp.clock(), bounce["ID"] if bounce else None)
    if not url:
        return {"posted": None, "status": None, "event": payload}
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(url, json=payload)
    except httpx.HTTPError as exc:
        raise HTTPException(
            502,
            f"the {kind} was recorded, but posting its webhook to {url} failed "
            f"({type(exc).__name__}: {exc or 'no answer'})",
        ) from exc
    return {"posted": payload, "status": response.status_code, "event": payload}


def webhook_url_problem(url: str) -> str | None:
    """Why ``url`` cannot take a webhook (not http(s), no host), or None when it can."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # a bad port or IPv6 literal
        return f"{url!r:.200} is not a URL"
    if parts.scheme not in ("http", "https") or not host:
        return f"{url!r:.200} is not an http(s) URL with a host"
    return None


def postmark_event(
    kind: str, record: dict[str, Any], at: datetime, bounce_id: int | None = None
) -> dict[str, Any]:
    """A webhook body the way Postmark posts it (``bounce_id``: the bounce's ``ID`` at
    ``GET /bounces``; by default one derived from the message id)."""
    common = {
        "RecordType": RECORD_TYPES[kind],
        "MessageID": record["MessageID"],
        "Metadata": record["Metadata"],
        "Tag": record.get("Tag") or "",
        "MessageStream": record.get("MessageStream", "broadcast"),
        "ServerID": 1,
    }
    stamp = at.isoformat()
    derived = uuid.UUID(record["MessageID"]).int % 10**10 if bounce_id is None else bounce_id
    if kind == "bounce":
        return {
            **common,
            "ID": derived,
            "Type": "HardBounce",
            "TypeCode": 1,
            "Email": record["To"],
            "BouncedAt": stamp,
            "Inactive": True,
            "Description": "The server was unable to deliver your message.",
        }
    if kind == "complaint":
        return {
            **common,
            "ID": derived,
            "Type": "SpamComplaint",
            "TypeCode": 100001,
            "Email": record["To"],
            "BouncedAt": stamp,
            "Inactive": True,
        }
    if kind == "delivery":
        return {**common, "Recipient": record["To"], "DeliveredAt": stamp, "Details": "250 OK"}
    return {
        **common,
        "Recipient": record["To"],
        "ChangedAt": stamp,
        "SuppressSending": True,
        "SuppressionReason": "ManualSuppression",
        "Origin": "Recipient",
    }


def _authorise(esp: FakeEsp, request: Request) -> pm.Refusal | None:
    """401 with ErrorCode 10 for a missing token, and for any token but ``--token``."""
    given = request.headers.get("X-Postmark-Server-Token")
    if not given or (
        esp.token is not None and not hmac.compare_digest(given.encode(), esp.token.encode())
    ):
        return pm.unauthorised(given)
    return None


async def _latency(esp: FakeEsp) -> None:
    if esp.faults.latency_ms:
        await esp.pause(esp.faults.latency_ms / 1000)


def _refusal(esp: FakeEsp) -> JSONResponse | None:
    roll = esp.rng.random()
    if roll < esp.faults.rate_429:
        wait = esp.faults.retry_after_s
        return JSONResponse(
            {"ErrorCode": 429, "Message": "Rate limit exceeded."},
            429,
            headers={} if wait is None else {"Retry-After": f"{wait:g}"},
        )
    if roll < esp.faults.rate_429 + esp.faults.rate_5xx:
        injected = "You encountered an error that shouldn't have occurred (fake ESP fault)."
        return JSONResponse({"ErrorCode": 101, "Message": injected}, 500)
    return None


def serve(esp: FakeEsp, host: str, port: int) -> None:
    """``recocamp fake-esp``: serve until SIGINT or SIGTERM. The signal also stops the
    injected pauses (:meth:`FakeEsp.stop`), or uvicorn's wait for the requests in flight
    would sit out their latency."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            esp.stop()
            super().handle_exit(sig, frame)

    esp.serving()
    Server(uvicorn.Config(create_app(esp), host=host, port=port, log_level="warning")).run()


@contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread (tests, benchmarks); yields its base URL.
    A fake ESP's app (``create_app``) has its pauses stopped first, as at a SIGTERM."""
    import uvicorn

    esp = getattr(getattr(app, "state", None), "esp", None)
    if isinstance(esp, FakeEsp):
        esp.serving()
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        if isinstance(esp, FakeEsp):
            esp.stop()
        server.should_exit = True
        thread.join(10)
