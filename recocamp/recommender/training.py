"""Train, evaluate, promote: the recommender's life cycle against the store.

``train`` runs the whole cycle for the configured model:

1. load the learnable purchase lines before ``as_of`` (``store.training_lines``: numbered by SQLite,
   streamed from PostgreSQL);
2. skip when a model with the same data fingerprint and parameters exists;
3. on the time split ``cutoff = as_of − horizon``: tune the hybrid on a validation split
   before that cutoff, then evaluate the candidate, the live model's configuration and the
   baselines on the same split;
4. fit the candidate on everything before ``as_of`` and save its artifacts (the hybrid's
   weights tuned on the split of step 3, on the candidate's fit there: the same split and
   fit that tuning from scratch would make);
5. promote it unless its gate metric is worse than the live model's beyond the
   evaluation's noise (a paired bootstrap over the split's customers, :data:`GATE_RULE`), or
   when there is no live model, writing the top-N cache in the same transaction for every
   customer active within ``cache_active_days`` of the data cutoff (the others' lists are
   computed on request, the same list); else register it as ``rejected``. Both figures, the
   split they were measured on and the interval go into the registry (``metrics["gate"]``).
   A training stopped before its model is registered removes the artifacts it saved: only
   registered models are reached by erasure, objection, export and the retention purge.

``promote`` and ``rollback`` switch the live model by version and rebuild the cache from
its artifacts.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import numpy as np

from recocamp.domain import composed
from recocamp.errors import ModelError
from recocamp.recommender import evaluate, matrix, ranking
from recocamp.recommender import models as model
from recocamp.recommender.evaluate import Metrics
from recocamp.recommender.matrix import Lines, TrainingData, days_later
from recocamp.recommender.models import Hybrid, HybridWeights
from recocamp.recommender.ranking import Recommender
from recocamp.settings import RecommenderSettings
from recocamp.store import privacy as privacy_store
from recocamp.store import profiles, registry, training_lines
from recocamp.store import serving as serving_store
from recocamp.store.engine import Connection, Engine

log = logging.getLogger(__name__)
Step = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class TrainResult:
    version: str | None
    name: str
    outcome: str  # promoted | rejected | skipped_unchanged
    reason: str
    metrics: dict[str, Metrics] = field(default_factory=dict)  # candidate, live, baselines
    cache_rows: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    rule: str = ""  # the promotion rule that applied (empty without a live model)


def load_lines(engine: Engine, until: datetime | None = None) -> Lines:
    """Learnable purchase lines as integer-coded arrays. Service items are excluded by the
    catalogue's ``is_service`` flag (the online-retail import sets it from the UCI code rule;
    other shops say so in items.csv). SQLite numbers the ids itself
    (``training_lines.numbered_training_lines``); PostgreSQL's lines are encoded while streaming."""
    with engine.connect() as connection:
        numbered = training_lines.numbered_training_lines(connection, until)
        if numbered is None:
            return encoded_while_reading(connection, until)
    customer, customer_ids = in_id_order(numbered.customer, numbered.customer_ids)
    item, item_ids = in_id_order(numbered.item, numbered.item_ids, compose=True)
    return Lines(customer, item, first_seen(numbered.order), numbered.at, customer_ids, item_ids)


