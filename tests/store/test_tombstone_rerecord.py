"""``tombstones.record`` replaces an id's earlier tombstone. An id erased again by its id
alone (its record gone, so no address known) replaced the first erasure's tombstone with
one of no address: the address the first erasure blocked matched nothing any more, and an
import could bring the erased person back under it."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from recocamp.store import tombstones
from tests.conftest import NOW

KEY = b"k" * 32


def test_an_id_erased_again_without_an_address_keeps_the_address_blocked(
    engine: sa.Engine,
) -> None:
    with engine.begin() as connection:
        tombstones.record(connection, KEY, "c1", "erin@example.test", NOW)
        tombstones.record(connection, KEY, "c1", None, NOW + timedelta(days=1))
    with engine.begin() as connection:
        found = tombstones.matches(connection, KEY, "new-id", "erin@example.test", "a test")
        assert found.erased_at == NOW + timedelta(days=1)
        assert tombstones.count(connection) == 1
