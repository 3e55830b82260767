"""The hybrid's ablation rounds (issue 18): candidate replenishment signals and blend
objectives, measured with the protocol of DESIGN.md on a store holding the UCI file.

    recocamp --settings S db upgrade && recocamp --settings S import purchases \\
        ../shared/data/online-retail/online_retail.csv.gz --format online-retail
    .venv/bin/python benchmarks/rec_ablation.py --database-url sqlite:///shop.db

For each cutoff (2011-06-01 and 2011-09-01 at midnight in ``--zone``, 90 days, k = 10;
``--cutoff`` for one of them): the hybrid is tuned exactly as ``recocamp evaluate`` tunes it
(``tune_hybrid`` on the window ``[cutoff − 90 d, cutoff)``) and measured on the test window —
the ``tuned`` row reproduces ``recocamp evaluate``. Every other row refits only the
replenishment blend, on the same validation window, with extra signals or another objective;
the discovery weights and the repeat boost stay as tuned (the convention of README's earlier
ablation rounds). Nothing is ever fitted on the test window, except in the ``oracle`` row, a
diagnostic that fits the blend's logistic on the test window itself: the most any weighting
of the kept signals can give under that loss.

``--round 4`` (the default) reads what the training lines leave out: each line's quantity and
unit price (``training_lines.training_line_amounts``, aligned with the lines) and the catalogue's
titles, for quantity and spend signals, title (TF-IDF) similarity to the customer's items,
presence in the last baskets (ReCANet), a small network instead of the logistic, and the
title similarity added to the discovery score (its weight, then the boost, chosen on the
validation window). ``--round 5`` tries EASE (Steck 2019: ``B = I − P·diag(1/diag(P))``,
``P = (XᵀX + λI)⁻¹``, ``diag(B) = 0``) on who bought what, fed binary rows or TIFU-KNN's
time-decayed vectors: alone, (a) stacked in the replenishment blend, (b) in the discovery
score of items never bought (its share, then the boost; once more with every discovery
weight searched with it), (c) both; λ, the input and the share chosen on the validation
window. ``--round 3`` runs the third round's rows. With ``--sweep``: the hybrid
tuned end to end under other ALS and item-kNN settings, ALS confidence scales (Hu et al.'s
alpha) and a longer repeat-boost grid, with the validation recall a choice among them before
the cutoff would read. One line per row: name, then per cutoff recall / ndcg, the discover
list's recall_new and the paired bootstrap 95 % interval of the per-customer recall
difference against the tuned row (stderr: the share of repeat and new test items, recall by
the customer's number of test items).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from recocamp.recommender import evaluate, models, repeat, tifu_knn
from recocamp.recommender.matrix import DAY, Lines, TrainingData
from recocamp.recommender.ranking import normalised
from recocamp.recommender.training import load_lines
from recocamp.settings import RecommenderSettings
from recocamp.store import queries, training_lines
from recocamp.store.engine import make_engine

CUTOFFS = ("2011-06-01", "2011-09-01")
HORIZON = 90.0
K = 10
Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # row, column, signals (pairs × n)
Features = Callable[
    [models.Hybrid, TrainingData, np.ndarray, Any, Any, Any], Pairs
]  # rows of data, their orders, last days, scores
Fit = Callable[[np.ndarray, np.ndarray, np.ndarray], Any]  # weights, or a scoring function


class Reblended(models.Hybrid):
    """The tuned hybrid with its own items ordered by another feature set and weights."""

    def __init__(self, tuned: models.Hybrid, features: Features, weights: Any) -> None:
        super().__init__(tuned.als, tuned.knn, tuned.weights)
        self.__dict__.update({k: v for k, v in tuned.__dict__.items() if k != "weights"})
        self.features, self.blend = features, weights
        self.rows = np.zeros(0, dtype=np.int64)

    def parts(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        self.rows = rows  # the rows own() is asked about, for signals kept per data row
        return super().parts(rows)

    def own(
        self, orders: sp.csr_matrix, last_days: sp.csr_matrix, scores: repeat.Collaborative
    ) -> np.ndarray:
        assert self._data is not None
        row, col, signals = self.features(self, self._data, self.rows, orders, last_days, scores)
        tie_break = 1e-6 * np.asarray(self._popularity.arrays()["scores"], dtype=np.float64)
        scored = self.blend(signals) if callable(self.blend) else signals @ self.blend
        blend = scored + tie_break[col]
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
    rows: np.ndarray,
    orders: sp.csr_matrix,
    last_days: sp.csr_matrix,
    scores: Any,
) -> Pairs:
    """The seven signals of :data:`repeat.SIGNALS` (the hybrid as it is)."""
    return repeat.pair_signals(orders, last_days, h.items, scores)


def plus(extra: Callable[[models.Hybrid, TrainingData, Pairs, Any], np.ndarray]) -> Features:
    def features(
        h: models.Hybrid, data: TrainingData, rows: np.ndarray, orders: Any, last: Any, scores: Any
    ) -> Pairs:
        row, col, signals = kept(h, data, rows, orders, last, scores)
        added = extra(h, data, (row, col, signals), (orders, last, rows))
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


# --- fourth round: information the hybrid does not read yet (issue 18) ------------------


@dataclasses.dataclass
class Extra:
    """What the store holds beyond the training lines: each line's quantity and unit price
    (aligned with the lines, ``training_lines.training_line_amounts``) and each item's title."""

    quantity: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    price: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    titles: dict[str, str] = dataclasses.field(default_factory=dict)


