"""The statements of request-time serving (``api.offer_cache``): what an answer is built from.

Which cached answers a commit changed is ``store.notifications``' business (change log on
SQLite, LISTEN/NOTIFY on PostgreSQL).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from recocamp.store import queries
from recocamp.store.engine import Connection, driver_rows
from recocamp.store.schema import customers, items, purchases


def catalogue_mark(connection: Connection) -> tuple[Any, ...]:
    """(items, last change, items in stock): changes whenever the catalogue does."""
    in_stock = sa.func.sum(sa.case((items.c.in_stock, 1), else_=0))
    query = sa.select(sa.func.count(), sa.func.max(items.c.updated_at), in_stock)
    return tuple(connection.execute(query).one())


class ProfilingFlags(NamedTuple):
    """What the objection rule (``recommender.ranking.objects_to_profiling``) reads."""

    objected_to_profiling: bool
    erased_at: datetime | None


_FLAGS = sa.select(customers.c.objected_to_profiling, customers.c.erased_at).where(
    customers.c.id == sa.bindparam("customer_id", type_=sa.String)
)  # built once: building it cost as much as running it, for every re-scored customer


def profiling_flags(connection: Connection, customer_id: str) -> ProfilingFlags | None:
    """A customer's objection and erasure; None for an unknown one."""
    row = connection.execute(_FLAGS, {"customer_id": customer_id}).first()
    return None if row is None else ProfilingFlags(bool(row.objected_to_profiling), row.erased_at)


class CustomerLines(NamedTuple):
    """A customer's purchase lines after a known one, and what identifies all of them.

    ``lines`` and ``id_sum`` cover every line of the customer (returns and adjustments too),
    read in the same statement as the new lines: a reader that kept the lines up to some id
    can tell that none of those was removed or moved away, and that none was added below it
    (a late commit of a lower id on PostgreSQL), by adding up."""

    lines: int
    id_sum: int
    new: list[tuple[int, str, str, float, float, int]]  # id, item, order, epoch s, revenue,
    # counted (1: not a return, quantity and price above 0; else 0); by time, then id


def customer_lines(connection: Connection, customer_id: str, after: int) -> CustomerLines:
    """The customer's lines with an id above ``after`` (every line for 0), and the count and
    id sum of all their lines, in one statement (so one snapshot, on either database).

    Plain driver tuples, as ``views.customer_orders`` reads them: a wholesale customer has
    thousands of lines."""
    bind = {"customer_id": customer_id, "after": after}
    rows = driver_rows(connection, _compiled(connection), bind)
    count, id_sum = int(rows[0][0]), int(rows[0][1])
    new = [
        (id_, item, order, float(at), float(revenue), counted)
        for _, _, id_, item, order, at, revenue, counted in rows
        if id_ is not None
    ]
    new.sort(key=_time_then_id)  # as the index reads them already: a check, nearly free
    return CustomerLines(count, id_sum, new)


def _time_then_id(line: tuple[int, str, str, float, float, int]) -> tuple[float, int]:
    return line[3], line[0]


_COMPILED: dict[str, Any] = {}  # dialect name → the compiled statement of customer_lines


def _compiled(connection: Connection) -> Any:
    found = _COMPILED.get(connection.dialect.name)
    if found is None:
        found = _COMPILED[connection.dialect.name] = _lines_statement(connection).compile(
            dialect=connection.dialect
        )
    return found


def _lines_statement(connection: Connection) -> sa.Select[Any]:
    p = purchases.c
    customer = sa.bindparam("customer_id", type_=sa.String)
    totals = (
        sa.select(
            sa.func.count().label("count"), sa.func.coalesce(sa.func.sum(p.id), 0).label("ids")
        )
        .where(p.customer_id == customer)
        .subquery("totals")
    )
    counted = sa.case(
        (sa.and_(p.is_return.is_(False), p.quantity > 0, p.unit_price > 0), 1), else_=0
    )
    new = (
        sa.select(
            p.id,
            p.item_id,
            p.order_id,
            queries.epoch_seconds(connection, p.ordered_at).label("at"),
            (p.quantity * p.unit_price).label("revenue"),
            counted.label("counted"),
        )
        .where(p.customer_id == customer, p.id > sa.bindparam("after", type_=sa.BigInteger))
        .subquery("new")
    )
    return sa.select(
        totals.c.count,
        totals.c.ids,
        new.c.id,
        new.c.item_id,
        new.c.order_id,
        new.c.at,
        new.c.revenue,
        new.c.counted,
    ).select_from(totals.outerjoin(new, sa.true()))
