"""The hybrid's third ablation round (issue 18): candidate replenishment signals and blend
objectives, measured with the protocol of DESIGN.md on a store holding the UCI file.

    recocamp --settings S db upgrade && recocamp --settings S import purchases \\
        ../shared/data/online-retail/online_retail.csv.gz --format online-retail
    .venv/bin/python benchmarks/rec_ablation.py --database-url sqlite:///shop.db

For each cutoff (2011-06-01 and 2011-09-01 at midnight in ``--zone``, 90 days, k = 10):
the hybrid is tuned exactly as ``recocamp evaluate`` tunes it (``tune_hybrid`` on the window
``[cutoff − 90 d, cutoff)``) and measured on the test window — the ``tuned`` row reproduces
``recocamp evaluate``. Every other row refits only the replenishment blend, on the same
validation window, with extra signals or another objective; the discovery weights and the
repeat boost stay as tuned (the convention of README's earlier ablation rounds). Nothing is
ever fitted on the test window, except in the ``oracle`` row, a diagnostic that fits the
blend's logistic on the test window itself: the most any weighting of the kept signals can
give under that loss. With ``--sweep``: the hybrid tuned end to end under other ALS and
item-kNN settings, ALS confidence scales (Hu et al.'s alpha) and a longer repeat-boost grid,
with the validation recall a choice among them before the cutoff would read. One line per
row: name, then recall / ndcg per cutoff (a README table row).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from recocamp.recommender import evaluate, models, repeat
from recocamp.recommender.matrix import DAY, Lines, TrainingData
from recocamp.recommender.ranking import normalised
from recocamp.recommender.training import load_lines
from recocamp.settings import RecommenderSettings
from recocamp.store.engine import make_engine

CUTOFFS = ("2011-06-01", "2011-09-01")
HORIZON = 90.0
K = 10
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # row, column, signals (pairs × n)
Features = Callable[
    [models.Hybrid, TrainingData, Any, Any, Any], Pairs
]  # orders, last days, scores
Fit = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


class Reblended(models.Hybrid):
    """The tuned hybrid with its own items ordered by another feature set and weights."""

    def __init__(self, tuned: models.Hybrid, features: Features, weights: np.ndarray) -> None:
        super().__init__(tuned.als, tuned.knn, tuned.weights)
        self.__dict__.update({k: v for k, v in tuned.__dict__.items() if k != "weights"})
        self.features, self.blend = features, weights

    def own(
        self, orders: sp.csr_matrix, last_days: sp.csr_matrix, scores: repeat.Collaborative
    ) -> np.ndarray:
        assert self._data is not None
        row, col, signals = self.features(self, self._data, orders, last_days, scores)
        tie_break = 1e-6 * np.asarray(self._popularity.arrays()["scores"], dtype=np.float64)
        blend = signals @ self.blend + tie_break[col]
        low, high = np.full(orders.shape[0], np.inf), np.full(orders.shape[0], -np.inf)
        np.minimum.at(low, row, blend)
        np.maximum.at(high, row, blend)
        span = (high - low)[row]
        safe = np.where(span > 0, span, 1.0)
        out = np.zeros(orders.shape)
        out[row, col] = np.where(span > 0, 0.001 + 0.999 * (blend - low[row]) / safe, 1.0)
        return out


# --- signals ---------------------------------------------------------------------------


def kept(
    h: models.Hybrid,
    data: TrainingData,
    orders: sp.csr_matrix,
    last_days: sp.csr_matrix,
    scores: Any,
) -> Pairs:
    """The seven signals of :data:`repeat.SIGNALS` (the hybrid as it is)."""
    return repeat.pair_signals(orders, last_days, h.items, scores)


def plus(extra: Callable[[models.Hybrid, TrainingData, Pairs, Any], np.ndarray]) -> Features:
    def features(
        h: models.Hybrid, data: TrainingData, orders: Any, last: Any, scores: Any
    ) -> Pairs:
        row, col, signals = kept(h, data, orders, last, scores)
        added = extra(h, data, (row, col, signals), (orders, last))
        return row, col, np.column_stack([signals, added])

    return features


def recency_shape(h: models.Hybrid, data: TrainingData, pairs: Pairs, _: Any) -> np.ndarray:
    """Hinges of log recency at 14, 30, 60, 120 and 240 days, log count squared and
    log count × log recency: a non-linear recency effect and its interaction with count."""
    count, recency = pairs[2][:, 0], pairs[2][:, 1]
    knots = np.log1p([14.0, 30.0, 60.0, 120.0, 240.0])
    hinges = [np.maximum(recency - knot, 0.0) for knot in knots]
    return np.column_stack([count * recency, count**2, *hinges])


def customer_effects(h: models.Hybrid, data: TrainingData, pairs: Pairs, rows: Any) -> np.ndarray:
    """Per customer (constant within a list): log own items, log days since their last
    purchase, log largest count — so the pair weights are not confounded by who buys more."""
    row, orders = pairs[0], sp.csr_matrix(rows[0])
    n = orders.shape[0]
    own = np.asarray((orders > 0).sum(axis=1)).ravel()
    latest = np.full(n, np.inf)
    np.minimum.at(latest, row, pairs[2][:, 1])
    most = np.asarray(orders.max(axis=1).todense()).ravel()
    return np.column_stack([np.log1p(own), latest, np.log1p(most)])[row]


def knn_of_recent(tau: float) -> Callable[..., np.ndarray]:
    def signal(h: models.Hybrid, data: TrainingData, pairs: Pairs, rows: Any) -> np.ndarray:
        """Item-kNN score of the history weighted by exp(−days since bought / tau)."""
        weighted = sp.csr_matrix(rows[1], dtype=np.float64).copy()
        weighted.data = np.exp(-weighted.data / tau)
        scores = normalised((weighted @ h.knn.similarity).toarray())
        return scores[pairs[0], pairs[1]]

    return signal


def knn_without_self(h: models.Hybrid, data: TrainingData, pairs: Pairs, rows: Any) -> np.ndarray:
    """Item-kNN score from the customer's other items only (the diagonal removed)."""
    similarity = h.knn.similarity.tolil(copy=True)
    similarity.setdiag(0)
    confidence = sp.csr_matrix(rows[0], dtype=np.float64).copy()
    confidence.data = 1.0 + np.log1p(confidence.data)
    scores = normalised((confidence @ similarity.tocsr()).toarray())
    return scores[pairs[0], pairs[1]]


