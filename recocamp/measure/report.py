"""The measurement report: one self-contained HTML file, a JSON summary, and the charts.

Charts are drawn with matplotlib (object API, no pyplot, no global backend) and inlined as
SVG with text kept as text (``svg.fonttype = none``): no script, no CDN, no network, so the
file can be mailed around and opened anywhere. The page is a sandboxed, autoescaped Jinja
template (``html/report.html``); only the SVGs matplotlib wrote are marked safe.

Charts: KPI trends (daily snapshots), cohort retention heat map, uplift per campaign and
variant with its confidence intervals, decisions and skip reasons per campaign, RFM segment
sizes over time, model quality per trained version, NPS, and the purchase forecasts: customers
per churn-risk tier of every stored forecast version, lifetime value by RFM segment, the
calibration of the last closed horizon. A chart without data is left out
and the page says why; a trend with a single point is a number in the text or a table, not a
line. Codes (reasons, segments, KPIs) are shown in words (``labels``); the code stays in a
tooltip. A change is always signed (+98.1 %, −3.2 %): a marketer should not have to infer
the direction from a colour.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from zoneinfo import ZoneInfo

import numpy as np
from jinja2 import FileSystemLoader, StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from markupsafe import Markup

from recocamp.campaigns import labels
from recocamp.campaigns.render import money
from recocamp.campaigns.segments import OTHERS, RFM_SEGMENTS
from recocamp.forecast.evaluate import Quality
from recocamp.measure.attribution import METRICS, Change, Cohort, Nps, Uplift
from recocamp.store.forecasts import TierCounts

if TYPE_CHECKING:  # matplotlib is imported when a chart is drawn: 0.6 s every CLI command and
    #                API process would pay for nothing
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PAGES = Path(__file__).with_name("html")  # page templates (report.html, feedback.html)
CHANGE_KPIS = (
    "orders",
    "customers",
    "average_order_value",
    "purchase_frequency",
    "repeat_purchase_rate",
)
# (KPI, preferred window W, title): each trend chart uses the snapshot window nearest W; churn
# and CLV over 90 days, because the 365-day churn needs two years of history to exist at all
KPI_CHARTS = (
    ("orders", 30),
    ("customers", 30),
    ("average_order_value", 30),
    ("repeat_purchase_rate", 90),
    ("churn_rate", 90),
    ("clv", 90),
)
RATES = {"repeat_purchase_rate", "churn_rate", "guest_checkout_rate", "conversion_rate"}
RC: Any = {
    "svg.fonttype": "none",
    "svg.hashsalt": "recocamp",
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 10,
    "axes.titleweight": "bold",
    "font.family": ["DejaVu Sans", "sans-serif"],
}
# no RDF block (dates would make reports differ, and it only names namespaces)
NO_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}
BLUE, GREY, RED, GREEN = "#2f4858", "#9aa5ad", "#c0392b", "#2e8b57"
MINUS = "\u2212"  # the typographic minus of a signed change (a hyphen reads as a dash)
NBSP = "\u00a0"  # between a number and its unit: "12.3 %" never breaks across lines
# ConciseDateFormatter per tick level (years, months, days, hours, minutes, seconds): a day
# tick names its month ("15 Oct", not "15" next to "Oct"), the offset names only what the
# ticks leave out (the year), never "2011-Nov"
DATE_FORMATS = ["%Y", "%b", "%d %b", "%H:%M", "%H:%M", "%S.%f"]
DATE_ZERO_FORMATS = ["", "%b\n%Y", "%d %b", "%d %b", "%H:%M", "%H:%M"]
DATE_OFFSETS = ["", "%Y", "%Y", "%d %b %Y", "%d %b %Y", "%d %b %Y %H:%M"]
MODEL_METRICS = {
    "recall": "recall@10",
    "ndcg": "NDCG@10",
    "hit_rate": "hit rate@10",
    "popularity_recall": "recall@10 of the popularity baseline",
}
MODEL_LINES = (
    ("recall", BLUE, "-"),
    ("ndcg", GREEN, "-"),
    ("hit_rate", "#8e6c8a", "-"),
    ("popularity_recall", GREY, "--"),
)
TIERS = (
    ("high", RED, "high risk"),
    ("medium", "#e6a23c", "medium risk"),
    ("low", GREEN, "low risk"),
)
TIER_ROWS = 12  # the tier table shows the newest versions; the chart and the JSON show all
_LOCK = threading.Lock()  # rcParams are process-global; the API renders in a thread pool


@dataclass(frozen=True, slots=True)
class ModelPoint:
    version: str
    name: str
    status: str
    trained_at: datetime
    data_cutoff: datetime  # the chart's time axis: what the model had learned from
    metrics: dict[str, float]


@dataclass(frozen=True, slots=True)
class NpsSection:
    overall: Nps
    surveys: list[tuple[str, int, Nps]] = field(default_factory=list)  # survey, sent, NPS
    monthly: list[tuple[date, Nps]] = field(default_factory=list)
    # months seen in part: month -> (first day read, or None; the day it was read before, or
    # None): the answers read begin inside the first month, and as_of's month is not over
    partial: dict[date, tuple[date | None, date | None]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SegmentValue:
    """The lifetime value of the forecast's customers in one RFM segment."""

    segment: str
    customers: int
    total: float

    @property
    def mean(self) -> float:
        return self.total / self.customers


