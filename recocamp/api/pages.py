"""Customer-facing pages behind signed links (no API key): unsubscribe and preferences.

- ``GET /u/{token}`` shows a confirm button and changes nothing (mail scanners and link
  previews fetch every URL of an e-mail); ``POST /u/{token}`` unsubscribes: RFC 8058
  one-click from a mail client (``List-Unsubscribe=One-Click``, no cookies, no session) and
  the confirm button alike.
- ``GET /p/{token}`` is the preferences page (German or English: ``?lang=``, else the
  customer's locale): channel and frequency, a pause of some weeks, unsubscribe from
  everything, objection to profiling, what we hold and why the e-mail's offers were chosen,
  a download of all data (``/p/{token}/data.json``, GDPR Art. 15/20) and erasure (Art. 17).
  Its forms post to ``/p/{token}`` and are answered with a redirect back (303).

A token tampered with, expired (a preferences link after 400 days; an unsubscribe link never
expires), issued in the future or made for another purpose gets 400 and changes nothing.
After a rotation of the signing key (``RECOCAMP_SIGNING_KEYS_RETIRED``) an unsubscribe link
signed under a retired key still unsubscribes (it is owed for as long as the e-mail exists,
and a forged one can only stop mail); a preferences link or its download under a retired key
gets 400 with a page saying to use a newer e-mail's link: the key was retired because it is
weak or known, so such a link may be forged, and it would show, export or erase the data. A
link of an erased customer (``store.tombstones``) gets 410 with a page saying that their
data was erased and they will not be contacted, and changes nothing: no unsubscribe event is
recorded under the erased id, no profile is created again. So does a link issued before the
latest erasure of its customer id when the person has signed up again since
(``tombstones.void_link``): it belongs to the erased record, and must neither show, export,
change nor erase the new one. Every route says so alike, the download too. The page and the
download check it in the snapshot they read (``store.engine.snapshot``) and again once read,
a change or an erasure in the transaction that writes: an erasure and a re-sign-up landing
after the check cannot be shown through the old link. A valid link of a customer we do not
hold (never created, or removed otherwise) gets 404 on every route, the one-click
unsubscribe too, and nothing is recorded: a token is signed for a customer we mailed, so its
holder learns nothing from the answer that the token did not already say, and no event is
stored for an id that names nobody. A preferences link mailed to an address its customer
has left since (it names it: ``tokens.mailbox_tag``) gets 400 on the page, its forms and the
download, as a link not valid any more: a mailbox the customer left (recycled, a former
job's) keeps its mail. Tokens prove who the customer is; a page shows their
address only masked. Every change is recorded in the audit log with ``actor = customer`` and
the page as its source.

Every answer under these paths (pages, the download, errors) carries :data:`PRIVATE_HEADERS`
(:class:`PrivateHeaders`): personal data is not cached, the token in the URL is not sent on
as a referrer, and no other site may frame a page to trick a click on its buttons.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.background import BackgroundTask
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from recocamp import metrics, privacy, tokens
from recocamp.api import forms
from recocamp.api import page_views as pages
from recocamp.api.offer_cache import OfferService, Query
from recocamp.campaigns.audience import history_of
from recocamp.campaigns.offers import why_in
from recocamp.clock import Clock
from recocamp.data import profiles
from recocamp.domain import id_forms
from recocamp.errors import VoidLinkError
from recocamp.settings import Settings
from recocamp.store import contacts, registry, tombstones, views
from recocamp.store import forecasts as forecast_store
from recocamp.store import pages as store
from recocamp.store.engine import Connection, Engine, snapshot

log = logging.getLogger(__name__)
ACTOR = "customer"
SOURCE = "preferences page"


PRIVATE_PREFIXES = ("/u/", "/p/", "/v1/feedback")  # paths with a signed link's token
PRIVATE_HEADERS = {
    b"cache-control": b"no-store",
    b"referrer-policy": b"no-referrer",
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
}
FRAME_ANCESTORS = b"frame-ancestors 'none'"
# the API's answers that carry one person's data (an export, an erasure's report, a
# forecast, next-best offers and their "because you bought …"): a cache on the way (a proxy
# in front of the API, a client library's HTTP cache) keeps none of them
NO_STORE = {"Cache-Control": "no-store"}


class PrivateJSON(JSONResponse):
    """A JSON answer with ``Cache-Control: no-store`` (the ``response_class`` of the API's
    routes about one person; the customer pages get it from :class:`PrivateHeaders`).
    Without it a client's or proxy's cache may keep an answer heuristically (RFC 9111
    §4.2.2), and one configured to cache the API would serve it again."""

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = None,
        background: BackgroundTask | None = None,
    ) -> None:
        super().__init__(
            content, status_code, {**NO_STORE, **(headers or {})}, media_type, background
        )


class PrivateHeaders:
    """Sets :data:`PRIVATE_HEADERS` and CSP ``frame-ancestors 'none'`` (added to a policy the
    handler set) on every answer under :data:`PRIVATE_PREFIXES` (pure ASGI, in one place)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(PRIVATE_PREFIXES):
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = _private(list(message.get("headers", [])))
            await send(message)

        await self.app(scope, receive, sending)


