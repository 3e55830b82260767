"""A shop with tens of thousands of objecting customers whose ids are not ASCII (a
Japanese shop: ``がくと`` has a decomposed form, ``か`` + U+3099) trains, forecasts and
imports customers: the other Unicode forms of their ids (``queries.unprofiled_forms``) were
bound one parameter each, and past SQLite's limit (32,766 in its default build; 999 before
3.32; psycopg's 65,535 on PostgreSQL) every statement holding them failed ("too many SQL
variables"): importing a customers file, training, forecasting, and the objection itself."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from recocamp.data.ingest import Importer
from recocamp.domain import Customer, Item, Purchase
from recocamp.store import forecasts, queries, training_lines
from recocamp.store.engine import make_engine
from recocamp.store.schema import customers, recommendations
from tests.conftest import write_csv

NOW = datetime(2025, 1, 1, tzinfo=UTC)
START = datetime(2024, 3, 1, 8, 30, tzinfo=UTC)
OBJECTORS = 33_000  # past SQLite's default limit of 32,766 variables in one statement
FIRST = "\u304c\u304f\u3068"  # がくと, composed
FIRST_DECOMPOSED = "\u304b\u3099\u304f\u3068"


@pytest.fixture
def limited(engine: sa.Engine) -> Iterator[sa.Engine]:
    """The same store, each connection held to SQLite's default build's limit (this
    machine's build allows 250,000); on PostgreSQL the store as it is."""
    if engine.dialect.name != "sqlite":
        yield engine
        return
    other = make_engine(engine.url.render_as_string(hide_password=False))

    def hold(raw: sqlite3.Connection, _: object) -> None:
        raw.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32_766)

    sa.event.listen(other, "connect", hold)
    yield other
    other.dispose()


def _shop(engine: sa.Engine) -> None:
    """33,000 objectors with ids such as がくと7 (bulk inserted), ``c1`` who did not
    object; ten orders of the first objector under the decomposed id, ten of ``c1``."""
    rows = [
        {"id": f"{FIRST}{n}", "objected_to_profiling": True, "locale": "en", "updated_at": NOW}
        for n in range(OBJECTORS)
    ]
    stored = [
        Purchase(f"{who}-{n}", 1, who, f"i{n % 3}", 1, 2.5, START + timedelta(days=n))
        for who in (f"{FIRST_DECOMPOSED}0", "c1")
        for n in range(10)
    ]
    with engine.begin() as connection:
        connection.execute(sa.insert(customers), rows)
        items = [Item(f"i{n}", f"I{n}", "tea", 2.5) for n in range(3)]
        queries.upsert_items(connection, items, NOW)
        queries.upsert_customers(connection, [Customer("c1", None)], NOW)
        queries.insert_purchases(connection, stored, None)


def test_training_forecasts_and_a_customers_import_past_the_variable_limit(
    engine: sa.Engine, limited: sa.Engine, tmp_path: Path
) -> None:
    """Lines under every form of an objector's id left out of training and forecasts, and a
    customers import dropping the personal lists under them (``upsert_customers``)."""
    _shop(engine)
    with engine.begin() as connection:
        for who in (f"{FIRST_DECOMPOSED}0", "c1"):
            connection.execute(
                sa.insert(recommendations).values(customer_id=who, model_version="v1", items=[])
            )
    with limited.connect() as connection:
        joined = list(training_lines.training_lines(connection, None, chunk=4))
        rows = list(training_lines.line_rows(connection, None, chunk=100))
        assert {c for part in joined + rows for c in part.customer} == {"c1"}
        assert training_lines.unprofiled_buyers(connection) == 1
        ids, _, _ = forecasts.purchase_lines(connection, NOW)
        assert set(ids.tolist()) == {"c1"}
    path = write_csv(tmp_path / "customers.csv", ["id", "email"], [["c2", ""]])
    report = Importer(limited, zone=ZoneInfo("Asia/Tokyo"), now=NOW).customers(path)
    assert report.imported == 1
    with engine.connect() as connection:
        left = connection.execute(sa.select(recommendations.c.customer_id)).scalars().all()
    assert left == ["c1"]
