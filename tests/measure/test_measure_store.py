"""Measurement on real stores (SQLite and PostgreSQL): the daily snapshot job (idempotent per
shop-local day, across DST), backfill against the `kpis` command, cohorts on a real UCI slice
against an independent computation, touches and reasons, stored reports, migration 0006."""

from __future__ import annotations

import csv
import gzip
import importlib
import json
import sqlite3
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from alembic import command
from typer.testing import CliRunner

from recocamp.campaigns.run import load_snapshot
from recocamp.cli import app
from recocamp.data.ingest import Importer
from recocamp.domain import Customer, OutgoingEmail, Purchase, Touch, composed
from recocamp.measure import attribution as measure
from recocamp.measure import jobs as measure_jobs
from recocamp.measure.attribution import Result, Thresholds, uplifts
from recocamp.measure.kpis import OrderTotal
from recocamp.settings import MeasureSettings, Settings, ShopSettings
from recocamp.store import decisions as decisions_store
from recocamp.store import measure as store
from recocamp.store import outbox, queries
from recocamp.store.engine import alembic_config, make_engine, upgrade
from recocamp.store.schema import decisions, kpi_snapshots, reports
from recocamp.store.schema import outbox as outbox_table
from tests.conftest import NOW, uci_rows

LONDON = ZoneInfo("Europe/London")
SETTINGS = Settings(  # days written once (restating is tested on its own)
    shop=ShopSettings(time_zone="Europe/London"),
    measure=MeasureSettings(snapshot_window_days=(7, 30), restate_days=0),
)


def buy(order: str, customer: str | None, at: datetime, price: float = 10.0) -> Purchase:
    return Purchase(order, 1, customer, "i1", 1, price, at)


def test_daily_snapshot_is_idempotent_per_shop_local_day_across_dst(engine: sa.Engine) -> None:
    # British Summer Time starts on 31 March 2024 at 01:00 UTC: that day ends at 23:00 UTC
    lines = [
        buy("o1", "a", datetime(2024, 3, 20, 12, tzinfo=UTC)),
        buy("o2", "a", datetime(2024, 3, 31, 22, 30, tzinfo=UTC), 20),  # 23:30 BST, 31 March
        buy("o3", "b", datetime(2024, 3, 31, 23, 30, tzinfo=UTC), 40),  # 00:30 BST, 1 April
        buy("g1", None, datetime(2024, 3, 30, 9, tzinfo=UTC)),
    ]
    with engine.begin() as connection:
        queries.insert_purchases(connection, lines, None)
    now = datetime(2024, 4, 1, 6, 0, tzinfo=UTC)  # the worker's morning run
    written = measure_jobs.snapshot_kpis(engine, SETTINGS, now)
    assert written == 2 + 1  # windows 7 and 30, and one RFM segment: only a had ordered
    assert measure_jobs.snapshot_kpis(engine, SETTINGS, now + timedelta(hours=5)) == 0
    with engine.connect() as connection:
        rows = {r.window_days: r for r in connection.execute(sa.select(kpi_snapshots))}
        sizes = store.segment_history(connection, date(2024, 3, 31), date(2024, 3, 31))
    week = rows[7]
    assert week.day == date(2024, 3, 31)
    assert week.as_of == datetime(2024, 3, 31, 23, 0, tzinfo=UTC)  # midnight BST
    assert (week.orders, week.customers, week.guest_orders) == (1, 1, 1)  # o2 and g1, not o3
    assert week.average_order_value == pytest.approx(20.0)
    assert rows[30].orders == 2 and rows[30].repeat_purchase_rate == pytest.approx(1.0)
    assert sum(sizes[date(2024, 3, 31)].values()) == 1  # only a had ordered by then
    later = measure_jobs.snapshot_kpis(engine, SETTINGS, now + timedelta(days=1))
    with engine.connect() as connection:
        next_day = store.segment_history(connection, date(2024, 4, 1), date(2024, 4, 1))
    assert sum(next_day[date(2024, 4, 1)].values()) == 2  # b's order on 1 April counts now
    assert later == 2 + len(next_day[date(2024, 4, 1)])


