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
  worker is always the leader; per-job locks are the scheduler's ``max_instances=1``. A lock
  file deleted while the worker runs is locked again on its next poll (or, if a second
  worker got it first, the first one stops leading): never two leaders on one file.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Protocol

from recocamp.errors import StoreError
from recocamp.store import leadership as store
from recocamp.store.engine import Connection, Engine
from recocamp.store.leadership import DBAPIError
from recocamp.store.locks import lock_key

log = logging.getLogger(__name__)


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

    def resign(self) -> None:
        """Stop leading but stay registered as a worker."""
        ...

    def release(self) -> None: ...

    def gone(self) -> str | None:
        """Why this worker cannot go on (its SQLite database file deleted or replaced under
        it), or None."""
        ...

    @contextmanager
    def job_lock(self, job: str) -> Iterator[bool]:
        """Yields False when another worker is running ``job`` right now."""
        yield True  # pragma: no cover - protocol


def for_engine(engine: Engine) -> Leadership:
    if store.is_postgresql(engine):
        return AdvisoryLockLeadership(engine)
    return SoleWorker(engine)


class _JobLocks:
    """A job runs once at a time: in this process (a set of running jobs) and, where the
    subclass says so, across processes (``_lock_job`` / ``_unlock_job``)."""

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.running: set[str] = set()

    @contextmanager
    def job_lock(self, job: str) -> Iterator[bool]:
        with self.mutex:
            got = job not in self.running and self._lock_job(job)
            if got:
                self.running.add(job)
        try:
            yield got
        finally:
            if got:
                with self.mutex:
                    self.running.discard(job)
                    self._unlock_job(job)

    def _lock_job(self, job: str) -> bool:
        return True

    def _unlock_job(self, job: str) -> None:
        pass


