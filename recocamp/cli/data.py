"""Data commands: ``recocamp db …``, ``recocamp import …`` and ``recocamp demo-data``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.table import Table

from recocamp import privacy
from recocamp.cli.common import (
    RichProgress,
    app,
    clock,
    console,
    current_settings,
    engine_for,
    ensure_folder,
    errors_to_exit,
    progress_bars,
    show,
    time_zone,
)
from recocamp.data.demo import build_demo
from recocamp.data.ingest import Importer, ImportReport
from recocamp.settings import Settings
from recocamp.store import tombstones
from recocamp.store.engine import Engine, current_revision, head_revision, missing_file
from recocamp.store.engine import upgrade as upgrade_schema

db_app = typer.Typer(help="Create and migrate the database.", no_args_is_help=True)
import_app = typer.Typer(
    help="Import purchases, customers and items from CSV files.", no_args_is_help=True
)
app.add_typer(db_app, name="db")
app.add_typer(import_app, name="import")


class PurchaseFormat(StrEnum):
    standard = "standard"
    online_retail = "online-retail"


ZoneOption = Annotated[
    str | None,
    typer.Option(
        help="IANA time zone of timestamps without an offset (default: shop's).",
        callback=time_zone,
    ),
]


# --- db -------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create the database or migrate it to the newest schema."""
    with errors_to_exit():
        settings = current_settings()
        revision = upgrade_schema(engine_for(settings, migrated=False))
        console.print(f"database at schema revision {revision}")


@db_app.command("current")
def db_current() -> None:
    """Show the database's schema revision and the newest one."""
    with errors_to_exit():
        settings = current_settings()
        missing = missing_file(settings.database_url)
        if missing is not None:  # connecting would create it
            console.print(
                f"database: none (no file {missing}; `recocamp db upgrade` creates it), "
                f"newest: {head_revision()}"
            )
            return
        engine = engine_for(settings, migrated=False)
        console.print(f"database: {current_revision(engine) or 'none'}, newest: {head_revision()}")


# --- import ---------------------------------------------------------------------------


def _importer(settings: Settings, progress: RichProgress, zone: str | None) -> Importer:
    return Importer(
        engine_for(settings),
        zone=ZoneInfo(zone) if zone else settings.shop.zone,
        now=clock.now(),
        progress=progress,
        max_listed=settings.ingest.max_errors_listed,
        max_gzip_ratio=settings.ingest.max_gzip_ratio,
        erasure_key=tombstones.key_of(settings),
        default_locale=settings.shop.default_locale,
    )


def print_import_report(report: ImportReport) -> None:
    """One import's rows: read, imported, already stored, skipped by reason."""
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
    show(table)


@import_app.command("purchases")
def import_purchases(
    file: Annotated[Path, typer.Argument(help="CSV file, optionally .gz")],
    format: Annotated[PurchaseFormat, typer.Option("--format")] = PurchaseFormat.standard,
    time_zone: ZoneOption = None,
) -> None:
    """Import order lines (all-or-nothing; importing the same file again changes nothing)."""
    with errors_to_exit(), progress_bars() as progress:
        report = _importer(current_settings(), progress, time_zone).purchases(file, format.value)
    print_import_report(report)


@import_app.command("customers")
def import_customers(file: Path, time_zone: ZoneOption = None) -> None:
    """Import or update customer profiles and consent records."""
    with errors_to_exit(), progress_bars() as progress:
        settings = current_settings()
        importer = _importer(settings, progress, time_zone)
        report = importer.customers(file)
    print_import_report(report)
    if not report.already_imported:
        unprofile(importer.engine, settings)


def unprofile(engine: Engine, settings: Settings) -> None:
    """Every customer who objected to profiling out of every saved model (an import may have
    recorded objections); exit 1 when a model could not be cleaned, as an erasure does."""
    scrub = privacy.unprofile(engine, settings)
    if scrub.models:
        console.print(f"objections to profiling: removed from {scrub.models:,} saved model(s)")
    for path in scrub.models_left:
        console.print(f"NOT cleaned of the objecting customers (model artifacts missing): {path}")
    if scrub.models_left:
        raise typer.Exit(1)  # the objection is not carried out: a script must not take it as done


@import_app.command("items")
def import_items(file: Path) -> None:
    """Import or update the items catalogue."""
    with errors_to_exit(), progress_bars() as progress:
        report = _importer(current_settings(), progress, None).items(file)
    print_import_report(report)


# --- demo data ------------------------------------------------------------------------


@app.command("demo-data")
def demo_data(
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="UCI online_retail.csv.gz (must exist: only the settings' default, when "
            "absent, falls back to the synthetic shop).",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    synthetic: Annotated[bool, typer.Option(help="Use the synthetic generator.")] = False,
    demo_dir: Annotated[Path, typer.Option(help="Where generated files go.")] = Path("demo"),
) -> None:
    """Build the demo shop (creates/migrates the database first)."""
    ensure_folder(demo_dir, "--demo-dir")
    with errors_to_exit():
        settings = current_settings()
        build_demo_shop(engine_for(settings, migrated=False), settings, source, synthetic, demo_dir)


def build_demo_shop(
    engine: Engine, settings: Settings, source: Path | None, synthetic: bool, demo_dir: Path
) -> None:
    """Fill the database with the demo shop (``demo-data``, and ``demo`` / ``worker --demo``
    on an empty database) and show what was imported."""
    with progress_bars() as progress:
        report = build_demo(
            engine,
            settings,
            now=clock.now(),
            source=source,
            synthetic=synthetic,
            demo_dir=demo_dir,
            progress=progress,
        )
    console.print(f"demo shop from {report.source}", soft_wrap=True, highlight=False)
    for each in report.reports:
        print_import_report(each)
