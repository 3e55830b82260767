"""The two spellings of a link token, written out by hand from their definitions, so that a
test can make and open one without the code it tests.

- ``v1.PAYLOAD.MAC`` (the links mailed before tokens were encrypted, owed for ever): the
  claims' compact JSON readable in base64url, and its HMAC-SHA256 under the signing key.
- ``2SEALED``: the character ``2``, then base64url of a 12-byte nonce and the claims'
  JSON sealed with ChaCha20-Poly1305 (the 16-byte tag last, ``2`` as associated data) under
  HKDF-SHA256 of the signing key (no salt, the label :data:`LABEL`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

LABEL = b"recocamp link token 2: ChaCha20-Poly1305"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def v1_token(key: bytes, claims: dict[str, object]) -> str:
    """A token as links were signed before they were encrypted."""
    payload = json.dumps(claims, separators=(",", ":")).encode()
    mac = hmac.new(key, b"v1." + payload, hashlib.sha256).digest()
    return f"v1.{b64(payload)}.{b64(mac)}"


def opened(key: bytes, token: str) -> bytes:
    """The claims' JSON that a token of the current format seals."""
    assert token[0] == "2", token
    sealed = unb64(token[1:])
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=LABEL).derive(key)
    return ChaCha20Poly1305(derived).decrypt(sealed[:12], sealed[12:], b"2")


def decodings(token: str) -> list[bytes]:
    """The bytes of ``token`` read as base64url from each of its first four characters on
    (a prefix shifts the alignment), characters outside the alphabet skipped: whatever a
    reader of the link could decode from it."""
    found = []
    for start in range(4):
        text = "".join(c for c in token[start:] if c.isalnum() or c in "-_")
        found.append(base64.urlsafe_b64decode(text[: len(text) - len(text) % 4]))
    return found
