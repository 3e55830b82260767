"""The HTTP API (FastAPI, served by ``recocamp serve``): one app, assembled from one router
per concern.

==========================================  ====================  ==============================
route                                       who                   module
==========================================  ====================  ==============================
GET  /v1/customers/{id}/next-best-offer     API key offers:read   api_offers (serving, offers)
GET  /v1/items/{id}/similar                 API key offers:read   api_offers
GET  /v1/customers/{id}/forecast            API key offers:read   api_forecasts (forecast)
POST /v1/events/purchases                   API key events:write  api_events
PUT  /v1/customers/{id}                     API key events:write  api_events (profiles)
GET|DELETE /v1/privacy/customers/{id}, …    API key privacy:admin api_privacy (privacy)
/v1/feedback, /reports/latest               see api_measure       api_measure
GET|POST /u/{token}, /p/{token}, …          signed link           api_pages (pages)
POST /v1/webhooks/{provider}                provider secret       api_webhooks
GET  /healthz, /readyz, /metrics, /docs     anyone
==========================================  ====================  ==============================

A path whose %-escapes are not UTF-8 is a 400 (:class:`Utf8Path`): the server would decode
them with replacement characters, and the id would be another one.

API keys: see ``api_auth`` (``RECOCAMP_API_KEYS``, hashed, scopes, rate limit per key).
Bodies above ``[api] max_body_bytes`` are refused (413 ``{"detail"}``, declared or chunked:
``api.bodies``); CORS is off unless
``[api] cors_origins`` lists origins. Requests are counted and timed per route *template*
(``/metrics``), so neither logs nor metrics carry customer ids, tokens or addresses; the
server's access log is off for the same reason (tokens in paths are credentials), and
``logs.EmailRedactor`` masks any address that would reach a log line. Error bodies mask them
too: ``_unprocessable`` (422) and ``_refused`` (every ``HTTPException``: a 404 quoting the
customer or item id asked for, a 409 naming order or customer ids) — an id can be an
e-mail address.

The old paths ``/health`` and ``/webhooks/{provider}`` keep working.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recocamp import __version__, metrics
from recocamp.api import bodies as api_bodies
from recocamp.api import events as api_events
from recocamp.api import forecasts as api_forecasts
from recocamp.api import lean as api_lean
from recocamp.api import measure as api_measure
from recocamp.api import offers as api_offers
from recocamp.api import pages as api_pages
from recocamp.api import privacy as api_privacy
from recocamp.api import webhooks as api_webhooks
from recocamp.api.auth import MAX_CLIENTS, Authenticator, parse_keys
from recocamp.api.offer_cache import OfferService
from recocamp.clock import Clock
from recocamp.errors import RecocampError, mask_addresses
from recocamp.ratelimit import RateLimiter
from recocamp.settings import Settings
from recocamp.store import tombstones
from recocamp.store.engine import (
    Engine,
    OperationalError,
    PoolTimeout,
    SQLAlchemyError,
    Unopenable,
    driver_kind,
    ping,
    require_current,
)

log = logging.getLogger(__name__)
HEALTHY = b'{"status":"ok"}'
# methods counted by name in the request metrics; any other is "OTHER" (a label set each
# would be a series of its own, and an entry of HttpMetrics', for as many as clients make up)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
ROUTED_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")  # what a 405's Allow may name


class ErrorOut(BaseModel):
    detail: str


PROBLEMS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorOut,
        "description": "The path's %-escapes are not UTF-8, or the JSON body cannot be read "
        "as sent: a key twice in one object, nesting past the parser's stack, a number too "
        "long. Nothing was written.",
    },
    401: {"model": ErrorOut, "description": "No API key, or an unknown one."},
    403: {"model": ErrorOut, "description": "The API key lacks the scope."},
    404: {"model": ErrorOut, "description": "Not found."},
    413: {"description": "The body is larger than [api] max_body_bytes."},
    429: {
        "model": ErrorOut,
        "description": "Rate limit of the API key, or too many failed authentications from "
        "this address; see Retry-After.",
    },
    503: {
        "model": ErrorOut,
        "description": "The store is busy or out of reach: nothing was written; send the "
        "request again after Retry-After.",
    },
}


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    status: str
    model_version: str | None = None
    detail: str | None = None


def create_app(
    settings: Settings, engine: Engine, clock: Clock, settle: bool = False, owned: bool = False
) -> FastAPI:
    """The whole API for one process (each ``recocamp serve`` worker builds its own).
    ``settle``: once the live model and catalogue are loaded, take the heap out of the
    garbage collector's full passes (:func:`settle_heap`; a serve worker's, not a test's).
    ``owned``: the engine is the app's own (:func:`app_from_environment` made it), its
    connections closed when the app stops; a caller's engine is the caller's to dispose."""
    keys = parse_keys(settings.api_keys.get_secret_value() if settings.api_keys else None)
    limiter = RateLimiter.per_minute(settings.api.rate_limit_per_minute / settings.api.workers)
    failures = RateLimiter.per_minute(
        settings.api.auth_failures_per_minute / settings.api.workers, max_keys=MAX_CLIENTS
    )
    auth = Authenticator(keys, limiter, failures)
    service = OfferService(engine, settings, clock)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()  # PostgreSQL: listen for changes before anything is cached
        try:  # load the live model and catalogue before the first request needs them
            await run_in_threadpool(service.snapshot)
        except (SQLAlchemyError, RecocampError) as exc:
            log.warning("not ready at start: %s", exc)
        if settle:
            settle_heap()
        yield
        service.close()
        if owned:
            engine.dispose()

    app = FastAPI(
        title="recocamp shop API",
        version=__version__,
        lifespan=lifespan,
        # no redirect for a trailing slash: Starlette builds it from the request as this
        # process sees it (http:// behind a TLS proxy), and a signed link's token would
        # travel in it; /p/TOKEN/ is a 404 like any other unknown path
        redirect_slashes=False,
        description="Next-best offers, live events, preferences and privacy rights. "
        "Send API keys as `Authorization: Bearer <key>`.",
    )
    app.add_exception_handler(RequestValidationError, _unprocessable)
    app.add_exception_handler(StarletteHTTPException, _refused)
    app.add_exception_handler(ValidationError, _unprocessable)
    app.add_exception_handler(OperationalError, _busy)
    app.add_exception_handler(PoolTimeout, _busy)
    app.add_exception_handler(tombstones.KeyUnknown, _keys_unknown)
    app.add_exception_handler(Exception, _crashed)
    app.state.service = service
    app.state.authenticator = auth
    _health_routes(app, engine, service)
    app.router.routes.insert(1, api_offers.next_best_offer_route(service, auth, PROBLEMS))
    app.include_router(api_offers.router(service, PROBLEMS))
    app.include_router(api_forecasts.router(engine, PROBLEMS))
    app.include_router(api_events.router(settings, engine, clock, PROBLEMS, service.forget))
    app.include_router(api_privacy.router(settings, engine, clock, PROBLEMS, service.forget))
    app.include_router(api_measure.router(settings, engine, clock, auth.require))
    app.include_router(api_pages.router(settings, engine, clock, service))
    app.include_router(api_webhooks.router(settings, engine, clock, PROBLEMS))
    app.add_middleware(HeadAsGet)
    app.add_middleware(Utf8Path)
    app.add_middleware(api_bodies.BodyLimit, limit=settings.api.max_body_bytes)
    app.add_middleware(api_pages.PrivateHeaders)
    app.add_middleware(HttpMetrics)
    if settings.api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.api.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
            max_age=600,
        )
    return app


def settle_heap() -> None:
    """Freeze what a serve worker holds for good — its imports (~160,000 objects) and the
    live model and catalogue — out of the collector's full passes, and collect the young
    generation every 10,000 net allocations rather than 700, so that fewer of a request's
    objects are promoted on their way out. A full pass walks every object it tracks, holding
    the interpreter lock meanwhile (0.2 s for the imports alone on the benchmark's machine),
    and requests wait. (Frozen objects that later become cyclic garbage are not collected:
    only start-up's heap is frozen, once.)"""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _health_routes(app: FastAPI, engine: Engine, service: OfferService) -> None:
    async def healthz() -> Response:
        """Liveness: the process answers (constant JSON; touches nothing)."""
        return Response(HEALTHY, media_type="application/json")

    async def nothing(request: Request) -> dict[str, Any]:
        return {}

    app.router.routes.insert(
        0,
        api_lean.LeanRoute(
            "/healthz",
            healthz,
            parse=nothing,
            methods=["GET"],
            response_model=HealthOut,
            tags=["health"],
            summary="Liveness",
        ),
    )

    @app.get("/health", include_in_schema=False)
    def health() -> dict[str, str]:
        ping(engine)
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=ReadyOut,
        tags=["health"],
        responses={503: {"model": ReadyOut, "description": "Not ready (yet)."}},
    )
    def readyz() -> Any:
        """Readiness: the database answers at the newest schema and the live model (if any)
        and the catalogue are loaded. A model live in the registry whose artifacts cannot be
        loaded is not ready (503 with the reason; offers are popularity meanwhile); no live
        model at all is ready (``model_version`` null: offers are popularity until one is)."""
        try:
            require_current(engine)
            snapshot = service.snapshot()
        except (SQLAlchemyError, Unopenable) as exc:
            return _unreachable(exc)
        except RecocampError as exc:  # ours: a schema to migrate, no detail of the server
            return JSONResponse({"status": "not ready", "detail": str(exc)}, 503)
        if snapshot.load_error is not None:
            return JSONResponse({"status": "not ready", "detail": snapshot.load_error}, 503)
        live = snapshot.live
        return ReadyOut(status="ready", model_version=live.version if live else None)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}}},
    )
    def prometheus() -> Response:
        """Prometheus metrics of this API (all worker processes of ``recocamp serve``)."""
        registry: Any = REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


