"""The model registry and the top-N recommendation cache.

Exactly one model is ``live`` at a time; promoting retires the previous one, and the cache
always holds the live model's lists only (written in the same transaction as the switch).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from recocamp.store import queries
from recocamp.store.locks import lock_key
from recocamp.store.schema import (
    customers,
    erasures,
    model_promotions,
    models,
    purchases,
    recommendations,
)

Ranked = list[list[Any]]  # [[item_id, score], ...]


def live(connection: sa.Connection) -> sa.Row[Any] | None:
    return connection.execute(sa.select(models).where(models.c.status == "live")).first()


def live_version(connection: sa.Connection) -> str | None:
    """The live model's version alone (the worker reads it every poll for its metric)."""
    query = sa.select(models.c.version).where(models.c.status == "live")
    return connection.execute(query).scalar()


def get(connection: sa.Connection, version: str) -> sa.Row[Any] | None:
    return connection.execute(sa.select(models).where(models.c.version == version)).first()


def with_fingerprint(connection: sa.Connection, fingerprint: str, name: str) -> sa.Row[Any] | None:
    query = sa.select(models).where(models.c.fingerprint == fingerprint, models.c.name == name)
    return connection.execute(query.order_by(models.c.trained_at.desc()).limit(1)).first()


def listing(connection: sa.Connection) -> list[sa.Row[Any]]:
    return list(connection.execute(sa.select(models).order_by(models.c.trained_at.desc())))


def previous_live(connection: sa.Connection) -> sa.Row[Any] | None:
    """The rollback target: the model live before the current one went live, not counting
    switches undone by a rollback since (after A → B → C, rollback goes to B, then to A)."""
    history = connection.execute(
        sa.select(model_promotions.c.version, model_promotions.c.via).order_by(
            model_promotions.c.id
        )
    )
    live_ones = live_stack([(str(version), str(via)) for version, via in history])
    return get(connection, live_ones[-2]) if len(live_ones) > 1 else None


def live_stack(history: Iterable[tuple[str, str]]) -> list[str]:
    """The live models that rollbacks would return to, oldest first, the live one last:
    the promotions ``(version, via)`` replayed like an undo stack. A promotion (``train``,
    ``promote``) puts its model on top (once: promoting the live model again changes
    nothing); a ``rollback`` takes the model it left off and leaves its target on top."""
    stack: list[str] = []
    for version, via in history:
        if via == "rollback" and stack:
            stack.pop()
        if not stack or stack[-1] != version:
            stack.append(version)
    return stack


def artifact_paths(connection: sa.Connection) -> list[str]:
    """Where every registered model keeps (or kept) its artifacts."""
    return list(connection.execute(sa.select(models.c.path)).scalars())


def artifact_models(connection: sa.Connection) -> list[tuple[str, str, str]]:
    """``(version, status, artifact path)`` of every registered model, oldest first."""
    query = sa.select(models.c.version, models.c.status, models.c.path)
    return [tuple(row) for row in connection.execute(query.order_by(models.c.trained_at))]


def kept_artifact_paths(connection: sa.Connection) -> set[str]:
    """The artifact paths that must still exist: candidate and live models, and the
    rollback target (the retention purge deletes only other retired or rejected ones)."""
    query = sa.select(models.c.path).where(models.c.status.in_(("candidate", "live")))
    kept = set(connection.execute(query).scalars())
    previous = previous_live(connection)
    return kept | ({previous.path} if previous is not None else set())


def retired_before(connection: sa.Connection, before: datetime) -> list[tuple[str, str]]:
    """``(version, artifact path)`` of retired or rejected models trained before ``before``."""
    query = sa.select(models.c.version, models.c.path).where(
        models.c.status.in_(("retired", "rejected")), models.c.trained_at < before
    )
    return [(row.version, row.path) for row in connection.execute(query)]


def register(connection: sa.Connection, **values: Any) -> None:
    connection.execute(sa.insert(models).values(**values))


def set_status(connection: sa.Connection, version: str, status: str) -> None:
    connection.execute(sa.update(models).where(models.c.version == version).values(status=status))


_MODELS_LOCK = lock_key("model registry")


