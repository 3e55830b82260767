"""The store on SQLite and PostgreSQL: migrations equal the schema, times stay UTC-aware."""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import warnings
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from recocamp.errors import StoreError
from recocamp.store.engine import (
    SQLITE_PAGE_SIZE,
    alembic_config,
    current_revision,
    head_revision,
    make_engine,
    normalise_url,
    require_current,
    snapshot,
    upgrade,
)
from recocamp.store.schema import audit_log, customers, engagement_events, metadata

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


EXPRESSION_INDEXES = {"ix_customers_email_lower": ("customers", "lower(email)")}


def schema_differences(connection: sa.Connection) -> list[object]:
    """What alembic finds between the migrated store and the schema, and each index on an
    expression missing from the store: alembic cannot compare those on SQLite (whose
    reflection skips them, with a warning), so they are read as the store wrote them."""
    context = MigrationContext.configure(connection, opts={"include_object": _compared})
    with warnings.catch_warnings():  # SQLite and alembic: "… expression-based index …"
        for name in EXPRESSION_INDEXES:
            warnings.filterwarnings("ignore", f".*expression-based index '?{name}")
        differences: list[object] = list(compare_metadata(context, metadata))
    for name, (table, expression) in EXPRESSION_INDEXES.items():
        statement = _index_statement(connection, name)
        bare = re.sub(r"[()\s]", "", expression)
        if statement is None or table not in statement or bare not in statement:
            differences.append(("expression index", name, statement))
    return differences


def _compared(item: object, name: str | None, kind: str, reflected: bool, other: object) -> bool:
    return not (kind == "index" and name in EXPRESSION_INDEXES)


def test_migrations_create_exactly_the_schema(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        assert schema_differences(connection) == []
    assert upgrade(engine) == head_revision()  # a second upgrade is a no-op


def _index_statement(connection: sa.Connection, name: str) -> str | None:
    if connection.dialect.name == "sqlite":
        query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = :name"
    else:
        query = "SELECT indexdef FROM pg_indexes WHERE indexname = :name"
    found = connection.execute(sa.text(query), {"name": name}).scalar()
    # PostgreSQL writes lower((email)::text): compared without casts, brackets and quotes
    return None if found is None else re.sub(r"::\w+|[()\s\"]", "", str(found))


def test_unmigrated_database_is_refused_with_the_fix(db_url: str) -> None:
    engine = make_engine(db_url)
    with pytest.raises(StoreError, match="run `recocamp db upgrade`"):
        require_current(engine)
    upgrade(engine)
    require_current(engine)
    engine.dispose()


def test_datetimes_round_trip_as_aware_utc(engine: sa.Engine) -> None:
    berlin_summer = datetime(2024, 7, 1, 9, 30, tzinfo=timezone(timedelta(hours=2)))
    with engine.begin() as connection:
        connection.execute(
            sa.insert(audit_log).values(
                at=berlin_summer, actor="t", action="a", subject_type="s", details={"k": [1]}
            )
        )
        row = connection.execute(sa.select(audit_log)).one()
    assert row.at == berlin_summer and row.at.utcoffset() == timedelta(0)
    assert row.details == {"k": [1]}
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), engine.begin() as connection:
        connection.execute(
            sa.insert(audit_log).values(
                at=datetime(2024, 1, 1), actor="t", action="a", subject_type="s", details={}
            )
        )


def test_a_batch_of_repeated_and_changing_times_stores_each_row_its_own(
    engine: sa.Engine,
) -> None:
    """A batch binds the same instant row after row (converted once) between others: each
    row keeps its own, an equal instant in another zone is the same time, and a naive
    time after an aware one is still refused."""
    utc = datetime(2024, 7, 1, 7, 30, tzinfo=UTC)
    berlin = utc.astimezone(timezone(timedelta(hours=2)))
    later = utc + timedelta(microseconds=1)
    times = [utc, utc, berlin, later, utc, later, later]
    rows = [
        {"at": at, "actor": str(n), "action": "a", "subject_type": "s", "details": {}}
        for n, at in enumerate(times)
    ]
    with engine.begin() as connection:
        connection.execute(sa.insert(audit_log), rows)
        stored = connection.execute(sa.select(audit_log.c.actor, audit_log.c.at)).all()
        assert {int(actor): at for actor, at in stored} == dict(enumerate(times))
        at_utc = sa.select(sa.func.count()).where(audit_log.c.at == utc)
        assert connection.execute(at_utc).scalar_one() == 4  # berlin is the same instant
    naive = [dict(rows[0], actor="x"), dict(rows[0], actor="y", at=utc.replace(tzinfo=None))]
    with pytest.raises(sa.exc.StatementError, match="naive datetime"), engine.begin() as connection:
        connection.execute(sa.insert(audit_log), naive)


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_a_new_sqlite_file_gets_the_page_size_and_an_old_one_keeps_its_own(
    tmp_path: Path,
) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as made:  # a store made before the page size was set
        made.execute("PRAGMA journal_mode=WAL")
        made.execute("CREATE TABLE t (x)")
    made.close()
    for path, size in ((tmp_path / "new.db", SQLITE_PAGE_SIZE), (old, 4096)):
        engine = make_engine(f"sqlite:///{path}")
        with engine.begin() as connection:
            connection.exec_driver_sql("CREATE TABLE IF NOT EXISTS t (x)")
            connection.exec_driver_sql("INSERT INTO t VALUES (1)")
        with engine.connect() as connection:  # a second connection finds the file's own
            assert connection.exec_driver_sql("PRAGMA page_size").scalar() == size
            assert connection.exec_driver_sql("SELECT x FROM t").scalar() == 1
        engine.dispose()


