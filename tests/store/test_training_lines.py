"""The training read (``training_lines.training_lines``): on SQLite each id range comes back as
joined columns; what it yields must be exactly what the row-by-row read yields, the rows
the learning rules allow, in line-id order, with bit-identical epochs (a model's data
fingerprint hashes them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa

from recocamp.domain import Customer, Item, Purchase
from recocamp.store import queries, training_lines
from recocamp.store.schema import purchases

NOW = datetime(2025, 1, 1, tzinfo=UTC)
START = datetime(2024, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)


def _shop(engine: sa.Engine, separator: bool = True) -> list[Purchase]:
    """Forty orders of one to three lines, times with microseconds, and every kind of line
    the rules leave out; order 20's customer id holds the separator (``separator``)."""
    learnable: list[Purchase] = []
    stored: list[Purchase] = []
    for number in range(40):
        customer = "c\x1f20" if number == 20 and separator else f"c{number % 7}"
        at = START + timedelta(days=number * 3, microseconds=number * 7919)
        for line in range(number % 3 + 1):
            row = Purchase(f"o{number}", line + 1, customer, f"i{(number + line) % 5}", 1, 2.5, at)
            stored.append(row)
            learnable.append(row)
        stored += [  # left out: a return, a guest, a free line, a service, an objector
            Purchase(f"o{number}", 10, customer, "i1", -1, 2.5, at, is_return=True),
            Purchase(f"g{number}", 1, None, "i1", 1, 2.5, at),
            Purchase(f"o{number}", 11, customer, "i2", 1, 0.0, at),
            Purchase(f"o{number}", 12, customer, "postage", 1, 3.0, at),
            Purchase(f"x{number}", 1, "objector", "i3", 1, 2.5, at),
        ]
    items = [Item(f"i{n}", f"Item {n}", "tea", 2.5) for n in range(5)]
    items.append(Item("postage", "Postage", "service", 3.0, is_service=True))
    with engine.begin() as connection:
        queries.upsert_items(connection, items, NOW)
        queries.upsert_customers(
            connection, [Customer("objector", None, objected_to_profiling=True)], NOW
        )
        queries.insert_purchases(connection, stored, None)
    return learnable


def _read(
    parts: list[training_lines.LineColumns],
) -> tuple[list[str], list[str], list[str], np.ndarray]:
    customer = [value for part in parts for value in part.customer]
    item = [value for part in parts for value in part.item]
    order = [value for part in parts for value in part.order]
    return customer, item, order, np.concatenate([part.at for part in parts])


def test_joined_ranges_yield_exactly_the_row_by_row_read(engine: sa.Engine) -> None:
    learnable = _shop(engine)
    until = START + timedelta(days=90)
    with engine.connect() as connection:
        for limit in (None, until):
            joined = list(training_lines.training_lines(connection, limit, chunk=16))
            rows = list(training_lines.line_rows(connection, limit, chunk=1000))
            expected = [row for row in learnable if limit is None or row.ordered_at < limit]
            customer, item, order, at = _read(joined)
            if engine.dialect.name == "sqlite":  # PostgreSQL reads row by row, in one chunk
                assert len(joined) > 3  # several ranges, one of them read row by row
            got = sorted(zip(customer, item, order, at.round(3).tolist(), strict=True))
            assert got == sorted(
                (row.customer_id, row.item_id, row.order_id, round(row.ordered_at.timestamp(), 3))
                for row in expected
            )
            reference = _read(rows)  # in line-id order (ORDER BY id)
            assert (customer, item, order) == reference[:3]
            assert at.tobytes() == reference[3].tobytes()  # bit for bit


