"""Reads and writes of measurement: touches (sends and holdouts), skip reasons, KPI and
segment snapshots, feedback answers and stored reports. Parameterised SQLAlchemy Core only.

A *treated* touch is an outbox row, whatever became of it (intent to treat: see
``_assigned``); a *holdout* touch is a ``decisions`` row with outcome ``holdout``. Both are
timed at their campaign run's decision instant (``outbox.created_at`` equals
``decisions.decided_at`` of the run): an e-mail deferred by quiet hours or retried goes
out a little later, but both groups' windows open at the same moment of the run, so neither
is favoured (and a run simulated ``--as-of`` a past instant is measured at that instant).
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa

from recocamp.domain import Touch, composed, id_forms
from recocamp.store.locks import lock_key
from recocamp.store.queries import UNPROFILED, upsert_statement, write_lock
from recocamp.store.schema import (
    customers,
    decisions,
    feedback,
    kpi_snapshots,
    outbox,
    reports,
    segment_snapshots,
)

TREATED_STATES = ("sent", "delivered", "bounced")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def unsegmented(connection: sa.Connection) -> frozenset[str]:
    """Customers no RFM segment counts: those who objected to profiling (placing them in
    segments such as ``at_risk`` is the profiling they objected to) or were erased, in every
    Unicode form of their id (``domain.id_forms``: lines under another form are theirs)."""
    query = sa.select(customers.c.id).where(UNPROFILED)
    return frozenset(id_forms(str(found) for found in connection.execute(query).scalars()))


KPI_COLUMNS = (
    "orders",
    "customers",
    "guest_orders",
    "purchase_frequency",
    "average_order_value",
    "repeat_purchase_rate",
    "guest_checkout_rate",
    "churn_rate",
    "clv",
)
REPORTS_KEPT = 30


def _held(customer_id: sa.ColumnElement[Any], erased: bool) -> sa.ColumnElement[bool]:
    """The touch's customer is still held (not erased), or is not (``erased``)."""
    c = customers.c
    held = sa.exists().where(c.id == customer_id, c.erased_at.is_(None))
    return sa.not_(held) if erased else held


def _decided() -> sa.ColumnElement[bool]:
    """The e-mail's run still has its decisions: it is not older than its campaign's oldest
    decision kept. Decisions (the holdout among them) are deleted after ``[privacy]
    decisions_days``, e-mails are kept: a run older than that has lost its holdout and kept
    its mailed customers."""
    o, d = outbox.c, decisions.c
    first = sa.select(sa.func.min(d.decided_at)).where(d.campaign == o.campaign)
    return o.created_at >= first.scalar_subquery()


def _assigned(start: datetime, end: datetime) -> list[sa.ColumnElement[bool]]:
    """The e-mails of the runs decided in ``[start, end)``, in every state: intent to treat.
    A run queues an e-mail for each customer it assigns to the mailed arm, as it records a
    ``holdout`` decision for each it holds out, and a decision is never withdrawn: a
    held-out customer who later unsubscribes, pauses e-mails, changes address, is
    suppressed or objects to profiling stays in the holdout. So the mailed customer who did
    the same stays mailed, whether the e-mail was then cancelled at claim (opted out,
    paused, moved, suppressed, objected, re-based, bought every offer), still waits (the
    campaign paused by ``recocamp outbox pause``) or was refused by the provider. Counting
    only what went out dropped those customers from one group alone, and they are not
    dropped at random (who opts out, who buys before the mail goes out): the uplift was
    biased. Erased customers are left out of both groups (``_held``)."""
    o = outbox.c
    return [o.created_at >= start, o.created_at < end]


