"""Two ``recocamp db upgrade`` processes started at once on one empty PostgreSQL database
(a deploy that starts every replica with it): both end with the schema at head, exit 0.
Before, both read "no revision" and created the tables, and the second died on a unique
violation with a 300-line traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from recocamp.store.engine import current_revision, head_revision, make_engine
from recocamp.store.locks import migrating


def upgrade_process(db_url: str, directory: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECOCAMP_")}
    return subprocess.Popen(
        [sys.executable, "-m", "recocamp", "db", "upgrade"],
        cwd=directory,
        env=env | {"RECOCAMP_DATABASE_URL": db_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def waiting_for_locks(engine: sa.Engine) -> int:
    """Sessions of this database waiting for an advisory lock."""
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                )
            ).scalar_one()
        )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_upgrades_started_at_once_both_end_at_head(db_url: str, tmp_path: Path) -> None:
    """The test holds the migration lock while both start, so they race from the same
    start the moment it lets go: each waits for the other, and the second finds the
    schema migrated."""
    engine = make_engine(db_url)
    with engine.connect() as holder:
        with holder.begin():
            migrating(holder)
            processes = [upgrade_process(db_url, tmp_path) for _ in range(2)]
            deadline = time.monotonic() + 60
            while waiting_for_locks(engine) < 2:
                ended = [p for p in processes if p.poll() is not None]
                assert not ended, f"an upgrade did not wait: {ended[0].communicate()[0][-2000:]}"
                assert time.monotonic() < deadline, "the upgrades never waited"
                time.sleep(0.05)
        outputs = [p.communicate(timeout=60)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [o[-2000:] for o in outputs]
    assert all(f"schema revision {head_revision()}" in o for o in outputs)
    assert current_revision(engine) == head_revision()
    engine.dispose()
