"""Edges of exactly-once delivery found in review: each test failed on the code before its fix."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa

from recocamp.clock import FixedClock
from recocamp.delivery.esp.fake import FakeProvider
from recocamp.store import outbox
from tests.conftest import NOW
from tests.delivery.test_deliver import deliverer, email, states, store


def test_a_suppressed_address_with_two_mails_in_one_batch_gets_neither(
    engine: sa.Engine,
) -> None:
    """Two campaigns' mails to one suppressed address land in the same claim: both are
    cancelled (the check keyed the batch by address hash, so one of them slipped through)."""
    store(engine, [email(0, "winback")])
    with engine.begin() as connection:
        outbox.enqueue(connection, [(email(0, "birthday"), "c0", None, NOW)], NOW)
        outbox.suppress(connection, ["c0@example.test"], "bounced", "test", NOW)
    fake = FakeProvider()
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert fake.sent == [] and report.sent == 0
    assert states(engine) == Counter({"cancelled": 2})
