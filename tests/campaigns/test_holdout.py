"""Holdouts stay comparable with the treated group run after run, on a real store.

A daily campaign with a cooldown: the treated customers wait out the cooldown after their
e-mail, and the held-out ones must wait it out after their holdout decision, or the holdout
group fills with repeated "would-have" touches of the same customers (which diluted its
conversion and showed an uplift for mails nobody received).
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import sqlalchemy as sa

from recocamp.campaigns.files import Campaign
from recocamp.campaigns.run import plan_and_enqueue
from recocamp.settings import Settings
from recocamp.store.schema import decisions
from tests import campaign_shop
from tests.conftest import NOW, ROOT

SETTINGS = Settings(signing_key="f" * 32)
PEOPLE = 200


def daily(holdout_percent: int = 30) -> Campaign:
    return campaign_shop.daily("daily", holdout_percent, caps={"cooldown_days": 3})


def shop(engine: sa.Engine) -> None:
    campaign_shop.tea_shop(engine, [f"c{n}" for n in range(PEOPLE)])


def outcomes(engine: sa.Engine) -> dict[str, Counter[str]]:
    """Per customer: how often each outcome was decided over all runs."""
    found: dict[str, Counter[str]] = {}
    with engine.connect() as connection:
        for row in connection.execute(sa.select(decisions.c.customer_id, decisions.c.reason)):
            found.setdefault(row.customer_id, Counter())[row.reason] += 1
    return found


def test_held_out_customers_wait_out_the_cooldown_like_the_mailed_ones(
    engine: sa.Engine,
) -> None:
    shop(engine)
    for day in range(7):  # daily runs; cooldown 3 days: decided on days 0, 3 and 6
        plan_and_enqueue(engine, SETTINGS, daily(), ROOT / "templates", NOW + timedelta(days=day))
    per_customer = outcomes(engine)
    held = [c for c in per_customer.values() if c["holdout"]]
    mailed = [c for c in per_customer.values() if c["eligible"]]
    assert 40 < len(held) < 80 and len(held) + len(mailed) == PEOPLE
    assert all(c == Counter(holdout=3, cooldown=4) for c in held)
    assert all(c == Counter(eligible=3, cooldown=4) for c in mailed)


def test_a_re_run_of_the_same_day_keeps_its_holdout(engine: sa.Engine) -> None:
    """A run decided again for its own day (a resume, the repeated DST hour) does not see
    its own holdout decisions as contacts: it decides as it did the first time."""
    shop(engine)
    first = plan_and_enqueue(engine, SETTINGS, daily(), ROOT / "templates", NOW)
    again = plan_and_enqueue(engine, SETTINGS, daily(), ROOT / "templates", NOW)
    assert first.counts["holdout"] > 0
    assert again.counts["holdout"] == first.counts["holdout"]
