"""An erased customer's audit entries are told apart from a real customer's by their subject
type, not by an ``erased-`` prefix of the id: customer ids are the shop's, and ``erased-1``
may be one, which the purge of stand-ins' entries took, and whose export showed an erasure's
entries as theirs. Migration 0024 gives the entries stored before the new type where they can
only be a stand-in's."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from alembic import command
from pydantic import SecretStr

from recocamp import privacy
from recocamp.data.ingest import Importer
from recocamp.settings import Settings
from recocamp.store import privacy as store
from recocamp.store.engine import alembic_config, make_engine, upgrade
from recocamp.store.queries import audit
from recocamp.store.schema import audit_log, customers, erasures
from tests.conftest import NOW

SETTINGS = Settings(signing_key=SecretStr("k" * 32))


def entries(engine: sa.Engine) -> list[tuple[str, str, str]]:
    a = audit_log.c
    query = sa.select(a.subject_type, a.subject_id, a.action).order_by(a.id)
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(query)]


def test_a_customer_whose_id_reads_like_a_stand_in_keeps_their_audit_entries(
    engine: sa.Engine, tmp_path: Path
) -> None:
    people = tmp_path / "people.csv"
    people.write_text("id,email\nc2,otto@example.test\nerased-1,erin@example.test\n")
    key = SETTINGS.signing_key_bytes()
    Importer(engine, zone=ZoneInfo("UTC"), now=NOW, erasure_key=key).customers(people)
    old = NOW - timedelta(days=2000)  # past erased_audit_days (1,095)
    with engine.begin() as connection:
        for subject in ("c2", "erased-1"):
            audit(
                connection,
                at=old,
                actor="api:shop",
                action="unsubscribe",
                subject_type="customer",
                subject_id=subject,
                details={"campaign": "winback"},
            )
    assert privacy.erase(engine, SETTINGS, "c2", NOW, via="test") is not None  # erasure 1

    with engine.connect() as connection:
        own = store.audit_entries(connection, ["erased-1"])
    assert [(e["subject_id"], e["details"]) for e in own] == [
        ("erased-1", {"campaign": "winback"})
    ]  # c2's entry, under the stand-in erased-1, is not theirs
    kept = ("customer", "erased-1", "unsubscribe")
    assert ("erased_customer", "erased-1", "unsubscribe") in entries(engine)

    report = privacy.purge(engine, SETTINGS, NOW)
    assert report.erased_audit_entries == 1  # c2's, as the stand-in
    assert kept in entries(engine)
    assert ("erased_customer", "erased-1", "unsubscribe") not in entries(engine)


def test_migration_0024_types_only_entries_that_can_only_be_a_stand_ins(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine, "0023")
    with engine.begin() as connection:
        connection.execute(
            sa.insert(erasures),
            [{"id": n, "erased_at": NOW, "via": "test", "rows": {}} for n in (1, 3)],
        )
        connection.execute(
            sa.insert(customers).values(id="erased-3", email="e3@example.test", updated_at=NOW)
        )
        connection.execute(
            sa.insert(audit_log),
            [
                {
                    "at": NOW,
                    "actor": "x",
                    "action": action,
                    "subject_type": "customer",
                    "subject_id": subject,
                    "details": details,
                }
                for subject, action, details in (
                    ("erased-1", "unsubscribe", {}),  # erasure 1's stand-in
                    ("erased-1", "customer_changed", {"fields": ["email"]}),  # details: real
                    ("erased-2", "unsubscribe", {}),  # no erasure 2: a real customer's
                    ("erased-3", "unsubscribe", {}),  # a customer holds the id
                    ("c1", "unsubscribe", {}),
                )
            ],
        )
    assert upgrade(engine) == "0024"
    assert entries(engine) == [
        ("erased_customer", "erased-1", "unsubscribe"),
        ("customer", "erased-1", "customer_changed"),
        ("customer", "erased-2", "unsubscribe"),
        ("customer", "erased-3", "unsubscribe"),
        ("customer", "c1", "unsubscribe"),
    ]
    command.downgrade(alembic_config(engine), "0023")
    assert {subject_type for subject_type, _, _ in entries(engine)} == {"customer"}
    engine.dispose()