def _before_cutoff(data: TrainingData) -> tuple[Lines, np.ndarray]:
    """The lines the data was built from, and each line's column of ``data``."""
    assert data.lines is not None
    lines = data.lines.before(data.cutoff)
    return lines, np.searchsorted(data.items, lines.item_ids[lines.item])


def windowed_propensity(h: models.Hybrid, data: TrainingData, pairs: Pairs, _: Any) -> np.ndarray:
    """Per item: of the customers who owned it 90 days before the cutoff, the share who
    bought it again in those 90 days (smoothed 10 towards the shop's rate): the label's own
    definition of repurchase, where ``propensity`` counts any second order."""
    lines, column = _before_cutoff(data)
    n_items = len(data.items)
    pair = lines.customer.astype(np.int64) * n_items + column
    start = data.cutoff - HORIZON * DAY
    before, within = np.unique(pair[lines.at < start]), np.unique(pair[lines.at >= start])
    owners = np.bincount(before % n_items, minlength=n_items)
    again = np.bincount(np.intersect1d(before, within) % n_items, minlength=n_items)
    prior = again.sum() / max(int(owners.sum()), 1)
    rate: np.ndarray = np.log((again + 10 * prior) / (owners + 10.0))
    return rate[pairs[1]]


def item_due(h: models.Hybrid, data: TrainingData, pairs: Pairs, _: Any) -> np.ndarray:
    """Log recency minus the item's mean log interval between one customer's orders of it
    (smoothed 5 towards the shop's mean): the item is due by its usual rebuy interval."""
    lines, column = _before_cutoff(data)
    ranked = np.lexsort((lines.at, lines.order, column, lines.customer))
    who, item, order, at = (
        lines.customer[ranked],
        column[ranked],
        lines.order[ranked],
        lines.at[ranked],
    )
    first = np.r_[True, (who[1:] != who[:-1]) | (item[1:] != item[:-1]) | (order[1:] != order[:-1])]
    who, item, at = who[first], item[first], at[first]
    same = (who[1:] == who[:-1]) & (item[1:] == item[:-1])
    gaps, gap_item = np.log1p((at[1:] - at[:-1])[same] / DAY), item[1:][same]
    n = np.bincount(gap_item, minlength=len(data.items))
    total = np.bincount(gap_item, gaps, minlength=len(data.items))
    interval = (total + 5 * gaps.mean()) / (n + 5.0)
    due: np.ndarray = pairs[2][:, 1] - interval[pairs[1]]
    return due


