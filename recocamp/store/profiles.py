"""Customer profiles as ``data.profiles`` changes them: one customer's row, created or
updated field by field, and the re-subscribe that lifts an unsubscribe's suppression.

Every function takes the caller's connection: one profile change (the row, its audit entry,
an unsubscribe or re-subscribe) is one transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa

from recocamp.domain import email_hashes, id_forms
from recocamp.store.schema import (
    audit_log,
    customers,
    forecast_checkpoints,
    forecasts,
    offer_lists,
    recommendations,
    suppressions,
)


class Subscription(NamedTuple):
    """Whether and when a customer unsubscribed, and the address the suppression hashes."""

    unsubscribed_at: datetime | None
    email: str | None


def profile(connection: sa.Connection, customer_id: str) -> dict[str, Any] | None:
    """The customer's row by column name, or None for a customer not known yet."""
    row = connection.execute(sa.select(customers).where(customers.c.id == customer_id)).first()
    return None if row is None else dict(row._mapping)


def last_changed(connection: sa.Connection, customer_id: str) -> dict[str, datetime]:
    """When each of the customer's fields was last changed (the time the change gives, as
    ``data.profiles.apply`` audits it), by the audit log, the one record of it. A customer's
    entries are few: read whole, the JSON looked into here, the same on every database."""
    a = audit_log.c
    query = sa.select(a.at, a.details).where(
        a.subject_type == "customer",
        a.subject_id == customer_id,
        a.action.in_(("customer_created", "customer_changed")),
    )
    latest: dict[str, datetime] = {}
    for at, details in connection.execute(query):
        fields = details.get("fields", []) if isinstance(details, dict) else []
        for name in fields if isinstance(fields, list) else []:
            if isinstance(name, str) and (name not in latest or at > latest[name]):
                latest[name] = at
    return latest


def create(
    connection: sa.Connection, customer_id: str, values: Mapping[str, Any], at: datetime
) -> None:
    """A new customer with ``values`` (columns left out keep their defaults)."""
    connection.execute(sa.insert(customers).values(id=customer_id, updated_at=at, **values))


def update(
    connection: sa.Connection, customer_id: str, values: Mapping[str, Any], at: datetime
) -> None:
    connection.execute(
        sa.update(customers).where(customers.c.id == customer_id).values(updated_at=at, **values)
    )


def drop_personal_list(connection: sa.Connection, customer_id: str) -> None:
    """Forget the customer's cached recommendations, the serving processes' shared
    re-scored list, and stored forecasts, those kept to judge a past horizon too (an
    objection to profiling)."""
    connection.execute(
        sa.delete(recommendations).where(recommendations.c.customer_id == customer_id)
    )
    connection.execute(sa.delete(offer_lists).where(offer_lists.c.customer_id == customer_id))
    connection.execute(sa.delete(forecasts).where(forecasts.c.customer_id == customer_id))
    connection.execute(
        sa.delete(forecast_checkpoints).where(forecast_checkpoints.c.customer_id == customer_id)
    )


def subscription(connection: sa.Connection, customer_id: str) -> Subscription | None:
    row = connection.execute(
        sa.select(customers.c.unsubscribed_at, customers.c.email).where(
            customers.c.id == customer_id
        )
    ).first()
    return None if row is None else Subscription(row.unsubscribed_at, row.email)


def resubscribe(
    connection: sa.Connection, customer_id: str, email: str | None, at: datetime
) -> None:
    """Clear ``unsubscribed_at`` and lift the unsubscribe's suppression of ``email`` (bounces
    and complaints stay suppressed)."""
    connection.execute(
        sa.update(customers)
        .where(customers.c.id == customer_id)
        .values(unsubscribed_at=None, updated_at=at)
    )
    if email:
        connection.execute(
            sa.delete(suppressions).where(
                suppressions.c.email_hash.in_(email_hashes(email)),
                suppressions.c.reason == "unsubscribed",
            )
        )


def objected_ids(connection: sa.Connection) -> list[str]:
    """Every customer who objected to profiling, in every Unicode form of their id
    (``domain.id_forms``: lines stored under another form were learnt as theirs), in order:
    the saved models must hold none of them (``privacy.objection``, ``training``)."""
    query = sa.select(customers.c.id).where(customers.c.objected_to_profiling.is_(True))
    return sorted(id_forms(str(row) for row in connection.execute(query).scalars()))