@dataclass(frozen=True, slots=True)
class ClosedHorizon:
    """A stored forecast version whose horizon ``[as_of, as_of + H)`` ended by the report's
    ``as_of``, and how it did (``quality.calibration``: mean predicted and actual purchase
    days per decile of the forecast)."""

    version: str
    model: str
    as_of: date
    horizon_days: int
    quality: Quality | None  # None: no customer to judge it on
    note: str = ""

    @property
    def last_day(self) -> date:
        return self.as_of + timedelta(days=self.horizon_days - 1)


@dataclass(frozen=True, slots=True)
class ForecastSection:
    """The purchase forecasts as of the report: every stored version's tiers, the lifetime
    value by segment of the newest (``version``), the last closed horizon (None: none yet)."""

    tiers: list[TierCounts] = field(default_factory=list)
    version: str | None = None
    as_of: date | None = None
    lifetime_days: int | None = None
    values: list[SegmentValue] = field(default_factory=list)
    closed: ClosedHorizon | None = None


@dataclass(frozen=True, slots=True)
class Data:
    """What the report shows (built by ``measure_jobs.gather``)."""

    shop: str
    currency: str
    zone: str
    as_of: datetime
    generated_at: datetime
    attribution_days: int
    report_days: int
    confidence: float
    uplifts: list[Uplift]
    reasons: list[tuple[str, str, str, int]]
    kpi_history: dict[tuple[date, int], dict[str, float | None]]
    latest_day: date | None
    changes: list[Change]
    segments: dict[date, dict[str, int]]
    cohorts: list[Cohort]
    models: list[ModelPoint]
    nps: NpsSection
    forecasts: ForecastSection = field(default_factory=ForecastSection)
    # e-mails of runs whose decisions (their holdout) were deleted after ``[privacy]
    # decisions_days``: no unit of any group (``store.measure.touches``)
    sends_left_out: int = 0


# --- charts ------------------------------------------------------------------------------


@cache
def _palette() -> list[Any]:
    import matplotlib

    return [matplotlib.colormaps["tab20"](k) for k in range(20)]


@contextmanager
def _figure(width: float, height: float) -> Iterator[Figure]:
    import matplotlib
    from matplotlib.figure import Figure

    with _LOCK, matplotlib.rc_context(RC):
        yield Figure(figsize=(width, height), layout="constrained")


