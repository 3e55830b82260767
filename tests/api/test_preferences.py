"""The preferences page through the real app (SQLite and PostgreSQL): signed links, both
languages, every form, what it shows, and what it must never do."""

from __future__ import annotations

import json
import logging
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import SecretStr

from recocamp import tokens
from recocamp.api.app import create_app
from recocamp.campaigns.run import load_snapshot
from recocamp.clock import FixedClock
from recocamp.domain import ConsentBasis, Customer, CustomerForecast, Purchase
from recocamp.store import forecasts, queries
from recocamp.store.forecasts import ForecastVersion
from recocamp.store.schema import audit_log, contact_events, customers, items
from tests.api_shop import (
    NOW,
    SIGNING_KEY,
    bearer,
    call,
    engine_of,
    make_app,
    settings_for,
)


def someone(engine: sa.Engine, locale: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            sa.select(customers)
            .where(
                customers.c.locale == locale,
                customers.c.email.is_not(None),
                customers.c.consent_basis == "double_opt_in",
            )
            .order_by(customers.c.id)
        ).first()


def page(customer: str, purpose: str = "preferences", key: str = SIGNING_KEY) -> str:
    token = tokens.sign(key.encode(), customer, "winback", purpose, NOW - timedelta(days=2))
    return f"/p/{token}"


def state(engine: sa.Engine, customer: str) -> tuple[Any, ...]:
    with engine.connect() as connection:
        row = connection.execute(sa.select(customers).where(customers.c.id == customer)).first()
        trail = connection.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one()
    return (tuple(row) if row else None, trail)


def test_the_page_in_english_shows_settings_data_and_why(app: FastAPI) -> None:
    person = someone(engine_of(app), "en")
    before = state(engine_of(app), person.id)
    reply = call(app, "GET", page(person.id))
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/html")
    html = reply.text
    assert '<html lang="en">' in html and "Your e-mail preferences" in html
    assert person.email not in html  # only masked
    assert f"{person.email[0]}•••@example.test" in html
    assert person.first_name in html and "double opt-in" in html
    assert "winback" in html and "picked from your purchases" in html
    assert 'href="/p/' in html and "data.json" in html
    assert html.count("<li>") >= 1  # the offers, with their reasons
    assert state(engine_of(app), person.id) == before  # looking changes nothing


def test_a_trailing_slash_is_not_redirected_with_the_token(app: FastAPI) -> None:
    """``/p/TOKEN/`` answered 307 to ``http://<host>/p/TOKEN``, built from the request as
    the process saw it: behind a TLS proxy the token went back out in a plain http link."""
    person = someone(engine_of(app), "en")
    for path in (page(person.id) + "/", page(person.id, "unsubscribe").replace("/p/", "/u/") + "/"):
        reply = call(app, "GET", path)
        assert reply.status == 404 and "location" not in reply.headers
        assert path.split("/")[2] not in reply.text


def test_the_page_in_german_and_the_language_switch(app: FastAPI) -> None:
    person = someone(engine_of(app), "de")
    html = call(app, "GET", page(person.id)).text
    assert '<html lang="de">' in html and "Ihre E-Mail-Einstellungen" in html
    assert "Widerspruch gegen Profiling, Art. 21 DSGVO" in html
    english = call(app, "GET", page(person.id) + "?lang=en").text
    assert "Your e-mail preferences" in english
    # each page links every other language, by its own name (from domain.LOCALES)
    assert '<a href="?lang=en" hreflang="en" lang="en">English</a>' in html
    assert '<a href="?lang=de" hreflang="de" lang="de">Deutsch</a>' in english
    assert 'href="?lang=de"' not in html and 'href="?lang=en"' not in english


def test_the_german_page_names_the_language_and_explains_the_download(app: FastAPI) -> None:
    """The German page listed "Sprache: de" (a code), and the data download a German
    customer gets began with English words."""
    person = someone(engine_of(app), "de")
    html = call(app, "GET", page(person.id)).text
    assert '<th scope="row">Sprache</th>\n<td>Deutsch</td>' in html
    document = json.loads(call(app, "GET", page(person.id) + "/data.json").text)
    assert document["about"].startswith("Alle Daten, die recocamp über Sie speichert")
    english = someone(engine_of(app), "en")
    html = call(app, "GET", page(english.id)).text
    assert '<th scope="row">Language</th>\n<td>English</td>' in html
    document = json.loads(call(app, "GET", page(english.id) + "/data.json").text)
    assert document["about"].startswith("Everything recocamp holds about this customer")


