"""How good a forecast was, once the horizon has passed (DESIGN.md, Forecast definitions).

Per-customer mean absolute error of purchase days, total predicted vs actual, AUC of "at least
one purchase day in the horizon" ranked by the forecast (ties at mid-rank), Spearman, and a
calibration table by decile of the forecast (pure).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Decile:
    decile: int
    customers: int
    predicted: float  # mean predicted purchase days
    actual: float  # mean actual purchase days


@dataclass(frozen=True)
class Quality:
    customers: int
    mae: float
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
        mae=float(np.mean(np.abs(predicted - actual))) if len(actual) else 0.0,
        predicted_total=float(predicted.sum()),
        actual_total=float(actual.sum()),
        auc=auc(predicted, actual > 0, ranks),
        spearman=_spearman(predicted, actual, ranks),
        calibration=calibration(predicted, actual),
    )


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
