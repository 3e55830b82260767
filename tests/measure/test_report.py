"""The demo shop measured: a simulation with a known injected effect and a campaign without
one, NPS answered through the API, KPI history backfilled, and the HTML report rendered in a
real headless Chromium with its charts present.

The demo shop is the real UCI file (541,909 lines) with its synthetic customer records. Two
campaigns go out on 4 and 6 October 2011 (planned, enqueued, rendered and accepted by the fake
provider); half of each audience is held out. Nobody really received these e-mails, so the
real orders that follow carry no effect at all: ``sim_null`` must show intervals that contain
zero. For ``sim_effect`` we add one order of £250 within two days to a fixed 30 % of the
recipients: the known effect on orders and revenue per recipient is exactly that, the one on
the conversion rate is the share of recipients the added orders converted.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from recocamp.campaigns import labels, planner, segments
from recocamp.campaigns.files import Campaign, load_all
from recocamp.campaigns.render import Renderer
from recocamp.campaigns.run import plan_and_enqueue
from recocamp.cli import app as cli_app
from recocamp.clock import FixedClock
from recocamp.data.demo import build_demo
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp.fake import FakeProvider
from recocamp.domain import Purchase
from recocamp.measure import attribution as measure
from recocamp.measure import jobs as measure_jobs
from recocamp.measure import report
from recocamp.measure.kpis import OrderTotal
from recocamp.settings import EspSettings, MeasureSettings, Settings, ShopSettings
from recocamp.store import measure as store
from recocamp.store import queries, registry
from recocamp.store.engine import make_engine
from tests.api_shop import call
from tests.conftest import NOW, ROOT, UCI
from tests.measure.test_feedback import fake_require

if TYPE_CHECKING:  # imported where a browser is started
    from playwright.sync_api import Page

LONDON = ZoneInfo("Europe/London")
EFFECT_RUN = datetime(2011, 10, 4, 10, tzinfo=LONDON).astimezone(UTC)
NULL_RUN = datetime(2011, 10, 6, 10, tzinfo=LONDON).astimezone(UTC)
NPS_RUN = datetime(2011, 10, 15, 10, tzinfo=LONDON).astimezone(UTC)
AS_OF = datetime(2011, 12, 10, tzinfo=LONDON).astimezone(UTC)
INJECTED_REVENUE = 250.0  # about half the shop's average order value
CAMPAIGN = """name = "{name}"
description = "Simulation: everybody who ordered in the last year."
legal_basis = ["double_opt_in", "existing_customer"]
holdout_percent = 50
[schedule]
cron = "0 10 * * TUE"
time_zone = "Europe/London"
[audience]
lapsed_days = [0, 365]
[offer]
mode = "mixed"
items = 2
[template]
subject = {{ en = "Picked for you", de = "Für Sie" }}
html = "cross_sell.html"
text = "cross_sell.txt"
{variants}"""
VARIANTS = """[[variants]]
name = "a"
weight = 1
[[variants]]
name = "b"
weight = 1
"""
# The shop fixture builds the whole demo shop once (541,909 lines imported, three campaign
# runs, half a year of snapshots): about a minute on an idle 2-core machine, more on a busy one.
# The tests themselves take seconds; the limit is for the fixture that the first of them sets
# up. The tests of the page's wording and charts build their data by hand and take a second.
slow = pytest.mark.slow
SHOP_TIMEOUT = pytest.mark.timeout(600)


def bucket(text: str, salt: str) -> int:
    return int(hashlib.sha256(f"{salt}:{text}".encode()).hexdigest()[:8], 16) % 100


@dataclass(frozen=True)
class Shop:
    engine: sa.Engine
    settings: Settings
    directory: Path
    injected: int  # orders added to sim_effect recipients
    treated: int  # sim_effect recipients
    converted_by_injection: int  # recipients who converted only through an added order


def _campaigns(directory: Path, settings: Settings) -> dict[str, Campaign]:
    folder = directory / "campaigns"
    folder.mkdir()
    (folder / "sim_effect.toml").write_text(CAMPAIGN.format(name="sim_effect", variants=VARIANTS))
    (folder / "sim_null.toml").write_text(CAMPAIGN.format(name="sim_null", variants=""))
    shutil.copy(ROOT / "campaigns" / "nps.toml", folder / "nps.toml")
    loaded, failures = load_all(folder, settings, ROOT / "templates")
    assert failures == []
    return {c.name: c for c in loaded}


def _send(shop: tuple[sa.Engine, Settings], campaign: Campaign, at: datetime) -> None:
    engine, settings = shop
    plan_and_enqueue(engine, settings, campaign, ROOT / "templates", at)
    later = FixedClock(at + timedelta(hours=12))  # quiet-hours deferrals are due by then
    deliverer = Deliverer(
        engine, FakeProvider(), EspSettings(), later, renderer=Renderer(ROOT / "templates")
    )
    deliverer.drain(campaign.name)


def _inject(engine: sa.Engine) -> tuple[int, int, int]:
    """One £250 order 1–47 hours after the mail for a fixed 30 % of sim_effect's recipients."""
    window = timedelta(days=7)
    with engine.connect() as connection:
        touches = [
            t for t in store.touches(connection, EFFECT_RUN, NULL_RUN) if t.campaign == "sim_effect"
        ]
        before = [
            OrderTotal(*r)
            for r in queries.order_totals(connection, EFFECT_RUN, EFFECT_RUN + window)
        ]
    treated = [t for t in touches if not t.holdout]
    chosen = [t for t in treated if bucket(t.customer_id, "inject") < 30]
    added = [
        Purchase(
            f"SIM{n}",
            1,
            t.customer_id,
            "85123A",
            1,
            INJECTED_REVENUE,
            t.at + timedelta(hours=1 + bucket(t.customer_id, "hour") % 47),
        )
        for n, t in enumerate(chosen)
    ]
    with engine.begin() as connection:
        queries.insert_purchases(connection, added, None)
    base = {
        r.touch.customer_id
        for r in measure.attribute(touches, before, window)
        if r.converted and not r.touch.holdout
    }
    return len(added), len(treated), len({t.customer_id for t in chosen} - base)


