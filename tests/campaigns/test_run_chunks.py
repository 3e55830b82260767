"""A campaign run decided chunk by chunk, on a real store: the first chunk is recorded and
claimable while the rest is still undecided, every customer is decided once whatever the
chunk size, caps hold across chunks, and a run that fails mid-way is re-run without sending
anything twice."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any, overload

import pytest
import sqlalchemy as sa

from recocamp import privacy
from recocamp.campaigns import planner, render
from recocamp.campaigns.run import (
    RunOptions,
    RunReport,
    enqueue_decisions,
    plan_and_enqueue,
    plan_run,
    projected_sends,
)
from recocamp.data import profiles
from recocamp.domain import Item
from recocamp.settings import Settings
from recocamp.store import outbox as outbox_store
from recocamp.store import registry
from recocamp.store.queries import upsert_items
from recocamp.store.schema import decisions, outbox, recommendations
from tests.campaign_shop import daily, tea_shop
from tests.conftest import NOW, ROOT

SETTINGS = Settings(signing_key="f" * 32)
PEOPLE = 23  # not a multiple of any chunk size used here: the last chunk is a short one
TEMPLATES = ROOT / "templates"


def shop(engine: sa.Engine) -> None:
    """PEOPLE customers, every fourth without consent (a skip with its reason)."""
    tea_shop(engine, [f"c{n:02d}" for n in range(PEOPLE)], lambda n: n % 4 == 3)


def recorded(engine: sa.Engine, campaign: str = "daily") -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(decisions.c.customer_id, decisions.c.reason).where(
                decisions.c.campaign == campaign
            )
        )
        return {row.customer_id: row.reason for row in rows}


def send_keys(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(sa.select(outbox.c.send_key)).scalars())


class Counted(Sequence[planner.CustomerView]):
    """The customers of a run, counting how many the planner has taken so far."""

    def __init__(self, views: Sequence[planner.CustomerView]) -> None:
        self.views, self.taken = views, 0

    def __iter__(self) -> Iterator[planner.CustomerView]:
        for view in self.views:
            self.taken += 1
            yield view

    def __len__(self) -> int:
        return len(self.views)

    @overload
    def __getitem__(self, index: int) -> planner.CustomerView: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[planner.CustomerView]: ...
    def __getitem__(self, index: Any) -> Any:
        return self.views[index]


def test_the_first_chunk_is_claimable_before_the_rest_is_decided(engine: sa.Engine) -> None:
    shop(engine)
    planned = plan_run(engine, SETTINGS, daily(), NOW)
    customers = Counted(planned.customers)
    planned = replace(planned, customers=customers)
    seen: list[tuple[int, int, int]] = []  # at each commit: decided, recorded, claimable

    def committed(n: int) -> None:
        with engine.connect() as connection:
            claimable = outbox_store.queued(connection, "daily")
        seen.append((customers.taken, len(recorded(engine)), claimable))

    report = enqueue_decisions(
        engine,
        SETTINGS,
        daily(),
        TEMPLATES,
        planned,
        NOW,
        RunOptions(on_progress=committed, chunk_size=5),
    )
    decided, stored, claimable = seen[0]
    assert decided == stored == 5 < PEOPLE  # only the first chunk decided, and it is stored
    assert claimable > 0  # its e-mails wait for a deliverer while the rest is planned
    assert [s[0] for s in seen] == [5, 10, 15, 20, 23]
    claimable_after = [s[2] for s in seen]  # each chunk adds its e-mails to those before
    assert claimable_after == sorted(claimable_after) and claimable_after[-1] == report.enqueued


def test_the_chunk_size_is_the_settings_unless_the_run_says_otherwise(engine: sa.Engine) -> None:
    """``[campaigns] chunk_size`` cuts the run into commits of that many customers; a run's
    own ``chunk_size`` (tests, benchmarks) wins over it."""
    shop(engine)
    settings = SETTINGS.model_copy(
        update={"campaigns": SETTINGS.campaigns.model_copy(update={"chunk_size": 6})}
    )
    commits: list[int] = []
    plan_and_enqueue(
        engine, settings, daily(), TEMPLATES, NOW, RunOptions(on_progress=commits.append)
    )
    assert commits == [6, 6, 6, 5]
    again: list[int] = []
    options = RunOptions(on_progress=again.append, chunk_size=10)
    plan_and_enqueue(engine, settings, daily("other"), TEMPLATES, NOW, options)
    assert again == [10, 10, 3]


@pytest.mark.parametrize("size", [1, 4, 23, 100])
def test_every_customer_is_decided_once_as_by_the_whole_plan(engine: sa.Engine, size: int) -> None:
    shop(engine)
    whole = plan_run(engine, SETTINGS, daily(), NOW).decided
    report = plan_and_enqueue(
        engine, SETTINGS, daily(), TEMPLATES, NOW, RunOptions(chunk_size=size)
    )
    assert recorded(engine) == {d.customer_id: d.reason for d in whole}
    assert len(recorded(engine)) == PEOPLE
    assert report.counts == planner.counts(whole)
    assert {"holdout", "no_consent", "eligible"} <= set(report.counts)
    keys = send_keys(engine)
    assert len(keys) == len(set(keys)) == report.enqueued == report.counts["eligible"]


def test_plan_chunks_decide_as_plan_with_each_customer_in_one_chunk(engine: sa.Engine) -> None:
    shop(engine)
    planned = plan_run(engine, SETTINGS, daily(), NOW)
    whole = planner.plan(daily(), planned.customers, planned.context)
    chunks = list(planner.plan_chunks(daily(), planned.customers, planned.context, 4))
    assert [len(c.views) for c in chunks] == [4, 4, 4, 4, 4, 3]
    assert [d for c in chunks for d in c.decisions] == whole
    assert all(
        [v.customer.id for v in c.views] == [d.customer_id for d in c.decisions] for c in chunks
    )
    with pytest.raises(ValueError, match="at least 1"):
        next(planner.plan_chunks(daily(), planned.customers, planned.context, 0))


def test_caps_count_contacts_whatever_chunk_they_were_enqueued_in(engine: sa.Engine) -> None:
    """A second campaign two hours after the first: the 24 h cap (1 e-mail) skips everyone
    the first one mailed or held out, decided in other chunks of other sizes."""
    shop(engine)
    first = plan_and_enqueue(
        engine,
        SETTINGS,
        daily("first"),
        TEMPLATES,
        NOW - timedelta(hours=2),
        RunOptions(chunk_size=7),
    )
    contacted = {
        c for c, reason in recorded(engine, "first").items() if reason in ("eligible", "holdout")
    }
    second = plan_and_enqueue(
        engine, SETTINGS, daily("second"), TEMPLATES, NOW, RunOptions(chunk_size=3)
    )
    reasons = recorded(engine, "second")
    assert {c for c, reason in reasons.items() if reason == "capped_24h"} == contacted
    assert len(contacted) == first.counts["eligible"] + first.counts["holdout"] > 0
    assert second.enqueued == 0


class Failing(render.Renderer):
    """A renderer whose subject fails after ``good`` subjects: a crash inside a chunk."""

    def __init__(self, good: int) -> None:
        super().__init__(TEMPLATES)
        self.left = good

    def subject(self, subject: str, context: Any) -> str:
        self.left -= 1
        if self.left < 0:
            raise RuntimeError("the process died here")
        return super().subject(subject, context)


def test_a_run_that_fails_mid_way_is_rerun_without_sending_anything_twice(
    engine: sa.Engine,
) -> None:
    shop(engine)
    with pytest.raises(RuntimeError, match="died"):
        plan_and_enqueue(
            engine,
            SETTINGS,
            daily(),
            TEMPLATES,
            NOW,
            RunOptions(chunk_size=5, renderer=Failing(good=6)),
        )
    before, decided = set(send_keys(engine)), recorded(engine)
    assert 0 < len(decided) < PEOPLE and len(decided) % 5 == 0  # whole chunks, none half
    assert len(before) == sum(reason == "eligible" for reason in decided.values())
    again = plan_and_enqueue(engine, SETTINGS, daily(), TEMPLATES, NOW, RunOptions(chunk_size=4))
    keys = send_keys(engine)
    assert len(keys) == len(set(keys)) == len(before) + again.enqueued
    assert again.already_enqueued == len(before)
    whole = plan_run(engine, SETTINGS, daily(), NOW).decided
    assert recorded(engine) == {d.customer_id: d.reason for d in whole}
    assert len(keys) == planner.counts(whole)["eligible"]


def test_the_deliverers_are_chosen_by_the_sends_projected_from_the_first_chunk(
    engine: sa.Engine,
) -> None:
    """A thread or processes is decided before the rest of the run: by the first chunk's share
    of e-mails (sends and deferrals) times the run's customers."""
    shop(engine)
    planned = plan_run(engine, SETTINGS, daily(), NOW)
    first = next(iter(planned.chunks(8)))
    mailed = sum(d.outcome is planner.Outcome.SEND for d in first.decisions)
    assert 0 < mailed < 8  # the first 8 hold skips and holdouts too
    assert projected_sends(first, 8_000) == mailed * 1_000
    assert projected_sends(None, 8_000) == 0


