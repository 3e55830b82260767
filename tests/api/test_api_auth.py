"""API keys: the RECOCAMP_API_KEYS format, hashes compared in constant time, scopes per
endpoint, the rate limit per key, and the command that mints keys."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import uvicorn
from fastapi import HTTPException
from typer.testing import CliRunner

from recocamp.api.auth import ADMITTED_HEADERS, ApiKey, Authenticator, digest, mint, parse_keys
from recocamp.cli import app as cli
from recocamp.errors import ConfigError
from recocamp.ratelimit import RateLimiter
from tests.api_shop import ENTRIES, KEYS, Closing, bearer, call, make_app

HEX = "ab" * 32
HEX2, HEX3 = "cd" * 32, "ef" * 32  # other keys: a hash is configured once


# every keyed endpoint, a request it accepts (given the scope), and the scope it needs
ENDPOINTS: list[tuple[str, str, dict[str, Any], str]] = [
    ("GET", "/v1/customers/c1/next-best-offer", {}, "offers:read"),
    ("GET", "/v1/items/i1/similar", {}, "offers:read"),
    (
        "POST",
        "/v1/events/purchases",
        {
            "json": {
                "order_id": "o1",
                "ordered_at": "2012-01-01T10:00:00+00:00",
                "lines": [{"item_id": "i1", "quantity": 1, "unit_price": 2.0}],
            }
        },
        "events:write",
    ),
    (
        "POST",
        "/v1/events/reviews",
        {
            "json": {
                "review_id": "r1",
                "customer_id": "c1",
                "occurred_at": "2012-01-01T10:00:00+00:00",
            }
        },
        "events:write",
    ),
    ("PUT", "/v1/customers/c1", {"json": {"source": "test", "locale": "de"}}, "events:write"),
    ("GET", "/v1/privacy/customers/c1", {}, "privacy:admin"),
    ("DELETE", "/v1/privacy/customers/c1", {}, "privacy:admin"),
    ("POST", "/v1/privacy/purge", {}, "privacy:admin"),
    ("GET", "/v1/privacy/retention", {}, "privacy:admin"),
    ("GET", "/reports/latest", {}, "reports:read"),
]


def test_keys_are_read_from_their_entries() -> None:
    keys = parse_keys(
        f"web=offers:read,events:write=sha256:{HEX};\n dpo=privacy:admin=sha256:{HEX2}"
    )
    assert keys == (
        ApiKey("web", frozenset({"offers:read", "events:write"}), bytes.fromhex(HEX)),
        ApiKey("dpo", frozenset({"privacy:admin"}), bytes.fromhex(HEX2)),
    )
    assert parse_keys(None) == () and parse_keys("  ") == ()


def test_every_broken_entry_is_reported_by_position_and_name() -> None:
    text = (
        f"web=offers:read=sha256:{HEX}; bad-entry; x=offers:write=sha256:{HEX2}; "
        f"web=events:write=sha256:{HEX3}; short=offers:read=sha256:abc"
    )
    with pytest.raises(ConfigError) as caught:
        parse_keys(text)
    message = str(caught.value)
    assert "RECOCAMP_API_KEYS" in message and "4 problem(s)" in message
    assert "'entry 2'" in message and "'bad-entry'" in message
    assert "'entry 3'" in message and "offers:write" in message  # unknown scope, named
    assert "'entry 4'" in message and "appears twice" in message
    assert "'entry 5'" in message


@pytest.mark.parametrize(
    "entry",
    [
        "rck_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg",  # the key instead of its entry
        "rck_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg=offers:read",
        "s3cr3t/k3y+with:signs",
    ],
)
def test_a_key_pasted_as_an_entry_is_never_shown(
    entry: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A malformed entry was named by its start, up to its first ``=``: the key itself,
    pasted where its entry belongs, went to stderr (``serve``) and the supervisor's log."""
    with pytest.raises(ConfigError) as caught:
        parse_keys(f"web=offers:read=sha256:{HEX}; {entry}")
    [problem] = caught.value.problems
    assert problem.key == "entry 2" and problem.value is None
    assert entry.split("=")[0] not in str(caught.value)
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", str(engine.url.render_as_string(False)))
    monkeypatch.setenv("RECOCAMP_API_KEYS", entry)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 2 and "entry 1" in result.output, result.output
    assert entry.split("=")[0] not in result.output