class AdvisoryLockLeadership(_JobLocks):
    """PostgreSQL: leadership is a session advisory lock on a dedicated connection."""

    KEY = lock_key("scheduler-leader")

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self.engine = engine
        self.connection: Connection | None = None
        self.job_connection: Connection | None = None

    def register(self) -> None:
        """Any number of workers may run on PostgreSQL."""

    def gone(self) -> str | None:
        return None  # a lost connection is ``held``'s business

    def try_acquire(self) -> bool:
        if self.connection is not None:
            return self.held()
        self._keep_job_locks()
        connection = self.engine.connect()
        try:
            store.keep_alive(connection)  # a dead leader's host frees the lock in ~25 s
            got = store.try_lock(connection, self.KEY)
        except DBAPIError:
            connection.close()
            raise
        if got:
            self.connection = connection
        else:
            connection.close()
        return got

    def held(self) -> bool:
        self._keep_job_locks()
        if self.connection is None:
            return False
        try:
            store.ping(self.connection)
        except DBAPIError:
            log.error("lost the connection that holds the scheduler lock: no longer leader")
            self._drop()
            return False
        return True

    def _keep_job_locks(self) -> None:
        """Take the running jobs' locks again when their connection is gone (asked every
        poll). It sits idle while a training or an import runs for hours, and a server's
        ``idle_session_timeout``, a restart or a cut connection ended it with the locks, the
        job running on: a worker that led next could start the same job beside it. Taken
        again at once, they keep it out; one taken meanwhile is said (the two runs overlap)."""
        with self.mutex:
            if not self.running:
                return
            if self.job_connection is not None:
                try:
                    store.ping(self.job_connection)
                    return
                except DBAPIError:
                    self.job_connection.invalidate()
                    self.job_connection = None
            log.error("lost the connection that holds the running jobs' locks: taking them again")
            try:
                for job in sorted(self.running):
                    if not self._lock_job(job):
                        log.error("job %s runs here and, its lock lost meanwhile, elsewhere", job)
            except DBAPIError:  # the database is away: tried again at the next poll
                log.warning("could not take the running jobs' locks again: next poll")

    def resign(self) -> None:
        self._unlock()

    def release(self) -> None:
        if self.job_connection is not None:
            self.job_connection.close()
            self.job_connection = None
        self._unlock()

    def _unlock(self) -> None:
        if self.connection is None:
            return
        with suppress(DBAPIError):  # the connection is gone, and the lock with it
            store.unlock(self.connection, self.KEY)
        self._drop()

    def _drop(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            store.discard(connection)

    def _lock_job(self, job: str) -> bool:
        """Per-job advisory locks, all on one connection of their own (a connection per
        running job could empty the pool); session locks are re-entrant, hence also the
        in-process set of :class:`_JobLocks`."""
        return self._on_job_connection(store.try_lock, lock_key(f"job:{job}"))

    def _unlock_job(self, job: str) -> None:
        self._on_job_connection(store.unlock, lock_key(f"job:{job}"))

    def _on_job_connection(self, statement: Callable[[Connection, int], bool], key: int) -> bool:
        try:
            if self.job_connection is None:
                self.job_connection = self.engine.connect()
                store.keep_alive(self.job_connection)
            return statement(self.job_connection, key)
        except DBAPIError:  # the connection (and its locks) is gone: a new one next time
            connection, self.job_connection = self.job_connection, None
            if connection is not None:
                connection.invalidate()
            raise


class SoleWorker(_JobLocks):
    """SQLite: one worker per database file, enforced by an exclusive file lock; a job runs
    once at a time in this process (a resumed run and its scheduled next run never overlap)."""

    def __init__(self, engine: Engine) -> None:
        database = store.sqlite_file(engine)
        self.database = Path(database) if database is not None else None
        # beside the file the path leads to: named after the path as written, a second worker
        # reaching the file through a symbolic link locked a file of its own and led as well
        self.path = (
            Path(f"{self.database.resolve()}.worker-lock") if self.database is not None else None
        )
        self.handle: IO[str] | None = None
        self.identity: tuple[int, int] | None = None  # the database file's, at register
        super().__init__()

    def register(self) -> None:
        holder = self._take()
        if holder is None and self.database is not None:
            self.identity = _identity(self.database)
        if holder is not None:
            raise StoreError(
                f"another recocamp worker ({holder}) is running on the SQLite database "
                f"{self.path.with_suffix('') if self.path else ''}: SQLite supports one "
                'worker. Stop it first, or use PostgreSQL (database_url = "postgresql://…") '
                "for several workers"
            )

    def try_acquire(self) -> bool:
        return self._take() is None

    def held(self) -> bool:
        """Whether the file at the path is still the one this worker locked. An operator
        may delete it (it looks like a stale pid file) while the worker runs, and a second
        worker would lock a new one: it is taken again at once (a second worker is refused
        as before), or, when another worker got it first, this one no longer leads."""
        return self._take() is None

    def _take(self) -> str | None:
        """Lock the file; None while this worker holds it, else who does. The lock, not the
        file, says who runs: a file left by a dead process (its pid in it) is locked by
        nobody and taken over. The holder removes the file on release, so a worker that
        opened it just before may lock a file that no longer has a name: it checks that its
        locked file is still the one at the path."""
        if self.path is None:
            return None
        if self.handle is not None:
            if _same_file(self.handle, self.path):
                return None
            log.error("worker lock file %s removed or replaced: locking it again", self.path)
            self._close()
        while True:
            handle = self.path.open("a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                handle.close()
                return holder
            if _same_file(handle, self.path):
                break
            handle.close()  # released and removed meanwhile: lock the new one
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        self.handle = handle
        return None

    def gone(self) -> str | None:
        """An operator who deletes the database file (or moves a backup over it) while the
        worker runs: its open connections keep writing into the old file, which nobody reads
        any more (an import would delete the dropped files it put there, mail would be
        recorded sent there alone), so the worker must stop."""
        if self.identity is None or self.database is None:
            return None
        now = _identity(self.database)
        if now == self.identity:
            return None
        how = "deleted" if now is None else "replaced"
        return (
            f"the SQLite database {self.database} was {how} while the worker ran: stopping "
            "(its connections would go on writing into the old file)"
        )

    def resign(self) -> None:
        """The only worker of a SQLite file keeps its lock: nobody else could lead."""

    def release(self) -> None:
        """Unlock and remove the lock file (removed while still locked: see ``_take``), if
        it is still this worker's: one another worker made meanwhile stays."""
        if self.handle is not None:
            if self.path is not None and _same_file(self.handle, self.path):
                self.path.unlink(missing_ok=True)
            self._close()

    def _close(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _same_file(handle: IO[str], path: Path) -> bool:
    try:
        named = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(handle.fileno())
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)
