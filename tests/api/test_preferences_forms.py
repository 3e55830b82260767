"""The preferences page's plain-words forecast for a customer whose orders an older version
stored under two Unicode forms of the id: migration 0023 makes them one customer's, and a
link mailed before it (signed for the decomposed id) opens that customer's page."""

from __future__ import annotations

import unicodedata
from datetime import date, timedelta
from pathlib import Path

from recocamp.domain import ConsentBasis, Customer, Item, Purchase
from recocamp.store import queries
from recocamp.store.engine import make_engine, upgrade
from tests.api.test_preferences import forecast_of, hold_forecasts, page
from tests.api_shop import NOW, call, make_app

COMPOSED = "José"
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)


def test_a_repeat_customer_under_two_id_forms_is_not_told_they_ordered_on_one_day(
    db_url: str, tmp_path: Path
) -> None:
    """José's record and his first order were stored decomposed (before ids were composed),
    his second order, weeks later, composed (a file since). After the upgrade both orders
    are his: the page must date his next order by his own rhythm, not say it goes by the
    shop's usual gap because he 'ordered on one day so far', and the link of an e-mail sent
    before the upgrade must open it."""
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    since = NOW - timedelta(days=60)
    with engine.begin() as connection:
        queries.upsert_items(connection, [Item("i1", "Tea", "kitchen", 5.0)], since)
        person = Customer(
            DECOMPOSED,
            "jose@example.test",
            locale="en",
            consent_basis=ConsentBasis.DOUBLE_OPT_IN,
            consent_at=since,
        )
        queries.upsert_customers(connection, [person], since)
        queries.insert_purchases(
            connection,
            [
                Purchase("jose-1", 1, DECOMPOSED, "i1", 1, 5.0, NOW - timedelta(days=40)),
                Purchase("jose-2", 1, COMPOSED, "i1", 1, 5.0, NOW - timedelta(days=20)),
            ],
            None,
        )
    upgrade(engine)
    hold_forecasts(engine, [forecast_of(COMPOSED, "low", date(2012, 1, 21))])
    html = call(make_app(engine, tmp_path), "GET", page(DECOMPOSED)).text
    assert "between your past orders, your next one would be due around 2012-01-21." in html
    assert "the usual time between orders in our shop" not in html
    engine.dispose()
