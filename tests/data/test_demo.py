"""The demo shop built again after an erasure: the erased customer stays out of the store and
out of the files the demo writes (``demo/``), on a real SQLite file."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from recocamp import privacy
from recocamp.data.demo import build_demo
from recocamp.settings import Settings
from recocamp.store.engine import make_engine
from recocamp.store.schema import customers, purchases
from tests.conftest import NOW


def demo_settings(directory: Path) -> Settings:
    base = Settings()
    demo = base.demo.model_copy(
        update={"synthetic_customers": 60, "synthetic_items": 40, "synthetic_days": 60}
    )
    return base.model_copy(
        update={
            "database_url": f"sqlite:///{directory / 'shop.db'}",
            "demo": demo,
            "signing_key": SecretStr("demo-test-signing-key-0123456789"),
        }
    )


def ids_in(path: Path) -> set[str]:
    with path.open(newline="") as file:
        return {row.get("customer_id") or row.get("id") or "" for row in csv.DictReader(file)}


def test_the_demo_built_again_writes_no_line_of_an_erased_customer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``recocamp demo-data`` is documented to change nothing when run again; it generates
    the synthetic shop from its seed and writes ``demo/purchases.csv`` anew. After an erasure
    (which rewrote that file with the customer's lines as guest lines) the second build wrote
    the erased customer's id back into it, line by line: a file recocamp writes named them
    again, though the store kept those lines as guest lines."""
    monkeypatch.chdir(tmp_path)  # erasure cleans demo/ of the current directory
    settings = demo_settings(tmp_path)
    engine = make_engine(settings.database_url)
    demo_dir = Path("demo")
    build_demo(engine, settings, now=NOW, synthetic=True, demo_dir=demo_dir)
    with engine.connect() as connection:
        erased = connection.execute(
            sa.select(sa.func.min(purchases.c.customer_id)).where(
                purchases.c.customer_id.is_not(None)
            )
        ).scalar_one()
        lines = connection.execute(sa.select(sa.func.count()).select_from(purchases)).scalar_one()
    assert privacy.erase(engine, settings, erased, NOW, "test") is not None
    assert erased not in ids_in(demo_dir / "purchases.csv")

    build_demo(engine, settings, now=NOW, synthetic=True, demo_dir=demo_dir)

    assert erased not in ids_in(demo_dir / "purchases.csv")
    assert erased not in ids_in(demo_dir / "customers.csv")
    with engine.connect() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(purchases)).scalar_one()
            == lines
        )
        lines_held = connection.execute(
            sa.select(sa.func.count()).where(purchases.c.customer_id == erased)
        ).scalar_one()
        held = connection.execute(sa.select(customers.c.id).where(customers.c.id == erased))
        assert (lines_held, held.first()) == (0, None)
    engine.dispose()
