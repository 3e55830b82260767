"""Every read and write of the foundation tables, as parameterised SQLAlchemy Core.

Functions take a ``Connection`` so the caller owns the transaction: an import writes its
rows and its ``import_runs`` record in one transaction, or nothing at all.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from recocamp.domain import Customer, Item, Purchase, order_digest
from recocamp.errors import OrderConflictError
from recocamp.store.engine import driver_cursor, driver_params
from recocamp.store.schema import (
    audit_log,
    customers,
    forecast_checkpoints,
    forecasts,
    import_runs,
    items,
    offer_lists,
    orders,
    purchases,
    recommendations,
    suppressions,
)

log = logging.getLogger(__name__)

# numpy is imported where training lines are read, not here: a delivering process imports
# the store for the outbox and never loads it (0.05 s of its start)
if TYPE_CHECKING:
    import numpy as np

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
    no conflict."""
    found: dict[str, set[str | None]] = defaultdict(set)
    order_ids = sorted(customers)
    for start in range(0, len(order_ids), CHUNK):
        query = (
            sa.select(purchases.c.order_id, purchases.c.customer_id)
            .where(purchases.c.order_id.in_(order_ids[start : start + CHUNK]))
            .distinct()
        )
        for order_id, customer_id in connection.execute(query):
            found[order_id].add(customer_id)
    return [
        order_id
        for order_id in order_ids
        if order_id in found and found[order_id] != {customers[order_id]}
    ]


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


def drop_unprofiled_recommendations(connection: sa.Connection) -> None:
    """No personal list may exist for anybody who objected to profiling or was erased: the
    cached top-N, nor the list a serving process re-scored and shared (``offer_lists``)."""
    c = customers.c
    unprofiled = sa.select(c.id).where(
        sa.or_(c.objected_to_profiling.is_(True), c.erased_at.is_not(None))
    )
    connection.execute(
        sa.delete(recommendations).where(recommendations.c.customer_id.in_(unprofiled))
    )
    connection.execute(sa.delete(offer_lists).where(offer_lists.c.customer_id.in_(unprofiled)))


def drop_unprofiled_forecasts(connection: sa.Connection) -> None:
    """No stored forecast may exist for anybody who objected to profiling or was erased (a
    forecast is profiling)."""
    c = customers.c
    unprofiled = sa.select(c.id).where(
        sa.or_(c.objected_to_profiling.is_(True), c.erased_at.is_not(None))
    )
    connection.execute(sa.delete(forecasts).where(forecasts.c.customer_id.in_(unprofiled)))
    checkpoints = forecast_checkpoints.c
    connection.execute(
        sa.delete(forecast_checkpoints).where(checkpoints.customer_id.in_(unprofiled))
    )


def find_import(connection: sa.Connection, kind: str, sha256: str) -> sa.Row[Any] | None:
    query = (
        sa.select(import_runs)
        .where(import_runs.c.kind == kind, import_runs.c.file_sha256 == sha256)
        .order_by(import_runs.c.id)
        .limit(1)
    )
    return connection.execute(query).first()


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
    p = purchases.c
    query = (
        sa.select(
            p.order_id,
            p.customer_id,
            sa.func.min(p.ordered_at),
            sa.func.sum(p.quantity * p.unit_price),
        )
        .where(
            p.ordered_at >= start,
            p.ordered_at < end,
            p.is_return.is_(False),
            p.quantity > 0,
            p.unit_price > 0,
        )
        .group_by(p.order_id, p.customer_id)
    )
    return [(row[0], row[1], row[2], float(row[3])) for row in connection.execute(query)]


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
        return (_julian_ms(column) - JULIAN_UNIX_MS) / 1000.0
    return sa.extract("epoch", column)


def _julian_ms(column: Any) -> Any:
    """SQLite's own integer julian milliseconds of a time (``julianday`` × 86,400,000 is
    exact to well under one), as a REAL holding a whole number."""
    return sa.func.round(sa.func.julianday(column) * 86400000.0)


