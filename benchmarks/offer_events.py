"""CPU of one purchase event in the shop API: the POST and the buyer's next answers, in two
apps on one store (two ``recocamp serve`` processes), measured in CPU time, not wall time.

    .venv/bin/python benchmarks/offer_events.py --workdir DIR [--events 300] [--postgres URL]

``DIR`` holds a demo shop built by ``benchmarks/api.py`` (its ``settings.toml`` and, unless
``--postgres``, ``recocamp.db``; this script posts orders into it, as that benchmark does).
Both apps answer every placement of ``benchmarks/api.py`` (home page, "new for you", "buy
again", a category page) for the customers drawn, so their caches hold the customers'
answers; then, per event, one app takes a new order of a customer (drawn in proportion to
their orders, as the benchmark's posters do) and both answer that customer's placements
again. Reported: the process CPU of an event (the POST and the eight answers) less that of
the same eight answers served from the caches, the mean and percentiles over the events,
and its parts (the POST; the four answers of the app that took it, and of the other, less
their cached cost); the bases computed, and of those how many took the re-scored list
another app wrote (``bases_shared``: the app that asks second reads what the first
re-scored, when it was written in time); and the full garbage collections meanwhile
(``gc.callbacks``).

``benchmarks/offer_event.py`` measures one process's share for the heaviest buyers (thread
CPU time); this one, the whole event on both processes for buyers as the shop's posters draw
them. Process CPU time counts what else runs on the machine less than wall time does, not
nothing: compare figures taken back to back.

The last line printed is one JSON object (``"benchmark": "offer_events"``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api import PLACEMENTS  # benchmarks/api.py: its placements

from recocamp.api.app import create_app, settle_heap
from recocamp.api.auth import mint
from recocamp.clock import SystemClock
from recocamp.settings import load_settings
from recocamp.store.engine import make_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--postgres", metavar="URL")
    options = parser.parse_args()
    workdir = Path(options.workdir).resolve()
    url = options.postgres or f"sqlite:///{workdir / 'recocamp.db'}"
    key, entry = mint("bench", ["offers:read", "events:write"])
    os.environ |= {"RECOCAMP_DATABASE_URL": url, "RECOCAMP_API_KEYS": entry}
    os.environ["RECOCAMP_SIGNING_KEY"] = "b" * 32
    os.environ["RECOCAMP_API__RATE_LIMIT_PER_MINUTE"] = str(10**9)
    os.chdir(workdir)  # the registry's artifact paths are relative to it
    settings = load_settings(workdir / "settings.toml")
    engines = [make_engine(url), make_engine(url)]
    apps = [create_app(settings, engine, SystemClock()) for engine in engines]
    customers = drawn(url, options.events)
    figures = asyncio.run(measure(apps, key, customers))
    for app in apps:
        app.state.service.close()
    print(json.dumps({"benchmark": "offer_events", "backend": engines[0].dialect.name} | figures))


def drawn(url: str, count: int, seed: int = 11) -> list[tuple[str, str]]:
    """Customers drawn in proportion to their orders, with a category of theirs."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        orders = connection.exec_driver_sql(
            "SELECT p.customer_id, COUNT(DISTINCT p.order_id), MIN(i.category) FROM purchases p "
            "JOIN items i ON i.id = p.item_id WHERE p.customer_id IS NOT NULL AND NOT "
            "p.is_return GROUP BY p.customer_id ORDER BY p.customer_id"
        ).all()
    engine.dispose()
    rng = random.Random(seed)
    found = rng.choices([(c, g) for c, _, g in orders], weights=[n for _, n, _ in orders], k=count)
    return [(str(c), str(g)) for c, g in found]


class Shop:
    """The two apps behind one client each (as two ``serve`` processes behind a port)."""

    def __init__(self, apps: list[Any], key: str) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        self.clients = [
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://shop.test", headers=headers
            )
            for app in apps
        ]

    async def placements(self, customer: str, category: str, only: int | None = None) -> None:
        """The customer's four placements, from both apps (or app ``only``)."""
        for number, client in enumerate(self.clients):
            if only in (None, number):
                for _, query in PLACEMENTS:
                    path = f"/v1/customers/{customer}/next-best-offer?{query}"
                    reply = await client.get(path.format(category=category))
                    assert reply.status_code == 200, reply.text

    async def buy(self, number: int, customer: str, stamp: int) -> None:
        """A new order of the customer, through app ``number % 2``."""
        order = {
            "order_id": f"cpu-{stamp}-{number}",
            "customer_id": customer,
            "ordered_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "lines": [{"item_id": "85123A", "quantity": 1, "unit_price": 2.55}],
        }
        reply = await self.clients[number % 2].post("/v1/events/purchases", json=order)
        assert reply.status_code == 200, reply.text


class FullCollections:
    """The pauses of the full garbage collections while in the block (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self.started = 0.0

    def __enter__(self) -> FullCollections:
        gc.callbacks.append(self.timed)
        return self

    def __exit__(self, *_: object) -> None:
        gc.callbacks.remove(self.timed)

    def timed(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] == 2:
            if phase == "start":
                self.started = time.perf_counter()
            else:
                self.pauses.append(time.perf_counter() - self.started)


async def measure(apps: list[Any], key: str, customers: list[tuple[str, str]]) -> dict[str, Any]:
    shop = Shop(apps, key)
    for app in apps:
        app.state.service.start()
        app.state.service.snapshot()
    settle_heap()  # as a serve worker does once its model is loaded (no full collections)
    for customer, category in customers:  # warm: every answer cached in both
        await shop.placements(customer, category)
        await shop.placements(customer, category)
    cached, spent, posts, first, second = [], [], [], [], []
    stamp = int(time.time())
    clock = time.process_time
    with FullCollections() as collections:
        for number, (customer, category) in enumerate(customers):
            before = clock()
            await shop.placements(customer, category)
            cached.append(clock() - before)
            before = clock()
            await shop.buy(number, customer, stamp)
            posted = clock()
            await shop.placements(customer, category, number % 2)  # the app that took it
            answered = clock()
            await shop.placements(customer, category, 1 - number % 2)
            spent.append(clock() - before)
            posts.append(posted - before)
            first.append(answered - posted)
            second.append(clock() - answered)
    for client in shop.clients:
        await client.aclose()
    base = statistics.median(cached)
    per_event = sorted(1000 * (s - base) for s in spent)
    return {
        "events": len(customers),
        "cpu_ms_per_event": round(statistics.fmean(per_event), 2),
        "cpu_ms_p50": round(per_event[len(per_event) // 2], 2),
        "cpu_ms_p90": round(per_event[int(len(per_event) * 0.9)], 2),
        "cpu_ms_max": round(per_event[-1], 2),
        "post_ms": round(1000 * statistics.fmean(posts), 2),
        "taker_answers_ms": round(1000 * (statistics.fmean(first) - base / 2), 2),
        "other_answers_ms": round(1000 * (statistics.fmean(second) - base / 2), 2),
        "cached_8_answers_ms": round(1000 * base, 2),
        "bases_computed": sum(app.state.service.tally.bases for app in apps),
        # of those, the re-scored lists read from another process (store.serving.share_list)
        "bases_shared": sum(getattr(app.state.service.tally, "shared", 0) for app in apps),
        "full_gc": len(collections.pauses),
        "full_gc_max_ms": round(1000 * max(collections.pauses, default=0.0), 1),
    }


if __name__ == "__main__":
    main()