EXTRA = Extra()
_CACHE: dict[tuple[str, int], Any] = {}


def _cached(name: str, data: TrainingData, build: Callable[[], Any]) -> Any:
    """A per-data matrix built once (evaluation asks for the signals batch by batch)."""
    key = (name, id(data))  # run() clears the cache: an id is reused once its data is gone
    if key not in _CACHE:
        _CACHE[key] = build()
    return _CACHE[key]


def _coded_lines(data: TrainingData) -> tuple[np.ndarray, np.ndarray, np.ndarray, Lines]:
    """The lines before the cutoff: their data row, data column, index into the full lines."""
    assert data.lines is not None
    lines = data.lines
    index = np.flatnonzero(lines.at < data.cutoff)
    row_of = np.full(len(lines.customer_ids), -1, dtype=np.int64)
    row_of[np.searchsorted(lines.customer_ids, data.customers)] = np.arange(data.shape[0])
    col_of = np.full(len(lines.item_ids), -1, dtype=np.int64)
    col_of[np.searchsorted(lines.item_ids, data.items)] = np.arange(data.shape[1])
    return row_of[lines.customer[index]], col_of[lines.item[index]], index, lines


def _pair_sum(data: TrainingData, row: np.ndarray, col: np.ndarray, values: np.ndarray) -> Any:
    matrix = sp.csr_matrix((values, (row, col)), shape=data.shape, dtype=np.float64)
    matrix.sum_duplicates()
    return matrix


def _at_pairs(matrix: Any, pairs: Pairs, rows: np.ndarray) -> np.ndarray:
    return np.asarray(matrix[rows[pairs[0]], pairs[1]]).ravel()


def _amounts(data: TrainingData) -> dict[str, Any]:
    def build() -> dict[str, Any]:
        row, col, index, _ = _coded_lines(data)
        quantity, spend = EXTRA.quantity[index], EXTRA.quantity[index] * EXTRA.price[index]
        units = _pair_sum(data, row, col, quantity)
        lines = _pair_sum(data, row, col, np.ones(len(row)))
        money = _pair_sum(data, row, col, spend)
        total = np.bincount(row, spend, minlength=data.shape[0])
        # the item's usual units per line: the median over all its lines
        order = np.lexsort((quantity, col))
        sorted_col, sorted_q = col[order], quantity[order]
        starts = np.flatnonzero(np.r_[True, sorted_col[1:] != sorted_col[:-1]])
        ends = np.r_[starts[1:], len(order)]
        usual = np.ones(data.shape[1])
        usual[sorted_col[starts]] = sorted_q[(starts + ends - 1) // 2]
        return {"units": units, "lines": lines, "money": money, "total": total, "usual": usual}

    found: dict[str, Any] = _cached("amounts", data, build)
    return found


def quantities(h: models.Hybrid, data: TrainingData, pairs: Pairs, rows: Any) -> np.ndarray:
    """Log total units of the item the customer bought, and log mean units per order."""
    amounts, absolute = _amounts(data), rows[2]
    units = _at_pairs(amounts["units"], pairs, absolute)
    per_order = units / np.maximum(np.expm1(pairs[2][:, 0]), 1.0)
    return np.column_stack([np.log1p(units), np.log1p(per_order)])


def relative_quantity(h: models.Hybrid, data: TrainingData, pairs: Pairs, rows: Any) -> np.ndarray:
    """Log of the customer's mean units per line of the item over the item's median line:
    a customer who buys it by the box (a reseller's restock) against one who tried one."""
    amounts, absolute = _amounts(data), rows[2]
    units = _at_pairs(amounts["units"], pairs, absolute)
    lines = np.maximum(_at_pairs(amounts["lines"], pairs, absolute), 1.0)
    ratio: np.ndarray = np.log(np.maximum(units / lines, 1e-3) / amounts["usual"][pairs[1]])
    return ratio


def spend_share(h: models.Hybrid, data: TrainingData, pairs: Pairs, rows: Any) -> np.ndarray:
    """The item's share of the customer's spend before the cutoff (log, floored at 1e-4)."""
    amounts, absolute = _amounts(data), rows[2]
    money = _at_pairs(amounts["money"], pairs, absolute)
    total = np.maximum(amounts["total"][absolute[pairs[0]]], 1e-9)
    share: np.ndarray = np.log(np.maximum(money / total, 1e-4))
    return share


def all_amounts(h: models.Hybrid, data: TrainingData, pairs: Pairs, rows: Any) -> np.ndarray:
    return np.column_stack(
        [
            quantities(h, data, pairs, rows),
            relative_quantity(h, data, pairs, rows),
            spend_share(h, data, pairs, rows),
        ]
    )


def title_similarity(data: TrainingData) -> Any:
    """Items × items cosine of TF-IDF vectors of the catalogue titles' words (the diagonal
    removed): "LUNCH BAG RED RETROSPOT" is close to "LUNCH BAG PINK POLKADOT"."""

    def build() -> Any:
        words = [EXTRA.titles.get(str(item), "").upper().split() for item in data.items]
        vocabulary = {w: i for i, w in enumerate(sorted({w for ws in words for w in ws}))}
        row = np.repeat(np.arange(len(words)), [len(set(ws)) for ws in words])
        col = np.array([vocabulary[w] for ws in words for w in sorted(set(ws))], dtype=np.int64)
        tf = sp.csr_matrix(
            (np.ones(len(row)), (row, col)), shape=(len(words), max(len(vocabulary), 1))
        )
        df = np.asarray((tf > 0).sum(axis=0)).ravel()
        tfidf = tf @ sp.diags(np.log((1 + len(words)) / (1 + df)) + 1.0)
        norms = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel()) + 1e-12
        unit = sp.diags(1.0 / norms) @ tfidf
        similarity = (unit @ unit.T).tocsr()
        similarity.setdiag(0.0)
        similarity.eliminate_zeros()
        return similarity

    return _cached("titles", data, build)


