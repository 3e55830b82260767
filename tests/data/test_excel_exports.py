"""Files as a shop owner's spreadsheet saves them, through the real command line: each is
imported, or refused saying plainly what to change (exit 2, nothing written)."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from recocamp.cli import app
from recocamp.store.engine import make_engine
from recocamp.store.schema import customers, import_runs

runner = CliRunner()
PEOPLE = "id\temail\tfirst_name\r\nc1\tann@example.test\tAnn\r\n"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.toml").write_text('database_url = "sqlite:///shop.db"\n')
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    return tmp_path


def stored(workdir: Path) -> int:
    engine = make_engine(f"sqlite:///{workdir / 'shop.db'}")
    try:
        with engine.connect() as connection:
            return sum(
                connection.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                for t in (customers, import_runs)
            )
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("name", "encoded"),
    [
        ("customers.csv", PEOPLE.encode("utf-16")),  # Excel's "Unicode text": a BOM, LE
        ("customers-be.csv", b"\xfe\xff" + PEOPLE.encode("utf-16-be")),
        ("customers-nobom.csv", PEOPLE.replace("\t", ",").encode("utf-16-le")),
        ("customers.csv.gz", gzip.compress(PEOPLE.encode("utf-16"))),
    ],
)
def test_a_utf16_file_is_refused_saying_it_is_utf16(
    workdir: Path, name: str, encoded: bytes
) -> None:
    path = workdir / name
    path.write_bytes(encoded)
    result = runner.invoke(app, ["import", "customers", str(path)])
    assert result.exit_code == 2, result.output
    assert f"{name}: line 1: the file is UTF-16 text" in result.stderr
    assert "save it as CSV UTF-8" in result.stderr
    assert "example.test" not in result.output and "Traceback" not in result.output
    assert stored(workdir) == 0


ORDERS = "order_id,customer_id,item_id,quantity,unit_price,ordered_at\r\n"


@pytest.mark.parametrize("column", ["order_id", "customer_id", "item_id"])
def test_an_id_a_spreadsheet_wrote_in_scientific_notation_is_refused(
    workdir: Path, column: str
) -> None:
    """A spreadsheet shows a 13-digit id as ``1.23457E+12`` and exports it so: its digits
    are lost, and the lines of customers 1234567890123 and 1234569999999 were stored under
    one id, in silence. The id is refused naming line, column and value (among good lines,
    so it comes in a batch read column by column)."""
    good = [f"A{n},c{n % 3},i1,1,2.50,2011-08-01T10:00:00Z\r\n" for n in range(30)]
    bad = dict(order_id="B1", customer_id="c1", item_id="i1")
    bad[column] = "1.23457E+12"
    line = f"{bad['order_id']},{bad['customer_id']},{bad['item_id']},1,2.50,2011-08-01\r\n"
    path = workdir / "p.csv"
    path.write_text(ORDERS + "".join(good[:10]) + line + "".join(good[10:]), newline="")
    result = runner.invoke(app, ["import", "purchases", str(path)])
    assert result.exit_code == 2, result.output
    assert f"p.csv: line 12, column '{column}': looks like a number in scientific" in result.stderr
    assert "(value: '1.23457E+12')" in result.stderr
    assert stored(workdir) == 0


def test_a_customers_id_in_scientific_notation_is_refused(workdir: Path) -> None:
    path = workdir / "customers.csv"
    path.write_text("id,email\r\n1.23457E+12,\r\nc-1E+5,\r\n", newline="")
    result = runner.invoke(app, ["import", "customers", str(path)])
    assert result.exit_code == 2, result.output
    assert "line 2, column 'id': looks like a number in scientific notation" in result.stderr
    assert "line 3" not in result.stderr  # an id with letters around it is an id
    assert stored(workdir) == 0


def test_rows_of_separators_alone_are_blank_lines(workdir: Path) -> None:
    """A spreadsheet exports the rows below the data that were ever formatted as
    separators alone (``,,,,,``, also wider than the header): they hold nothing, as a blank
    line holds nothing, and are passed over as blank lines are. Each was a problem
    ("column 'order_id': is empty"), and the file was refused."""
    good = "".join(f"A{n},c1,i1,1,2.50,2011-08-01T10:00:00Z\r\n" for n in range(5))
    path = workdir / "p.csv"
    path.write_text(ORDERS + good + ",,,,,\r\n" * 3 + ",,,,,,,,\r\n\r\n", newline="")
    result = runner.invoke(app, ["import", "purchases", str(path)])
    assert result.exit_code == 0, result.output
    people = workdir / "customers.csv"
    people.write_text("id,email\r\nc1,\r\n,\r\n,,,\r\n", newline="")
    result = runner.invoke(app, ["import", "customers", str(people)])
    assert result.exit_code == 0, result.output
    engine = make_engine(f"sqlite:///{workdir / 'shop.db'}")
    with engine.connect() as connection:
        runs = connection.execute(sa.select(import_runs.c.rows_read)).scalars().all()
    engine.dispose()
    assert sorted(runs) == [1, 5]


def test_a_header_with_columns_without_a_name_says_so(workdir: Path) -> None:
    """``id,email,,`` (a spreadsheet's used range wider than its data) was refused as an
    'unknown column' named '' followed by the list of known ones: now it says what it is."""
    path = workdir / "customers.csv"
    path.write_text("id,email,,\r\nc1,,,\r\n", newline="")
    result = runner.invoke(app, ["import", "customers", str(path)])
    assert result.exit_code == 2, result.output
    assert "line 1: 2 columns without a name (columns 3, 4: a spreadsheet's" in result.stderr
    assert "unknown column" not in result.stderr
    assert stored(workdir) == 0
