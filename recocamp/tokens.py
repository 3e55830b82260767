"""Sealed, unforgeable link tokens for unsubscribe, preference and feedback links. Pure but
for the random nonce each token draws.

A token binds a customer, a campaign and a purpose (``unsubscribe`` | ``preferences`` |
``feedback``) under the shop's secret (``RECOCAMP_SIGNING_KEY``); a feedback token also
binds the survey (campaign and shop-local day of the mailing), so an answer counts once per
customer and survey. Its claims are encrypted and authenticated (ChaCha20-Poly1305 under a
key derived from the secret, :func:`_cipher`): whoever sees the link, the ESP's click
tracking, the mailbox and whom the mail is forwarded to, reads neither the customer id nor
anything else of it (no e-mail address either), and nothing of it can be changed without the
key. A token carries the time it was issued: it expires (unsubscribe links do not, see
``api.pages``), and it dies with an erasure of its customer made after it (links of an
erased record never reach a person who signs up again under the same id); a time past now
by more than the clocks' skew is refused.

**Formats.** :func:`sign` writes ``2`` and then base64url of a random 12-byte nonce and the
sealed claims (their compact JSON, the 16-byte tag last). Links mailed before tokens were
encrypted carry ``v1.PAYLOAD.MAC``: the claims readable, with their HMAC-SHA256; an
unsubscribe link is owed for as long as the e-mail exists, so :func:`verify` still accepts
them, with every check the new ones get. The first character tells the two apart (``2`` or
``v``); no other token is valid.

**Rotation.** Tokens are signed under the signing key alone. The keys it replaced
(``RECOCAMP_SIGNING_KEYS_RETIRED``) only verify, through :func:`verify_any`, which says
which key a token was signed under; the pages accept an old key's unsubscribe link only
(``api.pages``): a key is retired because it is weak or known, so what it signed may be
forged, and only an unsubscribe is both owed for ever and harmless when forged.

The same key makes the keyed hashes of erasure tombstones (:func:`keyed_hash`): an erased
customer's id and address are recognised when a feed brings them back, and nobody without
the key can test a guess against them (a plain hash of an id like ``10042`` can).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from recocamp.domain import CLOCK_SKEW, address_forms, composed, id_forms
from recocamp.errors import RecocampError

# ``json.dumps(claims, separators=(",", ":"))``, without building an encoder per call (a
# campaign run signs two tokens per e-mail: that was half of the 19 µs each took)
_ENCODE = json.JSONEncoder(separators=(",", ":")).encode


# the campaign claim of a link made by hand (``recocamp link``), sent with no campaign: the
# hyphen makes it no campaign's name (``[a-z0-9_]``), so nothing is counted against one
MANUAL_CAMPAIGN = "manual-link"

# the first character of a token that :func:`sign` writes (the associated data of its seal
# too); the first format's tokens begin with ``v1.``
VERSION = "2"
_AAD = VERSION.encode()
_NONCE_BYTES = 12  # random per token: after 2^32 links under one key, 2^-33 odds of a repeat
_TAG_BYTES = 16
# HKDF's label for the cipher's key: the signing key's other uses (the first format's HMAC,
# mailbox tags, tombstones' keyed hashes) never meet the key it derives
_CIPHER_LABEL = b"recocamp link token 2: ChaCha20-Poly1305"


class TokenError(RecocampError):
    """A token that was tampered with, has expired, or is not ours."""


class SignatureError(TokenError):
    """A well-formed token that the key did not make (its seal or HMAC does not open under
    it): another key's, or forged."""


