"""orders: one row per order with the digest of its lines, so an order is written whole once

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 14:00:00
"""

from __future__ import annotations

import itertools

import sqlalchemy as sa
from alembic import op

from recocamp.domain import Purchase, order_digest
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
    query = sa.select(c.order_id, c.line_no, c.item_id, c.quantity, c.unit_price,
                      c.ordered_at, c.is_return).order_by(c.order_id, c.line_no)  # fmt: skip
    rows = connection.execute(query.execution_options(yield_per=_CHUNK))
    batch: list[dict[str, str]] = []
    for order_id, group in itertools.groupby(rows, key=lambda row: row[0]):
        lines = [Purchase(order_id, r[1], None, r[2], r[3], r[4], r[5], r[6]) for r in group]
        batch.append({"order_id": order_id, "content_sha256": order_digest(lines)})
        if len(batch) >= _CHUNK:
            connection.execute(orders.insert(), batch)
            batch = []
    if batch:
        connection.execute(orders.insert(), batch)


def downgrade() -> None:
    op.drop_table("orders")
