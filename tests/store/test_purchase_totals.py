"""``purchase_totals`` (migration 0016): the count and id sum of each customer's purchase
lines, kept by triggers, equal what a scan of the lines gives after every kind of write —
lines inserted (one or many a statement), deleted, moved between customers, unlinked as an
erasure does — and after the migration's fill of an existing store; on SQLite and PostgreSQL.
``store.serving.customer_lines`` reads them instead of scanning, so a history extended with
wrong totals would be wrong (``tests/api/test_histories.py`` covers that reader)."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic import command

from recocamp.domain import Purchase
from recocamp.store import queries
from recocamp.store.engine import alembic_config, current_revision, make_engine, upgrade
from recocamp.store.schema import purchase_totals, purchases
from tests.conftest import NOW
from tests.store.test_engine import schema_differences

Totals = dict[str, tuple[int, int]]


def kept(engine: sa.Engine) -> Totals:
    t = purchase_totals.c
    with engine.connect() as connection:
        rows = connection.execute(sa.select(t.customer_id, t.lines, t.id_sum)).all()
    return {str(c): (int(n), int(s)) for c, n, s in rows}


def scanned(engine: sa.Engine) -> Totals:
    p = purchases.c
    query = (
        sa.select(p.customer_id, sa.func.count(), sa.func.sum(p.id))
        .where(p.customer_id.is_not(None))
        .group_by(p.customer_id)
    )
    with engine.connect() as connection:
        return {str(c): (int(n), int(s)) for c, n, s in connection.execute(query)}


def bought(order: str, customer: str | None, lines: int = 1, hours: int = 0) -> list[Purchase]:
    at = NOW - timedelta(hours=hours)
    return [Purchase(order, n, customer, f"i{n}", 1, 2.5, at) for n in range(1, lines + 1)]


def add(engine: sa.Engine, *lines: Purchase) -> None:
    with engine.begin() as connection:
        queries.insert_purchases(connection, lines, None)


def test_the_totals_follow_every_write_of_purchase_lines(engine: sa.Engine) -> None:
    p = purchases.c
    add(engine, *bought("o1", "c1", 3), *bought("o2", "c2", 2), *bought("o3", None, 2))
    add(engine, *bought("o4", "c1", 1, hours=1))
    assert kept(engine) == scanned(engine) and kept(engine)["c1"][0] == 4
    with engine.begin() as connection:
        connection.execute(sa.delete(purchases).where(p.order_id == "o4"))
        first = connection.execute(sa.select(sa.func.min(p.id)).where(p.order_id == "o1"))
        moved = first.scalar_one()
        connection.execute(sa.update(purchases).where(p.id == moved).values(customer_id="c2"))
        connection.execute(  # a guest's line comes to a customer without a row yet
            sa.update(purchases).where(p.order_id == "o3", p.line_no == 1).values(customer_id="c3")
        )
        connection.execute(sa.update(purchases).values(quantity=2))  # no line moves
    assert kept(engine) == scanned(engine)
    assert kept(engine)["c1"][0] == 2 and kept(engine)["c2"][0] == 3 and "c3" in kept(engine)
    with engine.begin() as connection:  # as an erasure unlinks: the customer's row goes
        connection.execute(
            sa.update(purchases).where(p.customer_id == "c2").values(customer_id=None)
        )
    assert kept(engine) == scanned(engine) and "c2" not in kept(engine)
    with engine.begin() as connection:
        connection.execute(sa.delete(purchases))
    assert kept(engine) == {}


def test_the_migration_fills_the_totals_of_an_existing_store(db_url: str) -> None:
    """Up from 0015 over lines already stored: the totals of every customer; down drops the
    table and its triggers (lines written then are not counted), up again counts them."""
    engine = make_engine(db_url)
    upgrade(engine, "0015")
    add(engine, *bought("o1", "c1", 3), *bought("o2", "c2", 2), *bought("o3", None))
    upgrade(engine)
    assert kept(engine) == scanned(engine) and set(kept(engine)) == {"c1", "c2"}
    command.downgrade(alembic_config(engine), "0015")
    assert current_revision(engine) == "0015"
    assert "purchase_totals" not in sa.inspect(engine).get_table_names()
    add(engine, *bought("o5", "c1", 2))  # no trigger left to fail on the missing table
    upgrade(engine)
    assert kept(engine) == scanned(engine) and kept(engine)["c1"][0] == 5
    with engine.connect() as connection:
        assert schema_differences(connection) == []
    engine.dispose()
