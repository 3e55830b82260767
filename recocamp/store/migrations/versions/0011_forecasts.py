"""forecasts: the newest stored per-customer purchase forecasts and their version

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 17:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from recocamp.store.schema import UtcDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "forecast_versions",
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("model", sa.String(length=32), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("horizon_days", sa.Integer(), nullable=False),
        sa.Column("lifetime_days", sa.Integer(), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.Column("chosen_on", sa.JSON(), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_forecast_versions")),
    )
    op.create_table(
        "forecasts",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("expected_purchase_days", sa.Float(), nullable=False),
        sa.Column("p_active", sa.Float(), nullable=False),
        sa.Column("churn_risk", sa.String(length=8), nullable=False),
        sa.Column("expected_revenue", sa.Float(), nullable=False),
        sa.Column("lifetime_value", sa.Float(), nullable=False),
        sa.Column("next_purchase_by", sa.Date(), nullable=True),
        sa.Column("overdue_ratio", sa.Float(), nullable=True),
        sa.CheckConstraint(
            "churn_risk IN ('low', 'medium', 'high')", name=op.f("ck_forecasts_churn_risk")
        ),
        sa.PrimaryKeyConstraint("customer_id", "version", name=op.f("pk_forecasts")),
    )


def downgrade() -> None:
    op.drop_table("forecasts")
    op.drop_table("forecast_versions")
