"""One e-mail address held by two customer ids (duplicate accounts, or a family's mailbox):
``recocamp privacy export``/``erase`` by customer id refuse to guess whom the request covers
(exit 2, naming the ids, never the address, nothing written) until told: ``--only-this-id``
(that id alone; the others keep their rows and the address) or ``--all-matching`` (every id
holding the address, as one person; the address is tombstoned). Through the real CLI on a
real SQLite store; then the shop API (409 naming the ids, ``?scope=``) and the preferences
page, whose link names one customer and so acts for that customer alone."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from recocamp import privacy, tokens
from recocamp.cli import app as cli
from recocamp.data import erasure_files
from recocamp.errors import SharedAddressError
from recocamp.settings import Settings
from recocamp.store.schema import (
    audit_log,
    customers,
    erasures,
    import_runs,
    purchases,
    tombstones,
)
from tests.api_shop import NOW, OBJECTOR, SIGNING_KEY, Closing, bearer, call, make_app
from tests.conftest import write_csv
from tests.privacy.later_table import loyalty_cards

SHARED = "Family.Mailbox@Example.test"
PEOPLE = [  # bob holds ann's address in another case: the same address
    ["ann", SHARED, "Annika", "double_opt_in", "2011-06-01T10:00:00Z"],
    ["bob", SHARED.upper(), "Bobby", "double_opt_in", "2011-06-01T10:00:00Z"],
    ["carl", "carl@example.test", "Carlo", "none", ""],
]
HEADER = ["id", "email", "first_name", "consent_basis", "consent_at"]


def _engine(directory: Path) -> sa.Engine:
    return sa.create_engine(f"sqlite:///{directory / 'shop.db'}")


@pytest.fixture
def shared(cli_store: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """Three customers with an order each; ann and bob share one address."""
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", SIGNING_KEY)
    runner = cli_store
    people = write_csv(tmp_path / "customers.csv", HEADER, PEOPLE)
    orders = write_csv(
        tmp_path / "orders.csv",
        ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"],
        [
            [f"o-{who}", who, "i-1", 1, 2.5, "2011-07-01T10:00:00Z"]
            for who in ("ann", "bob", "carl")
        ],
    )
    for kind, path in (("customers", people), ("purchases", orders)):
        done = runner.invoke(cli, ["import", kind, str(path)])
        assert done.exit_code == 0, done.output
    return runner


def _held(directory: Path) -> tuple[list[str], dict[str, str | None], int, int]:
    """Customer ids, each order's customer, erasures and tombstones."""
    with _engine(directory).connect() as connection:
        ids = connection.execute(sa.select(customers.c.id).order_by(customers.c.id)).scalars()
        lines = connection.execute(sa.select(purchases.c.order_id, purchases.c.customer_id))
        done = connection.execute(sa.select(sa.func.count()).select_from(erasures)).scalar_one()
        stones = connection.execute(sa.select(sa.func.count()).select_from(tombstones))
        return list(ids), {o: c for o, c in lines}, done, stones.scalar_one()


def _exports(directory: Path) -> list[str]:
    with _engine(directory).connect() as connection:
        query = sa.select(audit_log.c.subject_id).where(audit_log.c.action == "customer_exported")
        return sorted(connection.execute(query).scalars())


ALL_HELD = (
    ["ann", "bob", "carl"],
    {"o-ann": "ann", "o-bob": "bob", "o-carl": "carl"},
    0,
    0,
)


def _import_again_with_dora(shared: CliRunner, tmp_path: Path) -> Result:
    """The shop's next customers export: everyone as before, and dora at the shared address."""
    again = write_csv(
        tmp_path / "again.csv",
        HEADER,
        [*PEOPLE, ["dora", SHARED, "Dora", "double_opt_in", "2011-08-01T10:00:00Z"]],
    )
    imported = shared.invoke(cli, ["import", "customers", str(again)])
    assert imported.exit_code == 0, imported.output
    return imported


@pytest.mark.parametrize("command", ["export", "erase"])
def test_a_shared_address_is_ambiguous_and_nothing_is_done(
    shared: CliRunner, tmp_path: Path, command: str
) -> None:
    extra = ["--output", "out.json"] if command == "export" else ["--yes"]
    refused = shared.invoke(cli, ["privacy", command, "ann", *extra])
    assert refused.exit_code == 2, refused.output
    text = " ".join(refused.output.split())  # rich wraps long lines
    assert "'bob'" in text and "'ann'" in text and "nothing was done" in text
    assert "--all-matching" in text and "--only-this-id" in text
    assert "@" not in refused.output  # the address is never named
    assert not (tmp_path / "out.json").exists()
    assert _held(tmp_path) == ALL_HELD and _exports(tmp_path) == []


