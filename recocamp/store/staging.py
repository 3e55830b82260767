"""A purchases file on its way in: its lines staged in a temporary table, then stored whole.

A file of any size is read once into ``import_staging`` (a ``TEMPORARY`` table: one per
connection, on disk, dropped at the end), in chunks, so the importer never holds the file.
What needs the whole file is asked of the table: lines repeated in the file
(:func:`repeats`), each order's lines in line order for its digest (:func:`order_parts`),
the first line of an order named in a problem (:func:`first_lines`). The lines of the orders
this import claimed are then copied into ``purchases`` with one ``INSERT ... SELECT``
(:func:`copy_kept`).

Staging runs outside the import's transaction, so validating a big file holds no write
lock; :func:`queries.write_lock` is taken when the writing starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite

from recocamp.store import notifications
from recocamp.store.engine import driver_cursor
from recocamp.store.queries import CHUNK, claim_orders, customer_conflicts, stored_digests
from recocamp.store.schema import Money, UtcDateTime, orders, purchase_totals, purchases

_temporary = sa.MetaData()
staged = sa.Table(
    "import_staging",
    _temporary,
    sa.Column("src_line", sa.Integer, nullable=False),  # the file's line: where problems are
    sa.Column("order_id", sa.String(64), nullable=False),
    sa.Column("line_no", sa.Integer, nullable=False),
    sa.Column("customer_id", sa.String(64)),
    sa.Column("item_id", sa.String(64), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", Money, nullable=False),
    sa.Column("ordered_at", UtcDateTime, nullable=False),
    sa.Column("is_return", sa.Boolean, nullable=False),
    sa.Column("part", sa.Text, nullable=False),  # domain.order_digest_part of the line
    prefixes=["TEMPORARY"],
)
digested = sa.Table(  # the file's orders, digested (:func:`claim`)
    "import_orders",
    _temporary,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("content_sha256", sa.String(64), nullable=False),
    sa.Column("lines", sa.Integer, nullable=False),
    sa.Column("stored", sa.String(64)),  # the digest stored before; NULL: this import writes it
    prefixes=["TEMPORARY"],
)
# created once the lines are in (kept up to date while they come in, it costs more); the
# customer is in it so that :func:`mixed_orders` reads the index alone
_BY_KEY = sa.text(
    "CREATE INDEX import_staging_key ON import_staging (order_id, line_no, src_line, customer_id)"
)
STAGED_COLUMNS = tuple(column.name for column in staged.c)
LINE_COLUMNS = (
    "order_id",
    "line_no",
    "customer_id",
    "item_id",
    "quantity",
    "unit_price",
    "ordered_at",
    "is_return",
)


IMPORT_CACHE_KIB = 256 * 1024  # SQLite page cache of an importing connection


def create(connection: sa.Connection) -> None:
    """Fresh, empty staging tables on this connection (a failed import may have left some).

    SQLite: the connection's page cache grows to ``IMPORT_CACHE_KIB`` while it imports (the
    default 2 MiB makes every index insert of a big file a read from disk); :func:`drop`
    gives it back. A per-connection setting, outside any transaction's meaning."""
    drop(connection)
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql(f"PRAGMA cache_size = -{IMPORT_CACHE_KIB}")
        connection.exec_driver_sql(f"PRAGMA temp.cache_size = -{IMPORT_CACHE_KIB // 2}")
    staged.create(connection)
    digested.create(connection)


def finish(connection: sa.Connection) -> None:
    """Done with the staging tables (the import committed or rolled back).

    SQLite: the driver's connection is closed (SQLAlchemy opens another when next asked),
    its temporary database with it, the staging tables and the import's page cache gone at
    once: dropping a table of a million lines walks every page of it first. PostgreSQL:
    the tables are dropped — also on an in-memory SQLite database, where the driver's
    connection is the database itself."""
    if connection.dialect.name == "sqlite" and _on_disk(connection.engine.url):
        connection.invalidate()
        return
    drop(connection)
    connection.commit()


def _on_disk(url: sa.URL) -> bool:
    """Whether a SQLite URL names a database file (not ``sqlite://``, ``:memory:`` or a
    ``mode=memory`` URI), which outlives the connection that is closed."""
    database = url.database or ""
    in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
    return not in_memory and url.query.get("mode") != "memory"


def drop(connection: sa.Connection) -> None:
    digested.drop(connection, checkfirst=True)
    staged.drop(connection, checkfirst=True)
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA cache_size = -2000")  # SQLite's default


