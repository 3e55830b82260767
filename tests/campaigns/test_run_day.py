"""A campaign run's day is its schedule's day: a campaign scheduled in another zone than the
shop's still runs once on each of its own days, also in the weeks the two zones change their
clocks apart (on a real store)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from recocamp.campaigns.run import plan_and_enqueue
from recocamp.settings import Settings
from tests import campaign_shop
from tests.conftest import ROOT

# New York springs forward on 8 March 2026, Berlin on 29 March: 18:00 in New York is 00:00
# in Berlin on 7 March and 23:00 on 8 March, the same Berlin day
SATURDAY = datetime(2026, 3, 7, 23, 0, tzinfo=UTC)  # 18:00 EST
SUNDAY = datetime(2026, 3, 8, 22, 0, tzinfo=UTC)  # 18:00 EDT
SETTINGS = Settings(signing_key="f" * 32)


def test_a_new_york_campaign_in_a_berlin_shop_runs_on_each_new_york_day(
    engine: sa.Engine,
) -> None:
    assert SETTINGS.shop.time_zone == "Europe/Berlin"
    campaign_shop.tea_shop(engine, [f"c{n}" for n in range(5)])
    evening = campaign_shop.daily(
        "evening", holdout_percent=0, caps={"max_per_24h": 2, "cooldown_days": 0}
    )
    evening = evening.model_copy(
        update={
            "schedule": evening.schedule.model_copy(
                update={"cron": "0 18 * * *", "time_zone": "America/New_York"}
            )
        }
    )
    first = plan_and_enqueue(engine, SETTINGS, evening, ROOT / "templates", SATURDAY)
    second = plan_and_enqueue(engine, SETTINGS, evening, ROOT / "templates", SUNDAY)
    assert (first.run_key, second.run_key) == ("evening/2026-03-07", "evening/2026-03-08")
    assert first.enqueued == second.enqueued == 5  # the Berlin day made it one run: 5 and 0
