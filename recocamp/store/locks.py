"""Advisory lock keys: one stable number per name, shared by every worker of a database;
and the lock that lets one process at a time migrate the schema."""

from __future__ import annotations

import hashlib

import sqlalchemy as sa

from recocamp.store.queries import write_lock


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name."""
    digest = hashlib.sha256(f"recocamp:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


MIGRATIONS = lock_key("migrations")


def migrating(connection: sa.Connection) -> None:
    """At the start of a migration's transaction, before the schema's revision is read:
    wait for any other process migrating this database to commit. Two ``db upgrade``
    started at once (a deploy that starts every replica with it) both read "no revision",
    both created the tables, and the second died on ``duplicate key value violates unique
    constraint`` with a 300-line traceback; now it waits and finds the schema at head.
    PostgreSQL: a transaction-level advisory lock (released at commit or rollback);
    SQLite: the write lock, taken up front (``BEGIN IMMEDIATE``)."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATIONS})
    else:
        write_lock(connection)