def touches(
    connection: sa.Connection, start: datetime, end: datetime, *, erased: bool = False
) -> list[Touch]:
    """E-mails (``_assigned``) and holdout decisions of the runs decided in ``[start, end)``, of
    customers still held (``erased``: of customers erased since, to count them), and of runs
    whose decisions are kept (see ``_decided``; :func:`sends_left_out` counts the others).
    An erased customer's orders lost their customer (they are guest lines now) and the touch
    names a stand-in: counted, it was a unit that never ordered, and every buyer who asked
    to be erased took a conversion off their group for good. Their outcome is unknown, so
    they are no unit of either group."""
    o, d = outbox.c, decisions.c
    sent = sa.select(o.campaign, o.customer_id, o.created_at, o.variant, o.send_key).where(
        *_assigned(start, end), _held(o.customer_id, erased), _decided()
    )
    # ids composed (``domain.composed``): a run of a version before ids were composed
    # recorded 'Jose' + U+0301, today's 'José'; one customer, one cluster of touches
    found = [
        Touch(r.campaign, composed(r.customer_id), r.created_at, False, r.variant, r.send_key)
        for r in connection.execute(sent)
    ]
    held = sa.select(d.campaign, d.customer_id, d.decided_at, d.run_key).where(
        d.outcome == "holdout",
        d.decided_at >= start,
        d.decided_at < end,
        _held(d.customer_id, erased),
    )
    found += [
        Touch(r.campaign, composed(r.customer_id), r.decided_at, True, None, r.run_key)
        for r in connection.execute(held)
    ]
    return found


def earlier_arms(
    connection: sa.Connection, before: datetime, customers: Collection[str]
) -> list[Touch]:
    """Each campaign's arms (mailed in which variant, held out) before ``before`` of the
    ``customers`` (those with a touch in the report's window, in every Unicode form of
    their id), one touch per arm at its first instant: a customer mailed before the report's
    window and held out inside it is a switch (``attribution.uplifts``) as one inside it is.
    Every e-mail counts (``_assigned``), whether or not its run's decisions are kept.

    Only the window's customers: the arms of the others decide nothing (a switch is one of
    the report's units), and grouping every e-mail and holdout decision of the whole history
    took 1.85 s CPU per report on a store of a million decisions, growing with every run
    (``benchmarks/report_arms.py``). The e-mails are read by the index on ``(customer_id,
    created_at)``, the holdouts by the one on ``(holdout, decided_at)``."""
    o, d = outbox.c, decisions.c
    ids = sorted(id_forms(customers))
    found: list[Touch] = []
    for start in range(0, len(ids), ARMS_BATCH):
        sent = (
            sa.select(o.campaign, o.customer_id, o.variant, sa.func.min(o.created_at))
            .where(o.customer_id.in_(ids[start : start + ARMS_BATCH]), *_assigned(EPOCH, before))
            .group_by(o.campaign, o.customer_id, o.variant)
        )
        found += [
            Touch(r[0], composed(r[1]), r[3], False, r[2], "") for r in connection.execute(sent)
        ]
    # every holdout before: by its index, without a GROUP BY (which took SQLite to the
    # campaign index and a scan of every decision), kept for the customers asked of
    held = sa.select(d.campaign, d.customer_id, d.decided_at).where(
        d.holdout.is_(True), d.outcome == "holdout", d.decided_at < before
    )
    wanted, first = set(ids), dict[tuple[str, str], datetime]()
    for campaign, customer_id, at in connection.execute(held):
        if customer_id in wanted:
            key = (campaign, composed(customer_id))
            first[key] = min(first.get(key, at), at)
    found += [Touch(c, customer_id, at, True, None, "") for (c, customer_id), at in first.items()]
    return found


ARMS_BATCH = 5000  # ids per IN (SQLite allows 32,766 parameters)


def sends_left_out(connection: sa.Connection, start: datetime, end: datetime) -> int:
    """E-mails (``_assigned``) of runs in ``[start, end)`` whose decisions were deleted since (a
    run's decisions are the holdout it is measured against)."""
    query = (
        sa.select(sa.func.count())
        .select_from(outbox)
        .where(*_assigned(start, end), sa.not_(sa.func.coalesce(_decided(), False)))
    )
    return int(connection.execute(query).scalar_one())


def decision_reasons(
    connection: sa.Connection, start: datetime, end: datetime
) -> list[tuple[str, str, str, int]]:
    """``(campaign, outcome, reason, decisions)`` of the runs decided in ``[start, end)``."""
    d = decisions.c
    query = (
        sa.select(d.campaign, d.outcome, d.reason, sa.func.count())
        .where(d.decided_at >= start, d.decided_at < end)
        .group_by(d.campaign, d.outcome, d.reason)
        .order_by(d.campaign, sa.func.count().desc(), d.reason)
    )
    return [(r[0], r[1], r[2], int(r[3])) for r in connection.execute(query)]