UNREACHABLE = "the database does not answer: the server's log says more"


def _unreachable(exc: SQLAlchemyError | Unopenable) -> JSONResponse:
    """``/readyz``'s 503 for a database that cannot be reached: a fixed text. The driver's
    message names the server's host, port, user and database (PostgreSQL's "connection to
    server at …, port … failed: password authentication failed for user …"), which the
    probe's caller, anyone who can reach the port, has no business knowing. The log names
    the driver's error class and SQLSTATE only (``engine.driver_kind``), as the other store
    errors are logged: its text may hold the address and the user."""
    kind = exc.kind if isinstance(exc, Unopenable) else driver_kind(exc)
    log.warning(
        "readiness: the database does not answer (%s): 503; `recocamp db current` says why",
        kind,
    )
    return JSONResponse({"status": "not ready", "detail": UNREACHABLE}, 503)


async def _unprocessable(request: Request, exc: Exception) -> JSONResponse:
    """422 naming where each problem is and what it is, never the value sent: request
    bodies carry addresses, names and birthdays, and error bodies end up in clients' logs
    and proxies. Pydantic's ``input`` and ``ctx`` (which may hold the value, or an exception
    quoting it) are dropped; an address a message might quote is masked."""
    assert isinstance(exc, RequestValidationError | ValidationError)
    errors = exc.errors()
    if getattr(request.scope.get("route"), "path", None) == api_events.PURCHASES:
        errors = [{**error, "loc": api_events.untagged(error["loc"])} for error in errors]
    return JSONResponse({"detail": redacted(errors)}, 422)