def test_both_scopes_at_once_are_refused(shared: CliRunner, tmp_path: Path) -> None:
    both = ["privacy", "erase", "ann", "--yes", "--all-matching", "--only-this-id"]
    refused = shared.invoke(cli, both)
    assert refused.exit_code == 2 and "exclude each other" in refused.output
    counted = shared.invoke(cli, ["privacy", "erase", "ann", "--yes", "--expect", "2"])
    assert counted.exit_code == 2 and "--expect goes with --all-matching" in counted.output
    assert _held(tmp_path) == ALL_HELD


def test_an_unshared_address_needs_no_scope(shared: CliRunner, tmp_path: Path) -> None:
    exported = shared.invoke(cli, ["privacy", "export", "carl"])
    assert exported.exit_code == 0, exported.output
    document = json.loads(exported.output)
    assert document["customer_ids"] == ["carl"] and document["scope"] == "unshared"
    erased = shared.invoke(cli, ["privacy", "erase", "carl", "--yes"])
    assert erased.exit_code == 0, erased.output
    ids, lines, done, stones = _held(tmp_path)
    assert ids == ["ann", "bob"] and lines["o-carl"] is None and (done, stones) == (1, 1)


def test_only_this_id_exports_that_customer_and_nobody_else(
    shared: CliRunner, tmp_path: Path
) -> None:
    exported = shared.invoke(cli, ["privacy", "export", "ann", "--only-this-id"])
    assert exported.exit_code == 0, exported.output
    document = json.loads(exported.output)
    assert document["customer_ids"] == ["ann"] and document["scope"] == "id"
    assert "cannot be attributed" in document["left_out"]
    assert [row["id"] for row in document["tables"]["customers"]] == ["ann"]
    assert [row["order_id"] for row in document["tables"]["purchases"]] == ["o-ann"]
    assert "bob" not in exported.output.lower()  # neither bob's id nor his name
    assert _exports(tmp_path) == ["ann"]


def test_only_this_id_erases_that_customer_and_the_other_keeps_the_address(
    shared: CliRunner, tmp_path: Path
) -> None:
    erased = shared.invoke(cli, ["privacy", "erase", "ann", "--yes", "--only-this-id"])
    assert erased.exit_code == 0, erased.output
    assert "the address stays open: 1 other customer holds it" in " ".join(erased.output.split())
    ids, lines, done, stones = _held(tmp_path)
    assert ids == ["bob", "carl"] and (done, stones) == (1, 1)
    assert lines == {"o-ann": None, "o-bob": "bob", "o-carl": "carl"}
    # the shop's next export: ann stays erased (her id), bob and a newcomer at the shared
    # address are taken (the address was not tombstoned: bob still holds it)
    imported = _import_again_with_dora(shared, tmp_path)
    assert "skipped: erased" in imported.output
    assert _held(tmp_path)[0] == ["bob", "carl", "dora"]
    # bob's own request is still ambiguous (dora holds the address now), and scoped to him
    # it holds nothing of ann
    assert shared.invoke(cli, ["privacy", "export", "bob"]).exit_code == 2
    mine = shared.invoke(cli, ["privacy", "export", "bob", "--only-this-id"])
    assert mine.exit_code == 0 and "annika" not in mine.output.lower()