# --- snapshots ---------------------------------------------------------------------------


def snapshot_keys(connection: sa.Connection, first: date, last: date) -> set[tuple[date, int]]:
    """``(day, window)`` pairs already snapshotted between ``first`` and ``last``."""
    k = kpi_snapshots.c
    query = sa.select(k.day, k.window_days).where(k.day >= first, k.day <= last)
    return {(row[0], int(row[1])) for row in connection.execute(query)}


def newest_snapshot_day(connection: sa.Connection, until: date) -> date | None:
    """The newest day with a KPI snapshot at or before ``until`` (None: none yet)."""
    k = kpi_snapshots.c
    day = connection.execute(sa.select(sa.func.max(k.day)).where(k.day <= until)).scalar_one()
    return day  # type: ignore[no-any-return]


def segment_days(connection: sa.Connection, first: date, last: date) -> set[date]:
    s = segment_snapshots.c
    query = sa.select(s.day).where(s.day >= first, s.day <= last).distinct()
    return set(connection.execute(query).scalars())


def write_snapshots(
    connection: sa.Connection,
    kpi_rows: Sequence[dict[str, Any]],
    segment_rows: Sequence[dict[str, Any]],
    replace: Collection[date] = (),
) -> int:
    """Insert snapshot rows (existing days are kept); the days in ``replace`` lose all their
    rows first, also those the new rows do not name (a day whose segments are now empty: its
    only customer objected since); returns the rows written."""
    written = 0
    for table, keys, rows in (
        (kpi_snapshots, ("day", "window_days"), kpi_rows),
        (segment_snapshots, ("day", "segment"), segment_rows),
    ):
        if replace:
            connection.execute(sa.delete(table).where(table.c.day.in_(sorted(replace))))
        if not rows:
            continue
        statement = upsert_statement(connection, table).on_conflict_do_nothing(
            index_elements=list(keys)
        )
        if connection.dialect.name == "sqlite":
            written += int(connection.execute(statement, list(rows)).rowcount)
        else:
            returning = statement.returning(table.c.day)
            written += len(connection.execute(returning, list(rows)).all())
    return written


def kpi_history(
    connection: sa.Connection, first: date, last: date
) -> dict[tuple[date, int], dict[str, float | None]]:
    """Snapshots keyed by ``(day, window)``: KPI name → value."""
    k = kpi_snapshots.c
    query = sa.select(kpi_snapshots).where(k.day >= first, k.day <= last).order_by(k.day)
    return {
        (row.day, int(row.window_days)): {
            name: _number(name, getattr(row, name)) for name in KPI_COLUMNS
        }
        for row in connection.execute(query)
    }


def segment_history(
    connection: sa.Connection, first: date, last: date
) -> dict[date, dict[str, int]]:
    s = segment_snapshots.c
    query = sa.select(s.day, s.segment, s.customers).where(s.day >= first, s.day <= last)
    found: dict[date, dict[str, int]] = {}
    for day, segment, count in connection.execute(query.order_by(s.day, s.segment)):
        found.setdefault(day, {})[segment] = int(count)
    return found


COUNTS = {c.name for c in kpi_snapshots.columns if isinstance(c.type, sa.Integer)}  # rest: Float


def _number(name: str, value: Any) -> float | None:
    if value is None:
        return None
    return int(value) if name in COUNTS else float(value)


# --- feedback ----------------------------------------------------------------------------


def record_feedback(
    connection: sa.Connection,
    survey: str,
    campaign: str,
    customer_id: str,
    score: int,
    comment: str | None,
    now: datetime,
) -> tuple[bool, int]:
    """Store an answer unless the customer answered this survey already; returns whether it
    was new and the score that stands (the first answer)."""
    statement = upsert_statement(connection, feedback).on_conflict_do_nothing(
        index_elements=["survey", "customer_id"]
    )
    values = {
        "survey": survey,
        "campaign": campaign,
        "customer_id": customer_id,
        "score": score,
        "comment": comment,
        "answered_at": now,
    }
    inserted = connection.execute(statement.values(**values).returning(feedback.c.id)).first()
    new = inserted is not None  # RETURNING: rowcount of a conflicting insert differs by driver
    query = sa.select(feedback.c.score).where(
        feedback.c.survey == survey, feedback.c.customer_id == customer_id
    )
    return new, int(connection.execute(query).scalar_one())


