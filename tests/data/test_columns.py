"""Headers and customer bounds (tester's findings): a column the format does not know is
refused with the file, line 1 and the name closest to it, never read as absent (a
misspelled ``objected_to_profiling`` would lose the customer's objection); a customers
file is held to the bounds ``PUT /v1/customers`` holds a customer to (``domain``)."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from recocamp.cli import app as cli_app
from recocamp.clock import FixedClock
from recocamp.data import profiles
from recocamp.data.ingest import Importer
from recocamp.data.sources import csv as sources
from recocamp.domain import BIRTHDAY_MIN, birthday_problem, future_problem, locale_problem
from recocamp.errors import DataImportError
from recocamp.store.schema import customers, import_runs, items, purchases
from tests.api_shop import bearer, call, make_app
from tests.conftest import NOW, write_csv

CUSTOMER = ["id", "email", "first_name", "consent_basis", "consent_at", "objected_to_profiling"]
PERSON = ["Y1", "y1@secret.test", "Y", "double_opt_in", "2011-05-01T10:00:00Z", "true"]
STANDARD = [*sources.STANDARD_COLUMNS, *sources.STANDARD_OPTIONAL]
LINE = ["A1", "c1", "i1", "1", "9.99", "2024-04-01T12:00:00Z", "1", "false"]
RETAIL = list(sources.ONLINE_RETAIL_COLUMNS)
SALE = ["536365", "85123A", "HEART", "6", "2010-12-01 08:26:00", "2.55", "17850", "UK"]


def importer(engine: sa.Engine) -> Importer:
    return Importer(engine, zone=ZoneInfo("Europe/London"), now=NOW)


def refused(engine: sa.Engine, run: Any) -> DataImportError:
    with pytest.raises(DataImportError) as caught:
        run()
    with engine.connect() as connection:
        for table in (purchases, customers, items, import_runs):
            assert connection.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0
    return caught.value


def header_problems(error: DataImportError) -> list[tuple[int | None, str | None, str]]:
    return [(p.line, p.column, p.message) for p in error.problems]


def test_a_misspelled_customer_column_is_refused_naming_the_column_meant(
    engine: sa.Engine, tmp_path: Path
) -> None:
    header = [*CUSTOMER[:5], "objected_to_profilling"]
    path = write_csv(tmp_path / "customers.csv", header, [PERSON])
    error = refused(engine, lambda: importer(engine).customers(path))
    assert error.path == path
    assert header_problems(error) == [
        (
            1,
            "objected_to_profilling",
            "unknown column; did you mean 'objected_to_profiling'?",
        )
    ]


@pytest.mark.parametrize(
    ("column", "hint"),
    [
        ("is_retrun", "did you mean 'is_return'?"),
        ("lineno", "did you mean 'line_no'?"),
        ("extra", "known: order_id, customer_id, item_id"),
    ],
)
def test_an_unknown_purchases_column_is_refused(
    engine: sa.Engine, tmp_path: Path, column: str, hint: str
) -> None:
    path = write_csv(tmp_path / "p.csv", [*STANDARD[:6], column], [[*LINE[:6], "1"]])
    error = refused(engine, lambda: importer(engine).purchases(path))
    [(line, named, message)] = header_problems(error)
    assert (line, named) == (1, column)
    assert message.startswith(f"unknown column; {hint}")


def test_items_and_online_retail_files_refuse_unknown_and_repeated_columns(
    engine: sa.Engine, tmp_path: Path
) -> None:
    goods = write_csv(
        tmp_path / "items.csv",
        [*sources.ITEM_COLUMNS, "in_stok", "url", "url"],
        [["i1", "Mug", "home", "4.5", "false", "", ""]],
    )
    error = refused(engine, lambda: importer(engine).items(goods))
    assert header_problems(error) == [
        (1, "in_stok", "unknown column; did you mean 'in_stock'?"),
        (1, "url", "column appears more than once"),
    ]
    retail = write_csv(tmp_path / "retail.csv", [*RETAIL, "Region"], [[*SALE, "North"]])
    error = refused(engine, lambda: importer(engine).purchases(retail, "online-retail"))
    assert [(p.line, p.column) for p in error.problems] == [(1, "Region")]


def test_the_formats_own_headers_pass(engine: sa.Engine, tmp_path: Path) -> None:
    """Every column the writers write and the UCI file's own header are known."""
    retail = write_csv(tmp_path / "retail.csv", RETAIL, [SALE])
    assert importer(engine).purchases(retail, "online-retail").imported == 1
    path = write_csv(tmp_path / "p.csv", STANDARD, [LINE])
    assert importer(engine).purchases(path).imported == 1
    header = [*sources.CUSTOMER_COLUMNS, *sources.CUSTOMER_OPTIONAL]
    assert set(CUSTOMER) <= set(header)
    person = write_csv(tmp_path / "c.csv", CUSTOMER, [PERSON])
    assert importer(engine).customers(person).imported == 1


