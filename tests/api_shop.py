"""A small, really trained shop for the shop API tests, built once per test module and backend
and cloned for every test (SQLite: a file copy; PostgreSQL: ``CREATE DATABASE … TEMPLATE``).

The shop is the synthetic generator's (150 customers, 60 items, 150 days up to
``synthetic.END``), its customers get consent and addresses like the demo's, and the hybrid
model (implicit ALS + item-kNN) is trained on it with the real training pipeline. Requests go
through ``httpx.ASGITransport`` to the real app.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import SecretStr
from typer.testing import CliRunner

from recocamp.api.app import create_app
from recocamp.api.auth import digest
from recocamp.clock import FixedClock
from recocamp.data.synthetic import END, ConsentMix, customer_record, generate_shop
from recocamp.recommender import training
from recocamp.settings import Settings
from recocamp.store import queries
from recocamp.store.engine import make_engine, upgrade
from recocamp.store.schema import models
from tests.conftest import POSTGRES_URL, drop

NOW = datetime(2012, 1, 5, 9, 0, tzinfo=UTC)
OBJECTOR = "10003"
SIGNING_KEY = "s" * 32
KEYS = {  # name → (key, scopes)
    "shop": ("rck_test-shop-offers-and-events-0000000000000", "offers:read,events:write"),
    "dpo": ("rck_test-dpo-privacy-admin-00000000000000000000", "privacy:admin"),
    "reader": ("rck_test-reader-offers-only-0000000000000000000", "offers:read"),
    "all": (
        "rck_test-every-scope-000000000000000000000000000",
        "offers:read,events:write,privacy:admin,reports:read",
    ),
}
ENTRIES = "; ".join(f"{n}={scopes}=sha256:{digest(key).hex()}" for n, (key, scopes) in KEYS.items())


def bearer(name: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name][0]}"}


def cli_on(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> CliRunner:
    """A CLI runner on the shop's database (signing key set, no settings file), run from
    ``tmp_path``."""
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", SIGNING_KEY)
    monkeypatch.delenv("RECOCAMP_SETTINGS", raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def second_model(engine: sa.Engine, settings: Settings, *, live: bool = True) -> str:
    """Train an item-kNN model beside the shop's (a day later, data to three days before
    ``NOW``): a second version to promote or roll back to. ``live``: promote it if training
    did not (it is not clearly better than the first, so the gate may keep the first)."""
    result = training.train(
        engine,
        settings.recommender,
        now=NOW + timedelta(days=1),
        as_of=NOW - timedelta(days=3),
        name="item_knn",
    )
    if live and result.outcome != "promoted":
        training.promote(engine, settings.recommender, str(result.version), NOW)
    return str(result.version)


def settings_for(artifacts: Path, **api: Any) -> Settings:
    base = Settings()
    recommender = base.recommender.model_copy(
        update={
            "artifacts_dir": artifacts,
            "factors": 8,
            "iterations": 5,
            "top_n": 10,
            "evaluation_horizon_days": 30,
            "use_gpu": "false",
        }
    )
    return base.model_copy(
        update={
            "recommender": recommender,
            "api": base.api.model_copy(update=api),
            "api_keys": SecretStr(ENTRIES),
            "signing_key": SecretStr(SIGNING_KEY),
            "webhook_secret": SecretStr("hook-secret"),
        }
    )


@dataclass(frozen=True)
class Template:
    backend: str
    url: str
    artifacts: Path


def build_template(backend: str, directory: Path) -> Iterator[Template]:
    """Create, fill and train the template shop; drop it afterwards."""
    if backend == "postgresql" and not POSTGRES_URL:
        pytest.skip("PostgreSQL: set RECOCAMP_TEST_POSTGRES_URL (bash .ci/run does)")
    url, name = (f"sqlite:///{directory / 'template.db'}", None)
    if backend == "postgresql":
        name = f"tpl_{uuid.uuid4().hex[:12]}"
        _admin(f'CREATE DATABASE "{name}"')
        url = _url(name)
    engine = make_engine(url)
    try:
        upgrade(engine)
        _fill(engine)
        settings = settings_for(directory / "models")
        result = training.train(engine, settings.recommender, now=NOW, as_of=END, name="hybrid")
        assert result.outcome == "promoted", result
        if backend == "sqlite":
            with engine.connect() as connection:
                connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    yield Template(backend, url, directory / "models")
    if name is not None:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _fill(engine: sa.Engine) -> None:
    generated = generate_shop(seed=3, customers=150, items=60, days=150)
    people = [
        customer_record(cid, country, None, 3, ConsentMix(objected=0.0))
        for cid, country in generated.countries.items()
    ]
    people = [replace(p, objected_to_profiling=p.id == OBJECTOR) for p in people]
    with engine.begin() as connection:
        queries.upsert_items(connection, generated.items, NOW)
        queries.insert_purchases(connection, generated.purchases, None)
        queries.upsert_customers(connection, people, NOW)


def _admin(statement: str) -> None:
    assert POSTGRES_URL is not None
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(statement))
    finally:
        admin.dispose()


def _drop(database: str, check: bool) -> None:
    """``conftest.drop``: a clone's database, dropped after its test."""
    assert POSTGRES_URL is not None
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        drop(admin, database, check)
    finally:
        admin.dispose()