def _answer_surveys(engine: sa.Engine, settings: Settings) -> int:
    """40 % of the NPS recipients answer through POST /v1/feedback, mostly happily."""
    from fastapi import FastAPI

    from recocamp.api.measure import router

    api = FastAPI()
    api.include_router(
        router(settings, engine, FixedClock(NPS_RUN + timedelta(days=2)), fake_require)
    )
    with engine.connect() as connection:
        sent = [
            t
            for t in store.touches(connection, NPS_RUN, NPS_RUN + timedelta(seconds=1))
            if t.campaign == "nps"
        ]
    scores = (10, 10, 9, 9, 9, 8, 7, 6, 3, 10)
    answered = 0
    from recocamp.campaigns import compose

    for touch in sent:
        if bucket(touch.customer_id, "answer") >= 40:
            continue
        link = compose.links(settings, b"s" * 32, touch.customer_id, "nps", NPS_RUN)
        assert link.feedback is not None
        token = link.feedback(compose.survey_of("nps", touch.key)).split("token=")[1]
        score = scores[bucket(touch.customer_id, "score") % 10]
        reply = call(api, "POST", "/v1/feedback", json={"token": token, "score": score})
        assert reply.status == 200 and reply.json()["recorded"] is True
        answered += 1
    return answered


def _register_models(engine: sa.Engine) -> None:
    """Two trained versions as `recocamp train` registers them (metrics from its split)."""
    for n, (cutoff, recall, ndcg, hit) in enumerate(
        (
            (datetime(2011, 9, 1, tzinfo=UTC), 0.3734, 0.3906, 0.8386),
            (datetime(2011, 11, 1, tzinfo=UTC), 0.3908, 0.4055, 0.8515),
        )
    ):
        metrics = {
            "candidate": {"recall": recall, "ndcg": ndcg, "hit_rate": hit},
            "popularity": {"recall": 0.13 + n / 100},
        }
        with engine.begin() as connection:
            registry.register(
                connection,
                version=f"v{n}",
                name="hybrid",
                trained_at=cutoff,
                data_cutoff=cutoff,
                fingerprint=f"f{n}",
                params={},
                metrics=metrics,
                path="-",
                popular=[],
                status="live" if n else "retired",
            )


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    if not UCI.exists():
        pytest.skip(f"the UCI file is absent ({UCI})")
    directory = tmp_path_factory.mktemp("demo-shop")
    settings = Settings(
        database_url=f"sqlite:///{directory / 'demo.db'}",
        signing_key="s" * 32,
        shop=ShopSettings(
            name="Demo Gift Shop", time_zone="Europe/London", currency="GBP", default_locale="en"
        ),
        measure=MeasureSettings(history_days=190),
    )
    engine = make_engine(settings.database_url)
    build_demo(engine, settings, now=NOW, source=UCI, demo_dir=directory)
    campaigns = _campaigns(directory, settings)
    _send((engine, settings), campaigns["sim_effect"], EFFECT_RUN)
    injected, treated, converted = _inject(engine)
    _send((engine, settings), campaigns["sim_null"], NULL_RUN)
    _send((engine, settings), campaigns["nps"], NPS_RUN)
    assert _answer_surveys(engine, settings) > 100
    _register_models(engine)
    measure_jobs.backfill(engine, settings, date(2011, 6, 1), date(2011, 12, 9), NOW)
    (directory / "settings.toml").write_text(
        f'database_url = "{settings.database_url}"\n[shop]\nname = "Demo Gift Shop"\n'
        'time_zone = "Europe/London"\ncurrency = "GBP"\ndefault_locale = "en"\n'
        "[measure]\nhistory_days = 190\n"
    )
    yield Shop(engine, settings, directory, injected, treated, converted)
    engine.dispose()


