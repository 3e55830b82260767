"""measure: KPI snapshots, segment snapshots, feedback, reports

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 21:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from recocamp.store.schema import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "kpi_snapshots",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("window_days", sa.Integer(), nullable=False),
        sa.Column("as_of", UtcDateTime(), nullable=False),
        sa.Column("orders", sa.Integer(), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.Column("guest_orders", sa.Integer(), nullable=False),
        sa.Column("purchase_frequency", sa.Float(), nullable=True),
        sa.Column("average_order_value", sa.Float(), nullable=True),
        sa.Column("repeat_purchase_rate", sa.Float(), nullable=True),
        sa.Column("guest_checkout_rate", sa.Float(), nullable=True),
        sa.Column("churn_rate", sa.Float(), nullable=True),
        sa.Column("clv", sa.Float(), nullable=True),
        sa.Column("computed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("day", "window_days", name=op.f("pk_kpi_snapshots")),
    )
    op.create_table(
        "segment_snapshots",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("segment", sa.String(length=32), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.Column("computed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("day", "segment", name=op.f("pk_segment_snapshots")),
    )
    op.create_table(
        "feedback",
        sa.Column("id", _ID, nullable=False),
        sa.Column("survey", sa.String(length=200), nullable=False),
        sa.Column("campaign", sa.String(length=100), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("comment", sa.String(length=2000), nullable=True),
        sa.Column("answered_at", UtcDateTime(), nullable=False),
        sa.CheckConstraint("score >= 0 AND score <= 10", name=op.f("ck_feedback_score")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("survey", "customer_id", name=op.f("uq_feedback_survey_customer_id")),
    )
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_feedback_answered_at"), ["answered_at"])
        batch_op.create_index(batch_op.f("ix_feedback_customer_id"), ["customer_id"])
    op.create_table(
        "reports",
        sa.Column("id", _ID, nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("as_of", UtcDateTime(), nullable=False),
        sa.Column("html", sa.LargeBinary(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reports")),
    )
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reports_created_at"), ["created_at"])


def downgrade() -> None:
    with op.batch_alter_table("reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reports_created_at"))
    op.drop_table("reports")
    with op.batch_alter_table("feedback", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_feedback_customer_id"))
        batch_op.drop_index(batch_op.f("ix_feedback_answered_at"))
    op.drop_table("feedback")
    op.drop_table("segment_snapshots")
    op.drop_table("kpi_snapshots")
