"""A damaged model file (empty, truncated, a missing array) is one clear ``ModelError``
naming the directory and the reason, wherever it is read: the shop API starts, serves
popularity and says not ready (503, the reason) while the live model cannot be loaded; the
commands exit 1 with one line, no traceback."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from recocamp.cli import app as cli
from recocamp.errors import ModelError
from recocamp.recommender import models as model
from recocamp.store import registry
from tests.api.test_api_offers import cached_customer, offers
from tests.api_shop import Closing, call, cli_on, make_app, second_model, settings_for


def live_directory(engine: sa.Engine) -> Path:
    with engine.connect() as connection:
        live = registry.live(connection)
    assert live is not None
    return Path(live.path)


def empty(directory: Path) -> None:
    (directory / "model.npz").write_bytes(b"")


def truncated(directory: Path) -> None:
    path = directory / "model.npz"
    path.write_bytes(path.read_bytes()[:1000])


def without_customers(directory: Path) -> None:
    path = directory / "model.npz"
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in stored.files if name != "customers"}
    with path.open("wb") as handle:
        np.savez(handle, allow_pickle=False, **arrays)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [(empty, "EOFError"), (truncated, "BadZipFile"), (without_customers, "KeyError")],
)
def test_every_damaged_file_is_one_model_error_naming_where_and_why(
    shop: tuple[sa.Engine, Path], damage: Callable[[Path], None], reason: str
) -> None:
    engine, artifacts = shop
    directory = live_directory(engine)
    damage(directory)
    for read in (
        lambda: model.load(directory, settings_for(artifacts).recommender),
        lambda: model.customer_ids(directory),
        lambda: model.drop_customers(directory, {"nobody"}),
    ):
        with pytest.raises(ModelError) as failed:
            read()
        message = str(failed.value)
        assert message.startswith(f"cannot load the model artifacts at {directory}: ")
        assert reason in message


def test_the_api_starts_on_a_damaged_live_model_serves_popularity_and_is_not_ready(
    shop: tuple[sa.Engine, Path], caplog: pytest.LogCaptureFixture, closing: Closing
) -> None:
    engine, artifacts = shop
    customer, _ = cached_customer(engine)
    directory = live_directory(engine)
    empty(directory)
    with caplog.at_level("ERROR", logger="recocamp.api.offer_cache"):
        app = closing(make_app(engine, artifacts))
        ready = call(app, "GET", "/readyz")
        assert ready.status == 503, ready.text
        detail = ready.json()["detail"]
        assert f"cannot load the model artifacts at {directory}" in detail
        assert "EOFError" in detail
        answer = offers(app, customer)
        assert answer["basis"] == "popular" and answer["items"]
        assert answer["basis_reason"] == "popular: the live model cannot be loaded"
    assert f"cannot load the model artifacts at {directory}" in caplog.text


def test_no_live_model_at_all_is_still_ready(
    shop: tuple[sa.Engine, Path], closing: Closing
) -> None:
    engine, artifacts = shop
    with engine.begin() as connection:
        registry.set_status(connection, live_directory(engine).name, "retired")
    app = closing(make_app(engine, artifacts))
    ready = call(app, "GET", "/readyz")
    assert ready.status == 200 and ready.json()["model_version"] is None


def test_rollback_to_a_truncated_model_and_similar_on_an_empty_one_say_so_in_one_line(
    shop: tuple[sa.Engine, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, artifacts = shop
    first = live_directory(engine)
    second_model(engine, settings_for(artifacts))
    truncated(first)
    runner = cli_on(engine, monkeypatch, tmp_path)
    rolled = runner.invoke(cli, ["models", "rollback"])
    assert rolled.exit_code == 1, rolled.output
    assert f"error: cannot load the model artifacts at {first}" in rolled.output.replace("\n", "")
    assert isinstance(rolled.exception, SystemExit)  # an exit code, not a traceback
    empty(live_directory(engine))
    similar = runner.invoke(cli, ["similar", "anything"])
    assert similar.exit_code == 1, similar.output
    assert "error: cannot load the model artifacts at" in similar.output
    assert "Aborted" not in similar.output and isinstance(similar.exception, SystemExit)


def test_two_scrubs_of_one_model_do_not_put_each_others_customers_back(
    shop: tuple[sa.Engine, Path],
) -> None:
    """Each scrub reads the file, removes its customers and writes it back: two at once
    (an objection in the API, the nightly sweep) wrote the second's copy over the first's,
    and the first's customer was in the model again. A scrub waits for the model's rewrite
    lock; held here, the scrub cannot begin until it is released."""
    engine, _ = shop
    directory = live_directory(engine)
    first, second = sorted(model.customer_ids(directory))[:2]
    held = model.customer_ids(directory)
    done: list[int] = []
    with model.rewriting(directory):
        scrub = threading.Thread(
            target=lambda: done.append(model.drop_customers(directory, {second}))
        )
        scrub.start()
        scrub.join(timeout=0.5)
        assert scrub.is_alive() and done == []  # waits for the lock
    scrub.join(timeout=30)
    assert done == [1] and model.drop_customers(directory, {first}) == 1
    assert model.customer_ids(directory) == held - {first, second}
    with pytest.raises(ModelError, match="cannot load the model artifacts"):
        model.drop_customers(directory / "purged", {first})  # a folder gone: one ModelError
