"""Edges of exactly-once delivery found in review: each test failed on the code before its fix."""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Response
from pydantic import SecretStr

from recocamp import privacy
from recocamp.api.app import create_app as create_api
from recocamp.campaigns import run
from recocamp.campaigns.render import Renderer, sample_context
from recocamp.campaigns.run import plan_run
from recocamp.clock import FixedClock, SystemClock
from recocamp.data import profiles
from recocamp.data.ingest import Importer
from recocamp.delivery import campaign_send
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp import http as esp_http
from recocamp.delivery.esp.fake import FakeProvider
from recocamp.delivery.esp.fake_server import FakeEsp, Faults, postmark_event, running
from recocamp.delivery.esp.fake_server import create_app as create_fake
from recocamp.delivery.esp.postmark import Postmark
from recocamp.delivery.processes import drain_in_processes
from recocamp.domain import BodyTemplate, DeliveryReport, OutgoingEmail, SendResult
from recocamp.errors import DeliveryError, TransientDeliveryError
from recocamp.ratelimit import RateLimiter
from recocamp.settings import EspSettings, Settings
from recocamp.store import contacts, outbox
from recocamp.store.schema import contact_events, customers, suppressions
from recocamp.store.schema import outbox as outbox_table
from tests import campaign_shop
from tests.api_shop import call
from tests.conftest import NOW, ROOT
from tests.delivery.test_deliver import (
    ESP,
    TEMPLATES,
    Sleeper,
    deferred,
    deliverer,
    email,
    fill,
    states,
    store,
)


def test_mail_queued_to_a_list_of_addresses_is_cancelled_not_sent(engine: sa.Engine) -> None:
    """Mail queued before addresses had to be one plain ``local@domain`` (deferred by quiet
    hours): ``"c0@example.test, stranger@example.test"`` went to both, the customer's signed
    links to a person who never consented. It is cancelled; a padded address still goes."""
    listed = dataclasses.replace(email(0), to="c0@example.test, stranger@example.test")
    padded = dataclasses.replace(email(1), to=" c1@example.test ")
    store(engine, [listed, padded])
    fake = FakeProvider()
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert [m.send_key for m in fake.sent] == [padded.send_key] and report.sent == 1
    assert states(engine) == Counter({"cancelled": 1, "sent": 1})
    with engine.connect() as connection:
        errors = connection.execute(
            sa.select(outbox_table.c.last_error).where(outbox_table.c.state == "cancelled")
        ).scalars()
        assert [e.split(" (")[0] for e in errors] == ["not one plain e-mail address"]


def test_a_suppressed_address_with_two_mails_in_one_batch_gets_neither(
    engine: sa.Engine,
) -> None:
    """Two campaigns' mails to one suppressed address land in the same claim: both are
    cancelled (the check keyed the batch by address hash, so one of them slipped through)."""
    store(engine, [email(0, "winback")])
    with engine.begin() as connection:
        outbox.enqueue(connection, [(email(0, "birthday"), "c0", None, NOW)], NOW)
        outbox.suppress(connection, ["c0@example.test"], "bounced", "test", NOW)
    fake = FakeProvider()
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert fake.sent == [] and report.sent == 0
    assert states(engine) == Counter({"cancelled": 2})


def test_a_suppression_of_the_decomposed_address_cancels_mail_to_the_composed_one(
    engine: sa.Engine,
) -> None:
    """A bounce reported for ``Jürgen@…`` in decomposed form (``u`` + U+0308: another
    system's export) is the same address as the composed one the outbox holds: its mail is
    cancelled (the hash of the trimmed, lower-case text told them apart)."""
    composed = "j\u00fcrgen@example.test"
    store(engine, [dataclasses.replace(email(0), to=composed)])
    with engine.begin() as connection:
        outbox.suppress(connection, ["Ju\u0308rgen@example.test"], "bounced", "test", NOW)
    fake = FakeProvider()
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert fake.sent == [] and report.sent == 0
    assert states(engine) == Counter({"cancelled": 1})


def test_a_stop_ends_a_delivering_process_that_waits_for_a_retry(engine: sa.Engine) -> None:
    """A process waiting for a retry that comes due in 50 s (within ``max_wait_s``) stops
    when told, not when the wait is over: its wait slept on ``time.sleep``, deaf to the stop,
    so a SIGTERM took the worker past its shutdown timeout."""
    later = datetime.now(UTC) + timedelta(seconds=50)  # the processes run on the real clock
    store(engine, [email(0)])
    with engine.begin() as connection:
        connection.execute(sa.update(outbox_table).values(not_before=later))
    settings = Settings(esp=EspSettings(provider="fake"))
    asked = time.monotonic()
    report = drain_in_processes(
        engine,
        settings,
        Renderer(TEMPLATES),
        None,
        1,
        60.0,
        producing=lambda: False,
        stopping=lambda: time.monotonic() - asked > 3.0,  # once the child is waiting
    )
    assert time.monotonic() - asked < 30.0  # ~4 s; the old process slept its 50 s out
    assert report.sent == 0 and states(engine) == Counter({"queued": 1})


