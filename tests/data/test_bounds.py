"""One set of bounds for every way data comes in (``domain``: ids, numbers, texts): a value
past them is a problem naming file, line, column and value (exit 2), never a driver error,
the same on SQLite and PostgreSQL; unreadable bytes are problems of their own line."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
import typer
from fastapi import FastAPI
from typer.testing import CliRunner

from recocamp.cli import app as cli_app
from recocamp.cli.common import print_json
from recocamp.data.drop_folder import import_drop_folder
from recocamp.data.ingest import Importer
from recocamp.data.sources.csv import ONLINE_RETAIL_COLUMNS, RECORD_MAX
from recocamp.domain import FIELD_MAX
from recocamp.errors import ConfigError, DataImportError
from recocamp.settings import Settings, load_settings
from recocamp.store.schema import customers, import_runs, items, orders, purchases
from tests.api_shop import bearer, call, make_app
from tests.conftest import NOW, write_csv

STANDARD = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at", "line_no"]
GOOD = ["A1", "c1", "i1", "1", "9.99", "2024-04-01T12:00:00Z", "1"]
LONG_ID = "c" * 100_000
RETAIL_GOOD = ["536365", "85123A", "HEART", "6", "2010-12-01 08:26:00", "2.55", "17850", "UK"]


def importer(engine: sa.Engine) -> Importer:
    return Importer(engine, zone=ZoneInfo("Europe/London"), now=NOW)


def nothing_written(engine: sa.Engine) -> bool:
    with engine.connect() as connection:
        return all(
            connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one() == 0
            for table in (purchases, orders, customers, items, import_runs)
        )


def refused(engine: sa.Engine, run: Any) -> DataImportError:
    with pytest.raises(DataImportError) as caught:
        run()
    assert nothing_written(engine)
    return caught.value


@pytest.mark.parametrize(
    ("column", "bad", "message", "shown"),
    [
        ("quantity", "99999999999999999999999", "is out of range (-1,000,000 to 1,000,000)", None),
        ("quantity", "1e300", "is not a whole number", None),
        ("quantity", "1e6", "is not a whole number", None),
        ("quantity", "1_000", "is not a whole number", None),
        ("quantity", "\u0661\u0662", "is not a whole number", None),  # Arabic-Indic 12
        (
            "quantity",
            "9" * 5000,  # more digits than int() reads
            "is out of range (-1,000,000 to 1,000,000)",
            f"{'9' * 60}… (5,000 characters)",
        ),
        ("line_no", "99999999999999999999999", "is out of range (0 to 1,000,000)", None),
        ("line_no", "1e300", "is not a whole number", None),
        ("line_no", "\uff11", "is not a whole number", None),  # fullwidth 1
        ("line_no", "-1", "is out of range (0 to 1,000,000)", None),
        ("unit_price", "1e308", "is not a number", None),
        ("unit_price", "1.5e2", "is not a number", None),
        ("unit_price", "1_0.5", "is not a number", None),
        ("unit_price", "\u0661.5", "is not a number", None),
        ("unit_price", "nan", "is not a number", None),
        (
            "unit_price",
            "1" * 400,  # float() reads it as an infinity
            "is out of range (-1,000,000,000 to 1,000,000,000)",
            f"{'1' * 60}… (400 characters)",
        ),
        ("order_id", "A\x002", "contains a NUL character", None),
        ("item_id", "i\n2", "contains a control character (U+000A)", None),
        ("customer_id", "c\x852", "contains a control character (U+0085)", None),  # C1: NEL
        ("order_id", "A\u20281", "contains a non-printable character (U+2028)", None),
        ("item_id", "i\u202e2", "contains a non-printable character (U+202E)", None),  # bidi
        (
            "ordered_at",
            "1850-01-01T00:00:00Z",
            "is out of range (in UTC it falls outside the years 1900–9000)",
            None,
        ),
        (
            "customer_id",
            LONG_ID,
            "is longer than 64 characters",
            f"{'c' * 60}… (100,000 characters)",
        ),
    ],
)
def test_a_purchase_value_past_the_bounds_is_a_row_problem(
    engine: sa.Engine, tmp_path: Path, column: str, bad: str, message: str, shown: str | None
) -> None:
    broken = [*GOOD[:6], "2"]
    broken[STANDARD.index(column)] = bad
    path = write_csv(tmp_path / "p.csv", STANDARD, [GOOD, broken])
    error = refused(engine, lambda: importer(engine).purchases(path))
    assert [(p.line, p.column, p.message, p.value) for p in error.problems] == [
        (3, column, message, shown or bad)
    ]


def test_online_retail_rows_have_the_same_bounds(engine: sa.Engine, tmp_path: Path) -> None:
    header, good = list(ONLINE_RETAIL_COLUMNS), RETAIL_GOOD
    rows = [
        good,
        [*good[:3], "1e300", *good[4:]],
        [*good[:6], LONG_ID, good[7]],
        [*good[:5], "1e308", *good[6:]],
        [good[0], "X", "T" * 501, *good[3:]],
    ]
    path = write_csv(tmp_path / "retail.csv", header, rows)
    error = refused(engine, lambda: importer(engine).purchases(path, "online-retail"))
    assert [(p.line, p.column) for p in error.problems] == [
        (3, "Quantity"),
        (4, "CustomerID"),
        (5, "UnitPrice"),
        (6, "Description"),
    ]


def test_customer_and_item_files_have_the_same_bounds(engine: sa.Engine, tmp_path: Path) -> None:
    people = write_csv(
        tmp_path / "customers.csv",
        ["id", "email", "first_name"],
        [
            ["c1", "a@example.test", "Ann"],
            ["c\x002", "b@example.test", ""],
            [LONG_ID, "", ""],
            ["c4", "x" * 400 + "@example.test", ""],
            ["c5", "", "N" * 201],
        ],
    )
    error = refused(engine, lambda: importer(engine).customers(people))
    assert [(p.line, p.column) for p in error.problems] == [
        (3, "id"),
        (4, "id"),
        (5, "email"),
        (6, "first_name"),
    ]
    assert "example.test" not in str(error)  # addresses are never shown
    goods = write_csv(
        tmp_path / "items.csv",
        ["id", "title", "category", "price"],
        [
            ["i1", "Mug", "home", "4.5"],
            ["i2", "Mug\x00", "home", "4.5"],
            ["i3", "Mug", "home", "2000000000"],
            ["i4", "Mug", "home", "-1"],
        ],
    )
    error = refused(engine, lambda: importer(engine).items(goods))
    assert [(p.line, p.column, p.message) for p in error.problems] == [
        (3, "title", "contains a NUL character"),
        (4, "price", "is out of range (0 to 1,000,000,000)"),
        (5, "price", "is out of range (0 to 1,000,000,000)"),
    ]


def test_a_customer_has_one_plain_address(engine: sa.Engine, tmp_path: Path) -> None:
    """Postmark reads ``To: "a@x, b@y"`` as two recipients: a field holding two addresses
    (or a name and an address) would mail the customer's e-mail, with their signed
    preferences link, to someone who never consented. Each such row is a problem of its
    line and column, the address not shown; plain and international ones pass."""
    people = write_csv(
        tmp_path / "customers.csv",
        ["id", "email"],
        [
            ["c1", "a.b+c@example.test"],
            ["c2", "a@example.test, b@example.test"],
            ["c3", "Ann <a@example.test>"],
            ["c4", "a@example.test\r\nBcc: b@example.test"],
            ["c5", "a@b@example.test"],
            ["c6", "a@example.test;b@example.test"],
            ["c7", "müller@bücher.example"],
            ["c8", "a@example.test."],  # a@example.test's mailbox: a tombstone would miss it
            ["c9", "a..b@example.test"],
        ],
    )
    error = refused(engine, lambda: importer(engine).customers(people))
    lines = (3, 4, 5, 7, 8, 10, 11)  # c4's quoted line break makes it two lines of the file
    assert [(p.line, p.column) for p in error.problems] == [(n, "email") for n in lines]
    assert "one plain e-mail address" in error.problems[0].message
    assert "example.test" not in str(error)  # addresses are never shown


@pytest.mark.parametrize("kind", ["customers", "items"])
def test_a_repeated_id_names_both_lines_and_the_id(
    engine: sa.Engine, tmp_path: Path, kind: str
) -> None:
    """Which of two rows with one id would count? Neither: the later line is a problem
    that names the line the id was first on (a third one too), and nothing is written."""
    header, rest = (
        (["id", "email"], ["a@example.test"])
        if kind == "customers"
        else (["id", "title", "category", "price"], ["Mug", "kitchen", "4.5"])
    )
    ids = ["c1", "c2", "c1", "c2", "c3", "c1"]  # file lines 2 to 7
    path = write_csv(tmp_path / f"{kind}.csv", header, [[row_id, *rest] for row_id in ids])
    error = refused(engine, lambda: getattr(importer(engine), kind)(path))
    assert [(p.line, p.column, p.value, p.message) for p in error.problems] == [
        (4, "id", "c1", "the same id as line 2 (an id once per file)"),
        (5, "id", "c2", "the same id as line 3 (an id once per file)"),
        (7, "id", "c1", "the same id as line 2 (an id once per file)"),
    ]
    assert f"{kind}.csv: 3 problem(s)" in str(error)
    assert "line 4, column 'id': the same id as line 2 (an id once per file) (value: 'c1')" in str(
        error
    )
    assert "example.test" not in str(error)


def test_a_line_repeated_with_other_content_is_refused(engine: sa.Engine, tmp_path: Path) -> None:
    other = [*GOOD[:2], "i2", *GOOD[3:]]
    path = write_csv(tmp_path / "p.csv", STANDARD, [GOOD, other])
    error = refused(engine, lambda: importer(engine).purchases(path))
    assert [(p.line, p.column, p.value) for p in error.problems] == [(3, "line_no", "1")]
    assert "repeats line 1 of order 'A1' with other content than line 2" in str(error)
    same = write_csv(tmp_path / "same.csv", STANDARD, [GOOD, GOOD])
    report = importer(engine).purchases(same)
    assert report.imported == 1 and report.skipped == {"repeated line": 1}


def test_an_order_whose_lines_name_other_customers_is_refused_line_by_line(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """Stored, an order of two customers counted once per customer (orders, frequency,
    attribution): every line naming another customer than the order's first is a problem,
    a guest line too, in another chunk of the file or not."""
    line = dict(zip(STANDARD, GOOD, strict=True))

    def row(order: str, customer: str, number: int) -> list[str]:
        return [
            *{**line, "order_id": order, "customer_id": customer, "line_no": str(number)}.values()
        ]

    rows = [
        row("A1", "c1", 1),
        row("A2", "c2", 1),
        row("A1", "anna@example.test", 2),  # an id that is an address is shown masked
        row("A2", "", 2),  # a guest line in a customer's order
        row("A3", "", 1),
        row("A3", "", 2),  # a guest order of two lines: one "customer", none
    ]
    path = write_csv(tmp_path / "p.csv", STANDARD, rows)
    error = refused(engine, lambda: importer(engine).purchases(path))
    assert [(p.line, p.column, p.value) for p in error.problems] == [
        (4, "customer_id", "<address>"),
        (5, "customer_id", ""),
    ]
    assert (
        "names '<address>' where line 2 of order 'A1' names 'c1': an order is one customer's"
        in str(error)
    )
    assert "names no customer (a guest line) where line 3 of order 'A2' names 'c2'" in str(error)
    assert "example.test" not in str(error)
    one = write_csv(tmp_path / "one.csv", STANDARD, [rows[0], row("A1", "c1", 2), *rows[4:]])
    assert importer(engine).purchases(one).imported == 4


def test_online_retail_invoices_of_two_customers_name_the_customer_column(
    engine: sa.Engine, tmp_path: Path
) -> None:
    header, good = list(ONLINE_RETAIL_COLUMNS), RETAIL_GOOD
    other = [*good[:6], "13047", good[7]]
    path = write_csv(tmp_path / "retail.csv", header, [good, good, other])
    error = refused(engine, lambda: importer(engine).purchases(path, "online-retail"))
    assert [(p.line, p.column, p.value) for p in error.problems] == [(4, "CustomerID", "13047")]


@pytest.mark.parametrize("gzipped", [False, True])
def test_bytes_that_are_not_utf8_are_a_problem_of_their_line_and_column(
    engine: sa.Engine, tmp_path: Path, gzipped: bool
) -> None:
    text = ",".join(STANDARD) + "\n" + ",".join(GOOD) + "\n"
    content = (
        text.encode()
        + b"A2,c\xe9,i1,1,9.99,2024-04-01T12:00:00Z,1\n"
        + b"A3,c1,i\xff\xfe,1,1,2024-04-01T12:00:00Z,1\n"
    )
    path = tmp_path / ("p.csv.gz" if gzipped else "p.csv")
    path.write_bytes(gzip.compress(content) if gzipped else content)
    error = refused(engine, lambda: importer(engine).purchases(path))
    assert [(p.line, p.column, p.message, p.value) for p in error.problems] == [
        (3, "customer_id", "is not UTF-8 (byte 0xE9 at character 2)", b"c\xe9"),
        (4, "item_id", "is not UTF-8 (byte 0xFF at character 2)", b"i\xff\xfe"),
    ]


def test_a_field_past_the_size_limit_is_a_problem_of_its_line(
    engine: sa.Engine, tmp_path: Path
) -> None:
    huge = [*GOOD[:2], "x" * (FIELD_MAX + 1), *GOOD[3:]]
    path = write_csv(tmp_path / "p.csv", STANDARD, [GOOD, GOOD, huge, GOOD])
    error = refused(engine, lambda: importer(engine).purchases(path))
    assert [(p.line, p.column) for p in error.problems] == [(4, "*")]
    assert "field larger than field limit (100000)" in error.problems[0].message


def test_a_record_past_the_size_limit_is_a_problem_of_its_line(
    engine: sa.Engine, tmp_path: Path
) -> None:
    huge = [*GOOD[:2], "x" * 10_000_000, *GOOD[3:]]
    path = write_csv(tmp_path / "p.csv", STANDARD, [GOOD, GOOD, huge, GOOD])
    error = refused(engine, lambda: importer(engine).purchases(path))
    assert [(p.line, p.column) for p in error.problems] == [(4, "*")]
    assert f"a record is longer than {RECORD_MAX:,} characters" in error.problems[0].message


def test_the_cli_exits_2_naming_file_line_column_and_value(
    tmp_path: Path, cli_store: CliRunner
) -> None:
    runner = cli_store
    write_csv(tmp_path / "p.csv", STANDARD, [GOOD, [*GOOD[:3], "\u0661\u0662", *GOOD[4:6], "2"]])
    result = runner.invoke(cli_app, ["import", "purchases", "p.csv"])
    assert result.exit_code == 2, result.output
    assert "p.csv: line 3, column 'quantity': is not a whole number" in result.stderr
    assert "'\u0661\u0662'" in result.stderr and "Traceback" not in result.output


def test_json_output_is_always_standard_json(
    tmp_path: Path, cli_store: CliRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    """A number JSON cannot write (inf, NaN) is a clear error, never ``Infinity``."""

    with pytest.raises(typer.Exit) as caught:
        print_json({"clv": math.inf}, indent=2)
    assert caught.value.exit_code == 1
    assert capsys.readouterr().out == ""
    runner = cli_store
    write_csv(tmp_path / "p.csv", STANDARD, [[*GOOD[:4], "999999999", GOOD[5], "1"]])
    assert runner.invoke(cli_app, ["import", "purchases", "p.csv"]).exit_code == 0
    result = runner.invoke(cli_app, ["kpis", "--as-of", "2024-04-02", "--format", "json"])
    assert result.exit_code == 0, result.output

    def refuse(constant: str) -> None:
        raise AssertionError(f"not JSON: {constant}")

    kpis = json.loads(result.stdout, parse_constant=refuse)
    assert kpis["average_order_value"] == 999999999.0


def test_the_drop_folder_sets_a_file_aside_naming_the_line_and_column(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("recocamp.data.drop_folder.SETTLE_S", 0.0)
    drop = tmp_path / "incoming"
    drop.mkdir()
    header = ",".join(STANDARD).encode()
    (drop / "purchases-1.csv").write_bytes(
        header + b"\n" + ",".join(GOOD).encode() + b"\nA2,c\xe9,i1,1,1,2024-04-01T12:00:00Z,1\n"
    )
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        ingest={"drop_dir": drop, "processed_dir": drop / "done"},
    )
    report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected) == (0, 1)
    errors = (drop / "rejected" / "purchases-1.csv.errors.txt").read_text()
    assert "line 3, column 'customer_id': is not UTF-8 (byte 0xE9 at character 2)" in errors
    assert nothing_written(engine)


def test_a_file_where_a_drop_folder_belongs_is_refused_before_anything_is_imported(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file named like ``processed_dir`` failed each run after its import had committed (the
    dropped file left behind to fail again); the settings refuse one, and a file made there
    later stops the drop folder before it imports anything, naming the key."""
    monkeypatch.setattr("recocamp.data.drop_folder.SETTLE_S", 0.0)
    drop, done = tmp_path / "incoming", tmp_path / "done"
    drop.mkdir()
    done.write_text("not a folder")
    written = tmp_path / "settings.toml"  # relative paths: against the file's directory
    written.write_text('[ingest]\nprocessed_dir = "done"\nkeep_processed_days = 30\n')
    with pytest.raises(ConfigError) as at_load:
        load_settings(written)
    assert "line 2, key 'ingest.processed_dir': names a file, not a folder" in str(at_load.value)
    done.unlink()
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        ingest={"drop_dir": drop, "processed_dir": done, "keep_processed_days": 30},
    )
    write_csv(drop / "purchases-1.csv", STANDARD, [GOOD])
    done.write_text("made after the settings were read")
    with pytest.raises(ConfigError) as refused:
        import_drop_folder(engine, settings, NOW)
    assert "key 'ingest.processed_dir': names a file, not a folder" in str(refused.value)
    assert (drop / "purchases-1.csv").exists() and nothing_written(engine)
    done.unlink()
    assert import_drop_folder(engine, settings, NOW).imported == 1
    assert (done / "purchases-1.csv").exists()


