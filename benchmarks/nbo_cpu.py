"""CPU per request of a cached next-best offer against the bare endpoint, in process: the
ASGI app called directly (no server, no sockets, no load generator), so what is measured is
the app's own work, which is what ``benchmarks/api.py``'s ratio turns on.

    .venv/bin/python benchmarks/nbo_cpu.py --workdir DIR [--paths 300] [--batch 3000]
                                           [--rounds 7] [--looks 3] [--profile]

``DIR`` holds a demo shop built by ``benchmarks/api.py`` (``settings.toml``, ``recocamp.db``,
its artifacts and ``nbo.txt``, the request mix; nothing is written to it). The first
``--paths`` paths of the mix are answered once (computed, cached), then rounds alternate
``GET /healthz`` and the mix, ``--batch`` requests each, and each round's
``time.process_time`` over its requests is its CPU per request; medians over ``--rounds``.
Both send the same ``Authorization`` header, as wrk does. ``--looks K``: requests are stamped
in groups of K as ``recocamp serve`` stamps those parsed in one pass of its loop
(``api.protocol``), so one in K looks at the change log (``PRAGMA data_version``); 1 is the
worst case. ``--profile`` prints cProfile's view of one round of the mix (by own time).

Process CPU time counts what else runs on the machine less than wall time does, not nothing:
compare runs taken back to back (interleave the code before and after).

The last line printed is one JSON object (``"benchmark": "nbo_cpu"``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import time
from pathlib import Path
from typing import Any

from recocamp.api.app import create_app
from recocamp.api.auth import mint
from recocamp.api.lean import ENTERED
from recocamp.clock import SystemClock
from recocamp.settings import load_settings
from recocamp.store.engine import make_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--paths", type=int, default=300)
    parser.add_argument("--batch", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--looks", type=int, default=3)
    parser.add_argument("--profile", action="store_true")
    options = parser.parse_args()
    workdir = Path(options.workdir).resolve()
    key, entry = mint("bench", ["offers:read", "events:write"])
    os.environ |= {"RECOCAMP_DATABASE_URL": f"sqlite:///{workdir / 'recocamp.db'}"}
    os.environ |= {"RECOCAMP_API_KEYS": entry, "RECOCAMP_SIGNING_KEY": "b" * 32}
    os.environ["RECOCAMP_API__RATE_LIMIT_PER_MINUTE"] = str(10**9)
    os.chdir(workdir)  # the registry's artifact paths are relative to it
    settings = load_settings(workdir / "settings.toml")
    app = create_app(settings, make_engine(settings.database_url), SystemClock(), settle=True)
    paths = (workdir / "nbo.txt").read_text().split()[: options.paths]
    figures = asyncio.run(measure(app, key, paths, options))
    print(json.dumps({"benchmark": "nbo_cpu"} | figures))


def scopes(paths: list[str], key: str) -> list[dict[str, Any]]:
    """An ASGI scope per path, as uvicorn builds one (a copy is sent each time: the app
    writes into it)."""
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"authorization", f"Bearer {key}".encode()),
        (b"user-agent", b"wrk"),
    ]
    found = []
    for path in paths:
        route, _, query = path.partition("?")
        found.append(
            {
                "type": "http",
                "asgi": {"version": "3.0", "spec_version": "2.3"},
                "http_version": "1.1",
                "server": ("127.0.0.1", 8000),
                "client": ("127.0.0.1", 50000),
                "scheme": "http",
                "method": "GET",
                "root_path": "",
                "path": route,
                "raw_path": route.encode(),
                "query_string": query.encode(),
                "headers": headers,
                "state": {},
            }
        )
    return found


async def serve(app: Any, requests: list[dict[str, Any]], looks: int) -> list[bytes]:
    """Answer each request; the statuses and bodies."""
    sent: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent.append(str(message["status"]).encode())
        elif message["type"] == "http.response.body":
            sent.append(message.get("body", b""))

    stamp = 0.0
    for number, scope in enumerate(requests):
        if number % looks == 0:
            stamp = time.perf_counter()
        await app({**scope, ENTERED: stamp}, receive, send)
    return sent


async def profiled(
    app: Any, requests: list[dict[str, Any]], batch: int, looks: int
) -> dict[str, float]:
    """cProfile's own time of each function, in µs a request (cProfile's own cost included)."""
    profiler = cProfile.Profile(time.process_time)  # CPU: the machine may be loaded
    profiler.enable()
    await serve(app, requests * (batch // len(requests)), looks)
    profiler.disable()
    stats: Any = getattr(pstats.Stats(profiler), "stats")  # noqa: B009 (not in the stubs)
    count = len(requests) * (batch // len(requests))
    return {
        f"{Path(file).name}:{line}({name})": own / count * 1e6
        for (file, line, name), (_, _, own, _, _) in stats.items()
    }


async def measure(app: Any, key: str, paths: list[str], options: Any) -> dict[str, Any]:
    mix = scopes(paths, key)
    bare = scopes(["/healthz"], key)
    batch = options.batch
    async with app.router.lifespan_context(app):
        warm = await serve(app, mix, 1)
        statuses = {warm[i] for i in range(0, len(warm), 2)}
        assert statuses == {b"200"}, statuses
        await serve(app, mix, 1)  # what the first round cached
        rounds: dict[str, list[float]] = {"bare": [], "nbo": []}
        for number in range(options.rounds):
            order = ("bare", "nbo") if number % 2 == 0 else ("nbo", "bare")
            for name in order:
                requests = (bare if name == "bare" else mix) * (
                    batch // len(mix if name == "nbo" else bare)
                )
                started = time.process_time()
                await serve(app, requests, options.looks)
                rounds[name].append((time.process_time() - started) / len(requests) * 1e6)
        if options.profile:
            own = {
                name: await profiled(app, requests, batch, options.looks)
                for name, requests in (("bare", bare), ("nbo", mix))
            }
            print("own µs a request: next-best offer, bare, the difference (largest first)")
            for where in sorted(own["nbo"], key=lambda w: own["bare"].get(w, 0) - own["nbo"][w])[
                :45
            ]:
                mine, theirs = own["nbo"][where], own["bare"].get(where, 0.0)
                print(f"{mine:7.2f} {theirs:7.2f} {mine - theirs:7.2f}  {where}")
        tally = app.state.service.tally
    bare_us, nbo_us = statistics.median(rounds["bare"]), statistics.median(rounds["nbo"])
    return {
        "bare_us": round(bare_us, 1),
        "nbo_us": round(nbo_us, 1),
        "nbo_less_bare_us": round(nbo_us - bare_us, 1),
        "ratio_if_cpu_bound": round(bare_us / nbo_us, 3),
        "bare_rounds": [round(x, 1) for x in rounds["bare"]],
        "nbo_rounds": [round(x, 1) for x in rounds["nbo"]],
        "computed": tally.computed,
    }


if __name__ == "__main__":
    main()
