"""Engines and migrations: SQLite (WAL) embedded, PostgreSQL (psycopg 3) in production.

``postgresql://`` URLs are rewritten to the psycopg 3 driver so users can paste the URL
their provider gives them. Migrations are Alembic's, shipped inside the package and run
programmatically, so ``recocamp db upgrade`` needs no ``alembic.ini`` in the working dir.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import Connection as Connection  # re-exported: the types other packages hold
from sqlalchemy import Engine as Engine
from sqlalchemy.exc import OperationalError as OperationalError  # re-exported: refused at run time
from sqlalchemy.exc import SQLAlchemyError as SQLAlchemyError  # re-exported: any store failure

from recocamp.errors import StoreError

PoolTimeout = sa.exc.TimeoutError  # re-exported: no pooled connection was free in time

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).with_name("migrations")
# The page size of a SQLite file made from now on (one made before keeps its own; ``VACUUM``
# would change it). A change of a row writes its whole page to the write-ahead log, and an
# outbox row (~2.2 kB with its body) filled a 4 kB page alone: claiming and recording a
# batch of 500 e-mails wrote 1,000 pages, 42 µs of CPU per e-mail on ``benchmarks/send.py``'s
# rows; 8 kB pages hold three (27 µs), and the file is a third smaller.
SQLITE_PAGE_SIZE = 8192
BUSY_TIMEOUT_S = 10  # a SQLite writer waits this long for another's write lock, then fails


def normalise_url(url: str) -> str:
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str) -> sa.Engine:
    """An engine with the per-backend settings recocamp relies on."""
    url = normalise_url(url)
    try:
        shown = sa.make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):
        shown = "<unparseable URL>"
    try:
        # hide_parameters: a failed statement's error (logged, kept in runs.error) must not
        # carry its parameters, which can be e-mail addresses or whole e-mails
        engine = sa.create_engine(
            url, future=True, hide_parameters=True, connect_args=_keepalives(url)
        )
    except (sa.exc.ArgumentError, ImportError, ValueError) as exc:
        reason = str(exc).replace(url, shown)
        raise StoreError(f"database_url {shown!r} is not usable: {reason}") from None
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return engine


# libpq's TCP keepalives for every PostgreSQL connection (the URL's own win): probes after
# 10 s idle, every 5 s, 3 unanswered. A connection whose peer vanished without a word (a NAT
# or firewall dropping an idle flow, a failover behind a proxy, a host gone) otherwise
# looked alive for the system's 2 hours: above all the serving listener, idle in LISTEN,
# which missed every purchase's notification meanwhile and served answers from before it.
PG_KEEPALIVES = {
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
}


def _keepalives(url: str) -> dict[str, Any]:
    """The keepalive parameters a PostgreSQL URL does not set itself; none for SQLite."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        return {}  # create_engine says why, naming the URL
    if parsed.get_backend_name() != "postgresql":
        return {}
    return {key: value for key, value in PG_KEEPALIVES.items() if key not in parsed.query}


def exists(url: str) -> bool:
    """Whether there is a database to read without making one: a SQLite file that exists
    (connecting would create it; an in-memory one is always empty); a server's database is
    assumed to, and a failed connection says otherwise."""
    try:
        parsed = sa.make_url(normalise_url(url))
    except (sa.exc.ArgumentError, ValueError):
        return False
    if parsed.get_backend_name() != "sqlite":
        return True
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return False
    return Path(database).is_file()


def missing_file(url: str) -> Path | None:
    """The SQLite file ``url`` names when there is none yet (connecting would create it,
    empty), else None: for a server, an in-memory database, a ``file:`` URI (its options
    may say not to create it) or a URL that is no URL (:func:`make_engine` says why)."""
    try:
        parsed = sa.make_url(normalise_url(url))
    except (sa.exc.ArgumentError, ValueError):
        return None
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:") or Path(database).exists():
        return None
    return Path(database)


def ping(engine: sa.Engine) -> None:
    """Raise :class:`SQLAlchemyError` unless the database answers (``SELECT 1``)."""
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))


