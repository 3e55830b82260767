"""KPIs: hand-computed examples, the store query on both backends, and the reference figures
of shared/data/README.md on the whole UCI file."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from recocamp.data.ingest import Importer
from recocamp.domain import Purchase
from recocamp.measure import jobs, kpis
from recocamp.settings import MeasureSettings, Settings
from recocamp.store import measure as measure_store
from recocamp.store import queries
from recocamp.store.engine import make_engine, upgrade
from tests.conftest import NOW, UCI

AS_OF = datetime(2024, 7, 1, tzinfo=UTC)


def order(
    order_id: str, customer: str | None, days_before: float, revenue: float
) -> kpis.OrderTotal:
    return kpis.OrderTotal(order_id, customer, AS_OF - timedelta(days=days_before), revenue)


def test_hand_computed_example() -> None:
    orders = [
        # previous window [as_of-60, as_of-30): a, b, c bought
        order("p1", "a", 50, 10),
        order("p2", "b", 45, 10),
        order("p3", "c", 31, 10),
        # window [as_of-30, as_of): a twice, b once, d once, one guest; c churned
        order("o1", "a", 29, 100),
        order("o2", "a", 1, 50),
        order("o3", "b", 10, 30),
        order("o4", "d", 0.5, 20),
        order("g1", None, 5, 999),
        # outside both windows / at as_of itself (exclusive): ignored
        order("x1", "e", 61, 5),
        order("x2", "e", 0, 5),
    ]
    result = kpis.compute(orders, AS_OF, 30)
    assert (result.orders, result.customers, result.guest_orders) == (4, 3, 1)
    assert result.purchase_frequency == pytest.approx(4 / 3)
    assert result.average_order_value == pytest.approx(200 / 4)
    assert result.repeat_purchase_rate == pytest.approx(1 / 3)
    assert result.guest_checkout_rate == pytest.approx(1 / 5)
    assert result.churn_rate == pytest.approx(1 / 3)
    assert result.clv == pytest.approx(50 * (4 / 3) * 3)


def test_empty_windows_give_none_not_zero() -> None:
    result = kpis.compute([], AS_OF, 30)
    assert result.orders == 0
    assert result.purchase_frequency is None and result.churn_rate is None and result.clv is None
    no_churn = kpis.compute([order("p", "a", 40, 1), order("o", "a", 1, 1)], AS_OF, 30)
    assert no_churn.churn_rate == 0 and no_churn.clv is None


def test_order_totals_count_only_purchase_lines(engine: sa.Engine) -> None:
    at = AS_OF - timedelta(days=2)
    lines = [
        Purchase("o1", 1, "a", "i1", 2, 10.0, at),
        Purchase("o1", 2, "a", "POST", 1, 5.0, at),  # postage counts in revenue
        Purchase("C1", 1, "a", "i1", -1, 10.0, at, is_return=True),  # a return does not
        Purchase("o2", 1, None, "i1", 1, 10.0, at),
        Purchase("o3", 1, "b", "i1", 1, 10.0, AS_OF),  # at as_of: outside [start, end)
    ]
    with engine.begin() as connection:
        queries.insert_purchases(connection, lines, None)
        totals = queries.order_totals(connection, AS_OF - timedelta(days=30), AS_OF)
    assert sorted((o, c, r) for o, c, _, r in totals) == [("o1", "a", 25.0), ("o2", None, 10.0)]
    assert all(t.tzinfo is not None for _, _, t, _ in totals)


def test_no_churn_rate_from_an_earlier_window_the_history_barely_reaches() -> None:
    """The history starts 35 days before as_of: the earlier 30-day window holds its first 5
    days only. Its customers are not "the customers of the earlier window" but the few who
    happened to order in those days: on UCI (from 2010-12-01) the 365-day churn of
    2011-12-09 came from its first 9 days, 12.9 %, and the report's headline CLV, £15,616,
    from that."""
    orders = [order("p1", "a", 35, 10), order("p2", "b", 34, 10), order("o1", "b", 3, 10)]
    assert kpis.compute(orders, AS_OF, 30).churn_rate == pytest.approx(0.5)  # no start told
    start = AS_OF - timedelta(days=35)
    partial = kpis.compute(orders, AS_OF, 30, data_start=start)
    assert partial.churn_rate is None and partial.clv is None
    assert partial.orders == 1 and partial.customers == 1  # the window itself is covered
    covered = kpis.compute(orders, AS_OF, 30, data_start=AS_OF - timedelta(days=60))
    assert covered.churn_rate == pytest.approx(0.5)  # the start of the earlier window: covered


def test_the_kpis_command_and_the_snapshots_know_where_the_history_starts(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = [
        Purchase("p1", 1, "a", "i1", 1, 10.0, AS_OF - timedelta(days=35)),
        Purchase("p2", 1, "b", "i1", 1, 10.0, AS_OF - timedelta(days=34)),
        Purchase("o1", 1, "b", "i1", 1, 10.0, AS_OF - timedelta(days=3)),
    ]
    with engine.begin() as connection:
        queries.insert_purchases(connection, lines, None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", str(engine.url))
    from recocamp.cli import app

    result = CliRunner().invoke(
        app, ["kpis", "--as-of", "2024-07-01", "--window-days", "30", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["orders"] == 1 and figures["churn_rate"] is None and figures["clv"] is None
    settings = Settings(measure=MeasureSettings(snapshot_window_days=(30,), restate_days=0))
    day = (AS_OF - timedelta(days=1)).date()
    jobs.backfill(engine, settings, day, day, NOW)
    with engine.connect() as connection:
        snapshot = measure_store.kpi_history(connection, day, day)[(day, 30)]
    assert snapshot == {k: figures[k] for k in snapshot}


@pytest.fixture(scope="session")
def uci_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The whole UCI file imported once into a SQLite store."""
    if not UCI.exists():
        pytest.skip(f"the UCI file is absent ({UCI})")
    url = f"sqlite:///{tmp_path_factory.mktemp('uci') / 'uci.db'}"
    engine = make_engine(url)
    upgrade(engine)
    Importer(engine, zone=ZoneInfo("Europe/London"), now=NOW).purchases(UCI, "online-retail")
    engine.dispose()
    return url