def content_scores(data: TrainingData, rows: np.ndarray, tau: float | None) -> np.ndarray:
    """Per row, the title similarity of every item to the customer's items (weighted by
    ``1 + ln(1 + orders)``, or by ``exp(−days since bought / tau)``), scaled per row."""
    if tau is None:
        history = data.confidence[rows].astype(np.float64)
    else:
        history = sp.csr_matrix(data.last_days[rows], dtype=np.float64).copy()
        history.data = np.exp(-history.data / tau)
    return normalised((history @ title_similarity(data)).toarray())


def content_similarity(tau: float | None) -> Callable[..., np.ndarray]:
    def signal(h: models.Hybrid, data: TrainingData, pairs: Pairs, rows: Any) -> np.ndarray:
        """Title similarity of the own item to the customer's other items."""
        scores = content_scores(data, rows[2], tau)
        picked: np.ndarray = scores[pairs[0], pairs[1]]
        return picked

    return signal


def last_baskets(n: int, *, with_total: bool = False) -> Callable[..., np.ndarray]:
    def signal(h: models.Hybrid, data: TrainingData, pairs: Pairs, rows: Any) -> np.ndarray:
        """ReCANet's view: whether the item is in each of the customer's last ``n`` baskets
        (an order is a basket; n binary columns, newest first), and optionally the log
        number of the customer's baskets."""

        def build() -> tuple[list[Any], np.ndarray]:
            row, col, index, lines = _coded_lines(data)
            order, at = lines.order[index], lines.at[index]
            # each customer's baskets ranked newest first (by the basket's time, then code)
            baskets = np.unique(np.stack([row, order]), axis=1)
            first_at = np.full(int(order.max()) + 1 if len(order) else 1, np.inf)
            np.minimum.at(first_at, order, at)
            ranked = np.lexsort((-baskets[1], -first_at[baskets[1]], baskets[0]))
            who, which = baskets[0][ranked], baskets[1][ranked]
            start = np.r_[0, np.flatnonzero(who[1:] != who[:-1]) + 1]
            size = np.diff(np.r_[start, len(who)])
            position = np.arange(len(who)) - np.repeat(start, size)
            rank = np.full(len(first_at), -1, dtype=np.int64)
            rank[which] = position
            line_rank = rank[order]
            present = []
            for k in range(n):
                mine = line_rank == k
                matrix = _pair_sum(data, row[mine], col[mine], np.ones(int(mine.sum())))
                matrix.data[:] = 1.0
                present.append(matrix)
            count = np.zeros(data.shape[0])
            count[who[start]] = size
            return present, count

        present, count = _cached("baskets", data, build)
        absolute = rows[2]
        columns = [_at_pairs(m, pairs, absolute) for m in present]
        if with_total:
            columns.append(np.log1p(count[absolute[pairs[0]]]))
        return np.column_stack(columns)

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