def in_id_order(
    numbers: np.ndarray, ids: list[str], *, compose: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The ids that occur, sorted (``compose``: composed, :func:`sorted_ids`), and each
    line's code among them: what :meth:`_Codes.sorted` gives for the same lines (the same
    sort of the same strings)."""
    present = np.flatnonzero(np.bincount(numbers, minlength=len(ids)))
    where, names = sorted_ids([ids[i] for i in present.tolist()], compose=compose)
    rank = np.zeros(len(ids), dtype=np.int64)
    rank[present] = where
    return rank[numbers], names


def sorted_ids(names: list[str], *, compose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Distinct stored ids → each one's position among the sorted distinct ids they name,
    and those ids. ``compose`` (items): ids stored in two Unicode forms — lines an older
    version stored decomposed (``To`` + U+0308 ``pfchen``) and today's composed ones —
    are one id, composed (``domain.composed``), as they are to a person and to the API,
    which composes the ids it is asked about: two columns offered one product twice in a
    list. An id stored in one form keeps it (the catalogue's row of an item only an older
    version sold is named so). Customer ids stay as stored: the planner, the privacy
    scrubs and the retention purge find a customer's row by the stored id. Ids all ASCII
    (the usual) are one form already: sorted as they are."""
    if compose and not all(map(str.isascii, names)):
        forms = [composed(name) for name in names]
        shared = Counter(forms)
        pairs = zip(names, forms, strict=True)
        names = [form if shared[form] > 1 else name for name, form in pairs]
        unique, where = np.unique(np.array(names, dtype=str), return_inverse=True)
        return where.ravel().astype(np.int64), unique
    ids = np.array(names, dtype=str)
    order = np.argsort(ids, kind="stable")
    at = np.empty(len(ids), dtype=np.int64)
    at[order] = np.arange(len(ids))
    return at, ids[order]


def first_seen(numbers: np.ndarray) -> np.ndarray:
    """Numbers renumbered in order of first appearance (what :class:`_Codes` gives order
    ids read in line order), in linear time: each number's first line, then a running
    count of first lines."""
    if len(numbers) == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.full(int(numbers.max()) + 1, len(numbers), dtype=np.int64)
    np.minimum.at(first, numbers, np.arange(len(numbers)))
    opens = np.zeros(len(numbers), dtype=np.int64)
    opens[first[first < len(numbers)]] = 1
    return (np.cumsum(opens) - 1)[first[numbers]]  # type: ignore[no-any-return]


def encoded_while_reading(connection: Connection, until: datetime | None) -> Lines:
    """The lines of ``training_lines.training_lines``, encoded while streaming. The cycle
    collector pauses meanwhile: the id dictionaries grow to millions of strings and each
    full pass over them would cost more as they grow (a quarter of the read)."""
    customers, items, orders = _Codes(), _Codes(), _Codes()
    at: list[np.ndarray] = []
    with _no_cycle_collection():
        for part in training_lines.training_lines(connection, until):
            customers.add(part.customer)
            items.add(part.item)
            orders.add(part.order)
            at.append(part.at)
    customer_codes, customer_ids = customers.sorted()
    item_codes, item_ids = items.sorted(compose=True)
    return Lines(
        customer_codes,
        item_codes,
        orders.codes,
        np.concatenate(at) if at else np.zeros(0, dtype=np.float64),
        customer_ids,
        item_ids,
    )


@contextmanager
def _no_cycle_collection() -> Iterator[None]:
    """The cycle collector off for a block that makes millions of acyclic objects (id
    strings, small lists): its passes only rescan them."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _Codes:
    """Factorises ids into integer codes while reading: one C-level ``map`` over the chunk
    through a dict whose ``__missing__`` numbers a new id, so no per-chunk string array,
    string sort or Python loop over the lines."""

    def __init__(self) -> None:
        self.index = _Numbering()
        self.chunks: list[np.ndarray] = []

    def add(self, values: Sequence[str]) -> None:
        self.chunks.append(
            np.fromiter(map(self.index.__getitem__, values), dtype=np.int64, count=len(values))
        )

    @property
    def codes(self) -> np.ndarray:
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.int64)

    def sorted(self, *, compose: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Codes renumbered so that code order is id order, and the sorted ids
        (``compose``: composed, :func:`sorted_ids`)."""
        rank, ids = sorted_ids(list(self.index), compose=compose)
        return rank[self.codes], ids


class _Numbering(dict[str, int]):
    def __missing__(self, key: str) -> int:
        number = self[key] = len(self)
        return number


