"""The command line as a user runs it: exit codes and messages, on a real SQLite file."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import typer
from typer.testing import CliRunner

from recocamp.cli import app, common
from recocamp.recommender.models import MODEL_NAMES
from recocamp.store.engine import head_revision, make_engine
from recocamp.store.schema import (
    audit_log,
    customers,
    items,
    kpi_snapshots,
    outbox,
    purchases,
    recommendations,
    reports,
)
from tests.conftest import write_csv

runner = CliRunner()


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.toml").write_text(
        'database_url = "sqlite:///shop.db"\n'
        "[demo]\nsynthetic_customers = 120\nsynthetic_items = 80\nsynthetic_days = 120\n"
        'online_retail_path = "missing.csv.gz"\n'
    )
    return tmp_path


def test_commands_refuse_an_unmigrated_database(workdir: Path) -> None:
    result = runner.invoke(app, ["kpis"])
    assert result.exit_code == 1
    assert "run `recocamp db upgrade`" in result.stderr
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    head = head_revision()
    assert f"database: {head}, newest: {head}" in runner.invoke(app, ["db", "current"]).stdout


def test_broken_import_exits_2_with_file_line_and_column(workdir: Path) -> None:
    runner.invoke(app, ["db", "upgrade"])
    header = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"]
    path = write_csv(workdir / "p.csv", header, [["o1", "c1", "i1", "1", "abc", "2024-01-01"]])
    result = runner.invoke(app, ["import", "purchases", str(path)])
    assert result.exit_code == 2
    assert "p.csv: line 2, column 'unit_price': is not a number (value: 'abc')" in result.stderr
    assert "Traceback" not in result.output


def test_a_customers_file_with_a_repeated_id_exits_2_naming_both_lines(workdir: Path) -> None:
    runner.invoke(app, ["db", "upgrade"])
    rows = [["c1", "a@example.test"], ["c2", ""], ["c1", "b@example.test"]]
    path = write_csv(workdir / "people.csv", ["id", "email"], rows)
    result = runner.invoke(app, ["import", "customers", str(path)], terminal_width=200)
    assert result.exit_code == 2 and "Traceback" not in result.output
    expected = "people.csv: line 4, column 'id': the same id as line 2 (an id once per file)"
    assert f"{expected} (value: 'c1')" in result.stderr
    with make_engine("sqlite:///shop.db").connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(customers)).scalar() == 0


def test_a_pipe_or_a_device_given_to_import_exits_2_saying_what_it_is(workdir: Path) -> None:
    """An import reads its file twice (the SHA-256, then the rows): ``<(zcat orders.gz)``
    was hashed, then read empty ("the file is empty (no header line)"), and ``/dev/zero``
    was hashed for ever. Only a regular file is imported; a pipe or a device is named so."""
    runner.invoke(app, ["db", "upgrade"])
    readable, writable = os.pipe()
    os.write(writable, b"id,email\nc1,a@example.test\n")
    os.close(writable)
    try:
        piped = runner.invoke(app, ["import", "customers", f"/dev/fd/{readable}"])
    finally:
        os.close(readable)
    device = runner.invoke(app, ["import", "customers", "/dev/null"], terminal_width=200)
    assert (piped.exit_code, device.exit_code) == (2, 2)
    assert "cannot read file: not a regular file (a named pipe (FIFO))" in piped.stderr
    assert "/dev/null: cannot read file: not a regular file (a device)" in device.stderr
    with make_engine("sqlite:///shop.db").connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(customers)).scalar() == 0


@pytest.mark.parametrize("zone", ["Mars/Base", "Europe", "localtime"])
@pytest.mark.parametrize("kind", ["customers", "purchases"])
def test_an_import_time_zone_that_is_no_iana_zone_exits_2_naming_option_and_value(
    workdir: Path, kind: str, zone: str
) -> None:
    """``--time-zone`` was handed to ``ZoneInfo`` unchecked: a zone it cannot load (or a
    folder of the zone database) ended the import in a traceback with exit 1."""
    runner.invoke(app, ["db", "upgrade"])
    path = write_csv(workdir / "c.csv", ["id", "email"], [["c1", "a@example.test"]])
    result = runner.invoke(app, ["import", kind, str(path), "--time-zone", zone])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "Invalid value for '--time-zone'" in result.stderr and repr(zone) in result.stderr
    with make_engine("sqlite:///shop.db").connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(customers)).scalar() == 0


def test_imported_customers_without_a_locale_get_the_shops_default_locale(workdir: Path) -> None:
    """README: the e-mail's language is "the customer's, else the shop's default_locale"
    (default "de"). A customers file without a locale stored "en" for everyone instead."""
    runner.invoke(app, ["db", "upgrade"])
    rows = [["c1", "a@example.test", ""], ["c2", "b@example.test", "en"]]
    path = write_csv(workdir / "people.csv", ["id", "email", "locale"], rows)
    plain = write_csv(workdir / "plain.csv", ["id", "email"], [["c3", "c@example.test"]])
    assert runner.invoke(app, ["import", "customers", str(path)]).exit_code == 0
    assert runner.invoke(app, ["import", "customers", str(plain)]).exit_code == 0
    with make_engine("sqlite:///shop.db").connect() as connection:
        found = dict(connection.execute(sa.select(customers.c.id, customers.c.locale)).all())
    assert found == {"c1": "de", "c2": "en", "c3": "de"}


def test_customers_an_online_retail_file_adds_get_the_shops_default_locale(workdir: Path) -> None:
    """The online-retail format adds a bare row for every customer its orders name; it took
    the column's server default "en", and a later PUT /v1/customers without a locale kept
    it: a German shop (default "de") mailed them in English."""
    runner.invoke(app, ["db", "upgrade"])
    header = ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice"]
    row = ["536365", "85123A", "HEART", "6", "2010-12-01 08:26:00", "2.55", "17850", "Germany"]
    path = write_csv(workdir / "retail.csv", [*header, "CustomerID", "Country"], [row])
    result = runner.invoke(app, ["import", "purchases", "--format", "online-retail", str(path)])
    assert result.exit_code == 0, result.output
    with make_engine("sqlite:///shop.db").connect() as connection:
        found = dict(connection.execute(sa.select(customers.c.id, customers.c.locale)).all())
    assert found == {"17850": "de"}


def test_bad_settings_exit_2_naming_the_key(workdir: Path) -> None:
    (workdir / "settings.toml").write_text('[shop]\ntime_zone = "Mars/Base"\n')
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2
    assert "settings.toml" in result.stderr and "shop.time_zone" in result.stderr
    assert "line 2" in result.stderr and "Mars/Base" in result.stderr


def test_a_forecast_lifetime_shorter_than_its_horizon_exits_2_naming_key_and_value(
    workdir: Path,
) -> None:
    """``lifetime_value`` stretches the horizon's expected revenue to ``lifetime_days``: a
    shorter lifetime shrank it below what the customer is expected to spend in the horizon
    (and ``lifetime_value_top_share`` chose by that). The lifetime may equal the horizon."""
    settings = workdir / "settings.toml"
    settings.write_text("[forecast]\nhorizon_days = 400\nlifetime_days = 365\n")
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2, result.output
    assert "settings.toml" in result.stderr and "forecast.lifetime_days" in result.stderr
    assert "line 3" in result.stderr and "365" in result.stderr
    assert "at least horizon_days (400)" in result.stderr
    assert not (workdir / "recocamp.db").exists()
    settings.write_text("[forecast]\nhorizon_days = 400\nlifetime_days = 400\n")
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0


@pytest.mark.parametrize(
    ("key", "value"),
    [("max_int_bits", 10**100), ("max_loop_iterations", 10**100), ("max_loop_iterations", 0)],
)
def test_a_template_limit_out_of_range_exits_2_and_writes_nothing(
    workdir: Path, key: str, value: int
) -> None:
    """A limit of 10**100 would switch the template sandbox off, 0 would fail every render."""
    (workdir / "settings.toml").write_text(
        f'database_url = "sqlite:///shop.db"\n[templates]\n{key} = {value}\n'
    )
    result = runner.invoke(app, ["db", "upgrade"], terminal_width=400)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"settings.toml: line 3, key 'templates.{key}'" in result.stderr
    assert f"(value: {value})" in result.stderr
    assert not (workdir / "shop.db").exists()


def test_synthetic_demo_shop_end_to_end(workdir: Path) -> None:
    result = runner.invoke(app, ["demo-data"])
    assert result.exit_code == 0, result.output
    assert "synthetic shop" in result.stdout
    engine = make_engine("sqlite:///shop.db")
    with engine.connect() as connection:
        people = connection.execute(sa.select(customers)).all()
        lines = connection.execute(sa.select(sa.func.count()).select_from(purchases)).scalar_one()
    engine.dispose()
    assert len(people) == 120 and lines > 500
    assert all(p.email.endswith("@example.test") for p in people)
    assert {p.consent_basis for p in people} == {"double_opt_in", "existing_customer", "none"}
    assert (workdir / "demo" / "purchases.csv").exists()

    again = runner.invoke(app, ["demo-data"])
    assert again.exit_code == 0 and "already imported" in again.stdout
    kpis = runner.invoke(app, ["kpis", "--as-of", "2011-12-10", "--window-days", "90"])
    assert kpis.exit_code == 0 and "repeat_purchase_rate" in kpis.stdout


ROOT = Path(__file__).resolve().parents[2]


def test_check_lists_every_broken_campaign_and_template(workdir: Path) -> None:
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    shutil.copytree(ROOT / "templates", workdir / "templates")
    assert runner.invoke(app, ["check"]).exit_code == 0
    winback = workdir / "campaigns" / "winback.toml"
    winback.write_text(
        winback.read_text().replace('cron = "0 10 * * TUE"', 'cron = "0 25 * * TUE"')
    )
    (workdir / "templates" / "birthday.txt").write_text(
        '{% extends "base.txt" %}{% block content %}{{ customer.password }}{% endblock %}'
    )
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 2
    assert "winback.toml" in result.stderr and "schedule.cron" in result.stderr
    assert "birthday.toml" in result.stderr and "customer.password" not in result.stdout
    assert "birthday.txt" in result.stderr and "outside the template context" in result.stderr


def test_check_refuses_an_existing_customer_campaign_whose_mail_lacks_the_opt_out_notice(
    workdir: Path,
) -> None:
    """UWG §7(3) lets a shop mail its customers without a double opt-in only if every such
    e-mail tells them that they may object at any time (the layouts print it when
    ``existing_customer_notice`` is true). A template of its own that never prints it passed
    check, and every winback mail to an existing customer went out without the notice; a
    campaign only for double opt-ins needs none. The other campaigns still pass."""
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    shutil.copytree(ROOT / "templates", workdir / "templates")
    for suffix in ("html", "txt"):
        (workdir / "templates" / f"plain.{suffix}").write_text(
            "Hello {{ customer.first_name }}: {% for o in offers %}{{ o.title }} {% endfor %}"
            "Unsubscribe: {{ unsubscribe_url }}"
        )
    winback = workdir / "campaigns" / "winback.toml"
    text = winback.read_text().replace('"winback.html"', '"plain.html"')
    winback.write_text(text.replace('"winback.txt"', '"plain.txt"'))
    result = runner.invoke(app, ["check"], terminal_width=300)
    assert result.exit_code == 2
    assert "winback.toml" in result.stderr and "birthday.toml" not in result.stderr
    for suffix in ("html", "txt"):
        assert (
            f"templates/plain.{suffix}: never prints the opt-out notice (existing_customer_notice)"
        ) in result.stderr, result.stderr
    winback.write_text(winback.read_text().replace(', "existing_customer"]', "]"))
    assert runner.invoke(app, ["check"]).exit_code == 0


def test_check_lists_hostile_templates_and_healthy_campaigns_still_plan(workdir: Path) -> None:
    """Issue 15: a template that would never finish, a misspelt include, an include or
    extends outside the templates folder: each a problem with file and line, exit 2; the
    other campaigns plan and preview as before."""
    import json
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    shutil.copytree(ROOT / "templates", workdir / "templates")
    edits = {  # file → (line, replaced, replacement)
        "winback.html": (4, '"_offers.html"', '"_offer.html"'),
        "birthday.html": (4, '{% include "_offers.html" %}', "{{ 9**(9**9) }}"),
        "vip_tier.txt": (5, '"_offers.txt"', "'/etc/passwd'"),
        "replenish.html": (1, '"base.html"', "'../../x'"),
    }
    for name, (line, old, replacement) in edits.items():
        path = workdir / "templates" / name
        lines = path.read_text().split("\n")
        assert old in lines[line - 1]
        lines[line - 1] = lines[line - 1].replace(old, replacement)
        path.write_text("\n".join(lines))
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    for name, (line, _old, _new) in edits.items():
        assert f"  templates/{name}: line {line}: " in result.stderr, name
    assert "template not found: '_offer.html'" in result.stderr
    assert "'/etc/passwd' is outside the templates folder" in result.stderr
    assert "'../../x' is outside the templates folder" in result.stderr
    assert "4,096 bits" in result.stderr
    broken = runner.invoke(app, ["plan", "winback"])
    assert broken.exit_code == 2 and "_offer.html" in broken.stderr
    for command in (["plan", "birthday"], ["preview", "birthday", "--customer", "1"]):
        stuck = runner.invoke(app, command)
        assert stuck.exit_code == 2 and "birthday.html" in stuck.stderr
        assert "4,096 bits" in stuck.stderr
    assert runner.invoke(app, ["demo-data"]).exit_code == 0
    healthy = runner.invoke(app, ["plan", "cross_sell", "--as-of", "2011-12-15T10:00:00"])
    assert healthy.exit_code == 0, healthy.output
    planned = runner.invoke(
        app, ["plan", "cross_sell", "--as-of", "2011-12-15T10:00:00", "--format", "json"]
    ).stdout
    first = json.loads(planned)["decisions"][0]["customer_id"]
    preview = runner.invoke(
        app, ["preview", "cross_sell", "--customer", first, "--as-of", "2011-12-15T10:00:00"]
    )
    assert preview.exit_code == 0, preview.output


def test_plan_json_and_preview_on_the_synthetic_shop(workdir: Path) -> None:
    import json
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    shutil.copytree(ROOT / "templates", workdir / "templates")
    assert runner.invoke(app, ["demo-data"]).exit_code == 0
    result = runner.invoke(
        app, ["plan", "cross_sell", "--as-of", "2011-12-15T10:00:00", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["campaign"] == "cross_sell" and len(plan["decisions"]) == 120
    assert sum(plan["counts"].values()) == 120
    assert {d["outcome"] for d in plan["decisions"]} <= {"send", "skip", "holdout", "defer"}
    sends = [d for d in plan["decisions"] if d["outcome"] == "send"]
    assert sends and all(d["offers"] and d["reason"] == "eligible" for d in sends)
    customer = sends[0]["customer_id"]
    out = workdir / "mail.html"
    preview = runner.invoke(
        app,
        [
            "preview",
            "cross_sell",
            "--customer",
            customer,
            "--as-of",
            "2011-12-15T10:00:00",
            "--html",
            str(out),
        ],
    )
    assert preview.exit_code == 0, preview.output
    assert "decision: send" in preview.stdout and "/u/2" in preview.stdout
    assert "style=" in out.read_text()  # inlined CSS
    # the customer's name, offers and live signed links (their data download, their
    # erasure): readable by its owner alone, as `privacy export --output` writes
    assert out.stat().st_mode & 0o077 == 0, oct(out.stat().st_mode)
    unknown = runner.invoke(app, ["plan", "nope"])
    assert unknown.exit_code == 2 and "no such campaign" in unknown.stderr


def test_worker_demo_runs_the_schedule_on_a_simulated_clock_exactly_once(workdir: Path) -> None:
    """README's main command, on a small synthetic shop: the demo shop is built, the first
    model trained, two simulated days of the real job table run through a fake ESP on
    loopback, every run recorded, and no e-mail arrives twice."""
    import json
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    shutil.copytree(ROOT / "templates", workdir / "templates")
    levels = {name: logging.getLogger(name).level for name in ("recocamp", "apscheduler")}
    result = runner.invoke(app, ["worker", "--demo", "--days", "2", "--start", "2011-12-07"])
    assert result.exit_code == 0, result.output
    # the worker's log levels are its own: in-process callers keep theirs (they hid the
    # API's log records from a later test)
    assert {name: logging.getLogger(name).level for name in levels} == levels
    assert logging.getLogger("apscheduler.scheduler").level == logging.NOTSET
    assert "simulating 2 days of the schedule from Wed 07 Dec 2011 00:00" in result.stdout
    assert "campaign:" in result.stdout and "train" in result.stdout
    lines = (workdir / "demo" / "fake-esp" / "messages.jsonl").read_text().splitlines()
    keys = [json.loads(line)["send_key"] for line in lines]
    assert keys and len(keys) == len(set(keys))
    assert f"fake ESP: {len(keys):,} e-mails, {len(keys):,} unique send keys, 0 duplicates" in (
        result.stdout
    )
    runs = runner.invoke(app, ["runs", "list", "--format", "json", "--limit", "500"])
    assert runs.exit_code == 0, runs.output
    recorded = json.loads(runs.stdout)
    jobs = {run["job"] for run in recorded}
    assert {"train", "kpi_snapshot", "purge"} <= jobs
    assert any(job.startswith("campaign:") for job in jobs)
    # the simulated clock stands still during a job; the recorded duration does not
    train = next(run for run in recorded if run["job"] == "train")
    assert train["started_at"] == train["finished_at"] and train["seconds"] > 0
    table = runner.invoke(app, ["runs", "list", "--limit", "3"], terminal_width=200)
    assert "started (UTC)" in table.stdout
    assert f"newest 3 of {len(recorded):,} runs; --limit N shows more" in table.stdout
    assert not (workdir / "shop.db.worker-lock").exists()  # released and removed


# -- one small trained shop shared by the read-only command tests below ----------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The synthetic demo shop (120 customers, data up to December 2011), the shipped
    campaigns and templates, and a live model."""
    import os
    import shutil

    directory = tmp_path_factory.mktemp("trained")
    (directory / "settings.toml").write_text(
        'database_url = "sqlite:///shop.db"\n'
        "[demo]\nsynthetic_customers = 120\nsynthetic_items = 80\nsynthetic_days = 120\n"
        'online_retail_path = "missing.csv.gz"\n'
        '[recommender]\nmodel = "item_knn"\nevaluation_horizon_days = 30\n'
    )
    shutil.copytree(ROOT / "campaigns", directory / "campaigns")
    shutil.copytree(ROOT / "templates", directory / "templates")
    before = Path.cwd()
    os.chdir(directory)
    try:
        assert runner.invoke(app, ["demo-data"]).exit_code == 0
        done = runner.invoke(app, ["train", "--as-of", "2011-12-10"])
        assert done.exit_code == 0 and "promoted" in done.stdout, done.output
        assert "forecast: " in done.stdout  # the same job stores the purchase forecasts
        yield directory
    finally:
        os.chdir(before)


