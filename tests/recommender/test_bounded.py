"""The bounded top-k: the same items and scores as scoring every item, fewer items scored."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from recocamp.recommender import bounded
from recocamp.recommender import models as model


class Counting:
    """A numpy kernel that counts the (query, item) products it computes."""

    def __init__(self) -> None:
        self.products = 0

    def __call__(
        self, items: np.ndarray, query: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        self.products += len(items) * len(query)
        scores = query @ items.T
        best = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return best, np.take_along_axis(scores, best, axis=1)


def every_item(items: np.ndarray, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference: every item scored, the defined order (score descending, index)."""
    scores = query @ items.T
    order = np.lexsort((np.tile(np.arange(len(items)), (len(query), 1)), -scores), axis=1)
    best = order[:, :k]
    return best, np.take_along_axis(scores, best, axis=1)


# Small integers: every product and sum is exact in float32, and equal scores are common,
# so the comparison is exact and the ties are exercised.
factors = st.integers(1, 4).flatmap(
    lambda width: st.tuples(
        hnp.arrays(
            np.float32, st.tuples(st.integers(1, 40), st.just(width)), elements=st.integers(-3, 3)
        ),
        hnp.arrays(
            np.float32, st.tuples(st.integers(1, 6), st.just(width)), elements=st.integers(-3, 3)
        ),
    )
)


@settings(max_examples=300, deadline=None)
@given(factors, st.integers(1, 40), st.integers(1, 8), st.integers(1, 4))
def test_the_same_items_and_scores_as_scoring_every_item(
    pair: tuple[np.ndarray, np.ndarray], k: int, first: int, directions: int
) -> None:
    """The best ``k`` scores always; the items too wherever no equal score crosses the cut
    (there a kernel may keep either, and ``ranking.top_k`` re-scores such rows densely).
    Fewer directions than factors leave a rest, whose bound is then tested too."""
    items, query = pair
    k = min(k, len(items))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bounded, "DIRECTIONS", directions)
        order = bounded.LengthOrder.of(items)
    got = bounded.top_k(Counting(), order, query, k, first=first)
    expected = every_item(items, query, len(items))
    np.testing.assert_array_equal(got[1], expected[1][:, :k])
    decided = (
        np.ones(len(query), bool) if k == len(items) else expected[1][:, k - 1] > expected[1][:, k]
    )
    np.testing.assert_array_equal(got[0][decided], expected[0][decided, :k])


def test_a_customer_leaves_once_the_longer_items_decide() -> None:
    """Ten long items and 990 short ones: a customer aligned with a long item is done after
    the first slice of 16; one whose best scores are weak goes through every item."""
    rng = np.random.default_rng(3)
    items = np.vstack([rng.normal(0, 1, (10, 4)) * 10, rng.normal(0, 1, (990, 4)) * 0.01])
    items = items.astype(np.float32)
    aligned = items[:1] / np.linalg.norm(items[0])
    kernel = Counting()
    order = bounded.LengthOrder.of(items)
    indices, _ = bounded.top_k(kernel, order, aligned, 3, first=16)
    assert kernel.products == 16
    assert indices[0, 0] == 0
    weak = np.zeros((1, 4), dtype=np.float32)  # every score 0: nothing is ever ruled out
    kernel.products = 0
    bounded.top_k(kernel, order, weak, 3, first=16)
    assert kernel.products == 1000


def test_the_items_directions_stop_what_their_length_cannot() -> None:
    """Eight items along x (length 3) and 500 along y (length 2.5); the customer leans away
    from y. The best x item scores 2.12, under the y items' length bound (2.5), but no y
    item can score above 0 for this customer: the first slice decides."""
    items = np.vstack([np.tile([3.0, 0.0], (8, 1)), np.tile([0.0, 2.5], (500, 1))])
    query = np.array([[1.0, -1.0]], dtype=np.float32) / np.sqrt(2)
    kernel = Counting()
    indices, _ = bounded.top_k(
        kernel, bounded.LengthOrder.of(items.astype(np.float32)), query, 2, first=8
    )
    assert kernel.products == 8
    assert indices.tolist() == [[0, 1]]