def test_the_daily_snapshot_fills_the_days_the_worker_missed(engine: sa.Engine) -> None:
    """The worker was down from 1 to 4 April (a missed run is skipped after its grace
    time): the run of 5 April writes 1–4 April, not only 4 April, so the trend has no gap
    bridged by a straight line and the week-over-week change of 8 April finds 1 April."""
    with engine.begin() as connection:
        queries.insert_purchases(
            connection, [buy("o1", "a", datetime(2024, 3, 20, 12, tzinfo=UTC))], None
        )
    measure_jobs.snapshot_kpis(engine, SETTINGS, datetime(2024, 4, 1, 6, tzinfo=UTC))
    written = measure_jobs.snapshot_kpis(engine, SETTINGS, datetime(2024, 4, 5, 6, tzinfo=UTC))
    with engine.connect() as connection:
        days = sorted(
            {day for day, _ in store.kpi_history(connection, date(2024, 3, 1), date(2024, 5, 1))}
        )
    assert days == [date(2024, 3, 31) + timedelta(days=n) for n in range(5)]
    assert written == 4 * (2 + 1)  # four days: windows 7 and 30, one segment
    assert measure_jobs.snapshot_kpis(engine, SETTINGS, datetime(2024, 4, 5, 9, tzinfo=UTC)) == 0


def test_the_daily_snapshot_computes_the_last_days_again_for_late_orders(
    engine: sa.Engine,
) -> None:
    """The shop's nightly export is imported after the snapshot ran: an order of 3 April
    arrives on 5 April. The snapshot of 3 April, written on 4 April without it, is computed
    again on 5 and 6 April (``restate_days`` 2) and holds it; 1 April, outside, stays."""
    settings = SETTINGS.model_copy(
        update={"measure": SETTINGS.measure.model_copy(update={"restate_days": 2})}
    )
    with engine.begin() as connection:
        queries.insert_purchases(
            connection, [buy("o1", "a", datetime(2024, 3, 20, 12, tzinfo=UTC))], None
        )
    for morning in range(1, 5):  # the runs of 1–4 April: snapshots of 31 March – 3 April
        measure_jobs.snapshot_kpis(engine, settings, datetime(2024, 4, morning, 6, tzinfo=UTC))

    def week_orders() -> dict[date, int]:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(kpi_snapshots).where(kpi_snapshots.c.window_days == 7)
            )
            return {row.day: row.orders for row in rows}

    assert week_orders()[date(2024, 4, 3)] == 0
    with engine.begin() as connection:  # late: imported on 5 April
        queries.insert_purchases(
            connection, [buy("late", "b", datetime(2024, 4, 3, 15, tzinfo=UTC))], None
        )
    written = measure_jobs.snapshot_kpis(engine, settings, datetime(2024, 4, 5, 6, tzinfo=UTC))
    orders = week_orders()
    assert orders[date(2024, 4, 3)] == 1 and orders[date(2024, 4, 4)] == 1
    assert orders[date(2024, 4, 1)] == 0  # 2 days back from 4 April: 2 and 3 April
    with engine.connect() as connection:
        sizes = store.segment_history(connection, date(2024, 4, 2), date(2024, 4, 4))
    segments = {day: len(found) for day, found in sizes.items()}
    assert segments[date(2024, 4, 3)] == 2  # b counts on 3 April now
    # 2–4 April: windows 7 and 30, and their segment rows
    assert written == 3 * 2 + sum(segments.values())
    again = measure_jobs.snapshot_kpis(engine, settings, datetime(2024, 4, 5, 9, tzinfo=UTC))
    # the same morning: 2 and 3 April computed again, 4 April written once
    assert again == 2 * 2 + segments[date(2024, 4, 2)] + segments[date(2024, 4, 3)]


