"""Report defects found by an analyst's audit, on a real store through the commands."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recocamp.cli import app, common

NOW = datetime(2026, 1, 20, 9, tzinfo=UTC)
HEADER = "order_id,customer_id,item_id,quantity,unit_price,ordered_at\n"


@pytest.fixture
def tokyo_shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shop nine hours east of UTC, with one order."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common.clock, "now", lambda: NOW)
    (tmp_path / "settings.toml").write_text(
        'database_url = "sqlite:///shop.db"\n[shop]\ntime_zone = "Asia/Tokyo"\n'
    )
    (tmp_path / "purchases.csv").write_text(HEADER + "o1,c1,i1,1,10.00,2026-01-10T10:00:00\n")
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    imported = runner.invoke(app, ["import", "purchases", "purchases.csv"])
    assert imported.exit_code == 0, imported.output
    return tmp_path


def test_the_report_is_titled_with_the_shops_day_it_was_asked_for(tokyo_shop: Path) -> None:
    """``report --as-of 2026-01-20`` is as of midnight in the shop's zone; in Tokyo that is
    15:00 UTC on the 19th, and the page was titled "Retention report · … · 2026-01-19" (the
    UTC date), a day before the one asked for and before the snapshot days it shows."""
    result = CliRunner().invoke(
        app, ["report", "--as-of", "2026-01-20", "--no-store", "--html", "r.html"]
    )
    assert result.exit_code == 0, result.output
    page = (tokyo_shop / "r.html").read_text()
    title = re.search(r"<title>(.*?)</title>", page)
    assert title is not None and title.group(1).endswith("· 2026-01-20"), title
    assert "As of 2026-01-20 00:00 Asia/Tokyo (2026-01-19 15:00 UTC)" in page
