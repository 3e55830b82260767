"""orders: one row per order with the digest of its lines, so an order is written whole once

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from datetime import UTC
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from alembic import op

from recocamp.store.schema import Money, UtcDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_CHUNK = 5000
_lines = sa.table(
    "purchases",
    sa.column("order_id", sa.String()),
    sa.column("line_no", sa.Integer()),
    sa.column("item_id", sa.String()),
    sa.column("quantity", sa.Integer()),
    sa.column("unit_price", Money),
    sa.column("ordered_at", UtcDateTime()),
    sa.column("is_return", sa.Boolean()),
)


def upgrade() -> None:
    orders = op.create_table(
        "orders",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_orders")),
    )
    _backfill(op.get_bind(), orders)


def _backfill(connection: sa.Connection, orders: sa.Table) -> None:
    """The digest of every stored order, streamed in order-id order (one pass, bounded
    memory): orders stored before this revision are repeats or conflicts like any other."""
    c = _lines.c
    query = sa.select(
        c.order_id, c.line_no, c.item_id, c.quantity, c.unit_price, c.ordered_at, c.is_return
    ).order_by(c.order_id, c.line_no)
    rows = connection.execute(query.execution_options(yield_per=_CHUNK))
    batch: list[dict[str, str]] = []
    for order_id, group in itertools.groupby(rows, key=lambda row: row[0]):
        batch.append({"order_id": order_id, "content_sha256": _digest(list(group))})
        if len(batch) >= _CHUNK:
            connection.execute(orders.insert(), batch)
            batch = []
    if batch:
        connection.execute(orders.insert(), batch)


def _digest(lines: Sequence[Any]) -> str:
    """``domain.order_digest`` as it was at this revision, copied so that a later change of
    the application's digest cannot change what this revision writes (rows of order_id,
    line_no, item_id, quantity, unit_price, ordered_at, is_return, by line_no)."""
    digest = hashlib.sha256()
    for _, line_no, item_id, quantity, unit_price, ordered_at, is_return in lines:
        price = Decimal(repr(float(unit_price))).quantize(Decimal("0.0001"), ROUND_HALF_UP)
        price = price.copy_abs() if price.is_zero() else price
        digest.update(
            f"{line_no}\x1f{item_id}\x1f{quantity}\x1f{price}\x1f"
            f"{ordered_at.astimezone(UTC).isoformat()}\x1f{int(is_return)}\x1e".encode()
        )
    return digest.hexdigest()


def downgrade() -> None:
    op.drop_table("orders")
