"""Who the uplift compares, on a real store: sends and holdout decisions recorded by the store's
own functions, orders imported, customers erased by the real erasure, the report's inputs
gathered as of a fixed instant."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr
from typer.testing import CliRunner

from recocamp import privacy
from recocamp.cli import app
from recocamp.domain import Customer, Item, OutgoingEmail, Purchase
from recocamp.measure import jobs, report
from recocamp.measure.attribution import Uplift
from recocamp.settings import MeasureSettings, PrivacySettings, Settings, ShopSettings
from recocamp.store import contacts, outbox, queries
from recocamp.store import decisions as decisions_store
from recocamp.store import measure as measure_store
from recocamp.store.schema import customers, purchases
from recocamp.store.schema import outbox as outbox_table

RUN = datetime(2026, 1, 5, 9, tzinfo=UTC)
AS_OF = datetime(2026, 1, 20, tzinfo=UTC)  # the 7-day windows of the run have closed
MAILED = ("m1", "m2", "m3", "m4")
HELD = ("h1", "h2", "h3", "h4")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "shop": ShopSettings(time_zone="UTC", currency="GBP"),
            "recommender": base.recommender.model_copy(update={"artifacts_dir": tmp_path}),
            "signing_key": SecretStr("k" * 32),
            "measure": MeasureSettings(min_group_size=2, min_conversions=1),
        }
    )


def _run(engine: sa.Engine, buyers: dict[str, int]) -> None:
    """One run of ``winback`` at RUN: MAILED sent, HELD held out; ``buyers`` order that many
    days after it (all within the attribution window)."""
    people = [Customer(c, f"{c}@example.test") for c in MAILED + HELD]
    emails = [
        (
            OutgoingEmail(
                f"winback/{c}/2026-01-05", f"{c}@example.test", "s", "h", "t", campaign="winback"
            ),
            c,
            None,
            RUN,
        )
        for c in MAILED
    ]
    held = [
        decisions_store.DecisionRow("winback", c, "holdout", "holdout", None, True) for c in HELD
    ]
    lines = [
        Purchase(f"o-{c}", 1, c, "i1", 1, 20.0, RUN + timedelta(days=days))
        for c, days in buyers.items()
    ]
    with engine.begin() as connection:
        queries.upsert_items(connection, [Item("i1", "Mug", "home", 20.0)], RUN)
        queries.upsert_customers(connection, people, RUN - timedelta(days=30))
        queries.insert_purchases(connection, lines, None)
        outbox.enqueue(connection, emails, RUN)
        connection.execute(sa.update(outbox_table).values(state="delivered", sent_at=RUN))
        decisions_store.record(connection, "winback/2026-01-05", held, RUN)


def _overall(engine: sa.Engine, settings: Settings) -> Uplift:
    data = jobs.gather(engine, settings, AS_OF, AS_OF)
    return next(u for u in data.uplifts if u.campaign == "winback" and u.variant is None)


def test_an_erased_customer_is_no_unit_of_either_group(
    engine: sa.Engine, settings: Settings
) -> None:
    """Erasure unlinks the customer's orders (they become guest lines) and names the e-mail's
    customer with a stand-in: counted on, the stand-in was a mailed customer who never
    ordered, and a mailed buyer who asked to be erased took a conversion off the mailed
    group for good (an uplift of +25 pp read as 0)."""
    _run(engine, {"m1": 1, "m2": 2, "m3": 3, "h1": 1, "h2": 2})
    before = _overall(engine, settings)
    assert (before.treated.units, before.treated.converted) == (4, 3)
    assert privacy.erase(engine, settings, "m1", AS_OF - timedelta(days=1), "test")
    after = _overall(engine, settings)
    assert (after.treated.units, after.treated.converted) == (3, 2)
    assert (after.control.units, after.control.converted) == (4, 2)
    assert after.comparisons["conversion_rate"].absolute == pytest.approx(2 / 3 - 2 / 4)


def test_the_report_says_how_many_units_erasure_took_from_each_group(
    engine: sa.Engine, settings: Settings
) -> None:
    """Left out silently, a group shrinks for no visible reason, and erasures that cluster in
    one group (mailed customers who asked to be forgotten after the e-mail) go unseen."""
    _run(engine, {"m1": 1, "m2": 2, "m3": 3, "h1": 1, "h2": 2})
    for customer in ("m1", "m4", "h3"):
        assert privacy.erase(engine, settings, customer, AS_OF - timedelta(days=1), "test")
    data = jobs.gather(engine, settings, AS_OF, AS_OF)
    overall = next(u for u in data.uplifts if u.variant is None)
    assert overall.erased == (2, 1)
    assert (overall.treated.units, overall.control.units) == (2, 3)
    summary = report.summary(data)["campaigns"][0]
    assert summary["erased_units"] == {"treated": 2, "control": 1}
    html = report.render_html(data)
    assert "2 mailed and 1 held-out winback touches" in html


def test_an_erased_recipient_still_counts_as_sent_in_their_survey(
    engine: sa.Engine, settings: Settings
) -> None:
    """Erasure rewrites the send key (it holds the customer id); the survey is the key's
    period, so the rewritten key dropped the e-mail from its survey's "sent" (a response
    rate too high) and counted it in a survey named after the outbox row's id."""
    people = [Customer(c, f"{c}@example.test") for c in ("n1", "n2", "n3")]
    emails = [
        (
            OutgoingEmail(
                f"nps/{c}/2026-01-05", f"{c}@example.test", "s", "h", "t", campaign="nps"
            ),
            c,
            None,
            RUN,
        )
        for c in ("n1", "n2", "n3")
    ]
    with engine.begin() as connection:
        queries.upsert_customers(connection, people, RUN - timedelta(days=30))
        outbox.enqueue(connection, emails, RUN)
        connection.execute(sa.update(outbox_table).values(state="delivered", sent_at=RUN))
    assert privacy.erase(engine, settings, "n2", AS_OF, "test")
    with engine.connect() as connection:
        assert measure_store.surveys_sent(connection, ["nps"]) == {"nps/2026-01-05": 3}
        keys = connection.execute(sa.select(outbox_table.c.send_key)).scalars().all()
    assert not any("n2" in key for key in keys)  # the customer id is still gone


