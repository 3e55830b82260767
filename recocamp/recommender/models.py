"""Learned recommenders on top of ``implicit`` — the only module that imports it.

- ``ALS`` / ``BPR``: matrix factorisation (implicit's AlternatingLeastSquares and
  BayesianPersonalizedRanking); scores are user · item factor products.
- ``ItemKNN``: implicit's item-item neighbours (BM25 or cosine weighting); scores are the
  customer's confidence row times the item similarity matrix.
- ``Hybrid`` (ours): replenishment and discovery scored separately. Own items: a learned
  blend of order count, recency, the item's repurchase propensity and its popularity, and
  the hybrid's own normalised ALS and item-kNN scores of the item (stacking; :mod:`.repeat`),
  popularity as the tie-break, lifted by ``repeat_boost``. Other items: a
  blend of normalised ALS and item-kNN scores plus recent popularity and a bonus for new
  arrivals (items first sold within ``new_days``: repeat customers discover what is new).
  Weights are tuned on a validation split before the evaluation cutoff
  (:func:`recocamp.evaluate.tune_hybrid`).

Fitting is deterministic (fixed ``random_state``), runs with BLAS limited to one thread
(implicit's own advice; without it a busy API collapses), and uses the GPU build of implicit
only where ``use_gpu`` allows and CUDA is present. Artifacts are ``.npz`` (``allow_pickle``
off) plus JSON metadata: nothing is ever unpickled.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import uuid
import warnings
import zipfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController, threadpool_limits

from recocamp.errors import ModelError
from recocamp.recommender import bounded, repeat
from recocamp.recommender.baselines import Popularity, RepeatFrequency
from recocamp.recommender.matrix import DAY, TrainingData
from recocamp.recommender.ranking import Recommender, normalised
from recocamp.recommender.tifu_knn import TifuKNN

log = logging.getLogger(__name__)
MODEL_NAMES = ("popularity", "repeat_frequency", "tifu_knn", "als", "bpr", "item_knn", "hybrid")
EVALUATION_ONLY = ("tifu_knn",)  # measured by `recocamp evaluate`, never trained, saved or served


def gpu_available(use_gpu: str) -> bool:
    """``auto``: use implicit's CUDA build when it loads; ``true``: require it; ``false``: never."""
    if use_gpu == "false":
        return False
    try:
        import librmm  # type: ignore[import-not-found]  # the RAPIDS memory manager, see DESIGN.md

        librmm.load_library()
        import implicit.gpu

        available = bool(implicit.gpu.HAS_CUDA)
    except (ImportError, OSError, RuntimeError):
        available = False
    if use_gpu == "true" and not available:
        raise ModelError("use_gpu = true, but implicit's CUDA build is not available")
    return available


@functools.cache
def _blas() -> ThreadpoolController:
    import implicit.cpu.als  # noqa: F401  # implicit's and scipy's BLAS loaded before the scan

    return ThreadpoolController()


def one_blas_thread() -> Any:
    """BLAS held to one thread around a request-time call (a re-scored next-best offer, a
    fold-in). The library scan is made once: ``threadpool_limits`` rescans every loaded library
    on each call, 1.6 ms here against 0.035 ms, a fifth of a re-scored answer's time under
    load. ``OPENBLAS_NUM_THREADS=1`` (``recocamp/__init__``) covers a library loaded later."""
    return _blas().limit(limits=1, user_api="blas")


