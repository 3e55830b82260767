"""The report's forecast sections on a small real shop (SQLite and PostgreSQL), forecasts made
by the real train step on fixed clocks: customers per churn-risk tier of every version (kept
after the next version replaced its rows), lifetime value by RFM segment, and the calibration
of the last closed horizon, which is what was stored then, judged on what happened after. An
erased customer and one who objected later appear in none of the per-customer figures."""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from recocamp import forecast, privacy
from recocamp.campaigns import segments
from recocamp.domain import Customer, CustomerForecast, Item, Purchase
from recocamp.forecast.evaluate import calibration
from recocamp.measure import jobs, report
from recocamp.settings import Settings, ShopSettings
from recocamp.store import forecasts as forecast_store
from recocamp.store import queries
from recocamp.store.schema import forecast_checkpoints

START = date(2010, 1, 4)
FIRST = datetime(2011, 3, 1, 2, tzinfo=UTC)  # the first forecast: as of 2011-03-01
SECOND = datetime(2011, 7, 1, 2, tzinfo=UTC)  # its horizon [03-01, 05-30) has ended
REPORT = datetime(2011, 7, 10, tzinfo=UTC)
ERASED, OBJECTOR = "c007", "c011"  # both buy in the first horizon
GAPS = (5, 9, 14, 21, 30, 45, 60, 90, 120)


def shop_lines() -> tuple[list[Purchase], list[Customer]]:
    """90 customers, each with an own rhythm (a gap from GAPS) from an own start, a third of
    them stopping for good at a day of their own: a shop with every churn risk."""
    lines, people = [], []
    for k in range(90):
        customer = f"c{k:03d}"
        people.append(Customer(customer, f"{customer}@example.test"))
        gap, day = GAPS[k % len(GAPS)], START + timedelta(days=(7 * k) % 50)
        stop = START + timedelta(days=200 + 11 * k) if k % 3 == 0 else date(2012, 1, 1)
        n = 0
        while day < min(stop, date(2011, 9, 1)):
            at = datetime.combine(day, time(12), tzinfo=UTC)
            price = 10.0 + (k % 7) * 5
            lines.append(Purchase(f"{customer}-{n}", 1, customer, "i1", 1 + k % 2, price, at))
            day += timedelta(days=gap + (n * k) % 4)
            n += 1
    return lines, people


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "shop": ShopSettings(time_zone="UTC", currency="GBP"),
            "recommender": base.recommender.model_copy(update={"artifacts_dir": tmp_path}),
            "signing_key": SecretStr("k" * 32),
        }
    )


@pytest.fixture
def shop(engine: sa.Engine) -> sa.Engine:
    lines, people = shop_lines()
    with engine.begin() as connection:
        queries.upsert_items(connection, [Item("i1", "Mug", "home", 10.0)], FIRST)
        queries.upsert_customers(connection, people, FIRST)
        queries.insert_purchases(connection, lines, None)
    return engine


def stored(engine: sa.Engine) -> list[CustomerForecast]:
    with engine.connect() as connection:
        return forecast_store.stored_forecasts(connection)