def test_the_german_page_gives_the_offers_reasons_in_german(app: FastAPI) -> None:
    """The reasons read "because you bought …" and "popular with other customers" in German."""
    person = someone(engine_of(app), "de")
    html = call(app, "GET", page(person.id)).text
    offers = html.split('<ul id="offers">')[1].split("</ul>")[0]
    assert offers.count("<li>") >= 1
    for english in (
        "because you bought",
        "popular with other customers",
        "picked for you",
        "bought this",
    ):
        assert english not in offers
    assert "Sie haben diesen Artikel schon einmal gekauft" in offers


def test_saving_frequency_channel_and_objection(app: FastAPI) -> None:
    engine = engine_of(app)
    person = someone(engine, "en")
    link = page(person.id)
    form = {"action": "save", "frequency": "weekly", "objected": "on"}  # channel box unticked
    reply = call(app, "POST", link, data=form)
    assert reply.status == 303 and reply.headers["location"] == f"{link}?done=saved&lang=en"
    with engine.connect() as connection:
        row = connection.execute(sa.select(customers).where(customers.c.id == person.id)).one()
        entry = connection.execute(sa.select(audit_log).order_by(audit_log.c.id.desc())).first()
    assert (row.frequency_preference, row.channel_email, row.objected_to_profiling) == (
        "weekly",
        False,
        True,
    )
    assert entry is not None and (entry.actor, entry.details["source"]) == (
        "customer",
        "preferences page",
    )
    shown = call(app, "GET", reply.headers["location"]).text
    assert "Your preferences are saved." in shown and "you objected to profiling" in shown
    assert 'value="weekly"\nchecked' in shown or 'value="weekly" checked' in shown.replace(
        "\n", " "
    )


def test_switching_e_mail_offers_off_reaches_the_planner(app: FastAPI) -> None:
    """The box unticked stored ``channel_email`` false, but the planner never read it: the
    customer was decided ``eligible`` (or held out) every run and only the deliverer
    cancelled the mail, so decisions, caps and the holdout counted mail they had refused.
    The planner skips them now, with their own reason."""
    engine = engine_of(app)
    person = someone(engine, "en")
    form = {"action": "save", "frequency": "any"}  # channel box unticked
    assert call(app, "POST", page(person.id), data=form).status == 303
    settings = settings_for(Path("unused"))
    with engine.connect() as connection:
        views = {v.customer.id: v for v in load_snapshot(connection, settings, NOW).views}
    assert views[person.id].channel_email is False
    assert all(v.channel_email for key, v in views.items() if key != person.id)


def test_pause_and_resume(app: FastAPI) -> None:
    engine = engine_of(app)
    person = someone(engine, "en")
    assert call(app, "POST", page(person.id), data={"action": "pause", "weeks": "4"}).status == 303
    assert state(engine, person.id)[0][customers.c.keys().index("paused_until")] == (
        NOW + timedelta(weeks=4)
    )
    html = call(app, "GET", page(person.id)).text
    assert "E-mails are paused until 2012-02-02." in html and "Resume now" in html
    assert call(app, "POST", page(person.id), data={"action": "resume"}).status == 303
    assert state(engine, person.id)[0][customers.c.keys().index("paused_until")] is None


def test_unsubscribe_from_everything(app: FastAPI) -> None:
    engine = engine_of(app)
    person = someone(engine, "en")
    assert call(app, "POST", page(person.id), data={"action": "unsubscribe"}).status == 303
    with engine.connect() as connection:
        row = connection.execute(sa.select(customers).where(customers.c.id == person.id)).one()
        events = connection.execute(
            sa.select(contact_events.c.kind, contact_events.c.provider, contact_events.c.campaign)
        ).all()
    assert row.unsubscribed_at == NOW
    assert events == [("unsubscribed", "link", "winback")]
    assert "You are unsubscribed" in call(app, "GET", page(person.id)).text


def test_download_is_everything_we_hold(app: FastAPI) -> None:
    person = someone(engine_of(app), "en")
    reply = call(app, "GET", page(person.id) + "/data.json")
    assert reply.status == 200
    assert reply.headers["content-disposition"] == 'attachment; filename="my-data.json"'
    document = json.loads(reply.text)
    assert document["tables"]["customers"][0]["email"] == person.email
    assert document["tables"]["purchases"]


def hold_forecasts(engine: sa.Engine, rows: list[CustomerForecast]) -> None:
    version = ForecastVersion("bgnbd-test", "bgnbd", NOW.date(), 90, 365, len(rows), None, NOW)
    with engine.begin() as connection:
        forecasts.replace(connection, version, rows)