def test_an_item_that_can_only_tie_is_still_scored() -> None:
    """The first slice's best scores 2 and the next item can reach 2 at most (and does):
    the search goes on, and the equal item with the lower index wins."""
    short = [[0.1, 0.0]] * 3  # so that the first slice is not already every item
    items = np.array([[0.0, 2.0], [1.5, 2.0], *short], dtype=np.float32)  # lengths 2, 2.5
    query = np.array([[0.0, 1.0]], dtype=np.float32)
    kernel = Counting()
    indices, scores = bounded.top_k(kernel, bounded.LengthOrder.of(items), query, 1, first=1)
    assert kernel.products == 1 + 4
    assert indices.tolist() == [[0]] and scores.tolist() == [[2.0]]


@pytest.mark.parametrize("first", [2, 8, 64, 10_000])
def test_a_factor_models_native_top_k_is_every_items(
    first: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """implicit's kernel on slices (ALS factors with power-law lengths, as a shop's) gives
    what its product over every item gives, for every first slice size."""
    rng = np.random.default_rng(11)
    als = model.ALS(factors=16, use_gpu=False)  # more factors than directions: a rest
    lengths = 1.0 / np.arange(1, 301) ** 0.9
    als.item_factors = (rng.normal(0, 1, (300, 16)) * lengths[:, None]).astype(np.float32)
    als.user_factors = rng.normal(0, 1, (50, 16)).astype(np.float32)
    monkeypatch.setattr(bounded, "FIRST_SLICE", first)
    rows = np.arange(50)
    indices, scores = als.top_k_all(rows, 11, threads=1)
    dense = als.score(rows)
    expected = np.argsort(-dense, axis=1, kind="stable")[:, :11]
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(dense, expected, axis=1), rtol=1e-5)


@pytest.mark.parametrize("directions", [1, 4, 8, 16])
def test_no_later_item_scores_above_the_bound(
    directions: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound past every rank, against every later item's exact score: sound with any
    number of directions, including fewer than the factors (a rest to bound)."""
    rng = np.random.default_rng(5)
    items = (rng.normal(0, 1, (200, 16)) * rng.pareto(1.5, (200, 1))).astype(np.float32)
    query = rng.normal(0, 1, (40, 16)).astype(np.float32)
    monkeypatch.setattr(bounded, "DIRECTIONS", directions)
    order = bounded.LengthOrder.of(items)
    scores = query.astype(np.float64) @ items.astype(np.float64)[order.order].T
    later_best = np.maximum.accumulate(scores[:, ::-1], axis=1)[:, ::-1]
    customers = order.bounds(query)
    for rank in range(len(items)):
        bound = order.beyond(customers, np.arange(len(query)), rank)
        assert (later_best[:, rank] <= bound).all(), rank
    tightest = order.beyond(customers, np.arange(len(query)), 0)
    assert (tightest < np.linalg.norm(query, axis=1) * order.lengths[0]).any()  # directions help


def test_a_served_model_ranks_its_items_once_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranking 50,000 items by length takes 0.3 s: a serving process does it when it loads
    the model, not in the first request, and not again per request."""
    from datetime import UTC, datetime

    from recocamp.recommender.serving import Live

    made: list[int] = []
    real = bounded.LengthOrder.of

    def counted(factors: np.ndarray) -> bounded.LengthOrder:
        made.append(len(factors))
        return real(factors)

    monkeypatch.setattr(bounded.LengthOrder, "of", staticmethod(counted))
    als = model.ALS(factors=4, use_gpu=False)
    als.item_factors = np.eye(30, 4, dtype=np.float32) + 0.1
    als.user_factors = np.ones((5, 4), dtype=np.float32)
    data = SimpleNamespace(items=np.array([f"i{n}" for n in range(30)]))
    Live.of("v1", als, data, datetime(2025, 1, 1, tzinfo=UTC))  # type: ignore[arg-type]
    assert made == [30]
    als.top_k_all(np.arange(5), 3, threads=1)
    als.top_k_all(np.arange(2), 3, threads=1)
    assert made == [30]
