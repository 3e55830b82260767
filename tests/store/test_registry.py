"""The top-N cache as ``registry.make_live`` writes it (JSON text encoded before the insert):
read back through the column's type, every list is the one given."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from recocamp.store import registry

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
        path="-",
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
        assert registry.cached(connection, "c2").items == [["i2", 0.5]]  # type: ignore[union-attr]
        assert registry.live(connection).version == "v2"  # type: ignore[union-attr]