def fingerprint(lines: Lines, params: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    for array in (
        lines.customer_ids[lines.customer],
        lines.item_ids[lines.item],
        lines.order,
        lines.at,
    ):
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _split_args(settings: RecommenderSettings) -> dict[str, Any]:
    return {
        "popularity_days": settings.recent_popularity_days,
        "half_life_days": settings.time_decay_half_life_days,
    }


def _sample(settings: RecommenderSettings) -> dict[str, Any]:
    """The bounded, seeded sample of customers known before a split's cutoff that the gate,
    the hybrid's tuning and ``recocamp evaluate`` measure (``evaluate.make_split``)."""
    return {
        "max_customers": settings.evaluation_max_customers,
        "seed": settings.evaluation_sample_seed,
    }


def _candidate(
    name: str, settings: RecommenderSettings, lines: Lines, cutoff: float, zone: tzinfo = UTC
) -> Recommender:
    """A fresh model; the hybrid's weights tuned on the window before ``cutoff`` (days of
    the shop's ``zone``)."""
    candidate = model.make(name, settings)
    if isinstance(candidate, Hybrid):
        weights = evaluate.tune_hybrid(
            candidate,
            lines,
            cutoff,
            settings.evaluation_horizon_days,
            settings.evaluation_k,
            **_split_args(settings),
            **_sample(settings),
            zone=zone,
        )
        candidate = model.make(name, settings, weights)
    return candidate


def _configured(name: str, params: dict[str, Any], settings: RecommenderSettings) -> Recommender:
    """A fresh model with a registered model's own saved parameters (a fair re-evaluation),
    not today's settings."""
    factors = params.get("als", params) if name == "hybrid" else params
    knn = params.get("item_knn", params) if name == "hybrid" else params
    saved = {
        key: value
        for key, value in {
            "factors": factors.get("factors"),
            "regularization": factors.get("regularization"),
            "iterations": factors.get("iterations"),
            "random_state": factors.get("random_state"),
            "knn_weighting": knn.get("weighting"),
            "knn_neighbours": knn.get("neighbours"),
        }.items()
        if value is not None
    }
    if name == "bpr" and "iterations" in saved:
        saved["bpr_iterations"] = saved.pop("iterations")
        saved["bpr_learning_rate"] = factors.get("learning_rate", settings.bpr_learning_rate)
    weights = HybridWeights(**params["weights"]) if name == "hybrid" else None
    return model.make(name, settings.model_copy(update=saved), weights)


def live_cutoff_after(engine: Engine, as_of: datetime) -> Any | None:
    """The live model when its data cutoff is later than ``as_of``: a training then evaluates
    on a test window the live hybrid's weights were tuned on (its validation split lay
    before its own, later cutoff), and the gate favours the live model."""
    with engine.connect() as connection:
        current = registry.live(connection)
    return current if current is not None and current.data_cutoff > as_of else None


def _nothing_learnable(engine: Engine, as_of: datetime) -> str:
    """Why no line is learnable: no purchases yet, or every buyer objected to profiling
    (their lines are never learnt from; importing purchases would not help)."""
    with engine.connect() as connection:
        objectors = training_lines.unprofiled_buyers(connection, as_of)
    if objectors:
        return (
            "no learnable purchase lines before the cutoff: every customer with purchases "
            f"objected to profiling ({objectors:,} customer(s)): their lines are never learnt"
        )
    return "no learnable purchase lines before the cutoff: import purchases first"


def train(
    engine: Engine,
    settings: RecommenderSettings,
    *,
    now: datetime,
    as_of: datetime | None = None,
    name: str | None = None,
    step: Step | None = None,
    zone: tzinfo = UTC,
) -> TrainResult:
    """One training cycle; see the module docstring. ``zone``: the shop's, in which the
    split's cutoff is named (the date a person gave)."""
    say = step or (lambda _message: None)
    name = name or settings.model
    if name in model.EVALUATION_ONLY:
        raise ModelError(f"{name} is an evaluation baseline: compare it with `recocamp evaluate`")
    as_of = as_of or now
    clock = _Stopwatch()
    say("loading purchase lines")
    with engine.connect() as connection:
        erasures_seen = serving_store.erasures_mark(connection)  # before the lines are read
    lines = load_lines(engine, as_of)
    clock.lap("load")
    if len(lines) == 0:
        raise ModelError(_nothing_learnable(engine, as_of))
    params_key = {
        "name": name,
        "as_of": as_of.timestamp(),  # the popularity window and item ages depend on it
        **settings.model_dump(mode="json", exclude={"artifacts_dir"}),
    }
    print_ = fingerprint(lines, params_key)
    with engine.connect() as connection:
        same = registry.with_fingerprint(connection, print_, name)
    if same is not None:
        return _unchanged(same, name)
    say("evaluating on the time split")
    evaluation = _evaluate_all(engine, settings, name, lines, as_of, zone)
    results = evaluation.metrics
    clock.lap("evaluate")
    say("fitting on all data")
    final = (
        _candidate(name, settings, lines, as_of.timestamp(), zone)
        if evaluation.final_weights is None
        else model.make(name, settings, evaluation.final_weights)
    )
    data = matrix.build(lines, as_of.timestamp(), **_split_args(settings))
    final.fit(data)
    clock.lap("fit")
    gate = _gate(evaluation, settings.promote_metric, zone)
    promote, reason = gate.promote, gate.reason
    version = f"{as_of.astimezone(UTC):%Y%m%dT%H%M%S}-{name}-{print_[:8]}"
    path = Path(settings.artifacts_dir).absolute() / version  # stored absolute: see locate
    meta = {
        "version": version,
        "name": name,
        "params": final.params(),
        "data_cutoff": as_of.isoformat(),
        "trained_at": now.isoformat(),
        "fingerprint": print_,
        "metrics": {
            **{key: value.as_dict() for key, value in results.items()},
            "gate": gate.as_dict(evaluation, settings.promote_metric),
        },
    }
    with engine.connect() as connection:
        twin = registry.get(connection, version)
    if twin is not None:  # another training of the same data finished meanwhile
        return _unchanged(twin, name)
    try:
        model.save(path, final, data, meta)
        _without_the_unprofiled(engine, path, data, erasures_seen)  # before anybody can load it
        say("writing the top-N cache" if promote else "registering the rejected model")
        rows, changed = _register(
            engine, final, data, meta, path, now, promote, settings, evaluation.live_version
        )
    except _AlreadyRegistered as exc:
        return _unchanged(exc.row, name)
    except BaseException:
        _remove_unregistered(engine, path, version)
        raise
    _without_the_unprofiled(engine, path, data, erasures_seen)  # who came since: see there
    if changed is not None:
        promote, reason = False, changed
        model.write_meta(path, meta)  # the registry's verdict, not the gate's
    clock.lap("cache")
    outcome = "promoted" if promote else "rejected"
    log.info("train %s: %s (%s) cache=%d in %.1fs", version, outcome, reason, rows, clock.total)
    return TrainResult(
        version,
        name,
        outcome,
        reason,
        results,
        rows,
        clock.laps,
        gate_rule(settings.promote_metric) if gate.difference else "",
    )


def _unchanged(same: Any, name: str) -> TrainResult:
    reason = f"data and parameters unchanged since {same.version} ({same.status})"
    return TrainResult(same.version, name, "skipped_unchanged", reason)


class _AlreadyRegistered(Exception):
    """Two trainings of the same data and settings at once (the worker's and a command's):
    the same version; the one that registers second keeps the first's model."""

    def __init__(self, row: Any) -> None:
        super().__init__(row.version)
        self.row = row


class _Stopwatch:
    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.last, 3)
        self.last = now
        self.laps["total"] = round(now - self.started, 3)

    @property
    def total(self) -> float:
        return self.laps.get("total", 0.0)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Every model's metrics on one split, and the customer-level scores of the candidate
    and the live model that the gate compares."""

    metrics: dict[str, Metrics]
    cutoff: datetime
    horizon_days: int
    k: int
    per_customer: dict[str, dict[str, np.ndarray]]
    # the hybrid's weights for the final model, tuned on this split with the candidate's
    # fit on it (the final model's tuning split is this one); None: tune from scratch
    final_weights: HybridWeights | None = None
    live_version: str | None = None  # the live model measured here (None: none was live)


def _evaluate_all(
    engine: Engine,
    settings: RecommenderSettings,
    name: str,
    lines: Lines,
    as_of: datetime,
    zone: tzinfo = UTC,
) -> Evaluation:
    """Candidate, baselines and the live model's configuration on one split: from ``as_of``
    less the horizon in calendar days of the shop's ``zone`` (its midnight for a midnight
    ``as_of``: the date ``models list`` names and ``recocamp evaluate --cutoff`` splits at)."""
    horizon, k = settings.evaluation_horizon_days, settings.evaluation_k
    cutoff = days_later(as_of.timestamp(), -horizon, zone)
    split = evaluate.make_split(
        lines, cutoff, horizon, **_split_args(settings), **_sample(settings), zone=zone
    )
    candidate = _candidate(name, settings, lines, cutoff, zone)
    scored = {"candidate": evaluate.evaluate_per_customer(candidate, split, k)}
    results = {"candidate": scored["candidate"][0]}
    final_weights = None
    if isinstance(candidate, Hybrid) and len(split.rows) > 0:  # fitted on the split now
        fresh = model.make(name, settings)
        assert isinstance(fresh, Hybrid)
        candidate.weights = fresh.weights  # where tuning a fresh hybrid starts
        final_weights = evaluate.tune_fitted(candidate, split, k)
    for baseline in ("popularity", "repeat_frequency"):
        results[baseline] = evaluate.evaluate(model.make(baseline, settings), split, k)
    with engine.connect() as connection:
        current = registry.live(connection)
    if current is not None:
        configured = _configured(current.name, current.params, settings)
        scored["live"] = evaluate.evaluate_per_customer(configured, split, k)
        results["live"] = scored["live"][0]
    at = datetime.fromtimestamp(cutoff, UTC)
    per_customer = {key: pair[1] for key, pair in scored.items()}
    live_version = None if current is None else str(current.version)
    return Evaluation(results, at, horizon, k, per_customer, final_weights, live_version)


GATE_RULE = (
    "promote unless the {level:g} % paired-bootstrap interval of candidate − live {metric} "
    "({resamples:,} resamples of the evaluated customers) lies entirely below 0"
)


@dataclass(frozen=True, slots=True)
class Gate:
    promote: bool
    reason: str
    difference: evaluate.PairedDifference | None = None

    def as_dict(self, evaluation: Evaluation, metric: str) -> dict[str, Any]:
        """What the registry keeps: the split both figures were measured on, the rule and
        the interval, so ``models list`` compares like with like."""
        gate: dict[str, Any] = {
            "split_cutoff": evaluation.cutoff.isoformat(),
            "horizon_days": evaluation.horizon_days,
            "k": evaluation.k,
            "metric": metric,
            "promoted": self.promote,
            "reason": self.reason,
        }
        if self.difference is not None:
            gate["difference"] = self.difference.as_dict()
        return gate


def gate_rule(metric: str) -> str:
    return GATE_RULE.format(
        level=evaluate.GATE_LEVEL * 100, metric=metric, resamples=evaluate.BOOTSTRAP_RESAMPLES
    )


def _gate(evaluation: Evaluation, metric: str, zone: tzinfo = UTC) -> Gate:
    """Promote unless the candidate is worse than the live model on ``metric`` beyond the
    evaluation's own uncertainty: a difference of 0.0001 in recall over a few thousand
    customers is noise, and rejecting on it would keep a model trained on older data."""
    results = evaluation.metrics
    if "live" not in results:
        return Gate(True, "no live model")
    if results["candidate"].customers == 0:
        return Gate(False, "no customers to evaluate on the time split: the live model stays")
    difference = evaluate.paired_bootstrap(
        evaluation.per_customer["candidate"][metric], evaluation.per_customer["live"][metric]
    )
    new, old = getattr(results["candidate"], metric), getattr(results["live"], metric)
    verdict = "clearly worse" if difference.clearly_worse else "not clearly worse"
    reason = (
        f"{metric} {new:.4f} vs live {old:.4f} on the same split "
        f"(cutoff {evaluation.cutoff.astimezone(zone).date()}, {evaluation.horizon_days} days): "
        f"difference "
        f"{difference.mean:+.4f}, {difference.level * 100:g} % interval "
        f"[{difference.low:+.4f}, {difference.high:+.4f}] over {difference.customers:,} "
        f"customers: {verdict}"
    )
    return Gate(not difference.clearly_worse, reason, difference)


def _register(
    engine: Engine,
    fitted: Recommender,
    data: TrainingData,
    meta: dict[str, Any],
    path: Path,
    now: datetime,
    promote: bool,
    settings: RecommenderSettings,
    gated_against: str | None,
) -> tuple[int, str | None]:
    """Register the model; make it live when the gate said so and the live model is still
    the one it was gated against. Else (another training, ``models promote`` or
    ``rollback`` switched it meanwhile) it is registered ``rejected`` and the reason is
    returned: it was never compared with the model it would replace."""
    popular = popular_list(data, settings.top_n)
    if promote:  # scored and written before the switch's transaction: see registry.stage
        lists = top_lists(fitted, data, settings.top_n, cached_rows(data, settings))
        registry.stage(engine, meta["version"], lists)
    try:
        return _registered(engine, meta, path, now, promote, popular, gated_against)
    finally:
        registry.drop_stale(engine)  # the retired model's rows, or the refused one's


def _registered(
    engine: Engine,
    meta: dict[str, Any],
    path: Path,
    now: datetime,
    promote: bool,
    popular: list[list[Any]],
    gated_against: str | None,
) -> tuple[int, str | None]:
    """:func:`_register`'s transaction: the registration, and the switch to its staged
    cache where the gate said so and the live model is still the one it measured."""
    with engine.begin() as connection:
        registry.lock_models(connection)  # the checks below and the switch see one registry
        twin = registry.get(connection, meta["version"])
        if twin is not None:
            raise _AlreadyRegistered(twin)
        if not (path / "model.npz").exists():  # removed by a stopped training of the same data
            raise ModelError(f"the artifacts of {meta['version']} at {path} were removed meanwhile")
        changed = _live_changed(connection, gated_against) if promote else None
        if changed is not None:
            promote = False
            gate = meta["metrics"]["gate"]
            gate["promoted"], gate["reason"] = False, changed
        registry.register(
            connection,
            version=meta["version"],
            name=meta["name"],
            trained_at=now,
            data_cutoff=datetime.fromisoformat(meta["data_cutoff"]),
            fingerprint=meta["fingerprint"],
            params=meta["params"],
            metrics=meta["metrics"],
            path=str(path),
            popular=popular,
            status="candidate" if promote else "rejected",
        )
        if not promote:
            return 0, changed
        return registry.make_live(connection, meta["version"], now, via="train"), None


def _without_the_unprofiled(
    engine: Engine, path: Path, data: TrainingData, erasures_seen: int
) -> None:
    """Take out of the new artifacts whoever objected to profiling or was erased while it
    trained (their lines were read before): an objection's or erasure's scrub
    (``privacy.artifacts``) only reaches the models registered when it ran. Called before
    the registration (so that no process loads the files with them in) and after it (for
    those who came in between); whoever comes after that, their scrub sees this model. An
    erasure leaves its customers no order lines: with one since ``erasures_seen``, the
    model's customers without order lines go (who else has none has nothing to learn)."""
    with engine.connect() as connection:
        gone = np.array(profiles.objected_ids(connection), dtype=str)
        if serving_store.erasures_mark(connection) != erasures_seen:
            buyers = np.array(sorted(privacy_store.customers_with_orders(connection)), dtype=str)
            gone = np.union1d(gone, np.setdiff1d(data.customers, buyers))
    held = np.intersect1d(data.customers, gone)
    if len(held):
        removed = model.drop_customers(path, held.tolist())
        log.info("%d customer(s) who objected or were erased while the model trained", removed)