def test_backfill_equals_the_kpis_command_and_replace_recomputes(
    tmp_path: Path, uci_slice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.toml").write_text(
        'database_url = "sqlite:///shop.db"\n[shop]\ntime_zone = "Europe/London"\n'
        "[measure]\nsnapshot_window_days = [7, 30]\n"
    )
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert (
        runner.invoke(
            app, ["import", "purchases", str(uci_slice), "--format", "online-retail"]
        ).exit_code
        == 0
    )
    done = runner.invoke(
        app, ["snapshots", "backfill", "--from", "2010-12-05", "--to", "2010-12-14"]
    )
    assert done.exit_code == 0, done.output
    engine = make_engine("sqlite:///shop.db")
    with engine.connect() as connection:
        history = store.kpi_history(connection, date(2010, 12, 5), date(2010, 12, 14))
        segment_days = store.segment_days(connection, date(2010, 12, 1), date(2010, 12, 31))
        segment_rows = connection.execute(sa.text("SELECT count(*) FROM segment_snapshots"))
        written = len(history) + segment_rows.scalar_one()
    assert len(history) == 10 * 2 and len(segment_days) == 10  # days × windows, and RFM
    assert f"snapshots 2010-12-05 … 2010-12-14: {written} rows written" in done.output
    for day in (date(2010, 12, 5), date(2010, 12, 14)):
        as_of = (day + timedelta(days=1)).isoformat()
        result = runner.invoke(
            app, ["kpis", "--as-of", as_of, "--window-days", "7", "--format", "json"]
        )
        expected = json.loads(result.output)
        assert history[(day, 7)] == {k: expected[k] for k in history[(day, 7)]}
    orders = history[(date(2010, 12, 14), 7)]["orders"]
    assert orders is not None and orders > 0
    again = runner.invoke(
        app, ["snapshots", "backfill", "--from", "2010-12-05", "--to", "2010-12-14"]
    )
    assert ": 0 rows written" in again.output
    with engine.begin() as connection:
        connection.execute(sa.update(kpi_snapshots).values(orders=-1))
    redo = runner.invoke(
        app, ["snapshots", "backfill", "--from", "2010-12-05", "--to", "2010-12-14", "--replace"]
    )
    assert redo.exit_code == 0
    with engine.connect() as connection:
        assert store.kpi_history(connection, date(2010, 12, 5), date(2010, 12, 14)) == history
    bad = runner.invoke(
        app, ["snapshots", "backfill", "--from", "2010-12-15", "--to", "2010-12-14"]
    )
    assert bad.exit_code == 2 and "--from" in bad.output and "2010-12-15" in bad.output
    engine.dispose()


def _german_rows() -> tuple[list[str], list[list[str]]]:
    return uci_rows(lambda row: row[7] == "Germany")


