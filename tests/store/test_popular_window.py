"""With no model live, the cold-start list (``views.recent_popular``) is counted from recent
sales. It counted a fixed 90 days while a trained model's list counts
``recent_popularity_days`` and the offer wording says so: a shop that set 30 days was offered
what sold two months ago until its first model went live, then something else. Both ways a
list is made with no model live — the campaigns' snapshot and the offer API's — count the
shop's window."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from recocamp.api.offer_cache import OfferService
from recocamp.campaigns.run import load_snapshot
from recocamp.clock import FixedClock
from recocamp.domain import Item, Purchase
from recocamp.settings import Settings
from recocamp.store import queries
from recocamp.store.engine import make_engine, upgrade
from tests.conftest import NOW

DAY = timedelta(days=1)


def test_the_cold_start_list_counts_the_shops_popularity_window(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    upgrade(engine)
    lines = [Purchase(f"o{n}", 1, f"c{n}", "old", 1, 5.0, NOW - 60 * DAY) for n in range(3)]
    lines.append(Purchase("n1", 1, "c9", "new", 1, 5.0, NOW - 10 * DAY))
    catalogue = [Item("old", "Old", "home", 5.0), Item("new", "New", "home", 5.0)]
    with engine.begin() as connection:
        queries.upsert_items(connection, catalogue, NOW - 90 * DAY)
        queries.insert_purchases(connection, lines, None)
    base = Settings()
    recommender = base.recommender.model_copy(update={"recent_popularity_days": 30})
    settings = base.model_copy(update={"recommender": recommender})
    with engine.connect() as connection:
        assert load_snapshot(connection, settings, NOW).popular == [["new", 1.0]]
    service = OfferService(engine, settings, FixedClock(NOW))
    try:
        assert service.snapshot().popular == [["new", 1.0]]
    finally:
        service.close()
        engine.dispose()
