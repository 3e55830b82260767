"""The ``recocamp`` command: one sub-command per user task.

Every command reads settings the same way (``--settings`` / ``$RECOCAMP_SETTINGS`` /
``./settings.toml``), prints errors a person can act on (file, line/key, value; exit 2 for
bad input, 1 for other failures) and never a traceback for an expected problem.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recocamp.campaigns import check as checks
from recocamp.campaigns import compose, planner, render, segments
from recocamp.clock import SystemClock
from recocamp.data.demo import build_demo
from recocamp.data.ingest import Importer, ImportReport
from recocamp.errors import ConfigError, DataImportError, ModelError, Problem, RecocampError
from recocamp.measure import kpis as kpi_module
from recocamp.recommender import evaluate as evaluate_module
from recocamp.recommender import models as model_module
from recocamp.recommender import training
from recocamp.recommender.evaluate import Metrics
from recocamp.recommender.models import MODEL_NAMES
from recocamp.recommender.ranking import objects_to_profiling, personal_or_popular
from recocamp.settings import Settings, load_settings
from recocamp.store import queries, registry, tombstones
from recocamp.store import views as store_views
from recocamp.store.engine import current_revision, head_revision, make_engine, require_current
from recocamp.store.engine import upgrade as upgrade_schema

app = typer.Typer(help="recocamp: a retention engine for online shops.", no_args_is_help=True)
db_app = typer.Typer(help="Create and migrate the database.", no_args_is_help=True)
import_app = typer.Typer(help="Import purchases, customers and items from CSV files.",
                         no_args_is_help=True)  # fmt: skip
app.add_typer(db_app, name="db")
app.add_typer(import_app, name="import")

# piped output (files, CI logs) is not squeezed into 80 columns
console = Console() if sys.stdout.isatty() else Console(width=140)
errors = Console(stderr=True) if sys.stderr.isatty() else Console(stderr=True, width=140)
clock = SystemClock()


class State:
    settings_path: Path | None = None
    engines: list[sa.Engine] = []  # noqa: RUF012 — disposed when the command ends


def _dispose_engines() -> None:
    while State.engines:
        State.engines.pop().dispose()


class Output(StrEnum):
    table = "table"
    json = "json"


class PurchaseFormat(StrEnum):
    standard = "standard"
    online_retail = "online-retail"


@app.callback()
def main(
    ctx: typer.Context,
    settings: Annotated[
        Path | None, typer.Option("--settings", help="Settings file (default: ./settings.toml).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False,
) -> None:
    State.settings_path = settings
    ctx.call_on_close(_dispose_engines)
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@contextmanager
def _errors_to_exit() -> Iterator[None]:
    """Expected problems become one readable message and an exit code, not a traceback."""
    try:
        yield
    except (ConfigError, DataImportError) as exc:
        errors.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except RecocampError as exc:
        errors.print(f"[bold red]error:[/] {exc}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None


def print_json(document: object, *, indent: int) -> None:
    """Standard JSON on stdout, never ``NaN`` or ``Infinity`` (Python's extensions, which
    JSON parsers refuse): such a number is a clear error (exit 1), not broken output."""
    try:
        text = json.dumps(document, indent=indent, allow_nan=False)
    except ValueError as exc:
        errors.print(f"[bold red]error:[/] cannot write JSON: {exc}", markup=True,
                     highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(1) from None
    sys.stdout.write(text + "\n")


def _settings() -> Settings:
    return load_settings(State.settings_path)


def _engine(settings: Settings, *, migrated: bool = True) -> sa.Engine:
    engine = make_engine(settings.database_url)
    State.engines.append(engine)
    if migrated:
        require_current(engine)
    return engine


class RichProgress:
    """The importer's progress sink as a rich progress bar."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.task: Any = None

    def phase(self, label: str, total: int | None) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(label, total=total)

    def advance(self, amount: int) -> None:
        self.progress.advance(self.task, amount)


@contextmanager
def _progress() -> Iterator[RichProgress]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=errors, transient=True) as progress:
        yield RichProgress(progress)


# --- db -------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database or migrate it to the newest schema."""
    with _errors_to_exit():
        settings = _settings()
        revision = upgrade_schema(_engine(settings, migrated=False))
        console.print(f"database at schema revision {revision}")


@db_app.command("current")
def db_current() -> None:
    """Show the database's schema revision and the newest one."""
    with _errors_to_exit():
        engine = _engine(_settings(), migrated=False)
        console.print(f"database: {current_revision(engine) or 'none'}, newest: {head_revision()}")


