"""A cooldown longer than five weeks, on a real store: the contact history a run reads must
reach back as far as the campaign's rules look (the shipped birthday campaign cools down for
300 days, the NPS survey for 90)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import sqlalchemy as sa

from recocamp.campaigns.run import plan_and_enqueue
from recocamp.settings import Settings
from recocamp.store.outbox import mark_sent
from recocamp.store.schema import decisions, outbox
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


def test_a_seven_day_cooldown_lets_a_weekly_campaign_mail_every_week(engine: sa.Engine) -> None:
    """A weekly run decides at its scheduled instant; its e-mails go out seconds later.
    The cooldown must end where next week's run decides, as it does for the held-out
    customers (counted from the decision): counted from the send, a weekly campaign under
    the default seven days' cooldown (``cross_sell``) mailed each customer every other
    week, and its holdout every week."""
    campaign_shop.tea_shop(engine, [f"c{n}" for n in range(20)])
    weekly = campaign_shop.daily("weekly", holdout_percent=30, caps={"cooldown_days": 7})
    first = plan_and_enqueue(engine, SETTINGS, weekly, ROOT / "templates", NOW)
    assert first.counts["eligible"] > 0 and first.counts["holdout"] > 0
    with engine.begin() as connection:  # what the deliverer does, half a minute later
        queued = connection.execute(sa.select(outbox.c.id)).scalars().all()
        mark_sent(connection, {i: f"m{i}" for i in queued}, NOW + timedelta(seconds=30))
    again = plan_and_enqueue(engine, SETTINGS, weekly, ROOT / "templates", NOW + timedelta(days=7))
    assert again.counts == first.counts, reasons(engine, again.run_key)