def forecast_of(customer: str, risk: str, due: date | None) -> CustomerForecast:
    p_active = {"low": 0.9, "medium": 0.5, "high": 0.1}[risk]
    return CustomerForecast(customer, 2.3, p_active, risk, 123.45, 678.9, due, 1.2)


def test_the_forecast_in_plain_words_in_both_languages(app: FastAPI) -> None:
    engine = engine_of(app)
    english, german = someone(engine, "en"), someone(engine, "de")
    hold_forecasts(
        engine,
        [forecast_of(english.id, "low", date(2012, 2, 1)), forecast_of(german.id, "high", None)],
    )
    html = call(app, "GET", page(english.id)).text
    assert "Purchase forecast" in html
    until = (NOW.date() + timedelta(days=89)).isoformat()  # the horizon's last day
    assert f"We estimate that you are likely to order again by {until}." in html
    assert "your next one would be due around 2012-02-01." in html
    assert 'id="forecast-note"' in html and "decide which e-mails to send you" in html
    assert "678.9" not in html and "123.45" not in html  # words, no figures
    html = call(app, "GET", page(german.id)).text
    assert "Kaufprognose" in html and "Dem Profiling widersprechen" in html
    bis = (NOW.date() + timedelta(days=89)).strftime("%d.%m.%Y")
    assert f"Wir schätzen, dass Sie bis zum {bis} wahrscheinlich nicht wieder bestellen." in html
    assert "fällig" not in html  # a single purchase day: no rhythm, no due date
    in_english = call(app, "GET", page(german.id) + "?lang=en").text
    assert "We estimate that you are unlikely to order again" in in_english


def test_an_old_forecast_is_not_said_to_speak_for_the_next_days(app: FastAPI) -> None:
    """A quiet shop's nightly job keeps its stored forecast (no purchase arrived), so the one
    a customer reads may be months old: it said "likely to order again within the next 90
    days" of a horizon that ended before the visit. The page names the horizon's last day."""
    engine = engine_of(app)
    person = someone(engine, "en")
    as_of = NOW.date() - timedelta(days=200)
    version = ForecastVersion("bgnbd-old", "bgnbd", as_of, 90, 365, 1, None, NOW)
    with engine.begin() as connection:
        forecasts.replace(connection, version, [forecast_of(person.id, "low", None)])
    html = call(app, "GET", page(person.id)).text
    until = (as_of + timedelta(days=89)).isoformat()
    assert f"We estimate that you are likely to order again by {until}." in html
    assert "within the next" not in html


def test_objecting_deletes_the_forecast_and_the_page_says_none_is_held(app: FastAPI) -> None:
    engine = engine_of(app)
    person = someone(engine, "en")
    hold_forecasts(engine, [forecast_of(person.id, "medium", None)])
    before = call(app, "GET", page(person.id)).text
    assert "We are unsure whether you will order again by " in before
    call(app, "POST", page(person.id), data={"action": "save", "objected": "on"})
    html = call(app, "GET", page(person.id)).text
    assert "none: you objected to profiling" in html and "unsure" not in html
    assert 'id="forecast-note"' not in html
    with engine.connect() as connection:
        assert forecasts.customer_forecast(connection, person.id) is None


def test_a_customer_without_a_forecast_is_told_none_is_held(app: FastAPI) -> None:
    engine = engine_of(app)
    person, other = someone(engine, "en"), someone(engine, "de")
    hold_forecasts(engine, [forecast_of(other.id, "low", None)])
    html = call(app, "GET", page(person.id)).text
    assert '<th scope="row">Purchase forecast</th>\n<td>none</td>' in html
    assert 'id="forecast-note"' not in html and "likely" not in html


def test_erasure_needs_the_box_ticked(app: FastAPI) -> None:
    engine = engine_of(app)
    person = someone(engine, "en")
    before = state(engine, person.id)
    refused = call(app, "POST", page(person.id), data={"action": "erase"})
    assert refused.status == 400 and "tick the box" in refused.text
    assert state(engine, person.id) == before
    done = call(app, "POST", page(person.id), data={"action": "erase", "confirm": "on"})
    assert done.status == 200 and "Your data has been erased." in done.text
    assert state(engine, person.id)[0] is None
    gone = call(app, "GET", page(person.id) + "?lang=en")  # the locale went with the data
    assert gone.status == 410 and "Your data has been erased." in gone.text


