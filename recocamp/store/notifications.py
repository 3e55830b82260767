"""How a serving process learns which next-best offers a commit changed, whoever committed it.

Migration 0013's triggers name, in the writing transaction, the customers whose answers a
change touches (purchase lines, objection, erasure, a customer created or deleted) and
"everything" when a model goes live. This module reads them:

- :class:`ChangeLog` (SQLite, one host): ``PRAGMA data_version`` tells whether any connection
  committed since the last look; only then are the rows of ``serving_changes`` after the last
  seen ``seq`` read (one indexed range read). Both on one raw autocommit connection of the
  calling thread, kept out of the pool for good.
- :class:`Listener` (PostgreSQL, any number of hosts): a thread per process that ``LISTEN``s on
  :data:`CHANNEL`; the triggers' ``NOTIFY`` is delivered on commit. Notifications sent while it
  is not connected are lost, so every (re)connection reports "everything".

Callers get a list of customer ids, or None for "everything".
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.pool import PoolProxiedConnection

from recocamp.store.engine import Engine
from recocamp.store.schema import serving_changes

log = logging.getLogger(__name__)
CHANNEL = "recocamp_serving"
EVERYTHING = "*"
BEHIND = 10_000  # more new rows than this at once (an import): everything, not row by row
Changed = list[str] | None  # customer ids; None: everything


def erased(connection: sa.Connection, customer_id: str) -> None:
    """At the end of an erasure's transaction: the change log forgets the customer (its rows
    name them; the erasure's own writes added more) and tells every reader to drop everything
    instead (a row without a customer; on PostgreSQL the log stays empty, and an
    "everything" notification goes out on commit besides the triggers' naming them). So
    every process takes a new look at the store, which sees the erasure and stops using the
    loaded model's own rows (``api.offer_cache.Snapshot.scrubbed``: an id signed up again
    must get nothing of the erased person's row). The "everything" row comes first: ``seq``
    is SQLite's rowid, which a new row takes one past the largest left, so written after the
    newest rows were deleted (they often name the customer: a purchase just before the
    erasure) it would reuse a ``seq`` a reader has read, and go unseen."""
    if connection.dialect.name == "sqlite":
        everything(connection)
    else:
        connection.execute(sa.select(sa.func.pg_notify(CHANNEL, EVERYTHING)))
    connection.execute(
        sa.delete(serving_changes).where(serving_changes.c.customer_id == customer_id)
    )


KEEP = 100_000  # rows of the SQLite change log its triggers keep (migration 0013)


def everything(connection: sa.Connection) -> None:
    """SQLite: tell every reader to drop everything (a row without a customer), trimming
    the log as migration 0013's triggers do after each row they add. For an erasure, and
    for a writer of more lines than a reader takes row by row (:data:`BEHIND`), with the
    purchases trigger suspended: readers conclude the same, from one row instead of one
    per line."""
    result = connection.execute(sa.insert(serving_changes).values(customer_id=None))
    newest = result.inserted_primary_key[0] if result.inserted_primary_key else None
    if newest is not None:
        old = serving_changes.c.seq == int(newest) - KEEP
        connection.execute(sa.delete(serving_changes).where(old))


class Gone(Exception):
    """Raised by a listener's callback whose receiver no longer exists: the listener stops."""


class ChangeLog:
    """SQLite's commit counter and change log, read on one thread's own raw connection."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pooled: PoolProxiedConnection | None = None  # held: never back to the pool
        self._cursor: sqlite3.Cursor | None = None

    def data_version(self) -> int:
        """``PRAGMA data_version``: changes whenever another connection commits. Read it
        *before* :meth:`since`, so that a commit in between is seen now or flagged next time."""
        return int(self._of().execute("PRAGMA data_version").fetchone()[0])

    def last(self) -> int:
        """The newest ``seq`` (0 for none): where a reader starts."""
        return int(self._of().execute("SELECT max(seq) FROM serving_changes").fetchone()[0] or 0)

    def since(self, seq: int) -> tuple[int, Changed]:
        """``(newest seq, customers changed after seq)``; None for everything: a model went
        live, more than :data:`BEHIND` rows came at once, or rows after ``seq`` were
        already trimmed (the reader fell behind the trigger's window)."""
        rows = (
            self._of()
            .execute(
                "SELECT seq, customer_id FROM serving_changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (seq, BEHIND + 1),
            )
            .fetchall()
        )
        if not rows:
            return seq, []
        ids = [str(customer) for _, customer in rows if customer is not None]
        if len(ids) < len(rows) or len(rows) > BEHIND or rows[0][0] != seq + 1:
            return self.last(), None
        return int(rows[-1][0]), ids

    def close(self) -> None:
        """Close the held connection: it never goes back to the pool, so the engine's
        ``dispose`` would leave it open (a ResourceWarning when collected). It is closed,
        not returned: it is in autocommit mode, unlike the pool's. A later read opens
        another."""
        pooled, self._pooled, self._cursor = self._pooled, None, None
        if pooled is not None:
            pooled.invalidate()  # closes the driver's connection and forgets it

    def _of(self) -> sqlite3.Cursor:
        if self._cursor is None:
            self._pooled = self.engine.raw_connection()
            raw = self._pooled.driver_connection
            assert isinstance(raw, sqlite3.Connection)
            raw.isolation_level = None  # autocommit: a read never holds a transaction
            self._cursor = raw.cursor()
        return self._cursor


class Listener:
    """A daemon thread that LISTENs for the triggers' notifications (PostgreSQL) and calls
    ``changed(ids)``; ``connected(True)`` after each (re)connection — the caller drops
    everything then, since notifications of the gap are lost — and ``connected(False)``
    when the connection is lost (the caller stops trusting its cache until reconnected). A
    callback raising :class:`Gone` stops it."""

    def __init__(
        self,
        engine: Engine,
        changed: Callable[[Changed], None],
        connected: Callable[[bool], None],
        retry_s: float = 1.0,
        poll_s: float = 0.5,
    ) -> None:
        self.engine, self.changed, self.connected = engine, changed, connected
        self.retry_s, self.poll_s = retry_s, poll_s
        self.backend_pid: int | None = None  # the listening session (tests end it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recocamp-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._listen()
                self._stop.wait(self.retry_s)
        except Gone:
            log.debug("serving notifications: nobody listens any more")

    def _listen(self) -> None:
        """One connection's life: report it, pass its notifications on, report its end."""
        raw: Any = None
        try:
            raw = self._connect()
            self.connected(True)
            while not self._stop.is_set():
                for note in raw.notifies(timeout=self.poll_s):
                    payload = str(note.payload)
                    self.changed(None if payload == EVERYTHING else payload.split("\n"))
        except (psycopg.Error, OSError) as exc:
            log.warning("serving notifications: connection lost (%s); reconnecting", exc)
        except Gone:
            raise
        except Exception:  # never die: a process without a listener serves no cache
            log.exception("serving notifications: listener failed; restarting it")
        finally:
            self.backend_pid = None
            if raw is not None:
                _close(raw)
        self.connected(False)

    def _connect(self) -> Any:
        """A connection of its own (detached from the pool), autocommit, listening."""
        pooled = self.engine.raw_connection()
        raw = pooled.driver_connection
        pooled.detach()
        if not isinstance(raw, psycopg.Connection):
            raise TypeError(f"LISTEN needs psycopg 3, not {type(raw).__name__}")
        try:
            raw.rollback()
            raw.autocommit = True
            raw.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            _close(raw)
            raise
        self.backend_pid = int(raw.info.backend_pid)
        return raw


def _close(raw: Any) -> None:
    with contextlib.suppress(psycopg.Error):
        raw.close()


def end_session(engine: Engine, backend_pid: int) -> bool:
    """End another database session (``pg_terminate_backend``): how the tests cut a
    listener's connection."""
    with engine.connect() as connection:
        ended = connection.exec_driver_sql(f"SELECT pg_terminate_backend({int(backend_pid)})")
        return bool(ended.scalar())
