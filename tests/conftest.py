"""Shared fixtures: real databases (SQLite files and, when available, PostgreSQL) and small
slices of the real UCI data cut at test time (the project never stores copies of it)."""

from __future__ import annotations

import csv
import gzip
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

from recocamp.store.engine import make_engine, upgrade

if TYPE_CHECKING:  # imported where used: tests.api_shop imports this module
    from fastapi import FastAPI
    from typer.testing import CliRunner

    from recocamp.store.notifications import Listener
    from tests.api_shop import Closing, Template

ROOT = Path(__file__).resolve().parents[1]
UCI = ROOT.parent / "shared" / "data" / "online-retail" / "online_retail.csv.gz"
POSTGRES_URL = os.environ.get("RECOCAMP_TEST_POSTGRES_URL")
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _no_recocamp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's RECOCAMP_* settings (the test DB URL is ours)."""
    for name in list(os.environ):
        if name.startswith("RECOCAMP_") and name != "RECOCAMP_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _signal_handlers_put_back() -> Iterator[None]:
    """A command run in-process (``worker`` through the CLI runner) installs the worker's
    SIGINT/SIGTERM/SIGHUP handlers for good; a later test's Ctrl-C then only noted a signal
    for a worker long gone (CI: "DID NOT RAISE KeyboardInterrupt"). Put back after each
    test."""
    kept = {each: signal.getsignal(each) for each in SIGNALS}
    yield
    for each, handler in kept.items():
        if handler is not None:
            signal.signal(each, handler)


SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file, or a fresh PostgreSQL database (dropped
    after the test, which must have closed every connection to it: see :func:`drop`)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'recocamp.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("PostgreSQL: set RECOCAMP_TEST_POSTGRES_URL (bash .ci/run does)")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    passed = passing(request)
    try:
        yield url
    finally:
        drop(admin, name, passed())
        admin.dispose()


def passing(request: pytest.FixtureRequest) -> Callable[[], bool]:
    """Whether the test has not failed (so far): a failed test's clean-up did not run."""
    failed = request.session.testsfailed
    return lambda: request.session.testsfailed == failed


LEFT_WAIT_S = 5.0  # a closed session's server process takes a moment to leave pg_stat_activity


def drop(admin: sa.Engine, name: str, check: bool = True) -> None:
    """Drop a test's PostgreSQL database; first, unless the test failed (``check``), fail
    when a connection to it is still open. ``WITH (FORCE)`` ends such a session quietly, but
    its psycopg connection lives on in the test's engine, app or worker until the garbage
    collector takes it, in whichever later test a collection happens to run, and psycopg's
    "connection deleted while still open" warning then failed that test (CI, in tests that
    had nothing to do with PostgreSQL). Here the test that left it open fails, naming it."""
    stop_listeners()  # an app's listener, stopped before its database goes (see below)
    left = sessions_on(admin, name) if check else []
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    assert not left, (
        f"the test left {len(left)} connection(s) open to its database {name} "
        f"({', '.join(left)}): dispose of its engines, close its apps (``closing``) and "
        "release its workers' locks (``Worker.shutdown``)"
    )


