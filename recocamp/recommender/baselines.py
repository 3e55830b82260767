"""Strong simple baselines, real models in the same interface as the learned ones.

On retail data these are hard to beat (shared/data/README.md): a customer's own most-bought
items reach about 2.5× the recall of plain popularity. Every learned model is judged
against them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recocamp.recommender.matrix import TrainingData


class Popularity:
    """Items ranked by distinct customers in the recent window (``popularity_days``)."""

    name = "popularity"

    def __init__(self) -> None:
        self._scores: np.ndarray = np.zeros(0, dtype=np.float32)

    def fit(self, data: TrainingData) -> None:
        top = float(data.popularity.max()) if len(data.popularity) else 0.0
        self._scores = data.popularity / top if top > 0 else data.popularity.copy()

    def score(self, rows: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self._scores, (len(rows), len(self._scores))).copy()

    def params(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"scores": self._scores}

    def restore(self, data: TrainingData, arrays: dict[str, np.ndarray]) -> None:
        self._scores = arrays["scores"]


class RepeatFrequency:
    """A customer's own items by the number of distinct orders that contained them (ties by
    item id), padded with popularity: every own item ranks above every other item."""

    name = "repeat_frequency"

    def __init__(self) -> None:
        self._data: TrainingData | None = None
        self._popularity = Popularity()

    def fit(self, data: TrainingData) -> None:
        self._data = data
        self._popularity.fit(data)

    def score(self, rows: np.ndarray) -> np.ndarray:
        assert self._data is not None, "fit or restore first"
        own = self._data.orders[rows].toarray()
        padding = 0.5 * self._popularity.score(rows)  # in [0, 0.5]: below any own item
        return np.where(own > 0, 1.0 + own, padding)

    def params(self) -> dict[str, Any]:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return self._popularity.arrays()

    def restore(self, data: TrainingData, arrays: dict[str, np.ndarray]) -> None:
        self._data = data
        self._popularity.restore(data, arrays)
