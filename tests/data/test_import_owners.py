"""An order is one customer's, in files as in the API: an orders file naming an order
already stored under another customer (or as a guest order), or a guest order stored
under a customer, is refused whole (exit 2, nothing written), as ``POST
/v1/events/purchases`` answers 409. The digest that tells a repeat leaves the customer out
(an erasure turns a customer's lines into guest lines), so such an order was counted
"already stored" and stayed where it was. An erased customer's order imported again
stays a plain duplicate: the importer makes its lines guest lines before it compares."""

from __future__ import annotations

import os
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from recocamp.cli import app as cli
from recocamp.data.drop_folder import import_drop_folder
from recocamp.data.ingest import Importer
from recocamp.data.sources.csv import ONLINE_RETAIL_COLUMNS
from recocamp.errors import DataImportError
from recocamp.settings import Settings
from recocamp.store.schema import import_runs, orders, purchases
from tests.conftest import NOW, write_csv

HEADER = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"]
AT = "2011-07-01T10:00:00Z"
KEY = "k" * 32
REFUSED = "already stored under another customer or as a guest order"


def _first(directory: Path) -> Path:
    """o1 is c1's (two lines), o2 a guest order."""
    rows = [
        ["o1", "c1", "i1", 1, 2.5, AT],
        ["o1", "c1", "i2", 1, 3.0, AT],
        ["o2", "", "i1", 1, 2.5, AT],
    ]
    return write_csv(directory / "orders-1.csv", HEADER, rows)


def _import(runner: CliRunner, path: Path) -> Result:
    return runner.invoke(cli, ["import", "purchases", str(path)])


def _stored(database: Path) -> tuple[dict[str, set[str | None]], int]:
    """Each stored order's customers, and how many import runs were recorded."""
    engine = sa.create_engine(f"sqlite:///{database}")
    try:
        with engine.connect() as connection:
            owners: dict[str, set[str | None]] = {}
            query = sa.select(purchases.c.order_id, purchases.c.customer_id)
            for order_id, customer_id in connection.execute(query):
                owners.setdefault(order_id, set()).add(customer_id)
            runs = connection.execute(sa.select(sa.func.count()).select_from(import_runs))
            claimed = set(connection.execute(sa.select(orders.c.order_id)).scalars())
            assert claimed == set(owners)  # no order claimed without its lines
            return owners, int(runs.scalar_one())
    finally:
        engine.dispose()