@pytest.mark.parametrize(
    ("processed", "keep"),
    [("incoming", 30), ("incoming/", 0), ("incoming/rejected", 30), (".", 0), ("", 30)],
)
def test_a_processed_dir_that_holds_the_drop_folder_or_is_it_is_refused(
    tmp_path: Path, processed: str, keep: int
) -> None:
    """The retention purge deletes every file directly in ``processed_dir`` older than
    ``keep_processed_days`` (with 0, every file, keeping or not): set to the drop folder, it
    deleted files not yet imported, and a kept file, renamed ``2-…`` beside itself, was then
    set aside as of an unknown kind, in ``rejected/`` for good; set to the folder above it
    (``.``), it deleted the settings file and SQLite's -shm file. Refused at load."""
    written = tmp_path / "settings.toml"
    written.write_text(
        f'[ingest]\ndrop_dir = "incoming"\nprocessed_dir = "{processed}"\n'
        f"keep_processed_days = {keep}\n"
    )
    with pytest.raises(ConfigError) as at_load:
        load_settings(written)
    assert "line 3, key 'ingest.processed_dir':" in str(at_load.value)
    assert "the drop folder" in str(at_load.value)
    written.write_text('[ingest]\ndrop_dir = "incoming"\nprocessed_dir = "kept"\n')
    assert load_settings(written).ingest.processed_dir == tmp_path / "kept"


