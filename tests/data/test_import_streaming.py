"""A purchases file streams through the importer: chunked staging keeps all-or-nothing, the
whole problem list and the whole-file repeat check; a huge record is refused unread."""

from __future__ import annotations

import gzip
import hashlib
import io
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from recocamp.data import ingest
from recocamp.data.ingest import Importer
from recocamp.data.sources import csv as sources
from recocamp.domain import OrderDigestParts, Purchase, order_digest, order_digest_part
from recocamp.errors import DataImportError
from recocamp.store import notifications, queries, staging, tombstones
from recocamp.store.engine import make_engine, upgrade
from recocamp.store.schema import import_runs, orders, purchases, serving_changes
from tests.conftest import NOW, impatient, write_csv
from tests.data.test_ingest import LONDON
from tests.store.test_purchase_totals import kept as totals_kept
from tests.store.test_purchase_totals import scanned as totals_scanned

HEADER = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at", "line_no"]


def line(order: int, line_no: int = 1, quantity: int = 1) -> list[object]:
    return [
        f"o{order}",
        f"c{order % 3}",
        f"i{line_no}",
        quantity,
        "2.5",
        "2024-04-01T12:00:00Z",
        line_no,
    ]


def lines(count: int) -> list[list[object]]:
    """``count`` lines: orders of two lines each."""
    return [line(n // 2, n % 2 + 1) for n in range(count)]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage 3 lines and claim 2 orders at a time: a 20-line file takes many chunks."""
    monkeypatch.setattr(ingest, "STAGE_CHUNK", 3)
    monkeypatch.setattr(ingest, "CLAIM_CHUNK", 2)


def importer(engine: sa.Engine, max_listed: int = 20) -> Importer:
    return Importer(engine, zone=LONDON, now=NOW, max_listed=max_listed)


def stored(engine: sa.Engine) -> tuple[int, int, int]:
    """Rows in purchases, orders and import_runs."""
    with engine.connect() as connection:
        return (
            queries.count(connection, purchases),
            queries.count(connection, orders),
            queries.count(connection, import_runs),
        )


def test_a_problem_on_the_last_line_of_a_many_chunk_file_writes_nothing(
    engine: sa.Engine, tmp_path: Path, small_chunks: None
) -> None:
    rows = [*lines(20), ["o99", "c1", "i1", "many", "2.5", "2024-04-01T12:00:00Z", 1]]
    path = write_csv(tmp_path / "p.csv", HEADER, rows)
    with pytest.raises(DataImportError) as caught:
        importer(engine).purchases(path)
    assert [(p.line, p.column, p.value) for p in caught.value.problems] == [
        (22, "quantity", "many")
    ]
    assert stored(engine) == (0, 0, 0)


def test_a_conflict_in_a_late_claim_chunk_undoes_the_orders_claimed_before_it(
    engine: sa.Engine, tmp_path: Path, small_chunks: None
) -> None:
    other = Purchase("o8", 1, None, "other", 1, 2.5, NOW, False)
    with engine.begin() as connection:
        queries.insert_purchases(connection, [other], None)
    path = write_csv(tmp_path / "p.csv", HEADER, lines(20))
    with pytest.raises(DataImportError) as caught:
        importer(engine).purchases(path)
    assert [(p.line, p.value) for p in caught.value.problems] == [(18, "o8")]
    assert stored(engine) == (1, 1, 0)


def test_every_problem_is_listed_across_chunks_in_file_order(
    engine: sa.Engine, tmp_path: Path, small_chunks: None
) -> None:
    rows = lines(20)
    rows[16][2] = ""  # line 18: no item
    rows[1][4] = "free"  # line 3
    rows[9] = [*line(40)[:6], 1]  # line 11
    rows[12] = [*line(40, quantity=7)[:6], 1]  # line 14: repeats o40's line 1, other content
    path = write_csv(tmp_path / "p.csv", HEADER, rows)
    with pytest.raises(DataImportError) as caught:
        importer(engine).purchases(path)
    assert [(p.line, p.column) for p in caught.value.problems] == [
        (3, "unit_price"),
        (14, "line_no"),
        (18, "item_id"),
    ]
    assert "repeats line 1 of order 'o40' with other content" in caught.value.problems[1].message
    with pytest.raises(DataImportError) as capped:
        importer(engine, max_listed=2).purchases(path)
    assert [p.line for p in capped.value.problems] == [3, 14]
    assert capped.value.more == 1
    assert stored(engine) == (0, 0, 0)


def test_a_repeat_in_another_chunk_is_skipped_and_stored_once(
    engine: sa.Engine, tmp_path: Path, small_chunks: None
) -> None:
    rows = [*lines(20), line(0, 1)]  # line 22 repeats line 2
    path = write_csv(tmp_path / "p.csv", HEADER, rows)
    report = importer(engine).purchases(path)
    assert (report.rows_read, report.imported, report.skipped) == (21, 20, {"repeated line": 1})
    assert stored(engine) == (20, 10, 1)
    again = write_csv(tmp_path / "q.csv", HEADER, [*lines(20), line(19, 1), line(19, 2)])
    assert importer(engine).purchases(again).duplicates == 20  # every order stored before


def test_file_lines_are_stored_as_the_store_writes_them(engine: sa.Engine, tmp_path: Path) -> None:
    """The fast staging binds values itself: they must be stored exactly as a line written
    through SQLAlchemy is (SQLite compares stored times as text)."""
    path = write_csv(tmp_path / "p.csv", HEADER, [line(1)])
    importer(engine).purchases(path)
    at = datetime(2024, 4, 1, 12, tzinfo=UTC)
    posted = Purchase("o2", 1, "c1", "i1", 1, 2.5, at, False)
    with engine.begin() as connection:
        queries.insert_purchases(connection, [posted], None)
    query = "SELECT ordered_at, unit_price, is_return FROM purchases ORDER BY order_id"
    with engine.connect() as connection:
        from_file, through_store = connection.exec_driver_sql(query).all()
    assert tuple(from_file) == tuple(through_store)


class Endless(io.RawIOBase):
    """A header, one good line, then a line of ``size`` bytes made on demand; counts what
    the reader takes."""

    def __init__(self, size: int) -> None:
        self.start = (",".join(HEADER) + "\n" + ",".join(map(str, line(1))) + "\nx").encode()
        self.left, self.served = size, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        if self.start:
            count = min(len(buffer), len(self.start))
            buffer[:count], self.start = self.start[:count], self.start[count:]
        else:
            count = min(len(buffer), self.left)
            buffer[:count] = b"x" * count
            self.left -= count
        self.served += count
        return count


def test_a_3_gb_record_is_refused_after_reading_about_its_limit(tmp_path: Path) -> None:
    raw = Endless(3 * 1024**3)
    handle = io.TextIOWrapper(io.BufferedReader(raw), encoding="utf-8", newline="")
    rows = list(sources.read_rows(tmp_path / "p.csv", tuple(HEADER), handle))
    assert [number for number, _ in rows] == [2, 3]
    with pytest.raises(sources.RowProblem, match="longer than 1,000,000 characters"):
        sources.check_width(rows[1][1])
    assert raw.served < 2 * sources.RECORD_MAX


def test_a_huge_line_in_a_small_gzip_is_refused_in_little_memory(
    engine: sa.Engine, tmp_path: Path
) -> None:
    path = tmp_path / "p.csv.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write((",".join(HEADER) + "\n" + ",".join(map(str, line(1))) + "\n").encode())
        block = b"x" * (1 << 20)
        for _ in range(64):
            out.write(block)
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(DataImportError) as caught:
            importer(engine).purchases(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(p.line, p.column) for p in caught.value.problems] == [(3, "*")]
    assert peak < 16 * 1024**2  # the line is 64 MiB
    assert stored(engine) == (0, 0, 0)


def test_an_orders_digest_from_streamed_parts_is_the_orders_digest() -> None:
    """Parts with their texts kept digest to what ``order_digest`` gives the lines (a repeat
    posted through the API is recognised as one); 2.00005 rounds as NUMERIC does."""
    at = datetime(2024, 4, 1, 12, tzinfo=LONDON)
    order = [
        Purchase("o1", 2, "c1", "i2", 3, 2.00005, at, False),
        Purchase("o1", 1, "c1", "i1", -1, 0.0, at, True),
        Purchase("o1", 3, None, "i1", 1, -0.0, at, False),
    ]
    parts = OrderDigestParts(kept=1)  # forgets at once: both paths of the cache are taken
    digest = hashlib.sha256()
    for purchase in sorted(order, key=lambda p: p.line_no):
        digest.update(parts(purchase).encode())
    assert digest.hexdigest() == order_digest(order)
    assert "2.0001" in parts(order[0])
    many = OrderDigestParts(kept=1).many(
        [p.line_no for p in order],
        [p.item_id for p in order],
        [p.quantity for p in order],
        [p.unit_price for p in order],
        [p.ordered_at for p in order],
        [p.is_return for p in order],
    )
    assert many == [order_digest_part(purchase) for purchase in order]


def test_the_validating_pass_holds_no_write_lock(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big file takes minutes to read: the shop's purchase events must not wait for it
    (an impatient writer fails after 0.1 s if a lock is held)."""
    other = impatient(engine) if engine.dialect.name == "sqlite" else engine
    index = staging.index

    def index_then_let_another_write(connection: sa.Connection) -> None:
        index(connection)
        posted = Purchase("posted", 1, "c1", "i1", 1, 2.5, NOW, False)
        with other.begin() as elsewhere:
            queries.insert_purchases(elsewhere, [posted], None)

    monkeypatch.setattr(staging, "index", index_then_let_another_write)
    path = write_csv(tmp_path / "p.csv", HEADER, lines(4))
    assert importer(engine).purchases(path).imported == 4
    assert stored(engine) == (5, 3, 1)


def test_erased_customers_are_found_across_tombstone_rounds(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Customers are checked against the tombstones a round at a time: an erased one in any
    round has their lines stored as guest lines."""
    monkeypatch.setattr(ingest, "ERASED_CHUNK", 1)
    key = b"k" * 32
    with engine.begin() as connection:
        tombstones.record(connection, key, "c2", None, NOW)
    path = write_csv(tmp_path / "p.csv", HEADER, lines(12))  # customers c0, c1, c2
    report = Importer(engine, zone=LONDON, now=NOW, erasure_key=key).purchases(path)
    assert report.details["erased_customer_lines"] == 4
    with engine.connect() as connection:
        customers = connection.execute(sa.select(purchases.c.customer_id)).scalars().all()
    assert sorted(set(customers), key=str) == [None, "c0", "c1"]
    assert customers.count(None) == 4


def test_an_import_names_the_customers_it_wrote_lines_for_in_the_change_log(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """Serving processes learn of an import's lines (migration 0013's triggers): each
    customer whose lines it wrote is named, an erased one is not, a repeat names nobody."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's change log")
    key = b"k" * 32
    with engine.begin() as connection:
        tombstones.record(connection, key, "c2", None, NOW)
    log = notifications.ChangeLog(engine)
    seq = log.last()
    path = write_csv(tmp_path / "p.csv", HEADER, lines(12))  # customers c0, c1, c2
    Importer(engine, zone=LONDON, now=NOW, erasure_key=key).purchases(path)
    seq, named = log.since(seq)
    assert named is not None and sorted(set(named)) == ["c0", "c1"]
    again = write_csv(tmp_path / "q.csv", HEADER, lines(12))
    again.write_text(again.read_text() + "\n")  # the same lines in another file
    Importer(engine, zone=LONDON, now=NOW, erasure_key=key).purchases(again)
    assert log.since(seq) == (seq, [])


def _purchases_indexes(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as connection:
        found = sa.inspect(connection).get_indexes("purchases")
    return sorted((str(ix["name"]), ",".join(map(str, ix["column_names"]))) for ix in found)


def test_an_import_leaves_the_purchases_indexes_as_migrated_and_whole(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """A first import (SQLite: the secondary indexes built again after the copy) and a
    small one into a bigger table (no rebuild) both leave every index as the migrations
    made it, holding every line (SQLite's integrity check compares them with the table)."""
    dropped: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        if statement.lstrip().upper().startswith("DROP INDEX"):
            dropped.append(statement.split()[-1].strip('"'))

    before = _purchases_indexes(engine)
    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        importer(engine).purchases(write_csv(tmp_path / "a.csv", HEADER, lines(40)))
        first = sorted(dropped)
        later = [line(100 + n) for n in range(3)]
        importer(engine).purchases(write_csv(tmp_path / "b.csv", HEADER, later))
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert _purchases_indexes(engine) == before
    if engine.dialect.name == "sqlite":
        assert first == sorted(name for name, _ in before if name.startswith("ix_"))
        assert len(dropped) == len(first)  # the second import rebuilt nothing
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    else:
        assert dropped == []
    assert stored(engine)[0] == 43


def test_a_big_import_tells_serving_readers_everything_and_keeps_its_trigger(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: an import of more lines than a reader takes one by one logs one "everything"
    row instead of a row per line (the readers' conclusion either way), and the purchases
    trigger is there again afterwards, as migrated, logging the next line written."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's change log")
    monkeypatch.setattr(notifications, "BEHIND", 5)
    trigger = "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :name"
    name = {"name": staging.SERVING_TRIGGER}
    with engine.connect() as connection:
        before = connection.execute(sa.text(trigger), name).scalar()
        logged = connection.execute(sa.select(sa.func.count()).select_from(serving_changes))
        rows_before = logged.scalar_one()
    log = notifications.ChangeLog(engine)
    seq = log.last()
    importer(engine).purchases(write_csv(tmp_path / "p.csv", HEADER, lines(12)))
    seq, named = log.since(seq)
    assert named is None and seq == log.last()
    with engine.begin() as connection:
        assert connection.execute(sa.text(trigger), name).scalar() == before
        count = sa.select(sa.func.count()).select_from(serving_changes)
        assert connection.execute(count).scalar_one() == rows_before + 1
        posted = Purchase("o99", 1, "c9", "i1", 1, 2.5, NOW, False)
        queries.insert_purchases(connection, [posted], None)
    assert log.since(seq) == (seq + 1, ["c9"])


def test_a_big_import_adds_its_lines_to_the_purchase_totals_at_once(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import of more lines than a reader takes one by one gives the totals a scan
    gives, to customers with lines already (SQLite suspends the totals' per-line trigger
    for it and adds its lines in one statement; PostgreSQL's trigger is per statement); on
    SQLite the trigger is back afterwards as migrated, counting the next line."""
    monkeypatch.setattr(notifications, "BEHIND", 5)
    sqlite = engine.dialect.name == "sqlite"
    add = "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = :name"
    name = {"name": staging.TOTALS_TRIGGER}
    with engine.connect() as connection:
        before = connection.execute(sa.text(add), name).scalar() if sqlite else None
    importer(engine).purchases(write_csv(tmp_path / "a.csv", HEADER, lines(4)))  # one by one
    importer(engine).purchases(
        write_csv(tmp_path / "b.csv", HEADER, [line(n) for n in range(2, 14)])
    )
    assert totals_kept(engine) == totals_scanned(engine) and len(totals_kept(engine)) == 3
    with engine.begin() as connection:
        if sqlite:
            assert connection.execute(sa.text(add), name).scalar() == before
        posted = Purchase("o99", 1, "c9", "i1", 1, 2.5, NOW, False)
        queries.insert_purchases(connection, [posted], None)
    assert totals_kept(engine) == totals_scanned(engine) and "c9" in totals_kept(engine)


@pytest.mark.parametrize("claim_chunk", [5000, 2], ids=["few-split", "many-split"])
def test_orders_in_more_than_one_run_are_digested_from_all_their_lines(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, claim_chunk: int
) -> None:
    """Lines numbered in file order are digested as they are staged, order by order; an
    order whose lines come in two runs (or, past CLAIM_CHUNK of them, every order) is
    digested again from all its lines: the same digests as the file in order id order."""
    monkeypatch.setattr(ingest, "STAGE_CHUNK", 3)
    monkeypatch.setattr(ingest, "CLAIM_CHUNK", claim_chunk)
    runs = [line(order, n, quantity=n) for order in range(6) for n in (1, 2)]
    runs += [line(order, 3, quantity=3) for order in (0, 2, 4)]  # 3 orders in two runs
    split = write_csv(tmp_path / "split.csv", HEADER[:6], [row[:6] for row in runs])
    report = importer(engine).purchases(split)
    assert (report.imported, report.duplicates) == (15, 0)
    with engine.connect() as connection:
        query = sa.select(orders.c.order_id, orders.c.content_sha256)
        digests = {str(row[0]): str(row[1]) for row in connection.execute(query)}
        rows = connection.execute(sa.select(purchases).order_by(purchases.c.id)).all()
    for order_id, digest in digests.items():
        order = [Purchase(*row[1:9]) for row in rows if row.order_id == order_id]
        assert digest == order_digest(order)
    assert sorted(len([r for r in rows if r.order_id == o]) for o in digests) == [2] * 3 + [3] * 3
    in_order = sorted(runs, key=lambda row: str(row[0]))  # stable: each order's lines in order
    again = write_csv(tmp_path / "in_order.csv", HEADER[:6], [row[:6] for row in in_order])
    report = importer(engine).purchases(again)
    assert (report.imported, report.duplicates) == (0, 15)


def test_orders_with_given_line_numbers_out_of_order_or_repeated_are_digested_whole(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Given line numbers: an order whose lines are not in line order, or come in two
    runs, one of them a repeat, is digested from its staged lines in line order."""
    monkeypatch.setattr(ingest, "STAGE_CHUNK", 2)
    rows = [line(1, 3), line(1, 1), line(2, 1), line(2, 2), line(3, 1), line(2, 2)]
    rows += [line(3, 2), line(4, 1), line(4, 2), line(5, 1), line(4, 3)]
    report = importer(engine).purchases(write_csv(tmp_path / "p.csv", HEADER, rows))
    assert (report.imported, report.skipped) == (10, {"repeated line": 1})
    with engine.connect() as connection:
        query = sa.select(orders.c.order_id, orders.c.content_sha256)
        digests = {str(row[0]): str(row[1]) for row in connection.execute(query)}
        stored_rows = connection.execute(sa.select(purchases)).all()
    for order_id, digest in digests.items():
        order = [Purchase(*row[1:9]) for row in stored_rows if row.order_id == order_id]
        assert digest == order_digest(order)
    in_order = sorted(set(map(tuple, rows)), key=lambda row: (str(row[0]), int(str(row[6]))))
    again = write_csv(tmp_path / "in_order.csv", HEADER, [list(row) for row in in_order])
    report = importer(engine).purchases(again)
    assert (report.imported, report.duplicates) == (0, 10)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_an_in_memory_store_keeps_what_two_imports_wrote(url: str, tmp_path: Path) -> None:
    """A file's SQLite import ends by closing the driver's connection (its staging tables go
    at once); an in-memory database is that connection, so it drops them instead."""
    memory = make_engine(url)
    upgrade(memory)
    importer(memory).purchases(write_csv(tmp_path / "a.csv", HEADER, lines(4)))
    importer(memory).purchases(write_csv(tmp_path / "b.csv", HEADER, [line(7), line(8)]))
    assert stored(memory) == (6, 4, 2)