@dataclass(frozen=True, slots=True)
class Claims:
    customer_id: str
    campaign: str
    purpose: str
    issued_at: datetime
    survey: str | None = None
    mailbox: str | None = None  # the tag of the address it was mailed to (:func:`mailbox_tag`)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """The bytes of ``text`` as :func:`_b64` writes them, and only as it writes them
    (ValueError otherwise): a lenient decoder skips characters outside the alphabet and
    ignores padding and a last character's spare bits, so one token had countless valid
    spellings, markup put into them included, which the pages carry on."""
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not the token's own spelling")
    return data


def sign(
    key: bytes,
    customer_id: str,
    campaign: str,
    purpose: str,
    now: datetime,
    survey: str | None = None,
    mailbox: str | None = None,
) -> str:
    """A token: the claims sealed under ``key`` with a fresh nonce (see the module's
    docstring); ``mailbox``: the :func:`mailbox_tag` of the address it is mailed to."""
    issued = int(now.timestamp())
    payload = _claims(customer_id, campaign, purpose, issued, survey, mailbox).encode()
    nonce = os.urandom(_NONCE_BYTES)
    return VERSION + _b64(nonce + _cipher(key).encrypt(nonce, payload, _AAD))


@functools.lru_cache(maxsize=32)  # the signing key and up to 16 retired ones
def _cipher(key: bytes) -> ChaCha20Poly1305:
    """The key's cipher: ChaCha20-Poly1305 under HKDF-SHA256 of ``key`` (no salt, a fixed
    label), so one secret still suffices, short retired keys included. Made once per key:
    deriving costs more than sealing a token. ChaCha20-Poly1305, not AES-GCM-SIV: every
    OpenSSL that ``cryptography`` may be built on has it (GCM-SIV wants 3.2 or later, and a
    sign that fails stops every campaign); with random nonces a repeat is out of reach."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_CIPHER_LABEL)
    return ChaCha20Poly1305(derived.derive(key))


def _opened(key: bytes, token: str) -> bytes:
    """The claims' JSON of a token of either format; ValueError when it is none,
    SignatureError when ``key`` did not make it."""
    if token.startswith(VERSION):
        sealed = _unb64(token[len(VERSION) :])
        if len(sealed) < _NONCE_BYTES + _TAG_BYTES:
            raise ValueError("too short")
        nonce, box = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        try:
            return _cipher(key).decrypt(nonce, box, _AAD)
        except InvalidTag:
            raise SignatureError("invalid signature") from None
    version, body, mac = token.split(".")
    payload = _unb64(body)
    expected = hmac.new(key, b"v1." + payload, hashlib.sha256).digest()
    if not (version == "v1" and hmac.compare_digest(expected, _unb64(mac))):
        raise SignatureError("invalid signature")
    return payload


def _claims(
    customer_id: str,
    campaign: str,
    purpose: str,
    issued: int,
    survey: str | None,
    mailbox: str | None = None,
) -> str:
    """The claims' JSON, as ``json.dumps(claims, separators=(",", ":"))`` writes it. Strings
    that JSON writes as they are (printable ASCII without quote or backslash: every id and
    campaign name in practice) are joined in directly, 0.7 µs instead of the encoder's 2.4
    (a campaign run signs two tokens per e-mail); any other string goes through the encoder."""
    texts = customer_id + campaign + purpose + (survey or "")
    if texts.isascii() and texts.isprintable() and '"' not in texts and "\\" not in texts:
        tail = "" if mailbox is None else f',"m":"{mailbox}"'  # base64url: written as it is
        tail += "}" if survey is None else f',"s":"{survey}"}}'
        return f'{{"c":"{customer_id}","k":"{campaign}","p":"{purpose}","i":{issued}{tail}'
    claims: dict[str, object] = {"c": customer_id, "k": campaign, "p": purpose, "i": issued}
    if mailbox is not None:
        claims["m"] = mailbox
    if survey is not None:
        claims["s"] = survey
    return _ENCODE(claims)


def mailbox_tag(key: bytes, address: str) -> str:
    """A short keyed tag of an address (as :func:`address_key` writes it) for a token: the
    link names the address it was mailed to without carrying it, and is refused once the
    customer's address is another (``api.pages``): mail keeps its links in a mailbox the
    customer has left."""
    mac = _keyed(key).copy()
    mac.update(f"mailbox:{address_key(address)}".encode())
    return _b64(mac.digest()[:12])


