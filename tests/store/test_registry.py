"""The top-N cache as ``registry.make_live`` and ``registry.stage`` write it (JSON text
encoded before the insert): read back through the column's type, every list is the one
given, and only the live model's rows are anybody's answer."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from recocamp.store import registry
from recocamp.store.engine import make_engine, upgrade
from recocamp.store.schema import model_promotions, models, recommendations

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def _register(connection: sa.Connection, version: str) -> None:
    registry.register(
        connection,
        version=version,
        name="als",
        trained_at=NOW,
        data_cutoff=NOW,
        fingerprint=version,
        params={},
        metrics={},
        path=f"path-{version}",
        popular=[],
        status="candidate",
    )


def test_cached_lists_read_back_as_written(engine: sa.Engine) -> None:
    lists: list[tuple[str, list[list[Any]]]] = [
        ("c1", [['tea "earl grey"', 1.0], ["thé/vert\\ü", 0.123457], ["i3", 1e-06]]),
        ("c2", [["i3", 0.333333]]),
        ("c3", []),
    ]
    with engine.begin() as connection:
        _register(connection, "v1")
        written = registry.make_live(connection, "v1", NOW, iter(lists))
    assert written == 3
    with engine.connect() as connection:
        for customer_id, ranked in lists:
            row = registry.cached(connection, customer_id)
            assert row is not None
            assert (row.model_version, row.items) == ("v1", ranked)


def test_a_new_live_model_replaces_the_whole_cache(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        _register(connection, "v1")
        registry.make_live(connection, "v1", NOW, [("c1", [["i1", 1.0]])])
        _register(connection, "v2")
        written = registry.make_live(connection, "v2", NOW, [("c2", [["i2", 0.5]])])
    with engine.connect() as connection:
        assert written == 1
        assert registry.cached(connection, "c1") is None
        cached, live = registry.cached(connection, "c2"), registry.live(connection)
        assert cached is not None and cached.items == [["i2", 0.5]]
        assert live is not None and live.version == "v2"


def _switch(connection: sa.Connection, version: str, hours: int, via: str = "train") -> None:
    registry.make_live(connection, version, NOW + timedelta(hours=hours), [], via)


def _target(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        row = registry.previous_live(connection)
    return None if row is None else str(row.version)


def test_rollbacks_in_a_row_walk_back_through_the_live_models(engine: sa.Engine) -> None:
    """A → B → C, rollback → B, rollback → A (it went back to C: B's promoted_at was
    overwritten by the rollback, so C looked like the model live before B)."""
    with engine.begin() as connection:
        for hours, version in enumerate(("A", "B", "C")):
            _register(connection, version)
            _switch(connection, version, hours)
    assert _target(engine) == "B"
    with engine.begin() as connection:
        _switch(connection, "B", 3, "rollback")
    assert _target(engine) == "A"
    with engine.connect() as connection:
        kept = registry.kept_artifact_paths(connection)
    with engine.begin() as connection:
        _switch(connection, "A", 4, "rollback")
    assert _target(engine) is None  # nothing was live before A
    with engine.begin() as connection:
        _register(connection, "D")
        _switch(connection, "D", 5)
        live = registry.live(connection)
        assert live is not None and live.version == "D"
    assert _target(engine) == "A"  # the rolled-back B and C are not reached again
    assert kept == {"path-A", "path-B"}  # the live model and the next rollback's target


def test_promoting_an_old_model_makes_the_one_it_replaced_the_target(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        for hours, version in enumerate(("A", "B", "C")):
            _register(connection, version)
            _switch(connection, version, hours)
        _switch(connection, "A", 3, "promote")
        _switch(connection, "A", 4, "promote")  # promoting the live model again: no step
    assert _target(engine) == "C"
    assert registry.live_stack([("A", "train"), ("B", "rollback")]) == ["B"]  # no history


def test_the_migration_copies_the_promotions_before_it(db_url: str) -> None:
    """A store upgraded from 0017: its latest promotions become the history, the live model
    last, so the first rollback goes where it went before."""
    engine = make_engine(db_url)
    try:
        upgrade(engine, "0017")
        with engine.begin() as connection:
            for hours, (version, status) in enumerate(
                (("A", "retired"), ("C", "live"), ("B", "retired"), ("R", "rejected"))
            ):
                _register(connection, version)
                connection.execute(
                    sa.update(models)
                    .where(models.c.version == version)
                    .values(
                        status=status,
                        promoted_at=None if status == "rejected" else NOW + timedelta(hours=hours),
                    )
                )
        upgrade(engine)
        with engine.connect() as connection:
            assert registry.live_stack(
                (row.version, row.via)
                for row in connection.execute(
                    sa.select(model_promotions).order_by(model_promotions.c.id)
                )
            ) == ["A", "B", "C"]
        assert _target(engine) == "B"
    finally:
        engine.dispose()


def _rows(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as connection:
        query = sa.select(recommendations.c.customer_id, recommendations.c.model_version)
        return sorted((str(c), str(v)) for c, v in connection.execute(query))


def test_a_staged_cache_is_nobodys_answer_until_its_switch(engine: sa.Engine) -> None:
    """A switch's lists are written before it (``stage``, a few rows a transaction) and
    answer nobody until it commits; from then on they alone do, and the retired model's
    rows are dropped after it (``drop_stale``), again a few a transaction."""
    with engine.begin() as connection:
        _register(connection, "v1")
        registry.make_live(connection, "v1", NOW, [("c1", [["old", 1.0]]), ("c2", [["old", 1.0]])])
    staged: list[tuple[str, list[list[Any]] | str]] = [
        ("c1", [["new", 1.0]]),
        ("c3", '[["new",0.5]]'),  # lists, or their JSON text
    ]
    assert registry.stage(engine, "v2", iter(staged), rows=1) == 2
    with engine.connect() as connection:
        row = registry.cached(connection, "c1")
        assert row is not None and (row.model_version, row.items) == ("v1", [["old", 1.0]])
        assert registry.cached(connection, "c3") is None
    with engine.begin() as connection:
        _register(connection, "v2")
        assert registry.make_live(connection, "v2", NOW) == 2
    with engine.connect() as connection:
        row = registry.cached(connection, "c1")
        assert row is not None and (row.model_version, row.items) == ("v2", [["new", 1.0]])
        assert registry.cached(connection, "c2") is None  # v1's row is no answer of v2's
        row = registry.cached(connection, "c3")
        assert row is not None and row.items == [["new", 0.5]]
    assert registry.drop_stale(engine, rows=1) == 2
    assert _rows(engine) == [("c1", "v2"), ("c3", "v2")]


def test_the_retired_rows_are_dropped_by_ranges_between_the_kept_ones(
    engine: sa.Engine,
) -> None:
    """``drop_stale`` deletes a range of customer ids a step, up to the ``rows``-th stale
    row: every stale row goes, in steps whose size does not divide their number, and the
    live model's rows between and beyond them stay."""
    with engine.begin() as connection:
        _register(connection, "v1")
        old = [(f"c{n}", [["old", 1.0]]) for n in range(1, 8)]
        registry.make_live(connection, "v1", NOW, old)
    registry.stage(engine, "v2", [(c, [["new", 1.0]]) for c in ("c0", "c2", "c3", "c6", "c9")])
    with engine.begin() as connection:
        _register(connection, "v2")
        registry.make_live(connection, "v2", NOW)
    assert registry.drop_stale(engine, rows=3) == 7
    assert _rows(engine) == [(c, "v2") for c in ("c0", "c2", "c3", "c6", "c9")]
    assert registry.drop_stale(engine, rows=3) == 0