def test_one_key_configured_under_two_names_is_refused() -> None:
    """The last entry whose hash matches decides a key's name and scopes: the shop's key
    pasted again as the DPO's entry (``dpo=privacy:admin=sha256:<the shop's hash>``) gave
    the shop's website the right to export and erase any customer, and the audit log wrote
    its requests as the DPO's."""
    text = f"web=offers:read=sha256:{HEX}; dpo=privacy:admin=sha256:{HEX}"
    with pytest.raises(ConfigError) as caught:
        parse_keys(text)
    [problem] = caught.value.problems
    assert (problem.key, problem.value) == ("entry 2", "dpo")
    assert "entry 1" in problem.message and "'web'" in problem.message
    assert HEX not in str(caught.value)


def test_a_minted_key_matches_its_entry_and_is_random() -> None:
    key, entry = mint("shop-web", ["offers:read"])
    assert key.startswith("rck_") and len(key) == 47
    (parsed,) = parse_keys(entry)
    assert parsed.name == "shop-web" and parsed.digest == digest(key)
    assert key not in entry  # the entry holds the hash only
    assert mint("shop-web", ["offers:read"])[0] != key
    with pytest.raises(ConfigError):
        mint("no spaces allowed", ["offers:read"])
    with pytest.raises(ConfigError):
        mint("ok", ["everything"])


def test_every_configured_hash_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = parse_keys(ENTRIES)
    compared: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # the module ``api.auth`` calls
    found = Authenticator(keys, RateLimiter.per_minute(60)).find(KEYS["shop"][0])
    assert found is not None and found.name == "shop"
    assert compared == [key.digest for key in keys]  # no early exit at the first match