REFERENCE = {  # shared/data/README.md, as_of 2011-12-10, window 90 days, as printed there
    "orders": "6626",
    "customers": "2889",
    "guest_orders": "317",
    "purchase_frequency": "2.2935",
    "average_order_value": "521.58",
    "repeat_purchase_rate": "0.4801",
    "guest_checkout_rate": "0.0457",
    "churn_rate": "0.3101",
}


def decimals(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


@pytest.mark.timeout(300)
def test_reference_figures_on_the_whole_uci_file(
    uci_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", uci_store)
    monkeypatch.setenv("RECOCAMP_SHOP__TIME_ZONE", "Europe/London")
    from recocamp.cli import app

    result = CliRunner().invoke(
        app, ["kpis", "--as-of", "2011-12-10", "--window-days", "90", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert list(figures) == [
        "as_of",
        "window_days",
        "orders",
        "customers",
        "guest_orders",
        "purchase_frequency",
        "average_order_value",
        "repeat_purchase_rate",
        "guest_checkout_rate",
        "churn_rate",
        "clv",
    ]
    for name, expected in REFERENCE.items():  # equal at the precision the README prints
        assert round(figures[name], decimals(expected)) == float(expected), name
    assert figures["clv"] == pytest.approx(521.582 * 2.29353 / 0.310127, rel=1e-4)


def test_the_window_depends_on_the_instant_not_its_zone() -> None:
    from zoneinfo import ZoneInfo

    london = datetime(2011, 12, 10, tzinfo=ZoneInfo("Europe/London"))
    # 90 × 24 h before is 2011-09-11 00:00 UTC; London wall-clock arithmetic would say 23:00
    edge = kpis.OrderTotal("o1", "a", datetime(2011, 9, 10, 23, 30, tzinfo=UTC), 10.0)
    in_london = kpis.compute([edge], london, 90)
    assert in_london.orders == kpis.compute([edge], london.astimezone(UTC), 90).orders == 0


def test_window_edges_and_guests_of_the_previous_window() -> None:
    """Both windows are half-open, [as_of − W, as_of) and [as_of − 2W, as_of − W): an order
    exactly W days before ``as_of`` is in the window, exactly 2W days before in the previous
    one. A guest order of the previous window is nobody who could churn."""
    orders = [
        order("p1", "a", 60, 10),  # previous window, at its first instant
        order("p2", "b", 45, 10),
        order("g0", None, 40, 10),  # a guest: not a previous-window customer
        order("o1", "a", 30, 40),  # the window, at its first instant
        order("o2", "c", 30.5, 99),  # previous window's last half day: c is no customer now
    ]
    result = kpis.compute(orders, AS_OF, 30)
    assert (result.orders, result.customers, result.guest_orders) == (1, 1, 0)
    assert result.average_order_value == 40.0
    # previous window: a, b and c; a bought again, b and c did not
    assert result.churn_rate == pytest.approx(2 / 3)
    assert result.clv == pytest.approx(40.0 * 1.0 * 3 / 2)
    assert result.guest_checkout_rate == 0.0 and result.repeat_purchase_rate == 0.0
    printed = result.as_dict()  # what ``recocamp kpis`` prints
    assert (printed["as_of"], printed["window_days"], printed["orders"]) == (
        "2024-07-01T00:00:00+00:00",
        30,
        1,
    )


def test_the_kpis_table_writes_counts_as_it_writes_figures(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counts stood bare beside grouped figures (orders 6626 over a CLV of 3,857.3366, where
    the README writes 6,626): a count of thousands read as a figure of another kind."""
    lines = [
        Purchase(f"o{n}", 1, f"c{n % 10}", "i1", 1, 10.0, AS_OF - timedelta(hours=n + 3))
        for n in range(1200)
    ]
    with engine.begin() as connection:
        queries.insert_purchases(connection, lines, None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", str(engine.url))
    from recocamp.cli import app

    result = CliRunner().invoke(
        app, ["kpis", "--as-of", "2024-07-01", "--window-days", "90"], terminal_width=120
    )
    assert result.exit_code == 0, result.output
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip()
        for line in result.stdout.splitlines()
        if line.startswith("│")
    }
    assert rows["orders"] == "1,200" and rows["customers"] == "10"
    assert rows["average_order_value"] == "10.0000"
