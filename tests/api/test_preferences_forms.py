"""The preferences page's plain-words forecast for a customer whose orders are stored under
two Unicode forms of the id, as the forecast counts them (one customer: store.forecasts)."""

from __future__ import annotations

import unicodedata
from datetime import date, timedelta

import sqlalchemy as sa
from fastapi import FastAPI

from recocamp.domain import ConsentBasis, Customer, Purchase
from recocamp.store import queries
from recocamp.store.schema import items
from tests.api.test_preferences import forecast_of, hold_forecasts, page
from tests.api_shop import NOW, call, engine_of

COMPOSED = "José"
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)


def test_a_repeat_customer_under_two_id_forms_is_not_told_they_ordered_on_one_day(
    app: FastAPI,
) -> None:
    """José's record and his first order were stored decomposed (before ids were composed),
    his second order, weeks later, composed (a file since): the forecast counts two purchase
    days and dates his next order by his own rhythm, so the page must not say it goes by
    the shop's usual gap because he 'ordered on one day so far'."""
    engine = engine_of(app)
    since = NOW - timedelta(days=60)
    with engine.begin() as connection:
        product = sa.select(items.c.id).where(items.c.is_service.is_(False))
        item = connection.execute(product.order_by(items.c.id).limit(1)).scalar_one()
        person = Customer(
            DECOMPOSED,
            "jose@example.test",
            locale="en",
            consent_basis=ConsentBasis.DOUBLE_OPT_IN,
            consent_at=since,
        )
        queries.upsert_customers(connection, [person], NOW)
        queries.insert_purchases(
            connection,
            [
                Purchase("jose-1", 1, DECOMPOSED, item, 1, 5.0, NOW - timedelta(days=40)),
                Purchase("jose-2", 1, COMPOSED, item, 1, 5.0, NOW - timedelta(days=20)),
            ],
            None,
        )
    hold_forecasts(engine, [forecast_of(DECOMPOSED, "low", date(2012, 1, 21))])
    html = call(app, "GET", page(DECOMPOSED)).text
    assert "between your past orders, your next one would be due around 2012-01-21." in html
    assert "the usual time between orders in our shop" not in html
