"""The measurement part of the HTTP API: feedback answers and the latest report.

``api.create_app`` includes :func:`router`; ``require`` turns a scope name into the FastAPI
dependency that checks the caller's API key for it (see ``api``).

- ``GET /v1/feedback?token=…&score=N`` is where an NPS e-mail's 0–10 links point. It records
  **nothing**: mail scanners and link previews fetch every link of an e-mail (all eleven
  here), so a GET that recorded would store the scanner's first fetch as the customer's
  answer. It shows the question with the clicked score selected, an optional comment and a
  send button: one more click for a person, none recorded for a robot.
- ``POST /v1/feedback`` records an answer: form fields from that page (answered with a
  thank-you page) or JSON ``{"token", "score", "comment"}`` (answered with JSON). The signed
  token names customer, campaign and survey; the first answer per customer and survey stands
  and repeats change nothing (idempotent). Tokens older than ``[measure] survey_valid_days``,
  unknown and erased customers get 410 — also a link issued before an erasure of its customer
  id when the person has signed up again since (``tombstones.void_link``), the page too; a
  bad token 400 (one signed under a retired signing key too: a key is retired because it is
  weak or known, and a forged answer would skew the survey; the survey closes within
  ``survey_valid_days`` anyway); a score outside 0–10 422.
- ``GET /reports/latest`` (API key scope ``reports:read``): the newest stored report
  (``recocamp report`` or the worker store one), rendered on the spot when there is none.

No page or log carries an e-mail address; logs name customers by id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment

from recocamp import tokens
from recocamp.api import bodies, forms
from recocamp.clock import Clock
from recocamp.domain import LOCALES, read_json, text_problem
from recocamp.errors import mask_addresses
from recocamp.measure import jobs as measure_jobs
from recocamp.measure.report import PAGES
from recocamp.settings import Settings
from recocamp.store import measure as store
from recocamp.store import registry, tombstones
from recocamp.store.engine import Connection, Engine

log = logging.getLogger(__name__)
MAX_COMMENT = 2000
MAX_BODY = 16_384
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
REPORT_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


_HTML: dict[str, Any] = {"text/html": {"schema": {"type": "string"}}}
_DETAIL: dict[str, Any] = {
    "application/json": {
        "schema": {
            "type": "object",
            "required": ["detail"],
            "properties": {"detail": {"type": "string"}},
        }
    }
}
_REFUSALS: dict[int | str, dict[str, Any]] = {
    400: {"description": "The link's token is not valid."},
    410: {
        "description": "The survey is closed (older than `survey_valid_days`), or the "
        "customer was erased."
    },
    503: {"description": "Feedback links are off: RECOCAMP_SIGNING_KEY is not set."},
}
_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["token", "score"],
    "properties": {
        "token": {"type": "string", "description": "The signed token of the e-mail's link."},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "comment": {"type": "string", "maxLength": MAX_COMMENT},
    },
}
PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {**answer, "content": _HTML} for code, answer in _REFUSALS.items()
}
ANSWER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Recorded, or already recorded (the first answer stands): JSON for "
        "a JSON request, else the thank-you page.",
        "content": {
            **_HTML,
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["recorded", "survey", "score"],
                    "properties": {
                        "recorded": {"type": "boolean"},
                        "survey": {"type": "string"},
                        "score": {"type": "integer"},
                    },
                }
            },
        },
    },
    **{
        code: {**answer, "content": {**_HTML, **_DETAIL}}
        for code, answer in {
            **_REFUSALS,
            413: {"description": "The body is too long."},
            422: {"description": "No token, a score outside 0–10, or a comment too long."},
        }.items()
    },
}
ANSWER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _ANSWER},
            "application/x-www-form-urlencoded": {"schema": _ANSWER},
        },
    }
}


class Refused(Exception):
    """An answer that cannot be recorded: HTTP status and a message for a person;
    ``customer_id`` where the link is genuine, so its page is in the customer's language.
    The message is the error body, JSON or the page, which this router writes itself (the
    app's handler of ``HTTPException`` never sees it): any address in it is masked, as that
    handler masks one (a body naming a key twice is quoted with it)."""

    def __init__(self, status: int, message: str, customer_id: str | None = None) -> None:
        message = mask_addresses(message)
        super().__init__(message)
        self.status, self.message, self.customer_id = status, message, customer_id


def router(
    settings: Settings, engine: Engine, clock: Clock, require: Callable[[str], Any]
) -> APIRouter:
    """The measurement routes (``GET|POST /v1/feedback``, ``GET /reports/latest``)."""
    routes = APIRouter()
    answers = _Answers(settings, engine, clock)
    rendering = threading.Lock()  # the first report is rendered once (``_first_report``)

    @routes.get("/v1/feedback", response_class=HTMLResponse, responses=PAGE_RESPONSES)
    def feedback_page(token: str, score: int | None = None) -> HTMLResponse:
        try:
            claims = answers.claims(token)
        except Refused as exc:
            return answers.failed(exc)
        chosen = score if score is not None and 0 <= score <= 10 else None
        return answers.page(
            "form", 200, answers.locale(claims.customer_id), token=token, score=chosen
        )

    @routes.post("/v1/feedback", responses=ANSWER_RESPONSES, openapi_extra=ANSWER_BODY)
    async def feedback(request: Request) -> Response:
        is_json = bodies.is_json(request.headers.get("content-type"))
        body = await request.body()
        try:
            fields = _fields(body, is_json)
            claims, new, stored = answers.record(fields, is_json)
        except Refused as exc:
            if is_json:
                return JSONResponse({"detail": exc.message}, exc.status)
            return answers.failed(exc)
        if is_json:
            return JSONResponse({"recorded": new, "survey": claims.survey, "score": stored})
        return answers.page(
            "thanks", 200, answers.locale(claims.customer_id), score=stored, new=new
        )

    @routes.get(
        "/reports/latest",
        response_class=HTMLResponse,
        dependencies=[Depends(require("reports:read"))],
    )
    def latest_report() -> HTMLResponse:
        with engine.connect() as connection:
            found = store.latest_report(connection)
        if found is None:
            found = _first_report(engine, settings, clock, rendering)
        report_id, _, as_of, html = found
        headers = {
            "Content-Security-Policy": REPORT_POLICY,
            "X-Report-Id": str(report_id),
            "X-Report-As-Of": as_of.isoformat(),
            "Cache-Control": "no-store",
        }
        return HTMLResponse(html, headers=headers)

    return routes


def _first_report(
    engine: Engine, settings: Settings, clock: Clock, rendering: threading.Lock
) -> tuple[int, datetime, datetime, str]:
    """Render and store the first report, once: requests that found none at once (two
    dashboards opened together) each rendered and stored their own, seconds of CPU each, and
    were answered with different reports. The one that waits reads the one stored. The lock
    is this process's: another API process (or ``recocamp report``) may render one at the
    same time, and the store keeps the first stored alone (``store_first_report``), which
    both answer with."""
    with rendering:
        with engine.connect() as connection:
            found = store.latest_report(connection)
        if found is None:
            measure_jobs.store_first_report(engine, settings, clock.now())
            with engine.connect() as connection:
                found = store.latest_report(connection)
    assert found is not None
    return found


def _fields(body: bytes, is_json: bool) -> dict[str, Any]:
    if len(body) > MAX_BODY:
        raise Refused(413, "the answer is too long")
    if is_json:
        try:
            data = read_json(body, bodies.unique_keys)  # "score" twice: which one counts?
        except ValueError as exc:  # not JSON, a number too long, nesting too deep: named
            raise Refused(400, str(exc)) from None
        if not isinstance(data, dict):
            raise Refused(422, 'expected a JSON object {"token", "score", "comment"}')
        return data
    try:
        return dict(forms.fields(body))
    except forms.FormError as exc:
        raise Refused(400, str(exc)) from None


def _score(value: Any, is_json: bool) -> int:
    """A JSON number, or a form's ASCII digits: not ``"7"`` in JSON, ``true``, ``" 7"``, nor
    another script's digits (``int()`` reads "٧" as 7)."""
    if is_json:
        whole = isinstance(value, int) and not isinstance(value, bool)
        score = value if whole else -1
    else:
        digits = isinstance(value, str) and value.isascii() and value.isdigit()
        score = int(value) if digits and len(value) <= 2 else -1
    if not 0 <= score <= 10:
        raise Refused(422, "the score must be a whole number from 0 to 10")
    return int(score)


def _comment(value: Any) -> str | None:
    """Free text by the store's rule (``domain.text_problem``: no NUL, which PostgreSQL cannot
    hold), and text at all: a JSON string may escape half a surrogate pair (``"\\ud800"``),
    which no encoding writes (the driver raised, a 500). A form's field is checked by
    ``forms.fields``, and its bytes are UTF-8 already."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise Refused(422, "the comment must be text")
    # a line break as the page's textarea counts it for its maxlength (one character): a
    # browser sends each as CRLF (HTML's form encoding), which made a comment the page
    # allowed longer than MAX_COMMENT here, and refused the answer with it
    text = value.replace("\r\n", "\n").strip()
    problem = text_problem(text, MAX_COMMENT)
    if problem is None and not _encodable(text):
        problem = "is not text: a lone UTF-16 surrogate"
    if problem:
        raise Refused(422, f"the comment {problem}")
    return text or None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Answers:
    """Token checks, recording and the pages, shared by the routes."""

    def __init__(self, settings: Settings, engine: Engine, clock: Clock) -> None:
        self.settings, self.engine, self.clock = settings, engine, clock
        self.key = settings.signing_key_bytes()  # feedback links: the signing key's only
        self.keys = settings.signing_keys()  # tombstones: under a retired key too
        self.pages = SandboxedEnvironment(
            loader=FileSystemLoader(str(PAGES)), undefined=StrictUndefined, autoescape=True
        )

    def claims(self, token: str) -> tokens.Claims:
        if self.key is None:
            raise Refused(503, "feedback links are off: RECOCAMP_SIGNING_KEY is not set")
        now = self.clock.now()
        try:
            found = tokens.verify(self.key, token, "feedback", now, max_age_days=100_000)
        except tokens.TokenError:
            raise Refused(400, "this link is not valid") from None
        if found.survey is None:
            raise Refused(400, "this link is not valid")
        if (now - found.issued_at).days > self.settings.measure.survey_valid_days:
            raise Refused(410, "this survey is closed", found.customer_id)
        with self.engine.connect() as connection:
            self.check_customer(connection, found, writing=False)
        return found

    def check_customer(
        self, connection: Connection, found: tokens.Claims, *, writing: bool
    ) -> None:
        """Refuse (410) a link whose customer we do not hold, or was erased since the link
        was issued (``tombstones.void_link``: a person who signed up again under the id
        does not answer the erased record's survey)."""
        assert self.keys is not None  # claims() answered 503 without it
        void = tombstones.void_link(
            connection, self.keys, found.customer_id, found.issued_at, writing=writing
        )
        person = None if void else registry.customer(connection, found.customer_id)
        if person is None or person.erased_at is not None:
            raise Refused(410, "this survey is closed")

    def record(self, fields: dict[str, Any], is_json: bool) -> tuple[tokens.Claims, bool, int]:
        token = fields.get("token")
        if not isinstance(token, str) or not token:
            raise Refused(422, "the answer has no token")
        score = _score(fields.get("score"), is_json)
        comment = _comment(fields.get("comment"))
        claims = self.claims(token)
        now = self.clock.now()
        with self.engine.begin() as connection:
            self.check_customer(connection, claims, writing=True)
            new, stored = store.record_feedback(
                connection,
                str(claims.survey),
                claims.campaign,
                claims.customer_id,
                score,
                comment,
                now,
            )
        log.info(
            "feedback %s customer %s score %d (new: %s)",
            claims.survey,
            claims.customer_id,
            stored,
            new,
        )
        return claims, new, stored

    def locale(self, customer_id: str) -> str:
        with self.engine.connect() as connection:
            person = registry.customer(connection, customer_id)
        locale = person.locale if person is not None else None
        return locale if locale in LOCALES else self.settings.shop.default_locale

    def failed(self, refused: Refused) -> HTMLResponse:
        """The error page, in the customer's language where the link names them."""
        locale = self.locale(refused.customer_id) if refused.customer_id else None
        return self.page("error", refused.status, locale, message=refused.message)

    def page(
        self,
        mode: str,
        status: int,
        locale: str | None = None,
        *,
        token: str = "",
        score: int | None = None,
        new: bool = True,
        message: str = "",
    ) -> HTMLResponse:
        html = self.pages.get_template("feedback.html").render(
            mode=mode,
            status=status,  # an error's words in German: ``message`` is English
            locale=locale or self.settings.shop.default_locale,
            token=token,
            score=score,
            new=new,
            message=message,
            shop=self.settings.shop.name,
            action="feedback",
            max_comment=MAX_COMMENT,
        )
        return HTMLResponse(
            html,
            status,
            headers={"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-store"},
        )
