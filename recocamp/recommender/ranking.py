"""The one interface every recommender implements, and top-k selection per offer mode.

A recommender is fitted on :class:`~recocamp.matrix.TrainingData` and scores customer rows
against all items. Selection is shared, so every model honours the offer modes the same way:

- ``replenish``: only items the customer bought before (replenishment, "buy again");
- ``discover``: only items the customer has not bought (cross-sell);
- ``mixed``: everything, ranked by the model's own score.

Ties are broken by item index (ascending item id), so results are reproducible.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

import numpy as np
from threadpoolctl import threadpool_limits

from recocamp.recommender.matrix import TrainingData


class Mode(StrEnum):
    REPLENISH = "replenish"
    DISCOVER = "discover"
    MIXED = "mixed"


class Recommender(Protocol):
    """Fitted on training data; ``score`` returns a dense rows × items float array."""

    name: str

    def fit(self, data: TrainingData) -> None: ...

    def score(self, rows: np.ndarray) -> np.ndarray: ...

    def params(self) -> dict[str, Any]: ...

    def arrays(self) -> dict[str, np.ndarray]: ...

    def restore(self, data: TrainingData, arrays: dict[str, np.ndarray]) -> None: ...


def top_k(
    model: Recommender,
    data: TrainingData,
    rows: np.ndarray,
    k: int,
    mode: Mode = Mode.MIXED,
    kernel_threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Item indices and scores of the best ``k`` items per row (-1 / -inf where fewer exist).

    The order is defined, whatever the kernel: score descending, then item index ascending.
    ``kernel_threads``: the native kernel's own threads (0: its default, every core; 1 where
    the caller runs several kernels at once, :func:`ranked_lists`).
    """
    native = getattr(model, "top_k_all", None)
    if native is not None and mode is Mode.MIXED and k < data.shape[1]:
        indices, values = _native_top_k(native, rows, k, kernel_threads)
        tied = np.flatnonzero(values[:, k - 1] == values[:, k])
        if len(tied):  # a tie crosses the cut: the kernel may have dropped an equal item
            indices[tied], values[tied] = _dense_top_k(model, data, rows[tied], k + 1, mode)
        return indices[:, :k], values[:, :k]
    return _dense_top_k(model, data, rows, k, mode)


def _native_top_k(
    native: Any, rows: np.ndarray, k: int, threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """``k + 1`` candidates from the model's native kernel, put in the defined order (its own
    order of equal scores is unspecified)."""
    indices, values = native(rows, k + 1, threads)
    indices = np.asarray(indices, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    order = np.lexsort((indices, -values), axis=1)
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(values, order, axis=1)


def _dense_top_k(
    model: Recommender, data: TrainingData, rows: np.ndarray, k: int, mode: Mode
) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(model.score(rows), dtype=np.float64)
    if mode is not Mode.MIXED:
        owned = data.orders[rows].toarray() > 0
        scores[owned if mode is Mode.DISCOVER else ~owned] = -np.inf
    k = min(k, scores.shape[1])
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # the k-th best score per row
    above = scores > kth
    equal = scores == kth  # of the items at the cut, the lowest indices are taken
    room = k - above.sum(axis=1, keepdims=True)
    chosen = above | (equal & (np.cumsum(equal, axis=1) <= room))
    part = np.nonzero(chosen)[1].reshape(len(rows), k)
    picked = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -picked), axis=1)
    indices = np.take_along_axis(part, order, axis=1)
    values = np.take_along_axis(picked, order, axis=1)
    return np.where(np.isfinite(values), indices, -1), values


