"""Every read and write of the foundation tables, as parameterised SQLAlchemy Core.

Functions take a ``Connection`` so the caller owns the transaction: an import writes its
rows and its ``import_runs`` record in one transaction, or nothing at all.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from recocamp.domain import Customer, Item, Purchase, composed, id_forms, order_digest
from recocamp.errors import OrderConflictError
from recocamp.store.schema import (
    audit_log,
    customers,
    forecast_checkpoints,
    forecasts,
    import_runs,
    items,
    offer_lists,
    orders,
    purchase_line,
    purchases,
    recommendations,
    suppressions,
)

log = logging.getLogger(__name__)

# numpy is imported where training lines are read, not here: a delivering process imports
# the store for the outbox and never loads it (0.05 s of its start)
if TYPE_CHECKING:
    pass

CHUNK = 5000


def upsert_statement(connection: sa.Connection, table: sa.Table) -> Any:
    """The dialect's INSERT, which knows ON CONFLICT (both SQLite and PostgreSQL do): the
    store's modules build their inserts that skip or update existing rows on it."""
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)


def suppression_insert(connection: sa.Connection) -> Any:
    """The INSERT of suppressions (``email_hash``, ``reason``, ``source``, ``created_at``):
    an address suppressed already keeps its first reason, except an unsubscribe's, which a
    bounce, a complaint or a rejection replaces. A re-subscription lifts unsubscribes only
    (``profiles.resubscribe``): an address that complained or bounced after it had
    unsubscribed kept "unsubscribed", and was mailed again once its customer re-subscribed."""
    insert = upsert_statement(connection, suppressions)
    return insert.on_conflict_do_update(
        index_elements=["email_hash"],
        set_={"reason": insert.excluded.reason, "source": insert.excluded.source},
        where=sa.and_(
            suppressions.c.reason == UNSUBSCRIBED, insert.excluded.reason != UNSUBSCRIBED
        ),
    )


UNSUBSCRIBED = "unsubscribed"  # the one suppression reason a re-subscription lifts


def _chunks(rows: Sequence[dict[str, Any]]) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), CHUNK):
        yield rows[start : start + CHUNK]


