"""The purchase lines a recommender learns from, read fast enough for millions of them.

``train``, ``evaluate`` and the privacy artifacts' checks read every learnable line (known
customers, no returns or adjustments, no service items, nobody who objected or was erased).
At 20 M lines the read is a third of a training's own work, so SQLite's lines come back as
joined columns and integer-numbered ids (:func:`numbered_training_lines`), parsed in C by
numpy; PostgreSQL streams plain tuples from a server-side cursor (:func:`line_rows`).
Split from ``queries`` (the foundation tables' other reads and writes) so the one
performance-critical read lives in a file of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import threading
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa

from recocamp.store.engine import driver_cursor, driver_params
from recocamp.store.queries import (
    JULIAN_UNIX_MS,
    epoch_seconds,
    julian_ms,
    profiled,
    unprofiled,
)
from recocamp.store.schema import items, purchase_line, purchases

log = logging.getLogger(__name__)

# numpy is imported where training lines are read, not at import: a delivering process
# imports the store for the outbox and never loads it (0.05 s of its start)
if TYPE_CHECKING:
    import numpy as np


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
        lines, ids, customer, item, order, joined_ms = connection.execute(query, bounds).one()
        if not lines:
            continue
        columns = [text.split(SEPARATOR) for text in (customer, item, order)]
        if any(len(column) != lines for column in columns):  # an id holds the separator
            yield from line_rows(connection, until, FETCH, (start, start + chunk))
            continue
        numbers = _integers(ids), _integers(joined_ms)
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
    stamp_ms = sa.cast(julian_ms(p.ordered_at), sa.Integer)
    query = sa.select(
        sa.func.count(), sa.func.group_concat(p.id, COMMA), sa.func.group_concat(stamp_ms, COMMA)
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
    p, i = purchases.c, items.c
    conditions = [
        p.customer_id.is_not(None),
        purchase_line(),
        *profiled(connection, p.customer_id),  # any Unicode form of an objector's id
        p.item_id.not_in(sa.select(i.id).where(i.is_service.is_(True))),
    ]
    if until is not None:
        conditions.append(epoch_seconds(connection, p.ordered_at) < until.timestamp())
    return conditions


def unprofiled_buyers(connection: sa.Connection, until: datetime | None = None) -> int:
    """Customers with purchase lines (before ``until``) who objected to profiling or were
    erased: when no line is learnable, whether that is why (``training.train``'s message)."""
    p = purchases.c
    conditions = [unprofiled(connection, p.customer_id), p.is_return.is_(False)]
    if until is not None:
        conditions.append(epoch_seconds(connection, p.ordered_at) < until.timestamp())
    query = sa.select(sa.func.count(sa.distinct(p.customer_id))).where(*conditions)
    return int(connection.execute(query).scalar_one())


def _joined_lines(connection: sa.Connection, until: datetime | None) -> sa.Select[Any]:
    """One id range's lines as one row: count, then each column joined (SQLite)."""
    p = purchases.c
    sep = sa.bindparam("sep", type_=sa.String)
    stamp_ms = sa.cast(julian_ms(p.ordered_at), sa.Integer)
    return sa.select(
        sa.func.count(),
        sa.func.group_concat(p.id, ","),
        sa.func.group_concat(p.customer_id, sep),
        sa.func.group_concat(p.item_id, sep),
        sa.func.group_concat(p.order_id, sep),
        sa.func.group_concat(stamp_ms, ","),
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
    # the IN lists (profiled) rendered as plain parameters, for the driver's own cursor
    compiled = query.compile(
        dialect=connection.dialect, compile_kwargs={"render_postcompile": True}
    )
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