def test_cohorts_on_a_real_uci_slice_against_an_independent_computation(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """All of the UCI file's German customers (≈ 95 customers, 9,500 lines, a whole year)."""
    header, rows = _german_rows()
    path = tmp_path / "germany.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    Importer(engine, zone=LONDON, now=NOW).purchases(path, "online-retail")
    as_of = datetime(2011, 12, 10, tzinfo=LONDON).astimezone(UTC)
    with engine.connect() as connection:
        orders = [
            OrderTotal(*r)
            for r in queries.order_totals(connection, datetime(2000, 1, 1, tzinfo=UTC), as_of)
        ]
    table = measure.cohorts(orders, LONDON, as_of, max_months=12)

    # independent: straight from the CSV text, months from the local timestamp's "YYYY-MM"
    months: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for invoice, _, _, quantity, when, price, customer, _ in rows:
        if customer and not invoice.startswith("C") and int(quantity) > 0 and float(price) > 0:
            months[customer].add((int(when[:4]), int(when[5:7])))

    def index(ym: tuple[int, int]) -> int:
        return ym[0] * 12 + ym[1] - 1

    cohorts: dict[int, list[set[int]]] = defaultdict(list)
    for bought in months.values():
        indices = {index(m) for m in bought}
        cohorts[min(indices)].append(indices)
    last_complete = index((2011, 11))
    expected = [
        (
            date(first // 12, first % 12 + 1, 1),
            len(group),
            tuple(
                None
                if first + k > last_complete
                else sum(first + k in g for g in group) / len(group)
                for k in range(1, 13)
            ),
        )
        for first, group in sorted(cohorts.items())
    ]
    assert [(c.month, c.customers, c.retention) for c in table] == expected
    assert len(table) == 13 and table[0].customers == 18 and sum(c.customers for c in table) > 90


def test_touches_and_decision_reasons_from_the_store(engine: sa.Engine) -> None:
    run = NOW - timedelta(days=10)
    emails = [
        (
            OutgoingEmail(f"winback/{c}/d", f"{c}@example.test", "s", "h", "t", campaign="winback"),
            c,
            variant,
            run,
        )
        for c, variant in (("a", "personal"), ("b", "urgency"), ("c", "personal"))
    ]
    people = [Customer(c, f"{c}@example.test") for c in ("a", "b", "c", "h", "x", "y")]
    with engine.begin() as connection:
        queries.upsert_customers(connection, people, run)  # touches are of customers held
        outbox.enqueue(connection, emails, run)
        connection.execute(
            sa.update(outbox_table)
            .where(outbox_table.c.customer_id == "a")
            .values(state="delivered", sent_at=NOW)
        )
        connection.execute(
            sa.update(outbox_table).where(outbox_table.c.customer_id == "b").values(state="failed")
        )
        connection.execute(
            sa.insert(decisions),
            [
                {
                    "run_key": "winback/d",
                    "campaign": "winback",
                    "customer_id": c,
                    "outcome": o,
                    "reason": r,
                    "variant": None,
                    "holdout": o == "holdout",
                    "decided_at": run,
                }
                for c, o, r in (
                    ("a", "send", "eligible"),
                    ("h", "holdout", "holdout"),
                    ("x", "skip", "capped_7d"),
                    ("y", "skip", "capped_7d"),
                )
            ],
        )
        found = sorted(
            store.touches(connection, run - timedelta(days=1), NOW), key=lambda t: t.customer_id
        )
        reasons = store.decision_reasons(connection, run, NOW)
        assert store.touches(connection, run + timedelta(seconds=1), NOW) == []
    # a: delivered (timed at the run, not at delivery); b failed and c never went out, and
    # both stay in the mailed arm the run assigned them to (intent to treat)
    assert [(t.customer_id, t.holdout, t.variant, t.at) for t in found] == [
        ("a", False, "personal", run),
        ("b", False, "urgency", run),
        ("c", False, "personal", run),
        ("h", True, None, run),
    ]
    assert reasons == [
        ("winback", "skip", "capped_7d", 2),
        ("winback", "send", "eligible", 1),
        ("winback", "holdout", "holdout", 1),
    ]


def test_reports_are_stored_and_pruned(engine: sa.Engine) -> None:
    with engine.begin() as connection:
        ids = [
            store.store_report(connection, f"<p>{n}</p>", {"n": n}, NOW, NOW, keep=2)
            for n in range(3)
        ]
        latest = store.latest_report(connection)
        kept = connection.execute(sa.text("SELECT count(*) FROM reports")).scalar_one()
    assert latest is not None and latest[0] == ids[-1] and latest[3] == "<p>2</p>"
    assert kept == 2


def test_migration_0006_goes_down_and_up(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    command.downgrade(alembic_config(engine), "0005")
    names = sa.inspect(engine).get_table_names()
    assert "kpi_snapshots" not in names and "feedback" not in names and "decisions" in names
    upgrade(engine)
    assert {"kpi_snapshots", "segment_snapshots", "feedback", "reports"} <= set(
        sa.inspect(engine).get_table_names()
    )
    engine.dispose()


def test_snapshot_days_end_at_local_midnight() -> None:
    assert measure_jobs.day_end(date(2024, 10, 27), LONDON) == datetime(2024, 10, 28, 0, tzinfo=UTC)
    assert measure_jobs.day_end(date(2024, 10, 26), LONDON) == datetime(
        2024, 10, 26, 23, tzinfo=UTC
    )
    assert measure_jobs.last_complete_day(datetime(2024, 10, 26, 23, 30, tzinfo=UTC), LONDON) == (
        date(2024, 10, 26)
    )  # 00:30 BST on the 27th: the 26th is complete


def test_segment_sizes_leave_out_customers_who_objected_to_profiling(engine: sa.Engine) -> None:
    """README: an objector has no RFM segment (placing them in ``at_risk`` is the profiling
    they objected to), and the planner gives them none; the daily snapshot counted them in
    its segment sizes all the same. The sizes are now those of the customers the planner
    places in segments, on the same day."""
    lines = [
        buy("o1", "a", datetime(2024, 3, 1, 12, tzinfo=UTC)),
        buy("o2", "a", datetime(2024, 3, 20, 12, tzinfo=UTC), 30),
        buy("o3", "b", datetime(2024, 2, 10, 12, tzinfo=UTC), 15),
        buy("o4", "c", datetime(2024, 3, 25, 12, tzinfo=UTC), 50),
    ]
    people = [
        Customer(name, f"{name}@example.test", objected_to_profiling=name == "c")
        for name in ("a", "b", "c")
    ]
    with engine.begin() as connection:
        queries.upsert_customers(connection, people, NOW)
        queries.insert_purchases(connection, lines, None)
    now = datetime(2024, 4, 1, 6, 0, tzinfo=UTC)  # snapshots 31 March
    measure_jobs.snapshot_kpis(engine, SETTINGS, now)
    with engine.connect() as connection:
        sizes = store.segment_history(connection, date(2024, 3, 31), date(2024, 3, 31))
        views = load_snapshot(connection, SETTINGS, measure_jobs.day_end(date(2024, 3, 31), LONDON))
    planned = Counter(v.rfm.segment for v in views.views if v.rfm is not None)
    assert sum(sizes[date(2024, 3, 31)].values()) == 2  # a and b; c objected
    assert sizes[date(2024, 3, 31)] == dict(planned)


def test_an_order_spanning_midnight_counts_in_each_day_by_its_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An order with a line at 23:59 on 10 January and one at 00:01 on 11 January (London):
    DESIGN counts an order in every window holding one of its purchase lines, with those
    lines' revenue. The order was timed at its first line and summed over every line the
    query reached: a backfill to 11 January said AOV 100 for 10 January, the `kpis` command
    and the daily job 10 for the same window, and 11 January had no order at all."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.toml").write_text(
        'database_url = "sqlite:///shop.db"\n[shop]\ntime_zone = "Europe/London"\n'
    )
    engine = make_engine("sqlite:///shop.db")
    upgrade(engine)
    lines = [
        Purchase("o0", 1, "a", "i1", 1, 10.0, datetime(2024, 1, 5, 12, tzinfo=UTC)),
        Purchase("o1", 1, "a", "i1", 1, 10.0, datetime(2024, 1, 10, 23, 59, tzinfo=UTC)),
        Purchase("o1", 2, "a", "i2", 1, 90.0, datetime(2024, 1, 11, 0, 1, tzinfo=UTC)),
    ]
    with engine.begin() as connection:
        queries.insert_purchases(connection, lines, None)
    settings = Settings(
        shop=ShopSettings(time_zone="Europe/London"),
        measure=MeasureSettings(snapshot_window_days=(1, 7), restate_days=0),
    )
    measure_jobs.backfill(engine, settings, date(2024, 1, 10), date(2024, 1, 11), NOW)
    with engine.connect() as connection:
        history = store.kpi_history(connection, date(2024, 1, 10), date(2024, 1, 11))
    engine.dispose()
    by_hand = {  # (orders, AOV) of each window
        (date(2024, 1, 10), 1): (1, 10.0),
        (date(2024, 1, 11), 1): (1, 90.0),
        (date(2024, 1, 11), 7): (2, 110.0 / 2),  # o0 and o1: each order counted once
    }
    for (day, window), (orders, aov) in by_hand.items():
        snapshot = history[(day, window)]
        assert (snapshot["orders"], snapshot["average_order_value"]) == (orders, aov)
        as_of = (day + timedelta(days=1)).isoformat()
        result = CliRunner().invoke(
            app, ["kpis", "--as-of", as_of, "--window-days", str(window), "--format", "json"]
        )
        assert result.exit_code == 0, result.output
        command = json.loads(result.output)
        assert snapshot == {name: command[name] for name in snapshot}


def test_a_day_recomputed_without_any_segment_keeps_no_old_sizes(engine: sa.Engine) -> None:
    """``backfill --replace`` (and the nightly restating) deleted a day's segment sizes only
    when the day had new ones: the only customer of 31 March objected to profiling since, so
    the day, computed again, places nobody in a segment, and the old "1 customer" stayed,
    counting the objector in a segment for good."""
    people = [Customer("a", "a@example.test")]
    with engine.begin() as connection:
        queries.upsert_customers(connection, people, NOW)
        queries.insert_purchases(
            connection, [buy("o1", "a", datetime(2024, 3, 20, 12, tzinfo=UTC))], None
        )
    day = date(2024, 3, 31)
    measure_jobs.backfill(engine, SETTINGS, day, day, NOW)
    with engine.connect() as connection:
        assert sum(store.segment_history(connection, day, day)[day].values()) == 1
    with engine.begin() as connection:
        objected = [Customer("a", "a@example.test", objected_to_profiling=True)]
        queries.upsert_customers(connection, objected, NOW)
    measure_jobs.backfill(engine, SETTINGS, day, day, NOW, replace=True)
    with engine.connect() as connection:
        assert store.segment_history(connection, day, day) == {}
        assert len(store.kpi_history(connection, day, day)) == 2  # its KPIs stay, recomputed


def test_the_nps_of_the_report_period_reads_every_answer_of_it(engine: sa.Engine) -> None:
    """``report_days = 120`` with ``history_days = 30``: the page says "Net Promoter Score of
    the last 120 days", but the answers were read for the last 30 only, so an answer of 60
    days ago was in no figure and the score was that of a month."""
    settings = SETTINGS.model_copy(
        update={
            "measure": SETTINGS.measure.model_copy(update={"report_days": 120, "history_days": 30})
        }
    )
    as_of = datetime(2024, 6, 1, tzinfo=UTC)
    with engine.begin() as connection:
        for customer, days, score in (("a", 60, 10), ("b", 5, 0)):
            store.record_feedback(
                connection, "nps/x", "nps", customer, score, None, as_of - timedelta(days=days)
            )
    data = measure_jobs.gather(engine, settings, as_of, NOW)
    assert (data.nps.overall.responses, data.nps.overall.score) == (2, 0.0)


def test_a_day_of_a_clock_change_holds_its_own_orders_and_no_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows were W × 24 hours back from the day's end: on 27 October 2024 (London, 25
    hours) the one-day window began at 01:00, so an order at 00:30 was in no day's figures;
    on 31 March (23 hours) it began at 23:00 the day before, so an order at 23:30 on 30 March
    counted on both days. A window is W calendar days in the shop's zone, as the snapshot
    days themselves are; the kpis command says the same."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.toml").write_text(
        'database_url = "sqlite:///shop.db"\n[shop]\ntime_zone = "Europe/London"\n'
    )
    engine = make_engine("sqlite:///shop.db")
    upgrade(engine)
    lines = [
        buy("spring", "a", datetime(2024, 3, 30, 23, 30, tzinfo=UTC)),  # 23:30 GMT, 30 March
        buy("autumn", "b", datetime(2024, 10, 26, 23, 30, tzinfo=UTC)),  # 00:30 BST, 27 October
    ]
    with engine.begin() as connection:
        queries.insert_purchases(connection, lines, None)
    settings = Settings(
        shop=ShopSettings(time_zone="Europe/London"),
        measure=MeasureSettings(snapshot_window_days=(1,), restate_days=0),
    )
    days = {
        date(2024, 3, 30): 1,
        date(2024, 3, 31): 0,
        date(2024, 10, 26): 0,
        date(2024, 10, 27): 1,
    }
    for day in days:
        measure_jobs.backfill(engine, settings, day, day, NOW)
    with engine.connect() as connection:
        history = store.kpi_history(connection, date(2024, 3, 1), date(2024, 11, 1))
    engine.dispose()
    assert {day: history[(day, 1)]["orders"] for day in days} == days
    for day, orders in days.items():
        as_of = (day + timedelta(days=1)).isoformat()
        result = CliRunner().invoke(
            app, ["kpis", "--as-of", as_of, "--window-days", "1", "--format", "json"]
        )
        assert json.loads(result.stdout)["orders"] == orders, day


