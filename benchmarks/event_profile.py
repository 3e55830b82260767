"""Where the CPU of a purchase event goes: cProfile of the POST, of the taker's new answers
and of the other process's, on two apps over one store (``benchmarks/offer_events.py``'s
set-up), and what a change notification costs the process that did not take the event.

    .venv/bin/python benchmarks/event_profile.py --workdir DIR [--events 150] [--top 40]

``DIR`` holds a demo shop built by ``benchmarks/api.py`` (this script posts orders into its
``recocamp.db``: profile a copy). The work ``serve`` does on worker threads (the endpoints'
thread hops, the writer that shares re-scored lists) runs inline on the profiled thread
here, so one profile per phase holds all of it; cProfile's timer is process CPU time. The
phases' CPU without the profiler comes from ``offer_events.py``: profiling inflates it.

Printed: per phase, the functions by cumulative CPU (recocamp's own and the libraries'
under them), then the notification's cost: the other app's first look after the commit
(``OfferService.catch_up``: ``PRAGMA data_version``, the change log's new rows, the buyer's
answers dropped), in microseconds of thread CPU, median over the events. The last line is
one JSON object (``"benchmark": "event_profile"``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import anyio.to_thread

sys.path.insert(0, str(Path(__file__).resolve().parent))

from offer_events import Shop, drawn  # benchmarks/offer_events.py: the same set-up

from recocamp.api.app import create_app, settle_heap
from recocamp.api.auth import mint
from recocamp.clock import SystemClock
from recocamp.settings import load_settings
from recocamp.store.engine import make_engine

PHASES = ("post", "taker", "other")


async def _inline(function: Callable[..., Any], *args: Any, **_: Any) -> Any:
    """``anyio.to_thread.run_sync`` on the calling thread, so the profile sees the work."""
    return function(*args)


class _Inline:
    """An executor that runs what it is given at once (the sharer thread, profiled)."""

    def submit(self, function: Callable[..., Any], *args: Any) -> Future[Any]:
        done: Future[Any] = Future()
        done.set_result(function(*args))
        return done

    def shutdown(self, wait: bool = True) -> None:
        """Nothing runs later."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--events", type=int, default=150)
    parser.add_argument("--top", type=int, default=40, help="functions printed per phase")
    options = parser.parse_args()
    workdir = Path(options.workdir).resolve()
    url = f"sqlite:///{workdir / 'recocamp.db'}"
    key, entry = mint("bench", ["offers:read", "events:write"])
    os.environ |= {"RECOCAMP_DATABASE_URL": url, "RECOCAMP_API_KEYS": entry}
    os.environ["RECOCAMP_SIGNING_KEY"] = "b" * 32
    os.environ["RECOCAMP_API__RATE_LIMIT_PER_MINUTE"] = str(10**9)
    os.chdir(workdir)  # the registry's artifact paths are relative to it
    settings = load_settings(workdir / "settings.toml")
    apps = [create_app(settings, make_engine(url), SystemClock()) for _ in range(2)]
    anyio.to_thread.run_sync = _inline  # type: ignore[assignment]
    for app in apps:
        app.state.service._sharer = _Inline()  # the writer's work profiled too
    profiles = {phase: cProfile.Profile(time.process_time) for phase in PHASES}
    figures = asyncio.run(measure(apps, key, drawn(url, options.events), profiles))
    for app in apps:
        app.state.service.close()
    for phase, profile in profiles.items():
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text)
        stats.sort_stats("cumulative").print_stats(options.top)
        print(f"===== {phase}: {figures[f'{phase}_ms']} ms an event, profiled")
        print(text.getvalue())
    print(json.dumps({"benchmark": "event_profile"} | figures))


async def measure(
    apps: list[Any], key: str, customers: list[tuple[str, str]], profiles: dict[str, Any]
) -> dict[str, Any]:
    shop = Shop(apps, key)
    for app in apps:
        app.state.service.snapshot()
    settle_heap()  # as a serve worker does once its model is loaded
    for customer, category in customers:  # warm: every answer cached in both
        await shop.placements(customer, category)
    spent = dict.fromkeys(PHASES, 0.0)
    notices: list[float] = []
    stamp = int(time.time())
    for number, (customer, category) in enumerate(customers):
        taker, other = number % 2, 1 - number % 2
        await _profiled(profiles, spent, "post", shop.buy(number, customer, stamp))
        before = time.thread_time()
        apps[other].state.service.catch_up()  # the other process hears of it
        notices.append(time.thread_time() - before)
        await _profiled(profiles, spent, "taker", shop.placements(customer, category, taker))
        await _profiled(profiles, spent, "other", shop.placements(customer, category, other))
    for client in shop.clients:
        await client.aclose()
    count = max(len(customers), 1)
    return {
        "events": len(customers),
        **{f"{phase}_ms": round(1000 * spent[phase] / count, 2) for phase in PHASES},
        "notice_us": round(1e6 * statistics.median(notices), 1) if notices else None,
    }


async def _profiled(
    profiles: dict[str, Any], spent: dict[str, float], phase: str, work: Any
) -> None:
    before = time.process_time()
    profiles[phase].enable()
    try:
        await work
    finally:
        profiles[phase].disable()
        spent[phase] += time.process_time() - before


if __name__ == "__main__":
    main()
