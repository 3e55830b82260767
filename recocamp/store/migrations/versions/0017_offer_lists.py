"""offer_lists: re-scored personal lists shared between serving processes

A purchase event used to be folded in by every serving process on its own: each re-scored
the buyer's history on the live model. The process that re-scores now writes the list here,
for the model and the history's line totals (``purchase_totals``) it was computed from; the
others read it in place of re-scoring while both still match (``api.offer_cache``).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05 00:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from recocamp.store.schema import UtcDateTime

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "offer_lists",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=100), nullable=False),
        sa.Column("shaped_by", sa.String(length=100), nullable=False),
        sa.Column("lines", sa.BigInteger(), nullable=False),
        sa.Column("id_sum", sa.BigInteger(), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("items", sa.Text(), nullable=False),
        sa.Column("computed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_offer_lists")),
    )


def downgrade() -> None:
    op.drop_table("offer_lists")
