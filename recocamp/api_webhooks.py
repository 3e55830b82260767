"""ESP webhooks: ``POST /v1/webhooks/{provider}`` (and the older ``/webhooks/{provider}``).

Authenticated per provider (``webhooks``: HTTP Basic or Bearer = ``RECOCAMP_WEBHOOK_SECRET``
for Postmark and Brevo, SendGrid's ECDSA signature), parsed and applied once: duplicates
are answered 200 and ignored. Bounces, complaints and unsubscribes suppress the address.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from recocamp import webhooks
from recocamp.clock import Clock
from recocamp.settings import Settings
from recocamp.store import contacts


class WebhookOut(BaseModel):
    accepted: int
    duplicates: int


def router(settings: Settings, engine: sa.Engine, clock: Clock,
           problems: dict[int | str, Any]) -> APIRouter:  # fmt: skip
    api = APIRouter(tags=["webhooks"])

    async def receive(provider: str, request: Request) -> WebhookOut:
        """Delivery, bounce, complaint and unsubscribe events from an e-mail provider."""
        body = await request.body()
        try:
            _authenticate(settings, provider, request, body, clock)
            events = webhooks.parse(provider, body)
        except webhooks.WebhookError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        applied = await run_in_threadpool(store, events)  # off the event loop, which also
        #                                                  serves cached next-best offers
        return WebhookOut(accepted=applied.new, duplicates=applied.duplicates)

    def store(events: list[webhooks.Event]) -> contacts.Applied:
        with engine.begin() as connection:
            return contacts.apply(connection, events, clock.now())

    documented: dict[int | str, dict[str, Any]] = {
        **problems,
        400: {"description": "The body is not the provider's webhook format."},
        503: {"description": "Webhooks of this provider are not configured (a secret or a "
                             "public key is missing)."},
    }  # fmt: skip
    api.add_api_route("/v1/webhooks/{provider}", receive, methods=["POST"],
                      response_model=WebhookOut, responses=documented)  # fmt: skip
    api.add_api_route("/webhooks/{provider}", receive, methods=["POST"], response_model=WebhookOut,
                      include_in_schema=False)  # fmt: skip
    return api


def _authenticate(settings: Settings, provider: str, request: Request, body: bytes,
                  clock: Clock) -> None:  # fmt: skip
    headers = {k.lower(): v for k, v in request.headers.items()}
    if provider == "sendgrid":
        webhooks.check_sendgrid_signature(headers, body, settings.esp.webhook_public_key,
                                          clock.now())  # fmt: skip
        return
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    webhooks.check_shared_secret(headers, secret)
