"""TIFU-KNN, the published next-basket baseline (Hu et al., SIGIR 2020, "Modeling
Personalized Item Frequency Information for Next-basket Recommendation").

A basket is an order. Each customer's baskets, oldest to newest, are split into groups of
``group_size`` consecutive baskets counted from the newest (the oldest group holds the
remainder when the count does not divide). With ``j`` the basket's place in its group (0 =
newest) and ``g`` the group's place (0 = newest group), of ``k`` groups, a basket's binary
item vector enters the customer's vector with weight

    within_decay ** j * group_decay ** g / |group g| / k

(the paper's group vector is the decayed mean of its baskets, the customer vector the decayed
mean of its groups). The score of a customer is ``alpha * own + (1 - alpha) * mean of the
``neighbours`` nearest customers' vectors`` (cosine similarity, the customer itself left out).

Defaults are the reference parameters of shared/data/README.md, which were chosen on a
validation split ending at the cutoff: nothing here is tuned on a test window. It is an
evaluation baseline only: its neighbour means carry other customers' histories, which the
erasure of a saved model (``models.drop_customers``) could not remove, so it is never saved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recocamp.errors import ModelError
from recocamp.recommender.matrix import TrainingData


@dataclass(frozen=True, slots=True)
class TifuParams:
    group_size: int = 3
    within_decay: float = 1.0
    group_decay: float = 0.6
    neighbours: int = 100
    alpha: float = 0.7


class TifuKNN:
    """The :class:`~recocamp.recommender.ranking.Recommender` interface around
    :func:`customer_vectors` and :func:`nearest_customers`."""

    name = "tifu_knn"

    def __init__(self, params: TifuParams | None = None) -> None:
        self.tifu = params or TifuParams()
        self._vectors: sp.csr_matrix = sp.csr_matrix((0, 0), dtype=np.float64)
        self._neighbours: np.ndarray = np.zeros((0, 0), dtype=np.int64)

    def fit(self, data: TrainingData) -> None:
        if data.lines is None:
            raise ModelError("tifu_knn needs the purchase lines (its baskets), not saved matrices")
        p = self.tifu
        self._vectors = customer_vectors(data, p.group_size, p.within_decay, p.group_decay)
        self._neighbours = nearest_customers(self._vectors, p.neighbours)

    def score(self, rows: np.ndarray) -> np.ndarray:
        own: np.ndarray = self._vectors[rows].toarray()
        count = self._neighbours.shape[1]
        if count == 0:  # a shop of one customer: nobody to blend with
            return own
        picked = self._neighbours[rows]
        mean_of = sp.csr_matrix(
            (
                np.full(picked.size, 1.0 / count),
                (np.repeat(np.arange(len(rows)), count), picked.ravel()),
            ),
            shape=(len(rows), self._vectors.shape[0]),
        )
        near = (mean_of @ self._vectors).toarray()
        blended: np.ndarray = self.tifu.alpha * own + (1.0 - self.tifu.alpha) * near
        return blended

    def params(self) -> dict[str, Any]:
        return asdict(self.tifu)

    def arrays(self) -> dict[str, np.ndarray]:
        raise ModelError(_NOT_SAVED)

    def restore(self, data: TrainingData, arrays: dict[str, np.ndarray]) -> None:
        raise ModelError(_NOT_SAVED)


_NOT_SAVED = (
    "tifu_knn is an evaluation baseline (`recocamp evaluate`): it is never saved, as its "
    "neighbour means hold other customers' histories that erasure could not remove"
)


def customer_vectors(
    data: TrainingData, group_size: int, within_decay: float, group_decay: float
) -> sp.csr_matrix:
    """Customer × item time-decayed frequency vectors (rows and columns as in ``data``)."""
    assert data.lines is not None
    lines = data.lines.before(data.cutoff)
    rows = np.unique(lines.customer, return_inverse=True)[1].astype(np.int64)  # as matrix.build
    cols = np.unique(lines.item, return_inverse=True)[1].astype(np.int64)
    codes, basket = np.unique(lines.order, return_inverse=True)
    start = np.full(len(codes), np.inf)
    np.minimum.at(start, basket, lines.at)
    owner = np.zeros(len(codes), dtype=np.int64)
    owner[basket] = rows
    weight = _basket_weights(owner, start, group_size, within_decay, group_decay)
    pair = np.unique(basket.astype(np.int64) * data.shape[1] + cols)  # an item once per basket
    one_basket, one_item = pair // data.shape[1], pair % data.shape[1]
    vectors = sp.csr_matrix(
        (weight[one_basket], (owner[one_basket], one_item)), shape=data.shape, dtype=np.float64
    )
    vectors.sum_duplicates()
    return vectors


def _basket_weights(
    owner: np.ndarray, start: np.ndarray, group_size: int, within_decay: float, group_decay: float
) -> np.ndarray:
    """Each basket's weight in its customer's vector (module docstring), by its place from
    the newest basket: baskets ordered by customer, then time, then order code."""
    sequence = np.lexsort((np.arange(len(owner)), start, owner))
    counts = np.bincount(owner, minlength=int(owner.max()) + 1 if len(owner) else 0)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    total = counts[owner[sequence]]
    from_newest = total - 1 - (np.arange(len(sequence)) - first[owner[sequence]])
    group, place = from_newest // group_size, from_newest % group_size
    groups = -(-total // group_size)  # ceil
    in_group = np.minimum(group_size, total - group * group_size)
    weight = np.empty(len(owner))
    weight[sequence] = within_decay**place * group_decay**group / in_group / groups
    return weight


def nearest_customers(
    vectors: sp.csr_matrix, count: int, budget_bytes: int = 128 << 20
) -> np.ndarray:
    """The ``count`` most cosine-similar other customers of every customer (fewer where the
    shop has fewer). Among equal similarities the lower row wins, so the result is defined."""
    n = vectors.shape[0]
    count = min(count, n - 1)
    if count <= 0:
        return np.zeros((n, 0), dtype=np.int64)
    norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
    unit = sp.csr_matrix(sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ vectors)
    unit_t = unit.T.tocsc()
    chunk = max(1, budget_bytes // (8 * n))
    found = np.empty((n, count), dtype=np.int64)
    for begin in range(0, n, chunk):
        rows = np.arange(begin, min(n, begin + chunk))
        similarity = (unit[rows] @ unit_t).toarray()
        similarity[np.arange(len(rows)), rows] = -np.inf  # not one's own neighbour
        found[rows] = _top_set(similarity, count)
    return found


def _top_set(scores: np.ndarray, count: int) -> np.ndarray:
    """Column indices of the ``count`` best scores per row, ties at the cut by lower index."""
    kth = -np.partition(-scores, count - 1, axis=1)[:, count - 1 : count]
    above = scores > kth
    equal = scores == kth
    room = count - above.sum(axis=1, keepdims=True)
    chosen = above | (equal & (np.cumsum(equal, axis=1) <= room))
    picked: np.ndarray = np.nonzero(chosen)[1].reshape(len(scores), count)
    return picked
