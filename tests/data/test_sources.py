"""The fast reading of standard purchase lines (``StandardLines``) is the row parser
(``standard_values``) over again: the same values, skips, problems and line numbers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from recocamp.data.sources import csv as sources

LONDON = ZoneInfo("Europe/London")
GOOD = {
    "order_id": "A1",
    "customer_id": "c1",
    "item_id": "i1",
    "quantity": "2",
    "unit_price": "9.99",
    "ordered_at": "2024-04-01T12:00:00Z",
    "line_no": "",
    "is_return": "",
}
VARIANTS = {  # each is tried in an otherwise good line
    "order_id": [" A1 ", "", "A\x002", "A\u20281", "a" * 64, "a" * 65, "C9"],
    "customer_id": ["", " ", " c2 ", "c\x852", "c" * 65, "1.23457E+12", "c1E+5"],
    "item_id": ["", "i\n2", " i2"],
    "quantity": [
        " 3 ",
        "-3",
        "0",
        "2.0",
        "1e3",
        "2.5",
        "x",
        "",
        "1_000",
        "1000001",
        "nan",
        "\u0661\u0662",
        "+3",
        "2.",
        "1e6",
        "9" * 5000,
        "1.000",
        "-12.000",
        "2.00",
    ],
    "unit_price": [
        "1.234",
        "0.125",
        "1.2340",
        "12,50",
        " 1 ",
        "0",
        "-1",
        "nan",
        "inf",
        "-inf",
        "1e308",
        "x",
        "",
        "1_0.5",
        "1e9",
        "1e2",
        "1E2",
        ".5",
        "+1.",
        "\u0661",
        "1" * 400,
    ],
    "ordered_at": ["2024-04-01 12:00:00", "bad", "1850-01-01T00:00:00Z", "", " 2024-04-01 "],
    "line_no": ["1", " 3 ", "0", "2.0", "-1", "x", "1000001", "1000000", "\u0661", "1_0", "1e2"],
    "is_return": ["true", " T ", "FALSE", "no", "yes", "maybe", "1", "0"],
}


def outcome(parse: object, record: sources.Record) -> object:
    """What parsing one record gave: values, a skip, or the problem's column, text and value."""
    assert callable(parse)
    try:
        return parse(record)
    except sources.RowProblem as problem:
        return (problem.column, problem.message, problem.value)


def records(columns: list[str]) -> list[list[str]]:
    """Every variant in a good line, each followed by a good line of the same order (which
    shows how the variant counted the order's lines); each record starts with a first
    ``item_id`` (a repeated column: the last one counts) and a column nobody reads."""
    lines = []
    for column, values in VARIANTS.items():
        for value in values:
            lines += [{**GOOD, column: value}, GOOD]
    return [["i\x01", "x", *(line[name] for name in columns)] for line in lines]


@pytest.mark.parametrize(
    "extra",
    [(), ("line_no",), ("is_return",), ("is_return", "line_no")],
    ids=["required", "line_no", "is_return", "both"],
)
def test_fast_lines_read_as_the_row_parser_reads_them(extra: tuple[str, ...]) -> None:
    columns = [*sources.STANDARD_COLUMNS, *extra]
    header = ["item_id", "spare", *columns]
    fast = sources.StandardLines(header, sources.Timestamps(LONDON), sources.LineNumbers())
    stamps, numbers = sources.Timestamps(LONDON), sources.LineNumbers()

    def slow(record: list[str]) -> sources.PurchaseValues | sources.Skip:
        return sources.standard_values(dict(zip(header, record, strict=True)), stamps, numbers)

    given = records(columns)
    expected = [outcome(slow, record) for record in given]
    assert [outcome(fast, record) for record in given] == expected
    assert sum(isinstance(result, tuple) and len(result) == 3 for result in expected) > 20
    assert sources.Skip("adjustment") in expected


def test_a_marker_of_an_unreadable_record_is_its_problem() -> None:
    header = list(sources.STANDARD_COLUMNS)
    fast = sources.StandardLines(header, sources.Timestamps(LONDON), sources.LineNumbers())
    marker = {"\x00bad": "expected 6 fields", "column": "*", "value": "7"}
    assert outcome(fast, marker) == ("*", "expected 6 fields", "7")


