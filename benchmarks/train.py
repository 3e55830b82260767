"""Recommender quality on the UCI split and training speed/memory at scale.

    .venv/bin/python benchmarks/train.py                 # UCI quality + speed, then 1M synthetic
    .venv/bin/python benchmarks/train.py --skip-synthetic
    .venv/bin/python benchmarks/train.py --skip-uci --customers 100000 --items 10000 --lines 2000000
    .venv/bin/python benchmarks/train.py --skip-uci --keep-db /tmp/100k.db [--profile out.prof]
    python benchmarks/train.py --device-compare      # CPU against GPU fit (a CUDA machine)

Quality (issue #3): the protocol of DESIGN.md on the UCI file, cutoff 2011-09-01, 90 days,
k = 10; reference: popularity 0.121/0.114, repeat_frequency 0.333/0.345; the hybrid must
beat the best baseline's recall by >= 10 % and reach recall_new >= 0.12 (discover).

Speed: the training pipeline of `recocamp train` (load from the store, matrix building, fit,
top-N cache for every customer) next to a bare implicit fit of the same model on the same
matrix (target ratio <= 1.5), and the peak memory of the pipeline (target < 8 GB). Every
measured run happens in a fresh child process, so peak RSS belongs to that run alone. The
last line is one JSON object: {"benchmark": "train", "customers", "fit_s", "pipeline_s",
"ratio", "peak_rss_gb"} of the last run (the synthetic one unless skipped). ``--keep-db``
keeps the synthetic store (minutes to write) for the next run; each step's CPU seconds and
digests of the lines, matrices and cache rows are printed too, to compare code changes by.
"""

from __future__ import annotations

import argparse
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from recocamp.recommender.matrix import Lines, TrainingData
from recocamp.settings import RecommenderSettings

UCI = Path(__file__).resolve().parents[2] / "shared/data/online-retail/online_retail.csv.gz"
REFERENCE = {"popularity": (0.121, 0.114), "repeat_frequency": (0.333, 0.345)}


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def child(*args: str) -> dict[str, object]:
    """Run this script with ``args`` in a fresh process; it prints one JSON line."""
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


# --- UCI --------------------------------------------------------------------------------


def uci(workdir: Path, source: Path = UCI) -> dict[str, object]:
    from recocamp.data.ingest import Importer
    from recocamp.recommender.training import compare
    from recocamp.settings import Settings
    from recocamp.store.engine import make_engine, upgrade

    url = f"sqlite:///{workdir / 'uci.db'}"
    engine = make_engine(url)
    upgrade(engine)
    Importer(engine, zone=ZoneInfo("Europe/London"), now=datetime.now(UTC)).purchases(
        source, "online-retail"
    )
    settings = Settings().recommender.model_copy(update={"artifacts_dir": workdir / "models"})
    cutoff = datetime(2011, 9, 1, tzinfo=ZoneInfo("Europe/London"))
    names = ["popularity", "repeat_frequency", "als", "bpr", "item_knn", "hybrid"]
    results = compare(engine, settings, names, cutoff, 90, 10)
    engine.dispose()
    print("UCI Online Retail, cutoff 2011-09-01, horizon 90 days, k = 10")
    print(f"{'model':18}{'recall':>8}{'ndcg':>8}{'hit':>8}{'repeat':>8}{'new':>8}{'fit_s':>8}")
    for name, m in results.items():
        print(
            f"{name:18}{m.recall:8.4f}{m.ndcg:8.4f}{m.hit_rate:8.4f}{m.recall_repeat:8.4f}"
            f"{m.recall_new:8.4f}{m.fit_s:8.2f}"
        )
    for name, (recall, ndcg) in REFERENCE.items():
        got = results[name]
        ok = abs(got.recall - recall) <= 0.01 and abs(got.ndcg - ndcg) <= 0.01
        print(
            f"  {name}: reference {recall}/{ndcg}, ours {got.recall:.4f}/{got.ndcg:.4f}: "
            f"{'within' if ok else 'OUTSIDE'} ±0.01"
        )
    best = max(("popularity", "repeat_frequency"), key=lambda n: results[n].recall)
    lift = results["hybrid"].recall / results[best].recall - 1
    print(f"  hybrid recall vs best baseline ({best}): {lift:+.1%} (target >= +10 %)")
    print(f"  hybrid recall_new (discover): {results['hybrid'].recall_new:.4f} (target >= 0.12)")
    timing = child("--pipeline", url, "--model", "hybrid", "--as-of", "2011-12-10")
    print_timing("UCI", timing)
    return timing


