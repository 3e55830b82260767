"""customers: an index on lower(email)

An unsubscribe or a complaint suppresses the address, and so stops the mail of every
customer holding it; it now also marks each of them unsubscribed (their preferences page
said "subscribed" while nothing reached them, and no later consent of theirs could lift
the suppression). Finding them asks for the address in lower case: this index answers
that without reading every customer, once for each opt-out a provider reports.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05 15:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

INDEX = "ix_customers_email_lower"


def upgrade() -> None:
    op.create_index(INDEX, "customers", [sa.text("lower(email)")], unique=False)


def downgrade() -> None:
    op.drop_index(INDEX, table_name="customers")