def test_tiers_of_every_version_values_by_segment_and_the_closed_horizon(
    shop: sa.Engine, settings: Settings
) -> None:
    forecast.refresh(shop, settings, FIRST)
    first = stored(shop)
    assert {ERASED, OBJECTOR} <= {row.customer_id for row in first}
    held = privacy.export(shop, ERASED, FIRST)  # the kept predictions are theirs to see
    assert held is not None and held["tables"]["forecast_checkpoints"] == [
        {
            "version": held["tables"]["forecasts"][0]["version"],
            "customer_id": ERASED,
            "expected_purchase_days": held["tables"]["forecasts"][0]["expected_purchase_days"],
        }
    ]
    assert privacy.erase(shop, settings, ERASED, FIRST + timedelta(days=10), "test")
    with shop.begin() as connection:  # a customer feed sets an objection
        queries.upsert_customers(
            connection, [Customer(OBJECTOR, "o@example.test", objected_to_profiling=True)], FIRST
        )
        left = connection.execute(sa.select(forecast_checkpoints.c.customer_id)).scalars().all()
    assert len(left) == len(first) - 2 and not {ERASED, OBJECTOR} & set(left)
    forecast.refresh(shop, settings, SECOND)
    second = stored(shop)
    section = jobs.forecasts(shop, settings, REPORT)

    # every version's tiers, the first one's kept after its rows went
    assert [t.as_of for t in section.tiers] == [date(2011, 3, 1), date(2011, 7, 1)]
    for tiers, rows in zip(section.tiers, (first, second), strict=True):
        counts = Counter(row.churn_risk for row in rows)
        assert (tiers.low, tiers.medium, tiers.high) == (
            counts["low"],
            counts["medium"],
            counts["high"],
        )
    assert section.tiers[0].high > 0 and section.tiers[0].low > 0

    # lifetime value of the newest version by each customer's RFM segment on its as_of
    at = datetime(2011, 7, 1, tzinfo=UTC)
    lines, _ = shop_lines()
    histories: dict[str, list[segments.Order]] = {}
    for line in sorted(lines, key=lambda line: line.ordered_at):
        if line.ordered_at < at and line.customer_id != ERASED:
            order = segments.Order(
                line.ordered_at, line.quantity * line.unit_price, *[frozenset()] * 2
            )
            histories.setdefault(str(line.customer_id), []).append(order)
    scores = segments.rfm_scores({c: segments.History(tuple(o)) for c, o in histories.items()}, at)
    expected: dict[str, list[float]] = {}
    for row in second:
        expected.setdefault(scores[row.customer_id].segment, []).append(row.lifetime_value)
    assert {v.segment: v.customers for v in section.values} == {
        name: len(values) for name, values in expected.items()
    }
    assert {v.segment: v.total for v in section.values} == pytest.approx(
        {name: sum(values) for name, values in expected.items()}
    )
    assert len(section.values) >= 5  # a shop with many segments
    assert not {ERASED, OBJECTOR} & {r.customer_id for r in second}
    assert sum(v.customers for v in section.values) == len(second)
    with shop.connect() as connection:
        current = forecast_store.current_version(connection)
    assert current is not None and (section.version, section.as_of) == (
        current.version,
        date(2011, 7, 1),
    )

    # the closed horizon: the first version, its stored predictions against what happened
    closed = section.closed
    assert closed is not None and closed.quality is not None
    assert (closed.as_of, closed.horizon_days, closed.last_day) == (
        date(2011, 3, 1),
        90,
        date(2011, 5, 29),
    )
    kept = [row for row in first if row.customer_id not in (ERASED, OBJECTOR)]
    predicted = np.array([row.expected_purchase_days for row in kept])
    horizon = (datetime(2011, 3, 1, tzinfo=UTC), datetime(2011, 5, 30, tzinfo=UTC))
    bought = {
        (line.customer_id, line.ordered_at.date())
        for line in lines
        if horizon[0] <= line.ordered_at < horizon[1]
    }
    days = Counter(customer for customer, _ in bought)
    actual = np.array([float(days[row.customer_id]) for row in kept])
    q = closed.quality
    assert q.customers == len(kept) == len(first) - 2
    assert q.predicted_total == pytest.approx(predicted.sum(), rel=1e-12)
    assert q.actual_total == actual.sum() > 0
    assert q.calibration == calibration(predicted, actual)  # what was stored, as it was
    assert q.calibration[-1].predicted > q.calibration[0].predicted


def test_one_version_per_horizon_is_kept_to_be_judged(shop: sa.Engine, settings: Settings) -> None:
    """Kept: the first version, then the first one whose ``as_of`` is past the last kept
    one's horizon; a new one kept forgets all but the last closed one."""
    days = [
        date(2011, 3, 1),
        date(2011, 4, 1),
        date(2011, 6, 1),
        date(2011, 7, 1),
        date(2011, 9, 1),
    ]
    for day in days:
        forecast.refresh(shop, settings, datetime.combine(day, time(2), tzinfo=UTC))
    with shop.connect() as connection:
        tiers = forecast_store.tier_history(connection)
        held = connection.execute(sa.select(forecast_checkpoints.c.version).distinct()).scalars()
        versions = set(held)
    assert [t.as_of for t in tiers] == days
    assert [t.predictions_kept for t in tiers] == [False, False, True, False, True]
    assert versions == {tiers[2].version, tiers[4].version}
    # a report as of 2011-09-05 judges the version of 06-01 (its horizon ended 08-30)
    section = jobs.forecasts(shop, settings, datetime(2011, 9, 5, tzinfo=UTC))
    assert section.closed is not None and section.closed.as_of == date(2011, 6, 1)
    # before any kept horizon ended, the section says so
    early = jobs.forecasts(shop, settings, datetime(2011, 5, 1, tzinfo=UTC))
    assert early.closed is None and [t.as_of for t in early.tiers] == days[:2]
    assert early.values == []  # the stored version is from later than the report


