"""Engagement events (reviews): written once per event id, repeats told from conflicts.

The shop reports an event with its own id (``POST /v1/events/reviews``); a retry of the same
request must change nothing, and the same id with another customer or time is a mistake the
shop must hear about, not a silent overwrite. :func:`record` inserts with ``ON CONFLICT DO
NOTHING`` on ``(kind, event_id)`` and compares what is stored when the row was there already,
so two requests at the same time write the event once (the second waits for the first's
commit on PostgreSQL's unique key, or for SQLite's write lock). The planner's counts are read
with the rest of its rows (``views.planning_rows``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa

from recocamp.store.queries import upsert_statement
from recocamp.store.schema import engagement_events


class Recorded(StrEnum):
    """What :func:`record` did: wrote the event, found it stored as given, or found it
    stored with another customer or time (nothing written)."""

    NEW = "new"
    REPEAT = "repeat"
    CONFLICT = "conflict"


def record(
    connection: sa.Connection,
    kind: str,
    event_id: str,
    customer_id: str,
    occurred_at: datetime,
    now: datetime,
) -> Recorded:
    """Store one event, idempotent on ``(kind, event_id)``; the caller's transaction."""
    e = engagement_events.c
    statement = (
        upsert_statement(connection, engagement_events)
        .values(
            kind=kind,
            event_id=event_id,
            customer_id=customer_id,
            occurred_at=occurred_at,
            recorded_at=now,
        )
        .on_conflict_do_nothing(index_elements=["kind", "event_id"])
        .returning(e.event_id)
    )
    if connection.execute(statement).first() is not None:
        return Recorded.NEW
    stored = connection.execute(
        sa.select(e.customer_id, e.occurred_at).where(e.kind == kind, e.event_id == event_id)
    ).one()
    same = stored.customer_id == customer_id and stored.occurred_at == occurred_at
    return Recorded.REPEAT if same else Recorded.CONFLICT
