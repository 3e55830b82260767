"""Build the demo shop: real UCI purchases when available, else a synthetic shop.

Both paths go through the real importer (the synthetic shop is first written as files of
our ``standard`` formats under ``demo_dir``), so the demo exercises what production uses.
Customer records are synthetic either way (see :mod:`recocamp.synthetic`): the UCI file
holds no e-mail address, consent, birthday or time zone. The synthetic shop is generated whole
from its seed, erased customers too: their lines are written to ``demo/purchases.csv`` as
guest lines, as erasure left the file, so a second build names nobody erased.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from recocamp.data.ingest import Importer, ImportReport, ProgressSink, detach
from recocamp.data.sources import csv as sources
from recocamp.data.synthetic import ConsentMix, customer_record, generate_shop
from recocamp.settings import Settings
from recocamp.store import queries, tombstones
from recocamp.store.engine import Engine, upgrade

UCI_ZONE = "Europe/London"  # the UCI shop is in the UK; its InvoiceDates are local times


@dataclass(frozen=True, slots=True)
class DemoReport:
    source: str
    reports: list[ImportReport]


def build_demo(
    engine: Engine,
    settings: Settings,
    *,
    now: datetime,
    source: Path | None = None,
    synthetic: bool = False,
    demo_dir: Path = Path("demo"),
    progress: ProgressSink | None = None,
) -> DemoReport:
    """Create/migrate the database and fill it with a demo shop (idempotent)."""
    upgrade(engine)
    path = source or settings.demo.online_retail_path
    if not synthetic and path.exists():
        importer = Importer(
            engine,
            zone=ZoneInfo(UCI_ZONE),
            now=now,
            progress=progress,
            erasure_key=tombstones.key_of(settings),
            default_locale=settings.shop.default_locale,
        )
        reports = [importer.purchases(path, "online-retail")]
        label = f"UCI Online Retail ({path})"
    else:
        importer = Importer(
            engine,
            zone=settings.shop.zone,
            now=now,
            progress=progress,
            erasure_key=tombstones.key_of(settings),
            default_locale=settings.shop.default_locale,
        )
        reports = _synthetic(importer, settings, demo_dir)
        label = f"synthetic shop (seed {settings.demo.seed})"
        if not synthetic:  # the user may have expected the real data: say where it was sought
            label += f": the UCI file {path} is not there ([demo] online_retail_path)"
    reports.append(_customers(engine, importer, settings, demo_dir))
    return DemoReport(label, reports)


def _synthetic(importer: Importer, settings: Settings, demo_dir: Path) -> list[ImportReport]:
    demo = settings.demo
    shop = generate_shop(
        demo.seed, demo.synthetic_customers, demo.synthetic_items, demo.synthetic_days
    )
    with importer.engine.connect() as connection:  # the shop is generated whole, erased too
        erased = tombstones.erased_ids(
            connection, importer.erasure_key, shop.countries, "the demo", writing=False
        )
    sources.write_items(demo_dir / "items.csv", shop.items)
    sources.write_purchases(demo_dir / "purchases.csv", [detach(p, erased) for p in shop.purchases])
    reports = [importer.items(demo_dir / "items.csv")]
    reports.append(importer.purchases(demo_dir / "purchases.csv", "standard"))
    with importer.engine.begin() as connection:
        erased |= tombstones.erased_ids(
            connection, importer.erasure_key, shop.countries, "the demo"
        )
        countries = {cid: c for cid, c in shop.countries.items() if cid not in erased}
        queries.add_missing_customers(connection, countries, importer.now, importer.default_locale)
    return reports


def _customers(
    engine: Engine, importer: Importer, settings: Settings, demo_dir: Path
) -> ImportReport:
    demo = settings.demo
    mix = ConsentMix(demo.double_opt_in_share, demo.existing_customer_share, demo.objected_share)
    with engine.connect() as connection:
        known = queries.customers_first_seen(connection)
    records = [
        customer_record(cid, country, first, demo.seed, mix) for cid, country, first in known
    ]
    sources.write_customers(demo_dir / "customers.csv", records)
    return importer.customers(demo_dir / "customers.csv")
