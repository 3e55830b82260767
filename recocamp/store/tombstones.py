"""Erasure tombstones: what keeps an erased customer erased when a feed brings them back.

Erasure removes the person; a customers file, the drop folder, the shop API or a purchase
event could otherwise create them again from the shop's own copy. A tombstone holds keyed
hashes (HMAC-SHA256 under ``RECOCAMP_SIGNING_KEY``, the link tokens' key; see
``tokens.keyed_hash``) of the customer id and of the address, and the time of the erasure:
no personal data, and nobody without the key can test a guess against it.

**Rotating the key.** A keyed hash cannot be made again under a new key, so the old key
stays, as a retired one (``RECOCAMP_SIGNING_KEYS_RETIRED``, ``Settings.signing_keys``):
``key`` below is :data:`Keys`, the signing key first and the retired ones after it. Every
check matches a tombstone made under any of them; a tombstone and an erasure's time are
only ever written under the first (the signing key). A retired key must be kept as long as
the tombstones made under it matter: dropping it lets those erased customers back in.

**Which keys.** A tombstone made under a key that is no longer configured (a rotation that
did not retire the old key, a retired key dropped later) matches nothing: its erased
customer would come back, silently. So every key that writes a tombstone is recorded by its
fingerprint (``tombstone_keys``, ``tokens.key_fingerprint``: never the key), and every check
refuses (:class:`KeyUnknown`, nothing written) while a recorded key is neither the signing
key nor a retired one. Tombstones stored before the fingerprints (migration 0022) name no
key: the first check that writes, with a key configured, records the keys configured then
as theirs (``recorded_at`` NULL), an assumption: the keys that ran the shop until the
upgrade made them. A fingerprint stays recorded once written (its key also made the
``id_erasures`` of its time, which outlive a lifted tombstone).

Every way in asks :func:`matches` (or :func:`erased_ids`) before it writes. A store that
holds tombstones but runs without the key cannot tell, and refuses (:class:`KeyMissing`)
instead of letting an erased customer back in; one whose tombstones were made under a key
it no longer has refuses as well (:class:`KeyUnknown`). An erasure is never refused for it:
its tombstone goes under the signing key, whatever else is missing.

A new sign-up with a fresh consent is the one way back (``PUT /v1/customers/{id}`` with
``new_sign_up``): :func:`lift` removes the tombstone of that id and frees the address.

The time of each id's latest erasure (``id_erasures``) outlives the tombstone: links signed
for the erased record (unsubscribe, preferences, feedback) carry the time they were issued,
and :func:`void_link` refuses every link issued before the erasure, also once the person
has signed up again under the same id. The old e-mail's links reach nobody.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from recocamp import tokens
from recocamp.domain import CLOCK_SKEW
from recocamp.errors import ConfigError, Problem
from recocamp.settings import Settings
from recocamp.store.locks import lock_key
from recocamp.store.queries import upsert_statement, write_lock
from recocamp.store.schema import id_erasures, tombstone_keys, tombstones

# the tombstones' key: one key, or the signing key first and the retired ones after it
# (``key_of``); hashes are written under the first only, and matched under each
Keys = bytes | tuple[bytes, ...]

CHUNK = 1000  # hashes per IN (...) list: far below every backend's parameter limit
LOCK = lock_key("erasure")  # see serialise


class KeyMissing(ConfigError):
    """Tombstones exist (or one must be written) but RECOCAMP_SIGNING_KEY is not set. The
    message names the variable, what needed it and why, and that nothing was written: the
    operator's one clue when an import that always worked stops after the first erasure."""

    def __init__(self, why: str, *, erasing: bool = False) -> None:
        if erasing:
            because = (
                "the tombstone that keeps the erased customer from coming back with the next "
                "import is keyed with it. Nothing was erased"
            )
        else:
            because = (
                "this store holds erasure tombstones (hashes keyed with it), and without the "
                "key it cannot tell whether a customer was erased, so it refuses rather than "
                "let one back in. Set RECOCAMP_SIGNING_KEY to the key the erasures were made "
                "with. Nothing was written"
            )
        super().__init__(
            Path("<environment>"),
            [
                Problem(
                    f"RECOCAMP_SIGNING_KEY is not set, and {why} needs it: {because}",
                    key="signing_key",
                )
            ],
        )