# --- import ---------------------------------------------------------------------------


def _importer(settings: Settings, progress: RichProgress, zone: str | None) -> Importer:
    return Importer(
        _engine(settings),
        zone=ZoneInfo(zone) if zone else settings.shop.zone,
        now=clock.now(),
        progress=progress,
        max_listed=settings.ingest.max_errors_listed,
        erasure_key=tombstones.key_of(settings),
    )


def _print_report(report: ImportReport) -> None:
    if report.already_imported:
        console.print(f"{report.file}: already imported, nothing changed")
        return
    table = Table(title=f"import {report.kind} ({report.format}): {Path(report.file).name}")
    table.add_column("what")
    table.add_column("rows", justify="right")
    table.add_row("read", f"{report.rows_read:,}")
    table.add_row("imported", f"{report.imported:,}")
    table.add_row("already stored", f"{report.duplicates:,}")
    for reason, number in sorted(report.skipped.items()):
        table.add_row(f"skipped: {reason}", f"{number:,}")
    for name, number in report.details.items():
        table.add_row(name.replace("_", " "), f"{number:,}")
    table.caption = f"{report.seconds:.1f} s"
    console.print(table)


ZoneOption = Annotated[
    str | None, typer.Option(help="Time zone of timestamps without an offset (default: shop's).")
]


@import_app.command("purchases")
def import_purchases(
    file: Annotated[Path, typer.Argument(help="CSV file, optionally .gz")],
    format: Annotated[PurchaseFormat, typer.Option("--format")] = PurchaseFormat.standard,
    time_zone: ZoneOption = None,
) -> None:
    """Import order lines (all-or-nothing; importing the same file again changes nothing)."""
    with _errors_to_exit(), _progress() as progress:
        report = _importer(_settings(), progress, time_zone).purchases(file, format.value)
    _print_report(report)


@import_app.command("customers")
def import_customers(file: Path, time_zone: ZoneOption = None) -> None:
    """Import or update customer profiles and consent records."""
    with _errors_to_exit(), _progress() as progress:
        report = _importer(_settings(), progress, time_zone).customers(file)
    _print_report(report)


@import_app.command("items")
def import_items(file: Path) -> None:
    """Import or update the items catalogue."""
    with _errors_to_exit(), _progress() as progress:
        report = _importer(_settings(), progress, None).items(file)
    _print_report(report)


# --- demo -----------------------------------------------------------------------------


@app.command("demo-data")
def demo_data(
    source: Annotated[Path | None, typer.Option("--from", help="UCI online_retail.csv.gz")] = None,
    synthetic: Annotated[bool, typer.Option(help="Use the synthetic generator.")] = False,
    demo_dir: Annotated[Path, typer.Option(help="Where generated files go.")] = Path("demo"),
) -> None:
    """Build the demo shop (creates/migrates the database first)."""
    with _errors_to_exit(), _progress() as progress:
        settings = _settings()
        report = build_demo(
            _engine(settings, migrated=False), settings, now=clock.now(), source=source,
            synthetic=synthetic, demo_dir=demo_dir, progress=progress,
        )  # fmt: skip
    console.print(f"demo shop from {report.source}")
    for each in report.reports:
        _print_report(each)


# --- kpis -----------------------------------------------------------------------------


def parse_as_of(value: str | None, zone: ZoneInfo) -> datetime:
    """``YYYY-MM-DD`` is midnight at the start of that day in the shop's zone."""
    if value is None:
        return clock.now()
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD) or date-time") from None
    if len(value) == 10:
        parsed = datetime.combine(date.fromisoformat(value), time(), tzinfo=zone)
    elif parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}"
    return "—" if value is None else str(value)


@app.command("kpis")
def kpis(
    as_of: Annotated[str | None, typer.Option(help="End of the window (default: now).")] = None,
    window_days: Annotated[int | None, typer.Option(min=1, help="Window W in days.")] = None,
    format: Annotated[Output, typer.Option("--format")] = Output.table,
) -> None:
    """Retention KPIs over the window ending at --as-of (definitions in README.md)."""
    with _errors_to_exit():
        settings = _settings()
        end = parse_as_of(as_of, settings.shop.zone)
        days = window_days or settings.kpis.window_days
        with _engine(settings).connect() as connection:
            rows = queries.order_totals(connection, end - timedelta(days=2 * days), end)
            latest = queries.latest_order_time(connection)
        result = kpi_module.compute([kpi_module.OrderTotal(*row) for row in rows], end, days)
    empty = _empty_window_note(result, latest, settings.shop.zone)
    if format is Output.json:
        print_json(result.as_dict(), indent=2)
        if empty:
            errors.print(f"note: {empty}", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"retention KPIs, {days} days to {result.as_of.isoformat()}")
    table.add_column("kpi")
    table.add_column("value", justify="right")
    for name, value in result.as_dict().items():
        if name not in ("as_of", "window_days"):
            table.add_row(name, _fmt(value))
    console.print(table)
    if empty:
        console.print(f"note: {empty}", highlight=False, soft_wrap=True)


