"""Confidence intervals for campaign measurement. Pure: counts and values in, intervals out.

The methods, chosen because they behave well at the small rates and group sizes campaigns have
(references in each function's docstring):

- a **proportion** (conversion rate of one group): the Wilson score interval. Unlike the
  textbook normal ("Wald") interval it never leaves [0, 1] and keeps its coverage near 0.
- the **difference of two proportions** (absolute uplift in conversion rate): Newcombe's
  hybrid score interval (Newcombe 1998, method 10), built from the two Wilson intervals.
- the **ratio of two proportions** (relative uplift = p₁ / p₂ − 1): the log risk-ratio
  interval (Katz et al. 1978); undefined when either group has no conversion.
- the **difference of two means** (revenue or orders per recipient, zeros included): Welch's
  t interval with Welch–Satterthwaite degrees of freedom (unequal variances; with groups of
  the sizes we require the central limit theorem carries the heavy-tailed revenue).
- the **ratio of two means** (relative uplift in revenue or orders per recipient): Fieller's
  interval (Fieller 1954) with the same Welch t quantile, so it contains 1 exactly when
  Welch's interval of the difference contains 0: the absolute and the relative uplift never
  disagree about "no effect" (the delta method on the log ratio can, with skewed revenue).
- the **Net Promoter Score** (% promoters − % detractors): the adjusted Wald interval of a
  difference of two multinomial shares (Rocks 2016: ¾ promoter and ¾ detractor added to
  n + 3), which keeps a width when every answer is of one kind.

**Units in clusters.** A campaign's units are touches, but the holdout and the A/B variant
are drawn per customer (a stable hash), so a customer mailed weekly is a dozen touches that
share one customer's habits: they are not independent, and intervals that count them as if
they were are too narrow (a weekly campaign without any effect, 13 touches per customer:
the 95 % intervals held the true zero 69 % of the time). A group's touches are therefore
reduced to per-customer sums first: a mean per touch is the ratio estimator ΣY / ΣM over
customers with its linearised (cluster-robust) variance (:meth:`Sample.clustered`), and a
rate gets Kish's effective sample size for the score intervals (:func:`effective_counts`,
as Korn & Graubard 1998 do for Wilson intervals from clustered surveys). Where every
customer has one touch, both are exactly the plain formulas.

All intervals are two-sided at ``confidence`` (default 95 %).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95


@dataclass(frozen=True, slots=True)
class Interval:
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def scaled(self, factor: float) -> Interval:
        return Interval(self.low * factor, self.high * factor)


def z_value(confidence: float = CONFIDENCE) -> float:
    """The standard normal quantile of a two-sided interval (1.959964 for 95 %)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    return statistics.NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: float, trials: float, confidence: float = CONFIDENCE) -> Interval:
    """Wilson score interval of a proportion (Wilson 1927; Newcombe 1998a, method 3)."""
    _check_counts(successes, trials)
    if trials == 0:
        return Interval(0.0, 1.0)
    z = z_value(confidence)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z / denominator * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges, not 1 − ε
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return Interval(low, high)


def newcombe(
    x1: float, n1: float, x2: float, n2: float, confidence: float = CONFIDENCE
) -> Interval:
    """Interval of p₁ − p₂ by Newcombe's hybrid score method (Newcombe 1998b, method 10):
    the distances from each rate to its own Wilson limits, combined in quadrature. Counts
    may be effective (fractional) ones, see :func:`effective_counts`."""
    if n1 == 0 or n2 == 0:
        raise ValueError("both groups need at least one unit")
    p1, p2 = x1 / n1, x2 / n2
    first, second = wilson(x1, n1, confidence), wilson(x2, n2, confidence)
    d = p1 - p2
    low = d - math.sqrt((p1 - first.low) ** 2 + (second.high - p2) ** 2)
    high = d + math.sqrt((first.high - p1) ** 2 + (p2 - second.low) ** 2)
    return Interval(low, high)


