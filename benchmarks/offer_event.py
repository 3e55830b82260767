"""Server CPU per purchase event in one API process: the buyer's new answers, measured directly.

    .venv/bin/python benchmarks/offer_event.py --workdir DIR [--buyers 6] [--events 10]

``DIR`` is a demo-shop work directory of ``benchmarks/api.py`` (copied first: purchases are
added to the copy). For each of the shop's heaviest buyers, one order a time is stored, and
the buyer's answers to three widget queries (home page, "new for you", "buy again") are
computed again as the next requests would (``OfferService.lookup`` / ``respond``): one basis
(the history and the re-scoring) and three answers. The figure is this thread's CPU time per
event (``time.thread_time``, so other load on the machine counts less than wall time would),
the median over ``--events``.

The last line printed is one JSON object (``"benchmark": "offer_event"``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from recocamp.api.offer_cache import OfferService, Query
from recocamp.clock import FixedClock
from recocamp.domain import Purchase
from recocamp.recommender.ranking import Mode
from recocamp.settings import load_settings
from recocamp.store import queries
from recocamp.store.engine import make_engine
from recocamp.store.schema import purchases

NOW = datetime(2026, 12, 4, tzinfo=UTC)
QUERIES = (Query(5, Mode.MIXED), Query(10, Mode.DISCOVER), Query(5, Mode.REPLENISH))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--buyers", type=int, default=6)
    parser.add_argument("--events", type=int, default=10)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch) / "shop"
        shutil.copytree(options.workdir, work, ignore=shutil.ignore_patterns("*.txt", "*.log"))
        os.chdir(work)  # the settings name the model artifacts relative to it
        figures = measure(work, options.buyers, options.events)
    for customer, ms in figures.items():
        print(f"{customer}: {ms:.2f} ms CPU per event")
    print(json.dumps({"benchmark": "offer_event", "cpu_ms_per_event": figures}))


def measure(work: Path, buyers: int, events: int) -> dict[str, float]:
    settings = load_settings(work / "settings.toml")
    engine = make_engine(f"sqlite:///{work / 'recocamp.db'}")
    service = OfferService(engine, settings, FixedClock(NOW))
    service.snapshot()
    figures: dict[str, float] = {}
    for customer in heaviest(engine, buyers):
        for query in QUERIES:  # the answers before: cached, with their basis
            if service.lookup(customer, query) is None:
                service.respond(customer, query)
        spent = []
        for n in range(events):
            with engine.begin() as connection:
                at = NOW - timedelta(hours=1) + timedelta(seconds=n)  # before the clock's now
                line = Purchase(f"bench-{customer}-{n}", 1, customer, "85123A", 1, 2.55, at)
                queries.insert_purchases(connection, [line], None)
            started = time.thread_time()
            for query in QUERIES:
                if service.lookup(customer, query) is None:
                    service.respond(customer, query)
            spent.append(time.thread_time() - started)
        figures[customer] = round(statistics.median(spent) * 1000, 2)
    engine.dispose()
    return figures


def heaviest(engine: sa.Engine, n: int) -> list[str]:
    """The customers with the most purchase lines."""
    p = purchases.c
    query = (
        sa.select(p.customer_id)
        .where(p.customer_id.is_not(None))
        .group_by(p.customer_id)
        .order_by(sa.func.count().desc(), p.customer_id)
        .limit(n)
    )
    with engine.connect() as connection:
        return [str(customer) for customer in connection.execute(query).scalars()]


if __name__ == "__main__":
    main()
