"""A customer that a version before ids were composed stored decomposed (``Jose`` +
U+0301) is the one a customers file names ``José``: the file's row updates that record, as
``PUT /v1/customers/Jos%C3%A9`` does (``registry.stored_id``). It made a second record
instead: the file's change of address and withdrawal of consent went to the new one, and
the old record kept its double opt-in and its old address, and was still mailed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from recocamp.data.ingest import Importer
from recocamp.domain import Purchase
from recocamp.errors import DataImportError
from recocamp.store import queries
from recocamp.store.schema import customers
from tests.conftest import NOW, write_csv

COMPOSED, DECOMPOSED = "Jos\u00e9", "Jose\u0301"
BEFORE = datetime(2025, 1, 1, tzinfo=UTC)


def test_a_customers_row_updates_the_record_stored_decomposed(
    engine: sa.Engine, tmp_path: Path
) -> None:
    with engine.begin() as connection:
        old = {"consent_basis": "double_opt_in", "consent_at": BEFORE, "locale": "en"}
        for who, email in ((DECOMPOSED, "old@example.test"), ("Zoe\u0308", "zoe@example.test")):
            values = {"id": who, "email": email, "updated_at": BEFORE, **old}
            connection.execute(sa.insert(customers).values(**values))
        composed_zoe = {"id": "Zo\u00eb", "email": "zoe@example.test", "updated_at": BEFORE}
        connection.execute(sa.insert(customers).values(**composed_zoe, locale="en"))
    header = ["id", "email", "consent_basis"]
    rows = [
        [COMPOSED, "new@example.test", "none"],
        ["Ann", "ann@example.test", "none"],
        ["Zoe\u0308", "zoe2@example.test", "none"],  # both forms held
    ]
    path = write_csv(tmp_path / "customers.csv", header, rows)

    report = Importer(engine, zone=ZoneInfo("Europe/Berlin"), now=NOW).customers(path)
    assert report.imported == 3
    c = customers.c
    with engine.connect() as connection:
        found = connection.execute(sa.select(c.id, c.email, c.consent_basis).order_by(c.id)).all()
    assert sorted(found) == sorted(
        [
            ("Ann", "ann@example.test", "none"),
            (DECOMPOSED, "new@example.test", "none"),  # one record of José, updated
            ("Zoe\u0308", "zoe@example.test", "double_opt_in"),
            ("Zo\u00eb", "zoe2@example.test", "none"),  # the composed one, where both are
        ]
    )


def test_an_order_stored_under_the_decomposed_id_is_a_repeat_under_the_composed_one(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """An order an older version stored under ``Jose`` + U+0301, in a later export that
    holds it again (the file's id composed on read), is the same order of the same
    customer: a repeat. It was refused as "stored under another customer", and so was every
    later file holding it; the purchase API compared the same way."""
    at = datetime(2025, 5, 1, tzinfo=UTC)
    with engine.begin() as connection:
        lines = [Purchase("o1", 1, DECOMPOSED, "i1", 1, 2.5, at)]
        queries.insert_purchases(connection, lines, None)
        assert queries.customer_conflicts(connection, {"o1": COMPOSED}) == []
        assert queries.customer_conflicts(connection, {"o1": "Jose"}) == ["o1"]
    header = ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"]
    rows = [
        ["o1", DECOMPOSED, "i1", "1", "2.5", "2025-05-01T00:00:00Z"],
        ["o2", COMPOSED, "i1", "2", "2.5", "2025-06-01T00:00:00Z"],
    ]
    path = write_csv(tmp_path / "purchases.csv", header, rows)
    report = Importer(engine, zone=ZoneInfo("Europe/Berlin"), now=NOW).purchases(path)
    assert (report.imported, report.duplicates) == (1, 1)
    other = write_csv(tmp_path / "other.csv", header, [[*rows[0][:1], "Jose", *rows[0][2:]]])
    with pytest.raises(DataImportError, match="already stored under another customer"):
        Importer(engine, zone=ZoneInfo("Europe/Berlin"), now=NOW).purchases(other)
