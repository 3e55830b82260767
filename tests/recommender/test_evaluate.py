"""The evaluation protocol against hand-computed examples."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from recocamp.recommender import evaluate
from recocamp.recommender import models as model
from recocamp.recommender.matrix import DAY, Lines
from recocamp.settings import Settings
from tests.recommender_data import CUTOFF, toy_lines

SETTINGS = Settings().recommender.model_copy(
    update={"factors": 8, "iterations": 20, "use_gpu": "false"}
)


def test_ranking_metrics_by_hand() -> None:
    hits = np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]], dtype=float)
    relevant = np.array([2, 5, 1])
    recall, ndcg, hit = evaluate.ranking_metrics(hits, relevant, k=3)
    assert recall.tolist() == pytest.approx([1.0, 0.0, 1.0])  # hits / min(k, |test|)
    ideal_two = 1 + 1 / math.log2(3)
    assert ndcg.tolist() == pytest.approx(
        [(1 + 1 / math.log2(4)) / ideal_two, 0.0, (1 / math.log2(3)) / 1]
    )
    assert hit.tolist() == [1.0, 0.0, 1.0]
    recall, _, _ = evaluate.ranking_metrics(np.array([[1.0, 1.0]]), np.array([30]), k=2)
    assert recall.tolist() == [1.0]  # the denominator is capped at k


def future(*rows: tuple[str, str, float]) -> Lines:
    """The toy shop plus purchases ``day`` days after its cutoff, one order each."""
    extra = tuple(
        (customer, item, f"f{n}", CUTOFF + timedelta(days=day))
        for n, (customer, item, day) in enumerate(rows)
    )
    return toy_lines(extra)


def test_split_and_evaluation_on_a_known_future() -> None:
    lines = future(
        ("a_new", "p3", 1),
        ("a_new", "p1", 2),
        ("a_new", "brand_new", 3),  # new, repeat, unseen
        ("b0", "q2", 5),  # a repeat item for b0
        ("stranger", "p1", 1),  # no purchase before the cutoff: not evaluated
        ("a0", "p2", 200),  # after the horizon: ignored
    )
    split = evaluate.make_split(lines, CUTOFF.timestamp(), 90)
    assert [str(split.data.customers[r]) for r in split.rows] == ["a_new", "b0"]
    assert split.unknown.tolist() == [1, 0]
    metrics = evaluate.evaluate(model.make("repeat_frequency", SETTINGS), split, k=2)
    # a_new: top-2 mixed [p1, p2]: 1 hit of min(2, 3) → 0.5; b0: [q1, q2] → 1 of 1 → 1.0
    assert metrics.recall == pytest.approx(0.75) and metrics.customers == 2
    assert metrics.hit_rate == 1.0
    assert metrics.recall_repeat == pytest.approx(1.0)  # both repeat items are in the lists
    # discover for a_new: [q1, p3]: p3 is one of its 2 new items (p3, brand_new) → 0.5
    assert metrics.recall_new == pytest.approx(0.5)


def test_hybrid_tuning_never_looks_past_the_cutoff(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, float]] = []
    real = evaluate.make_split

    def spy(lines: Lines, cutoff: float, horizon_days: float, **kwargs: Any) -> evaluate.Split:
        seen.append((cutoff, horizon_days))
        return real(lines, cutoff, horizon_days, **kwargs)

    monkeypatch.setattr(evaluate, "make_split", spy)
    lines = future(("a_new", "p3", 1), *((f"a{n}", "q1", 40) for n in range(6)))
    cutoff = CUTOFF.timestamp() + 30 * DAY
    hybrid = model.make("hybrid", SETTINGS)
    assert isinstance(hybrid, model.Hybrid)
    weights = evaluate.tune_hybrid(hybrid, lines, cutoff, 30)
    ((split_cutoff, horizon),) = seen
    assert split_cutoff + horizon * DAY == cutoff  # validation test window ends at the cutoff
    discovery = (weights.als, weights.popularity, weights.new_arrivals, weights.repeat_boost)
    assert discovery in {
        (a, p, n, b * (1 + p + n))
        for a in evaluate.DISCOVER_GRID["als"]
        for p in evaluate.DISCOVER_GRID["popularity"]
        for n in evaluate.DISCOVER_GRID["new_arrivals"]
        for b in evaluate.BOOST_GRID
    }


def test_hybrid_tuning_ignores_what_happens_after_the_cutoff() -> None:
    """Every tuned parameter — the discovery blend, the repeat boost and the learned
    replenishment blend — is the same whatever happens after the cutoff, yet each does move
    when the same purchases fall inside the validation window (so the test can fail)."""
    cutoff = CUTOFF.timestamp() + 30 * DAY
    before = (("a_new", "p3", 1), ("b0", "q2", 3), ("a1", "p2", 4))  # b0 and a1 buy again

    def flood(start: float) -> tuple[tuple[str, str, float], ...]:
        return (
            *((f"a{n}", "q1", start + n) for n in range(6)),  # new items for the a's
            *((f"b{n}", "p2", start + 5 + n) for n in range(6)),
            *((f"a{n}", "p2", start + n) for n in range(2, 6)),  # repurchases: own blend
            *((f"b{n}", "q3", start + 5 + n) for n in range(1, 6)),
        )

    def tuned(lines: Lines) -> model.HybridWeights:
        hybrid = model.make("hybrid", SETTINGS)
        assert isinstance(hybrid, model.Hybrid)
        return evaluate.tune_hybrid(hybrid, lines, cutoff, 30)

    quiet = tuned(future(*before))
    assert quiet.own != model.HybridWeights().own  # the replenishment blend was learned
    assert tuned(future(*before, *flood(40))) == quiet  # after the cutoff: must not matter
    inside = tuned(future(*before, *flood(5)))  # the same purchases inside the window
    assert inside.own != quiet.own
    stacked = ("own_als", "own_knn")  # the stacked model scores, tuned parameters too
    assert all(getattr(inside, name) != getattr(quiet, name) for name in stacked)


def _shop(later: range) -> Lines:
    """300 customers with one line each before day 100; those in ``later`` buy again on
    day 110, inside the split's horizon."""
    rows = [(f"c{n:03d}", f"i{n % 7}", f"o{n}", 50.0) for n in range(300)]
    rows += [(f"c{n:03d}", f"i{(n + 1) % 7}", f"p{n}", 110.0) for n in later]
    customer, item, order, day = zip(*rows, strict=True)
    return Lines.from_ids(np.array(customer), np.array(item), np.array(order), np.array(day) * DAY)


def test_the_evaluation_sample_is_bounded_seeded_and_drawn_before_the_cutoff() -> None:
    def evaluated(lines: Lines, seed: int = 0) -> set[str]:
        split = evaluate.make_split(lines, 100 * DAY, 30, max_customers=100, seed=seed)
        return set(split.data.customers[split.rows].tolist())

    fewer, more = _shop(range(0, 300, 2)), _shop(range(0, 300))
    drawn = evaluated(more)  # everybody has test items: the sample is exactly the draw
    assert len(drawn) == 100 and evaluated(more) == drawn and evaluated(more, seed=1) != drawn
    # who buys after the cutoff decides nothing about who is drawn: with half the
    # customers buying later, the evaluated ones are the same draw's later buyers
    later = {f"c{n:03d}" for n in range(0, 300, 2)}
    assert evaluated(fewer) == drawn & later
