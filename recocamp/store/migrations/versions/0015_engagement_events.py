"""engagement_events: reviews (and later other engagement) that earn loyalty points, one row
per event by the shop's id of it within its kind

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 22:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from recocamp.store.schema import UtcDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "engagement_events",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.Column("recorded_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "event_id", name=op.f("pk_engagement_events")),
    )
    op.create_index(
        op.f("ix_engagement_events_customer_id_occurred_at"),
        "engagement_events",
        ["customer_id", "occurred_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_engagement_events_customer_id_occurred_at"), table_name="engagement_events"
    )
    op.drop_table("engagement_events")