def _remove_unregistered(engine: Engine, path: Path, version: str) -> None:
    """Remove the artifacts of a training stopped before its model was registered (Ctrl-C,
    the registration failing): they hold every customer's ids, purchase rows and factors,
    and the retention purge reaches registered models only (``registry.artifact_paths``;
    erasure, objection and export find those a killed training left, and clean them of the
    one customer: ``privacy.artifacts.unregistered``). Kept when the version is registered
    after all: a
    training of the same data at once registered it, from the same directory."""
    try:
        with engine.connect() as connection:
            if registry.get(connection, version) is not None:
                return
    except Exception:  # the store is away: they may be a registered model's; say where
        log.error("train %s stopped: remove %s unless the version is registered", version, path)
        return
    shutil.rmtree(path, ignore_errors=True)
    log.info("train %s: stopped before registration, its artifacts removed", version)


def _live_changed(connection: Connection, gated_against: str | None) -> str | None:
    """Why the gate's verdict no longer applies: the live model is not the one it measured."""
    current = registry.live(connection)
    now_live = None if current is None else str(current.version)
    if now_live == gated_against:
        return None
    return (
        f"the live model changed during training (gated against {gated_against or 'none'}, "
        f"now {now_live or 'none'}): not compared with the model it would replace; "
        "`recocamp models promote` makes it live (a training on the same data and settings "
        "skips as unchanged)"
    )


