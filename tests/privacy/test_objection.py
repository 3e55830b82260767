"""An objection to profiling takes the customer out of every saved model, whichever way it is
recorded (the shop API's PUT, the preferences page, a customers import, an objection already
in the store swept by the worker's train job): their id, their rows of the training matrices
and their user factors are gone from each ``model.npz`` (live and the others), they are
served popularity, and a model whose artifacts cannot be found is named, as erasure names it.
A shop where every buyer objected says so when asked to train."""

from __future__ import annotations

import shutil
import threading
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from recocamp import privacy
from recocamp.cli import app as cli
from recocamp.clock import FixedClock
from recocamp.domain import OutgoingEmail
from recocamp.errors import ModelError
from recocamp.recommender import models as model
from recocamp.recommender import training
from recocamp.store import outbox, registry
from recocamp.store.schema import customers, offer_lists
from recocamp.store.schema import outbox as outbox_table
from recocamp.worker import jobs
from tests.api.test_api_offers import offers
from tests.api.test_preferences import page
from tests.api_shop import NOW, Closing, bearer, call, cli_on, make_app, second_model, settings_for


def two_models(engine: sa.Engine, artifacts: Path) -> list[Path]:
    """The shop's hybrid plus an item-kNN model (live or candidate: either is a profile)."""
    second_model(engine, settings_for(artifacts), live=False)
    with engine.connect() as connection:
        directories = [Path(p) for p in registry.artifact_paths(connection)]
    assert len(directories) == 2
    return directories


def held(directories: list[Path]) -> str:
    """A customer every saved model holds (the smallest id: no luck involved)."""
    return min(set.intersection(*(model.customer_ids(d) for d in directories)))


def rows_by_customer(directory: Path) -> dict[str, int]:
    """Every array of a saved model keyed by customer, and its number of customer rows."""
    with np.load(directory / "model.npz", allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files}
    found = {"customers": len(arrays["customers"])}
    for name in model.PER_CUSTOMER_MATRICES:
        found[f"{name}_shape"] = int(arrays[f"{name}_shape"][0])
        found[f"{name}_indptr"] = len(arrays[f"{name}_indptr"]) - 1
    for name in arrays:
        if name.endswith("user_factors"):
            found[name] = arrays[name].shape[0]
    return found


def assert_removed(directories: list[Path], customer: str, before: dict[Path, int]) -> None:
    for directory in directories:
        assert customer not in model.customer_ids(directory), directory
        rows = rows_by_customer(directory)
        assert set(rows.values()) == {before[directory] - 1}, (directory, rows)


def counts(directories: list[Path]) -> dict[Path, int]:
    return {d: len(model.customer_ids(d)) for d in directories}


def profiled(engine: sa.Engine, artifacts: Path) -> tuple[list[Path], str, dict[Path, int]]:
    """Two saved models, a customer both hold, and each model's customers before."""
    directories = two_models(engine, artifacts)
    return directories, held(directories), counts(directories)


def test_an_objection_through_the_api_removes_the_customer_from_every_saved_model(
    shop: tuple[sa.Engine, Path],
    closing: Closing,
) -> None:
    engine, artifacts = shop
    directories, customer, before = profiled(engine, artifacts)
    app = closing(make_app(engine, artifacts))
    assert offers(app, customer)["basis"] != "popular"
    body = {"objected_to_profiling": True, "source": "account page"}
    reply = call(app, "PUT", f"/v1/customers/{customer}", json=body, headers=bearer("shop"))
    assert reply.status == 200, reply.text
    assert reply.json()["model_artifacts"] == 2 and reply.json()["models_left"] == []
    assert_removed(directories, customer, before)
    answer = offers(app, customer)
    assert answer["basis"] == "popular"
    assert answer["basis_reason"] == "popular: objected to profiling"
    other = call(
        app, "PUT", f"/v1/customers/{customer}", json={"source": "x"}, headers=bearer("shop")
    )
    assert other.json()["model_artifacts"] is None  # no objection in that change


def test_an_objection_on_the_preferences_page_removes_the_customer_from_every_saved_model(
    shop: tuple[sa.Engine, Path],
    closing: Closing,
) -> None:
    engine, artifacts = shop
    directories, customer, before = profiled(engine, artifacts)
    app = closing(make_app(engine, artifacts))
    saved = call(app, "POST", page(customer), data={"action": "save", "objected": "on"})
    assert saved.status == 303 and "saved" in saved.headers["location"], saved.headers
    assert_removed(directories, customer, before)
    assert offers(app, customer)["basis"] == "popular"


def test_an_objection_imported_from_a_customers_file_removes_the_customer_everywhere(
    shop: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closing: Closing
) -> None:
    engine, artifacts = shop
    directories, customer, before = profiled(engine, artifacts)
    runner = cli_on(engine, monkeypatch, tmp_path)
    people = tmp_path / "customers.csv"
    people.write_text(f"id,email,objected_to_profiling\n{customer},,true\n")
    imported = runner.invoke(cli, ["import", "customers", str(people)])
    assert imported.exit_code == 0, imported.output
    assert "removed from 2 saved model(s)" in imported.output
    assert_removed(directories, customer, before)
    app = closing(make_app(engine, artifacts))
    assert offers(app, customer)["basis"] == "popular"


