"""Migration 0023 recomposes every stored customer and item id (Unicode NFC, ``domain.composed``).

A version before ids were composed stored some records decomposed (``Jose`` + U+0301); lines
of the same person arriving since (files, events) are stored composed, so one customer held
rows under two byte strings. Reads that merge the forms exist for a few readers (forecasts,
cohorts, the preferences page), but everything that finds a customer by the exact id — the
campaign planner's histories, caps, decisions, consent — saw two people. After the migration
every id is stored composed, rows held under both forms merged into one."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from recocamp import tokens
from recocamp.campaigns.files import Campaign
from recocamp.campaigns.run import plan_and_enqueue
from recocamp.domain import ConsentBasis, Customer, Item, Purchase, order_digest
from recocamp.privacy import erase
from recocamp.settings import Settings
from recocamp.store import engagement, tombstones
from recocamp.store.engine import alembic_config, current_revision, make_engine, upgrade
from recocamp.store.queries import audit, insert_purchases, upsert_customers, upsert_items
from recocamp.store.schema import (
    audit_log,
    contact_events,
    customers,
    decisions,
    engagement_events,
    feedback,
    forecast_checkpoints,
    forecasts,
    items,
    models,
    offer_lists,
    orders,
    outbox,
    purchase_totals,
    purchases,
    recommendations,
)
from tests.api_shop import NOW as SHOP_NOW
from tests.api_shop import SIGNING_KEY, call, make_app
from tests.conftest import NOW, ROOT
from tests.store.test_engine import schema_differences

SETTINGS = Settings(signing_key="f" * 32)
NFD = "Jose\u0301"  # as an older version stored the record
NFC = "Jos\u00e9"  # as a file or an event names the same person today
RENEE_MIXED = "Ren\u00e9e\u0301"  # neither form: one accent composed, one not
RENEE_NFC = "Ren\u00e9\u00e9"
TEA_NFD = "The\u0301"
TEA_NFC = "Th\u00e9"


def winback() -> Campaign:
    """Whoever last ordered 30 to 1000 days ago."""
    return Campaign(
        name="winback",
        legal_basis=["double_opt_in"],
        holdout_percent=0,
        schedule={"cron": "0 11 * * *"},
        audience={"lapsed_days": [30, 1000]},
        offer={"mode": "replenish", "items": 1},
        template={"subject": {"en": "Hi"}, "html": "replenish.html", "text": "replenish.txt"},
    )


def shopper_at_0022(
    db_url: str, customer_id: str, first_name: str, email: str, *lines: Purchase
) -> sa.Engine:
    """A store at 0022 holding one opted-in customer (under ``customer_id`` as an older
    version stored it), the tea item and ``lines``."""
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    person = Customer(
        customer_id,
        email,
        first_name,
        "en",
        "Europe/Madrid",
        consent_basis=ConsentBasis.DOUBLE_OPT_IN,
        consent_at=NOW - timedelta(days=400),
    )
    with engine.begin() as connection:
        upsert_customers(connection, [person], NOW - timedelta(days=300))
        upsert_items(connection, [Item("i1", "Tea", "kitchen", 9.5)], NOW - timedelta(days=300))
        insert_purchases(connection, list(lines), None)
    return engine


def test_a_winback_skips_a_customer_whose_recent_order_is_stored_composed(db_url: str) -> None:
    """José's record and his order of 200 days ago were stored decomposed by an older
    version; his order of 3 days ago came in a file, composed. He is no lapsed customer: the
    winback mailed him, as his history read by the record's id held the old order alone."""
    engine = shopper_at_0022(
        db_url,
        NFD,
        "José",
        "jose@example.test",
        Purchase("o1", 1, NFD, "i1", 1, 9.5, NOW - timedelta(days=200)),
        Purchase("o2", 1, NFC, "i1", 1, 9.5, NOW - timedelta(days=3)),
    )
    upgrade(engine)
    plan_and_enqueue(engine, SETTINGS, winback(), ROOT / "templates", NOW)
    with engine.connect() as connection:
        found = connection.execute(sa.select(decisions.c.customer_id, decisions.c.reason)).all()
    assert [tuple(row) for row in found] == [(NFC, "not_in_audience:lapsed_days")]
    engine.dispose()


