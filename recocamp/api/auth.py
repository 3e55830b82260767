"""API keys with scopes for the shop-facing endpoints, and a rate limit per key.

A client sends ``Authorization: Bearer rck_…`` (``rck_`` + 43 URL-safe characters, 256
random bits, minted by ``recocamp api-key new NAME --scope …``). The server knows keys only
by their SHA-256, from the environment (``RECOCAMP_API_KEYS``, never a settings file)::

    RECOCAMP_API_KEYS="shop-web=offers:read,events:write=sha256:<64 hex>;
                       dpo=privacy:admin=sha256:<64 hex>"

Entries are ``NAME=SCOPE[,SCOPE…]=sha256:HEX``, separated by ``;`` or white space. Scopes:
``offers:read`` (next-best offers, similar items, forecasts), ``events:write`` (purchases, customer
profile and consent), ``privacy:admin`` (export, erasure, purge), ``reports:read``
(measurement).

Why a plain SHA-256 and not a password hash: the keys are long random strings, not
passwords, so nobody can guess one from its hash, while a deliberately slow hash would cost
tens of milliseconds on every request. Every configured hash is compared with
``hmac.compare_digest`` and without an early exit, so response times reveal neither which
key matched nor how much of a wrong one did; a header that named a key once is remembered
and not hashed again (:class:`Authenticator`), which tells nothing to one who does not hold it.

The rate limit is a token bucket per key and process: ``[api] rate_limit_per_minute`` is
shared out evenly between the ``[api] workers`` processes of ``recocamp serve``.

Failed authentications (401: no key, an unknown key, a webhook's wrong secret or signature,
``api.webhooks``) are limited per client address (:func:`client_of`; an IPv6 address by its
/64): ``[api] auth_failures_per_minute``, shared out the same way. A client past it gets 429
with ``Retry-After`` before its credentials are checked, the right ones too: otherwise its
guesses would go on at full speed, answered 429 when wrong and 200 when right. A client
whose credentials are right never spends any, so only an address that keeps failing waits.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, cast

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from recocamp.errors import ConfigError, Problem
from recocamp.ratelimit import RateLimiter

SCOPES = ("offers:read", "events:write", "privacy:admin", "reports:read")
KEY_PREFIX = "rck_"
ENV_NAME = "RECOCAMP_API_KEYS"
_ENTRY = re.compile(
    r"^(?P<name>[A-Za-z0-9_.-]{1,64})=(?P<scopes>[a-z:,]+)=sha256:(?P<hex>[0-9a-f]{64})$"
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
MAX_CLIENTS = 100_000  # client addresses whose failed authentications are remembered
ADMITTED_HEADERS = 256  # Authorization headers remembered with the key they name,
ADMITTED_LENGTH = 128  # each at most this long ("Bearer rck_…" is 54 characters)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured key: its name (for logs, metrics and the audit log), scopes and hash."""

    name: str
    scopes: frozenset[str]
    digest: bytes


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def mint(name: str, scopes: list[str]) -> tuple[str, str]:
    """A new random key and its ``RECOCAMP_API_KEYS`` entry (the key itself is shown once)."""
    problems = _entry_problems(name, scopes)
    if problems:
        raise ConfigError(Path("recocamp api-key new"), problems)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, f"{name}={','.join(scopes)}=sha256:{digest(key).hex()}"


def _entry_problems(name: str, scopes: list[str], key: str | None = None) -> list[Problem]:
    found = []
    if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        found.append(
            Problem("a key name is 1-64 letters, digits, '_', '.' or '-'", key=key, value=name)
        )
    unknown = [scope for scope in scopes if scope not in SCOPES]
    if unknown or not scopes:
        found.append(
            Problem(
                f"scopes must be some of {', '.join(SCOPES)}",
                key=key,
                value=",".join(unknown) or "(none)",
            )
        )
    return found