def popular_list(data: TrainingData, n: int) -> list[list[Any]]:
    """The cold-start list: recent popularity, ties by item id."""
    order = np.lexsort((np.arange(len(data.items)), -data.popularity))[:n]
    top = float(data.popularity.max()) if len(data.popularity) else 1.0
    return [
        [str(data.items[i]), round(float(data.popularity[i]) / top, 6)]
        for i in order
        if data.popularity[i] > 0
    ]


def top_lists(
    fitted: Recommender,
    data: TrainingData,
    n: int,
    rows: np.ndarray | None = None,
    threads: int | None = None,
) -> Iterator[tuple[str, list[list[Any]]]]:
    """The top-``n`` (mixed mode) of ``rows`` (every customer by default) as
    ``(customer_id, [[item_id, score], …])``, scored by ``threads`` threads (default
    :func:`cache_threads`). The cycle collector pauses while the lists are made and written
    (they hold no cycles; at a million customers its passes over them cost a third of the
    cache's time)."""
    chosen = np.arange(data.shape[0]) if rows is None else rows
    workers = cache_threads(fitted) if threads is None else threads
    with _no_cycle_collection():
        for row, ranked in ranking.ranked_lists(fitted, data, chosen, n, workers):
            yield str(data.customers[row]), ranked


def cache_threads(fitted: Recommender | None = None) -> int:
    """How many threads score the top-N cache: every core this process may run on. Writing
    the cache is a batch job, as the fit is (implicit's fit uses every core too); the
    processes that serve score on one thread (``ranking.ranked_lists``'s default). A model
    fitted on the GPU ranks on one thread: its CUDA kernel is one query object, not to be
    shared between threads, and does the work in parallel itself."""
    if getattr(fitted, "uses_gpu", False):
        return 1
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity is not None else os.cpu_count() or 1


