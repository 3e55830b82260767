"""The statements behind the worker's leadership and job locks (``worker.leadership``).

PostgreSQL's session-level advisory locks belong to the connection that took them, so each
function here runs on a connection the caller keeps open, and commits at once: the lock
outlives the statement's transaction, and no transaction stays open on a long-lived
connection. A lost connection raises :class:`DBAPIError` (re-exported here), and its locks
are gone with it. SQLite has no such locks: its one worker holds a file lock next to the
database file (:func:`sqlite_file`).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError as DBAPIError  # re-exported: a lost connection

from recocamp.store.engine import Connection, Engine


def is_postgresql(engine: Engine) -> bool:
    """Whether ``engine`` has advisory locks (PostgreSQL), so several workers may run."""
    return engine.dialect.name == "postgresql"


def sqlite_file(engine: Engine) -> str | None:
    """The database file of a SQLite engine; None for an in-memory database."""
    database = engine.url.database
    return database if database and database != ":memory:" else None


def try_lock(connection: Connection, key: int) -> bool:
    """Take the session advisory lock ``key`` if nobody holds it (re-entrant per session)."""
    got = connection.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
    value = bool(got.scalar_one())
    connection.commit()
    return value


def unlock(connection: Connection, key: int) -> bool:
    """Give the session advisory lock ``key`` back; False when this session did not hold it."""
    value = bool(
        connection.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key}).scalar_one()
    )
    connection.commit()
    return value


def ping(connection: Connection) -> None:
    """Raise :class:`DBAPIError` unless the connection (and with it its locks) is alive."""
    connection.execute(sa.text("SELECT 1"))
    connection.commit()


def discard(connection: Connection) -> None:
    """Close a connection for good, never back to the pool (its session may be broken)."""
    try:
        connection.invalidate()
        connection.close()
    except DBAPIError:  # pragma: no cover - already broken
        pass
