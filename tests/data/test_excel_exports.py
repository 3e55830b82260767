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
