"""Several delivering processes for one big run: rendering a body costs more than sending it,
and one Python process renders on one core.

The processes are started as plain interpreters that import this module and what delivery
needs, nothing else. Not by ``multiprocessing``: its spawn runs the parent's main module again
in every child so that functions defined there can be unpickled, and the parent's main module
is the ``recocamp`` console script (the whole CLI: numpy, scipy, FastAPI, ~3 s of CPU per
process) or a program that embeds recocamp. Forking is no option either: the caller runs
threads. Each child talks to the parent over a socket pair: the parent sends the job, then
"produced" (no more e-mails are coming) or "stop"; the child sends how many e-mails it has
delivered after every batch, then its report or its error. A parent that goes away closes its
end, and the child stops claiming as if told to stop.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from multiprocessing import Pipe
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, cast

from recocamp import logs
from recocamp.campaigns.render import Renderer, snapshot
from recocamp.clock import SystemClock
from recocamp.delivery.deliverer import Deliverer, Progress
from recocamp.delivery.esp import make_provider
from recocamp.domain import DeliveryReport
from recocamp.errors import DeliveryError, mask_addresses
from recocamp.settings import Settings
from recocamp.store.engine import Engine, make_engine

PRODUCED, STOP = "produced", "stop"  # parent → child
SENT, REPORT, ERROR = "sent", "report", "error"  # child → parent
POLL_S = 0.2  # how often the parent asks ``producing()`` and ``stopping()``
# the child's command: ignore SIGINT/SIGTERM from the start (the parent decides when to stop),
# take the parent's import path (a benchmark or a test runner may have added to it), import
# this module and what it imports, nothing of the parent's main module
BOOT = (
    "import signal, sys; "
    "signal.signal(signal.SIGINT, signal.SIG_IGN); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "sys.path[:] = sys.argv[2:]; "
    "from recocamp.delivery.processes import child; child(int(sys.argv[1]))"
)


@dataclass(frozen=True)
class Job:
    """What a delivering process needs: everything pickles, nothing is an open resource."""

    url: str
    settings: Settings
    templates: Path
    sources: Mapping[str, str]
    campaign: str | None
    max_wait_s: float
    log_level: int = logging.WARNING  # the parent's: its log lines, addresses masked


def drain_in_processes(
    engine: Engine,
    settings: Settings,
    renderer: Renderer,
    campaign: str | None,
    processes: int,
    max_wait_s: float,
    producing: Callable[[], bool],
    on_progress: Progress = lambda n: None,
    stopping: Callable[[], bool] = lambda: False,
    rate: float | None = None,
) -> DeliveryReport:
    """Drain with ``processes`` delivering processes while ``producing()`` holds.

    They claim batches side by side (claims never overlap, see ``outbox.claim``), render
    with the caller's templates (a snapshot, see ``Renderer.frozen``), send at an equal share
    of ``rate`` (the caller's share of the limit: a worker's, divided among live workers;
    default ``[esp] rate_limit_per_s``), and ignore SIGINT/SIGTERM: they stop claiming when the
    parent says so (``stopping()``) or goes away, so a killed ``send`` leaves at most its
    in-flight batches claimed, which the next deliverer reconciles.
    """
    sources = renderer.sources if renderer.sources is not None else snapshot(renderer.directory)
    share = settings.esp.rate_limit_per_s if rate is None else rate  # the caller's share
    esp = settings.esp.model_copy(update={"rate_limit_per_s": share / processes})
    job = Job(
        engine.url.render_as_string(hide_password=False),
        settings.model_copy(update={"esp": esp}),
        renderer.directory,
        dict(sources),
        campaign,
        max_wait_s,
        logging.getLogger().getEffectiveLevel(),
    )
    children: dict[Connection, subprocess.Popen[bytes]] = {}
    try:
        for _ in range(processes):
            _start(job, children)
        reports = _supervise(children, producing, on_progress, stopping)
    finally:
        for connection in children:  # every child still running is told "stop" at once ...
            connection.close()
        for process in children.values():  # ... then waited for: they end side by side
            process.wait()
    total = DeliveryReport()
    for each in reports:
        total.add(each)
        total.paused.update(each.paused)
    total.waiting = reports[-1].waiting if reports else 0
    return total


def _start(job: Job, children: dict[Connection, subprocess.Popen[bytes]]) -> None:
    """Start one child and hand it the job; it is in ``children`` before anything can fail
    after its start, so the caller's clean-up stops and waits for it too."""
    ours, theirs = Pipe()
    try:
        process = subprocess.Popen(  # noqa: S603 (this interpreter, our own code, no shell)
            [sys.executable, "-c", BOOT, str(theirs.fileno()), *sys.path],
            pass_fds=[theirs.fileno()],
        )
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    children[ours] = process
    ours.send(job)