PROVIDER_KEY_CHARS = 32  # hex: 128 bits, well within Postmark's 80 characters of metadata


def provider_key(key: bytes | None, send_key: str) -> str:
    """An e-mail's send key as its provider sees it (Postmark's ``Metadata.send_key``, which
    the lookup after a crash searches and webhooks echo): a keyed digest, 32 hex characters.
    The send key itself (``campaign/customer/period``) gave the provider the shop's customer
    ids, which it has no use for and keeps, searchable, with the message; and it is up to 140
    characters, where Postmark refuses a metadata value over 80. Without a key (tests of a
    provider on its own) the digest is plain SHA-256: of the same length, but a guessable id
    can be tested against it, so ``delivery.esp.make_provider`` makes no provider without
    the key."""
    if key is None:
        return hashlib.sha256(f"send_key:{send_key}".encode()).hexdigest()[:PROVIDER_KEY_CHARS]
    return keyed_hash(key, "send_key", send_key)[:PROVIDER_KEY_CHARS]


@functools.lru_cache(maxsize=8)
def _keyed(key: bytes) -> hmac.HMAC:
    """The HMAC state after the key: copying it skips hashing the padded key per hash
    (mailbox tags, keyed hashes; the first format's tokens are checked with a fresh one)."""
    return hmac.new(key, digestmod=hashlib.sha256)


def verify(
    key: bytes, token: str, purpose: str, now: datetime, max_age_days: int | None = 400
) -> Claims:
    """The claims of a valid token of either format; TokenError otherwise (the seal and the
    first format's HMAC are checked in constant time). A
    token issued more than ``domain.CLOCK_SKEW`` past ``now`` is refused: it would outlive
    an erasure made before its time (links issued before the erasure are void, see
    ``store.tombstones.void_link``). ``max_age_days=None``: no age limit (unsubscribe)."""
    try:
        found = _read(json.loads(_opened(key, token)))
    except (ValueError, TypeError, OverflowError):
        raise TokenError("malformed token") from None
    if found.purpose != purpose:
        raise TokenError("token issued for another purpose")
    if max_age_days is not None and (now - found.issued_at).days > max_age_days:
        raise TokenError("token expired")
    if found.issued_at > now + CLOCK_SKEW:  # clocks differ by seconds, not more
        raise TokenError("token issued in the future")
    return found


CLAIM_MAX = 200  # characters of a text claim: ids are 64 at most, a survey a campaign and a day


def _read(data: object) -> Claims:
    """The claims of an opened token as :func:`sign` writes them (ValueError, TypeError or
    OverflowError otherwise): an object whose customer, campaign and purpose are texts of
    at most :data:`CLAIM_MAX` characters (:func:`_text`), whose survey and mailbox are such
    texts or absent, and whose time is a whole number of seconds on the calendar. A seal
    that opens proves who made it, not what they wrote: a retired key is weak or known, and
    its holder's unsubscribe links still pass (``api.pages``). Claims of another shape were
    read past the token's check: a 500 for a missing time or customer, a time past the
    calendar, claims that are a list; a campaign of any length stored with the unsubscribe;
    a campaign holding a line break, which the unsubscribe's log line wrote as a second,
    forged line."""
    if not isinstance(data, dict):
        raise TypeError("the claims are not an object")
    texts = [data.get("c"), data.get("k"), data.get("p")]
    optional = [data.get("s"), data.get("m")]
    named = [*texts[1:], *(o for o in optional if o is not None)]
    if not (_text(texts[0], printable=False) and all(_text(text) for text in named)):
        raise ValueError(
            f"a claim is missing or not a text of at most {CLAIM_MAX} characters without "
            "line breaks or control characters"
        )
    stamp = data.get("i")
    if not isinstance(stamp, int) or isinstance(stamp, bool):
        raise TypeError("the time is missing or not a whole number")
    customer, campaign, purpose = map(str, texts)
    # composed, as every id is read (``domain.composed``): a link mailed before migration
    # 0023 composed the stored ids names the customer as then stored, decomposed
    customer = composed(customer)
    survey, mailbox = (None if text is None else str(text) for text in optional)
    return Claims(customer, campaign, purpose, datetime.fromtimestamp(stamp, UTC), survey, mailbox)