def _bomb(path: Path, blank_lines: int) -> Path:
    """A .gz file of a good line and then blank lines: a few KB, many MB inflated."""
    head = (",".join(STANDARD) + "\n" + ",".join(GOOD) + "\n").encode()
    path.write_bytes(gzip.compress(head + b"\n" * blank_lines, compresslevel=9))
    return path


def test_a_gzip_bomb_is_refused_before_the_rest_is_read(engine: sa.Engine, tmp_path: Path) -> None:
    """10 MB of blank lines gzip to 10 KB: past 100 times its size, but at least 1 MiB, the
    reading stops, the file's problem (50 MB of them took 33 s of CPU to read through)."""
    path = _bomb(tmp_path / "p.csv.gz", 10_000_000)
    limit = max(1 << 20, 100 * path.stat().st_size)
    assert limit < 2_000_000
    error = refused(engine, lambda: importer(engine).purchases(path))
    [problem] = error.problems
    assert problem.column == "*" and problem.line is not None and problem.line <= limit
    assert f"the file decompresses to more than {limit:,} bytes" in problem.message
    assert "ingest.max_gzip_ratio" in problem.message
    # the 1 MiB floor applied: the message said "(100 times its size, …)" of 1,048,576 bytes
    assert limit == 1 << 20 and "(100 times its size" not in problem.message
    assert "(the least any .gz file may decompress to; 100 times its size, " in problem.message
    # the same blank lines, a ratio allowing them: read through, blank lines left out
    fine = _bomb(tmp_path / "q.csv.gz", 2_000_000)
    allowing = Importer(engine, zone=ZoneInfo("Europe/London"), now=NOW, max_gzip_ratio=1_000)
    report = allowing.purchases(fine)
    assert (report.rows_read, report.imported) == (1, 1)