def _svg(figure: Figure, codes: Sequence[str] = ()) -> Markup:
    """The figure as SVG; an artist whose gid is ``code-N`` gets ``codes[N]`` as its tooltip
    (an SVG ``<title>``), so the chart shows words and still tells the code."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context(RC):
        figure.savefig(buffer, format="svg", metadata=NO_METADATA)
    text = buffer.getvalue()
    text = re.sub(
        r'<g id="code-(\d+)">',
        lambda m: f"{m.group(0)}<title>{_escape(codes[int(m.group(1))])}</title>",
        text[text.index("<svg") :],
    )
    return Markup(text)  # noqa: S704 — matplotlib's own SVG, text escaped


def _escape(text: str) -> str:
    return str(Markup.escape(text))


def _coded(artist: Any, code: str, codes: list[str]) -> None:
    """Tag ``artist`` for a tooltip naming ``code`` (see ``_svg``)."""
    artist.set_gid(f"code-{len(codes)}")
    codes.append(code)


def _dates(axes: Axes) -> None:
    """Month ticks when the axis spans three months or more, else day ticks that name their
    month; the year once, beside the axis."""
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator(minticks=3, maxticks=7)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(
        ConciseDateFormatter(  # type: ignore[no-untyped-call]
            locator,
            formats=DATE_FORMATS,
            zero_formats=DATE_ZERO_FORMATS,
            offset_formats=DATE_OFFSETS,
        )
    )


def _nearest(wanted: int, windows: set[int]) -> int:
    return min(windows, key=lambda w: (abs(w - wanted), w))


def kpi_chart(data: Data) -> Markup | None:
    from matplotlib.ticker import PercentFormatter

    windows = {w for _, w in data.kpi_history}
    if not windows:
        return None
    with _figure(10, 5.4) as figure:
        for axes, (kpi, wanted) in zip(figure.subplots(2, 3).flat, KPI_CHARTS, strict=True):
            window = _nearest(wanted, windows)
            points = sorted(
                (d, v[kpi])
                for (d, w), v in data.kpi_history.items()
                if w == window and v[kpi] is not None
            )
            axes.set_title(f"{labels.kpi(kpi)} ({window} days)", loc="left")
            if points:
                axes.plot([p[0] for p in points], [p[1] for p in points], color=BLUE, lw=1.4)
            _dates(axes)
            if kpi in RATES:
                axes.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
            axes.grid(axis="y", color="#e5e5e5")
        return _svg(figure)


def cohort_chart(data: Data) -> Markup | None:
    rows = [c for c in data.cohorts if any(v is not None for v in c.retention)]
    if not rows:
        return None
    width = max(len(c.retention) for c in rows)
    matrix = np.full((len(rows), width), np.nan)
    for n, cohort in enumerate(rows):
        for k, value in enumerate(cohort.retention):
            if value is not None:
                matrix[n, k] = 100 * value
    with _figure(10, 0.9 + 0.36 * len(rows)) as figure:
        axes = figure.subplots()
        # pcolormesh, not imshow: vector cells (imshow embeds a PNG in the SVG); every cell is
        # labelled with its value, so no colour bar (which matplotlib would rasterise)
        axes.pcolormesh(
            np.ma.masked_invalid(matrix),
            cmap="Blues",
            vmin=0,
            vmax=max(float(np.nanmax(matrix)), 1.0),
            edgecolors="white",
            linewidth=0.5,
        )
        for (n, k), value in np.ndenumerate(matrix):
            if not np.isnan(value):
                colour = "white" if value > 0.6 * np.nanmax(matrix) else "#222222"
                axes.text(
                    k + 0.5,
                    n + 0.5,
                    f"{value:.0f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color=colour,
                )
        axes.set_xticks(np.arange(width) + 0.5, [str(k + 1) for k in range(width)])
        axes.set_yticks(np.arange(len(rows)) + 0.5, [cohort_label(c) for c in rows])
        axes.invert_yaxis()
        axes.set_xlabel("months after the first order")
        axes.set_title("Customers who ordered again in month k, % of the cohort", loc="left")
        return _svg(figure)


def cohort_label(cohort: Cohort) -> str:
    """The cohort's month and size; the first month on record says it is where the data
    starts (its customers are not all new: see ``attribution.cohorts``)."""
    start = ", data start: not only new customers" if cohort.data_start else ""
    return f"{cohort.month:%Y-%m} (n={cohort.customers}{start})"


def uplift_label(uplift: Uplift) -> str:
    if uplift.variant is None:
        return uplift.campaign
    if uplift.against == "holdout":
        return f"{uplift.campaign} · {uplift.variant}"
    return f"{uplift.campaign} · {uplift.variant} vs {uplift.against}"


def uplift_chart(data: Data) -> Markup | None:
    rows = [u for u in data.uplifts if u.enough]
    if not rows:
        return None
    # every panel plots a difference (mailed − holdout), so every title says uplift: "Revenue
    # per recipient (GBP)" over a dot at +5 read as £5 of revenue per recipient
    panels = (
        ("conversion_rate", "Conversion uplift (pp)", 100.0),
        ("revenue_per_recipient", f"Revenue per recipient, uplift ({data.currency})", 1.0),
        ("orders_per_recipient", "Orders per recipient, uplift", 1.0),
    )
    with _figure(10, 1.2 + 0.42 * len(rows)) as figure:
        for axes, (metric, title, scale) in zip(
            figure.subplots(1, 3, sharey=True), panels, strict=True
        ):
            _interval_panel(axes, rows, metric, scale)
            axes.set_title(title, loc="left", fontsize=9)
        return _svg(figure)


def _interval_panel(axes: Axes, rows: Sequence[Uplift], metric: str, scale: float) -> None:
    for n, uplift in enumerate(rows):
        c = uplift.comparisons[metric]
        low, high = c.absolute_interval.low * scale, c.absolute_interval.high * scale
        value = c.absolute * scale
        colour = GREEN if low > 0 else RED if high < 0 else GREY
        axes.errorbar(
            [value],
            [n],
            xerr=[[value - low], [high - value]],
            fmt="o",
            color=colour,
            capsize=3,
            lw=1.6,
        )
    axes.axvline(0, color="#444444", lw=0.8)
    axes.set_yticks(range(len(rows)), [uplift_label(u) for u in rows])
    axes.invert_yaxis()
    axes.grid(axis="x", color="#e5e5e5")


def reasons_chart(data: Data) -> Markup | None:
    if not data.reasons:
        return None
    totals: dict[str, int] = {}
    for _, _, reason, count in data.reasons:
        totals[reason] = totals.get(reason, 0) + count
    top = sorted(totals, key=lambda r: (-totals[r], r))[:9]
    campaigns = sorted({campaign for campaign, _, _, _ in data.reasons})
    table = np.zeros((len(campaigns), len(top) + 1))
    for campaign, _, reason, count in data.reasons:
        column = top.index(reason) if reason in top else len(top)
        table[campaigns.index(campaign), column] += count
    series = [(code, labels.reason(code)) for code in top] + [("other", "Other reasons")]
    colours = _palette()
    codes: list[str] = []
    plotted: list[str] = []
    with _figure(10, 1.3 + 0.45 * len(campaigns)) as figure:
        axes = figure.subplots()
        left = np.zeros(len(campaigns))
        for k, (code, name) in enumerate(series):
            if table[:, k].any():
                bars = axes.barh(
                    campaigns, table[:, k], left=left, label=name, color=colours[k % 20]
                )
                for patch in bars.patches:
                    _coded(patch, code, codes)
                plotted.append(code)
                left += table[:, k]
        axes.invert_yaxis()
        axes.set_xlabel("customers decided")
        axes.set_title(f"Decisions and reasons, last {data.report_days} days", loc="left")
        _legend(axes, plotted, codes)
        return _svg(figure, codes)


def _legend(axes: Axes, plotted: Sequence[str], codes: list[str]) -> None:
    """The legend beside the plot, each entry's words tagged with its code."""
    legend = axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    for text, code in zip(legend.get_texts(), plotted, strict=True):
        _coded(text, code, codes)


