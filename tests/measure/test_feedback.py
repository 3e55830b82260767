"""NPS feedback end to end on real stores: the shipped nps campaign is planned, enqueued and
delivered (fake provider); the links in the delivered e-mail are opened like a mail scanner
would (nothing recorded), answered like a person would (recorded once), and abused (refused)."""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Header, HTTPException

from recocamp import tokens
from recocamp.api import app as api
from recocamp.api import auth as api_auth
from recocamp.api.measure import router
from recocamp.campaigns.files import Campaign, load_all
from recocamp.campaigns.render import Renderer
from recocamp.campaigns.run import plan_and_enqueue
from recocamp.clock import FixedClock
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp.fake import FakeProvider
from recocamp.domain import ConsentBasis, Customer, OutgoingEmail, Purchase
from recocamp.measure import report
from recocamp.settings import EspSettings, Settings
from recocamp.store import measure as measure_store
from recocamp.store.engine import make_engine
from recocamp.store.queries import insert_purchases, upsert_customers
from recocamp.store.schema import customers, feedback, reports
from tests.api_shop import call
from tests.conftest import NOW, ROOT

SETTINGS = Settings(signing_key="f" * 32)
ADDRESSES = {"c1": "anna@example.test", "c2": "ben@example.test"}
LINK = re.compile(r"https?://\S+/v1/feedback\?token=[\w.-]+&score=\d+")


def fake_require(scope: str) -> Callable[..., None]:
    """Stands in for the API key check: the caller names its scope in a header."""

    def check(x_test_scope: str | None = Header(default=None)) -> None:
        if x_test_scope != scope:
            raise HTTPException(401, f"needs {scope}")

    return check


def make_app(engine: sa.Engine, clock: FixedClock, settings: Settings = SETTINGS) -> FastAPI:
    app = FastAPI()
    app.include_router(router(settings, engine, clock, fake_require))
    return app


def nps_campaign() -> Campaign:
    loaded, failures = load_all(ROOT / "campaigns", SETTINGS, ROOT / "templates")
    assert failures == []
    return next(c for c in loaded if c.name == "nps")


@pytest.fixture
def mailed(engine: sa.Engine) -> dict[str, OutgoingEmail]:
    """Two customers who ordered 20 days ago got the shipped NPS e-mail (rendered by the
    deliverer, accepted by the fake provider)."""
    people = [
        Customer(
            "c1",
            ADDRESSES["c1"],
            "Anna",
            locale="de",
            consent_basis=ConsentBasis.DOUBLE_OPT_IN,
            consent_at=NOW - timedelta(days=500),
        ),
        Customer(
            "c2",
            ADDRESSES["c2"],
            "Ben",
            locale="en",
            consent_basis=ConsentBasis.DOUBLE_OPT_IN,
            consent_at=NOW - timedelta(days=500),
        ),
    ]
    bought = NOW - timedelta(days=20)
    with engine.begin() as connection:
        upsert_customers(connection, people, NOW)
        insert_purchases(
            connection, [Purchase(f"o-{p.id}", 1, p.id, "i1", 1, 9.5, bought) for p in people], None
        )
    report = plan_and_enqueue(engine, SETTINGS, nps_campaign(), ROOT / "templates", NOW)
    assert report.counts == {"eligible": 2} and report.enqueued == 2
    provider = FakeProvider()
    renderer = Renderer(ROOT / "templates")
    Deliverer(engine, provider, EspSettings(), FixedClock(NOW), renderer=renderer).drain("nps")
    return {email.to: email for email in provider.sent}


def links_of(email: OutgoingEmail) -> list[str]:
    found = LINK.findall(email.text)
    assert found == LINK.findall(email.html.replace("&amp;", "&"))
    return found


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def stored(engine: sa.Engine) -> list[tuple[str, str, int, str | None]]:
    with engine.connect() as connection:
        query = sa.select(
            feedback.c.survey, feedback.c.customer_id, feedback.c.score, feedback.c.comment
        ).order_by(feedback.c.customer_id)
        return [tuple(row) for row in connection.execute(query)]