def _private(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    kept = [(k, v) for k, v in headers if k.lower() not in PRIVATE_HEADERS]
    policies = [v for k, v in kept if k.lower() == b"content-security-policy"]
    kept = [(k, v) for k, v in kept if k.lower() != b"content-security-policy"]
    policy = b"; ".join([*policies, FRAME_ANCESTORS])
    return [*kept, *PRIVATE_HEADERS.items(), (b"content-security-policy", policy)]


class LinkError(Exception):
    """A link that cannot be used: rendered as a page with this status."""

    def __init__(self, status: int, key: str) -> None:
        super().__init__(key)
        self.status, self.key = status, key


class Pages:
    """The page handlers, bound to the shop's settings, store, clock and offer service."""

    def __init__(
        self, settings: Settings, engine: Engine, clock: Clock, service: OfferService
    ) -> None:
        self.settings, self.engine, self.clock, self.service = settings, engine, clock, service
        self.secret = settings.signing_key_bytes()
        self.keys = settings.signing_keys()  # the signing key, then the retired ones
        self.shop = settings.shop.name

    def verify(self, token: str, purpose: str) -> tokens.Claims:
        """The link's claims. An unsubscribe link does not expire: an objection to marketing
        mail is possible at any time (UWG §7(3) no. 4, Art. 21(2) GDPR), from an old
        e-mail's link or one-click header too, and it only ever stops mail; a preferences
        link, which shows and exports the customer's data, lives 400 days. A link signed
        under a retired key: an unsubscribe link passes, any other is refused (400,
        ``retired``; see the module's docstring)."""
        if self.keys is None:
            raise LinkError(503, "links_off")
        max_age = None if purpose == "unsubscribe" else 400
        try:
            found, position = tokens.verify_any(
                self.keys, token, purpose, self.clock.now(), max_age
            )
        except tokens.TokenError:
            raise LinkError(400, "invalid") from None
        if position and purpose != "unsubscribe":
            raise LinkError(400, "retired")
        return found

    def mailed_to(self, found: tokens.Claims) -> None:
        """LinkError 400 when a (verified) preferences link was mailed to an address its
        customer has left since: see :meth:`moved`. A link void by an erasure passes: the
        route answers it 410, as every route does."""
        with self.engine.connect() as connection:
            if not self.erased(connection, found, writing=False) and self.moved(connection, found):
                raise LinkError(400, "invalid")

    def moved(self, connection: Connection, found: tokens.Claims) -> bool:
        """Whether the link names an address (``tokens.mailbox_tag``) that its customer no
        longer holds: mail keeps its links in a mailbox the customer left (a recycled one, a
        former job's), whose reader must not see, export or erase their data. A link naming
        none (issued before links named one) is not bound."""
        if found.mailbox is None or not store.exists(connection, found.customer_id):
            return False
        assert self.secret is not None  # verify() answered 503 without it
        address = store.email(connection, found.customer_id)
        tag = "" if address is None else tokens.mailbox_tag(self.secret, address)
        return not hmac.compare_digest(tag, found.mailbox)

    def lang(self, request: Request, customer_id: str | None) -> str:
        locale = None
        if customer_id is not None:
            with self.engine.connect() as connection:
                locale = store.locale(connection, customer_id)
        return self.language(request, locale)

    def language(self, request: Request, locale: str | None) -> str:
        """The page's language: ``?lang=``, else the customer's ``locale``, else the shop's."""
        default = self.settings.shop.default_locale
        return pages.language(request.query_params.get("lang"), locale, default)

    def page(
        self, lang: str, title: str, line: str, status: int = 200, form: str | None = None
    ) -> HTMLResponse:
        return HTMLResponse(pages.message(lang, title, [line], form), status)

    def failed(self, request: Request, error: LinkError) -> HTMLResponse:
        lang = self.lang(request, None)
        return self.page(lang, "error_page", pages.TEXTS[lang][error.key], error.status)

    def erased(
        self,
        connection: Connection,
        found: tokens.Claims,
        *,
        writing: bool,
        unsubscribing: bool = False,
    ) -> bool:
        """Whether a (verified) link is void: its customer was erased since it was issued
        (``tombstones.void_link``); ``writing``: the caller writes next, in this transaction
        (``tombstones.serialise``). While a key that made an erasure is not configured, the
        check cannot be made (``KeyUnknown``, 503), but an unsubscribe link still acts
        (``unsubscribing``): an unsubscribe is owed at any time, and at worst it stops mail to
        a record signed up again under the erased id; every other link opens data."""
        assert self.keys is not None  # verify() answered 503 without it
        try:
            return tombstones.void_link(
                connection, self.keys, found.customer_id, found.issued_at, writing=writing
            )
        except tombstones.KeyUnknown as exc:
            if not unsubscribing:
                raise
            log.warning("unsubscribe link taken although %s", exc.brief())
            return False

    def unknown(self, request: Request) -> HTMLResponse:
        """The answer to a valid link of a customer we do not hold: nothing is recorded."""
        lang = self.lang(request, None)
        return self.page(lang, "title", pages.TEXTS[lang]["unknown"], 404)

    def gone(self, request: Request) -> HTMLResponse:
        """The answer to a link of an erased customer: we hold nothing, we will not write."""
        lang = self.lang(request, None)
        return self.page(lang, "erased_page", pages.TEXTS[lang]["erased"], 410)

    def unsubscribe_page(self, token: str, request: Request) -> HTMLResponse:
        """Unsubscribe: a confirm button (a GET changes nothing)."""
        try:
            found = self.verify(token, "unsubscribe")
        except LinkError as error:
            return self.failed(request, error)
        with self.engine.connect() as connection:
            if self.erased(connection, found, writing=False, unsubscribing=True):
                return self.gone(request)
            if not store.exists(connection, found.customer_id):
                return self.unknown(request)
        lang = self.lang(request, found.customer_id)
        t = pages.TEXTS[lang]
        question = t["unsubscribe_question"].format(shop=self.shop)
        return self.page(lang, "unsubscribe_page", question, form=t["unsubscribe_button"])

    def unsubscribe(self, token: str, request: Request) -> HTMLResponse:
        """Unsubscribe now: RFC 8058 one-click, or the confirm page's button."""
        try:
            found = self.verify(token, "unsubscribe")
        except LinkError as error:
            return self.failed(request, error)
        with self.engine.begin() as connection:
            if self.erased(connection, found, writing=True, unsubscribing=True):
                return self.gone(request)
            if not store.exists(connection, found.customer_id):
                return self.unknown(request)
            changed = contacts.record_link_unsubscribe(
                connection, found.customer_id, found.campaign, found.issued_at, self.clock.now()
            )
        log.info(
            "unsubscribe customer %s via %s link (new: %s)",
            found.customer_id,
            found.campaign,
            changed,
        )
        lang = self.lang(request, found.customer_id)
        done = pages.TEXTS[lang]["unsubscribe_done"].format(shop=self.shop)
        return self.page(lang, "unsubscribed_page", done)

    def preferences_page(self, token: str, request: Request) -> HTMLResponse:
        """The preferences page. Its link is checked in the snapshot the page's data is read
        from, and again once read (the offers are read apart): an erasure and a re-sign-up
        under the link's id meanwhile must not show the new record to the old link."""
        try:
            found = self.verify(token, "preferences")
        except LinkError as error:
            return self.failed(request, error)
        with snapshot(self.engine) as connection:  # the check and what it shows: one state
            if self.erased(connection, found, writing=False):
                return self.gone(request)
            if self.moved(connection, found):
                return self.failed(request, LinkError(400, "invalid"))
            lang = self.language(request, store.locale(connection, found.customer_id))
            context = _context(
                connection, found, lang, self.clock.now(), self.service, self.settings.shop.zone
            )
        with self.engine.connect() as connection:  # erased while read (the offers read apart)
            if self.erased(connection, found, writing=False):
                return self.gone(request)
        if context is None:
            return self.unknown(request)
        done = request.query_params.get("done")
        notice = pages.TEXTS[lang].get(f"done_{done}") if done else None
        html = pages.preferences(
            lang,
            shop=self.shop,
            done=notice,
            problem=None,
            download=f"/p/{token}/data.json",
            **context,
        )
        return HTMLResponse(html)

    async def preferences_change(self, token: str, request: Request) -> Response:
        """A form of the preferences page; answered with a redirect back to it (303)."""
        try:
            found = self.verify(token, "preferences")
            await run_in_threadpool(self.mailed_to, found)  # a query: off the event loop
        except LinkError as error:
            return self.failed(request, error)
        lang = await run_in_threadpool(self.lang, request, found.customer_id)  # a query: off
        try:
            form = forms.fields(await request.body())
            outcome = await run_in_threadpool(  # the event loop, which serves cached offers
                _change, self.engine, self.settings, found, form, self.clock.now()
            )
            # as the API's events do: this process drops the answers before it answers (on
            # PostgreSQL the others hear it by notification, this one too, but later)
            self.service.forget([found.customer_id])
        except forms.FormError as error:
            log.info("preferences form of customer %s refused: %s", found.customer_id, error)
            outcome = "invalid"
        t = pages.TEXTS[lang]
        if outcome in OUTCOME_PAGES:
            title, status, text = OUTCOME_PAGES[outcome]
            return self.page(lang, title, t[text], status)
        query = urlencode({"done": outcome, "lang": lang})
        return RedirectResponse(f"/p/{token}?{query}", status_code=303)

    def download(self, token: str, request: Request) -> Response:
        """Everything we hold about the customer, as a JSON file (GDPR Art. 15/20)."""
        try:
            found = self.verify(token, "preferences")
            self.mailed_to(found)
        except LinkError as error:
            return self.failed(request, error)
        assert self.keys is not None  # verify() answered 503 without it
        try:  # the link's customer alone, whoever else holds the address
            document = privacy.export(
                self.engine,
                found.customer_id,
                self.clock.now(),
                scope=privacy.Scope.ID,
                link=privacy.Link(self.keys, found.issued_at),  # void: checked in there
                settings=self.settings,
            )
        except VoidLinkError:
            return self.gone(request)
        if document is None:
            return self.unknown(request)
        lang = self.lang(request, found.customer_id)
        document["about"] = pages.TEXTS[lang]["download_about"]  # the customer's language
        if "left_out" in document:
            document["left_out"] = pages.TEXTS[lang]["download_left_out"]
        metrics.PRIVACY_REQUESTS.labels("export", SOURCE).inc()
        disposition = {"Content-Disposition": 'attachment; filename="my-data.json"'}
        text = json.dumps(document, indent=1, ensure_ascii=False)
        return Response(text, media_type="application/json", headers=disposition)


# outcomes of a form that are answered with a page of their own: (title, status, text)
OUTCOME_PAGES = {
    "erased": ("erased_page", 200, "erased"),
    "gone": ("erased_page", 410, "erased"),  # erased before: nothing is held or changed
    "confirm_needed": ("error_page", 400, "confirm_needed"),
    "invalid": ("error_page", 400, "invalid"),
    "unknown": ("title", 404, "unknown"),
}


def _form(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {
        "requestBody": {
            "required": bool(required),
            "content": {"application/x-www-form-urlencoded": {"schema": schema}},
        }
    }


_ON: dict[str, Any] = {"type": "string", "enum": ["on"], "description": "A ticked checkbox."}
PREFERENCES_FORM = _form(
    {
        "action": {"type": "string", "enum": ["save", "pause", "resume", "unsubscribe", "erase"]},
        "channel_email": _ON,
        "objected": _ON,
        "confirm": _ON,
        "frequency": {"type": "string", "enum": list(pages.FREQUENCIES)},
        "weeks": {"type": "integer", "enum": list(pages.PAUSE_WEEKS)},
    },
    ["action"],
)
ONE_CLICK_FORM = _form({"List-Unsubscribe": {"type": "string", "enum": ["One-Click"]}}, [])


def router(settings: Settings, engine: Engine, clock: Clock, service: OfferService) -> APIRouter:
    """The customer pages (documented in the OpenAPI schema under "customer pages")."""
    handlers = Pages(settings, engine, clock, service)
    api = APIRouter(tags=["customer pages"])
    html = HTMLResponse
    page: dict[str, Any] = {"description": "The page.", "content": {"text/html": {}}}
    refused: dict[int | str, dict[str, Any]] = {
        400: {
            "description": "The link is not valid (tampered with, expired, made for "
            "another purpose, or, but for an unsubscribe link, signed under a retired key).",
            "content": {"text/html": {}},
        },
        503: {
            "description": "Links are off: RECOCAMP_SIGNING_KEY is not set.",
            "content": {"text/html": {}},
        },
    }
    missing = {"description": "We hold no data about the customer.", "content": {"text/html": {}}}
    erased: dict[int | str, dict[str, Any]] = {
        410: {
            "description": "The customer was erased (since the link was issued): nothing is "
            "shown, held or changed.",
            "content": {"text/html": {}},
        }
    }
    gone: dict[int | str, dict[str, Any]] = {404: missing, **erased}
    api.add_api_route(
        "/u/{token}",
        handlers.unsubscribe_page,
        methods=["GET"],
        response_class=html,
        responses={200: page, **refused, **gone},
    )
    api.add_api_route(
        "/u/{token}",
        handlers.unsubscribe,
        methods=["POST"],
        response_class=html,
        responses={200: page, **refused, **gone},
        openapi_extra=ONE_CLICK_FORM,
    )
    api.add_api_route(
        "/p/{token}",
        handlers.preferences_page,
        methods=["GET"],
        response_class=html,
        responses={200: page, **refused, **gone},
    )
    api.add_api_route(
        "/p/{token}",
        handlers.preferences_change,
        methods=["POST"],
        response_class=html,
        responses={
            200: page,
            303: {"description": "Done: back to the page."},
            **refused,
            **gone,
            400: {
                "description": "The link is not valid, or the form is not (a field "
                "missing, of the wrong kind, or not one of its "
                "choices).",
                "content": {"text/html": {}},
            },
        },
        openapi_extra=PREFERENCES_FORM,
    )
    api.add_api_route(
        "/p/{token}/data.json",
        handlers.download,
        methods=["GET"],
        responses={
            200: {
                "description": "Everything we hold (GDPR Art. 15/20).",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            **refused,
            **gone,
        },
    )
    return api


def _change(
    engine: Engine, settings: Settings, found: tokens.Claims, form: dict[str, str], now: datetime
) -> str:
    """Apply one form of the page; returns the outcome (a TEXTS key suffix)."""
    action = form.get("action", "")
    key = tombstones.key_of(settings)
    assert key is not None  # the link was verified with it
    if action == "erase":
        if not forms.checked(form, "confirm"):
            return "confirm_needed"
        try:  # the link's customer alone, whoever else holds the address
            report = privacy.erase(
                engine,
                settings,
                found.customer_id,
                now,
                via=SOURCE,
                scope=privacy.Scope.ID,
                link=privacy.Link(key, found.issued_at),  # void: erases nobody, checked in there
            )
        except VoidLinkError:
            return "gone"
        return "erased" if report is not None else "unknown"
    changes = _changes(action, form, now)
    if changes is None and action != "unsubscribe":
        return "invalid"
    with engine.begin() as connection:
        if tombstones.void_link(connection, key, found.customer_id, found.issued_at):
            return "gone"
        if not store.exists(connection, found.customer_id):
            return "unknown"
        if action == "unsubscribe":
            contacts.record_link_unsubscribe(
                connection, found.customer_id, found.campaign, found.issued_at, now
            )
            return "unsubscribed"
        assert changes is not None
        changed = profiles.apply(
            connection, found.customer_id, changes, at=now, actor=ACTOR, source=SOURCE
        )
    if changed.objected:  # committed: out of the saved models too (errors are logged)
        privacy.unprofile(engine, settings, [found.customer_id])
    return {"save": "saved", "pause": "paused", "resume": "resumed"}[action]


def _changes(action: str, form: dict[str, str], now: datetime) -> dict[str, Any] | None:
    """The profile changes of a form (``forms.FormError`` if a field is wrong)."""
    if action == "save":
        frequency = forms.choice(form, "frequency", pages.FREQUENCIES, "any")
        return {
            "channel_email": forms.checked(form, "channel_email"),
            "frequency_preference": None if frequency == "any" else frequency,
            "objected_to_profiling": forms.checked(form, "objected"),
        }
    if action == "pause":
        weeks = forms.integer(form, "weeks", pages.PAUSE_WEEKS)
        return {"paused_until": now + timedelta(weeks=weeks)}
    if action == "resume":
        return {"paused_until": None}
    return None


def _context(
    connection: Connection,
    found: tokens.Claims,
    lang: str,
    now: datetime,
    service: OfferService,
    zone: ZoneInfo,
) -> dict[str, Any] | None:
    """What the page shows: the settings, what we hold, and why the offers."""
    person = registry.customer(connection, found.customer_id)
    if person is None:
        return None
    t = pages.TEXTS[lang]
    paused = person.paused_until is not None and person.paused_until > now
    status = (
        t["unsubscribed"]
        if person.unsubscribed_at is not None
        else (
            t["paused"].format(date=_day(person.paused_until, lang, zone))
            if paused
            else t["subscribed"]
        )
    )
    answer = service.answer(found.customer_id, Query(n=4))
    forecast = _forecast(connection, person, t, lang, zone, service)
    return {
        "c": person,
        "status": status,
        "paused": paused,
        "facts": [*_facts(connection, person, t, lang, now, service, zone), forecast[0]],
        "forecast_held": forecast[1],
        "campaign": found.campaign,
        "manual": found.campaign == tokens.MANUAL_CAMPAIGN,  # ``recocamp link``: no campaign
        "consent": _consent(person, t, lang, zone),
        "personal": answer.personalised,
        "offers": [replace(o, why=why_in(o.why, lang)) for o in answer.offers],
    }


def _facts(
    connection: Connection,
    person: Any,
    t: dict[str, str],
    lang: str,
    now: datetime,
    service: OfferService,
    zone: ZoneInfo,
) -> list[tuple[str, str]]:
    placed = views.customer_orders(connection, person.id, now)
    history = history_of(placed, service.snapshot().catalogue)
    orders = t["none"]
    if history.count:
        first = _day(history.orders[0].at, lang, zone)
        last = _day(history.orders[-1].at, lang, zone)
        key = "orders_one" if history.count == 1 else "orders_summary"
        kinds = len(history.items)  # "1 verschiedenen Artikeln" was no German (nor English)
        bought = t["items_one"] if kinds == 1 else t["items_many"].format(n=kinds)
        orders = t[key].format(orders=history.count, items=bought, first=first, last=last)
    sent = store.emails_sent(connection, person.id)
    emails = (
        t["emails_summary"].format(count=sent[0], last=_day(sent[1], lang, zone))
        if sent[0]
        else (t["none"])
    )
    cached = store.has_cached_list(connection, person.id)
    profiling = (
        t["profiling_off"]
        if person.objected_to_profiling
        else (t["profiling_on"] if cached or history.count else t["none"])
    )
    return [
        (t["field_email"], _masked(person.email)),
        (t["field_first_name"], person.first_name or ""),
        (t["field_locale"], pages.TEXTS.get(person.locale, {}).get("name", person.locale)),
        (t["field_time_zone"], person.time_zone or ""),
        (t["field_country"], person.country or ""),
        (t["field_birthday"], _day(person.birthday, lang) if person.birthday else ""),
        (t["field_consent"], _consent(person, t, lang, zone)),
        (t["field_orders"], orders),
        (t["field_emails"], emails),
        (t["field_profiling"], profiling),
    ]


def _forecast(
    connection: Connection,
    person: Any,
    t: dict[str, str],
    lang: str,
    zone: ZoneInfo,
    service: OfferService,
) -> tuple[tuple[str, str], bool]:
    """The stored forecast in words (no figures: a probability or an amount would read as a
    promise), and whether one is held. Its tier says likely / unsure / unlikely to order by
    the horizon's last day; the due date is the customer's own rhythm, or, with a single
    purchase day before the forecast's ``as_of``, the shop's typical one, and the words say
    which. An objector holds none."""
    row = None
    if not person.objected_to_profiling:
        row = forecast_store.customer_forecast(connection, person.id)
    version = forecast_store.current_version(connection) if row is not None else None
    if row is None or version is None:
        text = t["forecast_off"] if person.objected_to_profiling else t["none"]
        return (t["field_forecast"], text), False
    # the horizon's last day, not "the next H days": the stored forecast's horizon started at
    # its as_of, days or (on a quiet shop, whose nightly job keeps it) months before the visit
    until = version.as_of + timedelta(days=version.horizon_days - 1)
    text = t[f"forecast_{row.churn_risk}"].format(until=_day(until, lang))
    if row.next_purchase_by is not None:
        own = _purchase_days(connection, person.id, version.as_of, zone, service) > 1
        due = "forecast_due" if own else "forecast_due_typical"
        text += " " + t[due].format(date=_day(row.next_purchase_by, lang))
    return (t["field_forecast"], text), True


def _purchase_days(
    connection: Connection, customer_id: str, as_of: date, zone: ZoneInfo, service: OfferService
) -> int:
    """The customer's purchase days before ``as_of`` as the forecast counts them: shop-local
    days with an order holding a product line, under every Unicode form of the id (orders an
    older version stored decomposed and a file since composed are one customer's history to
    the forecast: ``store.forecasts.purchase_lines``)."""
    before = datetime.combine(as_of, time(), tzinfo=zone)
    orders = [
        order
        for form in id_forms((customer_id,))
        for order in views.customer_orders(connection, form, before)
    ]
    placed = history_of(orders, service.snapshot().catalogue)
    # the orders' times are exact to the millisecond, the query's julianday filter is not
    kept = (order for order in placed.orders if order.items and order.at < before)
    return len({order.at.astimezone(zone).date() for order in kept})


def _consent(person: Any, t: dict[str, str], lang: str, zone: ZoneInfo) -> str:
    text = t[f"consent_{person.consent_basis}"]
    if person.consent_at is not None and person.consent_basis != "none":
        text += ", " + t["since"].format(date=_day(person.consent_at, lang, zone))
    return text


def _day(value: Any, lang: str, zone: ZoneInfo | None = None) -> str:
    """A day as the page writes it; an instant (``zone``: the shop's) as that zone's day, as
    the forecast's days are: a pause made at half past midnight in Berlin read as ending on
    the day before (UTC's)."""
    if value is None:
        return ""
    if zone is not None and isinstance(value, datetime):
        value = value.astimezone(zone)
    return str(value.strftime("%d.%m.%Y" if lang == "de" else "%Y-%m-%d"))


def _masked(email: str | None) -> str:
    if not email or "@" not in email:
        return ""
    local, _, domain = email.partition("@")
    return f"{local[:1]}•••@{domain}"
