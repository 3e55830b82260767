"""The local stand-in ESP: a real HTTP server that speaks Postmark's batch contract.

``recocamp fake-esp`` runs it; the demo and the end-to-end tests point the postmark
provider at it. It stores every message it accepts (in memory, and as JSON lines in
``--data-dir`` when given) and counts duplicates by the ``X-Recocamp-Send-Key`` header.

Endpoints
  ``POST /email/batch``            Postmark's batch send (≤ 500, per-message ErrorCode)
  ``GET  /messages/outbound``      Postmark's search, incl. ``metadata_send_key=``
  ``GET  /_stats``                 ``{"received", "unique_send_keys", "duplicates"}``
  ``GET  /_messages``              what was received (``?send_key=``, ``?limit=``)
  ``POST /_faults``                switch fault injection (JSON body, see :class:`Faults`)
  ``POST /_webhooks/{kind}``       post a Postmark webhook (bounce, complaint, delivery,
                                   unsubscribe) about a received message to ``webhook_url``
  ``DELETE /_messages``            forget everything

Faults: ``latency_ms`` per request; ``rate_429`` / ``rate_5xx`` share of requests refused
(nothing stored; 429 carries ``Retry-After``); ``rate_drop`` share of requests *accepted and
stored* whose answer never comes (the connection stalls past the client's timeout: the
nastiest case for exactly-once); ``inactive`` addresses answered with ErrorCode 406.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

SEND_KEY = "X-Recocamp-Send-Key"
RECORD_TYPES = {
    "bounce": "Bounce",
    "complaint": "SpamComplaint",
    "delivery": "Delivery",
    "unsubscribe": "SubscriptionChange",
}


@dataclass
class Faults:
    latency_ms: float = 0.0
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    rate_drop: float = 0.0
    drop_stall_s: float = 30.0
    retry_after_s: float = 1.0
    inactive: list[str] = field(default_factory=list)
    seed: int | None = None


class FakeEsp:
    def __init__(
        self,
        data_dir: Path | None = None,
        faults: Faults | None = None,
        webhook_url: str | None = None,
        token: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.webhook_url = webhook_url
        self.token = token
        self.messages: list[dict[str, Any]] = []
        self.by_id: dict[str, dict[str, Any]] = {}
        self.keys: Counter[str] = Counter()
        self.set_faults(faults or Faults())
        if data_dir is not None:
            data_dir.mkdir(parents=True, exist_ok=True)

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        self.rng = random.Random(faults.seed)

    def stats(self) -> dict[str, int]:
        received = len(self.messages)
        return {
            "received": received,
            "unique_send_keys": len(self.keys),
            "duplicates": sum(n - 1 for n in self.keys.values() if n > 1),
        }

    def accept(self, message: dict[str, Any]) -> dict[str, Any]:
        to = str(message.get("To") or "")
        now = datetime.now(UTC).isoformat()
        if not to or "@" not in to:
            return {"ErrorCode": 300, "Message": "Invalid 'To' address.", "To": to}
        if to.lower() in {a.lower() for a in self.faults.inactive}:
            return {
                "ErrorCode": 406,
                "To": to,
                "SubmittedAt": now,
                "Message": ("You tried to send to recipient(s) that have been marked as inactive."),
            }
        record = self._store(message, to, now)
        return {
            "ErrorCode": 0,
            "Message": "OK",
            "MessageID": record["MessageID"],
            "To": to,
            "SubmittedAt": now,
        }

    def _store(self, message: dict[str, Any], to: str, now: str) -> dict[str, Any]:
        headers = {h.get("Name"): h.get("Value") for h in message.get("Headers") or []}
        key = str(headers.get(SEND_KEY) or (message.get("Metadata") or {}).get("send_key") or "")
        record: dict[str, Any] = {
            "MessageID": str(uuid.uuid4()),
            "ReceivedAt": now,
            "To": to,
            "send_key": key,
            "Subject": message.get("Subject"),
            "Headers": headers,
            "Metadata": message.get("Metadata") or {},
            "Tag": message.get("Tag"),
            "TextBody": message.get("TextBody"),
            "HtmlBody": message.get("HtmlBody"),
        }
        self.messages.append(record)
        self.by_id[record["MessageID"]] = record
        self.keys[key] += 1
        if self.data_dir is not None:
            with (self.data_dir / "messages.jsonl").open("a", encoding="utf-8") as out:
                out.write(json.dumps(record) + "\n")
        return record

    def search(self, params: dict[str, str]) -> list[dict[str, Any]]:
        found = self.messages
        for name, value in params.items():
            if name.startswith("metadata_"):
                meta = name.removeprefix("metadata_")
                found = [m for m in found if str(m["Metadata"].get(meta)) == value]
            elif name == "recipient":
                found = [m for m in found if m["To"].lower() == value.lower()]
            elif name == "tag":
                found = [m for m in found if m["Tag"] == value]
        return found


def create_app(esp: FakeEsp) -> FastAPI:
    app = FastAPI(title="recocamp fake ESP (Postmark contract)")
    app.state.esp = esp

    @app.post("/email/batch")
    async def batch(request: Request) -> Any:
        _authorise(esp, request)
        await _latency(esp)
        refused = _refusal(esp)
        if refused is not None:
            return refused
        try:  # a batch is megabytes: orjson, not json
            body = orjson.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, list) or len(body) > 500:
            return JSONResponse({"ErrorCode": 300, "Message": "Send 1 to 500 messages."}, 422)
        answers = [esp.accept(m) for m in body]
        if esp.rng.random() < esp.faults.rate_drop:
            await asyncio.sleep(esp.faults.drop_stall_s)  # stored, but the answer never comes
        return answers

    @app.get("/messages/outbound")
    async def outbound(request: Request) -> Any:
        _authorise(esp, request)
        params = dict(request.query_params)
        count, offset = int(params.pop("count", 100)), int(params.pop("offset", 0))
        found = esp.search(params)
        page = [
            {
                "MessageID": m["MessageID"],
                "To": [{"Email": m["To"]}],
                "Subject": m["Subject"],
                "Metadata": m["Metadata"],
                "Tag": m["Tag"],
                "ReceivedAt": m["ReceivedAt"],
                "Status": "Sent",
            }
            for m in found[offset : offset + count]
        ]
        return {"TotalCount": len(found), "Messages": page}

    _add_control_routes(app, esp)
    return app


def _add_control_routes(app: FastAPI, esp: FakeEsp) -> None:
    @app.get("/_stats")
    async def stats() -> dict[str, int]:
        return esp.stats()

    @app.get("/_messages")
    async def messages(send_key: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        found = [m for m in esp.messages if send_key is None or m["send_key"] == send_key]
        return found[-limit:]

    @app.delete("/_messages")
    async def reset() -> dict[str, int]:
        esp.messages.clear()
        esp.by_id.clear()
        esp.keys.clear()
        return esp.stats()

    @app.post("/_faults")
    async def faults(request: Request) -> dict[str, Any]:
        esp.set_faults(Faults(**(await request.json())))
        return asdict(esp.faults)

    @app.post("/_webhooks/{kind}")
    async def webhook(kind: str, request: Request) -> dict[str, Any]:
        body = await request.json()
        return await _post_webhook(esp, kind, body)


async def _post_webhook(esp: FakeEsp, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    if kind not in RECORD_TYPES:
        raise HTTPException(404, f"unknown webhook kind {kind!r}")
    record = esp.by_id.get(str(body.get("message_id"))) or next(
        (m for m in esp.messages if m["send_key"] == body.get("send_key")), None
    )
    url = body.get("url") or esp.webhook_url
    if record is None or not url:
        raise HTTPException(404, "no such message, or no webhook_url to post to")
    payload = postmark_event(kind, record, datetime.now(UTC))
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(url, json=payload)
    return {"posted": payload, "status": response.status_code}


def postmark_event(kind: str, record: dict[str, Any], at: datetime) -> dict[str, Any]:
    """A webhook body the way Postmark posts it."""
    common = {
        "RecordType": RECORD_TYPES[kind],
        "MessageID": record["MessageID"],
        "Metadata": record["Metadata"],
        "Tag": record.get("Tag") or "",
        "MessageStream": "broadcast",
        "ServerID": 1,
    }
    stamp = at.isoformat()
    if kind == "bounce":
        return {
            **common,
            "ID": uuid.UUID(record["MessageID"]).int % 10**10,
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
            "ID": uuid.UUID(record["MessageID"]).int % 10**10,
            "Type": "SpamComplaint",
            "TypeCode": 512,
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


def _authorise(esp: FakeEsp, request: Request) -> None:
    given = request.headers.get("X-Postmark-Server-Token")
    if not given or (esp.token is not None and given != esp.token):
        raise HTTPException(401, "Request does not contain a valid Server token.")


async def _latency(esp: FakeEsp) -> None:
    if esp.faults.latency_ms:
        await asyncio.sleep(esp.faults.latency_ms / 1000)


def _refusal(esp: FakeEsp) -> JSONResponse | None:
    roll = esp.rng.random()
    if roll < esp.faults.rate_429:
        return JSONResponse(
            {"ErrorCode": 429, "Message": "Rate limit exceeded."},
            429,
            headers={"Retry-After": f"{esp.faults.retry_after_s:g}"},
        )
    if roll < esp.faults.rate_429 + esp.faults.rate_5xx:
        return JSONResponse({"ErrorCode": 500, "Message": "Internal server error."}, 500)
    return None


@contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve an ASGI app with uvicorn in a thread (tests, benchmarks); yields its base URL."""
    import uvicorn

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
        server.should_exit = True
        thread.join(10)