def lock_models(connection: sa.Connection) -> None:
    """Serialise whoever switches the live model (a training's promotion, ``models promote``,
    ``rollback``) until the transaction ends; the statements after it see every switch
    committed before. PostgreSQL: a transaction advisory lock (without it, two switches at
    once each retired only the model their snapshot saw live, and both stayed live, the
    cache holding both models' lists). SQLite: an UPDATE that changes nothing takes the
    database's write lock, which the driver's transaction holds to its end."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(_MODELS_LOCK)))
        return
    connection.execute(sa.update(models).where(sa.false()).values(status=models.c.status))


def encoded(cache: Iterable[tuple[str, Ranked]]) -> list[tuple[str, str]]:
    """The cache's lists scored and written as JSON text, ready for :func:`make_live`, before
    its transaction: scoring a million customers takes half a minute, and done inside it on
    SQLite, the write lock was held all that time, so purchase events and imports waiting
    for it failed after the busy timeout (10 s) every night the model was retrained."""
    return [(customer_id, _json(ranked)) for customer_id, ranked in cache]


def make_live(
    connection: sa.Connection,
    version: str,
    now: datetime,
    cache: Iterable[tuple[str, Ranked | str]],
    via: str = "promote",
) -> int:
    """Retire the live model, make ``version`` live, record the switch (``via``: train,
    promote or rollback; see ``previous_live``) and replace the cache (lists, or their JSON
    text from :func:`encoded`); returns rows."""
    lock_models(connection)
    connection.execute(sa.update(models).where(models.c.status == "live").values(status="retired"))
    connection.execute(
        sa.update(models).where(models.c.version == version).values(status="live", promoted_at=now)
    )
    connection.execute(
        sa.insert(model_promotions).values(version=version, promoted_at=now, via=via)
    )
    connection.execute(sa.delete(recommendations))
    sql, row_of = _cache_insert(connection)
    written = 0
    lists = iter(cache)
    while batch := list(itertools.islice(lists, 5000)):
        rows = [
            row_of((customer_id, version, ranked if isinstance(ranked, str) else _json(ranked)))
            for customer_id, ranked in batch
        ]
        connection.exec_driver_sql(sql, rows)
        written += len(rows)
    # an older model's artifacts may still know people who objected or were erased since
    before = _count(connection)
    queries.drop_unprofiled_recommendations(connection)
    _drop_erased_since_training(connection, version)
    return written - (before - _count(connection))


def _json(ranked: Ranked) -> str:
    """A cached list as JSON text: orjson, 7x faster than the column type's ``json.dumps``
    (a million lists: 20 s of the cache's write); read back, the same lists."""
    return orjson.dumps(ranked).decode()


def _cache_insert(connection: sa.Connection) -> tuple[str, Callable[[tuple[str, ...]], Any]]:
    """The cache's INSERT compiled once, and what turns ``(customer_id, model_version,
    items)`` into the driver's parameters (a tuple in placeholder order, or a dict): the
    driver's executemany straight away, as SQLAlchemy's per-row parameter processing cost
    more than the database's insert (a million rows: 10 of 20 s)."""
    insert = sa.insert(recommendations).values(
        customer_id=sa.bindparam("customer_id", type_=sa.String),
        model_version=sa.bindparam("model_version", type_=sa.String),
        items=_encoded_json(connection),
    )
    compiled = insert.compile(dialect=connection.dialect)
    names = ("customer_id", "model_version", "items")
    if compiled.positiontup:
        pick = operator.itemgetter(*(names.index(name) for name in compiled.positiontup))
        return str(compiled), pick
    return str(compiled), lambda values: dict(zip(names, values, strict=True))


def _encoded_json(connection: sa.Connection) -> Any:
    """The ``items`` parameter as JSON text already encoded (:func:`_json`): bound as text,
    cast to the column's type on PostgreSQL (SQLite keeps JSON as text; its CAST would
    make it a number)."""
    text = sa.bindparam("items", type_=sa.Text)
    if connection.dialect.name == "sqlite":
        return text
    return sa.cast(text, recommendations.c["items"].type)


def _drop_erased_since_training(connection: sa.Connection, version: str) -> None:
    """A customer erased while this model was training is in its lists (their row is gone,
    so the check above cannot see them); erasure left them no order lines: drop those."""
    trained_at = connection.execute(
        sa.select(models.c.trained_at).where(models.c.version == version)
    ).scalar_one()
    recent = sa.select(erasures.c.id).where(erasures.c.erased_at >= trained_at).limit(1)
    if connection.execute(recent).first() is None:
        return
    has_orders = (
        sa.select(purchases.c.id)
        .where(purchases.c.customer_id == recommendations.c.customer_id)
        .exists()
    )
    connection.execute(sa.delete(recommendations).where(~has_orders))


def _count(connection: sa.Connection) -> int:
    total = sa.select(sa.func.count()).select_from(recommendations)
    return int(connection.execute(total).scalar_one())


_CACHED = sa.select(recommendations).where(
    recommendations.c.customer_id == sa.bindparam("customer_id", type_=sa.String)
)  # built once: the offer API reads it for every re-scored customer


def cached(connection: sa.Connection, customer_id: str) -> sa.Row[Any] | None:
    return connection.execute(_CACHED, {"customer_id": customer_id}).first()


def customer(connection: sa.Connection, customer_id: str) -> sa.Row[Any] | None:
    return connection.execute(sa.select(customers).where(customers.c.id == customer_id)).first()
