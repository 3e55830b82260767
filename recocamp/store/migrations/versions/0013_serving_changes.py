"""serving changes: which customers' next-best offers a commit changed, for every serving process

Triggers record, in the transaction that makes the change, the customers whose answers it
changes: purchase lines written, moved or deleted; a customer created, deleted, objecting
(or withdrawing) or erased; and "everything" (customer NULL, or ``*``) when a model goes live
or stops being live. Whoever writes (the API, an import, the CLI, the worker), every serving
process learns of it:

- SQLite: rows in ``serving_changes``, ``seq`` increasing in commit order (writers are
  serialised; ``seq`` is the rowid, the newest row is never deleted, so a new row always gets
  a larger one); the trigger keeps the newest ``KEEP`` rows. Readers poll it when ``PRAGMA
  data_version`` moves.
- PostgreSQL: ``NOTIFY recocamp_serving`` from statement triggers, delivered on commit: the
  customer ids, one per line, or ``*`` when they do not fit in a notification.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

KEEP = 100_000  # SQLite: rows of the change log kept; a reader further behind drops everything
LOG = "INSERT INTO serving_changes (customer_id) VALUES ({value}); "
TRIM = "DELETE FROM serving_changes WHERE seq = last_insert_rowid() - 100000; "  # KEEP

SQLITE_TRIGGERS = {  # name → (event and condition, values logged)
    "purchases_insert": (
        "AFTER INSERT ON purchases WHEN NEW.customer_id IS NOT NULL",
        ["NEW.customer_id"],
    ),
    "purchases_delete": (
        "AFTER DELETE ON purchases WHEN OLD.customer_id IS NOT NULL",
        ["OLD.customer_id"],
    ),
    "purchases_update": (
        "AFTER UPDATE OF customer_id ON purchases WHEN OLD.customer_id IS NOT NEW.customer_id",
        ["OLD.customer_id", "NEW.customer_id"],
    ),
    "customers_insert": ("AFTER INSERT ON customers", ["NEW.id"]),
    "customers_delete": ("AFTER DELETE ON customers", ["OLD.id"]),
    "customers_update": (
        "AFTER UPDATE OF objected_to_profiling, erased_at ON customers WHEN "
        "OLD.objected_to_profiling IS NOT NEW.objected_to_profiling OR "
        "OLD.erased_at IS NOT NEW.erased_at",
        ["NEW.id"],
    ),
    "models_insert": ("AFTER INSERT ON models WHEN NEW.status = 'live'", ["NULL"]),
    "models_delete": ("AFTER DELETE ON models WHEN OLD.status = 'live'", ["NULL"]),
    "models_update": (
        "AFTER UPDATE OF status ON models WHEN (OLD.status = 'live') IS NOT (NEW.status = 'live')",
        ["NULL"],
    ),
}

NOTIFY = """
CREATE FUNCTION recocamp_serving_notify(ids text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF ids IS NULL OR ids = '' THEN
        RETURN;
    END IF;
    IF octet_length(ids) > 7000 THEN  -- a notification holds 8000 bytes
        ids := '*';
    END IF;
    PERFORM pg_notify('recocamp_serving', ids);
END $$
"""
# table → (its customer id column, when an update (o)ld → (n)ew changes answers); rows are
# matched on the primary key ``id``
ROWS = {
    "purchases": ("customer_id", "o.customer_id IS DISTINCT FROM n.customer_id"),
    "customers": (
        "id",
        "o.objected_to_profiling IS DISTINCT FROM n.objected_to_profiling OR "
        "o.erased_at IS DISTINCT FROM n.erased_at",
    ),
}
CHANGED = """
CREATE FUNCTION recocamp_{table}_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE ids text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT string_agg(DISTINCT {column}, E'\\n') INTO ids FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT string_agg(DISTINCT {column}, E'\\n') INTO ids FROM old_rows;
    ELSE
        SELECT string_agg(DISTINCT c, E'\\n') INTO ids FROM (
            SELECT o.{column} AS c FROM old_rows o JOIN new_rows n USING (id) WHERE {condition}
            UNION SELECT n.{column} FROM old_rows o JOIN new_rows n USING (id) WHERE {condition}
        ) AS changed;
    END IF;
    PERFORM recocamp_serving_notify(ids);
    RETURN NULL;
END $$
"""
MODELS = """
CREATE FUNCTION recocamp_models_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE live boolean;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT bool_or(status = 'live') INTO live FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT bool_or(status = 'live') INTO live FROM old_rows;
    ELSE
        SELECT bool_or((o.status = 'live') IS DISTINCT FROM (n.status = 'live')) INTO live
        FROM old_rows o JOIN new_rows n USING (version);
    END IF;
    IF live THEN
        PERFORM recocamp_serving_notify('*');
    END IF;
    RETURN NULL;
END $$
"""
REFERENCING = {
    "INSERT": "NEW TABLE AS new_rows",
    "DELETE": "OLD TABLE AS old_rows",
    "UPDATE": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
}


def upgrade() -> None:
    op.create_table(
        "serving_changes",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer, "sqlite"), nullable=False),
        sa.Column("customer_id", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_serving_changes")),
    )
    if op.get_bind().dialect.name == "postgresql":
        _postgresql()
        return
    for name, (event, values) in SQLITE_TRIGGERS.items():
        body = "".join(LOG.format(value=v) + TRIM for v in values)
        if len(values) > 1:  # an update moving lines between customers (or to nobody)
            body = "".join(
                f"INSERT INTO serving_changes (customer_id) SELECT {v} WHERE {v} IS NOT NULL; "
                + TRIM
                for v in values
            )
        op.execute(f"CREATE TRIGGER serving_{name} {event} BEGIN {body}END")


def _postgresql() -> None:
    op.execute(NOTIFY)
    for table, (column, condition) in ROWS.items():
        op.execute(CHANGED.format(table=table, column=column, condition=condition))
    op.execute(MODELS)
    for table in (*ROWS, "models"):
        for event, referencing in REFERENCING.items():
            op.execute(
                f"CREATE TRIGGER serving_{table}_{event.lower()} AFTER {event} ON {table} "
                f"REFERENCING {referencing} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION recocamp_{table}_changed()"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in (*ROWS, "models"):
            for event in REFERENCING:
                op.execute(f"DROP TRIGGER serving_{table}_{event.lower()} ON {table}")
            op.execute(f"DROP FUNCTION recocamp_{table}_changed()")
        op.execute("DROP FUNCTION recocamp_serving_notify(text)")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER serving_{name}")
    op.drop_table("serving_changes")