BUSY = "the store is busy or out of reach: send the request again later"
BUSY_RETRY_S = 5


async def _keys_unknown(request: Request, exc: Exception) -> JSONResponse:
    """503 when a check of the erasure tombstones cannot be made because a key that made
    them is not configured (a link's page, ``tombstones.void_link``): the fingerprints and
    what to set, nothing about the person; the transaction rolled back."""
    assert isinstance(exc, tombstones.KeyUnknown)
    log.error("%s %s: %s", request.method, _template(request), exc.brief())
    return JSONResponse({"detail": exc.brief()}, 503, headers=dict(api_pages.NO_STORE))


async def _busy(request: Request, exc: Exception) -> JSONResponse:
    """503 ``{"detail"}`` with ``Retry-After`` when the store cannot answer now: SQLite's
    write lock held past the busy timeout (an import, the worker), PostgreSQL out of reach,
    no pooled connection free in time. It was Starlette's plain-text 500 "Internal Server
    Error", which a shop's client takes for a bug rather than "send it again", in no shape
    of the API's. The writing transaction rolled back: nothing was written. The error's text
    is not logged (it may quote a statement's parameters: an address)."""
    log.warning(
        "%s %s: the store did not answer (%s): 503",
        request.method,
        _template(request),
        type(exc).__name__,
    )
    return JSONResponse({"detail": BUSY}, 503, {"Retry-After": str(BUSY_RETRY_S)})