class KeyUnknown(KeyMissing):
    """Tombstones were made under a key that is neither ``RECOCAMP_SIGNING_KEY`` nor one of
    ``RECOCAMP_SIGNING_KEYS_RETIRED``: they match nothing under the keys set, so the check
    cannot tell. Names the missing keys by fingerprint (never a key), what needed them, how
    to put them back, and that nothing was written."""

    def __init__(self, why: str, missing: Sequence[str]) -> None:
        self.missing = tuple(missing)
        ConfigError.__init__(
            self,
            Path("<environment>"),
            [
                Problem(
                    f"{why} needs every key that made an erasure tombstone in this store, "
                    "and the key(s) of fingerprint "
                    f"{', '.join(self.missing)} (tokens.key_fingerprint) are neither "
                    "RECOCAMP_SIGNING_KEY nor in RECOCAMP_SIGNING_KEYS_RETIRED: the customers "
                    "erased under them cannot be recognised, so it refuses rather than let "
                    "them back in. Put the old key into RECOCAMP_SIGNING_KEYS_RETIRED (see "
                    "the README's Rotating the signing key). Nothing was written",
                    key="signing_keys_retired",
                )
            ],
        )

    def brief(self) -> str:
        """The answer of an API route: the variable and the fingerprints, nothing else."""
        return (
            "erasure tombstones were made under a signing key that is not configured "
            f"(fingerprint {', '.join(self.missing)}): put it into "
            "RECOCAMP_SIGNING_KEYS_RETIRED; nothing was written"
        )


def key_of(settings: Settings) -> tuple[bytes, ...] | None:
    """The tombstones' keys: the link tokens' key, from the same setting, then the retired
    ones (``RECOCAMP_SIGNING_KEYS_RETIRED``); None without a signing key."""
    return settings.signing_keys()


def _all(key: Keys) -> tuple[bytes, ...]:
    return (key,) if isinstance(key, bytes) else key


def _id_hashes(key: Keys, customer_id: str) -> list[str]:
    """The hashes a tombstone of the id may hold, under every key (``tokens.id_hashes``)."""
    return [h for k in _all(key) for h in tokens.id_hashes(k, customer_id)]


def _email_hashes(key: Keys, address: str) -> list[str]:
    return [h for k in _all(key) for h in tokens.email_hashes(k, address)]


@dataclass(frozen=True, slots=True)
class Match:
    """The tombstones one customer (id and/or address) matched, and the latest erasure."""

    id_hashes: tuple[str, ...]
    erased_at: datetime | None

    def __bool__(self) -> bool:
        return bool(self.id_hashes)


def record(
    connection: sa.Connection, key: Keys, customer_id: str, email: str | None, now: datetime
) -> None:
    """Remember an erasure under the signing key (the first of ``key``), replacing an
    earlier tombstone of the same id, made under any key. An erasure that knows no address
    (the id erased again, its record gone) keeps the earlier tombstone's address hash: else
    the address the first erasure blocked could sign up again."""
    signing = _all(key)[0]
    id_hash = tokens.keyed_hash(signing, "customer", customer_id)
    earlier = [tokens.keyed_hash(k, "customer", customer_id) for k in _all(key)]
    email_hash = tokens.keyed_hash(signing, "email", email) if email else None
    if email_hash is None:
        known = sa.select(tombstones.c.email_hash).where(
            tombstones.c.id_hash.in_(earlier), tombstones.c.email_hash.is_not(None)
        )
        email_hash = connection.execute(known.limit(1)).scalar()
    connection.execute(sa.delete(tombstones).where(tombstones.c.id_hash.in_(earlier)))
    connection.execute(
        sa.insert(tombstones).values(id_hash=id_hash, email_hash=email_hash, erased_at=now)
    )
    connection.execute(sa.delete(id_erasures).where(id_erasures.c.id_hash.in_(earlier)))
    connection.execute(sa.insert(id_erasures).values(id_hash=id_hash, erased_at=now))
    _remember(connection, [tokens.key_fingerprint(signing)], now)


def _remember(connection: sa.Connection, prints: Iterable[str], now: datetime | None) -> None:
    """Record the fingerprints not yet recorded; one recorded already keeps its time (two
    checks adopting at once on PostgreSQL hold the shared lock only: the later skips it)."""
    for key_id in dict.fromkeys(prints):
        statement = upsert_statement(connection, tombstone_keys).values(
            key_id=key_id, recorded_at=now
        )
        connection.execute(statement.on_conflict_do_nothing(index_elements=["key_id"]))


