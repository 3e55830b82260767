"""Purchase forecasts: the textbook models reproduce the literature, our features mean what
they say, nothing after the cutoff is seen, and the store reads exactly the purchase days."""

from __future__ import annotations

import gc
import json
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner, Result

from recocamp import forecast as f
from recocamp.cli import app, common
from recocamp.domain import Customer, Item, Purchase
from recocamp.errors import ModelError
from recocamp.forecast import models as forecast_models
from recocamp.forecast.evaluate import auc, calibration, log_loss, poisson_median, quality
from recocamp.forecast.models import seasonal_level
from recocamp.forecast.outlook import (
    TOO_LITTLE,
    Evaluation,
    choose,
    clearly_lower,
    data_reaches,
    risk_tier,
)
from recocamp.settings import Settings, ShopSettings, load_settings
from recocamp.store import forecasts as forecast_store
from recocamp.store import queries
from recocamp.store.schema import customers

CDNOW = (
    Path(__file__).resolve().parents[3] / "shared" / "data" / "cdnow-sample" / "CDNOW_sample.txt"
)
NOW = datetime(2012, 1, 1, tzinfo=UTC)


def cdnow() -> f.PurchaseDays:
    if not CDNOW.exists():
        pytest.skip(f"the CDNOW sample is absent ({CDNOW})")
    ids, days, spend = [], [], []
    for line in CDNOW.read_text(encoding="ascii").splitlines():
        customer, _, when, _, value = line.split()
        ids.append(customer)
        days.append(f.day_number(datetime.strptime(when, "%Y%m%d").date()))
        spend.append(float(value))
    return f.PurchaseDays.from_lines(np.array(ids), np.array(days), np.array(spend))


def test_bgnbd_reproduces_the_papers_estimates_on_cdnow() -> None:
    """Fader, Hardie & Lee (2005) on CDNOW: r 0.243, alpha 4.414, a 0.793, b 2.426, LL -9582.4;
    1,653 repeat purchase days predicted for the 39-week holdout (shared/data/README.md)."""
    history = f.History.at(cdnow(), f.day_number(date(1997, 10, 1)))
    assert len(history.rows) == 2357
    model = f.BgNbd.fit(history.x, history.t_x, history.T)
    for got, paper in (
        (model.r, 0.243),
        (model.alpha, 4.414),
        (model.a, 0.793),
        (model.b, 2.426),
        (model.log_likelihood, -9582.4),
    ):
        assert got == pytest.approx(paper, rel=0.01)
    predicted = model.expected(39.0, history.x, history.t_x, history.T).sum()
    assert predicted == pytest.approx(1653, rel=0.01)


def test_gamma_gamma_reproduces_the_published_estimates_on_cdnow() -> None:
    """Fader, Hardie & Lee (2005), "RFM and CLV", on the same calibration period: p 6.25,
    q 3.74, gamma 15.44 from the mean spend of repeat purchase days."""
    history = f.History.at(cdnow(), f.day_number(date(1997, 10, 1)))
    model = f.GammaGamma.fit(history.x, np.nan_to_num(history.repeat_spend))
    assert (model.p, model.q, model.v) == pytest.approx((6.25, 3.74, 15.44), rel=0.01)


def young_slice(seed: int, customers: int) -> f.PurchaseDays:
    """``customers`` CDNOW customers drawn with ``seed``: a young single-cohort shop (every
    first purchase in the first quarter of 1997), its lines as the file has them."""
    whole = cdnow()
    owner = np.repeat(whole.customers, np.diff(whole.start))
    chosen = np.random.default_rng(seed).choice(whole.customers, customers, replace=False)
    keep = np.isin(owner, chosen)
    return f.PurchaseDays.from_lines(owner[keep], whole.day[keep], whole.spend[keep])


def test_the_learnt_forecasts_of_a_young_shop_stay_near_what_came() -> None:
    """On a young shop every customer at the cutoff is older than anyone in the training
    windows; ``rhythm``'s slopes, learnt on 400 customers and extrapolated, forecast 569
    purchase days where 118 came (BG/NBD 156), and the live blend 307. Each forecaster's total
    stays within 2.5 times the actual; where the learnt one does carry (the whole sample at
    1998-01-01), it is kept."""
    purchases = young_slice(7, 400)
    cutoff = f.day_number(date(1997, 7, 1))
    history = f.History.at(purchases, cutoff)
    actual = purchases.count_in(cutoff, cutoff + 90)[history.rows].sum()
    assert actual == 118
    for name in ("bgnbd", "rhythm", "hurdle", "blend"):
        total = f.FORECASTERS[name](purchases, history, 90).sum()
        assert actual / 2.5 <= total <= actual * 2.5, (name, total)
    full = cdnow()
    whole = f.History.at(full, f.day_number(date(1998, 1, 1)))
    learnt, textbook = (f.FORECASTERS[name](full, whole, 90) for name in ("rhythm", "bgnbd"))
    assert not np.allclose(learnt, textbook)


def tiny() -> f.PurchaseDays:
    """a: days 0, 10, 20 (spend 5 + 5 on day 10, two lines); b: day 5 only; c: day 30."""
    return f.PurchaseDays.from_lines(
        np.array(["a", "a", "a", "a", "b", "c"]),
        np.array([10, 0, 20, 10, 5, 30]),
        np.array([5.0, 1.0, 2.0, 5.0, 7.0, 3.0]),
    )


def test_history_at_a_cutoff_is_what_the_definitions_say() -> None:
    history = f.History.at(tiny(), 25)  # c's day 30 is after the cutoff: c is not forecast
    assert tiny().customers[history.rows].tolist() == ["a", "b"]
    assert history.days.tolist() == [3.0, 1.0]
    assert history.x.tolist() == [2.0, 0.0]
    assert history.t_x.tolist() == [20 / 7, 0.0]
    assert history.T.tolist() == [24 / 7, 19 / 7]  # to the last day of history, day 24
    assert history.recency.tolist() == [5.0, 20.0]
    assert history.gap[0] == 10.0 and np.isnan(history.gap[1])
    assert history.overdue[0] == 0.5
    assert history.spend.tolist() == [13.0, 7.0]  # day 10's two lines are one purchase day
    assert history.repeat_spend[0] == 6.0  # (10 + 2) / 2 repeat days
    assert history.recent[0].tolist() == [3.0, 3.0, 3.0, 3.0]
    later = f.History.at(tiny(), 45)  # windows of 30, 90, 180, 365 days before day 45
    assert later.recent[0].tolist() == [1.0, 3.0, 3.0, 3.0]  # day 20 alone in [15, 45)