def cached_rows(data: TrainingData, settings: RecommenderSettings) -> np.ndarray:
    """The customers whose top-N is cached: those active within ``cache_active_days`` of the
    model's data cutoff. Everybody else's list is computed on request
    (``serving.personal_list``), the same computation, so only the speed differs: at a
    million customers scoring every one of them costs as much as the fit itself, while
    lapsed customers are rarely asked for."""
    return data.active_rows(settings.cache_active_days)


def promote(
    engine: Engine,
    settings: RecommenderSettings,
    version: str,
    now: datetime,
    locate: Callable[[str], Path] = Path,
) -> int:
    """Make a registered model live (also a rejected or retired one); rebuild the cache.
    ``locate``: where a stored artifact path is (``Settings.locate``: a relative one, as older
    versions stored them, beside the settings file)."""
    return _switch(engine, settings, version, now, locate, "promote")


def rollback(
    engine: Engine,
    settings: RecommenderSettings,
    now: datetime,
    locate: Callable[[str], Path] = Path,
) -> str:
    """Return to the model that was live before the current one (``registry.previous_live``:
    rollbacks in a row walk back through the live models)."""
    with engine.connect() as connection:
        previous = registry.previous_live(connection)
    if previous is None:
        raise ModelError("nothing to roll back to: no model was live before the current one")
    _switch(engine, settings, str(previous.version), now, locate, "rollback")
    return str(previous.version)