@pytest.mark.parametrize(
    "form",
    [
        {"action": "launch"},
        {"action": "pause", "weeks": "3"},
        {"action": "pause", "weeks": "x"},
        {"action": "save", "frequency": "hourly"},
        {},
    ],
)
def test_unknown_forms_change_nothing(app: FastAPI, form: dict[str, str]) -> None:
    engine = engine_of(app)
    person = someone(engine, "en")
    before = state(engine, person.id)
    assert call(app, "POST", page(person.id), data=form).status == 400
    assert state(engine, person.id) == before


@pytest.mark.parametrize(
    "body",
    [
        "action=save&action=erase&confirm=on",  # the last value won: an erasure
        "action=erase&confirm=&confirm=on",
        "action=pause&weeks=1&weeks=4",
    ],
)
def test_a_field_sent_twice_is_refused_and_changes_nothing(
    app: FastAPI, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No page form has a field a browser sends twice (no checkbox group sharing a name, no
    ``<select multiple>``): one sent twice is refused, named, as a JSON key given twice is,
    rather than the last value winning."""
    engine = engine_of(app)
    person = someone(engine, "en")
    before = state(engine, person.id)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    with caplog.at_level(logging.INFO, logger="recocamp.api.pages"):
        reply = call(app, "POST", page(person.id), content=body.encode(), headers=headers)
    assert reply.status == 400
    assert state(engine, person.id) == before
    field = body.split("&")[1].split("=")[0]
    assert f"{field}: is sent more than once" in caplog.text


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_links_that_are_not_valid_change_nothing(app: FastAPI, method: str) -> None:
    engine = engine_of(app)
    person = someone(engine, "en")
    before = state(engine, person.id)
    for link in (
        page(person.id, purpose="unsubscribe"),
        page(person.id, key="another" * 5),
        "/p/garbage",
        page(person.id) + "x",
    ):
        reply = call(app, method, link, data={"action": "unsubscribe"})
        assert reply.status == 400, link
        assert "Dieser Link ist (nicht mehr) gültig." in reply.text  # the shop's language
    assert state(engine, person.id) == before


def test_links_are_off_without_a_signing_key(shop: tuple[sa.Engine, Path]) -> None:
    engine, artifacts = shop
    settings = settings_for(artifacts).model_copy(update={"signing_key": None})
    app = create_app(settings, engine, FixedClock(NOW))
    assert call(app, "GET", page("10001")).status == 503


def test_names_are_escaped(app: FastAPI) -> None:
    engine = engine_of(app)
    person = someone(engine, "en")
    with engine.begin() as connection:
        connection.execute(
            sa.update(customers)
            .where(customers.c.id == person.id)
            .values(first_name="<script>alert(1)</script>", updated_at=NOW)
        )
    html = call(app, "GET", page(person.id)).text
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_signing_key_rotation_invalidates_old_links(shop: tuple[sa.Engine, Path]) -> None:
    engine, artifacts = shop
    person = someone(engine, "en")
    rotated = settings_for(artifacts).model_copy(update={"signing_key": SecretStr("n" * 32)})
    app = create_app(rotated, engine, FixedClock(NOW))
    assert call(app, "GET", page(person.id)).status == 400


def test_a_one_time_buyers_due_date_is_not_said_to_come_from_their_own_orders(
    app: FastAPI,
) -> None:
    """A customer with a single purchase day before the forecast's as_of is due after the
    shop's typical gap (forecast.outlook): the page must not say their date goes by 'the time
    between your past orders' (they have none); a repeat customer's still does."""
    engine = engine_of(app)

    def person(cid: str) -> Customer:
        basis, since = ConsentBasis.DOUBLE_OPT_IN, NOW - timedelta(days=30)
        return Customer(
            cid, f"{cid}@example.test", locale="en", consent_basis=basis, consent_at=since
        )

    def bought(order: str, cid: str, ago: timedelta) -> Purchase:
        return Purchase(order, 1, cid, item, 1, 5.0, NOW - ago)

    with engine.begin() as connection:
        product = sa.select(items.c.id).where(items.c.is_service.is_(False))
        item = connection.execute(product.order_by(items.c.id).limit(1)).scalar_one()
        queries.upsert_customers(connection, [person("solo"), person("twice")], NOW)
        # solo: two orders on one day, and one on as_of itself (not before it): one purchase day
        queries.insert_purchases(
            connection,
            [
                bought("solo-1", "solo", timedelta(days=20)),
                bought("solo-2", "solo", timedelta(days=20, hours=1)),
                bought("solo-3", "solo", timedelta(hours=1)),
                bought("twice-1", "twice", timedelta(days=40)),
                bought("twice-2", "twice", timedelta(days=20)),
            ],
            None,
        )
    hold_forecasts(
        engine,
        [
            forecast_of("solo", "medium", date(2012, 2, 1)),
            forecast_of("twice", "low", date(2012, 2, 2)),
        ],
    )
    html = call(app, "GET", page("solo")).text
    assert "due around 2012-02-01." in html
    assert "time between your past orders" not in html
    assert "the usual time between orders in our shop" in html
    assert "between your past orders, your next one would be due around 2012-02-02." in (
        call(app, "GET", page("twice")).text
    )


def test_one_item_bought_is_said_in_the_singular(app: FastAPI) -> None:
    """A German customer who bought one item read "1 Bestellung mit 1 verschiedenen
    Artikeln" (and an English one "1 order of 1 different items")."""
    engine = engine_of(app)
    since = NOW - timedelta(days=30)
    with engine.begin() as connection:
        product = sa.select(items.c.id).where(items.c.is_service.is_(False))
        item = connection.execute(product.order_by(items.c.id).limit(1)).scalar_one()
        people = [
            Customer(cid, f"{cid}@example.test", locale=locale, consent_at=since)
            for cid, locale in (("eins", "de"), ("one", "en"))
        ]
        queries.upsert_customers(connection, people, NOW)
        bought = [
            Purchase(f"o-{p.id}", 1, p.id, item, 1, 5.0, NOW - timedelta(days=9)) for p in people
        ]
        queries.insert_purchases(connection, bought, None)
    day = (NOW - timedelta(days=9)).date()
    german = call(app, "GET", page("eins")).text
    assert f"1 Bestellung mit 1 Artikel am {day:%d.%m.%Y}" in german
    english = call(app, "GET", page("one")).text
    assert f"1 order of 1 item on {day:%Y-%m-%d}" in english


def test_a_stored_value_todays_rules_refuse_does_not_block_the_customers_own_changes(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """An address stored before a rule refused it (a zero-width space: imports refuse it
    since, older ones took it) made every form of the page a 500: the customer could neither
    object to profiling nor pause. A change is held to the rules of what it changes."""
    app = make_app(engine, tmp_path)
    given = (NOW - timedelta(days=9)).isoformat()
    consent = {"consent_basis": "double_opt_in", "consent_at": given}
    body = {"source": "signup", "email": "e@example.test", **consent}
    assert call(app, "PUT", "/v1/customers/c1", json=body, headers=bearer("shop")).status == 200
    with engine.begin() as connection:  # as an older release stored it
        connection.execute(sa.update(customers).values(email="e\u200b@example.test"))
    objection = call(app, "POST", page("c1"), data={"action": "save", "objected": "on"})
    pause = call(app, "POST", page("c1"), data={"action": "pause", "weeks": "4"})
    assert (objection.status, pause.status) == (303, 303)
    with engine.connect() as connection:
        row = connection.execute(sa.select(customers)).one()
    assert row.objected_to_profiling and row.channel_email is False
    assert row.paused_until.replace(tzinfo=NOW.tzinfo) == NOW + timedelta(weeks=4)
    again = {"source": "crm", "email": "x\u200b@example.test"}  # a change of it: still held
    assert call(app, "PUT", "/v1/customers/c1", json=again, headers=bearer("shop")).status == 422


def test_the_page_gives_days_in_the_shops_zone(engine: sa.Engine, tmp_path: Path) -> None:
    """A time is told as the shop's day (Europe/Berlin), as the forecast's days are: a
    consent given and a pause made at half past midnight in Berlin read as the day before
    (UTC's), the pause's end a day early."""
    late = NOW.replace(hour=23, minute=30)  # 00:30 the next day in Berlin
    app = make_app(engine, tmp_path, FixedClock(late))
    consent = {"consent_basis": "double_opt_in", "consent_at": late.isoformat()}
    body = {"source": "signup", "email": "e@example.test", "locale": "de", **consent}
    assert call(app, "PUT", "/v1/customers/c1", json=body, headers=bearer("shop")).status == 200
    assert call(app, "POST", page("c1"), data={"action": "pause", "weeks": "4"}).status == 303
    html = call(app, "GET", page("c1")).text
    assert "seit 06.01.2012" in html and "seit 05.01.2012" not in html
    assert "E-Mails sind pausiert bis zum 03.02.2012." in html
