"""The staging of a purchases file binds values as the store's column types do."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from recocamp.store import staging

TIMES = [
    datetime(2024, 4, 1, 12, tzinfo=UTC),
    datetime(2024, 4, 1, 12, 0, 0, 1, tzinfo=UTC),
    datetime(2024, 3, 31, 1, 30, 59, 999999, tzinfo=ZoneInfo("Europe/London")),
    datetime(1900, 1, 1, 5, tzinfo=timezone(timedelta(hours=5))),
    datetime(9000, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
]


def test_staged_times_are_bound_as_their_column_binds_them(engine: sa.Engine) -> None:
    """SQLite compares stored times as text: a staged time copied into ``purchases`` must be
    the very text a line written through SQLAlchemy gets."""
    column = staging.staged.c.ordered_at.type
    with engine.connect() as connection:
        dialect = connection.dialect
        processor = column.dialect_impl(dialect).bind_processor(dialect)
        stager = staging.Stager(connection)
        bound = [stager.bind_time(value) for value in TIMES]
        again = [stager.bind_time(value) for value in TIMES]  # from the cache
    expected = [value if processor is None else processor(value) for value in TIMES]
    assert bound == expected and again == expected