def _empty_window_note(result: kpi_module.Kpis, latest: datetime | None, zone: ZoneInfo) -> str:
    """All zeros without a word read like a dead shop; usually the window is just in the
    wrong place (the default ends now, imported history may end years ago)."""
    if result.orders or result.guest_orders:
        return ""
    if latest is None:
        return "the store holds no orders at all: import purchases first"
    start = (result.as_of - timedelta(days=result.window_days)).astimezone(zone)
    last = latest.astimezone(zone).date()
    return (f"the window {start:%Y-%m-%d} – {result.as_of.astimezone(zone):%Y-%m-%d} holds no "
            f"orders; the last order was on {last} (try --as-of "
            f"{last + timedelta(days=1)})")  # fmt: skip


# --- recommender ----------------------------------------------------------------------

models_app = typer.Typer(help="The model registry: list, promote, roll back.", no_args_is_help=True)
app.add_typer(models_app, name="models")
ModelName = StrEnum("ModelName", {name: name for name in MODEL_NAMES})  # type: ignore[misc]
METRIC_COLUMNS = ("recall", "ndcg", "hit_rate", "recall_repeat", "recall_new", "customers", "fit_s")


def _metrics_table(title: str, rows: dict[str, Metrics]) -> Table:
    table = Table(title=title)
    table.add_column("model")
    for column in METRIC_COLUMNS:
        table.add_column(column, justify="right")
    for name, metrics in rows.items():
        values = metrics.as_dict()
        table.add_row(name, *(_fmt(values[column]) for column in METRIC_COLUMNS))
    return table


@app.command("train")
def train(
    as_of: Annotated[str | None, typer.Option(help="Train on purchases before this.")] = None,
    model: Annotated[ModelName | None, typer.Option(help="Default: [recommender] model.")] = None,
) -> None:
    """Train, evaluate against the live model and baselines, promote if not worse."""
    with _errors_to_exit():
        settings = _settings()
        end = parse_as_of(as_of, settings.shop.zone)
        with console.status("training") as status:
            result = training.train(
                _engine(settings), settings.recommender, now=clock.now(), as_of=end,
                name=model.value if model else None, step=lambda text: status.update(text),
                zone=settings.shop.zone,
            )  # fmt: skip
    if result.metrics:
        console.print(_metrics_table(f"time split, k = {settings.recommender.evaluation_k}",
                                     result.metrics))  # fmt: skip
    console.print(f"{result.outcome}: {result.version} ({result.reason})", soft_wrap=True)
    if result.rule:
        console.print(f"rule: {result.rule}", soft_wrap=True)
    if result.seconds:
        cache = (f"{result.cache_rows:,} customers" if result.outcome == "promoted"
                 else "unchanged, the live model keeps serving")  # fmt: skip
        console.print(f"top-N cache: {cache}; seconds: {result.seconds}")


def _default_cutoff(engine: sa.Engine, horizon_days: int) -> datetime:
    with engine.connect() as connection:
        latest = queries.latest_order_time(connection)
    if latest is None:
        raise ModelError("no purchases in the store: import purchases first")
    return datetime.combine(latest.date(), time(), tzinfo=latest.tzinfo) - timedelta(
        days=horizon_days
    )