def test_all_matching_erases_every_customer_holding_the_address_for_good(
    shared: CliRunner, tmp_path: Path
) -> None:
    exported = shared.invoke(cli, ["privacy", "export", "ann", "--all-matching"])
    assert exported.exit_code == 0, exported.output
    document = json.loads(exported.output)
    assert document["customer_ids"] == ["ann", "bob"] and document["scope"] == "all-matching"
    assert sorted(row["id"] for row in document["tables"]["customers"]) == ["ann", "bob"]
    assert _exports(tmp_path) == ["ann", "bob"]

    assert document["customers"] == 2  # the count an erasure of them all must be told
    erase = ["privacy", "erase", "ann", "--yes", "--all-matching", "--expect", "2"]
    erased = shared.invoke(cli, erase)
    assert erased.exit_code == 0, erased.output
    assert "customer ids erased: ann, bob" in erased.output
    ids, lines, done, stones = _held(tmp_path)
    assert ids == ["carl"] and (done, stones) == (1, 2)  # one erasure, a tombstone per id
    assert lines == {"o-ann": None, "o-bob": None, "o-carl": "carl"}
    _import_again_with_dora(shared, tmp_path)
    assert _held(tmp_path)[0] == ["carl"]  # ann, bob and the address stay out
    with _engine(tmp_path).connect() as connection:
        last = sa.select(import_runs.c.skipped).order_by(import_runs.c.id.desc()).limit(1)
        assert connection.execute(last).scalar_one()["erased"] == 3


def test_a_shared_address_is_refused_before_the_question(shared: CliRunner, tmp_path: Path) -> None:
    asked = shared.invoke(cli, ["privacy", "erase", "ann"], input="y\n")
    assert asked.exit_code == 2, asked.output
    assert "for good?" not in asked.output and "'bob'" in asked.output
    assert _held(tmp_path) == ALL_HELD


def _dora(shared: CliRunner, tmp_path: Path) -> None:
    """dora takes the shared address too: three ids hold it."""
    more = write_csv(tmp_path / "dora.csv", HEADER, [["dora", SHARED, "Dora", "none", ""]])
    assert shared.invoke(cli, ["import", "customers", str(more)]).exit_code == 0


@pytest.mark.parametrize("expect", [[], ["--expect", "2"], ["--expect", "4"]])
def test_all_matching_erases_nobody_without_the_right_count(
    shared: CliRunner, tmp_path: Path, expect: list[str]
) -> None:
    _dora(shared, tmp_path)
    refused = shared.invoke(
        cli, ["privacy", "erase", "ann", "--all-matching", *expect], input="y\n"
    )
    assert refused.exit_code == 2, refused.output
    text = " ".join(refused.output.split())
    assert "held by 3 customer ids ('ann', 'bob', 'dora')" in text and "--expect" in text
    assert "for good?" not in text and "@" not in text  # refused before asking
    assert _held(tmp_path)[0] == ["ann", "bob", "carl", "dora"]


def test_an_unknown_id_is_held_by_nobody_whatever_count_is_expected(
    shared: CliRunner, tmp_path: Path
) -> None:
    """The CLI twin of the API's 404: the count was checked before anything asked whether
    the id is held, so an id we hold nothing about was a miscount (exit 2, "held by 1
    customer ids"), not "we hold no data" (exit 1)."""
    for expect in ("2", "1"):
        erase = ["privacy", "erase", "zed", "--all-matching", "--expect", expect, "--yes"]
        answer = shared.invoke(cli, erase)
        assert answer.exit_code == 1, answer.output
        assert "we hold no data about customer 'zed'" in answer.output
    assert _held(tmp_path) == ALL_HELD


def test_a_held_id_alone_is_still_counted_before_the_question(
    shared: CliRunner, tmp_path: Path
) -> None:
    erase = ["privacy", "erase", "carl", "--all-matching", "--expect", "2"]
    refused = shared.invoke(cli, erase, input="y\n")
    assert refused.exit_code == 2, refused.output
    text = " ".join(refused.output.split())
    assert "1 customer id ('carl')" in text and "for good?" not in text
    assert _held(tmp_path) == ALL_HELD


def test_the_question_names_how_many_and_whom(shared: CliRunner, tmp_path: Path) -> None:
    _dora(shared, tmp_path)
    erase = ["privacy", "erase", "bob", "--all-matching", "--expect", "3"]
    declined = shared.invoke(cli, erase, input="n\n")
    assert "Erase 3 customer ids (bob, ann, dora) for good?" in declined.output
    assert declined.exit_code == 1 and _held(tmp_path)[0] == ["ann", "bob", "carl", "dora"]
    erased = shared.invoke(cli, erase, input="y\n")
    assert erased.exit_code == 0, erased.output
    assert _held(tmp_path)[0] == ["carl"]


