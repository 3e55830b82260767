"""Shop API, offers: ``GET /v1/customers/{id}/next-best-offer`` and ``GET /v1/items/{id}/similar``.

Both need the ``offers:read`` scope. The answers come from ``offer_cache.OfferService``; the
next-best-offer route is a :class:`~recocamp.api.lean.LeanRoute` (the hot path of a shop
widget: see ``benchmarks/api.py``), served from the per-process answer cache, whose answers
are dropped when their customer's data changes (see ``offer_cache``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, TypeAdapter

from recocamp.api import lean as api_lean
from recocamp.api.auth import Authenticator, OffersRead
from recocamp.api.offer_cache import MAX_FILTERS, MAX_N, OfferService
from recocamp.api.offer_cache import Query as OfferQuery
from recocamp.api.pages import NO_STORE
from recocamp.recommender.ranking import Mode

PARSED_QUERIES = 1024  # distinct query strings remembered
PARSED_BYTES = 2048  # … each at most this long (a server takes some 64 KB: thousands of
# values, 0.2 MB parsed for 40 KB; answers with more than 20 filter values are not kept anyway)
COUNT = api_lean.bounded(1, MAX_N)  # n's rules, as Query(ge=1, le=MAX_N) has them
MODE = TypeAdapter(Mode)
NOTHING: frozenset[str] = frozenset()
FILTER_LENGTH = 200
NO_STORE_RAW = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in NO_STORE.items()]
JSON_TYPE = (b"content-type", b"application/json")


class OfferOut(BaseModel):
    item_id: str
    title: str
    category: str
    price: float
    url: str | None
    image_url: str | None
    score: float = Field(description="The list's own score (not comparable across sources).")
    reason: str = Field(description='e.g. "because you bought …", "popular with other customers".')
    source: str = Field(description="personal | popular | due | history")


class OffersOut(BaseModel):
    customer_id: str
    mode: Mode
    personalised: bool = Field(description="False: recent popularity only.")
    basis: str = Field(description="personal | recalculated | popular")
    basis_reason: str = Field(
        description='Why this list, e.g. "popular: objected to profiling", '
        '"recalculated: changed since training".'
    )
    model_version: str | None
    items: list[OfferOut]


class SimilarOut(BaseModel):
    item_id: str
    model_version: str
    items: list[OfferOut]


class OffersJSON(Response):
    """An answer's JSON with ``Cache-Control: no-store``: the headers Starlette makes of
    ``Response(body, media_type="application/json", headers=NO_STORE)`` (the same bytes, in
    the same order: a test compares them), made without reading and encoding the header
    mapping anew for every cached answer."""

    media_type = "application/json"

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        length = (b"content-length", str(len(self.body)).encode("latin-1"))
        self.raw_headers = [*NO_STORE_RAW, length, JSON_TYPE]


def _at_most(limit: int, **lists: list[str]) -> None:
    """422 for a filter with more than ``limit`` values (pydantic's error for a long list):
    every distinct query costs memory in the answer cache, and a cart is far shorter."""
    errors = [
        api_lean.problem(
            "too_long",
            ("query", name),
            f"List should have at most {limit} items after validation, not {len(values)}",
            values,
            {"field_type": "List", "max_length": limit, "actual_length": len(values)},
        )
        for name, values in lists.items()
        if len(values) > limit
    ]
    api_lean.raise_if(errors)


def _set(values: list[str]) -> frozenset[str]:
    return frozenset(values) if values else NOTHING


Parsed = tuple[dict[str, Any], list[dict[str, Any]]]  # the endpoint's arguments, the errors


class QueryStrings:
    """The query strings of next-best-offer requests, parsed and remembered (at most
    :data:`PARSED_QUERIES` of them, each at most :data:`PARSED_BYTES`): widgets repeat a few."""

    def __init__(self) -> None:
        self.parsed: dict[bytes, Parsed] = {}
        # the query of each one remembered that the general path takes without an error (its
        # filters within MAX_FILTERS), as the endpoint makes it
        self.prepared: dict[bytes, OfferQuery] = {}

    def of(self, raw: bytes) -> Parsed:
        """The arguments and errors of ``raw``."""
        found = self.parsed.get(raw)
        if found is None:
            found = _parsed(raw)
            if len(raw) <= PARSED_BYTES:
                self._remember(raw, found)
        return found

    def _remember(self, raw: bytes, found: Parsed) -> None:
        if len(self.parsed) >= PARSED_QUERIES:
            self.parsed.clear()
            self.prepared.clear()
        self.parsed[raw] = found
        values, errors = found
        category, exclude = values["category"], values["exclude"]
        if not errors and max(len(category), len(exclude)) <= MAX_FILTERS:
            mode = Mode(values["mode"])
            self.prepared[raw] = OfferQuery(values["n"], mode, _set(category), _set(exclude))


def _parsed(raw: bytes) -> Parsed:
    pairs = api_lean.query_pairs(raw)
    errors: list[dict[str, Any]] = []
    values = {
        "n": api_lean.scalar(pairs, "n", 5, COUNT, errors),
        "mode": api_lean.scalar(pairs, "mode", Mode.MIXED, MODE, errors),
        "category": api_lean.strings(pairs, "category", FILTER_LENGTH, errors, False),
        "exclude": api_lean.strings(pairs, "exclude", FILTER_LENGTH, errors),
    }
    return values, errors


def next_best_offer_route(
    service: OfferService, auth: Authenticator, problems: dict[int | str, Any]
) -> api_lean.LeanRoute:
    """The widget's route, bound to one service (one per process) and the API keys; the app
    puts it first in its route table, since it is the one matched most."""

    async def next_best_offer(
        request: Request,
        customer_id: api_lean.PathId,
        key: OffersRead,
        n: Annotated[
            int,
            Query(
                ge=1,
                le=MAX_N,
                description="How many offers (fewer only where the rules leave fewer: stock, "
                "filters, a short history to buy again).",
            ),
        ] = 5,
        mode: Annotated[
            Mode,
            Query(
                description="discover: new to the customer; replenish: bought before; mixed: both."
            ),
        ] = Mode.MIXED,
        category: Annotated[
            list[Annotated[str, Field(max_length=FILTER_LENGTH)]],
            Query(description="Only these categories (repeat the parameter)."),
        ] = [],  # noqa: B006
        exclude: Annotated[
            list[Annotated[str, Field(max_length=FILTER_LENGTH)]],
            Query(
                description="Never these item ids (repeat, or separate by commas), e.g. the cart."
            ),
        ] = [],  # noqa: B006
    ) -> Response:
        """Ranked offers for one customer, each with its score and reason, from the live
        model's cached top-N (re-scored now if the customer bought something since the model
        was trained), filtered by stock, category and exclusions with the campaign planner's
        rules. Unknown customers, customers without a history and customers who objected to
        profiling get recent popularity."""
        if len(category) > MAX_FILTERS or len(exclude) > MAX_FILTERS:
            _at_most(MAX_FILTERS, category=category, exclude=exclude)
        query = OfferQuery(n, Mode(mode), _set(category), _set(exclude))
        return await answer(request, customer_id, query)

    async def answer(request: Request, customer_id: str, query: OfferQuery) -> Response:
        entered = request.scope.get(api_lean.ENTERED, math.inf)
        if not customer_id.isascii():  # composed (PathId): stored so, or by older versions not
            customer_id = await run_in_threadpool(service.stored_id, customer_id)
        body = service.lookup(customer_id, query, entered)
        if body is None:
            body = await run_in_threadpool(service.respond, customer_id, query)
        return OffersJSON(body)

    queries = QueryStrings()

    async def fast(request: Request) -> Response | None:
        """The answer of a request that the general path (parse, the endpoint) takes with
        no error but its key's — a query string remembered as taken, the usual id
        (``lean.usual_id``) — without building its arguments again; None for any other. The
        widget's cached answers are most of a shop's requests."""
        scope = request.scope
        query = queries.prepared.get(scope.get("query_string", b""))
        if query is None:
            return None
        customer_id = str(scope["path_params"]["customer_id"])
        if not api_lean.usual_id(customer_id):
            return None
        auth.check(api_lean.header(request, b"authorization"), "offers:read", scope)
        return await answer(request, customer_id, query)

    async def parse(request: Request) -> dict[str, Any]:
        authorization = api_lean.header(request, b"authorization")
        key = auth.check(authorization, "offers:read", request.scope)
        values, errors = queries.of(request.scope.get("query_string", b""))
        customer_id, bad_id = api_lean.path_id(
            str(request.path_params["customer_id"]), ("path", "customer_id")
        )
        api_lean.raise_if([*bad_id, *errors] if bad_id else errors)  # FastAPI: path first
        return {"request": request, "customer_id": customer_id, "key": key, **values}

    return api_lean.LeanRoute(
        "/v1/customers/{customer_id:path}/next-best-offer",
        next_best_offer,
        parse=parse,
        fast=fast,
        methods=["GET"],
        response_model=OffersOut,
        responses=problems,
        tags=["offers"],
        summary="Next-best offers for a customer",
    )


def router(service: OfferService, problems: dict[int | str, Any]) -> APIRouter:
    """The other offer routes."""
    api = APIRouter(tags=["offers"])

    @api.get("/v1/items/{item_id:path}/similar", response_model=SimilarOut, responses=problems)
    def similar(
        item_id: api_lean.PathId,
        key: OffersRead,
        n: Annotated[int, Query(ge=1, le=MAX_N)] = 5,
    ) -> SimilarOut:
        """Items bought together with this one (the live model's item-to-item view), in stock,
        for product pages. 404 when no model is live or the model does not know the item."""
        found = service.similar(item_id, n)
        if found is None:
            raise HTTPException(
                404,
                f"no similar items for {item_id!r}: the live model does "
                "not know it (or no model is live yet)",
            )
        version, pairs = found
        return SimilarOut(
            item_id=item_id,
            model_version=version,
            items=[
                OfferOut(
                    item_id=i.id,
                    title=i.title,
                    category=i.category,
                    price=i.price,
                    url=i.url,
                    image_url=i.image_url,
                    score=round(score, 6),
                    reason="often bought together",
                    source="similar",
                )
                for i, score in pairs
            ],
        )

    return api
