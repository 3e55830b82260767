"""The campaign run: decide for every customer at ``now``, record every decision, compose
and enqueue the e-mails (their bodies are rendered by whoever delivers them).

Deciding streams into the enqueue: the planner decides ``[campaigns] chunk_size`` customers
at a time (``planner.plan_chunks``), and each chunk's decisions and e-mails are committed, and
claimable by the deliverers, before the next chunk is decided. A run of 100,000 customers
starts delivering after its first chunk, not after seconds of planning.

Runs that overlap (two campaigns due at the same minute, a CLI ``send`` while the worker
runs, several workers) keep each other's caps: each chunk reads its customers' contact
histories again under a store-wide lock, in the transaction that writes it, and what another
run mailed since the snapshot turns a send into a ``capped_24h`` (or cooldown…) skip. The
lock is held for one chunk's write, never for a run.

Re-running the same slot (campaign × shop-local day) adds nothing: decisions are unique per
run key and customer, e-mails per send key; a crash in the middle resumes where it stopped,
because already enqueued send keys are skipped before anything is composed again (the
re-run decides from the same snapshot, its own e-mails left out: see ``load_snapshot``).
Sending while enqueuing is ``delivery.campaign_send``; the worker's jobs are ``worker.jobs``.
"""

from __future__ import annotations

import functools
import gc
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, overload
from zoneinfo import ZoneInfo

import numpy as np

from recocamp.campaigns import audience, caps, compose, planner, predictive, render
from recocamp.campaigns.files import Campaign
from recocamp.domain import (
    CONTACT_HISTORY_DAYS,
    DeliveryReport,
    OutgoingEmail,
)
from recocamp.errors import Interrupted, ModelError, SubjectError
from recocamp.recommender import models, serving
from recocamp.recommender.ranking import ranked_lists
from recocamp.settings import Settings
from recocamp.store import decisions as decisions_store
from recocamp.store import forecasts as forecasts_store
from recocamp.store import outbox, registry, tombstones, views
from recocamp.store.engine import Connection, Engine

log = logging.getLogger(__name__)
Progress = Callable[[int], None]


@dataclass
class RunReport:
    campaign: str
    run_key: str
    counts: dict[str, int] = field(default_factory=dict)
    enqueued: int = 0
    already_enqueued: int = 0
    delivery: DeliveryReport | None = None


def run_key(campaign: str, now: datetime, zone: ZoneInfo) -> str:
    """A campaign's run of one day: ``campaign/YYYY-MM-DD``, the day in ``zone``, which is the
    campaign's schedule's (``Schedule.zone``). Its send keys carry the same day, so each
    customer gets at most one e-mail of the campaign per scheduled day. In the shop's zone
    instead, a campaign at 18:00 New York in a Berlin shop fell on one Berlin day twice a
    year (the weeks the two zones change clocks apart), and the second run sent nothing."""
    return f"{campaign}/{now.astimezone(zone).date().isoformat()}"


@dataclass
class Planned:
    """One campaign run, ready to be decided: ``chunks`` decides it chunk by chunk, as
    ``enqueue_decisions`` records and enqueues (``decided``: all at once, for a look)."""

    report: RunReport
    campaign: Campaign
    customers: Sequence[planner.CustomerView]
    context: planner.Context

    def chunks(self, size: int) -> Iterable[planner.Chunk]:
        """The decisions, ``size`` customers at a time, when asked for."""
        return planner.plan_chunks(self.campaign, self.customers, self.context, size)

    @property
    def decided(self) -> list[planner.Decision]:
        return planner.plan(self.campaign, self.customers, self.context)


def sends(decisions: Iterable[planner.Decision]) -> int:
    """The decisions that enqueue an e-mail (sends, and deferrals to the end of quiet hours)."""
    return sum(d.outcome in (planner.Outcome.SEND, planner.Outcome.DEFER) for d in decisions)


def projected_sends(first: planner.Chunk | None, customers: int) -> int:
    """The e-mails a run will enqueue, projected from its first chunk (which is decided before
    the deliverers are chosen: a thread for a small run, processes for a big one)."""
    if first is None or not first.views:
        return 0
    return round(sends(first.decisions) * customers / len(first.views))


