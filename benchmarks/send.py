"""End-to-end sending speed: plan + render + outbox + HTTP to the fake ESP on loopback.

    .venv/bin/python benchmarks/send.py [--customers 100000] [--faults 0.05]

The demo shop (the real UCI purchase histories) is scaled up to ``--customers`` by cloning
its customers under new ids and addresses, each keeping a real history. One campaign (the
cross_sell template, everyone in the audience, no holdout) is planned, rendered, enqueued
in a fresh SQLite outbox and delivered through the postmark provider to ``recocamp
fake-esp`` running as its own process (so it does not share our interpreter's GIL), with
the code ``recocamp send`` runs (``campaign_send.deliver_planned``: decided chunk by chunk,
each chunk enqueued while the run is delivered, by ``[esp] delivery_processes`` processes
that render the bodies); only the customer snapshot is built in memory instead of loaded
from the store (the customers are written to each run's store before the clock starts: a run
records and mails only customers the store still holds).

Prints e-mails/s end to end and the ratio to render-only speed (compose + render of the
same decisions, nothing stored or sent). Targets (issue #19): end to end >= 2,000 e-mails/s
and >= 0.65 of render-only whenever render-only is >= 3,000/s. Then the same run with
``--faults`` of the requests answered 429 or 5xx: every e-mail must arrive exactly once (the
fake ESP's unique count equals the outbox's sent count, no duplicates). The last line is
one JSON object: ``{"benchmark": "send", "emails", "render_only_per_s", "end_to_end_per_s",
"ratio", "duplicates"}`` (the run without faults; duplicates of both runs).

Each run's own line adds where the CPU went, in ms per e-mail (Linux): ``cpu_main`` (this
process: plans, composes, enqueues), ``cpu_delivering`` (the delivering processes: claim,
render, request, record; their start included) and ``cpu_fake_esp`` (work a real ESP does on
its own machines), and the 1-minute load average before and after. On a shared machine the
speeds move with the other jobs' load, and not alike (render-only is one process, end to
end four); the CPU per e-mail does not.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from pydantic import SecretStr

from recocamp.campaigns import compose, planner, render
from recocamp.campaigns.files import caps_defaults, load_all
from recocamp.campaigns.run import RunOptions, load_snapshot, plan_views
from recocamp.clock import SystemClock
from recocamp.data.demo import build_demo
from recocamp.delivery.campaign_send import deliver_planned, delivery_processes
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp import make_provider
from recocamp.domain import ConsentBasis
from recocamp.settings import Settings, load_settings
from recocamp.store import queries
from recocamp.store.engine import make_engine, upgrade

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN = """name = "bench"
description = "benchmark: everyone with a purchase, no holdout"
legal_basis = ["double_opt_in", "existing_customer"]
holdout_percent = 0
[schedule]
cron = "0 9 * * THU"
[audience]
lapsed_days = [0, 36500]
[offer]
mode = "mixed"
items = 4
[template]
subject = { de = "Für Sie ausgewählt", en = "Picked for you" }
html = "cross_sell.html"
text = "cross_sell.txt"
"""


def scaled_views(settings: Settings, work: Path, customers: int) -> tuple[list[Any], Any]:
    engine = make_engine(f"sqlite:///{work / 'shop.db'}")
    build_demo(engine, settings, now=datetime.now(UTC), demo_dir=work / "demo")
    with engine.connect() as connection:
        snapshot = load_snapshot(connection, settings, datetime(2011, 12, 10, tzinfo=UTC))
    engine.dispose()
    real = [v for v in snapshot.views if len(v.history.orders)]
    out = []
    for n in range(customers):
        view = real[n % len(real)]
        person = replace(
            view.customer,
            id=f"b{n}",
            email=f"b{n}@example.test",
            time_zone=None,
            consent_basis=ConsentBasis.DOUBLE_OPT_IN,
            unsubscribed_at=None,
            erased_at=None,
        )
        out.append(replace(view, customer=person))
    return out, snapshot


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_fake_esp(port: int, faults: float) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "recocamp",
            "fake-esp",
            "--port",
            str(port),
            "--rate-429",
            str(faults / 2),
            "--rate-5xx",
            str(faults / 2),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            httpx.get(f"http://127.0.0.1:{port}/_stats")
            return process
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("fake ESP did not start")


def run(
    settings: Settings, work: Path, all_views: list[Any], snapshot: Any, faults: float
) -> dict[str, float]:
    port = free_port()
    esp = start_fake_esp(port, faults)
    db = work / f"outbox-{time.monotonic_ns()}.db"  # a fresh outbox for every run
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    with engine.begin() as connection:  # the store holds them: a run writes only for those
        queries.upsert_customers(connection, [v.customer for v in all_views], datetime.now(UTC))
    local = settings.model_copy(
        update={
            "esp": settings.esp.model_copy(
                update={
                    "base_url": f"http://127.0.0.1:{port}",
                    "retry_base_s": 0.05,
                    "retry_max_s": 1.0,
                    "rate_limit_per_s": 1000.0,
                    "max_attempts": 50,
                }
            ),
            "esp_token": SecretStr("bench"),
            "signing_key": SecretStr("bench-key"),
        }
    )
    campaign = load_all(work / "campaigns", local, ROOT / "templates")[0][0]
    clock = SystemClock()
    provider = make_provider(local)
    deliverer = Deliverer(
        engine, provider, local.esp, clock, renderer=render.Renderer(ROOT / "templates")
    )
    phases: dict[str, float] = {}

    def committed(n: int) -> None:
        phases.setdefault("first_chunk_committed_s", time.perf_counter() - started)

    load_before = os.getloadavg()[0]
    try:
        esp_at_start, own_at_start = process_cpu(esp.pid), own_cpu()
        started = time.perf_counter()
        now = daytime_now(local)
        planned = plan_views(local, campaign, all_views, snapshot.items, snapshot.popular, now)
        run_report = deliver_planned(
            engine,
            local,
            campaign,
            ROOT / "templates",
            planned,
            now,
            deliverer,
            RunOptions(max_wait_s=30.0, on_progress=committed),
        )
        seconds = time.perf_counter() - started
        report = run_report.delivery
        assert report is not None
        rows = range(run_report.enqueued)
        own_at_end, esp_at_end = own_cpu(), process_cpu(esp.pid)
        stats = httpx.get(f"http://127.0.0.1:{port}/_stats").json()
    finally:
        provider.close()
        esp.terminate()
        esp.wait()
        engine.dispose()
    processes = delivery_processes(local, run_report.enqueued)
    per_email = 1000 / max(1, len(rows))
    delivering = own_at_end[1] - own_at_start[1]  # reaped: the delivering processes
    cpu = {"cpu_main": (own_at_end[0] - own_at_start[0]) * per_email}
    if esp_at_start is not None and esp_at_end is not None:
        cpu |= {"cpu_delivering": delivering * per_email}
        cpu |= {"cpu_fake_esp": (esp_at_end - esp_at_start) * per_email}
    return {
        "emails": len(rows),
        "seconds": seconds,
        "sent": report.sent,
        "requests": report.requests,
        "retried": report.retried,
        **stats,
        "delivery_processes": processes,
        **{k: round(v, 2) for k, v in phases.items()},
        **{k: round(v, 3) for k, v in cpu.items()},
        "load_1m": [round(load_before, 1), round(os.getloadavg()[0], 1)],
    }


def own_cpu() -> tuple[float, float]:
    """CPU seconds of this process and of its children that ended (user + system)."""
    mine = resource.getrusage(resource.RUSAGE_SELF)
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime, ended.ru_utime + ended.ru_stime


def process_cpu(pid: int) -> float | None:
    """CPU seconds a running process has used (Linux's /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def daytime_now(settings: Settings) -> datetime:
    """The latest 10:00 in the shop's zone that has passed: decisions made at the real time
    of day would all be deferred when the benchmark runs in the evening (quiet hours)."""
    zone = ZoneInfo(settings.shop.time_zone)
    local = datetime.now(zone)
    ten = local.replace(hour=10, minute=0, second=0, microsecond=0)
    return (ten if ten <= local else ten - timedelta(days=1)).astimezone(UTC)


def render_only(
    settings: Settings, work: Path, all_views: list[Any], snapshot: Any
) -> tuple[float, float]:
    """E-mails per second, and CPU ms per e-mail, of compose + render alone (the decisions
    are made before the clock starts: planning is not in this figure, but is end to end)."""
    local = settings.model_copy(update={"signing_key": SecretStr("bench-key")})
    campaign = load_all(work / "campaigns", local, ROOT / "templates")[0][0]
    now = daytime_now(settings)
    context = planner.Context(
        now, snapshot.items, snapshot.popular, caps_defaults(local), ZoneInfo(local.shop.time_zone)
    )
    decided = [
        d for d in planner.plan(campaign, all_views, context) if d.outcome is planner.Outcome.SEND
    ]
    by_id = {v.customer.id: v for v in all_views}
    renderer = render.Renderer(ROOT / "templates")
    started, cpu = time.perf_counter(), time.process_time()
    for d in decided:
        link = compose.links(local, b"bench-key", d.customer_id, campaign.name, now)
        compose.compose(d, by_id[d.customer_id], campaign, local, renderer, link, "k")
    per_email = 1000 / max(1, len(decided))
    return len(decided) / (time.perf_counter() - started), (time.process_time() - cpu) * per_email


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--faults", type=float, default=0.05)
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    settings = load_settings(ROOT / "settings.toml")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "campaigns").mkdir()
        (work / "campaigns" / "bench.toml").write_text(CAMPAIGN)
        uci = ROOT.parent / "shared/data/online-retail/online_retail.csv.gz"
        demo = settings.demo.model_copy(update={"online_retail_path": uci})
        settings = settings.model_copy(update={"demo": demo})
        t = time.perf_counter()
        all_views, snapshot = scaled_views(settings, work, args.customers)
        print(f"shop: {len(all_views):,} customers ({time.perf_counter() - t:.1f} s to build)")
        load = os.getloadavg()[0]
        speed, cpu = render_only(settings, work, all_views, snapshot)
        print(
            f"render only (compose + render, nothing stored): {speed:,.0f} e-mails/s, "
            f"{cpu:.3f} ms CPU each (load {load:.1f} to {os.getloadavg()[0]:.1f})"
        )
        results = []
        for faults in (0.0, args.faults):
            result = run(settings, work, all_views, snapshot, faults)
            rate = result["emails"] / result["seconds"]
            exact = (
                result["unique_send_keys"] == result["sent"] == result["emails"]
                and result["duplicates"] == 0
            )
            print(json.dumps(result))
            verdict = "met" if rate >= 2000 else "NOT met"
            ratio_verdict = "met" if rate / speed >= 0.65 else "NOT met"
            print(
                f"faults {faults:.0%}: {result['emails']:,} e-mails end to end in "
                f"{result['seconds']:.1f} s = {rate:,.0f} e-mails/s (target >= 2,000: {verdict}); "
                f"ratio to render-only {rate / speed:.2f} (target >= 0.65: {ratio_verdict}); "
                f"exactly once: {exact}"
            )
            results.append((result, rate, exact))
        clean, rate, _ = results[0]
        summary = {
            "benchmark": "send",
            "emails": clean["emails"],
            "render_only_per_s": round(speed, 1),
            "end_to_end_per_s": round(rate, 1),
            "ratio": round(rate / speed, 3),
            "duplicates": sum(
                r["duplicates"] + (0 if exact else abs(r["emails"] - r["unique_send_keys"]))
                for r, _, exact in results
            ),
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