class Stager:
    """Stages lines through one compiled INSERT run as the driver's ``executemany`` of plain
    tuples: no per-row statement processing of ``connection.execute`` (it cost more than
    reading the lines). The values come as the importer read them (strings, ints, floats
    and bools, which the drivers bind as their columns' types do), the timestamp already
    bound by :meth:`bind_time`."""

    _TIMES_KEPT = 100_000

    def __init__(self, connection: sa.Connection) -> None:
        dialect = connection.dialect
        values: dict[str, Any] = {column.name: sa.bindparam(column.name) for column in staged.c}
        compiled = sa.insert(staged).values(values).compile(dialect=dialect)
        self.connection, self.sql = connection, str(compiled)
        self.positional = compiled.positional and list(compiled.positiontup or ()) == list(
            STAGED_COLUMNS
        )
        processor = staged.c.ordered_at.type.dialect_impl(dialect).bind_processor(dialect)
        self.bind = _sqlite_time if dialect.name == "sqlite" else processor
        self.times: dict[datetime, Any] = {}

    def bind_time(self, value: datetime) -> Any:
        """An aware timestamp as its column binds it, once per distinct value (an order's
        lines share theirs)."""
        bound = self.times.get(value)
        if bound is None:
            if len(self.times) >= self._TIMES_KEPT:
                self.times.clear()
            bound = self.times[value] = value if self.bind is None else self.bind(value)
        return bound

    def bind_times(self, values: list[datetime]) -> list[Any]:
        """:meth:`bind_time` of many timestamps, each distinct one once."""
        bound = {value: self.bind_time(value) for value in set(values)}
        return list(map(bound.__getitem__, values))

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        """Stage lines: tuples of the values of :data:`STAGED_COLUMNS`, the time bound."""
        if not rows:
            return
        if self.positional:
            self.connection.exec_driver_sql(self.sql, rows)
        else:
            named = [dict(zip(STAGED_COLUMNS, row, strict=True)) for row in rows]
            self.connection.exec_driver_sql(self.sql, named)


def _sqlite_time(value: datetime) -> str:
    """What ``UtcDateTime`` binds on SQLite (naive UTC in SQLAlchemy's storage format,
    ``2024-04-01 12:00:00.000000``) in one C call instead of a dozen Python steps."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def index(connection: sa.Connection) -> None:
    """Index the staged lines by order and line once they are all in (faster than keeping
    an index up to date while they come in)."""
    connection.execute(_BY_KEY)


@dataclass(frozen=True, slots=True)
class StagedLine:
    order_id: str
    line_no: int
    src_line: int
    customer_id: str | None
    part: str


def repeats(connection: sa.Connection) -> Iterator[StagedLine]:
    """Every staged line whose (order, line number) is staged more than once, grouped by
    that key and in file order within it."""
    s = staged.c
    twice = (
        sa.select(s.order_id, s.line_no)
        .group_by(s.order_id, s.line_no)
        .having(sa.func.count() > 1)
        .subquery()
    )
    query = (
        sa.select(s.order_id, s.line_no, s.src_line, s.customer_id, s.part)
        .join(twice, sa.and_(s.order_id == twice.c.order_id, s.line_no == twice.c.line_no))
        .order_by(s.order_id, s.line_no, s.src_line)
    )
    for row in connection.execute(query.execution_options(yield_per=CHUNK)):
        yield StagedLine(*row)


def mixed_orders(connection: sa.Connection) -> Iterator[StagedLine]:
    """Every staged line of an order whose lines name more than one customer (a guest line
    names none), by order and in file order within it: an order is one customer's, and the
    store would count such an order once per customer."""
    s = staged.c
    who = sa.func.coalesce(s.customer_id, "")
    mixed = sa.select(s.order_id).group_by(s.order_id).having(sa.func.min(who) != sa.func.max(who))
    query = (
        sa.select(s.order_id, s.line_no, s.src_line, s.customer_id, s.part)
        .where(s.order_id.in_(mixed.scalar_subquery()))
        .order_by(s.order_id, s.src_line)
    )
    for row in connection.execute(query.execution_options(yield_per=CHUNK)):
        yield StagedLine(*row)


def remove(connection: sa.Connection, src_lines: Sequence[int]) -> None:
    """Unstage these file lines (repeats of an earlier line)."""
    for start in range(0, len(src_lines), CHUNK):
        chunk = src_lines[start : start + CHUNK]
        connection.execute(sa.delete(staged).where(staged.c.src_line.in_(chunk)))


def detach(connection: sa.Connection, customer_ids: Iterable[str]) -> int:
    """The staged lines of these (erased) customers become guest lines; returns how many."""
    ids, changed = sorted(customer_ids), 0
    for start in range(0, len(ids), CHUNK):
        statement = (
            sa.update(staged)
            .where(staged.c.customer_id.in_(ids[start : start + CHUNK]))
            .values(customer_id=None)
        )
        changed += connection.execute(statement).rowcount
    return changed


def order_parts(
    connection: sa.Connection, order_ids: Sequence[str] | None = None
) -> Iterator[tuple[str, str]]:
    """``(order id, digest part)`` of every staged line (of these orders), by order and
    line number.

    SQLite: the driver's own tuples, read as its cursor steps (SQLAlchemy's rows cost a
    third of digesting the orders); PostgreSQL: SQLAlchemy's streamed rows, as before."""
    s = staged.c
    query = sa.select(s.order_id, s.part).order_by(s.order_id, s.line_no)
    if order_ids is not None:
        ids = sorted(order_ids)
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            for row in connection.execute(query.where(s.order_id.in_(chunk))):
                yield row[0], row[1]
        return
    if connection.dialect.name != "sqlite":
        for row in connection.execute(query.execution_options(yield_per=CHUNK)):
            yield row[0], row[1]
        return
    with driver_cursor(connection) as cursor:
        yield from cursor.execute(str(query.compile(dialect=connection.dialect)))


