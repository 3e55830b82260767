"""``recocamp link``: the printed link opens the real page (the shop API on the same store)
and a link the pages would refuse is not made (exit 2, one line, nothing written). The
command line's clock is fixed at the API tests' ``NOW``, the app's clock too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from typer.testing import CliRunner, Result

from recocamp.cli import app as cli
from recocamp.cli import common
from recocamp.clock import FixedClock
from recocamp.store.schema import contact_events, customers, metadata
from tests.api_shop import NOW, SIGNING_KEY, bearer, call, make_app
from tests.conftest import write_csv

PUBLIC = "https://shop.example.test/recocamp"  # a path under the host: kept in the link
PEOPLE = [["c1", "Ann.Example@Example.test", "de"], ["c2", "bob@example.test", "en"]]


@pytest.fixture
def store(cli_store: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """Two customers on the CLI's store; the key set, the command line's clock at NOW."""
    (tmp_path / "settings.toml").write_text(
        f'database_url = "sqlite:///shop.db"\n[api]\npublic_url = "{PUBLIC}"\n'
    )
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", SIGNING_KEY)
    monkeypatch.setattr(common.clock, "now", lambda: NOW)
    people = write_csv(tmp_path / "customers.csv", ["id", "email", "locale"], PEOPLE)
    done = cli_store.invoke(cli, ["import", "customers", str(people)])
    assert done.exit_code == 0, done.output
    return cli_store


@pytest.fixture
def shop_api(tmp_path: Path) -> Iterator[FastAPI]:
    """The shop API on the CLI's store, its clock at NOW, verifying with the same key."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    app = make_app(engine, tmp_path / "models")
    yield app
    app.state.service.close()
    engine.dispose()


def _link(runner: CliRunner, *args: str) -> str:
    """The path of the printed link under PUBLIC (the link is the only line printed)."""
    result = runner.invoke(cli, ["link", *args])
    assert result.exit_code == 0, result.output
    url = result.stdout.removesuffix("\n")
    assert "\n" not in url and url.startswith(PUBLIC + "/"), url
    return url.removeprefix(PUBLIC)


def _held(directory: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: what "writes nothing" compares."""
    engine = sa.create_engine(f"sqlite:///{directory / 'shop.db'}")
    with engine.connect() as connection:
        held = {
            name: sorted(map(tuple, connection.execute(sa.select(table))), key=repr)
            for name, table in metadata.tables.items()
        }
    engine.dispose()
    return held


def test_the_preferences_link_opens_the_customers_page(store: CliRunner, shop_api: FastAPI) -> None:
    path = _link(store, "c1")
    assert path.startswith("/p/2")
    page = call(shop_api, "GET", path)
    assert page.status == 200, page.text
    # the default names no campaign, and the page (c1's is German) says so instead of "the
    # e-mail … went to you"
    assert "Diesen Link hat der Shop für Sie erstellt, nicht mit einer Kampagne" in page.text
    assert "manual-link" not in page.text and "ging an Sie" not in page.text
    assert "A•••@Example.test" in page.text  # c1's page (the address masked)
    named = call(shop_api, "GET", _link(store, "c2", "--campaign", "winback"))
    assert named.status == 200 and "b•••@example.test" in named.text
    assert "The e-mail “winback” went to you" in named.text


def test_the_data_link_downloads_the_customers_data(store: CliRunner, shop_api: FastAPI) -> None:
    path = _link(store, "c2", "--purpose", "data")
    assert path.startswith("/p/2") and path.endswith("/data.json")
    download = call(shop_api, "GET", path)
    assert download.status == 200, download.text
    assert json.loads(download.text)["customer_ids"] == ["c2"]


def test_the_unsubscribe_link_asks_then_unsubscribes(
    store: CliRunner, shop_api: FastAPI, tmp_path: Path
) -> None:
    """GET shows the confirm button and changes nothing; POST (RFC 8058 one-click)
    unsubscribes at the app's clock, recorded under the campaign the link names."""
    path = _link(store, "c1", "--purpose", "unsubscribe", "--campaign", "winback")
    assert path.startswith("/u/2")
    before = _held(tmp_path)
    assert call(shop_api, "GET", path).status == 200
    assert _held(tmp_path) == before
    form = {"List-Unsubscribe": "One-Click"}
    assert call(shop_api, "POST", path, data=form).status == 200
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    with engine.connect() as connection:
        query = sa.select(customers.c.id, customers.c.unsubscribed_at).order_by(customers.c.id)
        assert connection.execute(query).all() == [("c1", NOW), ("c2", None)]
        event = sa.select(contact_events.c.customer_id, contact_events.c.campaign)
        assert connection.execute(event).all() == [("c1", "winback")]
    engine.dispose()


def test_json_names_the_claims_signed_at_the_command_lines_clock(store: CliRunner) -> None:
    result = store.invoke(cli, ["link", "c1", "--purpose", "unsubscribe", "--format", "json"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    url = document.pop("url")
    assert url.startswith(PUBLIC + "/u/2")
    assert document == {
        "customer_id": "c1",
        "purpose": "unsubscribe",
        "campaign": "manual-link",
        "issued_at": "2012-01-05T09:00:00+00:00",
    }


def _refused(runner: CliRunner, args: list[str]) -> Result:
    result = runner.invoke(cli, ["link", *args], terminal_width=400)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and "Traceback" not in result.output
    assert "@" not in result.output  # no customer's address
    return result


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["c9"], "error: we hold no customer 'c9'; no link was made"),
        (["c\u202e1"], "error: customer id 'c\\u202e1' contains a non-printable character"),
        ([""], "error: customer id '' is empty; no link was made"),
        (["c" * 65], "error: customer id '" + "c" * 64 + "'… is longer than 64 characters"),
        (["c1", "--purpose", "feedback"], "'feedback' is not one of 'preferences'"),
        (["c1", "--campaign", "a\nb"], "Invalid value for '--campaign': 'a\\nb' contains"),
    ],
)
def test_a_link_for_nobody_is_refused_and_nothing_written(
    store: CliRunner, tmp_path: Path, args: list[str], message: str
) -> None:
    before = _held(tmp_path)
    assert message in _refused(store, args).stderr
    assert _held(tmp_path) == before