@app.command("evaluate")
def evaluate_models(
    cutoff: Annotated[
        str | None, typer.Option(help="Split date (default: latest purchase − horizon).")
    ] = None,
    horizon_days: Annotated[int | None, typer.Option(min=1)] = None,
    k: Annotated[int | None, typer.Option(min=1)] = None,
    format: Annotated[Output, typer.Option("--format")] = Output.table,
    models: Annotated[list[ModelName] | None, typer.Option("--model", help="Repeatable.")] = None,
) -> None:
    """Every model and baseline on one time split (protocol in README.md)."""
    with _errors_to_exit():
        settings = _settings()
        rec = settings.recommender
        horizon = horizon_days or rec.evaluation_horizon_days
        top = k or rec.evaluation_k
        engine = _engine(settings)
        zone = settings.shop.zone
        split_at = (parse_as_of(cutoff, zone) if cutoff
                    else _default_cutoff(engine, horizon))  # fmt: skip
        names = [m.value for m in models] if models else list(MODEL_NAMES)
        with errors.status("evaluating") as status:
            results = training.compare(engine, rec, names, split_at, horizon, top, status.update)
    if format is Output.json:
        document = {"cutoff": split_at.astimezone(zone).isoformat(), "horizon_days": horizon,
                    "k": top,
                    "models": {name: m.as_dict() for name, m in results.items()}}  # fmt: skip
        print_json(document, indent=2)
        return
    # the date the user gave: the split's instant in the shop's zone, not in UTC
    local = split_at.astimezone(zone)
    console.print(_metrics_table(f"cutoff {local:%Y-%m-%d %H:%M} ({zone.key}), horizon {horizon} "
                                 f"days, k = {top}", results))  # fmt: skip