def network(signals: np.ndarray, label: np.ndarray, row: np.ndarray) -> Callable[..., np.ndarray]:
    """One hidden layer of 16 tanh units on the standardised signals, log loss with a small
    ridge, L-BFGS (a fixed seed): interactions a linear blend cannot express (ReCANet's
    point, without its recurrent part). Returns the scoring function."""
    mean, scale = signals.mean(axis=0), signals.std(axis=0) + 1e-9
    z, y, hidden = (signals - mean) / scale, label, 16
    n, d = z.shape
    shapes = [(d, hidden), (hidden,), (hidden,), (1,)]
    sizes = [int(np.prod(shape)) for shape in shapes]

    def unpack(theta: np.ndarray) -> list[np.ndarray]:
        parts = np.split(theta, np.cumsum(sizes)[:-1])
        return [part.reshape(shape) for part, shape in zip(parts, shapes, strict=True)]

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w1, b1, w2, b2 = unpack(theta)
        h = np.tanh(z @ w1 + b1)
        logit = h @ w2 + b2[0]
        p = 1.0 / (1.0 + np.exp(-np.clip(logit, -30, 30)))
        value = -np.mean(y * np.log(p + 1e-12) + (1 - y) * np.log(1 - p + 1e-12))
        value += 1e-3 * (np.sum(w1**2) + np.sum(w2**2))
        g = (p - y) / n
        gw2 = h.T @ g + 2e-3 * w2
        gb2 = np.array([g.sum()])
        gh = np.outer(g, w2) * (1 - h**2)
        gw1 = z.T @ gh + 2e-3 * w1
        gb1 = gh.sum(axis=0)
        return float(value), np.concatenate([gw1.ravel(), gb1, gw2, gb2])

    start = np.random.default_rng(0).normal(0, 0.1, sum(sizes))
    found = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": 500})
    w1, b1, w2, b2 = unpack(np.asarray(found.x))

    def score(x: np.ndarray) -> np.ndarray:
        logits: np.ndarray = np.tanh(((x - mean) / scale) @ w1 + b1) @ w2 + b2[0]
        return logits

    return score


def everything(h: models.Hybrid, data: TrainingData, pairs: Pairs, rows: Any) -> np.ndarray:
    return np.column_stack(
        [
            all_amounts(h, data, pairs, rows),
            content_similarity(None)(h, data, pairs, rows),
            last_baskets(5, with_total=True)(h, data, pairs, rows),
        ]
    )


# --- fifth round: EASE (Steck 2019, "Embarrassingly Shallow Autoencoders") -------------

EASE_GRID = (50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0)  # λ, chosen on the validation window
EASE_INPUTS = ("binary", "decayed")  # what is fed to B: who bought what, or TIFU's vector
SHARE_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)  # EASE's share of the discovery score


def ease_spectrum(data: TrainingData) -> tuple[np.ndarray, np.ndarray]:
    """The eigen-decomposition of the item Gram matrix XᵀX (X: who bought what, binary),
    once per data: every λ of the grid is then one matrix product, not an inverse."""

    def build() -> tuple[np.ndarray, np.ndarray]:
        x = sp.csr_matrix(data.orders > 0, dtype=np.float64)
        gram = (x.T @ x).toarray()
        values, vectors = np.linalg.eigh(gram)
        return values, vectors

    found: tuple[np.ndarray, np.ndarray] = _cached("ease_spectrum", data, build)
    return found


def ease_weights(data: TrainingData, lam: float) -> np.ndarray:
    """EASE's closed form: ``P = (XᵀX + λI)⁻¹``, ``B = I − P·diag(1/diag(P))`` — so
    ``diag(B) = 0``: an item is predicted from the customer's other items only, by a
    ridge regression of every item on all others at once (items × items, dense)."""

    def build() -> np.ndarray:
        values, vectors = ease_spectrum(data)
        p = (vectors / (values + lam)) @ vectors.T
        b: np.ndarray = p / -np.diag(p)  # column j divided by −P_jj
        np.fill_diagonal(b, 0.0)
        return b.astype(np.float32)

    found: np.ndarray = _cached(f"ease_{lam:g}", data, build)
    return found


def ease_input(data: TrainingData, kind: str) -> sp.csr_matrix:
    """The customer vectors fed to B: binary ownership, or TIFU-KNN's time-decayed basket
    frequencies (groups of 3 baskets, group decay 0.6: the reference parameters)."""

    def build() -> sp.csr_matrix:
        if kind == "binary":
            return sp.csr_matrix(data.orders > 0, dtype=np.float32)
        p = tifu_knn.TifuParams()
        vectors = tifu_knn.customer_vectors(data, p.group_size, p.within_decay, p.group_decay)
        return sp.csr_matrix(vectors, dtype=np.float32)

    found: sp.csr_matrix = _cached(f"ease_input_{kind}", data, build)
    return found


@dataclasses.dataclass(frozen=True)
class Ease:
    lam: float
    kind: str

    def scores(self, data: TrainingData, rows: np.ndarray) -> np.ndarray:
        """Rows × items EASE scores of training rows, scaled per row to [0, 1]."""
        raw = ease_input(data, self.kind)[rows] @ ease_weights(data, self.lam)
        return normalised(np.asarray(raw, dtype=np.float64))

    def __str__(self) -> str:
        return f"λ {self.lam:g}, {self.kind} input"


