"""The forecasters: expected purchase days per customer in ``[cutoff, cutoff + H)`` (pure).

- ``naive``: the customer's own past rate carried forward, x / max(T, 1 week) × H.
- ``bgnbd``: the textbook BG/NBD model's conditional expectation.
- ``rhythm`` (ours): a Poisson regression on what BG/NBD ignores — the customer's own rhythm
  and how overdue they are against it, purchase days in recent windows (30/90/180/365 days),
  spend per purchase day, tenure — with BG/NBD's and the naive forecast as inputs. It learns
  its weights on the window just before the cutoff: features at ``cutoff − H``, target the
  purchase days in ``[cutoff − H, cutoff)``. Where the history reaches a year before that,
  the shop's seasonal level (last year's purchase days in the season ahead over those in the
  season of the training window) scales the forecast.

Nothing here sees a day at or after the cutoff.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from recocamp.forecast.history import History, PurchaseDays

YEAR = 365
RIDGE = 1.0  # L2 penalty of the Poisson regression on standardised features


def naive(purchases: PurchaseDays, history: History, horizon_days: int) -> np.ndarray:
    return naive_rate(history, horizon_days)


def bgnbd(purchases: PurchaseDays, history: History, horizon_days: int) -> np.ndarray:
    return history.textbook.expected(horizon_days / 7.0, history.x, history.t_x, history.T)


def rhythm(purchases: PurchaseDays, history: History, horizon_days: int) -> np.ndarray:
    inner = History.at(purchases, history.cutoff - horizon_days)
    if len(inner.rows) < 50 or inner.x.sum() == 0:  # too little history to learn from
        return bgnbd(purchases, history, horizon_days)
    target = purchases.count_in(inner.cutoff, history.cutoff)[inner.rows]
    train = _features(inner, horizon_days)
    regression = PoissonRegression.fit(train, target)
    predicted = regression.predict(_features(history, horizon_days))
    return np.asarray(predicted * _seasonal_level(purchases, history.cutoff, horizon_days))


FORECASTERS: dict[str, Callable[[PurchaseDays, History, int], np.ndarray]] = {
    "naive": naive,
    "bgnbd": bgnbd,
    "rhythm": rhythm,
}


def _features(history: History, horizon_days: int) -> np.ndarray:
    expected = history.textbook.expected(horizon_days / 7.0, history.x, history.t_x, history.T)
    overdue = np.nan_to_num(history.overdue, nan=0.0)
    columns = [
        np.log1p(expected),
        np.log1p(naive_rate(history, horizon_days)),
        *(np.log1p(history.recent[:, i]) for i in range(history.recent.shape[1])),
        np.log1p(history.recency),
        np.log1p(overdue),
        (history.days == 1).astype(np.float64),
        np.log1p(history.spend_per_day.clip(0.0, None)),
        np.log1p(history.days),
        np.log1p((history.cutoff - history.first).astype(np.float64)),
    ]
    return np.stack(columns, axis=1)


def naive_rate(history: History, horizon_days: int) -> np.ndarray:
    """x / max(T, 1 week) × H: the customer's own past rate carried forward."""
    return np.asarray(history.x / np.maximum(history.T, 1.0) * (horizon_days / 7.0))


def _seasonal_level(purchases: PurchaseDays, cutoff: int, horizon_days: int) -> float:
    """Last year's purchase days in the season ahead over those in the training season; 1
    where the history does not reach back that far."""
    first_day = int(purchases.day.min()) if len(purchases.day) else cutoff
    if horizon_days > YEAR or cutoff - YEAR - horizon_days < first_day:
        return 1.0  # past a year, last year's season ahead would reach beyond the cutoff
    ahead = purchases.count_in(cutoff - YEAR, cutoff - YEAR + horizon_days).sum()
    trained = purchases.count_in(cutoff - YEAR - horizon_days, cutoff - YEAR).sum()
    return float(ahead / trained) if trained > 0 and ahead > 0 else 1.0


@dataclass(frozen=True)
class PoissonRegression:
    """log E[y] = w · standardised features + bias, by penalised maximum likelihood."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray

    @staticmethod
    def fit(features: np.ndarray, target: np.ndarray) -> PoissonRegression:
        mean = features.mean(axis=0)
        scale = np.where(features.std(axis=0) > 0, features.std(axis=0), 1.0)
        design = _with_bias((features - mean) / scale)
        penalty = np.r_[np.full(features.shape[1], RIDGE), 0.0]

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            eta = np.clip(design @ w, -30.0, 30.0)
            mu = np.exp(eta)
            value = float(np.sum(mu - target * eta) + 0.5 * np.dot(penalty * w, w))
            return value, design.T @ (mu - target) + penalty * w

        start = np.r_[np.zeros(features.shape[1]), np.log(max(float(target.mean()), 1e-6))]
        best = optimize.minimize(loss, start, jac=True, method="L-BFGS-B")
        return PoissonRegression(mean, scale, np.asarray(best.x))

    def predict(self, features: np.ndarray) -> np.ndarray:
        design = _with_bias((features - self.mean) / self.scale)
        return np.asarray(np.exp(np.clip(design @ self.weights, -30.0, 30.0)))


def _with_bias(features: np.ndarray) -> np.ndarray:
    return np.hstack([features, np.ones((len(features), 1))])