def _supervise(
    children: dict[Connection, subprocess.Popen[bytes]],
    producing: Callable[[], bool],
    on_progress: Progress,
    stopping: Callable[[], bool],
) -> list[DeliveryReport]:
    """Pass the caller's flags on and collect the children's reports; the first child's
    error is raised once every child has ended (the others finish their batches)."""
    running, told = dict(children), set[str]()
    reports: list[DeliveryReport] = []
    errors: list[BaseException] = []
    while running:
        for flag, now in ((PRODUCED, not producing()), (STOP, stopping())):
            if now and flag not in told:
                told.add(flag)
                for connection in running:
                    _tell(connection, flag)
        for ready in wait(list(running), timeout=POLL_S):
            connection = cast(Connection, ready)
            try:
                kind, value = connection.recv()
            except (EOFError, OSError):
                code = running.pop(connection).wait()
                errors.append(DeliveryError(f"a delivering process ended (exit code {code})"))
                continue
            except Exception as exc:  # a message that does not unpickle (see _report)
                running.pop(connection)
                errors.append(DeliveryError(f"a delivering process's report was unreadable: {exc}"))
                continue
            if kind == SENT:
                on_progress(value)
            else:
                running.pop(connection)
                (reports if kind == REPORT else errors).append(value)
    if errors:
        raise errors[0]
    return reports


def _tell(connection: Connection, flag: str) -> None:
    with contextlib.suppress(OSError):  # it has just ended: its report or its end comes next
        connection.send(flag)


# -- in a delivering process -----------------------------------------------------------------


def child(fd: int) -> None:
    """A delivering process's life: the job, the drain, the report (see the module doc)."""
    connection = Connection(fd)
    job: Job = connection.recv()
    logs.configure(job.log_level)  # else a warning went out raw, through logging's last resort
    quiet_collector()
    producing, stop = threading.Event(), threading.Event()
    producing.set()
    threading.Thread(
        target=_listen, args=(connection, producing, stop), name="parent", daemon=True
    ).start()
    try:
        report = _drain(job, producing, stop, lambda n: _report(connection, SENT, n))
    except BaseException as exc:  # raised again in the parent, which reports it once
        _report(connection, ERROR, exc)
        raise SystemExit(1) from None  # no traceback of our own on the shared stderr
    _report(connection, REPORT, report)


def quiet_collector() -> None:
    """This process's heap is its imports (~80,000 objects, none of them garbage) and the batch
    in flight: the imports are frozen out of the collector's walks, and the young generation is
    collected every 10,000 net allocations, not 700 (a batch's 500 contexts kept it collecting
    and promoting). Measured on ``benchmarks/send.py``: the collector took 8 % of a delivering
    process's CPU (0.27 s of 3.5 s per 10,000 e-mails), now 0.5 %."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def _listen(connection: Connection, producing: threading.Event, stop: threading.Event) -> None:
    """The parent's flags; its end closed (it went away, or gave up on us) means stop."""
    while True:
        try:
            flag = connection.recv()
        except (EOFError, OSError):
            flag = STOP
        if flag == STOP:
            stop.set()
            producing.clear()
            return
        producing.clear()


def _drain(
    job: Job, producing: threading.Event, stop: threading.Event, progress: Progress
) -> DeliveryReport:
    engine, provider = make_engine(job.url), make_provider(job.settings)
    try:
        deliverer = Deliverer(
            engine,
            provider,
            job.settings.esp,
            SystemClock(),
            sleep=stop.wait,  # a wait for a retry or for the rate limit ends at the stop
            renderer=Renderer(job.templates, job.sources, job.settings.templates),
            stopping=stop.is_set,
        )
        deliverer.on_progress = progress
        return deliverer.drain(job.campaign, job.max_wait_s, producing.is_set)
    finally:
        provider.close()
        engine.dispose()


def _report(connection: Connection, kind: str, value: Any) -> None:
    """Send ``(kind, value)``; an error that does not survive pickling both ways (one whose
    constructor takes other arguments than its message) is sent as its words instead."""
    if kind == ERROR:
        try:
            pickle.loads(pickle.dumps(value))  # noqa: S301 (our own bytes, just made)
        except Exception:
            words = mask_addresses(f"{type(value).__name__}: {value}")
            value = DeliveryError(words)
    with contextlib.suppress(OSError):  # the parent went away: nobody to tell
        connection.send((kind, value))