def _switch(
    engine: Engine,
    settings: RecommenderSettings,
    version: str,
    now: datetime,
    locate: Callable[[str], Path],
    via: str,
) -> int:
    """Load ``version``, then make it live under the registry's lock: its artifacts still
    exist, and a rollback's target is still the rollback target (another switch meanwhile
    would make the rollback record a step the history does not have)."""
    with engine.connect() as connection:
        row = registry.get(connection, version)
    if row is None:
        raise ModelError(f"no model with version {version!r} (see `recocamp models list`)")
    directory = locate(row.path)
    fitted, data, _meta = model.load(directory, settings)
    lists = top_lists(fitted, data, settings.top_n, cached_rows(data, settings))
    registry.stage(engine, version, lists)  # before the switch's transaction: see there
    try:
        return _switched(engine, version, now, directory, via)
    finally:
        registry.drop_stale(engine)


def _switched(engine: Engine, version: str, now: datetime, directory: Path, via: str) -> int:
    """:func:`_switch`'s transaction: the checks under the registry's lock, then the switch
    to the staged cache."""
    with engine.begin() as connection:
        registry.lock_models(connection)  # the retention purge deletes artifacts under it
        if not (directory / "model.npz").exists():
            raise ModelError(
                f"the artifacts of {version} at {directory} were deleted while it was being "
                "promoted (the retention purge of retired models): it cannot go live"
            )
        target = registry.previous_live(connection) if via == "rollback" else None
        if via == "rollback" and (target is None or target.version != version):
            raise ModelError(
                f"the live model changed while rolling back to {version}: nothing was "
                "switched; run `recocamp models rollback` again"
            )
        return registry.make_live(connection, version, now, via=via)


def compare(
    engine: Engine,
    settings: RecommenderSettings,
    names: list[str],
    cutoff: datetime,
    horizon_days: int,
    k: int,
    step: Step | None = None,
    zone: tzinfo = UTC,
) -> dict[str, Metrics]:
    """``recocamp evaluate``: every named model on one split (the hybrid tuned before it),
    its days those of the shop's ``zone``."""
    lines = load_lines(engine)
    if len(lines) == 0:
        raise ModelError("no learnable purchase lines: import purchases first")
    split_args = _split_args(settings)
    split = evaluate.make_split(
        lines, cutoff.timestamp(), horizon_days, **split_args, **_sample(settings), zone=zone
    )
    tuned = settings.model_copy(update={"evaluation_horizon_days": horizon_days, "evaluation_k": k})
    results = {}
    for name in names:
        if step is not None:
            step(f"evaluating {name}")
        candidate = _candidate(name, tuned, lines, cutoff.timestamp(), zone)
        results[name] = evaluate.evaluate(candidate, split, k)
    return results