RETAIL_GOOD = {
    "InvoiceNo": "536365",
    "StockCode": "85123A",
    "Description": "WHITE HANGING HEART",
    "Quantity": "6",
    "InvoiceDate": "2010-12-01 08:26:00",
    "UnitPrice": "2.55",
    "CustomerID": "17850.0",
    "Country": "United Kingdom",
}
RETAIL_VARIANTS = {  # each is tried in an otherwise good line
    "InvoiceNo": [" 536365 ", "", "C536365", "5\x003", "5\u20281", "a" * 64, "a" * 65],
    "StockCode": ["", " 85 ", "8\n5", "s" * 65, "POST", "1E+12"],
    "Description": ["", " spaced ", "d" * 500, "d" * 501, "a\x00b"],
    "Quantity": [
        " 3 ",
        "-3",
        "0",
        "2.0",
        "1.000",
        "1e3",
        "2.5",
        "x",
        "",
        "1_000",
        "1000001",
        "\u0663",
    ],
    "InvoiceDate": ["2010-12-01T08:26:00", "bad", "1850-01-01 00:00:00", "", " 2010-12-01 "],
    "UnitPrice": [
        " 1 ",
        "1.234",
        "0.125",
        "0",
        "-1",
        "nan",
        "inf",
        "1e308",
        "x",
        "",
        "1e9",
        "1e2",
        "1_0",
        "\u0663",
    ],
    "CustomerID": ["", " ", "17850", " 12.0 ", "c\x852", "c" * 65],
    "Country": ["", " EIRE ", "c" * 64, "c" * 65, "E\x00"],
}


def test_fast_retail_lines_read_as_the_row_parser_reads_them() -> None:
    """``RetailLines`` is ``online_retail_line`` over again, adjustments, returns and bad
    lines of an order included (each followed by a good line of its invoice: the count)."""
    columns = list(sources.ONLINE_RETAIL_COLUMNS)
    header = ["StockCode", "spare", *columns]  # a repeated column: the last one counts
    stamps, numbers = sources.Timestamps(LONDON, "%Y-%m-%d %H:%M:%S"), sources.LineNumbers()
    fast = sources.RetailLines(header, sources.Timestamps(LONDON, stamps.fmt), numbers)
    slow_numbers = sources.LineNumbers()

    def slow(record: list[str]) -> sources.RetailLine | sources.Skip:
        row = dict(zip(header, record, strict=True))
        return sources.online_retail_line(row, stamps, slow_numbers)

    given = []
    for column, values in RETAIL_VARIANTS.items():
        for value in values:
            for line in ({**RETAIL_GOOD, column: value}, RETAIL_GOOD):
                given.append(["s\x01", "x", *(line[name] for name in columns)])
    expected = [outcome(slow, record) for record in given]
    assert [outcome(fast, record) for record in given] == expected
    assert sum(type(result) is tuple for result in expected) > 20  # problems
    assert sources.Skip("adjustment") in expected
    marker = {"\x00bad": "expected 8 fields", "column": "*", "value": "3"}
    assert outcome(fast, marker) == ("*", "expected 8 fields", "3")


def as_columns(
    lines: list[int], outcomes: list[object], retail: bool
) -> sources.LineColumns | None:
    """What ``columns`` must give for a batch whose lines parsed (one by one) to these
    outcomes: None if any is a problem, else the kept lines column by column."""
    if any(type(result) is tuple and len(result) == 3 for result in outcomes):
        return None
    kept = [(line, result) for line, result in zip(lines, outcomes, strict=True)]
    kept = [(line, result) for line, result in kept if not isinstance(result, sources.Skip)]
    found: list[Any] = [result for _, result in kept]
    values = [result.values for result in found] if retail else found
    columns = [list(column) for column in zip(*values, strict=True)] or [[]] * 8
    order_ids, line_nos, customer_ids, item_ids, quantities, prices, times, returns = columns
    return sources.LineColumns(
        [line for line, _ in kept],
        order_ids,
        line_nos,
        customer_ids,
        item_ids,
        quantities,
        prices,
        times,
        returns,
        len(outcomes) - len(kept),
        [result.description for result in found] if retail else None,
        [result.country for result in found] if retail else None,
    )


def check_batches(make: object, batches: list[list[list[str]]], retail: bool) -> int:
    """Each batch read column by column gives what its lines give one by one, or None,
    having counted nothing (the lines then read one by one give the same again); returns
    how many batches were read column by column."""
    assert callable(make)
    by_columns, one_by_one = make(), make()
    read = 0
    for batch in batches:
        lines = list(range(2, len(batch) + 2))
        expected = [outcome(one_by_one, record) for record in batch]
        columns = by_columns.columns(lines, batch)
        if columns is None:
            assert [outcome(by_columns, record) for record in batch] == expected
        else:
            read += 1
            assert columns == as_columns(lines, expected, retail)
    return read


@pytest.mark.parametrize("extra", [(), ("line_no",), ("is_return", "line_no")])
def test_standard_lines_read_column_by_column_as_one_by_one(extra: tuple[str, ...]) -> None:
    columns = [*sources.STANDARD_COLUMNS, *extra]
    header = ["item_id", "spare", *columns]
    good = ["i\x01", "x", *(GOOD[name] for name in columns)]
    variants = records(columns)
    batches = [[good, good], *([variant, good, good] for variant in variants)]
    batches += [variants[i : i + 2] for i in range(0, len(variants), 2)]
    returned = {**GOOD, "quantity": "-2", "line_no": "7" if extra else ""}
    adjusted = {**GOOD, "unit_price": "0", "customer_id": ""}
    batches.append([good, [*good[:2], *(returned[name] for name in columns)], good])
    batches.append([[*good[:2], *(adjusted[name] for name in columns)], good])

    def make() -> sources.StandardLines:
        return sources.StandardLines(header, sources.Timestamps(LONDON), sources.LineNumbers())

    assert check_batches(make, batches, retail=False) > len(batches) // 4


