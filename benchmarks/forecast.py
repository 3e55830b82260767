"""Purchase forecasts: quality on the UCI file against the independent reference, and the speed
of forecasting a million customers.

    .venv/bin/python benchmarks/forecast.py                      # UCI quality, then 1M customers
    .venv/bin/python benchmarks/forecast.py --skip-uci --customers 100000
    .venv/bin/python benchmarks/forecast.py --validation         # the ten validation splits
    .venv/bin/python benchmarks/forecast.py --young              # young CDNOW slices' totals

Quality (issue #17): the whole UCI file through the real importer and the store's query, shop
zone Europe/London, cutoffs 2011-09-01 and 2011-06-01, horizon 90 days. Reference at
2011-09-01 (shared/data/README.md): BG/NBD MAE 0.894, naive 0.863, AUC 0.730 / 0.722, total
3,270 (BG/NBD) against 4,199 actual. Target: the live forecaster's MAE no worse than the better
reference and its AUC no worse than BG/NBD's — also on shops the forecasters were not built
on: CDNOW (cutoffs 1997-10-01, 1998-01-01, 1998-04-01) and the synthetic demo shop
(recocamp.data.synthetic, 3,000 customers over two years, through the store's query).

Per forecaster it prints the MAE of the expectation, the MAE of the point forecast
(``likely_purchase_days``, the Poisson median of the expectation: what a person's count is
scored on, since an absolute error rewards the median), AUC and the total, and where the MAE
comes from: customers with a single purchase day so far against those with repeat days. The
live forecaster's figures (chosen on the horizon before the cutoff) are in the JSON line as
``<shop>_<cutoff>_live_mae``, ``_live_mae_point`` and ``_live_auc``, and whether they meet the
musts as ``_live_mae_met`` (MAE of the likely count no worse than the better of BG/NBD's and
naive's) and ``_live_auc_met``, with ``_live_auc_lift_se``, the standard error of the live
AUC's difference from BG/NBD's on the same customers (DeLong): the must is literal, but a
difference of a fraction of that error is noise. Each forecaster's log score (mean Poisson log
loss, what the choice compares) is printed first.

Validation (``--validation``): ten splits none of the seven above, on which the design of the
learning forecasters was settled before the seven were measured — UCI at 2011-04-15 and
2011-07-15, CDNOW at 1997-11-15 and 1998-02-15, the demo shop drawn with seeds 101 and 202 (two
cutoffs each) and two shops of the speed test's generator (20,000 customers, seeds 5 and 6).

Young shops (``--young``): 400-customer slices of CDNOW (seeds 0-11, everyone's first purchase
in the first quarter of 1997) at 1997-07-01, 1997-08-15 and 1997-09-15, each forecaster's and
the live one's total against the actual, and per forecaster the pairs off by more than 2.5
times either way and the worst factor: the regressions learn on customers younger than any at
the cutoff there.

Speed: a synthetic shop of N customers (Poisson-gamma purchase rates, geometric dropout, two
years) from the purchase-line arrays to every customer's forecast, the choice of the live
forecaster on the time split included. Target: 1M customers in under 60 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

from recocamp import forecast as f
from recocamp.data.ingest import Importer
from recocamp.data.synthetic import generate_shop
from recocamp.domain import Customer
from recocamp.forecast.evaluate import Quality
from recocamp.forecast.evaluate import quality as measure
from recocamp.store import forecasts as forecast_store
from recocamp.store import queries
from recocamp.store.engine import make_engine, upgrade

DATA = Path(__file__).resolve().parents[2] / "shared/data"
UCI = DATA / "online-retail/online_retail.csv.gz"
CDNOW = DATA / "cdnow-sample/CDNOW_sample.txt"
LONDON = ZoneInfo("Europe/London")
UCI_CUTOFFS = ("2011-09-01", "2011-06-01")
CDNOW_CUTOFFS = ("1997-10-01", "1998-01-01", "1998-04-01")
DEMO_CUTOFFS = ("2011-09-01", "2011-06-01")
# --validation: ten splits outside the seven above, on which the learning forecasters' design
# (four rolling training origins) was chosen before the seven were measured
VALIDATION_UCI = ("2011-04-15", "2011-07-15")
VALIDATION_CDNOW = ("1997-11-15", "1998-02-15")
VALIDATION_DEMO: dict[int, tuple[str, ...]] = {
    101: ("2011-07-15", "2011-04-01"),
    202: ("2011-09-01", "2011-05-15"),
}
# 20,000 customers each
VALIDATION_SYNTHETIC: dict[int, tuple[str, ...]] = {5: ("2011-09-01",), 6: ("2011-05-01",)}


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def uci_purchases() -> f.PurchaseDays:
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
    return f.PurchaseDays.from_lines(ids, f.local_days(seconds, LONDON), revenue)


def cdnow_purchases() -> f.PurchaseDays:
    ids, days, spend = [], [], []
    for line in CDNOW.read_text(encoding="ascii").splitlines():
        customer, _, when, _, value = line.split()
        ids.append(customer)
        days.append(f.day_number(datetime.strptime(when, "%Y%m%d").date()))
        spend.append(float(value))
    return f.PurchaseDays.from_lines(np.array(ids), np.array(days), np.array(spend))


def demo_purchases(seed: int = 7) -> f.PurchaseDays:
    """The synthetic demo shop (seed 7, 3,000 customers, two years to 2011-12-09) through the
    store, so returns and postage-only orders are left out as for a real shop."""
    shop = generate_shop(seed, 3000, 500, 730)
    now = datetime(2012, 1, 1, tzinfo=UTC)
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(f"sqlite:///{folder}/demo.db")
        upgrade(engine)
        with engine.begin() as connection:
            queries.upsert_items(connection, shop.items, now)
            people = [Customer(c, f"{c}@example.test") for c in shop.countries]
            queries.upsert_customers(connection, people, now)
            queries.insert_purchases(connection, shop.purchases, None)
        with engine.connect() as connection:
            ids, seconds, revenue = forecast_store.purchase_lines(connection, now)
        engine.dispose()
    return f.PurchaseDays.from_lines(ids, f.local_days(seconds, ZoneInfo("UTC")), revenue)


def quality(shop: str, purchases: f.PurchaseDays, cutoffs: tuple[str, ...]) -> dict[str, object]:
    figures: dict[str, object] = {}
    for cutoff in cutoffs:
        day = f.day_number(datetime.strptime(cutoff, "%Y-%m-%d").date())
        history = f.History.at(purchases, day)
        actual = purchases.count_in(day, day + 90)[history.rows]
        once = history.x == 0
        live = f.live_model(purchases, day, 90).model
        print(
            f"{shop} {cutoff}: {len(actual):,} customers ({once.mean():.0%} with one purchase "
            f"day), {actual.sum():,.0f} purchase days in 90 days; live (chosen before): {live}"
        )
        scored: dict[str, Quality] = {}
        forecasts: dict[str, np.ndarray] = {}
        for name, forecaster in f.FORECASTERS.items():
            predicted = forecasts[name] = forecaster(purchases, history, 90)
            q = scored[name] = measure(predicted, actual)
            error = np.abs(predicted - actual)
            score = "  —  " if q.log_score is None else f"{q.log_score:.3f}"
            print(
                f"  {name:7s} log {score}  MAE {q.mae:.3f}  MAE point {q.mae_point:.3f}"
                f"  AUC {q.auc or 0:.3f}  total {q.predicted_total:7,.0f}"
                f"  | MAE one-timers {error[once].mean():.3f} repeat {error[~once].mean():.3f}"
            )
            key = f"{shop}_{cutoff}_{name}"
            figures |= {f"{key}_mae": round(q.mae, 4), f"{key}_mae_point": round(q.mae_point, 4)}
            figures[f"{key}_auc"] = round(q.auc or 0.0, 4)
            figures[f"{key}_total"] = round(q.predicted_total, 1)
            if name == live:
                for measure_name in ("mae", "mae_point", "auc"):
                    figures[f"{shop}_{cutoff}_live_{measure_name}"] = figures[
                        f"{key}_{measure_name}"
                    ]
        print(f"  all-zero MAE {actual.mean():.3f} (one-timers {actual[once].mean():.3f})")
        figures |= musts(scored, live, f"{shop}_{cutoff}")
        lift_se = auc_difference_se(forecasts[live], forecasts["bgnbd"], actual > 0)
        print(f"  live AUC − BG/NBD's: standard error {lift_se:.4f} (DeLong, paired)")
        figures[f"{shop}_{cutoff}_live_auc_lift_se"] = round(lift_se, 4)
        figures[f"{shop}_{cutoff}_actual_total"] = float(actual.sum())
        figures[f"{shop}_{cutoff}_live"] = live
    return figures


LEFT_OUT: list[str] = []  # shops whose data file is absent: named, never averaged over quietly


def present(path: Path, shop: str) -> bool:
    """Whether ``shop``'s data file is there; if not, say so (stderr, and ``left_out`` in
    the JSON line): a summary over fewer shops than it claims would mislead."""
    if path.exists():
        return True
    print(f"forecast benchmark: {shop} left out, no file at {path}", file=sys.stderr)
    LEFT_OUT.append(shop)
    return False


def validation() -> dict[str, object]:
    """Every forecaster on the ten validation splits, and per forecaster the mean over them of
    its likely-count MAE as a share of BG/NBD's, of its AUC minus BG/NBD's, and the number of
    splits where its AUC is at least BG/NBD's."""
    shops: list[tuple[str, f.PurchaseDays, tuple[str, ...]]] = []
    if present(UCI, "uci"):
        shops.append(("uci", uci_purchases(), VALIDATION_UCI))
    if present(CDNOW, "cdnow"):
        shops.append(("cdnow", cdnow_purchases(), VALIDATION_CDNOW))
    for seed, cutoffs in VALIDATION_DEMO.items():
        shops.append((f"demo{seed}", demo_purchases(seed), cutoffs))
    for seed, cutoffs in VALIDATION_SYNTHETIC.items():
        ids, seconds, revenue = synthetic(20_000, seed)
        days = f.local_days(seconds, ZoneInfo("UTC"))
        shops.append((f"synthetic{seed}", f.PurchaseDays.from_lines(ids, days, revenue), cutoffs))
    figures: dict[str, object] = {}
    for shop, purchases, cutoffs in shops:
        figures |= quality(shop, purchases, cutoffs)
    splits = [f"{shop}_{cutoff}" for shop, _, cutoffs in shops for cutoff in cutoffs]
    print(
        f"mean over {len(splits)} validation splits (likely-count MAE / BG/NBD's, AUC − BG/NBD's):"
    )
    for name in f.FORECASTERS:
        share = [_ratio(figures, split, name, "mae_point") for split in splits]
        lift = [_lift(figures, split, name) for split in splits]
        print(
            f"  {name:7s} {np.mean(share):.4f}  {np.mean(lift):+.4f}  "
            f"AUC at least BG/NBD's on {sum(v >= 0 for v in lift)} of {len(splits)}"
        )
        figures[f"validation_{name}_mae_point_share"] = round(float(np.mean(share)), 4)
        figures[f"validation_{name}_auc_lift"] = round(float(np.mean(lift)), 4)
    return figures