def test_an_empty_store_yields_nothing(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        assert list(training_lines.training_lines(connection)) == []
        numbered = training_lines.numbered_training_lines(connection)
    if engine.dialect.name == "sqlite":
        assert numbered is not None
        assert len(numbered.at) == len(numbered.customer) == len(numbered.order) == 0
        assert numbered.customer_ids == numbered.item_ids == []


def _named(numbered: training_lines.NumberedLines) -> tuple[list[str], list[str], list[int]]:
    """Customer and item ids by line, and each line's order as the number of the first line
    of its order (numbers are arbitrary; which lines share one is the point)."""
    first: dict[int, int] = {}
    orders = [first.setdefault(int(n), line) for line, n in enumerate(numbered.order)]
    customers = [numbered.customer_ids[n] for n in numbered.customer.tolist()]
    return customers, [numbered.item_ids[n] for n in numbered.item.tolist()], orders


def test_numbered_lines_are_the_row_by_row_read_with_ids_as_numbers(engine: sa.Engine) -> None:
    _shop(engine, separator=False)
    until = START + timedelta(days=90)
    with engine.connect() as connection:
        for limit in (None, until):
            numbered = training_lines.numbered_training_lines(connection, limit, chunk=16)
            rows = list(training_lines.line_rows(connection, limit, chunk=1000))
            if engine.dialect.name != "sqlite":  # PostgreSQL streams (training_lines)
                assert numbered is None
                continue
            assert numbered is not None
            customer, item, order, at = _read(rows)  # in line-id order (ORDER BY id)
            first = {key: order.index(key) for key in order}
            assert _named(numbered) == (customer, item, [first[key] for key in order])
            assert numbered.at.tobytes() == at.tobytes()  # bit for bit
            assert "objector" in numbered.customer_ids  # a vocabulary of every line's ids
            assert "objector" not in customer


def test_an_id_holding_the_separator_leaves_the_read_to_training_lines(
    engine: sa.Engine,
) -> None:
    _shop(engine)
    with engine.connect() as connection:
        assert training_lines.numbered_training_lines(connection) is None


def test_a_grouped_read_over_sqlites_length_limit_leaves_the_read_to_streaming(
    engine: sa.Engine,
) -> None:
    """A joined column longer than SQLite's length limit (10⁹ bytes: ~100 M lines) raises
    "string or blob too big"; the read then streams instead of failing the training. The
    limit is lowered on this connection to stand in for a store that size."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's length limit (PostgreSQL streams anyway)")
    import sqlite3

    _shop(engine, separator=False)
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        driver.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 40)
        try:
            assert training_lines.numbered_training_lines(connection, chunk=16) is None
        finally:
            driver.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1_000_000_000)
        assert training_lines.numbered_training_lines(connection, chunk=16) is not None


def test_the_numbered_read_sees_one_snapshot(engine: sa.Engine) -> None:
    """A line moved to another customer between the read's statements (the lines, then each
    id column's groups) is read as it was when the read began, not half moved."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL streams the lines in one statement")
    _shop(engine, separator=False)
    with engine.connect() as connection:
        before = training_lines.numbered_training_lines(connection)
    assert before is not None
    moved: list[bool] = []

    def move_a_line(*args: object) -> None:
        if "julianday" in str(args[2]) and not moved:  # the lines read, the groups not yet
            moved.append(True)
            with engine.begin() as other:
                other.execute(
                    sa.update(purchases)
                    .where(purchases.c.order_id == "o1", purchases.c.line_no == 1)
                    .values(customer_id="c-new")
                )

    sa.event.listen(engine, "after_cursor_execute", move_a_line)
    try:
        with engine.connect() as connection:
            during = training_lines.numbered_training_lines(connection)
    finally:
        sa.event.remove(engine, "after_cursor_execute", move_a_line)
    assert moved
    assert during is not None and _named(during) == _named(before)
    with engine.connect() as connection:
        after = training_lines.numbered_training_lines(connection)
    assert after is not None and "c-new" in _named(after)[0]


def test_columns_aggregated_out_of_id_order_are_put_back_in_it() -> None:
    ids = np.array([7, 3, 5])
    columns = [["c7", "c3", "c5"], ["i7", "i3", "i5"], ["o7", "o3", "o5"]]
    part = training_lines.in_id_order(ids, columns, np.array([7.0, 3.0, 5.0]))
    assert part.customer == ["c3", "c5", "c7"]
    assert part.item == ["i3", "i5", "i7"]
    assert part.order == ["o3", "o5", "o7"]
    assert part.at.tolist() == [3.0, 5.0, 7.0]


def test_amounts_align_with_the_training_lines_one_for_one(engine: sa.Engine) -> None:
    """Each learnable line's quantity and price, in the order the training read yields the
    lines: the ablation's quantity and spend signals are read line by line beside them."""
    stored = []
    for number in range(12):
        at = START + timedelta(days=number)
        customer = f"c{number % 3}"
        stored += [
            Purchase(f"o{number}", 1, customer, f"i{number % 4}", number + 1, 1.0 + number, at),
            Purchase(f"o{number}", 2, customer, "i1", -2, 2.5, at, is_return=True),
            Purchase(f"g{number}", 1, None, "i2", 7, 2.5, at),
            Purchase(f"o{number}", 3, customer, "i4", 2 * number + 1, 0.5, at),
        ]
    with engine.begin() as connection:
        queries.upsert_items(
            connection, [Item(f"i{n}", f"Item {n}", "tea", 2.5) for n in range(5)], NOW
        )
        queries.insert_purchases(connection, stored, None)
    with engine.connect() as connection:
        lines = list(training_lines.training_lines(connection))
        quantity, price = training_lines.training_line_amounts(connection)
    keys = [key for part in lines for key in zip(part.order, part.item, strict=True)]
    learnable = [row for row in stored if row.customer_id and not row.is_return]
    amounts = {(row.order_id, row.item_id): (row.quantity, row.unit_price) for row in learnable}
    assert len(keys) == 24
    assert list(zip(quantity.tolist(), price.tolist(), strict=True)) == [amounts[k] for k in keys]


def test_a_shop_recording_dates_only_learns_nothing_of_the_cutoff_day(engine: sa.Engine) -> None:
    """Orders stamped at the shop's midnight (shops that record dates only): a training or an
    evaluation until day D's midnight must not see D's order. Turned into seconds through
    SQLite's julian day, most Berlin midnights came out a hair before themselves (651 of
    1,095), and ``< until`` let the cutoff day's orders in; every read exact now."""
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    midnights = [datetime(2010, 1, 1, tzinfo=berlin) + timedelta(days=n) for n in range(120)]
    with engine.begin() as connection:
        queries.upsert_items(connection, [Item("i1", "Item", "tea", 2.5)], NOW)
        stored = [Purchase(f"o{n}", 1, "c1", "i1", 1, 2.5, at) for n, at in enumerate(midnights)]
        queries.insert_purchases(connection, stored, None)
    with engine.connect() as connection:
        for cutoff in midnights[1::7]:
            expected = sorted(p.order_id for p in stored if p.ordered_at < cutoff)
            read = _read(list(training_lines.training_lines(connection, cutoff, chunk=16)))
            assert sorted(read[2]) == expected, cutoff
            assert read[3].max() == (cutoff - timedelta(days=1)).timestamp()  # exact
            numbered = training_lines.numbered_training_lines(connection, cutoff, chunk=16)
            if numbered is not None:  # SQLite's fast read
                assert len(numbered.at) == len(expected), cutoff


def test_statements_read_ahead_in_order_and_hand_their_errors_over(engine: sa.Engine) -> None:
    """``read_ahead`` gives each statement's row in order (executed on its own thread), a
    statement's error where its row is taken, and leaves the connection to the caller
    however the block ends: early, or on the error."""
    numbers: list[training_lines.Statement] = [(sa.select(sa.literal(n) * 2), {}) for n in range(5)]
    broken: training_lines.Statement = (sa.text("SELECT * FROM no_such_table"), {})
    with engine.connect() as connection:
        with training_lines.read_ahead(connection, numbers) as rows:
            assert [row[0] for row in rows] == [0, 2, 4, 6, 8]
        with training_lines.read_ahead(connection, numbers) as rows:  # left after the first row
            assert next(rows)[0] == 0
        assert connection.execute(sa.select(sa.literal(7))).scalar() == 7
        with (
            pytest.raises(sa.exc.DBAPIError),
            training_lines.read_ahead(connection, [numbers[1], broken, numbers[2]]) as rows,
        ):
            assert next(rows)[0] == 2
            next(rows)
    with engine.connect() as connection:  # nothing left running on the pool's connection
        assert connection.execute(sa.select(sa.literal(8))).scalar() == 8