def test_no_link_without_the_signing_key(
    store: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECOCAMP_SIGNING_KEY")
    before = _held(tmp_path)
    stderr = _refused(store, ["c1"]).stderr
    assert stderr.startswith("error: RECOCAMP_SIGNING_KEY is not set: ")
    assert "demo/signing.key" in stderr and len(stderr.splitlines()) == 1
    assert _held(tmp_path) == before


def test_no_link_for_an_erased_customer(
    store: CliRunner, shop_api: FastAPI, tmp_path: Path
) -> None:
    """The erased id is named as erased (not as unknown), and a link made before the erasure
    answers 410: the command refuses what the page would."""
    old = _link(store, "c1")
    erased = store.invoke(cli, ["privacy", "erase", "c1", "--yes"])
    assert erased.exit_code == 0, erased.output
    before = _held(tmp_path)
    stderr = _refused(store, ["c1", "--purpose", "unsubscribe"]).stderr
    erased_line = "error: customer 'c1' was erased: a link would reach nobody; no link was made"
    assert stderr == erased_line + "\n"
    assert _held(tmp_path) == before
    assert call(shop_api, "GET", old).status == 410


def test_after_a_new_sign_up_a_link_is_made_once_the_erasure_is_past_the_clock_skew(
    store: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The customer is held again, but a link stamped within ``domain.CLOCK_SKEW`` of the
    erasure is void (``tombstones.void_link``): the command refuses it as the page would,
    and makes the link once past it."""
    assert store.invoke(cli, ["privacy", "erase", "c1", "--yes"]).exit_code == 0  # at NOW
    clock = FixedClock(NOW + timedelta(minutes=1))
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    api = make_app(engine, tmp_path / "models", clock)
    try:
        signup = {
            "source": "signup",
            "new_sign_up": True,
            "email": "ann@example.test",
            "consent_basis": "double_opt_in",
            "consent_at": clock.now().isoformat(),
        }
        back = call(api, "PUT", "/v1/customers/c1", json=signup, headers=bearer("shop"))
        assert back.status == 200, back.text
        monkeypatch.setattr(common.clock, "now", clock.now)
        before = _held(tmp_path)
        assert "was erased" in _refused(store, ["c1"]).stderr
        assert _held(tmp_path) == before
        clock.advance(timedelta(minutes=5))  # 6 minutes after the erasure
        page = call(api, "GET", _link(store, "c1"))
        assert page.status == 200 and "a•••@example.test" in page.text
    finally:
        api.state.service.close()
        engine.dispose()


def test_a_link_made_for_the_current_address_is_refused_once_it_changed(
    store: CliRunner, shop_api: FastAPI
) -> None:
    """The printed preferences link names the customer's address, as an e-mail's does: sent
    there, it does not open the page for whoever holds that mailbox after the customer
    moved on."""
    path = _link(store, "c2")
    assert call(shop_api, "GET", path).status == 200
    moved = {"source": "crm", "email": "bob@elsewhere.test"}
    changed = call(shop_api, "PUT", "/v1/customers/c2", json=moved, headers=bearer("shop"))
    assert changed.status == 200
    assert call(shop_api, "GET", path).status == 400
    assert call(shop_api, "GET", _link(store, "c2")).status == 200  # a new one: the new address
