"""A customer that a version before ids were composed stored decomposed (``Jose`` +
U+0301) is the one a customers file names ``José``: the file's row updates that record, as
``PUT /v1/customers/Jos%C3%A9`` does (``registry.stored_id``). It made a second record
instead: the file's change of address and withdrawal of consent went to the new one, and
the old record kept its double opt-in and its old address, and was still mailed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from recocamp.data.ingest import Importer
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