# --- synthetic power-law shop -----------------------------------------------------------


AS_OF = datetime(2025, 1, 1, tzinfo=UTC)  # the synthetic pipeline's data cutoff


def _shares(rng: np.random.Generator, customers: int, items: int) -> tuple[np.ndarray, np.ndarray]:
    """Each customer's share of the lines (Pareto, a few heavy buyers) and each item's (Zipf
    0.9): the power-law shop of every synthetic benchmark."""
    activity = rng.pareto(1.2, customers) + 1
    popularity = 1.0 / np.arange(1, items + 1) ** 0.9
    return activity / activity.sum(), popularity / popularity.sum()


def synthetic_db(
    path: Path, customers: int, items: int, lines: int, seed: int = 7, history_days: int = 365
) -> None:
    """A power-law shop written straight into a migrated SQLite store (setup, not timed).

    ``history_days`` 365 (the default, the shop of earlier rounds): every line in the year
    before :data:`AS_OF`, so every customer is active within the cache window. Longer: each
    customer buys from a joining day (uniform over the history) for a lifetime (exponential,
    mean a year), so customers lapse as in a real shop with years of history."""
    from recocamp.store.engine import make_engine, upgrade

    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    rng = np.random.default_rng(seed)
    activity, popularity = _shares(rng, customers, items)
    start = (AS_OF - timedelta(days=history_days + 1)).timestamp()
    join = span = None
    if history_days > 365:
        join = rng.uniform(0, history_days - 30, customers)
        span = np.minimum(rng.exponential(365, customers), history_days - join)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA synchronous = OFF")  # setup only: a crash just loses the file
    connection.execute("PRAGMA cache_size = -2000000")  # 2 GB: random index inserts stay in memory
    sql = (
        "INSERT INTO purchases (order_id, line_no, customer_id, item_id, quantity, unit_price,"
        " ordered_at, is_return) VALUES (?, ?, ?, ?, 1, 9.5, ?, 0)"
    )
    chunk, order = 1_000_000, 0
    for offset in range(0, lines, chunk):
        size = min(chunk, lines - offset)
        who = rng.choice(customers, size, p=activity)
        what = rng.choice(items, size, p=popularity)
        if join is None or span is None:
            when = start + rng.uniform(0, history_days * 86400, size)
        else:
            when = start + (join[who] + rng.uniform(0, 1, size) * span[who]) * 86400
        orders = order + np.arange(size) // 4  # four lines an order
        order = int(orders[-1]) + 1
        seconds = np.floor(when).astype(np.int64).astype("datetime64[s]")
        stamps = np.char.add(np.char.replace(seconds.astype(str), "T", " "), ".000000")
        connection.executemany(
            sql,
            zip(
                np.char.add("O", orders.astype(str)).tolist(),
                (np.arange(size) % 4 + 1).tolist(),
                np.char.add("C", who.astype(str)).tolist(),
                np.char.add("I", what.astype(str)).tolist(),
                stamps.tolist(),
                strict=True,
            ),
        )
        connection.commit()
    connection.close()


