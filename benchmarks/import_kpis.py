"""Import the whole UCI Online Retail file and compute the retention KPIs; print the times.

    .venv/bin/python benchmarks/import_kpis.py [--postgres URL] [--file PATH]

Target (issue #2): the whole file in well under a minute on a 2-core machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from recocamp.data.ingest import Importer
from recocamp.measure import kpis
from recocamp.store import queries
from recocamp.store.engine import make_engine, upgrade

UCI = Path(__file__).resolve().parents[2] / "shared/data/online-retail/online_retail.csv.gz"
AS_OF = datetime(2011, 12, 10, tzinfo=ZoneInfo("Europe/London"))


def run(url: str, path: Path) -> None:
    engine = make_engine(url)
    upgrade(engine)
    started = time.perf_counter()
    report = Importer(engine, zone=ZoneInfo("Europe/London"), now=datetime.now(UTC)).purchases(
        path, "online-retail"
    )
    imported_s = time.perf_counter() - started
    started = time.perf_counter()
    with engine.connect() as connection:
        rows = queries.order_totals(connection, AS_OF - timedelta(days=180), AS_OF)
    result = kpis.compute([kpis.OrderTotal(*row) for row in rows], AS_OF, 90)
    kpi_s = time.perf_counter() - started
    started = time.perf_counter()
    again = Importer(engine, zone=ZoneInfo("Europe/London"), now=datetime.now(UTC)).purchases(
        path, "online-retail"
    )
    again_s = time.perf_counter() - started
    engine.dispose()
    backend = url.split(":", 1)[0]
    print(
        f"[{backend}] import: {report.rows_read:,} rows read, {report.imported:,} stored in "
        f"{imported_s:.1f} s ({report.rows_read / imported_s:,.0f} rows/s); target < 60 s: "
        f"{imported_s / 60:.2f} of the budget"
    )
    print(
        f"[{backend}] re-import of the same file: {again_s:.2f} s "
        f"(already imported: {again.already_imported})"
    )
    print(
        f"[{backend}] kpis (90 days to 2011-12-10): {kpi_s * 1000:.0f} ms; orders "
        f"{result.orders}, customers {result.customers}, churn {result.churn_rate}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, default=UCI)
    parser.add_argument("--postgres", help="also run against this (empty) PostgreSQL database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(f"sqlite:///{Path(tmp) / 'bench.db'}", args.file)
    if args.postgres:
        run(args.postgres, args.file)


if __name__ == "__main__":
    main()
