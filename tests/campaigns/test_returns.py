"""A campaign run on a real store leaves out what a customer returned in full: not due for
replenishment, not offered again (nor in any other mode), while an item returned in part
is still bought (net quantity per customer and item over their whole history)."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from recocamp.campaigns import planner, segments
from recocamp.campaigns.files import Campaign
from recocamp.campaigns.run import load_snapshot
from recocamp.domain import ConsentBasis, Customer, Item, Purchase
from recocamp.settings import Settings
from recocamp.store.queries import insert_purchases, upsert_customers, upsert_items
from tests import campaign_shop
from tests.conftest import NOW

SETTINGS = Settings(signing_key="f" * 32)
CUSTOMERS = ("kept", "returned", "part")
OPTED_IN = NOW - timedelta(days=400)


def shop(engine: sa.Engine) -> None:
    """Each customer bought tea (i1) 70 and 40 days ago (usual interval 30 days: due); the
    second returned both teas in an order of its own, the third one of three."""
    campaign_shop.tea_shop(engine, [])  # the tea
    people = [
        Customer(
            c,
            f"{c}@example.test",
            "Kim",
            "en",
            "Europe/London",
            consent_basis=ConsentBasis.DOUBLE_OPT_IN,
            consent_at=OPTED_IN,
        )
        for c in CUSTOMERS
    ]
    lines = []
    for n, customer in enumerate(CUSTOMERS):
        quantity = 3 if customer == "part" else 1
        for days in (70, 40):
            lines.append(Purchase(f"o{n}-{days}", 1, customer, "i1", quantity, 9.5, ago(days)))
    lines.append(Purchase("C1", 1, "returned", "i1", -2, 9.5, ago(35), is_return=True))
    lines.append(Purchase("C2", 1, "part", "i1", -1, 9.5, ago(35), is_return=True))
    lines.append(Purchase("o9", 1, "kept", "i2", 1, 4.0, ago(10)))  # popular: i1, then i2
    with engine.begin() as connection:
        upsert_customers(connection, people, NOW)
        upsert_items(connection, [Item("i2", "Cup", "kitchen", 4.0)], NOW)
        insert_purchases(connection, lines, None)


def ago(days: int) -> datetime:
    return NOW - timedelta(days=days)


def test_an_item_returned_in_full_is_neither_due_nor_offered(engine: sa.Engine) -> None:
    shop(engine)
    with engine.connect() as connection:
        snapshot = load_snapshot(connection, SETTINGS, NOW)
    views = {view.customer.id: view for view in snapshot.views}
    context = planner.context_for(SETTINGS, NOW, snapshot.items, snapshot.popular)
    returned = views["returned"].history
    assert "i1" not in returned.items and returned.returned == frozenset({"i1"})
    assert returned.count == 2  # the orders stay: only the item is not bought
    assert segments.due_for_replenishment(returned, NOW) == []
    for mode in ("replenish", "mixed", "discover"):
        campaign = offering(mode)
        chosen = [o.item_id for o in planner.offers_for(campaign, views["returned"], context)]
        assert "i1" not in chosen, mode
    replenish = offering("replenish")
    for customer in ("kept", "part"):
        assert "i1" in views[customer].history.items
        chosen = [o.item_id for o in planner.offers_for(replenish, views[customer], context)]
        assert chosen[0] == "i1", customer
        assert segments.due_for_replenishment(views[customer].history, NOW) == ["i1"]
    mixed = planner.offers_for(offering("mixed"), views["returned"], context)
    assert [o.item_id for o in mixed] == ["i2"]


def offering(mode: str) -> Campaign:
    campaign = campaign_shop.daily(holdout_percent=0)
    return campaign.model_copy(
        update={"offer": campaign.offer.model_copy(update={"mode": mode, "items": 2})}
    )