def test_local_days_follow_the_shops_calendar_across_dst() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    instants = [
        datetime(2011, 7, 1, 22, 30, tzinfo=UTC),  # 00:30 on 2 July in Berlin (UTC+2)
        datetime(2011, 12, 1, 22, 30, tzinfo=UTC),  # 23:30 on 1 December (UTC+1)
        datetime(2011, 3, 27, 0, 59, tzinfo=UTC),  # 01:59 CET, just before the change
        datetime(2011, 3, 27, 1, 0, tzinfo=UTC),  # 03:00 CEST
    ]
    days = f.local_days(np.array([i.timestamp() for i in instants]), berlin)
    assert [f.day_of(d) for d in days] == [
        date(2011, 7, 2),
        date(2011, 12, 1),
        date(2011, 3, 27),
        date(2011, 3, 27),
    ]


def synthetic_shop(seed: int = 7, customers: int = 400, days: int = 720) -> f.PurchaseDays:
    """Customers with their own rate and lifetime: enough to fit every forecaster."""
    rng = np.random.default_rng(seed)
    ids, when, spend = [], [], []
    for c in range(customers):
        start = int(rng.integers(0, days // 2))
        rate = float(rng.gamma(1.0, 1 / 30))
        end = min(days, start + int(rng.exponential(400)))
        t = start
        while t < end:
            ids.append(f"c{c:04d}")
            when.append(t)
            spend.append(float(rng.gamma(2.0, 20.0)))
            t += 1 + int(rng.exponential(1 / max(rate, 1e-3)))
    return f.PurchaseDays.from_lines(np.array(ids), np.array(when), np.array(spend))


@pytest.mark.parametrize("model", sorted(f.FORECASTERS))
@pytest.mark.parametrize(("days", "cutoff", "horizon"), [(720, 600, 90), (1400, 1000, 400)])
def test_no_forecaster_sees_a_day_at_or_after_the_cutoff(
    model: str, days: int, cutoff: int, horizon: int
) -> None:
    """Also with a horizon over a year, where last year's season ahead would pass the cutoff."""
    shop = synthetic_shop(days=days)
    keep = shop.day < cutoff
    truncated = f.PurchaseDays.from_lines(
        shop.customers[shop.owner[keep]], shop.day[keep], shop.spend[keep]
    )
    full = f.forecast(shop, cutoff, horizon, model)
    cut = f.forecast(truncated, cutoff, horizon, model)
    assert [r.as_dict() for r in full] == [r.as_dict() for r in cut]


@pytest.mark.parametrize("model", ["rhythm", "hurdle"])
def test_a_regression_on_a_sample_of_customers_sees_no_day_after_the_cutoff(
    model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past REGRESSION_SAMPLE customers the regressions learn from a sample: drawn from the
    customers known before the cutoff, by a seed the cutoff alone sets."""
    monkeypatch.setattr(forecast_models, "REGRESSION_SAMPLE", 120)
    shop = synthetic_shop()
    keep = shop.day < 600
    truncated = f.PurchaseDays.from_lines(
        shop.customers[shop.owner[keep]], shop.day[keep], shop.spend[keep]
    )
    full = [r.as_dict() for r in f.forecast(shop, 600, 90, model)]
    assert full == [r.as_dict() for r in f.forecast(truncated, 600, 90, model)]
    monkeypatch.setattr(forecast_models, "REGRESSION_SAMPLE", 50_000)
    whole = f.PurchaseDays(shop.customers, shop.start, shop.day, shop.spend)  # nothing kept
    assert full != [r.as_dict() for r in f.forecast(whole, 600, 90, model)]  # it did sample


def test_bgnbd_expects_purchases_of_heavy_buyers_over_long_spans() -> None:
    """Eq. 10 in Euler's transformed form: 600 purchase days over two years, ten years ahead,
    was inf × 0 (NaN, then 0) in the paper's form."""
    model = f.BgNbd(r=0.8, alpha=20.0, a=0.05, b=0.5, log_likelihood=0.0)
    x, t_x, T = np.array([600.0, 3.0]), np.array([103.0, 50.0]), np.array([104.0, 104.0])
    ten_years = model.expected(3650 / 7, x, t_x, T)
    quarter = model.expected(90 / 7, x, t_x, T)
    assert np.all(np.isfinite(ten_years)) and np.all(ten_years > 10 * quarter)
    assert quarter[0] == pytest.approx(600 / 104 * 90 / 7, rel=0.2)  # about the past rate


def test_bgnbd_expects_purchases_when_the_fit_puts_a_and_b_far_out() -> None:
    """A fit on a small shop (150 customers, 21 weeks) put a and b near 14,000 and 162,000: a
    dropout chance of b/(a+b) ≈ 0.92 to stay, the same for everybody. The expectation then
    is the fixed-p limit 1/p · (1 − ((1−z)/(1−qz))^(r+x)) / (1 + odds), not 0 or NaN."""
    model = f.BgNbd(0.993, 4.2135, 14428.76, 162510.38, -1188.9)
    x, t_x, T = np.array([0.0, 1.0, 5.0, 17.0]), np.array([0.0, 3.0, 5.0, 12.0]), np.full(4, 24.0)
    got = model.expected(90 / 7, x, t_x, T)
    p, z = model.a / (model.a + model.b), (90 / 7) / (model.alpha + T + 90 / 7)
    limit = (1 - ((1 - z) / (1 - (1 - p) * z)) ** (model.r + x)) / p * model.p_alive(x, t_x, T)
    assert got == pytest.approx(limit, rel=1e-3)
    assert np.all(got > 0)


def test_every_forecaster_is_sane_on_a_shop_with_a_known_structure() -> None:
    """Customers who buy often and recently are forecast more purchase days than lapsed ones,
    and the totals are of the right size."""
    shop = synthetic_shop()
    evaluation = f.evaluate(shop, 600, 90)
    for name, q in evaluation.qualities.items():
        assert q.auc is not None and q.auc > 0.7, name
        assert 0.5 < q.predicted_total / q.actual_total < 2.0, name


def test_forecast_rows_hold_every_field_with_the_documented_meaning() -> None:
    shop = tiny()
    rows = f.forecast(shop, 25, 90, "naive")
    a, b = rows
    assert (a.customer_id, b.customer_id) == ("a", "b")
    assert a.expected_purchase_days == pytest.approx(2 / (24 / 7) * (90 / 7))  # naive rate
    assert a.p_active == pytest.approx(1 - np.exp(-a.expected_purchase_days))
    assert a.churn_risk == risk_tier(a.p_active) == "low"
    assert b.expected_purchase_days == 0.0 and b.churn_risk == "high"
    assert a.next_purchase_by == f.day_of(30) and a.overdue_ratio == 0.5
    # b bought once: the shop's typical gap, a's 10 days (the only repeat customer)
    assert b.next_purchase_by == f.day_of(15) and b.overdue_ratio == 2.0
    assert a.expected_revenue > 0 and a.lifetime_value >= a.expected_revenue
    assert json.loads(json.dumps(a.as_dict()))["next_purchase_by"] == "1970-01-31"
    # one repeat customer is too few for Gamma-Gamma: a's own mean spend per purchase day,
    # (1 + 10 + 2) / 3; the lifetime stretches it by BG/NBD's 365 days over its 90
    assert a.expected_revenue == pytest.approx(a.expected_purchase_days * 13 / 3)
    history = f.History.at(shop, 25)
    stretch = history.expected(365)[0] / history.expected(90)[0]
    assert a.lifetime_value == pytest.approx(a.expected_revenue * stretch)
    assert rows == f.forecast(shop, 25, 90, "naive", lifetime_days=365)  # a year by default
    assert gc.isenabled()  # the collector paused while the rows were built runs again
    # nobody before as_of: no row; one customer alone (a, day 0) is forecast
    assert f.forecast(shop, 0, 90, "naive") == []
    (alone,) = f.forecast(shop, 1, 90, "naive")
    assert alone.customer_id == "a" and alone.expected_purchase_days == 0.0


def test_one_time_buyers_are_due_after_the_shops_typical_gap() -> None:
    """The median of the repeat customers' own mean gaps (each counted once, days before
    as_of only) stands in for the gap one-time buyers lack; repeat customers keep theirs."""
    purchases = f.PurchaseDays.from_lines(
        np.array(["a", "a", "b", "b", *["f"] * 7, "o", "late", "late"]),
        np.array([0, 20, 10, 40, 0, 1, 2, 3, 4, 5, 6, 50, 55, 100]),
        np.ones(14),
    )
    # own gaps before day 60: a 20, b 30, f 1 (six gaps of 1 day: pooled, they would set it to 1);
    # late's second day is day 100, after as_of: had it counted, the median would be 25
    assert f.History.at(purchases, 60).typical_gap == 20.0
    rows = {row.customer_id: row for row in f.forecast(purchases, 60, 90, "naive")}
    assert (rows["o"].next_purchase_by, rows["o"].overdue_ratio) == (f.day_of(70), 0.5)
    assert (rows["late"].next_purchase_by, rows["late"].overdue_ratio) == (f.day_of(75), 0.25)
    assert (rows["a"].next_purchase_by, rows["a"].overdue_ratio) == (f.day_of(40), 2.0)
    assert (rows["f"].next_purchase_by, rows["f"].overdue_ratio) == (f.day_of(7), 54.0)
    # a shop with no repeat customer yet has no rhythm to lend
    first_days = f.forecast(
        f.PurchaseDays.from_lines(np.array(["x", "y"]), np.array([1, 3]), np.ones(2)),
        5,
        90,
        "naive",
    )
    assert [(r.next_purchase_by, r.overdue_ratio) for r in first_days] == [(None, None)] * 2


def test_risk_tiers_cut_at_a_third_and_two_thirds() -> None:
    assert [risk_tier(p) for p in (0.0, 0.333, 1 / 3, 0.666, 2 / 3, 1.0)] == [
        "high",
        "high",
        "medium",
        "medium",
        "low",
        "low",
    ]


def test_auc_counts_ties_at_mid_rank_and_calibration_is_by_decile() -> None:
    assert auc(np.array([1.0, 1.0, 0.0, 2.0]), np.array([True, False, False, True])) == 0.875
    assert auc(np.array([1.0, 2.0]), np.array([True, True])) is None
    deciles = calibration(np.arange(20.0), np.arange(20.0) * 2)
    assert [d.customers for d in deciles] == [2] * 10
    assert deciles[0].predicted == 0.5 and deciles[0].actual == 1.0


def test_the_point_forecast_is_the_poisson_median_of_the_expectation() -> None:
    """The smallest k with P(N ≤ k) ≥ 1/2: P(N = 0) = e^(−λ) falls below 1/2 at λ = ln 2."""
    expected = np.array([0.0, 0.69, np.log(2) - 1e-9, 0.70, 1.5, 1.67, 1.68, 3.0, 10.0, 1e6])
    assert poisson_median(expected).tolist() == [0, 0, 0, 1, 1, 1, 2, 3, 10, 1_000_000]
    # against the definition by summing the probabilities, on a fine grid
    grid = np.linspace(0.0, 30.0, 3001)
    k = np.arange(80)
    log_pmf = k[None, :] * np.log(np.maximum(grid[:, None], 1e-300)) - grid[:, None]
    pmf = np.exp(log_pmf - np.cumsum(np.log(np.maximum(k, 1)))[None, :])
    pmf[0, 1:], pmf[0, 0] = 0.0, 1.0  # λ = 0: all mass at 0
    by_definition = np.argmax(np.cumsum(pmf, axis=1) >= 0.5, axis=1)
    assert (poisson_median(grid) == by_definition).all()
    with pytest.raises(ValueError, match="finite"):
        poisson_median(np.array([1.0, np.nan]))


def test_evaluation_scores_the_expectation_and_the_point_forecast() -> None:
    """Where most buy nothing the median (0) scores better than the expectation (0.6)."""
    q = quality(np.array([0.6, 0.6, 0.6, 2.0]), np.array([0.0, 0.0, 1.0, 2.0]))
    assert q.mae == pytest.approx((0.6 + 0.6 + 0.4 + 0.0) / 4)
    assert q.mae_point == pytest.approx((0 + 0 + 1 + 0) / 4)  # medians 0, 0, 0, 2
    assert q.predicted_total == pytest.approx(3.8)  # totals stay expectations


def _evaluation(models: Mapping[str, tuple[float | None, list[float]]]) -> Evaluation:
    """A split's evaluation from each forecaster's AUC and per-customer log losses."""

    def q(auc_value: float | None, losses: list[float]) -> f.Quality:
        mean = float(np.mean(losses))
        return f.Quality(len(losses), 0.5, 0.5, mean, 1.0, 1.0, auc_value, 0.5, ())

    qualities = {name: q(a, losses) for name, (a, losses) in models.items()}
    losses = {name: np.array(e, dtype=np.float64) for name, (_, e) in models.items()}
    return Evaluation(0, 90, qualities, losses)


def test_the_blend_stays_live_unless_a_single_forecaster_is_clearly_better() -> None:
    """Known answers of the paired test: 100 customers, losses 0 or 1 each."""
    blend = [1.0] * 50 + [0.0] * 50
    # rhythm loses less on 2 customers: mean difference −0.02, standard error 0.0141, z −1.42
    barely = [0.0, 0.0, *blend[2:]]
    kept = {"naive": (0.70, [1.0] * 100), "bgnbd": (0.73, blend), "rhythm": (0.75, barely)}
    assert choose(_evaluation({**kept, "blend": (0.74, blend)})) == "blend"
    # on 5: −0.05 over 0.0219, z −2.28 — and rhythm ranks as well as BG/NBD
    clearly = [0.0] * 5 + blend[5:]
    chosen = {**kept, "rhythm": (0.75, clearly), "blend": (0.74, blend)}
    assert choose(_evaluation(chosen)) == "rhythm"
    # as clearly better but ranking "buys again" worse than BG/NBD: never live
    assert choose(_evaluation({**chosen, "rhythm": (0.72, clearly)})) == "blend"


def test_bgnbd_is_the_default_where_the_blend_ranks_worse_than_it() -> None:
    losses = [1.0] * 50 + [0.0] * 50
    split = {"naive": (0.70, losses), "bgnbd": (0.73, losses), "blend": (0.72, [0.0] * 100)}
    assert choose(_evaluation(split)) == "bgnbd"
    # the simpler model wins a tie, and a tie is no clear win over the default
    tie = {"naive": (0.75, losses), "bgnbd": (0.73, losses), "blend": (0.74, losses)}
    assert choose(_evaluation(tie)) == "blend"
    # a forecast of 0 for a customer who bought loses infinitely: never clearly better
    zero = {**tie, "naive": (0.75, [np.inf, *[0.0] * 99])}
    assert choose(_evaluation(zero)) == "blend"


def test_where_no_forecaster_can_be_ranked_the_blend_stays() -> None:
    """Every customer of the split bought: no AUC for anybody (None). None ranks worse than
    BG/NBD, so all qualify and the default is the blend, as on a tie."""
    losses = [1.0] * 50 + [0.0] * 50
    undefined = {"naive": (None, losses), "bgnbd": (None, losses), "blend": (None, losses)}
    assert choose(_evaluation(undefined)) == "blend"


def test_the_choice_scores_the_mean_where_an_mae_prefers_a_forecast_biased_to_zero() -> None:
    """200 customers buying 0 (120), 1 (60) or 2 (20) days: the true mean 0.5 for all of them
    against 0.1. The MAE of the expectation prefers 0.1 (0.52 against 0.60), the log loss the
    mean (0.1 loses 0.4 on each who buys nothing and ln 5 on each purchase day)."""
    actual = np.array([0.0] * 120 + [1.0] * 60 + [2.0] * 20)
    mean, low = np.full(200, 0.5), np.full(200, 0.1)
    assert quality(low, actual).mae == pytest.approx(0.52)
    assert quality(mean, actual).mae == pytest.approx(0.60)
    forecasts = {"naive": low, "bgnbd": mean, "rhythm": low, "blend": mean}
    split = Evaluation(
        0,
        90,
        {name: quality(value, actual) for name, value in forecasts.items()},
        {name: log_loss(value, actual) for name, value in forecasts.items()},
    )
    assert choose(split) == "blend"
    # one that tells who buys, all ranking as well as BG/NBD: clearly better, live
    knows = np.array([0.2] * 120 + [1.0] * 60 + [2.0] * 20)
    told = {**forecasts, "hurdle": knows}
    split = Evaluation(
        0,
        90,
        {name: quality(value, actual) for name, value in told.items()},
        {name: log_loss(value, actual) for name, value in told.items()},
    )
    assert choose(split) == "hurdle"


def test_the_log_loss_is_the_poisson_negative_log_likelihood() -> None:
    expected = np.array([2.0, 1.0, 2.0, 0.0, 0.0])
    actual = np.array([0.0, 1.0, 3.0, 0.0, 1.0])
    loss = log_loss(expected, actual)
    assert loss[:4] == pytest.approx([2.0, 1.0, 2.0 - 3.0 * np.log(2.0) + np.log(6.0), 0.0])
    assert loss[4] == np.inf  # bought after a forecast of exactly 0
    assert quality(expected[:4], actual[:4]).log_score == pytest.approx(np.mean(loss[:4]))
    assert quality(expected, actual).log_score is None  # JSON holds no infinity


def test_clearly_lower_is_the_one_sided_paired_z_test_at_five_percent() -> None:
    against = np.array([1.0, 0.0] * 50)
    assert not clearly_lower(against, against)  # no difference at all
    assert clearly_lower(against - 0.1, against)  # the same gain for everybody
    # lower by 1 for 8 customers, higher by 1 for 4: mean −0.04, sd 0.3458, z −1.157
    mixed = against.copy()
    mixed[:16:2] -= 1.0
    mixed[17:25:2] += 1.0
    assert not clearly_lower(mixed, against)
    mixed[16:24:2] -= 1.0  # lower for 12, higher for 4: mean −0.08, sd 0.3939, z −2.031
    assert clearly_lower(mixed, against)
    assert not clearly_lower(against, mixed)  # one-sided: higher is never clearly lower
    assert not clearly_lower(np.array([0.0]), np.array([1.0]))  # one pair: no spread to judge
    # two pairs are enough: differences −1 and −0.5, mean −0.75, sd 0.3536, z −3.0
    assert clearly_lower(np.array([0.0, 0.5]), np.array([1.0, 1.0]))
    assert not clearly_lower(np.array([np.inf, 0.0]), np.array([1.0, 1.0]))
    assert clearly_lower(np.array([5.0, 5.0]), np.array([np.inf, 0.0]))  # 0 forecast, bought


def test_the_blend_is_the_mean_of_the_three_models_and_its_rows_follow_from_it() -> None:
    shop = synthetic_shop()
    history = f.History.at(shop, 600)
    parts = [f.FORECASTERS[name](shop, history, 90) for name in ("bgnbd", "rhythm", "hurdle")]
    blend = f.FORECASTERS["blend"](shop, history, 90)
    assert blend == pytest.approx((parts[0] + parts[1] + parts[2]) / 3)
    assert not np.allclose(parts[0], parts[1])  # the regressions did learn: not BG/NBD again
    rows = f.forecast(shop, 600, 90, "blend")
    expected = np.array([row.expected_purchase_days for row in rows])
    assert expected == pytest.approx(blend)
    for row in rows:
        assert row.p_active == pytest.approx(1 - np.exp(-row.expected_purchase_days))
        assert row.churn_risk == risk_tier(row.p_active)
    bgnbd = {row.customer_id: row for row in f.forecast(shop, 600, 90, "bgnbd")}
    for row in rows:  # the same spend per purchase day: revenue scales with the expectation
        other = bgnbd[row.customer_id]
        assert row.expected_revenue * other.expected_purchase_days == pytest.approx(
            other.expected_revenue * row.expected_purchase_days, rel=1e-9, abs=1e-9
        )


def test_every_regression_is_fitted_once_for_an_evaluation_of_all_forecasters(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``blend`` reuses rhythm's and hurdle's answers: one Poisson regression for rhythm, a
    logistic and a Poisson one for hurdle, and the same three a year earlier for their seasonal
    levels (the history reaches that far) — twelve fits, had the blend fitted them again."""
    fits: list[bool] = []
    fit = forecast_models.PoissonRegression.fit

    def counted(
        features: np.ndarray, target: np.ndarray, logistic: bool = False
    ) -> forecast_models.PoissonRegression:
        fits.append(logistic)
        return fit(features, target, logistic)

    monkeypatch.setattr(forecast_models.PoissonRegression, "fit", staticmethod(counted))
    f.evaluate(synthetic_shop(), 600, 90)
    assert sorted(fits) == [False, False, False, False, True, True]


def test_the_choice_of_the_live_forecaster_sees_no_day_at_or_after_as_of() -> None:
    shop = synthetic_shop()
    keep = shop.day < 600
    truncated = f.PurchaseDays.from_lines(
        shop.customers[shop.owner[keep]], shop.day[keep], shop.spend[keep]
    )
    model, split, _ = f.live_model(shop, 600, 90)
    again, split_again, _ = f.live_model(truncated, 600, 90)
    assert split is not None and split_again is not None and split.cutoff == 510
    assert model == again and split.qualities == split_again.qualities
    for name, losses in split.losses.items():
        assert np.array_equal(losses, split_again.losses[name]), name


def test_a_horizon_is_closed_once_the_data_reaches_its_last_day() -> None:
    assert f.closed(700, 699) and f.closed(700, 800)  # its last day is 699
    assert not f.closed(700, 698) and not f.closed(700, None)


def test_a_shop_without_purchases_keeps_the_default_and_says_so() -> None:
    nothing = f.PurchaseDays.from_lines(
        np.array([], dtype=str), np.array([], dtype=int), np.array([], dtype=float)
    )
    assert f.live_model(nothing, 100, 90) == f.LiveChoice(
        "blend",
        None,
        "the horizon before, 1970-01-11 to 1970-04-10, is not closed: the data reaches none; "
        "the default blend is used",
    )


def test_the_live_choice_needs_fifty_customers_on_the_split() -> None:
    """Nobody before the split's cutoff: BG/NBD, unjudged; so at 49 customers with a purchase
    day before it. At 50 the split decides (here for BG/NBD too, but chosen on it)."""

    def shop(customers: int) -> f.PurchaseDays:
        names = [f"c{c:03}" for c in range(customers) for _ in range(4)]
        days = [d for c in range(customers) for d in (0, 100 + c, 200 + 3 * c, 330 + c % 60)]
        return f.PurchaseDays.from_lines(np.array(names), np.array(days), np.ones(len(days)))

    nobody_before = f.PurchaseDays.from_lines(np.array(["late"]), np.array([350]), np.ones(1))
    assert f.live_model(nobody_before, 400, 90, 399) == f.LiveChoice("bgnbd", None, TOO_LITTLE)
    few = f.live_model(shop(49), 400, 90, newest_day=399)
    assert (few.model, few.chosen_on, few.reason) == ("bgnbd", None, TOO_LITTLE)
    enough = f.live_model(shop(50), 400, 90, newest_day=399)
    assert enough.chosen_on is not None and enough.reason == "chosen on the horizon before"
    assert next(iter(enough.chosen_on.qualities.values())).customers == 50


@pytest.mark.parametrize(
    ("today", "reaches"),
    [
        (50, 100),  # a clock before the data: the data's own newest day
        (100, 100),
        (101, 100),  # yesterday is the newest purchase day
        (105, 104),  # a quiet yesterday has passed all the same
        (108, 107),  # seven quiet days still count as recorded
        (109, 107),  # the eighth is past what the store can vouch for
        (400, 107),  # an old export: nothing of the months since
    ],
)
def test_the_data_reaches_yesterday_for_at_most_seven_quiet_days(today: int, reaches: int) -> None:
    assert data_reaches(100, today) == reaches


def test_the_live_choice_keeps_the_default_on_a_horizon_past_the_data_or_without_purchases() -> (
    None
):
    """A split with nothing to count cannot show one forecaster better (every AUC is
    undefined): the default stays, and the reason says why."""
    shop = synthetic_shop()
    newest = f.day_of(int(shop.day.max())).isoformat()
    past = f.live_model(shop, 2000, 90)  # the horizon before as_of lies past the data
    assert (past.model, past.chosen_on) == ("blend", None)
    assert past.reason == (
        "the horizon before, 1975-03-26 to 1975-06-23, is not closed: the data reaches "
        f"{newest}; the default blend is used"
    )
    keep = shop.day < 600
    gap = f.PurchaseDays.from_lines(
        shop.customers[shop.owner[keep]], shop.day[keep], shop.spend[keep]
    )
    empty = f.live_model(gap, 700, 90, newest_day=719)  # closed, but nobody bought in it
    assert (empty.model, empty.chosen_on) == ("blend", None)
    assert empty.reason.startswith(
        "no purchase day in the horizon before, 1971-09-03 to 1971-12-01"
    )
    chosen = f.live_model(shop, 600, 90)
    assert chosen.chosen_on is not None and chosen.reason == "chosen on the horizon before"


# --- the store and the command ---------------------------------------------------------


def _at(day: date, hour: int = 12) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def fill(engine: sa.Engine) -> None:
    """a: product orders on three days (postage with one); b: an order of postage alone;
    c: objected to profiling; d: erased; a guest order."""
    d0 = date(2011, 3, 1)
    lines = [
        Purchase("o1", 1, "a", "i1", 1, 10.0, _at(d0)),
        Purchase("o1", 2, "a", "POST", 1, 5.0, _at(d0)),
        Purchase("o2", 1, "a", "i1", 2, 10.0, _at(d0 + timedelta(days=20))),
        Purchase("o3", 1, "a", "i2", 1, 4.0, _at(d0 + timedelta(days=40))),
        Purchase("C3", 1, "a", "i2", -1, 4.0, _at(d0 + timedelta(days=41)), is_return=True),
        Purchase("o4", 1, "b", "POST", 1, 5.0, _at(d0)),
        Purchase("o5", 1, "c", "i1", 1, 10.0, _at(d0)),
        Purchase("o6", 1, "d", "i1", 1, 10.0, _at(d0)),
        Purchase("o7", 1, None, "i1", 1, 10.0, _at(d0)),
        Purchase("o8", 1, "a", "i1", 1, 10.0, _at(date(2011, 6, 1))),  # at as_of: not history
    ]
    people = [
        Customer("a", "a@example.test"),
        Customer("b", "b@example.test"),
        Customer("c", "c@example.test", objected_to_profiling=True),
        Customer("d", "d@example.test"),
    ]
    with engine.begin() as connection:
        queries.upsert_items(
            connection,
            [
                Item("i1", "Mug", "home", 10.0),
                Item("i2", "Cup", "home", 4.0),
                Item("POST", "Postage", "service", 5.0, is_service=True),
            ],
            NOW,
        )
        queries.upsert_customers(connection, people, NOW)
        queries.insert_purchases(connection, lines, None)
        erase = customers.update().where(customers.c.id == "d").values(erased_at=NOW, email=None)
        connection.execute(erase)


def test_the_store_reads_purchase_days_of_profiled_customers_only(engine: sa.Engine) -> None:
    fill(engine)
    with engine.connect() as connection:
        ids, seconds, revenue = forecast_store.purchase_lines(
            connection, datetime(2011, 6, 1, tzinfo=UTC)
        )
    days = f.PurchaseDays.from_lines(ids, f.local_days(seconds, ZoneInfo("UTC")), revenue)
    assert days.customers.tolist() == ["a"]  # b: postage alone; c objected; d erased
    assert np.diff(days.start).tolist() == [3]
    assert days.spend.tolist() == [15.0, 20.0, 4.0]  # postage in revenue, the return is not


def _use_utc_shop(engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the CLI at ``engine``'s database, a shop on UTC; returns the settings file."""
    settings = tmp_path / "settings.toml"
    settings.write_text(
        f'database_url = "{engine.url.render_as_string(hide_password=False)}"\n'
        '[shop]\ntime_zone = "UTC"\n',
        encoding="utf-8",
    )
    monkeypatch.setenv("RECOCAMP_SETTINGS", str(settings))
    return settings


def test_forecast_command_prints_the_documented_json(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(engine)
    _use_utc_shop(engine, tmp_path, monkeypatch)
    runner = CliRunner()
    result = runner.invoke(app, ["forecast", "--as-of", "2011-06-01", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert (document["as_of"], document["horizon_days"], document["model"]) == (
        "2011-06-01",
        90,
        "bgnbd",  # too little history for a time split: the textbook model
    )
    (row,) = document["customers"]
    assert set(row) == {
        "customer_id",
        "expected_purchase_days",
        "likely_purchase_days",
        "p_active",
        "churn_risk",
        "expected_revenue",
        "lifetime_value",
        "next_purchase_by",
        "overdue_ratio",
    }
    assert row["customer_id"] == "a" and row["next_purchase_by"] == "2011-04-30"  # + 20 days
    assert list(row)[:3] == ["customer_id", "expected_purchase_days", "likely_purchase_days"]
    expected = row["expected_purchase_days"]
    assert row["likely_purchase_days"] == poisson_median(np.array([expected]))[0]
    table = runner.invoke(app, ["forecast", "--as-of", "2011-06-01"])
    assert table.exit_code == 0 and "likely" in table.output, table.output
    bad = runner.invoke(app, ["forecast", "--as-of", "June"])
    assert bad.exit_code == 2 and "not a date" in bad.output
    evaluated = runner.invoke(
        app,
        ["forecast-evaluate", "--cutoff", "2011-03-10", "--horizon-days", "60", "--format", "json"],
    )
    assert evaluated.exit_code == 0, evaluated.output
    models = json.loads(evaluated.output)["models"]
    assert sorted(models) == sorted(f.FORECASTERS)
    assert models["naive"]["actual_total"] == 2.0  # 21 March and 10 April, not 1 June
    assert {"mae", "mae_point", "log_score"} <= set(models["naive"])
    printed = runner.invoke(
        app, ["forecast-evaluate", "--cutoff", "2011-03-10", "--horizon-days", "60"]
    )
    assert printed.exit_code == 0 and "MAE likely" in printed.output, printed.output
    assert "log score" in printed.output


def test_evaluations_refuse_a_horizon_the_data_does_not_reach_and_a_cutoff_before_it(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The newest purchase line is on 2011-06-01 and the clock says 2011-06-05: the data
    covers the days to yesterday, 2011-06-04 (a quiet shop still recorded them); a horizon
    whose last day is later counts only part of its days (or none), so it is refused, or
    measured with a warning."""
    fill(engine)
    _use_utc_shop(engine, tmp_path, monkeypatch)
    monkeypatch.setattr(common.clock, "now", lambda: datetime(2011, 6, 5, 9, tzinfo=UTC))
    runner = CliRunner()

    def evaluate(*options: str) -> Result:
        return runner.invoke(app, ["forecast-evaluate", "--horizon-days", "7", *options])

    assert evaluate("--cutoff", "2011-05-29").exit_code == 0  # its last day: 2011-06-04
    refused = evaluate("--cutoff", "2011-05-30")
    assert refused.exit_code == 2
    assert refused.output == (
        "error: the horizon of cutoff 2011-05-30 runs to 2011-06-05, past the last day the "
        "data covers (2011-06-04): it is not closed (--open-horizon measures the days seen so "
        "far)\n"
    )
    later = evaluate("--cutoff", "2030-01-01", "--format", "json")
    assert later.exit_code == 2 and "2030-01-07" in later.output, later.output
    measured = evaluate("--cutoff", "2030-01-01", "--open-horizon")
    assert measured.exit_code == 0, measured.output
    assert "warning: the horizon of cutoff 2030-01-01 runs to 2030-01-07" in measured.output
    assert "the figures count only the purchases seen so far, up to 2011-06-04" in measured.output
    assert "0 purchase days" in measured.output
    assert "│            n/a │" in measured.output  # an undefined AUC, not 0.000
    document = evaluate("--cutoff", "2030-01-01", "--open-horizon", "--format", "json")
    assert document.exit_code == 0, document.output
    models = json.loads(document.stdout)["models"]
    assert {model["auc"] for model in models.values()} == {None}
    before = evaluate("--cutoff", "1900-01-01")
    assert before.exit_code == 2
    assert before.output == (
        "error: no purchase before the cutoff 1900-01-01 (the first is on 2011-03-01): "
        "nothing to evaluate\n"
    )


def test_a_forecast_past_the_data_keeps_the_default_forecaster_and_says_why(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ``as_of`` past the data (and the clock): the horizon before it is not closed, the
    default stays and the reason says why."""
    fill(engine)  # purchases up to 2011-06-01
    settings = _use_utc_shop(engine, tmp_path, monkeypatch)
    monkeypatch.setattr(common.clock, "now", lambda: datetime(2026, 12, 4, 9, tzinfo=UTC))
    runner = CliRunner()
    result = runner.invoke(app, ["forecast", "--as-of", "2030-01-01"])
    assert result.exit_code == 0, result.output
    assert "model blend" in result.output
    assert (
        "(the horizon before, 2029-10-03 to 2029-12-31, is not closed: the data reaches "
        "2011-06-08; the default blend is used)" in result.output
    )
    stored = f.refresh(engine, load_settings(settings), datetime(2030, 1, 1, 9, tzinfo=UTC))
    assert stored.model == "blend" and "is not closed" in stored.reason
    with engine.connect() as connection:
        version = forecast_store.current_version(connection)
    assert version is not None and version.chosen_on == {"reason": stored.reason}


def test_the_nightly_choice_counts_a_quiet_yesterday_as_passed(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shop without an order for a few days: the horizon before today is closed all the
    same (those days passed and were recorded), so the nightly forecast chooses on it. A
    store whose data stopped more than ``QUIET_DAYS`` ago holds nothing of the days since."""
    fill(engine)  # purchases up to 2011-06-01
    settings = load_settings(_use_utc_shop(engine, tmp_path, monkeypatch))
    night = datetime(2011, 6, 5, 2, tzinfo=UTC)
    assert f.newest_day(engine, settings, night) == f.day_number(date(2011, 6, 4))
    assert "not closed" not in f.refresh(engine, settings, night).reason
    weeks_later = datetime(2011, 6, 30, 2, tzinfo=UTC)
    assert f.newest_day(engine, settings, weeks_later) == f.day_number(date(2011, 6, 8))
    assert "is not closed: the data reaches 2011-06-08" in (
        f.refresh(engine, settings, weeks_later).reason
    )


def test_forecast_stored_prints_what_the_train_job_stored(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(engine)
    settings = _use_utc_shop(engine, tmp_path, monkeypatch)
    runner = CliRunner()
    none = runner.invoke(app, ["forecast", "--stored"])
    assert none.exit_code == 1 and "no forecast stored yet" in none.output
    f.refresh(engine, load_settings(settings), datetime(2011, 6, 1, 9, tzinfo=UTC))
    result = runner.invoke(app, ["forecast", "--stored", "--format", "json"])
    assert result.exit_code == 0, result.output
    stored = json.loads(result.output)
    computed = runner.invoke(app, ["forecast", "--as-of", "2011-06-01", "--format", "json"])
    assert {k: v for k, v in stored.items() if k not in ("version", "created_at")} == json.loads(
        computed.output
    )
    assert stored["created_at"] == "2011-06-01T09:00:00+00:00"
    table = runner.invoke(app, ["forecast", "--stored"])
    assert table.exit_code == 0 and "stored forecast bgnbd-2011-06-01-h90" in table.output
    mixed = runner.invoke(app, ["forecast", "--stored", "--as-of", "2011-06-01"])
    assert mixed.exit_code == 2 and "own as_of" in mixed.output


def test_a_customers_file_that_sets_an_objection_drops_the_stored_forecast(
    engine: sa.Engine,
) -> None:
    fill(engine)
    settings = Settings().model_copy(update={"shop": ShopSettings(time_zone="UTC")})
    assert f.refresh(engine, settings, datetime(2011, 6, 1, 9, tzinfo=UTC)).customers == 1
    with engine.begin() as connection:
        queries.upsert_customers(
            connection, [Customer("a", "a@example.test", objected_to_profiling=True)], NOW
        )
    with engine.connect() as connection:
        assert forecast_store.stored_forecasts(connection) == []
        assert forecast_store.current_version(connection) is not None  # the others' stay


def test_a_forecast_with_values_that_are_not_numbers_is_not_stored(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(engine)
    settings = Settings().model_copy(update={"shop": ShopSettings(time_zone="UTC")})
    first = f.refresh(engine, settings, datetime(2011, 6, 1, 9, tzinfo=UTC))
    monkeypatch.setitem(
        f.FORECASTERS, "bgnbd", lambda purchases, history, h: np.full(len(history.rows), np.nan)
    )
    with pytest.raises(ModelError, match="not numbers for 1 customer"):
        f.refresh(engine, settings, datetime(2011, 6, 2, 9, tzinfo=UTC))
    with engine.connect() as connection:
        kept = forecast_store.current_version(connection)
        assert kept is not None and kept.version == first.version  # the previous one stays
        assert len(forecast_store.stored_forecasts(connection)) == 1


def test_a_learning_forecaster_needs_a_horizon_of_history_before_its_training_window() -> None:
    """Features at ``cutoff − H`` must see H days of the shop's history: learnt on 2 days (UCI at
    2011-03-03), a regression forecast 50 times the purchase days there were."""
    shop = synthetic_shop()  # history from day 0
    bgnbd = f.FORECASTERS["bgnbd"]
    for model in ("rhythm", "hurdle"):
        learner = f.FORECASTERS[model]
        short, enough = f.History.at(shop, 170), f.History.at(shop, 181)  # 80 / 91 days
        assert np.array_equal(learner(shop, short, 90), bgnbd(shop, short, 90)), model
        assert not np.allclose(learner(shop, enough, 90), bgnbd(shop, enough, 90)), model


def lapsing_shop(seed: int, season: float = 1.0, customers: int = 6000) -> f.PurchaseDays:
    """Two years of steady acquisition; each customer a rate of their own (gamma) and a lifetime
    (exponential, mean 250 days), purchase days thinned so that the rate is ``season`` times as
    high in days 275–364 of each year (the season ahead of a cutoff at day 640) as elsewhere."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 730, customers)
    rate = rng.gamma(1.0, 1 / 25, customers)
    end = np.minimum(start + rng.exponential(250, customers), 730)
    peak = max(season, 1.0)
    owner = np.repeat(np.arange(customers), rng.poisson(rate * peak * (end - start)))
    day = (start[owner] + rng.random(len(owner)) * (end - start)[owner]).astype(np.int64)
    multiplier = np.where((day % 365 >= 275) & (day % 365 < 365), season, 1.0)
    keep = rng.random(len(owner)) < multiplier / peak
    owner, day = np.r_[np.arange(customers), owner[keep]], np.r_[start, day[keep]]
    ids = np.char.add("c", owner.astype("U6"))
    return f.PurchaseDays.from_lines(ids, day, np.ones(len(day)))


@pytest.mark.parametrize("learner", ["learnt_rhythm", "learnt_hurdle"])
@pytest.mark.parametrize(("season", "low", "high"), [(1.0, 0.9, 1.15), (2.0, 1.7, 2.3)])
def test_the_seasonal_level_is_the_season_and_not_the_customers_dropout(
    learner: str, season: float, low: float, high: float
) -> None:
    """A shop whose customers lapse (the learners' features carry that) and whose season ahead
    of day 640 sells ``season`` times the training season's rate: the level is ``season``. The
    ratio of one cohort's purchase days in the two seasons a year ago made it 0.64–0.68 and
    1.20–1.30 (the cohort's dropout counted twice); here 0.99–1.09 and 1.86–2.17 over seeds
    0–2, and one cohort's ratio over the one BG/NBD expects of it 0.75–0.83 and 1.48–1.59."""
    shop = lapsing_shop(1, season)
    level = seasonal_level(getattr(forecast_models, learner), shop, 640, 90)
    assert low < level < high


def test_the_seasonal_level_needs_a_horizon_of_history_before_last_years_training_window() -> None:
    """A learner a year ago learns on ``[year ago − H, year ago)`` from features at
    ``year ago − H``, which need H days of history themselves (as every training window does)."""
    shop = lapsing_shop(1, 2.0)
    rhythm = forecast_models.learnt_rhythm
    assert seasonal_level(rhythm, shop, 365 + 179, 90) == 1.0
    assert seasonal_level(rhythm, shop, 365 + 180, 90) != 1.0


def test_storing_a_forecast_again_under_a_still_clock_replaces_its_records(
    engine: sa.Engine,
) -> None:
    """``recocamp train --as-of`` twice under a held clock names the same version twice: the
    second store replaces the first's tier counts instead of failing on their unique key."""
    fill(engine)
    settings = Settings().model_copy(update={"shop": ShopSettings(time_zone="UTC")})
    now, as_of = datetime(2026, 12, 3, 9, tzinfo=UTC), datetime(2011, 6, 1, tzinfo=UTC)
    first = f.refresh(engine, settings, now, as_of)
    again = f.refresh(engine, settings, now, as_of)
    assert again.version == first.version
    with engine.connect() as connection:
        stored = forecast_store.current_version(connection)
        assert stored is not None and stored.as_of.isoformat() == "2011-06-01"
        assert len(forecast_store.stored_forecasts(connection)) == 1


def tiny_shop() -> f.PurchaseDays:
    """Fifty steady customers (days 0 and 5) to make each window large enough, and three whose
    purchase days the training windows below are worked out from by hand."""
    ids = [f"f{c:02d}" for c in range(50) for _ in (0, 5)]
    days = [d for _ in range(50) for d in (0, 5)]
    for customer, own in (
        ("a", (0, 100, 200, 300, 350, 380)),
        ("b", (10, 250, 400)),
        ("c", (330,)),
    ):
        ids += [customer] * len(own)
        days += list(own)
    return f.PurchaseDays.from_lines(np.array(ids), np.array(days), np.ones(len(ids)))


def test_the_learning_forecasters_train_on_four_windows_a_month_apart_before_the_cutoff() -> None:
    """At cutoff 400, H 90: origins 310, 280, 250, 220, each target the H days after it (all
    before the cutoff: b's day 400 counts nowhere); c, first seen at 330, is in none. At
    cutoff 240 the origin 60 has less than H days of history before it: three windows."""
    shop = tiny_shop()
    windows = forecast_models.training_windows(shop, 400, 90)
    by_hand = [(310, 2, 0), (280, 2, 0), (250, 1, 1), (220, 1, 1)]  # origin, a's and b's target
    assert len(windows) == len(by_hand)
    for (inner, target), (origin, a, b) in zip(windows, by_hand, strict=True):
        seen = dict(zip(shop.customers[inner.rows].tolist(), target.tolist(), strict=True))
        assert inner.cutoff == origin and len(seen) == 52 and "c" not in seen
        assert (seen["a"], seen["b"]) == (a, b)
    assert [inner.cutoff for inner, _ in forecast_models.training_windows(shop, 240, 90)] == [
        150,
        120,
        90,
    ]


def test_stacked_windows_share_the_slopes_and_give_each_older_window_its_own_level(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One row per customer and window, an indicator column per window but the latest (the
    forecast's level, all indicators 0), and at most REGRESSION_SAMPLE rows in all."""
    shop = tiny_shop()
    windows = forecast_models.training_windows(shop, 400, 90)
    design, target = forecast_models.stacked_windows(windows, lambda inner: inner.days[:, None])
    assert design.shape == (4 * 52, 1 + 3)
    levels = design[:, 1:].reshape(4, 52, 3)
    assert not levels[0].any()
    for k in (1, 2, 3):
        assert (levels[k][:, k - 1] == 1).all() and levels[k].sum() == 52
    assert np.array_equal(target, np.concatenate([t for _, t in windows]))
    latest = forecast_models.at_latest_level(np.ones((2, 1)), len(windows))
    assert np.array_equal(latest, [[1, 0, 0, 0], [1, 0, 0, 0]])
    monkeypatch.setattr(forecast_models, "REGRESSION_SAMPLE", 80)
    sampled, _ = forecast_models.stacked_windows(windows, lambda inner: inner.days[:, None])
    assert sampled.shape == (80, 4)  # 20 customers of each window


@pytest.mark.parametrize("model", ["rhythm", "hurdle", "blend"])
def test_a_learning_forecaster_gives_the_same_answer_for_the_same_lines_in_any_order(
    model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Samples of customers (REGRESSION_SAMPLE lowered so they are drawn) are seeded by the
    windows' origins, and the lines are folded into sorted purchase days first: a reshuffled
    import forecasts the same figures, to the last bit."""
    monkeypatch.setattr(forecast_models, "REGRESSION_SAMPLE", 200)
    shop = synthetic_shop()
    lines = (shop.customers[shop.owner], shop.day, shop.spend)
    order = np.random.default_rng(3).permutation(len(shop.day))
    again = f.PurchaseDays.from_lines(*(column[order] for column in lines))
    first = [r.as_dict() for r in f.forecast(shop, 600, 90, model)]
    assert first == [r.as_dict() for r in f.forecast(again, 600, 90, model)]


def test_a_big_training_window_is_described_on_its_sample_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past its share of REGRESSION_SAMPLE a window's BG/NBD is fitted, and its features are
    computed, on the sampled customers only: at a million customers fitting every window whole
    made the blend's forecast 76 % more CPU than one window; the sample is the same for both
    learners."""
    monkeypatch.setattr(forecast_models, "REGRESSION_SAMPLE", 200)  # 50 customers a window
    shop = synthetic_shop()
    f.forecast(shop, 600, 90, "blend")
    older = f.History.at(shop, 600 - 90 - 30)  # a training window only, never forecast from
    sample = older.sample(50)
    assert "textbook" not in vars(older) and "textbook" in vars(sample)
    assert np.array_equal(sample.rows, older.rows[older.fit_sample(50)])
    assert older.sample(50) is sample and older.sample(10**6) is older