def test_runs_whose_holdout_the_retention_deleted_are_left_out_of_both_groups(
    engine: sa.Engine, settings: Settings
) -> None:
    """Decisions (the holdout) are deleted after ``[privacy] decisions_days``; sends stay in
    the outbox. With 30 days of decisions and a 90-day report, a run of 56 days ago kept
    its mailed customers and lost its held-out ones: the mailed group held two runs, the
    holdout one (other weeks, other seasons, other customers). A run whose decisions are
    kept is measured whatever the clock says (the demo's runs are simulated in 2011)."""
    settings = settings.model_copy(update={"privacy": PrivacySettings(decisions_days=30)})
    old = RUN - timedelta(days=41)
    people = [Customer(f"o{c}", f"o{c}@example.test") for c in MAILED + HELD]
    emails = [
        (
            OutgoingEmail(
                f"winback/o{c}/x", f"o{c}@example.test", "s", "h", "t", campaign="winback"
            ),
            f"o{c}",
            None,
            old,
        )
        for c in MAILED
    ]
    held = [
        decisions_store.DecisionRow("winback", f"o{c}", "holdout", "holdout", None, True)
        for c in HELD
    ]
    with engine.begin() as connection:
        queries.upsert_customers(connection, people, old - timedelta(days=30))
        outbox.enqueue(connection, emails, old)
        decisions_store.record(connection, "winback/old", held, old)
    _run(engine, {"m1": 1, "h1": 1})  # also marks every e-mail delivered
    privacy.purge(engine, settings, AS_OF)
    data = jobs.gather(engine, settings, AS_OF, AS_OF)
    overall = next(u for u in data.uplifts if u.variant is None)
    assert (overall.treated.units, overall.control.units) == (4, 4)
    assert data.sends_left_out == 4 and report.summary(data)["sends_left_out"] == 4
    assert "4 e-mails of runs whose decisions were deleted" in report.render_html(data)
    before = jobs.gather(engine, settings, AS_OF - timedelta(days=10), AS_OF)
    assert before.sends_left_out == 4  # a report as of an earlier day: the same rule