class EaseAlone:
    """EASE on its own (a :class:`Recommender` for :func:`evaluate.evaluate`)."""

    name = "ease"

    def __init__(self, ease: Ease) -> None:
        self.ease = ease
        self._data: TrainingData | None = None

    def fit(self, data: TrainingData) -> None:
        self._data = data

    def score(self, rows: np.ndarray) -> np.ndarray:
        assert self._data is not None
        return self.ease.scores(self._data, rows)

    def params(self) -> dict[str, Any]:
        return {"lam": self.ease.lam, "kind": self.ease.kind}

    def arrays(self) -> dict[str, np.ndarray]:
        """Nothing to save: the weights are the data's closed form (``ease_weights``)."""
        return {}

    def restore(self, data: TrainingData, arrays: dict[str, np.ndarray]) -> None:
        self._data = data


def ease_signal(ease: Ease) -> Callable[..., np.ndarray]:
    def signal(h: models.Hybrid, data: TrainingData, pairs: Pairs, rows: Any) -> np.ndarray:
        """EASE's score of the own item from the customer's other items (stacking)."""
        picked: np.ndarray = ease.scores(data, rows[2])[pairs[0], pairs[1]]
        return picked

    return signal


class Eased(Reblended):
    """The tuned hybrid, its own items ordered by ``features`` and ``blend``, EASE's score
    given ``share`` of the discovery score of items never bought (the rest the ALS / kNN
    mix as tuned), own items lifted by ``boost``."""

    def __init__(
        self,
        tuned: models.Hybrid,
        features: Features,
        blend: Any,
        ease: Ease | None,
        share: float,
        weights: models.HybridWeights,
    ) -> None:
        super().__init__(tuned, features, blend)
        self.ease, self.share, self.weights = ease, share, weights

    def score(self, rows: np.ndarray) -> np.ndarray:
        assert self._data is not None
        parts = self.parts(rows)
        if self.ease is None or self.share == 0:
            return models.combine(parts, self.weights)
        return _discovery_with(parts, self.weights, self.share, self.ease.scores(self._data, rows))


def _discovery_with(
    parts: dict[str, np.ndarray], w: models.HybridWeights, share: float, ease: np.ndarray
) -> np.ndarray:
    collaborative = w.als * parts["als"] + (1 - w.als) * parts["knn"]
    discover = (
        (1 - share) * collaborative
        + share * ease
        + w.popularity * parts["popularity"]
        + w.new_arrivals * parts["new"]
    )
    scored: np.ndarray = np.where(parts["own"] > 0, w.repeat_boost + parts["own"], discover)
    return scored


def _recall(scores: np.ndarray, split: evaluate.Split, *, new_only: bool) -> float:
    """Validation recall@K of dense scores (own items excluded with ``new_only``: the
    discover list's recall_new), ties by item index."""
    truth = split.test
    if new_only:
        owned = split.data.orders[split.rows] > 0
        scores = np.where(owned.toarray(), -np.inf, scores)
        truth = (truth - truth.multiply(owned)).tocsr()
    scores = scores - np.arange(scores.shape[1]) * 1e-12
    top = np.argpartition(-scores, K - 1, axis=1)[:, :K]
    hits = np.take_along_axis(truth.toarray(), top, axis=1)
    hits = np.where(np.take_along_axis(scores, top, axis=1) > -np.inf, hits, 0.0)
    relevant = np.asarray(truth.sum(axis=1)).ravel() + split.unknown
    recall = evaluate.ranking_metrics(hits, relevant, K)[0]
    return float(recall[relevant > 0].mean())


def tune_ease_discovery(
    tuner: models.Hybrid, validation: evaluate.Split, features: Features, blend: Any
) -> tuple[Ease, float, models.HybridWeights]:
    """On the validation window: (λ, input, share) with the best discover recall_new, the
    other discovery weights as tuned, then the boost (``tune_hybrid``'s grid over the
    discovery ceiling) for recall."""
    w = tuner.weights
    parts = Eased(tuner, features, blend, None, 0.0, w).parts(validation.rows)
    found = []
    for lam, kind in itertools.product(EASE_GRID, EASE_INPUTS):
        ease = Ease(lam, kind)
        scores = ease.scores(validation.data, validation.rows)
        for share in SHARE_GRID:  # 0: no EASE, where the validation window says so
            recall = _recall(_discovery_with(parts, w, share, scores), validation, new_only=True)
            found.append((recall, -share, -lam, kind, ease))
    recall, minus_share, _, _, ease = max(found)
    base = _recall(_discovery_with(parts, w, 0.0, parts["knn"]), validation, new_only=True)
    print(
        f"  discovery: validation recall_new {base:.4f} → {recall:.4f} ({ease}, "
        f"share {-minus_share:g})",
        file=sys.stderr,
    )
    scores = ease.scores(validation.data, validation.rows)
    return ease, -minus_share, _boosted(parts, w, -minus_share, scores, validation)