def test_a_snapshot_taken_as_of_a_past_day_records_when_it_was_computed(
    cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``snapshots take --as-of`` picks the day; the rows' computed_at is when they were
    computed, as backfill's are. It was the --as-of instant: a snapshot computed today read
    as computed in 2024, so a restated day looked as old as the day it describes."""
    from recocamp.cli import common

    now = datetime(2026, 12, 6, 3, 30, tzinfo=UTC)
    monkeypatch.setattr(common.clock, "now", lambda: now)
    result = cli_store.invoke(app, ["snapshots", "take", "--as-of", "2024-03-02"])
    assert result.exit_code == 0, result.output
    with sqlite3.connect("shop.db") as connection:
        found = connection.execute("SELECT DISTINCT day, computed_at FROM kpi_snapshots").fetchall()
    assert [(day, computed[:16]) for day, computed in found] == [("2024-03-01", "2026-12-06 03:30")]


def test_a_first_report_is_not_stored_beside_one_stored_meanwhile(engine: sa.Engine) -> None:
    """A first report rendered while another process (or ``recocamp report``) stored one is
    not kept: the store keeps one first report on each backend."""
    with engine.begin() as connection:
        assert store.store_first_report(connection, "<p>a</p>", {}, NOW, NOW)
    with engine.begin() as connection:
        assert not store.store_first_report(connection, "<p>b</p>", {}, NOW, NOW)
        assert store.latest_report(connection) is not None
        assert connection.execute(sa.select(sa.func.count()).select_from(reports)).scalar() == 1


def _every_earlier_arm(connection: sa.Connection, before: datetime) -> list[Touch]:
    """What ``earlier_arms`` read before it was narrowed: every customer's arms."""
    o, d = outbox_table.c, decisions.c
    sent = (
        sa.select(o.campaign, o.customer_id, o.variant, sa.func.min(o.created_at))
        .where(o.created_at < before)
        .group_by(o.campaign, o.customer_id, o.variant)
    )
    found = [Touch(r[0], composed(r[1]), r[3], False, r[2], "") for r in connection.execute(sent)]
    held = (
        sa.select(d.campaign, d.customer_id, sa.func.min(d.decided_at))
        .where(d.outcome == "holdout", d.decided_at < before)
        .group_by(d.campaign, d.customer_id)
    )
    found += [Touch(r[0], composed(r[1]), r[2], True, None, "") for r in connection.execute(held)]
    return found


def test_the_arms_before_the_window_read_for_its_customers_give_the_same_uplifts(
    engine: sa.Engine,
) -> None:
    """``earlier_arms`` reads the arms before the report's window of the customers with a
    touch in it only (it grouped the whole outbox and decisions history on every report:
    1.85 s CPU on a million decisions, ``benchmarks/report_arms.py``). The uplifts are the
    same as with every earlier touch of every customer, on the benchmark's generated store
    (two years of weekly runs of three campaigns, holdout and variant per customer, a tenth
    of the customers switched after a year), with a decomposed id among them."""
    report_arms = importlib.import_module("benchmarks.report_arms")  # a script, not a package
    report_arms.fill(engine, 9_000, 600)
    start, as_of = report_arms.report_window()
    with engine.begin() as connection:  # 'Jose' + U+0301 mailed before, 'José' held out in it
        queries.upsert_customers(connection, [Customer("Jos\u00e9", "j@example.test")], NOW)
        early, late = start - timedelta(days=30), start + timedelta(days=3)
        email = OutgoingEmail("winback/j/x", "j@example.test", "s", "h", "t", campaign="winback")
        outbox.enqueue(connection, [(email, "Jose\u0301", None, early)], early)
        row = decisions_store.DecisionRow("winback", "Jos\u00e9", "holdout", "holdout", None, True)
        decisions_store.record(connection, "winback/j", [row], late)
    thresholds = Thresholds(min_group_size=5, min_conversions=0)
    with engine.connect() as connection:
        window = store.touches(connection, start, as_of)
        everything = _every_earlier_arm(connection, start)
        narrowed = store.earlier_arms(connection, start, {t.customer_id for t in window})
    results = [Result(t) for t in window]
    expected = uplifts(results, thresholds, earlier=everything)
    found = uplifts(results, thresholds, earlier=narrowed)
    assert found == expected
    assert sum(u.switched for u in found if u.variant is None) > 20  # the check has teeth
    assert len({t.customer_id for t in narrowed}) < len({t.customer_id for t in everything})
