"""ESP webhooks: ``POST /v1/webhooks/{provider}`` (and the older ``/webhooks/{provider}``).

Authenticated per provider (``webhooks``: HTTP Basic or Bearer = ``RECOCAMP_WEBHOOK_SECRET``
for Postmark and Brevo, SendGrid's ECDSA signature), parsed and applied once: duplicates
are answered 200 and ignored. The shared secret is checked before the body is read (a post
with a wrong one costs no read of up to ``[api] max_body_bytes``); SendGrid's signature
covers the body, so it is read first. A failed authentication (401) counts against the
client's address, as an API key's does (``api.auth``: ``[api] auth_failures_per_minute``,
then 429 with ``Retry-After`` before anything is checked). Bounces, complaints and
unsubscribes suppress the address. An event whose fields are wrong is left out and named
under ``rejected`` (the others are applied; why 200 and not 4xx: see ``webhooks``).

A post whose events cannot be stored now (the database is locked past its busy timeout, the
connection to PostgreSQL dropped) is answered 429 with ``Retry-After``, not 500: Brevo
drops a webhook for good on any 5xx and on any 4xx but 429 (developers.brevo.com, "Retry
mechanism"), and a lost hard bounce or unsubscribe would never suppress the address;
Postmark and SendGrid retry a 429 as they retry any answer but 2xx (Postmark: but 403).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as FastPath
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from recocamp import metrics
from recocamp.api.auth import Authenticator, client_of
from recocamp.clock import Clock
from recocamp.delivery import webhooks
from recocamp.settings import Settings
from recocamp.store import contacts
from recocamp.store.engine import Engine, SQLAlchemyError
from recocamp.tokens import provider_key

log = logging.getLogger(__name__)
MAX_NAMED = 20  # rejected events named in one answer
RETRY_AFTER_S = 60  # a post whose events could not be stored: when to post it again


class WebhookOut(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[str] = Field(
        default_factory=list,
        description="Events left out because a field is wrong: index, field and problem "
        "(absent when there are none).",
    )


WEBHOOK_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": webhooks.json_schema()}},
    },
}
PROVIDERS = sorted(webhooks.PARSERS)


def router(
    settings: Settings, engine: Engine, clock: Clock, problems: dict[int | str, Any]
) -> APIRouter:
    api = APIRouter(tags=["webhooks"])

    async def receive(
        provider: Annotated[str, FastPath(json_schema_extra={"enum": PROVIDERS})], request: Request
    ) -> WebhookOut:
        """Delivery, bounce, complaint and unsubscribe events from an e-mail provider."""
        guard: Authenticator = request.app.state.authenticator
        client = client_of(request.scope)
        guard.guard(client)  # 429: this address failed too often
        try:
            if provider != "sendgrid":  # the secret is in the headers: before the body
                _shared_secret(settings, request)
            body = await request.body()
            if provider == "sendgrid":
                webhooks.check_sendgrid_signature(
                    _headers(request), body, settings.esp.webhook_public_key, clock.now()
                )
            parsed = webhooks.read(provider, body)
        except webhooks.WebhookError as exc:
            if exc.status == 401:
                guard.failed(client)
            raise HTTPException(exc.status, str(exc)) from None
        if parsed.rejected:
            log.warning(
                "%s webhook: %d event(s) left out: %s",
                provider,
                parsed.left_out,
                "; ".join(parsed.rejected[:MAX_NAMED]),
            )
        metrics.WEBHOOK_EVENTS.labels(provider, "rejected").inc(parsed.left_out)
        applied = await stored(provider, parsed.events)
        metrics.WEBHOOK_EVENTS.labels(provider, "accepted").inc(applied.new)
        metrics.WEBHOOK_EVENTS.labels(provider, "duplicate").inc(applied.duplicates)
        return WebhookOut(
            accepted=applied.new,
            duplicates=applied.duplicates,
            rejected=parsed.rejected[:MAX_NAMED],
        )

    references = _references(settings)

    def store(events: list[webhooks.Event]) -> contacts.Applied:
        with engine.begin() as connection:
            return contacts.apply(connection, events, clock.now(), references)

    async def stored(provider: str, events: list[webhooks.Event]) -> contacts.Applied:
        """The events applied, off the event loop (which also serves cached next-best
        offers); a store failure is 429 + Retry-After, which every provider retries."""
        try:
            return await run_in_threadpool(store, events)
        except SQLAlchemyError as exc:  # its text is not logged: it may quote a statement
            log.warning(
                "%s webhook: %d event(s) not stored (%s): answered 429, to be posted again",
                provider,
                len(events),
                type(exc).__name__,
            )
            raise HTTPException(
                429,
                "the events could not be stored now: post them again later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None

    documented: dict[int | str, dict[str, Any]] = {
        **problems,
        400: {"description": "The body is not the provider's webhook format."},
        401: {"description": "The secret or signature is missing or wrong."},
        429: {
            "description": "The events could not be stored now (database busy or "
            "unreachable), or this address failed to authenticate too often: post them again "
            "after Retry-After. Not 5xx: Brevo drops a webhook answered 5xx and retries only "
            "429."
        },
        503: {
            "description": "Webhooks of this provider are not configured (a secret or a "
            "public key is missing)."
        },
    }
    api.add_api_route(
        "/v1/webhooks/{provider}",
        receive,
        methods=["POST"],
        response_model=WebhookOut,
        responses=documented,
        response_model_exclude_defaults=True,
        openapi_extra=WEBHOOK_BODY,
    )
    api.add_api_route(
        "/webhooks/{provider}",
        receive,
        methods=["POST"],
        response_model=WebhookOut,
        response_model_exclude_defaults=True,
        include_in_schema=False,
    )
    return api


def _references(settings: Settings) -> contacts.References:
    """A send key as the provider may know it (Postmark: ``tokens.provider_key`` under the
    signing key, or under a retired one for an e-mail claimed before a rotation)."""
    keys = settings.signing_keys() or (None,)

    def references(send_key: str) -> tuple[str, ...]:
        return tuple(provider_key(key, send_key) for key in keys)

    return references


def _headers(request: Request) -> dict[str, str]:
    return {k.lower(): v for k, v in request.headers.items()}


def _shared_secret(settings: Settings, request: Request) -> None:
    """Postmark's and Brevo's secret (HTTP Basic or Bearer); WebhookError 401 or 503."""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    webhooks.check_shared_secret(_headers(request), secret)
