"""Forecast-driven audiences on a real store: a hand-built stored forecast, every forecast key
selecting exactly its customers, the lapsed-days fallback (no live forecast; objectors), and
reasons that name the forecast (or the fallback) that drove each decision."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from recocamp.campaigns.audience import snapshot
from recocamp.campaigns.caps import days_before
from recocamp.campaigns.files import RISK_TIERS, TIER_FLOOR, Campaign, load_all, never_matching
from recocamp.campaigns.labels import by_code, reason
from recocamp.campaigns.planner import REASON_LENGTH, Outcome, counts, with_detail
from recocamp.campaigns.predictive import LiveForecast, live_at
from recocamp.campaigns.run import live_forecast, plan_and_enqueue, plan_run
from recocamp.campaigns.segments import History, Order
from recocamp.cli import app
from recocamp.domain import (
    ConsentBasis,
    Customer,
    CustomerForecast,
    CustomerRecord,
    Item,
    PlanningRows,
    Purchase,
)
from recocamp.forecast.outlook import risk_tier
from recocamp.settings import LoyaltySettings, Settings
from recocamp.store import forecasts as forecast_store
from recocamp.store.queries import insert_purchases, upsert_customers, upsert_items
from recocamp.store.schema import decisions
from tests.conftest import NOW, ROOT

SETTINGS = Settings(signing_key="f" * 32)
AS_OF = (NOW - timedelta(days=1)).date()

Spec = tuple[int, tuple[float, str, float, float | None] | None]
# id: (days since the only order, (p_active, churn_risk, lifetime_value, overdue_ratio) or None)
FORECAST: dict[str, Spec] = {
    "a": (100, (0.10, "high", 500.0, 2.0)),
    "b": (100, (0.50, "medium", 100.0, 1.3)),
    "c": (10, (0.90, "low", 50.0, 0.5)),
    # no gap to measure by (a shop without repeat customers yet): no overdue ratio
    "d": (100, (0.20, "high", 300.0, None)),
    "e": (100, (0.40, "medium", 300.0, 1.0)),  # lifetime value tied with d
    "n": (100, None),  # not in the forecast (an objection withdrawn since it was made): no row
    "o": (100, None),  # objected to profiling: no row, and the fallback path
}


def campaign(holdout_percent: float = 0, **audience: Any) -> Campaign:
    return Campaign(
        **{
            "name": "winback",
            "legal_basis": ["double_opt_in"],
            "holdout_percent": holdout_percent,
            "schedule": {"cron": "0 10 * * TUE"},
            "audience": {"min_orders": 1, **audience},
            "offer": {"mode": "replenish", "items": 1},
            "template": {"subject": {"en": "Hi"}, "html": "winback.html", "text": "winback.txt"},
        }
    )


def row(customer: str, people: dict[str, Spec] = FORECAST) -> CustomerForecast:
    spec = people[customer][1]
    assert spec is not None
    p_active, risk, value, overdue = spec
    by = None if overdue is None else AS_OF + timedelta(days=10)
    return CustomerForecast(customer, 1.0, p_active, risk, 10.0, value, by, overdue)


def shop(
    engine: sa.Engine,
    forecast_as_of: date | None = AS_OF,
    people: dict[str, Spec] = FORECAST,
    zone: str = "Europe/London",
) -> None:
    """The customers above with one order each; the forecast stored as of ``forecast_as_of``
    (none stored when None)."""
    customers = [
        Customer(
            cid,
            f"{cid}@example.test",
            "Kim",
            "en",
            zone,
            consent_basis=ConsentBasis.DOUBLE_OPT_IN,
            consent_at=NOW - timedelta(days=400),
            objected_to_profiling=cid == "o",
        )
        for cid in people
    ]
    lines = [
        # N calendar days before NOW on the customers' clock (lapsed_days counts those)
        Purchase(f"o-{cid}", 1, cid, "i1", 1, 9.5, days_before(NOW, lapsed, ZoneInfo(zone)))
        for cid, (lapsed, _) in people.items()
    ]
    with engine.begin() as connection:
        upsert_customers(connection, customers, NOW)
        upsert_items(connection, [Item("i1", "Tea", "kitchen", 9.5)], NOW)
        insert_purchases(connection, lines, None)
        if forecast_as_of is not None:
            version = forecast_store.ForecastVersion(
                "rhythm-v12", "rhythm", forecast_as_of, 90, 365, 5, None, NOW - timedelta(hours=9)
            )
            rows = [row(cid, people) for cid, (_, spec) in people.items() if spec is not None]
            forecast_store.replace(connection, version, rows)


def sent(engine: sa.Engine, chosen: Campaign) -> dict[str, str]:
    """Customer → reason of everyone the plan would mail (holdout 0: every match is a send)."""
    planned = plan_run(engine, SETTINGS, chosen, NOW)
    return {d.customer_id: d.reason for d in planned.decided if d.outcome is Outcome.SEND}


@pytest.mark.parametrize(
    ("audience", "expected"),
    [
        ({"churn_risk": ["high"]}, {"a", "d"}),
        ({"churn_risk": ["medium", "high"]}, {"a", "b", "d", "e"}),
        ({"churn_risk": ["low"]}, {"c"}),
        ({"p_active_below": 0.5}, {"a", "d", "e"}),  # b's 0.50 is not below 0.5
        ({"p_active_below": 1.0}, {"a", "b", "c", "d", "e"}),
        ({"overdue_ratio_at_least": 1.3}, {"a", "b"}),  # b's 1.3 counts; d has no ratio
        ({"overdue_ratio_at_least": 0}, {"a", "b", "c", "e"}),
        ({"lifetime_value_top_share": 0.4}, {"a", "d", "e"}),  # top 2 of 5, and e tied with d
        ({"lifetime_value_top_share": 0.2}, {"a"}),
        ({"lifetime_value_top_share": 1.0}, {"a", "b", "c", "d", "e"}),
        ({"churn_risk": ["medium", "high"], "overdue_ratio_at_least": 1.2}, {"a", "b"}),
        ({"p_active_below": 0.45, "lifetime_value_top_share": 0.4}, {"a", "d", "e"}),
    ],
)
def test_each_forecast_key_selects_exactly_its_customers(
    engine: sa.Engine, audience: dict[str, Any], expected: set[str]
) -> None:
    """n (no row) and o (objected) never match a forecast key; without a fallback o is skipped."""
    shop(engine)
    assert set(sent(engine, campaign(**audience))) == expected


@pytest.mark.parametrize(
    "audience",
    [
        {"churn_risk": ["high"]},
        {"p_active_below": 0.5},
        {"overdue_ratio_at_least": 1.3},
        {"lifetime_value_top_share": 0.2},
    ],
)
def test_a_skip_by_the_forecast_names_the_forecaster_and_its_day(
    engine: sa.Engine, audience: dict[str, Any]
) -> None:
    """Every decision's reason names the forecast that drove it: a skip's words start with
    the forecaster and its ``as_of`` (they used to give the numbers alone), and the whole
    reason fits its column, so nothing of it is cut."""
    shop(engine)
    planned = plan_run(engine, SETTINGS, campaign(**audience), NOW)
    skipped = [d.reason for d in planned.decided if d.reason.startswith("not_in_audience:")]
    by_row = [r for r in skipped if f"not in rhythm {AS_OF}" not in r and "objected" not in r]
    assert by_row, skipped
    for said in by_row:
        assert said.partition(" — ")[2].startswith(f"forecast rhythm {AS_OF}: "), said
        assert not said.endswith("…"), said


def test_an_objector_goes_by_the_lapsed_rule_and_never_by_the_forecast(engine: sa.Engine) -> None:
    """o and n have the same history; o objected, n has no forecast row (its objection was
    withdrawn after the forecast was made): both go by the fallback rule (n was left out
    until the next forecast run, which a quiet shop's worker skips); forecast customers go by
    their forecast even though all but c lapsed 100 days ago, inside the fallback range."""
    shop(engine)
    chosen = campaign(
        churn_risk=["medium", "high"], overdue_ratio_at_least=1.2, fallback_lapsed_days=[60, 180]
    )
    planned = plan_run(engine, SETTINGS, chosen, NOW)
    reasons = {d.customer_id: d.reason for d in planned.decided}
    assert {c for c, r in reasons.items() if r.startswith("eligible")} == {"a", "b", "n", "o"}
    assert reasons["o"] == "eligible — objected to profiling: lapsed rule (lapsed 100 days)"
    assert reasons["a"] == (
        f"eligible — forecast rhythm {AS_OF}: churn_risk=high (p_active 0.10, overdue 2.0×)"
    )
    assert reasons["n"] == (f"eligible — lapsed 100 days (not in rhythm {AS_OF})")
    assert reasons["c"] == (
        f"not_in_audience:churn_risk — forecast rhythm {AS_OF}: churn_risk=low (p_active 0.90)"
    )
    assert reasons["d"] == (
        "not_in_audience:overdue_ratio_at_least — "
        f"forecast rhythm {AS_OF}: overdue unknown (no gap)"
    )
    assert reasons["e"] == (
        f"not_in_audience:overdue_ratio_at_least — forecast rhythm {AS_OF}: overdue 1.00× < 1.2×"
    )
    assert counts(planned.decided) == {"eligible": 4, "not_in_audience:churn_risk": 1} | {
        "not_in_audience:overdue_ratio_at_least": 2
    }


def test_an_objector_without_a_fallback_is_skipped_saying_so(engine: sa.Engine) -> None:
    shop(engine)
    planned = plan_run(engine, SETTINGS, campaign(churn_risk=["high", "medium", "low"]), NOW)
    reasons = {d.customer_id: d.reason for d in planned.decided}
    assert reasons["o"] == (
        "not_in_audience:no_forecast — objected to profiling, no fallback_lapsed_days"
    )


@pytest.mark.parametrize(
    "as_of",
    [
        None,  # no forecast stored yet
        NOW.date() + timedelta(days=1),  # made after now: planning a past day
        (NOW - timedelta(days=91)).date(),  # its 90-day horizon closed before today
    ],
)
def test_without_a_live_forecast_the_lapsed_rule_decides_for_everyone(
    engine: sa.Engine, as_of: date | None
) -> None:
    shop(engine, as_of)
    chosen = campaign(p_active_below=0.5, fallback_lapsed_days=[60, 180])
    reasons = sent(engine, chosen)
    assert set(reasons) == {"a", "b", "d", "e", "n", "o"}  # c ordered 10 days ago
    assert reasons["a"] == "eligible — lapsed 100 days (no live forecast)"
    assert reasons["o"] == "eligible — objected to profiling: lapsed rule (lapsed 100 days)"
    skipped = {d.customer_id: d.reason for d in plan_run(engine, SETTINGS, chosen, NOW).decided}
    assert (
        skipped["c"] == "not_in_audience:fallback_lapsed_days — lapsed 10 days (no live forecast)"
    )
    without_fallback = plan_run(engine, SETTINGS, campaign(p_active_below=0.5), NOW)
    assert {d.outcome for d in without_fallback.decided} == {Outcome.SKIP}
    assert counts(without_fallback.decided) == {"not_in_audience:no_forecast": 7}


def test_the_forecast_is_live_from_its_day_until_its_horizon_closes() -> None:
    zone = SETTINGS.shop.zone
    day = NOW.astimezone(zone).date()
    assert live_at(day, 90, NOW, zone) and live_at(day - timedelta(days=89), 90, NOW, zone)
    assert not live_at(day - timedelta(days=90), 90, NOW, zone)
    assert not live_at(day + timedelta(days=1), 90, NOW, zone)


def test_a_recorded_run_keeps_the_holdout_and_every_reason_names_the_forecast(
    engine: sa.Engine,
) -> None:
    """A real run records every decision: held-out customers flagged as the holdout (what the
    report measures against), each with the forecast's words after the reason code."""
    many: dict[str, Spec] = {f"h{n}": (100, (0.2, "high", 100.0 + n, 1.5)) for n in range(60)}
    shop(engine, people=FORECAST | many)
    chosen = campaign(holdout_percent=30, churn_risk=["high"], fallback_lapsed_days=[60, 180])
    report = plan_and_enqueue(engine, SETTINGS, chosen, ROOT / "templates", NOW)
    with engine.connect() as connection:
        recorded = connection.execute(
            sa.select(
                decisions.c.customer_id,
                decisions.c.outcome,
                decisions.c.reason,
                decisions.c.holdout,
            )
        ).all()
    held = [r for r in recorded if r.holdout]
    mailed = [r for r in recorded if r.reason.startswith("eligible")]
    assert 8 < len(held) < 30 and len(held) + len(mailed) == 64  # 60 + a, d, n and o
    assert all(
        r.reason.startswith(f"holdout — forecast rhythm {AS_OF}: churn_risk=high")
        for r in held
        if r.customer_id not in ("n", "o")
    )
    assert all(f"rhythm {AS_OF}" in r.reason for r in mailed if r.customer_id != "o")
    assert report.counts["holdout"] == len(held) and report.enqueued == len(mailed)
    assert all(len(r.reason) <= REASON_LENGTH for r in recorded)
    summed = by_code([("winback", r.outcome, r.reason, 1) for r in recorded])
    assert summed == [
        ("winback", "send", "eligible", len(mailed)),
        ("winback", "holdout", "holdout", len(held)),
        ("winback", "skip", "not_in_audience:churn_risk", 3),
    ]


def test_a_reason_stays_within_the_column_and_its_words_leave_the_code_readable() -> None:
    assert decisions.c.reason.type.length == REASON_LENGTH  # type: ignore[attr-defined]
    long = with_detail("quiet_hours_deferred", "x" * 200)
    assert len(long) == REASON_LENGTH and long.endswith("…")
    assert with_detail("eligible", None) == "eligible"
    assert reason(
        "not_in_audience:p_active_below — forecast bgnbd 2011-12-10: p_active 0.81 ≥ 0.5"
    ) == ("Not in the audience: forecast chance of ordering again too high")
    assert reason("eligible — lapsed 74 days (no live forecast)") == "Mailed"


def test_the_snapshot_never_gives_an_objector_a_forecast() -> None:
    """Even a row stored before the objection (the store drops it, but not in the same
    instant) is not the planner's to use."""
    rows = PlanningRows(
        customers=[
            CustomerRecord(Customer("a", "a@example.test")),
            CustomerRecord(Customer("o", "o@example.test", objected_to_profiling=True)),
        ],
        orders=[],
        personal={},
        contacts={},
        suppressed=frozenset(),
        items={},
        popular=[],
    )
    fake = CustomerForecast("o", 1.0, 0.1, "high", 1.0, 1.0, None, None)
    live = LiveForecast.of("rhythm", AS_OF, 90, [row("a"), fake], SETTINGS.shop.zone)
    a, o = snapshot(rows, LoyaltySettings(), NOW, live).views
    assert a.forecast == row("a") and o.forecast is None


def test_the_campaign_risk_tiers_are_the_forecasters() -> None:
    assert {risk_tier(p) for p in (0.1, 0.5, 0.9)} == set(RISK_TIERS)


def test_a_value_cut_keeps_the_top_share_with_ties_and_no_float_surprise() -> None:
    rows = [row("a"), row("b"), row("c"), row("d"), row("e")]
    live = LiveForecast.of("rhythm", AS_OF, 90, rows, SETTINGS.shop.zone)
    assert live.value_cut(0.4) == 300.0 and live.value_cut(0.2) == 500.0
    values = [
        CustomerForecast(f"x{n}", 1, 0.5, "medium", 1, float(n), None, None) for n in range(10)
    ]
    # 0.3 × 10 is 3.0000000000000004 in floating point: still the top 3, not 4
    assert LiveForecast.of("rhythm", AS_OF, 90, values, SETTINGS.shop.zone).value_cut(0.3) == 7.0


BROKEN = [  # (the line, its key, how the value is shown)
    ('churn_risk = ["urgent"]', "audience.churn_risk.0", "(value: 'urgent')"),
    ("p_active_below = 0", "audience.p_active_below", "(value: 0)"),
    ("p_active_below = 1.5", "audience.p_active_below", "(value: 1.5)"),
    ("p_active_below = nan", "audience.p_active_below", "(value: nan)"),
    ('p_active_below = "half"', "audience.p_active_below", "(value: 'half')"),
    ("overdue_ratio_at_least = -1", "audience.overdue_ratio_at_least", "(value: -1)"),
    ("overdue_ratio_at_least = inf", "audience.overdue_ratio_at_least", "(value: inf)"),
    ("overdue_ratio_at_least = 1e308", "audience.overdue_ratio_at_least", "(value: 1e+308)"),
    ("overdue_ratio_at_least = 36501", "audience.overdue_ratio_at_least", "(value: 36501)"),
    ("lifetime_value_top_share = 0.0", "audience.lifetime_value_top_share", "(value: 0.0)"),
    ("lifetime_value_top_share = 2", "audience.lifetime_value_top_share", "(value: 2)"),
    ("fallback_lapsed_days = [180, 60]", "audience.fallback_lapsed_days", "got [180, 60]"),
]


@pytest.mark.parametrize(("line", "key", "value"), BROKEN)
def test_recocamp_check_refuses_a_bad_forecast_key_naming_file_key_line_and_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, line: str, key: str, value: str
) -> None:
    from typer.testing import CliRunner

    monkeypatch.chdir(tmp_path)
    (tmp_path / "campaigns").mkdir()
    text = (ROOT / "campaigns" / "winback.toml").read_text(encoding="utf-8")
    name = line.partition(" =")[0]
    kept = [old for old in text.splitlines() if not old.startswith(f"{name} =")]
    text = "\n".join(kept).replace("min_orders = 1", f"min_orders = 1\n{line}")
    (tmp_path / "campaigns" / "winback.toml").write_text(text, encoding="utf-8")
    result = CliRunner().invoke(
        app, ["check", "--campaigns", "campaigns", "--templates", str(ROOT / "templates")]
    )
    assert result.exit_code == 2, result.output
    assert "winback.toml" in result.stderr and f"key '{key}'" in result.stderr
    assert value in result.stderr and "line 2" in result.stderr  # lines 20–24: [audience]


