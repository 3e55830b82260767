"""Shop API speed: next-best-offer against a bare endpoint on the same server, with wrk.

    .venv/bin/python benchmarks/api.py [--workdir DIR] [--workers N] [--duration 15]
                                       [--rounds 3] [--connections 16] [--events-per-s 0]
                                       [--postgres URL]

The demo shop is built from the whole UCI file (``recocamp demo-data``, then ``recocamp train
--as-of 2011-12-10``) in ``--workdir`` (kept between runs), ``recocamp serve`` runs there with
``--workers`` processes (default: this machine's CPU count) on loopback, and wrk (installed
from Debian, ``apt-get install -y wrk``, when it is missing) drives it through one Lua script
for both endpoints, so the load generator does the same work either way: the same headers (a
real API key), one path per request from a file.

- **next-best-offer**: a realistic mix of customers of the demo shop — 90 % known customers
  drawn in proportion to their orders (active customers visit more often), 10 % of 500 ids
  without any order (registered, not bought yet) — over the places a shop shows offers: home
  page (70 %, 5 mixed), "new for you" (15 %, 10 discover), "buy again" (10 %, 5 replenish),
  a category page (5 %, 5 discover in one of the customer's categories).
- **bare**: ``GET /healthz``, constant JSON on the same server (same middleware, same route
  class, no work).

With ``--postgres URL`` (a database the benchmark may fill, e.g.
``postgresql+psycopg://postgres@127.0.0.1:54331/recocamp_api``) the shop is built and served
there instead of the SQLite file.

Before measuring, the mix is replayed until the processes' answer caches are warm (under
0.1 % of the answers computed in two rounds in a row; a shop's widget traffic repeats its
customers), and the report says how the measured answers came about (served from the cache,
or computed).
Rounds alternate bare and next-best-offer, so both see the same load from elsewhere on the
machine; the figures are the medians.

Targets (issue 19): next-best-offer >= 80 % of the bare endpoint's throughput. ``--events-per-s
R`` adds one more measured line: next-best-offer while R purchase events a second are posted
(each one commits and drops that customer's answers, in every process): >= 70 % of the bare
throughput and p99 <= 3x the bare p99 at 20 events/s; no error and p99 < 50 ms at 200/s.

Server CPU per request is read from /proc (all the server's processes; "on loops": their
main threads, the event loops, the rest being worker threads: computed answers, the events'
writes). With events, the CPU an event costs in situ is derived from it: each loaded round's
CPU per request beyond the median without events, times its requests, over the events posted.

The last line printed is one JSON object with the figures (``"benchmark": "api"``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import sqlalchemy as sa

from recocamp.api.auth import mint

ROOT = Path(__file__).resolve().parents[1]
UCI = ROOT.parent / "shared/data/online-retail/online_retail.csv.gz"
AS_OF = "2011-12-10"
LUA = """
local paths = {}
local i = 0
init = function(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  i = math.random(#paths)
end
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i], {["Authorization"] = "Bearer API_KEY"})
end
"""


@dataclass(frozen=True)
class Run:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float = 0.0  # server CPU time per request (all its processes)
    loop_us: float = 0.0  # of which on the processes' main threads (event loops)
    seconds: float = 0.0  # how long wrk ran


def main() -> None:
    options = arguments()
    wrk = find_wrk()
    workdir = Path(options.workdir).resolve()
    url = options.postgres or f"sqlite:///{workdir / 'recocamp.db'}"
    build_shop(workdir, url)
    key, entry = mint("bench", ["offers:read", "events:write"])
    port = free_port()
    server = serve(workdir, entry, port, options.workers, url)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base)
        script = workdir / "mix.lua"
        script.write_text(LUA.replace("API_KEY", key))
        nbo, bare = workdir / "nbo.txt", workdir / "bare.txt"
        paths = request_mix(url, 50_000)
        nbo.write_text("\n".join(paths) + "\n")
        bare.write_text("/healthz\n" * 1000)
        drive = Driver(wrk, base, script, options.connections, server.pid)
        warm_up(drive, nbo, base, max(options.duration, 5))
        report(options, drive, nbo, bare, base, key, workdir)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "recocamp-api"),
        help="where the demo shop is built and kept",
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--events-per-s", type=float, default=0.0)
    parser.add_argument(
        "--postgres", metavar="URL", help="build and serve the shop on this PostgreSQL database"
    )
    return parser.parse_args()


def find_wrk() -> str:
    """wrk, installed from Debian's packages when it is missing."""
    wrk = shutil.which("wrk")
    if wrk is None:
        print("wrk is missing: apt-get install -y wrk", flush=True)
        quiet = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            subprocess.run(command, env=quiet, capture_output=True, check=False)
        wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "benchmarks/api.py needs wrk (Debian: apt-get install -y wrk): it could not be "
            "installed"
        )
    return wrk