def _uplift(
    data: report.Data, campaign: str, variant: str | None = None, against: str = "holdout"
) -> measure.Uplift:
    return next(
        u
        for u in data.uplifts
        if (u.campaign, u.variant, u.against) == (campaign, variant, against)
    )


@slow
@SHOP_TIMEOUT
def test_a_known_injected_effect_is_measured_within_its_interval(shop: Shop) -> None:
    data = measure_jobs.gather(shop.engine, shop.settings, AS_OF, NOW)
    effect = _uplift(data, "sim_effect")
    assert effect.enough and effect.treated.units == shop.treated > 1000
    assert 1000 < effect.control.units < 2 * shop.treated
    known = {
        "orders_per_recipient": shop.injected / shop.treated,
        "revenue_per_recipient": shop.injected * INJECTED_REVENUE / shop.treated,
        "conversion_rate": shop.converted_by_injection / shop.treated,
    }
    for metric, value in known.items():
        interval = effect.comparisons[metric].absolute_interval
        assert interval.contains(value), (metric, value, interval)
        assert interval.low > 0, (metric, interval)  # and it is detected
    assert 0.25 < shop.injected / shop.treated < 0.35
    # A/B: both variants against the holdout, and against each other (the same method)
    assert _uplift(data, "sim_effect", "a").comparisons["conversion_rate"].absolute_interval.low > 0
    head_to_head = _uplift(data, "sim_effect", "b", against="a")
    assert head_to_head.enough and head_to_head.treated.units + head_to_head.control.units == (
        shop.treated
    )


@slow
@SHOP_TIMEOUT
def test_a_campaign_without_an_effect_has_intervals_containing_zero(shop: Shop) -> None:
    data = measure_jobs.gather(shop.engine, shop.settings, AS_OF, NOW)
    null = _uplift(data, "sim_null")
    assert null.enough and min(null.treated.units, null.control.units) > 1000
    for metric in measure.METRICS:
        comparison = null.comparisons[metric]
        assert comparison.absolute_interval.contains(0.0), (metric, comparison)
        relative = comparison.relative_interval
        assert relative is not None and relative.contains(0.0), (metric, relative)