ZOE_NFD = "Zoe\u0308"
ZOE_NFC = "Zo\u00eb"
OLD = NOW - timedelta(days=300)
NEW = NOW - timedelta(days=3)


def put(connection: sa.Connection, table: sa.Table, *rows: dict[str, Any]) -> None:
    for row in rows:  # one by one: the rows set different columns
        connection.execute(sa.insert(table).values(row))


def person(customer_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": customer_id, "updated_at": OLD} | fields


def both_forms(engine: sa.Engine) -> None:
    """A store of 0022 holding each table's rows under both forms (or the old one alone)."""
    with engine.begin() as connection:
        put(
            connection,
            customers,
            # the record an older version stored, and the bare one an orders file made since
            person(
                NFD,
                email="jose@example.test",
                first_name="José",
                time_zone="Europe/Madrid",
                consent_basis="double_opt_in",
                consent_at=OLD,
                consent_source="signup",
            ),
            person(NFC, country="Spain", updated_at=NEW),
            # two full records: the strictest state of both
            person(
                ZOE_NFD,
                email="zoe@example.test",
                consent_basis="existing_customer",
                consent_at=OLD,
                objected_to_profiling=True,
                unsubscribed_at=OLD,
                channel_email=False,
            ),
            person(
                ZOE_NFC,
                email="zoe@new.example.test",
                consent_basis="double_opt_in",
                consent_at=NEW,
                updated_at=NEW,
                locale="de",
            ),
            person("ascii"),
        )
        put(
            connection,
            items,
            {"id": TEA_NFD, "title": "Old tea", "category": "tea", "price": 2, "updated_at": OLD},
            {"id": TEA_NFC, "title": "Tea", "category": "tea", "price": 3, "updated_at": NEW},
            {"id": "Cr\u00e8me", "title": "x", "category": "x", "price": 1, "updated_at": OLD},
        )
        insert_purchases(
            connection,
            [
                Purchase("o1", 1, NFD, TEA_NFD, 1, 2.0, OLD),
                Purchase("o1", 2, NFD, "i1", 1, 1.0, OLD),
                Purchase("o2", 1, NFC, TEA_NFC, 2, 3.0, NEW),
                Purchase("o3", 1, None, TEA_NFD, 1, 2.0, OLD),
            ],
            None,
        )
        decided = {"campaign": "winback", "holdout": False, "decided_at": NEW}
        put(
            connection,
            decisions,
            decided
            | {"run_key": "winback/1", "customer_id": NFD, "outcome": "skip", "reason": "cooldown"},
            decided
            | {"run_key": "winback/1", "customer_id": NFC, "outcome": "send", "reason": "eligible"},
            decided
            | {
                "run_key": "winback/0",
                "customer_id": NFD,
                "outcome": "holdout",
                "reason": "holdout",
                "holdout": True,
            },
        )
        put(
            connection,
            outbox,
            {
                "send_key": f"winback/{NFD}/0",
                "campaign": "winback",
                "customer_id": NFD,
                "recipient": "jose@example.test",
                "subject": "Hi",
                "body": b"x",
                "state": "sent",
                "not_before": OLD,
                "created_at": OLD,
                "updated_at": OLD,
            },
        )
        put(
            connection,
            contact_events,
            {
                "event_key": "e1",
                "kind": "opened",
                "customer_id": NFD,
                "provider": "fake",
                "at": OLD,
                "details": {},
            },
        )
        answer = {"survey": "nps/2025-12-01", "campaign": "nps"}
        put(
            connection,
            feedback,
            answer | {"customer_id": NFD, "score": 9, "answered_at": OLD},
            answer | {"customer_id": NFC, "score": 2, "answered_at": NEW},
        )
        forecast = {
            "version": "f1",
            "p_active": 0.5,
            "churn_risk": "low",
            "expected_revenue": 1.0,
            "lifetime_value": 2.0,
        }
        put(
            connection,
            forecasts,
            forecast | {"customer_id": NFD, "expected_purchase_days": 1.0},
            forecast | {"customer_id": NFC, "expected_purchase_days": 2.0},
        )
        put(
            connection,
            forecast_checkpoints,
            {"version": "f1", "customer_id": NFD, "expected_purchase_days": 1.0},
        )
        put(
            connection,
            models,
            {
                "version": "m1",
                "name": "als",
                "trained_at": OLD,
                "data_cutoff": OLD,
                "fingerprint": "x",
                "params": {},
                "metrics": {},
                "path": "m1",
                "status": "retired",
                "popular": [[TEA_NFD, 2.0], [TEA_NFC, 1.0], ["i1", 0.5]],
            },
        )
        put(
            connection,
            recommendations,
            {"customer_id": NFD, "model_version": "m1", "items": [[TEA_NFD, 1.0]]},
            {"customer_id": "ascii", "model_version": "m1", "items": [["Cr\u00e8me", 1.0]]},
        )
        put(
            connection,
            engagement_events,
            {
                "kind": "review",
                "event_id": "r1",
                "customer_id": NFD,
                "occurred_at": OLD,
                "recorded_at": OLD,
            },
        )
        listed = {
            "model_version": "m1",
            "shaped_by": "4",
            "lines": 1,
            "id_sum": 1,
            "last_id": 1,
            "computed_at": NEW,
        }
        put(
            connection,
            offer_lists,
            listed | {"customer_id": NFD, "items": "[]"},
            listed | {"customer_id": "ascii", "items": '[["i1", 1.0]]'},
            listed | {"customer_id": "other", "items": json.dumps([[TEA_NFD, 1.0]])},
        )


def everything(connection: sa.Connection, table: sa.Table, *order: str) -> list[dict[str, Any]]:
    rows = connection.execute(sa.select(table).order_by(*(table.c[c] for c in order)))
    return [dict(row._mapping) for row in rows]


def test_the_migration_recomposes_and_merges_every_table(db_url: str) -> None:
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    both_forms(engine)
    upgrade(engine)
    with engine.connect() as connection:
        people = {row["id"]: row for row in everything(connection, customers, "id")}
        assert set(people) == {NFC, ZOE_NFC, "ascii"}
        jose, zoe = people[NFC], people[ZOE_NFC]
        assert (jose["email"], jose["first_name"], jose["country"], jose["time_zone"]) == (
            "jose@example.test",
            "José",
            "Spain",
            "Europe/Madrid",
        )
        assert (jose["consent_basis"], jose["consent_at"], jose["consent_source"]) == (
            "double_opt_in",
            OLD,
            "signup",
        )
        assert jose["updated_at"] == NEW and jose["channel_email"] is True
        assert (zoe["email"], zoe["locale"], zoe["consent_basis"], zoe["consent_at"]) == (
            "zoe@new.example.test",
            "de",
            "existing_customer",
            OLD,
        )
        assert zoe["objected_to_profiling"] is True and zoe["unsubscribed_at"] == OLD
        assert zoe["channel_email"] is False
        goods = everything(connection, items, "id")
        assert [(i["id"], i["title"]) for i in goods] == [("Cr\u00e8me", "x"), (TEA_NFC, "Tea")]
        lines = everything(connection, purchases, "order_id", "line_no")
        assert [(p["order_id"], p["customer_id"], p["item_id"]) for p in lines] == [
            ("o1", NFC, TEA_NFC),
            ("o1", NFC, "i1"),
            ("o2", NFC, TEA_NFC),
            ("o3", None, TEA_NFC),
        ]
        again = {  # what a file holding the orders (read composed) digests: a repeat
            "o1": order_digest(
                [
                    Purchase("o1", 1, NFC, TEA_NFC, 1, 2.0, OLD),
                    Purchase("o1", 2, NFC, "i1", 1, 1.0, OLD),
                ]
            ),
            "o2": order_digest([Purchase("o2", 1, NFC, TEA_NFC, 2, 3.0, NEW)]),
            "o3": order_digest([Purchase("o3", 1, None, TEA_NFC, 1, 2.0, OLD)]),
        }
        assert {
            o["order_id"]: o["content_sha256"] for o in everything(connection, orders, "order_id")
        } == again
        totals = everything(connection, purchase_totals, "customer_id")
        assert [(t["customer_id"], t["lines"]) for t in totals] == [(NFC, 3)]
        made = everything(connection, decisions, "run_key")
        assert [(d["run_key"], d["customer_id"], d["outcome"]) for d in made] == [
            ("winback/0", NFC, "holdout"),
            ("winback/1", NFC, "send"),
        ]
        mailed = everything(connection, outbox, "id")
        assert [(m["customer_id"], m["send_key"]) for m in mailed] == [(NFC, f"winback/{NFD}/0")]
        assert [e["customer_id"] for e in everything(connection, contact_events, "id")] == [NFC]
        answers = everything(connection, feedback, "id")
        assert [(a["customer_id"], a["score"]) for a in answers] == [(NFC, 9)]
        predicted = everything(connection, forecasts, "customer_id")
        assert [(f["customer_id"], f["expected_purchase_days"]) for f in predicted] == [(NFC, 2.0)]
        kept = everything(connection, forecast_checkpoints, "customer_id")
        assert [k["customer_id"] for k in kept] == [NFC]
        assert everything(connection, models, "version")[0]["popular"] == [
            [TEA_NFC, 2.0],
            ["i1", 0.5],
        ]
        cached = everything(connection, recommendations, "customer_id")
        assert sorted((r["customer_id"], r["items"]) for r in cached) == [
            (NFC, [[TEA_NFC, 1.0]]),
            ("ascii", [["Cr\u00e8me", 1.0]]),
        ]
        assert [e["customer_id"] for e in everything(connection, engagement_events, "kind")] == [
            NFC
        ]
        assert [o["customer_id"] for o in everything(connection, offer_lists, "customer_id")] == [
            "ascii"
        ]
        assert schema_differences(connection) == []
    command.downgrade(alembic_config(engine), "0022")  # nothing undone, nothing lost
    assert current_revision(engine) == "0022"
    with engine.connect() as connection:
        assert {row["id"] for row in everything(connection, customers, "id")} == {
            NFC,
            ZOE_NFC,
            "ascii",
        }
    engine.dispose()


def test_a_customer_erased_under_the_old_form_stays_erased(db_url: str) -> None:
    """Tombstones hold the keyed hash of the id as it was erased (here decomposed); the
    migration cannot hash again without the key, and needs not: every check hashes every
    form of the id it is asked about."""
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    key = b"k" * 32
    with engine.begin() as connection:
        tombstones.record(connection, key, NFD, "jose@example.test", OLD)
    upgrade(engine)
    with engine.begin() as connection:
        assert tombstones.matches(connection, key, NFC, None, "a test")
        assert tombstones.erased_ids(connection, key, [NFC, "other"], "a test") == {NFC}
        assert tombstones.void_link(connection, key, NFC, OLD)
    engine.dispose()


@pytest.mark.parametrize(
    ("stored", "name", "email", "now_composed"),
    [
        # an e-mail enqueued under the decomposed id: the resumed run, deciding for the
        # composed id, looked under the composed send key, found none, mailed again
        (NFD, "José", "jose@example.test", NFC),
        # Renée's id as a file gave it, one accent composed and one not (neither NFC nor
        # NFD): looked for under the key's composed and decomposed forms alone
        (RENEE_MIXED, "Renée", "renee@example.test", RENEE_NFC),
    ],
)
def test_a_run_resumed_across_the_migration_mails_nobody_twice(
    db_url: str, stored: str, name: str, email: str, now_composed: str
) -> None:
    """A winback run enqueued the customer's e-mail under the id as an older version stored
    it, the deploy that migrated the store interrupted it, and the worker resumed it with the
    same instant: the run decided the customer again, composed, and must find the e-mail
    queued. The send keys the provider knows the e-mails by stay as they are."""
    engine = shopper_at_0022(
        db_url,
        stored,
        name,
        email,
        Purchase("o1", 1, stored, "i1", 1, 9.5, NOW - timedelta(days=200)),
    )
    first = plan_and_enqueue(engine, SETTINGS, winback(), ROOT / "templates", NOW)
    assert first.enqueued == 1
    upgrade(engine)
    plan_and_enqueue(engine, SETTINGS, winback(), ROOT / "templates", NOW)  # the resume
    with engine.connect() as connection:
        mailed = connection.execute(sa.select(outbox.c.customer_id, outbox.c.send_key)).all()
    assert [tuple(row) for row in mailed] == [
        (now_composed, f"winback/{stored}/{first.run_key.rpartition('/')[2]}")
    ]
    engine.dispose()


def test_an_unsubscribe_link_signed_for_the_decomposed_id_unsubscribes_after_the_migration(
    db_url: str, tmp_path: Path
) -> None:
    """E-mails sent before the migration carry links signed for the id as then stored
    (``Jose`` + U+0301); the record is composed since. The link named nobody the store held:
    the unsubscribe answered "unknown" and José stayed subscribed, though an unsubscribe is
    owed at any time, from any e-mail's link (UWG §7(3) no. 4, Art. 21 GDPR)."""
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    with engine.begin() as connection:
        upsert_customers(connection, [Customer(NFD, "jose@example.test")], SHOP_NOW)
    link = tokens.sign(SIGNING_KEY.encode(), NFD, "winback", "unsubscribe", SHOP_NOW)
    upgrade(engine)
    app = make_app(engine, tmp_path)
    reply = call(app, "POST", f"/u/{link}", data={"List-Unsubscribe": "One-Click"})
    with engine.connect() as connection:
        found = connection.execute(sa.select(customers.c.id, customers.c.unsubscribed_at)).all()
    assert reply.status == 200 and [tuple(row) for row in found] == [(NFC, SHOP_NOW)]
    engine.dispose()


ORDER_NFD = "Ve\u0301nte-1"
ORDER_NFC = "V\u00e9nte-1"


def test_an_order_stored_under_the_decomposed_order_id_is_one_order(db_url: str) -> None:
    """Order ids are read composed too (``sources.csv.ident``). An order an older version
    stored under ``Ve`` + U+0301 ``nte-1``, delivered again by a file since the ids were
    composed, was taken for a new order: its lines stored twice (the revenue, the orders
    and the purchase days of its customer doubled). After the migration the order is
    stored composed, the file's delivery is a repeat; an order already stored under both
    forms keeps the copy stored first (as the importer keeps the first delivery)."""
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    with engine.begin() as connection:
        insert_purchases(
            connection,
            [
                Purchase(ORDER_NFD, 1, "c1", "i1", 1, 9.5, OLD),
                Purchase(ORDER_NFD, 2, "c1", "i2", 2, 1.5, OLD),
                Purchase("Ce\u0301-2", 1, "c2", "i1", 1, 9.5, OLD),
                Purchase("C\u00e9-2", 1, "c2", "i1", 1, 9.5, OLD),  # the second delivery
            ],
            None,
        )
    with engine.connect() as connection:
        before = {
            (p["order_id"], p["line_no"]): p["id"] for p in everything(connection, purchases, "id")
        }
    upgrade(engine)
    with engine.begin() as connection:
        again = insert_purchases(
            connection,
            [
                Purchase(ORDER_NFC, 1, "c1", "i1", 1, 9.5, OLD),
                Purchase(ORDER_NFC, 2, "c1", "i2", 2, 1.5, OLD),
            ],
            None,
        )
    assert again == 0
    with engine.connect() as connection:
        lines = everything(connection, purchases, "id")
        stored = everything(connection, orders, "order_id")
        totals = everything(connection, purchase_totals, "customer_id")
    assert sorted((p["order_id"], p["line_no"], p["item_id"]) for p in lines) == [
        ("C\u00e9-2", 1, "i1"),
        (ORDER_NFC, 1, "i1"),
        (ORDER_NFC, 2, "i2"),
    ]
    kept = {(p["order_id"], p["line_no"]): p["id"] for p in lines}
    assert kept[("C\u00e9-2", 1)] == before[("Ce\u0301-2", 1)]  # the copy stored first
    assert kept[(ORDER_NFC, 2)] == before[(ORDER_NFD, 2)]
    assert sorted(o["order_id"] for o in stored) == ["C\u00e9-2", ORDER_NFC]
    assert sorted((t["customer_id"], t["lines"]) for t in totals) == [("c1", 2), ("c2", 1)]
    engine.dispose()


LONG_FORM = "\u0958" * 40  # 40 characters stored; composed (NFC keeps it decomposed): 80


def test_an_id_whose_composed_form_outgrows_its_column_is_left_as_stored(db_url: str) -> None:
    """U+0958 is a composition exclusion: NFC writes it as two characters. An id an older
    version stored as 40 of them (within 64) is 80 composed, past the String(64) columns:
    PostgreSQL refused the update and the whole upgrade failed, the store stuck at 0022 with
    no way past it. Such an id cannot be stored composed (the import refuses it now as too
    long), so it stays as stored, and the other ids are composed."""
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    with engine.begin() as connection:
        put(connection, customers, person(LONG_FORM), person(NFD))
        insert_purchases(
            connection,
            [Purchase(LONG_FORM, 1, LONG_FORM, LONG_FORM, 1, 1.0, OLD)],
            None,
        )
        put(
            connection,
            items,
            {"id": LONG_FORM, "title": "x", "category": "x", "price": 1, "updated_at": OLD},
        )
    upgrade(engine)
    with engine.connect() as connection:
        people = [c["id"] for c in everything(connection, customers, "id")]
        lines = everything(connection, purchases, "id")
        goods = [i["id"] for i in everything(connection, items, "id")]
    assert sorted(people) == sorted([LONG_FORM, NFC])
    assert [(p["order_id"], p["customer_id"], p["item_id"]) for p in lines] == [
        (LONG_FORM, LONG_FORM, LONG_FORM)
    ]
    assert goods == [LONG_FORM]
    engine.dispose()


def mail(customer_id: str, state: str, **fields: Any) -> dict[str, Any]:
    return {
        "send_key": f"winback/{customer_id}/7",
        "campaign": "winback",
        "customer_id": customer_id,
        "recipient": "zoe@example.test",
        "subject": "Hi",
        "body": b"x",
        "state": state,
        "not_before": OLD,
        "created_at": OLD,
        "updated_at": OLD,
    } | fields


def test_one_mailing_queued_under_two_forms_of_an_id_goes_out_once(db_url: str) -> None:
    """Zoë held two records (decomposed, composed) and the winback of one period queued an
    e-mail for each: after the records were merged into one, both stayed queued under their
    two send keys and the same person got the same mailing twice, though her decisions of
    the run were merged into one. Of the e-mails of one send key once composed, one stays:
    one the provider has (sent or on), else the first queued; the other queued ones are
    cancelled. A third form, and one already sent elsewhere, are covered too."""
    third = "Zoe\u0308\u00eb"  # neither NFC nor NFD: composed, "Zoëë"
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    with engine.begin() as connection:
        put(
            connection,
            outbox,
            mail(ZOE_NFD, "queued"),
            mail(ZOE_NFC, "queued"),
            mail(NFC, "queued"),
            mail(NFD, "sent", sent_at=OLD),
            mail("Zo\u00eb\u00eb", "queued", send_key="winback/Zo\u00eb\u00eb/8"),
            mail(third, "queued", send_key=f"winback/{third}/8"),
        )
    upgrade(engine)
    with engine.connect() as connection:
        mailed = everything(connection, outbox, "id")
    assert [(m["customer_id"], m["state"]) for m in mailed] == [
        (ZOE_NFC, "queued"),
        (ZOE_NFC, "cancelled"),
        (NFC, "cancelled"),
        (NFC, "sent"),
        ("Zo\u00eb\u00eb", "queued"),
        ("Zo\u00eb\u00eb", "cancelled"),
    ]
    engine.dispose()


def test_erasure_after_the_migration_reaches_audit_entries_of_a_third_form(db_url: str) -> None:
    """The audit log kept each entry under the id then held; the erasure matches the
    composed and decomposed forms of the erased id only. An entry of Renée's stored under
    her id as an older version held it (one accent composed, one not) kept her id and its
    details after she was erased: no form the erasure knew named it, and the purge of
    erased customers' entries never took it (subject type customer)."""
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    with engine.begin() as connection:
        put(connection, customers, person(RENEE_MIXED, email="renee@example.test"))
        audit(
            connection,
            at=OLD,
            actor="api:shop",
            action="consent",
            subject_type="customer",
            subject_id=RENEE_MIXED,
            details={"basis": "double_opt_in"},
        )
    upgrade(engine)
    assert erase(engine, SETTINGS, RENEE_NFC, NOW, via="test") is not None
    with engine.connect() as connection:
        found = connection.execute(
            sa.select(audit_log.c.subject_type, audit_log.c.subject_id, audit_log.c.details)
        ).all()
    assert [tuple(row) for row in found if row.subject_type == "customer"] == []
    engine.dispose()


def test_an_upgrade_that_fails_leaves_the_store_at_0022_untouched(tmp_path: Path) -> None:
    """The migrations run in one transaction: one failing after 0023 rewrote the ids (here
    the stamp of 0024, after 0023 and 0024 ran, refused by a trigger) leaves every row as it was."""
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    upgrade(engine, "0022")
    both_forms(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql(
            "CREATE TRIGGER refuse BEFORE UPDATE ON alembic_version "
            "WHEN NEW.version_num = '0024' BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        before = {t.name: everything(connection, t, *t.primary_key.columns.keys()) for t in KEPT}
    try:
        upgrade(engine)
    except sa.exc.DatabaseError as error:
        assert "refused" in str(error)
    else:
        raise AssertionError("the upgrade went through")
    assert current_revision(engine) == "0022"
    with engine.connect() as connection:
        after = {t.name: everything(connection, t, *t.primary_key.columns.keys()) for t in KEPT}
    assert after == before
    engine.dispose()


KEPT = (customers, items, purchases, orders, decisions, outbox, feedback, forecasts, models)


def test_an_order_whose_lines_were_stored_under_two_forms_keeps_every_line(db_url: str) -> None:
    """One file of an older version named order ``Vénte-1`` decomposed on its first line and
    composed on its second (two systems' exports pasted together): the importer took two
    orders, one line each. The migration kept the copy stored first and deleted the other
    copy's lines, though their line numbers were not the first copy's: line 2, a real
    purchase, was gone. Lines a kept copy lacks join it; those it holds go (a repeat)."""
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    with engine.begin() as connection:
        insert_purchases(
            connection,
            [
                Purchase(ORDER_NFD, 1, "c1", "i1", 1, 9.5, OLD),
                Purchase(ORDER_NFC, 2, "c1", "i2", 2, 1.5, OLD),
            ],
            None,
        )
    upgrade(engine)
    with engine.begin() as connection:
        lines = everything(connection, purchases, "order_id", "line_no")
        stored = everything(connection, orders, "order_id")
        totals = everything(connection, purchase_totals, "customer_id")
    assert [(p["order_id"], p["line_no"], p["item_id"]) for p in lines] == [
        (ORDER_NFC, 1, "i1"),
        (ORDER_NFC, 2, "i2"),
    ]
    whole = [
        Purchase(ORDER_NFC, 1, "c1", "i1", 1, 9.5, OLD),
        Purchase(ORDER_NFC, 2, "c1", "i2", 2, 1.5, OLD),
    ]
    assert [(o["order_id"], o["content_sha256"]) for o in stored] == [
        (ORDER_NFC, order_digest(whole))
    ]
    assert [(t["customer_id"], t["lines"]) for t in totals] == [("c1", 2)]
    engine.dispose()


def test_an_item_of_a_catalogue_and_one_of_sales_keep_the_catalogue_s_links(db_url: str) -> None:
    """An older version imported the catalogue's postage ``Envío`` decomposed, with its
    link, image and the service flag (never offered); a purchases file since made a bare
    record of it composed (``add_missing_items``: no link, not a service). The migration
    kept the newer bare record alone: the e-mails lost the item's link and image, and
    the postage became an item offered. The newest values stay, gaps are filled from the
    other, and a service is one when either record says so."""
    shipping_nfd, shipping_nfc = "Envi\u0301o", "Env\u00edo"
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    with engine.begin() as connection:
        put(
            connection,
            items,
            {
                "id": shipping_nfd,
                "title": "Shipping",
                "category": "service",
                "price": 4,
                "url": "https://shop.example.test/envio",
                "image_url": "https://shop.example.test/envio.png",
                "is_service": True,
                "updated_at": OLD,
            },
            {"id": shipping_nfc, "title": "ENVIO", "category": "", "price": 4, "updated_at": NEW},
        )
    upgrade(engine)
    with engine.connect() as connection:
        found = everything(connection, items, "id")
    assert [
        (i["id"], i["title"], i["url"], i["image_url"], i["is_service"], i["updated_at"])
        for i in found
    ] == [
        (
            shipping_nfc,
            "ENVIO",
            "https://shop.example.test/envio",
            "https://shop.example.test/envio.png",
            True,
            NEW,
        )
    ]
    engine.dispose()


def test_a_review_stored_under_a_decomposed_id_is_a_repeat_when_posted_composed(
    db_url: str,
) -> None:
    """Review ids are read composed (``api.events.Id``). A review an older version stored
    under ``Re`` + U+0301 ``v-1``, posted again by the shop since (a retry), was stored a
    second time under the composed id: two reviews, the loyalty points for it twice. The
    migration composes the event ids too; a review held under two forms keeps the one
    recorded first."""
    review_nfd, review_nfc = "Re\u0301v-1", "R\u00e9v-1"
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    event = {"kind": "review", "customer_id": "c1", "occurred_at": OLD}
    with engine.begin() as connection:
        put(
            connection,
            engagement_events,
            event | {"event_id": review_nfd, "recorded_at": OLD},
            event | {"event_id": "Ve\u0301-2", "recorded_at": OLD},
            event | {"event_id": "V\u00e9-2", "recorded_at": NEW},
        )
    upgrade(engine)
    with engine.begin() as connection:
        again = engagement.record(connection, "review", review_nfc, "c1", OLD, NOW)
        found = everything(connection, engagement_events, "event_id")
    assert again is engagement.Recorded.REPEAT
    assert [(e["event_id"], e["recorded_at"]) for e in found] == [
        (review_nfc, OLD),
        ("V\u00e9-2", OLD),
    ]
    engine.dispose()


def test_a_record_with_an_address_and_no_consent_takes_the_double_opt_in_away(
    db_url: str,
) -> None:
    """A customers file's row with an address and no consent states one (none): merged with
    an older record's double opt-in, the person is not mailed. Only a bare record an orders
    file made (no address) leaves the other's consent as it is (José in the test above)."""
    engine = make_engine(db_url)
    upgrade(engine, "0022")
    with engine.begin() as connection:
        put(
            connection,
            customers,
            person(
                ZOE_NFD,
                email="zoe@example.test",
                consent_basis="double_opt_in",
                consent_at=OLD,
                consent_source="signup",
            ),
            person(ZOE_NFC, email="zoe@example.test", updated_at=NEW),
        )
    upgrade(engine)
    with engine.connect() as connection:
        [zoe] = everything(connection, customers, "id")
    assert (zoe["id"], zoe["consent_basis"], zoe["consent_at"]) == (ZOE_NFC, "none", None)
    engine.dispose()