def test_the_question_shows_twenty_ids_of_many(shared: CliRunner, tmp_path: Path) -> None:
    rows = [[f"p{n:03}", "noemail@shop.test", "", "none", ""] for n in range(30)]
    placeholder = write_csv(tmp_path / "many.csv", HEADER, rows)
    assert shared.invoke(cli, ["import", "customers", str(placeholder)]).exit_code == 0
    refused = shared.invoke(cli, ["privacy", "erase", "p000", "--all-matching"])
    assert refused.exit_code == 2 and "held by 30 customer ids" in refused.output
    assert "'p019' and 10 more" in " ".join(refused.output.split())
    asked = shared.invoke(cli, ["privacy", "erase", "p000", "--all-matching", "--expect", "30"])
    question = " ".join(asked.output.split())
    assert "Erase 30 customer ids (p000, p001," in question and "p019 and 10 more)" in question
    assert "p020" not in question and "@" not in question
    assert asked.exit_code == 1 and len(_held(tmp_path)[0]) == 33  # not answered: nothing


def test_an_erasure_of_three_ids_rewrites_each_file_once(
    shared: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One pass over the written files for every id and address of the erasure."""
    _dora(shared, tmp_path)
    demo = tmp_path / "demo"
    demo.mkdir()
    write_csv(demo / "customers.csv", HEADER, [*PEOPLE, ["dora", SHARED, "Dora", "none", ""]])
    write_csv(
        demo / "purchases.csv",
        ["order_id", "customer_id", "item_id"],
        [[f"o-{who}", who, "i-1"] for who in ("ann", "bob", "carl", "dora")],
    )
    writes: list[str] = []
    replace = erasure_files.replace_atomically

    def counted(path: Path, write: Callable[[IO[bytes]], bool]) -> bool:
        writes.append(path.name)
        return replace(path, write)

    monkeypatch.setattr(erasure_files, "replace_atomically", counted)
    erase = ["privacy", "erase", "ann", "--yes", "--all-matching", "--expect", "3"]
    erased = shared.invoke(cli, erase)
    assert erased.exit_code == 0, erased.output
    assert sorted(writes) == ["customers.csv", "purchases.csv"]
    people = (demo / "customers.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in people] == ["id", "carl"]
    lines = (demo / "purchases.csv").read_text().splitlines()
    assert lines[1:] == ["o-ann,,i-1", "o-bob,,i-1", "o-carl,carl,i-1", "o-dora,,i-1"]


def test_imports_after_an_erasure_name_the_missing_key(
    shared: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert shared.invoke(cli, ["privacy", "erase", "carl", "--yes"]).exit_code == 0
    monkeypatch.delenv("RECOCAMP_SIGNING_KEY")
    people = write_csv(
        tmp_path / "later.csv", HEADER, [["eve", "eve@example.test", "", "none", ""]]
    )
    refused = shared.invoke(cli, ["import", "customers", str(people)])
    assert refused.exit_code == 2
    text = " ".join(refused.output.split())
    assert "RECOCAMP_SIGNING_KEY is not set" in text and "erasure tombstones" in text
    assert "Nothing was written" in text and "@" not in text
    orders = write_csv(
        tmp_path / "later-orders.csv",
        ["order_id", "customer_id", "item_id", "quantity", "unit_price", "ordered_at"],
        [["o-eve", "eve", "i-1", 1, 2.5, "2011-08-01T10:00:00Z"]],
    )
    refused = shared.invoke(cli, ["import", "purchases", str(orders)])
    assert refused.exit_code == 2 and "RECOCAMP_SIGNING_KEY" in refused.output
    ids, lines, _, _ = _held(tmp_path)
    assert ids == ["ann", "bob"] and "o-eve" not in lines
    unkeyed = shared.invoke(cli, ["privacy", "erase", "ann", "--yes", "--only-this-id"])
    assert unkeyed.exit_code == 2
    assert "RECOCAMP_SIGNING_KEY is not set" in " ".join(unkeyed.output.split())
    assert _held(tmp_path)[0] == ["ann", "bob"]


def test_any_table_tied_by_address_can_share_it_and_only_this_id_keeps_the_others_rows(
    shared: CliRunner, tmp_path: Path
) -> None:
    """Read from the schema like every tie: a table added later whose row names another
    customer (zed, not in the customers table) at ann's address makes it shared; exported or
    erased alone, ann's row goes, the row naming nobody but the address stays out of it (it
    cannot be attributed to her), zed keeps his."""
    engine = _engine(tmp_path)
    later, cards = loyalty_cards(engine)
    with engine.begin() as connection:
        connection.execute(sa.delete(customers).where(customers.c.id == "bob"))
        connection.execute(
            sa.insert(cards),
            [
                {"card": "1", "holder_customer_id": "ann", "contact_email": None},
                {"card": "2", "holder_customer_id": None, "contact_email": SHARED},
                {"card": "3", "holder_customer_id": "zed", "contact_email": SHARED.lower()},
            ],
        )
    settings = Settings(signing_key=SecretStr(SIGNING_KEY))
    with pytest.raises(SharedAddressError) as refused:
        privacy.erase(engine, settings, "ann", NOW, via="test", schema=later)
    assert refused.value.others == ["zed"] and "@" not in str(refused.value)
    scoped = privacy.export(engine, "ann", NOW, schema=later, scope=privacy.Scope.ID)
    assert scoped is not None
    assert [c["card"] for c in scoped["tables"]["loyalty_cards"]] == ["1"]
    report = privacy.erase(
        engine, settings, "ann", NOW, via="test", schema=later, scope=privacy.Scope.ID
    )
    assert report is not None and report.rows["loyalty_cards"] == 1
    assert report.address_kept_for == 1  # zed
    with engine.connect() as connection:
        assert connection.execute(sa.select(cards.c.card)).scalars().all() == ["2", "3"]


# -- the shop API and the preferences page (SQLite and PostgreSQL) --------------------------


def _twins(app: FastAPI) -> None:
    """sh-ann and sh-bob share one address (in two cases)."""
    for who, email in (("sh-ann", SHARED), ("sh-bob", SHARED.upper())):
        profile = {"source": "test", "email": email, "first_name": who.title()}
        put = call(app, "PUT", f"/v1/customers/{who}", json=profile, headers=bearer("shop"))
        assert put.status == 200, put.text


def _ids(engine: sa.Engine) -> set[str]:
    with engine.connect() as connection:
        query = sa.select(customers.c.id).where(customers.c.id.like("sh-%"))
        return set(connection.execute(query).scalars())


def _again(app: FastAPI, who: str, email: str = SHARED) -> int:
    """A later profile change from the shop: 200 taken, 410 erased."""
    profile = {"source": "test", "email": email, "first_name": "Later"}
    return call(app, "PUT", f"/v1/customers/{who}", json=profile, headers=bearer("shop")).status


def test_the_api_names_the_ids_and_acts_only_when_told_whom(
    closing: Closing, shop: tuple[sa.Engine, Path]
) -> None:
    engine, artifacts = shop
    app = closing(make_app(engine, artifacts))
    _twins(app)
    path = "/v1/privacy/customers/sh-ann"
    for method in ("GET", "DELETE"):
        refused = call(app, method, path, headers=bearer("dpo"))
        assert refused.status == 409, refused.text
        detail = refused.json()["detail"]
        assert "'sh-bob'" in detail and "scope=id" in detail and "scope=all-matching" in detail
        assert "@" not in refused.text
    assert call(app, "GET", path + "?scope=both", headers=bearer("dpo")).status == 422
    assert _ids(engine) == {"sh-ann", "sh-bob"}

    mine = call(app, "GET", path + "?scope=id", headers=bearer("dpo"))
    assert mine.status == 200 and mine.json()["customer_ids"] == ["sh-ann"]
    assert "sh-bob" not in mine.text
    erased = call(app, "DELETE", path + "?scope=id", headers=bearer("dpo"))
    assert erased.status == 200 and erased.json()["customer_ids"] == ["sh-ann"]
    assert erased.json()["address_kept_for"] == 1
    assert _ids(engine) == {"sh-bob"}
    assert _again(app, "sh-ann") == 410 and _again(app, "sh-bob") == 200  # bob keeps it


def test_the_api_erases_every_id_of_the_address_when_told_so(
    closing: Closing, shop: tuple[sa.Engine, Path]
) -> None:
    engine, artifacts = shop
    app = closing(make_app(engine, artifacts))
    _twins(app)
    path = "/v1/privacy/customers/sh-bob?scope=all-matching"
    both = call(app, "GET", path, headers=bearer("dpo"))
    assert both.status == 200 and both.json()["customer_ids"] == ["sh-bob", "sh-ann"]
    assert both.json()["customers"] == 2
    erased = call(app, "DELETE", path + "&expect=2", headers=bearer("dpo"))
    assert erased.status == 200 and erased.json()["customer_ids"] == ["sh-bob", "sh-ann"]
    assert _ids(engine) == set()
    assert _again(app, "sh-ann") == 410 and _again(app, "sh-newcomer") == 410  # the address too
    assert _again(app, "sh-newcomer", "someone.else@example.test") == 200


def test_the_api_erases_every_id_only_with_their_count(
    closing: Closing, shop: tuple[sa.Engine, Path]
) -> None:
    engine, artifacts = shop
    app = closing(make_app(engine, artifacts))
    _twins(app)
    path = "/v1/privacy/customers/sh-bob?scope=all-matching"
    for expect in ("", "&expect=1", "&expect=3"):
        refused = call(app, "DELETE", path + expect, headers=bearer("dpo"))
        assert refused.status == 409, refused.text
        detail = refused.json()["detail"]
        assert "held by 2 customer ids ('sh-bob', 'sh-ann')" in detail and "expect=N" in detail
        assert "@" not in refused.text
    assert call(app, "DELETE", path + "&expect=0", headers=bearer("dpo")).status == 422
    alone = "/v1/privacy/customers/sh-bob?scope=id&expect=1"
    assert call(app, "DELETE", alone, headers=bearer("dpo")).status == 409
    assert _ids(engine) == {"sh-ann", "sh-bob"}


def test_the_api_answers_404_for_an_unknown_id_whatever_count_is_expected(
    closing: Closing, shop: tuple[sa.Engine, Path]
) -> None:
    """An id we hold nothing about is a 404 as on every other privacy route, also with
    scope=all-matching and a count: the count was checked first and answered 409 "held by 1
    customer ids ('nobody')", as if the id were held."""
    engine, artifacts = shop
    app = closing(make_app(engine, artifacts))
    for expect in ("&expect=1", "&expect=2", "&expect=3", ""):
        path = f"/v1/privacy/customers/sh-nobody?scope=all-matching{expect}"
        answer = call(app, "DELETE", path, headers=bearer("dpo"))
        assert answer.status == 404, answer.text
        assert "hold no data" in answer.json()["detail"]