class LineColumns(NamedTuple):
    """One chunk of training lines, column by column: customer, item and order ids (in the
    lines' ``purchases.id`` order) and UTC epoch seconds."""

    customer: Sequence[str]
    item: Sequence[str]
    order: Sequence[str]
    at: np.ndarray


SEPARATOR = "\x1f"  # the ASCII unit separator: never part of an id a shop would choose
FETCH = 100_000  # rows per fetch where lines are read row by row


def training_lines(
    connection: sa.Connection, until: datetime | None = None, chunk: int = 1_000_000
) -> Iterator[LineColumns]:
    """Purchase lines a recommender may learn from, in ``purchases.id`` order, in chunks of
    columns (:class:`LineColumns`): known customers only, no returns or adjustments, no
    service items, nobody who objected to profiling or was erased.

    Millions of rows: on SQLite each range of ``chunk`` line ids comes back as one row of
    separator-joined columns (``group_concat``), split in C, because the driver's per-row
    tuples and strings cost more than the database's own scan (20 M lines: 4 of 6 s). The
    epoch is the same float as :func:`epoch_seconds` (SQLite's integer milliseconds since
    the julian epoch less 1970's, over 1,000: one exact operation), so the lines and a model's data
    fingerprint are what the row-by-row read gives. A range whose ids hold the separator is
    read row by row, as PostgreSQL always is (plain tuples from a server-side cursor).
    Ranges are large (a million ids, a few hundred MB of strings at most) because each
    range's statement lists the objectors again, a scan of ``customers`` (0.2 s at a
    million customers).
    """
    if connection.dialect.name != "sqlite":
        yield from line_rows(connection, until, FETCH)
        return
    low, high = _id_range(connection)
    query = _joined_lines(connection, until)
    for start in range(low - 1, high, chunk):
        bounds = {"low": start, "high": start + chunk, "sep": SEPARATOR}
        lines, ids, customer, item, order, julian_ms = connection.execute(query, bounds).one()
        if not lines:
            continue
        columns = [text.split(SEPARATOR) for text in (customer, item, order)]
        if any(len(column) != lines for column in columns):  # an id holds the separator
            yield from line_rows(connection, until, FETCH, (start, start + chunk))
            continue
        numbers = _integers(ids), _integers(julian_ms)
        if any(len(column) != lines for column in numbers):  # not one integer per line
            yield from line_rows(connection, until, FETCH, (start, start + chunk))
            continue
        at = (numbers[1] - JULIAN_UNIX_MS) / 1000.0  # as :func:`epoch_seconds` computes it
        yield in_id_order(numbers[0], columns, at)


class NumberedLines(NamedTuple):
    """The training lines with their ids already numbered (SQLite's fast read): line ``n``'s
    customer is ``customer_ids[customer[n]]``, its item ``item_ids[item[n]]``; ``order[n]``
    is a number its order's lines share (in no particular order). The vocabularies may hold
    ids no learnable line has (a guest's order, an objector's lines). Lines in
    ``purchases.id`` order; ``at`` is the float :func:`training_lines` gives."""

    customer: np.ndarray
    item: np.ndarray
    order: np.ndarray
    at: np.ndarray
    customer_ids: list[str]
    item_ids: list[str]


def numbered_training_lines(
    connection: sa.Connection, until: datetime | None = None, chunk: int = 1_000_000
) -> NumberedLines | None:
    """The lines of :func:`training_lines` with integer ids instead of strings, on SQLite;
    None on PostgreSQL, or where an id holds the separator (read :func:`training_lines`).

    Numbering the string ids of every line in Python cost half the read (a dict lookup per
    line and column), and joining each line to a table of ids cost more in SQLite. So the
    lines come back as line ids and times, and each id column is read once through its own
    index, grouped by id (:func:`_id_groups`): a line's number is then an array lookup by
    its line id. A savepoint holds the statements to one snapshot, so a line written or
    changed meanwhile is seen by all of them or by none. The statements run one ahead of
    the parsing of their answers (:func:`read_ahead`).
    """
    if connection.dialect.name != "sqlite":
        return None
    p = purchases.c
    try:
        with connection.begin_nested():
            ranges = _line_ranges(connection, until, chunk)
            groups = [_id_groups(p.customer_id, True), _id_groups(p.item_id, True)]
            groups.append(_id_groups(p.order_id, False))
            with read_ahead(connection, [*ranges, *groups]) as rows:
                lines = _line_ids_and_times(itertools.islice(rows, len(ranges)))
                if lines is None:
                    return None
                ids, at = lines
                customer = _numbered(next(rows), ids, named=True)
                item = _numbered(next(rows), ids, named=True)
                order = _numbered(next(rows), ids, named=False)
    except sa.exc.DataError as error:  # "string or blob too big": SQLite's length limit
        log.info("training lines: the grouped read is too long for SQLite (%s); streaming", error)
        return None
    if customer is None or item is None or order is None:
        return None
    return NumberedLines(customer[1], item[1], order[1], at, customer[0], item[0])


