"""Measuring shops that are valid by the import rules but degenerate (one order, one day),
imported through the real importer into a real SQLite store, read through the commands."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recocamp.cli import app, common

NOW = datetime(2026, 1, 20, 9, tzinfo=UTC)
HEADER = "order_id,customer_id,item_id,quantity,unit_price,ordered_at\n"


def _refuse(constant: str) -> float:
    raise ValueError(f"not JSON: {constant}")


@pytest.fixture
def one_order_shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shop whose whole history is one order of one line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common.clock, "now", lambda: NOW)
    (tmp_path / "settings.toml").write_text('database_url = "sqlite:///shop.db"\n')
    (tmp_path / "purchases.csv").write_text(HEADER + "o1,c1,i1,1,10.00,2026-01-10T10:00:00\n")
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    imported = runner.invoke(app, ["import", "purchases", "purchases.csv"])
    assert imported.exit_code == 0, imported.output
    return tmp_path


def test_report_json_with_html_prints_the_document_alone(one_order_shop: Path) -> None:
    """``report --format json --html FILE | jq``: stdout is the JSON document and nothing
    else (the note that the file was written went after it, and no parser read that)."""
    result = CliRunner().invoke(
        app, ["report", "--as-of", "2026-01-20", "--format", "json", "--html", "r.html"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout, parse_constant=_refuse)
    assert document["as_of"] == "2026-01-19T23:00:00+00:00"
    assert "HTML report written to r.html" in result.stderr
    assert (one_order_shop / "r.html").read_text().startswith("<!DOCTYPE html>")


def test_the_report_says_what_it_lacks_where_that_table_would_stand(one_order_shop: Path) -> None:
    """Each table was built before the first was printed, so "no campaign touches" (said as
    the uplift table was built) stood above the KPI tables, under the report's title."""
    runner = CliRunner()
    taken = runner.invoke(app, ["snapshots", "take", "--as-of", "2026-01-20"])
    assert taken.exit_code == 0, taken.output
    result = runner.invoke(app, ["report", "--as-of", "2026-01-20", "--no-store"])
    assert result.exit_code == 0, result.output
    kpis = result.stdout.index("retention KPIs of the windows ending")
    assert kpis < result.stdout.index("no campaign touches in the last 90 days")


def test_a_report_as_of_a_day_to_come_is_not_stored(one_order_shop: Path) -> None:
    """``report --as-of 2062-01-20`` (a typo of 2026) was stored, and became what
    ``GET /reports/latest`` serves: a report of a year to come, every figure empty. As
    ``train`` and ``send`` do, a command that keeps something as of ``--as-of`` refuses one
    after now (exit 2, naming the option and the value, nothing stored or written); with
    ``--no-store`` it only reads, and may look ahead as ``kpis`` does."""
    from recocamp.store import measure as measure_store
    from recocamp.store.engine import make_engine

    runner = CliRunner()
    refused = runner.invoke(app, ["report", "--as-of", "2062-01-20", "--html", "r.html"])
    assert refused.exit_code == 2, refused.output
    assert "--as-of" in refused.output and "2062-01-20" in refused.output
    assert not (one_order_shop / "r.html").exists()
    engine = make_engine("sqlite:///shop.db")
    with engine.connect() as connection:
        assert measure_store.latest_report(connection) is None
    engine.dispose()
    ahead = runner.invoke(app, ["report", "--as-of", "2062-01-20", "--no-store"])
    assert ahead.exit_code == 0, ahead.output
