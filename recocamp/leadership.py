"""Who schedules: exactly one worker at a time, and the locks that keep jobs from overlapping.

- **PostgreSQL** (several workers): the scheduling leader holds a session-level advisory lock
  (``pg_try_advisory_lock``) on a connection of its own. The lock goes with the connection:
  a worker that dies (even by SIGKILL) loses it at once, and a follower asking every
  ``[worker] leader_poll_s`` takes over. The leader checks its connection on every poll
  and stops scheduling the moment it is gone, so two leaders cannot overlap for longer
  than one poll — and campaign runs are idempotent anyway (send keys).
  A job also takes a per-job advisory lock while it runs: a run that is still going on an
  old leader makes the same job on the new leader skip, never run twice.
- **SQLite** (the embedded default) supports one worker: it takes an exclusive ``flock`` on
  ``<database>.worker-lock`` and a second worker is refused with a clear message. That
  worker is always the leader; per-job locks are the scheduler's ``max_instances=1``.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Protocol

import sqlalchemy as sa

from recocamp.errors import StoreError

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name."""
    digest = hashlib.sha256(f"recocamp:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class Leadership(Protocol):
    def register(self) -> None:
        """Claim a place as a worker; refuses a second SQLite worker (``StoreError``)."""
        ...

    def try_acquire(self) -> bool:
        """Become the leader if nobody is; True while this worker leads."""
        ...

    def held(self) -> bool:
        """Is the leadership still ours (the lock's connection alive)?"""
        ...

    def release(self) -> None: ...

    @contextmanager
    def job_lock(self, job: str) -> Iterator[bool]:
        """Yields False when another worker is running ``job`` right now."""
        yield True  # pragma: no cover - protocol


def for_engine(engine: sa.Engine) -> Leadership:
    if engine.dialect.name == "postgresql":
        return AdvisoryLockLeadership(engine)
    return SoleWorker(engine)


class AdvisoryLockLeadership:
    """PostgreSQL: leadership is a session advisory lock on a dedicated connection."""

    KEY = lock_key("scheduler-leader")

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.connection: sa.Connection | None = None

    def register(self) -> None:
        """Any number of workers may run on PostgreSQL."""

    def try_acquire(self) -> bool:
        if self.connection is not None:
            return self.held()
        connection = self.engine.connect()
        try:
            got = bool(connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"),
                                          {"key": self.KEY}).scalar_one())  # fmt: skip
            connection.commit()
        except sa.exc.DBAPIError:
            connection.close()
            raise
        if got:
            self.connection = connection
        else:
            connection.close()
        return got

    def held(self) -> bool:
        if self.connection is None:
            return False
        try:
            self.connection.execute(sa.text("SELECT 1"))
            self.connection.commit()
        except sa.exc.DBAPIError:
            log.error("lost the connection that holds the scheduler lock: no longer leader")
            self._drop()
            return False
        return True

    def release(self) -> None:
        if self.connection is None:
            return
        try:
            self.connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": self.KEY})
            self.connection.commit()
        except sa.exc.DBAPIError:
            pass  # the connection is gone, and the lock with it
        self._drop()

    def _drop(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            try:
                connection.invalidate()
                connection.close()
            except sa.exc.DBAPIError:  # pragma: no cover - already broken
                pass

    @contextmanager
    def job_lock(self, job: str) -> Iterator[bool]:
        key = lock_key(f"job:{job}")
        with self.engine.connect() as connection:
            got = bool(connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"),
                                          {"key": key}).scalar_one())  # fmt: skip
            connection.commit()
            try:
                yield got
            finally:
                if got:
                    connection.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()


class SoleWorker:
    """SQLite: one worker per database file, enforced by an exclusive file lock."""

    def __init__(self, engine: sa.Engine) -> None:
        database = engine.url.database
        self.path = Path(f"{database}.worker-lock") if database and database != ":memory:" else None
        self.handle: IO[str] | None = None

    def register(self) -> None:
        self.try_acquire()

    def try_acquire(self) -> bool:
        if self.handle is not None or self.path is None:
            return True
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise StoreError(
                f"another recocamp worker ({holder}) is running on the SQLite database "
                f"{self.path.with_suffix('')}: SQLite supports one worker. Stop it first, "
                'or use PostgreSQL (database_url = "postgresql://…") for several workers'
            ) from None
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self.handle = handle
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    @contextmanager
    def job_lock(self, job: str) -> Iterator[bool]:
        yield True
