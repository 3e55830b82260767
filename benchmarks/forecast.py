"""Purchase forecasts: quality on the UCI file against the independent reference, and the speed
of forecasting a million customers.

    .venv/bin/python benchmarks/forecast.py                      # UCI quality, then 1M customers
    .venv/bin/python benchmarks/forecast.py --skip-uci --customers 100000

Quality (issue #17): the whole UCI file through the real importer and the store's query, shop
zone Europe/London, cutoffs 2011-09-01 and 2011-06-01, horizon 90 days. Reference at
2011-09-01 (shared/data/README.md): BG/NBD MAE 0.894, naive 0.863, AUC 0.730 / 0.722, total
3,270 (BG/NBD) against 4,199 actual. Target: the live forecaster's MAE no worse than the better
reference and its AUC no worse than BG/NBD's.

Speed: a synthetic shop of N customers (Poisson-gamma purchase rates, geometric dropout, two
years) from the purchase-line arrays to every customer's forecast, the choice of the live
forecaster on the time split included. Target: 1M customers in under 60 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from recocamp import forecast as f
from recocamp.data.ingest import Importer
from recocamp.store import forecasts as forecast_store
from recocamp.store.engine import make_engine, upgrade

UCI = Path(__file__).resolve().parents[2] / "shared/data/online-retail/online_retail.csv.gz"
LONDON = ZoneInfo("Europe/London")
CUTOFFS = ("2011-09-01", "2011-06-01")


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def uci_quality() -> dict[str, object]:
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{folder}/uci.db")
        upgrade(engine)
        Importer(engine, zone=LONDON, now=datetime(2012, 1, 1, tzinfo=UTC)).purchases(
            UCI, "online-retail"
        )
        with engine.connect() as connection:
            ids, seconds, revenue = forecast_store.purchase_lines(
                connection, datetime(2012, 1, 1, tzinfo=UTC)
            )
        engine.dispose()
    purchases = f.PurchaseDays.from_lines(ids, f.local_days(seconds, LONDON), revenue)
    figures: dict[str, object] = {}
    for cutoff in CUTOFFS:
        day = f.day_number(datetime.strptime(cutoff, "%Y-%m-%d").date())
        evaluation = f.evaluate(purchases, day, 90)
        live, _ = f.live_model(purchases, day, 90)
        first = next(iter(evaluation.qualities.values()))
        print(
            f"cutoff {cutoff}: {first.customers:,} customers, {first.actual_total:,.0f} "
            f"purchase days in 90 days; live forecaster (chosen before it): {live}"
        )
        for name, q in evaluation.qualities.items():
            print(
                f"  {name:7s} MAE {q.mae:.3f}  total {q.predicted_total:7,.0f}  "
                f"AUC {q.auc or 0:.3f}  Spearman {q.spearman or 0:.3f}"
            )
            figures[f"{cutoff}_{name}_mae"] = round(q.mae, 4)
            figures[f"{cutoff}_{name}_auc"] = round(q.auc or 0.0, 4)
            figures[f"{cutoff}_{name}_total"] = round(q.predicted_total, 1)
        figures[f"{cutoff}_actual_total"] = first.actual_total
        figures[f"{cutoff}_live"] = live
    return figures


def synthetic(customers: int, seed: int = 17) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Purchase lines of a shop over two years: each customer a gamma-distributed rate, a
    geometric number of purchases before dropping out, one to three lines a purchase day."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, 700, customers)
    rate = rng.gamma(0.8, 1 / 40, customers)  # purchases a day
    count = 1 + rng.geometric(0.25, customers)
    owner = np.repeat(np.arange(customers), count)
    gaps = rng.exponential(1.0, len(owner)) / rate[owner]
    first = np.r_[0, np.cumsum(count)[:-1]]
    steps = np.cumsum(gaps)
    steps -= np.repeat(steps[first], count)
    day = start[owner] + steps.astype(np.int64)
    keep = day < 730
    owner, day = owner[keep], day[keep]
    lines = rng.integers(1, 4, len(owner))
    ids = np.char.add("c", np.repeat(owner, lines).astype("U7"))
    seconds = (np.repeat(day, lines) + 14610) * 86400.0 + 43200.0  # noon UTC, from 2010
    revenue = rng.gamma(2.0, 15.0, len(ids))
    return ids, seconds, revenue


def speed(customers: int) -> dict[str, object]:
    ids, seconds, revenue = synthetic(customers)
    print(f"synthetic shop: {customers:,} customers, {len(ids):,} purchase lines")
    zone = ZoneInfo("Europe/Berlin")
    began = time.perf_counter()
    purchases = f.PurchaseDays.from_lines(ids, f.local_days(seconds, zone), revenue)
    folded = time.perf_counter()
    as_of = f.day_number(datetime(2012, 1, 1).date())
    model, _ = f.live_model(purchases, as_of, 90)
    chosen = time.perf_counter()
    rows = f.forecast(purchases, as_of, 90, model)
    done = time.perf_counter()
    print(
        f"  purchase days {folded - began:.1f} s, choosing the forecaster ({model}) "
        f"{chosen - folded:.1f} s, forecasting {len(rows):,} customers {done - chosen:.1f} s; "
        f"total {done - began:.1f} s, peak RSS {peak_gb():.2f} GB"
    )
    return {
        "customers": len(rows),
        "lines": len(ids),
        "model": model,
        "forecast_s": round(done - began, 1),
        "peak_rss_gb": round(peak_gb(), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--skip-uci", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    args = parser.parse_args()
    figures: dict[str, object] = {"benchmark": "forecast"}
    if not args.skip_uci and UCI.exists():
        figures |= uci_quality()
    if not args.skip_synthetic:
        figures |= speed(args.customers)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