@pytest.fixture
def shop(cli_store: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", KEY)
    done = _import(cli_store, _first(tmp_path))
    assert done.exit_code == 0, done.output
    return cli_store


@pytest.mark.parametrize(
    ("order", "customer"),
    [
        ("o1", "c2"),  # another customer's
        ("o1", ""),  # a customer's order as a guest order
        ("o2", "c3"),  # a guest order attributed to a customer
    ],
)
def test_a_file_moving_a_stored_order_to_another_customer_is_refused_whole(
    shop: CliRunner, tmp_path: Path, order: str, customer: str
) -> None:
    before = _stored(tmp_path / "shop.db")
    lines = {
        "o1": [["o1", customer, "i1", 1, 2.5, AT], ["o1", customer, "i2", 1, 3.0, AT]],
        "o2": [["o2", customer, "i1", 1, 2.5, AT]],
    }[order]
    rows = [["o9", "c9", "i1", 1, 2.5, AT], *lines]  # the moved order starts on line 3
    path = write_csv(tmp_path / "orders-2.csv", HEADER, rows)
    refused = _import(shop, path)
    assert refused.exit_code == 2, refused.output
    text = " ".join(refused.output.split())
    assert "orders-2.csv" in text
    assert f"line 3, column 'customer_id': this order is {REFUSED}" in text, text
    assert f"(value: '{order}')" in text
    assert "'c1'" not in text  # the other customer is never named
    assert _stored(tmp_path / "shop.db") == before  # o9 neither, nor a run


def test_the_same_order_under_the_same_customer_stays_a_duplicate(
    shop: CliRunner, tmp_path: Path
) -> None:
    rows = [
        ["o1", "c1", "i1", 1, 2.5, AT],
        ["o1", "c1", "i2", 1, 3.0, AT],
        ["o2", "", "i1", 1, 2.5, AT],
        ["o3", "c1", "i1", 1, 2.5, AT],
    ]
    done = _import(shop, write_csv(tmp_path / "orders-2.csv", HEADER, rows))
    assert done.exit_code == 0, done.output
    owners, runs = _stored(tmp_path / "shop.db")
    assert owners == {"o1": {"c1"}, "o2": {None}, "o3": {"c1"}} and runs == 2


def test_an_erased_customers_order_imported_again_stays_a_duplicate(
    shop: CliRunner, tmp_path: Path
) -> None:
    """Erasure made o1's lines guest lines; a later file still names c1 for it (another
    export, with a new order): the importer detaches c1's lines before comparing, so o1 is
    the duplicate it is, not an order moved."""
    erased = shop.invoke(cli, ["privacy", "erase", "c1", "--yes"])
    assert erased.exit_code == 0, erased.output
    assert _stored(tmp_path / "shop.db")[0]["o1"] == {None}
    rows = [
        ["o1", "c1", "i1", 1, 2.5, AT],
        ["o1", "c1", "i2", 1, 3.0, AT],
        ["o4", "c4", "i1", 1, 2.5, AT],
    ]
    done = _import(shop, write_csv(tmp_path / "orders-2.csv", HEADER, rows))
    assert done.exit_code == 0, done.output
    owners, _ = _stored(tmp_path / "shop.db")
    assert owners == {"o1": {None}, "o2": {None}, "o4": {"c4"}}


def test_the_drop_folder_sets_such_a_file_aside_with_its_errors(
    engine: sa.Engine, tmp_path: Path
) -> None:
    drop = tmp_path / "incoming"
    drop.mkdir()
    settings = Settings(signing_key=SecretStr(KEY), ingest={"drop_dir": drop})
    first = write_csv(drop / "purchases-1.csv", HEADER, [["o1", "c1", "i1", 1, 2.5, AT]])
    os.utime(first, (0, 0))
    assert import_drop_folder(engine, settings, NOW).imported == 1
    moved = [["o5", "c5", "i1", 1, 2.5, AT], ["o1", "c2", "i1", 1, 2.5, AT]]
    second = write_csv(drop / "purchases-2.csv", HEADER, moved)
    os.utime(second, (0, 0))
    report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected) == (0, 1)
    errors = (drop / "rejected" / "purchases-2.csv.errors.txt").read_text()
    assert f"line 3, column 'customer_id': this order is {REFUSED}" in errors
    assert "'c1'" not in errors
    with engine.connect() as connection:
        query = sa.select(purchases.c.order_id, purchases.c.customer_id)
        assert connection.execute(query).all() == [("o1", "c1")]


def test_an_online_retail_file_names_its_own_column(engine: sa.Engine, tmp_path: Path) -> None:
    """An invoice of customer 17850 exported again under 13047 (the same lines)."""
    header = list(ONLINE_RETAIL_COLUMNS)
    line = ["536365", "85123A", "WHITE HANGING HEART", 6, "2010-12-01 08:26:00", 2.55]
    importer = Importer(engine, zone=ZoneInfo("Europe/London"), now=NOW)
    first = write_csv(tmp_path / "retail-1.csv", header, [[*line, "17850", "United Kingdom"]])
    assert importer.purchases(first, "online-retail").imported == 1
    again = write_csv(tmp_path / "retail-2.csv", header, [[*line, "13047", "United Kingdom"]])
    with pytest.raises(DataImportError) as refused:
        importer.purchases(again, "online-retail")
    text = str(refused.value)
    assert f"line 2, column 'CustomerID': this order is {REFUSED}" in text
    assert "(value: '536365')" in text and "17850" not in text