def test_a_subject_that_fails_for_one_customer_skips_only_that_customer(
    engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """A subject that only one customer's data breaks (here: a division by zero for c05)
    passes ``check`` and used to stop the whole run at that customer. That customer is now a
    skip with its reason, logged by id without the address, and everybody else is mailed."""
    shop(engine)
    campaign = daily(holdout_percent=0)
    subject = {"en": "Hi {{ 100 // (customer.id[1:]|int - 5) }}"}
    campaign = campaign.model_copy(
        update={"template": campaign.template.model_copy(update={"subject": subject})}
    )
    with caplog.at_level("WARNING", logger="recocamp.campaigns.run"):
        report = plan_and_enqueue(
            engine, SETTINGS, campaign, TEMPLATES, NOW, RunOptions(chunk_size=4)
        )
    reasons = recorded(engine)
    assert reasons["c05"] == planner.Reason.NOT_RENDERED
    consenting = [f"c{n:02d}" for n in range(PEOPLE) if n % 4 != 3]
    assert {reasons[c] for c in consenting if c != "c05"} == {planner.Reason.ELIGIBLE}
    assert report.enqueued == len(consenting) - 1 == len(send_keys(engine))
    assert not [key for key in send_keys(engine) if "c05" in key]
    assert "customer c05" in caplog.text and "ZeroDivisionError" in caplog.text
    assert "c5@example.test" not in caplog.text


def test_a_customer_erased_while_the_run_goes_on_is_neither_recorded_nor_mailed(
    engine: sa.Engine,
) -> None:
    """A run decides from a snapshot taken at its start and writes chunk by chunk, for
    minutes on a big shop; an erasure (the API's DELETE, the preferences page) can commit in
    between. The chunks written after it recorded the erased customer's decision and queued
    their e-mail (id, address, name) again, and the deliverer sent it: the customer row was
    gone, so nothing cancelled it. Their decision and mail are left out of the chunk."""
    shop(engine)
    erased = "c13"  # consenting (13 % 4 != 3), in a later chunk than the first
    planned = plan_run(engine, SETTINGS, daily(holdout_percent=0), NOW)
    written = 0

    def erase_after_the_first_chunk(decided: int) -> None:
        nonlocal written
        written += decided
        if written == 5:  # the first chunk is committed: the erasure comes now
            assert privacy.erase(engine, SETTINGS, erased, NOW, "test") is not None

    options = RunOptions(chunk_size=5, on_progress=erase_after_the_first_chunk)
    report = enqueue_decisions(
        engine, SETTINGS, daily(holdout_percent=0), TEMPLATES, planned, NOW, options
    )
    assert erased not in recorded(engine)
    assert not [key for key in send_keys(engine) if f"/{erased}/" in key]
    with engine.connect() as connection:
        recipients = connection.execute(sa.select(outbox.c.recipient)).scalars().all()
    assert report.enqueued == len(recipients) and "c13@example.test" not in recipients


def test_a_chunk_whose_customers_were_all_erased_meanwhile_is_written_as_nothing(
    engine: sa.Engine,
) -> None:
    """When every customer of a later chunk was erased after the snapshot, the chunk had no
    decision left, and recording none was an ``INSERT … DEFAULT VALUES`` that failed the
    whole run (SQLite: a syntax error). The chunk records nothing and the run goes on."""
    shop(engine)
    planned = plan_run(engine, SETTINGS, daily(holdout_percent=0), NOW)
    second = [f"c{n:02d}" for n in range(5, 10)]  # the whole second chunk of five

    def erase_the_second_chunk(decided: int) -> None:
        if decided == 5 and not erased:
            erased.extend(c for c in second if privacy.erase(engine, SETTINGS, c, NOW, "test"))

    erased: list[str] = []
    options = RunOptions(chunk_size=5, on_progress=erase_the_second_chunk)
    report = enqueue_decisions(
        engine, SETTINGS, daily(holdout_percent=0), TEMPLATES, planned, NOW, options
    )
    assert erased == second
    reasons = recorded(engine)
    assert not set(second) & set(reasons)
    assert len(reasons) == PEOPLE - len(second)
    assert report.enqueued == len(queued_for(engine))


def personal_offers(engine: sa.Engine) -> None:
    """Every customer's cached personal list offers biscuits, which nobody bought (popular:
    the tea they all bought), from the live model's rows (the rows of no live model are
    nobody's: ``registry.stage``)."""
    with engine.begin() as connection:
        upsert_items(connection, [Item("i2", "Biscuits", "kitchen", 3.0)], NOW)
        registry.register(
            connection,
            version="v1",
            name="als",
            trained_at=NOW,
            data_cutoff=NOW,
            fingerprint="v1",
            params={},
            metrics={},
            path="-",
            popular=[],
            status="live",
        )
        connection.execute(
            sa.insert(recommendations),
            [
                {"customer_id": f"c{n:02d}", "model_version": "v1", "items": [["i2", 0.9]]}
                for n in range(PEOPLE)
            ],
        )


def run_changing_after_the_first_chunk(
    engine: sa.Engine,
    campaign: Any,
    customer: str,
    changes: Mapping[str, object],
    settings: Settings = SETTINGS,
) -> RunReport:
    """``campaign`` run in chunks of five, ``changes`` made to ``customer``'s profile (as the
    preferences page or the shop API make them) once the first chunk is committed."""
    planned = plan_run(engine, settings, campaign, NOW)
    written = 0

    def change_after_the_first_chunk(decided: int) -> None:
        nonlocal written
        written += decided
        if written == 5:
            with engine.begin() as connection:
                profiles.apply(
                    connection, customer, changes, at=NOW, actor="customer", source="a test"
                )

    options = RunOptions(chunk_size=5, on_progress=change_after_the_first_chunk)
    return enqueue_decisions(engine, settings, campaign, TEMPLATES, planned, NOW, options)


def queued_for(engine: sa.Engine) -> list[str]:
    """The customers with mail waiting in the outbox, sorted."""
    with engine.connect() as connection:
        query = sa.select(outbox.c.customer_id).where(outbox.c.state == "queued")
        return sorted(connection.execute(query).scalars())


@pytest.mark.parametrize("kind", ["offers", "nps"])
def test_a_customer_who_objects_while_the_run_goes_on_gets_no_offers_from_their_profile(
    engine: sa.Engine, kind: str
) -> None:
    """A run decides from a snapshot taken at its start and writes chunk by chunk; a
    customer can object to profiling in between (the preferences page). The objection
    cancels only the mail already queued, so the later chunk queued their e-mail with the
    personal offers the snapshot chose ("picked for you": biscuits), and it went out after
    the objection. That decision is now an ``objected_to_profiling`` skip; a survey, which
    offers nothing, still goes."""
    shop(engine)
    personal_offers(engine)
    objecting = "c13"  # consenting (13 % 4 != 3), in a later chunk than the first
    campaign = daily(holdout_percent=0)
    if kind == "nps":
        template = {"subject": {"en": "Hi"}, "html": "nps.html", "text": "nps.txt"}
        campaign = campaign.model_copy(
            update={"type": "nps", "template": campaign.template.model_validate(template)}
        )
    else:
        offer = campaign.offer.model_copy(update={"mode": "mixed"})
        campaign = campaign.model_copy(update={"offer": offer})
    changes = {"objected_to_profiling": True}
    report = run_changing_after_the_first_chunk(engine, campaign, objecting, changes)
    reasons = recorded(engine)
    consenting = [f"c{n:02d}" for n in range(PEOPLE) if n % 4 != 3]
    others = {reasons[c] for c in consenting if c != objecting}
    assert others == {planner.Reason.ELIGIBLE}
    queued = queued_for(engine)
    if kind == "nps":
        assert reasons[objecting] == planner.Reason.ELIGIBLE
        assert queued == consenting and report.enqueued == len(consenting)
    else:
        assert reasons[objecting] == planner.Reason.OBJECTED
        assert queued == [c for c in consenting if c != objecting]
        assert report.enqueued == len(consenting) - 1
        assert report.counts[planner.Reason.OBJECTED] == 1


@pytest.mark.parametrize(
    ("bases", "change", "reason"),
    [
        # a double opt-in campaign: the switch leaves it no consent
        (["double_opt_in"], "existing_customer", planner.Reason.NO_CONSENT),
        # both allowed: the mail was composed for the double opt-in (no §7(3) notice)
        (
            ["double_opt_in", "existing_customer"],
            "existing_customer",
            planner.Reason.CONSENT_CHANGED,
        ),
        (["double_opt_in"], "none", planner.Reason.NO_CONSENT),
    ],
)
def test_a_customer_whose_consent_changes_while_the_run_goes_on_gets_no_mail_for_the_old(
    engine: sa.Engine, bases: list[str], change: str, reason: str
) -> None:
    """A run decides from a snapshot and writes chunk by chunk; a customer's consent can
    change in between (a PUT, a customers import). The change cancels only mail already
    queued, so the later chunk queued the e-mail written for the consent they had: a double
    opt-in campaign's mail to an existing customer, without the UWG §7(3) notice. The chunk
    decides them again with their consent as it is now."""
    shop(engine)
    changing = "c13"  # consenting (13 % 4 != 3), in a later chunk than the first
    campaign = daily(holdout_percent=0).model_copy(update={"legal_basis": tuple(bases)})
    consent: dict[str, object] = {"consent_basis": change}
    if change != "none":
        consent["consent_at"] = NOW - timedelta(minutes=1)
    report = run_changing_after_the_first_chunk(engine, campaign, changing, consent)
    reasons = recorded(engine)
    consenting = [f"c{n:02d}" for n in range(PEOPLE) if n % 4 != 3]
    assert {reasons[c] for c in consenting if c != changing} == {planner.Reason.ELIGIBLE}
    assert reasons[changing] == reason
    assert queued_for(engine) == [c for c in consenting if c != changing]
    assert report.enqueued == len(consenting) - 1


def test_a_deferred_mail_for_the_old_consent_is_not_queued_either(engine: sa.Engine) -> None:
    """In quiet hours the run defers its e-mails (queued for their end): a deferred mail was
    composed from the snapshot's consent too, and is left out like a send."""
    shop(engine)
    quiet = Settings(
        signing_key="f" * 32, caps={"quiet_hours_start": "11:00", "quiet_hours_end": "16:00"}
    )
    campaign = daily(holdout_percent=0).model_copy(
        update={"legal_basis": ("double_opt_in", "existing_customer")}
    )
    consent = {"consent_basis": "existing_customer", "consent_at": NOW - timedelta(minutes=1)}
    report = run_changing_after_the_first_chunk(engine, campaign, "c13", consent, quiet)
    reasons = recorded(engine)
    consenting = [f"c{n:02d}" for n in range(PEOPLE) if n % 4 != 3]
    assert reasons["c13"] == planner.Reason.CONSENT_CHANGED
    assert queued_for(engine) == [c for c in consenting if c != "c13"]
    with engine.connect() as connection:
        outcomes = connection.execute(sa.select(decisions.c.outcome).distinct()).scalars()
        assert set(outcomes) == {"defer", "skip"}
    assert report.enqueued == len(consenting) - 1
