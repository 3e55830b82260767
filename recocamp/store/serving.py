"""The statements of request-time serving (``api.offer_cache``): what an answer is built from.

Which cached answers a commit changed is ``store.notifications``' business (change log on
SQLite, LISTEN/NOTIFY on PostgreSQL).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from recocamp.domain import id_forms
from recocamp.store import queries
from recocamp.store.engine import Connection, driver_rows
from recocamp.store.queries import upsert_statement
from recocamp.store.schema import (
    UtcDateTime,
    customers,
    erasures,
    items,
    offer_lists,
    purchase_line,
    purchase_totals,
    purchases,
)


def catalogue_mark(connection: Connection) -> tuple[Any, ...]:
    """(items, last change, items in stock): changes whenever the catalogue does."""
    in_stock = sa.func.sum(sa.case((items.c.in_stock, 1), else_=0))
    query = sa.select(sa.func.count(), sa.func.max(items.c.updated_at), in_stock)
    return tuple(connection.execute(query).one())


def erasures_mark(connection: Connection) -> int:
    """The newest erasure's id (0: none): changes whenever somebody is erased, and with
    them taken out of the saved models' files (``api.offer_cache.Snapshot.scrubbed``)."""
    return int(connection.execute(sa.select(sa.func.max(erasures.c.id))).scalar() or 0)


class ProfilingFlags(NamedTuple):
    """What the objection rule (``recommender.ranking.objects_to_profiling``) reads."""

    objected_to_profiling: bool
    erased_at: datetime | None


_FLAGS = sa.select(customers.c.objected_to_profiling, customers.c.erased_at).where(
    customers.c.id == sa.bindparam("customer_id", type_=sa.String)
)  # built once: building it cost as much as running it, for every re-scored customer


def profiling_flags(connection: Connection, customer_id: str) -> ProfilingFlags | None:
    """A customer's objection and erasure; None for an unknown one. An id that is not ASCII
    is the same person in every Unicode form (``domain.id_forms``): an objection or erasure
    recorded under any of them counts (two systems' records of ``José``, one objecting)."""
    if customer_id.isascii():
        row = connection.execute(_FLAGS, {"customer_id": customer_id}).first()
        return (
            None if row is None else ProfilingFlags(bool(row.objected_to_profiling), row.erased_at)
        )
    c = customers.c
    query = sa.select(c.objected_to_profiling, c.erased_at).where(
        c.id.in_(id_forms((customer_id,)))
    )
    rows = connection.execute(query).all()
    if not rows:
        return None
    erased = [row.erased_at for row in rows if row.erased_at is not None]
    return ProfilingFlags(any(row.objected_to_profiling for row in rows), min(erased, default=None))


class CustomerLines(NamedTuple):
    """A customer's purchase lines after a known one, and what identifies all of them.

    ``lines`` and ``id_sum`` cover every line of the customer (returns and adjustments too),
    read in the same statement as the new lines: a reader that kept the lines up to some id
    can tell that none of those was removed or moved away, and that none was added below it
    (a late commit of a lower id on PostgreSQL), by adding up."""

    lines: int
    id_sum: int
    new: list[tuple[int, str, str, float, float, int, float]]  # id, item, order, epoch s,
    # revenue, counted (1: not a return, quantity and price above 0; -1: a return; else 0),
    # quantity; by time, then id