def _shown(head: str) -> str | None:
    """The start of a malformed entry (up to its first ``=``) as its problem shows it: only
    when it could be a name. A key pasted where its entry belongs (``rck_…``, the secret
    itself) or anything else went to stderr and the supervisor's log with the problem."""
    if head.startswith(KEY_PREFIX) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", head):
        return None
    return head


def parse_keys(text: str | None) -> tuple[ApiKey, ...]:
    """The keys of ``RECOCAMP_API_KEYS``; every malformed entry is reported at once (by its
    position and name: a well-formed entry carries no secret, only a hash, and a malformed
    one is named only where its start could be a name, :func:`_shown`)."""
    keys: list[ApiKey] = []
    problems: list[Problem] = []
    entries: dict[bytes, tuple[str, str]] = {}  # a hash → the entry and name it came with
    for number, entry in enumerate(re.split(r"[;\s]+", (text or "").strip()), start=1):
        if not entry:
            continue
        where = f"entry {number}"
        match = _ENTRY.match(entry)
        if match is None:
            problems.append(
                Problem(
                    "expected NAME=SCOPE[,SCOPE…]=sha256:<64 lowercase hex> (the key's "
                    "sha256, never the key: recocamp api-key new prints the entry)",
                    key=where,
                    value=_shown(entry.split("=", 1)[0]),
                )
            )
            continue
        scopes = match["scopes"].split(",")
        found = _entry_problems(match["name"], scopes, where)
        if any(k.name == match["name"] for k in keys):
            found.append(Problem("the same key name appears twice", key=where, value=match["name"]))
        key = ApiKey(match["name"], frozenset(scopes), bytes.fromhex(match["hex"]))
        if key.digest in entries:  # the last match decided a key's name and scopes
            first, name = entries[key.digest]
            found.append(
                Problem(
                    f"the same key (its sha256) as {first} ({name!r}): one key would get "
                    "one entry's name and scopes, which is not said; mint a key per name "
                    "(recocamp api-key new)",
                    key=where,
                    value=match["name"],
                )
            )
        entries.setdefault(key.digest, (where, key.name))
        problems += found
        keys.append(key)
    if problems:
        raise ConfigError(Path(ENV_NAME), problems)
    return tuple(keys)


def client_of(scope: Mapping[str, Any]) -> str:
    """The client address failed authentications are counted under: the address (behind a
    proxy that uvicorn trusts, the one it forwards), an IPv6 one by its /64, since one
    machine holds a /64 and could change address on every try."""
    client = scope.get("client")
    host = str(client[0]) if client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 6:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return host


def retry_after(wait_s: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, round(wait_s + 0.5)))}