def answers(
    connection: sa.Connection, start: datetime, end: datetime
) -> list[tuple[str, str, int, datetime]]:
    """``(survey, campaign, score, answered_at)`` of answers in ``[start, end)``; no comments,
    no customer ids: the report shows aggregates only."""
    f = feedback.c
    query = (
        sa.select(f.survey, f.campaign, f.score, f.answered_at)
        .where(f.answered_at >= start, f.answered_at < end)
        .order_by(f.answered_at)
    )
    return [(r[0], r[1], int(r[2]), r[3]) for r in connection.execute(query)]


def surveys_sent(connection: sa.Connection, campaigns: Iterable[str]) -> Counter[str]:
    """E-mails the provider accepted per survey (``campaign/period`` of the send key)."""
    names = sorted(set(campaigns))
    if not names:
        return Counter()
    o = outbox.c
    query = sa.select(o.campaign, o.send_key).where(
        o.campaign.in_(names), o.state.in_(TREATED_STATES)
    )
    return Counter(
        f"{campaign}/{key.rpartition('/')[2]}" for campaign, key in connection.execute(query)
    )


def customer_feedback(connection: sa.Connection, customer_id: str) -> list[dict[str, Any]]:
    """A customer's answers (for a data export)."""
    f = feedback.c
    query = sa.select(f.survey, f.score, f.comment, f.answered_at).where(
        f.customer_id == customer_id
    )
    return [
        {
            "survey": r.survey,
            "score": r.score,
            "comment": r.comment,
            "answered_at": r.answered_at.isoformat(),
        }
        for r in connection.execute(query.order_by(f.answered_at))
    ]


def erase_feedback(connection: sa.Connection, customer_id: str) -> int:
    """Delete a customer's answers (erasure); returns how many there were."""
    result = connection.execute(sa.delete(feedback).where(feedback.c.customer_id == customer_id))
    return int(result.rowcount)


# --- reports -----------------------------------------------------------------------------


def store_report(
    connection: sa.Connection,
    html: str,
    summary: dict[str, Any],
    as_of: datetime,
    now: datetime,
    keep: int = REPORTS_KEPT,
) -> int:
    """Keep a rendered report (zlib) and drop all but the newest ``keep``; returns its id."""
    body = zlib.compress(html.encode(), 6)
    result = connection.execute(
        sa.insert(reports).values(created_at=now, as_of=as_of, html=body, summary=summary)
    )
    key = result.inserted_primary_key
    assert key is not None
    newest = sa.select(reports.c.id).order_by(reports.c.id.desc()).limit(keep)
    connection.execute(sa.delete(reports).where(reports.c.id.not_in(newest)))
    return int(key[0])


def store_first_report(
    connection: sa.Connection, html: str, summary: dict[str, Any], as_of: datetime, now: datetime
) -> bool:
    """Keep ``html`` as the first report, unless one is stored already (another process's
    first report, or ``recocamp report``'s); whether it was kept. Under the store's lock
    (SQLite's write lock, PostgreSQL's advisory lock of this transaction), so two processes
    that both found no report store one: a lock in each process left both to store theirs,
    and answer with different reports."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(FIRST_REPORT_LOCK)))
    else:
        write_lock(connection)
    if connection.execute(sa.select(reports.c.id).limit(1)).first() is not None:
        return False
    store_report(connection, html, summary, as_of, now)
    return True


FIRST_REPORT_LOCK = lock_key("first-report")


def latest_report(connection: sa.Connection) -> tuple[int, datetime, datetime, str] | None:
    """``(id, created_at, as_of, html)`` of the newest stored report."""
    row = connection.execute(sa.select(reports).order_by(reports.c.id.desc()).limit(1)).first()
    if row is None:
        return None
    return int(row.id), row.created_at, row.as_of, zlib.decompress(row.html).decode()