def test_the_drop_folder_rejects_a_gzip_bomb(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("recocamp.data.drop_folder.SETTLE_S", 0.0)
    monkeypatch.setattr("recocamp.data.sources.csv.GZIP_FLOOR", 100_000)
    drop = tmp_path / "incoming"
    drop.mkdir()
    _bomb(drop / "purchases-1.csv.gz", 1_000_000)
    _bomb(drop / "purchases-2.csv.gz", 10)
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        ingest={"drop_dir": drop, "processed_dir": drop / "done", "max_gzip_ratio": 10},
    )
    report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected) == (1, 1)  # the other file is not blocked
    errors = (drop / "rejected" / "purchases-1.csv.gz.errors.txt").read_text()
    assert "column '*': cannot be read: the file decompresses to more than" in errors
    # the floor (100,000 here) applied: 10 times the file's size is less
    assert "100,000 bytes (the least any .gz file may decompress to; 10 times its size" in errors
    with pytest.raises(ValueError, match="max_gzip_ratio"):
        Settings(ingest={"max_gzip_ratio": 1_001})


@pytest.fixture
def api(engine: sa.Engine, tmp_path: Path) -> FastAPI:
    return make_app(engine, tmp_path)


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"order_id": "A\x001"}, ["body", "order_id"]),
        ({"customer_id": "c\u20291"}, ["body", "customer_id"]),
        ({"customer_id": LONG_ID}, ["body", "customer_id"]),
        (
            {"lines": [{"item_id": "i1", "quantity": 10**23, "unit_price": 1.0}]},
            ["body", "lines", 0, "quantity"],
        ),
        (
            {"lines": [{"item_id": "i1", "quantity": 1, "unit_price": 1e308}]},
            ["body", "lines", 0, "unit_price"],
        ),
    ],
)
def test_purchase_events_have_the_importers_bounds(
    api: FastAPI, engine: sa.Engine, change: dict[str, Any], where: list[Any]
) -> None:
    body = {
        "order_id": "A1",
        "customer_id": "c1",
        "ordered_at": "2024-04-01T12:00:00Z",
        "lines": [{"item_id": "i1", "quantity": 1, "unit_price": 9.99}],
    } | change
    reply = call(api, "POST", "/v1/events/purchases", json=body, headers=bearer("shop"))
    assert reply.status == 422, reply.text
    assert [d["loc"] for d in reply.json()["detail"]] == [where]
    assert nothing_written(engine)


