"""A table added to the schema later (a loyalty-card table a future migration might bring),
tied to customers by id and by address only through its column names: privacy's rules
read ties from the schema, so such a table must be exported, erased and counted as
sharing an address without anyone listing it."""

from __future__ import annotations

import sqlalchemy as sa

from recocamp.store.schema import metadata


def loyalty_cards(engine: sa.Engine) -> tuple[sa.MetaData, sa.Table]:
    """The schema with ``loyalty_cards`` added (its holder's id, a contact address and a
    first name), the table created in ``engine``."""
    later = sa.MetaData()
    for table in metadata.sorted_tables:
        table.to_metadata(later)
    cards = sa.Table(
        "loyalty_cards",
        later,
        sa.Column("card", sa.String(20), primary_key=True),
        sa.Column("holder_customer_id", sa.String(64)),
        sa.Column("contact_email", sa.String(320)),
        sa.Column("first_name", sa.String(100)),
    )
    cards.create(engine)
    return later, cards