def pipeline(url: str, name: str, as_of: str, profile: Path | None = None) -> dict[str, object]:
    """The steps of `recocamp train` after the gate: load, matrix, fit, top-N cache (for the
    customers active within ``cache_active_days`` of the data cutoff, as training does:
    scored and written before the switch, ``registry.stage``), the switch (the transaction
    that makes the model live: how long every other writer of a SQLite store waits) and the
    drop of the retired model's lists.
    Each lap's wall and CPU seconds; ``digests``: of the lines, the matrices and the cache
    rows (taken after the clock stops), so a change to the pipeline can show it gives the
    same answers."""
    import cProfile

    from recocamp.recommender import matrix
    from recocamp.recommender import models as model
    from recocamp.recommender.training import cached_rows, load_lines, top_lists
    from recocamp.settings import Settings
    from recocamp.store import registry
    from recocamp.store.engine import make_engine

    settings = Settings().recommender
    engine = make_engine(url)
    forget_cache(url)
    end = datetime.fromisoformat(as_of).replace(tzinfo=UTC).timestamp()
    clock = Laps()
    profiler = cProfile.Profile() if profile else None
    if profiler is not None:
        profiler.enable()
    lines = load_lines(engine)
    clock.lap("load")
    data = matrix.build(lines, end, popularity_days=settings.recent_popularity_days)
    del lines
    clock.lap("matrix")
    fitted = model.make(name, settings)
    fitted.fit(data)
    clock.lap("fit")
    # as training does: the lists scored and written before the switch (registry.stage)
    registry.stage(
        engine, "bench", top_lists(fitted, data, settings.top_n, cached_rows(data, settings))
    )
    clock.lap("cache")
    with engine.begin() as connection:
        registry.register(
            connection,
            version="bench",
            name=name,
            trained_at=datetime.now(UTC),
            data_cutoff=datetime.now(UTC),
            fingerprint="-",
            params={},
            metrics={},
            path="-",
            popular=[],
            status="candidate",
        )
        rows = registry.make_live(connection, "bench", datetime.now(UTC))
    clock.lap("switch")  # the store's write lock is held this long (SQLite: every writer waits)
    registry.drop_stale(engine)  # the last run's rows, as a nightly training drops the last model's
    clock.lap("drop")
    if profiler is not None and profile is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    peak = peak_gb()
    engine.dispose()
    bare = bare_fit(data, name, settings)
    return {
        "laps": clock.wall,
        "cpu": clock.cpu,
        "total": sum(clock.wall.values()),
        "bare": bare,
        "peak_gb": peak,
        "cache_rows": rows,
        "shape": list(data.shape),
        "nnz": int(data.confidence.nnz),
        "digests": digests(url, data),
    }


