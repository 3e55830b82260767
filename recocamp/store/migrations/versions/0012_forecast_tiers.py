"""forecast_tiers and forecast_checkpoints: customers per churn-risk tier of every stored
forecast version, and the predictions of the versions kept to judge once their horizon ends

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from recocamp.store.schema import UtcDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "forecast_tiers",
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("model", sa.String(length=32), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("horizon_days", sa.Integer(), nullable=False),
        sa.Column("low", sa.Integer(), nullable=False),
        sa.Column("medium", sa.Integer(), nullable=False),
        sa.Column("high", sa.Integer(), nullable=False),
        sa.Column("predictions_kept", sa.Boolean(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_forecast_tiers")),
    )
    op.create_table(
        "forecast_checkpoints",
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("expected_purchase_days", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("version", "customer_id", name=op.f("pk_forecast_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("forecast_checkpoints")
    op.drop_table("forecast_tiers")