@pytest.mark.parametrize(
    ("path", "body", "where"),
    [
        ("/v1/customers/c%001", {"source": "crm"}, ["path", "customer_id"]),
        ("/v1/customers/c%E2%80%AE1", {"source": "crm"}, ["path", "customer_id"]),  # U+202E
        ("/v1/customers/c%C2%851", {"source": "crm"}, ["path", "customer_id"]),  # U+0085
        (f"/v1/customers/{'c' * 65}", {"source": "crm"}, ["path", "customer_id"]),
        ("/v1/customers/c1", {"source": "crm", "first_name": "A\x00"}, ["body", "first_name"]),
        ("/v1/customers/c1", {"source": "crm", "country": "X" * 65}, ["body", "country"]),
    ],
)
def test_customer_updates_have_the_importers_bounds(
    api: FastAPI, engine: sa.Engine, path: str, body: dict[str, Any], where: list[Any]
) -> None:
    reply = call(api, "PUT", path, json=body, headers=bearer("shop"))
    assert reply.status == 422, reply.text
    assert [d["loc"] for d in reply.json()["detail"]] == [where]
    assert nothing_written(engine)


ID_ROUTES = (
    ("PUT", "/v1/customers/{}", "shop"),
    ("GET", "/v1/customers/{}/next-best-offer", "shop"),
    ("GET", "/v1/customers/{}/forecast", "shop"),
    ("GET", "/v1/privacy/customers/{}", "dpo"),
    ("DELETE", "/v1/privacy/customers/{}", "dpo"),
)


@pytest.mark.parametrize(
    ("customer", "message"),
    [
        ("c%7F1", None),  # DEL: the pattern's message
        ("c%C2%851", "Value error, contains a control character (U+0085)"),
        ("c%E2%80%AE1", "Value error, contains a non-printable character (U+202E)"),
        ("c" * 65, "String should have at most 64 characters"),
    ],
)
def test_every_customer_id_route_refuses_what_the_importer_refuses(
    api: FastAPI, engine: sa.Engine, customer: str, message: str | None
) -> None:
    details = []
    for method, route, who in ID_ROUTES:
        reply = call(
            api,
            method,
            route.format(customer),
            headers=bearer(who),
            **({"json": {"source": "crm"}} if method == "PUT" else {}),
        )
        assert reply.status == 422, (route, reply.text)
        details.append(reply.json()["detail"])
    assert all(detail == details[0] for detail in details), details  # one rule, one message
    assert [d["loc"] for d in details[0]] == [["path", "customer_id"]]
    assert message is None or details[0][0]["msg"] == message
    assert nothing_written(engine)