def customer_lines(
    connection: Connection, customer_id: str, after: int, since: datetime | None = None
) -> CustomerLines:
    """The customer's lines with an id above ``after`` (every line for 0) and, given
    ``since``, ordered at or after it; and the count and id sum of all their lines, in one
    statement (so one snapshot, on either database). The totals come from
    ``purchase_totals`` (one indexed row, kept by triggers in every writing transaction), not
    from a scan of all the lines; ``since`` lets the new lines be sought in the customer and
    time index rather than found by a scan of all the customer's entries (ids are not in
    it): a big buyer's purchase event used to read their thousands twice. A line above
    ``after`` but before ``since`` is missing from the new ones, and the totals tell.

    Plain driver tuples, as ``views.customer_orders`` reads them: a wholesale customer has
    thousands of lines."""
    compiled, time = _compiled(connection, since is not None)
    bind: dict[str, Any] = {"customer_id": customer_id, "after": after}
    if since is not None:
        bind["since"] = since if time is None else time(since)
    rows = driver_rows(connection, compiled, bind)
    count, id_sum = int(rows[0][0]), int(rows[0][1])
    new = [
        (id_, item, order, float(at), float(revenue), int(counted), float(quantity))
        for _, _, id_, item, order, at, revenue, counted, quantity in rows
        if id_ is not None
    ]
    new.sort(key=_time_then_id)  # as the index reads them already: a check, nearly free
    return CustomerLines(count, id_sum, new)


def _time_then_id(line: tuple[int, str, str, float, float, int, float]) -> tuple[float, int]:
    return line[3], line[0]


# (dialect name, bounded in time) → the compiled statement of customer_lines, and the bind
# processor of ``ordered_at`` (driver_rows binds values as the driver takes them)
_COMPILED: dict[tuple[str, bool], tuple[Any, Any]] = {}


def _compiled(connection: Connection, bounded: bool) -> tuple[Any, Any]:
    key = (connection.dialect.name, bounded)
    found = _COMPILED.get(key)
    if found is None:
        dialect = connection.dialect
        statement = _lines_statement(connection, bounded).compile(dialect=dialect)
        time = purchases.c.ordered_at.type.dialect_impl(dialect).bind_processor(dialect)
        found = _COMPILED[key] = (statement, time)
    return found


def _lines_statement(connection: Connection, bounded: bool) -> sa.Select[Any]:
    p = purchases.c
    customer = sa.bindparam("customer_id", type_=sa.String)
    t = purchase_totals.c  # one row kept by migration 0016's triggers: no scan of every line
    totals = (
        sa.select(
            sa.func.coalesce(sa.func.max(t.lines), 0).label("count"),
            sa.func.coalesce(sa.func.max(t.id_sum), 0).label("ids"),
        )
        .where(t.customer_id == customer)
        .subquery("totals")
    )
    counted = sa.case(
        (purchase_line(), 1),
        (p.is_return.is_(True), -1),
        else_=0,
    )
    new = sa.select(
        p.id,
        p.item_id,
        p.order_id,
        queries.epoch_seconds(connection, p.ordered_at).label("at"),
        (p.quantity * p.unit_price).label("revenue"),
        counted.label("counted"),
        p.quantity,
    ).where(p.customer_id == customer, p.id > sa.bindparam("after", type_=sa.BigInteger))
    if bounded:
        new = new.where(p.ordered_at >= sa.bindparam("since"))
    lines = new.subquery("new")
    return sa.select(
        totals.c.count,
        totals.c.ids,
        lines.c.id,
        lines.c.item_id,
        lines.c.order_id,
        lines.c.at,
        lines.c.revenue,
        lines.c.counted,
        lines.c.quantity,
    ).select_from(totals.outerjoin(lines, sa.true()))


class SharedList(NamedTuple):
    """A personal list re-scored by one serving process, for the others (``offer_lists``):
    valid for the model ``model_version``, the settings ``shaped_by`` and the history whose
    lines had these totals. ``padding``: the model's ranking without the customer's items
    that pads a short discover list, from the same scores (None: not written)."""

    model_version: str
    shaped_by: str
    lines: int
    id_sum: int
    last_id: int
    items: list[tuple[str, float]]
    padding: list[tuple[str, float]] | None = None

    def identity(self) -> list[Any]:
        """What the padding is stored with: a row rewritten by a process that does not know
        the column (a rolling upgrade) keeps the old padding under a new identity."""
        return [self.model_version, self.shaped_by, self.lines, self.id_sum, self.last_id]


_SHARED = sa.select(
    offer_lists.c.model_version,
    offer_lists.c.shaped_by,
    offer_lists.c.lines,
    offer_lists.c.id_sum,
    offer_lists.c.last_id,
    offer_lists.c["items"],
    offer_lists.c.padding,
).where(offer_lists.c.customer_id == sa.bindparam("customer_id", type_=sa.String))