def plan_run(
    engine: Engine, settings: Settings, campaign: Campaign, now: datetime, key: str | None = None
) -> Planned:
    """Load the planner's snapshot and decide for every customer at ``now``, as the run
    ``key`` (default: the run of ``now``'s day, :func:`run_key`)."""
    settings.require_signing_key()  # refuse before any work, not after planning
    own = key or run_key(campaign.name, now, campaign.schedule.zone)
    days = planner.history_days(campaign, caps.CapPolicy.from_settings(settings.caps))
    with engine.connect() as connection:
        snapshot = load_snapshot(connection, settings, now, own_run=own, history_days=days)
    return plan_views(
        settings,
        campaign,
        snapshot.views,
        snapshot.items,
        snapshot.popular,
        now,
        forecast=snapshot.forecast,
        key=own,
    )


def load_snapshot(
    connection: Connection,
    settings: Settings,
    now: datetime,
    *,
    own_run: str | None = None,
    history_days: int = CONTACT_HISTORY_DAYS,
) -> audience.Snapshot:
    """The planner's snapshot at ``now`` (the run's, and the CLI's ``plan`` and ``preview``):
    the store's rows made into views, with the stored forecast when it is live at ``now``
    (``predictive.live_at``) and each customer's personal list as the offer API serves it
    (:func:`served_lists`). ``own_run`` leaves that run's own e-mails out of the contact
    history, so a resumed run decides as it did the first time; ``history_days``: how far back
    the contact history reaches (``planner.history_days`` of the campaign planned)."""
    rows = views.planning_rows(
        connection,
        now,
        settings.recommender.top_n,
        own_run=own_run,
        history_days=history_days,
        popularity_days=settings.recommender.recent_popularity_days,
    )
    found = audience.snapshot(rows, settings.loyalty, now, live_forecast(connection, settings, now))
    return served_lists(connection, settings, found)


def served_lists(
    connection: Connection, settings: Settings, snapshot: audience.Snapshot
) -> audience.Snapshot:
    """``snapshot`` with each buyer's personal list chosen by the offer API's rule
    (``serving.personal_list``), so an e-mail offers what a widget would: the cached top-N;
    for a customer the cache leaves out (not active within ``cache_active_days`` of the
    model's data cutoff) the list the cache would have held, computed now in one batch by the
    cache's own computation; and for one who bought since the model's data (the nightly
    training runs at 03:00, the morning's run sees the night's orders) or whom the model
    does not know, a list re-scored now from their history. The cached list alone ignored
    those purchases: the e-mail ranked the offers as before them while the widget, re-scored
    after the purchase, answered others. A list the rule computes now is computed when the
    planner first reads it (:class:`OnFirstRead`). Objectors get none: the planner offers
    them popular items anyway."""
    buyers = [
        n
        for n, view in enumerate(snapshot.views)
        if view.history.count and not view.customer.objected_to_profiling
    ]
    row = registry.live(connection) if buyers else None
    if row is None:
        return snapshot
    try:
        fitted, data, _ = models.load(settings.locate(row.path), settings.recommender)
    except ModelError:
        log.exception("live model %s unreadable: cached or popular offers only", row.version)
        return snapshot
    live = serving.Live.of(row.version, fitted, data, row.data_cutoff)
    listed = _outside_the_cache(live, [snapshot.views[n] for n in buyers], settings)
    chosen = list(snapshot.views)
    holding = [n for n in buyers if chosen[n].personal is not None]  # a cached list
    changed = live.changed_many(
        [chosen[n].customer.id for n in holding], [chosen[n].history for n in holding]
    )
    kept = {n for n, new in zip(holding, changed, strict=True) if not new}
    for n in buyers:
        view = chosen[n]
        if n in kept:
            continue  # the rule's cached list: the view holds it
        held = listed.get(view.customer.id) if view.personal is None else view.personal
        cached = None if held is None else serving.Cached(held, row.version)
        served = functools.partial(_served, live, view, cached, settings)
        chosen[n] = replace(view, personal=OnFirstRead(served))
    return replace(snapshot, views=chosen)


def _served(
    live: serving.Live,
    view: planner.CustomerView,
    cached: serving.Cached | None,
    settings: Settings,
) -> Sequence[Sequence[object]]:
    """``view``'s customer's list by ``serving.personal_list`` (a buyer who has not objected:
    never popularity while a model is live)."""
    recommender = settings.recommender
    personal = serving.personal_list(
        live,
        view.history,
        cached,
        customer_id=view.customer.id,
        objected=False,
        known=True,
        top_n=recommender.top_n,
        half_life=recommender.time_decay_half_life_days,
    )
    return personal.items or []


