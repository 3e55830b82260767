"""The key each tombstone was made under, remembered by its fingerprint (``tombstone_keys``,
migration 0022): a signing key changed without moving the old one to
``RECOCAMP_SIGNING_KEYS_RETIRED`` (or a retired key dropped later) would make every tombstone
made under it match nothing, and the erased customers come back with the next import. On a
real SQLite store, through the CLI and the HTTP app: such a store refuses every way in,
naming the variable, and writes nothing; with the old key retired it works as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from typer.testing import CliRunner

from recocamp import privacy, tokens
from recocamp.api.app import create_app
from recocamp.cli import app as cli
from recocamp.clock import FixedClock
from recocamp.settings import Settings
from recocamp.store import tombstones as tombstones_store
from recocamp.store.schema import customers, tombstone_keys, tombstones
from tests.api_shop import NOW, bearer, call, settings_for
from tests.conftest import write_csv

OLD = "o" * 40
NEW = "n" * 40
PEOPLE = ["id", "email", "first_name", "consent_basis", "consent_at"]
ERIN = ["c1", "erin@example.test", "Erin", "double_opt_in", "2011-06-01T10:00:00Z"]
OTTO = ["c2", "otto@example.test", "Otto", "double_opt_in", "2011-06-01T10:00:00Z"]
NINA = ["c3", "nina@example.test", "Nina", "double_opt_in", "2011-06-01T10:00:00Z"]


def store() -> sa.Engine:
    return sa.create_engine("sqlite:///shop.db")  # cli_store's, in the current directory


def ids() -> set[str]:
    with store().connect() as connection:
        return set(connection.execute(sa.select(customers.c.id)).scalars())


def erased_under_old(cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Erin and Otto imported, Erin erased, all under OLD."""
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", OLD)
    people = write_csv(Path("people.csv"), PEOPLE, [ERIN, OTTO])
    assert cli_store.invoke(cli, ["import", "customers", str(people)]).exit_code == 0
    settings = Settings(database_url="sqlite:///shop.db", signing_key=SecretStr(OLD))
    assert privacy.erase(store(), settings, "c1", NOW, via="test") is not None
    assert ids() == {"c2"}


def test_a_key_changed_without_retiring_the_old_one_refuses_imports(
    cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    erased_under_old(cli_store, monkeypatch)
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", NEW)  # rotated; OLD forgotten
    again = write_csv(Path("again.csv"), PEOPLE, [ERIN, OTTO, NINA])
    result = cli_store.invoke(cli, ["import", "customers", str(again)])
    assert result.exit_code == 2, result.output
    assert "RECOCAMP_SIGNING_KEYS_RETIRED" in result.stderr
    assert "Nothing was written" in result.stderr
    assert OLD not in result.output and NEW not in result.output
    assert tokens.key_fingerprint(OLD.encode()) in result.stderr  # which key to put back
    assert ids() == {"c2"}  # Erin is not back, Nina not imported either

    checked = cli_store.invoke(cli, ["check"])
    assert checked.exit_code == 2 and "RECOCAMP_SIGNING_KEYS_RETIRED" in checked.stderr

    monkeypatch.setenv("RECOCAMP_SIGNING_KEYS_RETIRED", OLD)  # the old key retired
    result = cli_store.invoke(cli, ["import", "customers", str(again)])
    assert result.exit_code == 0, result.output
    assert ids() == {"c2", "c3"}  # Erin stays erased, by the old key's tombstone
    assert cli_store.invoke(cli, ["check"]).exit_code == 0


def test_a_retired_key_dropped_later_refuses_the_api(
    cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    erased_under_old(cli_store, monkeypatch)
    base = settings_for(tmp_path).model_copy(update={"database_url": "sqlite:///shop.db"})
    dropped = base.model_copy(update={"signing_key": SecretStr(NEW)})
    app = create_app(dropped, store(), FixedClock(NOW))
    body: dict[str, Any] = {"source": "signup", "email": "erin@example.test"}
    reply = call(app, "PUT", "/v1/customers/c1", json=body, headers=bearer("shop"))
    assert reply.status == 503, reply.text
    assert "RECOCAMP_SIGNING_KEYS_RETIRED" in reply.text and "erin@" not in reply.text
    assert ids() == {"c2"}

    retired = dropped.model_copy(update={"signing_keys_retired": SecretStr(OLD)})
    app = create_app(retired, store(), FixedClock(NOW))
    reply = call(app, "PUT", "/v1/customers/c1", json=body, headers=bearer("shop"))
    assert reply.status == 410, reply.text  # erased, as before the rotation
    assert ids() == {"c2"}


def test_an_erasure_records_its_keys_fingerprint_never_the_key(
    cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    erased_under_old(cli_store, monkeypatch)
    with store().connect() as connection:
        rows = connection.execute(sa.select(tombstone_keys)).all()
    assert [row.key_id for row in rows] == [tokens.key_fingerprint(OLD.encode())]
    assert rows[0].recorded_at == NOW
    assert OLD not in rows[0].key_id and len(rows[0].key_id) == 16


def test_tombstones_of_before_the_fingerprints_are_taken_as_the_configured_keys(
    cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store migrated from before 0022 holds tombstones with no fingerprint: the first
    check that writes, with a key set, records the configured keys as theirs (an assumption,
    the README says so); from then on a key dropped is noticed."""
    erased_under_old(cli_store, monkeypatch)
    with store().begin() as connection:  # as a store of before migration 0022
        connection.execute(sa.delete(tombstone_keys))
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", NEW)
    monkeypatch.setenv("RECOCAMP_SIGNING_KEYS_RETIRED", OLD)
    again = write_csv(Path("again.csv"), PEOPLE, [ERIN, OTTO, NINA])
    assert cli_store.invoke(cli, ["import", "customers", str(again)]).exit_code == 0
    assert ids() == {"c2", "c3"}
    with store().connect() as connection:
        recorded = {r.key_id: r.recorded_at for r in connection.execute(sa.select(tombstone_keys))}
    assert recorded == {
        tokens.key_fingerprint(NEW.encode()): None,
        tokens.key_fingerprint(OLD.encode()): None,
    }
    monkeypatch.delenv("RECOCAMP_SIGNING_KEYS_RETIRED")
    later = write_csv(Path("later.csv"), PEOPLE, [ERIN])
    result = cli_store.invoke(cli, ["import", "customers", str(later)])
    assert result.exit_code == 2 and "RECOCAMP_SIGNING_KEYS_RETIRED" in result.stderr


def test_worker_and_serve_say_so_at_start(
    cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    erased_under_old(cli_store, monkeypatch)
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", NEW)
    ran: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: ran.append(kwargs))
    served = cli_store.invoke(cli, ["serve"])
    assert served.exit_code == 0 and ran, served.output
    assert "RECOCAMP_SIGNING_KEYS_RETIRED" in served.stderr
    worker = cli_store.invoke(cli, ["worker", "--once"])  # no ESP token: refused after it
    assert "RECOCAMP_SIGNING_KEYS_RETIRED" in worker.stderr, worker.output
    assert OLD not in worker.output and NEW not in served.output


def test_a_store_without_tombstones_needs_no_key(cli_store: CliRunner) -> None:
    with store().begin() as connection:
        assert tombstones_store.checkable(connection, None, "a test") is None
        assert connection.execute(sa.select(tombstones)).first() is None