YOUNG_SEEDS = range(12)
YOUNG_CUTOFFS = ("1997-07-01", "1997-08-15", "1997-09-15")
YOUNG_CUSTOMERS = 400


def young() -> dict[str, object]:
    """Totals on young single-cohort slices of CDNOW (:data:`YOUNG_SEEDS` × YOUNG_CUTOFFS)."""
    whole = cdnow_purchases()
    owner = np.repeat(whole.customers, np.diff(whole.start))
    names = ("bgnbd", "rhythm", "hurdle", "blend", "live")
    off, worst = dict.fromkeys(names, 0), dict.fromkeys(names, 1.0)
    for seed in YOUNG_SEEDS:
        chosen = np.random.default_rng(seed).choice(whole.customers, YOUNG_CUSTOMERS, False)
        keep = np.isin(owner, chosen)
        purchases = f.PurchaseDays.from_lines(owner[keep], whole.day[keep], whole.spend[keep])
        for cutoff in YOUNG_CUTOFFS:
            day = f.day_number(datetime.strptime(cutoff, "%Y-%m-%d").date())
            history = f.History.at(purchases, day)
            actual = float(purchases.count_in(day, day + 90)[history.rows].sum())
            live = f.live_model(purchases, day, 90).model
            totals = {
                name: float(
                    f.FORECASTERS[live if name == "live" else name](purchases, history, 90).sum()
                )
                for name in names
            }
            print(
                f"seed {seed:2d} {cutoff}: actual {actual:.0f}, "
                + ", ".join(f"{name} {total:.0f}" for name, total in totals.items())
                + f" (live: {live})"
            )
            for name, total in totals.items():
                factor = max(total / actual, actual / total) if min(total, actual) > 0 else np.inf
                off[name] += factor > 2.5
                worst[name] = max(worst[name], factor)
    pairs = len(YOUNG_SEEDS) * len(YOUNG_CUTOFFS)
    figures: dict[str, object] = {}
    for name in names:
        print(
            f"  {name:7s} off by more than 2.5x on {off[name]} of {pairs}, worst {worst[name]:.2f}x"
        )
        figures[f"young_{name}_off"] = off[name]
        figures[f"young_{name}_worst"] = round(worst[name], 2)
    return figures


