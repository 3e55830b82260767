"""holdout decisions count as contacts: an index to find the recent ones

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 02:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_decisions_holdout_decided_at"), ["holdout", "decided_at"]
        )


def downgrade() -> None:
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_decisions_holdout_decided_at"))
