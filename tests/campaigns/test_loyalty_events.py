"""Loyalty points from reviews and the newsletter sign-up, end to end on real stores: the
shop posts them through the API, a campaign run's snapshot reads them (``store.views``), and
the tier audience and the template context see the points they add up to."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from recocamp.campaigns import context, planner
from recocamp.campaigns.audience import Snapshot
from recocamp.campaigns.files import Campaign
from recocamp.campaigns.loyalty import Standing
from recocamp.campaigns.planner import CustomerView, Decision, Outcome
from recocamp.campaigns.run import load_snapshot
from recocamp.clock import FixedClock
from recocamp.domain import Item
from recocamp.settings import Settings
from recocamp.store import queries
from tests.api_shop import NOW, Closing, bearer, call, engine_of, make_app, settings_for

# the defaults of [loyalty]: 10 a order, 1 a currency unit, 25 a review, 50 the sign-up;
# bronze from 0, silver from 500, gold from 2000
SILVER = Standing(10 + 400 + 2 * 25 + 50, "silver", "gold", 2000 - 510)
BRONZE = Standing(10 + 100 + 25, "bronze", "silver", 500 - 135)


def send(app: FastAPI, method: str, path: str, body: dict[str, Any]) -> None:
    reply = call(app, method, path, json=body, headers=bearer("shop"))
    assert reply.status == 200, reply.text


def review(app: FastAPI, review_id: str, customer: str, at: Any) -> None:
    body = {"review_id": review_id, "customer_id": customer, "occurred_at": at.isoformat()}
    send(app, "POST", "/v1/events/reviews", body)


def order(app: FastAPI, order_id: str, customer: str, price: float) -> None:
    line = {"item_id": "i1", "quantity": 4, "unit_price": price}
    at = (NOW - timedelta(days=20)).isoformat()
    body = {"order_id": order_id, "customer_id": customer, "ordered_at": at, "lines": [line]}
    send(app, "POST", "/v1/events/purchases", body)


def shop(app: FastAPI) -> None:
    """c1: a double opt-in, an order of 400, two reviews before now and one a minute after
    it (the clocks' skew lets it in); c2: an existing-customer consent (no sign-up), an
    order of 100 and one review. Two items in the catalogue, so a mail has an offer."""
    with engine_of(app).begin() as connection:
        mugs = [Item("i1", "Mug", "kitchen", 100.0), Item("i2", "Cup", "kitchen", 8.0)]
        queries.upsert_items(connection, mugs, NOW)
    opt_in = {
        "consent_basis": "double_opt_in",
        "consent_at": (NOW - timedelta(days=30)).isoformat(),
    }
    send(app, "PUT", "/v1/customers/c1", {"source": "signup", "email": "c1@example.test", **opt_in})
    existing = {
        "consent_basis": "existing_customer",
        "consent_at": (NOW - timedelta(days=30)).isoformat(),
    }
    c2 = {"source": "checkout", "email": "c2@example.test", **existing}
    send(app, "PUT", "/v1/customers/c2", c2)
    order(app, "A1", "c1", 100.0)
    order(app, "A2", "c2", 25.0)
    review(app, "R1", "c1", NOW - timedelta(days=2))
    review(app, "R2", "c1", NOW - timedelta(days=1))
    review(app, "R3", "c1", NOW + timedelta(minutes=1))
    review(app, "R4", "c2", NOW - timedelta(days=3))


def views_at(engine: sa.Engine, settings: Settings, at: Any) -> tuple[Snapshot, dict[str, Any]]:
    with engine.connect() as connection:
        found = load_snapshot(connection, settings, at)
    return found, {view.customer.id: view for view in found.views}


def decided(settings: Settings, snapshot: Snapshot, tiers: list[str], view: CustomerView) -> Any:
    campaign = Campaign(
        name="vip",
        legal_basis=["double_opt_in", "existing_customer"],
        schedule={"cron": "0 10 * * TUE"},
        holdout_percent=0,
        audience={"loyalty_tiers": tiers},
        offer={"mode": "mixed", "items": 1},
        template={"subject": {"en": "Hi"}, "html": "vip.html", "text": "vip.txt"},
    )
    run = planner.context_for(settings, NOW, snapshot.items, snapshot.popular)
    return campaign, planner.decide(campaign, view, run, campaign.policy(run.policy))


@pytest.fixture
def opened(engine: sa.Engine, tmp_path: Path, closing: Closing) -> tuple[Settings, FastAPI]:
    """The shop's settings and its app (clock at ``NOW``), with c1 and c2 posted."""
    app = closing(make_app(engine, tmp_path, FixedClock(NOW)))
    shop(app)
    return settings_for(tmp_path), app


def test_reviews_and_the_double_opt_in_reach_the_tier_their_points_add_up_to(
    engine: sa.Engine, opened: tuple[Settings, FastAPI]
) -> None:
    settings, _ = opened
    snapshot, views = views_at(engine, settings, NOW)
    assert views["c1"].standing == SILVER  # without reviews and sign-up: 410, bronze
    assert views["c2"].standing == BRONZE

    campaign, silver = decided(settings, snapshot, ["silver"], views["c1"])
    assert (silver.outcome, silver.reason) == (Outcome.SEND, "eligible"), silver
    assert decided(settings, snapshot, ["silver"], views["c2"])[1].reason == (
        "not_in_audience:loyalty_tiers"
    )
    assert decided(settings, snapshot, ["bronze"], views["c1"])[1].reason == (
        "not_in_audience:loyalty_tiers"
    )
    mail = Decision("vip", "c1", Outcome.SEND, "eligible")
    made = context.context_for(mail, views["c1"], campaign, settings.shop, ("u", "p"))
    assert made["loyalty"] == {
        "points": 510,
        "tier": "silver",
        "next_tier": "gold",
        "points_to_next": 1490,
    }

    later = views_at(engine, settings, NOW + timedelta(minutes=1))[1]
    assert later["c1"].standing.points == 510 + 25  # R3 counts from its own time on


def test_an_unsubscribe_keeps_the_sign_up_points(
    engine: sa.Engine, opened: tuple[Settings, FastAPI]
) -> None:
    """Withdrawing consent costs nothing (``loyalty.engagement``): still silver after it."""
    settings, app = opened
    send(app, "PUT", "/v1/customers/c1", {"source": "footer link", "unsubscribed": True})
    views = views_at(engine, settings, NOW)[1]
    assert views["c1"].customer.unsubscribed_at is not None
    assert views["c1"].standing == SILVER