def segments_chart(data: Data) -> Markup | None:
    if not data.segments:
        return None
    days = sorted(data.segments)
    names = [name for name, _, _ in RFM_SEGMENTS] + [OTHERS]
    present = [n for n in names if any(data.segments[d].get(n) for d in days)]
    colours = _palette()
    codes: list[str] = []
    with _figure(10, 3.6) as figure:
        axes = figure.subplots()
        stacks = [[data.segments[d].get(n, 0) for d in days] for n in present]
        areas = axes.stackplot(
            cast(Any, days),
            stacks,
            labels=[labels.segment(n) for n in present],
            colors=colours[: len(present)],
        )
        for area, code in zip(areas, present, strict=True):
            _coded(area, code, codes)
        _dates(axes)
        axes.set_ylabel("customers")
        axes.set_title("Customer segments (RFM: recency, frequency, monetary value)", loc="left")
        _legend(axes, present, codes)
        return _svg(figure, codes)


def models_chart(data: Data) -> Markup | None:
    """Quality over the versions' data cutoffs; from two versions on (one version is a row of
    the table below the chart, not a line)."""
    points = sorted((m for m in data.models if m.metrics), key=lambda m: m.data_cutoff)
    if len(points) < 2:
        return None
    with _figure(10, 3.2) as figure:
        axes = figure.subplots()
        at = [m.data_cutoff for m in points]
        for metric, colour, style in MODEL_LINES:
            values = [m.metrics.get(metric, np.nan) for m in points]
            axes.plot(
                cast(Any, at), values, style, marker="o", color=colour, label=MODEL_METRICS[metric]
            )
        pad = max((at[-1] - at[0]) / 12, timedelta(days=7))
        axes.set_xlim(cast(Any, at[0] - pad), cast(Any, at[-1] + pad))
        _dates(axes)
        axes.set_ylim(0, 1)
        axes.set_xlabel("data up to (the model version's cutoff)")
        axes.set_title("Recommender quality per trained version (time split, k = 10)", loc="left")
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
        return _svg(figure)


