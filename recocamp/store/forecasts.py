"""What the forecasts read: purchase lines as arrays (DESIGN.md, Forecast definitions)."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import sqlalchemy as sa

from recocamp.store.queries import epoch_seconds
from recocamp.store.schema import customers, items, purchases


def purchase_lines(
    connection: sa.Connection, until: datetime, chunk: int = 100_000
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(customer ids, UTC epoch seconds, revenue)`` of the purchase lines before ``until`` of
    customers (not guests) who neither objected to profiling nor were erased (a forecast is
    profiling). A purchase line has quantity > 0, unit price > 0 and is no return; a service
    line (postage, fees) counts only when its order has a product line."""
    p, c = purchases.c, customers.c
    service = sa.select(items.c.id).where(items.c.is_service.is_(True))
    purchase = sa.and_(p.is_return.is_(False), p.quantity > 0, p.unit_price > 0)
    product_orders = sa.select(p.order_id).where(purchase, p.item_id.not_in(service))
    profiled_not = sa.select(c.id).where(
        sa.or_(c.objected_to_profiling.is_(True), c.erased_at.is_not(None))
    )
    epoch = epoch_seconds(connection, p.ordered_at)
    query = sa.select(p.customer_id, epoch, p.quantity * p.unit_price).where(
        purchase,
        p.customer_id.is_not(None),
        p.ordered_at < until,
        p.customer_id.not_in(profiled_not),
        sa.or_(p.item_id.not_in(service), p.order_id.in_(product_orders)),
    )
    ids: list[str] = []
    seconds: list[float] = []
    revenue: list[float] = []
    result = connection.execute(query)
    while rows := result.fetchmany(chunk):
        for customer_id, at, value in rows:
            ids.append(customer_id)
            seconds.append(float(at))
            revenue.append(float(value))
    return np.array(ids, dtype=object), np.array(seconds), np.array(revenue)