def void_link(
    connection: sa.Connection,
    key: Keys,
    customer_id: str,
    issued_at: datetime,
    *,
    writing: bool = True,
) -> bool:
    """Whether a link (a signed token) of this customer, issued at ``issued_at``, is void:
    the id is erased, or was erased at or after the link was issued (a new sign-up lifted
    the tombstone; the link belongs to the erased record). ``writing``: as for
    :func:`matches`. Tokens keep whole seconds: a link of the erasure's second is void. A
    link stamped up to ``domain.CLOCK_SKEW`` after the erasure is void too: ``tokens.verify``
    accepts a stamp that far ahead of its own clock, so a sender whose clock runs fast could
    have signed it before the erasure (the new record's own links of those minutes with it).

    A link found not void is checked against the keys recorded (``tombstone_keys``): while a
    key that made an erasure is neither the signing key nor a retired one, the id's erasure
    under it cannot be found, and an older key's link (a rotation rolled back) would act on
    the record signed up since; :class:`KeyUnknown` then, as every check raises it — also
    once every tombstone is lifted, since the erasure times outlive them."""
    serialise(connection, erasing=False, writing=writing)
    hashes = _id_hashes(key, customer_id)
    stone = sa.select(tombstones.c.id_hash).where(tombstones.c.id_hash.in_(hashes))
    if connection.execute(stone).first() is not None:
        return True
    last = connection.execute(
        sa.select(sa.func.max(id_erasures.c.erased_at)).where(id_erasures.c.id_hash.in_(hashes))
    ).scalar_one_or_none()
    if last is not None and issued_at <= last + CLOCK_SKEW:
        return True
    recorded = set(connection.execute(sa.select(tombstone_keys.c.key_id)).scalars())
    missing = sorted(recorded - {tokens.key_fingerprint(k) for k in _all(key)})
    if missing:
        raise KeyUnknown("a link's check for an erasure since it was issued", missing)
    return False


def serialise(connection: sa.Connection, *, erasing: bool, writing: bool = True) -> None:
    """Make a check and the write it allows one atomic step with respect to an erasure.

    PostgreSQL: an erasure (``erasing``) and every check take one transaction-level advisory
    lock, the erasure exclusively, checks shared. A check made while an erasure is under way
    waits for it and then sees its tombstone; an erasure waits for the writes already checked
    and then erases them too. Without it a feed could check, miss the tombstone being
    written, and bring the customer back.

    SQLite: the sqlite3 driver opens a transaction only at the first write, so a check (a
    SELECT) inside ``engine.begin()`` holds no lock, and an erasure could commit between the
    check and the write. An erasure and every check followed by a write (``writing``) take
    the database's write lock first (``BEGIN IMMEDIATE``): one waits for the other's commit,
    and a check made after an erasure sees its tombstone. A read-only check
    (``writing=False``: a link page) takes no lock."""
    if connection.dialect.name == "postgresql":
        lock = "pg_advisory_xact_lock" if erasing else "pg_advisory_xact_lock_shared"
        connection.execute(sa.text(f"SELECT {lock}(:key)"), {"key": LOCK})
    elif erasing or writing:
        write_lock(connection)


# One round trip for every check (see _key): a row of kind 0 when any tombstone exists, and
# a row of kind 1 per key recorded. Constants as SQL, not parameters: PostgreSQL cannot type
# an untyped parameter in a UNION.
_ANY = sa.select(tombstones.c.id_hash).limit(1).subquery()
_STATE = sa.union_all(
    sa.select(sa.literal_column("0").label("kind"), _ANY.c.id_hash.label("value")),
    sa.select(sa.literal_column("1"), tombstone_keys.c.key_id),
)


def _key(connection: sa.Connection, key: Keys | None, why: str, writing: bool) -> Keys | None:
    """The key when there are tombstones to check, None when there are none (a shop that
    never erased anybody pays one cheap query); KeyMissing when they cannot be checked, for
    want of a key (KeyUnknown: of one they were made under; see the module docstring)."""
    serialise(connection, erasing=False, writing=writing)
    rows = connection.execute(_STATE).all()
    if all(row.kind for row in rows):  # no tombstone (a fingerprint outlives a lifted one)
        return None
    if key is None:
        raise KeyMissing(why)
    missing = _unknown(connection, key, {row.value for row in rows if row.kind}, writing)
    if missing:
        raise KeyUnknown(why, missing)
    return key


def _unknown(connection: sa.Connection, key: Keys, recorded: set[str], adopt: bool) -> list[str]:
    """The fingerprints ``recorded`` that ``key`` lacks (sorted; empty when it has each).
    Tombstones exist; none recorded means they are older than the fingerprints: ``adopt``
    records the configured keys as theirs (the caller commits), else they are taken as the
    configured keys' for this answer."""
    configured = [tokens.key_fingerprint(k) for k in _all(key)]
    if not recorded:
        if adopt:
            _remember(connection, configured, None)
        return []
    return sorted(recorded - set(configured))