def _boosted(
    parts: dict[str, np.ndarray],
    w: models.HybridWeights,
    share: float,
    scores: np.ndarray,
    validation: evaluate.Split,
) -> models.HybridWeights:
    """``w`` with the repeat boost of the best validation recall (``tune_hybrid``'s grid)."""
    ceiling = 1.0 + w.popularity + w.new_arrivals
    boosts = []
    for b in evaluate.BOOST_GRID:
        boosted = dataclasses.replace(w, repeat_boost=b * ceiling)
        mixed = _discovery_with(parts, boosted, share, scores)
        boosts.append((_recall(mixed, validation, new_only=False), b))
    return dataclasses.replace(w, repeat_boost=max(boosts)[1] * ceiling)


def retune_discovery(
    tuner: models.Hybrid, validation: evaluate.Split, ease: Ease
) -> tuple[float, models.HybridWeights]:
    """On the validation window: EASE's share and every discovery weight of
    ``evaluate.DISCOVER_GRID`` searched together for discover recall_new (ties: the smaller
    share and bonuses), then the boost for recall — the discovery weights tuned for ALS and
    kNN need not suit EASE."""
    kept_own = np.asarray(tuner.weights.own)
    parts = Eased(tuner, kept, kept_own, None, 0.0, tuner.weights).parts(validation.rows)
    scores = ease.scores(validation.data, validation.rows)
    found = []
    for share, (als, popularity, new) in itertools.product(
        SHARE_GRID, itertools.product(*evaluate.DISCOVER_GRID.values())
    ):
        w = dataclasses.replace(tuner.weights, als=als, popularity=popularity, new_arrivals=new)
        recall = _recall(_discovery_with(parts, w, share, scores), validation, new_only=True)
        found.append((recall, -share, -new, -popularity, -als, w))
    recall, minus_share, *_, w = max(found, key=lambda entry: entry[:5])
    print(
        f"  discovery retuned: validation recall_new {recall:.4f} (share {-minus_share:g}, "
        f"als {w.als:g}, popularity {w.popularity:g}, new {w.new_arrivals:g})",
        file=sys.stderr,
    )
    return -minus_share, _boosted(parts, w, -minus_share, scores, validation)


def tune_ease_blend(tuner: models.Hybrid, validation: evaluate.Split) -> tuple[Ease, Features, Any]:
    """On the validation window: the blend refitted with EASE's own-item score for each
    (λ, input); the one whose refitted hybrid reads the best validation recall."""
    found = []
    for lam, kind in itertools.product(EASE_GRID, EASE_INPUTS):
        ease = Ease(lam, kind)
        features = plus(ease_signal(ease))
        pairs, label = own_labels(tuner, validation, features)
        blend = pointwise(pairs[2], label, pairs[0])
        model = Reblended(tuner, features, blend)
        recall = evaluate.evaluate(model, validation, K, fit=False).recall
        found.append((recall, -lam, kind, ease, features, blend))
    recall, _, _, ease, features, blend = max(found, key=lambda entry: entry[:3])
    print(
        f"  blend: validation recall {recall:.4f} ({ease}, weight {blend[-1]:+.3f})",
        file=sys.stderr,
    )
    return ease, features, blend


CHOSEN: dict[str, str] = {}  # row → what the validation window chose (one cutoff's run)


def fifth_round(
    tuner: models.Hybrid,
    tuned: models.Hybrid,
    validation: evaluate.Split,
    test: evaluate.Split,
) -> dict[str, Measured]:
    """EASE (a) stacked in the replenishment blend, (b) in the discovery score of items
    never bought, (c) both — every choice on the validation window — and alone."""
    results: dict[str, Measured] = {}

    def row(name: str, chosen: str, measured: Measured) -> None:
        results[name], CHOSEN[name] = measured, chosen

    for kind in EASE_INPUTS:  # EASE alone, λ for its validation recall
        best = max(
            (evaluate.evaluate(EaseAlone(Ease(lam, kind)), validation, K).recall, -lam)
            for lam in EASE_GRID
        )
        ease = Ease(-best[1], kind)
        row(f"EASE alone, {kind} input", str(ease), measure_any(EaseAlone(ease), test))
    kept_own = np.asarray(tuned.weights.own)
    ease, features, blend = tune_ease_blend(tuner, validation)
    model = Reblended(tuned, features, blend)
    row("(a) + EASE in the replenishment blend", str(ease), measure(model, test, K, fit=False))
    ease_b, share, weights = tune_ease_discovery(tuner, validation, kept, kept_own)
    model = Eased(tuned, kept, kept_own, ease_b, share, weights)
    chosen = f"{ease_b}, share {share:g}"
    row("(b) EASE in the discovery score", chosen, measure(model, test, K, fit=False))
    share, weights = retune_discovery(tuner, validation, ease_b)
    model = Eased(tuned, kept, kept_own, ease_b, share, weights)
    chosen = f"{ease_b}, share {share:g}"
    row("(b) with every discovery weight retuned", chosen, measure(model, test, K, fit=False))
    ease_c, share, weights = tune_ease_discovery(tuner, validation, features, blend)
    model = Eased(tuned, features, blend, ease_c, share, weights)
    row("(c) both", f"{ease} / {ease_c}, share {share:g}", measure(model, test, K, fit=False))
    return results


