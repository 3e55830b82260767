"""offer_lists.padding: the discover ranking of a shared re-scored list

The process that re-scored a buyer shared their personal list, but another process asked
for "new for you" (a big buyer owns most of the personal and popular items) re-scored the
buyer anyway, for the 200 items of the model's ranking that pad such a list. The re-scoring
process now writes that ranking too (JSON, with the identity of the list it belongs to, so
a row rewritten by a process that does not know the column leaves it unused).

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-05 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("offer_lists", schema=None) as batch_op:
        batch_op.add_column(sa.Column("padding", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("offer_lists", schema=None) as batch_op:
        batch_op.drop_column("padding")
