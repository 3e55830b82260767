"""Rotating ``RECOCAMP_SIGNING_KEY``: the old key moves to ``RECOCAMP_SIGNING_KEYS_RETIRED``
and only ever checks. On real stores: a tombstone made under the old key still keeps the
erased customer out of an import and voids their links; an old e-mail's unsubscribe link
still unsubscribes; its preferences link (page, download, forms) is refused with a page
saying to use a newer e-mail's link; nothing new is signed or written under a retired key;
a short key is warned about by ``check`` and ``serve``, never shown."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from pydantic import SecretStr
from typer.testing import CliRunner

from recocamp import privacy, tokens
from recocamp.api.app import create_app
from recocamp.cli import app as cli
from recocamp.cli import common
from recocamp.clock import FixedClock
from recocamp.data.ingest import Importer
from recocamp.settings import Settings
from recocamp.store import tombstones as tombstones_store
from recocamp.store.schema import contact_events, customers, tombstones
from tests.api_shop import NOW, SIGNING_KEY, Reply, answered, bearer, call, settings_for
from tests.conftest import write_csv
from tests.token_forms import v1_token

OLD = SIGNING_KEY  # the key the shop ran with (the API tests' key)
NEW = "n" * 43  # what it was rotated to
PEOPLE = ["id", "email", "first_name", "consent_basis", "consent_at"]
ERIN = ["c1", "erin@example.test", "Erin", "double_opt_in", "2011-06-01T10:00:00Z"]
OTTO = ["c2", "otto@example.test", "Otto", "double_opt_in", "2011-06-01T10:00:00Z"]


def rotated(settings: Settings) -> Settings:
    """``settings`` after the rotation: the new key signs, the old one is retired."""
    update = {"signing_key": SecretStr(NEW), "signing_keys_retired": SecretStr(OLD)}
    return settings.model_copy(update=update)


def app_of(engine: sa.Engine, settings: Settings) -> FastAPI:
    return create_app(settings, engine, FixedClock(NOW))


def put(app: FastAPI, customer: str, body: dict[str, object]) -> Reply:
    return call(app, "PUT", f"/v1/customers/{customer}", json=body, headers=bearer("shop"))


def person(engine: sa.Engine, customer_id: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(sa.select(customers).where(customers.c.id == customer_id)).first()


def test_a_tombstone_made_under_the_old_key_still_keeps_the_customer_out(
    engine: sa.Engine, tmp_path: Path
) -> None:
    before = Settings(signing_key=SecretStr(OLD))
    importer = Importer(engine, zone=ZoneInfo("UTC"), now=NOW, erasure_key=None)
    importer.customers(write_csv(tmp_path / "people.csv", PEOPLE, [ERIN, OTTO]))
    assert privacy.erase(engine, before, "c1", NOW, via="test") is not None

    after = rotated(before)
    keyed = Importer(
        engine, zone=ZoneInfo("UTC"), now=NOW, erasure_key=tombstones_store.key_of(after)
    )
    new_id = ["c3", "ERIN@example.test", "Erin", "none", ""]  # her address under a new id
    report = keyed.customers(write_csv(tmp_path / "again.csv", PEOPLE, [ERIN, OTTO, new_id]))
    assert (report.imported, report.skipped) == (1, {"erased": 2})
    assert person(engine, "c1") is None and person(engine, "c3") is None

    # an erasure now is written under the new key alone
    assert privacy.erase(engine, after, "c2", NOW, via="test") is not None
    with engine.connect() as connection:
        stones = set(connection.execute(sa.select(tombstones.c.id_hash)).scalars())
    assert tokens.keyed_hash(NEW.encode(), "customer", "c2") in stones
    assert tokens.keyed_hash(OLD.encode(), "customer", "c2") not in stones
    assert tokens.keyed_hash(OLD.encode(), "customer", "c1") in stones


def test_an_old_e_mails_unsubscribe_link_still_works_its_preferences_link_does_not(
    engine: sa.Engine, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path)
    app = app_of(engine, settings)
    assert put(app, "e1", {"source": "signup", "email": "e@example.test"}).status == 200
    at = NOW - timedelta(days=3)
    unsubscribe = tokens.sign(OLD.encode(), "e1", "winback", "unsubscribe", at)
    preferences = tokens.sign(OLD.encode(), "e1", "winback", "preferences", at)
    app = app_of(engine, rotated(settings))

    for method, path, form in (
        ("GET", f"/p/{preferences}?lang=en", None),
        ("GET", f"/p/{preferences}/data.json?lang=en", None),
        ("POST", f"/p/{preferences}?lang=en", {"action": "erase", "confirm": "on"}),
        ("POST", f"/p/{preferences}?lang=en", {"action": "save"}),
    ):
        reply = call(app, method, path, data=form)
        assert reply.status == 400, (method, path, form)
        assert "newer e-mail" in reply.text and "e@example.test" not in reply.text
    kept = person(engine, "e1")
    assert kept is not None and kept.unsubscribed_at is None and kept.erased_at is None

    assert call(app, "GET", f"/u/{unsubscribe}").status == 200  # the confirm button
    one_click = {"List-Unsubscribe": "One-Click"}
    assert call(app, "POST", f"/u/{unsubscribe}", data=one_click).status == 200
    assert person(engine, "e1").unsubscribed_at == NOW

    # signed under a key that is neither: not valid, whatever the purpose
    stranger = tokens.sign(b"x" * 32, "e1", "winback", "unsubscribe", at)
    assert call(app, "POST", f"/u/{stranger}").status == 400
    # the new key's links work as ever
    fresh = tokens.sign(NEW.encode(), "e1", "winback", "preferences", NOW)
    assert call(app, "GET", f"/p/{fresh}").status == 200


def test_links_mailed_before_tokens_were_encrypted_keep_working_as_they_did(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """Links in inboxes carry tokens of the first format (``v1``: readable claims and their
    HMAC, made here by hand as that code made them): under the signing key the preferences
    page opens and the unsubscribe link unsubscribes; after a rotation the unsubscribe link
    still does, the preferences link is refused as a retired key's."""
    settings = settings_for(tmp_path)
    app = app_of(engine, settings)
    assert put(app, "e1", {"source": "signup", "email": "e@example.test"}).status == 200
    at = int((NOW - timedelta(days=3)).timestamp())
    tag = tokens.mailbox_tag(OLD.encode(), "e@example.test")
    preferences = v1_token(
        OLD.encode(), {"c": "e1", "k": "winback", "p": "preferences", "i": at, "m": tag}
    )
    unsubscribe = v1_token(OLD.encode(), {"c": "e1", "k": "winback", "p": "unsubscribe", "i": at})
    assert call(app, "GET", f"/p/{preferences}?lang=en").status == 200
    assert call(app, "GET", f"/p/{preferences}/data.json").status == 200

    app = app_of(engine, rotated(settings))
    reply = call(app, "GET", f"/p/{preferences}?lang=en")
    assert reply.status == 400 and "newer e-mail" in reply.text
    assert call(app, "GET", f"/u/{unsubscribe}").status == 200  # the confirm button
    assert person(engine, "e1").unsubscribed_at is None
    one_click = {"List-Unsubscribe": "One-Click"}
    assert call(app, "POST", f"/u/{unsubscribe}", data=one_click).status == 200
    assert person(engine, "e1").unsubscribed_at == NOW
    forged = v1_token(b"x" * 32, {"c": "e2", "k": "winback", "p": "unsubscribe", "i": at})
    assert call(app, "POST", f"/u/{forged}").status == 400


