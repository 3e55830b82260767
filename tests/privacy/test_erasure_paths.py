"""Erasure run from another directory than the settings file's: relative paths in the
settings (and in older registry rows) are relative to the file, so the saved models are
found and scrubbed; a model that should have artifacts but has none is not passed over.
An id in another Unicode form than the request's is the customer's too."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from typer.testing import CliRunner

from recocamp import privacy
from recocamp.api.app import create_app
from recocamp.cli import app as cli
from recocamp.clock import FixedClock
from recocamp.data import profiles
from recocamp.data.drop_folder import import_drop_folder
from recocamp.data.synthetic import END
from recocamp.domain import Purchase
from recocamp.recommender import models as model
from recocamp.recommender import training
from recocamp.settings import Settings
from recocamp.store import queries, registry
from recocamp.store.schema import models, purchases
from tests.api_shop import NOW, SIGNING_KEY, Closing, bearer, call, make_app, settings_for
from tests.privacy.test_privacy import EMAIL, NAME, VICTIM, popular_items


def _site(
    engine: sa.Engine, directory: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[Path], Path]:
    """Settings beside the shop with relative paths, registry rows stored relative (as
    older versions did), and the cwd elsewhere; returns the model directories and the cwd."""
    with engine.begin() as connection:
        connection.execute(
            sa.update(models).values(
                path=sa.func.replace(models.c.path, f"{directory}/", "")  # "models/<version>"
            )
        )
        paths = registry.artifact_paths(connection)
    assert paths and not any(Path(p).is_absolute() for p in paths)
    if engine.dialect.name == "sqlite":
        url = 'database_url = "sqlite:///shop.db"\n'  # relative to the settings file
    else:
        url = ""
        monkeypatch.setenv("RECOCAMP_DATABASE_URL", engine.url.render_as_string(False))
    (directory / "settings.toml").write_text(url + '[recommender]\nartifacts_dir = "models"\n')
    elsewhere = directory / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("RECOCAMP_SETTINGS", raising=False)
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", SIGNING_KEY)
    return [directory / p for p in paths], elsewhere


def _held_customer(directories: list[Path]) -> str:
    """A customer every saved model holds (the smallest id: no luck involved)."""
    held = set.intersection(*(model.customer_ids(d) for d in directories))
    return min(held)


def test_erasure_from_another_directory_scrubs_the_saved_models(
    shop: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _artifacts = shop
    directories, elsewhere = _site(engine, tmp_path, monkeypatch)
    victim = _held_customer(directories)
    erased = CliRunner().invoke(
        cli, ["--settings", "../settings.toml", "privacy", "erase", victim, "--yes"]
    )
    assert erased.exit_code == 0, erased.output
    assert all(victim not in model.customer_ids(d) for d in directories)
    assert list(elsewhere.iterdir()) == []  # no stray database or folder in the cwd


def test_a_live_model_without_artifacts_makes_the_erasure_fail_naming_it(
    shop: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, _artifacts = shop
    directories, _elsewhere = _site(engine, tmp_path, monkeypatch)
    victim = _held_customer(directories)
    with engine.connect() as connection:
        live = registry.live(connection)
    assert live is not None
    moved = tmp_path / live.path
    shutil.rmtree(moved)
    erased = CliRunner().invoke(
        cli, ["--settings", "../settings.toml", "privacy", "erase", victim, "--yes"]
    )
    assert erased.exit_code == 1, erased.output
    assert "NOT cleaned" in erased.output and str(moved) in erased.output.replace("\n", "")


def test_promote_and_rollback_from_another_directory_load_older_relative_models(
    shop: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``models promote``/``rollback`` find a model stored with a relative path beside the
    settings file, as serving and erasure do."""
    engine, _artifacts = shop
    _site(engine, tmp_path, monkeypatch)
    with engine.connect() as connection:
        live = registry.live(connection)
    assert live is not None
    promoted = CliRunner().invoke(
        cli, ["--settings", "../settings.toml", "models", "promote", live.version]
    )
    assert promoted.exit_code == 0, promoted.output
    assert f"{live.version} is live" in promoted.output


