"""The statements of request-time serving (``api.offer_cache``): what an answer is built from.

Which cached answers a commit changed is ``store.notifications``' business (change log on
SQLite, LISTEN/NOTIFY on PostgreSQL).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from recocamp.store.engine import Connection
from recocamp.store.schema import customers, items


def catalogue_mark(connection: Connection) -> tuple[Any, ...]:
    """(items, last change, items in stock): changes whenever the catalogue does."""
    in_stock = sa.func.sum(sa.case((items.c.in_stock, 1), else_=0))
    query = sa.select(sa.func.count(), sa.func.max(items.c.updated_at), in_stock)
    return tuple(connection.execute(query).one())


class ProfilingFlags(NamedTuple):
    """What the objection rule (``recommender.ranking.objects_to_profiling``) reads."""

    objected_to_profiling: bool
    erased_at: datetime | None


def profiling_flags(connection: Connection, customer_id: str) -> ProfilingFlags | None:
    """A customer's objection and erasure; None for an unknown one."""
    query = sa.select(customers.c.objected_to_profiling, customers.c.erased_at).where(
        customers.c.id == customer_id
    )
    row = connection.execute(query).first()
    return None if row is None else ProfilingFlags(bool(row.objected_to_profiling), row.erased_at)
