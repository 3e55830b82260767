"""Migration 0013's triggers name the customers a commit touches, whoever writes: SQLite's
change log (read after the last seen row) and PostgreSQL's notifications (delivered on
commit). Changes that touch no answer name nobody."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from recocamp.domain import Purchase
from recocamp.store import notifications, queries
from recocamp.store.engine import make_engine
from recocamp.store.schema import customers, models, serving_changes
from tests.conftest import NOW


def purchase(order: str, customer: str | None) -> Purchase:
    return Purchase(order, 1, customer, "i1", 1, 2.5, NOW - timedelta(days=1))


def model_row(version: str, status: str) -> dict[str, Any]:
    return {
        "version": version,
        "name": "item_knn",
        "trained_at": NOW,
        "data_cutoff": NOW,
        "fingerprint": "f",
        "params": {},
        "metrics": {},
        "path": "/nowhere",
        "popular": [],
        "status": status,
    }


def changes(engine: sa.Engine) -> list[Callable[[sa.Connection], None]]:
    """Writes, each with what it should name (see the tests)."""
    return [
        lambda c: queries.insert_purchases(c, [purchase("o1", "c1"), purchase("o2", None)], None),
        lambda c: c.execute(
            sa.insert(customers).values(id="c2", objected_to_profiling=False, updated_at=NOW)
        ),
        lambda c: c.execute(  # no answer depends on a first name
            sa.update(customers).where(customers.c.id == "c2").values(first_name="Ann")
        ),
        lambda c: c.execute(
            sa.update(customers).where(customers.c.id == "c2").values(objected_to_profiling=True)
        ),
        lambda c: c.execute(sa.insert(models).values(model_row("m1", "candidate"))),
        lambda c: c.execute(sa.update(models).values(status="live")),
    ]


EXPECTED: list[list[str] | None] = [["c1"], ["c2"], [], ["c2"], [], None]


def test_sqlite_change_log_names_the_customers_a_commit_touches(engine: sa.Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's change log")
    log = notifications.ChangeLog(engine)
    seq = log.last()
    for write, expected in zip(changes(engine), EXPECTED, strict=True):
        with engine.begin() as connection:
            write(connection)
        seq, named = log.since(seq)
        assert named == expected
    with engine.begin() as connection:  # the oldest row the reader has not seen is trimmed
        queries.insert_purchases(connection, [purchase("o3", "c3"), purchase("o4", "c4")], None)
        connection.execute(sa.delete(serving_changes).where(serving_changes.c.seq == seq + 1))
    assert log.since(seq) == (seq + 2, None)  # it fell behind: everything


def test_postgresql_notifications_name_the_customers_a_commit_touches(engine: sa.Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's notifications")
    url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute(f"LISTEN {notifications.CHANNEL}")
        for write, expected in zip(changes(engine), EXPECTED, strict=True):
            with engine.begin() as connection:
                write(connection)
            with engine.begin() as connection:  # a marker: everything before it has arrived
                connection.exec_driver_sql(f"NOTIFY {notifications.CHANNEL}, 'marker'")
            received: list[str] = []
            for note in listener.notifies(timeout=30):
                if note.payload == "marker":
                    break
                received.append(note.payload)
            if expected is None:
                assert received == [notifications.EVERYTHING]
            else:
                assert sorted(i for p in received for i in p.split("\n")) == expected


class SilencingProxy:
    """A TCP proxy to the database whose flows can go silent: nothing passes any more and
    nothing is closed, as when a NAT or a firewall drops an idle flow, or a server fails
    over behind a proxy that keeps the client's side open. New flows pass."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.flows: list[threading.Event] = []  # set: that flow is silent
        self.sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                client, _ = self.server.accept()
                upstream = socket.create_connection(self.target)
                self.sockets += [client, upstream]
                silent = threading.Event()
                self.flows.append(silent)
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(a, b, silent), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, silent: threading.Event) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                while silent.is_set():
                    time.sleep(0.05)
                sink.sendall(data)
            sink.close()

    def silence(self) -> None:
        for flow in self.flows:
            flow.set()

    def close(self) -> None:
        for each in self.sockets:
            each.close()


def test_a_listening_connection_gone_silent_is_reconnected(engine: sa.Engine) -> None:
    """A listener whose connection passes nothing on any more, without an error, says it
    lost it (the offer cache stops trusting itself and drops everything) and listens on a
    new one; before, it went on listening to nothing for ever."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's notifications")
    proxy = SilencingProxy(int(engine.url.port or 5432))
    through = make_engine(engine.url.set(port=proxy.port).render_as_string(hide_password=False))
    heard: list[Any] = []
    listener = notifications.Listener(through, heard.append, lambda up: heard.append(up))
    listener.check_s = 0.5
    listener.start()
    try:
        wait_for(lambda: heard == [True])
        notify(engine, "c1")
        wait_for(lambda: heard == [True, ["c1"]])
        proxy.silence()
        notify(engine, "c2")  # lost: the reconnection says "everything" instead
        wait_for(lambda: heard[2:] == [False, True])
        notify(engine, "c3")
        wait_for(lambda: heard[4:] == [["c3"]])
    finally:
        listener.stop()
        proxy.close()
        through.dispose()


def notify(engine: sa.Engine, payload: str) -> None:
    with engine.begin() as connection:
        connection.execute(sa.select(sa.func.pg_notify(notifications.CHANNEL, payload)))


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.02)


def test_a_listener_nobody_wants_any_more_stops_and_closes_its_connection(
    engine: sa.Engine,
) -> None:
    """A service dropped without ``close`` (a test's app, a reloaded one) left its listener
    running: since listeners check their connection every ``check_s`` by a session of their
    own, it opened a connection every 10 s for nobody, until a notification or a lost
    connection told it the receiver was gone. It stops at its next poll and closes the
    listening session."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's notifications")
    heard: list[Any] = []
    wanted = [True]
    listener = notifications.Listener(
        engine, heard.append, lambda up: heard.append(up), poll_s=0.05, wanted=lambda: wanted[0]
    )
    listener.start()
    try:
        wait_for(lambda: heard == [True] and listener.backend_pid is not None)
        session = listener.backend_pid
        wanted[0] = False
        wait_for(lambda: not listener.running)

        def open_sessions() -> int:
            with engine.connect() as connection:
                query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid")
                return int(connection.execute(query, {"pid": session}).scalar_one())

        wait_for(lambda: open_sessions() == 0)
    finally:
        listener.stop()