def test_the_cli_exits_2_on_an_unknown_column(tmp_path: Path, cli_store: CliRunner) -> None:
    runner = cli_store
    write_csv(tmp_path / "c.csv", [*CUSTOMER[:5], "objected_to_profilling"], [PERSON])
    result = runner.invoke(cli_app, ["import", "customers", "c.csv"])
    assert result.exit_code == 2, result.output
    assert "c.csv: line 1, column 'objected_to_profilling'" in result.stderr
    assert "did you mean 'objected_to_profiling'?" in result.stderr


FUTURE = (NOW + timedelta(minutes=25)).isoformat()


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("consent_at", "3000-01-01T00:00:00Z", "lies in the future"),
        ("consent_at", FUTURE, "lies in the future"),
        ("locale", "fr", "is not one of de, en"),
        ("birthday", "1800-01-01", "is before 1900-01-01"),
        ("birthday", "3000-01-01", "lies in the future"),
    ],
)
def test_a_customers_file_has_the_apis_bounds(
    engine: sa.Engine, tmp_path: Path, column: str, value: str, message: str
) -> None:
    header = [*CUSTOMER, "locale", "birthday"]
    good = [*PERSON, "de", "1980-02-29"]
    bad = list(good)
    bad[header.index(column)] = value
    path = write_csv(tmp_path / "c.csv", header, [good, ["Y2", *bad[1:]]])
    error = refused(engine, lambda: importer(engine).customers(path))
    assert header_problems(error) == [(3, column, message)]
    api = make_app(engine, tmp_path, FixedClock(NOW))  # the importer's now
    field: Any = value
    reply = call(
        api,
        "PUT",
        "/v1/customers/c9",
        json={"source": "crm", column: field},
        headers=bearer("shop"),
    )
    assert reply.status == 422, reply.text
    assert [d["loc"] for d in reply.json()["detail"]] == [["body", column]]


def test_a_consent_within_the_clocks_skew_passes_both_ways(
    engine: sa.Engine, tmp_path: Path
) -> None:
    soon = (NOW + timedelta(minutes=4)).isoformat()
    path = write_csv(tmp_path / "c.csv", CUSTOMER, [[*PERSON[:4], soon, "false"]])
    assert importer(engine).customers(path).imported == 1
    api = make_app(engine, tmp_path, FixedClock(NOW))  # the importer's now
    body = {"source": "crm", "consent_basis": "double_opt_in", "consent_at": soon}
    assert call(api, "PUT", "/v1/customers/c9", json=body, headers=bearer("shop")).status == 200


def test_the_shared_checks() -> None:
    assert future_problem(NOW + timedelta(minutes=5), NOW) is None
    assert future_problem(NOW + timedelta(minutes=6), NOW) == "lies in the future"
    assert locale_problem("de") is None and locale_problem("DE") == "is not one of de, en"
    today = NOW.date()
    assert birthday_problem(today + timedelta(days=1), NOW) is None  # already there in UTC+14
    assert birthday_problem(today + timedelta(days=2), NOW) == "lies in the future"
    assert birthday_problem(BIRTHDAY_MIN, NOW) is None
    assert birthday_problem(BIRTHDAY_MIN - timedelta(days=1), NOW) == "is before 1900-01-01"


def test_a_stored_profile_is_not_held_to_the_new_bounds_by_a_change_of_another_field(
    engine: sa.Engine,
) -> None:
    """Only the values a change gives are checked against now and 1900: a birthday stored
    before these bounds held does not block an opt-out; a new one past them is refused."""
    with engine.begin() as connection:
        connection.execute(
            sa.insert(customers).values(id="c1", birthday=date(1850, 1, 1), updated_at=NOW)
        )
        changed = profiles.apply(
            connection, "c1", {"channel_email": False}, at=NOW, actor="t", source="t"
        )
        assert changed.fields == ("channel_email",)
        with pytest.raises(profiles.ProfileError, match="birthday: is before 1900-01-01"):
            profiles.apply(
                connection, "c1", {"birthday": date(1899, 1, 1)}, at=NOW, actor="t", source="t"
            )


@pytest.mark.parametrize("fmt", ["standard", "online-retail"])
def test_an_order_dated_in_the_future_is_refused_as_the_api_refuses_it(
    engine: sa.Engine, tmp_path: Path, fmt: str
) -> None:
    """An order of 2030 is a typo or a wrong clock: stored, it stood first in every
    "latest" for years (recency, lapsed days, the forecasts' history). The purchase API
    refuses it (422); a file gave it to the store. Within the clocks' skew it passes."""
    soon, late = NOW + timedelta(minutes=4), NOW + timedelta(minutes=25)
    if fmt == "standard":
        header, lines = (
            STANDARD,
            [
                [*LINE[:5], soon.isoformat(), *LINE[6:]],
                ["A2", *LINE[1:5], late.isoformat(), *LINE[6:]],
            ],
        )
        stamp, raw = "ordered_at", late.isoformat()
    else:
        london = ZoneInfo("Europe/London")
        header, lines = (
            RETAIL,
            [
                [*SALE[:4], f"{soon.astimezone(london):%Y-%m-%d %H:%M:%S}", *SALE[5:]],
                ["536366", *SALE[1:4], f"{late.astimezone(london):%Y-%m-%d %H:%M:%S}", *SALE[5:]],
            ],
        )
        stamp, raw = "InvoiceDate", f"{late.astimezone(london):%Y-%m-%d %H:%M:%S}"
    path = write_csv(tmp_path / "p.csv", header, lines)
    error = refused(engine, lambda: importer(engine).purchases(path, fmt))
    assert [(p.line, p.column, p.value) for p in error.problems] == [(3, stamp, raw)]
    assert error.problems[0].message.startswith("lies in the future")
    assert (
        importer(engine).purchases(write_csv(tmp_path / "q.csv", header, lines[:1]), fmt).imported
        == 1
    )