@slow
@SHOP_TIMEOUT
def test_report_command_tables_json_and_html(shop: Shop, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(shop.directory)
    runner = CliRunner()
    result = runner.invoke(
        cli_app, ["report", "--as-of", "2011-12-10", "--format", "json", "--html", "report.html"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[: result.output.rindex("}") + 1])
    campaigns = {(c["campaign"], c["variant"], c["against"]): c for c in summary["campaigns"]}
    assert campaigns[("sim_null", None, "holdout")]["enough_data"] is True
    assert summary["nps"]["overall"]["responses"] > 100 and summary["nps"]["overall"]["score"] > 0
    assert summary["kpis"]["day"] == "2011-12-09" and summary["cohorts"][0]["month"] <= "2011-01-01"
    html = (shop.directory / "report.html").read_text()
    assert "@example.test" not in html  # no e-mail address anywhere in the report
    assert "<script" not in html and "<image" not in html  # no scripts, vector charts only
    assert re.findall(r'(?:src|href)="(?!#)[^"]*"', html) == []  # nothing to fetch
    table = runner.invoke(cli_app, ["report", "--as-of", "2011-12-10", "--no-store"])
    assert table.exit_code == 0 and "uplift against the holdout" in table.output
    assert "sim_effect · b vs a" in table.output and "cohort retention" in table.output
    assert re.search(r"\bcontrol\b", table.output, re.I) is None  # one word: holdout
    assert "Average order value" in table.output and "average_order_value" not in table.output


CHARTS = (
    "kpi-trends",
    "uplift",
    "cohort-heatmap",
    "segments",
    "skip-reasons",
    "nps",
    "model-metrics",
)


def _chromium() -> str:
    found = os.environ.get("RECOCAMP_TEST_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.skip("Chromium is absent (CI exports RECOCAMP_TEST_CHROMIUM)")
    return found


@slow
@SHOP_TIMEOUT
def test_the_report_in_a_real_headless_browser(shop: Shop, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    data = measure_jobs.gather(shop.engine, shop.settings, AS_OF, NOW)
    path = tmp_path / "report.html"
    path.write_text(report.render_html(data), encoding="utf-8")
    requests: list[str] = []
    problems: list[str] = []
    args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=args)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("request", lambda r: requests.append(r.url))
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: problems.append(str(e)))
        page.goto(path.as_uri())
        boxes = {}
        for chart in CHARTS:
            svg = page.locator(f'figure[data-chart="{chart}"] svg')
            assert svg.count() == 1, chart
            boxes[chart] = svg.bounding_box()
            assert svg.locator("path").count() > 10, chart  # axes, ticks, lines, bars, cells
        uplift_text = page.locator('figure[data-chart="uplift"] svg').text_content() or ""
        heat_text = page.locator('figure[data-chart="cohort-heatmap"] svg').text_content() or ""
        title = page.title()
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert title.startswith("Retention report · Demo Gift Shop · 2011-12-10")
    for chart, box in boxes.items():  # the NPS of one month is its answers only: one panel
        wide = 400 if chart == "nps" else 600
        assert box is not None and box["width"] > wide and box["height"] > 150, (chart, box)
    assert "sim_effect" in uplift_text and "sim_null" in uplift_text
    assert "2010-12" in heat_text
    assert [url for url in requests if not url.startswith("file://")] == []  # self-contained
    assert problems == []
    assert (tmp_path / "report.png").stat().st_size > 50_000


# --- the page's words, signs and charts, from data built by hand ----------------------------

DAY = date(2011, 11, 20)
KPI_VALUES = {
    "orders": 968.0,
    "customers": 700.0,
    "average_order_value": 785.61,
    "purchase_frequency": 1.4,
    "repeat_purchase_rate": 0.3,
    "churn_rate": 0.25,
    "clv": 4400.0,
    "guest_checkout_rate": 0.1,
}


def _units(
    campaign: str, n: int, converted: int, holdout: bool, variant: str | None = None
) -> list[measure.Result]:
    at = datetime(2011, 10, 4, 10, tzinfo=UTC)
    return [
        measure.Result(
            measure.Touch(campaign, f"{campaign}-{holdout}-{variant}-{k}", at, holdout, variant),
            *((1, 50.0) if k < converted else (0, 0.0)),
        )
        for k in range(n)
    ]


def _model(version: str, cutoff: datetime) -> report.ModelPoint:
    metrics = {"recall": 0.37, "ndcg": 0.39, "hit_rate": 0.84, "popularity_recall": 0.13}
    return report.ModelPoint(version, "hybrid", "live", cutoff, cutoff, metrics)


def _data() -> report.Data:
    """A small report: daily KPIs over October and November, a campaign that worked, one
    without a holdout, every reason the planner can record, segments, one model, one month
    of NPS."""
    days = [DAY - timedelta(days=n) for n in range(50)]
    thresholds = measure.Thresholds(10, 2)
    uplifts = [
        measure.compare(
            "winback",
            None,
            _units("winback", 200, 40, False),
            _units("winback", 200, 10, True),
            thresholds,
        ),
        measure.compare("birthday", None, _units("birthday", 200, 40, False), [], thresholds),
    ]
    reasons = [("winback", "skip", code, 10 + n) for n, code in enumerate(planner.REASONS)]
    reasons += [("birthday", "skip", "not_in_audience:birthday_today", 5000)]
    return report.Data(
        shop="Test Shop",
        currency="GBP",
        zone="Europe/London",
        as_of=datetime(2011, 11, 21, tzinfo=UTC),
        generated_at=NOW,
        attribution_days=7,
        report_days=90,
        confidence=0.95,
        uplifts=uplifts,
        reasons=reasons,
        kpi_history={(d, w): dict(KPI_VALUES) for d in days for w in (30, 365)},
        latest_day=DAY,
        changes=[
            measure.Change("week", 7, "average_order_value", 785.61, 396.67),
            measure.Change("week", 7, "orders", 968.0, 1000.0),
        ],
        segments={d: {"cant_lose_them": 10, "champions": 20, "others": 3} for d in days},
        cohorts=[],
        models=[_model("v1", datetime(2011, 11, 1, tzinfo=UTC))],
        nps=report.NpsSection(
            measure.nps([10, 9, 3] * 20), [], [(date(2011, 10, 1), measure.nps([10, 9, 3] * 20))]
        ),
    )


@functools.cache
def _page() -> str:
    """The page of ``_data()``, rendered once for the tests that read it."""
    return report.render_html(_data())


def _visible(html: str) -> str:
    """The page's text as a reader sees it: no tooltips (SVG titles, title attributes), no
    tags, no style sheet, non-breaking spaces as spaces."""
    html = re.sub(r"<style>.*?</style>|<title>.*?</title>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html).replace("\u00a0", " "))


def _chart(html: str, name: str) -> str:
    found = re.search(rf'<figure [^>]*data-chart="{name}">(.*?)</figure>', html, re.S)
    assert found is not None, name
    return found.group(1)


def _x_ticks(svg: str) -> list[str]:
    return re.findall(r'<g id="xtick_\d+">.*?<text[^>]*>([^<]*)</text>', svg, re.S)


def test_every_reason_and_segment_code_has_words() -> None:
    """Every code the planner can record (its own constants) and every RFM segment has words
    of its own, not the code and not the fallback for codes of other versions."""
    assert len(planner.REASONS) == len(set(planner.REASONS)) > 20
    for code in planner.REASONS:
        prefix, _, rule = code.partition(":")
        assert code in labels.REASONS or (
            prefix == planner.NOT_IN_AUDIENCE and rule in labels.AUDIENCE
        ), code
        assert "_" not in labels.reason(code) and labels.reason(code) != code, code
    for code in [name for name, _, _ in segments.RFM_SEGMENTS] + [segments.OTHERS]:
        assert code in labels.SEGMENTS and "_" not in labels.segment(code), code
    for code in [*report.CHANGE_KPIS, *(kpi for kpi, _ in report.KPI_CHARTS)]:
        assert code in labels.KPIS, code
    assert labels.reason("not_in_audience:new_rule") == "Not in the audience: new rule"


def test_the_planner_records_only_named_reasons() -> None:
    """``planner.REASONS`` is complete: every reason ``decide`` records is one of the named
    constants, never a string literal written where the decision is made."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(planner))
    decide = next(
        n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "decide"
    )
    for node in ast.walk(decide):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            reason = {"skip": 0, "Decision": 3}.get(node.func.id)
            if reason is not None and len(node.args) > reason:
                argument = node.args[reason]
                assert not isinstance(argument, ast.Constant | ast.JoinedStr), ast.unparse(node)


def test_charts_and_tables_show_words_and_keep_the_codes_in_tooltips() -> None:
    html = _page()
    reasons, segment_chart = _chart(html, "skip-reasons"), _chart(html, "segments")
    assert "Not in the audience: no birthday today" in reasons
    assert "Can’t lose them" in segment_chart and "Other customers" in segment_chart
    assert "<title>not_in_audience:birthday_today</title>" in reasons
    assert "<title>cant_lose_them</title>" in segment_chart
    visible = _visible(html)
    for code in (
        "not_in_audience",
        "birthday_today",
        "cant_lose_them",
        "average_order_value",
        "eligible",
        "repeat_purchase_rate",
    ):
        assert code not in visible, code
    assert "Average order value" in visible


def test_every_change_is_signed() -> None:
    visible = _visible(_page())
    assert "£785.61 £396.67 +98.1 %" in visible
    assert "968.00 1,000.00 \u22123.2 %" in visible
    # the relative conversion uplift of winback: 20 % against 5 %, +300 %
    assert "+300 %" in visible and "+15.0 pp" in visible


def test_the_lifetime_value_says_what_it_is_and_over_which_window() -> None:
    html = _page()
    card = re.search(r'<div class="card" id="clv"[^>]*>(.*?)</div></div>', html, re.S)
    assert card is not None
    words = _visible(card.group(1))
    assert "£4,400.00" in words and "over the expected lifetime" in words
    assert "365-day window" in words


def test_a_churn_rate_the_history_is_too_short_for_says_so() -> None:
    """A 365-day churn needs 730 days of orders; a dash alone read like a figure lost."""
    data = _data()
    short = {
        k: ({**v, "churn_rate": None, "clv": None} if k[1] == 365 else v)
        for k, v in data.kpi_history.items()
    }
    html = report.render_html(dataclasses.replace(data, kpi_history=short))

    def cards(page: str) -> str:
        return _visible(page.split('<div class="cards">')[1].split('<div class="scroll">')[0])

    assert cards(html).count("needs 730 days of orders") == 2  # churn rate and lifetime value
    assert "needs" not in cards(_page())


def test_every_uplift_panel_says_it_plots_a_difference() -> None:
    """The panels plot mailed − holdout: a title naming only the metric ("Revenue per
    recipient (GBP)") made +£5 of uplift read as £5 of revenue per recipient."""
    titles = re.findall(r"<text[^>]*>([^<]*)</text>", _chart(_page(), "uplift"))
    panels = [t for t in titles if "per recipient" in t or "Conversion" in t]
    assert len(panels) == 3 and all("uplift" in t for t in panels), panels


def test_the_cohort_where_the_data_starts_says_so() -> None:
    """UCI starts in December 2010: that "cohort" of 885 came back at 32–50 % a month, the
    later ones at 15–30 %, which read as new customers having been twice as loyal once; they
    were the shop's regulars, whose first orders lie before the data."""
    cohorts = [
        measure.Cohort(date(2010, 12, 1), 885, (0.36, 0.32), data_start=True),
        measure.Cohort(date(2011, 1, 1), 417, (0.22, 0.27)),
    ]
    html = report.render_html(dataclasses.replace(_data(), cohorts=cohorts))
    ticks = re.findall(r"<text[^>]*>([^<]*)</text>", _chart(html, "cohort-heatmap"))
    assert "2010-12 (n=885, data start: not only new customers)" in ticks
    assert "2011-01 (n=417)" in ticks
    assert "2010-12 is the first month on record" in _visible(html)
    summary = report.summary(dataclasses.replace(_data(), cohorts=cohorts))
    assert summary["cohorts"][0]["data_start"] is True


def test_customers_in_both_groups_are_reported() -> None:
    uplift = dataclasses.replace(_data().uplifts[0], switched=12)
    data = dataclasses.replace(_data(), uplifts=[uplift])
    assert (
        "12 winback customers were in both groups compared (held out and mailed: "
        "holdout_percent changed) and are left out of both" in _visible(report.render_html(data))
    )
    assert report.summary(data)["campaigns"][0]["switched_customers"] == 12


def test_one_word_for_the_held_out_group() -> None:
    visible = _visible(_page())
    assert re.search(r"\bcontrol\b", visible, re.I) is None
    assert "no holdout: nobody of this campaign was held out" in visible


def test_one_model_version_is_a_table_row_not_a_line() -> None:
    html = _page()
    assert 'data-chart="model-metrics"' not in html
    assert "One trained version so far" in html and "0.3700" in html
    two = dataclasses.replace(
        _data(),
        models=[
            _model("v1", datetime(2011, 9, 1, tzinfo=UTC)),
            _model("v2", datetime(2011, 11, 1, tzinfo=UTC)),
        ],
    )
    chart = report.models_chart(two)
    assert chart is not None
    assert "recall@10 of the popularity baseline" in chart


def test_one_month_of_nps_is_a_number_not_a_line() -> None:
    html = _page()
    assert "NPS per month" not in _chart(html, "nps")
    assert "one month with answers so far" in html


def test_a_month_of_a_single_answer_is_drawn_with_its_interval() -> None:
    """The adjusted NPS interval is centred on the adjusted shares: a month of one promoter
    (NPS 100) ended its interval at 98.5, below the score, and the chart's error bar of
    −1.5 made matplotlib refuse to draw the whole report."""
    months = [
        (date(2011, 9, 1), measure.nps([10])),
        (date(2011, 10, 1), measure.nps([0, 3])),
        (date(2011, 11, 1), measure.nps([10, 9, 3] * 20)),
    ]
    for _, n in months:
        assert n.score is not None and n.interval is not None and n.interval.contains(n.score)
    data = dataclasses.replace(_data(), nps=report.NpsSection(months[-1][1], [], months))
    assert "NPS per month" in _chart(report.render_html(data), "nps")


def test_date_axes_name_their_months() -> None:
    """Seven weeks of KPIs: day ticks that name their month ("15 Oct", never a bare "15"
    beside "Oct"), the year once, never "2011-Nov"."""
    html = _page()
    chart = _chart(html, "kpi-trends")
    ticks = _x_ticks(chart)
    assert ticks and all(re.fullmatch(r"\d\d [A-Z][a-z]{2}", t) for t in ticks), ticks
    assert re.search(r"\d{4}-[A-Z][a-z]{2}", chart) is None
    assert ">2011<" in chart
    long = dataclasses.replace(
        _data(),
        kpi_history={
            (date(2011, 6, 1) + timedelta(days=n), 30): dict(KPI_VALUES) for n in range(190)
        },
    )
    months = _x_ticks(str(report.kpi_chart(long)))
    assert months[:3] == ["Jun", "Jul", "Aug"], months


# every table against its container and the viewport: [id, scrollWidth, clientWidth of the
# container, right edge, container's right edge]; every header cell of the uplift table
OVERFLOW = """() => ({
  tables: [...document.querySelectorAll("table")].map(t => [t.id, t.scrollWidth,
    t.parentElement.clientWidth, t.getBoundingClientRect().right,
    t.parentElement.getBoundingClientRect().right]),
  headers: [...document.querySelectorAll("#uplift-table th")].map(h => [h.textContent,
    h.getBoundingClientRect().right]),
  page: document.documentElement.scrollWidth,
})"""


def _fits(page: Page, width: int) -> list[str]:
    """What sticks out at this width: tables wider than their box, cut header cells."""
    found = page.evaluate(OVERFLOW)
    problems = [
        f"table {t[0]!r}: {t[1]} px in {t[2]} px"
        for t in found["tables"]
        if t[1] > t[2] or t[3] > min(t[4], width) + 0.5
    ]
    problems += [
        f"header {h[0]!r} ends at {h[1]} px" for h in found["headers"] if h[1] > width + 0.5
    ]
    if found["page"] > width:
        problems.append(f"the page is {found['page']} px wide")
    assert len(found["headers"]) == 9 and len(found["tables"]) >= 4
    return problems


@slow
@SHOP_TIMEOUT
def test_the_report_fits_a_laptop_screen_and_a_printed_page(shop: Shop, tmp_path: Path) -> None:
    """At 1280 × 800 every table fits its section and every column of the uplift table is on
    screen (no sideways scrolling); printed (print media, A4 less the page margins: 703 px)
    no column is cut either."""
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    data = measure_jobs.gather(shop.engine, shop.settings, AS_OF, NOW)
    path = tmp_path / "report.html"
    path.write_text(report.render_html(data), encoding="utf-8")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(path.as_uri())
        screen = _fits(page, 1280)
        page.screenshot(path=str(tmp_path / "laptop.png"), full_page=True)
        printed = browser.new_page(viewport={"width": 703, "height": 1000})
        printed.emulate_media(media="print")
        printed.goto(path.as_uri())
        paper = _fits(printed, 703)
        printed.pdf(path=str(tmp_path / "report.pdf"), format="A4")
        browser.close()
    assert screen == [] and paper == [], (screen, paper)
    assert (tmp_path / "report.pdf").stat().st_size > 50_000


def test_the_model_table_dates_a_version_in_the_shops_zone() -> None:
    """A New York shop trained on the data before 1 January 2012, its midnight (05:00 UTC):
    the table said "data up to 2012-01-01" (the UTC date), a day the model never saw, and a
    Tokyo shop's same local cutoff (15:00 UTC on 31 December) read 2011-12-31 — the same
    cutoff read as two days by the zone. Both now show the cutoff, and the training time, in
    the shop's zone."""
    pages = {}
    for zone in ("America/New_York", "Asia/Tokyo"):
        cutoff = datetime(2012, 1, 1, tzinfo=ZoneInfo(zone)).astimezone(UTC)
        model = dataclasses.replace(_model("v1", cutoff), trained_at=cutoff + timedelta(hours=2))
        data = dataclasses.replace(_data(), zone=zone, models=[model])
        table = re.search(r'<table id="models">.*?</table>', report.render_html(data), re.S)
        assert table is not None
        pages[zone] = _visible(table.group(0))
    for shown in pages.values():
        assert "2012-01-01 00:00" in shown and "2012-01-01 02:00" in shown
        assert "2011-12-31" not in shown and "05:00" not in shown and "15:00" not in shown


def test_every_model_version_has_the_same_keys_in_the_json() -> None:
    """``report --format json``: a version without an evaluation (no popularity baseline, a
    metric not computed) had no ``recall`` key at all while the others had one, so a reader
    of ``models[i]["recall"]`` failed on it; and no version said what data it learnt from,
    which the HTML table shows. Every version has every metric (null when unknown) and its
    ``data_cutoff``."""
    cutoff = datetime(2011, 9, 1, tzinfo=UTC)
    bare = report.ModelPoint("v0", "hybrid", "rejected", cutoff, cutoff, {})
    data = dataclasses.replace(_data(), models=[bare, _model("v1", cutoff)])
    found = report.summary(data)["models"]
    assert set(found[0]) == set(found[1]) >= {"recall", "popularity_recall", "data_cutoff"}
    assert found[0]["recall"] is None and found[1]["recall"] == 0.37
    assert found[0]["data_cutoff"] == cutoff.isoformat()
