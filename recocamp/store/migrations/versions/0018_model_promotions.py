"""model_promotions: every switch of the live model, so that rollback walks back through them

``models.promoted_at`` holds only a model's latest promotion: after A → B → C, a rollback
to B overwrote B's, and the next rollback went back to C (the model just left), never to A.

Existing models with a ``promoted_at`` are copied in as promotions in that order, the live
model last: the first rollback after the upgrade goes where it went before.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from recocamp.store.schema import UtcDateTime

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    promotions = op.create_table(
        "model_promotions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.String(length=100), nullable=False),
        sa.Column("promoted_at", UtcDateTime(), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.CheckConstraint(
            "via IN ('train', 'promote', 'rollback')", name=op.f("ck_model_promotions_via")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_promotions")),
    )
    models = sa.table(
        "models",
        sa.column("version", sa.String()),
        sa.column("status", sa.String()),
        sa.column("promoted_at", UtcDateTime()),
    )
    query = (
        sa.select(models.c.version, models.c.promoted_at)
        .where(models.c.promoted_at.is_not(None))
        .order_by(sa.case((models.c.status == "live", 1), else_=0), models.c.promoted_at)
    )
    connection = op.get_bind()
    for version, promoted_at in connection.execute(query).all():  # one by one: ids in order
        connection.execute(
            sa.insert(promotions).values(version=version, promoted_at=promoted_at, via="promote")
        )


def downgrade() -> None:
    op.drop_table("model_promotions")
