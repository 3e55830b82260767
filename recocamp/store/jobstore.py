"""The scheduler's persistent job store: APScheduler 3's ``SQLAlchemyJobStore`` on the
recocamp database (its table, ``apscheduler_jobs``, is declared in :mod:`.schema` so that the
migrations create it)."""

from __future__ import annotations

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore

from recocamp.store.engine import Engine, make_engine


def job_store(engine: Engine) -> tuple[SQLAlchemyJobStore, Engine]:
    """A job store on an engine of its own to the database of ``engine`` (the store disposes
    of its engine when the scheduler detaches it), with that engine: dispose of it yourself
    if the store is never attached."""
    own = make_engine(engine.url.render_as_string(hide_password=False))
    return SQLAlchemyJobStore(engine=own), own
