"""The next-best offer's hot path (a cached answer: the remembered API key header, the usual
id taken at once, the prepared headers) answers byte for byte what the general path does:
the answer computed, and Starlette's response of it as the route used to build it, for
customers known, unknown and objecting, every mode, several counts and filters, and after a
purchase event."""

from __future__ import annotations

import asyncio
import unicodedata
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Response

from recocamp.api import lean
from recocamp.api.app import create_app
from recocamp.api.offer_cache import OfferService, Query
from recocamp.api.pages import NO_STORE
from recocamp.clock import FixedClock
from recocamp.domain import ID_MAX, composed
from recocamp.recommender.ranking import Mode
from tests.api.test_api_offers import cached_customer
from tests.api_shop import KEYS, NOW, OBJECTOR, Closing, bearer, call, engine_of, wait_until

QUERIES: list[tuple[str, Query]] = [
    ("", Query()),
    ("n=5", Query(5)),
    ("n=10&mode=discover", Query(10, Mode.DISCOVER)),
    ("n=5&mode=replenish", Query(5, Mode.REPLENISH)),
    ("n=3&mode=mixed&exclude=22423,85123A", Query(3, exclude=frozenset({"22423", "85123A"}))),
]


def raw(
    app: FastAPI, path: str, key: str = "reader"
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, every header as sent (order and case kept) and body."""

    async def go() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            headers = bearer(key) if key in KEYS else {"authorization": "Bearer rck_none"}
            reply = await client.get(path, headers=headers)
            return reply.status_code, list(reply.headers.raw), reply.content

    return asyncio.run(go())


def general(app: FastAPI, customer: str, query: Query) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The answer as another process computes it now (a service of its own, nothing
    cached), and the headers the route's Starlette response of it had."""
    mine = app.state.service
    service = OfferService(mine.engine, mine.settings, mine.clock)
    try:
        body = service.respond(customer, query)
    finally:
        service.close()
    headers = Response(body, media_type="application/json", headers=NO_STORE).raw_headers
    return headers, body


def agree(app: FastAPI, customers: list[str]) -> int:
    """Every customer's every query: computed, then cached, both as the general path says."""
    checked = 0
    for customer in customers:
        for text, query in QUERIES:
            path = f"/v1/customers/{customer}/next-best-offer?{text}"
            first, second = raw(app, path), raw(app, path)
            assert first == second and first[0] == 200, (customer, text)
            assert (first[1], first[2]) == general(app, customer, query), (customer, text)
            checked += 1
    return checked


def test_cached_answers_are_byte_for_byte_the_general_paths(app: FastAPI) -> None:
    customer, top = cached_customer(engine_of(app))
    cached = app.state.service.tally
    before = cached.computed
    assert agree(app, [customer, OBJECTOR, "nobody-yet", "M\u00fcller"]) == 20
    assert cached.computed - before == 16  # each query once ("" is "n=5"), then from the cache
    order = {
        "order_id": "fast-1",
        "customer_id": customer,
        "ordered_at": (NOW - timedelta(hours=1)).isoformat(),
        "lines": [{"item_id": str(top[0][0]), "quantity": 1, "unit_price": 12.75}],
    }
    heard = cached.heard + 2  # the event's own forget, and its notification on PostgreSQL
    posted = call(app, "POST", "/v1/events/purchases", json=order, headers=bearer("shop"))
    assert posted.status == 200, posted.text
    if engine_of(app).dialect.name == "postgresql":  # a late notification drops an answer
        wait_until(lambda: cached.heard >= heard)  # computed after the event (a test's race)
    assert agree(app, [customer]) == 5  # after the purchase: computed anew, then cached
    assert cached.computed - before == 20


IDS = [
    "10042",
    "a" * ID_MAX,
    "a" * (ID_MAX + 1),
    "",
    " 10042",
    "10042 ",
    "\t1",
    "1\x7f",
    "1\x00",
    "A,1",
    "~!@#$%^&*()_+{}|:<>?`-=[]\\;',./\"",
    "M\u00fcller",
    unicodedata.normalize("NFD", "M\u00fcller"),
    "abc\u202e",
    "\u00a0x",
    "x" * (ID_MAX - 1) + "\u00fc",
]


@pytest.mark.parametrize("value", IDS)
def test_the_usual_id_is_taken_as_the_general_rules_take_it(value: str) -> None:
    loc: Any = ("path", "customer_id")
    assert lean.path_id(value, loc) == (composed(value), lean.id_errors(composed(value), loc))


REFUSED = [  # (path, key): each refused, or answered, as the general path does
    ("/v1/customers/%2010042/next-best-offer?n=5", "reader"),  # an id with white space
    ("/v1/customers/" + "9" * (ID_MAX + 1) + "/next-best-offer?n=5", "reader"),
    ("/v1/customers/M%C3%BCller/next-best-offer?n=5", "reader"),  # not the usual id: answered
    ("/v1/customers/10042/next-best-offer?n=5", "dpo"),  # a key without the scope: 403
    ("/v1/customers/10042/next-best-offer?n=5", "nobody"),  # an unknown key: 401
    ("/v1/customers/10042/next-best-offer?n=0", "reader"),  # n out of range: 422
    ("/v1/customers/10042/next-best-offer?n=5&mode=sideways", "reader"),
    ("/v1/customers/10042/next-best-offer?n=5&" + "exclude=x&" * 101, "reader"),
]


def test_refusals_are_the_general_paths_once_the_query_is_remembered(
    app: FastAPI, closing: Closing
) -> None:
    """The same requests to an app that has seen their query strings answered (the fast
    path's) and to a fresh one (the general path only): the same status, headers and body,
    and the key's rate limit spent once a request either way."""
    fresh = closing(create_app(app.state.service.settings, engine_of(app), FixedClock(NOW)))
    for limited in (app, fresh):  # no refill while the test runs
        limited.state.authenticator.limiter.monotonic = lambda: 0.0
    for path, _ in REFUSED:
        primed = path.replace("M%C3%BCller", "10042").replace("%2010042", "10042")
        primed = primed.replace("9" * (ID_MAX + 1), "10042")
        assert raw(app, primed, "reader")[0] in (200, 422)
    for path, key in REFUSED:
        assert raw(app, path, key) == raw(fresh, path, key), path
    spent = [app.state.authenticator.limiter.buckets["reader"][0]]
    spent.append(fresh.state.authenticator.limiter.buckets["reader"][0])
    assert spent[0] == pytest.approx(spent[1] - len(REFUSED))  # priming: one token each