def sessions_on(admin: sa.Engine, name: str) -> list[str]:
    """The sessions still connected to database ``name`` (each as ``pid: query``; not the
    asking one of ``admin``), after waiting :data:`LEFT_WAIT_S` for those closed just now
    to go."""
    deadline = time.monotonic() + LEFT_WAIT_S
    query = sa.text(
        "SELECT pid, left(query, 60) FROM pg_stat_activity "
        "WHERE datname = :name AND pid <> pg_backend_pid()"
    )
    while True:
        with admin.connect() as connection:
            left = [f"{pid}: {sql}" for pid, sql in connection.execute(query, {"name": name})]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    """A migrated, empty store on each backend."""
    engine = make_engine(db_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def impatient(engine: sa.Engine) -> sa.Engine:
    """A second engine on the same SQLite file that waits 0.1 s for a lock, not 10 s: a
    writer that must wait for another connection's lock fails fast ("database is locked")."""
    other = make_engine(engine.url.render_as_string(hide_password=False))
    sa.event.listen(other, "connect", lambda raw, _: raw.execute("PRAGMA busy_timeout=100"))
    return other


def uci_rows(
    predicate: Callable[[list[str]], bool] | None = None,
) -> tuple[list[str], list[list[str]]]:
    if not UCI.exists():
        pytest.skip(f"the UCI file is absent ({UCI})")
    with gzip.open(UCI, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [row for row in reader if predicate is None or predicate(row)]
    return header, rows


SLICE_CUSTOMERS = {"17850", "13047", "12583", "14688", "15311", "16029", "12748"}


def _in_slice(row: list[str]) -> bool:
    """Seven real customers (with returns and postage lines) and the guests of the first
    three days, over the file's first three weeks: a few thousand rows with every kind of line."""
    if row[6] == "":
        return row[4] < "2010-12-04"
    return row[4] < "2010-12-22" and row[6] in SLICE_CUSTOMERS


@pytest.fixture(scope="session")
def uci_slice_rows() -> tuple[list[str], list[list[str]]]:
    return uci_rows(_in_slice)


@pytest.fixture
def uci_slice(tmp_path: Path, uci_slice_rows: tuple[list[str], list[list[str]]]) -> Path:
    """The slice as a gzip CSV in the original format."""
    header, rows = uci_slice_rows
    path = tmp_path / "slice.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def cli_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A ``CliRunner`` in ``tmp_path`` with a migrated SQLite store (``shop.db``) named by
    the ``settings.toml`` there: the CLI as a user runs it."""
    from typer.testing import CliRunner

    from recocamp.cli import app as cli_app

    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.toml").write_text('database_url = "sqlite:///shop.db"\n')
    runner = CliRunner()
    assert runner.invoke(cli_app, ["db", "upgrade"]).exit_code == 0
    return runner


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


LISTENERS: list[Listener] = []  # the change listeners started in this test


@pytest.fixture(autouse=True)
def listeners_stopped(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every PostgreSQL change listener a test started is stopped after it. An app a test
    did not close left its listener reconnecting, once a second, to the test's dropped
    database until the garbage collector took the app; a connection half made in one of
    those tries was collected unclosed later, in another test, whose run then failed on
    psycopg's "deleted while still open" warning (CI, once, in a test without PostgreSQL).
    A test's database is dropped before this fixture ends (it is set up first): :func:`drop`
    stops them before that."""
    from recocamp.store import notifications

    start = notifications.Listener.start

    def recorded(listener: notifications.Listener) -> None:
        LISTENERS.append(listener)
        start(listener)

    monkeypatch.setattr(notifications.Listener, "start", recorded)
    yield
    stop_listeners()


def stop_listeners() -> None:
    """Stop the change listeners started so far (each closes its connection as it ends)."""
    while LISTENERS:
        LISTENERS.pop().stop()


# -- a trained shop for the API tests (tests/api_shop.py builds it) -------------------------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def template(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Template]:
    """One trained shop per backend and test module (``api_shop.Template``)."""
    from tests.api_shop import build_template

    yield from build_template(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture
def shop(
    template: Template, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[sa.Engine, Path]]:
    """A copy of the trained shop for one test: (engine, model artifacts)."""
    from tests.api_shop import clone

    yield from clone(template, tmp_path, passing(request))


@pytest.fixture
def app(shop: tuple[sa.Engine, Path]) -> Iterator[FastAPI]:
    """The shop API (``fastapi.FastAPI``) on that copy (its change listener stopped after)."""
    from tests.api_shop import make_app

    app = make_app(*shop)
    yield app
    app.state.service.close()


@pytest.fixture
def closing(request: pytest.FixtureRequest) -> Iterator[Closing]:
    """Close the apps a test builds (``closing(make_app(…))``): on PostgreSQL their change
    listeners would otherwise keep reconnecting to the test's dropped database. The test's
    database is set up first, whatever the order of the test's arguments, so that it is
    dropped after the apps are closed (fixtures are torn down in reverse order)."""
    if "db_url" in request.fixturenames:
        request.getfixturevalue("db_url")
    apps: list[FastAPI] = []

    def closed_after(app: FastAPI) -> FastAPI:
        apps.append(app)
        return app

    yield closed_after
    for app in apps:
        app.state.service.close()
