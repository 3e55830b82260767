"""Alembic environment: the engine comes from recocamp, never from alembic.ini."""

from __future__ import annotations

from alembic import context

from recocamp.store.locks import migrating
from recocamp.store.schema import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    migrating(connection)  # one process at a time: a second waits, then finds it done
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
