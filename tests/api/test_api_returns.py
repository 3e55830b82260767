"""Returned items through the real app on a really trained shop: an item the customer
returned in full (net quantity 0 or less over their whole history, the return in another
order as the UCI file's C-invoices) is no longer "bought": offered in no mode, named in no
reason, never due; an item returned in part still is. The e-mail planner agrees."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from recocamp.campaigns import planner
from recocamp.cli import app as cli
from recocamp.recommender.ranking import Mode
from recocamp.store import views
from recocamp.store.schema import purchases, recommendations
from tests.api.test_api_offers import ids, offers, widget_campaign
from tests.api_shop import NOW, bearer, call, cli_on, engine_of

MODES = ("replenish", "discover", "mixed")


def post(app: FastAPI, order_id: str, day: int, item: str, quantity: int) -> None:
    document: dict[str, Any] = {
        "order_id": order_id,
        "customer_id": "newbie",
        "ordered_at": f"2012-01-0{day}T10:00:00Z",
        "lines": [{"item_id": item, "quantity": quantity, "unit_price": 5.0}],
    }
    reply = call(app, "POST", "/v1/events/purchases", json=document, headers=bearer("shop"))
    assert reply.status in (200, 201, 202), reply.text


def titles(app: FastAPI) -> dict[str, str]:
    with engine_of(app).connect() as connection:
        return {item.id: item.title for item in views.catalogue(connection).values()}


def test_an_item_returned_in_full_in_a_later_order_is_offered_in_no_mode(app: FastAPI) -> None:
    first = ids(offers(app, "newbie", "n=5&mode=mixed"))  # a basis, extended by what follows
    kept, returned = first[0], first[1]
    post(app, "R1", 1, kept, 1)
    post(app, "R2", 1, returned, 2)
    before = offers(app, "newbie", "n=5&mode=replenish")
    assert {kept, returned} <= set(ids(before))  # both bought
    post(app, "R3", 2, returned, -2)  # the whole quantity back, in another order
    title = titles(app)[returned]
    for mode in MODES:
        answer = offers(app, "newbie", f"n=20&mode={mode}")
        assert returned not in ids(answer), mode
        assert all(title not in entry["reason"] for entry in answer["items"]), mode
    assert kept in ids(offers(app, "newbie", "n=5&mode=replenish"))


def test_an_item_returned_in_part_is_still_bought_and_bought_again_after_a_return(
    app: FastAPI,
) -> None:
    first = ids(offers(app, "newbie", "n=5&mode=mixed"))
    part, again = first[0], first[1]
    post(app, "R1", 1, part, 3)
    post(app, "R2", 1, again, 1)
    post(app, "R3", 2, part, -1)  # two of three kept
    post(app, "R4", 2, again, -1)
    post(app, "R5", 3, again, 1)  # bought once more after the return
    answer = offers(app, "newbie", "n=5&mode=replenish")
    assert {part, again} <= set(ids(answer))
    assert all(part != item for item in ids(offers(app, "newbie", "n=20&mode=discover")))


def returned_in_full(engine: sa.Engine) -> dict[str, set[str]]:
    """Customer → items whose returned quantity reaches the bought one (an oracle in SQL-free
    Python over every line before NOW)."""
    p = purchases.c
    bought: dict[tuple[str, str], int] = defaultdict(int)
    back: dict[tuple[str, str], int] = defaultdict(int)
    query = sa.select(p.customer_id, p.item_id, p.quantity, p.unit_price, p.is_return).where(
        p.customer_id.is_not(None), p.ordered_at < NOW
    )
    with engine.connect() as connection:
        for customer, item, quantity, price, is_return in connection.execute(query):
            if is_return:
                back[customer, item] += abs(quantity)
            elif quantity > 0 and price > 0:
                bought[customer, item] += quantity
    found: dict[str, set[str]] = defaultdict(set)
    for (customer, item), quantity in back.items():
        if quantity >= bought[customer, item]:
            found[customer].add(item)
    return found


@pytest.mark.parametrize("mode", [Mode.REPLENISH, Mode.DISCOVER, Mode.MIXED])
def test_trained_customers_returns_are_left_out_alike_by_widget_and_e_mail(
    app: FastAPI, mode: Mode
) -> None:
    """The synthetic shop's returns (whole lines, in later C-orders): for each customer with
    an item returned in full, neither the API nor the planner offers it, and both offer the
    same items."""
    engine = engine_of(app)
    campaign, snapshot, context = widget_campaign(app, "replenish", mode)
    returns = returned_in_full(engine)
    compared = 0
    for view in snapshot.views:
        gone = returns.get(view.customer.id, set())
        if not gone or view.customer.consent_basis.value != "double_opt_in":
            continue  # the existing-customer basis limits e-mails to bought categories
        email = [offer.item_id for offer in planner.offers_for(campaign, view, context)]
        widget = ids(offers(app, view.customer.id, f"n=10&mode={mode.value}"))
        assert widget[: len(email)] == email, view.customer.id
        assert not gone & set(widget), view.customer.id
        assert not gone & view.history.items, view.customer.id
        compared += 1
    assert compared >= 5


def test_recommend_on_the_command_line_leaves_out_items_returned_in_full(
    app: FastAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trained customer whose cached list (mixed: bought items too) holds an item they
    returned in full: ``recocamp recommend`` shows it no more than the API does."""
    engine = engine_of(app)
    returns = returned_in_full(engine)
    with engine.connect() as connection:
        rows = connection.execute(sa.select(recommendations)).all()
    found = [
        (str(row.customer_id), gone)
        for row in rows
        if (gone := returns.get(str(row.customer_id), set()) & {str(i) for i, _ in row.items})
    ]
    assert found, "no cached list holds an item its customer returned in full"
    customer, gone = min(found)
    shown = cli_on(engine, monkeypatch, tmp_path).invoke(
        cli, ["recommend", customer, "--n", "20"], terminal_width=200
    )
    assert shown.exit_code == 0, shown.output
    listed = [line.split("│")[2].strip() for line in shown.stdout.splitlines() if "│" in line]
    assert len(listed) > 10 and not gone & set(listed)
    assert not gone & set(ids(offers(app, customer, "n=20&mode=mixed")))