def drop_folder_shop(
    closing: Closing, shop: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[sa.Engine, Settings, FastAPI, Path]:
    """The shop's engine, settings, its API and an empty drop folder (files taken at once)."""
    engine, artifacts = shop
    monkeypatch.chdir(tmp_path)  # the default [ingest] folders are relative
    monkeypatch.setattr("recocamp.data.drop_folder.SETTLE_S", 0.0)
    settings = settings_for(artifacts)
    app = closing(create_app(settings, engine, FixedClock(NOW)))
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    return engine, settings, app, incoming


def test_a_refused_customers_file_keeps_no_name_of_an_erased_customer(
    closing: Closing, shop: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A problem with a customer's first name names the line, not the customer: its value
    in the refused file's ``.errors.txt`` (and the run record) was left by their erasure."""
    engine, settings, app, incoming = drop_folder_shop(closing, shop, tmp_path, monkeypatch)
    people = f"id,email,first_name\nkeeper,keeper@example.test,Kim\n{VICTIM},{EMAIL},{NAME}\n"
    (incoming / "customers-1.csv").write_text(people)
    (incoming / "customers-2.csv").write_text(
        f"id,email,first_name\nkeeper,keeper@example.test,Kim\n{VICTIM},{EMAIL},{NAME}{'x' * 300}\n"
    )
    report = import_drop_folder(engine, settings, NOW)  # the second is refused: too long
    assert (report.imported, report.rejected) == (1, 1)
    erased = call(app, "DELETE", f"/v1/privacy/customers/{VICTIM}", headers=bearer("dpo"))
    assert erased.status == 200, erased.text
    rejected = incoming / "rejected"
    assert "keeper" in (rejected / "customers-2.csv").read_text()
    assert all(NAME not in path.read_text() for path in rejected.iterdir())


def test_a_customer_held_only_in_a_refused_file_is_erased_from_it(
    closing: Closing, shop: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused customers file names people the store never took in. Their export shows
    their row there, and their erasure removes it (it answered 404, "we hold no data", and
    left the row) and keeps their id out of the corrected file's import."""
    engine, settings, app, incoming = drop_folder_shop(closing, shop, tmp_path, monkeypatch)
    good = f"id,email,first_name\nkeeper,keeper@example.test,Kim\n{VICTIM},{EMAIL},{NAME}\n"
    (incoming / "customers-1.csv").write_text(good + "broken,b@example.test,,maybe\n")
    assert import_drop_folder(engine, settings, NOW).rejected == 1
    path = f"/v1/privacy/customers/{VICTIM}"
    exported = call(app, "GET", path, headers=bearer("dpo"))
    assert exported.status == 200 and NAME in exported.text, exported.text
    erased = call(app, "DELETE", path, headers=bearer("dpo"))
    assert erased.status == 200, erased.text
    assert erased.json()["files_rewritten"] == 1
    refused = (incoming / "rejected" / "customers-1.csv").read_text()
    assert VICTIM not in refused and "keeper" in refused
    (incoming / "customers-2.csv").write_text(good)  # the corrected file
    assert import_drop_folder(engine, settings, NOW).imported == 1
    assert call(app, "GET", path, headers=bearer("dpo")).status == 404


def test_an_id_in_another_unicode_form_is_exported_and_erased_with_it(
    closing: Closing, shop: tuple[sa.Engine, Path]
) -> None:
    """José's profile came from the shop (his id composed), his orders from another
    system's export (the id decomposed): one customer to a person, as the tombstones have
    it. His export holds those orders, and his erasure unlinks them and takes the row a
    model learnt from them out of it (they stayed his, under the other form: exported and
    profiled after the erasure)."""
    engine, artifacts = shop
    app = closing(make_app(engine, artifacts))
    composed, decomposed = "jos\u00e9-7f3a", "jose\u0301-7f3a"
    profile = {"source": "shop", "email": "jose-7f3a@example.test", "first_name": "José"}
    put = call(app, "PUT", f"/v1/customers/{composed}", json=profile, headers=bearer("shop"))
    assert put.status == 200, put.text
    items = popular_items(engine)[:4]
    orders = [  # stored as given, as versions before ids were composed everywhere did
        Purchase(f"J{n}", line, decomposed, item, 1, 2.5, END - timedelta(days=40 - 10 * n))
        for n in range(3)
        for line, item in enumerate(items[n:], 1)
    ]
    with engine.begin() as connection:
        queries.store_orders(connection, orders, None)
    trained = training.train(
        engine,
        settings_for(artifacts).recommender,
        now=NOW,
        as_of=END + timedelta(days=1),
        name="item_knn",
    )
    with engine.connect() as connection:
        stored = sa.select(models.c.path).where(models.c.version == trained.version)
        directory = Path(connection.execute(stored).scalar_one())
    assert decomposed in model.customer_ids(directory)
    path = f"/v1/privacy/customers/{composed}"
    exported = call(app, "GET", path, headers=bearer("dpo"))
    assert exported.status == 200, exported.text
    held = {row["order_id"] for row in exported.json()["tables"].get("purchases", [])}
    assert held == {"J0", "J1", "J2"}
    assert call(app, "DELETE", path, headers=bearer("dpo")).status == 200
    p = purchases.c
    with engine.connect() as connection:
        linked = connection.execute(
            sa.select(p.customer_id).where(p.order_id.in_(["J0", "J1", "J2"])).distinct()
        ).scalars()
        assert list(linked) == [None]
    assert decomposed not in model.customer_ids(directory)
    assert (
        call(app, "GET", f"/v1/privacy/customers/{decomposed}", headers=bearer("dpo")).status == 404
    )


def test_the_artifacts_a_killed_training_left_unregistered_are_erased_from(
    closing: Closing, shop: tuple[sa.Engine, Path]
) -> None:
    """A training killed (the OOM killer, a power cut: nothing runs its clean-up) between
    writing its model and registering it leaves a model directory the registry does not
    know, holding every customer's rows and factors. The customer's export shows what it
    holds of them and their erasure takes them out of it (it reached registered models
    only: the files stayed, naming the erased customer, for good)."""
    engine, artifacts = shop
    with engine.connect() as connection:
        live = registry.live(connection)
    assert live is not None
    left = artifacts / "hybrid-killed-before-registration"
    shutil.copytree(live.path, left)  # what the killed training wrote: model.npz, meta.json
    victim = min(model.customer_ids(left))
    app = closing(make_app(engine, artifacts))
    path = f"/v1/privacy/customers/{victim}"
    exported = call(app, "GET", path, headers=bearer("dpo"))
    assert exported.status == 200, exported.text
    held = {row.get("version") for row in exported.json()["model_artifacts"]}
    assert left.name in held
    erased = call(app, "DELETE", path, headers=bearer("dpo"))
    assert erased.status == 200 and erased.json()["files_clean"], erased.text
    assert victim not in model.customer_ids(left)
    assert victim not in model.customer_ids(Path(live.path))


def test_the_record_of_the_id_in_its_other_unicode_form_leaves_its_address_erased_too(
    closing: Closing, shop: tuple[sa.Engine, Path]
) -> None:
    """Two records of one id, composed and decomposed (two systems' sign-ups): one id to a
    person, so the erasure takes both records; the address of the other form is erased
    with them (it stayed open: a new account at it was taken, though nothing of the
    record that held it was kept)."""
    engine, artifacts = shop
    app = closing(make_app(engine, artifacts))

    def put(customer_id: str, email: str) -> int:
        profile = {"source": "shop", "email": email}
        path = f"/v1/customers/{customer_id}"
        return call(app, "PUT", path, json=profile, headers=bearer("shop")).status

    assert put("jos\u00e9-2b", "jose-2b@example.test") == 200
    with engine.begin() as connection:  # stored as given, as versions before the API composed
        profiles.apply(
            connection,
            "jose\u0301-2b",
            {"email": "jose-2b@other.example"},
            at=NOW,
            actor="api:shop",
            source="shop",
        )
    erased = call(app, "DELETE", "/v1/privacy/customers/jos\u00e9-2b", headers=bearer("dpo"))
    assert erased.status == 200, erased.text
    assert put("new-2b", "jose-2b@other.example") == 410
    assert put("new-2c", "jose-2b@example.test") == 410


def test_the_purge_removes_a_killed_trainings_model_once_retired_models_would_go(
    shop: tuple[sa.Engine, Path],
) -> None:
    """A model a killed training left unregistered holds every customer's rows and factors
    as a retired model does, and goes as one does: ``retired_model_days`` after it was
    trained (its ``meta.json``). It was kept for good. One trained since stays (a training
    under way writes its own like it)."""
    engine, artifacts = shop
    settings = settings_for(artifacts)
    with engine.connect() as connection:
        live = registry.live(connection)
    assert live is not None
    old, new = artifacts / "hybrid-killed-long-ago", artifacts / "hybrid-killed-just-now"
    for left in (old, new):
        shutil.copytree(live.path, left)
    meta = json.loads((new / "meta.json").read_text())
    later = NOW + timedelta(days=settings.privacy.retired_model_days + 1)
    (new / "meta.json").write_text(json.dumps(meta | {"trained_at": later.isoformat()}))
    report = privacy.purge(engine, settings, later)
    assert not old.exists() and new.exists() and Path(live.path).exists()
    assert report.model_artifacts == 1
