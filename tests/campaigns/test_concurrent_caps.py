"""Campaign runs that overlap keep each other's frequency caps, on a real store (SQLite, and
PostgreSQL where the lead runs it): two campaigns due at the same minute both read "no e-mail
today" in their snapshots, and each chunk must find what the other enqueued since."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from recocamp.campaigns import planner
from recocamp.campaigns.run import Planned, RunOptions, RunReport, enqueue_decisions, plan_run
from recocamp.domain import Contact
from recocamp.settings import Settings
from recocamp.store import views
from recocamp.store.schema import decisions, outbox
from tests.campaign_shop import daily, tea_shop
from tests.conftest import NOW, ROOT, impatient

SETTINGS = Settings(signing_key="f" * 32)  # [caps] max_per_24h = 1, the default
PEOPLE = 23
TEMPLATES = ROOT / "templates"


def shop(engine: sa.Engine) -> set[str]:
    """PEOPLE customers, every fourth without consent; returns those with consent."""
    ids = [f"c{n:02d}" for n in range(PEOPLE)]
    tea_shop(engine, ids, lambda n: n % 4 == 3)
    return {c for n, c in enumerate(ids) if n % 4 != 3}


def reasons(engine: sa.Engine, campaign: str) -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(decisions.c.customer_id, decisions.c.reason).where(
                decisions.c.campaign == campaign
            )
        )
        return {row.customer_id: row.reason for row in rows}


def mailed(engine: sa.Engine) -> list[tuple[str, str]]:
    """(customer, campaign) of every e-mail enqueued."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(outbox.c.customer_id, outbox.c.campaign))
        return [(row.customer_id, row.campaign) for row in rows]


def side_by_side(
    engine: sa.Engine, names: Sequence[str], run: Callable[[Planned, str], RunReport]
) -> dict[str, RunReport]:
    """Plan the campaigns ``names`` in threads, wait until every snapshot is read (nothing
    enqueued yet: each saw an empty contact history), then let ``run`` enqueue them all at
    once: the overlap of two runs due at the same minute, made certain."""
    barrier = threading.Barrier(len(names))
    reports: dict[str, RunReport] = {}
    failures: list[BaseException] = []

    def one(name: str) -> None:
        try:
            planned = plan_run(engine, SETTINGS, daily(name, holdout_percent=0), NOW)
            barrier.wait(timeout=30)
            reports[name] = run(planned, name)
        except BaseException as exc:  # re-raised in the test's thread
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=one, args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if failures:
        raise failures[0]
    return reports


def enqueue(engine: sa.Engine, chunk_size: int) -> Callable[[Planned, str], RunReport]:
    def run(planned: Planned, name: str) -> RunReport:
        campaign = daily(name, holdout_percent=0)
        options = RunOptions(chunk_size=chunk_size)
        return enqueue_decisions(engine, SETTINGS, campaign, TEMPLATES, planned, NOW, options)

    return run


@pytest.mark.parametrize("chunk_size", [1, 5, 100])
def test_two_campaigns_run_at_once_mail_each_customer_at_most_max_per_24h(
    engine: sa.Engine, chunk_size: int
) -> None:
    consenting = shop(engine)
    reports = side_by_side(engine, ["first", "second"], enqueue(engine, chunk_size))
    per_customer = Counter(customer for customer, _ in mailed(engine))
    assert set(per_customer) == consenting  # everyone allowed one got exactly one
    assert set(per_customer.values()) == {1}  # and nobody two (the bug: 2 each, 34 in all)
    assert sum(r.enqueued for r in reports.values()) == len(consenting)
    by = dict(mailed(engine))
    for campaign, other in (("first", "second"), ("second", "first")):
        recorded = reasons(engine, campaign)
        assert len(recorded) == PEOPLE
        for customer in consenting:
            # the run that came second for this customer recorded why it did not mail
            expected = "eligible" if by[customer] == campaign else "capped_24h"
            assert recorded[customer] == expected, (campaign, customer)
        capped = sum(by[c] == other for c in consenting)
        assert reports[campaign].counts.get("capped_24h", 0) == capped
        assert reports[campaign].enqueued == len(consenting) - capped


def test_reading_the_caps_and_writing_the_chunk_hold_the_stores_contacts_lock(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between reading a chunk's contact histories and committing the chunk, no other run can
    take the contacts lock (it would read histories this chunk is about to change)."""
    shop(engine)
    probes: list[bool] = []
    read = views.contacts_of

    def reading(connection: sa.Connection, *args: Any, **kwargs: Any) -> Any:
        found = read(connection, *args, **kwargs)
        probes.append(locked_out(engine))
        return found

    monkeypatch.setattr(views, "contacts_of", reading)
    planned = plan_run(engine, SETTINGS, daily(holdout_percent=0), NOW)
    enqueue(engine, 10)(planned, "daily")
    assert probes == [True, True, True]  # 23 customers, chunks of 10
    assert not locked_out(engine)  # and free again once the run is done


def locked_out(engine: sa.Engine) -> bool:
    """Whether another connection, waiting 0.1 s at most, fails to take the contacts lock."""
    other = impatient(engine) if engine.dialect.name == "sqlite" else engine
    try:
        with other.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(sa.text("SET LOCAL lock_timeout = '100ms'"))
            views.lock_contacts(connection)
    except sa.exc.OperationalError:
        return True
    finally:
        if other is not engine:
            other.dispose()
    return False


def test_a_recheck_turns_only_contacts_into_skips_and_only_where_the_history_changed(
    engine: sa.Engine,
) -> None:
    shop(engine)
    planned = plan_run(engine, SETTINGS, daily(holdout_percent=30), NOW)
    [chunk] = list(planned.chunks(PEOPLE))
    outcomes = {d.customer_id: d.outcome for d in chunk.decisions}
    contacted = planner.to_recheck(chunk)
    assert {outcomes[c] for c in contacted} == {planner.Outcome.SEND, planner.Outcome.HOLDOUT}
    mail = (Contact("other", NOW - timedelta(hours=1)),)
    fresh = {customer: mail for customer in contacted}
    fresh |= {c: mail for c, o in outcomes.items() if o is planner.Outcome.SKIP}
    again = planner.recheck(daily(holdout_percent=30), chunk, fresh, planned.context)
    for before, after in zip(chunk.decisions, again.decisions, strict=True):
        if before.outcome is planner.Outcome.SKIP:
            assert after == before  # a skip stays the skip it was
        else:
            assert (after.outcome, after.reason) == (planner.Outcome.SKIP, "capped_24h")
    unchanged = planner.recheck(daily(holdout_percent=30), chunk, {}, planned.context)
    assert unchanged.decisions == chunk.decisions  # same (empty) histories: nothing redecided