def test_a_claim_whose_lease_ran_out_while_waiting_is_not_sent_by_its_old_owner(
    engine: sa.Engine,
) -> None:
    """Deliverer A (host a) claims, then waits on the rate limit past the lease; B (host b)
    finds the claims stale, finds them not accepted, and sends them. A, awake again, must
    not send them a second time (it sent them: two copies of each)."""
    store(engine, [email(0), email(1)])
    clock, fake = FixedClock(NOW), FakeProvider()
    lease = ESP.claim_lease_s
    others: list[DeliveryReport] = []

    def wait(seconds: float) -> None:
        clock.advance(timedelta(seconds=seconds))
        if not others:  # meanwhile, on another host
            others.append(deliverer(engine, fake, clock, worker="b:2:b").drain())

    limiter = RateLimiter(1.0 / (lease + 1), wait, monotonic=lambda: 0.0)
    limiter.take()  # the bucket is empty: A's request waits lease + 1 s for its token
    first = Deliverer(
        engine, fake, ESP, clock, sleep=wait, rng=random.Random(1), worker="a:1:a", limiter=limiter
    ).drain()
    assert others[0].reconciled == 0 and others[0].sent == 2
    assert sorted(m.send_key for m in fake.sent) == [email(0).send_key, email(1).send_key]
    assert first.sent == 0 and states(engine) == Counter({"sent": 2})


# --- Retry-After ------------------------------------------------------------------------------

RETRY_NOW = NOW.timestamp()


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's local time zone is not UTC (a server in New York)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("new_york")
def test_a_retry_after_in_asctime_format_is_gmt_whatever_the_local_zone() -> None:
    """RFC 9110 §5.6.7: the asctime form has no zone and is GMT, like the others. It was
    read in the machine's zone: 90 s became 5 h 1.5 min in New York."""
    headers = httpx.Headers({"Retry-After": "Thu Jan 15 12:01:30 2026"})
    assert esp_http.retry_after(headers, now=RETRY_NOW) == 90.0


@pytest.mark.parametrize("value", [b"\xb2", b"9" * 400], ids=["superscript-two", "400-digits"])
def test_a_retry_after_that_is_no_finite_number_of_seconds_is_ignored(value: bytes) -> None:
    """A byte that decodes to a digit Python cannot read ('²' isdigit) raised ValueError out
    of the provider (a crash of the drain, not a 429); 400 digits made an infinite wait."""
    answer = httpx.Response(429, headers=[(b"Retry-After", value)], json={"Message": "slow"})
    provider = Postmark(
        "http://esp.test", "t", "shop@example.test", transport=httpx.MockTransport(lambda r: answer)
    )
    with pytest.raises(TransientDeliveryError) as raised:
        provider.send_batch([email(0)])
    assert raised.value.retry_after is None


class Stamped(FakeProvider):
    """Records the clock's time of every request it gets."""

    def __init__(self, clock: FixedClock, batch_limit: int) -> None:
        super().__init__(batch_limit)
        self.clock, self.at = clock, list[datetime]()

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        self.at.append(self.clock.now())
        return super().send_batch(messages)


def test_after_a_429_with_retry_after_no_request_goes_out_before_it(engine: sa.Engine) -> None:
    """The provider said "429, come back in 30 s" about the account, not about one batch:
    the next batches waited for nothing and got 429s of their own, one after the other."""
    fill(engine, 6)
    clock = FixedClock(NOW)
    fake = Stamped(clock, batch_limit=2)
    fake.fail_requests = [TransientDeliveryError("HTTP 429", retry_after=30.0)]
    report = deliverer(engine, fake, clock).drain(max_wait_s=60)
    assert report.sent == 6 and len(fake.sent) == 6
    assert fake.at[0] == NOW and all(at >= NOW + timedelta(seconds=30) for at in fake.at[1:])


def test_a_postmark_300_about_our_sender_fails_the_mail_and_suppresses_nobody(
    engine: sa.Engine,
) -> None:
    """A typo in ``[esp] from_email`` makes Postmark answer ErrorCode 300 ("Error parsing
    'From'") for every message of the batch: our fault, not the recipients'. Each of them
    was suppressed for good (a 300 about the 'To' address still suppresses: test_providers)."""
    store(engine, [email(0), email(1)])
    fake = FakeEsp(token="t")
    with running(create_fake(fake)) as url:
        provider = Postmark(url, "t", "shop@@example.test")
        try:
            report = Deliverer(engine, provider, ESP, FixedClock(NOW)).drain()
        finally:
            provider.close()
    with engine.connect() as connection:
        suppressed = connection.execute(sa.select(sa.func.count()).select_from(suppressions))
        assert suppressed.scalar_one() == 0
    assert report.sent == 0 and report.rejected == 0 and report.failed == 2
    assert states(engine) == Counter({"failed": 2})


def test_a_run_still_being_enqueued_waits_out_a_long_retry_after_then_sends(
    engine: sa.Engine,
) -> None:
    """A Retry-After longer than ``max_wait_s`` ends a drain only once nothing more is being
    enqueued: a campaign run's drain goes on with the mail enqueued meanwhile."""
    fill(engine, 2)
    clock = FixedClock(NOW)
    fake = Stamped(clock, batch_limit=2)
    fake.fail_requests = [TransientDeliveryError("HTTP 429", retry_after=120.0)]
    enqueuing = iter([True] * 150)  # the producer goes on for a while
    report = deliverer(engine, fake, clock).drain(
        max_wait_s=5, producing=lambda: next(enqueuing, False)
    )
    assert report.sent == 2 and fake.at[1:] and fake.at[1] >= NOW + timedelta(seconds=120)