def nps_chart(data: Data) -> Markup | None:
    """The answers' distribution, and the NPS per month from two months on (one month's NPS
    is in the text above the chart)."""
    overall = data.nps.overall
    scored = _scored(data)
    if not overall.responses and len(scored) < 2:
        return None
    with _figure(10 if len(scored) > 1 else 5.5, 3.0) as figure:
        bars, *trend = figure.subplots(1, 2 if len(scored) > 1 else 1, squeeze=False)[0]
        colours = [RED] * 7 + [GREY] * 2 + [GREEN] * 2
        bars.bar(range(11), overall.distribution, color=colours)
        bars.set_xticks(range(11))
        bars.set_xlabel("answer (0: not at all likely … 10: extremely likely)")
        bars.set_title(f"Answers, last {data.report_days} days (n={overall.responses})", loc="left")
        if trend:
            _nps_trend(trend[0], scored)
        return _svg(figure)


def _nps_trend(axes: Axes, scored: Sequence[tuple[date, Any]]) -> None:
    months: Any = [month for month, _ in scored]  # dates: matplotlib's stubs say floats
    scores = [n.score for _, n in scored]
    lows = [n.score - n.interval.low for _, n in scored]
    highs = [n.interval.high - n.score for _, n in scored]
    axes.errorbar(months, scores, yerr=[lows, highs], fmt="o-", color=BLUE, capsize=3)
    axes.axhline(0, color="#444444", lw=0.8)
    axes.set_ylim(-100, 100)
    axes.set_xlim(months[0] - timedelta(days=20), months[-1] + timedelta(days=20))
    _dates(axes)
    axes.set_title("NPS per month (95 % interval)", loc="left")


