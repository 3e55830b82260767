"""The statements of request-time serving (``api.offer_cache``): what an answer is built from
and the per-request check that a cached answer is still right.

The check runs on every request of the offer widget, so it is made cheap here: one indexed
statement per customer (:func:`fingerprint_query`), compiled once; on SQLite it runs on a raw
connection of its own, kept out of the pool for good, next to ``PRAGMA data_version`` (the
commit counter: while it stands still, nothing anybody committed can have changed an answer).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.pool import PoolProxiedConnection

from recocamp.store.engine import Connection, Engine
from recocamp.store.schema import customers, items, purchases, recommendations


def fingerprint_query() -> sa.Select[Any]:
    """Everything an answer depends on for one customer, in one indexed statement."""
    c, r, p = customers.c, recommendations.c, purchases.c
    customer = sa.bindparam("customer_id", type_=sa.String)

    def one(column: Any, table: sa.Table, where: Any) -> Any:
        return sa.select(column).select_from(table).where(where).scalar_subquery()

    return sa.select(
        one(c.objected_to_profiling, customers, c.id == customer),
        one(c.erased_at.is_not(None), customers, c.id == customer),
        one(r.model_version, recommendations, r.customer_id == customer),
        one(sa.func.count(), purchases, p.customer_id == customer),
    )


class Freshness:
    """This process's per-request check: a customer's fingerprint and, on SQLite, the commit
    counter. On SQLite both run on the calling thread's own raw connection (autocommit: a read
    never holds a transaction), so call it from one thread (the event loop); elsewhere each
    fingerprint takes a pooled connection."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.inline = engine.dialect.name == "sqlite"
        self._statement = fingerprint_query()
        self._compiled = self._statement.compile(dialect=engine.dialect)
        self._sql = str(self._compiled)
        self._positions = len(self._compiled.positiontup or ())
        self._pooled: PoolProxiedConnection | None = None  # held: never back to the pool
        self._raw: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None  # reused for data_version

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version`` on the checking connection (SQLite only)."""
        if self._cursor is None:
            self._cursor = self._connection().cursor()
        return int(self._cursor.execute("PRAGMA data_version").fetchone()[0])

    def fingerprint(self, customer_id: str) -> tuple[Any, ...]:
        """(objected, erased, cached row's model version, purchase lines) of one customer."""
        if self.inline:
            row = self._connection().execute(self._sql, [customer_id] * self._positions)
            return tuple(row.fetchone())
        with self.engine.connect() as connection:
            return tuple(connection.execute(self._statement, {"customer_id": customer_id}).one())

    def _connection(self) -> sqlite3.Connection:
        if self._raw is None:
            self._pooled = self.engine.raw_connection()
            raw = self._pooled.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            raw.isolation_level = None  # autocommit: a read never holds a transaction
            self._raw = raw
        return self._raw


def catalogue_mark(connection: Connection) -> tuple[Any, ...]:
    """(items, last change, items in stock): changes whenever the catalogue does."""
    in_stock = sa.func.sum(sa.case((items.c.in_stock, 1), else_=0))
    query = sa.select(sa.func.count(), sa.func.max(items.c.updated_at), in_stock)
    return tuple(connection.execute(query).one())


class ProfilingFlags(NamedTuple):
    """What the objection rule (``recommender.ranking.objects_to_profiling``) reads."""

    objected_to_profiling: bool
    erased_at: datetime | None


def profiling_flags(connection: Connection, customer_id: str) -> ProfilingFlags | None:
    """A customer's objection and erasure; None for an unknown one."""
    query = sa.select(customers.c.objected_to_profiling, customers.c.erased_at).where(
        customers.c.id == customer_id
    )
    row = connection.execute(query).first()
    return None if row is None else ProfilingFlags(bool(row.objected_to_profiling), row.erased_at)
