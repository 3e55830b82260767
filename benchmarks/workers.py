"""Several workers on one PostgreSQL database: e-mails/s with 1, 2 and 3 workers.

    .venv/bin/python benchmarks/workers.py --postgres postgresql://postgres@127.0.0.1:54330/postgres
        [--copies 5] [--workers 1,2,3] [--latency-ms 50]

The demo shop (the whole UCI file, real histories) is imported into a fresh database,
moved in time so that its last order was yesterday, and its customers are cloned
``--copies`` times (each clone keeps a real history), all with consent. For each worker
count: a clean outbox and schedule, ``recocamp fake-esp`` as its own process answering
every request after ``--latency-ms`` (a real ESP is a network away),
N ``recocamp worker`` processes, then ``recocamp runs trigger campaign:bench`` (everyone
with an order, the cross_sell template, no holdout). The leader plans and enqueues; every
worker delivers (and renders) what it claims. ``[esp] delivery_processes = 1``: a worker
is one delivering process, so the worker count is the number of processes that deliver.

Prints, per worker count: e-mails, seconds from the trigger until the last one was sent
(end to end, planning included) and e-mails/s over that, the delivery phase alone (first
to last ``sent_at``) and its e-mails/s, and the ratio to one worker. Every run must deliver
each e-mail exactly once (the fake ESP's count by send key).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
UCI = ROOT.parent / "shared/data/online-retail/online_retail.csv.gz"
CAMPAIGN = """name = "bench"
description = "benchmark: everyone with an order, no holdout"
legal_basis = ["double_opt_in", "existing_customer"]
holdout_percent = 0
[schedule]
cron = "0 9 1 1 *"
time_zone = "Europe/London"
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
COLUMNS = (
    "locale, time_zone, country, birthday, consent_basis, consent_at, consent_source, "
    "channel_email, objected_to_profiling, updated_at"
)
PREPARE = (
    # the shop's last order was yesterday: the worker decides on the real clock
    "UPDATE purchases SET ordered_at = ordered_at"
    " + (SELECT now() - interval '1 day' - max(ordered_at) FROM purchases)",
    "UPDATE customers SET consent_basis = 'double_opt_in', objected_to_profiling = false,"
    " consent_at = coalesce(consent_at, now()), unsubscribed_at = NULL",
    f"INSERT INTO customers (id, email, first_name, {COLUMNS})"
    f" SELECT id || '-' || k, 'k' || k || '-' || email, first_name, {COLUMNS}"
    " FROM customers, generate_series(2, :copies) AS k",
    "INSERT INTO purchases (order_id, line_no, customer_id, item_id, quantity, unit_price,"
    " ordered_at, is_return) SELECT order_id || '-' || k, line_no, customer_id || '-' || k,"
    " item_id, quantity, unit_price, ordered_at, is_return"
    " FROM purchases, generate_series(2, :copies) AS k WHERE customer_id IS NOT NULL",
)
RESET = (
    "outbox",
    "decisions",
    "runs",
    "workers",
    "apscheduler_jobs",
    "campaign_pauses",
    "contact_events",
    "suppressions",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings_text(db_url: str, esp_url: str) -> str:
    return (
        f'database_url = "{db_url}"\n'
        f'[demo]\nonline_retail_path = "{UCI}"\n'
        "[caps]\nquiet_hours_start = 00:00:00\nquiet_hours_end = 00:00:00\n"
        "max_per_24h = 100\nmax_per_7d = 100\ncampaign_cooldown_days = 0\n"
        f'[esp]\nprovider = "postmark"\nbase_url = "{esp_url}"\nbatch_size = 500\n'
        "rate_limit_per_s = 1000\ndelivery_processes = 1\ntimeout_s = 30\n"
        "[worker]\nleader_poll_s = 0.5\ndeliver_every_s = 0.5\nmetrics_port = 0\n"
        "import_every_s = 86400\n"
    )


def env(work: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECOCAMP_")}
    return base | {
        "RECOCAMP_SETTINGS": str(work / "settings.toml"),
        "OPENBLAS_NUM_THREADS": "1",
        "RECOCAMP_SIGNING_KEY": "bench-key",
        "RECOCAMP_ESP_TOKEN": "bench",
    }


def recocamp(work: Path, *args: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "recocamp", *args], cwd=work, env=env(work), **kwargs
    )


def build(admin_url: str, copies: int, work: Path) -> str:
    name = "recocamp_bench_workers"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    (work / "settings.toml").write_text(settings_text(url, "http://127.0.0.1:1"))
    started = time.perf_counter()
    assert recocamp(work, "demo-data", stdout=subprocess.DEVNULL).wait() == 0
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        for statement in PREPARE:
            connection.execute(sa.text(statement), {"copies": copies})
        customers = connection.execute(sa.text("SELECT count(*) FROM customers")).scalar_one()
        lines = connection.execute(sa.text("SELECT count(*) FROM purchases")).scalar_one()
    engine.dispose()
    print(
        f"shop: {customers:,} customers, {lines:,} purchase lines "
        f"({time.perf_counter() - started:.0f} s to build)"
    )
    return url


def start_esp(work: Path, port: int, latency_ms: float) -> subprocess.Popen[bytes]:
    esp = recocamp(
        work,
        "fake-esp",
        "--port",
        str(port),
        "--latency-ms",
        str(latency_ms),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/_stats")
            return esp
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("the fake ESP did not start")


def wait(condition: Callable[[], object], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def one(url: str, work: Path, workers: int, latency_ms: float) -> dict[str, float]:
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text(f"TRUNCATE {', '.join(RESET)}"))
    port = free_port()
    (work / "settings.toml").write_text(settings_text(url, f"http://127.0.0.1:{port}"))
    esp = start_esp(work, port, latency_ms)
    logs = [(work / f"worker-{workers}-{n}.log").open("wb") for n in range(workers)]
    processes = [recocamp(work, "worker", stdout=log, stderr=subprocess.STDOUT) for log in logs]

    def scalar(query: str) -> Any:
        with engine.connect() as connection:
            return connection.execute(sa.text(query)).scalar()

    try:
        wait(
            lambda: (
                scalar("SELECT count(*) FROM workers WHERE leader_since IS NOT NULL") == 1
                and scalar("SELECT count(*) FROM workers") == workers
            ),
            120,
            "a leader",
        )
        started = time.perf_counter()
        trigger = recocamp(work, "runs", "trigger", "campaign:bench", stdout=subprocess.DEVNULL)
        assert trigger.wait() == 0
        wait(
            lambda: scalar("SELECT status FROM runs WHERE job = 'campaign:bench'") == "ok",
            900,
            "the campaign run",
        )
        total = scalar("SELECT count(*) FROM outbox")
        wait(
            lambda: scalar("SELECT count(*) FROM outbox WHERE state = 'sent'") == total,
            900,
            "delivery",
        )
        seconds = time.perf_counter() - started
        phase = scalar("SELECT extract(epoch FROM max(sent_at) - min(sent_at)) FROM outbox")
        senders = scalar("SELECT count(DISTINCT split_part(claimed_by, ':', 2)) FROM outbox")
        stats = httpx.get(f"http://127.0.0.1:{port}/_stats").json()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(60)
        for log in logs:
            log.close()
        esp.terminate()
        esp.wait()
        engine.dispose()
    exact = stats["unique_send_keys"] == stats["received"] == total and not stats["duplicates"]
    return {
        "workers": workers,
        "emails": total,
        "seconds": seconds,
        "rate": total / seconds,
        "delivery_s": float(phase),
        "delivery_rate": total / max(float(phase), 1e-9),
        "delivering_processes": senders,
        "exactly_once": exact,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--postgres", default=os.environ.get("RECOCAMP_TEST_POSTGRES_URL"))
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument("--workers", default="1,2,3")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    if not args.postgres:
        parser.error("--postgres URL of a server where the benchmark may create a database")
    if not UCI.exists():
        parser.error(f"the UCI file is missing: {UCI}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "campaigns").mkdir()
        (work / "campaigns" / "bench.toml").write_text(CAMPAIGN)
        (work / "templates").symlink_to(ROOT / "templates")
        url = build(args.postgres, args.copies, work)
        results = [one(url, work, int(n), args.latency_ms) for n in args.workers.split(",")]
    base = results[0]
    print(
        f"{'workers':>7} {'e-mails':>8} {'end to end':>11} {'e-mails/s':>9} "
        f"{'delivery':>9} {'e-mails/s':>9} {'vs 1':>5} {'senders':>7} exactly once"
    )
    for r in results:
        print(
            f"{r['workers']:>7} {r['emails']:>8,} {r['seconds']:>10.1f}s {r['rate']:>9,.0f} "
            f"{r['delivery_s']:>8.1f}s {r['delivery_rate']:>9,.0f} "
            f"{r['delivery_rate'] / base['delivery_rate']:>5.2f} "
            f"{r['delivering_processes']:>7} {r['exactly_once']}"
        )
    print(f"({os.cpu_count()} CPU cores; fake ESP latency {args.latency_ms:.0f} ms per request)")


if __name__ == "__main__":
    main()