def matches(
    connection: sa.Connection,
    key: Keys | None,
    customer_id: str,
    email: str | None,
    why: str,
    *,
    writing: bool = True,
) -> Match:
    """The tombstones of this id or this address (an empty Match when none). ``writing``:
    the caller writes what the answer allows, in the same transaction (see serialise)."""
    key = _key(connection, key, why, writing)
    if key is None:
        return Match((), None)
    t = tombstones.c
    where: sa.ColumnElement[bool] = t.id_hash.in_(_id_hashes(key, customer_id))
    if email:
        where = sa.or_(where, t.email_hash.in_(_email_hashes(key, email)))
    rows = connection.execute(sa.select(t.id_hash, t.erased_at).where(where)).all()
    return Match(tuple(r.id_hash for r in rows), max((r.erased_at for r in rows), default=None))


def erased_ids(
    connection: sa.Connection,
    key: Keys | None,
    ids: Iterable[str],
    why: str,
    emails: Sequence[tuple[str, str]] = (),
    *,
    writing: bool = True,
) -> set[str]:
    """Which of ``ids`` are erased: by their own id, or (``emails``: pairs of id and
    address) by their address. ``writing``: as for :func:`matches`."""
    key = _key(connection, key, why, writing)
    if key is None:
        return set()
    by_id = {h: i for i in set(ids) for h in _id_hashes(key, i)}
    by_email: dict[str, set[str]] = {}
    for customer_id, email in emails:
        for email_hash in _email_hashes(key, email):
            by_email.setdefault(email_hash, set()).add(customer_id)
    found = {by_id[h] for h in _present(connection, tombstones.c.id_hash, list(by_id))}
    for h in _present(connection, tombstones.c.email_hash, list(by_email)):
        found |= by_email[h]
    return found


def _present(connection: sa.Connection, column: sa.Column[str], hashes: list[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(hashes), CHUNK):
        chunk = hashes[start : start + CHUNK]
        found |= set(connection.execute(sa.select(column).where(column.in_(chunk))).scalars())
    return found


def check_keys(connection: sa.Connection, key: Keys | None, why: str, *, adopt: bool) -> None:
    """KeyMissing or KeyUnknown as every way in would raise it: for ``check`` (read-only),
    and the worker and ``serve`` at start (``adopt``: tombstones of before the fingerprints
    are taken as the configured keys', in this transaction)."""
    _key(connection, key, why, writing=adopt)


def checkable(connection: sa.Connection, key: Keys | None, why: str) -> Keys | None:
    """The key, None when there are no tombstones; KeyMissing when they cannot be checked
    (read-only: for a caller that must know before it moves anything)."""
    return _key(connection, key, why, writing=False)


def tombstoned(
    connection: sa.Connection,
    key: Keys | None,
    ids: Iterable[str],
    addresses: Iterable[str],
    why: str,
) -> tuple[set[str], set[str]]:
    """Which of ``ids`` and of ``addresses`` (as given: trim and lower-case them first) a
    tombstone names. Read-only: for files kept after an import (``erasure_files``)."""
    key = _key(connection, key, why, writing=False)
    if key is None:
        return set(), set()
    by_id = {h: i for i in set(ids) for h in _id_hashes(key, i)}
    by_email = {h: a for a in set(addresses) for h in _email_hashes(key, a)}
    return (
        {by_id[h] for h in _present(connection, tombstones.c.id_hash, list(by_id))},
        {by_email[h] for h in _present(connection, tombstones.c.email_hash, list(by_email))},
    )


def lift(connection: sa.Connection, key: Keys, customer_id: str, match: Match) -> int:
    """A new sign-up with a fresh consent: the tombstone of this id goes; one that matched
    only by the address keeps its id (the old record stays erased) and loses the address.
    The id's erasure time stays (``id_erasures``): the erased record's links stay void."""
    t = tombstones.c
    own = _id_hashes(key, customer_id)  # the id in any Unicode form, under any key: the same id
    gone = connection.execute(sa.delete(tombstones).where(t.id_hash.in_(own))).rowcount or 0
    others = connection.execute(
        sa.update(tombstones)
        .where(t.id_hash.in_(match.id_hashes), t.id_hash.not_in(own))
        .values(email_hash=None)
    )
    return max(0, int(gone)) + max(0, int(others.rowcount or 0))


def count(connection: sa.Connection) -> int:
    return int(connection.execute(sa.select(sa.func.count()).select_from(tombstones)).scalar_one())