def test_a_miscounted_single_id_is_named_in_the_singular(
    closing: Closing, shop: tuple[sa.Engine, Path]
) -> None:
    engine, artifacts = shop
    app = closing(make_app(engine, artifacts))
    profile = {"source": "test", "email": "sh-one@example.test", "first_name": "One"}
    put = call(app, "PUT", "/v1/customers/sh-one", json=profile, headers=bearer("shop"))
    assert put.status == 200, put.text
    path = "/v1/privacy/customers/sh-one?scope=all-matching&expect=2"
    refused = call(app, "DELETE", path, headers=bearer("dpo"))
    assert refused.status == 409, refused.text
    detail = refused.json()["detail"]
    assert "1 customer id ('sh-one')" in detail and "customer ids" not in detail
    assert "2 were expected" in detail and "@" not in refused.text
    assert _ids(engine) == {"sh-one"}


def test_a_data_subject_reaches_their_own_record_only(
    closing: Closing, shop: tuple[sa.Engine, Path]
) -> None:
    """The preferences page's link names one customer: its download and its erasure cover
    that customer alone, whoever else holds the address (no 409 to a customer either)."""
    engine, artifacts = shop
    app = closing(make_app(engine, artifacts))
    _twins(app)
    token = tokens.sign(SIGNING_KEY.encode(), "sh-ann", "winback", "preferences", NOW)
    download = call(app, "GET", f"/p/{token}/data.json")
    assert download.status == 200, download.text
    document = json.loads(download.text)
    assert document["customer_ids"] == ["sh-ann"] and "sh-bob" not in download.text
    # in the customer's language (the shop's: the API named none), and in the one asked for
    assert document["left_out"].startswith("Zeilen mit Ihrer E-Mail-Adresse, aber ohne Kunden")
    english = json.loads(call(app, "GET", f"/p/{token}/data.json?lang=en").text)
    assert "cannot be attributed" in english["left_out"]
    form = {"action": "erase", "confirm": "on"}
    assert call(app, "POST", f"/p/{token}", data=form).status == 200
    assert _ids(engine) == {"sh-bob"}
    assert _again(app, "sh-bob") == 200 and _again(app, "sh-ann") == 410


