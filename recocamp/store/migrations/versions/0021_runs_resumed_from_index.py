"""runs: an index on resumed_from

The scheduling worker asks every poll (``[worker] leader_poll_s``, 2 s) which campaign runs
are left to resume, leaving out those resumed already: ``id NOT IN (SELECT resumed_from …)``
read every row of ``runs`` to answer that, 75 ms of CPU at a million runs, every two
seconds. The index answers it from the few rows that resumed one.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05 23:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

INDEX = "ix_runs_resumed_from"


def upgrade() -> None:
    op.create_index(INDEX, "runs", ["resumed_from"], unique=False)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="runs")
