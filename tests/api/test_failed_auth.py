"""Failed authentications are limited per client address, on the real app and store: wrong
webhook secrets and unknown API keys were answered 401 without end (500 guesses a second
from one address, each webhook post read whole first), so a short secret could be guessed
online. Past ``[api] auth_failures_per_minute`` the address gets 429 with ``Retry-After``
before anything is checked; right credentials spend nothing; other addresses are not held
up; and a webhook's shared secret is checked before its body is read."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import SecretStr

from recocamp.api.app import create_app
from recocamp.api.auth import client_of
from recocamp.clock import FixedClock
from recocamp.ratelimit import RateLimiter
from recocamp.settings import Settings
from tests.api_shop import ENTRIES, KEYS
from tests.conftest import NOW

SECRET = "w" * 32
ATTACKER, SHOP = ("203.0.113.9", 40000), ("198.51.100.7", 40000)


class Clock:
    """The failure limiter's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.at = 1000.0

    def __call__(self) -> float:
        return self.at


def app_for(engine: sa.Engine, failures: int = 3) -> tuple[FastAPI, Clock]:
    settings = Settings(
        webhook_secret=SecretStr(SECRET),
        api_keys=SecretStr(ENTRIES),
        api={"auth_failures_per_minute": failures},
    )
    app = create_app(settings, engine, FixedClock(NOW))
    clock = Clock()
    app.state.authenticator.failures.monotonic = clock
    return app, clock


def send(
    app: FastAPI, client: tuple[str, int], method: str, path: str, **kwargs: Any
) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as http:
            return await http.request(method, path, **kwargs)

    return asyncio.run(go())


def hook(app: FastAPI, client: tuple[str, int], secret: str) -> httpx.Response:
    body = json.dumps([])  # no event: authenticated, nothing to apply
    headers = {"authorization": f"Bearer {secret}", "content-type": "application/json"}
    return send(app, client, "POST", "/v1/webhooks/postmark", content=body, headers=headers)


def retention(app: FastAPI, client: tuple[str, int], key: str) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"}
    return send(app, client, "GET", "/v1/privacy/retention", headers=headers)


def test_wrong_secrets_and_keys_from_one_address_are_limited(engine: sa.Engine) -> None:
    app, clock = app_for(engine, failures=3)
    dpo = KEYS["dpo"][0]
    assert hook(app, ATTACKER, "guess-1").status_code == 401
    assert retention(app, ATTACKER, "rck_guess-2").status_code == 401
    assert hook(app, ATTACKER, "guess-3").status_code == 401
    refused = hook(app, ATTACKER, "guess-4")
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    assert "failed authentications" in refused.json()["detail"]
    # the right secret and key from that address wait too: a guess must not tell itself
    assert hook(app, ATTACKER, SECRET).status_code == 429
    assert retention(app, ATTACKER, dpo).status_code == 429
    # another address is not held up, and right credentials spend nothing
    for _ in range(5):
        assert hook(app, SHOP, SECRET).status_code == 200
        assert retention(app, SHOP, dpo).status_code == 200
    assert retention(app, SHOP, "rck_typo").status_code == 401
    # a minute's worth refills: one try every 20 s at 3 a minute
    clock.at += 21
    assert hook(app, ATTACKER, SECRET).status_code == 200
    assert hook(app, ATTACKER, "guess-5").status_code == 401
    assert hook(app, ATTACKER, "guess-6").status_code == 429


def test_a_wrong_webhook_secret_is_answered_before_the_body_is_read(engine: sa.Engine) -> None:
    """A post of 15 × 64 KiB with a wrong secret was read whole (up to ``[api]
    max_body_bytes``, 100 MB at most) before its 401."""
    app, _ = app_for(engine)
    pulled = 0

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b"x" * 65536, "more_body": pulled < 15}

    sent: list[MutableMapping[str, Any]] = []

    async def respond(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/webhooks/postmark",
        "raw_path": b"/v1/webhooks/postmark",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"shop.test"), (b"authorization", b"Bearer wrong")],
        "client": ATTACKER,
        "server": ("shop.test", 80),
    }
    asyncio.run(app(scope, receive, respond))
    assert sent[0]["status"] == 401 and pulled == 0


@pytest.mark.parametrize(
    ("host", "counted"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:1:2:3", "2001:db8:1:2::/64"),
        ("testclient", "testclient"),
    ],
)
def test_an_ipv6_client_is_counted_by_its_64(host: str, counted: str) -> None:
    assert client_of({"client": (host, 1)}) == counted
    assert client_of({"client": None}) == ""


def test_the_failures_remembered_are_bounded() -> None:
    """Addresses are the client's to choose: the buckets kept stay under ``max_keys``."""
    at = [0.0]
    limiter = RateLimiter.per_minute(3, monotonic=lambda: at[0], max_keys=100)
    for n in range(10_000):
        limiter.spend(f"10.0.{n // 256}.{n % 256}")
        assert len(limiter.buckets) <= 100
    limiter.spend("a")
    limiter.spend("a")
    limiter.spend("a")
    assert limiter.due_s("a") > 0 and limiter.due_s("b") == 0