Statement = tuple[sa.Executable, dict[str, Any]]


@contextlib.contextmanager
def read_ahead(
    connection: sa.Connection, statements: Sequence[Statement]
) -> Iterator[Iterator[sa.Row[Any]]]:
    """Each statement's one row, in order, executed on a thread of its own one statement
    ahead of the caller: SQLite works (it lets go of the interpreter lock while it steps)
    while the caller parses the row before (numpy, holding it), two cores on one connection
    and so one snapshot. A million customers' read took 33 s with each statement waiting
    for the parse before it. The thread is done with the connection when the block ends,
    however it ends; a statement's error is raised where its row is taken."""
    ready: queue.Queue[tuple[sa.Row[Any] | None, BaseException | None]] = queue.Queue(1)
    stop = threading.Event()

    def execute() -> None:
        for statement, params in statements:
            if stop.is_set():
                return
            try:
                ready.put((connection.execute(statement, params).one(), None))
            except BaseException as error:  # handed over: raised in the caller's thread
                ready.put((None, error))
                return

    def rows() -> Iterator[sa.Row[Any]]:
        for _ in statements:
            row, error = ready.get()
            if error is not None:
                raise error
            assert row is not None
            yield row

    thread = threading.Thread(target=execute, name="training-read", daemon=True)
    thread.start()
    try:
        yield rows()
    finally:
        stop.set()
        while thread.is_alive():  # take what it put, so that it gets to see the stop
            with contextlib.suppress(queue.Empty):
                ready.get(timeout=0.05)
        thread.join()


# group_concat's separator written into the statement: bound, SQLite reads it for every row
# (a fifth of grouping a column's 2 M line ids)
COMMA: sa.ColumnClause[Any] = sa.literal_column("','")


def _line_ranges(connection: sa.Connection, until: datetime | None, chunk: int) -> list[Statement]:
    """The statements reading the learnable lines' ids and epochs, by ranges of ``chunk``
    ids as :func:`training_lines` reads them: each one row of a count and two joined
    columns."""
    p = purchases.c
    low, high = _id_range(connection)
    julian_ms = sa.cast(_julian_ms(p.ordered_at), sa.Integer)
    query = sa.select(
        sa.func.count(), sa.func.group_concat(p.id, COMMA), sa.func.group_concat(julian_ms, COMMA)
    ).where(
        *_line_filter(connection, until), p.id > sa.bindparam("low"), p.id <= sa.bindparam("high")
    )
    return [(query, {"low": start, "high": start + chunk}) for start in range(low - 1, high, chunk)]