def test_urls() -> None:
    assert normalise_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(StoreError, match="is not usable"):
        make_engine("nosuchdb://x")
    with pytest.raises(StoreError) as caught:
        make_engine("mysql://shop:s3cret@db.example.test/shop")
    assert "s3cret" not in str(caught.value) and "***" in str(caught.value)
    with pytest.raises(StoreError, match="is not usable"):
        make_engine("postgresql://shop:s3cret@db.example.test:port/shop")


def test_a_postgresql_connection_probes_a_peer_that_went_silent(db_url: str) -> None:
    """libpq's keepalives on every connection, the URL's own settings first: the serving
    listener idles in LISTEN, and when its flow was dropped without a word (a NAT, a
    firewall, a failover) it learnt of it only when TCP gave up, after the system's 2 hours,
    missing every purchase's notification meanwhile. The socket's own options are read."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite: no network connection")
    for url, idle in ((db_url, 10), (f"{db_url}?keepalives_idle=60", 60)):
        engine = make_engine(url)
        try:
            with engine.connect() as connection:
                raw = connection.connection.driver_connection
                assert raw is not None
                probe = socket.socket(fileno=os.dup(raw.pgconn.socket))
                try:
                    if probe.family == socket.AF_UNIX:
                        pytest.skip("a Unix socket: no TCP to probe")
                    assert probe.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                    options = (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)
                    got = [probe.getsockopt(socket.IPPROTO_TCP, o) for o in options]
                    assert got == [idle, 5, 3]
                finally:
                    probe.close()
        finally:
            engine.dispose()


def test_a_snapshot_reads_one_state_whatever_commits_meanwhile(engine: sa.Engine) -> None:
    """A link's check and the reads it allows see one state: a customer erased and signed
    up again between two of its reads (another connection's commits) is seen by neither."""
    first = sa.select(customers.c.first_name).where(customers.c.id == "c1")
    at = datetime(2024, 1, 1, tzinfo=UTC)
    with engine.begin() as connection:
        connection.execute(sa.insert(customers).values(id="c1", first_name="Erwin", updated_at=at))
    with snapshot(engine) as connection:
        assert connection.execute(first).scalar_one() == "Erwin"
        with engine.begin() as other:
            other.execute(sa.delete(customers))
            zelda = {"id": "c1", "first_name": "Zelda", "updated_at": at}
            other.execute(sa.insert(customers).values(**zelda))
        assert connection.execute(first).scalar_one() == "Erwin"
        assert connection.execute(sa.select(sa.func.count()).select_from(customers)).scalar() == 1
    with engine.connect() as connection:
        assert connection.execute(first).scalar_one() == "Zelda"  # committed all along


def test_migration_0015_goes_down_and_up_keeping_the_rest(db_url: str) -> None:
    """0015 adds engagement_events alone: down to 0014 drops it (with its index) and leaves
    every other table and row; up again brings it back, empty."""
    engine = make_engine(db_url)
    upgrade(engine)
    row = {"at": NOW, "actor": "t", "action": "a", "subject_type": "s", "details": {}}
    with engine.begin() as connection:
        connection.execute(sa.insert(audit_log).values(**row))
        connection.execute(
            sa.insert(engagement_events).values(
                kind="review", event_id="R1", customer_id="c1", occurred_at=NOW, recorded_at=NOW
            )
        )
    command.downgrade(alembic_config(engine), "0014")
    assert current_revision(engine) == "0014"
    names = set(sa.inspect(engine).get_table_names())
    assert "engagement_events" not in names and {"customers", "id_erasures"} <= names
    assert upgrade(engine) == head_revision() == "0024"
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar() == 1
        assert connection.execute(sa.select(engagement_events)).all() == []
        assert schema_differences(connection) == []
    engine.dispose()
