"""Forecast defects found by a hostile review (issue 17), each on a real store: slices of the
UCI file cut at test time, imported by the real importer, read through the commands."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from recocamp import forecast as f
from recocamp.cli import app, common
from recocamp.errors import ModelError
from recocamp.forecast import models
from recocamp.forecast.history import History
from recocamp.settings import load_settings
from recocamp.store.engine import make_engine
from tests.conftest import uci_rows

NOW = datetime(
    2011, 6, 15, 9, tzinfo=UTC
)  # after the slice's last order (the importer refuses later ones)


def _young_shop(row: list[str]) -> bool:
    """The UCI customers 12346–12599 over the file's first six and a half months: a small
    shop (about 120 customers) whose history just reaches a horizon before its first window."""
    return row[6] != "" and float(row[6]) < 12600 and row[4] < "2011-06-15"


@pytest.fixture(scope="module")
def young_rows() -> tuple[list[str], list[list[str]]]:
    return uci_rows(_young_shop)


@pytest.fixture
def young_shop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, young_rows: tuple[list[str], list[list[str]]]
) -> CliRunner:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common.clock, "now", lambda: NOW)
    (tmp_path / "settings.toml").write_text(
        'database_url = "sqlite:///shop.db"\n[shop]\ntime_zone = "Europe/London"\n'
    )
    header, rows = young_rows
    with (tmp_path / "slice.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    done = runner.invoke(app, ["import", "purchases", "--format", "online-retail", "slice.csv"])
    assert done.exit_code == 0, done.output
    return runner


def test_a_young_shops_live_forecast_does_not_extrapolate_a_collapsed_model_input(
    young_shop: CliRunner,
) -> None:
    """At 2011-06-10 ``rhythm``'s one training window (origin 2011-03-12) had a BG/NBD fit
    with no heterogeneity (r and α in the thousands), so its input "BG/NBD's forecast" was the
    same for every customer to four decimals (spread 5·10⁻⁵; at 2011-06-15, r = 45: 0.01); at
    as_of it spread over 0.4–1.2, and the slope learnt on that sliver put e^30 on customers:
    90 purchase days of 90 (the cap). ``blend``, live here, then forecast about 30 for each of
    the 126 customers: churn risk low for nearly all, lifetime values 20 times too large, no
    winback for anyone. The other models' forecasts are held to their training range."""
    for as_of in ("2011-06-10", "2011-06-15"):
        result = young_shop.invoke(app, ["forecast", "--as-of", as_of, "--format", "json"])
        assert result.exit_code == 0, result.output
        document = json.loads(result.stdout)
        rows = document["customers"]
        assert len(rows) > 120
        total = sum(row["expected_purchase_days"] for row in rows)
        # the shop's customers bought on 104–127 days in each 90 days of the spring
        assert 60 < total < 250, (as_of, document["model"], total)
        assert max(row["expected_purchase_days"] for row in rows) < 15, as_of
        assert sum(row["churn_risk"] == "low" for row in rows) < len(rows) / 2, as_of


def test_forecast_stored_without_one_keeps_stdout_for_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``recocamp forecast --stored --format json | jq`` before the first train job: "no
    forecast stored yet" went to stdout, where a script reads the JSON document. An error
    goes to stderr (``error: …``), stdout stays empty, exit 1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(common.clock, "now", lambda: NOW)
    (tmp_path / "settings.toml").write_text('database_url = "sqlite:///shop.db"\n')
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["forecast", "--stored", "--format", "json"])
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "error: no forecast stored yet" in result.stderr


def test_a_forecast_refused_for_values_that_are_not_numbers_names_no_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shop may use the e-mail address as its customer id. A forecast with a value that is
    not a number is refused with "e.g. <customer>", and that text goes to the worker's run
    counts (``forecast_error``, printed by the worker and ``recocamp runs``) and ``train``'s
    output, where no address may appear: the id is masked."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.toml").write_text('database_url = "sqlite:///shop.db"\n')
    lines = [
        f"o{n},ann.{n % 3}@example.test,i1,1,10,2011-0{1 + n % 5}-{10 + n % 9}T12:00:00\n"
        for n in range(30)
    ]
    (tmp_path / "purchases.csv").write_text(
        "order_id,customer_id,item_id,quantity,unit_price,ordered_at\n" + "".join(lines)
    )
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    done = runner.invoke(app, ["import", "purchases", "purchases.csv"])
    assert done.exit_code == 0, done.output

    def broken(purchases: f.PurchaseDays, history: History, horizon_days: int) -> np.ndarray:
        return np.full(len(history.rows), np.nan)

    for name in list(models.FORECASTERS):  # whichever is live
        monkeypatch.setitem(models.FORECASTERS, name, broken)
    settings = load_settings(tmp_path / "settings.toml")
    with pytest.raises(ModelError) as refused:
        f.refresh(make_engine(settings.database_url), settings, NOW)
    assert "not numbers for 3 customer(s)" in str(refused.value)
    assert "@" not in str(refused.value)