def claim(connection: sa.Connection, digests: dict[str, tuple[str, int]]) -> None:
    """Note the file's orders: ``order id → (digest, line count)``, a chunk at a time;
    :func:`claimed` tells what became of them.

    PostgreSQL: each chunk is claimed at once (``queries.claim_orders``: another writer may
    claim the same orders meanwhile; unique keys and row locks decide who wins). SQLite: the
    importer holds the write lock (``queries.write_lock``), so nobody else writes orders
    until it commits, and :func:`claimed` claims them all in two statements instead."""
    ordered = sorted(digests)
    stored: dict[str, str] = {}
    if connection.dialect.name != "sqlite":
        won = claim_orders(connection, {key: digests[key][0] for key in ordered})
        lost = [order_id for order_id in ordered if order_id not in won]
        stored = stored_digests(connection, lost)
        stored |= {order_id: "" for order_id in lost if order_id not in stored}  # a conflict
    rows = [(key, *digests[key], stored.get(key)) for key in ordered]
    _executemany(connection, digested, rows)


def note_digests(connection: sa.Connection, digests: dict[str, tuple[str, int]]) -> None:
    """SQLite: note orders digested while staged (``order id → (digest, line count)``) as
    :func:`claim` notes them; an order noted before keeps what it has (its lines came in
    two runs: :func:`digested_lines` tells)."""
    rows = [(key, *digests[key], None) for key in sorted(digests)]
    if rows:
        compiled = sa.insert(digested).prefix_with("OR IGNORE").compile(dialect=connection.dialect)
        connection.exec_driver_sql(str(compiled), rows)


def digested_lines(connection: sa.Connection) -> int:
    """How many lines the noted orders hold."""
    total = sa.select(sa.func.coalesce(sa.func.sum(digested.c.lines), 0))
    return int(connection.execute(total).scalar_one())


def split_orders(connection: sa.Connection, limit: int) -> list[str]:
    """The noted orders (at most ``limit``) holding fewer lines than are staged for them:
    their lines came in more than one run (:func:`note_digests`)."""
    d, s = digested.c, staged.c
    staged_lines = sa.select(sa.func.count()).where(s.order_id == d.order_id).scalar_subquery()
    query = sa.select(d.order_id).where(d.lines != staged_lines).order_by(d.order_id)
    return list(connection.execute(query.limit(limit)).scalars())


def forget_digests(connection: sa.Connection, order_ids: Sequence[str] | None = None) -> None:
    """Unnote these orders (all without ``order_ids``)."""
    if order_ids is None:
        connection.execute(sa.delete(digested))
        return
    for start in range(0, len(order_ids), CHUNK):
        chunk = order_ids[start : start + CHUNK]
        connection.execute(sa.delete(digested).where(digested.c.order_id.in_(chunk)))


@dataclass(frozen=True, slots=True)
class Claimed:
    """What :func:`claimed` found: lines of orders stored before with the same lines
    (repeats), and the orders stored before with other lines (conflicts): the first
    ``listed`` of them, in id order, and how many."""

    repeated_lines: int
    conflicts: list[str]
    conflicted: int