@pytest.mark.parametrize(
    "other",
    [
        pytest.param("ju\u0308rgen.family@example.test", id="decomposed"),
        pytest.param("J\u00dcRGEN.Family@example.test", id="upper-case-umlaut"),
        pytest.param("JU\u0308RGEN.FAMILY@EXAMPLE.TEST", id="upper-case-decomposed"),
    ],
)
def test_an_address_in_another_unicode_form_is_the_same_address(
    cli_store: CliRunner, tmp_path: Path, other: str
) -> None:
    """Ann typed her address composed, Bob's account holds it decomposed (another keyboard)
    or in capitals, umlaut included: one mailbox, so a request for ann alone is ambiguous,
    and ``--all-matching`` takes both. (SQLite's own ``lower()`` folds ASCII only.)"""
    composed = "j\u00fcrgen.family@example.test"
    decomposed = other
    people = write_csv(
        tmp_path / "customers.csv",
        HEADER,
        [
            ["ann", composed, "Annika", "double_opt_in", "2011-06-01T10:00:00Z"],
            ["bob", decomposed, "Bobby", "double_opt_in", "2011-06-01T10:00:00Z"],
        ],
    )
    imported = cli_store.invoke(cli, ["import", "customers", str(people)])
    assert imported.exit_code == 0, imported.output
    refused = cli_store.invoke(cli, ["privacy", "export", "ann"])
    assert refused.exit_code == 2 and "'bob'" in refused.output, refused.output
    exported = cli_store.invoke(cli, ["privacy", "export", "ann", "--all-matching"])
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.output)["customer_ids"] == ["ann", "bob"]