@pytest.fixture
def in_trained(trained: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(trained)
    return trained


def test_evaluate_prints_the_cutoff_it_was_given(in_trained: Path) -> None:
    result = runner.invoke(
        app, ["evaluate", "--cutoff", "2011-11-01", "--horizon-days", "30", "--model", "popularity"]
    )
    assert result.exit_code == 0, result.output
    # midnight in the shop's zone (Europe/Berlin), not the UTC date 2011-10-31
    assert "cutoff 2011-11-01 00:00 (Europe/Berlin), horizon 30 days" in result.stdout


def test_tables_too_wide_for_80_columns_show_every_value_whole(
    in_trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At 80 columns rich cut the model version short (`models promote` needs it whole) and
    gave the metrics of `models list` no width at all; the forecast's revenue read
    `162,4…`. Such a table is printed one block per row, every value whole."""
    monkeypatch.setattr(common.console, "width", 80)
    version = runner.invoke(app, ["models", "list"])
    assert version.exit_code == 0, version.output
    lines = version.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines[:-1]) <= 80  # the legend is soft-wrapped
    row = {line.split("  ")[0]: line.split()[-1] for line in lines if "  " in line}
    assert re.fullmatch(r"2011\d{4}T\d{6}-item_knn-[0-9a-f]{8}", row["version (data cutoff,"])
    assert row["status"] == "live" and re.fullmatch(r"0\.\d{4}", row["recall"])
    forecast = runner.invoke(app, ["forecast", "--as-of", "2011-12-10", "--limit", "3"])
    assert forecast.exit_code == 0, forecast.output
    assert "…" not in forecast.stdout
    lines = forecast.stdout.splitlines()
    values = [line.split()[-1] for line in lines if line.startswith("lifetime value  ")]
    assert len(values) == 3 and all(re.fullmatch(r"[\d,]+\.\d\d", v) for v in values)


def test_evaluate_by_default_splits_at_shop_local_midnight(
    in_trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No --cutoff: the newest purchase's day (2011-12-09) less the horizon, at midnight in
    the shop's zone, the split `--cutoff 2011-11-09` names (was the UTC midnight, 01:00)."""
    monkeypatch.setattr(common.clock, "now", lambda: datetime(2026, 12, 4, 9, tzinfo=UTC))
    result = runner.invoke(app, ["evaluate", "--model", "popularity", "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["cutoff"] == "2011-11-09T00:00:00+01:00"


def test_evaluate_refuses_a_horizon_the_data_does_not_reach_and_a_cutoff_before_it(
    in_trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo data ends on 2011-12-09: a split there scores a day or two of a 30-day
    horizon, one before the first purchase nobody at all; both are bad input. (The command
    line's clock is fixed: what the data covers depends on the clock's yesterday.)"""
    monkeypatch.setattr(common.clock, "now", lambda: datetime(2026, 12, 4, 9, tzinfo=UTC))

    def evaluate(cutoff: str, *options: str) -> Any:
        return runner.invoke(
            app,
            [
                "evaluate",
                "--cutoff",
                cutoff,
                "--horizon-days",
                "30",
                "--model",
                "popularity",
                *options,
            ],
        )

    refused = evaluate("2011-12-09")
    assert refused.exit_code == 2
    assert refused.output == (
        "error: the horizon of cutoff 2011-12-09 runs to 2012-01-07, past the last day the "
        "data covers (2011-12-16): it is not closed (--open-horizon measures the days seen so "
        "far)\n"
    )
    warned = evaluate("2011-12-09", "--open-horizon")
    assert warned.exit_code == 0, warned.output
    # the newest purchase is on 2011-12-09; a quiet week after it counts as recorded
    assert "the figures count only the purchases seen so far, up to 2011-12-16" in warned.output
    before = evaluate("1900-01-01")
    assert before.exit_code == 2 and "no purchase before the cutoff 1900-01-01" in before.output


def test_kpis_say_when_the_window_holds_no_orders(in_trained: Path) -> None:
    with make_engine("sqlite:///shop.db").connect() as connection:
        last = connection.execute(sa.select(sa.func.max(purchases.c.ordered_at))).scalar_one()
    empty = runner.invoke(app, ["kpis", "--as-of", "2015-01-01"])
    assert empty.exit_code == 0, empty.output
    assert (
        f"note: the window 2014-01-01 – 2015-01-01 holds no orders; the last order was on "
        f"{last.astimezone(ZoneInfo('Europe/Berlin')).date()}"
    ) in empty.stdout
    as_json = runner.invoke(app, ["kpis", "--as-of", "2015-01-01", "--format", "json"])
    assert json.loads(as_json.stdout)["orders"] == 0 and "holds no orders" in as_json.stderr
    busy = runner.invoke(app, ["kpis", "--as-of", "2011-12-10"])
    assert busy.exit_code == 0 and "note:" not in busy.stdout


def test_similar_refuses_unknown_items_and_says_what_the_scores_are(in_trained: Path) -> None:
    unknown = runner.invoke(app, ["similar", "NOPE"])
    assert unknown.exit_code == 1
    assert "no item 'NOPE' in the catalogue" in unknown.stderr and not unknown.stdout
    with make_engine("sqlite:///shop.db").connect() as connection:
        item = connection.execute(sa.select(purchases.c.item_id).limit(1)).scalar_one()
    known = runner.invoke(app, ["similar", item, "--n", "3"], terminal_width=200)
    assert known.exit_code == 0, known.output
    assert "item-kNN bm25 weight" in known.stdout and "no upper bound" in known.stdout


def test_plan_shows_item_titles(in_trained: Path) -> None:
    as_of = "2011-12-15T10:00:00"
    document = runner.invoke(app, ["plan", "cross_sell", "--as-of", as_of, "--format", "json"])
    first = next(d for d in json.loads(document.stdout)["decisions"] if d["offers"])
    item = first["offers"][0]["item_id"]
    with make_engine("sqlite:///shop.db").connect() as connection:
        title = connection.execute(sa.select(items.c.title).where(items.c.id == item)).scalar_one()
    table = runner.invoke(app, ["plan", "cross_sell", "--as-of", as_of, "--limit", "1"])
    assert table.exit_code == 0, table.output
    flat = " ".join(part.strip(" │┃") for part in table.stdout.splitlines())
    assert f"{title} [{item}]" in " ".join(flat.split())


def test_preview_does_not_render_for_a_customer_the_plan_skips(in_trained: Path) -> None:
    as_of = "2011-12-15T10:00:00"
    document = runner.invoke(app, ["plan", "winback", "--as-of", as_of, "--format", "json"])
    skipped = next(
        d
        for d in json.loads(document.stdout)["decisions"]
        if d["reason"].startswith("not_in_audience:churn_risk — forecast")
    )  # train stored a forecast as of 2011-12-10: winback's predictive trigger decides
    args = ["preview", "winback", "--customer", skipped["customer_id"], "--as-of", as_of]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stdout.split())
    assert (
        f"customer {skipped['customer_id']} would be skipped by winback: "
        "not_in_audience:churn_risk — forecast"
    ) in flat
    assert re.search(r"— forecast \w+ 2011-12-10: churn_risk=\w+ \(p_active", flat), flat
    assert "days ago)" not in flat or "nothing rendered; --anyway" in flat
    assert "nothing rendered; --anyway" in result.stdout
    assert "subject:" not in result.stdout and "not seen you" not in result.stdout
    anyway = runner.invoke(app, [*args, "--anyway"])
    assert anyway.exit_code == 0 and "subject:" in anyway.stdout


def test_preview_of_a_template_that_fails_for_this_customer_names_template_and_line(
    in_trained: Path, tmp_path: Path
) -> None:
    """A template that passes ``check`` (its sample renders) and fails for one customer's
    data (a division by zero on their value): preview is where its author looks, and it
    printed a ZeroDivisionError traceback. Now: the template, its line, what failed and the
    customer, exit 2 (the template is the bad input); nothing written."""
    import shutil

    templates = tmp_path / "templates"
    shutil.copytree(in_trained / "templates", templates)
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    with make_engine("sqlite:///shop.db").connect() as connection:
        customer = connection.execute(sa.select(customers.c.id).limit(1)).scalar_one()
    (templates / "fragile.html").write_text(
        '{% extends "base.html" %}{% block content %}\n'
        f'<p>{{{{ 100 // (0 if customer.id == "{customer}" else 1) }}}}</p>\n'
        "{% endblock %}\n"
    )
    (campaigns / "fragile.toml").write_text(
        (in_trained / "campaigns" / "cross_sell.toml")
        .read_text()
        .replace('name = "cross_sell"', 'name = "fragile"')
        .replace('html = "cross_sell.html"', 'html = "fragile.html"')
    )
    where = ["--campaigns", str(campaigns), "--templates", str(templates)]
    assert runner.invoke(app, ["check", *where]).exit_code == 0  # the sample renders
    out = tmp_path / "mail.html"
    args = ["preview", "fragile", "--customer", customer, "--anyway", "--html", str(out), *where]
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    flat = " ".join(result.stderr.split())
    assert f"{templates / 'fragile.html'}: line 2: fails to render: ZeroDivisionError" in flat
    assert f"customer {customer}" in flat and "Traceback" not in result.output
    assert not out.exists()
    fails = "{{ 100 // (0 if customer.id == '" + customer + "' else 1) }}"
    (campaigns / "fragile.toml").write_text(  # the same in the subject line
        (campaigns / "fragile.toml")
        .read_text()
        .replace('html = "fragile.html"', 'html = "cross_sell.html"')
        .replace('"Picked for you this week"', f'"{fails}"')
        .replace('"Neu für Sie ausgewählt"', f'"{fails}"')
    )
    subject = runner.invoke(app, args, terminal_width=300)
    assert subject.exit_code == 2, subject.output
    flat = " ".join(subject.stderr.split())
    assert f"{campaigns / 'fragile.toml'}: subject: fails to render: ZeroDivisionError" in flat
    assert f"customer {customer}" in flat


def test_plan_counts_the_customers_whose_subject_the_run_cannot_write(
    in_trained: Path, tmp_path: Path
) -> None:
    """A subject that fails on one customer's data: the run skips them as ``not_rendered``;
    the dry run showed them as mailed. Now the plan says what the run will do, and why."""
    as_of = "2011-12-15T10:00:00"
    before = runner.invoke(app, ["plan", "cross_sell", "--as-of", as_of, "--format", "json"])
    assert before.exit_code == 0, before.output
    mailed = [d for d in json.loads(before.stdout)["decisions"] if d["outcome"] == "send"]
    assert len(mailed) >= 2
    customer = mailed[0]["customer_id"]
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    fails = "{{ 100 // (0 if customer.id == '" + customer + "' else 1) }}"
    (campaigns / "cross_sell.toml").write_text(
        (in_trained / "campaigns" / "cross_sell.toml")
        .read_text()
        .replace('"Picked for you this week"', f'"{fails}"')
        .replace('"Neu für Sie ausgewählt"', f'"{fails}"')
    )
    where = ["--campaigns", str(campaigns), "--as-of", as_of]
    after = runner.invoke(app, ["plan", "cross_sell", *where, "--format", "json"])
    assert after.exit_code == 0, after.output
    document = json.loads(after.stdout)
    decided = {d["customer_id"]: d for d in document["decisions"]}
    assert decided[customer]["outcome"] == "skip"
    assert decided[customer]["reason"] == "not_rendered" and decided[customer]["offers"] == []
    assert all(decided[d["customer_id"]]["outcome"] == "send" for d in mailed[1:])
    assert document["counts"]["not_rendered"] == 1
    counted = json.loads(before.stdout)["counts"]
    reason = mailed[0]["reason"]
    assert document["counts"] == {**counted, reason: counted[reason] - 1, "not_rendered": 1}
    (warning,) = document["warnings"]
    assert "skipped as not_rendered" in warning and f"customer {customer}" in warning
    assert "ZeroDivisionError" in warning or "division" in warning
    table = runner.invoke(app, ["plan", "cross_sell", *where], terminal_width=300)
    assert table.exit_code == 0, table.output
    assert "not_rendered" in table.stdout and f"customer {customer}" in " ".join(
        table.output.split()
    )


def test_train_says_which_rule_rejected_a_candidate(in_trained: Path) -> None:
    result = runner.invoke(app, ["train", "--as-of", "2011-12-10", "--model", "popularity"])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stdout.split())
    assert "rejected: " in flat and ": clearly worse)" in flat and "on the same split" in flat
    assert "rule: promote unless the 95 % paired-bootstrap interval of candidate − live" in flat
    assert "top-N cache: unchanged, the live model keeps serving" in flat


def test_evaluate_json_lists_every_model_with_tifu_knn_and_keeps_its_schema(
    in_trained: Path,
) -> None:
    result = runner.invoke(
        app, ["evaluate", "--cutoff", "2011-11-01", "--horizon-days", "30", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert set(document) == {"cutoff", "horizon_days", "k", "models"}
    assert list(document["models"]) == list(MODEL_NAMES) and "tifu_knn" in document["models"]
    tifu = document["models"]["tifu_knn"]
    assert set(tifu) == set(document["models"]["repeat_frequency"]) >= {"recall", "ndcg"}
    assert tifu["customers"] > 0 and 0 < tifu["recall"] <= 1
    refused = runner.invoke(app, ["train", "--model", "tifu_knn"], terminal_width=200)
    # bad input (exit 2, before anything is read), not a failed training (exit 1)
    assert refused.exit_code == 2 and "'tifu_knn' is not one of" in refused.output
    assert "tifu_knn" not in runner.invoke(app, ["train", "--help"], terminal_width=200).output


@pytest.mark.parametrize("quantity", ["[/]", "[bold]x"])
def test_import_errors_print_the_value_as_it_is_not_as_markup(workdir: Path, quantity: str) -> None:
    runner.invoke(app, ["db", "upgrade"])
    header = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"]
    path = write_csv(workdir / "p.csv", header, [["o1", "c1", "i1", quantity, "1", "2024-01-01"]])
    result = runner.invoke(app, ["import", "purchases", str(path)])
    assert result.exit_code == 2, result.output
    assert "column 'quantity'" in result.stderr and f"(value: {quantity!r})" in result.stderr
    assert "Traceback" not in result.output


def test_item_titles_with_brackets_print_as_they_are(in_trained: Path) -> None:
    as_of = "2011-12-15T10:00:00"
    document = runner.invoke(app, ["plan", "cross_sell", "--as-of", as_of, "--format", "json"])
    first = next(d for d in json.loads(document.stdout)["decisions"] if d["offers"])
    item = first["offers"][0]["item_id"]
    hostile = "[/] PAPER CHAIN [red]KIT"
    engine = make_engine("sqlite:///shop.db")
    with engine.begin() as connection:
        title = connection.execute(sa.select(items.c.title).where(items.c.id == item)).scalar_one()
        connection.execute(items.update().where(items.c.id == item).values(title=hostile))
    try:
        table = runner.invoke(
            app, ["plan", "cross_sell", "--as-of", as_of, "--limit", "1"], terminal_width=300
        )
        assert table.exit_code == 0, table.output
        assert hostile in table.stdout
        recommended = runner.invoke(app, ["recommend", "99999999"], terminal_width=300)
        assert recommended.exit_code == 0, recommended.output
    finally:
        with engine.begin() as connection:
            connection.execute(items.update().where(items.c.id == item).values(title=title))
        engine.dispose()


def ranks(output: str) -> list[str]:
    """The item ids of a ``recommend`` table, in rank order."""
    rows = [line.split("│") for line in output.splitlines() if line.startswith("│")]
    return [row[2].strip() for row in rows if row[1].strip().isdigit()]


@pytest.mark.parametrize("who", ["cached", "nobody-we-know"])
def test_recommend_lists_n_beyond_top_n(in_trained: Path, who: str) -> None:
    """``--n`` takes up to 1,000, but the list shown was the cached top-N row or the live
    model's stored popularity, both ``top_n`` (20) long: ``recommend C --n 40`` printed 20
    rows without a word. They now go on with the model's ranking past them, the first 20
    as before."""
    engine = make_engine("sqlite:///shop.db")
    try:
        with engine.connect() as connection:
            first = sa.select(recommendations.c.customer_id).order_by("customer_id").limit(1)
            customer = str(connection.execute(first).scalar_one())
    finally:
        engine.dispose()
    customer = customer if who == "cached" else who
    short = runner.invoke(app, ["recommend", customer, "--n", "20"], terminal_width=300)
    long = runner.invoke(app, ["recommend", customer, "--n", "30"], terminal_width=300)
    assert short.exit_code == long.exit_code == 0, long.output
    assert len(ranks(short.stdout)) == 20
    assert ranks(long.stdout)[:20] == ranks(short.stdout)
    assert len(ranks(long.stdout)) == 30, long.stdout


def test_check_refuses_unreadable_files_and_unknown_filters_without_a_traceback(
    workdir: Path,
) -> None:
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    shutil.copytree(ROOT / "templates", workdir / "templates")
    base = workdir / "templates" / "base.txt"
    base.write_text(base.read_text().replace("first_name or", "first_name|nosuchfilter or"))
    (workdir / "campaigns" / "y.toml").write_bytes(b"\xff\xfe")
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "y.toml: line 1: not UTF-8" in result.stderr
    assert "templates/base.txt: line" in result.stderr
    assert ": syntax error: No filter named 'nosuchfilter'. (included by " in result.stderr
    (workdir / "settings.toml").write_bytes(b'database_url = "sqlite:///x.db"\n# \xff\n')
    result = runner.invoke(app, ["check"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "settings.toml: line 2: not UTF-8" in result.stderr


@pytest.mark.parametrize(
    ("args", "option", "value"),
    [
        (["kpis", "--window-days", "99999999999"], "--window-days", "99999999999"),
        (["kpis", "--as-of", "0001-01-01"], "--as-of", "0001-01-01"),
        (["kpis", "--as-of", "9999-12-31T23:00:00"], "--as-of", "9999-12-31T23:00:00"),
        (["evaluate", "--cutoff", "1800-01-01"], "--cutoff", "1800-01-01"),
        (["evaluate", "--horizon-days", "99999999999"], "--horizon-days", "99999999999"),
        (["worker", "--demo", "--days", "99999999999"], "--days", "99999999999"),
        (["forecast", "--as-of", "0001-01-01"], "--as-of", "0001-01-01"),
        (
            ["snapshots", "backfill", "--from", "1800-01-01", "--to", "1800-01-02"],
            "--to",
            "1800-01-02",
        ),
        (["snapshots", "backfill", "--from", "1800-01-01"], "--from", "1800-01-01"),
    ],
)
def test_out_of_range_options_exit_2_naming_option_and_value(
    workdir: Path, args: list[str], option: str, value: str
) -> None:
    runner.invoke(app, ["db", "upgrade"])
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 2, result.output
    assert option in result.stderr and value in result.stderr, result.stderr
    assert "Traceback" not in result.output
    with make_engine("sqlite:///shop.db").connect() as connection:
        assert connection.execute(sa.text("select count(*) from kpi_snapshots")).scalar_one() == 0


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (
            "2026-10-25T02:30",
            "happens twice in Europe/Berlin (the clocks go back): add the offset, +02:00 or +01:00",
        ),
        ("2026-03-29T02:30", "does not exist in Europe/Berlin (the clocks go forward over it)"),
    ],
)
def test_a_local_time_the_clocks_skip_or_repeat_exits_2(
    workdir: Path, value: str, says: str
) -> None:
    """A wall time of the night the clocks change names no single instant: before, the
    repeated one was silently the first and the skipped one an hour away."""
    with (workdir / "settings.toml").open("a") as settings:
        settings.write('[shop]\ntime_zone = "Europe/Berlin"\n')
    runner.invoke(app, ["db", "upgrade"])
    result = runner.invoke(app, ["kpis", "--as-of", value], terminal_width=200)
    assert result.exit_code == 2, result.output
    assert "--as-of" in result.stderr and value in result.stderr
    assert says in " ".join(result.stderr.split())


@pytest.mark.parametrize(
    ("value", "instant"),
    [
        ("2026-10-25T02:30+01:00", datetime(2026, 10, 25, 1, 30, tzinfo=UTC)),
        ("2026-10-25T02:30+02:00", datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
        ("2026-10-25T03:30", datetime(2026, 10, 25, 2, 30, tzinfo=UTC)),
        ("2026-03-29", datetime(2026, 3, 28, 23, 0, tzinfo=UTC)),
        ("2026-03-29T03:00", datetime(2026, 3, 29, 1, 0, tzinfo=UTC)),
    ],
)
def test_as_of_names_one_instant(value: str, instant: datetime) -> None:
    assert common.parse_as_of(value, ZoneInfo("Europe/Berlin")) == instant


@pytest.mark.parametrize(
    ("args", "option", "value", "bounds"),
    [
        (["evaluate"], "--k", "1000000000000", "1 to 1,000"),
        (["evaluate"], "--k", "0", "1 to 1,000"),
        (["recommend", "c1"], "--n", "1000000000000", "1 to 1,000"),
        (["similar", "i1"], "--n", "0", "1 to 1,000"),
        (["plan", "winback"], "--limit", "-1", "0 to 1,000,000"),
        (["forecast"], "--limit", "1000000000000", "1 to 1,000,000"),
        (["forecast"], "--horizon-days", "6", "7 to 730"),
        (["runs", "list"], "--limit", "0", "1 to 1,000,000"),
        (["serve"], "--port", "70000", "1 to 65,535"),
        (["serve"], "--workers", "65", "1 to 64"),
        (["worker"], "--metrics-port", "-1", "0 to 65,535"),
        (["worker", "--demo"], "--days", "0", "1 to 36,500"),
        (["kpis"], "--window-days", "0", "1 to 36,500"),
        (["outbox", "deliver"], "--wait", "nan", "0.0 to 604,800.0"),
        (["send", "winback"], "--wait", "1e300", "0.0 to 604,800.0"),
        (["fake-esp"], "--rate-429", "2", "0.0 to 1.0"),
        (["fake-esp"], "--port", "0", "1 to 65,535"),
    ],
)
def test_numeric_options_have_a_range_named_with_the_value(
    workdir: Path, args: list[str], option: str, value: str, bounds: str
) -> None:
    """``--k 10**12`` would allocate for a trillion results, ``--limit -1`` slices from the
    end: each is refused as it is parsed (exit 2: option, value, range), nothing written."""
    result = runner.invoke(app, [*args, option, value], terminal_width=300)
    assert result.exit_code == 2, result.output
    shown = str(float(value)) if "." in bounds and value != "nan" else value
    assert f"Invalid value for '{option}': {shown} is out of range ({bounds})" in result.stderr
    assert "Traceback" not in result.output
    assert not (workdir / "shop.db").exists()  # not even the database was opened


@pytest.mark.parametrize("url", ["notaurl", "ftp://example.test/hook", "http://"])
def test_fake_esp_refuses_a_webhook_url_it_could_never_post_to(workdir: Path, url: str) -> None:
    """Before, ``--webhook-url notaurl`` started, and each webhook then answered 500."""
    result = runner.invoke(app, ["fake-esp", "--webhook-url", url], terminal_width=300)
    assert result.exit_code == 2, result.output
    shown = " ".join(result.stderr.replace("│", " ").split())  # the error box wraps lines
    assert f"Invalid value for '--webhook-url': {url!r} is not an http(s) URL" in shown


def test_check_names_the_included_template_and_the_subject_line(workdir: Path) -> None:
    """A partial that is not UTF-8 is named at its own path and line (not the template that
    includes it, nor the campaign file's line), with the template and campaign that use it;
    a subject's problem has its key and line in the campaign file: exit 2."""
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    shutil.copytree(ROOT / "templates", workdir / "templates")
    (workdir / "templates" / "partials").mkdir()
    (workdir / "templates" / "partials" / "x.txt").write_bytes(b"fine\n\xff\n")
    winback = workdir / "templates" / "winback.txt"
    winback.write_text(
        winback.read_text().replace('{% include "_offers.txt" %}', '{% include "partials/x.txt" %}')
    )
    toml = workdir / "campaigns" / "winback.toml"
    toml.write_text(toml.read_text().replace("This week only", "{{ custmer }} only"))
    result = runner.invoke(app, ["check"], terminal_width=300)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "  templates/partials/x.txt: line 2: not UTF-8 (byte" in result.stderr
    assert "(included by winback.txt, campaign winback)" in result.stderr
    assert "winback.toml: line 2" not in result.stderr
    assert "templates/winback.txt" not in result.stderr
    assert "winback.toml: line 46, key 'variants.1.subject.en': subject:" in result.stderr
    assert "(value: '{{ custmer }} only: 10 % off for you')" in result.stderr


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "holdout_percent = 10",
            'holdout_percent = "10"',
            "line 13, key 'holdout_percent': must be a number, not a string in quotes "
            "(value: '10')",
        ),
        (
            'cron = "0 10 * * TUE"',
            'cron = "0 10 31 2 *"',
            "line 16, key 'schedule.cron': Value error, never fires",
        ),
        (
            'cron = "0 10 * * TUE"',
            'cron = "* * * * *"',
            "line 16, key 'schedule.cron': Value error, fires more than once an hour (at 00:00 "
            "and then 00:01)",
        ),
        (
            'name = "urgency"',
            'name = "personal"',
            "line 44, key 'variants.1.name': variant names must be unique: 'variants.0.name' "
            "has it too (value: 'personal')",
        ),
    ],
)
def test_check_refuses_careless_campaign_values(
    workdir: Path, old: str, new: str, expected: str
) -> None:
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    shutil.copytree(ROOT / "templates", workdir / "templates")
    toml = workdir / "campaigns" / "winback.toml"
    assert old in toml.read_text()
    toml.write_text(toml.read_text().replace(old, new))
    result = runner.invoke(app, ["check"], terminal_width=300)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"winback.toml: {expected}" in result.stderr, result.stderr


def test_check_warns_of_a_subject_missing_in_the_shops_language(workdir: Path) -> None:
    """A campaign with an English subject alone sent German customers (the shop's default
    language) an English subject over a German body, and check said nothing."""
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    shutil.copytree(ROOT / "templates", workdir / "templates")
    toml = workdir / "campaigns" / "cross_sell.toml"
    toml.write_text(
        toml.read_text().replace(
            'subject = { de = "Neu für Sie ausgewählt", en = ', "subject = { en = "
        )
    )
    result = runner.invoke(app, ["check"], terminal_width=300)
    assert result.exit_code == 0, result.output
    warning = (
        "warning: campaigns/cross_sell.toml: line 20, key 'template.subject': no subject in "
        "'de' (the shop's default_locale): customers in that language get the 'en' one "
        "(value: 'en')"
    )
    assert warning in result.stderr and result.stderr.count("warning:") == 1, result.stderr
    assert runner.invoke(app, ["check", "--strict"]).exit_code == 2


def test_check_warns_of_filter_values_the_catalogue_lacks(workdir: Path) -> None:
    """Without a database the filters are not checked (and no database is made); with one,
    a category or item no item has is a warning with file, key, line, value and the closest
    categories: exit 0, or 2 with --strict; plan says why the filter matches nobody."""
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    shutil.copytree(ROOT / "templates", workdir / "templates")
    toml = workdir / "campaigns" / "cross_sell.toml"
    toml.write_text(
        toml.read_text()
        .replace("lapsed_days = [0, 60]", 'lapsed_days = [0, 60]\ncategories = ["christmass"]')
        .replace("items = 4", 'items = 4\nexclude_items = ["NO-SUCH-ITEM"]')
    )
    alone = runner.invoke(app, ["check", "--strict"], terminal_width=300)
    assert alone.exit_code == 0, alone.output
    assert "filters not checked against the catalogue: no database" in alone.stdout
    assert not (workdir / "shop.db").exists()

    assert runner.invoke(app, ["demo-data"]).exit_code == 0
    result = runner.invoke(app, ["check"], terminal_width=300)
    assert result.exit_code == 0, result.output
    category = (
        "campaigns/cross_sell.toml: line 14, key 'audience.categories.0': no item in the "
        "catalogue has "
        "this category (did you mean 'christmas'?) (value: 'christmass')"
    )
    item = (
        "campaigns/cross_sell.toml: line 19, key 'offer.exclude_items.0': no item in the "
        "catalogue has this id (value: 'NO-SUCH-ITEM')"
    )
    assert f"warning: {category}" in result.stderr and f"warning: {item}" in result.stderr
    assert "ok: settings, 6 campaign(s)" in result.stdout
    strict = runner.invoke(app, ["check", "--strict"], terminal_width=300)
    assert strict.exit_code == 2 and category in strict.stderr

    plan = runner.invoke(
        app,
        ["plan", "cross_sell", "--as-of", "2011-12-15T10:00:00", "--format", "json"],
        terminal_width=300,
    )
    assert plan.exit_code == 0, plan.output
    document = json.loads(plan.stdout)
    assert "not_in_audience:categories" in document["counts"]
    assert not {"eligible", "holdout"} & set(document["counts"])  # nobody is in the audience
    assert category in document["warnings"]


def test_check_refuses_a_sendgrid_key_that_cannot_verify_and_an_http_public_url(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both would pass unnoticed and break delivery feedback later: every SendGrid webhook
    answered 401, every List-Unsubscribe without a valid one-click URL."""
    monkeypatch.setenv("RECOCAMP_ESP__WEBHOOK_PUBLIC_KEY", "not-base64!!")
    monkeypatch.setenv("RECOCAMP_API__PUBLIC_URL", "http://shop.example.com")
    result = runner.invoke(app, ["check"], terminal_width=200)
    assert result.exit_code == 2
    assert "esp.webhook_public_key" in result.stderr and "not-base64" not in result.stderr
    assert "api.public_url" in result.stderr and "https" in result.stderr


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[Any, tuple[str, ...]]]:
    """Every command under ``command`` (typer's own click classes: duck-typed) with its path."""
    for name, sub in getattr(command, "commands", {}).items():
        yield sub, (*path, name)
        yield from _commands(sub, (*path, name))


BRACKETED = re.compile(r"\[[a-z_.]+\]")  # a settings section in a help text: [api], [privacy]


def test_every_help_shows_the_settings_sections_it_names() -> None:
    """Help texts name settings as ``[section] key``: none may be eaten as markup (it was:
    "Processes, 1 to 64 (default:  workers)")."""
    checked = 0
    for command, path in _commands(typer.main.get_command(app)):
        texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
        named = {found for text in texts for found in BRACKETED.findall(text)}
        shown = runner.invoke(app, [*path, "--help"], terminal_width=200)
        assert shown.exit_code == 0, (path, shown.output)
        for section in named:
            assert section in shown.output, (path, section, shown.output)
            checked += 1
    assert checked >= 4  # serve's [api] host/port/workers, purge's [privacy], evaluate's …


def test_no_help_shows_docstring_markup() -> None:
    """A command's docstring is its ``--help``: reStructuredText such as a double-backquoted
    function name (``recommend`` showed "(``serving.personal_list``)") reaches the user raw."""
    for _command, path in _commands(typer.main.get_command(app)):
        shown = runner.invoke(app, [*path, "--help"], terminal_width=200)
        for markup in ("``", ":func:", ":class:", ":data:"):
            assert markup not in shown.output, (path, markup)


def test_help_says_where_settings_come_from_and_what_a_send_is_idempotent_on() -> None:
    """README: ``--settings`` defaults to ``$RECOCAMP_SETTINGS``, else ``./settings.toml``; a
    send is idempotent per day of the campaign's schedule zone (the help said the shop's)."""
    top = runner.invoke(app, ["--help"], terminal_width=200).output
    assert "$RECOCAMP_SETTINGS" in top and "./settings.toml" in top
    send = runner.invoke(app, ["send", "--help"], terminal_width=200).output
    assert "schedule" in send and "shop-local" not in send


# -- errors never print an address; output paths that cannot be written -----------------------


@pytest.mark.parametrize(
    "args",
    [
        ["privacy", "export", "someone@example.test"],
        ["privacy", "erase", "someone@example.test", "--yes"],
        ["preview", "winback", "--customer", "nobody@example.test"],
        ["similar", "o'brien@example.test"],
    ],
)
def test_errors_mask_e_mail_addresses_whichever_command_prints_them(
    in_trained: Path, args: list[str]
) -> None:
    """stderr ends in logs and CI output: an address given (or read from a file) is masked
    there as the API masks it in error bodies, by the one error printer every command uses."""
    env = {"RECOCAMP_SIGNING_KEY": "k" * 32}
    result = runner.invoke(app, args, env=env, terminal_width=200)
    assert result.exit_code in (1, 2) and "Traceback" not in result.output
    assert "error:" in result.stderr and "<address>" in result.stderr, result.stderr
    assert "@" not in result.output


def _count(table: Any) -> int:
    with make_engine("sqlite:///shop.db").connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _sent_customer() -> str:
    as_of = "2011-12-15T10:00:00"
    document = runner.invoke(app, ["plan", "cross_sell", "--as-of", as_of, "--format", "json"])
    return str(
        next(d for d in json.loads(document.stdout)["decisions"] if d["outcome"] == "send")[
            "customer_id"
        ]
    )


@pytest.mark.parametrize("where", ["missing-folder", "a-folder", "a-file-as-folder"])
@pytest.mark.parametrize("command", ["report", "preview", "privacy export"])
def test_an_output_path_that_cannot_be_written_exits_2_and_records_nothing(
    in_trained: Path, command: str, where: str
) -> None:
    (in_trained / "plain").write_text("x")
    path = {
        "missing-folder": in_trained / "no" / "such" / "out.html",
        "a-folder": in_trained,
        "a-file-as-folder": in_trained / "plain" / "out.html",
    }[where]
    customer = _sent_customer()
    args = {
        "report": ["report", "--html", str(path)],
        "preview": ["preview", "cross_sell", "--customer", customer, "--html", str(path)],
        "privacy export": ["privacy", "export", customer, "--output", str(path)],
    }[command]
    if command == "preview":
        args += ["--as-of", "2011-12-15T10:00:00"]
    audits, stored = _count(audit_log), _count(reports)
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    option = "--output" if command == "privacy export" else "--html"
    assert f"error: cannot write {option} {path}: " in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1  # one line, the reason included
    assert "decision:" not in result.stdout  # refused before anything is shown
    assert (_count(audit_log), _count(reports)) == (audits, stored)
    assert not list(in_trained.glob(".*.tmp")) and not (in_trained / "no").exists()


def test_privacy_export_is_private_from_its_first_byte_and_audited_once_written(
    in_trained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Created 0600 (not written world-readable and then chmod-ed), under any umask; one
    audit row once the file is there. Only opens that may create a file are watched: the
    export reads the kept files it covers through ``os.open`` too."""
    customer = _sent_customer()
    modes: list[int] = []
    real_open = os.open

    def watching(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            modes.append(mode)
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", watching)
    audits = _count(audit_log)
    target = in_trained / "export.json"
    target.write_text("old, world-readable")
    target.chmod(0o644)
    result = runner.invoke(app, ["privacy", "export", customer, "--output", str(target)])
    assert result.exit_code == 0, result.output
    assert modes == [0o600]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert json.loads(target.read_text())["customer_ids"] == [customer]
    assert _count(audit_log) == audits + 1


@pytest.mark.parametrize("args", [["demo-data"], ["demo"], ["fake-esp", "--port", "1"]])
def test_a_folder_option_naming_a_file_exits_2_before_any_work(
    workdir: Path, args: list[str]
) -> None:
    (workdir / "plain").write_text("x")
    option = "--data-dir" if args[0] == "fake-esp" else "--demo-dir"
    result = runner.invoke(app, [*args, option, "plain"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"error: cannot write {option} plain: it is a file; name a folder" in result.stderr
    assert not (workdir / "shop.db").exists()


def test_an_items_file_with_a_javascript_url_exits_2_naming_line_column_and_value(
    workdir: Path,
) -> None:
    runner.invoke(app, ["db", "upgrade"])
    header = ["id", "title", "category", "price", "url"]
    row = ["i1", "Mug", "k", "3", "javascript:alert(1)"]
    path = write_csv(workdir / "items.csv", header, [row])
    result = runner.invoke(app, ["import", "items", str(path)], terminal_width=200)
    assert result.exit_code == 2 and "Traceback" not in result.output
    expected = "items.csv: line 2, column 'url': is not an absolute http(s) URL"
    assert f"{expected} (value: 'javascript:alert(1)')" in result.stderr
    assert _count(items) == 0


@pytest.mark.parametrize("token", [None, ""])
def test_the_worker_refuses_to_start_without_the_token_its_provider_needs(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, token: str | None
) -> None:
    """Else it starts, and its deliver job fails with the same error every few seconds."""
    monkeypatch.delenv("RECOCAMP_ESP_TOKEN", raising=False)
    if token is not None:
        monkeypatch.setenv("RECOCAMP_ESP_TOKEN", token)
    runner.invoke(app, ["db", "upgrade"])
    result = runner.invoke(app, ["worker"], terminal_width=200)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "key 'esp_token': the postmark provider needs a token: set RECOCAMP_ESP_TOKEN" in (
        result.stderr
    )
    assert "running" not in result.stdout


def test_a_worker_whose_provider_needs_no_token_starts_without_one(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECOCAMP_ESP_TOKEN", raising=False)
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", "k" * 32)  # each provider digests under it
    with (workdir / "settings.toml").open("a") as settings:
        settings.write('[esp]\nprovider = "mailpit"\nbase_url = "http://127.0.0.1:1"\n')
    runner.invoke(app, ["db", "upgrade"])
    result = runner.invoke(app, ["worker", "--once"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "deliver:" in result.stdout


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_worker_demo_stops_on_a_signal_like_the_real_worker(
    workdir: Path, signum: signal.Signals
) -> None:
    """It ignored SIGTERM (killed, rc 143, nothing said) and left its run ``running`` for
    ever: now no job starts after the signal, the running one ends, it says so, exits 0 as the
    real worker does, and no run is left ``running``."""
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    shutil.copytree(ROOT / "templates", workdir / "templates")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECOCAMP_")}
    env |= {"PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    log = workdir / "demo.log"
    command = [sys.executable, "-m", "recocamp", "worker", "--demo", "--days", "3650"]
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [*command, "--start", "2011-11-10T00:00"], cwd=workdir, env=env, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 120
        while "campaign:" not in log.read_text() and time.monotonic() < deadline:
            assert demo.poll() is None, log.read_text()
            time.sleep(0.2)
        demo.send_signal(signum)
        assert demo.wait(timeout=60) == 0, log.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
    said = log.read_text()
    assert f"{signum.name}: stopped at the simulated " in said and "Traceback" not in said
    assert "fake ESP: " in said  # what it did, as at the end of a full run
    with make_engine("sqlite:///shop.db").connect() as connection:
        statuses = connection.execute(sa.text("SELECT status FROM runs")).scalars().all()
    assert statuses and "running" not in statuses
    assert not (workdir / "shop.db.worker-lock").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["outbox", "resume", "nosuch"],
        ["outbox", "deliver", "--campaign", "nosuch"],
        ["outbox", "retry", "--failed", "--campaign", "nosuch"],
    ],
)
def test_outbox_commands_refuse_an_unknown_campaign_naming_those_that_exist(
    workdir: Path, args: list[str]
) -> None:
    """A typo said "nosuch: was not paused" or delivered nothing, exit 0."""
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    runner.invoke(app, ["db", "upgrade"])
    result = runner.invoke(app, args, terminal_width=300)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "nosuch.toml: no such campaign (known: birthday, cross_sell, " in result.stderr
    known = runner.invoke(app, ["outbox", "resume", "winback"])
    assert known.exit_code == 0 and "winback: was not paused" in known.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["db", "current"],
        ["import", "customers", "people.csv"],
        ["kpis"],
        ["privacy", "export", "c1"],
        ["runs", "list"],
        ["worker", "--once"],
    ],
)
def test_only_the_commands_that_build_the_database_create_its_file(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    """They created an empty shop.db before saying "run `recocamp db upgrade`"."""
    monkeypatch.setenv("RECOCAMP_ESP_TOKEN", "t")
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", "k" * 32)  # the worker's provider needs both
    write_csv(workdir / "people.csv", ["id", "email"], [["c1", "a@example.test"]])
    result = runner.invoke(app, args, terminal_width=300)
    assert "Traceback" not in result.output
    assert not (workdir / "shop.db").exists()
    said = " ".join(result.output.split())
    if args[0] == "db":
        assert result.exit_code == 0 and f"database: none (no file {workdir / 'shop.db'}; " in said
    else:
        assert result.exit_code == 1
        assert f"there is no database {workdir / 'shop.db'}: run `recocamp db upgrade`" in said
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert (workdir / "shop.db").exists()


def test_runs_trigger_of_an_unknown_job_is_bad_input_exit_2(workdir: Path) -> None:
    """A typo in the job's name is the user's input, as an unknown campaign is for
    ``outbox resume``: exit 2 naming it and the known jobs, nothing made due."""
    settings = workdir / "settings.toml"
    settings.write_text(settings.read_text() + '[esp]\nprovider = "fake"\n')
    runner.invoke(app, ["db", "upgrade"])
    (workdir / "campaigns").mkdir()
    assert runner.invoke(app, ["worker", "--once"]).exit_code == 0  # the schedule is stored
    result = runner.invoke(app, ["runs", "trigger", "trian"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "no scheduled job 'trian' (known: " in result.stderr and "train" in result.stderr
    assert runner.invoke(app, ["runs", "trigger", "train"]).exit_code == 0


def test_a_campaigns_folder_that_is_a_file_or_missing_is_never_silently_empty(
    workdir: Path,
) -> None:
    """``--campaigns`` naming a file is bad input (exit 2 before any work); a folder that is
    not there (a typo, the wrong working directory) is warned about by ``check`` and
    ``worker``, which would otherwise say "ok: 0 campaign(s)" or run no campaign, silently."""
    settings = workdir / "settings.toml"
    settings.write_text(settings.read_text() + '[esp]\nprovider = "fake"\n')
    runner.invoke(app, ["db", "upgrade"])
    (workdir / "plain").write_text("x")
    for args in (["check"], ["worker", "--once"], ["plan", "x"]):
        result = runner.invoke(app, [*args, "--campaigns", "plain"])
        assert result.exit_code == 2 and "Traceback" not in result.output
        assert "--campaigns" in result.stderr and "plain is a file; name a folder" in result.stderr
    assert not runner.invoke(app, ["runs", "list", "--format", "json"]).stdout.strip("[]\n")
    for args in (["check"], ["worker", "--once"]):
        result = runner.invoke(app, [*args, "--campaigns", "campains"])
        assert result.exit_code == 0
        assert "warning: there is no folder campains (--campaigns): no campaign" in result.stderr


@pytest.mark.parametrize("start", ["2011-02-30", "1800-01-01", "soon"])
@pytest.mark.parametrize("command", [["worker", "--demo", "--start"], ["demo", "--as-of"]])
def test_a_demo_with_a_bad_date_exits_2_before_building_the_shop(
    workdir: Path, start: str, command: list[str]
) -> None:
    """``--start``/``--as-of`` are checked as they are read, like every date option: not
    after the demo shop was built (the UCI import, a minute) only to stop with exit 2."""
    result = runner.invoke(app, [*command, start], terminal_width=200)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert command[-1] in result.stderr and start in result.stderr
    assert not (workdir / "demo").exists()
    if command[0] == "send":
        assert _count(outbox) == 0


def test_a_file_that_is_no_database_is_one_line_not_a_traceback(workdir: Path) -> None:
    """``database_url`` naming a file that is not SQLite (a typo, a backup tarball, a
    truncated copy): every command says so in one line, exit 1, and leaves the file alone;
    ``check`` notes it and checks the rest."""
    junk = bytes(range(256)) * 64
    (workdir / "shop.db").write_bytes(junk)
    for args in (["kpis"], ["db", "current"], ["db", "upgrade"], ["runs", "list"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), args
        assert result.stderr.strip() == (
            "error: cannot open the database: file is not a database"
        ), args
    result = runner.invoke(
        app,
        ["check", "--campaigns", str(ROOT / "campaigns"), "--templates", str(ROOT / "templates")],
    )
    assert result.exit_code == 0, result.exception
    assert "not checked against the catalogue: cannot open the database" in result.stdout
    assert (workdir / "shop.db").read_bytes() == junk


def test_a_store_locked_past_the_busy_timeout_is_one_line_not_a_traceback(
    cli_store: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process (a second command, the worker, a long import) holds SQLite's write
    lock past the busy timeout: the command says so and exits 1, nothing half-written."""
    from recocamp.store import engine as store_engine

    monkeypatch.setattr(store_engine, "BUSY_TIMEOUT_S", 0)  # fail at once, not after 10 s
    other = sqlite3.connect(tmp_path / "shop.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        result = cli_store.invoke(app, ["snapshots", "take", "--as-of", "2024-03-02"])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith(f"error: the database is busy (sqlite:///{tmp_path}/shop.db)")
    assert "another command or the worker held its write lock" in result.stderr
    assert cli_store.invoke(app, ["snapshots", "take", "--as-of", "2024-03-02"]).exit_code == 0


def test_a_read_only_store_is_one_line_not_a_traceback(cli_store: CliRunner) -> None:
    (Path("settings.toml")).write_text('database_url = "sqlite:///file:shop.db?mode=ro&uri=true"\n')
    result = cli_store.invoke(app, ["snapshots", "take", "--as-of", "2024-03-02"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stderr.startswith("error: the database refused the command (sqlite:///")
    assert result.stderr.strip().endswith("): attempt to write a readonly database")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("sqlite:///data", "database_url names {dir}/data, a folder: name a file (in it)"),
        (
            "sqlite:///gone/shop.db",
            "database_url names {dir}/gone/shop.db, in a folder that does not exist ({dir}/gone)",
        ),
    ],
)
def test_a_store_path_that_cannot_be_a_file_names_it(workdir: Path, url: str, why: str) -> None:
    """sqlite3 says only "unable to open database file", naming no path."""
    (workdir / "data").mkdir()
    (workdir / "settings.toml").write_text(f'database_url = "{url}"\n')
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    expected = why.format(dir=workdir)
    assert result.stderr.strip() == f"error: cannot open the database: {expected}"


@pytest.mark.parametrize(
    ("args", "option", "value", "day"),
    [
        (
            ["backfill", "--from", "2026-12-01", "--to", "2062-12-05"],
            "--to",
            "2062-12-05",
            "2062-12-05",
        ),
        (["backfill", "--to", "2026-12-04"], "--to", "2026-12-04", "2026-12-04"),
        (["take", "--as-of", "2026-12-05T23:30"], "--as-of", "2026-12-05T23:30", "2026-12-04"),
        (["take", "--as-of", "2026-12-06T00:00"], "--as-of", "2026-12-06T00:00", "2026-12-05"),
        (["take", "--as-of", "2026-12-04T23:30"], "--as-of", "2026-12-04T23:30", "2026-12-03"),
        (["backfill", "--from", "2026-12-01", "--to", "2026-12-03"], "--to", "", "2026-12-03"),
    ],
)
def test_snapshots_of_days_not_over_yet_are_refused(
    cli_store: CliRunner,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    option: str,
    value: str,
    day: str,
) -> None:
    """The daily job skips a day it has: a snapshot of a day still to come (a typo of the
    year) would be kept without that day's orders. Days up to yesterday are taken."""
    now = datetime(2026, 12, 4, 9, tzinfo=UTC)  # in Berlin, the last complete day: 12-03
    monkeypatch.setattr(common.clock, "now", lambda: now)
    result = cli_store.invoke(app, ["snapshots", *args], terminal_width=200)
    if day < "2026-12-04":
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert f"key '{option}': {day} is not over yet (the last complete day is 2026-12-03)" in (
        result.stderr
    )
    assert f"(value: '{value}')" in result.stderr
    assert _count(kpi_snapshots) == 0


def test_an_evaluation_with_nobody_to_measure_says_so(
    cli_store: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One customer, who bought before the cutoff and not again within the horizon: every
    figure is 0 because nothing was measured, not because the models are useless."""
    monkeypatch.setattr(common.clock, "now", lambda: datetime(2026, 12, 4, 9, tzinfo=UTC))
    header = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"]
    rows = [
        ["A1", "c1", "i1", "1", "2.5", "2011-01-05T10:00"],
        ["A2", "c1", "i1", "1", "2.5", "2011-03-05T10:00"],
        ["A3", "c1", "i1", "1", "2.5", "2011-06-05T10:00"],
    ]
    path = write_csv(tmp_path / "p.csv", header, rows)
    assert cli_store.invoke(app, ["import", "purchases", str(path)]).exit_code == 0
    split = ["evaluate", "--model", "popularity", "--format", "json", "--cutoff", "2011-02-01"]
    empty = cli_store.invoke(app, [*split, "--horizon-days", "30"], terminal_width=200)
    assert empty.exit_code == 0, empty.output
    assert json.loads(empty.stdout)["models"]["popularity"]["customers"] == 0
    assert "warning: nobody who bought before the cutoff bought again within the horizon" in (
        empty.stderr
    )
    measured = cli_store.invoke(app, [*split, "--horizon-days", "60"], terminal_width=200)
    assert measured.exit_code == 0, measured.output
    assert json.loads(measured.stdout)["models"]["popularity"]["customers"] == 1
    assert "warning" not in measured.stderr


@pytest.mark.parametrize(
    ("customer", "why"),
    [
        ("", "is empty"),
        (" 12748", "begins or ends with white space"),
        ("1\u202e2", "contains a non-printable character (U+202E)"),
    ],
)
def test_recommend_refuses_an_id_that_cannot_be_one(
    cli_store: CliRunner, customer: str, why: str
) -> None:
    """It printed the popular items of an unknown customer, rc 0, for a pasted id with a
    space: the operator read the model's answer for the customer."""
    result = cli_store.invoke(app, ["recommend", customer], terminal_width=200)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Invalid value for 'customer_id'" in result.stderr and why in result.stderr


def test_train_refuses_an_as_of_after_now(
    cli_store: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo of the year stored the forecasts as of 2030 as the live ones: every customer
    at high churn risk, which winback's trigger and the API read. Nothing is stored."""
    monkeypatch.setattr(common.clock, "now", lambda: datetime(2026, 12, 4, 9, tzinfo=UTC))
    header = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"]
    rows = [[f"A{n}", "c1", "i1", "1", "2.5", f"2026-0{n}-05T10:00"] for n in (1, 3, 6)]
    path = write_csv(tmp_path / "p.csv", header, rows)
    assert cli_store.invoke(app, ["import", "purchases", str(path)]).exit_code == 0
    result = cli_store.invoke(app, ["train", "--as-of", "2030-01-01"], terminal_width=300)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(
        "error: --as-of 2030-01-01 00:00 is after now (2026-12-04 10:00, Europe/Berlin)"
    )
    assert "forecast:" not in result.stdout
    stored = cli_store.invoke(app, ["forecast", "--stored"])
    assert stored.exit_code == 1 and "no forecast stored yet" in stored.stderr
    earlier = cli_store.invoke(app, ["train", "--as-of", "2026-12-04"], terminal_width=300)
    assert earlier.exit_code == 0 and "forecast: " in earlier.stdout, earlier.output


@pytest.mark.parametrize("command", [["send", "winback"], ["demo"]])
def test_a_run_as_of_a_time_still_to_come_is_refused(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    """`send --as-of 2030-…` (a typo of the year) enqueued e-mails due in 2030 and counted
    them against every one of their customers' caps until then: nobody was mailed for
    years. Refused before anything is read or written."""
    import shutil

    shutil.copytree(ROOT / "campaigns", workdir / "campaigns")
    shutil.copytree(ROOT / "templates", workdir / "templates")
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", "k" * 32)
    monkeypatch.setattr(common.clock, "now", lambda: datetime(2026, 12, 4, 9, tzinfo=UTC))
    if command[0] == "send":
        assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, [*command, "--as-of", "2030-01-01T10:00"], terminal_width=300)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(
        "error: --as-of 2030-01-01 10:00 is after now (2026-12-04 10:00, Europe/Berlin): "
        "the run's e-mails would wait in the outbox until then"
    )
    assert not (workdir / "demo").exists()
    if command[0] == "send":
        assert _count(outbox) == 0


def test_erase_without_the_signing_key_refuses_before_it_asks(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An erasure cannot be done without RECOCAMP_SIGNING_KEY (its tombstone is keyed with
    it): the operator learns that before answering "for good?", not after (it asked, took the
    yes, then refused)."""
    monkeypatch.delenv("RECOCAMP_SIGNING_KEY", raising=False)
    runner.invoke(app, ["db", "upgrade"])
    path = write_csv(workdir / "people.csv", ["id", "email"], [["c1", "c1@example.test"]])
    assert runner.invoke(app, ["import", "customers", str(path)]).exit_code == 0
    result = runner.invoke(app, ["privacy", "erase", "c1"], input="y\n")
    assert result.exit_code == 2, result.output
    assert "RECOCAMP_SIGNING_KEY is not set" in result.stderr
    assert "for good?" not in result.output


def test_demo_data_from_a_missing_file_exits_2_rather_than_build_a_synthetic_shop(
    workdir: Path,
) -> None:
    """``--from`` names the UCI file the user wants: a typo in it built the synthetic shop
    without a word (the fallback meant for an absent default), whose numbers match none of
    the README's."""
    result = runner.invoke(app, ["demo-data", "--from", "online_retal.csv.gz"])
    assert result.exit_code == 2, result.output
    assert "--from" in result.stderr and "online_retal.csv.gz" in result.stderr
    assert not (workdir / "shop.db").exists() and not (workdir / "demo").exists()


def test_the_synthetic_fallback_names_the_uci_file_it_did_not_find(workdir: Path) -> None:
    """README's first command builds the shop from the UCI file in ``../shared/data/``; a
    clone elsewhere has none and got the synthetic shop labelled only "synthetic shop (seed
    …)": nothing said why, or where the file was looked for."""
    result = runner.invoke(app, ["demo-data"], terminal_width=300)
    assert result.exit_code == 0, result.output
    expected = f"the UCI file {workdir / 'missing.csv.gz'} is not there ([demo] online_retail_path)"
    assert expected in result.stdout


def test_check_warns_of_a_template_without_the_unsubscribe_link(workdir: Path) -> None:
    """A marketer's own template that does not extend the layouts passed ``check`` with no
    unsubscribe link in its body. (Where the campaign mails existing customers, such a
    template also lacks the UWG §7(3) notice and is refused outright: see
    ``test_check_refuses_an_existing_customer_campaign_whose_mail_lacks_the_opt_out_notice``.)"""
    (workdir / "campaigns").mkdir()
    shutil.copytree(ROOT / "templates", workdir / "templates")
    for suffix in ("html", "txt"):
        (workdir / "templates" / f"promo.{suffix}").write_text("Hi {{ customer.id }}\n")
    campaign = (ROOT / "campaigns" / "cross_sell.toml").read_text(encoding="utf-8")
    campaign = campaign.replace("cross_sell", "promo")
    campaign = campaign.replace('"double_opt_in", "existing_customer"', '"double_opt_in"')
    assert "existing_customer" not in campaign.split("legal_basis", 1)[1].splitlines()[0]
    (workdir / "campaigns" / "promo.toml").write_text(campaign, encoding="utf-8")
    result = runner.invoke(app, ["check"], terminal_width=300)
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    for suffix in ("html", "txt"):
        path = Path("templates") / f"promo.{suffix}"
        assert f"warning: {path}: prints no unsubscribe link (unsubscribe_url)" in said, said
    assert runner.invoke(app, ["check", "--strict"]).exit_code == 2
    for suffix in ("html", "txt"):  # the layouts print it
        page = (ROOT / "templates" / f"cross_sell.{suffix}").read_text(encoding="utf-8")
        (workdir / "templates" / f"promo.{suffix}").write_text(page, encoding="utf-8")
    clean = runner.invoke(app, ["check", "--strict"], terminal_width=300)
    assert clean.exit_code == 0 and "warning" not in clean.output, clean.output