class OnFirstRead(Sequence[Sequence[object]]):
    """A personal list computed when the planner first reads it (``planner.offers_for``:
    for a customer who passed consent, audience and caps). Re-scoring a customer costs a
    least-squares solve and a pass over every item, and while a new model is not promoted
    the customers who bought since its data add up day by day; most customers of a run never
    reach their offers."""

    def __init__(self, compute: Callable[[], Sequence[Sequence[object]]]) -> None:
        self._compute: Callable[[], Sequence[Sequence[object]]] | None = compute
        self._items: Sequence[Sequence[object]] = ()

    def _list(self) -> Sequence[Sequence[object]]:
        if self._compute is not None:
            self._items, self._compute = self._compute(), None
        return self._items

    @overload
    def __getitem__(self, index: int) -> Sequence[object]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Sequence[object]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        return self._list()[index]

    def __iter__(self) -> Iterator[Sequence[object]]:
        return iter(self._list())

    def __len__(self) -> int:
        return len(self._list())


def _outside_the_cache(
    live: serving.Live, buyers: Sequence[planner.CustomerView], settings: Settings
) -> dict[str, Sequence[Sequence[object]]]:
    """The lists the top-N cache would hold for the ``buyers`` it leaves out whom the model
    knows, in one batch (``serving.Live.listed`` computes the same one customer at a time)."""
    missing = sorted(view.customer.id for view in buyers if view.personal is None)
    if not missing:
        return {}
    found = live.data.rows_of(np.array(missing))
    known = found[found >= 0]
    top_n = settings.recommender.top_n
    return {
        str(live.data.customers[row]): ranked
        for row, ranked in ranked_lists(live.fitted, live.data, known, top_n)
    }


def live_forecast(
    connection: Connection, settings: Settings, now: datetime
) -> predictive.LiveForecast | None:
    """The stored forecast with its rows when it is live at ``now``, else None."""
    version = forecasts_store.current_version(connection)
    while version is not None and predictive.live_at(
        version.as_of, version.horizon_days, now, settings.shop.zone
    ):
        rows = forecasts_store.rows_of(connection, version)
        if rows is not None:
            return predictive.LiveForecast.of(
                version.model, version.as_of, version.horizon_days, rows, settings.shop.zone
            )
        version = forecasts_store.current_version(connection)  # stored meanwhile: read it
    return None


def plan_views(
    settings: Settings,
    campaign: Campaign,
    customers: Sequence[planner.CustomerView],
    items: Any,
    popular: Any,
    now: datetime,
    *,
    forecast: predictive.LiveForecast | None = None,
    key: str | None = None,
) -> Planned:
    """The run at ``now`` over ``customers``, nothing decided yet (see ``Planned.chunks``),
    as the run ``key`` (default: the run of ``now``'s day)."""
    context = planner.context_for(settings, now, items, popular, forecast)
    report = RunReport(campaign.name, key or run_key(campaign.name, now, campaign.schedule.zone))
    return Planned(report, campaign, customers, context)


@dataclass(frozen=True)
class RunOptions:
    """How a campaign run reports progress and stops; the defaults suit one-off runs."""

    issued_at: datetime | None = None  # link tokens' issue time: the real time when deciding
    #                                    for a simulated ``--as-of`` (a token must not look
    #                                    15 years old to the unsubscribe page)
    max_wait_s: float = 0.0  # wait this long for retries before leaving them to the worker
    on_progress: Progress = lambda n: None  # decisions recorded and enqueued
    stopping: Callable[[], bool] = lambda: False  # checked between chunks and batches
    renderer: render.Renderer | None = None  # default: the templates directory as it is now
    chunk_size: int | None = None  # customers decided and committed at a time (None: the
    #                                 settings' ``[campaigns] chunk_size``)
    run_key: str | None = None  # a resumed run's own key: its day as first decided, even
    #                             when the schedule's zone has changed since (None: the day
    #                             of ``now`` in the schedule's zone, :func:`run_key`)

    def chunk(self, settings: Settings) -> int:
        """Customers decided and committed at a time in this run."""
        return self.chunk_size or settings.campaigns.chunk_size


