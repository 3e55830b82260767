"""A number written the German way is never read wrong in silence: ``1.000`` (a thousand,
with a thousands point) was read as 1 in a ``quantity`` column, and ``1.234`` as a price
of 1.234 rather than 1,234: a file from a German spreadsheet imported a thousandth of its
quantities and prices, and said nothing. Such a value (one to three digits, a point, three
digits) is refused, naming file, line, column and value; ``2.0``, ``0.125`` and ``1.2340``
are not ambiguous and are read as they were."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from recocamp.data.ingest import Importer
from recocamp.errors import DataImportError
from recocamp.store.schema import import_runs, items, purchases
from tests.conftest import NOW, write_csv

ORDERS = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"]
ITEMS = ["id", "title", "category", "price"]
AT = "2024-04-01T12:00:00Z"


def importer(engine: sa.Engine) -> Importer:
    return Importer(engine, zone=ZoneInfo("Europe/Berlin"), now=NOW)


def stored(engine: sa.Engine) -> tuple[int, int, int]:
    with engine.connect() as connection:
        return tuple(  # type: ignore[return-value]
            connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in (purchases, items, import_runs)
        )


@pytest.mark.parametrize(
    ("column", "value", "reading"),
    [
        ("quantity", "1.000", "1000"),
        ("quantity", "-12.000", "-12000"),
        ("quantity", "2.000", "2000"),
        ("unit_price", "1.234", "1234"),
        ("unit_price", "999.500", "999500"),
    ],
)
def test_a_thousands_point_is_refused_naming_line_column_and_value(
    engine: sa.Engine, tmp_path: Path, column: str, value: str, reading: str
) -> None:
    """The value among 40 good lines (so it comes in a batch read column by column)."""
    good = [[f"A{n}", "c1", "i1", "2", "9.99", AT] for n in range(40)]
    bad = [*good[0][:3], "2", "9.99", AT]
    bad[0] = "B1"
    bad[ORDERS.index(column)] = value
    path = write_csv(tmp_path / "purchases.csv", ORDERS, [*good[:20], bad, *good[20:]])
    with pytest.raises(DataImportError) as caught:
        importer(engine).purchases(path)
    assert stored(engine) == (0, 0, 0)
    [problem] = caught.value.problems
    assert (problem.line, problem.column, problem.value) == (22, column, value)
    assert "ambiguous" in problem.message and reading in problem.message


def test_an_items_price_with_a_thousands_point_is_refused(
    engine: sa.Engine, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "items.csv", ITEMS, [["i1", "Tea", "tea", "1.299"]])
    with pytest.raises(DataImportError) as caught:
        importer(engine).items(path)
    assert stored(engine) == (0, 0, 0)
    [problem] = caught.value.problems
    assert (problem.line, problem.column, problem.value) == (2, "price", "1.299")


def test_a_decimal_comma_is_refused_saying_so(engine: sa.Engine, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "purchases.csv", ORDERS, [["A1", "c1", "i1", "1", "1.234,50", AT]])
    with pytest.raises(DataImportError) as caught:
        importer(engine).purchases(path)
    [problem] = caught.value.problems
    assert (problem.line, problem.column, problem.value) == (2, "unit_price", "1.234,50")
    assert "decimal comma" in problem.message


def test_numbers_that_are_not_ambiguous_are_read_as_before(
    engine: sa.Engine, tmp_path: Path
) -> None:
    rows = [
        ["A1", "c1", "i1", "2.0", "0.125", AT],
        ["A2", "c1", "i1", "3.00", "1.2340", AT],
        ["A3", "c1", "i1", "1000", "12.5", AT],
        ["A4", "c1", "i1", "4.0000", "1234", AT],
        ["A5", "c1", "i1", "0.000", "0.001", AT],  # 0: an adjustment either way
    ]
    path = write_csv(tmp_path / "purchases.csv", ORDERS, rows)
    report = importer(engine).purchases(path)
    assert (report.imported, report.skipped) == (4, {"adjustment": 1})
    with engine.connect() as connection:
        found = connection.execute(
            sa.select(purchases.c.order_id, purchases.c.quantity, purchases.c.unit_price)
        ).all()
    assert sorted((o, q, float(p)) for o, q, p in found) == [
        ("A1", 2, 0.125),
        ("A2", 3, 1.234),
        ("A3", 1000, 12.5),
        ("A4", 4, 1234.0),
    ]


def test_a_purchase_event_price_with_three_decimals_is_a_json_number_and_stored(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """The purchase API reads its lines with the file's parser (``sources.plain_number``
    writes the JSON number for it): 1.234 in JSON is no German thousand and is stored."""
    from tests.api_shop import bearer, call, make_app

    body = {
        "order_id": "A1",
        "customer_id": "c1",
        "ordered_at": "2011-11-01T12:00:00Z",
        "lines": [{"item_id": "i1", "quantity": 1, "unit_price": 1.234}],
    }
    app = make_app(engine, tmp_path)
    reply = call(app, "POST", "/v1/events/purchases", json=body, headers=bearer("shop"))
    assert reply.status < 300, reply.text
    with engine.connect() as connection:
        price = connection.execute(sa.select(purchases.c.unit_price)).scalar_one()
    assert float(price) == 1.234