def test_a_stage_replaces_its_own_rows_and_clears_what_a_stopped_one_left(
    engine: sa.Engine,
) -> None:
    """The live model promoted again restages over its own rows; a staging that never
    switched (Ctrl-C: a version never registered) leaves rows that the next staging
    deletes, while ``drop_stale`` leaves a staging in progress alone."""
    with engine.begin() as connection:
        _register(connection, "v1")
        registry.make_live(connection, "v1", NOW, [("c1", [["a", 1.0]])])
    registry.stage(engine, "stopped", [("c1", [["b", 1.0]]), ("c2", [["b", 1.0]])])
    assert registry.drop_stale(engine) == 0  # not registered: maybe a staging in progress
    registry.stage(engine, "v1", [("c1", [["c", 1.0]])])
    assert _rows(engine) == [("c1", "v1")]
    with engine.connect() as connection:
        row = registry.cached(connection, "c1")
        assert row is not None and row.items == [["c", 1.0]]


def test_other_writers_get_through_while_a_cache_is_staged(engine: sa.Engine) -> None:
    """SQLite: the switch wrote a million customers' lists in its own transaction, holding
    the database's write lock 5–14 s, past the 10 s that purchase events, imports and the
    deliverers wait for it. Staged, a writer that does not wait at all gets through
    between any two steps of the write."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL: writers of other rows never wait for the cache's")
    probes: list[str] = []

    def lists() -> Iterator[tuple[str, list[list[Any]]]]:
        for n in range(4):
            other = sqlite3.connect(str(engine.url.database), timeout=0, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("ROLLBACK")
                probes.append("through")
            except sqlite3.OperationalError:
                probes.append("locked")
            finally:
                other.close()
            yield f"c{n}", [["i", 1.0]]

    with engine.begin() as connection:
        _register(connection, "v1")
    assert registry.stage(engine, "v1", lists(), rows=1) == 4
    assert probes == ["through"] * 4