def test_an_old_link_of_a_customer_erased_under_the_old_key_stays_void(
    engine: sa.Engine, tmp_path: Path
) -> None:
    settings = settings_for(tmp_path)
    app = app_of(engine, settings)
    assert put(app, "e1", {"source": "signup", "email": "e@example.test"}).status == 200
    unsubscribe = tokens.sign(OLD.encode(), "e1", "winback", "unsubscribe", NOW)
    assert call(app, "DELETE", "/v1/privacy/customers/e1", headers=bearer("dpo")).status == 200
    app = app_of(engine, rotated(settings))
    assert call(app, "POST", f"/u/{unsubscribe}").status == 410
    assert put(app, "e1", {"source": "signup", "email": "e@example.test"}).status == 410
    with engine.connect() as connection:
        assert connection.execute(sa.select(contact_events)).first() is None


def test_no_link_is_signed_under_a_retired_key(
    cli_store: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", NEW)
    monkeypatch.setenv("RECOCAMP_SIGNING_KEYS_RETIRED", OLD)
    monkeypatch.setattr(common.clock, "now", lambda: NOW)
    people = write_csv(tmp_path / "people.csv", ["id", "email"], [["c1", "c1@example.test"]])
    assert cli_store.invoke(cli, ["import", "customers", str(people)]).exit_code == 0
    for purpose in ("unsubscribe", "preferences"):
        done = cli_store.invoke(cli, ["link", "c1", "--purpose", purpose])
        assert done.exit_code == 0, done.output
        token = done.stdout.strip().rsplit("/", 1)[1]
        assert tokens.verify(NEW.encode(), token, purpose, NOW).customer_id == "c1"
        with pytest.raises(tokens.TokenError):
            tokens.verify(OLD.encode(), token, purpose, NOW)
        assert tokens.verify_any([NEW.encode(), OLD.encode()], token, purpose, NOW)[1] == 0


def test_a_short_signing_key_or_webhook_secret_is_warned_about_never_shown(
    cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", "hunter2!")
    monkeypatch.setenv("RECOCAMP_WEBHOOK_SECRET", "hooky")
    result = cli_store.invoke(cli, ["check"])
    assert result.exit_code == 0, result.output
    assert "signing_key" in result.stderr and "8 bytes" in result.stderr
    assert "webhook_secret" in result.stderr and "5 bytes" in result.stderr
    assert "hunter2" not in result.output and "hooky" not in result.output
    assert cli_store.invoke(cli, ["check", "--strict"]).exit_code == 2

    ran: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda *args, **kwargs: ran.append(kwargs))
    served = cli_store.invoke(cli, ["serve"])
    assert served.exit_code == 0 and ran, served.output
    assert "signing_key" in served.stderr and "hunter2" not in served.output
    worker = cli_store.invoke(cli, ["worker", "--once"])  # no ESP token: refused, warned first
    assert worker.exit_code == 2 and "RECOCAMP_ESP_TOKEN" in worker.stderr, worker.output
    assert "signing_key" in worker.stderr and "hunter2" not in worker.output

    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", NEW)
    monkeypatch.setenv("RECOCAMP_SIGNING_KEYS_RETIRED", "hunter2!")  # it only checks: fine
    monkeypatch.setenv("RECOCAMP_WEBHOOK_SECRET", "w" * 32)
    result = cli_store.invoke(cli, ["check", "--strict"])
    assert result.exit_code == 0, result.output
    assert "signing_key" not in result.stderr and "webhook_secret" not in result.stderr


@pytest.mark.parametrize(
    ("retired", "problem"),
    [
        (NEW, "lists the signing key itself"),
        (f"old-one {NEW}", "lists the signing key itself"),
        (" ".join(f"k{n}" for n in range(17)), "holds 17 keys, at most 16"),
        ('["not closed"', "is not a JSON list of strings"),
        ('[" "]', "lists an empty key (or white space only)"),
        ('["k16", "\\t\\n"]', "lists an empty key (or white space only)"),
        ('["k16", ""]', "lists an empty key (or white space only)"),
    ],
)
def test_a_wrong_list_of_retired_keys_is_refused_without_showing_a_key(
    cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch, retired: str, problem: str
) -> None:
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", NEW)
    monkeypatch.setenv("RECOCAMP_SIGNING_KEYS_RETIRED", retired)
    result = cli_store.invoke(cli, ["check"])
    assert result.exit_code == 2 and problem in result.stderr, result.output
    assert "RECOCAMP_SIGNING_KEYS_RETIRED" in result.stderr
    assert NEW not in result.output and "k16" not in result.output and "closed" not in result.output


def test_retired_keys_are_read_as_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECOCAMP_SIGNING_KEYS_RETIRED", '["old key one", "k2"]')
    settings = Settings(signing_key=SecretStr(NEW))
    assert settings.signing_keys() == (NEW.encode(), b"old key one", b"k2")
    monkeypatch.setenv("RECOCAMP_SIGNING_KEYS_RETIRED", "k1\n k2  k1\n")
    assert Settings(signing_key=SecretStr(NEW)).retired_signing_keys() == (b"k1", b"k2")
    monkeypatch.setenv("RECOCAMP_SIGNING_KEYS_RETIRED", "k1")
    with pytest.raises(ValueError, match="needs RECOCAMP_SIGNING_KEY"):
        Settings()


@pytest.mark.parametrize("empty", ["", "   ", "\t\n"])
def test_an_empty_signing_key_is_refused_naming_the_variable(
    cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch, empty: str
) -> None:
    """An empty or white-space key is a key anyone knows: every link could be forged and
    every tombstone tested. Refused (exit 2, naming the variable), not warned about as short;
    nothing is imported under it."""
    monkeypatch.setenv("RECOCAMP_SIGNING_KEY", empty)
    result = cli_store.invoke(cli, ["check"])
    assert result.exit_code == 2, result.output
    assert "RECOCAMP_SIGNING_KEY" in result.stderr and "empty" in result.stderr
    people = write_csv(Path("people.csv"), ["id", "email"], [["c1", "c1@example.test"]])
    imported = cli_store.invoke(cli, ["import", "customers", str(people)])
    assert imported.exit_code == 2 and "RECOCAMP_SIGNING_KEY" in imported.stderr
    monkeypatch.delenv("RECOCAMP_SIGNING_KEY")  # unset: the store is as it was, empty
    listed = cli_store.invoke(cli, ["check"])
    assert listed.exit_code == 0, listed.output
    with sa.create_engine("sqlite:///shop.db").connect() as connection:
        assert connection.execute(sa.select(customers)).first() is None


def test_an_empty_demo_key_file_is_refused_naming_it(tmp_path: Path) -> None:
    from recocamp.cli.demo import demo_settings
    from recocamp.errors import ConfigError

    (tmp_path / "signing.key").write_text("\n")
    with pytest.raises(ConfigError, match=r"signing\.key"):
        demo_settings(Settings(), "http://127.0.0.1:1", tmp_path)
    (tmp_path / "signing.key").unlink()
    made = demo_settings(Settings(), "http://127.0.0.1:1", tmp_path).signing_key_bytes()
    assert made is not None and len(made) >= 32


def erased_signed_up_again_and_rolled_back(
    engine: sa.Engine, tmp_path: Path, purpose: str
) -> tuple[str, FastAPI]:
    """A link of customer e1 signed under the old key, then e1 erased under the new key and
    signed up again (no tombstone left), then the new key dropped and the old one signing
    again (a rotation rolled back): the link and the rolled-back app."""
    settings = settings_for(tmp_path)
    app = app_of(engine, settings)
    assert put(app, "e1", {"source": "signup", "email": "e@example.test"}).status == 200
    at = NOW - timedelta(days=3)
    tag = tokens.mailbox_tag(OLD.encode(), "e@example.test")
    link = tokens.sign(OLD.encode(), "e1", "winback", purpose, at, mailbox=tag)
    app = app_of(engine, rotated(settings))
    assert call(app, "DELETE", "/v1/privacy/customers/e1", headers=bearer("dpo")).status == 200
    later = NOW + timedelta(days=1)
    again = create_app(rotated(settings), engine, FixedClock(later))
    fresh = {"consent_basis": "double_opt_in", "consent_at": later.isoformat()}
    body = {"source": "signup", "email": "e@example.test", "new_sign_up": True, **fresh}
    assert put(again, "e1", body).status == 200
    with engine.connect() as connection:
        assert tombstones_store.count(connection) == 0
    return link, create_app(settings, engine, FixedClock(later + timedelta(hours=1)))


def test_an_erased_records_old_link_stays_void_when_the_erasures_key_is_dropped(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """The erased record's preferences link, signed under the old key before the erasure,
    opened the new record's page, its data and its erase button after the rotation was
    rolled back. void_link looked for the id's erasure under the keys configured only; it
    now refuses, as every check does, while a key that made a tombstone is missing (503,
    nothing shown, nothing written)."""
    preferences, rolled_back = erased_signed_up_again_and_rolled_back(
        engine, tmp_path, "preferences"
    )
    for method, path in (
        ("GET", f"/p/{preferences}?lang=en"),
        ("GET", f"/p/{preferences}/data.json"),
    ):
        reply = call(rolled_back, method, path)
        assert reply.status == 503, (path, reply.status)
        assert "e@example.test" not in reply.text
    reply = call(
        rolled_back, "POST", f"/p/{preferences}?lang=en", data={"action": "erase", "confirm": "on"}
    )
    assert reply.status == 503
    assert person(engine, "e1").erased_at is None


def test_an_unsubscribe_link_still_acts_while_the_erasures_key_is_missing(
    engine: sa.Engine, tmp_path: Path
) -> None:
    """The same rolled-back rotation: every other link of the erased record answers 503
    until the key is back, but an unsubscribe is owed at any time (UWG §7(3) no. 4) and its
    worst is to stop mail to the record signed up again under the id."""
    unsubscribe, rolled_back = erased_signed_up_again_and_rolled_back(
        engine, tmp_path, "unsubscribe"
    )
    assert call(rolled_back, "GET", f"/u/{unsubscribe}?lang=en").status == 200
    assert call(rolled_back, "POST", f"/u/{unsubscribe}").status == 200
    assert person(engine, "e1").unsubscribed_at is not None


AT = int((NOW - timedelta(days=3)).timestamp())  # a time the links below may carry


@pytest.mark.parametrize(
    "claims",
    [
        {"c": "e1", "k": "winback", "p": "unsubscribe"},  # no time
        {"c": "e1", "k": "winback", "p": "unsubscribe", "i": "soon"},
        {"c": "e1", "k": "winback", "p": "unsubscribe", "i": 10**20},  # past any datetime
        {"c": "e1", "k": "winback", "p": "unsubscribe", "i": 1e400},  # JSON's 1e400: infinity
        {"k": "winback", "p": "unsubscribe", "i": AT},  # no customer
        {"c": ["e1"], "k": "winback", "p": "unsubscribe", "i": AT},
        {"c": "e1", "k": "w" * 5000, "p": "unsubscribe", "i": AT},
        ["e1", "winback", "unsubscribe"],
    ],
)
def test_a_retired_keys_link_with_claims_of_the_wrong_shape_is_refused_not_a_500(
    engine: sa.Engine, tmp_path: Path, claims: Any
) -> None:
    """A retired key is weak or known: whoever holds it seals any claims they like, and the
    pages still open its unsubscribe links. Claims that no ``tokens.sign`` writes (a missing
    or non-numeric time, a time past the calendar, a customer that is no text, claims that
    are a list) were read outside the token's check: a 500, or a 5,000-character campaign
    stored with the unsubscribe. Now 400, and nothing written."""
    settings = settings_for(tmp_path)
    app = app_of(engine, settings)
    assert put(app, "e1", {"source": "signup", "email": "e@example.test"}).status == 200
    app = app_of(engine, rotated(settings))
    for method in ("GET", "POST"):
        reply = answered(app, method, f"/u/{v1_token(OLD.encode(), claims)}")
        assert reply.status == 400, (method, reply.text)
        assert reply.headers["cache-control"] == "no-store"
    assert person(engine, "e1").unsubscribed_at is None
    with engine.connect() as connection:
        assert connection.execute(sa.select(contact_events)).first() is None


FORGED = "\n2026-12-06 07:00:00 INFO recocamp.api.pages: unsubscribe customer c9 via nps link"


@pytest.mark.parametrize(
    "claims",
    [
        {"c": "e1", "k": f"winback{FORGED}", "p": "unsubscribe", "i": AT},
        {"c": "e1", "k": "winback\r", "p": "unsubscribe", "i": AT},
        {"c": "e1", "k": "winback\x1b[2K", "p": "unsubscribe", "i": AT},  # erases the line
        {"c": "e1", "k": "winback\u2028x", "p": "unsubscribe", "i": AT},
        {"c": "e1", "k": "winback", "p": "unsubscribe", "i": AT, "s": "nps\n/2026-01-15"},
        {"c": f"e1{FORGED}", "k": "winback", "p": "unsubscribe", "i": AT},
    ],
)
def test_a_retired_keys_link_with_a_line_break_in_a_claim_is_refused_and_logs_nothing(
    engine: sa.Engine, tmp_path: Path, claims: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A retired key's holder sealed a campaign holding a line break: the unsubscribe was
    taken and its log line ("unsubscribe customer e1 via … link") wrote the forged line
    after it. A claim that no ``tokens.sign`` writes is a malformed token: 400, nothing
    written, nothing logged of it."""
    settings = settings_for(tmp_path)
    app = app_of(engine, settings)
    assert put(app, "e1", {"source": "signup", "email": "e@example.test"}).status == 200
    app = app_of(engine, rotated(settings))
    with caplog.at_level("INFO"):
        for method in ("GET", "POST"):
            reply = answered(app, method, f"/u/{v1_token(OLD.encode(), claims)}")
            assert reply.status == 400, (method, reply.text)
    assert "c9" not in caplog.text and "winback" not in caplog.text
    assert person(engine, "e1").unsubscribed_at is None
    with engine.connect() as connection:
        assert connection.execute(sa.select(contact_events)).first() is None