def test_retail_lines_read_column_by_column_as_one_by_one() -> None:
    columns = list(sources.ONLINE_RETAIL_COLUMNS)
    header = ["StockCode", "spare", *columns]
    given = []
    for column, values in RETAIL_VARIANTS.items():
        for value in values:
            variant = {**RETAIL_GOOD, column: value}
            given.append(["s\x01", "x", *(variant[name] for name in columns)])
    good = ["s\x01", "x", *(RETAIL_GOOD[name] for name in columns)]
    batches = [[good, good], *([variant, good] for variant in given)]
    batches += [given[i : i + 3] for i in range(0, len(given), 3)]

    def make() -> sources.RetailLines:
        stamps = sources.Timestamps(LONDON, sources.RETAIL_TIME)
        return sources.RetailLines(header, stamps, sources.LineNumbers())

    assert check_batches(make, batches, retail=True) > len(batches) // 4


def test_retail_times_read_as_iso_are_what_strptime_reads() -> None:
    stamps = sources.Timestamps(LONDON, sources.RETAIL_TIME)
    # the days the clocks change (a wall time they skip is a problem: test_import_damaged)
    given = [
        "2010-12-01 08:26:00",
        "2011-03-27 02:30:00",
        "2011-10-30 01:30:00",
        "2010-02-30 08:26:00",
    ]
    for raw in [*given, "2010-1-01 08:26:00", "2010-12-01 08:26:60", "0000-01-01 00:00:00"]:
        try:
            naive = datetime.strptime(raw, sources.RETAIL_TIME)
            expected: object = naive.replace(tzinfo=LONDON).astimezone(UTC)
        except ValueError:
            expected = "is not a date-time (%Y-%m-%d %H:%M:%S)"
        try:
            got: object = stamps.of(raw, "InvoiceDate")
        except sources.RowProblem as problem:
            got = problem.message
        assert got == expected


def test_records_read_in_batches_of_any_size_are_the_same_records(tmp_path: Path) -> None:
    """Blank lines, a record over two lines, a wrong width, an undecodable byte and a line
    of separators alone (left out as a blank line is, line 9): the records and their lines
    do not depend on the batch size; a clean batch holds field lists of the header's width
    only, the others hold the markers of their problems."""
    content = b'a,b,c\n1,2,3\n\n4,"5\n5",6\n7,8\n9,1\xff,2\n3,4,5\n,,\n' + b"6,7,8\n" * 5
    path = tmp_path / "r.csv"
    path.write_bytes(content)

    def batches(size: int) -> list[sources.Batch]:
        with sources.open_text(path) as handle:
            return list(sources.Records(path, ("a", "b"), handle, ("c",)).batches(size))

    def flat(found: list[sources.Batch]) -> list[tuple[int, object]]:
        return [pair for batch in found for pair in zip(batch.lines, batch.records, strict=True)]

    whole = flat(batches(10_000))
    assert [line for line, _ in whole] == [2, 4, 6, 7, 8, 10, 11, 12, 13, 14]
    assert whole[1] == (4, ["4", "5\n5", "6"])
    assert whole[2][1] == {"\x00bad": "expected 3 fields", "column": "*", "value": "2"}
    assert isinstance(whole[3][1], dict) and "0xFF" in whole[3][1]["\x00bad"]
    for size in (1, 2, 3, 7):
        found = batches(size)
        assert flat(found) == whole
        clean = [batch for batch in found if batch.clean]
        assert clean and all(isinstance(record, list) for b in clean for record in b.records)
        assert all(len(record) == 3 for b in clean for record in b.records)


@pytest.mark.parametrize("value", [0.0, 9.99, 10.0, 1e-05, 1.5e-9, -0.0001, 123456789.125, 1e-300])
def test_a_number_written_for_a_file_reads_back_the_same(value: float) -> None:
    """Files written here (the demo's) and purchase events go through :func:`number`,
    which takes no exponent: ``repr`` would write 0.00001 as ``1e-05``."""
    written = sources.plain_number(value)
    assert "e" not in written.lower()
    if round(value, 4) == value:
        assert sources.number({"p": written}, "p", -1e9, 1e9) == value
    else:  # finer than the store keeps: refused as a price (domain.price_problem)
        with pytest.raises(sources.RowProblem, match="more than 4 decimals"):
            sources.number({"p": written}, "p", -1e9, 1e9)