def recent_buyers(days: float) -> Callable[..., np.ndarray]:
    def signal(h: models.Hybrid, data: TrainingData, pairs: Pairs, _: Any) -> np.ndarray:
        """Log distinct buyers of the item in the last ``days`` days."""
        assert data.lines is not None
        lines = data.lines.between(data.cutoff - days * DAY, data.cutoff)
        column = np.zeros(len(lines.item_ids), dtype=np.int64)
        column[np.searchsorted(lines.item_ids, data.items)] = np.arange(data.shape[1])
        pair = np.unique(lines.customer * np.int64(data.shape[1]) + column[lines.item])
        buyers = np.bincount(pair % data.shape[1], minlength=data.shape[1])
        return np.log1p(buyers.astype(np.float64))[pairs[1]]

    return signal


# --- objectives ------------------------------------------------------------------------


def pointwise(signals: np.ndarray, label: np.ndarray, row: np.ndarray) -> np.ndarray:
    """The hybrid's own objective: ridge logistic regression (Newton), intercept dropped."""
    return _logistic(np.column_stack([signals, np.ones(len(signals))]), label, free=1)[:-1]


def _logistic(design: np.ndarray, label: np.ndarray, free: int) -> np.ndarray:
    w = np.zeros(design.shape[1])
    ridge = np.eye(len(w))
    if free:
        ridge[-free:, -free:] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ w, -30, 30)))
        hessian = (design * (p * (1 - p))[:, None]).T @ design + ridge + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hessian, design.T @ (p - label) + ridge @ w)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def pairwise(signals: np.ndarray, label: np.ndarray, row: np.ndarray) -> np.ndarray:
    """RankNet on own-item pairs of one customer (bought again − not), 400,000 pairs drawn
    with a fixed seed: a logistic regression of signal differences, no intercept."""
    bought, missed = [], []
    order = np.argsort(row, kind="stable")
    bounds = np.flatnonzero(np.r_[True, row[order][1:] != row[order][:-1], True])
    for start, end in itertools.pairwise(bounds):
        mine = order[start:end]
        a, b = np.meshgrid(mine[label[mine] > 0], mine[label[mine] == 0])
        bought.append(a.ravel())
        missed.append(b.ravel())
    first, second = np.concatenate(bought), np.concatenate(missed)
    if len(first) > 400_000:
        keep = np.random.default_rng(0).choice(len(first), 400_000, replace=False)
        first, second = first[keep], second[keep]
    difference = signals[first] - signals[second]
    design = np.vstack([difference, -difference])
    target = np.r_[np.ones(len(difference)), np.zeros(len(difference))]
    return _logistic(design, target, free=0)


def listwise(signals: np.ndarray, label: np.ndarray, row: np.ndarray) -> np.ndarray:
    """Conditional logit: per customer a softmax over their own items, the log-likelihood of
    those bought again (standardised signals, ridge 1, L-BFGS)."""
    order = np.argsort(row, kind="stable")
    x, y, r = signals[order], label[order], row[order]
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    sizes = np.diff(np.r_[starts, len(r)])
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / scale
    positives = np.add.reduceat(y, starts)  # per customer

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        s = z @ w
        top = np.maximum.reduceat(s, starts)  # per customer, for a stable log-sum-exp
        e = np.exp(s - np.repeat(top, sizes))
        total = np.add.reduceat(e, starts)
        value = float(-(y @ s) + positives @ (np.log(total) + top) + w @ w / 2)
        share = np.repeat(positives / total, sizes) * e  # positives × softmax, per item
        gradient: np.ndarray = -(y @ z) + share @ z + w
        return value, gradient

    found = minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B")
    weights: np.ndarray = np.asarray(found.x) / scale
    return weights