def test_a_fallback_without_a_forecast_key_is_refused(tmp_path: Path) -> None:
    text = (ROOT / "campaigns" / "winback.toml").read_text(encoding="utf-8")
    for key in ('churn_risk = ["medium", "high"]\n', "overdue_ratio_at_least = 1.2\n"):
        text = text.replace(key, "")
    (tmp_path / "winback.toml").write_text(text, encoding="utf-8")
    loaded, failures = load_all(tmp_path, Settings(), ROOT / "templates")
    assert loaded == [] and len(failures) == 1
    message = str(failures[0])
    assert "key 'audience.fallback_lapsed_days'" in message and "(value: [60, 180])" in message
    assert "for a plain rule use lapsed_days" in message


def test_the_shipped_winback_is_predictive_with_the_lapsed_fallback() -> None:
    loaded, failures = load_all(ROOT / "campaigns", Settings(), ROOT / "templates")
    assert failures == []
    winback = next(c for c in loaded if c.name == "winback").audience
    assert winback.churn_risk == ("medium", "high") and winback.overdue_ratio_at_least == 1.2
    assert winback.fallback_lapsed_days == (60, 180) and winback.lapsed_days is None
    assert winback.uses_forecast


def test_the_shipped_winback_plans_with_the_forecast_the_train_job_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path on the synthetic demo shop: the real forecaster stores its forecast (as
    the worker's train job does), and ``recocamp plan winback`` decides every customer with a
    forecast by it: at risk and overdue → past the audience, else skipped naming the forecast."""
    import json
    import shutil
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from typer.testing import CliRunner

    from recocamp.forecast.stored import refresh
    from recocamp.store.engine import make_engine

    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.toml").write_text(
        'database_url = "sqlite:///shop.db"\n'
        "[demo]\nsynthetic_customers = 120\nsynthetic_items = 80\nsynthetic_days = 120\n"
        'online_retail_path = "missing.csv.gz"\n'
    )
    shutil.copytree(ROOT / "campaigns", tmp_path / "campaigns")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    runner = CliRunner()
    assert runner.invoke(app, ["demo-data"]).exit_code == 0
    engine = make_engine("sqlite:///shop.db")
    settings = Settings(database_url="sqlite:///shop.db")
    stored = refresh(engine, settings, datetime(2012, 2, 10, 3, tzinfo=ZoneInfo("Europe/Berlin")))
    with engine.connect() as connection:
        rows = {r.customer_id: r for r in forecast_store.stored_forecasts(connection)}
    result = runner.invoke(
        app, ["plan", "winback", "--as-of", "2012-02-10T10:00", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    decided = json.loads(result.stdout)["decisions"]
    label = f"{stored.model} 2012-02-10"  # two months after the shop's last order
    picked, by_forecast = set(), 0
    for d in decided:
        code, _, words = d["reason"].partition(" — ")
        forecast = rows.get(d["customer_id"])
        if forecast is None or code in ("no_consent", "no_email", "unsubscribed", "erased"):
            continue
        by_forecast += 1
        if code == "not_in_audience:churn_risk":
            assert forecast.churn_risk == "low"
            assert words.startswith(f"forecast {label}: churn_risk=low")  # names the forecaster
        elif code == "not_in_audience:overdue_ratio_at_least":
            assert forecast.overdue_ratio is None or forecast.overdue_ratio < 1.2
        elif code in ("eligible", "holdout", "quiet_hours_deferred"):
            assert forecast.churn_risk in ("medium", "high")
            assert forecast.overdue_ratio is not None and forecast.overdue_ratio >= 1.2
            assert words.startswith(f"forecast {label}: churn_risk={forecast.churn_risk} (")
            picked.add(d["customer_id"])
    assert by_forecast > 50 and picked  # the forecast decided, and some were picked


def test_a_customer_who_ordered_since_the_forecast_goes_by_the_lapsed_rule(
    engine: sa.Engine,
) -> None:
    """a's stored row says high risk and twice overdue, but a ordered this morning, after the
    forecast's as_of: a "we miss you" now would be wrong. The forecast no longer speaks for a,
    so the lapsed rule decides (lapsed 0 days: no), and the reason names the forecast."""
    shop(engine)
    with engine.begin() as connection:
        insert_purchases(
            connection, [Purchase("o-a2", 1, "a", "i1", 1, 9.5, NOW - timedelta(hours=3))], None
        )
    chosen = campaign(churn_risk=["high"], fallback_lapsed_days=[60, 180])
    planned = plan_run(engine, SETTINGS, chosen, NOW)
    reasons = {d.customer_id: d.reason for d in planned.decided}
    assert reasons["a"] == (
        "not_in_audience:fallback_lapsed_days — "
        f"lapsed 0 days (ordered since the forecast rhythm {AS_OF})"
    )
    assert reasons["d"].startswith(f"eligible — forecast rhythm {AS_OF}: churn_risk=high")
    without = plan_run(engine, SETTINGS, campaign(churn_risk=["high"]), NOW)
    skipped = {d.customer_id: d.reason for d in without.decided}
    assert skipped["a"] == (
        "not_in_audience:no_forecast — "
        f"ordered since the forecast rhythm {AS_OF}, no fallback_lapsed_days"
    )


def test_only_an_order_with_a_product_line_since_as_of_counts_as_ordered_since() -> None:
    """A postage-only order since as_of is no purchase day (DESIGN.md); orders before its
    midnight in the shop's zone are what the forecast saw."""
    zone = SETTINGS.shop.zone
    live = LiveForecast.of("rhythm", AS_OF, 90, [row("a")], zone)
    midnight = datetime.combine(AS_OF, time(), tzinfo=zone)

    def order(at: datetime, *bought: str) -> Order:
        return Order(at, 5.0, frozenset(bought), frozenset())

    before = order(midnight - timedelta(seconds=1), "i1")
    assert not live.ordered_since(History((before,)))
    assert not live.ordered_since(History((before, order(midnight))))  # service lines only
    assert live.ordered_since(History((before, order(midnight, "i1"))))
    assert live.ordered_since(History((order(midnight, "i1"), order(midnight, "POST"))))


def test_a_skip_by_another_audience_rule_does_not_give_the_forecasts_words(
    engine: sa.Engine,
) -> None:
    """The forecast's words go with the forecast keys' own verdict: a customer the forecast
    matches but who fails ``min_orders`` is skipped for that alone, and says nothing of it."""
    shop(engine)
    planned = plan_run(engine, SETTINGS, campaign(churn_risk=["high"], min_orders=2), NOW)
    reasons = {d.customer_id: d.reason for d in planned.decided}
    assert reasons["a"] == reasons["c"] == "not_in_audience:orders"


NEAR: dict[str, Spec] = {  # values a hair from the thresholds below
    "p": (100, (0.33331, "medium", 10.0, 1.0)),  # p_active just above 0.3333
    "q": (100, (0.4999, "medium", 99.6, 0.996)),  # just below 0.5; overdue just under 1
    "r": (100, (0.2, "high", 99.7, 1.25)),  # overdue exactly 1.25 (".1f" gives 1.2)
    "m": (100, (0.334, "medium", 10.0, 1.0)),  # medium from 1/3
    "h": (100, (0.666, "medium", 10.0, 1.0)),  # medium below 2/3
}


@pytest.mark.parametrize(
    ("audience", "customer", "said"),
    [
        ({"p_active_below": 0.3333}, "p", "p_active 0.33331 ≥ 0.3333"),
        ({"overdue_ratio_at_least": 1}, "q", "overdue 0.996× < 1×"),
        ({"lifetime_value_top_share": 0.2}, "q", "value 99.6 < 99.7 (top 20%)"),
        ({"p_active_below": 0.5}, "q", "(p_active 0.4999, overdue 1.0×)"),
        ({"overdue_ratio_at_least": 1.25}, "r", "(p_active 0.20, overdue 1.25×)"),
        ({"p_active_below": 0.1234567}, "r", "p_active 0.20 ≥ 0.1234567"),
        # medium risk is p_active 1/3 or more: 0.33 would read as high, 0.67 as low
        ({"churn_risk": ["high"]}, "m", "churn_risk=medium (p_active 0.334)"),
        ({"churn_risk": ["low"]}, "m", "churn_risk=medium (p_active 0.334)"),
        ({"churn_risk": ["medium"]}, "h", "churn_risk=medium (p_active 0.666, overdue"),
        ({"churn_risk": ["low"]}, "h", "churn_risk=medium (p_active 0.666)"),
    ],
)
def test_a_reasons_numbers_are_printed_on_the_side_its_comparison_took(
    engine: sa.Engine, audience: dict[str, Any], customer: str, said: str
) -> None:
    """Rounded to a fixed number of places, a value a hair from its threshold read on the
    wrong side of it: "overdue 1.00× < 1×", "p_active 0.33 ≥ 0.3333", "value 100 < 100", an
    eligible customer of ``p_active_below = 0.5`` at "p_active 0.50"; and ``:g`` printed the
    threshold 0.1234567 as 0.123457. Places are added until the printed numbers compare as
    the decision did."""
    shop(engine, people=NEAR)
    planned = plan_run(engine, SETTINGS, campaign(**audience), NOW)
    reasons = {d.customer_id: d.reason for d in planned.decided}
    assert said in reasons[customer], reasons[customer]


@pytest.mark.parametrize(
    ("lines", "key", "value"),
    [
        ('churn_risk = ["low"]\np_active_below = 0.5', "audience.p_active_below", "0.5"),
        ('churn_risk = ["medium", "low"]\np_active_below = 0.3', "audience.p_active_below", "0.3"),
        ("replenishment_due = true\nmax_orders = 1", "audience.max_orders", "1"),
        ("max_orders = 0", "audience.max_orders", "0"),  # winback's forecast keys need orders
        ("lapsed_days = [0, 30]\nmax_orders = 0", "audience.max_orders", "0"),
    ],
)
def test_audience_rules_no_customer_can_meet_together_are_refused(
    tmp_path: Path, lines: str, key: str, value: str
) -> None:
    """Low churn risk is p_active 2/3 or more, medium 1/3 or more: below 0.5 (0.3) nobody is
    either; an item is due for replenishment only when bought in two orders. Each key passed
    on its own, and the campaign mailed nobody, skipping everyone for their own data."""
    text = (ROOT / "campaigns" / "winback.toml").read_text(encoding="utf-8")
    text = text.replace('churn_risk = ["medium", "high"]\n', "")
    text = text.replace("min_orders = 1", lines)
    (tmp_path / "winback.toml").write_text(text, encoding="utf-8")
    loaded, failures = load_all(tmp_path, Settings(), ROOT / "templates")
    assert loaded == [] and len(failures) == 1, failures
    message = str(failures[0])
    assert f"key '{key}'" in message and f"(value: {value})" in message
    assert "no customer can match" in message


def test_rules_some_customer_can_meet_together_pass() -> None:
    """The boundary: medium risk starts at 1/3, so ``p_active_below = 0.34`` leaves a sliver."""
    assert TIER_FLOOR == {"high": 0.0, "medium": 1 / 3, "low": 2 / 3}
    assert {risk_tier(TIER_FLOOR[tier]) for tier in RISK_TIERS} == set(RISK_TIERS)
    ok = campaign(churn_risk=["medium"], p_active_below=0.34, replenishment_due=True, max_orders=2)
    assert never_matching(ok, "") == []
    newcomers = campaign(min_orders=0, max_orders=0, birthday_today=True, min_spend=0)
    assert never_matching(newcomers, "") == []


def test_a_deferred_match_keeps_the_forecast_it_was_chosen_by_within_the_column(
    engine: sa.Engine,
) -> None:
    """At 01:00 in Auckland the match is deferred to the end of quiet hours: its reason's
    code is ``quiet_hours_deferred``, and with a lifetime value the words ran past the
    column with the forecast's name last ("…, value 500, rhythm 2026-0…"), cut off. A
    match's words start with the forecast now, as a skip's do: what a cut loses is a number."""
    shop(engine, zone="Pacific/Auckland")
    chosen = campaign(churn_risk=["high"], lifetime_value_top_share=0.5)
    planned = plan_run(engine, SETTINGS, chosen, NOW)
    reasons = {d.customer_id: d.reason for d in planned.decided}
    assert reasons["a"].startswith(f"quiet_hours_deferred — forecast rhythm {AS_OF}: "), reasons
    assert len(reasons["a"]) <= REASON_LENGTH


def test_a_popular_offer_does_not_claim_the_week_the_popularity_was_not_measured_in(
    engine: sa.Engine,
) -> None:
    """Without a live model the popularity list is the buyers of the last 90 days
    (``recent_popularity_days`` with one); the model's, the same window before its data.
    The jar's only sale was 20 days ago, and the objector's e-mail said "popular this
    week" of it."""
    shop(engine)
    with engine.begin() as connection:
        upsert_items(connection, [Item("jar", "Jar", "kitchen", 4.0)], NOW)
        sale = Purchase("o-c2", 1, "c", "jar", 1, 4.0, NOW - timedelta(days=20))
        insert_purchases(connection, [sale], None)
    chosen = campaign(churn_risk=["high"], fallback_lapsed_days=[60, 180]).model_copy(
        update={"offer": campaign().offer.model_copy(update={"mode": "discover"})}
    )
    planned = plan_run(engine, SETTINGS, chosen, NOW)
    objector = next(d for d in planned.decided if d.customer_id == "o")
    assert [(o.item_id, o.why) for o in objector.offers] == [
        ("jar", "popular with other customers")
    ]


def test_a_forecast_stored_while_the_plan_reads_it_is_not_named_for_the_one_before(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The nightly job stores a forecast between the plan's read of the version and of the
    rows (each read sees the latest commit): the rows were the new forecast's, the reasons
    named the old one's model and day. The rows read are the version's own."""
    shop(engine)
    real = forecast_store.current_version
    calls = []

    def then_stored(connection: sa.Connection) -> forecast_store.ForecastVersion | None:
        found = real(connection)
        calls.append(found)
        if len(calls) == 1:  # the nightly job commits a new forecast right after this read
            newer = forecast_store.ForecastVersion(
                "bgnbd-v13", "bgnbd", AS_OF, 90, 365, 1, None, NOW - timedelta(hours=1)
            )
            mine = CustomerForecast("a", 1.0, 0.9, "low", 10.0, 5.0, None, 0.1)
            with engine.begin() as other:
                forecast_store.replace(other, newer, [mine])
        return found

    monkeypatch.setattr(forecast_store, "current_version", then_stored)
    with engine.connect() as connection:
        live = live_forecast(connection, SETTINGS, NOW)
    assert live is not None
    assert (live.model, list(live.rows)) == ("bgnbd", ["a"])
    assert live.rows["a"].churn_risk == "low"


def test_a_customer_who_spent_exactly_min_spend_is_in_the_audience(engine: sa.Engine) -> None:
    """n's 9.50 and a second order of 3 × 29.90 + 0.80 are 100.00, and in floating point
    99.99999999999999: ``min_spend = 100`` left the customer out as having spent too little
    (the loyalty points already rounded the sum)."""
    shop(engine, forecast_as_of=None)
    with engine.begin() as connection:
        lines = [
            Purchase("o-n2", n, "n", "i1", 1, price, NOW - timedelta(days=70))
            for n, price in enumerate((29.9, 29.9, 29.9, 0.8), start=1)
        ]
        insert_purchases(connection, lines, None)
    chosen = campaign(min_spend=100, max_spend=100, lapsed_days=[60, 180])
    planned = plan_run(engine, SETTINGS, chosen, NOW)
    reasons = {d.customer_id: d.reason for d in planned.decided}
    assert reasons["n"] == "eligible", reasons


@pytest.mark.parametrize("as_of", [None, AS_OF])
def test_a_skip_for_want_of_any_forecast_is_not_counted_as_a_forecasts_verdict(
    engine: sa.Engine, as_of: date | None
) -> None:
    """Without a fallback, a customer no forecast speaks for (none live; an objector; one not
    in it) is skipped as ``not_in_audience:no_forecast``: recorded
    as ``p_active_below``, the report told the marketer that the forecast found all of them
    too likely to order, while no forecast had judged them."""
    shop(engine, as_of)
    planned = plan_run(engine, SETTINGS, campaign(p_active_below=0.5), NOW)
    reasons = {d.customer_id: d.reason for d in planned.decided}
    unjudged = {"n", "o"} if as_of is not None else set(FORECAST)
    for customer in unjudged:
        assert reasons[customer].startswith("not_in_audience:no_forecast — "), customer
    if as_of is not None:
        assert reasons["c"].startswith("not_in_audience:p_active_below — forecast")
    grouped = {
        code: count
        for _, _, code, count in by_code(("winback", "skip", r, 1) for r in reasons.values())
    }
    assert grouped["not_in_audience:no_forecast"] == len(unjudged)
    assert reason("not_in_audience:no_forecast") == (
        "Not in the audience: no forecast for them, and no fallback rule"
    )
