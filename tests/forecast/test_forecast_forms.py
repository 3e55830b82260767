"""One customer's purchase lines stored under two Unicode forms of the id (an older version's
decomposed, a file's composed) are one customer's history to the forecast."""

from __future__ import annotations

import unicodedata
from datetime import UTC, date, datetime

import numpy as np
import sqlalchemy as sa

from recocamp import forecast as f
from recocamp.domain import Customer, Item, Purchase
from recocamp.settings import Settings
from recocamp.store import queries

NOW = datetime(2012, 1, 1, tzinfo=UTC)
COMPOSED = "José"
DECOMPOSED = unicodedata.normalize("NFD", COMPOSED)


def _lines(customer_id: str, months: range) -> list[Purchase]:
    return [
        Purchase(
            f"{customer_id!a}-{m}",
            1,
            customer_id,
            "i1",
            1,
            10.0,
            datetime(2011, m, 5, 12, tzinfo=UTC),
        )
        for m in months
    ]


def _days(engine: sa.Engine, held: str) -> dict[str, int]:
    """Purchase days per forecast customer, the customer's record held in form ``held``, three
    orders stored decomposed (before ids were composed) and three composed (a file since)."""
    with engine.begin() as connection:
        queries.upsert_items(connection, [Item("i1", "Mug", "home", 10.0)], NOW)
        queries.upsert_customers(connection, [Customer(held, "j@example.test")], NOW)
        lines = _lines(DECOMPOSED, range(1, 4)) + _lines(COMPOSED, range(4, 7))
        queries.insert_purchases(connection, lines, None)
    purchases = f.purchase_days(engine, Settings(), f.day_number(date(2011, 9, 1)))
    return dict(zip(purchases.customers.tolist(), np.diff(purchases.start).tolist(), strict=True))


def test_lines_under_both_forms_are_one_customer_named_as_the_record_is_held(
    engine: sa.Engine,
) -> None:
    """The customers table holds José decomposed (and no composed record): his six purchase
    days are one history under that id, the one the API, the campaigns and the preferences
    page look his forecast up by (``registry.stored_id``), not two customers with three days
    each, each forecast to buy half as often."""
    assert _days(engine, DECOMPOSED) == {DECOMPOSED: 6}


def test_lines_under_both_forms_are_named_composed_where_that_record_is_held(
    engine: sa.Engine,
) -> None:
    assert _days(engine, COMPOSED) == {COMPOSED: 6}
