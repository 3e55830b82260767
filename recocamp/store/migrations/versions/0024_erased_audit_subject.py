"""audit_log: an erased customer's entries under their own subject type

Erasure kept a customer's audit entries under an anonymous stand-in (``erased-<n>``, ``n``
the erasure's id) with subject type ``customer``, and the purge deleted the old entries of
every ``customer`` whose id starts with ``erased-``: a real customer whose id starts so (ids
are the shop's, any printable text) lost their entries with them, and read an erasure's
entries as their own (export, last changes). Erasure now writes the subject type
``erased_customer`` (``store.privacy.ERASED_SUBJECT``) and the purge deletes by it.

Entries stored before take it where they can only be a stand-in's: the id is ``erased-``
and the id of an erasure that exists, erasure blanked their details (``{}``), and no customer
holds that id. Nothing else changes: their ids, actions and times stay. An entry of a real
customer whose id is such a stand-in's stays ``customer`` (kept, never purged as one).

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE audit_log SET subject_type = 'erased_customer' "
            "WHERE subject_type = 'customer' "
            "AND subject_id IN (SELECT 'erased-' || CAST(id AS VARCHAR(20)) FROM erasures) "
            "AND subject_id NOT IN (SELECT id FROM customers) "
            "AND CAST(details AS TEXT) = '{}'"
        )
    )


def downgrade() -> None:
    op.execute(
        sa.text(
            "UPDATE audit_log SET subject_type = 'customer' WHERE subject_type = 'erased_customer'"
        )
    )