class Authenticator:
    """Checks ``Authorization: Bearer`` headers against the configured keys and scopes, and
    counts failed authentications per client address (``failures``; the webhooks' too).

    A header that named a configured key once is remembered (:attr:`admitted`, at most
    :data:`ADMITTED_HEADERS` of at most :data:`ADMITTED_LENGTH` characters), so a shop's
    widget, which sends the same header on every request, pays one dict lookup rather than
    the hash, the comparison with every key and the header's parsing (~3 µs of a cached
    next-best offer's ~55). A header not remembered takes the full path as before, whatever
    it holds: a dict compares a string only with entries whose (per-process, randomly
    seeded) hash it shares, so how long a miss takes says nothing of how much of a key was
    right."""

    def __init__(
        self, keys: tuple[ApiKey, ...], limiter: RateLimiter, failures: RateLimiter | None = None
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        self.failures = failures or RateLimiter.per_minute(60, max_keys=MAX_CLIENTS)
        self.admitted: dict[str, ApiKey] = {}  # an Authorization header → the key it names

    def guard(self, client: str) -> None:
        """429 with ``Retry-After`` when ``client`` spent its failed authentications: before
        any credential is checked (see the module's docstring)."""
        wait = self.failures.due_s(client)
        if wait > 0:
            raise HTTPException(
                429, "too many failed authentications from this address", retry_after(wait)
            )

    def failed(self, client: str) -> None:
        """Count a failed authentication (a 401) of ``client``."""
        self.failures.spend(client)

    def find(self, presented: str) -> ApiKey | None:
        wanted = digest(presented)
        found = None
        for key in self.keys:  # no early exit: the time taken does not depend on the match
            if hmac.compare_digest(key.digest, wanted):
                found = key
        return found

    def admits(self, authorization: str | None, scope: str) -> ApiKey:
        """The caller's key, or an HTTPException: 401 (no or unknown key), 403 (key without
        ``scope``). Costs no rate-limit token (:meth:`check` takes one)."""
        key = self.admitted.get(authorization) if authorization is not None else None
        if key is None:
            key = self._named(authorization)
        if scope not in key.scopes:
            raise HTTPException(403, f"API key {key.name!r} lacks the scope {scope!r}")
        return key

    def _named(self, authorization: str | None) -> ApiKey:
        """The key the header names (remembered: see the class), or a 401."""
        scheme, _, presented = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            raise HTTPException(401, "send an API key: Authorization: Bearer <key>", _CHALLENGE)
        key = self.find(presented.strip())
        if key is None:
            raise HTTPException(401, "unknown API key", _CHALLENGE)
        assert authorization is not None  # it held a key
        if len(authorization) <= ADMITTED_LENGTH:  # not one padded with kilobytes of spaces
            if len(self.admitted) >= ADMITTED_HEADERS:  # spellings of the keys' headers
                self.admitted.clear()
            self.admitted[authorization] = key
        return key

    def check(
        self, authorization: str | None, scope: str, request: Mapping[str, Any] | None = None
    ) -> ApiKey:
        """The caller's key, or an HTTPException: 401 (no or unknown key), 403 (key without
        ``scope``), 429 (over the rate limit, or the client of the ``request`` scope, its
        address (:func:`client_of`), failed too often; with ``Retry-After``). The address is
        only worked out while some client has failed lately: the next-best offer's hot path
        pays nothing for it otherwise."""
        if self.failures.buckets:
            self.guard(client_of(request or {}))
        try:
            key = self.admits(authorization, scope)
        except HTTPException as refused:
            if refused.status_code == 401:
                self.failed(client_of(request or {}))
            raise
        wait = self.limiter.wait_s(key.name)
        if wait > 0:
            raise HTTPException(
                429, f"rate limit of API key {key.name!r} reached", retry_after(wait)
            )
        return key

    def require(self, scope: str) -> Callable[..., Coroutine[Any, Any, ApiKey]]:
        """The FastAPI dependency that admits keys with ``scope`` (see :func:`scoped`)."""
        return scoped(scope)


# request scope key: (scope, ApiKey) of a request whose key :meth:`Authenticator.check` passed
# before its body was read (``bodies.json_route``); the route's own dependency takes that
# rather than a second token
ADMITTED = "recocamp.admitted"
BEARER = HTTPBearer(auto_error=False, description="An API key (rck_…).")


def scoped(scope: str) -> Callable[..., Coroutine[Any, Any, ApiKey]]:
    """A dependency admitting keys with ``scope``, checked by the app's Authenticator
    (``app.state.authenticator``); async, so it costs no thread hop."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(BEARER),  # noqa: B008
    ) -> ApiKey:
        admitted = request.scope.get(ADMITTED)
        if admitted is not None and admitted[0] == scope:  # checked before the body was read
            return cast(ApiKey, admitted[1])
        authenticator: Authenticator = request.app.state.authenticator
        header = f"Bearer {credentials.credentials}" if credentials is not None else None
        return authenticator.check(header, scope, request.scope)

    return dependency


OffersRead = Annotated[ApiKey, Depends(scoped("offers:read"))]
EventsWrite = Annotated[ApiKey, Depends(scoped("events:write"))]
PrivacyAdmin = Annotated[ApiKey, Depends(scoped("privacy:admin"))]
