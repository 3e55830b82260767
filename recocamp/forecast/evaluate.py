"""How good a forecast was, once the horizon has passed (DESIGN.md, Forecast definitions), and
the point forecast a person's count is scored on (pure).

Per-customer mean absolute error of purchase days twice: ``mae`` of the expectation (what
totals, revenue and lifetime value add up) and ``mae_point`` of the point forecast
:func:`poisson_median` (what an absolute error rewards: the median of the predictive
distribution, Gneiting 2011, "Making and evaluating point forecasts", JASA 106);
``log_score``, the mean Poisson log loss (:func:`log_loss`) of the predictive distribution
every output is read from; total predicted vs actual, AUC of "at least one purchase day in the
horizon" ranked by the forecast (ties at mid-rank), Spearman, and a calibration table by decile
of the forecast.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import special, stats


@dataclass(frozen=True)
class Decile:
    decile: int
    customers: int
    predicted: float  # mean predicted purchase days
    actual: float  # mean actual purchase days


@dataclass(frozen=True)
class Quality:
    customers: int
    mae: float  # of the expectation
    mae_point: float  # of the point forecast, the Poisson median of the expectation
    log_score: float | None  # mean Poisson log loss; None where infinite (0 forecast, bought)
    predicted_total: float
    actual_total: float
    auc: float | None
    spearman: float | None
    calibration: tuple[Decile, ...]

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def quality(predicted: np.ndarray, actual: np.ndarray) -> Quality:
    ranks = stats.rankdata(predicted)  # once, for the AUC and Spearman both
    return Quality(
        customers=len(actual),
        mae=_mae(predicted, actual),
        mae_point=_mae_point(predicted, actual),
        log_score=_finite_mean(log_loss(predicted, actual)),
        predicted_total=float(predicted.sum()),
        actual_total=float(actual.sum()),
        auc=auc(predicted, actual > 0, ranks),
        spearman=_spearman(predicted, actual, ranks),
        calibration=calibration(predicted, actual),
    )


def _mae(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(np.mean(np.abs(predicted - actual))) if len(actual) else 0.0


def _mae_point(predicted: np.ndarray, actual: np.ndarray) -> float:
    """Not a number where a forecast is not one, as ``mae`` is then."""
    if not np.isfinite(predicted).all():
        return float("nan")
    return _mae(poisson_median(predicted), actual)


def log_loss(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    """Each customer's −ln P(N = actual) for a Poisson count N with mean ``expected``:
    expected − actual · ln expected + ln actual!. The logarithmic score of the predictive
    distribution that p_active, the churn tier and the likely count are all read from, and
    strictly proper (Gneiting & Raftery 2007, JASA 102): its expectation is lowest at the true
    mean, so it ranks forecasts of a mean as the MAE of that mean cannot (an absolute error is
    lowest at the median). Infinite where a customer bought after a forecast of exactly 0;
    not a number where the forecast is not one."""
    mean = np.asarray(expected, dtype=np.float64)
    count = np.asarray(actual, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        loss = mean - special.xlogy(count, mean) + special.gammaln(count + 1.0)
    return np.asarray(loss, dtype=np.float64)


def _finite_mean(values: np.ndarray) -> float | None:
    """The mean, or None where it is not a finite number (JSON holds no infinity)."""
    mean = float(np.mean(values)) if len(values) else 0.0
    return mean if np.isfinite(mean) else None


def poisson_median(expected: np.ndarray) -> np.ndarray:
    """The median of a Poisson count with mean ``expected``, element-wise: the smallest k with
    P(N ≤ k) ≥ 1/2 — 0 up to a mean of ln 2, 1 from there to about 1.68, and so on.

    A person's purchase days are scored against it, not against the expectation: the absolute
    error is smallest at the median, and where most customers buy nothing the median is 0
    while every expectation is above it. Exact and fast: the median lies in
    [mean − ln 2, mean + 1/3) (Choi 1994), so it is the lowest integer there, or the next one
    when the CDF at that integer is below 1/2 — one CDF evaluation per customer (scipy's
    generic ``poisson.median`` searches and took 7 s for a million). A mean that is not a
    finite number has no median: ValueError.
    """
    mean = np.maximum(np.asarray(expected, dtype=np.float64), 0.0)
    if not np.isfinite(mean).all():
        raise ValueError("a Poisson median needs finite expectations")
    low = np.maximum(np.ceil(mean - np.log(2.0)), 0.0)
    below_half = np.asarray(special.pdtr(low, mean)) < 0.5
    median: np.ndarray = (low + below_half).astype(np.int64)
    return median


def auc(score: np.ndarray, positive: np.ndarray, ranks: np.ndarray | None = None) -> float | None:
    """The Mann-Whitney AUC, ties at mid-rank; None without both classes. ``ranks``: the
    scores' mid-ranks, where already computed."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = stats.rankdata(score) if ranks is None else ranks
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _spearman(predicted: np.ndarray, actual: np.ndarray, ranks: np.ndarray) -> float | None:
    """Pearson's correlation of the mid-ranks (what ``scipy.stats.spearmanr`` computes)."""
    if len(actual) < 2 or np.ptp(predicted) == 0 or np.ptp(actual) == 0:
        return None
    return float(np.corrcoef(ranks, stats.rankdata(actual))[0, 1])


def calibration(predicted: np.ndarray, actual: np.ndarray, groups: int = 10) -> tuple[Decile, ...]:
    """Customers in ``groups`` equal parts by forecast (ties kept by customer order, so the
    cut is reproducible); mean predicted and actual purchase days per part."""
    order = np.argsort(predicted, kind="stable")
    parts = np.array_split(order, groups) if len(order) >= groups else [order]
    return tuple(
        Decile(i + 1, len(part), float(predicted[part].mean()), float(actual[part].mean()))
        for i, part in enumerate(parts)
        if len(part)
    )