def test_the_report_shows_the_forecast_sections_in_html_and_json(
    shop: sa.Engine, settings: Settings
) -> None:
    forecast.refresh(shop, settings, FIRST)
    assert privacy.erase(shop, settings, ERASED, FIRST + timedelta(days=10), "test")
    forecast.refresh(shop, settings, SECOND)
    data = jobs.gather(shop, settings, REPORT, REPORT)
    html, summary = report.render_html(data), report.summary(data)
    f = summary["forecasts"]
    section = data.forecasts
    assert [(t["as_of"], t["high"], t["medium"], t["low"]) for t in f["churn_risk_history"]] == [
        (t.as_of.isoformat(), t.high, t.medium, t.low) for t in section.tiers
    ]
    assert f["as_of"] == "2011-07-01" and f["lifetime_days"] == 365
    by_segment = {v["segment"]: v for v in f["lifetime_value_by_segment"]}
    assert sum(v["customers"] for v in by_segment.values()) == len(stored(shop))
    for v in by_segment.values():
        assert v["mean"] == pytest.approx(v["total"] / v["customers"])
    closed = f["closed_horizon"]
    assert (closed["as_of"], closed["horizon_days"], len(closed["calibration"])) == (
        "2011-03-01",
        90,
        10,
    )
    assert closed["customers"] == sum(d["customers"] for d in closed["calibration"])
    assert ERASED not in json.dumps(summary) and ERASED not in html

    for chart in ("tiers", "values", "calibration"):
        figure = re.search(
            f'<figure class="chart" id="chart-{chart}"[^>]*>(.*?)</figure>', html, re.S
        )
        assert figure is not None and figure.group(1).lstrip().startswith("<svg")
    tiers = re.search(r'<table id="tiers">.*?</table>', html, re.S)
    assert tiers is not None and tiers.group(0).index("2011-07-01") < tiers.group(0).index(
        "2011-03-01"
    )  # newest first
    values = re.search(r'<table id="values">.*?</table>', html, re.S)
    assert values is not None and "Champions" in values.group(0) and "£" in values.group(0)
    calibration_rows = re.search(r'<table id="calibration">.*?</table>', html, re.S)
    assert calibration_rows is not None and calibration_rows.group(0).count("<tr>") == 11
    assert "for the 90 days up to 2011-05-29" in html


def test_before_any_horizon_ended_the_report_says_so(shop: sa.Engine, settings: Settings) -> None:
    forecast.refresh(shop, settings, FIRST)
    at = datetime(2011, 4, 1, tzinfo=UTC)
    data = jobs.gather(shop, settings, at, at)
    html, summary = report.render_html(data), report.summary(data)
    assert summary["forecasts"]["closed_horizon"] is None
    assert "No stored forecast's horizon has ended by this report's date yet" in html
    assert 'id="chart-tiers"' not in html  # one day of forecasts: a table row, not a chart
    assert "Forecasts of one day so far" in html


def test_a_horizon_past_the_data_is_not_judged_on_days_the_store_never_saw(
    shop: sa.Engine, settings: Settings
) -> None:
    """The shop's lines end on 2011-08-31. A forecast as of 2011-09-01 has a horizon that has
    ended by the clock on 2011-12-10, but the data covers none of it (a feed that stopped, a
    demo's old export): judged, every customer 'bought nothing' and the calibration showed
    the forecast as wildly too high. It is not judged; the note says how far the data reaches
    (the rule of forecast-evaluate and of the live choice)."""
    forecast.refresh(shop, settings, datetime(2011, 9, 1, 2, tzinfo=UTC))
    section = jobs.forecasts(shop, settings, datetime(2011, 12, 10, tzinfo=UTC))
    closed = section.closed
    assert closed is not None and closed.as_of == date(2011, 9, 1)
    assert closed.quality is None
    assert closed.note == (
        "the data reaches 2011-09-07, before its last day 2011-11-29: it is not judged"
    )
    at = datetime(2011, 12, 10, tzinfo=UTC)
    html = report.render_html(jobs.gather(shop, settings, at, at))
    assert "has ended its horizon, but the data reaches 2011-09-07" in html