def test_an_unsubscribe_during_a_long_wait_before_the_request_stops_that_mail(
    engine: sa.Engine,
) -> None:
    """The claim checked the opt-outs; then the batch waited (rate limit) for minutes, and
    a customer unsubscribed meanwhile: that mail must not go out (it did)."""
    store(engine, [email(0), email(1)])
    clock, fake = FixedClock(NOW), FakeProvider()
    wait_s = ESP.claim_lease_s  # a long wait: the claim is renewed before the request

    def wait(seconds: float) -> None:
        clock.advance(timedelta(seconds=seconds))
        with engine.begin() as connection:  # the one-click unsubscribe, meanwhile
            connection.execute(
                sa.update(customers).where(customers.c.id == "c1").values(unsubscribed_at=NOW)
            )

    limiter = RateLimiter(1.0 / wait_s, wait, monotonic=lambda: 0.0)
    limiter.take()  # the bucket is empty: the request waits for its token
    Deliverer(engine, fake, ESP, clock, sleep=wait, limiter=limiter).drain()
    assert [m.send_key for m in fake.sent] == [email(0).send_key]
    assert states(engine) == Counter({"sent": 1, "cancelled": 1})


def test_a_deliverer_yields_while_its_rate_is_lent_to_a_runs_processes(
    engine: sa.Engine,
) -> None:
    """The periodic delivery shares the worker's limiter with the campaign runs; a big run's
    processes send at that whole rate, so while it is lent to them the periodic drain sends
    nothing (it would send at the same rate again: twice the ESP's limit), and takes the due
    mail up again once the rate is back."""
    store(engine, [email(0), email(1)])
    fake = FakeProvider()
    periodic = deliverer(engine, fake, FixedClock(NOW))
    with periodic.limiter.lend():
        report = periodic.drain()
    assert fake.sent == [] and report.sent == 0
    assert states(engine) == Counter({"queued": 2})
    assert periodic.drain().sent == 2 and len(fake.sent) == 2