class Laps:
    """Wall and CPU seconds of consecutive steps."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.last = (time.perf_counter(), time.process_time())

    def lap(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.wall[name] = round(now[0] - self.last[0], 3)
        self.cpu[name] = round(now[1] - self.last[1], 3)
        self.last = (time.perf_counter(), time.process_time())


def forget_cache(url: str) -> None:
    """A kept store as a nightly training finds it (setup, not timed): the last run's model
    retired as ``bench-before`` with its cached lists, which the pipeline drops after its
    switch (none on a fresh store), and no ``bench`` model."""
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    connection.execute("DELETE FROM recommendations WHERE model_version != 'bench'")
    connection.execute("DELETE FROM models WHERE version = 'bench-before'")
    connection.execute("UPDATE recommendations SET model_version = 'bench-before'")
    connection.execute(
        "UPDATE models SET version = 'bench-before', status = 'retired' WHERE version = 'bench'"
    )
    connection.commit()
    connection.close()


def digests(url: str, data: TrainingData) -> dict[str, str]:
    """Short SHA-256 digests of the lines, the matrices and the cache rows."""
    import hashlib

    from recocamp.recommender.training import fingerprint

    assert data.lines is not None
    matrices = hashlib.sha256()
    for array in (data.customers, data.items, data.popularity, data.age_days):
        matrices.update(np.ascontiguousarray(array).tobytes())
    for sparse in (data.orders, data.confidence, data.last_days):
        for part in (sparse.indptr, sparse.indices, sparse.data):
            matrices.update(np.ascontiguousarray(part).tobytes())
    cache = hashlib.sha256()
    connection = sqlite3.connect(url.removeprefix("sqlite:///"))
    query = "SELECT customer_id, items FROM recommendations ORDER BY customer_id"
    for customer_id, items in connection.execute(query):
        cache.update(f"{customer_id}\t{items}\n".encode())
    connection.close()
    return {
        "lines": fingerprint(data.lines, {})[:16],
        "matrices": matrices.hexdigest()[:16],
        "cache": cache.hexdigest()[:16],
    }


def bare_fit(data: TrainingData, name: str, settings: RecommenderSettings) -> float:
    """implicit on the same matrix, nothing else (hybrid: its ALS and item-kNN fits)."""
    from implicit.als import AlternatingLeastSquares
    from implicit.nearest_neighbours import BM25Recommender
    from threadpoolctl import threadpool_limits

    started = time.perf_counter()
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(
            factors=settings.factors,
            regularization=settings.regularization,
            iterations=settings.iterations,
            random_state=settings.random_state,
        )
        als.fit(data.confidence, show_progress=False)
        if name == "hybrid":
            BM25Recommender(K=settings.knn_neighbours).fit(data.confidence, show_progress=False)
    return time.perf_counter() - started


def synthetic_lines(
    customers: int, items: int, lines: int, seed: int = 7, history_days: int = 365
) -> Lines:
    """The synthetic shop of :func:`synthetic_db` (one line per draw, four lines an order)
    as integer-coded :class:`Lines`, no store: the CPU/GPU comparison needs the matrix, and
    writing 20M lines into SQLite takes longer than a device check may run."""
    rng = np.random.default_rng(seed)
    activity, popularity = _shares(rng, customers, items)
    start = (AS_OF - timedelta(days=history_days + 1)).timestamp()
    who = rng.choice(customers, lines, p=activity)
    what = rng.choice(items, lines, p=popularity)
    when = np.floor(start + rng.uniform(0, history_days * 86400, lines))
    width = len(str(max(customers, items)))  # zero-padded ids: code order is id order
    return Lines(
        who.astype(np.int64),
        what.astype(np.int64),
        np.arange(lines, dtype=np.int64) // 4,
        when,
        np.char.add("C", np.char.zfill(np.arange(customers).astype(str), width)),
        np.char.add("I", np.char.zfill(np.arange(items).astype(str), width)),
    )


def progress(figures: dict[str, object]) -> None:
    """The figures so far on stderr: a device check cut off by its time limit still tells."""
    print(json.dumps(figures), file=sys.stderr, flush=True)


def device_compare(
    customers: int, items: int, lines: int, cpu_fit: bool = True
) -> dict[str, object]:
    """implicit's ALS on the CPU (every core, as `train` runs it) against its CUDA build on
    the same matrix (the GPU twice: the first fit pays the CUDA start); then the mixed top-N
    of every customer from the fitted factors (the cache step), each on the device its model
    was fitted on; and how often the GPU's top-N of the first 20,000 customers is the CPU
    kernel's on the same factors (same items, same order)."""
    import os

    from recocamp.recommender import matrix
    from recocamp.recommender import models as model
    from recocamp.recommender.training import top_lists
    from recocamp.settings import Settings

    started = time.perf_counter()
    data = matrix.build(synthetic_lines(customers, items, lines), AS_OF.timestamp())
    result: dict[str, object] = {
        "shape": list(data.shape),
        "nnz": int(data.confidence.nnz),
        "setup_s": round(time.perf_counter() - started, 1),
        "cores": os.cpu_count(),
        "gpu": model.gpu_available("auto"),
    }
    progress(result)
    base = Settings().recommender
    runs = [("true", 1), ("true", 2)] if result["gpu"] else []
    runs += [("false", 1)] if cpu_fit or not result["gpu"] else []
    for use_gpu, attempt in runs:  # the GPU first: its figures are the point on a CUDA machine
        fitted = model.make("als", base.model_copy(update={"use_gpu": use_gpu}))
        started = time.perf_counter()
        fitted.fit(data)
        where = "gpu" if use_gpu == "true" else "cpu"
        result[f"fit_{where}_{attempt}_s"] = round(time.perf_counter() - started, 2)
        progress(result)
        if attempt == 1:
            started = time.perf_counter()
            result["cache_rows"] = sum(1 for _ in top_lists(fitted, data, base.top_n))
            result[f"cache_{where}_s"] = round(time.perf_counter() - started, 2)
            if where == "gpu":
                result["cache_gpu_as_cpu"] = same_top_lists(fitted, data, base.top_n)
            progress(result)
    result["peak_rss_gb"] = round(peak_gb(), 2)
    return result


def same_top_lists(fitted: object, data: TrainingData, n: int, rows: int = 20_000) -> float:
    """The share of the first ``rows`` customers whose top-``n`` from the GPU kernel is the
    CPU kernel's on the same factors (near-equal scores may swap: float32 sums in another
    order)."""
    from recocamp.recommender import models as model
    from recocamp.recommender.training import top_lists

    assert isinstance(fitted, model.ALS)
    on_cpu = model.ALS(**{**fitted.params(), "use_gpu": False})
    on_cpu.user_factors, on_cpu.item_factors = fitted.user_factors, fitted.item_factors
    chosen = np.arange(min(rows, data.shape[0]))
    pairs = zip(top_lists(fitted, data, n, chosen), top_lists(on_cpu, data, n, chosen), strict=True)
    same = sum([a for a, _ in one[1]] == [b for b, _ in other[1]] for one, other in pairs)
    return round(same / len(chosen), 4)


