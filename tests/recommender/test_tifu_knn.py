"""TIFU-KNN against a case computed by hand, and the reference figures on the whole UCI file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from recocamp.data.catalog import is_service_code
from recocamp.errors import ModelError
from recocamp.recommender import evaluate, matrix
from recocamp.recommender import models as model
from recocamp.recommender.matrix import Lines
from recocamp.recommender.tifu_knn import TifuKNN, TifuParams
from recocamp.settings import Settings
from tests.conftest import uci_rows

CUTOFF = datetime(2024, 6, 1, tzinfo=UTC)


def _lines(rows: list[tuple[str, str, str, int]]) -> Lines:
    """``(customer, item, order, day)`` with days before the cutoff (negative) or after."""
    customer, item, order, day = zip(*rows, strict=True)
    at = [(CUTOFF + timedelta(days=d)).timestamp() for d in day]
    return Lines.from_ids(np.array(customer), np.array(item), np.array(order), np.array(at))


HAND = [
    # A: four baskets, oldest first: {x}, {x, y} (x on two lines), {y}, {z}
    ("A", "x", "A1", -40),
    ("A", "x", "A2", -30),
    ("A", "x", "A2", -30),
    ("A", "y", "A2", -30),
    ("A", "y", "A3", -20),
    ("A", "z", "A4", -10),
    ("A", "w", "A5", 5),  # after the cutoff: never seen
    # B: {x}, then {y}
    ("B", "x", "B1", -30),
    ("B", "y", "B2", -5),
    # C: one basket {z, w}
    ("C", "z", "C1", -15),
    ("C", "w", "C1", -15),
]


def test_scores_match_the_hand_computed_case() -> None:
    data = matrix.build(_lines(HAND), CUTOFF.timestamp())
    assert list(data.items) == ["w", "x", "y", "z"] and list(data.customers) == ["A", "B", "C"]
    params = TifuParams(group_size=3, within_decay=0.5, group_decay=0.6, neighbours=1, alpha=0.7)
    tifu = TifuKNN(params)
    tifu.fit(data)
    # Weight of a basket: 0.5**place_in_group * 0.6**group / group_size / groups (0 = newest).
    # A: groups from the newest, of 3: [A4, A3, A2] (group 0) and [A1] (group 1); 2 groups.
    a4, a3, a2 = 1 / 3 / 2, 0.5 / 3 / 2, 0.25 / 3 / 2  # 1/6, 1/12, 1/24
    a1 = 0.6 / 1 / 2  # 0.3: alone in the older group, so its group mean is itself
    a = np.array([0.0, a1 + a2, a2 + a3, a4])  # w, x, y, z = 0, 0.341667, 0.125, 0.166667
    # B: one group [B2, B1]: 1/2 and 0.5/2
    b = np.array([0.0, 0.25, 0.5, 0.0])
    # C: one basket, one group
    c = np.array([1.0, 0.0, 0.0, 1.0])

    def cos(u: np.ndarray, v: np.ndarray) -> float:
        return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))

    # cos(A, B) = 0.1479 / (0.4002 * 0.5590) = 0.661 > cos(A, C) = 0.1667 / (0.4002 * 1.4142)
    # = 0.294 > cos(B, C) = 0: A's nearest is B; B's and C's is A.
    assert cos(a, b) > cos(a, c) > cos(b, c) == 0.0
    scores = tifu.score(np.array([0, 1, 2]))
    np.testing.assert_allclose(scores[0], 0.7 * a + 0.3 * b)  # x 0.3142, y 0.2375, z 0.1167
    np.testing.assert_allclose(scores[1], 0.7 * b + 0.3 * a)
    np.testing.assert_allclose(scores[2], 0.7 * c + 0.3 * a)  # w 0.7, x 0.1025, y 0.0375, z 0.75
    np.testing.assert_allclose(scores[0], [0.0, 0.3141667, 0.2375, 0.1166667], rtol=1e-6)
    np.testing.assert_allclose(scores[2], [0.7, 0.1025, 0.0375, 0.75], rtol=1e-6)


def test_neighbours_are_the_mean_of_the_nearest_and_never_oneself() -> None:
    data = matrix.build(_lines(HAND), CUTOFF.timestamp())
    both = TifuKNN(TifuParams(group_size=1, within_decay=1.0, group_decay=1.0, neighbours=5))
    both.fit(data)  # 5 asked, 2 others exist: the mean of both others' vectors
    one = TifuKNN(TifuParams(group_size=1, within_decay=1.0, group_decay=1.0, alpha=1.0))
    one.fit(data)
    own = one.score(np.array([0, 1, 2]))
    np.testing.assert_allclose(
        both.score(np.array([2])), 0.7 * own[[2]] + 0.3 * (own[0] + own[1]) / 2
    )


def test_it_is_an_evaluation_baseline_that_is_never_saved() -> None:
    data = matrix.build(_lines(HAND), CUTOFF.timestamp())
    tifu = model.make("tifu_knn", Settings().recommender)
    tifu.fit(data)
    with pytest.raises(ModelError, match="never saved"):
        tifu.arrays()


# The reference figures of shared/data/README.md, computed independently with DESIGN.md's
# protocol at cutoff 2011-09-01 (horizon 90 days, k = 10) and the README's parameters.
REFERENCE = {"recall": 0.370, "ndcg": 0.388, "hit_rate": 0.823, "recall_repeat": 0.594}


def _uci_lines() -> Lines:
    """Purchase lines of known customers, no returns, adjustments or service codes."""

    def learnable(row: list[str]) -> bool:
        invoice, code, _title, quantity, _at, price, customer, _country = row
        return bool(
            customer
            and not invoice.startswith("C")
            and float(quantity) > 0
            and float(price) > 0
            and not is_service_code(code)
        )

    _header, rows = uci_rows(learnable)
    at = [datetime.fromisoformat(row[4]).replace(tzinfo=UTC).timestamp() for row in rows]
    return Lines.from_ids(
        np.array([row[6] for row in rows]),
        np.array([row[1] for row in rows]),
        np.array([row[0] for row in rows]),
        np.array(at),
    )


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_reproduces_the_reference_on_the_whole_uci_file() -> None:
    split = evaluate.make_split(_uci_lines(), datetime(2011, 9, 1, tzinfo=UTC).timestamp(), 90)
    measured = evaluate.evaluate(TifuKNN(), split, k=10)
    assert measured.customers > 1800
    for metric, reference in REFERENCE.items():
        assert abs(getattr(measured, metric) - reference) <= 0.01, (metric, measured)
    baseline = evaluate.evaluate(model.make("repeat_frequency", Settings().recommender), split)
    assert measured.recall > baseline.recall + 0.02  # the published method is the stronger one


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_live_hybrid_beats_tifu_knn_on_the_whole_uci_file() -> None:
    """The model `train` serves, tuned only before the cutoff, against the published method
    on the same split. Measured: recall 0.3792 vs 0.3703, ndcg 0.3965 vs 0.3879 (1.024× /
    1.022×); without the ALS and item-kNN scores stacked into the replenishment blend
    0.3768 / 0.3944 (1.018× / 1.017×), with plain order counts for its own items a tie
    (0.3721 / 0.3894), so the margins below fail without either."""
    lines = _uci_lines()
    cutoff = datetime(2011, 9, 1, tzinfo=UTC).timestamp()
    split = evaluate.make_split(lines, cutoff, 90)
    settings = Settings().recommender.model_copy(update={"use_gpu": "false"})
    untuned = model.make("hybrid", settings)
    assert isinstance(untuned, model.Hybrid)
    weights = evaluate.tune_hybrid(untuned, lines, cutoff, 90)
    hybrid = evaluate.evaluate(model.make("hybrid", settings, weights), split, k=10)
    tifu = evaluate.evaluate(TifuKNN(), split, k=10)
    assert hybrid.recall >= 1.02 * tifu.recall, (hybrid, tifu)
    assert hybrid.ndcg >= 1.02 * tifu.ndcg, (hybrid, tifu)
    assert hybrid.recall_new >= 0.12  # discovery stays