def _scored(data: Data) -> list[tuple[date, Any]]:
    """Months with an NPS and its interval (``Any``: both are known not to be None)."""
    return [(m, n) for m, n in data.nps.monthly if n.score is not None and n.interval]


def tiers_chart(data: Data) -> Markup | None:
    """Customers per churn-risk tier over the versions' ``as_of``, stacked (the newest version
    of a day), from two days on (one day is the table's row)."""
    by_day = {t.as_of: t for t in data.forecasts.tiers}
    if len(by_day) < 2:
        return None
    days = sorted(by_day)
    codes: list[str] = []
    with _figure(10, 3.4) as figure:
        axes = figure.subplots()
        areas = axes.stackplot(
            cast(Any, days),
            [[getattr(by_day[d], tier) for d in days] for tier, _, _ in TIERS],
            labels=[name for _, _, name in TIERS],
            colors=[colour for _, colour, _ in TIERS],
        )
        for area, (tier, _, _) in zip(areas, TIERS, strict=True):
            _coded(area, tier, codes)
        _dates(axes)
        axes.set_ylabel("customers")
        axes.set_xlabel("forecast as of")
        axes.set_title("Customers by churn risk, per forecast", loc="left")
        _legend(axes, [tier for tier, _, _ in TIERS], codes)
        return _svg(figure, codes)


def values_chart(data: Data) -> Markup | None:
    rows = data.forecasts.values
    if not rows:
        return None
    codes: list[str] = []
    with _figure(10, 1.0 + 0.32 * len(rows)) as figure:
        axes = figure.subplots()
        bars = axes.barh(
            [labels.segment(v.segment) for v in rows], [v.mean for v in rows], color=BLUE
        )
        for patch, value in zip(bars.patches, rows, strict=True):
            _coded(patch, value.segment, codes)
        axes.invert_yaxis()
        axes.set_xlabel(f"mean lifetime value per customer ({data.currency})")
        axes.grid(axis="x", color="#e5e5e5")
        axes.set_title("Forecast lifetime value by RFM segment", loc="left")
        return _svg(figure, codes)


def calibration_chart(data: Data) -> Markup | None:
    closed = data.forecasts.closed
    if closed is None or closed.quality is None:
        return None
    deciles = closed.quality.calibration
    at = np.arange(len(deciles))
    with _figure(10, 3.0) as figure:
        axes = figure.subplots()
        axes.bar(at - 0.2, [d.predicted for d in deciles], 0.4, color=GREY, label="predicted")
        axes.bar(at + 0.2, [d.actual for d in deciles], 0.4, color=BLUE, label="actual")
        axes.set_xticks(at, [str(d.decile) for d in deciles])
        axes.set_xlabel("decile of the forecast (1: the fewest purchase days expected)")
        axes.set_ylabel("purchase days per customer")
        axes.grid(axis="y", color="#e5e5e5")
        axes.set_title(
            f"Predicted vs actual, forecast as of {closed.as_of.isoformat()}", loc="left"
        )
        axes.legend(loc="upper left", fontsize=8, frameon=False)
        return _svg(figure)


def charts(data: Data) -> dict[str, Markup | None]:
    return {
        "kpis": kpi_chart(data),
        "cohorts": cohort_chart(data),
        "uplift": uplift_chart(data),
        "reasons": reasons_chart(data),
        "segments": segments_chart(data),
        "models": models_chart(data),
        "nps": nps_chart(data),
        "tiers": tiers_chart(data),
        "lifetime": values_chart(data),
        "calibration": calibration_chart(data),
    }


# --- the page and the summary ------------------------------------------------------------


def _environment() -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(PAGES)),
        undefined=StrictUndefined,
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=_pct, change=_change, points=_points, num=_num, signed=_signed)
    return env


