"""The scheduling worker's resume query, asked every poll, reads no whole ``runs`` table: it
leaves out the runs resumed already through an index on ``resumed_from`` (migration 0021),
where it read every row (75 ms of CPU every 2 s at a million runs)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command

from recocamp.store import runs
from recocamp.store.engine import alembic_config, current_revision, head_revision, make_engine
from recocamp.store.engine import upgrade as migrate
from recocamp.store.schema import runs as runs_table
from tests.conftest import NOW
from tests.store.test_engine import schema_differences


def test_the_resume_query_reads_no_whole_table(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'recocamp.db'}")
    migrate(engine)
    with engine.begin() as connection:
        first = runs.start(connection, "campaign:winback", "h:1:a", NOW, as_of=NOW)
        runs.mark_interrupted(connection, first, NOW, "stopped")
        second = runs.start(
            connection, "campaign:winback", "h:1:b", NOW, as_of=NOW, resumed_from=first
        )
        runs.mark_interrupted(connection, second, NOW, "stopped")
    plans: list[str] = []

    def explain(_connection: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if "resumed_from IS NOT NULL" in statement:  # sqlite3's own connection: not seen here
            found = cursor.connection.execute(f"EXPLAIN QUERY PLAN {statement}", params)
            plans.extend(row[3] for row in found)

    sa.event.listen(engine, "before_cursor_execute", explain)
    since = NOW - timedelta(hours=6)
    with engine.connect() as connection:
        found = runs.unfinished_campaign_runs(connection, since, dead_before=NOW, failed_before=NOW)
    assert [row.id for row in found] == [second]  # the first was resumed already
    assert plans and not any(plan.startswith("SCAN runs") for plan in plans), plans
    engine.dispose()


def test_migration_0021_adds_the_index_to_a_store_of_0020_keeping_its_runs(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine, "0020")
    with engine.begin() as connection:
        connection.execute(
            sa.insert(runs_table).values(
                job="train", worker="h:1:a", status="ok", started_at=NOW, counts={"lines": 3}
            )
        )
    assert migrate(engine) == head_revision() == "0024"
    indexes = {index["name"] for index in sa.inspect(engine).get_indexes("runs")}
    assert "ix_runs_resumed_from" in indexes
    with engine.connect() as connection:
        assert schema_differences(connection) == []
        assert connection.execute(sa.select(runs_table.c.counts)).scalars().all() == [{"lines": 3}]
    command.downgrade(alembic_config(engine), "0020")
    assert current_revision(engine) == "0020"
    indexes = {index["name"] for index in sa.inspect(engine).get_indexes("runs")}
    assert "ix_runs_resumed_from" not in indexes
    engine.dispose()
