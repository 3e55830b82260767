"""A run's stored error and counts never hold an e-mail address: they quote what failed (a
customer id, which may be an address; a provider's answer quoting the recipient), and the
``runs`` table is read by ``recocamp status`` and kept for months."""

from __future__ import annotations

import sqlalchemy as sa

from recocamp.store import runs
from recocamp.store.schema import runs as runs_table
from tests.conftest import NOW


def test_a_finished_runs_error_and_counts_are_stored_with_addresses_masked(
    engine: sa.Engine,
) -> None:
    with engine.begin() as connection:
        run_id = runs.start(connection, "train", "w1", NOW)
        runs.finish(
            connection,
            run_id,
            "error",
            NOW,
            {
                "forecast_error": "gave NaN for 'Jane.Doe@example.test'",
                "lines": 3,
                "ids": ["a@b.test"],
            },
            "ModelError: customer jane.doe@example.test: not stored",
        )
    with engine.connect() as connection:
        row = connection.execute(sa.select(runs_table).where(runs_table.c.id == run_id)).one()
    assert "@" not in row.error and "<address>" in row.error
    assert row.counts == {
        "forecast_error": "gave NaN for '<address>'",
        "lines": 3,
        "ids": ["<address>"],
    }
