"""ESP webhooks: ``POST /v1/webhooks/{provider}`` (and the older ``/webhooks/{provider}``).

Authenticated per provider (``webhooks``: HTTP Basic or Bearer = ``RECOCAMP_WEBHOOK_SECRET``
for Postmark and Brevo, SendGrid's ECDSA signature), parsed and applied once: duplicates
are answered 200 and ignored. Bounces, complaints and unsubscribes suppress the address.
An event whose fields are wrong is left out and named under ``rejected`` (the others are
applied; why 200 and not 4xx: see ``webhooks``).
"""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as FastPath
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from recocamp import metrics
from recocamp.clock import Clock
from recocamp.delivery import webhooks
from recocamp.settings import Settings
from recocamp.store import contacts
from recocamp.store.engine import Engine

log = logging.getLogger(__name__)
MAX_NAMED = 20  # rejected events named in one answer


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
        body = await request.body()
        try:
            _authenticate(settings, provider, request, body, clock)
            parsed = webhooks.read(provider, body)
        except webhooks.WebhookError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        if parsed.rejected:
            log.warning(
                "%s webhook: %d event(s) left out: %s",
                provider,
                parsed.left_out,
                "; ".join(parsed.rejected[:MAX_NAMED]),
            )
        metrics.WEBHOOK_EVENTS.labels(provider, "rejected").inc(parsed.left_out)
        applied = await run_in_threadpool(store, parsed.events)  # off the event loop, which
        #                                                    also serves cached next-best offers
        metrics.WEBHOOK_EVENTS.labels(provider, "accepted").inc(applied.new)
        metrics.WEBHOOK_EVENTS.labels(provider, "duplicate").inc(applied.duplicates)
        return WebhookOut(
            accepted=applied.new,
            duplicates=applied.duplicates,
            rejected=parsed.rejected[:MAX_NAMED],
        )

    def store(events: list[webhooks.Event]) -> contacts.Applied:
        with engine.begin() as connection:
            return contacts.apply(connection, events, clock.now())

    documented: dict[int | str, dict[str, Any]] = {
        **problems,
        400: {"description": "The body is not the provider's webhook format."},
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


def _authenticate(
    settings: Settings, provider: str, request: Request, body: bytes, clock: Clock
) -> None:
    headers = {k.lower(): v for k, v in request.headers.items()}
    if provider == "sendgrid":
        webhooks.check_sendgrid_signature(
            headers, body, settings.esp.webhook_public_key, clock.now()
        )
        return
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    webhooks.check_shared_secret(headers, secret)