def test_a_header_seen_before_is_admitted_without_hashing_with_the_same_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The widget's header, remembered, is not hashed again; scopes, unknown keys, the rate
    limit and the bound on what is remembered hold as on the first request."""
    now = [0.0]
    auth = Authenticator(parse_keys(ENTRIES), RateLimiter.per_minute(2, monotonic=lambda: now[0]))
    compared: list[bytes] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    reader = bearer("reader")["authorization"]
    assert auth.check(reader, "offers:read").name == "reader"
    assert len(compared) == len(auth.keys)
    assert auth.check(reader, "offers:read").name == "reader"  # remembered: nothing compared
    assert len(compared) == len(auth.keys)
    with pytest.raises(HTTPException) as refused:  # the scope is checked every time
        auth.check(reader, "events:write")
    assert refused.value.status_code == 403
    with pytest.raises(HTTPException) as limited:  # so is the rate limit (2 a minute)
        auth.check(reader, "offers:read")
    assert limited.value.status_code == 429
    for wrong in (reader[:-1], reader + "x", reader.upper(), None):  # near misses: hashed
        with pytest.raises(HTTPException) as unknown:
            auth.check(wrong, "offers:read")
        assert unknown.value.status_code == 401
    for spaces in range(ADMITTED_HEADERS + 5):  # spellings of one header, each remembered
        now[0] += 60
        auth.check(reader + " " * spaces, "offers:read")
    assert 0 < len(auth.admitted) <= ADMITTED_HEADERS
    auth.admitted.clear()
    padded = reader + " " * 10_000  # a key padded with spaces is taken, never remembered
    assert auth.check(padded, "offers:read").name == "reader"
    assert padded not in auth.admitted and reader not in auth.admitted


def test_the_rate_limit_is_a_token_bucket_per_key() -> None:
    now = [100.0]
    limiter = RateLimiter.per_minute(120, monotonic=lambda: now[0])  # 2 a second, bursts of 120
    assert all(limiter.wait_s("a") == 0 for _ in range(120))
    assert limiter.wait_s("a") == pytest.approx(0.5)
    assert limiter.wait_s("b") == 0  # another key has its own bucket
    now[0] += 0.5
    assert limiter.wait_s("a") == 0
    assert limiter.wait_s("a") > 0


@pytest.mark.parametrize(("method", "path", "extra", "scope"), ENDPOINTS)
def test_keyed_endpoints_refuse_missing_unknown_and_out_of_scope_keys(
    closing: Closing,
    engine: sa.Engine,
    tmp_path: Path,
    method: str,
    path: str,
    extra: dict[str, Any],
    scope: str,
) -> None:
    app = closing(make_app(engine, tmp_path))
    missing = call(app, method, path, **extra)
    assert missing.status == 401 and missing.headers["www-authenticate"] == "Bearer"
    unknown = call(app, method, path, headers={"authorization": "Bearer rck_nope"}, **extra)
    assert unknown.status == 401 and unknown.json() == {"detail": "unknown API key"}
    basic = call(app, method, path, headers={"authorization": "Basic c2hvcDpzaG9w"}, **extra)
    assert basic.status == 401
    for name, (_, scopes) in KEYS.items():
        reply = call(app, method, path, headers=bearer(name), **extra)
        if scope in scopes.split(","):
            assert reply.status not in (401, 403), (name, reply.text)
        else:
            assert reply.status == 403, (name, reply.text)
            assert scope in reply.json()["detail"] and name in reply.json()["detail"]


BODY_ROUTES = [(method, path) for method, path, extra, _ in ENDPOINTS if "json" in extra]
BAD_BODIES: list[dict[str, Any]] = [
    {
        "content": b'{"order_id": "o1", "order_id": "o2"}',
        "headers": {"content-type": "application/json"},
    },
    {"content": b'{"order_id": ', "headers": {"content-type": "application/json"}},
    {"content": b"order_id=o1", "headers": {"content-type": "application/x-www-form-urlencoded"}},
    {"json": {"unexpected": True}},
]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES)
def test_a_body_route_asks_for_the_key_before_it_reads_the_body(
    closing: Closing, engine: sa.Engine, tmp_path: Path, method: str, path: str
) -> None:
    """README: 401 without a known key, 403 for a missing scope. FastAPI reads and validates
    a body before a route's dependencies run, so a caller without a key got the body's 400
    (a key twice), 422 (broken JSON, wrong fields) or 415 (not JSON) instead, and made the
    server parse whatever it sent."""
    app = closing(make_app(engine, tmp_path))
    for body in BAD_BODIES:
        headers = dict(body.get("headers", {}))
        rest = {k: v for k, v in body.items() if k != "headers"}
        missing = call(app, method, path, headers=headers, **rest)
        assert missing.status == 401, (body, missing.text)
        assert missing.headers["www-authenticate"] == "Bearer"
        reader = call(app, method, path, headers={**headers, **bearer("reader")}, **rest)
        assert reader.status == 403, (body, reader.text)
    with_key = call(
        app,
        method,
        path,
        headers={**BAD_BODIES[0]["headers"], **bearer("shop")},
        content=BAD_BODIES[0]["content"],
    )
    assert with_key.status == 400 and "twice" in with_key.json()["detail"]


def test_a_body_route_counts_one_request_against_the_rate_limit(
    closing: Closing, engine: sa.Engine, tmp_path: Path
) -> None:
    """The key is checked before the body and again by the route's dependency: only the
    second takes from the key's bucket."""
    app = closing(make_app(engine, tmp_path, rate_limit_per_minute=2))
    body = {"json": {"source": "test", "locale": "de"}}
    answers = [
        call(app, "PUT", "/v1/customers/c1", headers=bearer("shop"), **body).status
        for _ in range(3)
    ]
    assert answers == [200, 200, 429]


