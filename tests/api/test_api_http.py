"""HTTP semantics of the shop API on a really trained shop: HEAD answers as GET without the
body (RFC 9110 §9.1: general-purpose servers MUST support GET and HEAD), also through the
server ``recocamp serve`` runs; and answers about one person are marked for no cache to
keep (``Cache-Control: no-store``); a compressed body is refused (415) rather than misread."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import FastAPI
from prometheus_client import REGISTRY

from recocamp import forecast, tokens
from recocamp.api.protocol import HTTP
from recocamp.store.schema import customers, orders
from tests.api_shop import (
    KEYS,
    NOW,
    SIGNING_KEY,
    Template,
    bearer,
    call,
    clone,
    engine_of,
    make_app,
)

CUSTOMER = "10001"
FORM = "application/x-www-form-urlencoded"


def link(purpose: str) -> str:
    return tokens.sign(SIGNING_KEY.encode(), CUSTOMER, "winback", purpose, NOW - timedelta(days=1))


def gets(app: FastAPI) -> list[tuple[str, dict[str, str]]]:
    """GET routes of every kind (lean, plain, HTML page behind a link), with what they need."""
    return [
        ("/healthz", {}),
        ("/readyz", {}),
        (f"/v1/customers/{CUSTOMER}/next-best-offer?n=3", bearer("shop")),
        (f"/v1/customers/{CUSTOMER}/forecast", bearer("shop")),
        (f"/u/{link('unsubscribe')}", {}),
        (f"/p/{link('preferences')}", {}),
        ("/v1/privacy/retention", bearer("dpo")),
    ]


def test_head_answers_as_get_without_the_body(app: FastAPI) -> None:
    for path, headers in gets(app):
        got = call(app, "GET", path, headers=headers)
        head = call(app, "HEAD", path, headers=headers)
        assert got.text and head.text == "", path
        assert head.status == got.status, (path, head.status)
        for name in ("content-type", "content-length", "cache-control"):
            assert head.headers.get(name) == got.headers.get(name), (path, name)


def test_head_needs_what_get_needs(app: FastAPI) -> None:
    path = f"/v1/customers/{CUSTOMER}/next-best-offer"
    assert call(app, "HEAD", path).status == 401
    assert call(app, "HEAD", path, headers=bearer("dpo")).status == 403


def test_a_405_names_every_method_the_path_takes(app: FastAPI) -> None:
    """RFC 9110 §15.5.6: ``Allow`` lists the resource's methods. Starlette named those of
    the first route at the path, so the preferences link (GET and POST) said GET only."""
    expected = [
        ("DELETE", f"/p/{link('preferences')}", "GET, HEAD, POST"),
        ("PUT", f"/u/{link('unsubscribe')}", "GET, HEAD, POST"),
        ("PUT", f"/v1/privacy/customers/{CUSTOMER}", "DELETE, GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("HEAD", "/v1/events/purchases", "POST"),  # no GET there: no HEAD either
        ("GET", f"/v1/customers/{CUSTOMER}", "PUT"),
    ]
    for method, path, allow in expected:
        reply = call(app, method, path, headers=bearer("all"))
        assert (reply.status, reply.headers.get("allow")) == (405, allow), (method, path)


def test_a_head_is_counted_as_head_under_its_route(app: FastAPI) -> None:
    labels = {"method": "HEAD", "route": "/v1/customers/{customer_id}/forecast", "status": "404"}
    before = REGISTRY.get_sample_value("recocamp_http_requests_total", labels) or 0.0
    assert call(app, "HEAD", "/v1/customers/nobody/forecast", headers=bearer("shop")).status == 404
    assert REGISTRY.get_sample_value("recocamp_http_requests_total", labels) == before + 1


@pytest.fixture(scope="module", params=["sqlite"])
def served_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    from tests.api_shop import build_template

    yield from build_template("sqlite", tmp_path_factory.mktemp("served"))


@pytest.fixture
def served(served_template: Template, tmp_path: Path) -> Iterator[int]:
    """The app behind uvicorn with ``recocamp serve``'s protocol, on a free loopback port."""
    for engine, artifacts in clone(served_template, tmp_path):
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        config = uvicorn.Config(
            make_app(engine, artifacts), http=HTTP, log_level="warning", lifespan="off"
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        try:
            yield listening.getsockname()[1]
        finally:
            server.should_exit = True
            thread.join(10)
            listening.close()


def test_head_through_the_server_sends_no_body_and_keeps_the_connection(served: int) -> None:
    """A HEAD and then a GET on one keep-alive connection: the HEAD's answer ends with its
    head (Content-Length as the GET's, no bytes after), so the GET's answer follows intact."""
    key = KEYS["shop"][0]
    path = f"/v1/customers/{CUSTOMER}/next-best-offer?n=3"
    ask = f"{{}} {path} HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer {key}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", served), timeout=10) as connection:
        connection.sendall(ask.format("HEAD").encode() + ask.format("GET").encode())
        received = b""
        while received.count(b"HTTP/1.1 ") < 2 or not received.endswith(b"]}"):
            chunk = connection.recv(65536)
            assert chunk, received
            received += chunk
    head, rest = received.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert rest.startswith(b"HTTP/1.1 200 ")  # nothing between the HEAD's head and the GET
    length = next(
        line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    get_head, body = rest.split(b"\r\n\r\n", 1)
    assert length in get_head.split(b"\r\n") and int(length.split(b":")[1]) == len(body)


def test_answers_about_one_person_are_not_stored_by_caches(app: FastAPI) -> None:
    """The export, an erasure's report, a forecast and next-best offers name what a person
    bought, or hold it: ``Cache-Control: no-store``, as the customer pages and their
    download have. The customer pages' headers are held by ``test_api_hostile``."""
    forecast.refresh(engine_of(app), app.state.service.settings, NOW)
    personal = [
        ("GET", f"/v1/customers/{CUSTOMER}/next-best-offer?n=2", bearer("shop")),
        ("GET", f"/v1/customers/{CUSTOMER}/forecast", bearer("shop")),
        ("GET", f"/v1/privacy/customers/{CUSTOMER}", bearer("dpo")),
        ("DELETE", f"/v1/privacy/customers/{CUSTOMER}", bearer("dpo")),
    ]
    for method, path, headers in personal:
        reply = call(app, method, path, headers=headers)
        assert reply.status == 200, (path, reply.text)
        assert reply.headers.get("cache-control") == "no-store", (method, path)
        assert reply.headers["content-type"] == "application/json"


@pytest.mark.parametrize("coding", ["gzip", "GZIP", "deflate, identity", "br"])
def test_a_compressed_body_is_415_naming_the_encoding_taken(app: FastAPI, coding: str) -> None:
    """Nothing decodes a compressed body: an event, a form or a webhook sent gzipped was
    read as its compressed bytes (400 "not UTF-8 text" for the event). 415 with
    ``Accept-Encoding: identity`` says what to do (RFC 9110 §15.5.16); nothing is written."""
    order = {
        "order_id": "gz-1",
        "customer_id": CUSTOMER,
        "ordered_at": "2012-01-05T08:00:00+00:00",
        "lines": [{"item_id": "20000", "quantity": 1, "unit_price": 2.5}],
    }
    posts = [
        ("/v1/events/purchases", json.dumps(order).encode(), "application/json", bearer("shop")),
        (f"/p/{link('preferences')}", b"action=unsubscribe", FORM, {}),
        (
            "/v1/webhooks/postmark",
            b"[]",
            "application/json",
            {"authorization": "Bearer hook-secret"},
        ),
    ]
    for path, body, kind, headers in posts:
        reply = call(
            app,
            "POST",
            path,
            content=gzip.compress(body),
            headers={**headers, "content-type": kind, "content-encoding": coding},
        )
        assert reply.status == 415, (path, reply.text)
        assert reply.headers["accept-encoding"] == "identity"
        assert "Content-Encoding" in reply.json()["detail"]
    with engine_of(app).connect() as connection:
        assert (
            connection.execute(sa.select(orders).where(orders.c.order_id == "gz-1")).first() is None
        )
        assert (
            connection.execute(
                sa.select(customers.c.unsubscribed_at).where(customers.c.id == CUSTOMER)
            ).scalar()
            is None
        )


def test_a_body_said_to_be_identity_is_read(app: FastAPI) -> None:
    reply = call(
        app,
        "POST",
        "/v1/webhooks/postmark",
        content=b"[]",
        headers={
            "content-type": "application/json",
            "content-encoding": "identity",
            "authorization": "Bearer hook-secret",
        },
    )
    assert reply.status == 200, reply.text