def batches(rows: np.ndarray, n_items: int, budget_bytes: int = 256 << 20) -> Iterator[np.ndarray]:
    """Row batches whose dense score matrix stays within ``budget_bytes``."""
    size = max(1, budget_bytes // max(1, n_items * 8))
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


Ranked = list[list[Any]]  # [[item_id, score], …], best first: the cached top-N's shape


def ranked_lists(
    model: Recommender,
    data: TrainingData,
    rows: np.ndarray,
    n: int,
    threads: int = 1,
    budget_bytes: int = 256 << 20,
) -> Iterator[tuple[int, Ranked]]:
    """Each row's top-``n`` (mixed mode) as ``(row, [[item_id, score], …])``. The one
    computation behind the cached top-N and the same list computed on request for a customer
    the cache leaves out, so both give one answer.

    ``threads``: how many batches are scored at once. A batch job (the top-N cache of a
    training) passes its cores: the kernels release the GIL, so they run side by side and
    beside the lists being built here, where one core used to score while the others
    waited. The default, 1, is for the processes that serve (the API, the worker's campaign
    runs), which stay on one thread. ``budget_bytes``: the dense scores of the batches
    scored at once (:func:`batches`), shared between the threads."""
    threads = max(1, threads)
    chosen = np.asarray(rows, dtype=np.int64)
    names = _item_names(data, len(chosen) * n)
    parts = batches(chosen, data.shape[1], budget_bytes // threads)
    for batch, (indices, scores) in _scored(model, data, parts, n, threads):
        yield from _lists(batch, indices, scores, names)


def _item_names(data: TrainingData, cells: int) -> np.ndarray:
    """The item ids as Python strings, made once where the lists hold more ids than there are
    items (a cache of a million lists of twenty names 50,000 items, not 20 M new strings);
    else (a list on request) each list's own few."""
    return data.items.astype(object) if cells > len(data.items) else data.items


def _lists(
    batch: np.ndarray, indices: np.ndarray, scores: np.ndarray, names: np.ndarray
) -> Iterator[tuple[int, Ranked]]:
    """A batch's ``[[item_id, score], …]`` per row, the nested lists made by numpy's
    ``tolist`` (C) from one object array of pairs rather than pair by pair in Python;
    rows with fewer than ``n`` items lose their -1 places."""
    pairs = np.empty((*indices.shape, 2), dtype=object)
    pairs[..., 0] = names[np.maximum(indices, 0)].astype(object)
    pairs[..., 1] = np.round(scores, 6)  # Python floats, as ``tolist`` makes them
    nested = pairs.tolist()
    for short in np.flatnonzero((indices < 0).any(axis=1)).tolist():
        kept = indices[short].tolist()
        nested[short] = [pair for pair, i in zip(nested[short], kept, strict=True) if i >= 0]
    yield from zip(batch.tolist(), nested, strict=True)


Scored = tuple[np.ndarray, np.ndarray]


def _scored(
    model: Recommender, data: TrainingData, parts: Iterable[np.ndarray], n: int, threads: int
) -> Iterator[tuple[np.ndarray, Scored]]:
    """Each batch with its top-``n``, in batch order; with ``threads`` > 1 computed by that
    many threads, at most ``threads`` batches ahead of the consumer (memory stays bounded).
    Each kernel runs on one core, BLAS held to one thread for the pool's life: the threads
    are the parallelism, and no kernel's own threads compete with them."""
    if threads == 1:
        for batch in parts:
            yield batch, top_k(model, data, batch, n, Mode.MIXED)
        return
    with threadpool_limits(1, "blas"), ThreadPoolExecutor(threads) as pool:
        pending: deque[tuple[np.ndarray, Future[Scored]]] = deque()
        for batch in parts:
            pending.append((batch, pool.submit(top_k, model, data, batch, n, Mode.MIXED, 1)))
            if len(pending) > threads:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def normalised(scores: np.ndarray) -> np.ndarray:
    """Per-row min-max scaling to [0, 1], so scores of different models can be blended."""
    low = scores.min(axis=1, keepdims=True)
    span = scores.max(axis=1, keepdims=True) - low
    scaled: np.ndarray = (scores - low) / np.where(span > 0, span, 1.0)
    return scaled


class Profiled(Protocol):
    """What the objection rule reads of a customer (a ``customers`` row will do)."""

    @property
    def objected_to_profiling(self) -> bool: ...

    @property
    def erased_at(self) -> datetime | None: ...


def objects_to_profiling(person: Profiled | None) -> bool:
    """The one objection rule (GDPR Art. 21), for the API and ``recocamp recommend`` alike: a
    customer who objected to profiling, or was erased, gets no personal scores; an unknown
    customer has not objected."""
    return person is not None and (person.objected_to_profiling or person.erased_at is not None)


def personal_or_popular(
    known: bool, objected: bool, personal: list[list[Any]] | None, popular: list[list[Any]]
) -> tuple[list[list[Any]], str]:
    """Which list a customer gets, and why: customers who objected to profiling (or are
    erased) never get personal scores; unknown customers and customers without a personal
    list (no history) get the recent-popularity list."""
    if objected:
        return popular, "popular: objected to profiling"
    if not known:
        return popular, "popular: unknown customer"
    if not personal:
        return popular, "popular: no purchase history"
    return personal, "personal"