def test_the_rate_limit_holds_for_bodies_that_are_refused(
    closing: Closing, engine: sa.Engine, tmp_path: Path
) -> None:
    """The limit was taken by the route's dependency, which FastAPI runs after the body was
    read and validated: a client looping on a broken body (400, 415, 422) was never answered
    429, and the server parsed every one. Now the fourth request of three a minute is 429
    before its body is read, whatever the body; a valid one after them is 429 too."""
    app = closing(make_app(engine, tmp_path, rate_limit_per_minute=3))
    bodies: list[dict[str, Any]] = [
        {"content": b"{broken", "headers": {"content-type": "application/json"}},
        {"content": b'{"source": 1}', "headers": {"content-type": "application/json"}},
        {"content": b"source=x", "headers": {"content-type": "text/plain"}},
        {"content": b"{broken", "headers": {"content-type": "application/json"}},
    ]
    answers = []
    for body in bodies:
        headers = {**body["headers"], **bearer("shop")}
        reply = call(app, "PUT", "/v1/customers/c1", headers=headers, content=body["content"])
        answers.append(reply.status)
    assert answers == [422, 422, 415, 429]
    valid = call(app, "PUT", "/v1/customers/c1", headers=bearer("shop"), json={"source": "t"})
    assert valid.status == 429 and int(valid.headers["retry-after"]) >= 1


def test_over_the_rate_limit_is_429_with_retry_after(
    closing: Closing, engine: sa.Engine, tmp_path: Path
) -> None:
    app = closing(make_app(engine, tmp_path, rate_limit_per_minute=3))
    path = "/v1/customers/c1/next-best-offer"
    assert [call(app, "GET", path, headers=bearer("shop")).status for _ in range(3)] == [200] * 3
    limited = call(app, "GET", path, headers=bearer("shop"))
    assert limited.status == 429 and int(limited.headers["retry-after"]) >= 1
    assert "'shop'" in limited.json()["detail"]
    assert call(app, "GET", path, headers=bearer("reader")).status == 200  # its own bucket


def test_no_key_and_no_address_reaches_the_logs(
    closing: Closing, engine: sa.Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = closing(make_app(engine, tmp_path))
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="recocamp")  # whatever an earlier test left there
    body = {"source": "checkout", "email": "secret.person@example.test", "first_name": "Zed"}
    assert call(app, "PUT", "/v1/customers/c9", json=body, headers=bearer("shop")).status == 200
    call(app, "GET", "/v1/customers/c9/next-best-offer", headers=bearer("shop"))
    text = caplog.text
    assert "customer c9 created by shop" in text
    assert "secret.person" not in text and KEYS["shop"][0] not in text


def test_serve_refuses_broken_keys_before_starting(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", str(engine.url.render_as_string(False)))
    monkeypatch.setenv("RECOCAMP_API_KEYS", "web=offers:read=md5:1234")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 2
    assert "RECOCAMP_API_KEYS" in result.output and "entry 1" in result.output


@pytest.mark.parametrize("keys", [None, "", " ; "])
def test_serve_without_keys_says_every_keyed_route_will_answer_401(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, keys: str | None
) -> None:
    """README's "Serve the demo" starts ``serve`` with the signing key alone: every request
    with a freshly minted key then got 401 "unknown API key", and nothing said the server
    knows no key at all."""
    monkeypatch.setenv("RECOCAMP_DATABASE_URL", str(engine.url.render_as_string(False)))
    if keys is None:
        monkeypatch.delenv("RECOCAMP_API_KEYS", raising=False)
    else:
        monkeypatch.setenv("RECOCAMP_API_KEYS", keys)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **options: None)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["serve", "--workers", "1"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "warning: RECOCAMP_API_KEYS is not set" in said
    assert "`recocamp api-key new NAME --scope SCOPE`" in said
    monkeypatch.setenv("RECOCAMP_API_KEYS", ENTRIES)
    quiet = CliRunner().invoke(cli, ["serve", "--workers", "1"])
    assert quiet.exit_code == 0 and "RECOCAMP_API_KEYS" not in quiet.output


def test_api_key_new_prints_the_key_once_and_its_entry() -> None:
    result = CliRunner().invoke(
        cli, ["api-key", "new", "shop-web", "--scope", "offers:read", "--scope", "events:write"]
    )
    assert result.exit_code == 0, result.output
    key = next(word for word in result.output.split() if word.startswith("rck_"))
    entry = result.output.strip().splitlines()[-1]
    (parsed,) = parse_keys(entry)
    assert parsed.digest == digest(key) and parsed.scopes == {"offers:read", "events:write"}
