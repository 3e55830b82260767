"""The HTTP face of recocamp (FastAPI). Delivery part: unsubscribe links and ESP webhooks.

- ``GET /u/{token}`` shows a confirm page; it never unsubscribes by itself, because mail
  scanners and link previews fetch every URL in an e-mail.
- ``POST /u/{token}`` unsubscribes: RFC 8058 one-click (``List-Unsubscribe=One-Click``
  from a mail client, no cookies, no session) and the confirm page's button alike. A token
  that was tampered with, expired or is for another purpose gets 400 and changes nothing.
- ``POST /webhooks/{provider}`` authenticates (see ``webhooks``), parses and applies
  provider events; duplicates are answered 200 and ignored.
- ``GET /health``.

Pages carry no e-mail address; logs name customers by id only.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from recocamp import tokens, webhooks
from recocamp.clock import Clock
from recocamp.settings import Settings
from recocamp.store import contacts

log = logging.getLogger(__name__)

PAGE = """<!doctype html><html lang="{lang}"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}
button{{font-size:1rem;padding:.6rem 1.2rem}}</style></head><body><h1>{title}</h1>{body}
</body></html>"""


def page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(PAGE.format(lang="en", title=html.escape(title), body=body), status)


def create_app(settings: Settings, engine: sa.Engine, clock: Clock) -> FastAPI:
    app = FastAPI(title="recocamp", docs_url=None, redoc_url=None)
    key = settings.signing_key.get_secret_value().encode() if settings.signing_key else None
    shop = html.escape(settings.shop.name)

    def claims(token: str) -> tokens.Claims:
        if key is None:
            raise HTTPException(503, "unsubscribe links are off: RECOCAMP_SIGNING_KEY is not set")
        try:
            return tokens.verify(key, token, "unsubscribe", clock.now())
        except tokens.TokenError:
            raise HTTPException(400, "this link is not valid") from None

    @app.get("/health")
    def health() -> dict[str, str]:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        return {"status": "ok"}

    @app.get("/u/{token}", response_class=HTMLResponse)
    def unsubscribe_page(token: str) -> HTMLResponse:
        claims(token)
        form = (f'<p>Stop marketing e-mails from {shop}?</p><form method="post">'
                '<button type="submit">Unsubscribe</button></form>')  # fmt: skip
        return page("Unsubscribe", form)

    @app.post("/u/{token}", response_class=HTMLResponse)
    def unsubscribe(token: str) -> HTMLResponse:
        found = claims(token)
        with engine.begin() as connection:
            changed = contacts.record_link_unsubscribe(
                connection, found.customer_id, found.campaign, found.issued_at, clock.now()
            )
        log.info("unsubscribe customer %s via %s link (new: %s)", found.customer_id,
                 found.campaign, changed)  # fmt: skip
        return page("Unsubscribed", f"<p>You will get no more marketing e-mails from {shop}.</p>")

    @app.post("/webhooks/{provider}")
    async def webhook(provider: str, request: Request) -> dict[str, Any]:
        body = await request.body()
        try:
            _authenticate(settings, provider, request, body, clock)
            events = webhooks.parse(provider, body)
        except webhooks.WebhookError as exc:
            raise HTTPException(exc.status, str(exc)) from None
        with engine.begin() as connection:
            applied = contacts.apply(connection, events, clock.now())
        return {"accepted": applied.new, "duplicates": applied.duplicates}

    return app


def _authenticate(settings: Settings, provider: str, request: Request, body: bytes,
                  clock: Clock) -> None:  # fmt: skip
    headers = {k.lower(): v for k, v in request.headers.items()}
    if provider == "sendgrid":
        webhooks.check_sendgrid_signature(headers, body, settings.esp.webhook_public_key,
                                          clock.now())  # fmt: skip
        return
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    webhooks.check_shared_secret(headers, secret)