def claimed(connection: sa.Connection, listed: int) -> Claimed:
    """Claim the noted orders (SQLite, see :func:`claim`) and say what became of them; the
    orders rows of this import are written, their lines by :func:`copy_kept`."""
    d = digested.c
    if connection.dialect.name == "sqlite":
        before = sa.select(orders.c.content_sha256).where(orders.c.order_id == d.order_id)
        connection.execute(sa.update(digested).values(stored=before.scalar_subquery()))
        fresh = sa.select(d.order_id, d.content_sha256).where(d.stored.is_(None))
        connection.execute(
            sa.insert(orders).from_select(
                ["order_id", "content_sha256"], fresh.order_by(d.order_id)
            )
        )
    other = sa.and_(d.stored.is_not(None), d.stored != d.content_sha256)
    repeat = sa.and_(d.stored.is_not(None), d.stored == d.content_sha256)
    counts = sa.select(
        sa.func.count().filter(other), sa.func.coalesce(sa.func.sum(d.lines).filter(repeat), 0)
    )
    conflicted, repeated = connection.execute(counts).one()
    first = sa.select(d.order_id).where(other).order_by(d.order_id).limit(listed)
    return Claimed(int(repeated), list(connection.execute(first).scalars()), int(conflicted))


def moved(connection: sa.Connection, listed: int) -> tuple[list[str], int]:
    """The repeated orders (stored before with the same lines, :func:`claimed`) whose
    stored lines name another customer than the staged ones, or none where these name one
    (a guest order), or one where these name none: the first ``listed`` in id order, and
    how many. The digest leaves the customer out (an erasure makes a customer's lines
    guest lines), so such an order passed for a repeat and stayed where it was; the API
    refuses it (``queries.customer_conflicts``). Staged lines of an erased customer are
    guest lines already (:func:`detach`): their order, stored and unlinked by the
    erasure, stays a repeat. Every staged line of an order names the same customer
    (``ingest`` refuses a file mixing them), so any one of them stands for the order. The
    orders whose stored lines name another id are compared again by
    ``queries.customer_conflicts``, which compares ids composed: ``Jose`` + U+0301, as a
    version before ids were composed stored it, is the ``José`` a file names now."""
    d, s, p = digested.c, staged.c, purchases.c
    staged_customer = (
        sa.select(s.customer_id)
        .where(s.order_id == d.order_id)
        .limit(1)
        .correlate(digested)  # two levels up: not correlated by itself
        .scalar_subquery()
    )
    other = (
        sa.select(p.order_id)
        .where(p.order_id == d.order_id, p.customer_id.is_distinct_from(staged_customer))
        .exists()
    )
    found = sa.and_(d.stored.is_not(None), d.stored == d.content_sha256, other)
    count = connection.execute(sa.select(sa.func.count()).where(found)).scalar_one()
    if not count:
        return [], 0
    named = connection.execute(sa.select(d.order_id, staged_customer).where(found))
    conflicts = customer_conflicts(connection, {order_id: who for order_id, who in named})
    return conflicts[:listed], len(conflicts)


def copy_kept(connection: sa.Connection, import_run_id: int, lines: int) -> None:
    """Copy the staged lines of the orders this import claimed (``lines`` of them) into
    ``purchases``.

    SQLite: the lines go in by order and line number, the order of the unique key (and of
    the staging index), so that index is only appended to. The other indexes (customer
    and time, time, item) take them in random order, four fifths of the copy's cost: when
    the copy at least doubles the table (a first import, typically) they are dropped and
    built again after it, in the same transaction, sorting all rows once instead of a
    random insert per line (1M lines: 5.1 → 3.3 CPU seconds). Readers keep their snapshot
    (WAL), indexes included; a big copy also logs its change for serving at once
    (:func:`_suspended_trigger`). PostgreSQL copies as before: dropping an index there would
    lock the table for every reader until the commit."""
    columns = [staged.c[name] for name in LINE_COLUMNS]
    source = (
        sa.select(*columns, sa.literal(import_run_id, sa.Integer))
        .join(digested, digested.c.order_id == staged.c.order_id)
        .where(digested.c.stored.is_(None))
    )
    if connection.dialect.name == "sqlite":  # read along both keys: no sorting
        source = source.order_by(digested.c.order_id, staged.c.line_no)
    target = [*LINE_COLUMNS, "import_run_id"]
    rebuilt = _rebuilt_indexes(connection, lines)
    trigger = _suspended_trigger(connection, lines, SERVING_TRIGGER)
    totalling = _suspended_trigger(connection, lines, TOTALS_TRIGGER)
    below = connection.execute(sa.select(sa.func.max(purchases.c.id))).scalar() or 0
    for index in rebuilt:
        index.drop(connection)
    connection.execute(sa.insert(purchases).from_select(target, source))
    for index in rebuilt:
        index.create(connection)
    if trigger is not None:
        notifications.everything(connection)
        connection.exec_driver_sql(trigger)
    if totalling is not None:
        add_totals(connection, int(below))
        connection.exec_driver_sql(totalling)


