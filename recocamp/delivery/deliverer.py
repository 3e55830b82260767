"""Drain the outbox through a provider: batching, rate limit, retries, pause on errors.

One loop per worker: reconcile stale claims → claim a batch (committed) → one HTTP request
→ record every message's outcome (committed). A crash between the request and the record
leaves the batch *claimed*; the next deliverer finds it stale and asks the provider which
of those send keys it accepted (``Provider.lookup``) before queueing the rest again, so a
crash causes neither a duplicate nor a gap. Ambiguous failures (read timeout, dropped
connection) are looked up the same way before anything is resent.

Retries use exponential backoff with full jitter (``retry_base_s × 2^(attempt−1)``, capped
at ``retry_max_s``), never sooner than the provider's Retry-After. A 429 or 5xx for a whole
request that names no wait (Postmark documents no Retry-After or rate-limit header at all)
holds every batch for ``retry_base_s × 2^(n−1)`` (capped) after the n-th such answer in a
row: those answers cost the messages no attempt, so their own backoff never grew, and the
deliverer kept asking an overloaded provider at the full send rate. A campaign whose error
rate in this drain exceeds ``pause_error_rate`` (after ``pause_min_messages``) is paused:
its messages stay queued until ``recocamp outbox resume``. The rate counts what the
provider said about the campaign's own messages (rejected recipients, per-message errors),
not provider-wide 429/5xx answers: those are an outage or a rate limit, handled by backoff.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from recocamp.campaigns.render import SUBJECT, Renderer, render_problem
from recocamp.clock import Clock
from recocamp.delivery.esp import Provider
from recocamp.domain import DeliveryReport, SendResult, SendStatus
from recocamp.errors import (
    BatchTooLargeError,
    DeliveryError,
    PermanentDeliveryError,
    SubjectError,
    TransientDeliveryError,
)
from recocamp.ratelimit import RateLimiter
from recocamp.settings import EspSettings
from recocamp.store import outbox
from recocamp.store.engine import Connection, Engine

log = logging.getLogger(__name__)
MAX_RETRY_AFTER_S = 86_400.0  # a provider asking for more than a day is not taken literally
Progress = Callable[[int], None]
POLL_S = 0.05  # while a campaign is still being rendered: look for new mail this often
QUIET_SLICE_S = 1.0  # waiting out a Retry-After: ask whether the run is still enqueued this often


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in [0, min(cap, base·2^(attempt−1))]."""
    return rng.uniform(0, min(cap, base * 2 ** max(0, attempt - 1)))


Broken = list[tuple[outbox.Claimed, SendResult]]


