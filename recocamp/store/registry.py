"""The model registry and the top-N recommendation cache.

Exactly one model is ``live`` at a time; promoting retires the previous one. The cache's
rows are the live model's for its readers (:func:`cached`, ``views``' planning rows): a
switch's lists are written before it, :data:`STAGE_ROWS` rows a transaction, under the new
version (:func:`stage`), the switch makes them the live ones at once, and the rows of the
model it retired are deleted after it, in the same steps (:func:`drop_stale`).
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa

from recocamp.domain import id_forms
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


# Cache rows written (or deleted) per transaction around a switch. Written in the switch's
# own transaction, a million customers' lists held SQLite's write lock for 5 s on a quiet
# machine and 14 s on a busy one, past the 10 s every other writer waits for it
# (``engine.BUSY_TIMEOUT_S``): purchase events, imports and the deliverers' records failed
# every night the model was retrained. 20,000 rows take 0.12–0.17 s (a busy machine).
STAGE_ROWS = 20_000


def stage(
    engine: sa.Engine,
    version: str,
    lists: Iterable[tuple[str, Ranked | str]],
    rows: int = STAGE_ROWS,
) -> int:
    """Write ``version``'s cache before the switch that makes it live (:func:`make_live`
    with no ``cache``): ``rows`` a transaction, so that no writer waits long for SQLite's
    lock, and read from ``lists`` as they are scored (none held all at once). The rows are
    nobody's answer until the switch commits: readers take the live model's rows only. A
    row already there for a customer and ``version`` (the live model promoted again, a
    switch that stopped) is replaced. Rows left by a staging that never switched (a model
    never registered) are deleted first. Returns the rows written."""
    _drop_rows(engine, _unregistered(version), rows)
    written = 0
    chunks = iter(lists)
    while batch := list(itertools.islice(chunks, rows)):
        with engine.begin() as connection:
            sql, row_of = _cache_insert(connection, replacing=True)
            connection.exec_driver_sql(sql, [_row(row_of, version, entry) for entry in batch])
        written += len(batch)
    return written


def drop_stale(engine: sa.Engine, rows: int = STAGE_ROWS) -> int:
    """Delete the cache rows of models registered and not live (the one a switch retired, a
    staged model the registration refused), ``rows`` a transaction; returns how many. A
    model being staged (not registered yet) keeps its rows."""
    registered = sa.select(models.c.version).where(models.c.status != "live")
    return _drop_rows(engine, recommendations.c.model_version.in_(registered), rows)


def _unregistered(version: str) -> sa.ColumnElement[bool]:
    model_version = recommendations.c.model_version
    return sa.and_(model_version != version, model_version.not_in(sa.select(models.c.version)))


def _drop_rows(engine: sa.Engine, which: sa.ColumnElement[bool], rows: int) -> int:
    """Delete the cache rows ``which`` selects, ``rows`` a transaction, in customer order
    from where the last step ended (the primary key's order: each step reads on from there
    instead of past every row it kept). Each step deletes a range of customer ids, up to
    the ``rows``-th such row: binding the step's ids one by one (an IN list of 20,000
    parameters) cost more than the deletes."""
    dropped, after = 0, ""
    customer_id = recommendations.c.customer_id
    while True:
        with engine.begin() as connection:
            page = sa.select(customer_id).where(which, customer_id > after)
            last = connection.execute(page.order_by(customer_id).offset(rows - 1).limit(1)).scalar()
            span = [which, customer_id > after]
            if last is not None:
                span.append(customer_id <= last)
            dropped += connection.execute(sa.delete(recommendations).where(*span)).rowcount
            if last is None:
                return dropped
            after = str(last)


def _row(row_of: Callable[[tuple[str, ...]], Any], version: str, entry: tuple[str, Any]) -> Any:
    customer_id, ranked = entry
    return row_of((customer_id, version, ranked if isinstance(ranked, str) else _json(ranked)))


def make_live(
    connection: sa.Connection,
    version: str,
    now: datetime,
    cache: Iterable[tuple[str, Ranked | str]] | None = None,
    via: str = "promote",
) -> int:
    """Retire the live model, make ``version`` live and record the switch (``via``: train,
    promote or rollback; see ``previous_live``). Its cache: the rows :func:`stage` wrote
    (``cache`` None; :func:`drop_stale` afterwards), or ``cache``'s lists written here in
    place of every row (a small cache: the tests'); returns its rows."""
    lock_models(connection)
    connection.execute(sa.update(models).where(models.c.status == "live").values(status="retired"))
    connection.execute(
        sa.update(models).where(models.c.version == version).values(status="live", promoted_at=now)
    )
    connection.execute(
        sa.insert(model_promotions).values(version=version, promoted_at=now, via=via)
    )
    if cache is not None:
        connection.execute(sa.delete(recommendations))
        sql, row_of = _cache_insert(connection)
        lists = iter(cache)
        while batch := list(itertools.islice(lists, 5000)):
            connection.exec_driver_sql(sql, [_row(row_of, version, entry) for entry in batch])
    # an older model's artifacts may still know people who objected or were erased since
    queries.drop_unprofiled_recommendations(connection)
    _drop_erased_since_training(connection, version)
    return _count(connection, version)


def _json(ranked: Ranked) -> str:
    """A cached list as JSON text: orjson, 7x faster than the column type's ``json.dumps``
    (a million lists: 20 s of the cache's write); read back, the same lists."""
    return orjson.dumps(ranked).decode()


def _cache_insert(
    connection: sa.Connection, replacing: bool = False
) -> tuple[str, Callable[[tuple[str, ...]], Any]]:
    """The cache's INSERT compiled once (``replacing``: one that replaces a row already
    there), and what turns ``(customer_id, model_version, items)`` into the driver's
    parameters (a tuple in placeholder order, or a dict): the driver's executemany straight
    away, as SQLAlchemy's per-row parameter processing cost more than the database's insert
    (a million rows: 10 of 20 s)."""
    values = {
        "customer_id": sa.bindparam("customer_id", type_=sa.String),
        "model_version": sa.bindparam("model_version", type_=sa.String),
        "items": _encoded_json(connection),
    }
    insert: Any = sa.insert(recommendations).values(**values)
    if replacing:
        upsert = queries.upsert_statement(connection, recommendations).values(**values)
        insert = upsert.on_conflict_do_update(
            index_elements=["customer_id", "model_version"],
            set_={"items": upsert.excluded["items"]},
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


def _count(connection: sa.Connection, version: str) -> int:
    total = sa.select(sa.func.count()).where(recommendations.c.model_version == version)
    return int(connection.execute(total).scalar_one())


LIVE_ROWS = (
    recommendations.c.model_version
    == sa.select(models.c.version).where(models.c.status == "live").scalar_subquery()
)  # the cache rows of the live model: the only ones anybody is answered from (see stage)
_CACHED = sa.select(recommendations).where(
    recommendations.c.customer_id == sa.bindparam("customer_id", type_=sa.String), LIVE_ROWS
)  # built once: the offer API reads it for every re-scored customer


def cached(connection: sa.Connection, customer_id: str) -> sa.Row[Any] | None:
    return connection.execute(_CACHED, {"customer_id": customer_id}).first()


def stored_id(connection: sa.Connection, customer_id: str) -> str:
    """The form the customers table holds ``customer_id`` (composed: ``domain.composed``)
    in: itself, else its decomposed form where only that is stored (versions before the API
    composed its ids stored them as given), else itself (a customer not yet known). An ASCII
    id (the usual) is itself, without a query."""
    if customer_id.isascii():
        return customer_id
    forms = id_forms((customer_id,))  # itself first, then its decomposed form
    held = set(
        connection.execute(sa.select(customers.c.id).where(customers.c.id.in_(forms))).scalars()
    )
    return next((form for form in forms if form in held), customer_id)


def customer(connection: sa.Connection, customer_id: str) -> sa.Row[Any] | None:
    return connection.execute(sa.select(customers).where(customers.c.id == customer_id)).first()
