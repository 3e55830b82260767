"""Recommender commands: ``recocamp train``, ``evaluate``, ``models …``, ``recommend`` and
``similar``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from recocamp import forecast as forecasting
from recocamp.campaigns import offers
from recocamp.campaigns.audience import history_of
from recocamp.cli.common import (
    MAX_TOP,
    OpenHorizon,
    Output,
    app,
    check_horizon,
    clock,
    console,
    current_settings,
    day_count,
    engine_for,
    errors,
    errors_to_exit,
    flagged,
    fmt,
    not_to_come,
    parse_as_of,
    print_error,
    print_json,
    print_warning,
    show,
    within,
)
from recocamp.domain import Item, composed, id_problem
from recocamp.errors import ModelError
from recocamp.recommender import evaluate as evaluate_module
from recocamp.recommender import models as model_module
from recocamp.recommender import training
from recocamp.recommender.evaluate import Metrics
from recocamp.recommender.models import EVALUATION_ONLY, MODEL_NAMES
from recocamp.recommender.ranking import objects_to_profiling
from recocamp.recommender.serving import Cached, Live, Purchases, personal_list
from recocamp.settings import Settings
from recocamp.store import queries, registry, views
from recocamp.store import serving as store_serving
from recocamp.store.engine import Connection, Engine

models_app = typer.Typer(help="The model registry: list, promote, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")
ModelName = StrEnum("ModelName", {name: name for name in MODEL_NAMES})  # type: ignore[misc]
# what `train` accepts: an evaluation-only baseline is bad input there (exit 2, not listed in
# its help), not a training that fails (exit 1)
TrainableName = StrEnum(  # type: ignore[misc]
    "TrainableName", {name: name for name in MODEL_NAMES if name not in EVALUATION_ONLY}
)
TopN = Annotated[int, typer.Option(callback=within(1, MAX_TOP), help="How many (1 to 1,000).")]
METRIC_COLUMNS = ("recall", "ndcg", "hit_rate", "recall_repeat", "recall_new", "customers", "fit_s")


def _metrics_table(title: str, rows: dict[str, Metrics]) -> Table:
    table = Table(title=title)
    table.add_column("model")
    for column in METRIC_COLUMNS:
        table.add_column(column, justify="right")
    for name, metrics in rows.items():
        values = metrics.as_dict()
        table.add_row(name, *(fmt(values[column]) for column in METRIC_COLUMNS))
    return table


@app.command("train")
def train(
    as_of: Annotated[str | None, typer.Option(help="Train on purchases before this.")] = None,
    model: Annotated[
        TrainableName | None, typer.Option(help="Default: [recommender] model.")
    ] = None,
    before_live_cutoff: Annotated[
        bool,
        typer.Option(
            "--before-live-cutoff",
            help="Allow an --as-of before the live model's data cutoff (its gate is biased).",
        ),
    ] = False,
) -> None:
    """Train, evaluate against the live model and baselines, promote if not worse; then store
    the purchase forecasts as of the same day (as the worker's nightly train job does)."""
    with errors_to_exit():
        settings = current_settings()
        if as_of is not None:
            _check_not_to_come(settings, as_of)
            _check_before_live(settings, as_of, before_live_cutoff)
        train_and_show(settings, as_of, model.value if model else None)


def _check_not_to_come(settings: Settings, as_of: str) -> None:
    """The forecasts ``train`` stores as of ``--as-of`` become the live ones, which campaigns
    and the API read: as of a day years ahead every customer is at high churn risk."""
    zone = settings.shop.zone
    why = (
        "the purchase forecasts stored as of it would be the live ones (campaigns and the "
        "API read them), made as of a time still to come"
    )
    not_to_come(parse_as_of(as_of, zone), zone, "--as-of", why)


def _check_before_live(settings: Settings, as_of: str, allowed: bool) -> None:
    """Exit 2 for an ``--as-of`` before the live model's data cutoff (a warning with
    ``--before-live-cutoff``): the gate's test window would overlap the window the live
    hybrid's weights were tuned on, which favours the live model."""
    zone = settings.shop.zone
    end = parse_as_of(as_of, zone)
    live = training.live_cutoff_after(engine_for(settings), end)
    if live is None:
        return
    text = (
        f"--as-of {end.astimezone(zone):%Y-%m-%d %H:%M} is before the data cutoff "
        f"{live.data_cutoff.astimezone(zone):%Y-%m-%d %H:%M} of the live model {live.version} "
        f"({zone.key}): the gate would refit it with parameters chosen on later data (a "
        "hybrid's weights were tuned on the weeks before its cutoff, this split's test window)"
    )
    if not allowed:
        print_error(f"{text} (--before-live-cutoff trains anyway)")
        raise typer.Exit(2)
    console.print(flagged("warning:", "yellow", f"{text}: the gate favours it"), soft_wrap=True)


def train_and_show(settings: Settings, as_of: str | None, name: str | None) -> None:
    """One training cycle with its steps on a spinner, then its figures and outcome, and the
    purchase forecasts stored as of ``as_of``'s shop-local day (``train``, and ``demo`` before
    its first campaign run). A forecast that cannot be made keeps the previous one stored and
    says why; the recommender's result stands either way, as in the worker's job."""
    end = parse_as_of(as_of, settings.shop.zone)
    with console.status("training") as status:
        result = training.train(
            engine_for(settings),
            settings.recommender,
            now=clock.now(),
            as_of=end,
            name=name,
            step=lambda text: status.update(text),
            zone=settings.shop.zone,
        )
    if result.metrics:
        show(_metrics_table(f"time split, k = {settings.recommender.evaluation_k}", result.metrics))
    console.print(f"{result.outcome}: {result.version} ({result.reason})", soft_wrap=True)
    if result.rule:
        console.print(f"rule: {result.rule}", soft_wrap=True)
    if result.seconds:
        cache = (
            f"{result.cache_rows:,} customers"
            if result.outcome == "promoted"
            else "unchanged, the live model keeps serving"
        )
        console.print(f"top-N cache: {cache}; seconds: {result.seconds}")
    _store_forecasts(settings, end)


def _store_forecasts(settings: Settings, as_of: datetime) -> None:
    with console.status("forecasting purchases"):
        try:
            stored = forecasting.refresh(engine_for(settings), settings, clock.now(), as_of)
        except ModelError as exc:
            console.print(flagged("forecast not stored:", "yellow", str(exc)), soft_wrap=True)
            return
    console.print(
        f"forecast: {stored.version} for {stored.customers:,} customers ({stored.reason})",
        soft_wrap=True,
    )


def _default_cutoff(engine: Engine, horizon_days: int, zone: ZoneInfo) -> datetime:
    """The newest purchase's shop-local day, less the horizon: midnight in the shop's zone,
    as ``--cutoff DATE`` names it (the UTC day's midnight was 01:00 in London in summer, a
    split no date given to ``--cutoff`` reproduces)."""
    with engine.connect() as connection:
        latest = queries.latest_order_time(connection)
    if latest is None:
        raise ModelError("no purchases in the store: import purchases first")
    day = latest.astimezone(zone).date() - timedelta(days=horizon_days)
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


@app.command("evaluate")
def evaluate_models(
    cutoff: Annotated[
        str | None,
        typer.Option(help="Split date (default: the latest purchase's day − horizon, shop time)."),
    ] = None,
    horizon_days: Annotated[
        int | None, typer.Option(callback=day_count, help="Default: [recommender] setting.")
    ] = None,
    k: Annotated[
        int | None, typer.Option(callback=within(1, MAX_TOP), help="Top-k (1 to 1,000).")
    ] = None,
    format: Annotated[Output, typer.Option("--format")] = Output.table,
    models: Annotated[list[ModelName] | None, typer.Option("--model", help="Repeatable.")] = None,
    open_horizon: OpenHorizon = False,
) -> None:
    """Every model and baseline on one time split (protocol in README.md). The horizon must
    be closed: the store's newest purchase reaches its last day (else exit 2, or a warning
    with --open-horizon)."""
    with errors_to_exit():
        settings = current_settings()
        rec = settings.recommender
        horizon = horizon_days or rec.evaluation_horizon_days
        top = k or rec.evaluation_k
        engine = engine_for(settings)
        zone = settings.shop.zone
        split_at = (
            parse_as_of(cutoff, zone, "--cutoff")
            if cutoff
            else _default_cutoff(engine, horizon, zone)
        )
        check_horizon(engine, split_at, horizon, zone, open_horizon)
        names = [m.value for m in models] if models else list(MODEL_NAMES)
        with errors.status("evaluating") as status:
            results = training.compare(
                engine, rec, names, split_at, horizon, top, status.update, zone
            )
    if all(metrics.customers == 0 for metrics in results.values()):
        # zeros without a word read as models that recommend nothing a customer buys
        print_warning(
            "nobody who bought before the cutoff bought again within the horizon: there was "
            "nothing to measure, and every figure is 0 (a later --cutoff or a longer "
            "--horizon-days)"
        )
    if format is Output.json:
        document = {
            "cutoff": split_at.astimezone(zone).isoformat(),
            "horizon_days": horizon,
            "k": top,
            "models": {name: m.as_dict() for name, m in results.items()},
        }
        print_json(document, indent=2)
        return
    # the date the user gave: the split's instant in the shop's zone, not in UTC
    local = split_at.astimezone(zone)
    show(
        _metrics_table(
            f"cutoff {local:%Y-%m-%d %H:%M} ({zone.key}), horizon {horizon} days, k = {top}",
            results,
        )
    )


@models_app.command("list")
def models_list() -> None:
    """Registered models, newest first. Each version's figures were measured on its own
    time split; the live model it was gated against was measured on the same split."""
    with errors_to_exit():
        settings = current_settings()
        metric = settings.recommender.promote_metric
        zone = settings.shop.zone
        with engine_for(settings).connect() as connection:
            rows = registry.listing(connection)
            target = registry.previous_live(connection)
    back_to = None if target is None else str(target.version)
    table = Table(title="models")
    level = f"{evaluate_module.GATE_LEVEL * 100:g} %"
    columns = (
        "version (data cutoff, model)",
        "status",
        "split",
        metric,
        f"live {metric} (same split)",
        f"candidate − live ({level})",
        "recall_new",
    )
    for column in columns:  # the version and the interval are read whole, never wrapped
        table.add_column(
            column, no_wrap=column.startswith(("version", "status", "candidate", "split"))
        )
    for row in rows:
        candidate = row.metrics.get("candidate", {})
        gate = row.metrics.get("gate", {})
        live = row.metrics.get("live", {})
        measured = gate.get("metric", metric)  # the gate's metric when it was trained
        table.add_row(
            row.version,
            "rollback target" if row.version == back_to else row.status,
            _split_text(gate, zone),
            fmt(candidate.get(measured)),
            fmt(live.get(measured)),
            _difference_text(gate.get("difference"), measured, metric),
            fmt(candidate.get("recall_new")),
        )
    show(table)
    console.print(
        f"split: the evaluation's cutoff and horizon; {metric}: each version on its own "
        "split; 'live … (same split)': the model that was live when it was trained, "
        "re-measured on that split, which the promotion gate compared; 'rollback target': "
        "the retired model `recocamp models rollback` makes live (the retention purge "
        "keeps its artifacts)",
        soft_wrap=True,
    )


def _split_text(gate: dict[str, Any], zone: ZoneInfo) -> str:
    """The split's cutoff as the shop-local date a person gave, and its horizon."""
    if "split_cutoff" not in gate:
        return "—"
    cutoff = datetime.fromisoformat(gate["split_cutoff"]).astimezone(zone)
    return f"{cutoff.date()} +{gate['horizon_days']}d"


def _difference_text(difference: dict[str, Any] | None, measured: str, metric: str) -> str:
    """The gate's interval; named by its metric where that is not today's promote_metric."""
    if not difference:
        return "—"
    text = f"{difference['mean']:+.4f} [{difference['low']:+.4f}, {difference['high']:+.4f}]"
    return text if measured == metric else f"{text} ({measured})"


@models_app.command("promote")
def models_promote(version: str) -> None:
    """Make a registered model live and rebuild the top-N cache from its artifacts."""
    with errors_to_exit():
        settings = current_settings()
        rows = training.promote(
            engine_for(settings), settings.recommender, version, clock.now(), settings.locate
        )
    console.print(f"{version} is live; top-N cache: {rows:,} customers")


@models_app.command("rollback")
def models_rollback() -> None:
    """Return to the model that was live before the current one."""
    with errors_to_exit():
        settings = current_settings()
        version = training.rollback(
            engine_for(settings), settings.recommender, clock.now(), settings.locate
        )
    console.print(f"rolled back: {version} is live")


def _an_id(value: str) -> str:
    """An argument that names a customer: one that cannot be an id (empty, white space at
    either end as a pasted id has, a control character) is refused, exit 2, as the API
    answers 422; taken as it is, it was an unknown customer and got the popular items,
    with nothing to say the id was mistyped. Composed (``domain.composed``), as the API and
    files read ids."""
    value = composed(value)
    problem = "is empty" if not value else id_problem(value)
    if problem:
        raise typer.BadParameter(f"{value!r} {problem}")
    return value


@app.command("recommend")
def recommend(customer_id: Annotated[str, typer.Argument(callback=_an_id)], n: TopN = 10) -> None:
    """A customer's list by the offer API's rule: the cached top-N, or computed now from the
    live model for a customer the cache leaves out or who bought since the model's data
    (popularity for objectors, unknown customers, no history)."""
    # the rule is serving.personal_list's; this docstring is the command's --help
    with errors_to_exit():
        settings = current_settings()
        now, engine = clock.now(), engine_for(settings)
        with engine.connect() as connection:
            live = registry.live(connection)
            if live is None:
                raise ModelError("no live model: run `recocamp train` first")
            customer_id = registry.stored_id(connection, customer_id)  # as the offer API
            flags = store_serving.profiling_flags(connection, customer_id)  # any Unicode form
            row = registry.cached(connection, customer_id)
            placed = views.customer_orders(connection, customer_id, now)
            returned = views.returned_items(connection, customer_id, now)
            history = history_of(placed, {}, returned)
        cached = None if row is None else Cached(row.items, str(row.model_version))
        fitted, data, _ = model_module.load(settings.locate(live.path), settings.recommender)
        loaded = Live.of(live.version, fitted, data, live.data_cutoff)
        personal = personal_list(
            loaded,
            history,
            cached,
            customer_id=customer_id,
            objected=objects_to_profiling(flags),
            known=flags is not None or cached is not None or history.count > 0,
            top_n=max(n, settings.recommender.top_n),
            half_life=settings.recommender.time_decay_half_life_days,
        )
        # never an item returned in full, as the API and the e-mails (``offers.select``)
        ranked = [list(entry) for entry in (personal.items or live.popular)]
        ranked = [entry for entry in ranked if str(entry[0]) not in returned]
        if len(ranked) < n:
            more = _ranked_past(loaded, history, personal.items, ranked, settings)
            ranked += [entry for entry in more if str(entry[0]) not in returned]
        with engine.connect() as connection:
            shown = _offerable(connection, ranked, n)
    console.print(f"customer {customer_id}: {personal.why} (model {live.version})")
    _ranked_table(shown)


@app.command("similar")
def similar_items(item_id: str, n: TopN = 10) -> None:
    """Items similar to ITEM_ID according to the live model."""
    with errors_to_exit():
        settings = current_settings()
        engine = engine_for(settings)
        with engine.connect() as connection:
            live = registry.live(connection)
        if live is None:
            raise ModelError("no live model: run `recocamp train` first")
        fitted, data, _ = model_module.load(settings.locate(live.path), settings.recommender)
        with engine.connect() as connection:
            known = queries.item_titles(connection, [item_id])
        if item_id not in set(data.items.tolist()):
            raise ModelError(_unknown_item(item_id, item_id in known, live.version))
        pool = model_module.similar(fitted, data, item_id, offers.similar_pool(n))
        with engine.connect() as connection:
            shown = _offerable(connection, pool, n, item_id)
    console.print(f"similar to {item_id} {known.get(item_id, '')} (model {live.version})")
    score = f"score: {model_module.similarity_measure(fitted)}"
    _ranked_table(shown, score)


_AVAILABLE = "out-of-stock, service and unpriced items left out, as in the API's answers"


def _ranked_past(
    live: Live,
    history: Purchases,
    personal: Sequence[Sequence[Any]] | None,
    ranked: Sequence[Sequence[Any]],
    settings: Settings,
) -> list[list[Any]]:
    """What follows ``ranked`` (the cached top-N row or the stored popularity, ``top_n``
    long) for ``--n`` past it: the rest of the model's ranking of the customer's history,
    or of recent popularity (``training.popular_list``, the stored list's own ranking) for
    a popularity answer; every item, so the offerable ``n`` are there. They were cut at
    ``top_n`` without a word, where the offer API pads its answers to ``n``."""
    if personal is not None and history.count:  # the API pads only such histories too
        scores = live.scores(history, settings.recommender.time_decay_half_life_days)
        more = live.ranked(scores, len(live.columns))
    else:
        more = training.popular_list(live.data, len(live.columns))
    listed = {str(entry[0]) for entry in ranked}
    return [list(entry) for entry in more if str(entry[0]) not in listed]


def _offerable(
    connection: Connection, ranked: Sequence[Sequence[Any]], n: int, leave_out: str = ""
) -> list[tuple[Item, float]]:
    """The first ``n`` items of ``ranked`` the API would show (``offers.first_offerable``)."""
    catalogue = views.catalogue_items(connection, [str(entry[0]) for entry in ranked])
    return offers.first_offerable(ranked, catalogue, n, leave_out)


def _unknown_item(item_id: str, in_catalogue: bool, version: str) -> str:
    if in_catalogue:
        return (
            f"item {item_id!r} is in the catalogue but not in the live model {version} "
            "(nobody bought it before the model's data cutoff)"
        )
    return f"no item {item_id!r} in the catalogue"


def _ranked_table(ranked: list[tuple[Item, float]], score: str = "score") -> None:
    table = Table(caption=_AVAILABLE)
    for column in ("rank", "item", "title", score):
        table.add_column(column)
    for rank, (item, value) in enumerate(ranked, start=1):
        table.add_row(str(rank), item.id, item.title, f"{value:.4f}")
    show(table)