class Deliverer:
    """Drains the outbox through one provider; renders deferred bodies with ``renderer``.

    ``stopping`` is asked before every batch: a worker told to stop (SIGTERM) finishes the
    batch in flight, records it, and returns; nothing is left half-sent.
    """

    def __init__(
        self,
        engine: Engine,
        provider: Provider,
        settings: EspSettings,
        clock: Clock,
        *,
        sleep: Callable[[float], object] = time.sleep,
        rng: random.Random | None = None,
        worker: str | None = None,
        renderer: Renderer | None = None,
        stopping: Callable[[], bool] = lambda: False,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.engine, self.provider, self.settings, self.clock = engine, provider, settings, clock
        self.sleep, self.renderer, self.stopping = sleep, renderer, stopping
        self.rng = rng or random.Random()
        self.worker = worker or outbox.worker_id()
        self.limiter = limiter or RateLimiter(settings.rate_limit_per_s, sleep)
        self.batch = min(settings.batch_size, provider.batch_limit)
        self.tally: dict[str, Counter[str]] = {}
        self.quiet_until: datetime | None = None  # the provider's Retry-After, for every batch
        self.refusals = 0  # 429/5xx answers without a wait in a row (``_unhinted_wait``)
        self.on_progress: Callable[[int], None] = lambda n: None

    # -- reconciliation -------------------------------------------------------------------

    def reconcile(self) -> int:
        """Settle claims of dead workers: accepted → sent, the rest back to the queue."""
        now, lease = self.clock.now(), self.settings.claim_lease_s

        def alive(who: str) -> bool:
            return outbox.process_alive(who, self.worker)

        with self.engine.connect() as connection:
            stale = outbox.stale_claims(connection, now, lease, alive)
        dead = {c.claimed_by for c in stale if c.claimed_by and not alive(c.claimed_by)}
        with self.engine.begin() as connection:  # only what is stale still (see take_over)
            stale = outbox.take_over(connection, stale, self.worker, now, lease_s=lease, dead=dead)
        if not stale:
            return 0
        found = self._lookup([c.email.send_key for c in stale]) or {}
        sent = {c.id: found[c.email.send_key] for c in stale if c.email.send_key in found}
        with self.engine.begin() as connection:
            outbox.mark_sent(connection, sent, now, self.worker)
            outbox.release(connection, [c.id for c in stale if c.id not in sent], now, self.worker)
        log.info(
            "reconciled %d stale claims: %d already accepted, %d queued again",
            len(stale),
            len(sent),
            len(stale) - len(sent),
        )
        return len(sent)

    def _lookup(self, keys: Sequence[str]) -> dict[str, str] | None:
        """Which of ``keys`` the provider already accepted: {} when a resend is safe anyway
        (nothing to ask), None when it cannot be asked (no search: SendGrid)."""
        if self.provider.resend_is_safe:
            return {}
        return self.provider.lookup(keys)

    # -- the loop ---------------------------------------------------------------------------

    def drain(
        self,
        campaign: str | None = None,
        max_wait_s: float = 0.0,
        producing: Callable[[], bool] = lambda: False,
    ) -> DeliveryReport:
        """Send everything due; wait up to ``max_wait_s`` for retries that come due, and
        keep polling for new messages as long as ``producing()`` says more are coming."""
        outbox.draining.add(self.worker)
        try:
            report = DeliveryReport(reconciled=self.reconcile())
            while not self.stopping():
                if self.limiter.lent:  # a run's processes send at this rate now: yield to them
                    log.info("delivery yields: a campaign run's processes use the send rate")
                    break
                quiet = self._quiet_s()
                if quiet > 0:  # a run still being enqueued waits; else as for a retry
                    if quiet > max_wait_s and not producing():
                        break
                    self.sleep(min(quiet, QUIET_SLICE_S))
                    continue
                now = self.clock.now()
                claimed = outbox.claim(self.engine, self.worker, now, self.batch, campaign)
                if claimed:
                    report.add(self._send(claimed, now))
                    self.on_progress(len(claimed))
                elif producing():
                    time.sleep(POLL_S)  # real time: the producer needs the moment
                elif not self._wait_for_due(campaign, max_wait_s):
                    break
        finally:
            outbox.draining.discard(self.worker)
        return self._finish(report, campaign)

    def _quiet_s(self) -> float:
        """Seconds the provider asked us to send nothing at all (Retry-After on a 429 or a
        5xx is about the account, not about the batch it answered)."""
        if self.quiet_until is None:
            return 0.0
        return max(0.0, (self.quiet_until - self.clock.now()).total_seconds())

    def _wait_for_due(self, campaign: str | None, max_wait_s: float) -> bool:
        with self.engine.connect() as connection:
            due = outbox.next_due(connection, campaign)
        if due is None:
            return False
        wait = (due - self.clock.now()).total_seconds()
        if wait > max_wait_s:
            return False
        self.sleep(max(0.0, wait))
        return True

    def _finish(self, report: DeliveryReport, campaign: str | None) -> DeliveryReport:
        with self.engine.connect() as connection:
            report.paused = outbox.paused(connection)
            report.waiting = outbox.queued(connection, campaign)
        return report

    # -- one batch ------------------------------------------------------------------------

    def _send(self, claimed: list[outbox.Claimed], leased_at: datetime) -> DeliveryReport:
        ready, broken = self._render(claimed)
        self._keep_subjects(claimed, ready)
        report = DeliveryReport()
        if broken:  # this message cannot be rendered: failed, never sent half-done
            self._record([c for c, _ in broken], [r for _, r in broken], report, suppress=False)
        if ready:
            report.add(self._request(ready, leased_at))
        return report

    def _render(self, claimed: list[outbox.Claimed]) -> tuple[list[outbox.Claimed], Broken]:
        """Render deferred bodies (see ``domain.BodyTemplate``) just before they go out."""
        ready, broken = [], []
        for index, c in enumerate(claimed):
            if index and self.stopping():  # a render may take its whole time budget
                with self.engine.begin() as connection:
                    outbox.release(
                        connection, [x.id for x in claimed[index:]], self.clock.now(), self.worker
                    )
                break
            template = c.email.template
            if template is not None and self.renderer is None:
                with self.engine.begin() as connection:
                    outbox.release(
                        connection, [x.id for x in claimed], self.clock.now(), self.worker
                    )
                raise DeliveryError(
                    "the outbox holds e-mails to render: the deliverer needs "
                    "the templates directory (--templates)"
                )
            if template is None or self.renderer is None:
                ready.append(c)
                continue
            try:
                html, text = self.renderer.body(template.html, template.text, template.context)
                # from the context the body renders from: the offers that go out
                subject = _subject(self.renderer, template.subject, template.context)
            except Exception as exc:  # this message's template and context, no other's
                error = _render_error(exc, template.html, template.text)
                broken.append((c, SendResult(c.email.send_key, SendStatus.REJECTED, error=error)))
                continue
            ready.append(c.rendered(html, text, subject))
        return ready, broken

    def _keep_subjects(self, claimed: list[outbox.Claimed], ready: list[outbox.Claimed]) -> None:
        """Write the subjects rendered here that differ from those the rows hold (written when
        the e-mails were queued, from the offers chosen then) before they are sent: the
        outbox shows the subject that went out (``outbox status``, exports, a crash's
        reconciliation). Most are the same, and nothing is written for them."""
        stored = {c.id: c.email.subject for c in claimed}
        changed = {c.id: c.email.subject for c in ready if c.email.subject != stored[c.id]}
        if changed:
            with self.engine.begin() as connection:
                outbox.set_subjects(connection, changed, self.clock.now(), self.worker)

    def _request(self, claimed: list[outbox.Claimed], leased_at: datetime) -> DeliveryReport:
        self.limiter.take()
        claimed = self._held(claimed, leased_at)
        if not claimed:
            return DeliveryReport()
        report = DeliveryReport(requests=1)
        try:
            results = self.provider.send_batch([c.email for c in claimed])
        except BatchTooLargeError:
            return self._split(claimed, leased_at)
        except TransientDeliveryError as exc:
            return self._transient(claimed, exc)
        except PermanentDeliveryError as exc:
            results = [
                SendResult(c.email.send_key, SendStatus.REJECTED, error=str(exc)) for c in claimed
            ]
            return self._record(claimed, results, report, suppress=False)
        except DeliveryError:  # refused (credentials): nothing went out, give the claims back
            with self.engine.begin() as connection:
                outbox.release(connection, [c.id for c in claimed], self.clock.now(), self.worker)
            raise
        # anything else (a bug, KeyboardInterrupt) may have come after the provider took the
        # batch: the claims stay, and the next deliverer looks them up before resending
        self.refusals = 0  # the provider answered this batch: no longer refusing requests
        return self._record(claimed, results, report)

    def _held(self, claimed: list[outbox.Claimed], leased_at: datetime) -> list[outbox.Claimed]:
        """The claims still ours, with their lease renewed once half of it is gone: a wait
        (rendering, the rate limit) past the lease lets another deliverer take them over and
        send them, and sending them here as well would be a duplicate. The opt-outs are
        checked again before every request: a customer may have unsubscribed or been erased
        while the batch was rendered or waited for the rate limit (a second's wait sent an
        erased customer's mail, whose row said "cancelled")."""
        now = self.clock.now()
        with self.engine.begin() as connection:
            if (now - leased_at).total_seconds() < self.settings.claim_lease_s / 2:
                held = outbox.recheck(connection, claimed, self.worker, now)
            else:
                held = outbox.renew(connection, claimed, self.worker, now)
        if len(held) < len(claimed):
            log.warning(
                "%d claims were taken over or opted out while this deliverer waited: not sent",
                len(claimed) - len(held),
            )
        return [c for c in claimed if c.id in held]

    def _split(self, claimed: list[outbox.Claimed], leased_at: datetime) -> DeliveryReport:
        if len(claimed) == 1:
            results = [
                SendResult(
                    claimed[0].email.send_key,
                    SendStatus.REJECTED,
                    error="too large for the provider (HTTP 413)",
                )
            ]
            return self._record(claimed, results, DeliveryReport(requests=1), suppress=False)
        half = len(claimed) // 2
        report = self._request(claimed[:half], leased_at)
        report.add(self._request(claimed[half:], leased_at))
        return report

    def _transient(
        self, claimed: list[outbox.Claimed], exc: TransientDeliveryError
    ) -> DeliveryReport:
        wait = exc.retry_after or self._unhinted_wait(exc)
        if wait:
            until = self.clock.now() + timedelta(seconds=min(wait, MAX_RETRY_AFTER_S))
            self.quiet_until = max(until, self.quiet_until or until)
        asked = self._lookup([c.email.send_key for c in claimed]) if exc.ambiguous else {}
        found = asked or {}
        results = [
            SendResult(c.email.send_key, SendStatus.ACCEPTED, message_id=found[c.email.send_key])
            if c.email.send_key in found
            else SendResult(c.email.send_key, SendStatus.RETRY, error=str(exc), retry_after=wait)
            for c in claimed
        ]
        log.warning(
            "%s: %d messages, %d found accepted after the error", exc, len(claimed), len(found)
        )
        # a provider-wide 429/5xx says nothing about this campaign: it is not in the tally,
        # and it costs no attempt (an outage makes mail wait, never fail) — unless the request
        # may have gone through and the provider cannot be asked (SendGrid has no search):
        # then each resend may be a duplicate, and ``max_attempts`` bounds how many
        refund = asked is not None
        return self._record(
            claimed, results, DeliveryReport(requests=1), tally=False, refund=refund
        )

    def _unhinted_wait(self, exc: TransientDeliveryError) -> float | None:
        """How long to send nothing after a 429/5xx that names no wait: ``retry_base_s`` the
        first time, doubling with each such answer in a row, up to ``retry_max_s``. None for
        an ambiguous failure without an answer (a timeout), which is looked up, not a refusal;
        a 502 or 504 is looked up too, and is a refusal (it was asked again at once)."""
        if exc.ambiguous and exc.status is None:
            return None
        self.refusals += 1
        base, cap = self.settings.retry_base_s, self.settings.retry_max_s
        return min(cap, base * 2.0 ** min(self.refusals - 1, 60))

    def _record(
        self,
        claimed: list[outbox.Claimed],
        results: list[SendResult],
        report: DeliveryReport,
        *,
        suppress: bool = True,
        tally: bool = True,
        refund: bool = False,
    ) -> DeliveryReport:
        now = self.clock.now()
        by_key = {r.send_key: r for r in results}
        sent, delays, errors, rejected, failed = {}, {}, {}, {}, {}
        for c in claimed:
            result = by_key[c.email.send_key]
            if result.status is SendStatus.ACCEPTED:
                sent[c.id] = result.message_id or ""
            elif result.status is SendStatus.RETRY:
                delays[c.id] = self._delay(c.attempts, result.retry_after)
                errors[c.id] = result.error or "retry"
            elif result.status is SendStatus.FAILED:
                failed[c.id] = result.error or "failed"
            else:
                rejected[c.id] = result.error or "rejected"
        with self.engine.begin() as connection:
            outbox.mark_sent(connection, sent, now, self.worker)
            out_of_attempts = outbox.retry_later(
                connection,
                delays,
                errors,
                now,
                self.settings.max_attempts,
                self.worker,
                refund=refund,
            )
            outbox.fail(connection, rejected | failed, now, self.worker)
            if suppress:
                self._suppress(connection, [c for c in claimed if c.id in rejected])
        report.sent += len(sent)
        report.retried += len(delays) - out_of_attempts
        report.failed += out_of_attempts + len(failed) + (0 if suppress else len(rejected))
        report.rejected += len(rejected) if suppress else 0
        if tally:
            self._count(claimed, ok=set(sent))
        return report

    def _delay(self, attempts: int, retry_after: float | None) -> float:
        delay = backoff(attempts, self.settings.retry_base_s, self.settings.retry_max_s, self.rng)
        return min(max(delay, retry_after or 0.0), MAX_RETRY_AFTER_S)

    def _suppress(self, connection: Connection, rejected: list[outbox.Claimed]) -> None:
        outbox.suppress(
            connection,
            [c.email.to for c in rejected],
            "rejected",
            self.provider.name,
            self.clock.now(),
        )

    # -- error-rate pause -------------------------------------------------------------------

    def _count(self, claimed: list[outbox.Claimed], ok: set[int]) -> None:
        for c in claimed:
            tally = self.tally.setdefault(c.email.campaign, Counter())
            tally["messages"] += 1
            tally["errors"] += c.id not in ok
        for campaign, tally in self.tally.items():
            rate = tally["errors"] / tally["messages"]
            if tally["messages"] >= self.settings.pause_min_messages and (
                rate > self.settings.pause_error_rate
            ):
                self._pause(campaign, rate, tally["messages"])

    def _pause(self, campaign: str, rate: float, messages: int) -> None:
        reason = (
            f"error rate {rate:.0%} over {messages} messages passed "
            f"{self.settings.pause_error_rate:.0%}"
        )
        with self.engine.begin() as connection:
            outbox.pause(connection, campaign, reason, self.clock.now())
        log.warning("campaign %s paused: %s", campaign, reason)
        self.tally[campaign] = Counter()


def retry_wait(settings: EspSettings) -> timedelta:
    """How long ``recocamp send`` waits for retries before leaving them to the worker."""
    return timedelta(seconds=min(settings.retry_max_s, 60.0))


def _subject(renderer: Renderer, line: str | None, context: Mapping[str, Any]) -> str | None:
    """The subject ``line`` rendered (None: the e-mail's subject was rendered when it was
    queued); a failure raises ``SubjectError`` with what failed, as ``check`` says it."""
    if line is None:
        return None
    try:
        return renderer.subject(line, context)
    except Exception as exc:
        raise SubjectError(render_problem(exc, SUBJECT).message) from exc


def _render_error(exc: Exception, html: str, text: str) -> str:
    """A body's or subject's render failure as the outbox keeps it: the template (or partial)
    and line where it failed, as ``check`` and ``preview`` name it. "template x.html/x.txt:
    TypeError" left the operator to find which of the two, and where."""
    if isinstance(exc, SubjectError):
        return f"subject: {exc}"
    problem = render_problem(exc, f"{html}/{text}")
    line = f": line {problem.line}" if problem.line is not None else ""
    return f"template {problem.key or f'{html}/{text}'}{line}: {problem.message}"