def _line_ids_and_times(rows: Iterable[sa.Row[Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """The lines' ids and epochs in id order from the rows of :func:`_line_ranges`
    (integers only); None where a range's are not."""
    import numpy as np

    ids, at = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.float64)]
    for row in rows:
        count, joined_ids, joined_ms = tuple(row)
        if not count:
            continue
        numbers = _integers(joined_ids), _integers(joined_ms)
        if any(len(column) != count for column in numbers):
            return None
        ranked = np.argsort(numbers[0], kind="stable")  # aggregated in scan order: id order
        ids.append(numbers[0][ranked])
        at.append((numbers[1][ranked] - JULIAN_UNIX_MS) / 1000.0)  # as epoch_seconds
    return np.concatenate(ids), np.concatenate(at)


def _id_groups(column: Any, named: bool) -> Statement:
    """The statement reading one scan of ``column``'s index grouped by id: the count of
    distinct ids, each id (``named``, else none), its line count and its line ids, every
    column joined. All of ``purchases`` is grouped (no filter: a filter would read the
    table, not the index), so a line's number is an array lookup by its line id
    (:func:`_numbered`). A joined column longer than SQLite's length limit (10⁹ bytes by
    default: ~100 M lines) raises its ``DataError``, on which
    :func:`numbered_training_lines` leaves the read to streaming."""
    p = purchases.c
    groups = (
        sa.select(
            column.label("id"),
            sa.func.count().label("lines"),
            sa.func.group_concat(p.id, COMMA).label("line_ids"),
        )
        .where(column.is_not(None))
        .group_by(column)
        .subquery()
    )
    separator: sa.ColumnClause[Any] = sa.literal_column(f"char({ord(SEPARATOR)})")
    query = sa.select(
        sa.func.count(),
        sa.func.group_concat(groups.c.id, separator) if named else sa.null(),
        sa.func.group_concat(groups.c.lines, COMMA),
        sa.func.group_concat(groups.c.line_ids, COMMA),
    )
    return query, {}


def _numbered(
    row: sa.Row[Any], lines: np.ndarray, *, named: bool
) -> tuple[list[str], np.ndarray] | None:
    """From a row of :func:`_id_groups`: the distinct ids (``named``, else an empty list)
    and each of ``lines``' (line ids) position among them. None where an id holds the
    separator."""
    import numpy as np

    count, joined, sizes, line_ids = tuple(row)
    ids = joined.split(SEPARATOR) if named and count else []
    if len(ids) != (count if named else 0):  # an id holds the separator
        return None
    size, members = _integers(sizes or ""), _integers(line_ids or "")
    if len(size) != count or len(members) != int(size.sum()):
        return None
    span = max(int(members.max(initial=0)), int(lines.max(initial=0))) + 1
    number = np.full(span, -1, dtype=np.int64)
    number[members] = np.repeat(np.arange(count, dtype=np.int64), size)
    found: np.ndarray = number[lines]
    return (ids, found) if int(found.min(initial=0)) >= 0 else None


def _id_range(connection: sa.Connection) -> tuple[int, int]:
    """The lowest and highest line id ((1, 0) without lines), each its own subquery: SQLite
    answers min() or max() alone from an end of the key's b-tree, but both in one SELECT
    with a scan of the table (0.3 s at 2 M lines)."""
    p = purchases.c
    lowest = sa.select(sa.func.min(p.id)).scalar_subquery()
    highest = sa.select(sa.func.max(p.id)).scalar_subquery()
    low, high = connection.execute(sa.select(lowest, highest)).one()
    return (1, 0) if low is None else (int(low), int(high))


def _integers(joined: str) -> np.ndarray:
    """A comma-joined column of integers as int64, parsed in C by numpy's text reader (a
    tenth of splitting into a million strings and converting each). numpy 2 raises on
    anything but integers; the caller checks the count as well (numpy 1.26 stops at the first
    bad value with a warning)."""
    import numpy as np

    return np.fromstring(joined, dtype=np.int64, sep=",")


def _line_filter(connection: sa.Connection, until: datetime | None) -> list[Any]:
    p, c, i = purchases.c, customers.c, items.c
    objected = sa.or_(c.objected_to_profiling.is_(True), c.erased_at.is_not(None))
    conditions = [
        p.customer_id.is_not(None),
        p.is_return.is_(False),
        p.quantity > 0,
        p.unit_price > 0,
        p.customer_id.not_in(sa.select(c.id).where(objected)),
        p.item_id.not_in(sa.select(i.id).where(i.is_service.is_(True))),
    ]
    if until is not None:
        conditions.append(epoch_seconds(connection, p.ordered_at) < until.timestamp())
    return conditions


def unprofiled_buyers(connection: sa.Connection, until: datetime | None = None) -> int:
    """Customers with purchase lines (before ``until``) who objected to profiling or were
    erased: when no line is learnable, whether that is why (``training.train``'s message)."""
    p, c = purchases.c, customers.c
    objected = sa.or_(c.objected_to_profiling.is_(True), c.erased_at.is_not(None))
    conditions = [p.customer_id.in_(sa.select(c.id).where(objected)), p.is_return.is_(False)]
    if until is not None:
        conditions.append(epoch_seconds(connection, p.ordered_at) < until.timestamp())
    query = sa.select(sa.func.count(sa.distinct(p.customer_id))).where(*conditions)
    return int(connection.execute(query).scalar_one())


def _joined_lines(connection: sa.Connection, until: datetime | None) -> sa.Select[Any]:
    """One id range's lines as one row: count, then each column joined (SQLite)."""
    p = purchases.c
    sep = sa.bindparam("sep", type_=sa.String)
    julian_ms = sa.cast(_julian_ms(p.ordered_at), sa.Integer)
    return sa.select(
        sa.func.count(),
        sa.func.group_concat(p.id, ","),
        sa.func.group_concat(p.customer_id, sep),
        sa.func.group_concat(p.item_id, sep),
        sa.func.group_concat(p.order_id, sep),
        sa.func.group_concat(julian_ms, ","),
    ).where(
        *_line_filter(connection, until), p.id > sa.bindparam("low"), p.id <= sa.bindparam("high")
    )


def in_id_order(ids: np.ndarray, columns: list[list[str]], at: np.ndarray) -> LineColumns:
    """The columns in line-id order (SQLite aggregates in scan order, which is id order
    here, but does not promise it)."""
    import numpy as np

    customer, item, order = columns
    if len(ids) > 1 and not bool((ids[1:] > ids[:-1]).all()):
        ranked = np.argsort(ids, kind="stable")
        customer, item, order = (np.array(c, dtype=object)[ranked].tolist() for c in columns)
        at = at[ranked]
    return LineColumns(customer, item, order, at)


def line_rows(
    connection: sa.Connection,
    until: datetime | None,
    chunk: int,
    between: tuple[int, int] | None = None,
) -> Iterator[LineColumns]:
    """The lines row by row, as plain tuples from the driver's cursor (server-side on
    PostgreSQL): SQLAlchemy Row objects cost as much as the database itself at this size.
    The statement is still compiled by SQLAlchemy and executed with bound parameters."""
    import numpy as np

    p = purchases.c
    epoch = epoch_seconds(connection, p.ordered_at)
    conditions = _line_filter(connection, until)
    if between is not None:
        conditions += [p.id > between[0], p.id <= between[1]]
    query = sa.select(p.customer_id, p.item_id, p.order_id, epoch).where(*conditions)
    query = query.order_by(p.id)  # a stable order: the data fingerprint depends on it
    compiled = query.compile(dialect=connection.dialect)
    params = driver_params(compiled)
    is_postgres = connection.dialect.name == "postgresql"
    with driver_cursor(connection, "recocamp_training_lines" if is_postgres else None) as cursor:
        cursor.execute(str(compiled), params)
        while rows := cursor.fetchmany(chunk):
            customer, item, order, epochs = zip(*rows, strict=True)
            yield LineColumns(customer, item, order, np.asarray(epochs, dtype=np.float64))


def training_line_amounts(connection: sa.Connection) -> tuple[np.ndarray, np.ndarray]:
    """Quantity and unit price of each line :func:`training_lines` yields, in the same
    (``purchases.id``) order, so they align with its lines one for one (the recommender
    ablation's quantity and spend signals; training itself does not read them)."""
    import numpy as np

    p = purchases.c
    query = sa.select(p.quantity, p.unit_price).where(*_line_filter(connection, None))
    rows = connection.execute(query.order_by(p.id)).all()
    quantity = np.array([row[0] for row in rows], dtype=np.float64)
    price = np.array([float(row[1]) for row in rows], dtype=np.float64)
    return quantity, price


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
