"""``runs list`` and ``runs workers`` show a run's error and counts with e-mail addresses
masked, whatever the store holds: runs are stored masked since 387e51e/c4e5b06, but a store
written before keeps the rows it had (for ``[privacy] job_runs_days``, 400 days), and the
commands printed their errors — a provider's answer quoting the recipient, a campaign file's
value naming the reply address — as they were."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from recocamp.cli import app
from recocamp.store import runs
from recocamp.store.engine import make_engine, upgrade
from recocamp.store.schema import runs as runs_table
from tests.conftest import NOW

ERROR = "DeliveryError: 422 from the ESP: 'anna.muster@example.test' is inactive"


def test_runs_an_older_version_stored_unmasked_are_shown_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.toml").write_text(f'database_url = "sqlite:///{tmp_path / "s.db"}"\n')
    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}")
    upgrade(engine)
    with engine.begin() as connection:  # as the older versions wrote them: unmasked
        runs.heartbeat(connection, "h:1:w", NOW, None)
        for job in ("deliver", "check"):
            connection.execute(
                sa.insert(runs_table).values(
                    job=job,
                    worker="h:1:w",
                    status="error",
                    started_at=NOW,
                    finished_at=NOW,
                    counts={"failed": 1, "last": "bob@example.test"},
                    error=ERROR,
                )
            )
    engine.dispose()
    runner = CliRunner()
    for args in (["runs", "list"], ["runs", "list", "--format", "json"], ["runs", "workers"]):
        shown = runner.invoke(app, args, terminal_width=200)
        assert shown.exit_code == 0, shown.output
        assert "example.test" not in shown.stdout and "<address>" in shown.stdout, args
    listed = json.loads(runner.invoke(app, ["runs", "list", "--format", "json"]).stdout)
    masked = ERROR.replace("anna.muster@example.test", "<address>")
    assert {row["error"] for row in listed} == {masked}
    assert listed[0]["counts"] == {"failed": 1, "last": "<address>"}
