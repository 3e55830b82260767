"""Import a purchases file into a fresh SQLite store and measure speed and peak memory.

    .venv/bin/python benchmarks/import_kpis.py                  # the UCI Online Retail file
    .venv/bin/python benchmarks/import_kpis.py --lines 300000   # a generated standard file
    .venv/bin/python benchmarks/import_kpis.py --lines 20000000 # the issue's 20M-line run
    .venv/bin/python benchmarks/import_kpis.py --file PATH [--format standard] [--postgres URL]

The import runs in a child process, so its peak resident memory (``getrusage`` of the
child) is the importer's alone; the generated file is written streaming, line by line, to a
temporary folder. Targets (issue #19): peak memory under 1 GB whatever the size, at least
50,000 lines/s on SQLite. The last line printed is one JSON object:
``{"benchmark":"import","lines":…,"lines_per_s":…,"peak_rss_gb":…,"cpu_s":…}`` (the
import's own CPU seconds: on a shared machine the wall clock also counts the others).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import queue
import random
import resource
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
ZONE = ZoneInfo("Europe/London")


def generate(path: Path, lines: int, seed: int = 19) -> None:
    """A standard purchases file of ``lines`` lines (orders of 1–8 lines, 1 in 40 a return),
    written as it is generated: nothing of it is held."""
    rng = random.Random(seed)
    customers = max(1000, lines // 20)
    start = datetime(2020, 1, 1, tzinfo=UTC)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("order_id,customer_id,item_id,quantity,unit_price,ordered_at,line_no\n")
        written, order = 0, 0
        while written < lines:
            order += 1
            at = (start + timedelta(seconds=order * 7)).isoformat()
            customer = f"c{rng.randrange(customers)}" if rng.random() > 0.05 else ""
            sign = -1 if rng.random() < 0.025 else 1
            for line_no in range(1, min(rng.randint(1, 8), lines - written) + 1):
                item = rng.randrange(50_000)
                price = (item % 997) / 10 + 0.5
                out.write(
                    f"o{order},{customer},i{item},{sign * rng.randint(1, 5)},"
                    f"{price:.2f},{at},{line_no}\n"
                )
                written += 1


def _import(url: str, path: Path, fmt: str, out: multiprocessing.Queue[dict[str, float]]) -> None:
    """The child: import once, then report its time and its own peak memory."""
    engine = make_engine(url)
    upgrade(engine)
    started, cpu = time.perf_counter(), time.process_time()
    report = Importer(engine, zone=ZONE, now=datetime.now(UTC)).purchases(path, fmt)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    engine.dispose()
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out.put(
        {
            "lines": report.rows_read,
            "stored": report.imported,
            "seconds": seconds,
            "cpu_seconds": cpu,
            "peak_rss_gb": peak_kb / 1024 / 1024,
        }
    )


def measure(url: str, path: Path, fmt: str) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")  # a fresh process: its own peak
    out: multiprocessing.Queue[dict[str, float]] = context.Queue()
    child = context.Process(target=_import, args=(url, path, fmt, out))
    child.start()
    while True:  # a child that dies (out of memory, a bug) never puts: do not wait for ever
        try:
            result = out.get(timeout=1.0)
        except queue.Empty:
            if not child.is_alive():
                raise SystemExit(
                    f"the import process ended with exit code {child.exitcode}"
                ) from None
            continue
        child.join()
        return result


def kpis_after(url: str) -> str:
    engine = make_engine(url)
    with engine.connect() as connection:
        rows = queries.order_totals(connection, AS_OF - timedelta(days=180), AS_OF)
    engine.dispose()
    result = kpis.compute([kpis.OrderTotal(*row) for row in rows], AS_OF, 90)
    return f"orders {result.orders}, customers {result.customers}, churn {result.churn_rate}"


def run(url: str, path: Path, fmt: str) -> dict[str, float]:
    result = measure(url, path, fmt)
    backend = url.split(":", 1)[0]
    print(
        f"[{backend}] import: {result['lines']:,.0f} lines read, {result['stored']:,.0f} stored "
        f"in {result['seconds']:.1f} s ({result['lines'] / result['seconds']:,.0f} lines/s), "
        f"peak RSS {result['peak_rss_gb']:.2f} GB"
    )
    if fmt == "online-retail":
        print(f"[{backend}] kpis (90 days to 2011-12-10): {kpis_after(url)}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--file", type=Path, help="import this file (default: the UCI file)")
    parser.add_argument("--format", default=None, help="standard or online-retail")
    parser.add_argument("--lines", type=int, help="generate a standard file of this many lines")
    parser.add_argument("--postgres", help="also run against this (empty) PostgreSQL database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.lines:
            path, fmt = Path(tmp) / "purchases.csv", "standard"
            started = time.perf_counter()
            generate(path, args.lines)
            print(f"generated {args.lines:,} lines in {time.perf_counter() - started:.1f} s")
        else:
            path = args.file or UCI
            fmt = args.format or ("online-retail" if path == UCI else "standard")
        result = run(f"sqlite:///{Path(tmp) / 'bench.db'}", path, fmt)
        if args.postgres:
            run(args.postgres, path, fmt)
    line = {
        "benchmark": "import",
        "lines": int(result["lines"]),
        "lines_per_s": round(result["lines"] / result["seconds"]),
        "peak_rss_gb": round(result["peak_rss_gb"], 3),
        "cpu_s": round(result["cpu_seconds"], 2),  # steadier than the wall clock on a busy machine
    }
    print(json.dumps(line))


if __name__ == "__main__":
    main()