def plan_and_enqueue(
    engine: Engine,
    settings: Settings,
    campaign: Campaign,
    templates: Path,
    now: datetime,
    options: RunOptions = RunOptions(),
) -> RunReport:
    """Decide at ``now`` and enqueue (nothing is delivered)."""
    planned = plan_run(engine, settings, campaign, now, options.run_key)
    return enqueue_decisions(engine, settings, campaign, templates, planned, now, options)


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep what exists now out of the garbage collector's walks until the block ends.

    A run's snapshot is hundreds of thousands of objects (customers, histories, items), and
    every chunk's decisions and e-mails live until the chunk is committed, so the collector
    ran all along and each full collection walked the whole snapshot: 20-25 % of the
    deciding process's CPU on ``benchmarks/send.py`` (0.8-1.1 s per 20,000 e-mails), 0.15-0.2 s
    frozen. Nothing is lost: what is garbage now is collected after ``unfreeze``; a second
    run in another thread at most ends this one's freeze early."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


@frozen_heap()  # see there: a fifth of this loop's CPU went to the garbage collector
def enqueue_decisions(
    engine: Engine,
    settings: Settings,
    campaign: Campaign,
    templates: Path,
    planned: Planned,
    now: datetime,
    options: RunOptions = RunOptions(),
    chunks: Iterable[planner.Chunk] | None = None,
) -> RunReport:
    """Decide, record every decision and enqueue the e-mails of sends and deferrals, chunk by
    chunk (``chunks``: default ``planned.chunks``): each chunk is committed before the next is
    decided, so deliverers start on the first while the rest is planned, and a crash or a stop
    loses at most the chunk in flight (the re-run skips what is enqueued). Each chunk is
    checked again against the contact histories under the store's contacts lock before it is
    written (``_checked_again``). Bodies are rendered by whoever delivers them
    (``domain.BodyTemplate``), subjects here (one that fails on a customer's data skips
    them) and again with the body, from the offers that go out."""
    key = settings.require_signing_key()
    renderer = options.renderer or render.Renderer(templates, limits=settings.templates)
    report = planned.report
    period = report.run_key.rpartition("/")[2]
    issued_at = options.issued_at or now
    tally: dict[str, int] = {}
    decided = 0
    for chunk in planned.chunks(options.chunk(settings)) if chunks is None else chunks:
        if options.stopping():
            raise Interrupted(
                f"campaign run {report.run_key} stopped after {report.enqueued:,} e-mails enqueued"
            )
        by_id = {view.customer.id: view for view in chunk.views}
        wanted = [
            d for d in chunk.decisions if d.outcome in (planner.Outcome.SEND, planner.Outcome.DEFER)
        ]
        keys = {
            d.customer_id: outbox.send_key(campaign.name, d.customer_id, period) for d in wanted
        }
        with engine.connect() as connection:
            done = outbox.existing_keys(connection, campaign.name, list(keys.values()))
        emails: list[Queued] = []  # composed outside the write transaction: a deliverer
        failed: dict[str, str] = {}  # may be draining
        for d in wanted:
            if keys[d.customer_id] in done:
                continue
            try:
                emails.append(
                    _email(
                        d,
                        by_id[d.customer_id],
                        campaign,
                        settings,
                        renderer,
                        key,
                        now,
                        issued_at,
                        keys[d.customer_id],
                    )
                )
            except SubjectError as exc:  # this customer's data: the run goes on
                failed[d.customer_id] = str(exc)
        chunk = _without_unrendered(campaign, report.run_key, chunk, failed)
        with engine.begin() as connection:
            tombstones.serialise(connection, erasing=False)  # an erasure: before or after
            views.lock_contacts(connection)  # an objection: before or after (_without_profiles)
            held = views.still_held(connection, [d.customer_id for d in chunk.decisions])
            chunk = _without_erased(report.run_key, chunk, held)
            chunk = _without_profiles(campaign, planned, chunk, held)
            chunk = _with_consent_now(campaign, planned, chunk, held)
            chunk = _checked_again(connection, campaign, planned, chunk, now)
            chunk = _held_out_today(connection, report.run_key, chunk)
            _record_decisions(connection, report.run_key, chunk.decisions, now)
            report.enqueued += outbox.enqueue(connection, _still_sent(emails, chunk), now)
        report.already_enqueued += len(done)
        planner.tally(chunk.decisions, tally)
        decided += len(chunk.decisions)
        options.on_progress(len(chunk.decisions))
    report.counts = planner.ordered(tally)
    log.info(
        "campaign %s run %s: %d decisions, %d enqueued, %d already enqueued",
        campaign.name,
        report.run_key,
        decided,
        report.enqueued,
        report.already_enqueued,
    )
    return report


