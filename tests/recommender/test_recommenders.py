"""One contract for every model and baseline, on a tiny shop with a known answer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from recocamp.errors import ModelError
from recocamp.recommender import models as model
from recocamp.recommender import repeat
from recocamp.recommender.matrix import Lines, TrainingData, build
from recocamp.recommender.ranking import (
    Mode,
    Recommender,
    objects_to_profiling,
    personal_or_popular,
    ranked_lists,
    top_k,
)
from recocamp.settings import RecommenderSettings, Settings
from tests.recommender_data import CUTOFF, toy_lines

SETTINGS = Settings().recommender.model_copy(
    update={
        "factors": 8,
        "iterations": 20,
        "bpr_iterations": 200,
        "bpr_learning_rate": 0.05,
        "use_gpu": "false",
    }
)


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return build(toy_lines(), CUTOFF.timestamp())


def fitted(name: str, data: TrainingData, settings: RecommenderSettings = SETTINGS) -> Recommender:
    recommender = model.make(name, settings)
    recommender.fit(data)
    return recommender


def ranked(
    recommender: Recommender, data: TrainingData, customer: str, mode: Mode, k: int = 3
) -> list[str]:
    indices, _ = top_k(recommender, data, data.rows_of(np.array([customer])), k, mode)
    return [str(data.items[i]) for i in indices[0] if i >= 0]


LEARNED = ("als", "bpr", "item_knn", "hybrid")


@pytest.mark.parametrize("name", model.MODEL_NAMES)
def test_modes_are_honoured_by_every_model(name: str, data: TrainingData) -> None:
    recommender = fitted(name, data)
    assert recommender.score(np.arange(3)).shape == (3, len(data.items))
    assert set(ranked(recommender, data, "a_new", Mode.REPLENISH)) == {"p1", "p2"}
    discover = ranked(recommender, data, "a_new", Mode.DISCOVER, k=10)
    assert set(discover).isdisjoint({"p1", "p2"}) and len(discover) == 4
    assert len(ranked(recommender, data, "a_new", Mode.MIXED, k=6)) == 6


@pytest.mark.parametrize("name", LEARNED)
def test_learned_models_find_the_missing_item_of_the_cluster(name: str, data: TrainingData) -> None:
    assert ranked(fitted(name, data), data, "a_new", Mode.DISCOVER)[0] == "p3"


def test_baselines_known_answers(data: TrainingData) -> None:
    popularity = fitted("popularity", data)
    assert ranked(popularity, data, "a_new", Mode.MIXED) == ["q1", "p1", "p2"]  # 8, 7, 7 buyers
    repeat = fitted("repeat_frequency", data)
    assert ranked(repeat, data, "a_new", Mode.MIXED) == [
        "p1",
        "p2",
        "q1",
    ]  # 2 orders, 1, then padding
    assert ranked(repeat, data, "b0", Mode.MIXED) == ["q1", "q2", "q3"]


@pytest.mark.parametrize("name", ("repeat_frequency", "als", "item_knn", "hybrid"))
def test_replenish_puts_the_more_often_bought_item_first(name: str, data: TrainingData) -> None:
    assert ranked(fitted(name, data), data, "a_new", Mode.REPLENISH) == ["p1", "p2"]


@pytest.mark.parametrize("name", model.MODEL_NAMES)
def test_fitting_is_deterministic(name: str, data: TrainingData) -> None:
    rows = np.arange(len(data.customers))
    np.testing.assert_allclose(
        fitted(name, data).score(rows), fitted(name, data).score(rows), rtol=1e-5
    )


SAVED = tuple(name for name in model.MODEL_NAMES if name not in model.EVALUATION_ONLY)


@pytest.mark.parametrize("name", SAVED)
def test_artifacts_round_trip_without_pickle(name: str, data: TrainingData, tmp_path: Path) -> None:
    recommender = fitted(name, data)
    meta = {"name": name, "params": recommender.params(), "version": "v1"}
    model.save(tmp_path / "v1", recommender, data, meta)
    with np.load(tmp_path / "v1" / "model.npz", allow_pickle=False) as stored:
        assert all(stored[key].dtype != object for key in stored.files)
    loaded, loaded_data, loaded_meta = model.load(tmp_path / "v1", SETTINGS)
    rows = np.arange(len(data.customers))
    np.testing.assert_allclose(loaded.score(rows), recommender.score(rows), rtol=1e-6)
    assert list(loaded_data.items) == list(data.items) and loaded_meta == meta


def test_a_save_cut_short_leaves_no_half_written_file(
    data: TrainingData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or a full disk) while ``model.npz`` is written: its ``.partial`` file went
    nowhere, for ever (the purge knows registered models only); a kept model is untouched."""
    recommender = fitted("popularity", data)
    meta = {"name": "popularity", "params": recommender.params(), "version": "v1"}
    model.save(tmp_path / "v1", recommender, data, meta)
    before = (tmp_path / "v1" / "model.npz").read_bytes()

    def interrupted(handle: Any, **_arrays: Any) -> None:
        handle.write(b"PK half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.save(tmp_path / "v1", recommender, data, meta)
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["meta.json", "model.npz"]
    assert (tmp_path / "v1" / "model.npz").read_bytes() == before


def test_a_scrub_cut_short_leaves_no_half_written_file(
    data: TrainingData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (or a full disk) while an erasure's or objection's scrub rewrites a model: its
    ``.partial`` copy holds every other customer's rows and factors, and nothing would ever
    remove it (the purge and the next erasure's scrub know ``model.npz`` only); the model is
    untouched and the scrub can run again."""
    recommender = fitted("als", data)
    meta = {"name": "als", "params": recommender.params(), "version": "v1"}
    model.save(tmp_path / "v1", recommender, data, meta)
    before = (tmp_path / "v1" / "model.npz").read_bytes()
    gone = str(data.customers[0])

    def interrupted(handle: Any, **_arrays: Any) -> None:
        handle.write(b"PK half a zip")
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(np, "savez", interrupted)
        with pytest.raises(KeyboardInterrupt):
            model.drop_customers(tmp_path / "v1", {gone})
    names = sorted(p.name for p in (tmp_path / "v1").iterdir())
    assert names == ["meta.json", "model.lock", "model.npz"]
    assert (tmp_path / "v1" / "model.npz").read_bytes() == before
    assert model.drop_customers(tmp_path / "v1", {gone}) == 1


def _tampered(directory: Path, **replaced: np.ndarray) -> None:
    path = directory / "model.npz"
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    with path.open("wb") as handle:
        np.savez(handle, allow_pickle=False, **(arrays | replaced))


def _without_first_customer(directory: Path, data: TrainingData) -> None:
    """The first customer out of the id map and the matrices, not out of the factors."""
    kept = np.flatnonzero(data.customers != data.customers[0])
    arrays: dict[str, np.ndarray] = {"customers": data.customers[kept]}
    for matrix in model.PER_CUSTOMER_MATRICES:
        rebuilt = getattr(data, matrix)[kept].tocsr()
        arrays |= {
            f"{matrix}_data": rebuilt.data,
            f"{matrix}_indices": rebuilt.indices,
            f"{matrix}_indptr": rebuilt.indptr,
            f"{matrix}_shape": np.array(rebuilt.shape),
        }
    _tampered(directory, **arrays)


def _items_reversed(directory: Path, data: TrainingData) -> None:
    _tampered(directory, items=data.items[::-1].copy())


@pytest.mark.parametrize(
    ("name", "damage", "reason"),
    [
        ("als", _without_first_customer, "user_factors has shape"),
        ("hybrid", _without_first_customer, "als_user_factors has shape"),
        ("item_knn", _items_reversed, "items: the ids are not sorted"),
        ("popularity", _items_reversed, "items: the ids are not sorted"),
    ],
)
def test_artifacts_whose_id_maps_and_arrays_disagree_are_refused(
    name: str,
    damage: Callable[[Path, TrainingData], None],
    reason: str,
    data: TrainingData,
    tmp_path: Path,
) -> None:
    """A customer dropped from the id map but not from the factors shifts every later
    customer onto a neighbour's factors, and an item map out of order names other items
    than the scores are for (rows and columns are found by binary search): customers would
    be served somebody else's list, or wrong items. The old load served them silently."""
    recommender = fitted(name, data)
    meta = {"name": name, "params": recommender.params(), "version": "v1"}
    model.save(tmp_path / "v1", recommender, data, meta)
    model.load(tmp_path / "v1", SETTINGS)  # as saved: loads
    damage(tmp_path / "v1", data)
    with pytest.raises(ModelError, match=f"ValueError: {reason}"):
        model.load(tmp_path / "v1", SETTINGS)


def test_broken_artifacts_and_unknown_models_are_model_errors(tmp_path: Path) -> None:
    with pytest.raises(
        ModelError, match=r"cannot load the model artifacts at .*missing: FileNotFoundError"
    ):
        model.load(tmp_path / "missing", SETTINGS)
    with pytest.raises(ModelError, match="unknown model 'gru4rec'"):
        model.make("gru4rec", SETTINGS)
    with pytest.raises(ModelError, match="CUDA build is not available"):
        model.make("als", SETTINGS.model_copy(update={"use_gpu": "true"}))


@pytest.mark.parametrize(
    ("use_gpu", "on_gpu"),
    (("auto", {"als"}), ("true", {"als", "bpr", "hybrid"}), ("false", set())),
)
def test_only_the_models_whose_gpu_fit_matches_the_cpu_move_under_auto(
    use_gpu: str, on_gpu: set[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """implicit's CUDA BPR ranks far worse than its CPU BPR, and the hybrid on CUDA factors
    discovers less (README "GPU"): ``auto`` keeps both on the CPU; ``true`` is the operator's
    explicit choice."""
    monkeypatch.setattr(model, "gpu_available", lambda setting: setting != "false")
    settings = SETTINGS.model_copy(update={"use_gpu": use_gpu})
    moved = set()
    for name in ("als", "bpr", "hybrid"):
        made = model.make(name, settings)
        factors = made.als if isinstance(made, model.Hybrid) else made
        assert isinstance(factors, model.ALS | model.BPR)
        if factors.uses_gpu:
            moved.add(name)
    assert moved == on_gpu


@pytest.mark.skipif(not model.gpu_available("auto"), reason="needs implicit's CUDA build")
def test_a_gpu_fitted_model_ranks_the_cache_on_the_gpu_as_the_cpu_does() -> None:
    """The top-N cache of a GPU-fitted model comes from implicit's CUDA kernel: the same
    items in the same order as the CPU kernel on the same factors (well-separated scores:
    float32 sums in another order may swap near-ties, which ``ranking.top_k`` then settles)."""
    # item i loads one factor (i // 50) by 1 + i / 1000; customers' factors are distinct
    items = np.eye(8, dtype=np.float32).repeat(50, axis=0) * (1 + np.arange(400)[:, None] / 1000)
    users = np.random.default_rng(5).permutation(300 * 8).reshape(300, 8) / 7.0
    on_gpu, on_cpu = model.ALS(factors=8, use_gpu=True), model.ALS(factors=8, use_gpu=False)
    for fitted_model in (on_gpu, on_cpu):
        fitted_model.user_factors = users.astype(np.float32)
        fitted_model.item_factors = items.astype(np.float32)
    rows = np.arange(0, 300, 3)
    gpu_indices, gpu_scores = on_gpu.top_k_all(rows, 10)
    cpu_indices, cpu_scores = on_cpu.top_k_all(rows, 10)
    np.testing.assert_array_equal(gpu_indices, cpu_indices)
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-5)


@pytest.mark.parametrize("name", ("item_knn", "hybrid", "als", "repeat_frequency"))
def test_similar_items_stay_in_the_cluster(name: str, data: TrainingData) -> None:
    similar = model.similar(fitted(name, data), data, "p1", 2)
    assert {item for item, _ in similar} == {"p2", "p3"}
    assert model.similar(fitted(name, data), data, "nope", 2) == []


def test_the_objection_rule() -> None:
    """One rule for the API and ``recocamp recommend``: objected or erased, never personal."""
    person = SimpleNamespace(objected_to_profiling=False, erased_at=None)
    assert objects_to_profiling(None) is False  # unknown: nothing to object with
    assert objects_to_profiling(person) is False
    assert objects_to_profiling(SimpleNamespace(objected_to_profiling=True, erased_at=None))
    assert objects_to_profiling(SimpleNamespace(objected_to_profiling=False, erased_at=CUTOFF))


def test_cold_start_and_objection_get_popularity() -> None:
    popular = [["q1", 1.0]]
    personal = [["p3", 0.9]]
    assert personal_or_popular(True, False, personal, popular) == (personal, "personal")
    assert personal_or_popular(True, True, personal, popular)[1] == "popular: objected to profiling"
    assert personal_or_popular(False, False, None, popular) == (
        popular,
        "popular: unknown customer",
    )
    assert personal_or_popular(True, False, [], popular)[1] == "popular: no purchase history"


def _in_defined_order(indices: np.ndarray, scores: np.ndarray) -> bool:
    """Score descending, then item index ascending: the order users see."""
    return all(
        list(zip(-row_scores, row, strict=True)) == sorted(zip(-row_scores, row, strict=True))
        for row, row_scores in zip(indices, scores, strict=True)
    )


def test_native_top_k_of_factor_models_matches_dense_scoring(data: TrainingData) -> None:
    als = fitted("als", data)
    rows = np.arange(len(data.customers))
    native, native_scores = top_k(als, data, rows, 4, Mode.MIXED)
    dense = np.sort(als.score(rows), axis=1)[:, ::-1][:, :4]
    np.testing.assert_allclose(native_scores, dense, rtol=1e-5)  # the best four scores
    np.testing.assert_allclose(
        native_scores, np.take_along_axis(als.score(rows), native, axis=1), rtol=1e-5
    )
    assert _in_defined_order(native, native_scores)


@pytest.mark.parametrize("mode", list(Mode))
def test_equal_scores_are_ordered_by_item_index_in_every_kernel(
    data: TrainingData, mode: Mode
) -> None:
    """Item 0 scores best and all others the same, for every customer: the lowest indices win
    the cut and come first, in the native kernel (mixed) and in the dense path alike."""
    als = fitted("als", data)
    assert isinstance(als, model.ALS)
    items = np.tile(np.array([1.0, 0.5], dtype=np.float32), (len(data.items), 1))
    items[0] = [2.0, 1.0]
    als.item_factors = items
    als.user_factors = np.ones((len(data.customers), 2), dtype=np.float32)
    rows = np.arange(len(data.customers))
    indices, scores = top_k(als, data, rows, 3, mode)
    for row in indices:
        kept = [int(i) for i in row if i >= 0]
        assert kept == sorted(kept, key=lambda i: (i != 0, i)), (mode, row)
    if mode is Mode.MIXED:
        assert indices.tolist() == [[0, 1, 2]] * len(rows)
    assert _in_defined_order(indices, scores)


@pytest.mark.parametrize("name", ["als", "hybrid"])
def test_lists_scored_by_several_threads_are_the_single_threads(
    name: str, data: TrainingData
) -> None:
    """The top-N cache scores its batches on every core (``training.top_lists``): the same
    lists, in the same row order, as one thread gives (a batch of two rows at most, so the
    threads share many batches; the native kernel for ALS, the dense path for the hybrid)."""
    from threadpoolctl import threadpool_info

    recommender = fitted(name, data)
    rows = np.arange(len(data.customers))[::-1]  # any order of rows is kept
    tiny = 2 * len(data.items) * 8  # two rows of dense scores a batch, at one thread
    alone = list(ranked_lists(recommender, data, rows, 4, threads=1, budget_bytes=tiny))
    blas = [info["num_threads"] for info in threadpool_info()]
    together = list(ranked_lists(recommender, data, rows, 4, threads=3, budget_bytes=3 * tiny))
    assert [row for row, _ in alone] == rows.tolist() and len(rows) > 6
    assert together == alone
    assert [info["num_threads"] for info in threadpool_info()] == blas  # BLAS as it was
    assert all(len(ranked) == 4 and isinstance(ranked[0][0], str) for _, ranked in alone)


def test_the_replenishment_blend_is_the_same_at_request_time(data: TrainingData) -> None:
    """A customer re-scored from their purchase events (serving) gets the own-item scores
    of training: counts, recency, the item signals and the stacked model scores all reach
    the request-time path (the kNN score exactly; ALS by fold-in, to its precision)."""
    weights = model.HybridWeights(own_recency=-3.0, own_propensity=0.5, own_month=0.3)
    hybrid = model.make("hybrid", SETTINGS, weights)
    assert isinstance(hybrid, model.Hybrid)
    hybrid.fit(data)
    lines = toy_lines()
    mine = lines.customer_ids[lines.customer] == "a0"
    events = [
        (str(lines.item_ids[i]), int(o), float(t))
        for i, o, t in zip(lines.item[mine], lines.order[mine], lines.at[mine], strict=True)
    ]
    rows = model.history_rows(data, model.item_columns(data), events, None)
    trained = hybrid.parts(data.rows_of(np.array(["a0"])))["own"][0]
    unstacked = repeat.Collaborative.none((1, len(data.items)))  # own_als = own_knn = 0
    served = hybrid.own(rows.orders, rows.last_days, unstacked)[0]
    assert served == pytest.approx(trained)
    p1, p2, p3 = (int(np.flatnonzero(data.items == item)[0]) for item in ("p1", "p2", "p3"))
    # p1: two orders, the last one the more recent; p2 and p3 once, a day earlier
    assert (
        trained[p1] == 1.0 and 0 < min(trained[p2], trained[p3]) < max(trained[p2], trained[p3]) < 1
    )


def test_the_stacked_blend_serves_the_batch_answer(data: TrainingData) -> None:
    """With the ALS and item-kNN scores of own items in the blend, a customer re-scored at
    request time from their unchanged history gets the list the batch computed: the kNN
    score is the same product, the ALS one a fold-in (least squares on the item factors)."""
    weights = model.HybridWeights(own_recency=-1.0, own_als=2.0, own_knn=3.0, repeat_boost=0.5)
    hybrid = model.make("hybrid", SETTINGS, weights)
    assert isinstance(hybrid, model.Hybrid)
    hybrid.fit(data)
    columns = model.item_columns(data)
    lines = toy_lines()
    for customer in ("a0", "b1"):
        mine = lines.customer_ids[lines.customer] == customer
        events = [
            (str(lines.item_ids[i]), int(o), float(t))
            for i, o, t in zip(lines.item[mine], lines.order[mine], lines.at[mine], strict=True)
        ]
        rows = model.history_rows(data, columns, events, None)
        served = model.rescore(hybrid, data, rows)
        batch = hybrid.score(data.rows_of(np.array([customer])))[0]
        assert served == pytest.approx(batch, abs=0.01)  # the fold-in's precision
        own = np.flatnonzero(rows.orders.toarray()[0])  # the stacked blend's ranking
        assert len(own) >= 2
        assert own[np.argsort(-served[own])].tolist() == own[np.argsort(-batch[own])].tolist()
    everyone = np.arange(len(data.customers))
    stacked = hybrid.parts(everyone)["own"]
    hybrid.weights = replace(weights, own_als=0.0, own_knn=0.0)
    assert not np.allclose(stacked, hybrid.parts(everyone)["own"])  # the model scores did count


def test_request_time_calls_hold_every_blas_library_to_one_thread() -> None:
    """The scan behind ``one_blas_thread`` is made once, so it must already see implicit's and
    scipy's BLAS besides numpy's (a fold-in runs on them)."""
    import implicit.cpu.als  # noqa: F401  # every BLAS loaded, so the outer limit reaches all
    from threadpoolctl import threadpool_info, threadpool_limits

    from recocamp.recommender.models import one_blas_thread

    with threadpool_limits(2, "blas"), one_blas_thread():
        blas = [info for info in threadpool_info() if info["user_api"] == "blas"]
        assert len(blas) >= 2 and {info["num_threads"] for info in blas} == {1}


@pytest.mark.parametrize("half_life", [None, 30.0])
def test_request_time_rows_are_the_training_builders(
    data: TrainingData, half_life: float | None
) -> None:
    """A customer's rows at request time (``history_rows``, numpy on one row) hold what the
    training builder (``matrix.build``) makes of the same lines: an item once per order at
    its first line, ``1 + ln(1 + n)`` of the (decayed) orders, days since the last order;
    items the model never saw left out."""
    day = 86400.0
    t0, t1, t2 = data.cutoff - 50 * day, data.cutoff - 20 * day, data.cutoff + 3 * day
    events = [
        ("p1", 0, t0),
        ("p1", 0, t0),  # twice in one order: counts once
        ("p2", 0, t0),
        ("p1", 1, t1),
        ("q3", 2, t2),
        ("unknown", 2, t2),
    ]
    rows = model.history_rows(data, model.item_columns(data), events, half_life)
    known = [event for event in events if event[0] != "unknown"]
    item, order, at = (np.array(part) for part in zip(*known, strict=True))
    lines = Lines.from_ids(np.full(len(known), "c"), item, order.astype(str), at)
    built = build(lines, float(at.max()) + 1.0, half_life_days=half_life)
    for name in ("orders", "confidence", "last_days"):
        served = getattr(rows, name).toarray()[0]
        expected = np.zeros(len(data.items), dtype=np.float32)
        expected[np.searchsorted(data.items, built.items)] = getattr(built, name).toarray()[0]
        assert served == pytest.approx(expected, rel=1e-6), name
    p1 = int(np.flatnonzero(data.items == "p1")[0])
    assert rows.orders.toarray()[0][p1] == 2.0 and rows.orders.nnz == 3


def test_the_similarity_of_bought_items_to_targets_reads_the_model_as_a_row_slice_would(
    data: TrainingData,
) -> None:
    """``ItemKNN.between`` (from the transposed matrix, kept) and ``_Factors.norms`` (kept)
    give what slicing the similarity and measuring the factors give, and follow a refit."""
    hybrid = fitted("hybrid", data)
    assert isinstance(hybrid, model.Hybrid)
    rows, cols = np.array([0, 2, 3, 5]), np.array([1, 4, 2])
    similarity = hybrid.knn.similarity  # the toy's is symmetric, a real shop's is not
    scaled = similarity @ sp.diags(np.arange(1.0, similarity.shape[1] + 1, dtype=np.float32))
    hybrid.knn.similarity = sp.csr_matrix(scaled, dtype=np.float32)
    transposed = hybrid.knn.similarity.T.tocsr()[rows][:, cols].toarray()
    assert not np.array_equal(hybrid.knn.similarity[rows][:, cols].toarray(), transposed)
    for _ in range(2):  # the second time from what was kept
        expected = hybrid.knn.similarity[rows][:, cols].toarray()
        assert np.array_equal(hybrid.knn.between(rows, cols), expected)
        lengths = np.linalg.norm(hybrid.als.item_factors, axis=1) + 1e-9
        assert np.array_equal(hybrid.als.norms(), lengths)
        hybrid.knn.similarity = hybrid.knn.similarity * 2
        hybrid.als.item_factors = hybrid.als.item_factors * 2