async def _crashed(request: Request, exc: Exception) -> JSONResponse:
    """A bug's 500 as the API's JSON ``{"detail"}`` (Starlette's answer is plain text, which
    a client decoding the error it was promised fails on). Starlette raises the exception
    on after this answer, so the server logs it with its traceback (addresses masked:
    ``logs.EmailRedactor``); the body says nothing of it."""
    return JSONResponse({"detail": "internal error: the server's log says more"}, 500)


def _template(request: Request) -> str:
    """The route's template (no id, token or address of the path)."""
    matched = request.scope.get("route")
    return str(getattr(matched, "path_format", None) or getattr(matched, "path", "unmatched"))


async def _refused(request: Request, exc: Exception) -> Response:
    """FastAPI's answer to an ``HTTPException``, with every e-mail address in its detail
    masked: details quote what the client sent (a customer or item id, an order id, the
    other ids holding an address), and an id may be an address. The one place that holds
    every error body to the rule "no address in logs or error bodies", whoever raised it."""
    assert isinstance(exc, StarletteHTTPException)
    if isinstance(exc.detail, str) and "@" in exc.detail:
        exc = StarletteHTTPException(exc.status_code, mask_addresses(exc.detail), exc.headers)
    if exc.status_code == 405:
        exc = StarletteHTTPException(405, exc.detail, {"Allow": allowed(request)})
    elif _about_one_person(request):
        headers = {**(exc.headers or {}), **api_pages.NO_STORE}
        exc = StarletteHTTPException(exc.status_code, exc.detail, headers)
    return await http_exception_handler(request, exc)


def _about_one_person(request: Request) -> bool:
    """Whether the route matched answers with ``pages.PrivateJSON`` (the export, an
    erasure, a forecast): its refusals are about the person too — the 409 of a shared
    address names the other ids holding it, a forecast's 404 says the customer objected
    to profiling — and a cache must keep them no more than its answers (a 404 is cacheable
    by default, RFC 9111 §4.2.2)."""
    kind = getattr(request.scope.get("route"), "response_class", None)
    kind = getattr(kind, "value", kind)  # a router's default comes as a DefaultPlaceholder
    return isinstance(kind, type) and issubclass(kind, api_pages.PrivateJSON)


def allowed(request: Request) -> str:
    """A 405's ``Allow``: the methods some route at the path takes (RFC 9110 §15.5.6: the
    resource's supported methods), HEAD with GET (:class:`HeadAsGet`), each found by
    matching the request again with that method (routers included in the app are routes of
    their own, whose methods only their matching knows). Starlette named the methods of the
    first route at the path: ``/p/{token}`` (GET, POST), ``/u/{token}`` (GET, POST) and
    ``/v1/privacy/customers/{id}`` (GET, DELETE) said ``Allow: GET``."""
    routes = request.app.router.routes
    methods = [
        method
        for method in ROUTED_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]
    if "GET" in methods:
        methods.append("HEAD")
    return ", ".join(sorted(methods))