SERVING_TRIGGER = "serving_purchases_insert"  # migration 0013: a change-log row per line
TOTALS_TRIGGER = "purchase_totals_insert"  # migration 0016: an upsert of the totals per line


def _suspended_trigger(connection: sa.Connection, lines: int, name: str) -> str | None:
    """SQLite, copying more lines than a serving reader takes one by one
    (``notifications.BEHIND``): a per-line trigger of purchase lines dropped for the copy
    (the change log's: a row per line, a tenth of its cost; the totals': an upsert per
    line), its statement returned to create it again as it was, after the copy did at once
    what it would have done line by line (:func:`notifications.everything`,
    :func:`add_totals`). Else None: the trigger sees the lines."""
    if connection.dialect.name != "sqlite" or lines <= notifications.BEHIND:
        return None
    query = sa.text("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :name")
    statement = connection.execute(query, {"name": name}).scalar()
    if statement is None:
        return None
    connection.exec_driver_sql(f"DROP TRIGGER {name}")
    return str(statement)


def add_totals(connection: sa.Connection, below: int) -> None:
    """Add the lines with an id above ``below`` (SQLite gives a copy's lines ids above every
    older one) to their customers' ``purchase_totals``, as migration 0016's insert trigger
    does line by line: one grouped statement for a big copy."""
    p, t = purchases.c, purchase_totals.c
    new = (
        sa.select(p.customer_id, sa.func.count(), sa.func.sum(p.id))
        .where(p.id > below, p.customer_id.is_not(None))
        .group_by(p.customer_id)
    )
    insert = sqlite.insert(purchase_totals).from_select(["customer_id", "lines", "id_sum"], new)
    excluded = insert.excluded
    connection.execute(
        insert.on_conflict_do_update(
            index_elements=[t.customer_id],
            set_={"lines": t.lines + excluded.lines, "id_sum": t.id_sum + excluded.id_sum},
        )
    )


def _rebuilt_indexes(connection: sa.Connection, lines: int) -> list[sa.Index]:
    """The secondary indexes of ``purchases`` to build again after copying ``lines``: all
    of them on SQLite when the table holds no more rows than that (its largest id bounds
    them, read from the primary key at once), else none."""
    if connection.dialect.name != "sqlite" or lines == 0:
        return []
    largest = connection.execute(sa.select(sa.func.max(purchases.c.id))).scalar_one()
    if (largest or 0) > lines:
        return []
    return sorted(purchases.indexes, key=lambda index: str(index.name))


def _executemany(connection: sa.Connection, table: sa.Table, rows: list[tuple[Any, ...]]) -> None:
    """Insert plain tuples (all columns, in order) as one driver ``executemany``."""
    if not rows:
        return
    compiled = sa.insert(table).compile(dialect=connection.dialect)
    names = [column.name for column in table.c]
    if compiled.positional and list(compiled.positiontup or ()) == names:
        connection.exec_driver_sql(str(compiled), rows)
    else:
        connection.exec_driver_sql(
            str(compiled), [dict(zip(names, row, strict=True)) for row in rows]
        )


@dataclass(frozen=True, slots=True)
class Totals:
    lines: int
    returns: int
    guests: int


def totals(connection: sa.Connection) -> Totals:
    s = staged.c
    query = sa.select(
        sa.func.count(),
        sa.func.coalesce(sa.func.sum(sa.case((s.is_return.is_(True), 1), else_=0)), 0),
        sa.func.coalesce(sa.func.sum(sa.case((s.customer_id.is_(None), 1), else_=0)), 0),
    ).select_from(staged)
    lines, returns, guests = connection.execute(query).one()
    return Totals(int(lines), int(returns), int(guests))


def first_lines(connection: sa.Connection, order_ids: Sequence[str]) -> dict[str, int]:
    """The file line each of these orders starts on."""
    s = staged.c
    found: dict[str, int] = {}
    for start in range(0, len(order_ids), CHUNK):
        query = (
            sa.select(s.order_id, sa.func.min(s.src_line))
            .where(s.order_id.in_(order_ids[start : start + CHUNK]))
            .group_by(s.order_id)
        )
        found.update((row[0], int(row[1])) for row in connection.execute(query))
    return found
