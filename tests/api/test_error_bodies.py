"""No e-mail address in an error body: ids are what the client chose, and a shop may use the
address as its customer id. Every route of the OpenAPI schema with a path parameter is
called with an address there (routes added later are covered the day they appear), and the
409s that name other ids name them masked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.api_shop import Closing, answered, bearer, call, make_app

ADDRESS = "alice@example.com"
# a body for the routes that need one: refused (422), so the path id reaches no success body
BODIES: dict[tuple[str, str], Any] = {
    ("PUT", "/v1/customers/{customer_id}"): {"source": "t", "consent_basis": "double_opt_in"},
}


def test_no_route_quotes_an_address_given_as_an_id(
    engine: sa.Engine, tmp_path: Path, closing: Closing
) -> None:
    app = closing(make_app(engine, tmp_path))
    called: dict[str, int] = {}
    for template, operations in app.openapi()["paths"].items():  # every documented route
        if "{" not in template:
            continue
        path = re.sub(r"\{[^}]+\}", ADDRESS, template)
        for method in sorted(m.upper() for m in operations):
            body = BODIES.get((method, template))
            reply = call(app, method, path, json=body, headers=bearer("all"))
            called[f"{method} {template}"] = reply.status
            if reply.status >= 400:
                assert "@example.com" not in reply.text, (method, template, reply.text)
    assert {
        "GET /v1/privacy/customers/{customer_id}": 404,
        "DELETE /v1/privacy/customers/{customer_id}": 404,
        "GET /v1/customers/{customer_id}/forecast": 404,
        "GET /v1/items/{item_id}/similar": 404,
        "PUT /v1/customers/{customer_id}": 422,
        "GET /p/{token}": 400,
        "POST /u/{token}": 400,
    }.items() <= called.items(), called
    assert "GET /v1/customers/{customer_id}/next-best-offer" in called


def test_a_404_says_which_customer_with_the_address_masked(
    engine: sa.Engine, tmp_path: Path, closing: Closing
) -> None:
    app = closing(make_app(engine, tmp_path))
    reply = call(app, "GET", f"/v1/privacy/customers/{ADDRESS}", headers=bearer("dpo"))
    assert reply.status == 404
    assert reply.json() == {"detail": "we hold no data about customer '<address>'"}
    plain = call(app, "GET", "/v1/privacy/customers/10042", headers=bearer("dpo"))
    assert plain.json() == {"detail": "we hold no data about customer '10042'"}  # ids stay


@pytest.mark.parametrize(
    "address", ["bob@localhost", "x@[10.0.0.1]", "o'brien@example.com", "a.b+c@ex-ample.co.uk"]
)
def test_every_form_of_address_is_masked_whole(
    engine: sa.Engine, tmp_path: Path, address: str, closing: Closing
) -> None:
    """Addresses without a dot in the domain, with an IP literal or an apostrophe: none of
    their parts comes back (the id rule accepts them all)."""
    app = closing(make_app(engine, tmp_path))
    reply = call(app, "GET", f"/v1/privacy/customers/{address}", headers=bearer("dpo"))
    assert reply.status == 404
    quoted = repr("<" + address + ">").replace("<" + address + ">", "<address>")  # ' or "
    assert reply.json() == {"detail": f"we hold no data about customer {quoted}"}


def test_a_shared_address_names_the_other_ids_masked(
    engine: sa.Engine, tmp_path: Path, closing: Closing
) -> None:
    app = closing(make_app(engine, tmp_path))
    for customer in (ADDRESS, "bob@example.com"):
        body = {"source": "signup", "email": "shared@example.test"}
        put = call(app, "PUT", f"/v1/customers/{customer}", json=body, headers=bearer("shop"))
        assert put.status == 200
    for method in ("GET", "DELETE"):
        reply = call(app, method, f"/v1/privacy/customers/{ADDRESS}", headers=bearer("dpo"))
        assert reply.status == 409 and "<address>" in reply.text, reply.text
        assert "@" not in reply.text, reply.text


def test_every_json_body_route_documents_its_400(
    engine: sa.Engine, tmp_path: Path, closing: Closing
) -> None:
    """A JSON body naming a key twice, nested past the parser's stack or holding a number
    Python cannot hold is a 400 (``api.bodies``), but no route's schema had a 400: a client
    generated from the schema had no type for the answer."""
    app = closing(make_app(engine, tmp_path))
    routes = [
        (method.upper(), template, operation["responses"])
        for template, operations in app.openapi()["paths"].items()
        for method, operation in operations.items()
        if "application/json" in operation.get("requestBody", {}).get("content", {})
    ]
    assert ("POST", "/v1/events/purchases") in {(m, t) for m, t, _ in routes}
    undocumented = [(m, t) for m, t, responses in routes if "400" not in responses]
    assert undocumented == []
    twice = b'{"review_id": "r", "review_id": "s"}'
    headers = {"content-type": "application/json", **bearer("shop")}
    reply = call(app, "POST", "/v1/events/reviews", content=twice, headers=headers)
    assert reply.status == 400 and "twice" in reply.json()["detail"]


def test_an_unexpected_error_is_a_500_in_the_apis_shape(
    engine: sa.Engine, tmp_path: Path, closing: Closing, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every other error of the API is JSON ``{"detail": …}``; a bug's 500 was Starlette's
    plain text "Internal Server Error", which a client decoding the JSON error it was
    promised fails on. The text of the exception stays in the server's log, not the body
    (it may quote an id or an address)."""
    app = closing(make_app(engine, tmp_path))

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"a bug quoting {ADDRESS}")

    monkeypatch.setattr(app.state.service, "similar", broken)
    reply = answered(app, "GET", "/v1/items/i1/similar", headers=bearer("shop"))
    assert reply.status == 500
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"detail": "internal error: the server's log says more"}


def test_a_feedback_answer_naming_an_address_twice_gets_it_masked(
    engine: sa.Engine, tmp_path: Path, closing: Closing
) -> None:
    """``POST /v1/feedback`` writes its refusals itself (JSON or the page), past the app's
    handler that masks every ``HTTPException``: a JSON answer naming a key twice got the
    key quoted back as sent, an address too, where the event routes say ``'<address>'``."""
    app = closing(make_app(engine, tmp_path))
    twice = f'{{"token": "t", "score": 3, "{ADDRESS}": 1, "{ADDRESS}": 2}}'.encode()
    headers = {"content-type": "application/json"}
    reply = call(app, "POST", "/v1/feedback", content=twice, headers=headers)
    assert reply.status == 400
    assert reply.json() == {"detail": "the body's JSON has the key '<address>' twice in one object"}
