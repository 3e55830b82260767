"""tombstone_keys: the fingerprints of the keys erasure tombstones were made under

A tombstone is a keyed hash: made under a key that is no longer configured (a rotation that
did not retire the old key, a retired key dropped), it matches nothing, and the erased
customer came back with the next import. Each key that writes one is now recorded by its
fingerprint (``tokens.key_fingerprint``, never the key), and every check refuses while a
recorded key is missing (``store.tombstones``). The tombstones already stored name no key:
the first check after this migration that writes, with a key configured, takes the keys
configured then as theirs (``recorded_at`` NULL), as the README's "Rotating the signing
key" says.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 03:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from recocamp.store.schema import UtcDateTime

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tombstone_keys",
        sa.Column("key_id", sa.String(length=16), nullable=False),
        sa.Column("recorded_at", UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_tombstone_keys")),
    )


def downgrade() -> None:
    op.drop_table("tombstone_keys")
