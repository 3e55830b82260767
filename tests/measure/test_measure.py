"""Measurement, pure: intervals against published and hand-computed values, last-touch
attribution on a fixed clock, uplift and its "not enough data yet", cohorts, NPS, KPI changes."""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from recocamp.measure import attribution as measure
from recocamp.measure import statistics as stats
from recocamp.measure.attribution import Result, Thresholds, Touch
from recocamp.measure.kpis import OrderTotal
from recocamp.measure.statistics import Interval, Sample

T0 = datetime(2024, 3, 5, 10, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


def close(interval: Interval | None, low: float, high: float, places: int = 4) -> bool:
    assert interval is not None
    return round(interval.low, places) == low and round(interval.high, places) == high


# --- intervals ---------------------------------------------------------------------------


def test_wilson_matches_published_values() -> None:
    # Newcombe (1998a), Table I: 81/263 → 0.2553 to 0.3662
    assert close(stats.wilson(81, 263), 0.2553, 0.3662)
    # 0/10: the lower limit is 0 and the upper z²/(n + z²) = 3.8415 / 13.8415
    assert close(stats.wilson(0, 10), 0.0, 0.2775)
    assert stats.wilson(10, 10).high == 1.0
    with pytest.raises(ValueError, match="successes must lie"):
        stats.wilson(11, 10)


def test_the_quantile_the_edges_and_the_helpers_of_an_interval() -> None:
    """z at 95 % and 90 % (1.959964, 1.644854); a confidence outside (0, 1) is refused; a
    rate of no trials may be anything; an interval holds both its ends."""
    assert stats.z_value() == pytest.approx(1.959964, abs=1e-6)
    assert stats.z_value(0.90) == pytest.approx(1.644854, abs=1e-6)
    for bad in (0.0, 1.0, 1.5, -0.5):
        with pytest.raises(ValueError, match="confidence must lie in"):
            stats.z_value(bad)
    assert stats.wilson(0, 0) == Interval(0.0, 1.0)
    # the edges are exact: the formula gives 2.8e-17 for the lower limit of 0/10
    assert stats.wilson(0, 10).low == 0.0 and stats.wilson(17, 17).high == 1.0  # not 1 − 2e-16
    assert close(stats.wilson(1, 10), 0.0179, 0.4042)  # one success: a lower limit above 0
    # 81/263 at 90 %: centre (p + z²/2n) / (1 + z²/n), half z / (1 + z²/n) · √(p(1 − p)/n + z²/4n²)
    z, n, p = 1.6448536, 263, 81 / 263
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    ninety = stats.wilson(81, 263, 0.90)
    assert (ninety.low, ninety.high) == pytest.approx((centre - half, centre + half), abs=1e-7)
    assert Interval(-1.0, 0.0).contains(0.0) and Interval(0.0, 1.0).contains(0.0)
    assert not Interval(0.0, 1.0).contains(-1e-12) and not Interval(0.0, 1.0).contains(1.0 + 1e-12)
    assert Interval(0.1, 0.25).scaled(100) == Interval(10.0, 25.0)


def test_newcombe_hybrid_score_matches_the_paper() -> None:
    # Newcombe (1998b), Table II, method 10
    assert close(stats.newcombe(56, 70, 48, 80), 0.0524, 0.3339)
    assert close(stats.newcombe(9, 10, 3, 10), 0.1705, 0.8090)
    assert close(stats.newcombe(5, 56, 0, 29), -0.0381, 0.1926)
    for empty in ((0, 0, 1, 2), (1, 2, 0, 0)):
        with pytest.raises(ValueError, match="both groups need at least one unit"):
            stats.newcombe(*empty)


def test_risk_ratio_by_hand() -> None:
    # RR = 0.30 / 0.20 = 1.5; se(log RR) = sqrt(1/30 - 1/100 + 1/20 - 1/100) = 0.25166
    ratio = stats.risk_ratio(30, 100, 20, 100)
    se = math.sqrt(1 / 30 - 1 / 100 + 1 / 20 - 1 / 100)
    assert round(se, 5) == 0.25166
    assert close(
        ratio, round(1.5 * math.exp(-1.959964 * se), 4), round(1.5 * math.exp(1.959964 * se), 4)
    )
    assert close(ratio, 0.9160, 2.4564)
    assert stats.risk_ratio(0, 100, 20, 100) is None and stats.risk_ratio(30, 100, 0, 100) is None
    # one success each: RR 1, se √(1 − 0.1 + 1 − 0.1) = √1.8, limits e^(∓1.959964·√1.8)
    spread = 1.959964 * math.sqrt(1.8)
    assert close(
        stats.risk_ratio(1, 10, 1, 10), round(math.exp(-spread), 4), round(math.exp(spread), 4)
    )


def test_welch_by_hand_and_against_scipy() -> None:
    a = [0.0, 0, 5, 10, 0, 20, 0, 3]  # mean 4.75, variance 353.5 / 7 = 50.5
    b = [0.0, 1, 0, 0, 2, 0, 0, 0, 4]  # mean 7/9, variance 15.5556 / 8 = 1.9444
    first, second = Sample.of(a), Sample.of(b)
    assert first.mean == 4.75 and first.variance == pytest.approx(50.5)
    assert second.variance == pytest.approx(1.944444, abs=1e-6)
    se = math.sqrt(50.5 / 8 + 1.944444 / 9)  # 2.55510
    df = (50.5 / 8 + 1.944444 / 9) ** 2 / ((50.5 / 8) ** 2 / 7 + (1.944444 / 9) ** 2 / 8)
    assert round(se, 4) == 2.5551 and round(df, 2) == 7.48
    interval = stats.welch(first, second)
    assert close(interval, -1.9920, 9.9364)
    reference = scipy_stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert interval.low == pytest.approx(reference.low) and interval.high == pytest.approx(
        reference.high
    )


def test_welch_needs_two_units_a_group_and_takes_a_group_without_spread() -> None:
    """1 and 3 against 2 and 2: difference 0, a = 2 / 2, b = 0, df = a² / (a² / 1) = 1, so the
    half-width is t(0.975, 1) = 12.7062 · √1; both groups without spread: zero width."""
    assert close(stats.welch(Sample.of([1.0, 3.0]), Sample.of([2.0, 2.0])), -12.7062, 12.7062)
    assert stats.welch(Sample.of([2.0, 2.0]), Sample.of([1.0, 1.0, 1.0])) == Interval(1.0, 1.0)
    # equal spreads, a = b = 1: df = 4 / 2 = 2, half-width t(0.975, 2) · √2 = 4.3027 · 1.4142
    assert close(stats.welch(Sample.of([1.0, 3.0]), Sample.of([5.0, 7.0])), -10.0849, 2.0849)
    for one in (
        (Sample.of([1.0]), Sample.of([1.0, 2.0])),
        (Sample.of([1.0, 2.0]), Sample(1, 1, 0)),
    ):
        with pytest.raises(ValueError, match="at least two units per group"):
            stats.welch(*one)


def test_the_interval_of_one_groups_mean_by_hand() -> None:
    """1, 2, 3, 4: mean 2.5, variance 5/3, t(0.975, 3) = 3.18245 · √(5/12) = 2.05426."""
    assert close(stats.mean_interval(Sample.of([1.0, 2.0, 3.0, 4.0])), 0.4457, 4.5543)
    assert close(stats.mean_interval(Sample.of([1.0, 2.0, 3.0, 4.0]), 0.90), 0.9809, 4.0191)
    # two units: 1 and 3, mean 2, variance 2, t(0.975, 1) = 12.7062 · √(2 / 2)
    assert close(stats.mean_interval(Sample.of([1.0, 3.0])), -10.7062, 14.7062)
    with pytest.raises(ValueError, match="at least two units"):
        stats.mean_interval(Sample.of([1.0]))


def test_ratio_of_means_by_fieller_by_hand() -> None:
    first, second = Sample(100, 12.0, 400.0), Sample(100, 10.0, 300.0)
    a, b = 4.0, 3.0  # variance / n
    df = (a + b) ** 2 / (a * a / 99 + b * b / 99)  # 194.04
    t2 = scipy_stats.t.ppf(0.975, df) ** 2  # 1.9723²
    lead = 100 - t2 * b  # m₂² − t²·b
    root = math.sqrt((12 * 10) ** 2 - lead * (144 - t2 * a))
    interval = stats.ratio_of_means(first, second)
    assert round(df, 2) == 194.04 and round(math.sqrt(t2), 4) == 1.9723
    assert interval == Interval((120 - root) / lead, (120 + root) / lead)
    assert close(interval, 0.7328, 1.9843)
    assert stats.ratio_of_means(Sample(100, 1.0, 1.0), Sample(100, 0.1, 400.0)) is None  # unbounded
    # no spread in either group: the ratio itself, or none for a control mean of 0
    assert stats.ratio_of_means(Sample(5, 2.0, 0.0), Sample(5, 4.0, 0.0)) == Interval(0.5, 0.5)
    assert stats.ratio_of_means(Sample(5, 2.0, 0.0), Sample(5, 0.0, 0.0)) is None
    # two units a group: 2 against 6, a = b = 1, df 2, t² = 4.3027², lead 36 − t², and
    # discriminant 12² − lead·(4 − t²)
    t2 = scipy_stats.t.ppf(0.975, 2) ** 2
    lead2, root2 = 36 - t2, math.sqrt(144 - (36 - t2) * (4 - t2))
    # spread in one group only, a = 1, b = 0: df 1, t² = 12.7062², lead 16, discriminant
    # 8² − 16·(4 − t²)
    t1 = scipy_stats.t.ppf(0.975, 1) ** 2
    one_sided = stats.ratio_of_means(Sample.of([1.0, 3.0]), Sample(5, 4.0, 0.0))
    root1 = math.sqrt(64 - 16 * (4 - t1))
    assert one_sided is not None
    assert (one_sided.low, one_sided.high) == pytest.approx(((8 - root1) / 16, (8 + root1) / 16))
    pair = stats.ratio_of_means(Sample.of([1.0, 3.0]), Sample.of([5.0, 7.0]))
    assert pair is not None
    assert (pair.low, pair.high) == pytest.approx(((12 - root2) / lead2, (12 + root2) / lead2))
    assert stats.ratio_of_means(Sample(1, 12.0, 0.0), second) is None  # one unit: no group
    assert stats.ratio_of_means(first, Sample(1, 10.0, 0.0)) is None


@settings(max_examples=200, deadline=None)
@example([0.0, 1e-100], [0.0, 0.0])  # variances whose squares underflow (df was 0 / 0)
@example([0.0, 1e-100], [1.0, 1.0 + 1e-100])
@given(
    st.lists(st.floats(0, 500, allow_nan=False), min_size=2, max_size=40),
    st.lists(st.floats(0, 500, allow_nan=False), min_size=2, max_size=40),
)
def test_relative_and_absolute_uplift_agree_about_zero(a: list[float], b: list[float]) -> None:
    """Fieller's ratio contains 1 exactly when Welch's difference contains 0."""
    first, second = Sample.of(a), Sample.of(b)
    ratio = stats.ratio_of_means(first, second)
    if ratio is None or first.variance + second.variance == 0:
        return
    difference = stats.welch(first, second)
    if min(abs(difference.low), abs(difference.high)) > 1e-9:  # not on the boundary itself
        assert ratio.contains(1.0) == difference.contains(0.0)


def test_nps_interval_by_hand() -> None:
    # adjusted Wald (Rocks 2016): 50.75 promoters and 20.75 detractors of 103, p − d = 0.29126,
    # se = sqrt((0.49272 + 0.20146 − 0.29126²) / 103) = 0.07692
    assert close(stats.nps_interval(50, 20, 100), 14.0511, 44.2013)
    assert close(stats.nps_interval(100, 0, 100), 93.0901, 100.0)  # clipped to the scale


def test_an_nps_interval_of_one_kind_of_answer_is_no_certainty() -> None:
    """The plain Wald interval has no width when every answer is of one kind: one promoter
    said "100 … 100" with 95 % confidence, a single detractor "−100 … −100"."""
    one = stats.nps_interval(1, 0, 1)
    assert close(one, -48.4986, 100.0)  # adjusted up to 98.5, widened to the score itself
    assert stats.nps_interval(0, 1, 1) == Interval(-one.high, -one.low)
    assert stats.nps_interval(0, 0, 2).contains(0.0) and stats.nps_interval(0, 0, 2).high > 0
    for n in range(1, 13):  # every small sample's interval holds its own score, with a width
        for promoters in range(n + 1):
            for detractors in range(n - promoters + 1):
                found = stats.nps_interval(promoters, detractors, n)
                assert found.contains(100 * (promoters - detractors) / n)
                assert found.high - found.low > 10
    with pytest.raises(ValueError, match="bad NPS counts"):
        stats.nps_interval(60, 50, 100)


# --- attribution -------------------------------------------------------------------------


def send(
    customer: str, at: datetime, campaign: str = "winback", variant: str | None = None
) -> Touch:
    return Touch(campaign, customer, at, False, variant, f"{campaign}/{customer}/{at:%F}")


def holdout(customer: str, at: datetime, campaign: str = "winback") -> Touch:
    return Touch(campaign, customer, at, True, None, f"{campaign}/{at:%F}")


def order(customer: str | None, at: datetime, revenue: float = 10.0, oid: str = "") -> OrderTotal:
    return OrderTotal(oid or f"o-{customer}-{at.isoformat()}", customer, at, revenue)


def by_key(results: list[Result]) -> dict[str, tuple[int, float]]:
    return {r.touch.key: (r.orders, r.revenue) for r in results}


def test_window_boundaries_on_a_fixed_clock() -> None:
    touch = send("a", T0)
    orders = [
        order("a", T0 - timedelta(seconds=1), 1),  # before the send: not the send's
        order("a", T0, 2),  # at the send: counts (the window is [at, at + W))
        order("a", T0 + WEEK - timedelta(seconds=1), 4),  # last second of the window
        order("a", T0 + WEEK, 8),  # the window has ended
        order(None, T0 + timedelta(hours=1), 16),  # a guest
        order("b", T0 + timedelta(hours=1), 32),  # somebody else
    ]
    assert by_key(measure.attribute([touch], orders, WEEK)) == {touch.key: (2, 6.0)}
    assert by_key(measure.attribute([touch], orders, timedelta(days=3))) == {touch.key: (1, 2.0)}


def test_last_touch_wins_and_holdouts_compete_alike() -> None:
    first, second = send("a", T0, "winback"), send("a", T0 + timedelta(days=3), "cross_sell")
    kept_out, later = holdout("b", T0), send("b", T0 + timedelta(days=3), "cross_sell")
    orders = [
        order("a", T0 + timedelta(days=2), 10),  # only the first e-mail so far
        order("a", T0 + timedelta(days=4), 20),  # the later e-mail is the last touch
        order("b", T0 + timedelta(days=1), 40),  # the holdout's would-have conversion
        order("b", T0 + timedelta(days=5), 80),  # after a real e-mail: that one's
        order("b", T0 + timedelta(days=11), 160),  # outside every window
    ]
    got = by_key(measure.attribute([first, second, kept_out, later], orders, WEEK))
    assert got == {
        first.key: (1, 10.0),
        second.key: (1, 20.0),
        kept_out.key: (1, 40.0),
        later.key: (1, 80.0),
    }


def test_touches_at_one_instant_are_ordered_alike_in_both_arms() -> None:
    """Campaigns on one cron decide at its fire time: a customer mailed by cross_sell and
    held out of winback at 09:00, another held out of cross_sell and mailed by winback.
    Whichever campaign takes their orders, it must not depend on the arm; before, the
    holdout touch always won, so cross_sell's mailed customer lost the order and its
    held-out customer kept it (and winback likewise)."""
    mailed_x, held_y = send("a", T0, "cross_sell"), holdout("a", T0, "winback")
    held_x, mailed_y = holdout("b", T0, "cross_sell"), send("b", T0, "winback")
    orders = [order("a", T0 + timedelta(days=1), 10), order("b", T0 + timedelta(days=1), 10)]
    got = {
        (r.touch.campaign, r.touch.holdout): r.orders
        for r in measure.attribute([mailed_x, held_y, held_x, mailed_y], orders, WEEK)
    }
    assert got[("cross_sell", False)] == got[("cross_sell", True)]
    assert got[("winback", False)] == got[("winback", True)]
    assert got == {
        ("cross_sell", False): 0,
        ("cross_sell", True): 0,
        ("winback", False): 1,
        ("winback", True): 1,
    }


def test_closed_windows_and_pending_touches() -> None:
    results = [
        Result(send("a", T0)),
        Result(send("b", T0 + timedelta(days=5))),
        Result(send("c", T0 + timedelta(days=30))),
    ]
    done, pending = measure.closed(results, T0 + timedelta(days=8), WEEK)
    assert [r.touch.customer_id for r in done] == ["a"] and pending == 1  # c is in the future


# --- uplift ------------------------------------------------------------------------------


def units(
    n: int,
    converted: int,
    holdout_group: bool,
    revenue: float = 20.0,
    variant: str | None = None,
    campaign: str = "winback",
) -> list[Result]:
    found = []
    for k in range(n):
        touch = Touch(
            campaign,
            f"{'h' if holdout_group else 't'}{variant}{k}",
            T0,
            holdout_group,
            variant,
            str(k),
        )
        found.append(Result(touch, 1, revenue) if k < converted else Result(touch))
    return found


def test_uplift_against_hand_computed_numbers() -> None:
    treated, control = units(200, 30, False, 20.0), units(100, 10, True, 20.0)
    uplift = measure.compare("winback", None, treated, control, Thresholds(100, 10))
    assert uplift.enough and uplift.note == ""
    rate = uplift.comparisons["conversion_rate"]
    assert (rate.treated, rate.control) == (0.15, 0.10)
    assert rate.absolute == pytest.approx(0.05)
    assert rate.absolute_interval == stats.newcombe(30, 200, 10, 100)
    assert rate.relative == pytest.approx(0.5)
    ratio = stats.risk_ratio(30, 200, 10, 100)
    assert ratio is not None and rate.relative_interval == Interval(ratio.low - 1, ratio.high - 1)
    revenue = uplift.comparisons["revenue_per_recipient"]
    # revenue per recipient 30 × 20 / 200 = 3.00 against 10 × 20 / 100 = 2.00
    assert (revenue.treated, revenue.control, revenue.absolute) == (3.0, 2.0, 1.0)
    # variances: 20² × p(1 − p) × n / (n − 1)
    t_var, c_var = 400 * 0.15 * 0.85 * 200 / 199, 400 * 0.1 * 0.9 * 100 / 99
    assert revenue.absolute_interval == stats.welch(
        Sample(200, 3.0, t_var), Sample(100, 2.0, c_var)
    )
    orders = uplift.comparisons["orders_per_recipient"]
    assert (orders.treated, orders.control) == (0.15, 0.10)
    assert orders.relative == pytest.approx(0.5)


def weekly(results: list[Result], weeks: int) -> list[Result]:
    """Each customer's touch repeated ``weeks`` times, a week apart, with the same outcome:
    a weekly campaign whose customers behave alike every week."""
    return [
        Result(replace(r.touch, at=T0 + k * WEEK, key=f"{r.touch.key}/{k}"), r.orders, r.revenue)
        for r in results
        for k in range(weeks)
    ]


def test_a_customers_touches_are_not_independent_units() -> None:
    """The holdout and the variant are drawn per customer, so a customer touched four times
    with the same outcome each time tells no more than one touch: the intervals must be
    those of the customers. Before, the 4 × 300 touches counted as independent units and
    every interval was half as wide (a weekly campaign without effect showed a 'significant'
    uplift about a third of the time)."""
    treated, control = units(200, 30, False, 20.0), units(100, 10, True, 20.0)
    once = measure.compare("w", None, treated, control, Thresholds(100, 10))
    four = measure.compare("w", None, weekly(treated, 4), weekly(control, 4), Thresholds(100, 10))
    for metric in measure.METRICS:
        a, b = once.comparisons[metric], four.comparisons[metric]
        assert (b.treated, b.control, b.absolute) == pytest.approx(
            (a.treated, a.control, a.absolute)
        )
        for name in ("absolute_interval", "treated_interval", "control_interval"):
            wide, narrow = getattr(a, name), getattr(b, name)
            assert (narrow.low, narrow.high) == pytest.approx((wide.low, wide.high)), (metric, name)
        assert a.relative_interval is not None and b.relative_interval is not None
        assert b.relative_interval.low == pytest.approx(a.relative_interval.low)
    assert (four.treated.units, four.treated.customers) == (800, 200)


def test_clustered_sample_and_effective_counts_by_hand() -> None:
    # customers with 3, 2 and 1 touches, outcomes summing to 1, 2, 0: mean 3 / 6 = 0.5,
    # residuals (1 − 1.5)² + (2 − 1)² + (0 − 0.5)² = 1.5, M̄ = 2: variance 1.5 / (2 · 4)
    assert Sample.clustered([[1.0, 0.0, 0.0], [1.0, 1.0], [0.0]]) == Sample(3, 0.5, 0.1875)
    assert Sample.clustered([[2.0], [4.0]]) == Sample.of([2.0, 4.0])  # one touch each: plain
    # no unit, one unit, one customer: no spread to estimate; a customer without touches
    # is no cluster
    assert Sample.of([]) == Sample(0, 0.0, 0.0) and Sample.of([5.0]) == Sample(1, 5.0, 0.0)
    assert Sample.clustered([[], []]) == Sample(0, 0.0, 0.0)
    assert Sample.clustered([[1.0, 2.0], []]) == Sample(1, 1.5, 0.0)
    assert Sample.clustered([[1.0, 0.0, 0.0], [], [1.0, 1.0], [0.0]]) == Sample(3, 0.5, 0.1875)
    # 2 of 2, 0 of 2, 1 of 2: p = 0.5, residuals 1 + 1 + 0, n_eff = 0.25 · 6² / 2 = 4.5
    assert stats.effective_counts([(2, 2), (0, 2), (1, 2)]) == (2.25, 4.5)
    assert stats.effective_counts([(1, 1), (0, 1), (0, 1)]) == (1.0, 3.0)  # independent: as is
    assert stats.effective_counts([(2, 2), (3, 3)]) == (2.0, 2.0)  # no failure: the customers
    assert stats.effective_counts([(1, 2), (1, 2)]) == (2.0, 4.0)  # never above the touches
    # 1 of 1, 3 of 3, 0 of 2: p = 2/3, residuals 1/9 + 1 + 16/9 = 26/9, n_eff = (2/9)·36 / (26/9)
    assert stats.effective_counts([(1, 1), (3, 3), (0, 2)]) == pytest.approx((24 / 13, 36 / 13))
    # no success at all: the customers (those with a touch), whatever their touches
    assert stats.effective_counts([(0, 2), (0, 3)]) == (0.0, 2.0)
    assert stats.effective_counts([(2, 2), (0, 0), (3, 3)]) == (2.0, 2.0)
    assert stats.effective_counts([(0, 0), (0, 0)]) == (0.0, 0.0)


def test_a_single_customer_is_no_group() -> None:
    many = units(150, 20, False)
    one = [
        Result(replace(r.touch, customer_id="h", key=str(n)), 1 if n < 20 else 0)
        for n, r in enumerate(units(150, 0, True))
    ]
    uplift = measure.compare("w", None, many, one, Thresholds(2, 10))
    assert not uplift.enough and uplift.note == (
        "not enough data yet: 150 mailed customers and 1 in the holdout, at least 2 each needed"
    )
    weekly = [  # 13 weekly touches of each of 10 customers: 130 units, 10 customers
        Result(replace(r.touch, customer_id=f"h{n % 10}", key=str(n)), r.orders, r.revenue)
        for n, r in enumerate(units(130, 20, True))
    ]
    few = measure.compare("w", None, many, weekly, Thresholds(100, 10))
    assert not few.enough and few.note == (
        "not enough data yet: 150 mailed customers and 10 in the holdout, at least 100 each needed"
    )


def test_not_enough_data_yet() -> None:
    small = measure.compare(
        "w", None, units(99, 30, False), units(150, 10, True), Thresholds(100, 10)
    )
    assert not small.enough and small.comparisons == {}
    assert (
        small.note
        == "not enough data yet: 99 mailed customers and 150 in the holdout, at least 100 each "
        "needed"
    )
    head_to_head = measure.compare(
        "w", "b", units(99, 30, False), units(150, 10, False), Thresholds(100, 10), against="a"
    )
    assert head_to_head.note == (
        "not enough data yet: 99 mailed customers and 150 in variant a, at least 100 each needed"
    )
    none_held = measure.compare("w", None, units(500, 30, False), [], Thresholds(100, 10))
    assert none_held.note.startswith("no holdout: ") and "control" not in none_held.note
    rare = measure.compare(
        "w", None, units(500, 4, False), units(500, 5, True), Thresholds(100, 10)
    )
    assert not rare.enough and rare.note == "not enough data yet: 9 conversions, at least 10 needed"
    assert rare.treated.converted == 4 and rare.control.units == 500
    survey = measure.compare("nps", None, units(500, 0, False), [], Thresholds(100, 10))
    assert not survey.enough and "nobody of this campaign was held out" in survey.note


def test_no_conversion_at_all_is_no_measurement_whatever_min_conversions_says() -> None:
    """``min_conversions = 0`` (allowed): 500 customers a group and not one order gave revenue
    and orders per recipient an uplift of "+0.00, interval 0.00 … 0.00", certainty from a
    group without a single order (both groups without spread)."""
    nothing = measure.compare(
        "w", None, units(500, 0, False), units(500, 0, True), Thresholds(100, 0)
    )
    assert not nothing.enough and nothing.comparisons == {}
    assert nothing.note == "not enough data yet: 0 conversions, at least 1 needed"
    one = measure.compare("w", None, units(500, 1, False), units(500, 0, True), Thresholds(100, 0))
    assert one.enough
    revenue = one.comparisons["revenue_per_recipient"].absolute_interval
    assert revenue.low < 0 < revenue.high


def test_groups_that_each_did_one_thing_give_no_interval_of_certainty() -> None:
    """Five mailed customers each bought one £20 box, five held out bought nothing
    (``min_group_size = 5``, allowed): revenue and orders per recipient read "+20.00 (+20.00
    … +20.00)" and "+1.000 (+1.000 … +1.000)", certainty from ten customers, beside a
    conversion uplift of the same orders whose interval spans half the scale. Without spread
    in either group Welch's interval has nothing to be computed from: not enough data yet."""
    uniform = measure.compare("w", None, units(5, 5, False), units(5, 0, True), Thresholds(5, 1))
    assert not uniform.enough and uniform.comparisons == {}
    assert uniform.note == (
        "not enough data yet: every mailed customer and every held-out customer did the same "
        "(no spread to measure an interval from)"
    )
    spread = measure.compare("w", None, units(5, 4, False), units(5, 0, True), Thresholds(5, 1))
    assert spread.enough
    orders = spread.comparisons["orders_per_recipient"].absolute_interval
    assert orders.low < 0.8 < orders.high


def test_variants_against_the_holdout_and_each_other() -> None:
    results = (
        units(300, 60, False, variant="personal")
        + units(300, 30, False, variant="urgency")
        + units(200, 20, True)
    )
    found = measure.uplifts(results, Thresholds(100, 10), pending={"winback": 7})
    rows = {(u.variant, u.against): u for u in found}
    assert set(rows) == {
        (None, "holdout"),
        ("personal", "holdout"),
        ("urgency", "holdout"),
        ("urgency", "personal"),
    }
    assert rows[(None, "holdout")].treated.units == 600 and rows[(None, "holdout")].pending == 7
    head_to_head = rows[("urgency", "personal")].comparisons["conversion_rate"]
    assert head_to_head.absolute == pytest.approx(0.10 - 0.20)
    assert head_to_head.absolute_interval == stats.newcombe(30, 300, 60, 300)
    assert head_to_head.absolute_interval.high < 0  # personal wins, and the interval says so


def test_customers_who_switched_groups_are_left_out_of_both() -> None:
    """holdout_percent raised from 10 to 20 mid-period: customers mailed in week 1 are held
    out in week 3, their week-1 e-mail still working. Before, they counted in both groups."""
    treated, control = units(150, 30, False), units(120, 12, True)
    for n in range(10):
        customer = f"s{n}"
        treated.append(Result(Touch("winback", customer, T0, False, None, f"m{n}"), 1, 20.0))
        control.append(Result(Touch("winback", customer, T0 + 2 * WEEK, True, None, f"h{n}"), 1))
    found = measure.uplifts(treated + control, Thresholds(100, 10))
    overall = next(u for u in found if u.variant is None)
    assert (overall.treated.units, overall.control.units) == (150, 120)
    assert overall.switched == 10
    assert overall.comparisons["conversion_rate"].control == pytest.approx(12 / 120)


def test_customers_in_two_variants_are_left_out_of_the_head_to_head() -> None:
    results = units(150, 30, False, variant="a") + units(150, 15, False, variant="b")
    results += units(100, 10, True)
    for n in range(5):  # the weights changed: s0…s4 got a, then b
        results.append(Result(Touch("winback", f"s{n}", T0, False, "a", f"a{n}"), 1))
        results.append(Result(Touch("winback", f"s{n}", T0 + WEEK, False, "b", f"b{n}")))
    found = {(u.variant, u.against): u for u in measure.uplifts(results, Thresholds(100, 10))}
    head_to_head = found[("b", "a")]
    assert (head_to_head.treated.units, head_to_head.control.units) == (150, 150)
    assert head_to_head.switched == 5
    assert found[(None, "holdout")].treated.units == 310  # still mailed: in the overall


# --- cohorts, NPS, KPI changes -----------------------------------------------------------


def test_cohorts_in_the_shop_zone_with_unfinished_months() -> None:
    berlin = ZoneInfo("Europe/Berlin")

    def at(y: int, m: int, d: int, h: int = 12) -> datetime:
        return datetime(y, m, d, h, tzinfo=UTC)

    orders = [
        order("a", at(2024, 1, 10)),
        order("a", at(2024, 2, 3)),
        order("a", at(2024, 4, 2)),
        order("b", at(2024, 1, 20)),
        # 23:30 UTC on 31 January is 00:30 on 1 February in Berlin: a February customer
        order("c", at(2024, 1, 31, 23).replace(minute=30)),
        order("c", at(2024, 3, 9)),
        order(None, at(2024, 1, 5)),  # guests have no cohort
        order("d", at(2024, 4, 20)),  # after as_of: not seen
    ]
    table = measure.cohorts(orders, berlin, at(2024, 4, 15), max_months=3)
    assert [(c.month, c.customers, c.retention) for c in table] == [
        (date(2024, 1, 1), 2, (0.5, 0.0, None)),  # April is not over on 15 April
        (date(2024, 2, 1), 1, (1.0, None, None)),
    ]


def test_the_first_month_on_record_is_marked_as_the_data_start() -> None:
    """Its customers are everybody who ordered that month, regulars of years included; only
    the cohorts after it are first-time buyers."""

    def at(m: int) -> datetime:
        return datetime(2024, m, 10, 12, tzinfo=UTC)

    orders = [order("a", at(1)), order("a", at(2)), order("b", at(2)), order("c", at(3))]
    table = measure.cohorts(orders, ZoneInfo("Europe/Berlin"), at(5), max_months=2)
    assert [(c.month.month, c.data_start) for c in table] == [(1, True), (2, False), (3, False)]


def test_nps_summary() -> None:
    answers = [10] * 5 + [9] * 3 + [8, 7] + [6, 0]
    result = measure.nps(answers, min_responses=10)
    assert (result.responses, result.promoters, result.passives, result.detractors) == (12, 8, 2, 2)
    assert result.score == pytest.approx(100 * 6 / 12) and result.enough
    assert result.distribution[10] == 5 and result.distribution[0] == 1
    assert result.interval == stats.nps_interval(8, 2, 12)
    assert not measure.nps(answers, min_responses=13).enough
    assert measure.nps([]).score is None
    with pytest.raises(ValueError, match="0…10"):
        measure.nps([11])


def test_kpi_changes_week_month_quarter() -> None:
    day = date(2011, 12, 9)
    snapshots = {
        (day, 7): {"orders": 120.0},
        (day - timedelta(days=7), 7): {"orders": 100.0},
        (day, 30): {"orders": 400.0},
        (day - timedelta(days=30), 30): {"orders": 500.0},
        (day, 90): {"orders": 1.0},  # the quarter before is missing: no quarter row
    }
    found = {(c.period, c.kpi): c for c in measure.changes(snapshots, day, ["orders"])}
    assert set(found) == {("week", "orders"), ("month", "orders")}
    assert found[("week", "orders")].relative == pytest.approx(0.2)
    assert found[("month", "orders")].relative == pytest.approx(-0.2)
