"""Advisory lock keys: one stable number per name, shared by every worker of a database."""

from __future__ import annotations

import hashlib


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a name."""
    digest = hashlib.sha256(f"recocamp:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)