def test_a_price_finer_than_the_store_keeps_is_refused_in_files_and_by_the_api(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """PostgreSQL keeps a price to 4 decimals (NUMERIC(14, 4)) and SQLite as given: 0.00004
    was a purchase on one store and a free line (left out of every figure) on the other.
    More decimals are refused naming the line; trailing zeros are no finer (2.50000), nor is
    a float's own noise."""
    header = STANDARD
    lines = [
        [*LINE[:4], "2.50000", *LINE[5:]],
        ["A2", *LINE[1:4], "0.00004", *LINE[5:]],
        ["A3", *LINE[1:4], "12.12345", *LINE[5:]],
        ["A4", *LINE[1:4], "434.99999999999994", *LINE[5:]],  # 4.35 * 100 in floats: 435
    ]
    path = write_csv(tmp_path / "p.csv", header, lines)
    error = refused(engine, lambda: importer(engine).purchases(path))
    assert [(p.line, p.column, p.value) for p in error.problems] == [
        (3, "unit_price", "0.00004"),
        (4, "unit_price", "12.12345"),
    ]
    assert error.problems[0].message == "has more than 4 decimals (prices are kept to 4)"
    items = write_csv(
        tmp_path / "i.csv", ["id", "title", "category", "price"], [["i9", "T", "c", "0.12345"]]
    )
    caught = refused(engine, lambda: importer(engine).items(items))
    assert [(p.line, p.column) for p in caught.problems] == [(2, "price")]
    api = make_app(engine, tmp_path, FixedClock(NOW))
    order = {
        "order_id": "o1",
        "customer_id": "c1",
        "ordered_at": "2025-01-01T10:00:00Z",
        "lines": [{"item_id": "i1", "quantity": 1, "unit_price": 0.00004}],
    }
    reply = call(api, "POST", "/v1/events/purchases", json=order, headers=bearer("shop"))
    assert reply.status == 422, reply.text
    assert [d["loc"][-1] for d in reply.json()["detail"]] == ["unit_price"]
    good = write_csv(tmp_path / "q.csv", header, [lines[0], lines[3]])
    assert importer(engine).purchases(good).imported == 2


def test_a_customers_file_without_its_header_line_shows_none_of_its_first_row(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """The first row, taken for a header, was shown whole as the missing columns' value and
    field by field as unknown columns: the customer's address (in the joined value, which
    no masking saw as an address of its own) and name reached the terminal, the worker's
    run record and the drop folder's ``.errors.txt``."""
    path = tmp_path / "customers.csv"
    path.write_text("c1,anne.secret@example.test,Annegret\n", encoding="utf-8")
    error = refused(engine, lambda: importer(engine).customers(path))
    text = str(error)
    assert "secret" not in text and "Annegret" not in text
    [(line, column, message)] = header_problems(error)
    assert (line, column) == (1, None)
    assert message.startswith("wrong header: missing column(s) id, email")
    assert "without its header line" in message


def test_a_semicolon_separated_file_is_named_so(engine: sa.Engine, tmp_path: Path) -> None:
    """German Excel's CSV: one unknown column holding the whole header line, and no word
    about the separator."""
    path = tmp_path / "purchases.csv"
    path.write_text(";".join(STANDARD) + "\n" + ";".join(LINE) + "\n", encoding="utf-8")
    error = refused(engine, lambda: importer(engine).purchases(path))
    [(line, _, message)] = header_problems(error)
    assert line == 1 and "semicolon-separated" in message


def test_a_wide_header_lists_at_most_max_errors_listed_problems(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """Every unknown column was a problem of its own, with no bound: a CRM export of 80
    columns listed 78, and a header of 120,000 short names printed 23 MB of problems to
    the terminal (the worker's run record, the drop folder's ``.errors.txt``) after 3 s of
    CPU looking for names close to each."""
    path = tmp_path / "customers.csv"
    path.write_text(",".join(["id", "email", *(f"x{n}" for n in range(5000))]) + "\n")
    capped = Importer(engine, zone=ZoneInfo("Europe/London"), now=NOW, max_listed=7)
    error = refused(engine, lambda: capped.customers(path))
    assert len(error.problems) == 7 and error.more == 4993
    assert [p.column for p in error.problems] == [f"x{n}" for n in range(7)]
    assert "5000 problem(s)" in str(error) and "… and 4993 more" in str(error)
