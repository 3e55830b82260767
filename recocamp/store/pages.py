"""The reads of the customer pages behind signed links (``api.pages``): the customer's
language, whether they exist, and what the preferences page says we hold about them."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from recocamp.store.engine import Connection
from recocamp.store.schema import customers, outbox, recommendations


def locale(connection: Connection, customer_id: str) -> str | None:
    """The customer's locale; None for an unknown customer."""
    query = sa.select(customers.c.locale).where(customers.c.id == customer_id)
    found: str | None = connection.execute(query).scalar_one_or_none()
    return found


def email(connection: Connection, customer_id: str) -> str | None:
    """The customer's address; None for none, or an unknown customer."""
    query = sa.select(customers.c.email).where(customers.c.id == customer_id)
    found: str | None = connection.execute(query).scalar_one_or_none()
    return found


def exists(connection: Connection, customer_id: str) -> bool:
    query = sa.select(customers.c.id).where(customers.c.id == customer_id)
    return connection.execute(query).first() is not None


def emails_sent(connection: Connection, customer_id: str) -> tuple[int, datetime | None]:
    """How many e-mails the customer was sent, and when the last one."""
    query = sa.select(sa.func.count(), sa.func.max(outbox.c.sent_at)).where(
        outbox.c.customer_id == customer_id, outbox.c.sent_at.is_not(None)
    )
    count, last = connection.execute(query).one()
    return int(count), last


def has_cached_list(connection: Connection, customer_id: str) -> bool:
    """Whether the live model's cached top-N holds a row for the customer."""
    query = sa.select(recommendations.c.customer_id).where(
        recommendations.c.customer_id == customer_id
    )
    return connection.execute(query).first() is not None