# A campaign, a purpose, a survey (a campaign and a day) and a mailbox tag (base64url) are
# printable as sign() writes them (``str.isprintable``: no line break, control or format
# character). A customer id has never held a C0 control or DEL (``domain.ID_PATTERN``); the
# rest of ``domain.id_problem``'s rule (C1 controls such as NEL, U+2028, bidi overrides) came
# later, and an id stored before it keeps its unsubscribe links, owed for as long as the
# e-mail exists (log lines write such characters escaped: ``logs.one_line``).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _text(value: object, *, printable: bool = True) -> bool:
    if not isinstance(value, str) or len(value) > CLAIM_MAX:
        return False
    return value.isprintable() if printable else _CONTROL.search(value) is None


def verify_any(
    keys: Sequence[bytes],
    token: str,
    purpose: str,
    now: datetime,
    max_age_days: int | None = 400,
) -> tuple[Claims, int]:
    """The claims of a token signed under one of ``keys`` (the signing key first, then the
    retired ones: ``Settings.signing_keys``) and the position of that key: 0 for the
    signing key, more for a retired one, whose tokens the caller may refuse. TokenError as
    :func:`verify` says, once no key opens it."""
    for position, key in enumerate(keys):
        try:
            return verify(key, token, purpose, now, max_age_days), position
        except SignatureError:
            continue
    raise SignatureError("invalid signature")


def keyed_hash(key: bytes, kind: str, value: str) -> str:
    """HMAC-SHA256 of ``kind:value`` (hex): a value recognisable only with the key. Addresses
    are compared as :func:`address_key` writes them."""
    text = address_key(value) if kind == "email" else value
    mac = _keyed(key).copy()  # the key's padded hash once per key, not per value
    mac.update(f"{kind}:{text}".encode())
    return mac.hexdigest()


FINGERPRINT_CHARS = 16  # hex: 64 bits, to tell a handful of keys apart


@functools.lru_cache(maxsize=32)
def key_fingerprint(key: bytes) -> str:
    """A short name of a key that does not give it away: the keyed hash of a fixed label,
    16 hex characters. Stored with the erasure tombstones (``store.tombstones``) so that a
    store can tell that a key its tombstones were made under is no longer configured, and
    shown to the operator to say which key to put back; it is no more use to a guesser
    than any tombstone's hash."""
    return keyed_hash(key, "key_fingerprint", "recocamp")[:FINGERPRINT_CHARS]


def address_key(address: str) -> str:
    """An address as erasure compares it: trimmed, lower-case and in Unicode's composed form
    (NFC, as RFC 6532 asks of addresses): ``Müller@…`` typed on one system and exported
    decomposed (``u`` + U+0308) by another is the same address, and a tombstone of the one
    must refuse the other."""
    return address_forms(address)[0]


def id_hashes(key: bytes, customer_id: str) -> tuple[str, ...]:
    """The keyed hashes a tombstone of ``customer_id`` may hold: the id's own and, for an id
    that is not ASCII, those of its composed and decomposed forms (Unicode NFC, NFD): an id
    typed ``José`` on one system and exported decomposed by another is the same id to a
    person, and must not bring an erased customer back. ASCII ids (the usual) have one."""
    return tuple(keyed_hash(key, "customer", form) for form in id_forms((customer_id,)))


def email_hashes(key: bytes, address: str) -> tuple[str, ...]:
    """The keyed hashes a tombstone of ``address`` may hold: its own (:func:`address_key`)
    and, for an address that is not ASCII, those of its decomposed form and of the form
    as given (trimmed, lower-case), which tombstones written before addresses were
    normalised hashed. ASCII addresses have one."""
    forms = address_forms(address)
    return tuple(hmac.new(key, f"email:{f}".encode(), hashlib.sha256).hexdigest() for f in forms)