class _Factors:
    """Shared code of the factorisation models."""

    name = ""

    def __init__(self, **params: Any) -> None:
        self._params = params
        self.user_factors = np.zeros((0, 0), dtype=np.float32)
        self.item_factors = np.zeros((0, 0), dtype=np.float32)
        self._solver: Any = None  # implicit's ALS, for folding in customers at request time
        self._norms: tuple[np.ndarray, np.ndarray] | None = None  # see :meth:`norms`
        self._gpu_items: tuple[np.ndarray, Any, Any] | None = None  # see :meth:`_gpu_top_k`
        self._by_length: tuple[np.ndarray, bounded.LengthOrder] | None = None  # :meth:`top_k_all`

    def _model(self) -> Any:
        raise NotImplementedError

    def fit(self, data: TrainingData) -> None:
        with threadpool_limits(1, "blas"):  # implicit checks BLAS threads when constructed
            model = self._model()
            model.fit(data.confidence, show_progress=False)
        if hasattr(model, "to_cpu") and type(model).__module__.startswith("implicit.gpu"):
            model = model.to_cpu()
        self.user_factors = np.asarray(model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(model.item_factors, dtype=np.float32)

    def score(self, rows: np.ndarray) -> np.ndarray:
        with one_blas_thread():
            return self.user_factors[rows] @ self.item_factors.T  # type: ignore[no-any-return]

    def top_k_all(
        self, rows: np.ndarray, k: int, threads: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mixed-mode top-k straight from implicit's native blocked kernel (no dense matrix):
        its CUDA kernel where the model was fitted on the GPU (the top-N cache of a million
        customers took longer on 16 cores than the GPU fit itself), else the CPU's, its
        product on one BLAS thread and its selection on ``threads`` (0: every core), over the
        longest items first until the rest cannot make the cut (:mod:`.bounded`)."""
        if self.uses_gpu:
            return self._gpu_top_k(rows, k)
        from implicit.cpu.topk import topk

        def kernel(items: np.ndarray, query: np.ndarray, count: int) -> tuple[Any, Any]:
            return topk(items, query, count, num_threads=threads)  # type: ignore[no-any-return]

        with one_blas_thread():
            return bounded.top_k(kernel, self.by_length(), self.user_factors[rows], k)

    def by_length(self) -> bounded.LengthOrder:
        """The item factors ranked by length, made once per set of them."""
        found = self._by_length
        if found is None or found[0] is not self.item_factors:
            found = self._by_length = (self.item_factors, bounded.LengthOrder.of(self.item_factors))
        return found[1]

    def _gpu_top_k(self, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """implicit's GPU ``KnnQuery`` over the item factors, uploaded once per set of them
        (the cache asks in batches of a few hundred customers)."""
        import implicit.gpu

        found = self._gpu_items
        if found is None or found[0] is not self.item_factors:
            uploaded = implicit.gpu.Matrix(np.ascontiguousarray(self.item_factors, np.float32))
            found = self._gpu_items = (self.item_factors, uploaded, implicit.gpu.KnnQuery())
        queries = implicit.gpu.Matrix(np.ascontiguousarray(self.user_factors[rows], np.float32))
        indices, scores = found[2].topk(found[1], queries, k)
        return np.asarray(indices), np.asarray(scores)

    def params(self) -> dict[str, Any]:
        return {k: v for k, v in self._params.items() if k not in ("use_gpu", "num_threads")}

    @property
    def uses_gpu(self) -> bool:
        """Whether the fit runs on implicit's CUDA build (see ``_GPU_MODELS``)."""
        return bool(self._params.get("use_gpu"))

    def fold_in(self, confidence: sp.csr_matrix) -> np.ndarray:
        """A user factor for a 1 × items confidence row: implicit's ALS ``recalculate_user``,
        the least-squares solution against the fixed item factors (for BPR's factors too)."""
        from implicit.cpu.als import AlternatingLeastSquares

        with one_blas_thread():  # implicit checks BLAS threads when constructed
            solver = self._solver
            if solver is None or solver.item_factors is not self.item_factors:
                solver = AlternatingLeastSquares(
                    factors=self.item_factors.shape[1],
                    regularization=float(self._params.get("regularization", 0.01)),
                    num_threads=1,
                )
                solver.item_factors = np.ascontiguousarray(self.item_factors, dtype=np.float32)
                self.item_factors = solver.item_factors
                self._solver = solver
            factor = solver.recalculate_user(0, sp.csr_matrix(confidence, dtype=np.float32))
        return np.asarray(factor, dtype=np.float32)

    def norms(self) -> np.ndarray:
        """Every item factor's length (plus 1e-9), computed once per set of item factors:
        an offer's reason needs a few, and the whole array cost a fifth of finding them."""
        found = self._norms
        if found is None or found[0] is not self.item_factors:
            lengths = np.linalg.norm(self.item_factors, axis=1) + 1e-9
            found = self._norms = (self.item_factors, lengths)
        return found[1]

    def arrays(self) -> dict[str, np.ndarray]:
        return {"user_factors": self.user_factors, "item_factors": self.item_factors}

    def restore(self, data: TrainingData, arrays: dict[str, np.ndarray]) -> None:
        self.user_factors, self.item_factors = arrays["user_factors"], arrays["item_factors"]


class ALS(_Factors):
    name = "als"

    def _model(self) -> Any:
        from implicit.als import AlternatingLeastSquares

        return AlternatingLeastSquares(**self._params)


class BPR(_Factors):
    name = "bpr"

    def _model(self) -> Any:
        from implicit.bpr import BayesianPersonalizedRanking

        return BayesianPersonalizedRanking(**self._params)


class ItemKNN:
    """implicit's item-item recommender; ``weighting`` is ``bm25`` or ``cosine``."""

    name = "item_knn"

    def __init__(self, weighting: str = "bm25", neighbours: int = 20) -> None:
        self.weighting, self.neighbours = weighting, neighbours
        self.similarity = sp.csr_matrix((0, 0), dtype=np.float32)
        self._confidence = sp.csr_matrix((0, 0), dtype=np.float32)
        self._towards: tuple[sp.csr_matrix, sp.csr_matrix] | None = None  # see :meth:`between`

    def fit(self, data: TrainingData) -> None:
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        cls = BM25Recommender if self.weighting == "bm25" else CosineRecommender
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            # implicit 0.7.3 weights into a COO matrix internally, then warns about it
            warnings.filterwarnings("ignore", message="Method expects CSR input")
            model = cls(K=self.neighbours)
            model.fit(data.confidence, show_progress=False)
        self.similarity = model.similarity.tocsr().astype(np.float32)
        self._confidence = data.confidence

    def score(self, rows: np.ndarray) -> np.ndarray:
        return (self._confidence[rows] @ self.similarity).toarray()  # type: ignore[no-any-return]

    def params(self) -> dict[str, Any]:
        return {"weighting": self.weighting, "neighbours": self.neighbours}

    def arrays(self) -> dict[str, np.ndarray]:
        return _csr_arrays("similarity", self.similarity)

    def restore(self, data: TrainingData, arrays: dict[str, np.ndarray]) -> None:
        self.similarity = _csr_from(arrays, "similarity")
        self._confidence = data.confidence

    def between(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``similarity[rows][:, cols]`` as a dense array, read from the transposed matrix
        (built once per similarity matrix): an offer's reason asks for a few target columns
        against every item a customer bought — thousands of rows for a wholesale buyer,
        which the row slice copied whole."""
        found = self._towards
        if found is None or found[0] is not self.similarity:
            found = self._towards = (self.similarity, self.similarity.T.tocsr())
        return found[1][cols][:, rows].toarray().T  # type: ignore[no-any-return]

    def similar(self, column: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most similar items to one item column (for product pages and reasons)."""
        row = self.similarity.getrow(column)
        order = np.argsort(-row.data, kind="stable")
        keep = [i for i in order if row.indices[i] != column][:n]
        return row.indices[keep], row.data[keep]


@dataclass(frozen=True, slots=True)
class HybridWeights:
    """The hybrid's blend; tuned on a validation split (see evaluate.tune_hybrid)."""

    als: float = 0.5  # share of ALS vs item-kNN in the discovery score
    popularity: float = 0.1  # weight of recent popularity in the discovery score
    new_arrivals: float = 0.2  # bonus for items first sold within new_days
    new_days: float = 90.0
    repeat_boost: float = 1.3  # own items above new ones when >= 1 + popularity + new_arrivals
    # the replenishment blend of repeat.SIGNALS (the default: order count alone)
    own_count: float = 1.0
    own_recency: float = 0.0
    own_propensity: float = 0.0
    own_popularity: float = 0.0
    own_month: float = 0.0
    own_als: float = 0.0
    own_knn: float = 0.0

    @property
    def own(self) -> tuple[float, ...]:
        return (
            self.own_count,
            self.own_recency,
            self.own_propensity,
            self.own_popularity,
            self.own_month,
            self.own_als,
            self.own_knn,
        )


class Hybrid:
    name = "hybrid"

    def __init__(self, als: ALS, knn: ItemKNN, weights: HybridWeights | None = None) -> None:
        self.als, self.knn = als, knn
        self.weights = weights or HybridWeights()
        self._popularity = Popularity()
        self._data: TrainingData | None = None
        self.items = repeat.ItemSignals(np.zeros(0), np.zeros(0), np.zeros(0))

    def fit(self, data: TrainingData) -> None:
        self.als.fit(data)
        self.knn.fit(data)
        self._after_fit(data)

    def _after_fit(self, data: TrainingData) -> None:
        self._popularity.fit(data)
        self._data = data
        self.items = repeat.ItemSignals.of(data.orders, data.popularity, repeat.month_buyers(data))

    def parts(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Normalised component scores, so a tuner can re-blend them without refitting."""
        assert self._data is not None, "fit or restore first"
        popularity = self._popularity.score(rows)
        scores = self.collaborative(rows)
        own = self.own(self._data.orders[rows], self._data.last_days[rows], scores)
        return {
            "own": own,
            "als": scores.als,
            "knn": scores.knn,
            "popularity": popularity,
            "new": np.broadcast_to(self._data.age_days < self.weights.new_days, own.shape),
        }

    def collaborative(self, rows: np.ndarray) -> repeat.Collaborative:
        """The normalised ALS and item-kNN scores of training rows."""
        return repeat.Collaborative(
            normalised(self.als.score(rows)), normalised(self.knn.score(rows))
        )

    def own(
        self, orders: sp.csr_matrix, last_days: sp.csr_matrix, scores: repeat.Collaborative
    ) -> np.ndarray:
        """The replenishment part of rows given by their orders, last-purchase days and
        normalised model scores."""
        tie_break = _popularity_of(self._popularity)
        return repeat.ranked(orders, last_days, self.items, scores, self.weights.own, tie_break)

    def score(self, rows: np.ndarray) -> np.ndarray:
        return combine(self.parts(rows), self.weights)

    def params(self) -> dict[str, Any]:
        return {
            "weights": asdict(self.weights),
            "als": self.als.params(),
            "item_knn": self.knn.params(),
        }

    def arrays(self) -> dict[str, np.ndarray]:
        prefixed = {f"als_{k}": v for k, v in self.als.arrays().items()}
        prefixed |= {f"knn_{k}": v for k, v in self.knn.arrays().items()}
        prefixed |= {f"pop_{k}": v for k, v in self._popularity.arrays().items()}
        return prefixed | {"repeat_month": self.items.month}  # per item: identifies nobody

    def restore(self, data: TrainingData, arrays: dict[str, np.ndarray]) -> None:
        self.als.restore(data, _unprefixed(arrays, "als_"))
        self.knn.restore(data, _unprefixed(arrays, "knn_"))
        self._popularity.restore(data, _unprefixed(arrays, "pop_"))
        self._data = data
        month = arrays.get("repeat_month", np.zeros(data.shape[1]))  # older artifacts: none
        self.items = repeat.ItemSignals.of(data.orders, data.popularity, np.expm1(month))


def combine(parts: dict[str, np.ndarray], weights: HybridWeights) -> np.ndarray:
    """Own items: ``repeat_boost + own``; other items: the discovery blend."""
    discover = (
        weights.als * parts["als"]
        + (1 - weights.als) * parts["knn"]
        + weights.popularity * parts["popularity"]
        + weights.new_arrivals * parts["new"]
    )
    owned = parts["own"] > 0
    blended: np.ndarray = np.where(owned, weights.repeat_boost + parts["own"], discover)
    return blended


# Which models implicit's CUDA build fits under each ``use_gpu``. Measured on an H200 (UCI,
# cutoff 2011-09-01, README "GPU"): its ALS ranks as the CPU's does (recall 0.3060 vs
# 0.3044–0.3068 over four seeds) at 5.5x the speed; its BPR does not (0.1620 vs 0.2415), and
# the hybrid on its factors discovers less (recall_new 0.1154 vs 0.1232–0.1241, under the
# 0.12 target). So ``auto`` moves ALS alone; ``true`` is the operator's choice of speed.
_GPU_MODELS = {"auto": ("als",), "true": ("als", "bpr", "hybrid"), "false": ()}


def make(name: str, settings: Any, weights: HybridWeights | None = None) -> Recommender:
    """A fresh model by name, parameters from ``[recommender]`` settings."""
    if name not in MODEL_NAMES:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(MODEL_NAMES)})")
    use_gpu = gpu_available(settings.use_gpu) if name in _GPU_MODELS[settings.use_gpu] else False
    factors = {
        "factors": settings.factors,
        "regularization": settings.regularization,
        "iterations": settings.iterations,
        "random_state": settings.random_state,
        "use_gpu": use_gpu,
    }
    knn = {"weighting": settings.knn_weighting, "neighbours": settings.knn_neighbours}
    builders: dict[str, Any] = {
        "popularity": Popularity,
        "repeat_frequency": RepeatFrequency,
        "tifu_knn": TifuKNN,
        "als": lambda: ALS(**factors),
        "bpr": lambda: BPR(
            **{**factors, "iterations": settings.bpr_iterations},
            learning_rate=settings.bpr_learning_rate,
            num_threads=1,  # implicit's BPR is Hogwild-parallel: reproducible only single-threaded
        ),
        "item_knn": lambda: ItemKNN(**knn),
        "hybrid": lambda: Hybrid(ALS(**factors), ItemKNN(**knn), weights),
    }
    model: Recommender = builders[name]()
    return model


def similar(
    fitted: Recommender, data: TrainingData, item_id: str, n: int
) -> list[tuple[str, float]]:
    """Items most similar to ``item_id``: the model's own item-item view where it has one
    (item-kNN, the hybrid's kNN, factor cosine), else co-purchase cosine on the data."""
    columns = np.flatnonzero(data.items == item_id)
    if len(columns) == 0:
        return []
    column = int(columns[0])
    knn = fitted.knn if isinstance(fitted, Hybrid) else fitted
    if isinstance(knn, ItemKNN):
        indices, values = knn.similar(column, n)
    else:
        vectors = fitted.item_factors if isinstance(fitted, _Factors) else None
        indices, values = _cosine_neighbours(data, column, n, vectors)
    return [(str(data.items[i]), float(v)) for i, v in zip(indices, values, strict=True)]


def similarity_measure(fitted: Recommender) -> str:
    """What the scores of :func:`similar` are, for a column heading: item-kNN weights are
    not bounded (BM25 weights of co-purchases run into the hundreds), cosines are in [-1, 1]."""
    knn = fitted.knn if isinstance(fitted, Hybrid) else fitted
    if isinstance(knn, ItemKNN):
        return f"item-kNN {knn.weighting} weight (co-purchases; higher is closer, no upper bound)"
    if isinstance(fitted, _Factors):
        return "cosine of the item factors (-1 … 1)"
    return "cosine of the co-purchase counts (0 … 1)"


def _cosine_neighbours(
    data: TrainingData, column: int, n: int, vectors: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    if vectors is not None:
        norms = np.linalg.norm(vectors, axis=1) + 1e-9
        similarity = (vectors @ vectors[column]) / (norms * norms[column])
    else:
        by_item = data.confidence.T.tocsr()
        norms = np.sqrt(np.asarray(by_item.multiply(by_item).sum(axis=1)).ravel()) + 1e-9
        similarity = (by_item @ by_item[column].T).toarray().ravel() / (norms * norms[column])
    similarity[column] = -np.inf
    order = np.lexsort((np.arange(len(similarity)), -similarity))[:n]
    order = order[similarity[order] > 0]
    return order, similarity[order]


# --- request time: one customer's scores from their current history ----------------------


@dataclass(frozen=True, slots=True)
class HistoryRows:
    """One customer's history as 1 × items rows aligned with a model's item columns."""

    orders: sp.csr_matrix
    confidence: sp.csr_matrix
    last_days: sp.csr_matrix


def prepare_to_serve(fitted: Recommender) -> None:
    """Make what request-time top-k reads once, at load (a factor model's items ranked by
    length, :mod:`.bounded`: 0.3 s at 50,000 items), not in the first request that needs it."""
    if isinstance(fitted, _Factors) and not fitted.uses_gpu:
        fitted.by_length()


def item_columns(data: TrainingData) -> dict[str, int]:
    """item id → column of a loaded model (built once per model by the caller)."""
    return {str(item): column for column, item in enumerate(data.items)}


def history_rows(
    data: TrainingData,
    columns: dict[str, int],
    events: Sequence[tuple[str, int, float]],
    half_life_days: float | None,
) -> HistoryRows:
    """``(item_id, order number, epoch seconds)`` events → the rows training would have built
    (``matrix.build``: distinct orders per item, ``1 + ln(1 + n)``, the same time decay).
    Items the model never saw have no column and are left out."""
    known = [(columns[item], order, at) for item, order, at in events if item in columns]
    if not known:
        return _no_rows(len(data.items))
    codes, order, at = (np.asarray(part) for part in zip(*known, strict=True))
    return event_rows(data, codes, order, at, half_life_days)


def _no_rows(n_items: int) -> HistoryRows:
    empty = sp.csr_matrix((1, n_items), dtype=np.float32)
    return HistoryRows(empty, empty, empty)


def event_rows(
    data: TrainingData,
    codes: np.ndarray,
    order: np.ndarray,
    at: np.ndarray,
    half_life_days: float | None,
) -> HistoryRows:
    """One customer's rows from parallel arrays of item columns, order numbers and epoch
    seconds: ``matrix.build``'s arithmetic for a single row, in a few numpy calls (the
    generic builder cost half of a re-scored answer). An item counts once per order, at its
    first line; its confidence sums the (decayed) orders in float32, as training does."""
    n_items = len(data.items)
    if len(codes) == 0:
        return _no_rows(n_items)
    codes, order = codes.astype(np.int64), order.astype(np.int64)
    at = at.astype(np.float64)
    cutoff = max(data.cutoff, float(at.max()) + 1.0)
    pair = codes * (int(order.max()) + 1) + order
    first = np.sort(np.unique(pair, return_index=True)[1])  # the first line of each pair
    column, when = codes[first], at[first]
    weight = np.ones(len(first), dtype=np.float32)
    if half_life_days is not None:
        weight = (0.5 ** ((cutoff - when) / DAY / half_life_days)).astype(np.float32)
    present = np.unique(column)
    counts = np.zeros(n_items, dtype=np.float32)
    np.add.at(counts, column, np.float32(1.0))
    summed = np.zeros(n_items, dtype=np.float32)
    np.add.at(summed, column, weight)
    latest = np.full(n_items, -np.inf)
    np.maximum.at(latest, column, when)
    confidence = (1.0 + np.log1p(summed[present])).astype(np.float32)
    last_days = ((cutoff - latest[present]) / DAY).astype(np.float32)

    def row(values: np.ndarray) -> sp.csr_matrix:
        indptr = np.array([0, len(present)], dtype=np.int32)
        return sp.csr_matrix((values, present.astype(np.int32), indptr), shape=(1, n_items))

    return HistoryRows(row(counts[present]), row(confidence), row(last_days))


def rescore(fitted: Recommender, data: TrainingData, rows: HistoryRows) -> np.ndarray:
    """Scores of every item for a customer given by history rows rather than a training row:
    the customer bought something since the model was trained, or is new to it. ALS and BPR
    fold the customer in with implicit's ``recalculate_user`` (least squares on the fixed
    item factors); item-kNN multiplies the new row with the similarity matrix; the hybrid
    recombines its parts from both."""
    scores: np.ndarray
    if isinstance(fitted, Hybrid):
        scores = combine(_hybrid_parts(fitted, data, rows), fitted.weights)[0]
        return scores
    if isinstance(fitted, _Factors):
        scores = fitted.fold_in(rows.confidence) @ fitted.item_factors.T
        return scores
    if isinstance(fitted, ItemKNN):
        scores = (rows.confidence @ fitted.similarity).toarray()[0]
        return scores
    if isinstance(fitted, RepeatFrequency):
        padding = 0.5 * _popularity_of(fitted._popularity)
        own = rows.orders.toarray()[0]
        return np.where(own > 0, 1.0 + own, padding)
    if isinstance(fitted, Popularity):
        return _popularity_of(fitted).copy()
    raise ModelError(f"cannot rescore a {type(fitted).__name__}")


def _popularity_of(model: Popularity) -> np.ndarray:
    return np.asarray(model.arrays()["scores"], dtype=np.float64)


def _hybrid_parts(fitted: Hybrid, data: TrainingData, rows: HistoryRows) -> dict[str, np.ndarray]:
    popularity = _popularity_of(fitted._popularity)[None, :]
    als = (fitted.als.fold_in(rows.confidence) @ fitted.als.item_factors.T)[None, :]
    scores = repeat.Collaborative(
        normalised(als), normalised((rows.confidence @ fitted.knn.similarity).toarray())
    )
    return {
        "own": fitted.own(rows.orders, rows.last_days, scores),
        "als": scores.als,
        "knn": scores.knn,
        "popularity": popularity,
        "new": (data.age_days < fitted.weights.new_days)[None, :],
    }


def because(
    fitted: Recommender,
    data: TrainingData,
    columns: dict[str, int],
    bought: Collection[str],
    targets: Sequence[str],
) -> dict[str, str]:
    """For each target item, the bought item most similar to it (the "because you bought …"
    of an offer): item-kNN similarity where the model has one, else the cosine of item
    factors. Targets without any similar bought item are left out."""
    owned = np.array(sorted({columns[i] for i in bought if i in columns}), dtype=np.int64)
    wanted = [(t, columns[t]) for t in targets if t in columns]
    if len(owned) == 0 or not wanted:
        return {}
    similarity = _similarity(fitted, owned, np.array([c for _, c in wanted], dtype=np.int64))
    if similarity is None:
        return {}
    best = similarity.argmax(axis=0)
    return {
        target: str(data.items[owned[best[k]]])
        for k, (target, _) in enumerate(wanted)
        if similarity[best[k], k] > 0
    }


def _similarity(fitted: Recommender, rows: np.ndarray, cols: np.ndarray) -> np.ndarray | None:
    """Similarity of bought items (rows) to targets (columns); per target the model's kNN
    similarity where it knows one, else the cosine of the (ALS) item factors."""
    knn = fitted.knn if isinstance(fitted, Hybrid) else fitted
    factors = fitted.als if isinstance(fitted, Hybrid) else fitted
    found = None
    if isinstance(knn, ItemKNN) and knn.similarity.shape[0]:
        found = knn.between(rows, cols)
    if isinstance(factors, _Factors) and factors.item_factors.shape[0]:
        vectors, norms = factors.item_factors, factors.norms()
        cosine = (vectors[rows] @ vectors[cols].T) / np.outer(norms[rows], norms[cols])
        found = cosine if found is None else np.where(found.max(axis=0) > 0, found, cosine)
    return found


# --- artifacts: npz (no pickle) + json -------------------------------------------------


def _csr_arrays(prefix: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {
        f"{prefix}_data": matrix.data,
        f"{prefix}_indices": matrix.indices,
        f"{prefix}_indptr": matrix.indptr,
        f"{prefix}_shape": np.array(matrix.shape),
    }


def _csr_from(arrays: dict[str, np.ndarray], prefix: str) -> sp.csr_matrix:
    shape = tuple(int(x) for x in arrays[f"{prefix}_shape"])
    parts = (arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"])
    return sp.csr_matrix(parts, shape=shape)


def _unprefixed(arrays: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


def save(directory: Path, model: Recommender, data: TrainingData, meta: dict[str, Any]) -> None:
    """Write ``model.npz`` (ids, matrices, model arrays) and ``meta.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "customers": data.customers.astype(str),
        "items": data.items.astype(str),
        "popularity": data.popularity,
        "age_days": data.age_days,
        "cutoff": np.array([data.cutoff]),
    }
    for name in ("orders", "confidence", "last_days"):
        arrays |= _csr_arrays(name, getattr(data, name))
    arrays |= {f"model_{k}": v for k, v in model.arrays().items()}
    partial = _partial(directory / "model.npz")
    with _removed_unless_replaced(partial):
        with partial.open("wb") as handle:
            np.savez(handle, allow_pickle=False, **arrays)
        os.replace(partial, directory / "model.npz")  # a reader sees a whole file, old or new
    write_meta(directory, meta)


def write_meta(directory: Path, meta: dict[str, Any]) -> None:
    """``meta.json`` (again, where the registry's verdict differs from the gate's), replaced
    whole: two trainings of the same data write the same directory."""
    partial = _partial(directory / "meta.json")
    with _removed_unless_replaced(partial):
        partial.write_text(json.dumps(meta, indent=2, sort_keys=True))
        os.replace(partial, directory / "meta.json")


@contextmanager
def _removed_unless_replaced(partial: Path) -> Iterator[None]:
    """A half-written file goes when its writing stops (Ctrl-C, a full disk): nothing else
    ever removes it (the retention purge knows registered models only), and a big shop's
    ``model.npz`` is hundreds of megabytes."""
    try:
        yield
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _partial(path: Path) -> Path:
    """A name of this writer's own beside ``path`` (two writers never share one)."""
    return path.with_name(f"{path.name}.{uuid.uuid4().hex}.partial")


# what reading a damaged or foreign artifact raises: an empty model.npz (EOFError), one
# truncated or not a zip (BadZipFile), a missing array or field (KeyError), bad JSON or
# shapes (ValueError, TypeError, IndexError), a missing or unreadable file (OSError)
DAMAGED = (OSError, EOFError, zipfile.BadZipFile, ValueError, KeyError, TypeError, IndexError)


def unloadable(directory: Path, exc: BaseException) -> ModelError:
    """The one error of every artifact that cannot be read, naming where and why."""
    reason = str(exc) or "no detail"
    return ModelError(
        f"cannot load the model artifacts at {directory}: {type(exc).__name__}: {reason}"
    )


def _read_arrays(directory: Path) -> dict[str, np.ndarray]:
    """Every array of ``model.npz`` (:class:`ModelError` for a missing or damaged file)."""
    try:  # our own handle: np.load leaves its file open when the zip is damaged
        with (
            (directory / "model.npz").open("rb") as handle,
            np.load(handle, allow_pickle=False) as stored,
        ):
            return {name: stored[name] for name in stored.files}
    except DAMAGED as exc:
        raise unloadable(directory, exc) from None


def load(directory: Path, settings: Any) -> tuple[Recommender, TrainingData, dict[str, Any]]:
    """A saved model (:func:`save`); :class:`ModelError` naming the directory and the reason
    when its files are missing, empty, truncated or incomplete: the API serves popularity
    then, and the commands say so in one line."""
    arrays = _read_arrays(directory)
    try:
        meta = json.loads((directory / "meta.json").read_text())
        data = TrainingData(
            customers=arrays["customers"],
            items=arrays["items"],
            orders=_csr_from(arrays, "orders"),
            confidence=_csr_from(arrays, "confidence"),
            last_days=_csr_from(arrays, "last_days"),
            popularity=arrays["popularity"],
            age_days=arrays["age_days"],
            cutoff=float(arrays["cutoff"][0]),
        )
        _check_shapes(data, _unprefixed(arrays, "model_"))
        weights = HybridWeights(**meta["params"]["weights"]) if meta["name"] == "hybrid" else None
        model = make(meta["name"], _no_gpu(settings), weights)
        model.restore(data, _unprefixed(arrays, "model_"))
    except DAMAGED as exc:
        raise unloadable(directory, exc) from None
    return model, data, meta


def _check_shapes(data: TrainingData, arrays: dict[str, np.ndarray]) -> None:
    """The id maps and every array agree (ValueError naming the first that does not): a row
    is looked up by binary search in ``customers`` and a column is ``items[c]``, so an
    unsorted id map or a factor matrix one row longer than it would give one customer
    another's scores, or name the wrong items, without any error."""
    n_customers, n_items = data.shape
    for name, ids in (("customers", data.customers), ("items", data.items)):
        if ids.ndim != 1 or (len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all())):
            raise ValueError(f"{name}: the ids are not sorted and unique")
    expected: dict[str, tuple[int, ...]] = {
        name: (n_customers, n_items) for name in PER_CUSTOMER_MATRICES
    }
    expected |= {"popularity": (n_items,), "age_days": (n_items,)}
    found: dict[str, tuple[int, ...]] = {name: getattr(data, name).shape for name in expected}
    for name, array in arrays.items():
        rows = {"user_factors": n_customers, "item_factors": n_items, "scores": n_items}
        rows |= {"repeat_month": n_items}
        for suffix, length in rows.items():
            if name.endswith(suffix):
                expected[name], found[name] = (length,), array.shape[:1]
        if name.endswith("similarity_shape"):
            expected[name], found[name] = (n_items, n_items), tuple(int(x) for x in array)
    for name, shape in expected.items():
        if tuple(found[name]) != shape:
            raise ValueError(
                f"{name} has shape {tuple(found[name])}, the id maps ({n_customers:,} "
                f"customers, {n_items:,} items) need {shape}"
            )


def _no_gpu(settings: Any) -> Any:
    return settings.model_copy(update={"use_gpu": "false"})


PER_CUSTOMER_MATRICES = ("orders", "confidence", "last_days")  # TrainingData rows


def drop_customers(directory: Path, customer_ids: Collection[str]) -> int:
    """Remove customers from a saved model (erasure, GDPR Art. 17): their id, their rows of
    the training matrices and their user factors (every model array named ``*user_factors``
    is per customer; item-side arrays and the aggregates ``popularity`` and ``age_days``
    identify nobody and stay). Rewritten atomically; returns how many were removed."""
    with rewriting(directory):
        return _drop_customers(directory, customer_ids)


@contextmanager
def rewriting(directory: Path) -> Iterator[None]:
    """Hold the model's rewrite lock (``model.lock`` beside its files, an exclusive
    ``flock``): two scrubs of one model at once (an objection in the API, an erasure on the
    command line, the worker's nightly sweep) each read the file, removed their customer and
    wrote it back, so the second put the first's customer back — an erasure undone."""
    try:
        handle = (directory / "model.lock").open("a")
    except OSError as exc:  # the model's folder is gone (purged) or cannot be written
        raise unloadable(directory, exc) from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _drop_customers(directory: Path, customer_ids: Collection[str]) -> int:
    path = directory / "model.npz"
    arrays = _read_arrays(directory)
    if "customers" not in arrays:
        raise unloadable(directory, KeyError("customers"))
    customers = arrays["customers"]
    keep = ~np.isin(customers, np.array(sorted(customer_ids), dtype=customers.dtype))
    removed = int((~keep).sum())
    if removed == 0:
        return 0
    arrays["customers"] = customers[keep]
    for name in PER_CUSTOMER_MATRICES:
        arrays |= _csr_arrays(name, _csr_from(arrays, name)[keep])
    for name in [n for n in arrays if n.startswith("model_") and n.endswith("user_factors")]:
        arrays[name] = arrays[name][keep]
    partial = _partial(path)
    with _removed_unless_replaced(partial):  # it holds every other customer's rows
        with partial.open("wb") as handle:
            np.savez(handle, allow_pickle=False, **arrays)
        os.replace(partial, path)
    return removed


def customer_rows(directory: Path, customer_ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """What a saved model holds about each of the customers it holds (GDPR Art. 15: a copy
    of the profile): their rows of the training matrices (item id → value, as
    :data:`PER_CUSTOMER_MATRICES` names them) and their user factors — exactly what
    :func:`drop_customers` removes. Customers it does not hold are left out."""
    arrays = _read_arrays(directory)
    if "customers" not in arrays:
        raise unloadable(directory, KeyError("customers"))
    held = arrays["customers"].astype(str)
    rows = {str(c): n for n, c in enumerate(held) if str(c) in set(customer_ids)}
    if not rows:
        return {}
    items = arrays["items"].astype(str)
    matrices = {name: _csr_from(arrays, name) for name in PER_CUSTOMER_MATRICES}
    factors = [n for n in arrays if n.startswith("model_") and n.endswith("user_factors")]
    found: dict[str, dict[str, Any]] = {}
    for customer, row in sorted(rows.items()):
        one: dict[str, Any] = {}
        for name, matrix in matrices.items():
            line = matrix.getrow(row)
            one[name] = {
                str(items[i]): float(v) for i, v in zip(line.indices, line.data, strict=True)
            }
        for name in factors:
            one[name.removeprefix("model_")] = [float(v) for v in arrays[name][row]]
        found[customer] = one
    return found


def customer_ids(directory: Path) -> set[str]:
    """The customers a saved model holds rows for (read without loading the rest)."""
    try:
        with (
            (directory / "model.npz").open("rb") as handle,
            np.load(handle, allow_pickle=False) as stored,
        ):
            return {str(value) for value in stored["customers"]}
    except DAMAGED as exc:
        raise unloadable(directory, exc) from None