@models_app.command("list")
def models_list() -> None:
    """Registered models, newest first. Each version's figures were measured on its own
    time split; the live model it was gated against was measured on the same split."""
    with _errors_to_exit():
        settings = _settings()
        metric = settings.recommender.promote_metric
        zone = settings.shop.zone
        with _engine(settings).connect() as connection:
            rows = registry.listing(connection)
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
        table.add_column(column, no_wrap=column.startswith(("version", "candidate", "split")))
    for row in rows:
        candidate = row.metrics.get("candidate", {})
        gate = row.metrics.get("gate", {})
        live = row.metrics.get("live", {})
        measured = gate.get("metric", metric)  # the gate's metric when it was trained
        table.add_row(row.version, row.status, _split_text(gate, zone),
                      _fmt(candidate.get(measured)), _fmt(live.get(measured)),
                      _difference_text(gate.get("difference"), measured, metric),
                      _fmt(candidate.get("recall_new")))  # fmt: skip
    console.print(table)
    console.print(
        f"split: the evaluation's cutoff and horizon; {metric}: each version on its own "
        "split; 'live … (same split)': the model that was live when it was trained, "
        "re-measured on that split, which the promotion gate compared",
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
    with _errors_to_exit():
        settings = _settings()
        rows = training.promote(_engine(settings), settings.recommender, version, clock.now())
    console.print(f"{version} is live; top-N cache: {rows:,} customers")


@models_app.command("rollback")
def models_rollback() -> None:
    """Return to the model that was live before the current one."""
    with _errors_to_exit():
        settings = _settings()
        version = training.rollback(_engine(settings), settings.recommender, clock.now())
    console.print(f"rolled back: {version} is live")


@app.command("recommend")
def recommend(customer_id: str, n: Annotated[int, typer.Option(min=1)] = 10) -> None:
    """A customer's cached top-N from the live model (popularity for cold or objected ones)."""
    with _errors_to_exit():
        settings = _settings()
        with _engine(settings).connect() as connection:
            live = registry.live(connection)
            if live is None:
                raise ModelError("no live model: run `recocamp train` first")
            person = registry.customer(connection, customer_id)
            cached = registry.cached(connection, customer_id)
            ranked, why = personal_or_popular(
                known=person is not None or cached is not None,
                objected=objects_to_profiling(person),
                personal=cached.items if cached else None,
                popular=live.popular,
            )
            titles = queries.item_titles(connection, [item for item, _ in ranked[:n]])
    console.print(f"customer {customer_id}: {why} (model {live.version})")
    _ranked_table(None, ranked[:n], titles)


@app.command("similar")
def similar_items(item_id: str, n: Annotated[int, typer.Option(min=1)] = 10) -> None:
    """Items similar to ITEM_ID according to the live model."""
    with _errors_to_exit():
        settings = _settings()
        engine = _engine(settings)
        with engine.connect() as connection:
            live = registry.live(connection)
        if live is None:
            raise ModelError("no live model: run `recocamp train` first")
        fitted, data, _ = model_module.load(Path(live.path), settings.recommender)
        with engine.connect() as connection:
            known = queries.item_titles(connection, [item_id])
        if item_id not in set(data.items.tolist()):
            raise ModelError(_unknown_item(item_id, item_id in known, live.version))
        ranked = [[item, score] for item, score in model_module.similar(fitted, data, item_id, n)]
        with engine.connect() as connection:
            titles = queries.item_titles(connection, [item_id, *(str(r[0]) for r in ranked)])
    console.print(f"similar to {item_id} {titles.get(item_id, '')} (model {live.version})")
    _ranked_table(None, ranked, titles, f"score: {model_module.similarity_measure(fitted)}")


def _unknown_item(item_id: str, in_catalogue: bool, version: str) -> str:
    if in_catalogue:
        return (f"item {item_id!r} is in the catalogue but not in the live model {version} "
                "(nobody bought it before the model's data cutoff)")  # fmt: skip
    return f"no item {item_id!r} in the catalogue"


def _ranked_table(
    title: str | None, ranked: list[list[Any]], titles: dict[str, str], score: str = "score"
) -> None:
    table = Table(title=title)
    for column in ("rank", "item", "title", score):
        table.add_column(column)
    for rank, (item, value) in enumerate(ranked, start=1):
        table.add_row(str(rank), item, titles.get(item, ""), f"{value:.4f}")
    console.print(table)


# --- campaigns ------------------------------------------------------------------------

CampaignsDir = Annotated[Path, typer.Option("--campaigns", help="Campaign files.")]
TemplatesDir = Annotated[Path, typer.Option("--templates", help="Template files.")]


@app.command("check")
def check(
    campaigns: CampaignsDir = Path("campaigns"), templates: TemplatesDir = Path("templates")
) -> None:
    """Validate settings, every campaign, every template and their cross-references."""
    with _errors_to_exit():
        settings = _settings()
        loaded, failures = checks.campaign_problems(settings, campaigns, templates)
    for failure in failures:
        errors.print(f"[bold red]error:[/] {failure}", markup=True, highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(2)
    console.print(f"ok: settings, {len(loaded)} campaign(s) and their templates are valid")


def _one_campaign(settings: Settings, name: str, campaigns: Path, templates: Path) -> Any:
    loaded, failures = checks.campaign_problems(settings, campaigns, templates)
    broken = [f for f in failures if f.path.stem == name]
    if broken:
        raise broken[0]
    chosen = [c for c in loaded if c.name == name]
    if not chosen:
        known = ", ".join(c.name for c in loaded) or "none"
        raise ConfigError(
            campaigns / f"{name}.toml", [Problem(f"no such campaign (known: {known})")]
        )
    return chosen[0]


def _planning(settings: Settings, as_of: str | None) -> tuple[Any, Any]:
    end = parse_as_of(as_of, settings.shop.zone) if as_of else clock.now()
    with _engine(settings).connect() as connection:
        snapshot = store_views.load(connection, settings, end)
    context = planner.context_for(settings, end, snapshot.items, snapshot.popular)
    return snapshot, context


@app.command("plan")
def plan_campaign(
    campaign: str,
    as_of: Annotated[
        str | None, typer.Option(help="Plan as if it were this time (default: now).")
    ] = None,
    format: Annotated[Output, typer.Option("--format")] = Output.table,
    campaigns: CampaignsDir = Path("campaigns"),
    templates: TemplatesDir = Path("templates"),
    limit: Annotated[int, typer.Option(help="Decisions shown in the table.")] = 20,
) -> None:
    """Dry run: who would get what, who is skipped by which rule. Writes nothing."""
    with _errors_to_exit():
        settings = _settings()
        chosen = _one_campaign(settings, campaign, campaigns, templates)
        snapshot, context = _planning(settings, as_of)
        decisions = planner.plan(chosen, snapshot.views, context)
    tally = planner.counts(decisions)
    if format is Output.json:
        document = {
            "campaign": chosen.name, "as_of": context.now.isoformat(),
            "decisions": [_decision_json(d) for d in decisions], "counts": tally,
        }  # fmt: skip
        print_json(document, indent=1)
        return
    table = Table(
        title=f"plan {chosen.name} at {context.now.isoformat()}: {len(decisions):,} customers"
    )
    table.add_column("reason")
    table.add_column("customers", justify="right")
    for reason, number in tally.items():
        table.add_row(reason, f"{number:,}")
    console.print(table)
    sample = Table(title=f"first {limit} decisions that contact or defer")
    for column in ("customer", "outcome", "variant", "send at", "offers"):
        sample.add_column(column)
    shown = [d for d in decisions if d.outcome in (planner.Outcome.SEND, planner.Outcome.DEFER)][
        :limit
    ]
    items = context.items
    for d in shown:
        send_at = d.send_at.isoformat() if d.send_at else ""
        offered = "; ".join(f"{_title(items, o.item_id)} ({o.why})" for o in d.offers)
        sample.add_row(d.customer_id, d.outcome.value, d.variant or "", send_at, offered)
    console.print(sample)


def _title(items: Any, item_id: str) -> str:
    item = items.get(item_id)
    return f"{item.title} [{item_id}]" if item is not None and item.title else item_id


def _decision_json(decision: Any) -> dict[str, Any]:
    return {
        "customer_id": decision.customer_id, "outcome": decision.outcome.value,
        "reason": decision.reason, "variant": decision.variant,
        "send_at": decision.send_at.isoformat() if decision.send_at else None,
        "offers": [
            {"item_id": o.item_id, "score": round(o.score, 6), "why": o.why}
            for o in decision.offers
        ],
    }  # fmt: skip


@app.command("preview")
def preview(
    campaign: str,
    customer: Annotated[str, typer.Option("--customer", help="Customer id.")],
    html: Annotated[Path | None, typer.Option("--html", help="Write the HTML part here.")] = None,
    as_of: Annotated[str | None, typer.Option(help="Decide as if it were this time.")] = None,
    campaigns: CampaignsDir = Path("campaigns"),
    templates: TemplatesDir = Path("templates"),
    anyway: Annotated[
        bool,
        typer.Option(
            "--anyway",
            help="Render even when the plan would not send this customer "
            "the e-mail (skipped or held out).",
        ),
    ] = False,
) -> None:
    """Render one customer's e-mail as the plan would send it. A customer the plan would not
    contact is not rendered (their e-mail would say things that are not true, e.g. "we have
    not seen you for a while" to a regular) unless --anyway is given: the reason is shown."""
    with _errors_to_exit():
        settings = _settings()
        chosen = _one_campaign(settings, campaign, campaigns, templates)
        snapshot, context = _planning(settings, as_of)
        view = next((v for v in snapshot.views if v.customer.id == customer), None)
        if view is None:
            raise ConfigError(
                Path("customers"), [Problem("no such customer", key="--customer", value=customer)]
            )
        decision = planner.decide(chosen, view, context, chosen.policy(context.policy))
        if decision.outcome not in _CONTACTED and not anyway:
            console.print(_not_contacted(decision, chosen, view, context), highlight=False,
                          soft_wrap=True)  # fmt: skip
            console.print("nothing rendered; --anyway renders it regardless")
            return
        offers = None if decision.offers else tuple(planner.offers_for(chosen, view, context))
        key = settings.signing_key_bytes()
        link = compose.links(settings, key or _EPHEMERAL, customer, chosen.name, clock.now())
        renderer = render.Renderer(templates, limits=settings.templates)
        email = compose.render_for(decision, view, chosen, settings, renderer, link, offers)
    console.print(
        f"decision: {decision.outcome.value} ({decision.reason}); variant {decision.variant or '-'}"
    )
    console.print(f"subject: {email.subject}\n")
    sys.stdout.write(email.text + "\n")  # verbatim: links must not be wrapped
    if html is not None:
        html.write_text(email.html, encoding="utf-8")
        console.print(f"HTML part written to {html}")


_CONTACTED = (planner.Outcome.SEND, planner.Outcome.DEFER)


def _not_contacted(decision: Any, campaign: Any, view: Any, context: Any) -> str:
    """Why the plan would not send this customer the e-mail, in words."""
    verb = (
        "held out (never contacted)" if decision.outcome is planner.Outcome.HOLDOUT else "skipped"
    )
    text = f"customer {decision.customer_id} would be {verb} by {campaign.name}: {decision.reason}"
    rule = decision.reason.removeprefix("not_in_audience:")
    if rule == decision.reason:
        return text
    wanted = getattr(campaign.audience, rule, None)
    text += f" (the campaign's audience has {rule} = {json.dumps(wanted, default=str)}"
    if rule == "lapsed_days":
        days = segments.days_since_last_order(view.history, context.now)
        text += (", the customer never ordered" if days is None
                 else f", the customer's last order was {days:.1f} days ago")  # fmt: skip
    return text + ")"


_EPHEMERAL = secrets.token_bytes(32)  # previews without RECOCAMP_SIGNING_KEY: never verifiable


# the other command modules register on ``app`` (they import from this module, hence last)
from recocamp.cli import api as cli_api  # noqa: E402,F401
from recocamp.cli import delivery as cli_delivery  # noqa: E402,F401
from recocamp.cli import forecast as cli_forecast  # noqa: E402,F401
from recocamp.cli import measure as cli_measure  # noqa: E402,F401
from recocamp.cli import worker as cli_worker  # noqa: E402,F401