# --- the runs --------------------------------------------------------------------------

ROWS: dict[str, tuple[Features, Fit]] = {
    "pairwise objective (RankNet on own-item pairs)": (kept, pairwise),
    "listwise objective (conditional logit per customer)": (kept, listwise),
    "+ recency hinges, count², count × recency": (plus(recency_shape), pointwise),
    "+ customer effects (own items, last purchase, top count)": (plus(customer_effects), pointwise),
    "+ item's 90-day repurchase rate among its owners": (plus(windowed_propensity), pointwise),
    "+ due by the item's usual interval": (plus(item_due), pointwise),
    "+ item-kNN of the recency-weighted history (14 days)": (plus(knn_of_recent(14.0)), pointwise),
    "+ item-kNN from the customer's other items only": (plus(knn_without_self), pointwise),
    "+ the item's buyers of the last 14 days": (plus(recent_buyers(14.0)), pointwise),
}


def own_labels(
    hybrid: models.Hybrid, split: evaluate.Split, features: Features
) -> tuple[Pairs, np.ndarray]:
    data = split.data
    pairs = features(
        hybrid,
        data,
        data.orders[split.rows],
        data.last_days[split.rows],
        hybrid.collaborative(split.rows),
    )
    label = np.asarray(sp.csr_matrix(split.test)[pairs[0], pairs[1]]).ravel() > 0
    return pairs, label.astype(np.float64)


def run(lines: Lines, cutoff: float, settings: RecommenderSettings) -> dict[str, evaluate.Metrics]:
    validation = evaluate.make_split(lines, cutoff - HORIZON * DAY, HORIZON)
    test = evaluate.make_split(lines, cutoff, HORIZON)
    tuner = models.make("hybrid", settings)
    assert isinstance(tuner, models.Hybrid)
    tuner.fit(validation.data)
    weights = evaluate.tune_fitted(tuner, validation, K)
    tuned = models.make("hybrid", settings, weights)
    assert isinstance(tuned, models.Hybrid)
    tuned.fit(test.data)
    results = {"tuned (recocamp evaluate)": evaluate.evaluate(tuned, test, K, fit=False)}
    for name, (features, fit) in ROWS.items():
        pairs, label = own_labels(tuner, validation, features)
        blend = fit(pairs[2], label, pairs[0])
        results[name] = evaluate.evaluate(Reblended(tuned, features, blend), test, K, fit=False)
    pairs, label = own_labels(tuned, test, kept)  # the diagnostic: fitted on the test window
    oracle = Reblended(tuned, kept, pointwise(pairs[2], label, pairs[0]))
    results["oracle: the blend fitted on the test window"] = evaluate.evaluate(
        oracle, test, K, fit=False
    )
    return results


class ScaledALS(models.ALS):
    """ALS on ``alpha`` × the confidence matrix (Hu et al.'s confidence scale)."""

    def __init__(self, alpha: float, **params: Any) -> None:
        super().__init__(**params)
        self.alpha = alpha

    def fit(self, data: TrainingData) -> None:
        scaled = data.confidence.copy()
        scaled.data = scaled.data * np.float32(self.alpha)
        super().fit(dataclasses.replace(data, confidence=scaled))


def hybrid_of(settings: RecommenderSettings, alpha: float, weights: Any = None) -> models.Hybrid:
    factors = {
        "factors": settings.factors,
        "regularization": settings.regularization,
        "iterations": settings.iterations,
        "random_state": settings.random_state,
        "use_gpu": False,
    }
    knn = models.ItemKNN(settings.knn_weighting, settings.knn_neighbours)
    return models.Hybrid(ScaledALS(alpha, **factors), knn, weights)