def redacted(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Pydantic / FastAPI error entries reduced to ``type``, ``loc`` and ``msg``, addresses
    masked in both: a ``loc`` part can be a key the client chose (an unknown field)."""
    return [
        {
            "type": str(error.get("type", "value_error")),
            "loc": [
                part if isinstance(part, int) else mask_addresses(str(part))
                for part in error["loc"]
            ],
            "msg": mask_addresses(str(error.get("msg", ""))),
        }
        for error in errors
    ]


class HeadAsGet:
    """HEAD answered as the GET of the same URL without its body (pure ASGI). RFC 9110
    §9.1: every general-purpose server MUST support GET and HEAD, and HEAD's answer is the
    GET's header fields. FastAPI's routes take only the methods they name, so every GET route
    (``/healthz``, ``/readyz``, the customer pages, the export) answered HEAD with 405: an
    uptime check that probes with HEAD saw the service down, and a mail scanner checking a
    link with HEAD saw it broken. A route without GET still answers 405 with its ``Allow``.
    Innermost: the metrics count the request as HEAD, under the route matched for the GET.
    The GET's scope is a copy, so the server, which reads the method in its own, sends no
    body either (uvicorn), whatever the length the headers declare."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        as_get = {**scope, "method": "GET"}
        try:
            await self.app(as_get, receive, headers_only)
        finally:  # the route the GET matched, for the metrics' label
            if "route" in as_get:
                scope["route"] = as_get["route"]


NOT_UTF8 = (
    b'{"detail":"the path is not UTF-8 once its %-escapes are decoded: '
    b'percent-encode the UTF-8 bytes of ids"}'
)


class Utf8Path:
    """400 for a path whose %-escapes do not decode as UTF-8 (pure ASGI). The server decodes
    them with replacement characters, so an id sent in Latin-1 (``/v1/customers/M%FCller``)
    reached the routes as ``M\ufffdller``: a customer created under it, and ``M%F6ller``
    (Möller) the same one; a lone surrogate's bytes likewise. Paths without an escape (the
    widget's, as a rule) pass without a look."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw = scope.get("raw_path") if scope["type"] == "http" else None
        if raw and b"%" in raw:
            try:
                unquote_to_bytes(raw.split(b"?", 1)[0]).decode()
            except UnicodeDecodeError:
                response = Response(NOT_UTF8, 400, media_type="application/json")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class HttpMetrics:
    """Counts and times every request by method, route template and status (pure ASGI: a
    BaseHTTPMiddleware would cost more than a cached answer takes)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.counters: dict[tuple[str, str, int], Any] = {}  # label lookups are not free
        self.timers: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500
        # OfferService.catch_up relies on it; ``recocamp serve`` stamps it earlier, as it
        # parses the request (``api.protocol``)
        scope.setdefault(api_lean.ENTERED, started)

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            self.record(scope, status, time.perf_counter() - started)

    def record(self, scope: Scope, status: int, seconds: float) -> None:
        matched = scope.get("route")  # its template without a convertor ({id:path} → {id})
        route = str(getattr(matched, "path_format", None) or getattr(matched, "path", "unmatched"))
        method = scope["method"]  # the client's word: any token passes the HTTP parser
        key = (method if method in METHODS else "OTHER", route, status)
        counter = self.counters.get(key)
        if counter is None:
            counter = self.counters[key] = metrics.HTTP_REQUESTS.labels(key[0], route, status)
        counter.inc()
        timer = self.timers.get(route)
        if timer is None:
            timer = self.timers[route] = metrics.HTTP_SECONDS.labels(route)
        timer.observe(seconds)


def app_from_environment() -> FastAPI:
    """The app of one ``recocamp serve`` worker process: settings from ``RECOCAMP_SETTINGS``
    (or ./settings.toml) and the environment, the system clock."""
    from recocamp.clock import SystemClock
    from recocamp.settings import load_settings
    from recocamp.store.engine import make_engine

    settings = load_settings()
    engine = make_engine(settings.database_url)
    return create_app(settings, engine, SystemClock(), settle=True, owned=True)
