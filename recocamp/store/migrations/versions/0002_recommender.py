"""recommender: model registry and top-N cache

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from recocamp.store.schema import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "models",
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("trained_at", UtcDateTime(), nullable=False),
        sa.Column("data_cutoff", UtcDateTime(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("path", sa.String(length=2000), nullable=False),
        sa.Column("popular", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("promoted_at", UtcDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('candidate', 'live', 'retired', 'rejected')", name=op.f("ck_models_status")
        ),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_models")),
    )
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_models_status"), ["status"], unique=False)

    op.create_table(
        "recommendations",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=100), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", "model_version", name=op.f("pk_recommendations")),
    )


def downgrade() -> None:

    op.drop_table("recommendations")
    with op.batch_alter_table("models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_models_status"))

    op.drop_table("models")
