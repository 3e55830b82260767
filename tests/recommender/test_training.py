"""Train → promote → skip-unchanged → reject → promote/rollback, on SQLite and PostgreSQL,
with a synthetic shop; objected customers never reach the model or the cache."""

from __future__ import annotations

import gc
import json
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from typer.testing import CliRunner

from recocamp import privacy
from recocamp.campaigns import run as campaign_run
from recocamp.data.synthetic import END, ConsentMix, customer_record, generate_shop
from recocamp.domain import Purchase
from recocamp.errors import ModelError
from recocamp.recommender import evaluate, serving, training
from recocamp.recommender import models as model
from recocamp.recommender.matrix import Lines, TrainingData
from recocamp.recommender.ranking import Recommender
from recocamp.settings import RecommenderSettings, Settings
from recocamp.store import queries, registry
from recocamp.store.schema import customers, items, models, recommendations
from tests.conftest import impatient
from tests.recommender_data import History, Order

NOW = datetime(2012, 1, 5, 9, 0, tzinfo=UTC)
OBJECTOR = "10003"


def settings_for(tmp_path: Path) -> RecommenderSettings:
    return Settings().recommender.model_copy(
        update={
            "artifacts_dir": tmp_path / "models",
            "factors": 8,
            "iterations": 5,
            "evaluation_horizon_days": 30,
            "use_gpu": "false",
            "top_n": 10,
        }
    )


@pytest.fixture
def shop(engine: sa.Engine) -> sa.Engine:
    generated = generate_shop(seed=3, customers=150, items=60, days=150)
    people = [
        customer_record(cid, country, None, 3, ConsentMix())
        for cid, country in generated.countries.items()
    ]
    people = [replace(p, objected_to_profiling=p.id == OBJECTOR) for p in people]
    with engine.begin() as connection:
        queries.upsert_items(connection, generated.items, NOW)
        queries.insert_purchases(connection, generated.purchases, None)
        queries.upsert_customers(connection, people, NOW)
    return engine


def cache(engine: sa.Engine) -> dict[str, list[list[object]]]:
    with engine.connect() as connection:
        return {
            row.customer_id: row.items for row in connection.execute(sa.select(recommendations))
        }


def statuses(engine: sa.Engine) -> dict[str, str]:
    with engine.connect() as connection:
        return {row.name: row.status for row in connection.execute(sa.select(models))}


