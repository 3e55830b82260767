"""An opt-out from an address held by several customers (a family's shared one): the
suppression stops the mail of all of them, so all of them are marked unsubscribed, each
audited; nobody erased, already unsubscribed or holding another address is touched. A
later re-subscription of one of them lifts the suppression again. Real SQLite and
PostgreSQL, fixed times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from recocamp.domain import ConsentBasis, Customer, email_hash
from recocamp.store import contacts, profiles, queries
from recocamp.store.schema import audit_log, customers, suppressions

NOW = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
EARLIER = NOW - timedelta(days=30)
SHARED = "family.mueller@example.test"


def _shop(engine: sa.Engine) -> None:
    people = [
        Customer("ann", SHARED),
        Customer("bob", "Family.Mueller@EXAMPLE.test"),  # the same address in other letters
        Customer("cid", "cid@example.test"),
        Customer("dan", SHARED),
        Customer("eve", SHARED),
    ]
    with engine.begin() as connection:
        queries.upsert_customers(connection, people, EARLIER)
        for person, column in (("dan", "unsubscribed_at"), ("eve", "erased_at")):
            connection.execute(
                sa.update(customers).where(customers.c.id == person).values({column: EARLIER})
            )


def _unsubscribed(engine: sa.Engine) -> dict[str, datetime | None]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(customers.c.id, customers.c.unsubscribed_at))
        return {row.id: row.unsubscribed_at for row in rows}


def test_an_unsubscribe_marks_everyone_holding_the_address(engine: sa.Engine) -> None:
    _shop(engine)
    with engine.begin() as connection:
        assert contacts.record_link_unsubscribe(connection, "ann", "winback", EARLIER, NOW)
    assert _unsubscribed(engine) == {
        "ann": NOW,
        "bob": NOW,
        "cid": None,
        "dan": EARLIER,  # already unsubscribed: kept as it was
        "eve": None,
    }
    with engine.connect() as connection:
        audited = connection.execute(
            sa.select(audit_log.c.subject_id, audit_log.c.actor)
            .where(audit_log.c.action == "unsubscribe")
            .order_by(audit_log.c.subject_id)
        ).all()
        suppressed = connection.execute(sa.select(suppressions.c.email_hash)).scalars().all()
    assert [tuple(row) for row in audited] == [
        ("ann", "link winback"),
        ("bob", "link winback (shared address)"),
    ]
    assert suppressed == [email_hash(SHARED)]


def test_a_provider_complaint_marks_them_too_and_a_new_consent_lifts_it(
    engine: sa.Engine,
) -> None:
    _shop(engine)
    with engine.begin() as connection:
        assert contacts.unsubscribe(connection, "bob", NOW, "postmark complained")
    assert {k for k, v in _unsubscribed(engine).items() if v == NOW} == {"ann", "bob"}
    later = NOW + timedelta(days=2)
    with engine.begin() as connection:  # ann opts in again (a consent after the opt-out)
        queries.upsert_customers(
            connection,
            [Customer("ann", SHARED, consent_basis=ConsentBasis.DOUBLE_OPT_IN, consent_at=later)],
            later,
        )
        profiles.resubscribe(connection, "ann", SHARED, later)
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(suppressions)).scalar() == 0
        )
    assert _unsubscribed(engine)["ann"] is None
    assert _unsubscribed(engine)["bob"] == NOW  # bob's own opt-out stands


def test_the_holders_are_found_through_the_address_index(engine: sa.Engine) -> None:
    """One opt-out per provider report: asking every customer's address would read the
    whole table each time."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as connection:
        plan = connection.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT id FROM customers WHERE lower(email) IN ('a@x.test')"
        ).all()
    assert any("ix_customers_email_lower" in str(row) for row in plan), plan
