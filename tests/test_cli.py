"""The command line as a user runs it: exit codes and messages, on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from recocamp.cli import app
from recocamp.store.engine import head_revision, make_engine
from recocamp.store.schema import customers, purchases
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


def test_bad_settings_exit_2_naming_the_key(workdir: Path) -> None:
    (workdir / "settings.toml").write_text('[shop]\ntime_zone = "Mars/Base"\n')
    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 2
    assert "settings.toml" in result.stderr and "shop.time_zone" in result.stderr
    assert "line 2" in result.stderr and "Mars/Base" in result.stderr


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


ROOT = Path(__file__).resolve().parents[1]


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
        assert f"line {line}, key 'template {name}'" in result.stderr, name
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
    planned = runner.invoke(app, ["plan", "cross_sell", "--as-of", "2011-12-15T10:00:00",
                                  "--format", "json"]).stdout  # fmt: skip
    first = json.loads(planned)["decisions"][0]["customer_id"]
    preview = runner.invoke(app, ["preview", "cross_sell", "--customer", first,
                                  "--as-of", "2011-12-15T10:00:00"])  # fmt: skip
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
    assert "decision: send" in preview.stdout and "/u/v1." in preview.stdout
    assert "style=" in out.read_text()  # inlined CSS
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
    result = runner.invoke(app, ["worker", "--demo", "--days", "2", "--start", "2011-12-07"])
    assert result.exit_code == 0, result.output
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
    jobs = {run["job"] for run in json.loads(runs.stdout)}
    assert {"train", "kpi_snapshot", "purge"} <= jobs
    assert any(job.startswith("campaign:") for job in jobs)
