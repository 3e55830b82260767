"""The fast reading of standard purchase lines (``StandardLines``) is the row parser
(``standard_values``) over again: the same values, skips, problems and line numbers."""

from __future__ import annotations

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
    "customer_id": ["", " ", " c2 ", "c\x852", "c" * 65],
    "item_id": ["", "i\n2", " i2"],
    "quantity": [" 3 ", "-3", "0", "2.0", "1e3", "2.5", "x", "", "1_000", "1000001", "nan"],
    "unit_price": [" 1 ", "0", "-1", "nan", "inf", "-inf", "1e308", "x", "", "1_0.5", "1e9"],
    "ordered_at": ["2024-04-01 12:00:00", "bad", "1850-01-01T00:00:00Z", "", " 2024-04-01 "],
    "line_no": ["1", " 3 ", "0", "2.0", "-1", "x", "1000001", "1000000"],
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
    "StockCode": ["", " 85 ", "8\n5", "s" * 65, "POST"],
    "Description": ["", " spaced ", "d" * 500, "d" * 501, "a\x00b"],
    "Quantity": [" 3 ", "-3", "0", "2.0", "1e3", "2.5", "x", "", "1_000", "1000001"],
    "InvoiceDate": ["2010-12-01T08:26:00", "bad", "1850-01-01 00:00:00", "", " 2010-12-01 "],
    "UnitPrice": [" 1 ", "0", "-1", "nan", "inf", "1e308", "x", "", "1e9"],
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