def test_the_mail_has_eleven_signed_answer_links(mailed: dict[str, OutgoingEmail]) -> None:
    email = mailed[ADDRESSES["c1"]]
    found = links_of(email)
    assert [parse_qs(urlsplit(u).query)["score"][0] for u in found] == [str(n) for n in range(11)]
    token = parse_qs(urlsplit(found[0]).query)["token"][0]
    claims = tokens.verify(b"f" * 32, token, "feedback", NOW)
    assert (claims.customer_id, claims.campaign) == ("c1", "nps")
    assert claims.survey == f"nps/{NOW:%Y-%m-%d}"  # campaign and the period of the send key
    assert "weiterempfehlen" in email.text  # Anna reads German
    assert "Ihre Antwort" not in email.text and "offer" not in email.html  # a survey, no offers


def test_a_scanner_records_nothing_a_person_answers_once(
    engine: sa.Engine, mailed: dict[str, OutgoingEmail]
) -> None:
    app = make_app(engine, FixedClock(NOW + timedelta(hours=2)))
    found = links_of(mailed[ADDRESSES["c1"]])
    for url in found:  # a mail scanner fetches every link
        page = call(app, "GET", path_of(url))
        assert page.status == 200 and "<form" in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
    assert stored(engine) == []
    page = call(app, "GET", path_of(found[9]))
    assert 'value="9" required checked' in page.text and 'value="8" required>' in page.text
    assert ADDRESSES["c1"] not in page.text and "Antwort senden" in page.text
    token = parse_qs(urlsplit(found[9]).query)["token"][0]
    form = {"token": token, "score": "9", "comment": "  Schnelle Lieferung!  "}
    thanks = call(app, "POST", "/v1/feedback", data=form)
    assert thanks.status == 200 and "Vielen Dank" in thanks.text and "(9 von 10)" in thanks.text
    survey = f"nps/{NOW:%Y-%m-%d}"
    assert stored(engine) == [(survey, "c1", 9, "Schnelle Lieferung!")]
    again = call(app, "POST", "/v1/feedback", data={"token": token, "score": "2"})
    assert again.status == 200 and "bereits vor" in again.text and "(9 von 10)" in again.text
    as_json = call(app, "POST", "/v1/feedback", json={"token": token, "score": 0})
    assert as_json.json() == {"recorded": False, "survey": survey, "score": 9}
    assert stored(engine) == [(survey, "c1", 9, "Schnelle Lieferung!")]


def test_json_answers_and_another_customer(
    engine: sa.Engine, mailed: dict[str, OutgoingEmail]
) -> None:
    app = make_app(engine, FixedClock(NOW + timedelta(days=1)))
    token = parse_qs(urlsplit(links_of(mailed[ADDRESSES["c2"]])[3]).query)["token"][0]
    reply = call(app, "POST", "/v1/feedback", json={"token": token, "score": 3})
    assert reply.status == 200 and reply.json()["recorded"] is True
    assert stored(engine) == [(f"nps/{NOW:%Y-%m-%d}", "c2", 3, None)]
    with engine.connect() as connection:
        assert measure_store.customer_feedback(connection, "c2")[0]["score"] == 3
        assert measure_store.surveys_sent(connection, ["nps"]) == {f"nps/{NOW:%Y-%m-%d}": 2}


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"score": 11}, 422, "from 0 to 10"),
        ({"score": "ten"}, 422, "from 0 to 10"),
        ({"score": True}, 422, "from 0 to 10"),
        ({"score": "7"}, 422, "from 0 to 10"),  # JSON has numbers
        ({"score": 7.5}, 422, "from 0 to 10"),
        ({"score": 5, "comment": "x" * 2001}, 422, "longer than 2000"),
        ({"score": 5, "token": "v1.e30.AAAA"}, 400, "not valid"),
        ({"score": 5, "token": ""}, 422, "no token"),
    ],
)
def test_bad_answers_are_refused(
    engine: sa.Engine,
    mailed: dict[str, OutgoingEmail],
    body: dict[str, Any],
    status: int,
    message: str,
) -> None:
    app = make_app(engine, FixedClock(NOW))
    token = parse_qs(urlsplit(links_of(mailed[ADDRESSES["c1"]])[0]).query)["token"][0]
    reply = call(app, "POST", "/v1/feedback", json={"token": token, **body})
    assert reply.status == status and message in reply.json()["detail"]
    assert stored(engine) == []