Queued = tuple[OutgoingEmail, str, str | None, datetime]


def _without_erased(
    run_key: str, chunk: planner.Chunk, held: Mapping[str, views.Held]
) -> planner.Chunk:
    """The chunk without the customers erased since the run's snapshot (``held``: those the
    store still holds, ``views.still_held``): a decision or an e-mail of theirs would bring
    their id, address and name back into the store after the erasure, and the deliverer,
    finding no customer row, would send it. Read under ``tombstones.serialise``: an erasure
    commits before this chunk's check or after its write."""
    ids = [d.customer_id for d in chunk.decisions]
    if all(customer_id in held for customer_id in ids):
        return chunk
    gone = sum(customer_id not in held for customer_id in ids)
    log.info("run %s: %d customer(s) erased since its snapshot, left out", run_key, gone)
    return replace(
        chunk,
        views=[v for v in chunk.views if v.customer.id in held],
        decisions=[d for d in chunk.decisions if d.customer_id in held],
    )


def _without_profiles(
    campaign: Campaign, planned: Planned, chunk: planner.Chunk, held: Mapping[str, views.Held]
) -> planner.Chunk:
    """The chunk with the customers who objected to profiling since the run's snapshot
    (``held``: whether each objects now) decided again without their profile
    (``planner.without_profiles``): a decision made from it, such as personal offers
    ("because you bought ..."), is skipped as ``objected_to_profiling``. The objection's own
    cancel (``outbox.cancel_profiled``) reaches only mail already queued. Read under the
    contacts lock, which an objection takes too: it commits before this chunk's check, or
    after its write, and then cancels what the chunk queued."""
    objecting = {
        view.customer.id
        for view in chunk.views
        if (found := held.get(view.customer.id)) is not None
        and found.objected
        and not view.customer.objected_to_profiling
    }
    if not objecting:
        return chunk
    log.info(
        "campaign %s run %s: %d customer(s) objected to profiling since its snapshot",
        campaign.name,
        planned.report.run_key,
        len(objecting),
    )
    return planner.without_profiles(campaign, chunk, objecting, planned.context)


def _with_consent_now(
    campaign: Campaign, planned: Planned, chunk: planner.Chunk, held: Mapping[str, views.Held]
) -> planner.Chunk:
    """The chunk with the customers whose consent changed since the run's snapshot decided
    again with it (``planner.with_consent_now``): the change's own cancel
    (``outbox.cancel_rebased``, the claim's check of basis ``none``) reaches only mail
    already queued, so a later chunk queued mail written for the old consent — a double
    opt-in campaign's to an existing customer, without the UWG §7(3) notice. Read under the
    contacts lock, which a change of consent takes too."""
    consents = {
        customer_id: (found.consent_basis, found.consent_at) for customer_id, found in held.items()
    }
    changed = planner.with_consent_now(campaign, chunk, consents, planned.context)
    moved = sum(a != b for a, b in zip(chunk.decisions, changed.decisions, strict=True))
    if moved:
        log.info(
            "campaign %s run %s: %d decision(s) changed by a change of consent since its snapshot",
            campaign.name,
            planned.report.run_key,
            moved,
        )
    return changed


def _checked_again(
    connection: Connection,
    campaign: Campaign,
    planned: Planned,
    chunk: planner.Chunk,
    now: datetime,
) -> planner.Chunk:
    """The chunk's decisions against the contact histories as they are now, read under the
    store's contacts lock, which the caller's transaction then holds until the chunk is
    written: a run that overlaps this one (another campaign due at the same minute, a CLI
    ``send`` while the worker runs) enqueued its e-mails after this run's snapshot, or will
    after this chunk is committed and see it. Without this both read "no e-mail today" and
    both mail, past ``max_per_24h``. The caller has taken the lock (``views.lock_contacts``)
    before the chunk's first check."""
    ids = planner.to_recheck(chunk)
    days = planner.history_days(campaign, planned.context.policy)
    fresh = views.contacts_of(connection, ids, now, planned.report.run_key, days)
    return planner.recheck(campaign, chunk, fresh, planned.context)


