"""A campaign run's day is its schedule's day: a campaign scheduled in another zone than the
shop's still runs once on each of its own days, also in the weeks the two zones change their
clocks apart (on a real store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from recocamp.campaigns.run import plan_and_enqueue
from recocamp.settings import Settings
from recocamp.store.schema import customers, decisions, outbox
from tests import campaign_shop
from tests.conftest import NOW, ROOT

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


def test_a_later_run_of_the_same_day_records_what_it_decided_for_the_newly_matched(
    engine: sa.Engine,
) -> None:
    """The 11:00 run skips c1 and c3 (no consent yet); they confirm their double opt-in, and a
    run of the same day at 15:00 (``recocamp send``, a worker's restart, the hour a clock
    goes back) mails one and holds the other out. The decisions kept the morning's
    ``no_consent`` for both: a customer mailed on record as skipped, a holdout that counted
    as no contact (and was decided again the next day) and that the uplift never saw. A
    skip gives way to a later run's contact; a contact stays as it was decided."""
    ids = [f"c{n}" for n in range(12)]
    campaign_shop.tea_shop(engine, ids, without_consent=lambda n: n % 2 == 1)
    daily = campaign_shop.daily("daily", holdout_percent=30)
    morning = plan_and_enqueue(engine, SETTINGS, daily, ROOT / "templates", NOW)
    with engine.begin() as connection:
        connection.execute(
            sa.update(customers)
            .where(customers.c.consent_basis == "none")
            .values(consent_basis="double_opt_in")
        )
    later = plan_and_enqueue(engine, SETTINGS, daily, ROOT / "templates", NOW + timedelta(hours=4))
    assert later.run_key == morning.run_key and later.enqueued > 0
    with engine.connect() as connection:
        recorded = {
            row.customer_id: (row.outcome, row.holdout)
            for row in connection.execute(sa.select(decisions))
        }
        mailed = set(connection.execute(sa.select(outbox.c.customer_id)).scalars())
    assert mailed == {c for c, (outcome, _) in recorded.items() if outcome == "send"}
    held = {c for c, (outcome, holdout) in recorded.items() if outcome == "holdout" and holdout}
    assert held and {c for c in held if int(c[1:]) % 2} and not held & mailed
    assert len(recorded) == 12 and "skip" not in {outcome for outcome, _ in recorded.values()}


def test_a_holdout_of_the_day_stays_unmailed_when_a_later_run_holds_out_fewer(
    engine: sa.Engine,
) -> None:
    """The 11:00 run holds out 30 %; at noon the marketer lowers ``holdout_percent`` to 0
    and sends again (``recocamp send``): the later run decided the morning's holdout
    customers ``send`` and mailed them, while their record still said holdout, and the
    uplift measured a control group that got the e-mail. They stay held out for the day."""
    ids = [f"c{n}" for n in range(12)]
    campaign_shop.tea_shop(engine, ids)
    daily = campaign_shop.daily("daily", holdout_percent=30)
    morning = plan_and_enqueue(engine, SETTINGS, daily, ROOT / "templates", NOW)
    fewer = daily.model_copy(update={"holdout_percent": 0.0})
    later = plan_and_enqueue(engine, SETTINGS, fewer, ROOT / "templates", NOW + timedelta(hours=1))
    held = morning.counts["holdout"]
    assert held and morning.enqueued == 12 - held
    assert later.enqueued == 0 and later.counts == {"holdout": held, "eligible": 12 - held}
    with engine.connect() as connection:
        mailed = set(connection.execute(sa.select(outbox.c.customer_id)).scalars())
        kept = set(
            connection.execute(
                sa.select(decisions.c.customer_id).where(decisions.c.holdout.is_(True))
            ).scalars()
        )
    assert len(kept) == held and not kept & mailed
