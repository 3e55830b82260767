"""A cooldown longer than five weeks, on a real store: the contact history a run reads must
reach back as far as the campaign's rules look (the shipped birthday campaign cools down for
300 days, the NPS survey for 90)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import sqlalchemy as sa

from recocamp.campaigns.run import plan_and_enqueue
from recocamp.settings import Settings
from recocamp.store.schema import decisions
from tests import campaign_shop
from tests.conftest import NOW, ROOT

SETTINGS = Settings(signing_key="f" * 32)


def reasons(engine: sa.Engine, run_key: str) -> Counter[str]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(decisions.c.reason).where(decisions.c.run_key == run_key)
        )
        return Counter(row.reason for row in rows)


def test_a_sixty_day_cooldown_holds_after_five_weeks(engine: sa.Engine) -> None:
    campaign_shop.tea_shop(engine, [f"c{n}" for n in range(40)])
    slow = campaign_shop.daily("slow", holdout_percent=30, caps={"cooldown_days": 60})
    first = plan_and_enqueue(engine, SETTINGS, slow, ROOT / "templates", NOW)
    assert first.counts["eligible"] + first.counts["holdout"] == 40
    later = NOW + timedelta(days=40)
    again = plan_and_enqueue(engine, SETTINGS, slow, ROOT / "templates", later)
    assert again.counts == {"cooldown": 40}, reasons(engine, again.run_key)
    after = plan_and_enqueue(engine, SETTINGS, slow, ROOT / "templates", NOW + timedelta(days=61))
    assert after.counts.get("cooldown", 0) == 0


def test_not_contacted_days_beyond_five_weeks(engine: sa.Engine) -> None:
    campaign_shop.tea_shop(engine, [f"c{n}" for n in range(10)])
    first = campaign_shop.daily("first", holdout_percent=0)
    plan_and_enqueue(engine, SETTINGS, first, ROOT / "templates", NOW)
    quiet = campaign_shop.daily("quiet", holdout_percent=0).model_copy(
        update={"audience": first.audience.model_copy(update={"not_contacted_days": 50})}
    )
    later = plan_and_enqueue(engine, SETTINGS, quiet, ROOT / "templates", NOW + timedelta(days=40))
    assert later.counts == {"not_in_audience:not_contacted_days": 10}