def _pct(value: float | None, places: int = 1) -> str:
    """A level (a rate, a share): no sign."""
    return "—" if value is None else f"{100 * value:,.{places}f}{NBSP}%"


def _change(value: float | None, places: int = 1) -> str:
    """A relative change, signed: +98.1 %, −3.2 %."""
    return "—" if value is None else _minus(f"{100 * value:+,.{places}f}{NBSP}%")


def _points(value: float | None, unit: bool = True) -> str:
    """A difference of two rates in percentage points, signed."""
    if value is None:
        return "—"
    return _minus(f"{100 * value:+.1f}" + (f"{NBSP}pp" if unit else ""))


def _num(value: float | int | None, places: int = 2) -> str:
    if value is None:
        return "—"
    return f"{value:,}" if isinstance(value, int) else f"{value:,.{places}f}"


def _signed(value: float | None, places: int = 2) -> str:
    return "—" if value is None else _minus(f"{value:+,.{places}f}")


def _minus(text: str) -> str:
    return text.replace("-", MINUS)


def render_html(data: Data) -> str:
    """The whole report as one HTML document."""
    latest = {w: v for (d, w), v in data.kpi_history.items() if d == data.latest_day}
    return (
        _environment()
        .get_template("report.html")
        .render(
            data=data,
            # the day the report was asked for is the shop's (``--as-of`` is its midnight):
            # its UTC date is the day before in every zone east of UTC
            local_as_of=data.as_of.astimezone(ZoneInfo(data.zone)),
            zone=ZoneInfo(data.zone),  # a model's cutoff and training time: the shop's days
            utc=UTC,
            charts=charts(data),
            latest=dict(sorted(latest.items())),
            label=uplift_label,
            money=lambda v: "—" if v is None else money(v, data.currency),
            metrics=METRICS,
            level=f"{100 * data.confidence:g} %",
            kpi=labels.kpi,
            model_metrics=MODEL_METRICS,
            scored_months=len(_scored(data)),
            tier_rows=data.forecasts.tiers[-TIER_ROWS:][::-1],
            segment=labels.segment,
        )
    )


def summary(data: Data) -> dict[str, Any]:
    """The report's numbers as JSON-ready data (``recocamp report --format json``)."""
    latest = {str(w): v for (d, w), v in sorted(data.kpi_history.items()) if d == data.latest_day}
    segments = data.segments.get(data.latest_day) if data.latest_day else None
    return {
        "shop": data.shop,
        "as_of": data.as_of.isoformat(),
        "generated_at": data.generated_at.isoformat(),
        "attribution_window_days": data.attribution_days,
        "report_days": data.report_days,
        "sends_left_out": data.sends_left_out,
        "confidence": data.confidence,
        "campaigns": [_uplift_json(u) for u in data.uplifts],
        "kpis": {
            "day": data.latest_day.isoformat() if data.latest_day else None,
            "by_window_days": latest,
        },
        "changes": [
            {
                "period": c.period,
                "window_days": c.window_days,
                "kpi": c.kpi,
                "current": c.current,
                "previous": c.previous,
                "relative": c.relative,
            }
            for c in data.changes
        ],
        "cohorts": [
            {
                "month": c.month.isoformat(),
                "customers": c.customers,
                "retention": list(c.retention),
                "data_start": c.data_start,
            }
            for c in data.cohorts
        ],
        "segments": segments or {},
        "decisions": [
            {"campaign": c, "outcome": o, "reason": r, "customers": n}
            for c, o, r, n in data.reasons
        ],
        "models": [
            {
                "version": m.version,
                "status": m.status,
                "trained_at": m.trained_at.isoformat(),
                "data_cutoff": m.data_cutoff.isoformat(),
                # every key for every version: null where a version has no such figure
                **{name: m.metrics.get(name) for name in MODEL_METRICS},
            }
            for m in data.models
        ],
        "nps": _nps_json(data.nps),
        "forecasts": _forecasts_json(data.forecasts),
    }


