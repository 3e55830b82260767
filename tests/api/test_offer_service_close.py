"""``OfferService.close`` on SQLite: the change log (``notifications.ChangeLog``) reads on a
raw connection of its own, held out of the pool, so ``engine.dispose`` never closes it. The
service's close left it open: every app stopped (a test's, ``serve`` reloading) left a
sqlite3 connection to the collector, which Python 3.13 reports as a ResourceWarning."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from recocamp.api.offer_cache import OfferService
from recocamp.clock import FixedClock
from recocamp.store.engine import make_engine, upgrade
from tests.api_shop import NOW, settings_for


def test_closing_the_service_closes_the_change_logs_connection(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    opened: list[sqlite3.Connection] = []

    def note(dbapi_connection: Any, _: Any) -> None:
        opened.append(dbapi_connection)

    sa.event.listen(engine, "connect", note)
    upgrade(engine)
    service = OfferService(engine, settings_for(tmp_path), FixedClock(NOW))
    service.catch_up()  # the change log's first look opens its connection
    assert opened
    service.close()
    engine.dispose()
    for connection in opened:
        with pytest.raises(sqlite3.ProgrammingError):
            connection.execute("SELECT 1")