def test_a_big_runs_processes_borrow_the_rate_for_as_long_as_they_deliver(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``deliver_planned`` lends its deliverer's limiter to the delivering processes for as
    long as they send, at its rate, and gets it back after (processes stubbed: the lending
    is what is under test)."""
    campaign_shop.tea_shop(engine, [f"c{n}" for n in range(3)])
    settings = Settings(signing_key="f" * 32)
    campaign = campaign_shop.daily("big", holdout_percent=0)
    seen: list[tuple[int, object]] = []
    run = Deliverer(engine, FakeProvider(), ESP, SystemClock(), sleep=lambda s: None)

    def processes(*args: object) -> DeliveryReport:  # called with the rate last
        seen.append((run.limiter.lent, args[-1]))
        return DeliveryReport()

    monkeypatch.setattr(campaign_send, "delivery_processes", lambda settings, sends: 2)
    monkeypatch.setattr(campaign_send, "drain_in_processes", processes)
    planned = plan_run(engine, settings, campaign, NOW)
    campaign_send.deliver_planned(engine, settings, campaign, ROOT / "templates", planned, NOW, run)
    assert seen == [(1, ESP.rate_limit_per_s)] and run.limiter.lent == 0


def test_a_claim_renewed_after_another_deliverer_read_it_as_stale_is_not_taken_over(
    engine: sa.Engine,
) -> None:
    """A stalls past its claim's lease. B (another host) reads the claim as stale; A wakes,
    renews it (still ``claimed_by`` A) and sends. B's take-over checked only ``claimed_by``,
    so it took the claim anyway, found it not accepted (A's request was in flight) and
    queued it again: two copies. A claim renewed (or claimed again) since it was read is not
    stale any more, and is not taken over."""
    store(engine, [email(0)])
    clock, fake = FixedClock(NOW), FakeProvider()
    lease = ESP.claim_lease_s
    stale: list[outbox.Claimed] = []

    class Stalled(RateLimiter):
        """A's first request waits past the lease (a stall); B reads the claim meanwhile."""

        def take(self, key: str = "") -> None:
            if self.rate:
                self.rate = 0.0
                clock.advance(timedelta(seconds=lease + 1))
                with engine.connect() as connection:  # B's reconcile, another host: the read
                    stale.extend(
                        outbox.stale_claims(connection, clock.now(), lease, lambda w: True)
                    )

    class TakenOverMeanwhile(FakeProvider):
        """A's provider: while A's request is on its way, B's reconcile goes on."""

        def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
            with engine.begin() as connection:
                now = clock.now()
                taken = outbox.take_over(connection, stale, "b:2:b", now, lease_s=lease, dead=())
                outbox.release(connection, [c.id for c in taken], clock.now(), "b:2:b")
            stale.clear()
            return fake.send_batch(messages)

    limiter = Stalled(1.0)
    a = Deliverer(
        engine,
        TakenOverMeanwhile(),
        ESP,
        clock,
        sleep=lambda s: clock.advance(timedelta(seconds=s)),
        worker="a:1:a",
        limiter=limiter,
    )
    a.drain()
    deliverer(engine, fake, clock, worker="b:2:b").drain()  # B's drain, after its reconcile
    assert [m.send_key for m in fake.sent] == [email(0).send_key]
    assert states(engine) == Counter({"sent": 1})


def test_a_second_big_run_at_once_starts_no_processes_at_the_same_rate(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two campaigns on the same cron run at once in one worker (its scheduler has eight
    threads) and share its limiter. While the first run's processes hold the rate, the
    second started processes of its own at the same whole rate: twice the ESP's limit. It
    yields instead, like the periodic delivery; its mail stays queued for after."""
    campaign_shop.tea_shop(engine, [f"c{n}" for n in range(3)])
    settings = Settings(signing_key="f" * 32)
    campaign = campaign_shop.daily("big", holdout_percent=0)
    seen: list[object] = []
    fake = FakeProvider()
    run = Deliverer(engine, fake, ESP, SystemClock(), sleep=lambda s: None)

    def processes(*args: object) -> DeliveryReport:  # called with the rate last
        seen.append(args[-1])
        return DeliveryReport()

    monkeypatch.setattr(campaign_send, "delivery_processes", lambda settings, sends: 2)
    monkeypatch.setattr(campaign_send, "drain_in_processes", processes)
    planned = plan_run(engine, settings, campaign, NOW)
    with run.limiter.lend():  # the first run's processes, sending meanwhile
        report = campaign_send.deliver_planned(
            engine, settings, campaign, ROOT / "templates", planned, NOW, run
        )
    assert seen == [] and fake.sent == [] and report.enqueued == 3
    assert states(engine) == Counter({"queued": 3})


def drain_for_ten_minutes(engine: sa.Engine, provider: Postmark, clock: FixedClock) -> None:
    """Deliver until 10 minutes have passed on ``clock``, which the sleeps move (``ESP``:
    retry_base_s 1, retry_max_s 60); the provider is closed after."""
    try:
        Deliverer(
            engine,
            provider,
            ESP,
            clock,
            sleep=Sleeper(clock),
            rng=random.Random(1),
            stopping=lambda: clock.now() >= NOW + timedelta(minutes=10),
        ).drain(max_wait_s=3600)
    finally:
        provider.close()


def test_429s_without_a_wait_hold_every_batch_ever_longer(engine: sa.Engine) -> None:
    """Postmark documents no Retry-After on its 429 (nor a rate-limit header): a 429 that names
    no wait costs the messages no attempt, so their own backoff never grew, and the deliverer
    asked again every second or two at the full send rate for as long as Postmark refused.
    Now each such answer in a row doubles a pause of every batch (retry_base_s, capped at
    retry_max_s). Over real HTTP, against the fake ESP refusing every request; the clock is
    moved by the sleeps, and the deliverer stops after 10 minutes of it."""
    store(engine, [email(0), email(1)])
    fake = FakeEsp(token="t", faults=Faults(rate_429=1.0, retry_after_s=None))
    clock = FixedClock(NOW)
    answers: list[int] = []
    with running(create_fake(fake)) as url:
        provider = Postmark(url, "t", "shop@example.test")
        provider.client.event_hooks["response"].append(lambda r: answers.append(r.status_code))
        drain_for_ten_minutes(engine, provider, clock)
    assert set(answers) == {429}
    # pauses of 1, 2, 4, 8, 16, 32 s, then 60 s: 7 + 9 requests in 10 minutes (before: ~600)
    assert 12 <= len(answers) <= 20, len(answers)
    assert states(engine) == Counter({"queued": 2}) and fake.messages == []


def gateway(status: int) -> FastAPI:
    """A Postmark whose gateway answers every send ``status`` (no Retry-After) and whose
    search finds nothing: what an overloaded provider behind a load balancer does."""
    app = FastAPI()

    @app.post("/email/batch")
    def send() -> Response:
        return Response("Bad Gateway", status)

    @app.get("/messages/outbound")
    def search() -> dict[str, object]:
        return {"TotalCount": 0, "Messages": []}

    return app


@pytest.mark.parametrize("status", [502, 504])
def test_a_gateways_502_or_504_holds_every_batch_ever_longer_too(
    engine: sa.Engine, status: int
) -> None:
    """A 502 or 504 may have gone through (the messages are looked up, and cost no attempt),
    but it is still an HTTP answer naming no wait: the deliverer held nothing and asked the
    overloaded provider again every second or two, as for the 429s above."""
    store(engine, [email(0), email(1)])
    clock = FixedClock(NOW)
    sends: list[int] = []
    with running(gateway(status)) as url:
        provider = Postmark(url, "t", "shop@example.test")
        provider.client.event_hooks["response"].append(
            lambda r: sends.append(r.status_code) if r.request.method == "POST" else None
        )
        drain_for_ten_minutes(engine, provider, clock)
    assert set(sends) == {status}
    assert 12 <= len(sends) <= 20, len(sends)  # pauses of 1, 2, 4 … 60 s (before: hundreds)
    assert states(engine) == Counter({"queued": 2})


def test_a_consent_withdrawn_after_enqueue_cancels_the_waiting_mail(engine: sa.Engine) -> None:
    """A customer whose mail waits in the outbox (deferred by quiet hours, a retry) withdraws
    their consent (``consent_basis`` → ``none``, as ``PUT /v1/customers/{id}`` or a customers
    file records it): without a legal basis the mail must not go out. It went, since only an
    unsubscribe, an erasure, ``channel_email = false`` or a suppression cancelled it."""
    fill(engine, 2)
    with engine.begin() as connection:
        profiles.apply(
            connection,
            "c1",
            {"consent_basis": "none"},
            at=NOW,
            actor="api:shop",
            source="crm",
        )
    fake = FakeProvider()
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert [m.send_key for m in fake.sent] == ["winback/c0/2026-01-15"] and report.sent == 1
    assert states(engine) == Counter({"sent": 1, "cancelled": 1})


def test_a_pause_after_enqueue_holds_back_the_waiting_mail(engine: sa.Engine) -> None:
    """A customer's mail waits in the outbox (deferred to the end of their quiet hours, a
    retry) and they pause e-mails on the preferences page ("E-mails are paused until …"):
    the mail went out the next morning all the same, since the deliverer cancelled only for
    an unsubscribe, an erasure, ``channel_email = false``, basis ``none`` or a suppression.
    A pause that is over by the time the mail is due, or was resumed, holds back nothing."""
    fill(engine, 3)
    with engine.begin() as connection:
        connection.execute(sa.update(customers).values(consent_at=NOW - timedelta(days=9)))
        for customer, until in (("c1", NOW + timedelta(weeks=4)), ("c2", NOW)):
            profiles.apply(
                connection,
                customer,
                {"paused_until": until},
                at=NOW - timedelta(hours=1),
                actor="customer",
                source="preferences page",
            )
    fake = FakeProvider()
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert sorted(m.send_key for m in fake.sent) == [
        "winback/c0/2026-01-15",
        "winback/c2/2026-01-15",
    ]
    assert report.sent == 2 and states(engine) == Counter({"sent": 2, "cancelled": 1})


def test_an_address_changed_after_enqueue_cancels_the_mail_to_the_old_one(
    engine: sa.Engine,
) -> None:
    """A customer corrects their address (a typo that reached a stranger, a mailbox given up)
    while their mail waits in the outbox: the mail, with their signed links to the preferences
    page and the data download, went to the old address all the same. It is cancelled (the
    next run mails the new one); an address that differs only in case or padding still goes."""
    fill(engine, 3)
    with engine.begin() as connection:
        for customer, address in (("c1", "new-c1@example.test"), ("c2", "C2@Example.TEST ")):
            connection.execute(
                sa.update(customers).where(customers.c.id == customer).values(email=address)
            )
    fake = FakeProvider()
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert sorted(m.send_key for m in fake.sent) == [
        "winback/c0/2026-01-15",
        "winback/c2/2026-01-15",
    ]
    assert report.sent == 2 and states(engine) == Counter({"sent": 2, "cancelled": 1})


@pytest.mark.parametrize("way", ["profile change", "customers import"])
def test_an_objection_after_enqueue_cancels_the_waiting_mail_with_offers(
    engine: sa.Engine, tmp_path: Path, way: str
) -> None:
    """A customer objects to profiling while their mail waits in the outbox (quiet hours, a
    retry): its offers were chosen by their profile ("because you bought …"), and it went out
    after the objection all the same. It is cancelled in the objection's transaction (the
    next run decides by the rule-based fallback); a survey without offers still goes, and so
    does the mail of a customer who objected before it was queued."""
    without_offers = BodyTemplate("winback.html", "winback.txt", {**sample_context(), "offers": []})
    survey = dataclasses.replace(deferred(2), template=without_offers)
    store(engine, [deferred(0), deferred(1), survey])
    with engine.begin() as connection:  # c0 objected before: its mail was planned so
        connection.execute(sa.update(customers).values(consent_at=NOW - timedelta(days=9)))
        connection.execute(
            sa.update(customers).where(customers.c.id == "c0").values(objected_to_profiling=True)
        )
    if way == "profile change":
        with engine.begin() as connection:
            for customer in ("c1", "c2"):
                profiles.apply(
                    connection,
                    customer,
                    {"objected_to_profiling": True},
                    at=NOW,
                    actor="customer",
                    source="preferences page",
                )
    else:
        feed = tmp_path / "customers.csv"
        people = "".join(f"c{n},c{n}@example.test,true\n" for n in range(3))
        feed.write_text(f"id,email,objected_to_profiling\n{people}")
        Importer(engine, zone=UTC, now=NOW).customers(feed)
    fake = FakeProvider()
    Deliverer(engine, fake, ESP, FixedClock(NOW), renderer=Renderer(TEMPLATES)).drain()
    assert sorted(m.send_key for m in fake.sent) == [
        "winback/c0/2026-01-15",
        "winback/c2/2026-01-15",
    ]
    assert states(engine) == Counter({"sent": 2, "cancelled": 1})


@pytest.mark.parametrize("way", ["profile change", "customers import"])
def test_a_switch_to_the_existing_customer_basis_cancels_mail_written_for_a_double_opt_in(
    engine: sa.Engine, tmp_path: Path, way: str
) -> None:
    """A campaign that allows double opt-in alone queues mail for c0 and c1; then c0's basis
    becomes ``existing_customer`` (a CRM correction: the opt-in was never confirmed). The
    deliverer's check at claim time cancelled basis ``none`` only, and c0's mail went out
    under a basis its campaign does not allow, without the UWG §7(3) notice. It is cancelled
    in the change's transaction; c1's goes, and so does c2's, written for their
    existing-customer basis by a campaign that allows it."""
    campaign_shop.tea_shop(engine, ["c0", "c1", "c2"])  # each bought tea 20 days ago
    with engine.begin() as connection:
        connection.execute(
            sa.update(customers)
            .where(customers.c.id == "c2")
            .values(consent_basis="existing_customer")
        )
    settings = Settings(signing_key="f" * 32)
    only_doi = campaign_shop.daily("doi", holdout_percent=0)
    run.plan_and_enqueue(engine, settings, only_doi, TEMPLATES, NOW)
    both = campaign_shop.daily("both", holdout_percent=0).model_copy(
        update={"legal_basis": ("double_opt_in", "existing_customer")}
    )
    later = NOW + timedelta(minutes=1)
    run.plan_and_enqueue(engine, settings, both, TEMPLATES, later)
    with engine.connect() as connection:  # "both" mailed c2 only: c0 and c1 had one today
        queued = connection.execute(sa.select(outbox_table.c.send_key)).scalars().all()
    assert sorted(queued) == ["both/c2/2026-01-15", "doi/c0/2026-01-15", "doi/c1/2026-01-15"]
    switched = {"consent_basis": "existing_customer", "consent_at": NOW - timedelta(days=1)}
    if way == "profile change":
        with engine.begin() as connection:
            profiles.apply(connection, "c0", switched, at=later, actor="api:shop", source="crm")
    else:
        feed = tmp_path / "customers.csv"
        feed.write_text(
            "id,email,consent_basis,consent_at\n"
            f"c0,c0@example.test,existing_customer,{(NOW - timedelta(days=1)).isoformat()}\n"
            f"c2,c2@example.test,existing_customer,{(NOW - timedelta(days=400)).isoformat()}\n"
        )
        Importer(engine, zone=UTC, now=later).customers(feed)
    fake = FakeProvider()
    Deliverer(engine, fake, ESP, FixedClock(later), renderer=Renderer(TEMPLATES)).drain()
    assert sorted(m.send_key for m in fake.sent) == ["both/c2/2026-01-15", "doi/c1/2026-01-15"]
    assert states(engine) == Counter({"sent": 2, "cancelled": 1})


def test_postmark_out_of_credits_leaves_the_run_queued_not_failed(engine: sa.Engine) -> None:
    """Postmark answers a batch with 422, ErrorCode 405 ("Not allowed to send": the account
    ran out of credits): every message of the run was failed for good, batch after batch (5
    of 5 here, 3 requests); now the first such answer stops the run and gives the claims
    back, with their attempts."""
    fill(engine, 5)
    paths: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        paths.append(request.url.path)
        body = {"ErrorCode": 405, "Message": "Not allowed to send: you ran out of credits."}
        return httpx.Response(422, json=body)

    provider = Postmark(
        "http://esp.test", "t", "shop@example.test", transport=httpx.MockTransport(answer)
    )
    clock = FixedClock(NOW)
    settings = ESP.model_copy(update={"batch_size": 2})
    with pytest.raises(DeliveryError, match="ErrorCode 405"):
        Deliverer(engine, provider, settings, clock, sleep=Sleeper(clock)).drain()
    assert paths == ["/email/batch"]
    assert states(engine) == Counter({"queued": 5})
    with engine.connect() as connection:
        attempts = connection.execute(sa.select(outbox_table.c.attempts)).scalars().all()
    assert attempts == [0] * 5


@pytest.mark.parametrize("meanwhile", ["erased", "unsubscribed"])
def test_an_erasure_or_unsubscribe_during_a_short_wait_before_the_request_stops_that_mail(
    engine: sa.Engine, meanwhile: str
) -> None:
    """The claim checked the opt-outs; then the batch waited a second for the rate limit
    (far less than half the lease, so the claims were not renewed, and not checked again)
    and customer c1 was erased or unsubscribed meanwhile: their mail went out, and the
    erased one's row said "cancelled". Checked again before every request now."""
    store(engine, [email(0), email(1)])
    clock, fake = FixedClock(NOW), FakeProvider()
    settings = Settings(signing_key=SecretStr("k" * 32))

    def wait(seconds: float) -> None:
        clock.advance(timedelta(seconds=seconds))
        if meanwhile == "erased":
            assert privacy.erase(engine, settings, "c1", clock.now(), via="test") is not None
        else:
            with engine.begin() as connection:
                contacts.unsubscribe(connection, "c1", clock.now(), source="test")

    limiter = RateLimiter(1.0, wait, monotonic=lambda: 0.0)
    limiter.take()  # the bucket is empty: the request waits a second for its token
    Deliverer(engine, fake, ESP, clock, sleep=wait, limiter=limiter).drain()
    assert [m.to for m in fake.sent] == ["c0@example.test"]
    assert states(engine) == Counter({"sent": 1, "cancelled": 1})


def test_mail_queued_before_the_customer_paused_emails_is_cancelled_not_sent(
    engine: sa.Engine,
) -> None:
    """A customer pauses e-mails for four weeks (the preferences page) after a run queued
    their mail for the morning after quiet hours: it went out during the pause (the claim
    checked unsubscribes, erasures, consent and suppressions, not the pause, which the
    planner alone had checked). A pause that has ended by the send holds nothing back."""
    store(engine, [email(0), email(1), email(2)])
    with engine.begin() as connection:
        for customer, until in (("c1", NOW + timedelta(weeks=4)), ("c2", NOW)):
            connection.execute(
                sa.update(customers).where(customers.c.id == customer).values(paused_until=until)
            )
    fake = FakeProvider()
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert sorted(m.to for m in fake.sent) == ["c0@example.test", "c2@example.test"]
    assert report.sent == 2 and states(engine) == Counter({"sent": 2, "cancelled": 1})
    with engine.connect() as connection:
        error = connection.execute(
            sa.select(outbox_table.c.last_error).where(outbox_table.c.state == "cancelled")
        ).scalar_one()
    assert error == outbox.PAUSED


def test_a_postmark_500_after_part_of_the_batch_went_through_sends_nothing_twice(
    engine: sa.Engine,
) -> None:
    """Postmark documents its 500 as "in most cases the message is lost": not always. Here
    it took the batch's first message, then answered 500; the retry sent it again (two
    copies). A Postmark 500 is looked up before anything is sent again."""
    fill(engine, 2)
    accepted: Counter[str] = Counter()
    batches = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal batches
        if request.url.path == "/messages/outbound":  # the lookup: by metadata send key
            key = request.url.params["metadata_send_key"]
            found = [{"MessageID": f"id-{key}"}] if accepted[key] else []
            return httpx.Response(200, json={"TotalCount": len(found), "Messages": found})
        batches += 1
        sent = [m["Metadata"]["send_key"] for m in orjson.loads(request.content)]
        if batches == 1:
            accepted[sent[0]] += 1  # taken, then the server failed
            return httpx.Response(500, json={"ErrorCode": 500, "Message": "Internal error"})
        accepted.update(sent)
        return httpx.Response(
            200, json=[{"ErrorCode": 0, "MessageID": f"id-{k}", "Message": "OK"} for k in sent]
        )

    provider = Postmark(
        "http://esp.test", "t", "shop@example.test", transport=httpx.MockTransport(answer)
    )
    clock = FixedClock(NOW)
    report = Deliverer(engine, provider, ESP, clock, sleep=Sleeper(clock)).drain(max_wait_s=3600)
    assert report.sent == 2 and states(engine) == Counter({"sent": 2})
    assert sorted(accepted.values()) == [1, 1]


def test_a_send_key_over_80_characters_goes_out_once_and_postmark_learns_no_customer_id(
    engine: sa.Engine,
) -> None:
    """Postmark refuses a metadata value over 80 characters (ErrorCode 300, "Invalid metadata
    content"), and the send key went there whole: ``campaign/customer/period`` is up to 140
    characters (campaign names and customer ids of up to 64), so every e-mail of a campaign
    with a long name to a customer with a UUID id failed; every other one gave Postmark the
    shop's customer id, which it keeps, searchable, with the message. Postmark now gets a
    keyed digest of the send key: the e-mail goes out, is found again after its deliverer
    died before recording it (not sent twice), and a webhook that comes before that record
    still names its customer."""
    customer = "0b7e7a52-4c1e-4d55-9b8f-2f5c3a9d1e77"
    campaign = "reactivation_of_customers_without_an_order_in_a_year"
    key = f"{campaign}/{customer}/2026-01-15"
    store(engine, [dataclasses.replace(email(0, campaign), send_key=key, headers=())])
    signing_key = b"the shop's signing key"
    settings = Settings(signing_key=SecretStr(signing_key.decode()), webhook_secret="hook")
    fake = FakeEsp(token="t")
    with running(create_fake(fake)) as url:
        provider = Postmark(url, "t", "shop@example.test", key=signing_key)
        report, record = _died_after_acceptance(engine, fake, provider, provider, settings)
    assert report.reconciled == 1 and report.sent == 0
    assert fake.stats()["received"] == 1 and states(engine) == Counter({"sent": 1})
    metadata = record["Metadata"]["send_key"]
    assert len(metadata) <= 80 and customer not in orjson.dumps(record).decode()
    with engine.connect() as connection:
        named = connection.execute(sa.select(contact_events.c.customer_id)).scalars().all()
    assert named == ["c0"]


def test_a_postmark_stream_that_does_not_exist_stops_the_run_and_keeps_its_mail_queued(
    engine: sa.Engine,
) -> None:
    """``[esp] message_stream`` naming no stream of the server: Postmark answers every message
    of the batch ErrorCode 1235, which is about our settings, not the message. Each was
    retried (an attempt spent, backoff, the campaign paused over its error rate) until it
    failed for good; nothing could have gone out. Now the run stops naming the setting, and
    the mail waits in the queue untouched for the fixed settings, as for refused credentials."""
    fill(engine, 3)
    fake = FakeEsp(token="t")
    with running(create_fake(fake)) as url:
        provider = Postmark(url, "t", "shop@example.test", message_stream="newsletters")
        try:
            with pytest.raises(DeliveryError, match=r"1235: \[esp\] message_stream"):
                Deliverer(engine, provider, ESP, FixedClock(NOW)).drain()
        finally:
            provider.close()
    assert fake.stats()["received"] == 0
    with engine.connect() as connection:
        rows = connection.execute(sa.select(outbox_table.c.state, outbox_table.c.attempts)).all()
        assert not outbox.paused(connection)
    assert sorted(rows) == [("queued", 0)] * 3


def test_postmarks_per_message_429_for_a_whole_batch_is_a_rate_limit_not_the_campaigns_error(
    engine: sa.Engine,
) -> None:
    """Postmark's ErrorCode 429 ("Rate Limit Exceeded") on every message of a batch answer is
    the account's rate limit, as an HTTP 429 is. It was taken for an error of each message:
    an attempt spent (out of attempts: failed for good) and the campaign's error rate, which
    paused the campaign, while nothing was wrong with its mail. Now such an answer holds
    every batch, spends no attempt and leaves the campaign running."""
    fill(engine, 4)
    requests = 0

    def answer(request: httpx.Request) -> httpx.Response:
        nonlocal requests
        requests += 1
        sent = orjson.loads(request.content)
        if requests <= 3:
            limited = {"ErrorCode": 429, "Message": "Rate limit exceeded."}
            return httpx.Response(200, json=[limited] * len(sent))
        accepted = [{"ErrorCode": 0, "MessageID": f"id-{requests}-{n}"} for n in range(len(sent))]
        return httpx.Response(200, json=accepted)

    provider = Postmark(
        "http://esp.test", "t", "shop@example.test", transport=httpx.MockTransport(answer)
    )
    settings = ESP.model_copy(
        update={"max_attempts": 2, "pause_min_messages": 2, "pause_error_rate": 0.5}
    )
    clock = FixedClock(NOW)
    report = Deliverer(engine, provider, settings, clock, sleep=Sleeper(clock)).drain(
        max_wait_s=3600
    )
    assert report.sent == 4 and report.failed == 0 and not report.paused
    assert states(engine) == Counter({"sent": 4})


def test_an_email_claimed_before_the_signing_key_was_rotated_is_found_under_the_retired_key(
    engine: sa.Engine,
) -> None:
    """Postmark knows an e-mail by a digest under the signing key of the time it went out.
    Its deliverer died before recording it, then the key was rotated (the old one retired):
    the webhook still names its customer and the next deliverer's lookup still finds it
    under the retired key, so it is not sent twice."""
    key = "winback/c0/2026-01-15"
    store(engine, [dataclasses.replace(email(0, "winback"), send_key=key, headers=())])
    old, new = "the-shops-signing-key-of-last-year", "the-shops-signing-key-from-today-on"
    rotated = Settings(
        signing_key=SecretStr(new), signing_keys_retired=SecretStr(old), webhook_secret="hook"
    )
    fake = FakeEsp(token="t")
    with running(create_fake(fake)) as url:
        before = Postmark(url, "t", "shop@example.test", key=old.encode())
        after = Postmark(url, "t", "shop@example.test", key=new.encode(), retired=(old.encode(),))
        report, _ = _died_after_acceptance(engine, fake, before, after, rotated)
    assert report.reconciled == 1 and report.sent == 0
    assert fake.stats()["received"] == 1 and states(engine) == Counter({"sent": 1})
    with engine.connect() as connection:
        named = connection.execute(sa.select(contact_events.c.customer_id)).scalars().all()
    assert named == ["c0"]


def _died_after_acceptance(
    engine: sa.Engine, fake: FakeEsp, sender: Postmark, reconciler: Postmark, settings: Settings
) -> tuple[DeliveryReport, dict[str, Any]]:
    """The one queued e-mail claimed and accepted by Postmark through ``sender``, its
    deliverer dead before recording it; a delivery webhook posted to the API under
    ``settings``; then a deliverer with ``reconciler`` after the claim's lease: its report
    and the message as the fake ESP holds it."""
    try:
        claimed = outbox.claim(engine, "elsewhere:1:dead", NOW, 10)  # then it died
        [result] = sender.send_batch([c.email for c in claimed])
        assert result.status == "accepted", result.error
        [record] = fake.messages
        hook = orjson.dumps(postmark_event("delivery", record, NOW))
        posted = call(
            create_api(settings, engine, FixedClock(NOW)),
            "POST",
            "/v1/webhooks/postmark",
            content=hook,
            headers={"authorization": "Bearer hook"},
        )
        assert posted.status == 200, posted.text
        later = FixedClock(NOW + timedelta(seconds=ESP.claim_lease_s + 1))
        return Deliverer(engine, reconciler, ESP, later).drain(), record
    finally:
        sender.close()
        reconciler.close()
