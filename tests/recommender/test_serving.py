"""The request-time serving rules (``recommender.serving``): which list a customer gets, and
the re-scoring from a history that changed since training; values in, values out."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest

from recocamp.recommender import serving
from recocamp.recommender.baselines import RepeatFrequency
from recocamp.recommender.matrix import build
from recocamp.recommender.ranking import objects_to_profiling
from recocamp.recommender.serving import Cached, Live
from recocamp.store.serving import ProfilingFlags
from tests.recommender_data import CUTOFF, History, Order, toy_lines


@pytest.fixture(scope="module")
def live() -> Live:
    data = build(toy_lines(), CUTOFF.timestamp())
    fitted = RepeatFrequency()
    fitted.fit(data)
    return Live.of("v1", fitted, data, CUTOFF)


BEFORE = History((Order(CUTOFF - timedelta(days=3), frozenset({"q2"})),))
SINCE = History((*BEFORE.orders, Order(CUTOFF + timedelta(days=1), frozenset({"p3"}))))
CACHED = Cached([["p1", 0.9], ["p2", 0.5]], "v0")


def choose(
    live: Live | None,
    history: History,
    cached: Cached | None,
    *,
    objected: bool = False,
    known: bool = True,
    customer_id: str = "newcomer",  # not in the model's training data
) -> serving.Personal:
    return serving.personal_list(
        live,
        history,
        cached,
        customer_id=customer_id,
        objected=objected,
        known=known,
        top_n=3,
        half_life=None,
    )


def test_the_cached_list_while_the_history_is_as_trained(live: Live) -> None:
    chosen = choose(live, BEFORE, CACHED)
    assert (chosen.items, chosen.why, chosen.model_version) == (CACHED.items, "personal", "v0")
    assert chosen.basis == "personal"


def test_a_purchase_since_the_cutoff_or_no_cached_list_is_rescored(live: Live) -> None:
    since = choose(live, SINCE, CACHED)
    assert (since.basis, since.why, since.model_version) == (
        "recalculated",
        "recalculated: changed since training",
        "v1",
    )
    assert since.items is not None and {since.items[0][0], since.items[1][0]} == {"p3", "q2"}
    assert choose(live, BEFORE, None).why == "recalculated: not in the cached lists"


@pytest.mark.parametrize(
    ("objected", "known", "history", "why"),
    [
        (True, True, SINCE, "popular: objected to profiling"),
        (False, False, History(()), "popular: unknown customer"),
        (False, True, History(()), "popular: no purchase history"),
    ],
)
def test_popularity_for_objection_unknown_and_empty_history(
    live: Live, objected: bool, known: bool, history: History, why: str
) -> None:
    chosen = choose(live, history, CACHED if objected else None, objected=objected, known=known)
    assert (chosen.items, chosen.why, chosen.basis) == (None, why, "popular")


def test_no_live_model_means_popularity() -> None:
    chosen = choose(None, SINCE, CACHED)
    assert (chosen.items, chosen.why, chosen.model_version) == (
        None,
        "popular: no live model yet",
        None,
    )


def test_an_erasure_counts_as_an_objection() -> None:
    assert objects_to_profiling(ProfilingFlags(True, None))
    assert objects_to_profiling(ProfilingFlags(False, CUTOFF))
    assert not objects_to_profiling(ProfilingFlags(False, None))
    assert not objects_to_profiling(None)  # an unknown customer has not objected


def test_rescore_skips_items_and_drops_unscored_ones(live: Live) -> None:
    ranked = live.rescore(SINCE, 10, None, skip=frozenset({"p3"}))
    assert ranked[0][0] == "q2" and "p3" not in [item for item, _ in ranked]


def test_the_best_first_are_those_of_a_full_sort_entry_for_entry() -> None:
    """``serving.best_first`` sorts only the entries at or above the ``top_n``-th score: the
    same positions in the same order as the full sort (ties by position, NaN last), with
    many ties, skipped items (-inf), +inf and NaN, and fewer numbers than ``top_n``."""
    rng = np.random.default_rng(7)
    for _ in range(3000):
        size = int(rng.integers(1, 400))
        scores = rng.integers(0, 6, size) / 3  # few distinct values: ties at the cut
        for special in (-np.inf, np.inf, np.nan, -0.0):
            scores[rng.random(size) < rng.random() * 0.4] = special
        for top_n in (0, 1, 5, 20, int(rng.integers(1, 60))):
            full = np.lexsort((np.arange(size), -scores))[:top_n]
            assert serving.best_first(scores, top_n).tolist() == full.tolist()


def test_a_late_order_is_seen_past_the_orders_of_an_item_returned_in_full(live: Live) -> None:
    """a_new was trained on p1 (two orders) and p2; p1 returned in full leaves p1 out of the
    history's orders, but not out of the model's row: an order stored late (dated before the
    cutoff) still shows as a change, and the history without it as none."""
    day = CUTOFF - timedelta(days=60)
    kept = History(
        (Order(day, frozenset()), Order(day + timedelta(days=3), frozenset({"p2"}))),
        returned=frozenset({"p1"}),
    )
    late = History((*kept.orders, Order(day + timedelta(days=4), frozenset({"p3"}))), kept.returned)
    assert not live.changed("a_new", kept)
    assert live.changed("a_new", late)


def test_changed_many_answers_as_changed_does_one_by_one(live: Live) -> None:
    """``changed_many`` (a campaign snapshot's every buyer at once) gives ``changed``'s
    answer for each: nothing new, an order since the cutoff, an order stored late, an item
    returned in full, a customer the model does not hold and an empty history."""
    day = CUTOFF - timedelta(days=60)
    kept = History(
        (Order(day, frozenset()), Order(day + timedelta(days=3), frozenset({"p2"}))),
        returned=frozenset({"p1"}),
    )
    late = History((*kept.orders, Order(day + timedelta(days=4), frozenset({"p3"}))), kept.returned)
    stored_late = History((Order(day, frozenset({"p1", "p2", "p3", "q1", "q2"})),))
    cases = [
        ("a_new", kept),
        ("a_new", late),
        ("a_new", stored_late),
        ("a_new", SINCE),
        ("a_new", History(())),
        ("newcomer", BEFORE),
        ("newcomer", SINCE),
    ]
    expected = [live.changed(customer, history) for customer, history in cases]
    assert True in expected and False in expected
    ids, histories = zip(*cases, strict=True)
    assert live.changed_many(list(ids), list(histories)) == expected
    assert live.changed_many([], []) == []
