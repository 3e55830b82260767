"""Forecasting shops that are valid by the import rules but degenerate, imported through the
real importer into a real SQLite store and read through the commands."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recocamp import forecast as f
from recocamp.cli import app, common
from recocamp.errors import ModelError
from recocamp.forecast.btyd import BgNbd
from recocamp.settings import load_settings
from recocamp.store.engine import make_engine

NOW = datetime(2026, 3, 6, 9, tzinfo=UTC)
HEADER = "order_id,customer_id,item_id,quantity,unit_price,ordered_at\n"


@pytest.fixture
def one_day_shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Ten customers, five orders each, all on 5 March 2026: the shop's whole history."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common.clock, "now", lambda: NOW)
    (tmp_path / "settings.toml").write_text('database_url = "sqlite:///shop.db"\n')
    lines = [f"o{n},c{n % 10},i{n % 4},1,3.00,2026-03-05T{n % 24:02d}:00:00\n" for n in range(50)]
    (tmp_path / "purchases.csv").write_text(HEADER + "".join(lines))
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    imported = runner.invoke(app, ["import", "purchases", "purchases.csv"])
    assert imported.exit_code == 0, imported.output
    return tmp_path


def test_a_history_of_one_day_forecasts_nothing_it_cannot_know(one_day_shop: Path) -> None:
    """The day after a shop's only day, every customer's first purchase day is the last day
    of history (BG/NBD's T = 0): every parameter explains that equally well, and the fit
    stopped where it started (r = α = a = b = 1), which forecast 2.6 purchase days in 90
    days for everybody (p_active 0.93, churn risk low). Refused, saying why."""
    result = CliRunner().invoke(app, ["forecast", "--as-of", "2026-03-06", "--format", "json"])
    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert "no customer has a day of history after their first purchase day" in result.stderr


def test_bgnbd_refuses_a_history_without_a_span() -> None:
    """T = 0 for every customer: the likelihood is 1 whatever the parameters."""
    with pytest.raises(ModelError, match="no customer has a day of history after"):
        BgNbd.fit(np.zeros(3), np.zeros(3), np.zeros(3))
    one_week = BgNbd.fit(np.zeros(3), np.zeros(3), np.array([0.0, 0.0, 1.0]))
    assert one_week.expected(13.0, np.zeros(1), np.zeros(1), np.zeros(1))[0] < 0.01


def test_one_customer_at_the_price_bound_leaves_the_others_spend_their_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One customer buys a million units at 10⁹ (the importer's bounds), 19 others a cent's
    worth, ten purchase days each. Gamma-Gamma fits that with q ≤ 1, a spread without a mean:
    its expected spend was infinite for the cent buyers (a negative denominator), and they got
    the shop's plain mean instead — 8 · 10¹³ of expected revenue each. Where its fit has no
    mean, every customer's own spend per purchase day stands in, as where it cannot be fitted."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common.clock, "now", lambda: datetime(2025, 11, 1, 9, tzinfo=UTC))
    (tmp_path / "settings.toml").write_text('database_url = "sqlite:///shop.db"\n')
    lines = []
    for c in range(20):
        quantity, price = (1_000_000, "1000000000") if c == 0 else (1, "0.01")
        for n in range(10):
            day = date(2025, 1, 1) + timedelta(days=21 * n + c)
            lines.append(f"o{c}-{n},c{c:02d},i{n % 3},{quantity},{price},{day}T12:00:00\n")
    (tmp_path / "purchases.csv").write_text(HEADER + "".join(lines))
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    imported = runner.invoke(app, ["import", "purchases", "purchases.csv"])
    assert imported.exit_code == 0, imported.output
    result = runner.invoke(app, ["forecast", "--as-of", "2025-11-01", "--format", "json"])
    assert result.exit_code == 0, result.output
    whale, *cents = json.loads(result.stdout)["customers"]
    assert whale["customer_id"] == "c00"
    own = whale["expected_purchase_days"] * 1e15  # its own spend per purchase day
    assert whale["expected_revenue"] == pytest.approx(own, rel=1e-3)
    for row in cents:
        assert row["expected_revenue"] <= 0.01 * row["expected_purchase_days"] + 0.005, row
        assert row["lifetime_value"] < 1.0, row


def test_nobody_is_expected_on_more_days_than_the_horizon_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A customer who bought every day for two and a half years, among 80 who buy every one to
    six weeks: a purchase day is a calendar day, so the horizon's H days hold at most H.
    ``hurdle`` expected 30.5 of 30 (on other such shops ``rhythm`` 104 of 90), and ``blend``
    and the command with them."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common.clock, "now", lambda: datetime(2025, 6, 1, 9, tzinfo=UTC))
    (tmp_path / "settings.toml").write_text('database_url = "sqlite:///shop.db"\n')
    start, end = date(2023, 1, 1), date(2025, 6, 1)
    lines = [
        f"w{n},whale,i{n % 20},1,10,{start + timedelta(days=n)}T12:00:00\n"
        for n in range((end - start).days)
    ]
    for c in range(80):
        day, n = start + timedelta(days=(c * 7) % 60), 0
        while day < end:
            lines.append(f"o{c}-{n},c{c:02d},i{(c + n) % 20},1,10,{day}T12:00:00\n")
            day, n = day + timedelta(days=7 + (c * 13 + n * 5) % 35), n + 1
    (tmp_path / "purchases.csv").write_text(HEADER + "".join(lines))
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    imported = runner.invoke(app, ["import", "purchases", "purchases.csv"])
    assert imported.exit_code == 0, imported.output
    settings = load_settings(tmp_path / "settings.toml")
    as_of = f.day_number(date(2025, 5, 20))
    purchases = f.purchase_days(make_engine(settings.database_url), settings, as_of)
    for horizon in (30, 90):
        for model in f.FORECASTERS:
            expected = [
                r.expected_purchase_days for r in f.forecast(purchases, as_of, horizon, model)
            ]
            assert max(expected) <= horizon, (horizon, model, max(expected))
        result = runner.invoke(
            app,
            [
                "forecast",
                "--as-of",
                "2025-05-20",
                "--horizon-days",
                f"{horizon}",
                "--format",
                "json",
            ],
        )
        assert result.exit_code == 0, result.output
        for row in json.loads(result.stdout)["customers"]:
            assert row["likely_purchase_days"] <= horizon, (horizon, row)


def test_a_cutoff_with_only_returns_and_guests_before_it_is_before_the_first_purchase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the cutoff the store holds a return and a guest order, no purchase of a known
    customer: nobody to evaluate, refused with exit 2 and the first purchase's day, as a
    cutoff before any line is (the returns' day passed for the first purchase: both commands
    went on to fail with exit 1, the recommender's telling to import purchases)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common.clock, "now", lambda: datetime(2025, 12, 1, 9, tzinfo=UTC))
    (tmp_path / "settings.toml").write_text('database_url = "sqlite:///shop.db"\n')
    lines = ["r1,c1,i1,-1,5.00,2025-01-05T10:00:00\n", "g1,,i1,1,5.00,2025-01-06T10:00:00\n"]
    lines += [
        f"o{n},c{n % 5},i{n % 3},1,5.00,2025-{3 + n % 9:02d}-10T10:00:00\n" for n in range(30)
    ]
    (tmp_path / "purchases.csv").write_text(HEADER + "".join(lines))
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    imported = runner.invoke(app, ["import", "purchases", "purchases.csv"])
    assert imported.exit_code == 0, imported.output
    for command in ("evaluate", "forecast-evaluate"):
        result = runner.invoke(app, [command, "--cutoff", "2025-02-01", "--horizon-days", "30"])
        assert result.exit_code == 2, (command, result.output)
        assert result.stderr == (
            "error: no purchase before the cutoff 2025-02-01 (the first is on 2025-03-10): "
            "nothing to evaluate\n"
        )