def _held_out_today(connection: Connection, run_key: str, chunk: planner.Chunk) -> planner.Chunk:
    """The chunk with its e-mails to customers an earlier run of the same day held out turned
    back into holdouts: a later run (``holdout_percent`` lowered at noon, ``recocamp send``
    again) decided them ``send`` and mailed the control group the uplift is measured on."""
    mailing = [
        d.customer_id
        for d in chunk.decisions
        if d.outcome in (planner.Outcome.SEND, planner.Outcome.DEFER)
    ]
    held = decisions_store.held_out(connection, run_key, mailing) if mailing else set()
    if not held:
        return chunk
    log.info("run %s: %d customer(s) held out earlier today stay held out", run_key, len(held))
    kept = planner.Outcome.HOLDOUT, planner.Reason.HOLDOUT.value
    return replace(
        chunk,
        decisions=[
            replace(d, outcome=kept[0], reason=kept[1], offers=(), variant=None, send_at=None)
            if d.customer_id in held
            else d
            for d in chunk.decisions
        ],
    )


def _without_unrendered(
    campaign: Campaign, run_key: str, chunk: planner.Chunk, failed: Mapping[str, str]
) -> planner.Chunk:
    """The chunk with each decision whose subject failed to render turned into a skip
    (``not_rendered``), each logged by customer id with the error (its type and message,
    never the address), so one customer's name or data cannot stop the campaign's run."""
    for customer_id, error in failed.items():
        log.warning(
            "campaign %s run %s: the e-mail for customer %s could not be written, skipped: %s",
            campaign.name,
            run_key,
            customer_id,
            error,
        )
    if not failed:
        return chunk
    return replace(chunk, decisions=_as_skips(chunk.decisions, failed))


def unrendered_as_skips(
    campaign: Campaign,
    decisions: Sequence[planner.Decision],
    views: Iterable[planner.CustomerView],
    settings: Settings,
    renderer: render.Renderer,
    key: bytes,
    now: datetime,
) -> tuple[list[planner.Decision], dict[str, str]]:
    """What a run at ``now`` makes of these decisions when it writes their subjects: each
    send or deferral whose subject fails on the customer's data becomes a ``not_rendered``
    skip; returns the decisions and those customers' errors. ``recocamp plan`` shows this,
    so a dry run counts the customers the run will skip (it showed them as mailed)."""
    by_id = {view.customer.id: view for view in views}
    period = run_key(campaign.name, now, campaign.schedule.zone).rpartition("/")[2]
    failed: dict[str, str] = {}
    for d in decisions:
        if d.outcome not in (planner.Outcome.SEND, planner.Outcome.DEFER):
            continue
        send_key = outbox.send_key(campaign.name, d.customer_id, period)
        try:
            _email(d, by_id[d.customer_id], campaign, settings, renderer, key, now, now, send_key)
        except SubjectError as exc:
            failed[d.customer_id] = str(exc)
    return _as_skips(decisions, failed), failed


def _as_skips(
    decisions: Sequence[planner.Decision], failed: Mapping[str, str]
) -> list[planner.Decision]:
    skip = planner.Outcome.SKIP, planner.Reason.NOT_RENDERED.value
    return [
        replace(d, outcome=skip[0], reason=skip[1], offers=(), send_at=None)
        if d.customer_id in failed
        else d
        for d in decisions
    ]


def _still_sent(emails: Sequence[Queued], chunk: planner.Chunk) -> list[Queued]:
    """The composed e-mails whose decision is still a send or deferral after the recheck."""
    mailed = {
        d.customer_id
        for d in chunk.decisions
        if d.outcome in (planner.Outcome.SEND, planner.Outcome.DEFER)
    }
    return [email for email in emails if email[1] in mailed]


def _email(
    decision: planner.Decision,
    view: planner.CustomerView,
    campaign: Campaign,
    settings: Settings,
    renderer: render.Renderer,
    key: bytes,
    now: datetime,
    issued_at: datetime,
    send_key: str,
) -> Queued:
    link = compose.links(
        settings, key, decision.customer_id, campaign.name, issued_at, view.customer.email
    )
    email = compose.compose(
        decision, view, campaign, settings, renderer, link, send_key, defer_body=True
    )
    return email, decision.customer_id, decision.variant, decision.send_at or now


def _record_decisions(
    connection: Connection, key: str, chunk: Sequence[planner.Decision], now: datetime
) -> None:
    rows = [
        decisions_store.DecisionRow(
            d.campaign,
            d.customer_id,
            d.outcome.value,
            d.reason,
            d.variant,
            d.outcome is planner.Outcome.HOLDOUT,
        )
        for d in chunk
    ]
    decisions_store.record(connection, key, rows, now)
