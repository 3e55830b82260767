"""Ablation of the learners' seasonal level on synthetic shops with two years of history.

    nice -n 5 .venv/bin/python benchmarks/forecast_season.py

Four levels, each scaling ``rhythm`` and ``hurdle`` (and so ``blend``): ``cohort`` (the level
before: one cohort's purchase days in last year's season ahead over those in its training
season), ``none`` (1), ``cohort_bgnbd`` (that ratio over the one BG/NBD expects of the cohort
without a season) and ``learner`` (the live one, :func:`recocamp.forecast.models.seasonal_level`:
the learner's own miss a year ago). Shops, 5,000 customers each: ``stationary``, the speed
test's BG/NBD-like generator (seeds 5, 6, 11, 12); ``wave``, the same in operational time under a
yearly wave of ±50 % (seeds 5, 6 peaking late November, 7 in mid-July) or ±30 % (seed 8, April);
``lapsing``, customers with exponential lifetimes in calendar time (seeds 0–2), without a season
and with a season ahead selling twice the rest of the year's rate. Prints per split the levels
and per level the forecasters' total over the actual, likely-count MAE and log score; the last
line is one JSON object with the means per shop kind, level and forecaster.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from forecast import synthetic  # benchmarks/forecast.py: the speed test's generator

from recocamp import forecast as f
from recocamp.forecast import models
from recocamp.forecast.evaluate import quality

YEAR, H, START = 365, 90, 14610  # 2010-01-01: day 0 of the speed test's generator
Level = Callable[[models.Learner, f.PurchaseDays, int, int], float]


def cohort_days(purchases: f.PurchaseDays, cutoff: int) -> tuple[float, float, f.History] | None:
    """The cohort known at last year's training season's start, its purchase days there and in
    the season ahead; None where the history does not reach H days before that start."""
    start = cutoff - YEAR - H
    if start - H < int(purchases.day.min()):
        return None
    known = f.History.at(purchases, start)
    trained = float(purchases.count_in(start, start + H)[known.rows].sum())
    ahead = float(purchases.count_in(start + H, start + 2 * H)[known.rows].sum())
    return (trained, ahead, known) if trained > 0 and ahead > 0 else None


def cohort(_: models.Learner, purchases: f.PurchaseDays, cutoff: int, horizon: int) -> float:
    """The level before (repeat days of the customers known at the season's start)."""
    start = cutoff - YEAR - horizon
    if start < int(purchases.day.min()):
        return 1.0
    owner = purchases.owner
    first = purchases.day[purchases.start[:-1]]
    repeat = np.ones(len(purchases.day), dtype=bool)
    repeat[purchases.start[:-1]] = False
    counted = purchases.day[repeat & (first < start)[owner]]
    ahead = np.count_nonzero((counted >= start + horizon) & (counted < start + 2 * horizon))
    trained = np.count_nonzero((counted >= start) & (counted < start + horizon))
    return float(ahead / trained) if trained > 0 and ahead > 0 else 1.0


def cohort_bgnbd(_: models.Learner, purchases: f.PurchaseDays, cutoff: int, horizon: int) -> float:
    found = cohort_days(purchases, cutoff)
    if found is None:
        return 1.0
    trained, ahead, known = found
    first = float(known.expected(horizon).sum())
    second = float(known.expected(2 * horizon).sum()) - first
    return (ahead / trained) / (second / first) if first > 0 and second > 0 else 1.0


LEVELS: dict[str, Level] = {
    "cohort": cohort,
    "none": lambda learner, purchases, cutoff, horizon: 1.0,
    "cohort_bgnbd": cohort_bgnbd,
    "learner": models.seasonal_level,
}


def wave_shop(seed: int, amplitude: float, peak: int) -> f.PurchaseDays:
    """The speed test's process run in operational time, whose pace is 1 + amplitude ·
    cos(2π (day of year − peak) / 365) calendar days' worth a day."""
    rng = np.random.default_rng(seed)
    customers = 5000
    start = rng.integers(0, 700, customers)
    rate = rng.gamma(0.8, 1 / 40, customers)
    count = 1 + rng.geometric(0.25, customers)
    owner = np.repeat(np.arange(customers), count)
    steps = np.cumsum(rng.exponential(1.0, len(owner)) / rate[owner])
    steps -= np.repeat(steps[np.r_[0, np.cumsum(count)[:-1]]], count)
    pace = 1 + amplitude * np.cos(2 * np.pi * (np.arange(2000) % YEAR - peak) / YEAR)
    clock = np.r_[0.0, np.cumsum(pace)]
    calendar = np.arange(len(clock), dtype=np.float64)
    at = np.interp(start, calendar, clock)[owner] + steps
    day = np.floor(np.interp(at, clock, calendar)).astype(np.int64)
    keep = day < 730
    ids = np.char.add("c", owner[keep].astype("U7"))
    return f.PurchaseDays.from_lines(ids, day[keep] + START, np.ones(int(keep.sum())))


def lapsing_shop(seed: int, season: float) -> f.PurchaseDays:
    """Exponential lifetimes (mean 250 days) in calendar time, own gamma rates, purchase days
    thinned to ``season`` times the rate in days 275–364 of each year."""
    rng = np.random.default_rng(seed)
    customers = 6000
    start = rng.integers(0, 730, customers)
    rate = rng.gamma(1.0, 1 / 25, customers)
    end = np.minimum(start + rng.exponential(250, customers), 730)
    peak = max(season, 1.0)
    owner = np.repeat(np.arange(customers), rng.poisson(rate * peak * (end - start)))
    day = (start[owner] + rng.random(len(owner)) * (end - start)[owner]).astype(np.int64)
    multiplier = np.where(day % YEAR >= 275, season, 1.0)
    keep = rng.random(len(owner)) < multiplier / peak
    owner, day = np.r_[np.arange(customers), owner[keep]], np.r_[start, day[keep]]
    return f.PurchaseDays.from_lines(np.char.add("c", owner.astype("U6")), day, np.ones(len(day)))


def stationary_shop(seed: int) -> f.PurchaseDays:
    ids, seconds, revenue = synthetic(5000, seed)
    return f.PurchaseDays.from_lines(ids, (seconds // 86400).astype(np.int64), revenue)


def shops() -> list[tuple[str, str, f.PurchaseDays, tuple[int, ...]]]:
    cutoffs = tuple(f.day_number(date(2011, m, 1)) for m in (7, 8, 9))
    kinds: list[tuple[str, str, f.PurchaseDays, tuple[int, ...]]] = []
    kinds += [("stationary", f"s{s}", stationary_shop(s), cutoffs) for s in (5, 6, 11, 12)]
    for seed, amplitude, peak in ((5, 0.5, 330), (6, 0.5, 330), (7, 0.5, 200), (8, 0.3, 100)):
        kinds.append(("wave", f"w{seed}", wave_shop(seed, amplitude, peak), cutoffs))
    for seed in (0, 1, 2):
        for season in (1.0, 2.0):
            shop = lapsing_shop(seed, season)
            kinds.append((f"lapsing_x{season:g}", f"l{seed}", shop, (560, 600, 640)))
    return kinds


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()  # no options: --help says what it measures
    live = models.seasonal_level
    sums: dict[str, list[float]] = defaultdict(list)
    for kind, name, purchases, cutoffs in shops():
        for cutoff in cutoffs:
            history = f.History.at(purchases, cutoff)
            actual = purchases.count_in(cutoff, cutoff + H)[history.rows]
            rh = {
                k: level(models.learnt_rhythm, purchases, cutoff, H) for k, level in LEVELS.items()
            }
            print(
                f"{kind} {name} {cutoff}: actual {actual.sum():,.0f}, rhythm's levels "
                + ", ".join(f"{k} {v:.3f}" for k, v in rh.items())
            )
            for key, level in LEVELS.items():
                models.seasonal_level = level  # type: ignore[assignment]
                history.forecasts.clear()
                for model in ("rhythm", "hurdle", "blend"):
                    q = quality(f.FORECASTERS[model](purchases, history, H), actual)
                    total = q.predicted_total / max(float(actual.sum()), 1.0)
                    log = q.log_score if q.log_score is not None else float("nan")
                    for measure, value in (
                        ("total", total),
                        ("mae_point", q.mae_point),
                        ("log", log),
                    ):
                        sums[f"{kind}_{key}_{model}_{measure}"].append(value)
                    sums[f"{kind}_{key}_rhythm_level"].append(rh[key])
            models.seasonal_level = live
            history.forecasts.clear()
    figures = {k: round(float(np.mean(v)), 4) for k, v in sums.items()}
    for k, v in figures.items():
        if k.endswith("blend_log") or k.endswith("blend_total"):
            print(f"  {k} {v}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
