"""Migration 0013's triggers name the customers a commit touches, whoever writes: SQLite's
change log (read after the last seen row) and PostgreSQL's notifications (delivered on
commit). Changes that touch no answer name nobody."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from recocamp.domain import Purchase
from recocamp.store import notifications, queries
from recocamp.store.schema import customers, models, serving_changes
from tests.conftest import NOW


def purchase(order: str, customer: str | None) -> Purchase:
    return Purchase(order, 1, customer, "i1", 1, 2.5, NOW - timedelta(days=1))


def model_row(version: str, status: str) -> dict[str, Any]:
    return {
        "version": version,
        "name": "item_knn",
        "trained_at": NOW,
        "data_cutoff": NOW,
        "fingerprint": "f",
        "params": {},
        "metrics": {},
        "path": "/nowhere",
        "popular": [],
        "status": status,
    }


def changes(engine: sa.Engine) -> list[Callable[[sa.Connection], None]]:
    """Writes, each with what it should name (see the tests)."""
    return [
        lambda c: queries.insert_purchases(c, [purchase("o1", "c1"), purchase("o2", None)], None),
        lambda c: c.execute(
            sa.insert(customers).values(id="c2", objected_to_profiling=False, updated_at=NOW)
        ),
        lambda c: c.execute(  # no answer depends on a first name
            sa.update(customers).where(customers.c.id == "c2").values(first_name="Ann")
        ),
        lambda c: c.execute(
            sa.update(customers).where(customers.c.id == "c2").values(objected_to_profiling=True)
        ),
        lambda c: c.execute(sa.insert(models).values(model_row("m1", "candidate"))),
        lambda c: c.execute(sa.update(models).values(status="live")),
    ]


EXPECTED: list[list[str] | None] = [["c1"], ["c2"], [], ["c2"], [], None]


def test_sqlite_change_log_names_the_customers_a_commit_touches(engine: sa.Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's change log")
    log = notifications.ChangeLog(engine)
    seq = log.last()
    for write, expected in zip(changes(engine), EXPECTED, strict=True):
        with engine.begin() as connection:
            write(connection)
        seq, named = log.since(seq)
        assert named == expected
    with engine.begin() as connection:  # the oldest row the reader has not seen is trimmed
        queries.insert_purchases(connection, [purchase("o3", "c3"), purchase("o4", "c4")], None)
        connection.execute(sa.delete(serving_changes).where(serving_changes.c.seq == seq + 1))
    assert log.since(seq) == (seq + 2, None)  # it fell behind: everything


def test_postgresql_notifications_name_the_customers_a_commit_touches(engine: sa.Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's notifications")
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {notifications.CHANNEL}")
        for write, expected in zip(changes(engine), EXPECTED, strict=True):
            with engine.begin() as connection:
                write(connection)
            with engine.begin() as connection:  # a marker: everything before it has arrived
                connection.exec_driver_sql(f"NOTIFY {notifications.CHANNEL}, 'marker'")
            received: list[str] = []
            for note in listener.notifies(timeout=30):
                if note.payload == "marker":
                    break
                received.append(note.payload)
            if expected is None:
                assert received == [notifications.EVERYTHING]
            else:
                assert sorted(i for p in received for i in p.split("\n")) == expected