def shared_list(
    connection: Connection, customer_id: str, identity: list[Any] | None = None
) -> SharedList | None:
    """The customer's shared re-scored list, whatever model and history it was computed
    for, or None; given ``identity`` (:meth:`SharedList.identity`), only a list of that
    identity (the JSON of another is not decoded: the buyer's own process finds the list
    of their previous purchase)."""
    row = connection.execute(_SHARED, {"customer_id": customer_id}).first()
    if row is None:
        return None
    found = SharedList(
        str(row.model_version),
        str(row.shaped_by),
        int(row.lines),
        int(row.id_sum),
        int(row.last_id),
        [],
    )
    if identity is not None and found.identity() != identity:
        return None
    found = found._replace(items=_entries(json.loads(row.items)))
    padding = None if row.padding is None else json.loads(row.padding)
    if padding is not None and padding["of"] == found.identity():
        found = found._replace(padding=_entries(padding["ranked"]))
    return found


def _entries(ranked: list[list[Any]]) -> list[tuple[str, float]]:
    return [(str(item), float(score)) for item, score in ranked]


def share_list(connection: Connection, customer_id: str, shared: SharedList, now: datetime) -> bool:
    """Write (or replace) the customer's shared re-scored list, only while their lines still
    have its totals and they have not objected to profiling nor been erased: a list computed
    before an erasure or objection committed is not written after it. On PostgreSQL the
    totals row is read ``FOR SHARE``: an erasure unlinking the lines meanwhile is waited for
    (and then no row matches). Whether it was written."""
    values = {
        "customer_id": customer_id,
        "model_version": shared.model_version,
        "shaped_by": shared.shaped_by,
        "lines": shared.lines,
        "id_sum": shared.id_sum,
        "last_id": shared.last_id,
        "items": json.dumps(shared.items, separators=(",", ":")),
        "computed_at": now,
        "padding": None
        if shared.padding is None
        else json.dumps({"of": shared.identity(), "ranked": shared.padding}, separators=(",", ":")),
    }
    statement = _share_statement(connection)
    return connection.execute(statement, values).first() is not None


_SHARE: dict[str, Any] = {}  # dialect name → the statement of share_list (built once)


def _share_statement(connection: Connection) -> Any:
    found = _SHARE.get(connection.dialect.name)
    if found is not None:
        return found
    t, c = purchase_totals.c, customers.c
    customer = sa.bindparam("customer_id", type_=sa.String)
    refused = sa.exists().where(
        c.id == customer, sa.or_(c.objected_to_profiling, c.erased_at.is_not(None))
    )
    source = (
        sa.select(
            t.customer_id,
            sa.bindparam("model_version", type_=sa.String),
            sa.bindparam("shaped_by", type_=sa.String),
            t.lines,
            t.id_sum,
            sa.bindparam("last_id", type_=sa.BigInteger),
            sa.bindparam("items", type_=sa.Text),
            sa.bindparam("computed_at", type_=UtcDateTime),
            sa.bindparam("padding", type_=sa.Text),
        )
        .where(
            t.customer_id == customer,
            t.lines == sa.bindparam("lines", type_=sa.BigInteger),
            t.id_sum == sa.bindparam("id_sum", type_=sa.BigInteger),
            ~refused,
        )
        .with_for_update(read=True, of=purchase_totals)
    )
    names = [
        "customer_id",
        "model_version",
        "shaped_by",
        "lines",
        "id_sum",
        "last_id",
        "items",
        "computed_at",
        "padding",
    ]
    insert = upsert_statement(connection, offer_lists).from_select(names, source)
    changed = {name: insert.excluded[name] for name in names[1:]}
    upsert = insert.on_conflict_do_update(index_elements=["customer_id"], set_=changed)
    found = _SHARE[connection.dialect.name] = upsert.returning(offer_lists.c.customer_id)
    return found