def _ratio(figures: dict[str, object], split: str, name: str, measure_name: str) -> float:
    return float(str(figures[f"{split}_{name}_{measure_name}"])) / float(
        str(figures[f"{split}_bgnbd_{measure_name}"])
    )


def _lift(figures: dict[str, object], split: str, name: str) -> float:
    return float(str(figures[f"{split}_{name}_auc"])) - float(str(figures[f"{split}_bgnbd_auc"]))


def musts(scored: dict[str, Quality], live: str, split: str) -> dict[str, object]:
    """Issue #17's musts on one split: the live forecaster's MAE of the likely count no worse
    than the better of BG/NBD's and naive's, its AUC no worse than BG/NBD's (unrounded)."""
    chosen, textbook = scored[live], scored["bgnbd"]
    better = min(textbook.mae_point, scored["naive"].mae_point)
    mae_met = chosen.mae_point <= better
    auc_met = (chosen.auc or 0.0) >= (textbook.auc or 0.0)
    print(
        f"  live MAE point {chosen.mae_point:.4f} against {better:.4f}: "
        f"{'met' if mae_met else 'MISSED'}; AUC {chosen.auc or 0:.4f} against "
        f"{textbook.auc or 0:.4f}: {'met' if auc_met else 'MISSED'}"
    )
    return {f"{split}_live_mae_met": mae_met, f"{split}_live_auc_met": auc_met}