def test_a_campaign_whose_touches_are_all_inside_their_window_is_shown_as_pending(
    engine: sa.Engine, settings: Settings
) -> None:
    """The day after a campaign's first run, none of its touches has a closed attribution
    window yet. The report left the campaign out altogether ("no campaign touches in the
    last 90 days", JSON ``campaigns: []``), as if the run had never been recorded; it is
    listed, with no figures and its touches counted as pending."""
    _run(engine, {"m1": 1})
    data = jobs.gather(engine, settings, RUN + timedelta(days=2), RUN + timedelta(days=2))
    overall = next(u for u in data.uplifts if u.campaign == "winback" and u.variant is None)
    assert overall.pending == len(MAILED) + len(HELD)
    assert not overall.enough and overall.comparisons == {}
    assert "attribution window" in overall.note
    assert (overall.treated.units, overall.control.units) == (0, 0)
    summary = report.summary(data)["campaigns"]
    assert [(c["campaign"], c["pending"]) for c in summary] == [("winback", 8)]
    assert "8 more winback touches are still inside their 7-day window" in report.render_html(data)


def test_the_report_command_counts_pending_touches(
    engine: sa.Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The HTML report says how many touches wait for their window to end; the command's
    table said nothing of them."""
    _run(engine, {"m1": 1})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "settings.toml").write_text(
        f'database_url = "{db_url}"\n[shop]\ntime_zone = "UTC"\n'
    )
    result = CliRunner().invoke(app, ["report", "--as-of", "2026-01-07", "--no-store"])
    assert result.exit_code == 0, result.output
    assert "8 winback touches are still inside their 7-day window" in " ".join(
        result.stdout.split()
    )


def test_a_mail_cancelled_because_its_customer_bought_stays_a_mailed_unit(
    engine: sa.Engine, settings: Settings
) -> None:
    """Intent to treat: an e-mail deferred after its run and cancelled at claim because the
    customer bought every item it offers since (outbox.BOUGHT) was decided `send`; its
    customer's purchase is the outcome. Left out, every such buyer left the mailed group while
    the held-out customers who bought the same way stayed in theirs (+25 pp read as 0)."""
    _run(engine, {"m1": 1, "m2": 2, "m3": 3, "h1": 1, "h2": 2})
    with engine.begin() as connection:
        connection.execute(
            sa.update(outbox_table)
            .where(outbox_table.c.customer_id == "m1")
            .values(state="cancelled", sent_at=None, last_error=outbox.BOUGHT)
        )
    overall = _overall(engine, settings)
    assert (overall.treated.units, overall.treated.converted) == (4, 3)
    assert overall.comparisons["conversion_rate"].absolute == pytest.approx(3 / 4 - 2 / 4)


def _unsubscribe(connection: sa.Connection) -> None:
    contacts.unsubscribe(connection, "m1", RUN + timedelta(minutes=30), "test")


def _pause_mail(connection: sa.Connection) -> None:
    connection.execute(
        sa.update(customers)
        .where(customers.c.id == "m1")
        .values(paused_until=RUN + timedelta(days=30))
    )


def _move(connection: sa.Connection) -> None:
    queries.upsert_customers(connection, [Customer("m1", "new-m1@example.test")], RUN)


def _bounce_elsewhere(connection: sa.Connection) -> None:
    contacts.suppress(connection, "m1@example.test", "bounced", "test", RUN)


def _pause_campaign(connection: sa.Connection) -> None:
    outbox.pause(connection, "winback", "a wrong price", RUN)


def _object(connection: sa.Connection) -> None:
    outbox.cancel_profiled(connection, ["m1"], RUN + timedelta(minutes=30))


@pytest.mark.parametrize(
    "after_assignment",
    [_unsubscribe, _pause_mail, _move, _bounce_elsewhere, _pause_campaign, _object],
)
def test_a_customer_assigned_to_the_mailed_arm_stays_in_it_whatever_happened_later(
    engine: sa.Engine, settings: Settings, after_assignment: Callable[[sa.Connection], None]
) -> None:
    """Intent to treat: the run decided to mail m1 (a buyer). m1 then unsubscribed, paused
    e-mails, changed address, had the address suppressed, or had the campaign paused
    (``recocamp outbox pause``) or objected to profiling before the e-mail went out: it was
    cancelled at claim, or still waits. The held-out customers who did the same stay in
    the holdout (a decision is never withdrawn), so each such customer left the mailed group
    alone: opt-outs after a mail are not at random (+25 pp here read as 0)."""
    _run(engine, {"m1": 1, "m2": 2, "m3": 3, "h1": 1, "h2": 2})
    with engine.begin() as connection:
        connection.execute(  # m1's e-mail waits for the end of quiet hours
            sa.update(outbox_table)
            .where(outbox_table.c.customer_id == "m1")
            .values(state="queued", sent_at=None, not_before=RUN + timedelta(hours=1))
        )
        after_assignment(connection)
    outbox.claim(engine, "w:1:n", RUN + timedelta(hours=1), 10)
    with engine.connect() as connection:
        state = connection.execute(
            sa.select(outbox_table.c.state).where(outbox_table.c.customer_id == "m1")
        ).scalar_one()
    assert state in ("cancelled", "queued")  # it never went out
    overall = _overall(engine, settings)
    assert (overall.treated.units, overall.treated.converted) == (4, 3)
    assert overall.comparisons["conversion_rate"].absolute == pytest.approx(3 / 4 - 2 / 4)


def test_a_mail_the_provider_refused_stays_a_mailed_unit(
    engine: sa.Engine, settings: Settings
) -> None:
    """A permanent rejection (failed) is no exception: its held-out twin would have been a
    unit whatever the provider said."""
    _run(engine, {"m1": 1, "m2": 2, "m3": 3, "h1": 1, "h2": 2})
    with engine.begin() as connection:
        connection.execute(
            sa.update(outbox_table)
            .where(outbox_table.c.customer_id == "m1")
            .values(state="failed", sent_at=None, last_error="550 mailbox unavailable")
        )
    overall = _overall(engine, settings)
    assert (overall.treated.units, overall.treated.converted) == (4, 3)


def test_orders_stored_under_another_unicode_form_of_the_id_are_attributed(
    engine: sa.Engine, settings: Settings
) -> None:
    """Versions before ids were composed stored 'José' as 'Jose' + U+0301; today's runs mail
    the composed id. The orders are the same person's (domain.composed, the one rule), and
    were attributed to nobody: a mailed buyer counted as a non-buyer."""
    _run(engine, {"m1": 1, "m2": 2, "h1": 1})
    composed, decomposed = "Jos\u00e9", "Jose\u0301"
    with engine.begin() as connection:
        queries.upsert_customers(connection, [Customer(composed, "j@example.test")], RUN)
        email = OutgoingEmail(
            f"winback/{composed}/2026-01-05", "j@example.test", "s", "h", "t", campaign="winback"
        )
        outbox.enqueue(connection, [(email, composed, None, RUN)], RUN)
        connection.execute(sa.update(outbox_table).values(state="delivered", sent_at=RUN))
        queries.insert_purchases(
            connection,
            [Purchase("o-jose", 1, composed, "i1", 1, 20.0, RUN + timedelta(days=1))],
            None,
        )
        connection.execute(
            sa.update(purchases)
            .where(purchases.c.order_id == "o-jose")
            .values(customer_id=decomposed)
        )
    overall = _overall(engine, settings)
    assert (overall.treated.units, overall.treated.converted) == (5, 3)


def test_a_customer_mailed_before_the_report_window_and_held_out_in_it_is_switched(
    engine: sa.Engine, settings: Settings
) -> None:
    """h1 was mailed by winback 100 days before the run (before the report's 90 days) and
    held out by the run after holdout_percent was raised: their held-out orders carry the
    earlier e-mail's effect, as for a switch inside the window, and they were counted as
    a held-out unit because the check saw the window's touches only."""
    _run(engine, {"m1": 1, "m2": 2, "m3": 3, "h1": 1, "h2": 2})
    early = RUN - timedelta(days=100)
    with engine.begin() as connection:
        email = OutgoingEmail(
            "winback/h1/2025-09-27", "h1@example.test", "s", "h", "t", campaign="winback"
        )
        outbox.enqueue(connection, [(email, "h1", None, early)], early)
        connection.execute(
            sa.update(outbox_table)
            .where(outbox_table.c.created_at == early)
            .values(state="delivered", sent_at=early)
        )
    overall = _overall(engine, settings)
    assert overall.switched == 1
    assert (overall.control.units, overall.control.converted) == (3, 1)
    assert (overall.treated.units, overall.treated.converted) == (4, 3)


def test_a_customer_who_switched_before_the_report_window_alone_is_no_switch_of_it(
    engine: sa.Engine, settings: Settings
) -> None:
    """z was mailed by winback 200 days before the run and held out 150 days before it, both
    before the report's 90 days, and has no touch inside them: z is no unit of the report,
    yet was counted among its customers "left out of both groups" (switched_customers 1 of
    a campaign none of whose units switched)."""
    _run(engine, {"m1": 1, "h1": 1})
    mailed, held = RUN - timedelta(days=200), RUN - timedelta(days=150)
    with engine.begin() as connection:
        queries.upsert_customers(connection, [Customer("z", "z@example.test")], mailed)
        email = OutgoingEmail("winback/z/old", "z@example.test", "s", "h", "t", campaign="winback")
        outbox.enqueue(connection, [(email, "z", None, mailed)], mailed)
        row = decisions_store.DecisionRow("winback", "z", "holdout", "holdout", None, True)
        decisions_store.record(connection, "winback/older", [row], held)
    overall = _overall(engine, settings)
    assert overall.switched == 0
    assert (overall.treated.units, overall.control.units) == (4, 4)


def test_a_customer_whose_older_orders_are_stored_decomposed_is_one_cohort_member(
    engine: sa.Engine, settings: Settings
) -> None:
    """'José' bought in October under 'Jose' + U+0301 (a version before ids were composed)
    and in December under the composed id: one customer who came back, not a new customer
    of December's cohort beside a lost one of October's."""
    composed, decomposed = "Jos\u00e9", "Jose\u0301"
    lines = [
        Purchase("o-oct", 1, composed, "i1", 1, 20.0, datetime(2025, 10, 10, tzinfo=UTC)),
        Purchase("o-dec", 1, composed, "i1", 1, 20.0, datetime(2025, 12, 10, tzinfo=UTC)),
    ]
    with engine.begin() as connection:
        queries.upsert_items(connection, [Item("i1", "Mug", "home", 20.0)], RUN)
        queries.upsert_customers(connection, [Customer(composed, "j@example.test")], RUN)
        queries.insert_purchases(connection, lines, None)
        connection.execute(
            sa.update(purchases)
            .where(purchases.c.order_id == "o-oct")
            .values(customer_id=decomposed)
        )
    cohorts = jobs.gather(engine, settings, AS_OF, AS_OF).cohorts
    assert [(c.month.isoformat(), c.customers) for c in cohorts] == [("2025-10-01", 1)]
    assert cohorts[0].retention[:2] == (0.0, 1.0)