@contextmanager
def snapshot(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection whose reads all see one state of the database, for a check and the reads
    it allows (a link's ``void_link`` and the data shown to its holder): a commit landing
    between two of its statements is seen by none of them. PostgreSQL: a REPEATABLE READ
    transaction. SQLite: the sqlite3 driver opens no transaction for a SELECT, so each read
    would see the latest commit; a deferred ``BEGIN`` holds the first read's snapshot (WAL:
    writers are not blocked) until the connection closes. For reading: nothing is committed."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="REPEATABLE READ") as connection:
            yield connection
        return
    with engine.connect() as connection:
        raw = connection.connection.dbapi_connection
        if engine.dialect.name == "sqlite" and raw is not None and not raw.in_transaction:
            connection.exec_driver_sql("BEGIN")
        yield connection


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # a new file's; before WAL fixes it
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable with WAL, much faster than FULL
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
    cursor.close()


# alembic (with mako and pygments, 0.1 s) is imported when a migration is looked at: a
# delivering process, which imports the store and nothing else, never does


def alembic_config(engine: sa.Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: sa.Engine, revision: str = "head") -> str | None:
    """Create or migrate the schema; returns the revision the database is now at."""
    from alembic import command

    _refuse_newer(current_revision(engine))  # one that cannot be opened: said in one line
    command.upgrade(alembic_config(engine), revision)
    return current_revision(engine)


def current_revision(engine: sa.Engine) -> str | None:
    """The schema revision; a database that cannot be opened or read (a server away, a
    file that is not SQLite) is a :class:`StoreError` saying why, not a driver traceback."""
    from alembic.runtime.migration import MigrationContext

    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except sa.exc.DBAPIError as exc:
        where = _unopenable(engine)
        raise Unopenable(f"cannot open the database: {where or exc.orig}", exc) from None


class Unopenable(StoreError):
    """:func:`current_revision`'s database that cannot be opened. Its message quotes the
    driver, which on PostgreSQL names the server's host, port, user and database: fine for
    the operator's command line, not for an answer anyone may ask for (``/readyz``), which
    says :attr:`kind` alone."""

    def __init__(self, message: str, exc: sa.exc.DBAPIError) -> None:
        super().__init__(message)
        self.kind = driver_kind(exc)


def driver_kind(exc: BaseException) -> str:
    """What a store error is without its text (which may name the server's host, port and
    user, or quote a statement's parameters): the driver's error class and, where it gives
    one, the SQLSTATE (PostgreSQL's ``28P01``: a password refused; ``3D000``: no such
    database)."""
    orig = getattr(exc, "orig", None) or exc
    state = getattr(orig, "sqlstate", None)
    return type(orig).__name__ + (f", SQLSTATE {state}" if isinstance(state, str) else "")


def _unopenable(engine: sa.Engine) -> str | None:
    """Why a SQLite file cannot be opened, where sqlite3 only says "unable to open database
    file" and names no path: ``database_url`` names a folder, or a file in a missing one."""
    database = (engine.url.database or "") if engine.dialect.name == "sqlite" else ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    path = Path(database)
    if path.is_dir():
        return f"database_url names {path}, a folder: name a file (in it)"
    if not path.parent.is_dir():
        return f"database_url names {path}, in a folder that does not exist ({path.parent})"
    return None


def refusal(exc: sa.exc.OperationalError, engine: sa.Engine | None) -> str:
    """One line for a statement the database refused at run time (not a bug of ours): another
    process held SQLite's write lock past the busy timeout (a second command, the worker, a
    long import), a read-only file or folder, a full disk, a server gone. Whatever the
    command had not committed was rolled back; what it committed before stays."""
    reason = str(exc.orig).strip() or type(exc.orig).__name__
    where = "" if engine is None else f" ({engine.url.render_as_string(hide_password=True)})"
    if engine is not None and engine.dialect.name == "sqlite" and "locked" in reason:
        return (
            f"the database is busy{where}: another command or the worker held its write "
            f"lock for more than {BUSY_TIMEOUT_S} s; this command's unfinished step was "
            "rolled back: run it again when the other one is done"
        )
    return f"the database refused the command{where}: {reason}"


def head_revision() -> str | None:
    head: str | None = _scripts().get_current_head()
    return head


@functools.cache  # the migrations shipped with this package: read once (25 ms) per process
def _scripts() -> Any:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config(sa.create_engine("sqlite://")))


def _refuse_newer(current: str | None) -> None:
    """A revision this recocamp has no migration of: a newer version migrated the database
    (a deploy rolled back, an older install elsewhere). Told to run ``db upgrade``, which
    then died on alembic's "Can't locate revision" with a traceback; this version would
    misread that schema, so it refuses, and says which version to run."""
    from alembic.util import CommandError

    if current is None:
        return
    try:
        _scripts().get_revision(current)
    except CommandError:
        raise StoreError(
            f"the database is at schema revision {current}, which this recocamp (newest "
            f"{head_revision()}) does not know: a newer recocamp migrated it; run that "
            "version, or restore a backup made before it migrated"
        ) from None


def require_current(engine: sa.Engine) -> None:
    """Refuse to work on a database that is missing migrations (clear message, no traceback)."""
    current = current_revision(engine)
    _refuse_newer(current)
    if current != head_revision():
        raise StoreError(
            f"the database is at schema revision {current or 'none'}, this recocamp needs "
            f"{head_revision()}: run `recocamp db upgrade`"
        )


def driver_params(compiled: sa.Compiled, bind: dict[str, Any] | None = None) -> Any:
    """A compiled statement's parameters as its driver takes them (a list for positional
    drivers such as sqlite3, else a mapping), for reads that skip SQLAlchemy's per-row work."""
    values = compiled.construct_params(bind) or {}
    names = getattr(compiled, "positiontup", None)
    return [values[name] for name in names] if names else values


def driver_rows(
    connection: sa.Connection, compiled: sa.Compiled, bind: dict[str, Any]
) -> list[Any]:
    """The plain driver tuples of a compiled statement (a wholesale customer's thousands of
    lines cost several times more through SQLAlchemy's result rows)."""
    with driver_cursor(connection) as cursor:
        cursor.execute(str(compiled), driver_params(compiled, bind))
        return list(cursor.fetchall())


@contextmanager
def driver_cursor(connection: sa.Connection, name: str | None = None) -> Iterator[Any]:
    """A cursor of the driver's own on the connection's transaction, closed after the block:
    for reads of many rows that skip SQLAlchemy's per-row work. ``name``: PostgreSQL's
    server-side cursor, which streams rather than fetching the whole result at once."""
    raw = connection.connection.dbapi_connection
    assert raw is not None
    cursor = raw.cursor() if name is None else raw.cursor(name=name)
    try:
        yield cursor
    finally:
        cursor.close()
