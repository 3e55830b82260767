"""id_erasures: the latest erasure of every customer id, kept when a new sign-up lifts the
tombstone, so that links issued before the erasure stay void for the new record

Existing tombstones are copied in; an id whose tombstone a new sign-up lifted before this
migration is not known any more (its links issued before that erasure stay usable).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from recocamp.store.schema import UtcDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "id_erasures",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("erased_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_id_erasures")),
    )
    op.execute(
        "INSERT INTO id_erasures (id_hash, erased_at) SELECT id_hash, erased_at FROM tombstones"
    )


def downgrade() -> None:
    op.drop_table("id_erasures")
