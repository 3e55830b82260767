"""Peak memory of the erasure's file work on a large kept drop-folder file.

    .venv/bin/python benchmarks/erasure_files.py             # a 200 MB purchases file
    .venv/bin/python benchmarks/erasure_files.py --mb 50 --gzip

A generated standard purchases file (``--mb`` megabytes, ``.csv.gz`` with ``--gzip``) lies
in ``processed_dir``, where the drop folder keeps imported files; one customer of it, ``c1``
(a row in every 50,000), is erased in a fresh SQLite store. Each step runs in a child
process of its own, on a fresh copy of the file: ``holding`` (the GDPR export's look in
the files), ``drop_erased`` (what the drop folder runs after each import) and ``scrub``
(the erasure). Its peak resident memory (``getrusage``) is printed, and how far the step raised it
above the child's peak before it, with its CPU seconds (the machine may be shared: not the
wall clock). One JSON line per step,
``{"step":…,"file_mb":…,"peak_rss_mb":…,"grew_mb":…,"cpu_s":…,"changed":…}``, and last one
with them all: ``{"benchmark": "erasure_files", "gzip", "file_mb", "<step>_peak_rss_mb", …}``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from pydantic import SecretStr

NOW = datetime(2024, 1, 1, tzinfo=UTC)
ERASED = "c1"
STEPS = ("holding", "drop_erased", "scrub")


def settings_for(work: Path) -> object:
    from recocamp.settings import Settings

    folders = {"drop_dir": work / "incoming", "processed_dir": work / "processed"}
    return Settings(signing_key=SecretStr("k" * 32), ingest=folders)


def store(work: Path) -> None:
    """A SQLite store in which ``c1`` was erased (before the file is written)."""
    from zoneinfo import ZoneInfo

    from recocamp import privacy
    from recocamp.data.ingest import Importer
    from recocamp.store import tombstones
    from recocamp.store.engine import make_engine, upgrade

    settings = settings_for(work)
    engine = make_engine(f"sqlite:///{work / 'store.db'}")
    upgrade(engine)
    people = work / "people.csv"
    people.write_text("id,email\nc1,one@example.test\nc2,two@example.test\n")
    key = tombstones.key_of(settings)  # type: ignore[arg-type]
    Importer(engine, zone=ZoneInfo("UTC"), now=NOW, erasure_key=key).customers(people)
    assert privacy.erase(engine, settings, ERASED, NOW, via="benchmark") is not None  # type: ignore[arg-type]
    engine.dispose()


def generate(path: Path, megabytes: int) -> None:
    """Orders of 50,000 customers; ``c1``'s in every 50,000th line. Written as generated."""
    size = megabytes * 1_000_000
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="") as out:
        handle: IO[str] = out
        handle.write("order_id,customer_id,item_id,quantity,unit_price,ordered_at\n")
        written, n = 0, 0
        while written < size:
            lines = "".join(
                f"o{k},c{k % 50_000},i{k % 997},1,2.50,2020-01-01T10:00:00Z\n"
                for k in range(n, n + 10_000)
            )
            handle.write(lines)
            written += len(lines)
            n += 10_000


def step(name: str, work: Path, path: Path) -> None:
    """One step, in this (child) process: prints its JSON line."""
    from recocamp.data import erasure_files
    from recocamp.store import tombstones
    from recocamp.store.engine import make_engine

    settings = settings_for(work)
    engine = make_engine(f"sqlite:///{work / 'store.db'}")
    size = path.stat().st_size
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = time.process_time()
    if name == "holding":
        found, _ = erasure_files.holding([path.parent], [ERASED], ["one@example.test"])
        changed = sum(map(len, found.values()))
    elif name == "drop_erased":
        key = tombstones.key_of(settings)  # type: ignore[arg-type]
        changed = erasure_files.drop_erased(engine, key, [path])
    else:
        changed = len(erasure_files.scrub([path.parent], [ERASED], ["one@example.test"]).rewritten)
    cpu = time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = {
        "step": name,
        "file_mb": round(size / 1e6, 1),
        "peak_rss_mb": round(peak / 1024, 1),
        "grew_mb": round((peak - before) / 1024, 1),
        "cpu_s": round(cpu, 1),
        "changed": changed,
    }
    print(json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--step", choices=STEPS)
    parser.add_argument("--work", type=Path)
    parser.add_argument("--file", type=Path)
    args = parser.parse_args()
    if args.step:
        step(args.step, args.work, args.file)
        return
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        store(work)
        original = work / ("purchases-1.csv.gz" if args.gzip else "purchases-1.csv")
        generate(original, args.mb)
        kept = work / "processed" / original.name
        kept.parent.mkdir()
        summary: dict[str, object] = {"benchmark": "erasure_files", "gzip": args.gzip}
        for name in STEPS:
            shutil.copy2(original, kept)
            command = [sys.executable, __file__, "--step", name, "--work", str(work)]
            done = subprocess.run(
                [*command, "--file", str(kept)], check=True, capture_output=True, text=True
            )
            print(done.stdout, end="", flush=True)
            figures = json.loads(done.stdout.strip().splitlines()[-1])
            summary["file_mb"] = figures["file_mb"]
            for key in ("peak_rss_mb", "grew_mb", "cpu_s"):
                summary[f"{name}_{key}"] = figures[key]
        print(json.dumps(summary))  # the last line: every step's figures, to compare runs by


if __name__ == "__main__":
    main()
