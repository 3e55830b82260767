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
  is not connected are lost, so every (re)connection reports "everything". A connection that
  goes silent without an error (a NAT or firewall dropping the idle flow, a failover behind a
  proxy that keeps the client's side open) is found out: after :data:`CHECK_S` without a
  notification the listener has another session notify a channel of its own, and a
  connection that does not pass that on within :data:`CHECK_S` is taken for lost.

Callers get a list of customer ids, or None for "everything".
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from secrets import token_hex
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.pool import PoolProxiedConnection

from recocamp.store.engine import Engine
from recocamp.store.schema import serving_changes

log = logging.getLogger(__name__)
CHANNEL = "recocamp_serving"
EVERYTHING = "*"
# a listening connection that passed nothing on for this long is asked to prove it is alive,
# and taken for lost when the proof does not come within as long again
CHECK_S = 10.0
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


class Silent(Exception):
    """A listening connection that stopped passing anything on, without an error."""


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
    callback raising :class:`Gone` stops it.

    Lost includes silent: a connection whose flow a NAT or a firewall dropped, or whose
    server failed over behind a proxy, raises nothing and delivers nothing, and the caller
    served its cache as fresh for ever. After ``check_s`` without a notification another
    session notifies :attr:`alive_channel`, which only this connection listens to; when
    that does not arrive within ``check_s`` the connection is closed and a new one made
    (both on connections of their own, never the pool's: an idle pooled connection may be
    just as dead, and a statement on it would wait for TCP to give up, ~15 minutes).

    ``wanted`` is asked at every poll: once it says no (the receiver is gone, never closed),
    the listener stops, rather than check its connection every ``check_s`` for nobody until
    a notification or a lost connection came to say so."""

    def __init__(
        self,
        engine: Engine,
        changed: Callable[[Changed], None],
        connected: Callable[[bool], None],
        retry_s: float = 1.0,
        poll_s: float = 0.5,
        check_s: float = CHECK_S,
        wanted: Callable[[], bool] = lambda: True,
    ) -> None:
        self.engine, self.changed, self.connected = engine, changed, connected
        self.wanted = wanted
        self.retry_s, self.poll_s, self.check_s = retry_s, poll_s, check_s
        self.alive_channel = f"{CHANNEL}_alive_{token_hex(8)}"
        self.backend_pid: int | None = None  # the listening session (tests end it)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="recocamp-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether its thread still listens (or tries to)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            while not self._stop.is_set() and self.wanted():
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
            heard, asked = time.monotonic(), None
            while not self._stop.is_set():
                if not self.wanted():
                    raise Gone
                for note in raw.notifies(timeout=self.poll_s):
                    heard, asked = time.monotonic(), None  # the connection passes things on
                    if note.channel != self.alive_channel:
                        payload = str(note.payload)
                        self.changed(None if payload == EVERYTHING else payload.split("\n"))
                asked = self._check(heard, asked)
        except Silent as exc:
            log.warning("serving notifications: %s; reconnecting", exc)
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

    def _check(self, heard: float, asked: float | None) -> float | None:
        """When the connection last had to prove it is alive (None: it need not now): after
        ``check_s`` without a notification, ask; raise :class:`Silent` when the answer has
        not come ``check_s`` after asking."""
        now = time.monotonic()
        if asked is not None:
            if now - asked > self.check_s:
                raise Silent(
                    f"the connection passed nothing on for {now - heard:.0f} s, not even a "
                    f"notification sent to it {now - asked:.0f} s ago"
                )
            return asked
        if now - heard < self.check_s:
            return None
        try:
            with contextlib.closing(self._own_connection()) as other:
                other.execute("SELECT pg_notify(%s, '')", (self.alive_channel,))
        except (psycopg.Error, OSError) as exc:  # no answer comes, and the deadline decides
            log.warning("serving notifications: could not check the connection (%s)", exc)
        return now

    def _own_connection(self) -> Any:
        """A new autocommit connection, not the pool's (see the class docstring), that gives
        up connecting after ``check_s``."""
        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        cparams.setdefault("connect_timeout", max(2, int(self.check_s)))
        raw = self.engine.dialect.connect(*cargs, **cparams)
        try:
            if not isinstance(raw, psycopg.Connection):
                raise TypeError(f"LISTEN needs psycopg 3, not {type(raw).__name__}")
            raw.autocommit = True
        except BaseException:  # closed here, not left to the garbage collector (a warning)
            _close(raw)
            raise
        return raw

    def _connect(self) -> Any:
        """A connection of its own, autocommit, listening to the changes and to its own
        :attr:`alive_channel`."""
        raw = self._own_connection()
        try:
            raw.execute(f"LISTEN {CHANNEL}")
            raw.execute(f"LISTEN {self.alive_channel}")
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
