"""SQLAlchemy Core tables: the one description of the database.

Alembic migrations (``store/migrations/versions``) create exactly these tables; a test
compares the migrated database with this metadata, so the two cannot drift apart.

Purchases carry no foreign keys to customers or items on purpose: real feeds arrive in
any order (orders before the customer file), and guest orders have no customer at all.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no offset, so we add it back).

    A bound value is converted once per run of equal values: a batch statement binds the
    same ``now`` in every row (an enqueue's ``created_at``, a delivery's ``sent_at``), and
    converting it row by row (to UTC, then SQLite's text) cost 25 µs a row, a tenth of what
    sending one e-mail costs the store."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        convert = super().bind_processor(dialect)
        if convert is None:
            return None
        last: list[tuple[Any, Any]] = [(None, None)]  # one tuple: threads swap it whole

        def process(value: Any) -> Any:
            seen, converted = last[0]
            if value is not None and type(value) is type(seen) and value == seen:
                return converted  # the same instant (in any zone): the same UTC value
            converted = convert(value)
            last[0] = (value, converted)
            return converted

        return process

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)  # type: ignore[no-any-return]
        return value.astimezone(UTC)  # type: ignore[no-any-return]


Money = sa.Numeric(14, 4, asdecimal=False)
CONSENT_BASES = ("double_opt_in", "existing_customer", "none")

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("email", sa.String(320)),
    sa.Column("first_name", sa.String(200)),
    sa.Column("locale", sa.String(16), nullable=False, server_default="en"),
    sa.Column("time_zone", sa.String(64)),
    sa.Column("country", sa.String(64)),
    sa.Column("birthday", sa.Date),
    sa.Column("consent_basis", sa.String(32), nullable=False, server_default="none"),
    sa.Column("consent_at", UtcDateTime),
    sa.Column("consent_source", sa.String(200)),
    sa.Column("channel_email", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("frequency_preference", sa.String(32)),
    sa.Column("paused_until", UtcDateTime),
    sa.Column("unsubscribed_at", UtcDateTime),
    sa.Column("objected_to_profiling", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("erased_at", UtcDateTime),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint(
        "consent_basis IN ('double_opt_in', 'existing_customer', 'none')", name="consent_basis"
    ),
)
# who else holds an address (an opt-out covers them all: ``contacts.unsubscribe``); 0020
sa.Index("ix_customers_email_lower", sa.func.lower(customers.c.email))

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("title", sa.String(500), nullable=False),
    sa.Column("category", sa.String(100), nullable=False),
    sa.Column("price", Money, nullable=False),
    sa.Column("in_stock", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("url", sa.String(2000)),
    sa.Column("image_url", sa.String(2000)),
    sa.Column("is_service", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("updated_at", UtcDateTime, nullable=False),
)

import_runs = sa.Table(
    "import_runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("file_name", sa.String(1000), nullable=False),
    sa.Column("file_sha256", sa.String(64), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime, nullable=False),
    sa.Column("rows_read", sa.Integer, nullable=False),
    sa.Column("imported", sa.Integer, nullable=False),
    sa.Column("duplicates", sa.Integer, nullable=False),
    sa.Column("skipped", sa.JSON, nullable=False),
    sa.Index(None, "kind", "file_sha256"),
)

purchases = sa.Table(
    "purchases",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("order_id", sa.String(64), nullable=False),
    sa.Column("line_no", sa.Integer, nullable=False),
    sa.Column("customer_id", sa.String(64)),
    sa.Column("item_id", sa.String(64), nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", Money, nullable=False),
    sa.Column("ordered_at", UtcDateTime, nullable=False),
    sa.Column("is_return", sa.Boolean, nullable=False),
    sa.Column("import_run_id", sa.Integer, sa.ForeignKey("import_runs.id")),
    sa.UniqueConstraint("order_id", "line_no"),
    sa.Index(None, "customer_id", "ordered_at"),
    sa.Index(None, "ordered_at"),
    sa.Index(None, "item_id"),
)


def purchase_line() -> sa.ColumnElement[bool]:
    """The one definition of a purchase line in SQL (DESIGN.md: a line of a non-return order
    with quantity > 0 and unit price > 0; ``domain.Purchase.is_purchase`` in Python):
    returns and adjustments are not purchases, service codes such as postage are."""
    p = purchases.c
    return sa.and_(p.is_return.is_(False), p.quantity > 0, p.unit_price > 0)


# One row per order, written in the transaction that writes its lines (migration 0010): the
# request or import whose insert of this row wins writes the whole order; any other compares
# the digest of its lines (``domain.order_digest``) to tell a repeat from a different order.
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.String(64), primary_key=True),
    sa.Column("content_sha256", sa.String(64), nullable=False),
)

audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(100), nullable=False),
    sa.Column("subject_type", sa.String(64), nullable=False),
    sa.Column("subject_id", sa.String(200)),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Index(None, "subject_type", "subject_id"),
)

# --- recommender (migration 0002) ---------------------------------------------------------

models = sa.Table(
    "models",
    metadata,
    sa.Column("version", sa.String(100), primary_key=True),
    sa.Column("name", sa.String(32), nullable=False),
    sa.Column("trained_at", UtcDateTime, nullable=False),
    sa.Column("data_cutoff", UtcDateTime, nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),
    sa.Column("metrics", sa.JSON, nullable=False),
    sa.Column("path", sa.String(2000), nullable=False),
    sa.Column("popular", sa.JSON, nullable=False),  # cold-start list: [[item_id, score], ...]
    # candidate → live → retired; rejected when the promotion gate said no
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("promoted_at", UtcDateTime),
    sa.CheckConstraint("status IN ('candidate', 'live', 'retired', 'rejected')", name="status"),
    sa.Index(None, "status"),
)

# Every switch of the live model, oldest first (migration 0018): ``models.promoted_at`` holds
# only a model's latest promotion, which cannot tell where a second rollback goes. The
# rollback target is read from this history (``store.registry.previous_live``).
PROMOTION_VIAS = ("train", "promote", "rollback")
model_promotions = sa.Table(
    "model_promotions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("version", sa.String(100), nullable=False),
    sa.Column("promoted_at", UtcDateTime, nullable=False),
    sa.Column("via", sa.String(16), nullable=False),
    sa.CheckConstraint("via IN ('train', 'promote', 'rollback')", name="via"),
)

# One row per customer and model version: the top-N as a JSON list [[item_id, score], ...].
# A row per (customer, rank) would be 50 M rows for 1 M customers; one row keeps the cache
# write and the lookup at a single statement each.
recommendations = sa.Table(
    "recommendations",
    metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("model_version", sa.String(100), primary_key=True),
    sa.Column("items", sa.JSON, nullable=False),
)

# --- delivery (migration 0003) -------------------------------------------------------------

# One row per customer and campaign run, including every skip: the answer to "why did (not)
# this customer get that e-mail?".
decisions = sa.Table(
    "decisions",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("run_key", sa.String(200), nullable=False),  # campaign/period
    sa.Column("campaign", sa.String(100), nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(100), nullable=False),
    sa.Column("variant", sa.String(64)),
    sa.Column("holdout", sa.Boolean, nullable=False),
    sa.Column("decided_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("run_key", "customer_id"),
    sa.Index(None, "campaign", "decided_at"),
    sa.Index(None, "holdout", "decided_at"),  # held-out customers' virtual contacts (views)
)

# The outbox: one row per e-mail, unique by send key (campaign/customer/period). States:
# queued → claimed → sent (accepted by the ESP) → delivered | bounced; failed (permanent or
# out of attempts); cancelled (suppressed or unsubscribed before it went out).
OUTBOX_STATES = ("queued", "claimed", "sent", "delivered", "bounced", "failed", "cancelled")
outbox = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("send_key", sa.String(200), nullable=False, unique=True),
    sa.Column("campaign", sa.String(100), nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("variant", sa.String(64)),
    sa.Column("recipient", sa.String(320), nullable=False),
    sa.Column("subject", sa.String(1000), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),  # zlib(JSON {html, text, headers})
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("not_before", UtcDateTime, nullable=False),
    sa.Column("claimed_by", sa.String(200)),
    sa.Column("claimed_at", UtcDateTime),
    sa.Column("provider_message_id", sa.String(200)),
    sa.Column("last_error", sa.String(1000)),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("sent_at", UtcDateTime),
    sa.Column("updated_at", UtcDateTime, nullable=False),
    sa.CheckConstraint(
        "state IN ('queued', 'claimed', 'sent', 'delivered', 'bounced', 'failed', 'cancelled')",
        name="state",
    ),
    sa.Index(None, "state", "not_before"),
    sa.Index(None, "customer_id", "created_at"),
    sa.Index(None, "provider_message_id"),
)

# Addresses we must never mail again, by SHA-256 of the normalised address: the list
# survives erasure of the customer without keeping the address itself.
suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("email_hash", sa.String(64), primary_key=True),
    sa.Column("reason", sa.String(32), nullable=False),  # bounce | complaint | unsubscribe | …
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# Delivered, bounced, complained, opened, clicked, unsubscribed: one row per event, the
# provider's event id (or a digest of the payload) makes webhook retries harmless.
contact_events = sa.Table(
    "contact_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("event_key", sa.String(200), nullable=False, unique=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("customer_id", sa.String(64)),
    sa.Column("campaign", sa.String(100)),
    sa.Column("send_key", sa.String(200)),
    sa.Column("provider", sa.String(32), nullable=False),
    sa.Column("at", UtcDateTime, nullable=False),
    sa.Column("details", sa.JSON, nullable=False),
    sa.Index(None, "customer_id", "at"),
    sa.Index(None, "campaign", "kind"),
)

# A campaign whose error rate passed [esp] pause_error_rate stops delivering until resumed.
campaign_pauses = sa.Table(
    "campaign_pauses",
    metadata,
    sa.Column("campaign", sa.String(100), primary_key=True),
    sa.Column("paused_at", UtcDateTime, nullable=False),
    sa.Column("reason", sa.String(1000), nullable=False),
)

# --- worker (migration 0004) ---------------------------------------------------------------

# Every job run and campaign run of every worker: the history behind `recocamp runs list`.
# A campaign run keeps the instant it decided for (``as_of``): a run cut short by a crash or
# a shutdown is resumed with the same instant, hence the same run key and send keys.
RUN_STATUSES = ("running", "ok", "error", "skipped", "interrupted")
runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("job", sa.String(200), nullable=False),  # train | campaign:winback | …
    sa.Column("worker", sa.String(200), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("finished_at", UtcDateTime),
    sa.Column("as_of", UtcDateTime),
    sa.Column("run_key", sa.String(200)),
    sa.Column("counts", sa.JSON, nullable=False),
    sa.Column("error", sa.String(2000)),
    sa.Column("resumed_from", sa.BigInteger().with_variant(sa.Integer, "sqlite")),
    # wall-clock duration (the worker's clock, hence started/finished, may be simulated)
    sa.Column("seconds", sa.Float),
    sa.CheckConstraint(
        "status IN ('running', 'ok', 'error', 'skipped', 'interrupted')", name="status"
    ),
    sa.Index(None, "job", "started_at"),
    sa.Index(None, "status"),
    sa.Index(None, "resumed_from"),  # the resume leaves out runs resumed already (0021)
)

# Running workers: a heartbeat each, and since when one of them is the scheduling leader.
workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(200), primary_key=True),  # host:pid:nonce
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False),
    sa.Column("heartbeat_at", UtcDateTime, nullable=False),
    sa.Column("leader_since", UtcDateTime),
    sa.Column("stopped_at", UtcDateTime),
)

# APScheduler 3's SQLAlchemyJobStore table, declared here so that migrations (not the
# library) create it: the persistent job store of the scheduling worker (`scheduler`).
apscheduler_jobs = sa.Table(
    "apscheduler_jobs",
    metadata,
    sa.Column("id", sa.Unicode(191), primary_key=True),
    sa.Column("next_run_time", sa.Float(25)),
    sa.Column("job_state", sa.LargeBinary, nullable=False),
    sa.Index(None, "next_run_time"),
)

# --- shop API and privacy (migration 0005) -------------------------------------------------

# One row per erased customer (GDPR Art. 17), holding nothing that identifies them: when,
# through which channel and how many rows of each table were removed or anonymised. The
# row's id names the anonymous stand-in (``erased-<id>``) left in tables that keep
# non-identifying aggregates (decisions, outbox, audit log). The top-N cache is rebuilt
# without anybody erased after a model's training began (see ``store.registry.make_live``).
erasures = sa.Table(
    "erasures",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("erased_at", UtcDateTime, nullable=False),
    sa.Column("via", sa.String(64), nullable=False),  # api | cli | preferences page
    sa.Column("rows", sa.JSON, nullable=False),  # {"table": rows changed, ...}
    sa.Index(None, "erased_at"),
)

# What keeps an erased customer from coming back through a feed (migration 0009): keyed
# hashes (HMAC-SHA256 under RECOCAMP_SIGNING_KEY) of their id and address, no personal data.
tombstones = sa.Table(
    "tombstones",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("email_hash", sa.String(64)),
    sa.Column("erased_at", UtcDateTime, nullable=False),
    sa.Index(None, "email_hash"),
)

# The keys erasure hashes (tombstones, id_erasures) were made under (migration 0022), by
# fingerprint (tokens.key_fingerprint), never the key: a store holding hashes under a key no
# longer configured refuses rather than let erased customers back (store.tombstones).
# recorded_at: the first erasure under it; NULL: assumed for the hashes of before 0022.
tombstone_keys = sa.Table(
    "tombstone_keys",
    metadata,
    sa.Column("key_id", sa.String(16), primary_key=True),
    sa.Column("recorded_at", UtcDateTime),
)

# The latest erasure of every customer id (migration 0014): the keyed hash of the id and the
# time. Unlike its tombstone, it stays when a new sign-up brings the id back: a link (signed
# token) issued before it belongs to the erased record and must not reach the new one.
id_erasures = sa.Table(
    "id_erasures",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("erased_at", UtcDateTime, nullable=False),
)

# --- measure (migration 0006) --------------------------------------------------------------

# One row per shop-local day and KPI window W: the KPIs of the window ending at the end of
# that day (kpis.compute as of the next local midnight). Written once per day by the daily
# snapshot job, or for past days by `recocamp snapshots backfill`.
kpi_snapshots = sa.Table(
    "kpi_snapshots",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("window_days", sa.Integer, primary_key=True),
    sa.Column("as_of", UtcDateTime, nullable=False),
    sa.Column("orders", sa.Integer, nullable=False),
    sa.Column("customers", sa.Integer, nullable=False),
    sa.Column("guest_orders", sa.Integer, nullable=False),
    sa.Column("purchase_frequency", sa.Float),
    sa.Column("average_order_value", sa.Float),
    sa.Column("repeat_purchase_rate", sa.Float),
    sa.Column("guest_checkout_rate", sa.Float),
    sa.Column("churn_rate", sa.Float),
    sa.Column("clv", sa.Float),
    sa.Column("computed_at", UtcDateTime, nullable=False),
)

# RFM segment sizes at the end of each snapshot day (customers with an order before then).
segment_snapshots = sa.Table(
    "segment_snapshots",
    metadata,
    sa.Column("day", sa.Date, primary_key=True),
    sa.Column("segment", sa.String(32), primary_key=True),
    sa.Column("customers", sa.Integer, nullable=False),
    sa.Column("computed_at", UtcDateTime, nullable=False),
)

# NPS answers: one per customer and survey (campaign/shop-local day of the mailing); the
# first answer stands, repeats change nothing.
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("survey", sa.String(200), nullable=False),
    sa.Column("campaign", sa.String(100), nullable=False),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("score", sa.Integer, nullable=False),
    sa.Column("comment", sa.String(2000)),
    sa.Column("answered_at", UtcDateTime, nullable=False),
    sa.UniqueConstraint("survey", "customer_id"),
    sa.CheckConstraint("score >= 0 AND score <= 10", name="score"),
    sa.Index(None, "answered_at"),
    sa.Index(None, "customer_id"),
)

# Rendered HTML reports (zlib), newest served at /reports/latest; a few are kept.
reports = sa.Table(
    "reports",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("as_of", UtcDateTime, nullable=False),
    sa.Column("html", sa.LargeBinary, nullable=False),
    sa.Column("summary", sa.JSON, nullable=False),
    sa.Index(None, "created_at"),
)

# --- forecasts (migration 0011) ------------------------------------------------------------

# The stored per-customer forecasts: one version (the newest; each training replaces the
# previous one in a single transaction) and one row per profiled customer. ``chosen_on``
# holds the time split the live forecaster was chosen on (``forecast-evaluate``'s JSON
# ``models``, with its cutoff), null when the history was too short for one.
forecast_versions = sa.Table(
    "forecast_versions",
    metadata,
    sa.Column("version", sa.String(100), primary_key=True),
    sa.Column("model", sa.String(32), nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),  # shop-local midnight; history before it
    sa.Column("horizon_days", sa.Integer, nullable=False),
    sa.Column("lifetime_days", sa.Integer, nullable=False),
    sa.Column("customers", sa.Integer, nullable=False),
    sa.Column("chosen_on", sa.JSON),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

forecasts = sa.Table(
    "forecasts",
    metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("version", sa.String(100), primary_key=True),
    sa.Column("expected_purchase_days", sa.Float, nullable=False),
    sa.Column("p_active", sa.Float, nullable=False),
    sa.Column("churn_risk", sa.String(8), nullable=False),
    sa.Column("expected_revenue", sa.Float, nullable=False),
    sa.Column("lifetime_value", sa.Float, nullable=False),
    sa.Column("next_purchase_by", sa.Date),
    sa.Column("overdue_ratio", sa.Float),
    sa.CheckConstraint("churn_risk IN ('low', 'medium', 'high')", name="churn_risk"),
)

# --- forecast tiers and checkpoints (migration 0012) ---------------------------------------

# Customers per churn-risk tier of every forecast version ever stored (the versions' rows go
# when the next one replaces them; these counts stay for the report's distribution over time).
# Aggregate counts only: an erasure or objection later leaves them as they were.
# ``predictions_kept``: the version's expected purchase days are in forecast_checkpoints.
forecast_tiers = sa.Table(
    "forecast_tiers",
    metadata,
    sa.Column("version", sa.String(100), primary_key=True),
    sa.Column("model", sa.String(32), nullable=False),
    sa.Column("as_of", sa.Date, nullable=False),
    sa.Column("horizon_days", sa.Integer, nullable=False),
    sa.Column("low", sa.Integer, nullable=False),
    sa.Column("medium", sa.Integer, nullable=False),
    sa.Column("high", sa.Integer, nullable=False),
    sa.Column("predictions_kept", sa.Boolean, nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
)

# The expected purchase days of a version kept until its horizon has ended and the report has
# judged it (see store.forecasts.replace: one version per horizon, the open one and the last
# closed one). Per customer, so profiling: objection and erasure remove the customer's rows.
forecast_checkpoints = sa.Table(
    "forecast_checkpoints",
    metadata,
    sa.Column("version", sa.String(100), primary_key=True),
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("expected_purchase_days", sa.Float, nullable=False),
)

# --- serving changes (migration 0013) ------------------------------------------------------

# Which customers' next-best offers a commit changed (NULL: everybody, a model went live),
# written by triggers in the writing transaction whoever writes (``store.notifications``).
# SQLite only: ``seq`` grows in commit order and serving processes read the rows after the
# last one they saw; on PostgreSQL the triggers NOTIFY instead and the table stays empty.
serving_changes = sa.Table(
    "serving_changes",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("customer_id", sa.String(64)),
)

# --- engagement events (migration 0015) ----------------------------------------------------

# What a customer did that earns loyalty points besides buying (``campaigns.loyalty``): one
# row per event the shop reports, keyed by the shop's own id of it within its kind (a
# review's id), written by ``POST /v1/events/reviews`` (``store.engagement``). Kinds:
# ``review``. No foreign key to customers, as for purchases: feeds arrive in any order.
# Personal data (tied to the customer by ``customer_id``): exported with them, deleted by
# their erasure. ``recorded_at``: when the store took it (the event's own time is
# ``occurred_at``).
engagement_events = sa.Table(
    "engagement_events",
    metadata,
    sa.Column("kind", sa.String(32), primary_key=True),
    sa.Column("event_id", sa.String(64), primary_key=True),
    sa.Column("customer_id", sa.String(64), nullable=False),
    sa.Column("occurred_at", UtcDateTime, nullable=False),
    sa.Column("recorded_at", UtcDateTime, nullable=False),
    sa.Index(None, "customer_id", "occurred_at"),
)

# --- purchase totals (migration 0016) ------------------------------------------------------

# Per customer, how many purchase lines name them and the sum of those lines' ids, kept by
# triggers in the writing transaction whoever writes (insert, delete, a line moved between
# customers or unlinked, as an erasure does); no row for a customer without lines. What
# ``store.serving.customer_lines`` compares a kept history with, from one indexed row instead
# of a scan of all the customer's lines (a big buyer's thousands, at every purchase event).
# Tied to the customer by ``customer_id``: exported with them, deleted by their erasure.
purchase_totals = sa.Table(
    "purchase_totals",
    metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("lines", sa.BigInteger, nullable=False),
    sa.Column("id_sum", sa.BigInteger, nullable=False),
)

# --- shared re-scored lists (migration 0017) -----------------------------------------------

# A customer's personal list re-scored from their history at request time
# (``recommender.serving.personal_list``), written by the serving process that computed it
# so that the others read it instead of re-scoring (``api.offer_cache``): for the live model
# ``model_version`` and the history whose purchase lines had these totals
# (``purchase_totals``: ``lines``, ``id_sum``) and highest id ``last_id``; any other model or
# history makes it unused, as do other settings shaping the list (``shaped_by``: its length
# and time decay, which processes configured differently during a rolling change may not
# share). Personal data (the customer's list): exported with them, deleted
# by their erasure and their objection to profiling.
offer_lists = sa.Table(
    "offer_lists",
    metadata,
    sa.Column("customer_id", sa.String(64), primary_key=True),
    sa.Column("model_version", sa.String(100), nullable=False),
    sa.Column("shaped_by", sa.String(100), nullable=False),
    sa.Column("lines", sa.BigInteger, nullable=False),
    sa.Column("id_sum", sa.BigInteger, nullable=False),
    sa.Column("last_id", sa.BigInteger, nullable=False),
    sa.Column("items", sa.Text, nullable=False),  # JSON: [[item_id, score], …], best first
    sa.Column("computed_at", UtcDateTime, nullable=False),
    # JSON: the model's ranking without the customer's items that pads a short discover list
    # (``api.offer_cache.Basis.padded``), with the identity of the list it belongs to
    # (migration 0019: a process that does not know the column rewrites the row without it)
    sa.Column("padding", sa.Text, nullable=True),
)
