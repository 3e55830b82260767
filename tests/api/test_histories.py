"""A kept order history extended by the lines new since (``api.histories``), on the trained
test shop: the extension gives exactly what reading the whole history gives, and every change
it cannot account for (lines unlinked or moved in, a line added to a known order, a line not
due yet) makes it read the whole history instead."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from recocamp.api import histories
from recocamp.domain import Item, Purchase
from recocamp.store import queries, views
from recocamp.store.schema import purchases
from tests.api.test_api_offers import cached_customer, cached_customer_after
from tests.api_shop import NOW

Shop = tuple[sa.Engine, Path]


def catalogue(engine: sa.Engine) -> dict[str, Item]:
    with engine.connect() as connection:
        return views.catalogue(connection)


def read(
    engine: sa.Engine, customer: str, kept: histories.Kept | None = None, now: datetime = NOW
) -> tuple[histories.Kept, bool]:
    with engine.connect() as connection:
        return histories.read(connection, customer, now, catalogue(engine), kept)


def add(engine: sa.Engine, *lines: Purchase) -> None:
    with engine.begin() as connection:
        queries.insert_purchases(connection, lines, None)


def line(order: str, customer: str, item: str, at: datetime, number: int = 1) -> Purchase:
    return Purchase(order, number, customer, item, 1, 3.5, at)


def some_items(engine: sa.Engine, n: int) -> list[str]:
    return sorted(catalogue(engine))[:n]


def test_new_orders_extend_the_kept_history_to_the_whole_one(shop: Shop) -> None:
    engine, _ = shop
    customer, _ = cached_customer(engine)
    kept, extended = read(engine, customer)
    assert not extended and kept.history.count >= 3
    first, second = some_items(engine, 2)
    hour = timedelta(hours=1)
    add(
        engine,
        line("new-1", customer, first, NOW - 2 * hour),
        line("new-1", customer, second, NOW - 2 * hour, 2),
        line("new-2", customer, second, NOW - hour),
        Purchase("new-3", 1, customer, first, -1, 3.5, NOW - hour, is_return=True),
    )
    grown, extended = read(engine, customer, kept)
    assert extended
    assert grown == read(engine, customer)[0]  # what a whole read gives, field for field
    assert grown.history.count == kept.history.count + 2  # the return is no order
    assert grown.history.orders[-1].items == frozenset({second})
    again, extended = read(engine, customer, grown, NOW + hour)  # nothing new: still extended
    assert extended and again.history == grown.history


def _unlink_last_order(engine: sa.Engine, customer: str) -> None:
    """As an erasure does: the lines of the customer's latest order lose their customer."""
    p = purchases.c
    with engine.begin() as connection:
        latest = connection.execute(
            sa.select(p.order_id)
            .where(p.customer_id == customer)
            .order_by(p.ordered_at.desc(), p.id.desc())
            .limit(1)
        ).scalar_one()
        connection.execute(
            sa.update(purchases).where(p.order_id == latest).values(customer_id=None)
        )


def _move_in_an_older_order(engine: sa.Engine, customer: str) -> None:
    """Lines with lower ids than any new one come to the customer (a merge of accounts, or a
    late commit on PostgreSQL)."""
    other, _ = cached_customer_after(engine, customer)
    p = purchases.c
    with engine.begin() as connection:
        order = connection.execute(
            sa.select(p.order_id)
            .where(p.customer_id == other, p.is_return.is_(False), p.quantity > 0)
            .order_by(p.id)
            .limit(1)
        ).scalar_one()
        connection.execute(
            sa.update(purchases).where(p.order_id == order).values(customer_id=customer)
        )


def _add_to_a_known_order(engine: sa.Engine, customer: str) -> None:
    """A line written into an order the history holds (not through the order claim the
    API and imports use, which refuses it: a correction made in the database)."""
    p = purchases.c
    with engine.begin() as connection:
        order, at = connection.execute(
            sa.select(p.order_id, p.ordered_at).where(p.customer_id == customer).limit(1)
        ).one()
        connection.execute(
            sa.insert(purchases).values(
                order_id=order,
                line_no=999,
                customer_id=customer,
                item_id=some_items(engine, 1)[0],
                quantity=1,
                unit_price=3.5,
                ordered_at=at,
                is_return=False,
            )
        )


