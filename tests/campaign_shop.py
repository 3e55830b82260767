"""A one-item tea shop and a daily replenishment campaign over it, for tests that run
campaigns on a real store (holdouts over repeated runs, runs decided chunk by chunk)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from recocamp.campaigns.files import Campaign
from recocamp.domain import ConsentBasis, Customer, Item, Purchase
from recocamp.store.queries import insert_purchases, upsert_customers, upsert_items
from tests.conftest import NOW


def daily(
    name: str = "daily", holdout_percent: int = 30, caps: dict[str, Any] | None = None
) -> Campaign:
    """Replenishment of one item every day at 11:00 for whoever bought within 1000 days."""
    fields: dict[str, Any] = {
        "name": name,
        "legal_basis": ["double_opt_in"],
        "holdout_percent": holdout_percent,
        "schedule": {"cron": "0 11 * * *"},
        "audience": {"lapsed_days": [0, 1000]},
        "offer": {"mode": "replenish", "items": 1},
        "template": {"subject": {"en": "Hi"}, "html": "replenish.html", "text": "replenish.txt"},
    }
    if caps is not None:
        fields["caps"] = caps
    return Campaign(**fields)


def tea_shop(
    engine: sa.Engine,
    ids: Sequence[str],
    without_consent: Callable[[int], bool] = lambda n: False,
) -> None:
    """Customers ``ids`` (the n-th with ``cn@example.test``), each of whom bought tea 20 days
    before NOW; double opt-in, except where ``without_consent(n)``."""
    people = [
        Customer(
            customer_id,
            f"c{n}@example.test",
            "Kim",
            "en",
            "Europe/London",
            consent_basis=ConsentBasis.NONE if without_consent(n) else ConsentBasis.DOUBLE_OPT_IN,
            consent_at=NOW - timedelta(days=400),
        )
        for n, customer_id in enumerate(ids)
    ]
    bought = NOW - timedelta(days=20)
    lines = [Purchase(f"o{n}", 1, c, "i1", 1, 9.5, bought) for n, c in enumerate(ids)]
    with engine.begin() as connection:
        upsert_customers(connection, people, NOW)
        upsert_items(connection, [Item("i1", "Tea", "kitchen", 9.5)], NOW)
        insert_purchases(connection, lines, None)
