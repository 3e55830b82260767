"""Planner decisions: one row per run key and customer, the record of every campaign run.

A re-run of the same slot (or a run resumed after a crash) records nothing twice: the
decision already there stays, with its original instant, unless it was a skip and the later
run contacts the customer (an e-mail, a deferral, a holdout): a later run of the day mails
the customers newly matched, and their morning's ``no_consent`` or ``capped_24h`` was no
longer true (nor did a holdout decided later count as a contact, or in the uplift).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from recocamp.store.queries import upsert_statement
from recocamp.store.schema import decisions


@dataclass(frozen=True, slots=True)
class DecisionRow:
    """One planner decision as the store keeps it."""

    campaign: str
    customer_id: str
    outcome: str
    reason: str
    variant: str | None
    holdout: bool


def record(
    connection: sa.Connection, run_key: str, decided: Sequence[DecisionRow], now: datetime
) -> None:
    """Record ``decided`` under ``run_key`` at ``now``; decisions already recorded stay,
    but a skip that this run turns into a contact (see the module's docstring)."""
    rows = [
        {
            "run_key": run_key,
            "campaign": d.campaign,
            "customer_id": d.customer_id,
            "outcome": d.outcome,
            "reason": d.reason,
            "variant": d.variant,
            "holdout": d.holdout,
            "decided_at": now,
        }
        for d in decided
    ]
    if not rows:  # a chunk whose customers were all erased meanwhile: nothing to record
        return
    insert = upsert_statement(connection, decisions)
    later = insert.excluded
    statement = insert.on_conflict_do_update(
        index_elements=["run_key", "customer_id"],
        set_={
            name: later[name] for name in ("outcome", "reason", "variant", "holdout", "decided_at")
        },
        where=sa.and_(decisions.c.outcome == SKIP, later.outcome != SKIP),
    )
    connection.execute(statement, rows)


SKIP = "skip"  # planner.Outcome.SKIP: the store imports nothing of the planner


def held_out(connection: sa.Connection, run_key: str, customer_ids: Sequence[str]) -> set[str]:
    """Of ``customer_ids``, those recorded as held out in the run ``run_key``: a later run
    of the same day must not mail them, whatever it decides (a lowered ``holdout_percent``)."""
    found: set[str] = set()
    d = decisions.c
    for start in range(0, len(customer_ids), IN_BATCH):
        query = sa.select(d.customer_id).where(
            d.run_key == run_key,
            d.holdout.is_(True),
            d.customer_id.in_(customer_ids[start : start + IN_BATCH]),
        )
        found.update(connection.execute(query).scalars())
    return found


IN_BATCH = 5000  # ids per IN (SQLite allows 32,766 parameters; a chunk holds up to 50,000)
