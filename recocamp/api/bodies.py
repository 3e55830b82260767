"""Request bodies: their size, their media type, their JSON and its number types.

- :class:`BodyLimit` refuses a body over ``[api] max_body_bytes`` with 413 and the API's
  ``{"detail": …}`` whether its length was declared (``Content-Length``: answered before
  anything is read) or not (chunked: answered once the count passes the limit). Starlette's
  own limiter answered the first case in plain text. A compressed body (``Content-Encoding``)
  gets 415: nothing decodes it.
- :func:`json_only` (a route dependency) answers 415 naming ``application/json`` for a body
  of another media type, or of none, where FastAPI would try the bytes as the model and
  answer 422 "Input should be a valid dictionary".
- :class:`JsonRoute` reads a JSON body with :func:`domain.read_json`, so a body JSON cannot
  hold (a 5,000-digit number, nesting past the parser's stack) is a 400 saying so, not
  "There was an error parsing the body"; :func:`json_route` checks the API key first.
- :data:`WholeNumber`, :data:`Number`, :data:`Flag`: the number and boolean types of request
  models. FastAPI validates a body in pydantic's lax mode, where ``"1"`` and ``true`` are the
  number 1; these take JSON's own numbers and booleans only (a whole number may be written
  ``2.0``: JSON does not tell them apart).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from email.message import Message as MediaType
from typing import Annotated, Any

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BeforeValidator, Strict
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recocamp.api.auth import ADMITTED
from recocamp.domain import read_json


class BodyLimit:
    """413 ``{"detail": …}`` for a body over ``limit`` bytes, declared or counted, and 415
    for a compressed one (pure ASGI)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit
        self.detail = f"the body is larger than [api] max_body_bytes ({limit} bytes)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, coded = _body_headers(scope)
        if declared is not None and declared > self.limit:
            await JSONResponse({"detail": self.detail}, 413)(scope, receive, send)
            return
        if coded:
            await JSONResponse({"detail": CODED}, 415, {"Accept-Encoding": "identity"})(
                scope, receive, send
            )
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # FastAPI re-raises an HTTPException from a body read
                    raise HTTPException(413, self.detail)
            return message

        await self.app(scope, counted, send)


CODED = "the body must not be compressed: send it without Content-Encoding"


def _body_headers(scope: Scope) -> tuple[int | None, bool]:
    """The declared ``Content-Length`` (None: none, or not a number), and whether the body
    has a ``Content-Encoding`` other than ``identity``: nothing here decodes one (a gzipped
    event was answered 400 "the body is not JSON: it is not UTF-8 text", a gzipped form
    "not UTF-8"), so it is 415 with ``Accept-Encoding: identity`` (RFC 9110 §15.5.16)."""
    length, coded = None, False
    for key, value in scope["headers"]:
        if key == b"content-length":
            text = value.decode("latin-1").strip()
            length = int(text) if text.isascii() and text.isdigit() else None
        elif key == b"content-encoding":
            coded = coded or value.strip().lower() not in (b"", b"identity")
    return length, coded


def is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/…+json``, parameters aside (FastAPI's rule)."""
    if not content_type:
        return False
    media = MediaType()
    media["content-type"] = content_type
    subtype = media.get_content_subtype()
    return media.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


UNSUPPORTED: dict[int | str, dict[str, Any]] = {
    415: {"description": "The body is not application/json (Content-Type)."}
}


async def json_only(request: Request) -> None:
    """415 unless the request says its body is JSON (a dependency of JSON-body routes)."""
    if not is_json(request.headers.get("content-type")):
        raise HTTPException(415, "the body must be JSON: send Content-Type: application/json")


class DuplicateKey(ValueError):
    """An object of the body names one key twice."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different: ``json.loads`` keeps the last of two, so
    ``{"lines": [...], "lines": [...]}`` (a client that appends instead of replacing) would
    store one order's second half and drop its first without a word (RFC 8259: the
    behaviour of such an object is unpredictable)."""
    found = dict(pairs)
    if len(found) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKey(f"the body's JSON has the key {key[:64]!r} twice in one object")
            seen.add(key)
    return found


class JsonRequest(Request):
    """A request whose JSON that Python cannot hold, or that names a key twice in one
    object, is a 400 saying why; a syntax error stays FastAPI's 422 ``json_invalid`` at its
    position."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = json.loads(body, object_pairs_hook=unique_keys)
            except json.JSONDecodeError:
                raise
            except DuplicateKey as exc:
                raise HTTPException(400, str(exc)) from None
            except (ValueError, RecursionError):
                try:
                    read_json(body)
                except ValueError as exc:
                    raise HTTPException(400, str(exc)) from None
                raise
        return self._json


class JsonRoute(APIRoute):
    """An APIRoute whose JSON body is read by :func:`domain.read_json` (its 400s say why).
    With a ``scope`` (:func:`json_route`), the caller's API key and its rate limit are
    checked first: FastAPI reads and validates the body before it runs a route's
    dependencies, so without this a caller with no key got the body's 400, 415 or 422
    instead of the 401, and a client over its limit whose bodies were refused (a retry loop
    posting the same broken body) was never answered 429 and made the server parse each."""

    scope: str | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        scope = self.scope

        async def reading(request: Request) -> Response:
            if scope is not None:
                authorization = request.headers.get("authorization")
                authenticator = request.app.state.authenticator
                key = authenticator.check(authorization, scope, request.scope)
                request.scope[ADMITTED] = (scope, key)
            return await handler(JsonRequest(request.scope, request.receive))

        return reading


def json_route(scope: str) -> type[JsonRoute]:
    """A :class:`JsonRoute` that answers 401, 403 or 429 before it reads the body (the
    route's own key dependency then takes the key checked, without a second token)."""
    return type(f"JsonRoute[{scope}]", (JsonRoute,), {"scope": scope})


def _whole(value: Any) -> Any:
    """``2.0`` → 2 (JSON has one number type); anything else goes on to the strict check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


WholeNumber = Annotated[int, Strict(), BeforeValidator(_whole)]
Number = Annotated[float, Strict()]  # strict float still takes an int: JSON's 3 is 3.0
Flag = Annotated[bool, Strict()]