def risk_ratio(
    x1: float, n1: float, x2: float, n2: float, confidence: float = CONFIDENCE
) -> Interval | None:
    """Interval of p₁ / p₂ by the log method (Katz et al. 1978); None when a group has no
    success (the ratio is then 0 or unbounded and the log method undefined)."""
    _check_counts(x1, n1)
    _check_counts(x2, n2)
    if x1 == 0 or x2 == 0:
        return None
    ratio = (x1 / n1) / (x2 / n2)
    se = math.sqrt(1 / x1 - 1 / n1 + 1 / x2 - 1 / n2)
    z = z_value(confidence)
    return Interval(ratio * math.exp(-z * se), ratio * math.exp(z * se))


@dataclass(frozen=True, slots=True)
class Sample:
    """Size, mean and sample variance of per-unit values (revenue or orders of a recipient)."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Sample:
        n = len(values)
        if n == 0:
            return cls(0, 0.0, 0.0)
        mean = statistics.fmean(values)
        return cls(n, mean, statistics.variance(values, mean) if n > 1 else 0.0)

    @classmethod
    def clustered(cls, clusters: Sequence[Sequence[float]]) -> Sample:
        """The mean per unit of units that come in clusters (one customer's touches), as a
        sample of the clusters: ``n`` clusters, the ratio estimator ΣY / ΣM as ``mean``, and
        the linearised variance Σ(Yᵢ − mean·Mᵢ)² / ((n − 1)·M̄²) as ``variance``, so that
        ``variance / n`` is the cluster-robust variance of the mean and Welch's degrees of
        freedom count clusters (Cochran 1977, §6.7; Cameron & Miller 2015). Clusters of
        one unit each give exactly :meth:`of` of the units."""
        if all(len(cluster) == 1 for cluster in clusters):
            return cls.of([cluster[0] for cluster in clusters])
        sizes = [len(cluster) for cluster in clusters if cluster]
        sums = [math.fsum(cluster) for cluster in clusters if cluster]
        n = len(sizes)
        if n == 0:
            return cls(0, 0.0, 0.0)
        mean = math.fsum(sums) / sum(sizes)
        if n == 1:
            return cls(1, mean, 0.0)
        size = sum(sizes) / n
        residuals = math.fsum((y - mean * m) ** 2 for y, m in zip(sums, sizes, strict=True))
        return cls(n, mean, residuals / ((n - 1) * size * size))


def effective_counts(clusters: Sequence[tuple[int, int]]) -> tuple[float, float]:
    """``(successes, trials)`` of a rate whose trials come in clusters (``(successes,
    trials)`` per customer), scaled to Kish's effective sample size n·p(1 − p) / (n·var),
    var the cluster-robust variance of the rate with the divisor n² (so that independent
    trials give exactly n): the counts the Wilson and Newcombe intervals and the log risk
    ratio then take. Never more than the trials (a design effect below 1 is not trusted,
    Korn & Graubard 1998); with no success or no failure at all, whose spread says nothing
    about the clustering, the number of clusters."""
    successes = sum(x for x, _ in clusters)
    trials = sum(n for _, n in clusters)
    if all(n == 1 for _, n in clusters) or trials == 0:
        return float(successes), float(trials)
    if successes in (0, trials):
        scale = sum(1 for _, n in clusters if n) / trials
        return successes * scale, trials * scale
    p = successes / trials
    residuals = math.fsum((x - p * n) ** 2 for x, n in clusters)
    effective = trials if residuals == 0 else min(trials, p * (1 - p) * trials**2 / residuals)
    return p * effective, float(effective)


def welch(first: Sample, second: Sample, confidence: float = CONFIDENCE) -> Interval:
    """Welch's t interval of mean₁ − mean₂ (Welch 1947), Welch–Satterthwaite degrees of
    freedom; a zero-width interval when both groups have no spread at all."""
    if first.n < 2 or second.n < 2:
        raise ValueError("Welch's interval needs at least two units per group")
    a, b = first.variance / first.n, second.variance / second.n
    d = first.mean - second.mean
    if a + b == 0:
        return Interval(d, d)
    df = _welch_df(a, b, first.n, second.n)
    half = _t_quantile(0.5 + confidence / 2, df) * math.sqrt(a + b)
    return Interval(d - half, d + half)


def _t_quantile(q: float, df: float) -> float:
    """Student's t quantile; scipy.stats is imported here, not with the module (0.7 s that
    every CLI command and API process would pay)."""
    from scipy.stats import t as student_t

    return float(student_t.ppf(q, df))


def _welch_df(a: float, b: float, n1: int, n2: int) -> float:
    """Welch–Satterthwaite degrees of freedom of variances-of-means ``a`` and ``b``; infinite
    (the normal quantile) when the squares underflow."""
    denominator = a * a / (n1 - 1) + b * b / (n2 - 1)
    return (a + b) ** 2 / denominator if denominator > 0 else math.inf


def mean_interval(sample: Sample, confidence: float = CONFIDENCE) -> Interval:
    """Student's t interval of one group's mean."""
    if sample.n < 2:
        raise ValueError("an interval of a mean needs at least two units")
    half = _t_quantile(0.5 + confidence / 2, sample.n - 1) * math.sqrt(sample.variance / sample.n)
    return Interval(sample.mean - half, sample.mean + half)


def ratio_of_means(
    first: Sample, second: Sample, confidence: float = CONFIDENCE
) -> Interval | None:
    """Fieller's interval of mean₁ / mean₂ for independent groups, with Welch's t quantile:
    all ρ with (m₁ − ρ·m₂)² ≤ t²·(v₁/n₁ + ρ²·v₂/n₂). None when it is unbounded (the control
    mean is not distinguishable from 0) or a group has fewer than two units."""
    if first.n < 2 or second.n < 2:
        return None
    a, b = first.variance / first.n, second.variance / second.n
    if a + b == 0:
        return None if second.mean == 0 else Interval(*(2 * [first.mean / second.mean]))
    df = _welch_df(a, b, first.n, second.n)
    t2 = _t_quantile(0.5 + confidence / 2, df) ** 2
    m1, m2 = first.mean, second.mean
    lead = m2 * m2 - t2 * b
    discriminant = (m1 * m2) ** 2 - lead * (m1 * m1 - t2 * a)
    if lead <= 0 or discriminant < 0:
        return None
    root = math.sqrt(discriminant)
    return Interval((m1 * m2 - root) / lead, (m1 * m2 + root) / lead)


def nps_interval(
    promoters: int, detractors: int, responses: int, confidence: float = CONFIDENCE
) -> Interval:
    """Adjusted Wald interval of the NPS on the −100…100 scale (Rocks 2016, the method he
    found best): ¾ promoter, ¾ detractor and 1½ passive added (n + 3), then the normal
    interval of the difference of two shares of one multinomial sample, variance
    (p + d − (p − d)²) / n; widened to hold the observed score, clipped to the scale. The
    plain Wald interval has no width when every answer is of one kind: a single promoter
    read "100 … 100" at 95 %."""
    if responses <= 0 or promoters + detractors > responses or min(promoters, detractors) < 0:
        raise ValueError(f"bad NPS counts: {promoters} + {detractors} of {responses}")
    n = responses + 3
    p, d = (promoters + 0.75) / n, (detractors + 0.75) / n
    half = z_value(confidence) * math.sqrt((p + d - (p - d) ** 2) / n)
    # centred on the adjusted shares, a few answers all of one kind end it short of the
    # observed score (one promoter: … 98.5 for an NPS of 100): widened to hold it
    observed = 100 * (promoters - detractors) / responses
    low, high = min(100 * (p - d - half), observed), max(100 * (p - d + half), observed)
    return Interval(max(-100.0, low), min(100.0, high))


def _check_counts(successes: float, trials: float) -> None:
    if trials < 0 or not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, trials], got {successes} of {trials}")