@pytest.mark.parametrize(
    ("escaped", "problem"),
    [
        ("a\\u0000b", "contains a NUL character"),  # PostgreSQL's text cannot hold it
        ("a\\ud800b", "is not text: a lone UTF-16 surrogate"),  # not UTF-8: stores nothing
    ],
)
def test_a_json_comment_that_cannot_be_stored_is_a_422(
    engine: sa.Engine, mailed: dict[str, OutgoingEmail], escaped: str, problem: str
) -> None:
    """The JSON answer's comment is free text with the rules of any other (no NUL), and
    JSON's escapes can write what is no text at all (``"\\ud800"``, half an emoji): both
    were stored (or reached the driver: a 500), where the form's NUL is refused."""
    app = make_app(engine, FixedClock(NOW))
    token = parse_qs(urlsplit(links_of(mailed[ADDRESSES["c1"]])[0]).query)["token"][0]
    body = f'{{"token": "{token}", "score": 6, "comment": "{escaped}"}}'.encode()
    headers = {"content-type": "application/json"}
    reply = call(app, "POST", "/v1/feedback", content=body, headers=headers)
    assert reply.status == 422 and reply.json() == {"detail": f"the comment {problem}"}
    assert stored(engine) == []


def test_a_comment_the_page_allowed_is_stored_with_its_line_breaks(
    engine: sa.Engine, mailed: dict[str, OutgoingEmail]
) -> None:
    """The page's textarea allows ``maxlength`` (2000) characters counting a line break as
    one, and a browser sends each as CRLF (HTML's form encoding): a comment of 2000 with 100
    line breaks arrived as 2100 and was refused, with the customer's score."""
    app = make_app(engine, FixedClock(NOW))
    token = parse_qs(urlsplit(links_of(mailed[ADDRESSES["c1"]])[0]).query)["token"][0]
    typed = ("Schnelle Lieferung\n" * 200)[:2000]  # the textarea's value: what maxlength counts
    sent = typed.replace("\n", "\r\n")
    reply = call(app, "POST", "/v1/feedback", data={"token": token, "score": "9", "comment": sent})
    assert reply.status == 200 and "(9 von 10)" in reply.text
    assert stored(engine) == [(f"nps/{NOW:%Y-%m-%d}", "c1", 9, typed.strip())]
    too_long = "x" + typed  # one past what the page allows: still refused
    token = parse_qs(urlsplit(links_of(mailed[ADDRESSES["c2"]])[0]).query)["token"][0]
    form = {"token": token, "score": "9", "comment": too_long.replace("\n", "\r\n")}
    assert call(app, "POST", "/v1/feedback", data=form).status == 422


@pytest.mark.parametrize("score", ["\u0667", "\uff17", " 7", "+7", "7.0", "07 ", "1_0"])
def test_form_scores_are_ascii_digits(
    engine: sa.Engine, mailed: dict[str, OutgoingEmail], score: str
) -> None:
    app = make_app(engine, FixedClock(NOW))
    token = parse_qs(urlsplit(links_of(mailed[ADDRESSES["c1"]])[0]).query)["token"][0]
    reply = call(app, "POST", "/v1/feedback", data={"token": token, "score": score})
    assert reply.status == 422
    assert stored(engine) == []


def test_a_json_number_too_long_is_named(
    engine: sa.Engine, mailed: dict[str, OutgoingEmail]
) -> None:
    app = make_app(engine, FixedClock(NOW))
    body = b'{"token": "t", "score": ' + b"9" * 5000 + b"}"
    headers = {"content-type": "application/json"}
    reply = call(app, "POST", "/v1/feedback", content=body, headers=headers)
    assert reply.status == 400 and "number too long" in reply.json()["detail"]


def test_a_json_answer_naming_a_key_twice_is_refused(
    engine: sa.Engine, mailed: dict[str, OutgoingEmail]
) -> None:
    """``{"score": 0, "score": 10}``: the parser kept the last, so which score was recorded
    depended on how the client wrote it (RFC 8259: unpredictable). Refused as the event
    and customer bodies are, naming the key, nothing stored."""
    app = make_app(engine, FixedClock(NOW + timedelta(days=1)))
    token = parse_qs(urlsplit(links_of(mailed[ADDRESSES["c2"]])[3]).query)["token"][0]
    body = json.dumps({"token": token})[:-1].encode() + b', "score": 0, "score": 10}'
    headers = {"content-type": "application/json"}
    reply = call(app, "POST", "/v1/feedback", content=body, headers=headers)
    assert reply.status == 400
    assert reply.json()["detail"] == "the body's JSON has the key 'score' twice in one object"
    assert stored(engine) == []