def measure_any(model: Any, test: evaluate.Split) -> Measured:
    metrics, per = evaluate.evaluate_per_customer(model, test, K, fit=True)
    return metrics, per["recall"]


# --- the runs --------------------------------------------------------------------------

THIRD_ROUND: dict[str, tuple[Features, Fit]] = {
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


FOURTH_ROUND: dict[str, tuple[Features, Fit]] = {
    "+ quantity: log total and mean units per order": (plus(quantities), pointwise),
    "+ units per line against the item's usual line": (plus(relative_quantity), pointwise),
    "+ the item's share of the customer's spend": (plus(spend_share), pointwise),
    "+ all three quantity and spend signals": (plus(all_amounts), pointwise),
    "+ description TF-IDF similarity to the customer's other items": (
        plus(content_similarity(None)),
        pointwise,
    ),
    "+ description similarity to the recent items (exp(-days / 30))": (
        plus(content_similarity(30.0)),
        pointwise,
    ),
    "+ presence in each of the last 5 baskets (ReCANet)": (plus(last_baskets(5)), pointwise),
    "+ presence in the last 5 baskets and the number of baskets": (
        plus(last_baskets(5, with_total=True)),
        pointwise,
    ),
    "+ all of the above (quantities, spend, description, last 5 baskets)": (
        plus(everything),
        pointwise,
    ),
    "the kept signals, a one-hidden-layer network instead of the logistic": (kept, network),
    "all of the above, a one-hidden-layer network": (plus(everything), network),
}
ROWS: dict[str, tuple[Features, Fit]] = {}


def own_labels(
    hybrid: models.Hybrid, split: evaluate.Split, features: Features
) -> tuple[Pairs, np.ndarray]:
    data = split.data
    pairs = features(
        hybrid,
        data,
        split.rows,
        data.orders[split.rows],
        data.last_days[split.rows],
        hybrid.collaborative(split.rows),
    )
    label = np.asarray(sp.csr_matrix(split.test)[pairs[0], pairs[1]]).ravel() > 0
    return pairs, label.astype(np.float64)


Measured = tuple[evaluate.Metrics, np.ndarray]  # the metrics, each customer's recall


def measure(model: models.Hybrid, test: evaluate.Split, k: int, *, fit: bool) -> Measured:
    metrics, per = evaluate.evaluate_per_customer(model, test, k, fit=fit)
    return metrics, per["recall"]


def run(
    lines: Lines, cutoff: float, settings: RecommenderSettings, *, round_: int
) -> dict[str, Measured]:
    _CACHE.clear()
    validation = evaluate.make_split(lines, cutoff - HORIZON * DAY, HORIZON)
    test = evaluate.make_split(lines, cutoff, HORIZON)
    tuner = models.make("hybrid", settings)
    assert isinstance(tuner, models.Hybrid)
    tuner.fit(validation.data)
    weights = evaluate.tune_fitted(tuner, validation, K)
    tuned = models.make("hybrid", settings, weights)
    assert isinstance(tuned, models.Hybrid)
    tuned.fit(test.data)
    results = {"tuned (recocamp evaluate)": measure(tuned, test, K, fit=False)}
    describe(tuned, test)
    for name, (features, fit) in ROWS.items():
        pairs, label = own_labels(tuner, validation, features)
        blend = fit(pairs[2], label, pairs[0])
        results[name] = measure(Reblended(tuned, features, blend), test, K, fit=False)
    if round_ == 5:
        tuner.weights = weights  # the choices read the tuned hybrid on its own window
        results |= fifth_round(tuner, tuned, validation, test)
    for tau in (None, 30.0) if round_ == 4 else ():
        name = "discovery + description similarity" + (f" (exp(-days / {tau:g}))" if tau else "")
        content, boost = tune_content(tuner, weights, validation, tau)
        model = Discovered(tuned, weights, tau, content, boost)
        print(f"{name}: weight {content:g}, boost {boost:g} (validation)", file=sys.stderr)
        results[name] = measure(model, test, K, fit=False)
    pairs, label = own_labels(tuned, test, kept)  # the diagnostic: fitted on the test window
    oracle = Reblended(tuned, kept, pointwise(pairs[2], label, pairs[0]))
    results["oracle: the blend fitted on the test window"] = measure(oracle, test, K, fit=False)
    return results


class Discovered(models.Hybrid):
    """The tuned hybrid with the title similarity to the customer's items added to the
    discovery score of items they never bought (siblings: another colour of the lunch bag)."""

    def __init__(
        self,
        fitted: models.Hybrid,
        weights: models.HybridWeights,
        tau: float | None,
        content: float,
        boost: float,
    ) -> None:
        super().__init__(fitted.als, fitted.knn, weights)
        self.__dict__.update({k: v for k, v in fitted.__dict__.items() if k != "weights"})
        self.weights = dataclasses.replace(weights, repeat_boost=boost)
        self.tau, self.content = tau, content

    def score(self, rows: np.ndarray) -> np.ndarray:
        assert self._data is not None
        parts = self.parts(rows)
        base = models.combine(parts, self.weights)
        if self.content == 0:
            return base
        added = self.content * content_scores(self._data, rows, self.tau)
        scored: np.ndarray = np.where(parts["own"] > 0, base, base + added)
        return scored


CONTENT_GRID = (0.0, 0.1, 0.2, 0.4, 0.8)


def tune_content(
    tuner: models.Hybrid,
    weights: models.HybridWeights,
    validation: evaluate.Split,
    tau: float | None,
) -> tuple[float, float]:
    """On the validation window: the content weight with the best discover recall_new, then
    the repeat boost (the grid of ``tune_hybrid``, over the raised discovery ceiling)."""
    scored = []
    for content in CONTENT_GRID:
        model = Discovered(tuner, weights, tau, content, weights.repeat_boost)
        scored.append((evaluate.evaluate(model, validation, K, fit=False).recall_new, content))
    content = max(scored)[1]
    ceiling = 1.0 + weights.popularity + weights.new_arrivals + content
    boosts = []
    for b in evaluate.BOOST_GRID:
        model = Discovered(tuner, weights, tau, content, b * ceiling)
        boosts.append((evaluate.evaluate(model, validation, K, fit=False).recall, b * ceiling))
    return content, max(boosts)[1]


def describe(tuned: models.Hybrid, test: evaluate.Split) -> None:
    """Where recall is lost (stderr): repeat vs new test items, and recall by test size."""
    owned = (test.data.orders[test.rows] > 0).astype(np.float32)
    repeats = test.test.multiply(owned).sum()
    total = test.test.sum() + test.unknown.sum()
    size = np.asarray(test.test.sum(axis=1)).ravel() + test.unknown
    _, per = evaluate.evaluate_per_customer(tuned, test, K, fit=False)
    print(
        f"test items: {int(total)}, repeat {repeats / total:.3f}, new (known) "
        f"{(test.test.sum() - repeats) / total:.3f}, unknown {test.unknown.sum() / total:.3f}",
        file=sys.stderr,
    )
    for low, high in ((1, 5), (5, 10), (10, 20), (20, 10**6)):
        group = (size >= low) & (size < high)
        print(
            f"  test size [{low}, {high}): {int(group.sum())} customers, "
            f"recall {per['recall'][group].mean():.4f}",
            file=sys.stderr,
        )


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
    parser.add_argument("--round", type=int, choices=(3, 4, 5), default=4, help="ablation round")
    parser.add_argument("--cutoff", choices=CUTOFFS, help="one cutoff only (development)")
    parser.add_argument(
        "--at", action="append", help="other cutoffs, ISO times in --zone (another shop)"
    )
    args = parser.parse_args()
    engine = make_engine(args.database_url)
    lines = load_lines(engine)
    with engine.connect() as connection:
        EXTRA.quantity, EXTRA.price = training_lines.training_line_amounts(connection)
        EXTRA.titles = queries.item_titles(connection, [str(i) for i in lines.item_ids])
    engine.dispose()
    assert len(EXTRA.quantity) == len(lines), "amounts must align with the lines"
    ROWS.clear()
    ROWS.update({3: THIRD_ROUND, 4: FOURTH_ROUND}.get(args.round, {}))
    cutoffs = tuple(args.at) if args.at else (args.cutoff,) if args.cutoff else CUTOFFS
    settings = RecommenderSettings()
    table: dict[str, list[str]] = {}
    for day in cutoffs:
        cutoff = datetime.fromisoformat(day).replace(tzinfo=ZoneInfo(args.zone)).timestamp()
        if args.sweep:
            for name, cell in sweep(lines, cutoff, settings).items():
                table.setdefault(name, []).append(cell)
            continue
        CHOSEN.clear()
        results = run(lines, cutoff, settings, round_=args.round)
        base = results["tuned (recocamp evaluate)"][1]
        for name, (metrics, recall) in results.items():
            gain = evaluate.paired_bootstrap(recall, base)
            chosen = f"; {CHOSEN[name]}" if name in CHOSEN else ""
            table.setdefault(name, []).append(
                f"{metrics.recall:.4f} / {metrics.ndcg:.4f} (new {metrics.recall_new:.4f}; "
                f"recall {gain.mean:+.4f} [{gain.low:+.4f}, {gain.high:+.4f}]{chosen})"
            )
    for name, cells in table.items():
        print(f"| {name} | {' | '.join(cells)} |", flush=True)
    # the last line, one JSON object (as every benchmark's): each row's cells per cutoff
    rows = {name: dict(zip(cutoffs, cells, strict=False)) for name, cells in table.items()}
    print(json.dumps({"benchmark": "rec_ablation", "sweep": args.sweep, "rows": rows}))


if __name__ == "__main__":
    main()
