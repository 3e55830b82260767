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


# the server probes an idle lock holder's connection after 10 s and every 5 s, and ends its
# session, releasing its locks, after 3 probes unanswered: a leader whose host died or was cut
# off leaves the lock within ~25 s (the system's default is 2 h). A frozen process whose host
# still answers keeps it: the kernel answers the probes.
KEEPALIVE = {"tcp_keepalives_idle": 10, "tcp_keepalives_interval": 5, "tcp_keepalives_count": 3}


def keep_alive(connection: Connection) -> None:
    """Ask the server to probe this connection while it holds locks (see :data:`KEEPALIVE`;
    the settings are the session's own, and mean nothing on a Unix socket)."""
    for name, value in KEEPALIVE.items():
        connection.execute(sa.text(f"SET {name} = {int(value)}"))
    connection.commit()


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