def count(connection: sa.Connection, table: sa.Table) -> int:
    return int(connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


@dataclass(frozen=True, slots=True)
class StoredOrders:
    """What :func:`store_orders` did: orders written whole, orders already stored with the
    same lines (left as they were), and how many lines were written or were repeats."""

    new: list[str]
    repeated: list[str]
    lines_written: int
    lines_repeated: int


def write_lock(connection: sa.Connection) -> None:
    """Take SQLite's write lock now, before anything is read, so what this transaction reads
    cannot change before it writes (PostgreSQL: row locks and unique keys do this)."""
    if connection.dialect.name != "sqlite":
        return
    raw = connection.connection.dbapi_connection
    if raw is not None and not raw.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def store_orders(
    connection: sa.Connection,
    rows: Sequence[Purchase],
    import_run_id: int | None,
    progress: Callable[[int], None] | None = None,
    order_ids: Iterable[str] = (),
) -> StoredOrders:
    """Write whole orders, each exactly once, whoever else writes the same order at the
    same time (two requests, two imports of overlapping files).

    The unit is the order: its ``orders`` row is inserted first (ON CONFLICT DO NOTHING);
    the writer whose insert wins writes all of its lines in the same transaction. Any other
    writer of that order finds the row and compares digests: the same lines are a repeat
    (reported, nothing written), other lines raise :class:`OrderConflictError` naming the
    orders, and the caller's transaction writes nothing. ``order_ids`` names orders that are
    claimed even though none of their lines is stored (every line an adjustment).
    """
    write_lock(connection)
    by_order: dict[str, list[Purchase]] = defaultdict(list)
    for row in rows:
        by_order[row.order_id].append(row)
    for order_id in order_ids:
        by_order.setdefault(order_id, [])
    digests = {order_id: order_digest(lines) for order_id, lines in by_order.items()}
    won = claim_orders(connection, digests)
    lost = sorted(set(digests) - won)
    stored = stored_digests(connection, lost)
    conflicts = [order_id for order_id in lost if stored.get(order_id) != digests[order_id]]
    if conflicts:
        raise OrderConflictError(conflicts)
    fresh = [row for order_id in sorted(won) for row in by_order[order_id]]
    written = _insert_lines(connection, fresh, import_run_id, progress)
    if progress is not None and len(rows) > written:
        progress(len(rows) - written)
    return StoredOrders(
        new=sorted(won), repeated=lost, lines_written=written, lines_repeated=len(rows) - written
    )


def claim_orders(connection: sa.Connection, digests: dict[str, str]) -> set[str]:
    """Insert the orders' rows in id order (two writers lock them in the same order: no
    deadlock); returns the ids this transaction inserted."""
    statement = upsert_statement(connection, orders).on_conflict_do_nothing(
        index_elements=["order_id"]
    )
    statement = statement.returning(orders.c.order_id)
    values = [{"order_id": key, "content_sha256": digests[key]} for key in sorted(digests)]
    won: set[str] = set()
    for chunk in _chunks(values):
        won.update(connection.execute(statement, chunk).scalars())
    return won


def stored_digests(connection: sa.Connection, order_ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for start in range(0, len(order_ids), CHUNK):
        query = sa.select(orders.c.order_id, orders.c.content_sha256).where(
            orders.c.order_id.in_(order_ids[start : start + CHUNK])
        )
        found.update((row[0], row[1]) for row in connection.execute(query))
    return found


def customer_conflicts(connection: sa.Connection, customers: dict[str, str | None]) -> list[str]:
    """The orders, of those given with the customer they are posted under (None: a guest),
    whose stored lines name another customer or none (a guest order, or one an erasure
    unlinked). An order without stored lines (every line an adjustment) names nobody and is
    no conflict. Ids are compared composed (``domain.composed``): lines a version before ids
    were composed stored under ``Jose`` + U+0301 are the composed ``José``'s, and their
    order, posted or imported again, was refused as another customer's."""
    found: dict[str, set[str | None]] = defaultdict(set)
    order_ids = sorted(customers)
    for start in range(0, len(order_ids), CHUNK):
        query = (
            sa.select(purchases.c.order_id, purchases.c.customer_id)
            .where(purchases.c.order_id.in_(order_ids[start : start + CHUNK]))
            .distinct()
        )
        for order_id, customer_id in connection.execute(query):
            found[order_id].add(_composed(customer_id))
    return [
        order_id
        for order_id in order_ids
        if order_id in found and found[order_id] != {_composed(customers[order_id])}
    ]


def _composed(customer_id: str | None) -> str | None:
    return None if customer_id is None else composed(customer_id)


def _insert_lines(
    connection: sa.Connection,
    rows: Sequence[Purchase],
    import_run_id: int | None,
    progress: Callable[[int], None] | None,
) -> int:
    """Plain inserts: the lines of an order this transaction claimed cannot exist yet (a
    clash would be a bug to see, not to hide)."""
    values = [dict(asdict(row), import_run_id=import_run_id) for row in rows]
    for chunk in _chunks(values):
        connection.execute(sa.insert(purchases), chunk)
        if progress is not None:
            progress(len(chunk))
    return len(values)


def insert_purchases(
    connection: sa.Connection,
    rows: Sequence[Purchase],
    import_run_id: int | None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """:func:`store_orders` for callers that only need the number of lines written."""
    return store_orders(connection, rows, import_run_id, progress).lines_written


def _upsert(
    connection: sa.Connection,
    table: sa.Table,
    rows: list[dict[str, Any]],
    keep: Iterable[str],
    merge: dict[str, Any] | None = None,
) -> int:
    """Insert or update by primary key; columns in ``keep`` are never overwritten and
    ``merge`` maps a column to a function (stored column, incoming column) → new value."""
    if not rows:
        return 0
    keep = set(keep) | {"id"}
    statement = upsert_statement(connection, table)
    updates = {name: statement.excluded[name] for name in rows[0] if name not in keep}
    for name, combine in (merge or {}).items():
        updates[name] = combine(table.c[name], statement.excluded[name])
    statement = statement.on_conflict_do_update(index_elements=["id"], set_=updates)
    for chunk in _chunks(rows):
        connection.execute(statement, chunk)
    return len(rows)


def upsert_items(
    connection: sa.Connection, rows: Sequence[Item], now: datetime, keep: Iterable[str] = ()
) -> int:
    """Items from a feed; the columns in ``keep`` (those the feed does not carry) are
    written for new items only, as for customers: a price feed must not put items back in
    stock, drop their links or make a service item offerable."""
    values = [dict(asdict(row), updated_at=now) for row in rows]
    return _upsert(connection, items, values, keep)


def add_missing_items(connection: sa.Connection, rows: Sequence[Item], now: datetime) -> int:
    """Catalogue rows derived from sales fill gaps only: an explicitly imported item (its
    URL, stock flag, curated title) is never overwritten by a purchases file."""
    before = count(connection, items)
    statement = upsert_statement(connection, items).on_conflict_do_nothing(index_elements=["id"])
    for chunk in _chunks([dict(asdict(row), updated_at=now) for row in rows]):
        connection.execute(statement, chunk)
    return count(connection, items) - before


def upsert_customers(
    connection: sa.Connection, rows: Sequence[Customer], now: datetime, keep: Iterable[str] = ()
) -> int:
    """Profile and consent data from a feed. Unsubscribes and erasures recorded by recocamp
    are never touched, and a feed can set an objection to profiling but never clear one
    (withdrawing it is the customer's own act, through recocamp); the columns in ``keep``
    (those the feed does not carry) are written for new customers only. Personal
    recommendation lists and stored forecasts of objecting customers are dropped in the
    same transaction (and their re-scored lists shared by the serving processes)."""
    protected = ("unsubscribed_at", "erased_at")
    values = [
        {k: v for k, v in dict(asdict(row), updated_at=now).items() if k not in protected}
        for row in rows
    ]
    merge = {"objected_to_profiling": sa.or_}
    written = _upsert(connection, customers, values, keep, merge)
    drop_unprofiled_recommendations(connection)
    drop_unprofiled_forecasts(connection)
    return written


UNPROFILED = sa.or_(customers.c.objected_to_profiling.is_(True), customers.c.erased_at.is_not(None))


def unprofiled_forms(connection: sa.Connection) -> list[str]:
    """The other Unicode forms (``domain.id_forms``) of the ids of customers who objected to
    profiling or were erased: lines stored under ``Jose`` + U+0301 are the objecting
    ``José``'s (one system exported them decomposed, or a version before ids were composed
    everywhere stored them so). Only ids that are not ASCII have any, and only they are read
    (one more statement; none found for a shop of ASCII ids)."""
    c = customers.c
    if connection.dialect.name == "sqlite":
        wide = sa.func.length(sa.cast(c.id, sa.LargeBinary)) != sa.func.length(c.id)
    else:
        wide = sa.func.octet_length(c.id) != sa.func.char_length(c.id)
    held = connection.execute(sa.select(c.id).where(UNPROFILED, wide)).scalars().all()
    return sorted(set(id_forms(held)) - set(held))


def listed(connection: sa.Connection, values: Sequence[str]) -> sa.Select[Any]:
    """The rows of ``values``, for ``IN``/``NOT IN``, bound as one parameter (a JSON array
    the database takes apart): a list binds one parameter per value, and the other forms of
    tens of thousands of objectors' ids (a Japanese shop's ``がくと``, whose decomposed
    form differs) passed SQLite's limit (32,766 in its default build, 999 before 3.32) and
    psycopg's (65,535): "too many SQL variables", and training, forecasts, customers
    imports and objections failed."""
    array = sa.bindparam(None, json.dumps(list(values)), type_=sa.String)
    if connection.dialect.name == "postgresql":  # "AS anon_1(value)": the column named
        elements = sa.func.json_array_elements_text(sa.cast(array, postgresql.JSON))
        rows = elements.table_valued("value").render_derived()
    else:
        rows = sa.func.json_each(array).table_valued("value")
    return sa.select(rows.c.value)


def profiled(connection: sa.Connection, column: sa.ColumnElement[Any]) -> list[Any]:
    """Conditions that ``column`` names nobody who objected to profiling or was erased, in
    any Unicode form of their id (:func:`unprofiled_forms`, one parameter: :func:`listed`)."""
    conditions = [column.not_in(sa.select(customers.c.id).where(UNPROFILED))]
    forms = unprofiled_forms(connection)
    return [*conditions, column.not_in(listed(connection, forms))] if forms else conditions


def unprofiled(connection: sa.Connection, column: sa.ColumnElement[Any]) -> Any:
    """The condition that ``column`` names somebody who objected to profiling or was erased,
    in any Unicode form of their id (the negation of :func:`profiled`)."""
    named = column.in_(sa.select(customers.c.id).where(UNPROFILED))
    forms = unprofiled_forms(connection)
    return sa.or_(named, column.in_(listed(connection, forms))) if forms else named


def drop_unprofiled_recommendations(connection: sa.Connection) -> None:
    """No personal list may exist for anybody who objected to profiling or was erased: the
    cached top-N, nor the list a serving process re-scored and shared (``offer_lists``),
    under any Unicode form of their id."""
    r, o = recommendations.c, offer_lists.c
    connection.execute(sa.delete(recommendations).where(unprofiled(connection, r.customer_id)))
    connection.execute(sa.delete(offer_lists).where(unprofiled(connection, o.customer_id)))


def drop_unprofiled_forecasts(connection: sa.Connection) -> None:
    """No stored forecast may exist for anybody who objected to profiling or was erased (a
    forecast is profiling), under any Unicode form of their id."""
    f, k = forecasts.c, forecast_checkpoints.c
    connection.execute(sa.delete(forecasts).where(unprofiled(connection, f.customer_id)))
    connection.execute(sa.delete(forecast_checkpoints).where(unprofiled(connection, k.customer_id)))


def find_import(connection: sa.Connection, kind: str, sha256: str) -> sa.Row[Any] | None:
    query = (
        sa.select(import_runs)
        .where(import_runs.c.kind == kind, import_runs.c.file_sha256 == sha256)
        .order_by(import_runs.c.id)
        .limit(1)
    )
    return connection.execute(query).first()


def last_import(connection: sa.Connection, kind: str) -> sa.Row[Any] | None:
    """The import of this kind recorded last (the one whose values a snapshot feed holds)."""
    query = sa.select(import_runs).where(import_runs.c.kind == kind)
    return connection.execute(query.order_by(import_runs.c.id.desc()).limit(1)).first()


def record_import(connection: sa.Connection, **values: Any) -> int:
    result = connection.execute(sa.insert(import_runs).values(**values))
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def finish_import(connection: sa.Connection, run_id: int, **values: Any) -> None:
    connection.execute(sa.update(import_runs).where(import_runs.c.id == run_id).values(**values))


def audit(
    connection: sa.Connection,
    *,
    at: datetime,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str | None,
    details: dict[str, Any],
) -> None:
    connection.execute(
        sa.insert(audit_log).values(
            at=at,
            actor=actor,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            details=details,
        )
    )


def order_totals(
    connection: sa.Connection, start: datetime, end: datetime
) -> list[tuple[str, str | None, datetime, float]]:
    """``(order_id, customer_id, first line time, revenue)`` of orders with purchase lines
    in ``[start, end)``; only purchase lines count (no returns, no adjustments)."""
    return _order_revenue(connection, start, end, sa.func.min(purchases.c.ordered_at))


def order_parts(
    connection: sa.Connection, start: datetime, end: datetime
) -> list[tuple[str, str | None, datetime, float]]:
    """``(order_id, customer_id, line time, revenue)`` of an order's purchase lines in
    ``[start, end)`` at one instant: what the KPIs count. An order whose lines were stamped
    apart (23:59 and 00:01) is one row per instant, so a window holds exactly the order's
    lines inside it (``measure.kpis`` counts the order once per window)."""
    at = purchases.c.ordered_at
    return _order_revenue(connection, start, end, at, at)


def _order_revenue(
    connection: sa.Connection, start: datetime, end: datetime, at: Any, *by: Any
) -> list[tuple[str, str | None, datetime, float]]:
    """The revenue of the purchase lines (``schema.purchase_line``) in ``[start, end)`` by
    order and customer (and ``by``), with the time ``at`` of each group: one statement for
    :func:`order_totals` and :func:`order_parts`, so the two count the same lines."""
    p = purchases.c
    query = (
        sa.select(p.order_id, p.customer_id, at, sa.func.sum(p.quantity * p.unit_price))
        .where(p.ordered_at >= start, p.ordered_at < end, purchase_line())
        .group_by(p.order_id, p.customer_id, *by)
    )
    return [(row[0], row[1], row[2], float(row[3])) for row in connection.execute(query)]


def held_decomposed(connection: sa.Connection, customer_ids: Iterable[str]) -> dict[str, str]:
    """For each of these (composed) ids that the customers table holds only decomposed
    (``Jose`` + U+0301, as versions before ids were composed stored them), that stored form:
    the record a file's row of the id updates, as ``registry.stored_id`` finds it for the
    API's paths. An ASCII id has no other form and is not looked up."""
    forms = {unicodedata.normalize("NFD", i): i for i in set(customer_ids) if not i.isascii()}
    forms = {other: given for other, given in forms.items() if other != given}
    wanted = sorted({*forms, *forms.values()})
    held: set[str] = set()
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        held.update(
            connection.execute(sa.select(customers.c.id).where(customers.c.id.in_(chunk))).scalars()
        )
    return {given: other for other, given in forms.items() if other in held and given not in held}


def add_missing_customers(
    connection: sa.Connection, countries: dict[str, str], now: datetime, locale: str
) -> int:
    """Create bare customer rows (id, country and the shop's default ``locale``, no consent)
    for ids seen in orders (the column's server default "en" is not the shop's)."""
    before = count(connection, customers)
    statement = upsert_statement(connection, customers).on_conflict_do_nothing(
        index_elements=["id"]
    )
    rows = [
        {"id": customer_id, "country": country or None, "locale": locale, "updated_at": now}
        for customer_id, country in sorted(countries.items())
    ]
    for chunk in _chunks(rows):
        connection.execute(statement, chunk)
    return count(connection, customers) - before


def customers_first_seen(
    connection: sa.Connection,
) -> list[tuple[str, str | None, datetime | None]]:
    """``(customer id, country, first order time)`` of every customer row."""
    first = (
        sa.select(purchases.c.customer_id, sa.func.min(purchases.c.ordered_at).label("first"))
        .where(purchases.c.customer_id.is_not(None))
        .group_by(purchases.c.customer_id)
        .subquery()
    )
    query = (
        sa.select(customers.c.id, customers.c.country, first.c.first)
        .join(first, first.c.customer_id == customers.c.id, isouter=True)
        .order_by(customers.c.id)
    )
    return [(row[0], row[1], row[2]) for row in connection.execute(query)]


def latest_order_time(connection: sa.Connection) -> datetime | None:
    value = connection.execute(sa.select(sa.func.max(purchases.c.ordered_at))).scalar_one()
    return value  # type: ignore[no-any-return]


def first_order_time(connection: sa.Connection) -> datetime | None:
    value = connection.execute(sa.select(sa.func.min(purchases.c.ordered_at))).scalar_one()
    return value  # type: ignore[no-any-return]


def first_purchase_time(connection: sa.Connection) -> datetime | None:
    """The first purchase of a known customer (no return, no guest order): before it, an
    evaluation has nobody to measure."""
    p = purchases.c
    query = sa.select(sa.func.min(p.ordered_at)).where(
        p.is_return.is_(False), p.customer_id.is_not(None)
    )
    value = connection.execute(query).scalar_one()
    return value  # type: ignore[no-any-return]


JULIAN_UNIX_MS = 210_866_760_000_000  # 1970-01-01 00:00 UTC in SQLite's julian milliseconds


def epoch_seconds(connection: sa.Connection, column: Any) -> Any:
    """UTC epoch seconds in SQL, so millions of rows never become datetime objects. SQLite
    keeps a time as whole julian milliseconds (``julianday`` is them over 86,400,000):
    turned into seconds through the julian day, an order stamped at midnight came out a
    hair before it (651 of 1,095 Berlin midnights), so a shop that records dates only had
    the cutoff day's orders in ``< until`` — a training or an evaluation learning from the
    first day it should not see. Whole milliseconds since 1970 over 1,000 are exact."""
    if connection.dialect.name == "sqlite":
        return (julian_ms(column) - JULIAN_UNIX_MS) / 1000.0
    return sa.extract("epoch", column)


def julian_ms(column: Any) -> Any:
    """SQLite's own integer julian milliseconds of a time (``julianday`` × 86,400,000 is
    exact to well under one), as a REAL holding a whole number."""
    return sa.func.round(sa.func.julianday(column) * 86400000.0)


def item_titles(connection: sa.Connection, ids: Sequence[str]) -> dict[str, str]:
    if not ids:
        return {}
    query = sa.select(items.c.id, items.c.title).where(items.c.id.in_(list(ids)))
    return {row[0]: row[1] for row in connection.execute(query)}


def item_categories(connection: sa.Connection) -> set[str]:
    """The categories of the catalogue's items, service items' aside (never bought or
    offered as such): what a campaign's category filters can match."""
    query = sa.select(items.c.category).where(items.c.is_service.is_(False)).distinct()
    return {row[0] for row in connection.execute(query)}


def known_items(connection: sa.Connection, ids: Iterable[str]) -> set[str]:
    """Which of ``ids`` the catalogue holds."""
    wanted = sorted(set(ids))
    found: set[str] = set()
    for start in range(0, len(wanted), 1000):  # a bounded IN list per statement
        chunk = wanted[start : start + 1000]
        found |= {
            row[0] for row in connection.execute(sa.select(items.c.id).where(items.c.id.in_(chunk)))
        }
    return found


def has_purchases(connection: sa.Connection) -> bool:
    """Whether any order line is stored (the demo builds its shop into an empty store)."""
    return count(connection, purchases) > 0


def purchase_lines_seen(connection: sa.Connection) -> tuple[int, int]:
    """(the newest purchase line's id, how many lines there are): what a training saw."""
    last_line, lines = connection.execute(
        sa.select(sa.func.max(purchases.c.id), sa.func.count())
    ).one()
    return int(last_line or 0), int(lines)