def summary(result: dict[str, object]) -> str:
    """The benchmark's last line: one JSON object to compare runs by."""
    total, bare = float(result["total"]), float(result["bare"])  # type: ignore[arg-type]
    shape = result["shape"]
    assert isinstance(shape, list)
    return json.dumps(
        {
            "benchmark": "train",
            "customers": shape[0],
            "fit_s": round(bare, 2),
            "pipeline_s": round(total, 2),
            "ratio": round(total / bare, 3),
            "peak_rss_gb": round(float(result["peak_gb"]), 3),  # type: ignore[arg-type]
        }
    )


def print_timing(label: str, result: dict[str, object]) -> None:
    laps = result["laps"]
    assert isinstance(laps, dict)
    total, bare = float(result["total"]), float(result["bare"])  # type: ignore[arg-type]
    cpu = result.get("cpu", {})
    assert isinstance(cpu, dict)
    steps = ", ".join(f"{k} {v:.1f} s (cpu {cpu.get(k, 0):.1f})" for k, v in laps.items())
    peak = float(result["peak_gb"])  # type: ignore[arg-type]
    print(f"{label}: matrix {result['shape']} nnz {result['nnz']:,}")
    print(
        f"  pipeline {total:.1f} s ({steps}); bare implicit fit {bare:.1f} s; "
        f"ratio {total / bare:.2f} (target <= 1.5)"
    )
    print(
        f"  peak memory {peak:.2f} GB (target < 8); cache rows {result['cache_rows']:,} "
        f"of {result['shape'][0]:,} customers (active within the cache window)"  # type: ignore[index]
    )
    print(f"  digests {result.get('digests')}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--skip-uci", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--uci", type=Path, default=UCI, help="the UCI file (another copy)")
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--lines", type=int, default=20_000_000)
    parser.add_argument("--history-days", type=int, default=365)
    parser.add_argument("--model", default="als")
    parser.add_argument(
        "--device-compare", action="store_true", help="ALS fit on the CPU and on the GPU"
    )
    parser.add_argument(
        "--skip-cpu-fit", action="store_true", help="with --device-compare: the GPU alone"
    )
    parser.add_argument(
        "--keep-db",
        type=Path,
        metavar="PATH",
        help="the synthetic SQLite store's file: reused when it exists (its shape is not "
        "checked: delete it after changing --customers/--items/--lines), else written there "
        "and kept, so repeated runs skip the setup",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="PATH",
        help="write a cProfile of the measured pipeline (load, matrix, fit, cache) there",
    )
    parser.add_argument("--pipeline", help=argparse.SUPPRESS)
    parser.add_argument("--as-of", default="2025-01-01", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device_compare:
        figures = device_compare(args.customers, args.items, args.lines, not args.skip_cpu_fit)
        print(json.dumps({"benchmark": "train_device", **figures}))
        return
    if args.pipeline:
        print(json.dumps(pipeline(args.pipeline, args.model, args.as_of, args.profile)))
        return
    profiled = ["--profile", str(args.profile.resolve())] if args.profile else []
    last: dict[str, object] | None = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if not args.skip_uci and args.uci.exists():
            last = uci(work, args.uci)
        if not args.skip_synthetic:
            db = args.keep_db.resolve() if args.keep_db else work / "synthetic.db"
            shop = (
                f"{args.customers:,} customers x {args.items:,} items x {args.lines:,} lines "
                f"over {args.history_days} days"
            )
            if db.exists():
                print(f"synthetic shop: reusing {db} (written for its own arguments)")
            else:
                started = time.perf_counter()
                synthetic_db(
                    db, args.customers, args.items, args.lines, history_days=args.history_days
                )
                setup_s = time.perf_counter() - started
                print(f"synthetic shop: {shop} written in {setup_s:.0f} s (setup)")
            last = child("--pipeline", f"sqlite:///{db}", "--model", args.model, *profiled)
            print_timing(f"synthetic ({args.model})", last)
    if last is not None:
        print(summary(last))


if __name__ == "__main__":
    main()
