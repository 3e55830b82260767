"""delivery: decisions, outbox, suppressions, contact events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 09:23:03.633571
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from recocamp.store.schema import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "campaign_pauses",
        sa.Column("campaign", sa.String(length=100), nullable=False),
        sa.Column("paused_at", UtcDateTime(), nullable=False),
        sa.Column("reason", sa.String(length=1000), nullable=False),
        sa.PrimaryKeyConstraint("campaign", name=op.f("pk_campaign_pauses")),
    )
    op.create_table(
        "contact_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("event_key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=True),
        sa.Column("campaign", sa.String(length=100), nullable=True),
        sa.Column("send_key", sa.String(length=200), nullable=True),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("at", UtcDateTime(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_events")),
        sa.UniqueConstraint("event_key", name=op.f("uq_contact_events_event_key")),
    )
    with op.batch_alter_table("contact_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_contact_events_campaign_kind"), ["campaign", "kind"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_contact_events_customer_id_at"), ["customer_id", "at"], unique=False
        )

    op.create_table(
        "decisions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_key", sa.String(length=200), nullable=False),
        sa.Column("campaign", sa.String(length=100), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=100), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("holdout", sa.Boolean(), nullable=False),
        sa.Column("decided_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decisions")),
        sa.UniqueConstraint(
            "run_key", "customer_id", name=op.f("uq_decisions_run_key_customer_id")
        ),
    )
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_decisions_campaign_decided_at"), ["campaign", "decided_at"], unique=False
        )

    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("send_key", sa.String(length=200), nullable=False),
        sa.Column("campaign", sa.String(length=100), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=True),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("subject", sa.String(length=1000), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("not_before", UtcDateTime(), nullable=False),
        sa.Column("claimed_by", sa.String(length=200), nullable=True),
        sa.Column("claimed_at", UtcDateTime(), nullable=True),
        sa.Column("provider_message_id", sa.String(length=200), nullable=True),
        sa.Column("last_error", sa.String(length=1000), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("sent_at", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint(
            "state IN ('queued', 'claimed', 'sent', 'delivered', 'bounced', 'failed', 'cancelled')",
            name=op.f("ck_outbox_state"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("send_key", name=op.f("uq_outbox_send_key")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_outbox_customer_id_created_at"),
            ["customer_id", "created_at"],
            unique=False,
        )
        batch_op.create_index(
            batch_op.f("ix_outbox_provider_message_id"), ["provider_message_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_outbox_state_not_before"), ["state", "not_before"], unique=False
        )

    op.create_table(
        "suppressions",
        sa.Column("email_hash", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("email_hash", name=op.f("pk_suppressions")),
    )


def downgrade() -> None:

    op.drop_table("suppressions")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_state_not_before"))
        batch_op.drop_index(batch_op.f("ix_outbox_provider_message_id"))
        batch_op.drop_index(batch_op.f("ix_outbox_customer_id_created_at"))

    op.drop_table("outbox")
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_decisions_campaign_decided_at"))

    op.drop_table("decisions")
    with op.batch_alter_table("contact_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contact_events_customer_id_at"))
        batch_op.drop_index(batch_op.f("ix_contact_events_campaign_kind"))

    op.drop_table("contact_events")
    op.drop_table("campaign_pauses")