@pytest.mark.parametrize(
    ("first", "again"),
    [
        pytest.param("kim@b\u00fccher.test", "Kim@XN--BCHER-KVA.test", id="then-idna"),
        pytest.param("kim@xn--bcher-kva.test", "kim@B\u00dcCHER.test", id="then-unicode"),
    ],
)
def test_a_domain_in_its_other_spelling_is_the_same_address(
    closing: Closing, shop: tuple[sa.Engine, Path], first: str, again: str
) -> None:
    """``bücher.test`` and its IDNA spelling ``xn--bcher-kva.test`` are one domain (one
    mailbox): the erased address stays out in either, and two accounts holding it in
    the two spellings share it."""
    app = closing(make_app(*shop))

    def put(customer_id: str, email: str) -> int:
        profile = {"source": "test", "email": email}
        return call(
            app, "PUT", f"/v1/customers/{customer_id}", json=profile, headers=bearer("shop")
        ).status

    assert put("idn-ann", first) == 200
    assert put("idn-bob", again) == 200
    shared = call(app, "GET", "/v1/privacy/customers/idn-ann", headers=bearer("dpo"))
    assert shared.status == 409 and "idn-bob" in shared.text, shared.text
    erased = call(
        app,
        "DELETE",
        "/v1/privacy/customers/idn-ann?scope=all-matching&expect=2",
        headers=bearer("dpo"),
    )
    assert erased.status == 200, erased.text
    assert put("idn-cat", again) == 410 and put("idn-dan", first) == 410


def test_a_refusal_about_one_person_is_not_stored_by_caches(
    closing: Closing, shop: tuple[sa.Engine, Path]
) -> None:
    """Answers about one person carry ``Cache-Control: no-store`` (README), refusals too:
    the 409 of a shared address names the other customer ids holding it (who shares a
    mailbox with whom), a forecast's 404 says the customer objected to profiling. FastAPI
    answered an ``HTTPException`` with a plain JSON response, and a 404 is cacheable by
    default (RFC 9111 §4.2.2), so a cache in front of the API could keep and serve them."""
    engine, artifacts = shop
    app = closing(make_app(engine, artifacts))
    _twins(app)
    refusals = [
        ("GET", "/v1/privacy/customers/sh-ann", bearer("dpo"), 409),
        ("DELETE", "/v1/privacy/customers/sh-ann", bearer("dpo"), 409),
        ("GET", "/v1/privacy/customers/nobody-here", bearer("dpo"), 404),
        ("GET", f"/v1/customers/{OBJECTOR}/forecast", bearer("shop"), 404),
    ]
    for method, path, headers, status in refusals:
        reply = call(app, method, path, headers=headers)
        assert reply.status == status, (path, reply.text)
        assert reply.headers.get("cache-control") == "no-store", (method, path)
