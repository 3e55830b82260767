"""Lean routes: documented like any FastAPI route, served without FastAPI's per-request
dependency machinery.

FastAPI resolves an endpoint's parameters and dependencies anew on every request; on this
stack that costs about 100 µs a request, more than a cached next-best offer takes in all
(``benchmarks/api.py``). A :class:`LeanRoute` keeps the endpoint's signature for the OpenAPI
schema and calls the endpoint itself, but gets the arguments from a hand-written ``parse``
function that applies the same rules: a scalar through pydantic's own validator of its
type (:func:`scalar`), not a copy of its rules (the tests compare both with hostile inputs,
and schemathesis checks the route against its schema). Errors look exactly like FastAPI's own:
``RequestValidationError`` → 422 with ``detail[].loc/msg`` (the app's handler drops the
``input``), ``HTTPException`` → status and ``detail``.

Only the hot endpoints use it: ``GET /healthz`` (the benchmark's bare endpoint, so the
comparison measures our work, not the framework) and ``next-best-offer``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl

from fastapi import Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import AfterValidator, BeforeValidator, Field, TypeAdapter, ValidationError

from recocamp.domain import ID_MAX, ID_PATTERN, check_id, composed, composed_text, id_problem

T = TypeVar("T")
Parse = Callable[[Request], Awaitable[dict[str, Any]]]
Fast = Callable[[Request], Awaitable[Response | None]]
# a customer or item id in a path as given: the importer's rule (``domain.id_problem``); the
# pattern keeps out ASCII controls in the schema, ``check_id`` the other non-printable
# characters. The privacy routes take it so: they match every Unicode form of it anyway
# (``domain.id_forms``), one stored by an older version in neither form too.
GivenPathId = Annotated[
    str, Path(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN), AfterValidator(check_id)
]
# the same, composed first as a file's id is (``domain.composed``): ``Mu`` + U+0308 ``ller``
# in a path is the customer ``Müller`` that files and purchase events name
PathId = Annotated[GivenPathId, BeforeValidator(composed_text)]
ID_MATCH = re.compile(ID_PATTERN)
# scope key: time.perf_counter() as the request was parsed (``recocamp serve``: api.protocol)
# or entered the app (HttpMetrics, elsewhere); after its arrival either way
ENTERED = "recocamp.entered"


class LeanRoute(APIRoute):
    """An APIRoute whose arguments come from ``parse(request)`` instead of FastAPI's solver.
    ``fast(request)``, when given, is asked first: it answers the requests whose answer it
    knows to be the general path's (parse, then the endpoint) and leaves every other one to
    that path (None), having checked nothing that the general path checks again."""

    def __init__(
        self,
        path: str,
        endpoint: Callable[..., Any],
        *,
        parse: Parse,
        fast: Fast | None = None,
        **kwargs: Any,
    ) -> None:
        self.parse, self.fast = parse, fast
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint, parse, fast = self.endpoint, self.parse, self.fast

        async def handler(request: Request) -> Response:
            if fast is not None:
                answered = await fast(request)
                if answered is not None:
                    return answered
            response: Response = await endpoint(**await parse(request))
            return response

        return handler


def query_pairs(raw: bytes) -> list[tuple[str, str]]:
    """A raw query string's pairs, without building Starlette's QueryParams object."""
    return parse_qsl(raw.decode("latin-1"), keep_blank_values=True)


def header(request: Request, name: bytes) -> str | None:
    """One request header (``name`` lower-case), straight from the ASGI scope."""
    for key, value in request.scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def path_id(value: str, loc: Sequence[str | int]) -> tuple[str, list[dict[str, Any]]]:
    """``value`` as a :data:`PathId` makes it (composed) and what FastAPI says about it
    (no errors: an id), in its order: length first (an empty id reaches a ``{id:path}``
    route), then the pattern. The usual id (ASCII, printable, trimmed, not too long) passes
    every rule at once: it is composed already, and the pattern takes every printable ASCII
    character (a cached next-best offer's hot path)."""
    if usual_id(value):
        return value, []
    value = composed(value)
    return value, id_errors(value, loc)


def usual_id(value: str) -> bool:
    """Whether ``value`` is an id as it stands (ASCII, printable, trimmed, 1 to ``ID_MAX``
    characters): composed already, and every rule of :func:`id_errors` holds (the pattern
    takes every printable ASCII character)."""
    return (
        value.isascii()
        and 0 < len(value) <= ID_MAX
        and value.isprintable()
        and value.strip() == value
    )


def id_errors(value: str, loc: Sequence[str | int]) -> list[dict[str, Any]]:
    """What FastAPI says about ``value`` as a :data:`GivenPathId` (no errors: an id), in its
    order: length first (an empty id reaches a ``{id:path}`` route), then the pattern."""
    if not value:
        return [
            problem(
                "string_too_short",
                loc,
                "String should have at least 1 character",
                value,
                {"min_length": 1},
            )
        ]
    if len(value) > ID_MAX:
        return [
            problem(
                "string_too_long",
                loc,
                f"String should have at most {ID_MAX} characters",
                value,
                {"max_length": ID_MAX},
            )
        ]
    if not ID_MATCH.match(value):
        return [
            problem(
                "string_pattern_mismatch",
                loc,
                f"String should match pattern '{ID_PATTERN}'",
                value,
                {"pattern": ID_PATTERN},
            )
        ]
    found = id_problem(value)
    return [problem("value_error", loc, f"Value error, {found}", value)] if found else []


def problem(
    kind: str, loc: Sequence[str | int], msg: str, value: Any, ctx: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One error in FastAPI's (pydantic's) shape."""
    found: dict[str, Any] = {"type": kind, "loc": tuple(loc), "msg": msg, "input": value}
    if ctx:
        found["ctx"] = ctx
    return found


def scalar(
    pairs: list[tuple[str, str]],
    name: str,
    default: T,
    adapter: TypeAdapter[T],
    errors: list[dict[str, Any]],
) -> T:
    """The last value of ``name`` through ``adapter``, pydantic's validator of the
    parameter's annotated type (``Annotated[int, Field(ge=1, le=50)]``, an enum, a bool):
    the very rules FastAPI applies to a query value — which digits, signs, whitespace,
    underscores and ``"3.0"`` an int takes, which words a bool — with its errors, rather
    than a copy of them that drifts (``int()`` reads Arabic-Indic digits; pydantic does
    not)."""
    raw = next((v for k, v in reversed(pairs) if k == name), None)
    if raw is None:
        return default
    try:
        return adapter.validate_python(raw)
    except ValidationError as exc:
        errors += [
            problem(e["type"], ("query", name, *e["loc"]), e["msg"], raw, e.get("ctx"))
            for e in exc.errors(include_url=False)
        ]
        return default


def bounded(low: int, high: int) -> TypeAdapter[int]:
    """The validator of ``Annotated[int, Query(ge=low, le=high)]``."""
    return TypeAdapter(Annotated[int, Field(ge=low, le=high)])


def strings(
    pairs: list[tuple[str, str]],
    name: str,
    max_length: int,
    errors: list[dict[str, Any]],
    commas: bool = True,
) -> list[str]:
    """Every value of a repeatable parameter; with ``commas``, a value may also list several,
    comma-separated (item ids; not category names, which may hold a comma). A value holding
    a comma stands for itself too: an id may hold one (``A,1``), and split alone, the cart's
    item ``A,1`` was not excluded."""
    found: list[str] = []
    for position, (_, value) in enumerate(p for p in pairs if p[0] == name):
        if len(value) > max_length:
            errors.append(
                problem(
                    "string_too_long",
                    ("query", name, position),
                    f"String should have at most {max_length} characters",
                    value,
                    {"max_length": max_length},
                )
            )
            continue
        parts = [*value.split(","), value] if commas and "," in value else [value]
        found += [part.strip() for part in parts if part.strip()]
    return found


def raise_if(errors: list[dict[str, Any]]) -> None:
    if errors:
        raise RequestValidationError(errors)