def _url(database: str) -> str:
    assert POSTGRES_URL is not None
    return sa.make_url(POSTGRES_URL).set(database=database).render_as_string(hide_password=False)


def clone(
    template: Template, directory: Path, check: Callable[[], bool] = lambda: True
) -> Iterator[tuple[sa.Engine, Path]]:
    """A private copy of the template shop (database and model artifacts) for one test;
    dropped after it, failing when the test left a connection to it open (unless ``check``
    says not to: the test failed)."""
    artifacts = directory / "models"
    shutil.copytree(template.artifacts, artifacts)
    name = None
    if template.backend == "sqlite":
        shutil.copy(template.url.removeprefix("sqlite:///"), directory / "shop.db")
        url = f"sqlite:///{directory / 'shop.db'}"
    else:
        name = f"t_{uuid.uuid4().hex[:12]}"
        template_name = sa.make_url(template.url).database
        _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}"')
        url = _url(name)
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.update(models).values(
                path=sa.func.replace(models.c.path, str(template.artifacts), str(artifacts))
            )
        )
    try:
        yield engine, artifacts
    finally:
        engine.dispose()
        if name is not None:
            _drop(name, check())


@dataclass(frozen=True)
class Reply:
    status: int
    text: str
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.text)


def call(app: FastAPI, method: str, path: str, **kwargs: Any) -> Reply:
    """One request through httpx's ASGI transport (redirects are not followed)."""
    return _call(app, method, path, True, kwargs)


def answered(app: FastAPI, method: str, path: str, **kwargs: Any) -> Reply:
    """:func:`call`, answered as a server answers an exception the app raises (a 500)
    rather than raising it in the test."""
    return _call(app, method, path, False, kwargs)


def _call(app: FastAPI, method: str, path: str, raising: bool, kwargs: dict[str, Any]) -> Reply:
    async def go() -> Reply:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raising)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop.test") as client:
            response = await client.request(method, path, **kwargs)
            return Reply(response.status_code, response.text, dict(response.headers))

    return asyncio.run(go())


def make_app(
    engine: sa.Engine, artifacts: Path, clock: FixedClock | None = None, **api: Any
) -> FastAPI:
    return create_app(settings_for(artifacts, **api), engine, clock or FixedClock(NOW))


Closing = Callable[[FastAPI], FastAPI]  # the ``closing`` fixture: closes an app after the test


def engine_of(app: FastAPI) -> sa.Engine:
    """The store an app built by :func:`make_app` serves."""
    engine: sa.Engine = app.state.service.engine  # starlette's State holds Any
    return engine


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait for ``condition``: PostgreSQL's notifications arrive on their own thread."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold in time"
        time.sleep(0.01)


def listening(*apps: FastAPI) -> None:
    """Start the apps' change listeners (PostgreSQL) and wait until they listen."""
    for app in apps:
        app.state.service.start()
    wait_until(lambda: all(app.state.service.trusted for app in apps))