def _forecasts_json(section: ForecastSection) -> dict[str, Any]:
    """``churn_risk_history``: every stored version's customers per tier, oldest first;
    ``lifetime_value_by_segment``: the newest version's customers, total and mean lifetime
    value per RFM segment; ``closed_horizon``: the last version whose horizon ended, with its
    totals and calibration by decile (null: no horizon has ended yet)."""
    closed = section.closed
    return {
        "churn_risk_history": [
            {
                "version": t.version,
                "model": t.model,
                "as_of": t.as_of.isoformat(),
                "horizon_days": t.horizon_days,
                "low": t.low,
                "medium": t.medium,
                "high": t.high,
            }
            for t in section.tiers
        ],
        "version": section.version,
        "as_of": section.as_of.isoformat() if section.as_of else None,
        "lifetime_days": section.lifetime_days,
        "lifetime_value_by_segment": [
            {"segment": v.segment, "customers": v.customers, "total": v.total, "mean": v.mean}
            for v in section.values
        ],
        "closed_horizon": None if closed is None else _closed_json(closed),
    }


def _closed_json(closed: ClosedHorizon) -> dict[str, Any]:
    q = closed.quality
    return {
        "version": closed.version,
        "model": closed.model,
        "as_of": closed.as_of.isoformat(),
        "horizon_days": closed.horizon_days,
        "note": closed.note or None,
        "customers": q.customers if q else 0,
        "predicted_total": q.predicted_total if q else None,
        "actual_total": q.actual_total if q else None,
        "mae": q.mae if q else None,
        "auc": q.auc if q else None,
        "calibration": [
            {
                "decile": d.decile,
                "customers": d.customers,
                "predicted": d.predicted,
                "actual": d.actual,
            }
            for d in (q.calibration if q else ())
        ],
    }


def _interval(interval: Any) -> list[float] | None:
    return None if interval is None else [interval.low, interval.high]


def _uplift_json(uplift: Uplift) -> dict[str, Any]:
    groups = {
        name: {
            "units": g.units,
            "customers": g.customers,
            "converted": g.converted,
            "orders": round(g.orders.mean * g.units),
            "revenue": g.revenue.mean * g.units,
        }
        for name, g in (("treated", uplift.treated), ("control", uplift.control))
    }
    return {
        "campaign": uplift.campaign,
        "variant": uplift.variant,
        "against": uplift.against,
        "enough_data": uplift.enough,
        "note": uplift.note,
        "pending": uplift.pending,
        "switched_customers": uplift.switched,
        "erased_units": {"treated": uplift.erased[0], "control": uplift.erased[1]},
        **groups,
        "metrics": {
            name: {
                "treated": c.treated,
                "control": c.control,
                "absolute": c.absolute,
                "absolute_interval": _interval(c.absolute_interval),
                "relative": c.relative,
                "relative_interval": _interval(c.relative_interval),
            }
            for name, c in uplift.comparisons.items()
        },
    }


def _nps_json(section: NpsSection) -> dict[str, Any]:
    def one(n: Nps) -> dict[str, Any]:
        return {
            "responses": n.responses,
            "score": n.score,
            "interval": _interval(n.interval),
            "promoters": n.promoters,
            "passives": n.passives,
            "detractors": n.detractors,
            "enough_data": n.enough,
        }

    def month(start: date, n: Nps) -> dict[str, Any]:
        first, before = section.partial.get(start, (None, None))
        return {
            "month": start.isoformat(),
            "partial": start in section.partial,
            "from": first.isoformat() if first else None,
            "before": before.isoformat() if before else None,
            **one(n),
        }

    return {
        "overall": one(section.overall),
        "surveys": [{"survey": s, "sent": sent, **one(n)} for s, sent, n in section.surveys],
        "monthly": [month(start, n) for start, n in section.monthly],
    }
