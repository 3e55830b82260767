"""Shop API, live events: ``POST /v1/events/purchases``, ``POST /v1/events/reviews`` and
``PUT /v1/customers/{id}``.

All need the ``events:write`` scope and write in one transaction, so what they change is
visible to the very next request (the next-best-offer cache drops the answers of the
customers changed: see ``api.offer_cache``).

Purchases are validated with the importer's rules (``sources.csv.standard_purchase``:
numbers, timestamps — without an offset in the shop's time zone —, returns, adjustments
skipped), all orders of a request or none, and are idempotent on the order id: an order
already stored with the same lines under the same customer is reported as a duplicate and
left exactly as it is; one stored with other lines, under another customer or as a guest
order (or the reverse), is a 409 naming it, and nothing of the request is written. An order
is written whole by exactly one request, also when two post it at the same time
(``queries.store_orders``). Ids, numbers and texts have the bounds of :mod:`recocamp.domain`,
the importer's.

Reviews earn loyalty points (``campaigns.loyalty``): one review per request, stored by its
``review_id`` (``store.engagement``). A repeat with the same customer and time is a 200 that
changes nothing; the same id with another customer or time is a 409, nothing written. A
review time past now and the clocks' skew is refused, as an order's. A review names a
customer, so an erased customer's review is refused with 410 (nothing is stored: unlike an
order, it has no figure to keep without the person). Reviews change no next-best offer, so
they do not tell the offer cache.

Erased customers stay erased (``store.tombstones``). Their new orders are kept as guest
orders — the shop's sales figures stay right, the person is not linked again — and counted
(``erased_customer_lines``). A profile change for an erased id or address is refused with
410 Gone, unless it is a new sign-up: ``new_sign_up: true`` with a consent basis and a
``consent_at`` after the erasure; that lifts the tombstone and is audited. Without
``RECOCAMP_SIGNING_KEY`` a store that holds tombstones cannot check them: 503.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Body, Depends, HTTPException
from fastapi.exceptions import RequestValidationError
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    WithJsonSchema,
)

from recocamp import metrics, privacy
from recocamp.api import bodies
from recocamp.api import lean as api_lean
from recocamp.api.auth import EventsWrite
from recocamp.api.bodies import Flag, Number, WholeNumber
from recocamp.clock import Clock
from recocamp.data import profiles
from recocamp.data.ingest import detach
from recocamp.data.sources import csv as sources
from recocamp.domain import (
    ID_MAX,
    ID_PATTERN,
    LOCALES,
    PRICE_MAX,
    QUANTITY_MAX,
    TEXT_MAX,
    TEXT_PATTERN,
    YEAR_MAX,
    YEAR_MIN,
    ConsentBasis,
    Locale,
    Purchase,
    check_id,
    composed_text,
    future_problem,
    price_problem,
)
from recocamp.errors import OrderConflictError
from recocamp.settings import Settings
from recocamp.store import engagement, queries, registry, tombstones
from recocamp.store.engine import Connection, Engine

log = logging.getLogger(__name__)


# the importer's id rule: composed first (``domain.composed``), as a file's id; the pattern
# keeps out ASCII controls, ``check_id`` the rest (a regex for every non-printable character
# is not portable to OpenAPI)
Id = Annotated[
    str,
    Field(min_length=1, max_length=ID_MAX, pattern=ID_PATTERN),
    AfterValidator(check_id),
    BeforeValidator(composed_text),
]
Text = Annotated[str, Field(max_length=200, pattern=TEXT_PATTERN)]


def _sane(value: datetime) -> datetime:
    """Aware, in UTC, and within ``domain.YEAR_MIN``-``YEAR_MAX`` (the importer's bounds)."""
    try:
        utc = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None
    if not YEAR_MIN <= utc.year <= YEAR_MAX:
        raise ValueError(f"must lie between the years {YEAR_MIN} and {YEAR_MAX}")
    return utc


def _iso_text(value: Any) -> Any:
    """A time or a date as ISO 8601 text, nothing else: pydantic's lax mode reads a JSON
    number, or a text that is one, as seconds since 1970 (milliseconds past 2·10¹⁰), so a
    birth year ``1985`` was stored as 1970-01-01 and a date in ISO's basic form
    (``19850412``) as a day in August 1970, without a word. Python callers' own date and
    datetime objects pass."""
    if isinstance(value, date):  # a datetime is a date too
        return value
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value  # pydantic reads it (or says why not)
    raise ValueError("must be ISO 8601 text (2026-11-23T14:05:00+01:00, 1985-04-12), not a number")


IsoText = BeforeValidator(_iso_text)
When = Annotated[AwareDatetime, IsoText, AfterValidator(_sane)]


def _kept_price(value: float) -> float:
    """At most the decimals the store keeps (``domain.price_problem``), as in files."""
    problem = price_problem(value)
    if problem:
        raise ValueError(problem)
    return value


MAX_ORDERS = 1000
MAX_LINES = 1000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LineIn(_Strict):
    item_id: Id
    quantity: WholeNumber = Field(
        ge=-QUANTITY_MAX, le=QUANTITY_MAX, description="Negative: returned."
    )
    unit_price: Annotated[Number, AfterValidator(_kept_price)] = Field(
        ge=-PRICE_MAX, le=PRICE_MAX, allow_inf_nan=False, description="At most 4 decimals."
    )
    is_return: Flag | None = Field(None, description="Default: quantity < 0.")


class OrderIn(_Strict):
    order_id: Id
    customer_id: Id | None = Field(None, description="null or left out for a guest order.")
    ordered_at: str = Field(
        max_length=64,
        description="ISO 8601; without an offset it is read in the shop's time zone.",
        examples=["2026-11-23T14:05:00+01:00"],
    )
    lines: list[LineIn] = Field(min_length=1, max_length=MAX_LINES)


class OrdersIn(_Strict):
    orders: list[OrderIn] = Field(min_length=1, max_length=MAX_ORDERS)


def _shape(value: Any) -> str:
    return "batch" if isinstance(value, dict) and "orders" in value else "order"


PurchasesIn = Annotated[
    Annotated[OrderIn, Tag("order")] | Annotated[OrdersIn, Tag("batch")],
    Discriminator(_shape),
]
PURCHASES = "/v1/events/purchases"


def untagged(loc: Sequence[Any]) -> list[Any]:
    """A purchases body's error ``loc`` as the body has it: pydantic puts the union's tag
    (``order``, ``batch``) after ``body``, a key no body holds, where the checks after it
    (``_validated``) name the same field without it."""
    if len(loc) > 1 and loc[0] == "body" and loc[1] in ("order", "batch"):
        return [loc[0], *loc[2:]]
    return list(loc)


class PurchasesOut(BaseModel):
    orders: int = Field(description="Orders in the request.")
    new_orders: int
    duplicate_orders: list[str] = Field(description="Already stored: left as they were.")
    lines_written: int
    lines_skipped: dict[str, int] = Field(description="e.g. adjustment: price or quantity 0.")
    erased_customer_lines: int = Field(
        0, description="Lines of erased customers, stored as guest lines (no customer)."
    )


def _never_null(kind: str, values: list[str] | None = None) -> WithJsonSchema:
    """The schema of a field that may be left out but not set to null (its column is NOT
    NULL); an explicit null is refused by the endpoint."""
    schema: dict[str, Any] = {"type": kind}
    if values is not None:
        schema["enum"] = values
    return WithJsonSchema(schema)


NEVER_NULL = ("locale", "consent_basis", "channel_email", "objected_to_profiling")


class CustomerIn(_Strict):
    """Profile, consent and contact preferences; fields left out are not changed."""

    source: Text = Field(
        min_length=1, description="Where the change comes from: checkout, account page, …"
    )
    at: When | None = Field(None, description="When the customer made it (default: now).")
    email: Annotated[str, Field(max_length=TEXT_MAX["email"], pattern=TEXT_PATTERN)] | None = None
    first_name: Text | None = None
    locale: Annotated[Locale | None, _never_null("string", list(LOCALES))] = None
    time_zone: Annotated[Text, Field(max_length=TEXT_MAX["time_zone"])] | None = None
    country: Annotated[Text, Field(max_length=TEXT_MAX["country"])] | None = None
    birthday: Annotated[date, IsoText] | None = None
    consent_basis: Annotated[
        ConsentBasis | None, _never_null("string", [b.value for b in ConsentBasis])
    ] = None
    consent_at: When | None = None
    consent_source: Text | None = None
    channel_email: Annotated[Flag | None, _never_null("boolean")] = None
    frequency_preference: Literal["daily", "weekly", "monthly"] | None = None
    paused_until: When | None = None
    objected_to_profiling: Annotated[Flag | None, _never_null("boolean")] = None
    unsubscribed: Flag | None = Field(
        None,
        description="true: unsubscribe from marketing "
        "e-mail; false: re-subscribe (needs a new consent).",
    )
    new_sign_up: Flag = Field(
        False,
        description="The person signs up again after an erasure of this id or address: "
        "needs consent_basis and a consent_at after the erasure (else 410 Gone).",
    )


class ReviewIn(_Strict):
    review_id: Id = Field(description="The shop's id of the review: repeats are no-ops.")
    customer_id: Id
    occurred_at: When = Field(
        description="When the customer posted it: ISO 8601 with an offset, not in the future.",
        examples=["2026-11-23T14:05:00+01:00"],
    )


class ReviewOut(BaseModel):
    review_id: str
    created: bool = Field(description="false: already stored with the same content.")


class CustomerOut(BaseModel):
    customer_id: str
    created: bool
    changed: list[str]
    kept_newer: list[str] = Field(
        default=[],
        description=(
            "Fields given but left as they are: changed after this change's `at` (a delayed "
            "sync does not undo a newer change, such as the customer's own objection)"
        ),
    )
    model_artifacts: int | None = Field(
        default=None,
        description=(
            "With an objection to profiling: saved models the customer was removed from "
            "(null without one)"
        ),
    )
    models_left: list[str] = Field(
        default=[],
        description=(
            "With an objection: model directories whose artifacts could not be found or read, "
            "so could not be cleaned of the customer (the error is logged)"
        ),
    )


def router(
    settings: Settings,
    engine: Engine,
    clock: Clock,
    problems: dict[int | str, Any],
    on_change: Callable[[Iterable[str]], None] = lambda customer_ids: None,
) -> APIRouter:
    """``on_change``: told, after the commit and before the answer, which customers' data a
    request changed (the offer cache of this process drops their answers; other processes
    learn it from the store, see ``api.offer_cache``)."""
    api = APIRouter(
        tags=["events"],
        route_class=bodies.json_route("events:write"),
        dependencies=[Depends(bodies.json_only)],
    )
    zone = settings.shop.zone
    secret = tombstones.key_of(settings)
    model = problems[401]["model"]
    unchecked: dict[int | str, dict[str, Any]] = {
        503: {
            "model": model,
            "description": (
                "Erasure tombstones exist but RECOCAMP_SIGNING_KEY is not set: they cannot be "
                "checked; or the store is busy or out of reach (with Retry-After: send the "
                "request again). Nothing was written."
            ),
        }
    }
    gone: dict[int | str, dict[str, Any]] = {
        410: {
            "model": model,
            "description": (
                "The customer id or address was erased; only a new sign-up (new_sign_up) with a "
                "fresh consent is taken."
            ),
        }
    }

    conflict: dict[int | str, Any] = {
        409: {
            "model": problems[401]["model"],
            "description": "An order is already stored with other lines, under another "
            "customer or as a guest order (nothing was written).",
        }
    }

    @api.post(
        PURCHASES,
        response_model=PurchasesOut,
        responses={**problems, **conflict, **unchecked, **bodies.UNSUPPORTED},
    )
    def post_purchases(body: Annotated[PurchasesIn, Body()], key: EventsWrite) -> PurchasesOut:
        """One order or a batch (``{"orders": […]}``): all written or none."""
        orders = body.orders if isinstance(body, OrdersIn) else [body]
        prefix: tuple[str | int, ...] = (
            ("body", "orders") if isinstance(body, OrdersIn) else ("body",)
        )
        rows, skipped = _validated(orders, prefix, zone, isinstance(body, OrdersIn), clock.now())
        try:
            with _checked(engine) as connection:
                named = {row.customer_id for row in rows if row.customer_id}
                erased = tombstones.erased_ids(connection, secret, named, "purchase events")
                kept = [detach(row, erased) for row in rows]
                ids = [o.order_id for o in orders]
                stored = queries.store_orders(connection, kept, None, order_ids=ids)
                _same_customers(connection, orders, erased, stored.repeated)
        except OrderConflictError as exc:
            metrics.API_EVENTS.labels("conflict").inc(len(exc.order_ids))
            raise HTTPException(409, str(exc)) from None
        on_change(named)
        new = set(stored.new)
        detached = sum(1 for row in rows if row.customer_id in erased and row.order_id in new)
        metrics.API_EVENTS.labels("new").inc(len(stored.new))
        metrics.API_EVENTS.labels("duplicate").inc(len(stored.repeated))
        log.info(
            "purchase events from %s: %d orders, %d new, %d lines",
            key.name,
            len(orders),
            len(stored.new),
            stored.lines_written,
        )
        return PurchasesOut(
            orders=len(orders),
            new_orders=len(stored.new),
            duplicate_orders=stored.repeated,
            lines_written=stored.lines_written,
            lines_skipped=skipped,
            erased_customer_lines=detached,
        )

    review_conflict: dict[int | str, Any] = {
        409: {
            "model": model,
            "description": "The review id is stored with another customer or time "
            "(nothing was written).",
        },
        410: {"model": model, "description": "The customer id was erased: nothing was stored."},
    }

    @api.post(
        "/v1/events/reviews",
        response_model=ReviewOut,
        responses={**problems, **review_conflict, **unchecked, **bodies.UNSUPPORTED},
    )
    def post_review(body: ReviewIn, key: EventsWrite) -> ReviewOut:
        """One review a customer posted: it earns ``[loyalty] points_per_review``."""
        answer = _review(engine, secret, body, clock.now())
        log.info(
            "review %s of customer %s from %s: %s",
            body.review_id,
            body.customer_id,
            key.name,
            "new" if answer.created else "repeat",
        )
        return answer

    @api.put(
        "/v1/customers/{customer_id:path}",
        response_model=CustomerOut,
        responses={**problems, **gone, **unchecked, **bodies.UNSUPPORTED},
    )
    def put_customer(
        customer_id: api_lean.PathId, body: CustomerIn, key: EventsWrite
    ) -> CustomerOut:
        """Create or change a customer's profile, consent or contact preferences; recorded in
        the audit log with the time and source of the change. An objection to profiling also
        removes the customer from every saved model's artifacts before the answer
        (``model_artifacts``; tens of milliseconds per model, on this worker thread, off the
        event loop)."""
        now = clock.now()
        at = body.at or now
        for name in ("at", "consent_at"):
            value = getattr(body, name)
            late = None if value is None else future_problem(value, now)
            if late:
                raise RequestValidationError(
                    [api_lean.problem("value_error", ("body", name), late, value.isoformat())]
                )
        changes = body.model_dump(
            exclude_unset=True, exclude={"source", "at", "unsubscribed", "new_sign_up"}
        )
        nulls = [name for name in NEVER_NULL if name in changes and changes[name] is None]
        if nulls:
            raise RequestValidationError(
                [
                    api_lean.problem(
                        "value_error", ("body", name), "may be left out, not set to null", None
                    )
                    for name in nulls
                ]
            )
        try:
            with _checked(engine) as connection:
                customer_id = registry.stored_id(connection, customer_id)
                _admit(connection, secret, customer_id, body, f"api:{key.name}", now)
                changed = profiles.apply(
                    connection,
                    customer_id,
                    changes,
                    at=at,
                    actor=f"api:{key.name}",
                    source=body.source,
                    unsubscribed=body.unsubscribed,
                    zone=zone,
                    now=now,
                    default_locale=settings.shop.default_locale,
                )
        except profiles.ProfileError as exc:
            raise RequestValidationError(
                [api_lean.problem("value_error", ("body", exc.field), exc.message, exc.value)]
            ) from None
        on_change([customer_id])
        scrub = privacy.unprofile(engine, settings, [customer_id]) if changed.objected else None
        log.info(
            "customer %s %s by %s (%s): %s",
            customer_id,
            "created" if changed.created else "changed",
            key.name,
            body.source,
            ",".join(changed.fields) or "nothing",
        )
        return CustomerOut(
            customer_id=customer_id,
            created=changed.created,
            changed=list(changed.fields),
            kept_newer=list(changed.kept_newer),
            model_artifacts=None if scrub is None else scrub.models,
            models_left=[] if scrub is None else list(scrub.models_left),
        )

    return api


def _same_customers(
    connection: Connection, orders: list[OrderIn], erased: set[str], repeated: list[str]
) -> None:
    """An order stored already is a repeat only under the same customer (or as a guest order
    both times): the digest leaves the customer out (an erasure unlinks the stored lines), so
    the same lines under another customer were a 200 "duplicate" that left the order where it
    was. 409 naming them, raised in the writing transaction (nothing of the request is
    written); a customer erased since is compared as the guest their lines became."""
    if not repeated:
        return
    again = set(repeated)
    posted = {o.order_id: o.customer_id for o in orders if o.order_id in again}
    detached = {k: None if v in erased else v for k, v in posted.items()}
    conflicts = queries.customer_conflicts(connection, detached)
    if conflicts:
        raise OrderConflictError(conflicts, "under another customer or as a guest order")


@contextmanager
def _checked(engine: Engine) -> Iterator[Connection]:
    """A transaction whose tombstone checks answer 503 when they cannot be made."""
    try:
        with engine.begin() as connection:
            yield connection
    except tombstones.KeyUnknown as error:  # made under a key no longer configured
        raise HTTPException(503, error.brief()) from None
    except tombstones.KeyMissing:
        raise HTTPException(
            503,
            "erasure tombstones exist but RECOCAMP_SIGNING_KEY is not set: they cannot be checked",
        ) from None


def _review(
    engine: Engine, secret: tombstones.Keys | None, body: ReviewIn, now: datetime
) -> ReviewOut:
    """Check and store one review: 422 for a time past now and the skew, 410 for an erased
    customer, 409 for the id stored with other content (nothing written in any of them)."""
    late = future_problem(body.occurred_at, now)
    if late:
        raise RequestValidationError(
            [
                api_lean.problem(
                    "value_error", ("body", "occurred_at"), late, body.occurred_at.isoformat()
                )
            ]
        )
    with _checked(engine) as connection:
        outcome = _store_review(connection, secret, body, now)
    metrics.API_REVIEW_EVENTS.labels("erased" if outcome is None else outcome.value).inc()
    if outcome is None:
        raise HTTPException(
            410, "this customer id was erased: their reviews are not taken (nothing stored)"
        )
    if outcome is engagement.Recorded.CONFLICT:
        raise HTTPException(
            409,
            f"review {body.review_id!r} is already stored with another customer or time "
            "(nothing was written)",
        )
    return ReviewOut(review_id=body.review_id, created=outcome is engagement.Recorded.NEW)


def _store_review(
    connection: Connection, secret: tombstones.Keys | None, body: ReviewIn, now: datetime
) -> engagement.Recorded | None:
    """Store the review unless its customer id is erased (checked first, in the writing
    transaction: ``tombstones.serialise``); what was done, None when it was refused."""
    if tombstones.matches(connection, secret, body.customer_id, None, "review events"):
        return None
    return engagement.record(
        connection, "review", body.review_id, body.customer_id, body.occurred_at, now
    )


def _admit(
    connection: Connection,
    secret: tombstones.Keys | None,
    customer_id: str,
    body: CustomerIn,
    actor: str,
    now: datetime,
) -> None:
    """Refuse an erased id or address (410) unless this is a new sign-up with a consent
    given after the erasure, which lifts the tombstone (audited)."""
    match = tombstones.matches(connection, secret, customer_id, body.email, "customer changes")
    if not match:
        return
    if not body.new_sign_up:
        raise HTTPException(
            410,
            "this customer id or address was erased; only a new sign-up "
            "(new_sign_up: true, with a fresh consent) is taken",
        )
    basis, consent_at = body.consent_basis, body.consent_at
    if (
        basis in (None, ConsentBasis.NONE)
        or consent_at is None
        or (match.erased_at is not None and consent_at <= match.erased_at)
    ):
        raise RequestValidationError(
            [
                api_lean.problem(
                    "value_error",
                    ("body", "consent_at"),
                    "a new sign-up needs consent_basis and a consent_at after the erasure",
                    None if consent_at is None else consent_at.isoformat(),
                )
            ]
        )
    assert secret is not None  # matches() found tombstones: it had the key
    lifted = tombstones.lift(connection, secret, customer_id, match)
    queries.audit(
        connection,
        at=now,
        actor=actor[:200],
        action="erasure_lifted",
        subject_type="customer",
        subject_id=customer_id,
        details={"source": body.source[:200], "tombstones": lifted},
    )


def _validated(
    orders: list[OrderIn],
    prefix: tuple[str | int, ...],
    zone: ZoneInfo,
    batch: bool,
    now: datetime,
) -> tuple[list[Purchase], dict[str, int]]:
    """Every line through the importer's row rules, and an order time no later than ``now``
    and the clocks' skew (``domain.future_problem``, as a consent's: an order of 2030 is a
    typo or a wrong clock, and would stand first in every "latest" since); all problems at
    once, as a 422."""
    stamps, numbers = sources.Timestamps(zone), sources.LineNumbers()
    rows: list[Purchase] = []
    skipped: dict[str, int] = {}
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, order in enumerate(orders):
        where: tuple[str | int, ...] = (*prefix, i) if batch else prefix
        if order.order_id in seen:
            errors.append(
                api_lean.problem(
                    "value_error",
                    (*where, "order_id"),
                    "appears twice in this request",
                    order.order_id,
                )
            )
        seen.add(order.order_id)
        kept, said = len(rows), False
        for j, line in enumerate(order.lines):
            try:
                value = sources.standard_purchase(_row(order, line, j), stamps, numbers)
            except sources.RowProblem as exc:
                timed = exc.column == "ordered_at"  # the order's: said once, not per line
                place = (*where, "ordered_at") if timed else (*where, "lines", j, exc.column)
                if not (timed and said):
                    errors.append(api_lean.problem("value_error", place, exc.message, exc.value))
                said = said or timed
                continue
            if isinstance(value, sources.Skip):
                skipped[value.reason] = skipped.get(value.reason, 0) + 1
            else:
                rows.append(value)
        late = next((future_problem(row.ordered_at, now) for row in rows[kept:]), None)
        if late:
            errors.append(
                api_lean.problem("value_error", (*where, "ordered_at"), late, order.ordered_at)
            )
    api_lean.raise_if(errors)
    return rows, skipped


def _row(order: OrderIn, line: LineIn, index: int) -> dict[str, str]:
    """A line in the standard CSV format's shape, so the importer's parser applies as is."""
    is_return = "" if line.is_return is None else str(line.is_return).lower()
    return {
        "order_id": order.order_id,
        "customer_id": order.customer_id or "",
        "item_id": line.item_id,
        "quantity": str(line.quantity),
        "unit_price": sources.plain_number(line.unit_price),  # 0.00001, not 1e-05
        "ordered_at": order.ordered_at,
        "line_no": str(index + 1),
        "is_return": is_return,
    }