def test_a_form_answer_naming_a_field_twice_is_refused(
    engine: sa.Engine, mailed: dict[str, OutgoingEmail]
) -> None:
    """``score=0&score=10``: the last value won, where a JSON answer naming ``score`` twice
    is refused. Refused the same way, naming the field (on the English page: the German
    one words every 400 alike), nothing stored."""
    shop = SETTINGS.shop.model_copy(update={"default_locale": "en"})
    app = make_app(
        engine, FixedClock(NOW + timedelta(days=1)), SETTINGS.model_copy(update={"shop": shop})
    )
    token = parse_qs(urlsplit(links_of(mailed[ADDRESSES["c2"]])[3]).query)["token"][0]
    body = f"token={token}&score=0&score=10".encode()
    headers = {"content-type": "application/x-www-form-urlencoded"}
    reply = call(app, "POST", "/v1/feedback", content=body, headers=headers)
    assert reply.status == 400 and "score: is sent more than once" in reply.text
    assert stored(engine) == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "Application/JSON",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
    ],
)
def test_every_json_content_type_is_read_as_json(
    engine: sa.Engine, mailed: dict[str, OutgoingEmail], content_type: str
) -> None:
    """The events routes' rule (``bodies.is_json``): media types are case-insensitive and
    ``+json`` is JSON; a JSON answer gets a JSON reply, not the form's HTML page."""
    app = make_app(engine, FixedClock(NOW))
    token = parse_qs(urlsplit(links_of(mailed[ADDRESSES["c1"]])[0]).query)["token"][0]
    body = json.dumps({"token": token, "score": 8}).encode()
    reply = call(app, "POST", "/v1/feedback", content=body, headers={"content-type": content_type})
    assert reply.status == 200 and reply.json()["recorded"] is True


def test_tokens_of_other_purposes_old_surveys_and_erased_customers(
    engine: sa.Engine, mailed: dict[str, OutgoingEmail]
) -> None:
    key = b"f" * 32
    unsubscribe = tokens.sign(key, "c1", "nps", "unsubscribe", NOW)
    no_survey = tokens.sign(key, "c1", "nps", "feedback", NOW)
    token = parse_qs(urlsplit(links_of(mailed[ADDRESSES["c1"]])[0]).query)["token"][0]
    app = make_app(engine, FixedClock(NOW))
    for bad in (unsubscribe, no_survey, token[:-2] + "xx"):
        assert call(app, "POST", "/v1/feedback", json={"token": bad, "score": 5}).status == 400
        assert call(app, "GET", f"/v1/feedback?token={bad}&score=5").status == 400
    late = make_app(engine, FixedClock(NOW + timedelta(days=61)))  # survey_valid_days = 60
    assert call(late, "POST", "/v1/feedback", data={"token": token, "score": "5"}).status == 410
    with engine.begin() as connection:
        connection.execute(sa.update(customers).where(customers.c.id == "c1").values(erased_at=NOW))
    gone = call(app, "POST", "/v1/feedback", json={"token": token, "score": 5})
    assert gone.status == 410 and stored(engine) == []
    off = make_app(engine, FixedClock(NOW), Settings())  # no RECOCAMP_SIGNING_KEY
    assert call(off, "POST", "/v1/feedback", json={"token": token, "score": 5}).status == 503


def test_a_german_customer_reads_why_a_survey_link_fails_in_german(
    engine: sa.Engine, mailed: dict[str, OutgoingEmail]
) -> None:
    """The error pages of the survey read "this survey is closed" and "this link is not
    valid" in a page marked German (the shop's language)."""
    link = path_of(links_of(mailed[ADDRESSES["c1"]])[5])
    late = make_app(engine, FixedClock(NOW + timedelta(days=61)))  # survey_valid_days = 60
    closed = call(late, "GET", link)
    assert closed.status == 410 and '<html lang="de">' in closed.text
    assert "Diese Umfrage ist beendet." in closed.text and "closed" not in closed.text
    broken = call(make_app(engine, FixedClock(NOW)), "GET", link[:-12] + "xx&score=5")
    assert broken.status == 400 and "Dieser Link ist nicht gültig." in broken.text
    assert "not valid" not in broken.text
    english = path_of(links_of(mailed[ADDRESSES["c2"]])[5])  # Ben reads English
    closed = call(late, "GET", english)
    assert closed.status == 410 and '<html lang="en">' in closed.text
    assert "this survey is closed" in closed.text