SWEEP: dict[str, tuple[dict[str, Any], float, tuple[float, ...]]] = {
    "as configured": ({}, 1.0, evaluate.BOOST_GRID),
    "factors 32": ({"factors": 32}, 1.0, evaluate.BOOST_GRID),
    "factors 128": ({"factors": 128}, 1.0, evaluate.BOOST_GRID),
    "regularization 0.1": ({"regularization": 0.1}, 1.0, evaluate.BOOST_GRID),
    "regularization 1": ({"regularization": 1.0}, 1.0, evaluate.BOOST_GRID),
    "ALS iterations 30": ({"iterations": 30}, 1.0, evaluate.BOOST_GRID),
    "ALS confidence x 5": ({}, 5.0, evaluate.BOOST_GRID),
    "ALS confidence x 20": ({}, 20.0, evaluate.BOOST_GRID),
    "item-kNN 50 neighbours": ({"knn_neighbours": 50}, 1.0, evaluate.BOOST_GRID),
    "item-kNN 100 neighbours": ({"knn_neighbours": 100}, 1.0, evaluate.BOOST_GRID),
    "item-kNN 50 neighbours, ALS confidence x 5": (
        {"knn_neighbours": 50},
        5.0,
        evaluate.BOOST_GRID,
    ),
    "item-kNN 100 neighbours, ALS confidence x 5": (
        {"knn_neighbours": 100},
        5.0,
        evaluate.BOOST_GRID,
    ),
    "item-kNN cosine": ({"knn_weighting": "cosine"}, 1.0, evaluate.BOOST_GRID),
    "boost grid 0 … 1.6 in 7 steps": ({}, 1.0, (0.0, 0.25, 0.5, 0.75, 1.0, 1.3, 1.6)),
    "boost grid in 7 steps, ALS confidence x 5": ({}, 5.0, (0.0, 0.25, 0.5, 0.75, 1.0, 1.3, 1.6)),
}


def sweep(lines: Lines, cutoff: float, base: RecommenderSettings) -> dict[str, str]:
    """The hybrid tuned end to end (as ``recocamp evaluate`` does) under other ALS / item-kNN
    settings or boost grids: test recall / ndcg, and the validation recall a choice among
    them on the window before the cutoff would read (blend fitted on that window)."""
    validation = evaluate.make_split(lines, cutoff - HORIZON * DAY, HORIZON)
    test = evaluate.make_split(lines, cutoff, HORIZON)
    found = {}
    default_grid = evaluate.BOOST_GRID
    for name, (update, alpha, grid) in SWEEP.items():
        settings = base.model_copy(update=update)
        evaluate.BOOST_GRID = grid  # type: ignore[assignment]  # a longer grid, measured
        tuner = hybrid_of(settings, alpha)
        tuner.fit(validation.data)
        weights = evaluate.tune_fitted(tuner, validation, K)
        evaluate.BOOST_GRID = default_grid
        tuner.weights = weights  # the choice reads the tuned hybrid on its own window
        chosen_on = evaluate.evaluate(tuner, validation, K, fit=False)
        final = evaluate.evaluate(hybrid_of(settings, alpha, weights), test, K)
        found[name] = (
            f"{final.recall:.4f} / {final.ndcg:.4f} (new {final.recall_new:.4f}; "
            f"validation {chosen_on.recall:.4f})"
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--zone", default="Europe/Berlin")
    parser.add_argument("--sweep", action="store_true", help="ALS / item-kNN settings instead")
    args = parser.parse_args()
    engine = make_engine(args.database_url)
    lines = load_lines(engine)
    engine.dispose()
    settings = RecommenderSettings()
    table: dict[str, list[str]] = {}
    for day in CUTOFFS:
        cutoff = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(args.zone)).timestamp()
        if args.sweep:
            for name, cell in sweep(lines, cutoff, settings).items():
                table.setdefault(name, []).append(cell)
            continue
        for name, metrics in run(lines, cutoff, settings).items():
            table.setdefault(name, []).append(f"{metrics.recall:.4f} / {metrics.ndcg:.4f}")
    for name, cells in table.items():
        print(f"| {name} | {' | '.join(cells)} |", flush=True)
    # the last line, one JSON object (as every benchmark's): each row's cells per cutoff
    rows = {name: dict(zip(CUTOFFS, cells, strict=False)) for name, cells in table.items()}
    print(json.dumps({"benchmark": "rec_ablation", "sweep": args.sweep, "rows": rows}))


if __name__ == "__main__":
    main()