def test_life_cycle(shop: sa.Engine, tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    first = training.train(shop, settings, now=NOW, as_of=END, name="hybrid")
    assert first.outcome == "promoted" and first.reason == "no live model"
    assert first.metrics["candidate"].recall > first.metrics["popularity"].recall
    cached = cache(shop)
    assert first.cache_rows == len(cached) > 50
    assert OBJECTOR not in cached  # objection: no personal list at all
    assert all(len(ranked) == 10 for ranked in cached.values())
    _fitted, data, meta = model.load(Path(settings.artifacts_dir) / str(first.version), settings)
    assert OBJECTOR not in set(data.customers.tolist())  # and never trained on
    assert meta["params"]["weights"]["als"] in (0.3, 0.5, 0.7)
    assert not any(item == "POST" for ranked in cached.values() for item, _ in ranked)

    again = training.train(shop, settings, now=NOW + timedelta(hours=1), as_of=END, name="hybrid")
    assert again.outcome == "skipped_unchanged" and again.version == first.version

    worse = training.train(
        shop, settings, now=NOW + timedelta(hours=2), as_of=END, name="popularity"
    )
    assert worse.outcome == "rejected" and worse.reason.endswith(": clearly worse")
    assert worse.rule.startswith("promote unless the 95 % paired-bootstrap interval")
    assert statuses(shop) == {"hybrid": "live", "popularity": "rejected"}
    assert cache(shop) == cached

    assert worse.version is not None
    rows = training.promote(shop, settings, worse.version, NOW + timedelta(hours=3))
    assert rows == len(cached)
    lists = {tuple(map(tuple, ranked)) for ranked in cache(shop).values()}
    assert len(lists) == 1  # popularity: everybody gets the same list
    assert training.rollback(shop, settings, NOW + timedelta(hours=4)) == first.version
    assert statuses(shop) == {"hybrid": "live", "popularity": "retired"}
    assert cache(shop) == cached


def test_new_purchases_retrain_and_gate_against_live(shop: sa.Engine, tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    first = training.train(shop, settings, now=NOW, as_of=END - timedelta(days=7), name="hybrid")
    second = training.train(shop, settings, now=NOW, as_of=END, name="hybrid")
    new, old = second.metrics["candidate"].recall, second.metrics["live"].recall
    assert second.reason.startswith(f"recall {new:.4f} vs live {old:.4f} on the same split")
    with shop.connect() as connection:
        live = registry.live(connection)
    assert live is not None
    assert (live.version == second.version) == (second.outcome == "promoted")
    assert live.version in (first.version, second.version)


def gated(shop: sa.Engine, tmp_path: Path, **candidate: object) -> training.TrainResult:
    """Train the live item-kNN (20 neighbours, deterministic), then a candidate item-kNN
    with other parameters on the same data, gated against it."""
    settings = settings_for(tmp_path)
    training.train(shop, settings, now=NOW, as_of=END, name="item_knn")
    return training.train(
        shop, settings.model_copy(update=candidate), now=NOW, as_of=END, name="item_knn"
    )


def test_a_candidate_worse_only_within_noise_is_promoted(shop: sa.Engine, tmp_path: Path) -> None:
    result = gated(shop, tmp_path, knn_neighbours=15)
    new, old = result.metrics["candidate"].recall, result.metrics["live"].recall
    assert new < old  # lower by a hair (0.6652 vs 0.6709 here): the old gate rejected it
    assert result.outcome == "promoted"
    assert result.reason.endswith(": not clearly worse")
    assert re.search(r"95 % interval \[-0\.\d{4}, \+0\.\d{4}\] over 64 customers", result.reason)
    with shop.connect() as connection:
        live = registry.live(connection)
    assert live is not None and live.version == result.version
    gate = live.metrics["gate"]  # the registry keeps the split and the comparison
    assert gate["split_cutoff"] == (END - timedelta(days=30)).isoformat()
    assert gate["promoted"] is True and live.metrics["live"]["recall"] == old
    assert gate["difference"]["low"] < gate["difference"]["mean"] < 0 < gate["difference"]["high"]


def test_the_gate_compares_like_with_like_in_models_list(
    shop: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    result = gated(shop, tmp_path, knn_neighbours=15)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", db_url)
    from recocamp.cli import app

    listing = CliRunner().invoke(app, ["models", "list"], terminal_width=250)
    assert listing.exit_code == 0, listing.output
    line = next(row for row in listing.stdout.splitlines() if str(result.version) in row)
    cells = [cell.strip() for cell in line.split("│")]
    with shop.connect() as connection:
        stored = registry.get(connection, str(result.version))
    assert stored is not None
    interval = stored.metrics["gate"]["difference"]
    new, old = result.metrics["candidate"].recall, result.metrics["live"].recall
    assert cells[3:7] == [
        "2011-11-09 +30d",  # 9 Nov 18:00 UTC is 19:00 in the shop's zone (Europe/Berlin)
        f"{new:.4f}",
        f"{old:.4f}",
        f"{interval['mean']:+.4f} [{interval['low']:+.4f}, {interval['high']:+.4f}]",
    ]
    assert "(same split)" in listing.stdout


def test_paired_bootstrap_separates_noise_from_a_real_loss() -> None:
    live = np.linspace(0.2, 0.8, 400)
    noisy = live + np.tile([0.1, -0.1], 200) - 0.001  # a hair lower on average, ±0.1 each
    small = evaluate.paired_bootstrap(noisy, live)
    assert small.mean == pytest.approx(-0.001) and small.low < -0.005
    assert small.high > 0.005 and not small.clearly_worse  # the standard error is 0.005
    assert evaluate.paired_bootstrap(noisy, live) == small  # fixed seed: same verdict
    worse = evaluate.paired_bootstrap(live - 0.05, live)
    assert worse.clearly_worse and worse.low == pytest.approx(-0.05) == worse.high
    assert evaluate.paired_bootstrap(live, live).as_dict()["high"] == 0.0


def test_training_without_purchases_is_a_clear_error(engine: sa.Engine, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="import purchases first"):
        training.train(engine, settings_for(tmp_path), now=NOW)
    with pytest.raises(ModelError, match="no model with version 'v9'"):
        training.promote(engine, settings_for(tmp_path), "v9", NOW)
    with pytest.raises(ModelError, match="nothing to roll back to"):
        training.rollback(engine, settings_for(tmp_path), NOW)


def test_recommend_command_personal_cold_and_objected(
    shop: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    settings = settings_for(tmp_path)
    training.train(shop, settings, now=NOW, as_of=END, name="hybrid")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", db_url)
    monkeypatch.setenv("RECOCAMP_RECOMMENDER__ARTIFACTS_DIR", str(settings.artifacts_dir))
    from recocamp.cli import app

    runner = CliRunner()
    with shop.connect() as connection:
        someone = next(iter(cache(shop)))
        live = registry.live(connection)
    assert live is not None
    assert "personal" in runner.invoke(app, ["recommend", someone]).stdout
    assert "popular: unknown customer" in runner.invoke(app, ["recommend", "nobody"]).stdout
    assert "popular: objected to profiling" in runner.invoke(app, ["recommend", OBJECTOR]).stdout
    similar = runner.invoke(app, ["similar", str(live.popular[0][0]), "--n", "3"])
    assert similar.exit_code == 0 and similar.stdout.count("\n") > 4
    listing = runner.invoke(app, ["models", "list"])
    assert live.version in listing.stdout and "live" in listing.stdout
    assert np.isfinite(live.popular[0][1])


def test_an_objection_after_training_removes_the_list_for_good(
    shop: sa.Engine, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path)
    old = training.train(shop, settings, now=NOW, as_of=END - timedelta(days=7), name="hybrid")
    training.train(shop, settings, now=NOW, as_of=END, name="item_knn")
    someone = next(iter(cache(shop)))
    with shop.begin() as connection:
        person = registry.customer(connection, someone)
        assert person is not None
        objecting = customer_record(someone, person.country, None, 3, ConsentMix())
        queries.upsert_customers(connection, [replace(objecting, objected_to_profiling=True)], NOW)
    assert someone not in cache(shop)
    assert old.version is not None
    training.promote(shop, settings, old.version, NOW + timedelta(hours=1))  # artifacts know them
    assert someone not in cache(shop) and len(cache(shop)) > 50


def test_an_empty_evaluation_never_replaces_the_live_model(shop: sa.Engine, tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    live = training.train(shop, settings, now=NOW, as_of=END, name="hybrid")
    later = training.train(shop, settings, now=NOW, as_of=END + timedelta(days=400), name="als")
    assert later.metrics["candidate"].customers == 0
    assert later.outcome == "rejected" and "no customers to evaluate" in later.reason
    with shop.connect() as connection:
        current = registry.live(connection)
    assert current is not None and current.version == live.version


def test_the_live_model_is_re_evaluated_with_its_own_parameters(
    shop: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(tmp_path)
    training.train(shop, settings, now=NOW, as_of=END - timedelta(days=7), name="als")
    built: list[tuple[str, int]] = []
    real = model.make

    def spy(
        name: str, config: RecommenderSettings, weights: model.HybridWeights | None = None
    ) -> Recommender:
        built.append((name, config.factors))
        return real(name, config, weights)

    monkeypatch.setattr(model, "make", spy)
    training.train(
        shop, settings.model_copy(update={"factors": 12}), now=NOW, as_of=END, name="als"
    )
    assert ("als", 8) in built and ("als", 12) in built  # live: saved 8 factors; candidate: 12


def _history(lines: Lines, customer_id: str) -> History:
    mine = lines.customer == int(np.searchsorted(lines.customer_ids, customer_id))
    orders = sorted(
        {
            (float(at), int(order))
            for at, order in zip(lines.at[mine], lines.order[mine], strict=True)
        }
    )
    return History(
        tuple(
            Order(
                datetime.fromtimestamp(at, UTC),
                frozenset(lines.item_ids[lines.item[mine & (lines.order == order)]].tolist()),
            )
            for at, order in orders
        )
    )


@pytest.mark.parametrize("name", ["als", "hybrid"])
def test_the_cache_keeps_active_customers_and_the_rest_get_the_same_list_on_request(
    shop: sa.Engine, tmp_path: Path, name: str
) -> None:
    settings = settings_for(tmp_path).model_copy(update={"cache_active_days": 20})
    result = training.train(shop, settings, now=NOW, as_of=END, name=name)
    lines = training.load_lines(shop, END)
    last = np.full(len(lines.customer_ids), -np.inf)
    np.maximum.at(last, lines.customer, lines.at)
    window = END.timestamp() - 20 * 86400
    active = set(lines.customer_ids[last >= window].tolist())
    lapsed = sorted(set(lines.customer_ids[last < window].tolist()))
    cached = cache(shop)
    assert set(cached) == active and len(lapsed) > 10 and result.cache_rows == len(active)
    fitted, data, _ = model.load(Path(settings.artifacts_dir) / str(result.version), settings)
    everyone = dict(training.top_lists(fitted, data, settings.top_n))  # no window at all
    assert all(same_list(cached[customer], everyone[customer]) for customer in cached)
    live = serving.Live.of(str(result.version), fitted, data, END)
    for customer in lapsed:
        answer = serving.personal_list(
            live,
            _history(lines, customer),
            None,
            customer_id=customer,
            objected=False,
            known=True,
            top_n=settings.top_n,
            half_life=None,
        )
        assert (answer.why, answer.model_version) == ("personal", result.version)
        assert answer.items is not None and len(answer.items) == settings.top_n
        assert same_list(answer.items, everyone[customer])
    with shop.connect() as connection:  # a campaign run plans with the same lists
        planned = campaign_run.load_snapshot(
            connection, Settings().model_copy(update={"recommender": settings}), NOW
        )
    personal = {view.customer.id: view.personal for view in planned.views}
    outside = [customer for customer in lapsed if customer in personal]
    assert len(outside) > 10
    assert all(same_list(personal[c] or [], everyone[c]) for c in outside)


def test_the_cache_is_scored_on_every_core_but_a_gpu_models_on_one_thread() -> None:
    """A training's cache uses the cores the process may run on; a model fitted on the GPU
    ranks through one CUDA query object, which threads must not share."""
    cores = training.cache_threads()
    assert cores >= 1
    assert training.cache_threads(model.ALS(use_gpu=False)) == cores
    assert training.cache_threads(model.ALS(use_gpu=True)) == 1  # no CUDA needed to ask


def same_list(got: Sequence[Sequence[object]], expected: Sequence[Sequence[object]]) -> bool:
    """The same items in the same order, the scores equal to the 6 decimals kept: float32
    BLAS may round a score's last bit differently in a batch of another size."""
    return [item for item, _ in got] == [item for item, _ in expected] and np.allclose(
        [float(str(score)) for _, score in got],
        [float(str(score)) for _, score in expected],
        rtol=0,
        atol=1.01e-6,
    )


@pytest.mark.parametrize("collecting", [True, False])
def test_reading_the_lines_leaves_the_cycle_collector_as_it_found_it(
    shop: sa.Engine, collecting: bool
) -> None:
    """The read pauses the collector (millions of acyclic id strings); a worker that trains
    must not be left without it, nor have it switched on behind its back."""
    was = gc.isenabled()
    (gc.enable if collecting else gc.disable)()
    try:
        assert len(training.load_lines(shop, END)) > 0
        assert gc.isenabled() is collecting
    finally:
        (gc.enable if was else gc.disable)()


def test_the_hybrid_is_fitted_once_on_the_gate_split_and_tuned_as_from_scratch(
    shop: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The final model's tuning split is the gate's split, where the gate's candidate was
    just fitted: training tunes on that fit instead of fitting the same data again, and
    the weights are those a fresh hybrid tuned from scratch gets."""
    settings = settings_for(tmp_path)
    fitted_on: list[tuple[int, int]] = []
    fit = model.Hybrid.fit

    def counted(self: model.Hybrid, data: TrainingData) -> None:
        fitted_on.append((data.shape[0], int(data.orders.nnz)))
        fit(self, data)

    monkeypatch.setattr(model.Hybrid, "fit", counted)
    result = training.train(shop, settings, now=NOW, as_of=END, name="hybrid")
    # the tuning split before the gate's, the gate's split, all data: each fitted once
    assert len(fitted_on) == 3 and len(set(fitted_on)) == 3
    monkeypatch.setattr(model.Hybrid, "fit", fit)
    fresh = model.make("hybrid", settings)
    assert isinstance(fresh, model.Hybrid)
    horizon, k = settings.evaluation_horizon_days, settings.evaluation_k
    sample = {"max_customers": settings.evaluation_max_customers}
    expected = evaluate.tune_hybrid(
        fresh,
        training.load_lines(shop, END),
        END.timestamp(),
        horizon,
        k,
        popularity_days=settings.recent_popularity_days,
        half_life_days=settings.time_decay_half_life_days,
        seed=settings.evaluation_sample_seed,
        **sample,
    )
    with shop.connect() as connection:
        row = registry.get(connection, str(result.version))
    assert row is not None and row.params["weights"] == asdict(expected)


def test_the_numbered_read_gives_the_lines_the_streaming_read_encodes(shop: sa.Engine) -> None:
    """SQLite's numbered read and the read PostgreSQL streams give the same arrays, bit for
    bit and dtype for dtype (a model's data fingerprint hashes them), with and without a
    cutoff that leaves some customers and items out."""
    for until in (None, END, END - timedelta(days=100)):
        lines = training.load_lines(shop, until)
        with shop.connect() as connection:
            streamed = training.encoded_while_reading(connection, until)
        assert len(lines) > 100
        for name in ("customer", "item", "order", "at", "customer_ids", "item_ids"):
            got, expected = getattr(lines, name), getattr(streamed, name)
            assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes(), name


def test_numbers_become_codes_in_id_order_and_orders_in_order_of_first_line() -> None:
    codes, ids = training.in_id_order(np.array([2, 0, 2, 3]), ["b", "zz", "a", "c"])
    assert codes.tolist() == [0, 1, 0, 2] and ids.tolist() == ["a", "b", "c"]
    assert ids.dtype == np.dtype("<U1")  # "zz" occurs on no line: not in the vocabulary
    assert training.first_seen(np.array([5, 5, 2, 9, 2, 0])).tolist() == [0, 0, 1, 2, 1, 3]
    assert training.first_seen(np.zeros(0, dtype=np.int64)).dtype == np.int64


def test_a_live_model_switched_during_training_is_not_replaced_ungated(
    shop: sa.Engine, tmp_path: Path
) -> None:
    """The gate measured the candidate against popularity; while the final model was fitted,
    ``models promote`` made the item-kNN live. The candidate was never compared with it, so
    it must not retire it (the old code promoted it over the item-kNN unseen)."""
    settings = settings_for(tmp_path)
    earlier = END - timedelta(days=7)
    knn = training.train(shop, settings, now=NOW, as_of=earlier, name="item_knn")
    popular = training.train(shop, settings, now=NOW, as_of=earlier, name="popularity")
    training.promote(shop, settings, str(popular.version), NOW + timedelta(hours=1))

    def switch(text: str) -> None:
        if text == "fitting on all data":
            training.promote(shop, settings, str(knn.version), NOW + timedelta(hours=2))

    candidate = settings.model_copy(update={"knn_neighbours": 15})
    result = training.train(
        shop, candidate, now=NOW + timedelta(hours=3), as_of=END, name="item_knn", step=switch
    )
    assert result.metrics["candidate"].recall > result.metrics["live"].recall  # vs popularity
    assert result.outcome == "rejected" and result.cache_rows == 0
    assert f"gated against {popular.version}, now {knn.version}" in result.reason
    assert "`recocamp models promote` makes it live" in result.reason
    with shop.connect() as connection:
        live = registry.live(connection)
        row = registry.get(connection, str(result.version))
        versions = {
            r.customer_id: r.model_version for r in connection.execute(sa.select(recommendations))
        }
    assert live is not None and live.version == knn.version
    assert row is not None and row.status == "rejected"
    assert row.metrics["gate"]["promoted"] is False
    assert set(versions.values()) == {knn.version}
    meta = (Path(row.path) / "meta.json").read_text()
    assert '"promoted": false' in meta


def test_two_switches_at_once_leave_one_live_model(shop: sa.Engine, tmp_path: Path) -> None:
    """Two transactions switching the live model at once (a training's promotion and
    ``models promote``, or two trainers): the second waits for the first and retires the
    model it made live. PostgreSQL's old behaviour: each retired only the model its snapshot
    saw live, so both stayed live and the cache held both models' lists."""
    settings = settings_for(tmp_path)
    first = training.train(shop, settings, now=NOW, as_of=END, name="popularity")
    names = ("item_knn", "repeat_frequency")
    later = [
        training.train(shop, settings, now=NOW, as_of=END - timedelta(days=d), name=n)
        for d, n in zip((7, 14), names, strict=True)
    ]
    a, b = (str(r.version) for r in later)
    outcome: list[BaseException] = []

    def second() -> None:
        try:
            with shop.begin() as connection:
                registry.make_live(connection, b, NOW, [("c2", [["x", 1.0]])])
        except BaseException as exc:  # reported by the main thread
            outcome.append(exc)

    with shop.begin() as connection:
        registry.make_live(connection, a, NOW, [("c1", [["x", 1.0]])])
        waiting = threading.Thread(target=second)
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive()  # the second switch waits for the first to commit
    waiting.join(timeout=30)
    assert not waiting.is_alive() and not outcome, outcome
    with shop.connect() as connection:
        live = [
            r.version
            for r in connection.execute(sa.select(models).where(models.c.status == "live"))
        ]
        cached = {
            r.customer_id: r.model_version for r in connection.execute(sa.select(recommendations))
        }
    assert live == [b] and first.version != b
    assert cached == {"c2": b}


@pytest.mark.parametrize("when", ["fitting on all data", "writing the top-N cache"])
def test_two_trainings_of_the_same_data_at_once_register_one_model(
    shop: sa.Engine, tmp_path: Path, when: str
) -> None:
    """The worker's nightly training and a `recocamp train` of the same data: the same
    version. The one that finishes second (before or after saving its artifacts) keeps the
    first's model; the old code failed on the registry's key after overwriting the live
    model's files in place."""
    settings = settings_for(tmp_path)
    other: list[training.TrainResult] = []

    def meanwhile(text: str) -> None:
        if text == when and not other:
            other.append(training.train(shop, settings, now=NOW, as_of=END, name="item_knn"))

    result = training.train(shop, settings, now=NOW, as_of=END, name="item_knn", step=meanwhile)
    assert other[0].outcome == "promoted"
    assert result.outcome == "skipped_unchanged" and result.version == other[0].version
    with shop.connect() as connection:
        rows = connection.execute(sa.select(models)).all()
    assert [(r.version, r.status) for r in rows] == [(other[0].version, "live")]
    directory = Path(rows[0].path)
    assert sorted(p.name for p in directory.iterdir()) == ["meta.json", "model.npz"]
    model.load(directory, settings)


def test_an_objection_recorded_while_a_model_trains_leaves_none_of_it_in_the_model(
    shop: sa.Engine, tmp_path: Path
) -> None:
    """The objection's scrub reaches the models registered when it runs; this one was still
    being fitted on lines read before it. The old code kept the customer's factors and
    purchase row in the new artifacts until the worker's next nightly sweep (never, with
    `recocamp train` alone)."""
    settings = settings_for(tmp_path)
    lines = training.load_lines(shop, END)
    late = str(lines.customer_ids[0])
    assert late != OBJECTOR

    def object_meanwhile(text: str) -> None:
        if text == "fitting on all data":
            with shop.begin() as connection:
                connection.execute(
                    sa.update(customers)
                    .where(customers.c.id == late)
                    .values(objected_to_profiling=True)
                )

    result = training.train(shop, settings, now=NOW, as_of=END, name="als", step=object_meanwhile)
    assert result.outcome == "promoted"
    with shop.connect() as connection:
        row = registry.get(connection, str(result.version))
    assert row is not None
    held = model.customer_ids(Path(row.path))
    assert late not in held and OBJECTOR not in held and len(held) > 100
    assert late not in cache(shop)
    _fitted, data, _meta = model.load(Path(row.path), settings)  # consistent after the scrub
    assert late not in data.customers.tolist()


@pytest.mark.parametrize("when", ["fitting on all data", "writing the top-N cache"])
def test_a_customer_erased_while_a_model_trains_is_in_none_of_its_files(
    shop: sa.Engine, tmp_path: Path, when: str
) -> None:
    """The erasure's scrub reaches the models registered when it runs; this one was fitted
    on lines read before the erasure and registered after it. Its files must not keep the
    erased customer's id, factors or purchase row (a profile, and a list a later customer
    under the same id would be served)."""
    settings = Settings().model_copy(
        update={"recommender": settings_for(tmp_path), "signing_key": SecretStr("k" * 32)}
    )
    lines = training.load_lines(shop, END)
    late = str(lines.customer_ids[1])
    erased: list[object] = []

    def erase_meanwhile(text: str) -> None:
        if text == when and not erased:
            erased.append(privacy.erase(shop, settings, late, NOW, "test"))

    result = training.train(
        shop, settings.recommender, now=NOW, as_of=END, name="als", step=erase_meanwhile
    )
    assert erased[0] is not None and result.outcome == "promoted"
    with shop.connect() as connection:
        row = registry.get(connection, str(result.version))
    assert row is not None
    held = model.customer_ids(Path(row.path))
    assert late not in held and len(held) > 100
    assert late not in cache(shop)
    _fitted, data, _meta = model.load(Path(row.path), settings.recommender)
    assert late not in data.customers.tolist()


def version_of(row: sa.Row[Any] | None) -> str:
    """A registry row's version: the row must be there."""
    assert row is not None
    version: str = row.version
    return version


def three_promoted(shop: sa.Engine, settings: RecommenderSettings) -> list[str]:
    """Models A, B, C (popularity, 20, 10 and 0 days before the end) promoted an hour apart:
    C live. Their versions, oldest first."""
    versions = []
    for hours, days in enumerate((20, 10, 0)):
        trained = training.train(
            shop, settings, now=NOW, as_of=END - timedelta(days=days), name="popularity"
        )
        versions.append(str(trained.version))
        training.promote(shop, settings, versions[-1], NOW + timedelta(hours=hours))
    return versions


def test_rollbacks_walk_back_and_models_list_names_the_target(
    shop: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """A → B → C: rollback goes to B, the next one to A (it went back to C, the model just
    left); ``models list`` marks the next rollback's target."""
    settings = settings_for(tmp_path)
    versions = three_promoted(shop, settings)
    a, b, c = versions
    assert training.rollback(shop, settings, NOW + timedelta(hours=4)) == b
    assert training.rollback(shop, settings, NOW + timedelta(hours=5)) == a
    with shop.connect() as connection:
        assert version_of(registry.live(connection)) == a
    with pytest.raises(ModelError, match="nothing to roll back to"):
        training.rollback(shop, settings, NOW + timedelta(hours=6))
    training.promote(shop, settings, c, NOW + timedelta(hours=7))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", db_url)
    from recocamp.cli import app

    listing = CliRunner().invoke(app, ["models", "list"], terminal_width=250)
    assert listing.exit_code == 0, listing.output
    status = {
        version: next(row for row in listing.stdout.splitlines() if version in row).split("│")[2]
        for version in versions
    }
    assert [status[v].strip() for v in versions] == ["rollback target", "retired", "live"]


def shown(output: str) -> list[str]:
    """The item ids of a ``recommend``/``similar`` table, in rank order."""
    cells = [[c.strip() for c in line.split("│")] for line in output.splitlines() if "│" in line]
    return [row[2] for row in cells if len(row) > 3 and row[1].isdigit()]


def test_recommend_and_similar_leave_out_what_the_api_would_not_show(
    shop: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """An out-of-stock and a service item were listed by the command line while the API's
    offers and similar items left them out."""
    settings = settings_for(tmp_path)
    training.train(shop, settings, now=NOW, as_of=END, name="hybrid")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", db_url)
    monkeypatch.setenv("RECOCAMP_RECOMMENDER__ARTIFACTS_DIR", str(settings.artifacts_dir))
    from recocamp.cli import app

    def run(*args: str) -> list[str]:
        result = CliRunner().invoke(app, list(args), terminal_width=250)
        assert result.exit_code == 0, result.output
        caption = "out-of-stock, service and unpriced items left out"
        assert caption in " ".join(result.stdout.split())
        return shown(result.stdout)

    someone = sorted(cache(shop))[0]
    before = run("recommend", someone, "--n", "6")
    with shop.connect() as connection:
        live = registry.live(connection)
    assert live is not None
    anchor = str(live.popular[0][0])
    similar = run("similar", anchor, "--n", "4")
    assert len(before) == 6 and len(similar) == 4
    gone, service, unlike = before[0], before[1], similar[0]
    with shop.begin() as connection:
        connection.execute(
            sa.update(items).where(items.c.id.in_([gone, unlike])).values(in_stock=False)
        )
        connection.execute(sa.update(items).where(items.c.id == service).values(is_service=True))
    after = run("recommend", someone, "--n", "6")
    assert after[:4] == before[2:] and not {gone, service} & set(after)
    left = [item for item in similar if item not in {gone, service, unlike}]
    assert run("similar", anchor, "--n", "4")[: len(left)] == left
    assert not {gone, service, unlike} & set(run("similar", anchor, "--n", "4"))


def test_training_before_the_live_models_cutoff_is_refused_unless_asked_for(
    shop: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """The gate refits the live model with the parameters it chose on its own, later data
    (a hybrid's weights tuned on the weeks before its cutoff): a training as of an earlier
    day measured both on a window that favours the live model, and said nothing."""
    settings = settings_for(tmp_path)
    live = training.train(shop, settings, now=NOW, as_of=END, name="item_knn")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", db_url)
    monkeypatch.setenv("RECOCAMP_RECOMMENDER__ARTIFACTS_DIR", str(settings.artifacts_dir))
    from recocamp.cli import app

    earlier = (END - timedelta(days=10)).strftime("%Y-%m-%d")
    args = ["train", "--as-of", earlier, "--model", "popularity"]
    refused = CliRunner().invoke(app, args, terminal_width=250)
    assert refused.exit_code == 2, refused.output
    cutoff = END.astimezone(ZoneInfo("Europe/Berlin"))
    assert " ".join(refused.stderr.split()).startswith(
        f"error: --as-of {earlier} 00:00 is before the data cutoff {cutoff:%Y-%m-%d %H:%M} of "
        f"the live model {live.version} (Europe/Berlin): the gate would refit it"
    )
    assert "(--before-live-cutoff trains anyway)" in refused.stderr
    assert statuses(shop) == {"item_knn": "live"}  # nothing trained
    allowed = CliRunner().invoke(app, [*args, "--before-live-cutoff"], terminal_width=250)
    assert allowed.exit_code == 0, allowed.output
    assert "the gate favours it" in " ".join(allowed.stdout.split())
    assert set(statuses(shop)) == {"item_knn", "popularity"}
    later = (END + timedelta(days=1)).strftime("%Y-%m-%d")
    assert CliRunner().invoke(app, ["train", "--as-of", later]).exit_code == 0


def test_a_rollback_whose_target_changed_meanwhile_switches_nothing(
    shop: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another switch while the rollback loaded its target: the history would record a
    rollback to a model that is not the one before the live one any more."""
    settings = settings_for(tmp_path)
    versions = three_promoted(shop, settings)
    a, b, _c = versions
    load = model.load
    meanwhile: Iterator[Callable[[], object]] = iter(
        [lambda: training.promote(shop, settings, a, NOW + timedelta(hours=4))]
    )

    def loading(directory: Path, model_settings: object) -> object:
        for switch in meanwhile:  # once: the rollback's load, not the promotion's own
            switch()
        return load(directory, model_settings)

    monkeypatch.setattr(model, "load", loading)
    with pytest.raises(ModelError, match=f"the live model changed while rolling back to {b}"):
        training.rollback(shop, settings, NOW + timedelta(hours=5))
    with shop.connect() as connection:
        assert version_of(registry.live(connection)) == a
        assert version_of(registry.previous_live(connection)) == versions[2]


def test_the_cache_is_scored_before_the_switch_takes_the_write_lock(
    shop: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring the top-N cache takes half a minute at a million customers. It ran inside the
    switch's transaction, after the registry's lock, which on SQLite is the database's write
    lock: purchase events and imports waited on it and failed after the busy timeout, every
    night the model was retrained. While the lists are scored, another writer gets through
    at once (a connection that does not wait), on training and on ``models promote``."""
    if shop.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's registry lock is an advisory lock: writers never wait on it")
    import sqlite3

    real = training.top_lists
    writes: list[str] = []

    def scoring(*args: Any, **kwargs: Any) -> Iterator[tuple[str, Any]]:
        other = sqlite3.connect(str(shop.url.database), timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # "database is locked" while a writer holds it
            other.execute("ROLLBACK")
            writes.append("through")
        finally:
            other.close()
        yield from real(*args, **kwargs)

    monkeypatch.setattr(training, "top_lists", scoring)
    settings = settings_for(tmp_path)
    first = training.train(shop, settings, now=NOW, as_of=END, name="popularity")
    second = training.train(shop, settings, now=NOW, as_of=END, name="item_knn")
    training.promote(shop, settings, str(first.version), NOW)
    assert (first.outcome, second.outcome) == ("promoted", "promoted")
    assert writes == ["through"] * 3 and cache(shop)


@pytest.mark.parametrize("stop", ["ctrl-c", "locked"])
def test_a_training_stopped_before_its_registration_leaves_no_artifacts(
    shop: sa.Engine, tmp_path: Path, stop: str
) -> None:
    """Ctrl-C while the top-N cache is written, or a registration that fails (SQLite: a
    writer holds the database past the busy timeout), after the artifacts were saved. The
    files hold every customer's ids, purchase rows and factors; erasure, objection, export
    and the retention purge reach registered models only, so the old code left a profile of
    every customer that nothing would ever clean. The same training afterwards works."""
    settings = settings_for(tmp_path)
    engine, holder = shop, None
    if stop == "locked":
        if shop.dialect.name != "sqlite":
            pytest.skip("SQLite's write lock; PostgreSQL's registry lock is an advisory lock")
        import sqlite3

        engine = impatient(shop)
        holder = sqlite3.connect(str(shop.url.database), isolation_level=None)

    def interrupted(text: str) -> None:
        if text == "writing the top-N cache":
            if holder is None:
                raise KeyboardInterrupt
            holder.execute("BEGIN IMMEDIATE")  # an import holding the write lock

    kind = KeyboardInterrupt if holder is None else sa.exc.OperationalError
    with pytest.raises(kind):
        training.train(engine, settings, now=NOW, as_of=END, name="popularity", step=interrupted)
    if holder is not None:
        holder.execute("ROLLBACK")
        holder.close()
        engine.dispose()
    assert list(Path(settings.artifacts_dir).iterdir()) == []
    again = training.train(shop, settings, now=NOW, as_of=END, name="popularity")
    with shop.connect() as connection:
        row = registry.get(connection, str(again.version))
    assert row is not None and model.customer_ids(Path(row.path))


LONDON = ZoneInfo("Europe/London")


def summer_shop(engine: sa.Engine) -> None:
    """Six regular customers, plus ``late``, whose one test-window order is at 00:30 BST on
    11 September 2011 (23:30 UTC the day before), and ``eve``, whose is at 23:30 GMT on
    9 December 2011: both inside a 90-day split at shop-local midnight of 11 September, by
    the calendar of the shop's zone, which leaves summer time on 30 October."""
    rows: list[Purchase] = []

    def bought(customer: str, item: str, at: datetime) -> None:
        rows.append(Purchase(f"o{len(rows)}", 1, customer, item, 1, 2.0, at))

    for n in range(6):
        for k, month in enumerate((6, 7, 8)):
            bought(f"c{n}", f"i{(n + k) % 4}", datetime(2011, month, 3 + n, 12, tzinfo=UTC))
        bought(f"c{n}", f"i{(n + 1) % 4}", datetime(2011, 10, 3 + n, 12, tzinfo=UTC))
    bought("late", "i0", datetime(2011, 8, 1, 12, tzinfo=UTC))
    bought("late", "i1", datetime(2011, 9, 10, 23, 30, tzinfo=UTC))  # 00:30 BST, 11 Sept
    bought("eve", "i0", datetime(2011, 8, 2, 12, tzinfo=UTC))
    bought("eve", "i2", datetime(2011, 12, 9, 23, 30, tzinfo=UTC))  # 23:30 GMT, 9 Dec
    with engine.begin() as connection:
        queries.insert_purchases(connection, rows, None)


def test_the_gate_splits_at_shop_local_midnight_across_a_clock_change(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """``as_of`` 10 December (midnight GMT) less 90 days is midnight BST of 11 September,
    23:00 UTC: 90 × 86,400 seconds back was 01:00 BST, so ``late``'s order at 00:30 that
    day was learnt, not tested, and the split `models list` names (2011-09-11) was not the
    one `recocamp evaluate --cutoff 2011-09-11` measures."""
    summer_shop(engine)
    settings = settings_for(tmp_path).model_copy(update={"evaluation_horizon_days": 90})
    as_of = datetime(2011, 12, 10, tzinfo=LONDON)
    result = training.train(
        engine, settings, now=NOW, as_of=as_of, name="repeat_frequency", zone=LONDON
    )
    with engine.connect() as connection:
        row = registry.get(connection, str(result.version))
    assert row is not None
    gate = row.metrics["gate"]
    assert datetime.fromisoformat(gate["split_cutoff"]) == datetime(2011, 9, 11, tzinfo=LONDON)
    assert result.metrics["candidate"].customers == 8  # c0..c5, late and eve


def test_evaluate_tests_the_horizons_last_shop_local_day_across_a_clock_change(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, db_url: str
) -> None:
    """`recocamp evaluate --cutoff 2011-09-11 --horizon-days 90`: the test window runs to
    midnight GMT of 10 December; 90 × 86,400 seconds from midnight BST ended it at 23:00 on
    9 December, and ``eve``'s order at 23:30 that day was in no window at all."""
    summer_shop(engine)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", db_url)
    monkeypatch.setenv("RECOCAMP_SHOP__TIME_ZONE", "Europe/London")
    from recocamp.cli import app, common

    monkeypatch.setattr(common.clock, "now", lambda: NOW)
    arguments = ["--cutoff", "2011-09-11", "--horizon-days", "90", "--model", "popularity"]
    result = CliRunner().invoke(app, ["evaluate", *arguments, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["models"]["popularity"]["customers"] == 8


DECOMPOSED, COMPOSED = "To\u0308pfchen", "T\u00f6pfchen"  # one item, two Unicode forms


def test_an_item_stored_in_two_unicode_forms_is_one_item(engine: sa.Engine, tmp_path: Path) -> None:
    """Lines an older version stored decomposed (``To`` + U+0308 ``pfchen``) and today's
    composed lines of the same item are one column: the model split them in two, and every
    cached list offered the item twice. A history that still names the old form finds the
    column (its lines count; returned in full under that form, it is left out). An item
    stored in one form only keeps it (``Ka`` + U+0308 ``se``: its catalogue row's)."""
    rows: list[Purchase] = []
    start = datetime(2011, 6, 1, 12, tzinfo=UTC)
    people = [f"c{n}" for n in range(12)]
    for n, person in enumerate(people):
        for k in range(4):
            at = start + timedelta(days=20 * k + n)
            item = DECOMPOSED if k < 2 else COMPOSED  # before and after an upgrade
            rows.append(Purchase(f"o{len(rows)}", 1, person, item, 1, 2.0, at))
            rows.append(Purchase(f"o{len(rows)}", 1, person, f"i{(n + k) % 5}", 1, 2.0, at))
            rows.append(Purchase(f"o{len(rows)}", 1, person, "Ka\u0308se", 1, 2.0, at))
    with engine.begin() as connection:
        queries.insert_purchases(connection, rows, None)
    settings = settings_for(tmp_path)
    result = training.train(
        engine, settings, now=NOW, as_of=datetime(2011, 12, 1, tzinfo=UTC), name="repeat_frequency"
    )
    assert result.outcome == "promoted"
    lists = cache(engine)
    assert set(lists) == set(people)
    for items_ in lists.values():
        offered = [entry[0] for entry in items_]
        assert offered.count(COMPOSED) == 1 and DECOMPOSED not in offered
    with engine.connect() as connection:
        live = registry.live(connection)
    assert live is not None
    fitted, data, _meta = model.load(Path(live.path), settings)
    served = serving.Live.of(live.version, fitted, data, live.data_cutoff)
    old = History((Order(start, frozenset({DECOMPOSED, "i1"})),))
    assert served.scores(old, None)[served.columns[COMPOSED]] > 0  # learnt from the old line
    assert sorted(data.items.tolist()) == sorted(
        [COMPOSED, "Ka\u0308se", "i0", "i1", "i2", "i3", "i4"]
    )
    ranked = served.rescore(old, 10, None, skip=frozenset({DECOMPOSED}))  # returned in full
    assert COMPOSED not in [entry[0] for entry in ranked]


def test_a_model_learnt_before_ids_were_recomposed_finds_the_composed_form(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """An item stored in one form, decomposed (``Ka`` + U+0308 ``se``), is learnt under it;
    migration 0023 then stores its lines composed, and the model stays live until the next
    training. A history naming the item composed finds its column: bought, it is no longer
    offered to the buyer as new (it was: the history's line matched no column), and its
    lines count for the scores."""
    rows: list[Purchase] = []
    start = datetime(2011, 6, 1, 12, tzinfo=UTC)
    for n, person in enumerate(f"c{n}" for n in range(12)):
        for k in range(4):
            at = start + timedelta(days=20 * k + n)
            rows.append(Purchase(f"o{len(rows)}", 1, person, f"i{(n + k) % 5}", 1, 2.0, at))
            if k % 2:
                rows.append(Purchase(f"o{len(rows)}", 1, person, "Ka\u0308se", 1, 2.0, at))
    with engine.begin() as connection:
        queries.insert_purchases(connection, rows, None)
    settings = settings_for(tmp_path)
    result = training.train(
        engine, settings, now=NOW, as_of=datetime(2011, 12, 1, tzinfo=UTC), name="repeat_frequency"
    )
    assert result.outcome == "promoted"
    with engine.connect() as connection:
        live = registry.live(connection)
    assert live is not None
    fitted, data, _meta = model.load(Path(live.path), settings)
    served = serving.Live.of(live.version, fitted, data, live.data_cutoff)
    now_stored = History((Order(start, frozenset({"K\u00e4se", "i1"})),))
    assert served.scores(now_stored, None)[served.columns["Ka\u0308se"]] > 0
    ranked = served.rescore(now_stored, 10, None, skip=frozenset({"K\u00e4se"}))
    assert "Ka\u0308se" not in [entry[0] for entry in ranked]