def test_latest_report_needs_the_scope_and_is_rendered_once(engine: sa.Engine) -> None:
    app = make_app(engine, FixedClock(NOW))
    assert call(app, "GET", "/reports/latest").status == 401
    assert (
        call(app, "GET", "/reports/latest", headers={"X-Test-Scope": "offers:read"}).status == 401
    )
    first = call(app, "GET", "/reports/latest", headers={"X-Test-Scope": "reports:read"})
    assert first.status == 200 and "<title>Retention report" in first.text
    assert first.headers["x-report-as-of"] == NOW.isoformat()
    assert "script-src" not in first.headers["content-security-policy"]  # no script at all
    second = call(app, "GET", "/reports/latest", headers={"X-Test-Scope": "reports:read"})
    assert second.headers["x-report-id"] == first.headers["x-report-id"]  # stored, not redone


def test_through_the_real_app_with_api_keys(
    engine: sa.Engine, mailed: dict[str, OutgoingEmail]
) -> None:
    """The measurement routes inside ``api.create_app``: real API keys and scopes."""
    reader, reader_entry = api_auth.mint("dashboard", ["reports:read"])
    other, other_entry = api_auth.mint("shop-web", ["offers:read"])
    settings = Settings(signing_key="f" * 32, api_keys=f"{reader_entry}; {other_entry}")
    app = api.create_app(settings, engine, FixedClock(NOW))
    anonymous = call(app, "GET", "/reports/latest")
    assert anonymous.status == 401
    bearer = {"Authorization": f"Bearer {other}"}
    assert call(app, "GET", "/reports/latest", headers=bearer).status == 403
    report = call(app, "GET", "/reports/latest", headers={"Authorization": f"Bearer {reader}"})
    assert report.status == 200 and "Retention report" in report.text
    token = parse_qs(urlsplit(links_of(mailed[ADDRESSES["c2"]])[7]).query)["token"][0]
    answer = call(app, "POST", "/v1/feedback", json={"token": token, "score": 7})  # no API key
    assert answer.status == 200 and answer.json()["recorded"] is True
    assert stored(engine) == [(f"nps/{NOW:%Y-%m-%d}", "c2", 7, None)]


def renders_meet(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each report render waits (up to 3 s) for a second one to start, so a race between two
    first renders is taken for certain when one can happen."""
    both = threading.Barrier(2)
    render = report.render_html

    def slow(data: report.Data) -> str:
        with contextlib.suppress(threading.BrokenBarrierError):
            both.wait(timeout=3)
        return render(data)

    monkeypatch.setattr(report, "render_html", slow)


def test_two_first_requests_at_once_render_and_store_one_report(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no report stored, two dashboards asking at once each rendered one and stored it:
    two reports of one instant, twice the rendering (seconds of CPU each), and the two
    answers named different reports. The renderer waits (up to 3 s) for a second render to
    start, so the race is taken for certain when one can happen."""
    renders_meet(monkeypatch)
    app = make_app(engine, FixedClock(NOW))
    answers: list[Any] = []

    def ask() -> None:
        answers.append(
            call(app, "GET", "/reports/latest", headers={"X-Test-Scope": "reports:read"})
        )

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [a.status for a in answers] == [200, 200]
    assert answers[0].headers["x-report-id"] == answers[1].headers["x-report-id"]
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(reports)).scalar() == 1


def test_two_serve_processes_asked_at_once_store_one_first_report(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock that renders the first report once is per process: two API processes (two
    apps, each with its own engine, on one database) both found no report, both rendered
    and both stored one, and answered with different reports. The renderer waits (up to
    3 s) for the other process's render to start, so the race is taken for certain."""
    renders_meet(monkeypatch)
    other = make_engine(engine.url.render_as_string(hide_password=False))
    apps = [make_app(engine, FixedClock(NOW)), make_app(other, FixedClock(NOW))]
    answers: list[Any] = []

    def ask(app: FastAPI) -> None:
        answers.append(
            call(app, "GET", "/reports/latest", headers={"X-Test-Scope": "reports:read"})
        )

    threads = [threading.Thread(target=ask, args=(app,)) for app in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    other.dispose()
    assert [a.status for a in answers] == [200, 200]
    assert answers[0].headers["x-report-id"] == answers[1].headers["x-report-id"]
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(reports)).scalar() == 1