CHANGES: dict[str, Callable[[sa.Engine, str], None]] = {
    "unlinked": _unlink_last_order,
    "moved in": _move_in_an_older_order,
    "added to a known order": _add_to_a_known_order,
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_change_the_new_lines_do_not_show_reads_the_whole_history(
    shop: Shop, change: str
) -> None:
    engine, _ = shop
    customer, _ = cached_customer(engine)
    kept, _ = read(engine, customer)
    CHANGES[change](engine, customer)
    add(engine, line("new-1", customer, some_items(engine, 1)[0], NOW - timedelta(hours=1)))
    found, extended = read(engine, customer, kept)
    assert not extended
    assert found == read(engine, customer)[0]
    assert found.history.orders[:-1] != kept.history.orders  # the change is in it


def test_a_line_not_due_yet_is_left_out_until_its_time_then_read(shop: Shop) -> None:
    engine, _ = shop
    customer, _ = cached_customer(engine)
    item = some_items(engine, 1)[0]
    add(engine, line("later", customer, item, NOW + timedelta(days=1)))
    kept, _ = read(engine, customer)
    assert not kept.complete and kept.history.last_at is not None
    assert kept.history.last_at < NOW
    found, extended = read(engine, customer, kept, NOW + timedelta(days=2))
    assert not extended and found.complete
    assert found.history.orders[-1].items == frozenset({item})
    add(engine, line("later-2", customer, item, NOW + timedelta(days=5)))
    found, extended = read(engine, customer, found, NOW + timedelta(days=3))
    assert not extended and not found.complete  # a new line not due yet: whole, as before
    assert found == read(engine, customer, now=NOW + timedelta(days=3))[0]


def test_new_lines_are_sought_from_the_newest_kept_order_and_an_older_one_shows(
    shop: Shop,
) -> None:
    """The new lines are read from a day before the newest kept order on (an index range,
    not the customer's every line); a new order dated earlier than that is not among them,
    the totals say a line is missing, and the history is read whole: with it."""
    engine, _ = shop
    customer, _ = cached_customer(engine)
    kept, _ = read(engine, customer)
    newest = kept.history.orders[-1].at
    item = some_items(engine, 1)[0]
    add(engine, line("recent", customer, item, newest - timedelta(hours=1)))
    found, extended = read(engine, customer, kept)  # within the day before: sought
    assert extended and found == read(engine, customer)[0]
    add(engine, line("backdated", customer, item, newest - timedelta(days=30)))
    again, extended = read(engine, customer, found)
    assert not extended and again == read(engine, customer)[0]
    assert "backdated" in again.orders


def test_a_return_in_full_of_a_kept_item_reads_the_history_whole_and_a_rebuy_again(
    shop: Shop,
) -> None:
    """A return that takes back all of an item bought in kept orders (net 0) takes the item
    out of those orders: no extension can, so the history is read whole; a purchase of it
    again puts it back, read whole as well."""
    engine, _ = shop
    customer, _ = cached_customer(engine)
    kept, _ = read(engine, customer)
    item = sorted(kept.history.orders[0].items)[0]
    bought = int(kept.net[item])
    hour = timedelta(hours=1)
    add(engine, Purchase("back-1", 1, customer, item, -bought, 3.5, NOW - hour, is_return=True))
    grown, extended = read(engine, customer, kept)
    assert not extended and grown == read(engine, customer)[0]
    assert item not in grown.history.items
    assert grown.history.returned == kept.history.returned | {item}
    assert grown.history.count == kept.history.count  # the orders stay, without the item
    add(engine, line("again-1", customer, item, NOW - hour / 2))
    again, extended = read(engine, customer, grown)
    assert not extended and again == read(engine, customer)[0]
    assert item in again.history.items and item in again.history.orders[0].items
