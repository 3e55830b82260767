"""purchase totals: per customer, the count and id sum of their purchase lines, kept by triggers

A serving process extends a kept order history by the lines new since (``api.histories``)
only when the customer's line count and id sum equal the kept ones plus the new lines'; it
used to count and add up all the customer's lines for that, at every purchase event, in
every process (a big buyer's thousands). Triggers keep the totals in the writing
transaction instead, whoever writes, and the reader takes them from one row read in the
same statement as the new lines (so one snapshot, on either database):

- a line inserted adds 1 and its id to its customer's row (created at the first line);
- a line deleted, or moved away (an erasure's unlinking, an update of ``customer_id``)
  takes them off; a row left with no line is deleted; a line moved in adds them.

Line ids never change (nothing updates ``purchases.id``). On PostgreSQL the triggers are
per statement (transition tables, as migration 0013's): a copy of many lines costs one
aggregate; writers of one customer's lines wait for each other's commit on their row. On
SQLite they are per row; a big import suspends the insert trigger and adds its lines' totals
in one statement (``store.staging``).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

ADD = (
    "INSERT INTO purchase_totals (customer_id, lines, id_sum) SELECT {customer}, 1, {id} "
    "WHERE {customer} IS NOT NULL ON CONFLICT (customer_id) DO UPDATE SET "
    "lines = lines + 1, id_sum = id_sum + excluded.id_sum; "
)
TAKE = (
    "UPDATE purchase_totals SET lines = lines - 1, id_sum = id_sum - {id} "
    "WHERE customer_id = {customer}; "
    "DELETE FROM purchase_totals WHERE customer_id = {customer} AND lines <= 0; "
)
SQLITE_TRIGGERS = {  # name → (event and condition, body)
    "purchase_totals_insert": (
        "AFTER INSERT ON purchases WHEN NEW.customer_id IS NOT NULL",
        ADD.format(customer="NEW.customer_id", id="NEW.id"),
    ),
    "purchase_totals_delete": (
        "AFTER DELETE ON purchases WHEN OLD.customer_id IS NOT NULL",
        TAKE.format(customer="OLD.customer_id", id="OLD.id"),
    ),
    "purchase_totals_update": (
        "AFTER UPDATE OF customer_id ON purchases WHEN OLD.customer_id IS NOT NEW.customer_id",
        TAKE.format(customer="OLD.customer_id", id="OLD.id")
        + ADD.format(customer="NEW.customer_id", id="NEW.id"),
    ),
}

# PostgreSQL: the totals of the lines leaving ({gone}) and joining ({came}) customers, as
# (customer_id, id) rows of the statement's transition tables
TAKE_PG = """
        UPDATE purchase_totals t SET lines = t.lines - g.lines, id_sum = t.id_sum - g.ids
        FROM (SELECT customer_id, count(*) AS lines, sum(id) AS ids FROM ({gone}) AS l
              GROUP BY customer_id) AS g
        WHERE t.customer_id = g.customer_id;
        DELETE FROM purchase_totals t USING (SELECT DISTINCT customer_id FROM ({gone}) AS l) g
        WHERE t.customer_id = g.customer_id AND t.lines <= 0;"""
ADD_PG = """
        INSERT INTO purchase_totals (customer_id, lines, id_sum)
        SELECT customer_id, count(*), sum(id) FROM ({came}) AS l GROUP BY customer_id
        ORDER BY customer_id  -- every writer locks the rows in one order
        ON CONFLICT (customer_id) DO UPDATE SET lines = purchase_totals.lines + excluded.lines,
            id_sum = purchase_totals.id_sum + excluded.id_sum;"""
MOVED = (
    "SELECT {side}.customer_id, {side}.id FROM old_rows o JOIN new_rows n USING (id) "
    "WHERE o.customer_id IS DISTINCT FROM n.customer_id AND {side}.customer_id IS NOT NULL"
)
TOTALS = """
CREATE FUNCTION recocamp_purchase_totals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN{insert}
    ELSIF TG_OP = 'DELETE' THEN{delete}
    ELSE{update}
    END IF;
    RETURN NULL;
END $$
""".format(
    insert=ADD_PG.format(came="SELECT customer_id, id FROM new_rows WHERE customer_id IS NOT NULL"),
    delete=TAKE_PG.format(
        gone="SELECT customer_id, id FROM old_rows WHERE customer_id IS NOT NULL"
    ),
    update=TAKE_PG.format(gone=MOVED.format(side="o")) + ADD_PG.format(came=MOVED.format(side="n")),
)
REFERENCING = {
    "INSERT": "NEW TABLE AS new_rows",
    "DELETE": "OLD TABLE AS old_rows",
    "UPDATE": "OLD TABLE AS old_rows NEW TABLE AS new_rows",
}
FILL = (
    "INSERT INTO purchase_totals (customer_id, lines, id_sum) SELECT customer_id, count(*), "
    "sum(id) FROM purchases WHERE customer_id IS NOT NULL GROUP BY customer_id"
)


def upgrade() -> None:
    op.create_table(
        "purchase_totals",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("lines", sa.BigInteger(), nullable=False),
        sa.Column("id_sum", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("customer_id", name=op.f("pk_purchase_totals")),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "LOCK TABLE purchases IN SHARE MODE"
        )  # no line written between fill and triggers
        op.execute(TOTALS)
        for event, referencing in REFERENCING.items():
            op.execute(
                f"CREATE TRIGGER purchase_totals_{event.lower()} AFTER {event} ON purchases "
                f"REFERENCING {referencing} FOR EACH STATEMENT "
                f"EXECUTE FUNCTION recocamp_purchase_totals()"
            )
    else:
        for name, (event, body) in SQLITE_TRIGGERS.items():
            op.execute(f"CREATE TRIGGER {name} {event} BEGIN {body}END")
    op.execute(FILL)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for event in REFERENCING:
            op.execute(f"DROP TRIGGER purchase_totals_{event.lower()} ON purchases")
        op.execute("DROP FUNCTION recocamp_purchase_totals()")
    else:
        for name in SQLITE_TRIGGERS:
            op.execute(f"DROP TRIGGER {name}")
    op.drop_table("purchase_totals")