def test_a_live_model_without_artifacts_is_named_as_erasure_names_it(
    shop: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, closing: Closing
) -> None:
    engine, artifacts = shop
    with engine.connect() as connection:
        live = registry.live(connection)
    assert live is not None
    customer = held([Path(live.path)])
    shutil.rmtree(live.path)
    app = closing(make_app(engine, artifacts))
    body = {"objected_to_profiling": True, "source": "account page"}
    reply = call(app, "PUT", f"/v1/customers/{customer}", json=body, headers=bearer("shop"))
    assert reply.status == 200, reply.text
    assert reply.json()["models_left"] == [live.path]
    runner = cli_on(engine, monkeypatch, tmp_path)
    people = tmp_path / "customers.csv"
    people.write_text(f"id,email,objected_to_profiling\n{customer},,true\n")
    imported = runner.invoke(cli, ["import", "customers", str(people)])
    assert imported.exit_code == 1, imported.output
    assert "NOT cleaned" in imported.output and live.path in imported.output.replace("\n", "")


def test_the_train_job_sweeps_objectors_out_of_every_model_also_when_it_skips(
    shop: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An objection recorded without the scrub (before it existed, or while a model was
    being trained): the nightly job removes it though no purchase line arrived."""
    engine, artifacts = shop
    directories, customer, before = profiled(engine, artifacts)
    with engine.begin() as connection:
        connection.execute(
            sa.update(customers)
            .where(customers.c.id == customer)
            .values(objected_to_profiling=True)
        )
    settings = settings_for(artifacts)
    monkeypatch.setattr(jobs, "unchanged_since_last_training", lambda *_: True)
    context = jobs.JobContext(
        settings,
        engine,
        tmp_path,
        FixedClock(NOW),
        threading.Event(),
        None,  # type: ignore[arg-type]  # the train job renders nothing
        None,  # type: ignore[arg-type]
    )
    counted = jobs.train(context, NOW)
    assert counted["outcome"] == "skipped_no_new_data"
    assert counted["objection_models_scrubbed"] == 2
    assert_removed(directories, customer, before)


def test_training_a_shop_where_every_buyer_objected_says_so(
    shop: tuple[sa.Engine, Path],
) -> None:
    engine, artifacts = shop
    with engine.begin() as connection:
        connection.execute(sa.update(customers).values(objected_to_profiling=True))
    with pytest.raises(ModelError) as refused:
        training.train(engine, settings_for(artifacts).recommender, now=NOW + timedelta(days=2))
    message = str(refused.value)
    assert "every customer with purchases objected to profiling" in message
    assert "import purchases first" not in message


def test_unprofile_without_ids_takes_every_objector_out(shop: tuple[sa.Engine, Path]) -> None:
    engine, artifacts = shop
    with engine.connect() as connection:
        live = registry.live(connection)
    assert live is not None
    directory = Path(live.path)
    first, second = sorted(model.customer_ids(directory))[:2]
    with engine.begin() as connection:
        connection.execute(
            sa.update(customers)
            .where(customers.c.id.in_([first, second]))
            .values(objected_to_profiling=True)
        )
    scrub = privacy.unprofile(engine, settings_for(artifacts))
    assert scrub.models == 1 and scrub.clean
    assert not {first, second} & model.customer_ids(directory)


def test_an_objection_imported_from_a_customers_file_drops_the_shared_re_scored_list(
    shop: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The list a serving process re-scored after a purchase and shared with the others
    (``offer_lists``) is the customer's profile as much as the cached one: an objection drops
    both in its transaction. Through the API and the preferences page it did; through a
    customers import the shared list stayed (only the cached list and forecasts went)."""
    engine, artifacts = shop
    customer = held(two_models(engine, artifacts))
    with engine.begin() as connection:
        connection.execute(
            sa.insert(offer_lists).values(
                customer_id=customer,
                model_version="v",
                shaped_by="s",
                lines=1,
                id_sum=1,
                last_id=1,
                items='[["i1", 0.5]]',
                computed_at=NOW,
            )
        )
    runner = cli_on(engine, monkeypatch, tmp_path)
    people = tmp_path / "customers.csv"
    people.write_text(f"id,email,objected_to_profiling\n{customer},,true\n")
    imported = runner.invoke(cli, ["import", "customers", str(people)])
    assert imported.exit_code == 0, imported.output
    with engine.connect() as connection:
        left = connection.execute(sa.select(offer_lists.c.customer_id)).scalars().all()
    assert left == []


def test_an_e_mail_with_offers_claimed_at_the_objection_is_not_sent_after_it(
    closing: Closing, shop: tuple[sa.Engine, Path]
) -> None:
    """An e-mail with offers that a deliverer held when the customer objected was left to
    it, as on its way out; put back for a retry (the provider said 429), it was claimed
    again and sent after the objection. It is cancelled at that claim now."""
    engine, artifacts = shop
    app = closing(make_app(engine, artifacts))
    profile = {
        "source": "checkout",
        "email": "objector@example.test",
        "consent_basis": "double_opt_in",
        "consent_at": (NOW - timedelta(days=30)).isoformat(),
    }
    put = "/v1/customers/objector"
    assert call(app, "PUT", put, json=profile, headers=bearer("shop")).status == 200
    key = "winback/objector/2012-01-04"
    mail = OutgoingEmail(key, "objector@example.test", "For you", "<p>x</p>", "x", (), "winback")
    with engine.begin() as connection:
        outbox.enqueue(connection, [(mail, "objector", None, NOW - timedelta(hours=1))], NOW)
    [claimed] = outbox.claim(engine, "deliverer-1", NOW, 10)
    objection = {"source": "account page", "objected_to_profiling": True}
    assert call(app, "PUT", put, json=objection, headers=bearer("shop")).status == 200
    with engine.begin() as connection:
        outbox.retry_later(
            connection, {claimed.id: 60.0}, {claimed.id: "429"}, NOW, 5, "deliverer-1"
        )
    assert outbox.claim(engine, "deliverer-1", NOW + timedelta(minutes=5), 10) == []
    with engine.connect() as connection:
        row = connection.execute(sa.select(outbox_table.c.state, outbox_table.c.last_error)).one()
    assert tuple(row) == ("cancelled", outbox.PROFILED)
