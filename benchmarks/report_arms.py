"""CPU of the report's look-up of each customer's arms before its window
(``store.measure.earlier_arms``) on a large store, against the window's own touches.

    .venv/bin/python benchmarks/report_arms.py [--decisions 1000000] [--customers 100000]
        [--db FILE] [--repeat 3]

A SQLite store is filled (or reused: ``--db`` names a file filled before) with two years of
weekly runs of three campaigns to ``--customers`` customers: ``--decisions`` rows in
``decisions`` (half skips, 45 % sends, 5 % held out; holdout and variant drawn per customer,
a tenth of the customers switched after a year as a changed ``holdout_percent`` does) and an
outbox row per send. The report is as of the last run plus 10 days, its window the default
90 days. Figures are this process's CPU seconds (SQLite runs in it), the median over
``--repeat``.

Measured (2-core machine, shared): a million decisions of 100,000 customers (44,000 of them
touched in the window) 1.85 s before the look-up was narrowed to the window's customers,
1.46 s after; of a million customers (57,000 in the window), 2.75 s before, 0.56 s after.

The last line printed is one JSON object (``"benchmark": "report_arms"``).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from recocamp.domain import Customer, OutgoingEmail
from recocamp.store import decisions as decisions_store
from recocamp.store import measure as measure_store
from recocamp.store import outbox, queries
from recocamp.store.engine import make_engine, upgrade

FIRST_RUN = datetime(2024, 1, 1, 9, tzinfo=UTC)
WEEKS = 104
CAMPAIGNS = ("winback", "cross_sell", "replenish")
REPORT_DAYS = 90


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--db", type=Path, default=None)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = options.db or Path(scratch) / "arms.db"
        engine = make_engine(f"sqlite:///{path}")
        upgrade(engine)
        with engine.connect() as connection:
            have = connection.execute(sa.text("SELECT count(*) FROM decisions")).scalar_one()
        if not have:
            started = time.process_time()
            fill(engine, options.decisions, options.customers)
            spent = time.process_time() - started
            print(f"filled {options.decisions:,} decisions in {spent:.1f} s")
        figures = measure(engine, options.repeat)
        engine.dispose()
    for name, value in figures.items():
        print(f"{name}: {value}")
    print(json.dumps({"benchmark": "report_arms", **figures}))


def report_window() -> tuple[datetime, datetime]:
    """``(start, as_of)`` of the report: 90 days to 10 days after the last run."""
    as_of = FIRST_RUN + timedelta(weeks=WEEKS - 1, days=10)
    return as_of - timedelta(days=REPORT_DAYS), as_of


def fill(engine: sa.Engine, decisions: int, customers: int, seed: int = 7) -> None:
    """``decisions`` decisions of ``customers`` over ``WEEKS`` weekly runs of each campaign,
    deterministic."""
    draw = random.Random(seed)
    runs = WEEKS * len(CAMPAIGNS)
    per_run = min(max(1, decisions // runs), customers)
    people = [Customer(f"c{c}", f"c{c}@example.test") for c in range(customers)]
    with engine.begin() as connection:
        queries.upsert_customers(connection, people, FIRST_RUN - timedelta(days=1))
    held = {c: draw.random() < 0.1 for c in range(customers)}
    variant = {c: draw.choice(("personal", "urgency")) for c in range(customers)}
    switching = {c for c in range(customers) if draw.random() < 0.1}
    for week in range(WEEKS):
        at = FIRST_RUN + timedelta(weeks=week)
        for campaign in CAMPAIGNS:
            chosen = draw.sample(range(customers), per_run)
            rows: list[decisions_store.DecisionRow] = []
            emails: list[tuple[OutgoingEmail, str, str | None, datetime]] = []
            for c in chosen:
                customer = f"c{c}"
                roll = draw.random()
                if roll < 0.5:
                    rows.append(_row(campaign, customer, "skip", "capped_7d", None, False))
                    continue
                out = held[c] != (c in switching and week >= WEEKS // 2)
                if out:
                    rows.append(_row(campaign, customer, "holdout", "holdout", None, True))
                    continue
                rows.append(_row(campaign, customer, "send", "eligible", variant[c], False))
                key = f"{campaign}/{customer}/{at:%Y-%m-%d}"
                email = OutgoingEmail(
                    key, f"{customer}@example.test", "s", "h", "t", campaign=campaign
                )
                emails.append((email, customer, variant[c], at))
            with engine.begin() as connection:
                decisions_store.record(connection, f"{campaign}/{at:%Y-%m-%d}", rows, at)
                outbox.enqueue(connection, emails, at)


def _row(
    campaign: str, customer: str, outcome: str, reason: str, variant: str | None, holdout: bool
) -> decisions_store.DecisionRow:
    return decisions_store.DecisionRow(campaign, customer, outcome, reason, variant, holdout)


def measure(engine: sa.Engine, repeat: int) -> dict[str, Any]:
    start, as_of = report_window()

    def timed(call: Callable[[sa.Connection], list[Any]]) -> tuple[float, int]:
        spent, found = [], 0
        for _ in range(repeat):
            with engine.connect() as connection:
                begun = time.process_time()
                found = len(call(connection))
                spent.append(time.process_time() - begun)
        return round(statistics.median(spent), 3), found

    with engine.connect() as connection:
        customers = {t.customer_id for t in measure_store.touches(connection, start, as_of)}
    arms_s, arms = timed(lambda c: measure_store.earlier_arms(c, start, customers))
    touches_s, touches = timed(lambda c: measure_store.touches(c, start, as_of))
    return {
        "earlier_arms_cpu_s": arms_s,
        "earlier_arms_rows": arms,
        "touches_cpu_s": touches_s,
        "touches_rows": touches,
    }


if __name__ == "__main__":
    main()