# --- the demo shop, the server --------------------------------------------------------------


def recocamp(workdir: Path, *args: str, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "recocamp", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"recocamp {' '.join(args)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")


def build_shop(workdir: Path, url: str) -> None:
    """The demo shop from the whole UCI file, trained, unless the database (``url``) has it
    already."""
    workdir.mkdir(parents=True, exist_ok=True)
    settings = workdir / "settings.toml"
    if not settings.exists():
        text = (ROOT / "settings.toml").read_text()
        text = re.sub(r"(?m)^online_retail_path = .*$", f'online_retail_path = "{UCI}"', text)
        settings.write_text(text)
    if not UCI.exists():
        print(f"note: {UCI} is absent: the demo shop is the synthetic one")
    env = {**os.environ, "RECOCAMP_DATABASE_URL": url}
    if not live_model(url):
        started = time.perf_counter()
        print("building the demo shop (import of the whole UCI file, training) …", flush=True)
        recocamp(workdir, "db", "upgrade", env=env)
        recocamp(workdir, "demo-data", env=env)
        recocamp(workdir, "train", "--as-of", AS_OF, env=env)
        print(f"  built in {time.perf_counter() - started:.0f} s")
    recocamp(workdir, "db", "upgrade", env=env)


def live_model(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            found = connection.exec_driver_sql("SELECT 1 FROM models WHERE status = 'live'").first()
    except sa.exc.DBAPIError:
        return False
    finally:
        engine.dispose()
    return found is not None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve(workdir: Path, entry: str, port: int, workers: int, url: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "RECOCAMP_DATABASE_URL": url,
        "RECOCAMP_API_KEYS": entry,
        "RECOCAMP_SIGNING_KEY": "b" * 32,
        # the limiter still runs on every request; its limit is set out of the way
        "RECOCAMP_API__RATE_LIMIT_PER_MINUTE": str(10**9),
    }
    command = [
        sys.executable,
        "-m",
        "recocamp",
        "serve",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    return subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(workdir / "serve.log").open("wb"),
    )


def wait_ready(base: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit("the server did not become ready (see serve.log in the work directory)")


# --- the request mix --------------------------------------------------------------------------


PLACEMENTS = (  # where a shop shows offers, how often, and what it asks for
    (0.70, "n=5"),  # home page: mixed
    (0.15, "n=10&mode=discover"),  # "new for you"
    (0.10, "n=5&mode=replenish"),  # "buy again"
    (0.05, "n=5&mode=discover&category={category}"),  # a category page
)


def request_mix(url: str, count: int, seed: int = 7) -> list[str]:
    """Paths of a realistic widget traffic over the demo shop's customers (see the docstring)."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        orders = connection.exec_driver_sql(
            "SELECT customer_id, COUNT(DISTINCT order_id) FROM purchases WHERE customer_id IS "
            "NOT NULL AND NOT is_return GROUP BY customer_id ORDER BY customer_id"
        ).all()
        categories = {
            str(customer): str(category)
            for customer, category in connection.exec_driver_sql(
                "SELECT p.customer_id, MIN(i.category) FROM purchases p JOIN items i ON i.id = "
                "p.item_id WHERE p.customer_id IS NOT NULL GROUP BY p.customer_id"
            ).all()
        }
    engine.dispose()
    rng = random.Random(seed)
    customers = rng.choices([c for c, _ in orders], weights=[n for _, n in orders], k=count)
    weights = [share for share, _ in PLACEMENTS]
    paths = []
    for customer in customers:
        if rng.random() < 0.10:
            customer = f"new-{rng.randrange(500)}"  # registered, no order yet
        query = rng.choices([q for _, q in PLACEMENTS], weights=weights)[0]
        query = query.format(category=categories.get(customer, "home_decor"))
        paths.append(f"/v1/customers/{customer}/next-best-offer?{query}")
    return paths


# --- driving wrk ------------------------------------------------------------------------------


class Driver:
    def __init__(self, wrk: str, base: str, script: Path, connections: int, server: int) -> None:
        self.wrk, self.base, self.script, self.connections = wrk, base, script, connections
        self.server = server

    def run(self, paths: Path, seconds: int) -> Run:
        before, loops = tree_cpu_s(self.server), tree_cpu_s(self.server, main_threads=True)
        done = subprocess.run(
            [
                self.wrk,
                "-t1",
                f"-c{self.connections}",
                f"-d{seconds}s",
                "--latency",
                "-s",
                str(self.script),
                self.base,
                "--",
                str(paths),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        spent = tree_cpu_s(self.server) - before
        looped = tree_cpu_s(self.server, main_threads=True) - loops
        run = parse(done.stdout)
        requests = re.search(r"(\d+) requests in", done.stdout)
        count = int(requests.group(1)) if requests else 0
        per = 1e6 / max(count, 1)
        return replace(run, cpu_us=per * spent, loop_us=per * looped, seconds=seconds)


def tree_cpu_s(root: int, main_threads: bool = False) -> float:
    """CPU seconds (user + system) of a process and all its descendants, from /proc: unlike
    throughput, this hardly depends on what else runs on the machine. ``main_threads``: only
    their main threads' (a serve worker's event loop; the rest is its worker threads:
    computed answers, the events' writes)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        tree.update(children)
        frontier += children
    if main_threads:
        return sum(_main_thread_cpu_s(pid, tick) for pid in tree)
    return sum(times.get(pid, 0.0) for pid in tree)


def _main_thread_cpu_s(pid: int, tick: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / tick


def parse(output: str) -> Run:
    found = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if found is None:
        raise SystemExit(f"wrk printed no Requests/sec line:\n{output[-2000:]}")
    rps = float(found.group(1))
    latency = {
        m[0]: _ms(m[1], m[2]) for m in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", output)
    }
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    failed = (int(errors.group(1)) if errors else 0) + (
        sum(int(n) for n in sockets.groups()) if sockets else 0
    )
    return Run(rps, latency["50"], latency["99"], failed)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def answers(base: str) -> dict[str, float]:
    """The next-best-offer answer counters of the server (all its processes)."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found = re.findall(r'recocamp_api_next_best_offer_total\{outcome="(\w+)"\} ([\d.e+]+)', text)
    return {outcome: float(value) for outcome, value in found}


def shares(before: dict[str, float], after: dict[str, float]) -> str:
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("cached", "computed")}
    total = sum(delta.values()) or 1.0
    return ", ".join(f"{k} {100 * v / total:.1f} %" for k, v in delta.items())


def warm_up(drive: Driver, nbo: Path, base: str, seconds: int, rounds: int = 40) -> None:
    print("warming the answer caches with the request mix …", flush=True)
    quiet = 0  # rounds in a row under the bar: one alone can be luck (each process must
    # have seen every path of the mix; a short round may not have asked for the last ones)
    for number in range(1, rounds + 1):
        before = answers(base)
        drive.run(nbo, seconds)
        after = answers(base)
        total = sum(after.values()) - sum(before.values())
        computed = after.get("computed", 0) - before.get("computed", 0)
        print(
            f"  round {number}: {total:,.0f} answers, {100 * computed / max(total, 1):.1f} % "
            "computed",
            flush=True,
        )
        quiet = quiet + 1 if computed < 0.001 * total else 0
        if quiet == 2:
            return


# --- measuring and reporting ------------------------------------------------------------------


@dataclass
class Posted:
    """What the event posters did while measured."""

    ok: int = 0
    failed: int = 0
    seconds: float = 0.0


def post_events(
    base: str, key: str, per_s: float, paths: list[str], stop: threading.Event, posted: Posted
) -> None:
    """New orders of customers from the mix at ``per_s`` a second (each one a commit that
    changes that customer's answers), from :data:`POSTERS` clients. Paced by a schedule, not
    by a sleep after each post, so the rate holds while the server is busy; a post that
    fails (or is not 200) counts as failed."""
    lock, started = threading.Lock(), time.perf_counter()

    def poster(number: int) -> None:
        rng, sent = random.Random(11 + number), 0
        customers = [path.split("/")[3] for path in paths]
        interval = POSTERS / per_s
        due = time.perf_counter() + interval * number / POSTERS
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            while not stop.wait(max(0.0, due - time.perf_counter())):
                due += interval
                sent += 1
                try:
                    reply = client.post(
                        "/v1/events/purchases",
                        json={
                            "order_id": f"bench-{os.getpid()}-{number}-{sent}",
                            "customer_id": rng.choice(customers),
                            "ordered_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
                            "lines": [{"item_id": "85123A", "quantity": 1, "unit_price": 2.55}],
                        },
                    )
                    good = reply.status_code == 200
                except httpx.HTTPError:
                    good = False
                with lock:
                    posted.ok += good
                    posted.failed += not good

    threads = [threading.Thread(target=poster, args=(n,)) for n in range(POSTERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    posted.seconds = time.perf_counter() - started


POSTERS = 4


def report(
    options: argparse.Namespace,
    drive: Driver,
    nbo: Path,
    bare: Path,
    base: str,
    key: str,
    workdir: Path,
) -> None:
    load = os.getloadavg()
    runs: dict[str, list[Run]] = {"bare": [], "nbo": []}
    before = answers(base)
    for _ in range(options.rounds):
        runs["bare"].append(drive.run(bare, options.duration))
        runs["nbo"].append(drive.run(nbo, options.duration))
    mix = shares(before, answers(base))
    posted = Posted()
    if options.events_per_s:
        stop = threading.Event()
        paths = nbo.read_text().split()
        thread = threading.Thread(
            target=post_events, args=(base, key, options.events_per_s, paths, stop, posted)
        )
        thread.start()
        before = answers(base)
        runs["nbo + events"] = [drive.run(nbo, options.duration) for _ in range(options.rounds)]
        events_mix = shares(before, answers(base))
        stop.set()
        thread.join()
    median = {name: _median(found) for name, found in runs.items()}
    print()
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} CPUs; load average before "
        f"{load[0]:.2f}, after {os.getloadavg()[0]:.2f}"
    )
    print(
        f"server: recocamp serve --workers {options.workers} "
        f"({'PostgreSQL' if options.postgres else 'SQLite'} demo shop, whole UCI "
        f"file); wrk -t1 -c{options.connections}, {options.rounds} alternating rounds of "
        f"{options.duration} s, medians"
    )
    print(
        f"{'endpoint':<16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'CPU µs/req':>12}"
        f"{'on loops':>10}{'non-2xx':>10}"
    )
    for name, run in median.items():
        print(
            f"{name:<16}{run.rps:>10,.0f}{run.p50_ms:>10.2f}{run.p99_ms:>10.2f}"
            f"{run.cpu_us:>12.0f}{run.loop_us:>10.0f}{run.errors:>10}"
        )
    for name, found in runs.items():
        print(
            f"  {name} rounds: "
            + ", ".join(f"{r.rps:,.0f}/s p99 {r.p99_ms:.1f} {r.cpu_us:.0f} µs" for r in found)
        )
    throughput = median["nbo"].rps / median["bare"].rps
    tail = median["nbo"].p99_ms / median["bare"].p99_ms
    print(f"next-best-offer answers while measured: {mix}")
    print(
        f"throughput NBO / bare = {throughput:.2f} (target >= 0.80): "
        f"{'met' if throughput >= 0.8 else 'NOT met'}; p99 NBO / bare = {tail:.2f}"
    )
    figures: dict[str, object] = {
        "benchmark": "api",
        "backend": "postgresql" if options.postgres else "sqlite",
        "bare_rps": round(median["bare"].rps, 1),
        "bare_p99_ms": round(median["bare"].p99_ms, 2),
        "nbo_rps": round(median["nbo"].rps, 1),
        "nbo_p99_ms": round(median["nbo"].p99_ms, 2),
        "ratio": round(throughput, 3),
        "events_per_s": options.events_per_s,
    }
    if options.events_per_s:
        events = median["nbo + events"]
        rate = posted.ok / max(posted.seconds, 1e-9)
        print(
            f"with {options.events_per_s:g} purchase events/s ({posted.ok} posted, "
            f"{rate:.1f}/s achieved, {posted.failed} failed): {events_mix}"
        )
        print(
            f"with events: throughput / bare = {events.rps / median['bare'].rps:.2f}, "
            f"p99 / bare p99 = {events.p99_ms / median['bare'].p99_ms:.2f}, "
            f"{events.errors} wrk errors"
        )
        per_event = in_situ_ms(runs["nbo"], runs["nbo + events"], rate)
        print(
            f"server CPU per event in situ: {per_event:.1f} ms (the rounds' extra CPU per "
            "request over the median without events, times their requests, over the events "
            f"posted); event loops {median['nbo'].loop_us:.0f} → {events.loop_us:.0f} µs a "
            "request"
        )
        figures |= {
            "events_posted_per_s": round(rate, 1),
            "events_failed": posted.failed,
            "nbo_events_rps": round(events.rps, 1),
            "nbo_events_p99_ms": round(events.p99_ms, 2),
            "nbo_events_errors": events.errors,
            "nbo_cpu_us": round(median["nbo"].cpu_us, 1),
            "nbo_events_cpu_us": round(events.cpu_us, 1),
            "cpu_ms_per_event_in_situ": round(per_event, 2),
        }
    if median["nbo"].cpu_us > 0:
        cost = median["bare"].cpu_us / median["nbo"].cpu_us
        print(
            f"server CPU per request, bare / NBO = {cost:.2f} (the throughput ratio of a "
            "saturated server when nothing else competes for the CPUs)"
        )
    print(f"(work directory {workdir})")
    print(json.dumps(figures))


def _median(found: list[Run]) -> Run:
    return Run(
        statistics.median(r.rps for r in found),
        statistics.median(r.p50_ms for r in found),
        statistics.median(r.p99_ms for r in found),
        sum(r.errors for r in found),
        statistics.median(r.cpu_us for r in found),
        statistics.median(r.loop_us for r in found),
    )


def in_situ_ms(plain: list[Run], loaded: list[Run], events_per_s: float) -> float:
    """Server CPU milliseconds a purchase event costs while the widget traffic is served:
    what each loaded round's requests cost beyond the median cost of a request without
    events, over the events posted meanwhile."""
    base = statistics.median(r.cpu_us for r in plain)
    extra_s = sum((r.cpu_us - base) * r.rps * r.seconds for r in loaded) / 1e6
    events = events_per_s * sum(r.seconds for r in loaded)
    return 1000 * extra_s / max(events, 1e-9)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
