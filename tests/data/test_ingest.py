"""Import semantics on real UCI rows, all-or-nothing on broken files, idempotent re-imports;
on SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import os
import shutil
import threading
import time
import tracemalloc
from datetime import date, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from recocamp import privacy
from recocamp.data.catalog import is_service_code
from recocamp.data.drop_folder import import_drop_folder
from recocamp.data.ingest import Importer
from recocamp.errors import ConfigError, DataImportError
from recocamp.settings import Settings
from recocamp.store import schema, tombstones
from recocamp.store.schema import audit_log, customers, import_runs, items, purchases
from tests.conftest import NOW, impatient, write_csv

LONDON = ZoneInfo("Europe/London")


def importer(engine: sa.Engine) -> Importer:
    return Importer(engine, zone=LONDON, now=NOW)


def counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table.name: connection.execute(
                sa.select(sa.func.count()).select_from(table)
            ).scalar_one()
            for table in (purchases, items, customers, import_runs, audit_log)
        }


def test_online_retail_semantics_match_an_independent_count(
    engine: sa.Engine, uci_slice: Path, uci_slice_rows: tuple[list[str], list[list[str]]]
) -> None:
    _, rows = uci_slice_rows
    adjustments = [
        r for r in rows if not r[0].startswith("C") and (int(r[3]) <= 0 or float(r[5]) <= 0)
    ]
    kept = [r for r in rows if r not in adjustments]
    report = importer(engine).purchases(uci_slice, "online-retail")

    assert report.rows_read == len(rows)
    assert report.imported == len(kept)
    assert report.skipped == {"adjustment": len(adjustments)}
    assert report.details["return_lines"] == sum(1 for r in kept if r[0].startswith("C"))
    assert report.details["guest_lines"] == sum(1 for r in kept if r[6] == "")
    with engine.connect() as connection:
        stored = connection.execute(sa.select(purchases)).all()
        catalogue = {row.id: row for row in connection.execute(sa.select(items))}
        people = {row.id: row.country for row in connection.execute(sa.select(customers))}
    assert len(stored) == len(kept)
    returns = [row for row in stored if row.is_return]
    assert returns and all(row.order_id.startswith("C") and row.quantity < 0 for row in returns)
    assert all(row.ordered_at.tzinfo is not None for row in stored)
    guests = [row for row in stored if row.customer_id is None]
    assert len(guests) == report.details["guest_lines"] > 0
    assert {row.customer_id for row in stored} - {None} == set(people)
    assert people["17850"] == "United Kingdom"
    services = {r[1] for r in kept if is_service_code(r[1])}
    assert services, "the slice must contain postage/fee lines"
    assert all(
        catalogue[code].is_service and catalogue[code].category == "service" for code in services
    )
    assert not catalogue["85123A"].is_service


def test_times_are_shop_local_converted_to_utc(engine: sa.Engine, uci_slice: Path) -> None:
    importer(engine).purchases(uci_slice, "online-retail")
    with engine.connect() as connection:
        first = connection.execute(
            sa.select(purchases.c.ordered_at).where(purchases.c.order_id == "536365")
        ).scalar()
    # 2010-12-01 08:26 in London is GMT (UTC+0) in winter
    assert first is not None and first.isoformat() == "2010-12-01T08:26:00+00:00"


def test_same_file_twice_changes_nothing(
    engine: sa.Engine, uci_slice: Path, tmp_path: Path
) -> None:
    first = importer(engine).purchases(uci_slice, "online-retail")
    before = counts(engine)
    again = importer(engine).purchases(uci_slice, "online-retail")
    renamed = tmp_path / "renamed.csv.gz"
    shutil.copy(uci_slice, renamed)
    third = importer(engine).purchases(renamed, "online-retail")

    assert first.imported > 0
    assert again.already_imported and third.already_imported
    assert counts(engine) == before


def test_a_snapshot_feed_back_to_an_earlier_file_is_imported_again(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """Customers and items files are snapshots: a price feed back to last week's prices (a
    sale ended) is byte for byte last week's file, and was skipped as already imported, the
    sale price kept for good. A file is skipped only while it is the last of its kind."""
    header = ["id", "title", "category", "price"]
    usual = write_csv(tmp_path / "items-1.csv", header, [["i1", "Mug", "home", "5.0"]])
    sale = write_csv(tmp_path / "items-2.csv", header, [["i1", "Mug", "home", "4.0"]])
    back = write_csv(tmp_path / "items-3.csv", header, [["i1", "Mug", "home", "5.0"]])
    importer(engine).items(usual)
    assert importer(engine).items(usual).already_imported  # nothing since: nothing to do
    importer(engine).items(sale)
    assert not importer(engine).items(back).already_imported
    with engine.connect() as connection:
        assert connection.execute(sa.select(items.c.price)).scalar_one() == 5.0
    people = ["id", "email", "consent_basis", "consent_at"]
    given = [["c1", "c1@example.test", "double_opt_in", "2011-06-01T10:00:00Z"]]
    consent = write_csv(tmp_path / "customers-1.csv", people, given)
    withdrawn = write_csv(tmp_path / "customers-2.csv", people, [["c1", "c1@example.test", "", ""]])
    importer(engine).customers(consent)
    importer(engine).customers(withdrawn)
    assert not importer(engine).customers(consent).already_imported
    with engine.connect() as connection:
        basis = connection.execute(sa.select(customers.c.consent_basis)).scalar_one()
    assert basis == "double_opt_in"


def test_overlapping_file_adds_only_new_lines(
    engine: sa.Engine, tmp_path: Path, uci_slice_rows: tuple[list[str], list[list[str]]]
) -> None:
    header, rows = uci_slice_rows
    first_orders = sorted({r[0] for r in rows})[:10]
    part = [r for r in rows if r[0] in first_orders]
    write_csv(tmp_path / "part.csv", header, part)
    write_csv(tmp_path / "all.csv", header, rows)
    importer(engine).purchases(tmp_path / "part.csv", "online-retail")
    full = importer(engine).purchases(tmp_path / "all.csv", "online-retail")
    assert full.duplicates > 0
    assert counts(engine)["purchases"] == full.imported + full.duplicates


@pytest.mark.parametrize(
    ("column", "bad", "message"),
    [
        (4, "2010-13-01 08:26:00", "is not a date-time"),
        (3, "six", "is not a whole number"),
        (5, "2,55", "is not a number"),
    ],
)
def test_broken_row_names_line_column_value_and_writes_nothing(
    engine: sa.Engine,
    tmp_path: Path,
    uci_slice_rows: tuple[list[str], list[list[str]]],
    column: int,
    bad: str,
    message: str,
) -> None:
    header, rows = uci_slice_rows
    broken = [list(r) for r in rows[:500]]
    broken[299][column] = bad  # data line 300 is line 301 of the file
    path = write_csv(tmp_path / "broken.csv", header, broken)
    before = counts(engine)
    with pytest.raises(DataImportError) as caught:
        importer(engine).purchases(path, "online-retail")
    text = str(caught.value)
    assert str(path) in text and "line 301" in text
    assert f"column {header[column]!r}" in text and repr(bad) in text and message in text
    assert counts(engine) == before


def test_problems_never_show_an_address(engine: sa.Engine, tmp_path: Path) -> None:
    """A field that cannot be read was shown as its bytes, and an id as it is: an address
    in the e-mail column with a Latin-1 byte, or a customer keyed by address, reached the
    terminal, the worker's run record and a rejected file's ``.errors.txt``. Masked now;
    the line, the column and the problem are still named."""
    lines = [
        b"id,email,first_name",
        b"c1,anna.lind@ex\xe4mple.test,Anna",
        b"bo@example.test,bo@example.test,Bo",
        b"bo@example.test,bo@example.test,Bo",
        b"order@example.test\x00,x@example.test,Cy",
    ]
    path = tmp_path / "customers.csv"
    path.write_bytes(b"\r\n".join(lines) + b"\r\n")
    with pytest.raises(DataImportError) as caught:
        importer(engine).customers(path)
    text = str(caught.value)
    assert "line 2, column 'email': is not UTF-8 (byte 0xE4" in text
    assert "line 4, column 'id': the same id as line 3" in text
    assert "line 5, column 'id': contains a NUL character" in text
    assert "@" not in text.replace("<address>", ""), text
    assert not any(name in text for name in ("anna", "lind", "bo@", "order")), text


def test_every_problem_of_a_file_is_listed(engine: sa.Engine, tmp_path: Path) -> None:
    header = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"]
    rows: list[list[object]] = [["o1", "c1", "i1", "x", "1.0", "2024-01-01T10:00:00+01:00"]] * 25
    rows.append(["o2", "c1", "i1", "1", "1.0", "yesterday"])
    path = write_csv(tmp_path / "p.csv", header, rows)
    with pytest.raises(DataImportError) as caught:
        importer(engine).purchases(path)
    assert len(caught.value.problems) == 20 and caught.value.more == 6
    assert "… and 6 more" in str(caught.value)


def test_wrong_header_missing_file_unknown_format_and_bad_gzip(
    engine: sa.Engine, tmp_path: Path
) -> None:
    wrong = write_csv(tmp_path / "w.csv", ["order", "customer"], [["1", "2"]])
    with pytest.raises(
        DataImportError, match=r"line 1: wrong header: missing column\(s\) order_id"
    ):
        importer(engine).purchases(wrong)
    with pytest.raises(DataImportError, match="cannot read file"):
        importer(engine).purchases(tmp_path / "nope.csv")
    with pytest.raises(DataImportError, match="unknown format"):
        importer(engine).purchases(wrong, "excel")
    fake = tmp_path / "fake.csv.gz"
    fake.write_bytes(b"not gzip at all")
    with pytest.raises(DataImportError, match="not a readable CSV file"):
        importer(engine).purchases(fake)
    truncated = tmp_path / "cut.csv.gz"
    truncated.write_bytes(
        gzip.compress(b"order_id,customer_id,item_id,quantity,unit_price,ordered_at\n" * 2000)[:300]
    )
    with pytest.raises(DataImportError):
        importer(engine).purchases(truncated)
    assert counts(engine)["import_runs"] == 0


def test_standard_format_guests_returns_offsets_and_adjustments(
    engine: sa.Engine, tmp_path: Path
) -> None:
    header = [
        "order_id",
        "customer_id",
        "item_id",
        "quantity",
        "unit_price",
        "ordered_at",
        "is_return",
    ]
    rows: list[list[object]] = [
        ["A1", "c1", "i1", "2", "9.99", "2024-03-31T01:30:00+01:00", ""],
        ["A1", "c1", "i2", "1", "5", "2024-03-31T01:30:00+01:00", ""],
        ["A2", "", "i1", "1", "9.99", "2024-04-01 12:00:00", ""],
        ["R1", "c1", "i1", "-1", "9.99", "2024-04-02T12:00:00Z", "true"],
        ["A3", "c2", "i3", "0", "9.99", "2024-04-02T12:00:00Z", ""],
    ]
    report = importer(engine).purchases(write_csv(tmp_path / "s.csv", header, rows))
    assert report.imported == 4 and report.skipped == {"adjustment": 1}
    with engine.connect() as connection:
        stored = {(r.order_id, r.line_no): r for r in connection.execute(sa.select(purchases))}
    assert stored[("A1", 1)].ordered_at.isoformat() == "2024-03-31T00:30:00+00:00"
    assert stored[("A1", 2)].item_id == "i2"
    assert stored[("A2", 1)].customer_id is None
    # no offset: read in the importer's zone (London is on BST, UTC+1, on 1 April)
    assert stored[("A2", 1)].ordered_at.isoformat() == "2024-04-01T11:00:00+00:00"
    assert stored[("R1", 1)].is_return and stored[("R1", 1)].quantity == -1


def test_customers_and_items_upsert_and_validate(engine: sa.Engine, tmp_path: Path) -> None:
    header = ["id", "email", "first_name", "time_zone", "consent_basis", "consent_at", "birthday"]
    good = [
        [
            "c1",
            "a@example.test",
            "Anna",
            "Europe/Berlin",
            "double_opt_in",
            "2024-01-01T00:00:00Z",
            "1990-02-28",
        ]
    ]
    importer(engine).customers(write_csv(tmp_path / "c1.csv", header, good))
    changed = [
        [
            "c1",
            "a@example.test",
            "Anne",
            "Europe/Berlin",
            "existing_customer",
            "2024-02-01T00:00:00Z",
            "",
        ]
    ]
    importer(engine).customers(write_csv(tmp_path / "c2.csv", header, changed))
    with engine.connect() as connection:
        row = connection.execute(sa.select(customers)).one()
    assert (row.first_name, row.consent_basis, row.birthday) == ("Anne", "existing_customer", None)

    bad = [
        ["c2", "b@example.test", "B", "Mars/Olympus", "double_opt_in", "2024-01-01T00:00:00Z", ""],
        ["c3", "c@example.test", "C", "", "maybe", "", ""],
        ["c4", "d@example.test", "D", "", "double_opt_in", "", ""],
        ["c5", "not-an-address", "E", "", "none", "", ""],
        ["c6", "f@example.test", "F", "", "none", "", "31.12.1990"],
    ]
    with pytest.raises(DataImportError) as caught:
        importer(engine).customers(write_csv(tmp_path / "c3.csv", header, bad))
    text = str(caught.value)
    assert "line 2, column 'time_zone'" in text and "'Mars/Olympus'" in text
    assert "line 3, column 'consent_basis'" in text and "'maybe'" in text
    assert "line 4, column 'consent_at': is required for consent_basis double_opt_in" in text
    assert "line 5, column 'email'" in text and "not-an-address" not in text  # never echo addresses
    assert (
        "line 6, column 'birthday': is not a date (YYYY-MM-DD)" in text
        and "31.12.1990" not in text  # a birthday is personal data: never echoed
    )

    item_header = ["id", "title", "category", "price", "in_stock"]
    importer(engine).items(
        write_csv(tmp_path / "i.csv", item_header, [["i1", "Mug", "kitchen", "4.5", "no"]])
    )
    with engine.connect() as connection:
        item = connection.execute(sa.select(items)).one()
    assert (item.title, item.price, item.in_stock) == ("Mug", 4.5, False)
    duplicate = [["i1", "Mug", "kitchen", "4.5", ""], ["i1", "Cup", "kitchen", "3", ""]]
    with pytest.raises(DataImportError, match=r"line 3, column 'id': the same id as line 2"):
        importer(engine).items(write_csv(tmp_path / "i2.csv", item_header, duplicate))


def test_import_is_recorded_in_runs_and_audit_log(engine: sa.Engine, uci_slice: Path) -> None:
    report = importer(engine).purchases(uci_slice, "online-retail")
    with engine.connect() as connection:
        run = connection.execute(sa.select(import_runs)).one()
        entry = connection.execute(sa.select(audit_log)).one()
    assert (run.kind, run.format, run.rows_read, run.imported) == (
        "purchases",
        "online-retail",
        report.rows_read,
        report.imported,
    )
    assert run.skipped == report.skipped
    assert entry.action == "import_purchases" and entry.details["imported"] == report.imported


def test_a_feed_can_set_but_never_clear_an_objection(engine: sa.Engine, tmp_path: Path) -> None:
    header = ["id", "email", "objected_to_profiling"]
    importer(engine).customers(
        write_csv(tmp_path / "a.csv", header, [["c1", "a@example.test", "true"]])
    )
    importer(engine).customers(
        write_csv(tmp_path / "b.csv", header[:2], [["c1", "a@example.test"]])
    )
    importer(engine).customers(
        write_csv(tmp_path / "c.csv", header, [["c1", "a@example.test", "false"]])
    )
    with engine.connect() as connection:
        assert connection.execute(sa.select(customers.c.objected_to_profiling)).scalar_one() is True


def test_sales_derived_catalogue_never_overwrites_imported_items(
    engine: sa.Engine, uci_slice: Path, tmp_path: Path
) -> None:
    header = ["id", "title", "category", "price", "in_stock", "url"]
    curated = [
        [
            "85123A",
            "Heart T-light holder",
            "lighting",
            "2.95",
            "false",
            "https://shop.example.test/heart",
        ]
    ]
    importer(engine).items(write_csv(tmp_path / "items.csv", header, curated))
    importer(engine).purchases(uci_slice, "online-retail")
    with engine.connect() as connection:
        item = connection.execute(sa.select(items).where(items.c.id == "85123A")).one()
        others = connection.execute(sa.select(sa.func.count()).select_from(items)).scalar_one()
    assert (item.title, item.category, item.in_stock, item.url) == (
        "Heart T-light holder",
        "lighting",
        False,
        "https://shop.example.test/heart",
    )
    assert others > 100  # every other item still came from the sales


def test_a_time_past_year_9999_in_utc_is_a_row_problem_not_a_crash(
    engine: sa.Engine, tmp_path: Path
) -> None:
    header = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"]
    rows: list[list[object]] = [
        ["A1", "c1", "i1", "1", "9.99", "2024-04-01T12:00:00Z"],
        ["A2", "c1", "i1", "1", "9.99", "9999-12-31T23:00:00-05:00"],
    ]
    path = write_csv(tmp_path / "far.csv", header, rows)
    with pytest.raises(DataImportError) as caught:
        importer(engine).purchases(path)
    text = str(caught.value)
    assert "line 3" in text and "ordered_at" in text and "9999-12-31T23:00:00-05:00" in text
    assert counts(engine)["purchases"] == 0


# -- erased customers stay erased; imported drop-folder files do not stay ---------------------

CUSTOMER_HEADER = ["id", "email", "first_name", "consent_basis", "consent_at"]
ERIN = ["c1", "Erin@Example.test", "Erin", "double_opt_in", "2011-06-01T10:00:00Z"]
OTTO = ["c2", "otto@example.test", "Otto", "double_opt_in", "2011-06-01T10:00:00Z"]
ORDER_HEADER = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"]


def shop_settings(tmp_path: Path, **ingest: object) -> Settings:
    """Settings with the links' (and tombstones') key and a drop folder under ``tmp_path``."""
    folders = {"drop_dir": tmp_path / "incoming", "processed_dir": tmp_path / "incoming" / "done"}
    return Settings(signing_key=SecretStr("k" * 32), ingest={**folders, **ingest})


def erased_shop(engine: sa.Engine, tmp_path: Path, settings: Settings) -> None:
    """Erin and Otto with orders; then Erin is erased."""
    keyed = Importer(engine, zone=LONDON, now=NOW, erasure_key=tombstones.key_of(settings))
    keyed.customers(write_csv(tmp_path / "people.csv", CUSTOMER_HEADER, [ERIN, OTTO]))
    orders = [
        ["o1", "c1", "i1", 1, 2.5, "2011-07-01T10:00:00Z"],
        ["o2", "c2", "i1", 1, 2.5, "2011-07-01T10:00:00Z"],
    ]
    keyed.purchases(write_csv(tmp_path / "orders.csv", ORDER_HEADER, orders))
    assert privacy.erase(engine, settings, "c1", NOW, via="test") is not None


def people(engine: sa.Engine) -> dict[str, str | None]:
    with engine.connect() as connection:
        return dict(connection.execute(sa.select(customers.c.id, customers.c.email)).all())


def test_a_feed_without_a_column_changes_nothing_it_does_not_carry(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """A shop's nightly feed of names and addresses only: the consent, locale and birthday
    recorded before (by a fuller file, the API, the preferences page) stay. They were reset
    to "none", the default locale and no birthday by every such import: the shop stopped
    mailing everyone who had opted in. A new customer in that feed gets the defaults."""
    full = ["id", "email", "locale", "consent_basis", "consent_at", "consent_source", "birthday"]
    first = [
        ["c1", "a@example.test", "de", "double_opt_in", "2024-01-01T00:00:00Z", "web", "1990-02-28"]
    ]
    importer(engine).customers(write_csv(tmp_path / "full.csv", full, first))
    slim = [["c1", "a@example.test", "Anne"], ["c2", "b@example.test", "Bo"]]
    importer(engine).customers(
        write_csv(tmp_path / "slim.csv", ["id", "email", "first_name"], slim)
    )
    with engine.connect() as connection:
        rows = {r.id: r for r in connection.execute(sa.select(customers))}
    kept = rows["c1"]
    assert (kept.first_name, kept.locale, kept.consent_basis, kept.consent_source) == (
        "Anne",
        "de",
        "double_opt_in",
        "web",
    )
    assert kept.birthday == date(1990, 2, 28) and kept.consent_at is not None
    new = rows["c2"]
    assert (new.locale, new.consent_basis, new.consent_at, new.birthday) == (
        "en",
        "none",
        None,
        None,
    )


def test_a_re_import_never_brings_an_erased_customer_back(
    engine: sa.Engine, tmp_path: Path
) -> None:
    settings = shop_settings(tmp_path)
    erased_shop(engine, tmp_path, settings)
    keyed = Importer(engine, zone=LONDON, now=NOW, erasure_key=tombstones.key_of(settings))
    same_address = ["c3", " ERIN@example.test", "Erin", "none", ""]  # a new id, her address
    again = [ERIN, [*OTTO[:2], "Otto B.", *OTTO[3:]], same_address]
    report = keyed.customers(write_csv(tmp_path / "people-2.csv", CUSTOMER_HEADER, again))
    assert (report.imported, report.skipped) == (1, {"erased": 2})
    assert people(engine) == {"c2": "otto@example.test"}
    with engine.connect() as connection:
        run = connection.execute(sa.select(import_runs).order_by(import_runs.c.id.desc())).first()
    assert run is not None and run.skipped == {"erased": 2}

    orders = [
        ["o3", "c1", "i1", 1, 2.5, "2011-08-01T10:00:00Z"],
        ["o4", "c2", "i1", 1, 2.5, "2011-08-01T10:00:00Z"],
    ]
    bought = keyed.purchases(write_csv(tmp_path / "orders-2.csv", ORDER_HEADER, orders))
    assert bought.imported == 2 and bought.details["erased_customer_lines"] == 1
    with engine.connect() as connection:
        owners = dict(
            connection.execute(sa.select(purchases.c.order_id, purchases.c.customer_id)).all()
        )
    assert owners == {"o1": None, "o2": "c2", "o3": None, "o4": "c2"}  # guest lines

    drop = settings.ingest.drop_dir
    drop.mkdir()
    dropped = write_csv(drop / "customers-3.csv", CUSTOMER_HEADER, [ERIN])
    os.utime(dropped, (0, 0))  # settled long ago
    assert import_drop_folder(engine, settings, NOW).imported == 1
    assert people(engine) == {"c2": "otto@example.test"}
    assert not dropped.exists() and not settings.ingest.processed_dir.exists()  # not kept


def test_an_erased_address_in_another_unicode_form_or_with_a_hidden_character_stays_out(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """The tombstone compared addresses trimmed and lower-cased only: ``Jürgen@…`` erased
    as typed (composed) came back from a system that exports decomposed text (``u`` +
    U+0308), and one with a zero-width space slipped in. Addresses are compared in their
    composed form now (tombstones written before match too), and one with a character that
    is not printable is a problem of its line (the address never shown)."""
    settings = shop_settings(tmp_path)
    keyed = Importer(engine, zone=LONDON, now=NOW, erasure_key=tombstones.key_of(settings))
    jurgen = ["c1", "J\u00fcrgen@example.test", "J", "double_opt_in", "2011-06-01T10:00:00Z"]
    keyed.customers(write_csv(tmp_path / "people.csv", CUSTOMER_HEADER, [jurgen, OTTO]))
    assert privacy.erase(engine, settings, "c1", NOW, via="test") is not None

    decomposed = ["c3", "Ju\u0308rgen@Example.test", "J", "none", ""]
    report = keyed.customers(write_csv(tmp_path / "people-2.csv", CUSTOMER_HEADER, [decomposed]))
    assert (report.imported, report.skipped) == (0, {"erased": 1})
    hidden = ["c4", "j\u00fcrgen@example.test\u200b", "J", "none", ""]
    with pytest.raises(DataImportError) as refused:
        keyed.customers(write_csv(tmp_path / "people-3.csv", CUSTOMER_HEADER, [hidden]))
    assert "line 2, column 'email': contains a non-printable character (U+200B)" in str(
        refused.value
    )
    assert "rgen" not in str(refused.value)
    assert people(engine) == {"c2": "otto@example.test"}


def test_an_erased_id_in_another_unicode_form_stays_out(engine: sa.Engine, tmp_path: Path) -> None:
    """The tombstone hashed the id as given: ``José`` erased as typed (composed) came back
    as the decomposed ``Jose`` + U+0301 another system exports, with their orders and a
    customer row. Ids are compared in every Unicode form now; the kept file is cleaned."""
    settings = shop_settings(tmp_path, keep_processed_days=30)
    key = tombstones.key_of(settings)
    keyed = Importer(engine, zone=LONDON, now=NOW, erasure_key=key)
    jose = ["Jos\u00e9", "jose@example.test", "J", "double_opt_in", "2011-06-01T10:00:00Z"]
    keyed.customers(write_csv(tmp_path / "people.csv", CUSTOMER_HEADER, [jose, OTTO]))
    assert privacy.erase(engine, settings, "Jos\u00e9", NOW, via="test") is not None

    decomposed = ["Jose\u0301", "j@example.test", "J", "none", ""]
    report = keyed.customers(write_csv(tmp_path / "people-2.csv", CUSTOMER_HEADER, [decomposed]))
    assert (report.imported, report.skipped) == (0, {"erased": 1})
    drop = settings.ingest.drop_dir
    drop.mkdir()
    order = ["o9", "Jose\u0301", "i1", 1, 2.5, "2011-08-01T10:00:00Z"]
    dropped = write_csv(drop / "purchases-2.csv", ORDER_HEADER, [order])
    os.utime(dropped, (0, 0))
    assert import_drop_folder(engine, settings, NOW).imported == 1
    with engine.connect() as connection:
        owners = connection.execute(sa.select(purchases.c.customer_id)).scalars().all()
    assert owners == [None] and people(engine) == {"c2": "otto@example.test"}
    kept = (settings.ingest.processed_dir / "purchases-2.csv").read_text()
    assert "Jose" not in kept and "o9,,i1" in kept  # a guest line, as in the store


def test_ids_in_files_are_compared_composed_one_customer_whatever_the_form(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """``Müller`` typed on one system and exported decomposed (``u`` + U+0308) by another is
    the same id to a person: it was stored as a second customer (orders of one person split
    over two, a file naming both forms imported both). Files read ids composed (Unicode
    NFC), as they read them trimmed: customers, items, orders and both purchase formats."""
    composed, decomposed = "M\u00fcller", "Mu\u0308ller"
    twice = [[composed, "m1@example.test"], [decomposed, "m2@example.test"]]
    error = refused_file(
        engine,
        lambda: importer(engine).customers(
            write_csv(tmp_path / "twice.csv", ["id", "email"], twice)
        ),
    )
    assert [(p.line, p.column, p.message) for p in error.problems] == [
        (3, "id", "the same id as line 2 (an id once per file)")
    ]
    importer(engine).customers(write_csv(tmp_path / "people.csv", ["id", "email"], twice[:1]))
    importer(engine).items(
        write_csv(
            tmp_path / "items.csv",
            ["id", "title", "category", "price"],
            [["T\u00f6pfchen", "Pot", "home", "4.5"]],
        )
    )
    lines = [
        ["\u00d61", decomposed, "To\u0308pfchen", 1, 4.5, "2011-08-01T10:00:00Z"],
        ["O\u03081", composed, "T\u00f6pfchen", 1, 4.5, "2011-08-01T10:00:00Z"],
    ]
    importer(engine).purchases(write_csv(tmp_path / "orders.csv", ORDER_HEADER, lines))
    retail = [
        "536365",
        "To\u0308pfchen",
        "POT",
        "1",
        "2010-12-01 08:26:00",
        "4.5",
        decomposed,
        "DE",
    ]
    header = [
        "InvoiceNo",
        "StockCode",
        "Description",
        "Quantity",
        "InvoiceDate",
        "UnitPrice",
        "CustomerID",
        "Country",
    ]
    importer(engine).purchases(
        write_csv(tmp_path / "retail.csv", header, [retail]), "online-retail"
    )
    with engine.connect() as connection:
        stored = connection.execute(
            sa.select(purchases.c.order_id, purchases.c.customer_id, purchases.c.item_id)
        ).all()
        catalogue = connection.execute(sa.select(items.c.id)).scalars().all()
    assert set(people(engine)) == {composed}
    assert catalogue == ["T\u00f6pfchen"]
    assert sorted(stored) == [
        ("536365", composed, "T\u00f6pfchen"),
        ("\u00d61", composed, "T\u00f6pfchen"),
        ("\u00d61", composed, "T\u00f6pfchen"),
    ]


def refused_file(engine: sa.Engine, run: Any) -> DataImportError:
    before = counts(engine)
    with pytest.raises(DataImportError) as caught:
        run()
    assert counts(engine) == before
    return caught.value


def test_a_tombstone_written_before_addresses_were_composed_still_matches(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """A tombstone hashed an address as it came (trimmed, lower-case); one of a decomposed
    address still refuses it in either form."""
    settings = shop_settings(tmp_path)
    key = tombstones.key_of(settings)
    assert key is not None
    old = hmac.new(key[0], "email:ju\u0308rgen@example.test".encode(), hashlib.sha256).hexdigest()
    with engine.begin() as connection:
        connection.execute(
            sa.insert(schema.tombstones).values(id_hash="x", email_hash=old, erased_at=NOW)
        )
    keyed = Importer(engine, zone=LONDON, now=NOW, erasure_key=key)
    rows = [
        ["c5", "J\u00fcrgen@example.test", "J", "none", ""],
        ["c6", "Ju\u0308rgen@example.test", "J", "none", ""],
    ]
    report = keyed.customers(write_csv(tmp_path / "people.csv", CUSTOMER_HEADER, rows))
    assert (report.imported, report.skipped) == (0, {"erased": 2})


def test_without_the_key_a_store_with_tombstones_refuses_imports(
    engine: sa.Engine, tmp_path: Path
) -> None:
    settings = shop_settings(tmp_path)
    erased_shop(engine, tmp_path, settings)
    before = counts(engine)
    unkeyed = Importer(engine, zone=LONDON, now=NOW)
    with pytest.raises(ConfigError, match="RECOCAMP_SIGNING_KEY"):
        unkeyed.customers(write_csv(tmp_path / "people-2.csv", CUSTOMER_HEADER, [ERIN]))
    with pytest.raises(ConfigError, match="RECOCAMP_SIGNING_KEY"):
        order = ["o9", "c1", "i1", 1, 2.5, "2011-08-01T10:00:00Z"]
        unkeyed.purchases(write_csv(tmp_path / "o.csv", ORDER_HEADER, [order]))
    drop = settings.ingest.drop_dir
    drop.mkdir()
    dropped = write_csv(drop / "customers-3.csv", CUSTOMER_HEADER, [ERIN])
    os.utime(dropped, (0, 0))
    with pytest.raises(ConfigError, match="RECOCAMP_SIGNING_KEY"):
        import_drop_folder(engine, settings.model_copy(update={"signing_key": None}), NOW)
    assert dropped.exists() and not (drop / "rejected").exists()  # tried again once it is set
    assert counts(engine) == before
    with pytest.raises(ConfigError, match="RECOCAMP_SIGNING_KEY"):
        privacy.erase(engine, settings.model_copy(update={"signing_key": None}), "c2", NOW, "t")
    assert people(engine) == {"c2": "otto@example.test"}


def test_imported_drop_files_are_kept_only_as_long_as_configured(
    engine: sa.Engine, tmp_path: Path
) -> None:
    settings = shop_settings(tmp_path, keep_processed_days=3)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    os.utime(write_csv(drop / "customers-1.csv", CUSTOMER_HEADER, [OTTO]), (0, 0))
    assert import_drop_folder(engine, settings, NOW).imported == 1
    kept = settings.ingest.processed_dir / "customers-1.csv"
    assert kept.stat().st_mtime == NOW.timestamp()  # the import's time: the retention clock
    assert privacy.purge(engine, settings, NOW + timedelta(days=2)).processed_files == 0
    assert kept.exists()
    assert privacy.purge(engine, settings, NOW + timedelta(days=4)).processed_files == 1
    assert not kept.exists()


def test_the_retention_purge_deletes_only_the_files_the_drop_folder_kept(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """``processed_dir`` named a folder that holds other files too (the settings file's,
    the SQLite database's, ``/srv/shop``): the purge deleted every file in it older than
    ``keep_processed_days``, the settings file and the database among them. It deletes the
    kept data files only: a data file's name, or one numbered beside it (``2-…``)."""
    shop = tmp_path / "shop"
    shop.mkdir()
    settings = shop_settings(tmp_path, processed_dir=shop, keep_processed_days=3)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    others = [shop / n for n in ("settings.toml", "shop.db", "notes.csv", "2-notes.txt")]
    for other in others:
        other.write_text("x\n")
        os.utime(other, (0, 0))
    for name in ("customers-1.csv", "customers-2.csv"):
        os.utime(write_csv(drop / name, CUSTOMER_HEADER, [OTTO]), (0, 0))
    os.utime(write_csv(drop / "customers-3.csv", CUSTOMER_HEADER, [OTTO]), (0, 0))
    (shop / "customers-3.csv").write_text("kept from an earlier drop\n")  # so: 2-customers-3
    os.utime(shop / "customers-3.csv", (0, 0))
    assert import_drop_folder(engine, settings, NOW).imported == 1  # the others: same content
    kept = sorted(p.name for p in shop.iterdir() if p.name.startswith(("customers", "2-c")))
    assert kept == ["2-customers-3.csv", "customers-1.csv", "customers-2.csv", "customers-3.csv"]
    assert privacy.purge(engine, settings, NOW + timedelta(days=4)).processed_files == 4
    assert sorted(p.name for p in shop.iterdir() if p.is_file()) == sorted(p.name for p in others)


def test_an_erasure_waits_for_a_write_already_checked_and_erases_it_too(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """PostgreSQL: a feed checked c1 (no tombstone yet) and wrote them, uncommitted, when the
    erasure starts: the erasure waits for that commit and then erases the row."""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite: the next test (a check takes the write lock)")
    settings = shop_settings(tmp_path)
    outcome: list[object] = []
    with engine.connect() as feed, engine.connect() as observer:
        with feed.begin():
            assert tombstones.erased_ids(feed, tombstones.key_of(settings), ["c1"], "t") == set()
            feed.execute(
                sa.insert(customers).values(id="c1", email="e@example.test", updated_at=NOW)
            )
            eraser = threading.Thread(
                target=lambda: outcome.append(
                    privacy.erase(engine, settings, "c1", NOW, via="test")
                )
            )
            eraser.start()
            waiting = sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )
            for _ in range(200):  # the erasure queues behind the feed's lock (bounded wait)
                if observer.execute(waiting).scalar_one():
                    break
                observer.rollback()
                time.sleep(0.05)
            else:
                pytest.fail("the erasure did not wait for the feed's transaction")
        eraser.join(30)
    assert outcome and outcome[0] is not None
    assert people(engine) == {}


def test_sqlite_an_erasure_between_a_feeds_check_and_its_write_is_not_undone(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: an import of Erin's row has checked the tombstones (none) and not written yet
    when her erasure runs. Either the erasure waits (the check holds the write lock) or it
    wins and the import must not bring her back; never both an erasure and Erin."""
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL: the test above (advisory locks)")
    settings = shop_settings(tmp_path)
    keyed = Importer(engine, zone=LONDON, now=NOW, erasure_key=tombstones.key_of(settings))
    keyed.customers(write_csv(tmp_path / "people.csv", CUSTOMER_HEADER, [ERIN, OTTO]))
    eraser, check = impatient(engine), tombstones.erased_ids
    outcome: list[object] = []

    def check_then_erase(*args: Any, **kwargs: Any) -> set[str]:
        found = check(*args, **kwargs)
        try:  # on another connection, while the import's transaction is open
            outcome.append(privacy.erase(eraser, settings, "c1", NOW, via="test"))
        except sa.exc.OperationalError as exc:
            outcome.append(str(exc.orig))
        return found

    monkeypatch.setattr(tombstones, "erased_ids", check_then_erase)
    keyed.customers(write_csv(tmp_path / "people-2.csv", CUSTOMER_HEADER, [ERIN]))
    monkeypatch.undo()
    eraser.dispose()
    with engine.connect() as connection:
        erased = tombstones.count(connection)
    assert len(outcome) == 1 and (erased == 1) != ("c1" in people(engine)), outcome
    assert privacy.erase(engine, settings, "c1", NOW, via="test") is not None
    assert "c1" not in people(engine)


def test_drop_files_that_arrive_after_an_erasure_are_kept_without_the_erased(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """The import skips Erin's rows; the copies the drop folder keeps (processed, rejected
    and the reasons beside it) must not hold them either: by id, by address, in orders."""
    settings = shop_settings(tmp_path, keep_processed_days=3)
    erased_shop(engine, tmp_path, settings)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    same_address = ["c3", " ERIN@example.test", "Erin", "none", ""]
    orders = [
        ["o5", "c1", "i1", 1, 2.5, "2011-08-01T10:00:00Z"],
        ["o6", "c2", "i1", 1, 2.5, "2011-08-01T10:00:00Z"],
    ]
    files = [
        write_csv(drop / "customers-3.csv", CUSTOMER_HEADER, [ERIN, OTTO, same_address]),
        write_csv(drop / "purchases-4.csv", ORDER_HEADER, orders),
        write_csv(drop / "customers-5.csv", CUSTOMER_HEADER, [ERIN, OTTO, ERIN]),
    ]
    for path in files:
        os.utime(path, (0, 0))
    report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected) == (2, 1)
    assert people(engine) == {"c2": "otto@example.test"}

    kept = settings.ingest.processed_dir
    assert (kept / "customers-3.csv").read_text().splitlines() == [
        ",".join(CUSTOMER_HEADER),
        ",".join(OTTO),
    ]
    assert (kept / "purchases-4.csv").read_text().splitlines()[1:] == [
        "o5,,i1,1,2.5,2011-08-01T10:00:00Z",
        "o6,c2,i1,1,2.5,2011-08-01T10:00:00Z",
    ]
    assert (kept / "customers-3.csv").stat().st_mtime == NOW.timestamp()  # retention clock
    rejected = drop / "rejected"
    assert (rejected / "customers-5.csv").read_text().splitlines() == [
        ",".join(CUSTOMER_HEADER),
        ",".join(OTTO),
    ]
    reasons = (rejected / "customers-5.csv.errors.txt").read_text()
    assert "'c1'" not in reasons and "erin" not in reasons.lower()


def test_a_drop_file_named_in_capitals_is_gunzipped_like_any_other(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """The drop folder takes ``.CSV.GZ`` as it takes ``.csv.gz`` (a Windows export names
    its files in capitals): read as plain text, the gzip bytes were refused as a header
    that is not UTF-8."""
    settings = shop_settings(tmp_path)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    plain = write_csv(tmp_path / "people.csv", CUSTOMER_HEADER, [OTTO])
    zipped = drop / "CUSTOMERS-1.CSV.GZ"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    os.utime(zipped, (0, 0))
    report = import_drop_folder(engine, settings, NOW)
    assert (report.imported, report.rejected) == (1, 0)
    assert people(engine) == {"c2": "otto@example.test"}


def test_drop_files_of_one_kind_are_imported_in_the_order_their_numbers_say(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """An export that numbers its files: the tenth holds the newer address and is imported
    after the ninth (by name alone, "customers-10" came first and the ninth's older address
    won)."""
    settings = shop_settings(tmp_path)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    for number, address in ((9, "old@example.test"), (10, "new@example.test")):
        written = write_csv(drop / f"customers-{number}.csv", CUSTOMER_HEADER, [OTTO])
        written.write_text(written.read_text().replace("otto@example.test", address))
        os.utime(written, (0, 0))
    report = import_drop_folder(engine, settings, NOW)
    assert report.imported == 2
    assert people(engine) == {"c2": "new@example.test"}


def test_a_drop_file_that_cannot_leave_the_folder_holds_up_no_other(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file the worker may read but not delete or move (another user's upload in a
    sticky folder) is counted and logged, and the files after it are imported: the error
    used to end the run, on every run after it too (the file, imported, stayed to fail
    again), so that no purchases file arrived any more."""
    settings = shop_settings(tmp_path)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    files = [
        write_csv(drop / "customers-1.csv", CUSTOMER_HEADER, [OTTO]),
        write_csv(
            drop / "items-1.csv", ["id", "title", "category", "price"], [["i1", "Mug", "k", 3]]
        ),
        write_csv(
            drop / "purchases-1.csv", ORDER_HEADER, [["o1", "c2", "i1", 1, 2.5, "2011-08-01"]]
        ),
        drop / "customers-2.csv",
    ]
    files[-1].write_text("id,email\nc3,not an address\n")
    for path in files:
        os.utime(path, (0, 0))
    real_unlink, real_move = Path.unlink, shutil.move

    def unlink(path: Path, missing_ok: bool = False) -> None:
        if path.name == "customers-1.csv":
            raise PermissionError(13, "Permission denied", str(path))
        real_unlink(path, missing_ok)

    def move(source: Path, target: Path) -> object:
        if Path(source).name == "customers-2.csv":
            raise PermissionError(13, "Permission denied", str(source))
        return real_move(source, target)

    monkeypatch.setattr(Path, "unlink", unlink)
    monkeypatch.setattr("recocamp.data.drop_folder.shutil.move", move)
    report = import_drop_folder(engine, settings, NOW)
    assert report.counts() == {
        "imported": 3,
        "already_imported": 0,
        "rejected": 1,
        "waiting": 0,
        "rows": 3,
        "not_moved": 2,
    }
    assert counts(engine)["purchases"] == 1
    assert sorted(p.name for p in drop.iterdir() if p.is_file()) == [
        "customers-1.csv",
        "customers-2.csv",
    ]
    again = import_drop_folder(engine, settings, NOW)
    assert (again.already_imported, again.rejected, again.not_moved) == (1, 1, 2)


def test_a_drop_file_replaced_or_still_written_during_its_import_is_left_for_the_next_run(
    engine: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A feed that writes ``customers.csv`` again (renamed over the old one) while the
    import reads it, or a writer that goes on after a pause longer than the settling time:
    the file the import leaves is not the one it read. It used to be deleted (or set aside
    as broken) all the same, and the customers it held were never imported."""
    settings = shop_settings(tmp_path)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    feed = write_csv(drop / "customers.csv", CUSTOMER_HEADER, [OTTO])
    half = drop / "customers-big.csv"
    half.write_text(",".join(CUSTOMER_HEADER) + "\nc4,ida@example.test,Ida,double_opt_in,2011-")
    for path in (feed, half):
        os.utime(path, (0, 0))
    newer = ["c5", "eva@example.test", "Eva", "double_opt_in", "2011-06-01T10:00:00Z"]
    real = Importer.customers

    def customers_meanwhile(self: Importer, path: Path) -> Any:
        try:
            return real(self, path)
        finally:
            if path == feed:
                write_csv(tmp_path / "next.csv", CUSTOMER_HEADER, [OTTO, newer])
                os.replace(tmp_path / "next.csv", feed)
            else:
                with half.open("a") as handle:
                    handle.write("06-01T10:00:00Z\n")

    monkeypatch.setattr(Importer, "customers", customers_meanwhile)
    first = import_drop_folder(engine, settings, NOW)
    assert (first.imported, first.rejected, first.waiting) == (1, 0, 2)
    assert sorted(p.name for p in drop.iterdir() if p.is_file()) == [
        "customers-big.csv",
        "customers.csv",
    ]
    monkeypatch.setattr(Importer, "customers", real)
    for path in (feed, half):
        os.utime(path, (0, 0))
    second = import_drop_folder(engine, settings, NOW)
    assert (second.imported, second.rejected, second.waiting) == (2, 0, 0)
    assert sorted(people(engine)) == ["c2", "c4", "c5"]
    assert not any(p.is_file() for p in drop.iterdir())


def test_a_gzip_bomb_set_aside_is_not_decompressed_whole_for_erased_customers(
    engine: sa.Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The import reads a ``.gz`` file to ``max_gzip_ratio`` times its size and refuses the
    rest; the look for erased customers in the file set aside decompressed all of it, into
    memory (400 KB of gzip: 400 MB, 2 GB of memory and 280 s of CPU; a few MB more, the
    worker's death). It reads as far as the import did, and, on a store that never erased
    anybody, nothing."""
    settings = shop_settings(tmp_path)
    drop = settings.ingest.drop_dir
    drop.mkdir()
    header = ",".join(ORDER_HEADER).encode() + b"\n"
    bomb = drop / "purchases-1.csv.gz"
    bomb.write_bytes(gzip.compress(header + b"x" * 40_000_000, compresslevel=9))
    os.utime(bomb, (0, 0))
    tracemalloc.start()
    try:
        assert import_drop_folder(engine, settings, NOW).rejected == 1
        untouched = tracemalloc.get_traced_memory()[1]
        erased_shop(engine, tmp_path, settings)
        (drop / "rejected" / "purchases-1.csv.gz").rename(bomb)
        os.utime(bomb, (0, 0))
        tracemalloc.reset_peak()
        assert import_drop_folder(engine, settings, NOW).rejected == 1
        checked = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert untouched < 10_000_000 and checked < 40_000_000  # never the 40 MB it holds
    assert "could not check" in caplog.text  # past the bound: logged and left as it is


def test_item_urls_must_be_absolute_http_urls_or_the_file_is_refused(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """An item's url and image_url go into the e-mails' href/src and the offer API as they
    are: a ``javascript:`` (or relative, or ``data:``) one is a problem of its line, and
    nothing of the file is stored."""
    header = ["id", "title", "category", "price", "url", "image_url"]
    good = "https://shop.example.test/i/1"
    rows = [
        ["i1", "Mug", "kitchen", "3", good, "HTTP://img.example.test/1.png"],
        ["i2", "Cup", "kitchen", "3", "javascript:alert(1)", ""],
        ["i3", "Jug", "kitchen", "3", "", "data:image/png;base64,AAAA"],
        ["i4", "Pot", "kitchen", "3", "//evil.example.test/x", ""],
        ["i5", "Pan", "kitchen", "3", "/relative/page", ""],
        ["i6", "Lid", "kitchen", "3", "https:///no-host", ""],
        ["i7", "Bowl", "kitchen", "3", "https://shop.example.test/a b", ""],
    ]
    before = counts(engine)
    with pytest.raises(DataImportError) as caught:
        importer(engine).items(write_csv(tmp_path / "items.csv", header, rows))
    listed = [(p.line, p.column, p.value) for p in caught.value.problems]
    assert listed == [
        (3, "url", "javascript:alert(1)"),
        (4, "image_url", "data:image/png;base64,AAAA"),
        (5, "url", "//evil.example.test/x"),
        (6, "url", "/relative/page"),
        (7, "url", "https:///no-host"),
        (8, "url", "https://shop.example.test/a b"),
    ]
    assert "is not an absolute http(s) URL" in str(caught.value)
    assert counts(engine) == before
    importer(engine).items(write_csv(tmp_path / "ok.csv", header, rows[:1]))
    with engine.connect() as connection:
        assert connection.execute(sa.select(items.c.url, items.c.image_url)).one() == (
            good,
            "HTTP://img.example.test/1.png",
        )