def auc_difference_se(score: np.ndarray, against: np.ndarray, positive: np.ndarray) -> float:
    """The standard error of AUC(score) − AUC(against) on the same customers (DeLong, DeLong &
    Clarke-Pearson 1988, "Comparing the areas under two or more correlated ROC curves",
    Biometrics 44): each customer's placement (the share of the other class a positive ranks
    above, ties at half) under both scores, the variance of the paired differences of the
    positives' and of the negatives' placements. What tells a miss of the AUC must from noise:
    0 where both scores rank alike or a class is empty."""
    positives, negatives = int(positive.sum()), int((~positive).sum())
    if positives < 2 or negatives < 2:
        return 0.0
    parts = []
    for values in (score, against):
        ranks = stats.rankdata(values)
        above = (ranks[positive] - stats.rankdata(values[positive])) / negatives
        below = 1.0 - (ranks[~positive] - stats.rankdata(values[~positive])) / positives
        parts.append((above, below))
    (above, below), (above_0, below_0) = parts
    variance = np.var(above - above_0, ddof=1) / positives
    variance += np.var(below - below_0, ddof=1) / negatives
    return float(np.sqrt(variance))


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
    began, cpu = time.perf_counter(), time.process_time()
    purchases = f.PurchaseDays.from_lines(ids, f.local_days(seconds, zone), revenue)
    folded = time.perf_counter()
    as_of = f.day_number(datetime(2012, 1, 1).date())
    model = f.live_model(purchases, as_of, 90).model
    chosen = time.perf_counter()
    rows = f.forecast(purchases, as_of, 90, model)
    done, cpu = time.perf_counter(), time.process_time() - cpu
    print(
        f"  purchase days {folded - began:.1f} s, choosing the forecaster ({model}) "
        f"{chosen - folded:.1f} s, forecasting {len(rows):,} customers {done - chosen:.1f} s; "
        f"total {done - began:.1f} s ({cpu:.1f} s of CPU: on a shared machine the wall time "
        f"moves with the load, the CPU time does not), peak RSS {peak_gb():.2f} GB"
    )
    return {
        "customers": len(rows),
        "lines": len(ids),
        "model": model,
        "forecast_s": round(done - began, 1),
        "forecast_cpu_s": round(cpu, 1),
        "peak_rss_gb": round(peak_gb(), 2),
    }


def main() -> None:
    # One BLAS thread, as every recocamp process has (recocamp/__init__.py sets it before numpy
    # loads; here numpy loaded first) and forecast.refresh holds to: on a busy two-core machine
    # a pool of two made the regressions' matrix products 13 times slower.
    with threadpool_limits(1, "blas"):
        run()


def run() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--skip-uci", action="store_true", help="skip every quality figure")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument(
        "--validation", action="store_true", help="only the ten validation splits, no speed"
    )
    parser.add_argument("--young", action="store_true", help="only the young CDNOW slices")
    args = parser.parse_args()
    figures: dict[str, object] = {"benchmark": "forecast"}
    if args.validation:
        print(json.dumps(figures | validation() | {"left_out": LEFT_OUT}))
        return
    if args.young:
        print(json.dumps(figures | (young() if present(CDNOW, "cdnow") else {})))
        return
    if not args.skip_uci and present(UCI, "uci"):
        figures |= quality("uci", uci_purchases(), UCI_CUTOFFS)
    if not args.skip_uci and present(CDNOW, "cdnow"):
        figures |= quality("cdnow", cdnow_purchases(), CDNOW_CUTOFFS)
    if not args.skip_uci:
        figures |= quality("demo", demo_purchases(), DEMO_CUTOFFS)
    if not args.skip_synthetic:
        figures |= speed(args.customers)
    print(json.dumps(figures | {"left_out": LEFT_OUT}))


if __name__ == "__main__":
    main()
