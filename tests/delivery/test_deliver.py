"""The outbox and the deliverer on real stores: exactly once under retries, crashes, races."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from recocamp.campaigns.render import Renderer, sample_context, snapshot
from recocamp.clock import FixedClock
from recocamp.delivery.deliverer import Deliverer, backoff
from recocamp.delivery.esp.fake import FakeProvider
from recocamp.delivery.esp.fake_server import FakeEsp, running
from recocamp.delivery.esp.fake_server import create_app as create_fake
from recocamp.delivery.processes import drain_in_processes
from recocamp.domain import (
    BodyTemplate,
    ConsentBasis,
    Customer,
    OutgoingEmail,
    SendResult,
    SendStatus,
    email_hash,
)
from recocamp.errors import (
    BatchTooLargeError,
    ConfigError,
    DeliveryError,
    TransientDeliveryError,
)
from recocamp.ratelimit import RateLimiter
from recocamp.settings import EspSettings, Settings
from recocamp.store import outbox
from recocamp.store.engine import make_engine
from recocamp.store.queries import upsert_customers
from recocamp.store.schema import customers, suppressions
from recocamp.store.schema import outbox as outbox_table
from tests.conftest import NOW

ESP = EspSettings(retry_base_s=1.0, retry_max_s=60.0, max_attempts=4, pause_min_messages=1000)


def email(n: int, campaign: str = "winback") -> OutgoingEmail:
    return OutgoingEmail(
        send_key=f"{campaign}/c{n}/2026-01-15",
        to=f"c{n}@example.test",
        subject=f"Hello {n}",
        html=f"<p>{n}</p>",
        text=str(n),
        headers=(("X-Recocamp-Send-Key", f"{campaign}/c{n}/2026-01-15"),),
        campaign=campaign,
    )


def fill(engine: sa.Engine, count: int, campaign: str = "winback") -> list[OutgoingEmail]:
    emails = [email(n, campaign) for n in range(count)]
    store(engine, emails)
    return emails


def store(engine: sa.Engine, emails: Sequence[OutgoingEmail]) -> None:
    """Customers c0, c1, … with consent, and their e-mails in the outbox."""
    opted_in = ConsentBasis.DOUBLE_OPT_IN
    people = [
        Customer(id=f"c{n}", email=f"c{n}@example.test", consent_basis=opted_in)
        for n in range(len(emails))
    ]
    with engine.begin() as connection:
        upsert_customers(connection, people, NOW)
        outbox.enqueue(connection, [(e, f"c{n}", None, NOW) for n, e in enumerate(emails)], NOW)


def states(engine: sa.Engine) -> Counter[str]:
    with engine.connect() as connection:
        return Counter(connection.execute(sa.select(outbox_table.c.state)).scalars())


class Sleeper:
    """A sleep that moves a FixedClock instead of waiting."""

    def __init__(self, clock: FixedClock) -> None:
        self.clock, self.slept = clock, 0.0

    def __call__(self, seconds: float) -> None:
        self.slept += seconds
        self.clock.advance(timedelta(seconds=seconds))


def deliverer(
    engine: sa.Engine,
    provider: FakeProvider,
    clock: FixedClock,
    settings: EspSettings = ESP,
    worker: str | None = None,
) -> Deliverer:
    return Deliverer(
        engine, provider, settings, clock, sleep=Sleeper(clock), rng=random.Random(1), worker=worker
    )


def test_enqueue_is_idempotent_by_send_key(engine: sa.Engine) -> None:
    fill(engine, 3)
    with engine.begin() as connection:
        again = outbox.enqueue(connection, [(email(1), "c1", None, NOW)], NOW)
    assert again == 0
    assert states(engine) == Counter({"queued": 3})


def test_small_bodies_are_stored_as_json_large_ones_compressed_and_both_come_back(
    engine: sa.Engine,
) -> None:
    big = replace(email(1), html="<p>" + "Ä offer, " * 1000 + "</p>")  # 10 kB rendered
    store(engine, [email(0), big])
    with engine.connect() as connection:
        bodies = {r.send_key: r.body for r in connection.execute(sa.select(outbox_table))}
    small_body, big_body = bodies[email(0).send_key], bodies[big.send_key]
    assert small_body.startswith(b"{") and not big_body.startswith(b"{")
    assert len(big_body) < len(big.html) // 10
    claimed = outbox.claim(engine, "w", NOW, 10)
    assert {c.email.send_key: c.email.html for c in claimed} == {
        email(0).send_key: email(0).html,
        big.send_key: big.html,
    }


def test_drain_sends_every_message_once_in_provider_sized_batches(engine: sa.Engine) -> None:
    sent = fill(engine, 7)
    fake = FakeProvider(batch_limit=3)
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert report.sent == 7 and report.requests == 3
    assert sorted(m.send_key for m in fake.sent) == sorted(e.send_key for e in sent)
    assert states(engine) == Counter({"sent": 7})
    assert deliverer(engine, fake, FixedClock(NOW)).drain().sent == 0
    with engine.connect() as connection:
        ids = connection.execute(sa.select(outbox_table.c.provider_message_id)).scalars().all()
    assert all(i and i.startswith("fake-") for i in ids)


def test_per_message_retry_backs_off_until_accepted(engine: sa.Engine) -> None:
    fill(engine, 2)
    fake = FakeProvider()
    fake.script["winback/c0/2026-01-15"] = [SendStatus.RETRY, SendStatus.RETRY, SendStatus.ACCEPTED]
    clock = FixedClock(NOW)
    report = deliverer(engine, fake, clock).drain(max_wait_s=120)
    assert report.sent == 2 and report.retried == 2
    assert fake.attempts["winback/c0/2026-01-15"] == 3
    assert clock.now() > NOW  # it waited for the retries to come due
    assert [m.send_key for m in fake.sent].count("winback/c0/2026-01-15") == 1


def test_out_of_attempts_fails_and_retry_failed_sends_it_later(engine: sa.Engine) -> None:
    fill(engine, 1)
    fake = FakeProvider()
    fake.script["winback/c0/2026-01-15"] = [SendStatus.RETRY] * 4 + [SendStatus.ACCEPTED]
    clock = FixedClock(NOW)
    report = deliverer(engine, fake, clock).drain(max_wait_s=3600)
    assert report.failed == 1 and states(engine) == Counter({"failed": 1})
    with engine.begin() as connection:
        assert outbox.retry_failed(connection, clock.now()) == 1
    assert deliverer(engine, fake, clock).drain().sent == 1
    assert len(fake.sent) == 1


def test_rejected_recipient_is_suppressed_and_later_mail_to_it_cancelled(
    engine: sa.Engine,
) -> None:
    fill(engine, 2)
    fake = FakeProvider()
    fake.script["winback/c0/2026-01-15"] = [SendStatus.REJECTED]
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert (report.sent, report.rejected) == (1, 1)
    with engine.connect() as connection:
        hashes = set(connection.execute(sa.select(suppressions.c.email_hash)).scalars())
    assert hashes == {email_hash("C0@example.test ")}
    with engine.begin() as connection:  # the next campaign tries the same address again
        outbox.enqueue(connection, [(email(0, "birthday"), "c0", None, NOW)], NOW)
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert report.sent == 0 and states(engine)["cancelled"] == 1


def test_unsubscribe_after_enqueue_cancels_the_waiting_mail(engine: sa.Engine) -> None:
    fill(engine, 2)
    with engine.begin() as connection:
        connection.execute(
            sa.update(customers).where(customers.c.id == "c1").values(unsubscribed_at=NOW)
        )
    fake = FakeProvider()
    deliverer(engine, fake, FixedClock(NOW)).drain()
    assert [m.send_key for m in fake.sent] == ["winback/c0/2026-01-15"]
    assert states(engine) == Counter({"sent": 1, "cancelled": 1})


def test_a_429_for_the_whole_batch_waits_at_least_retry_after(engine: sa.Engine) -> None:
    fill(engine, 3)
    fake = FakeProvider()
    fake.fail_requests = [TransientDeliveryError("HTTP 429", retry_after=30.0)]
    clock = FixedClock(NOW)
    first = deliverer(engine, fake, clock).drain(max_wait_s=0)
    assert first.sent == 0 and first.retried == 3 and first.waiting == 3
    with engine.connect() as connection:
        due = outbox.next_due(connection)
    assert due is not None and due >= NOW + timedelta(seconds=30)
    clock.advance(timedelta(seconds=31))
    assert deliverer(engine, fake, clock).drain().sent == 3
    assert len(fake.sent) == 3


class AcceptsThenTimesOut(FakeProvider):
    """The provider takes the batch, but the answer is lost (read timeout)."""

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        results = super().send_batch(messages)
        if len(self.sent) <= len(messages):  # only the first request
            raise TransientDeliveryError("read timeout", ambiguous=True)
        return results


def test_an_ambiguous_failure_is_looked_up_not_resent(engine: sa.Engine) -> None:
    fill(engine, 4)
    fake = AcceptsThenTimesOut(batch_limit=2)
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert report.sent == 4 and report.retried == 0
    assert Counter(m.send_key for m in fake.sent).most_common(1)[0][1] == 1
    assert states(engine) == Counter({"sent": 4})


def test_413_splits_the_batch(engine: sa.Engine) -> None:
    class Small(FakeProvider):
        def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
            if len(messages) > 2:
                raise BatchTooLargeError("HTTP 413")
            return super().send_batch(messages)

    fill(engine, 5)
    fake = Small(batch_limit=500)
    assert deliverer(engine, fake, FixedClock(NOW)).drain().sent == 5
    assert len(fake.sent) == 5


def test_refused_credentials_stop_the_run_and_give_the_claims_back(engine: sa.Engine) -> None:
    fill(engine, 2)
    fake = FakeProvider()
    fake.fail_requests = [DeliveryError("HTTP 401: check RECOCAMP_ESP_TOKEN")]
    with pytest.raises(DeliveryError, match="RECOCAMP_ESP_TOKEN"):
        deliverer(engine, fake, FixedClock(NOW)).drain()
    assert states(engine) == Counter({"queued": 2})
    with engine.connect() as connection:
        attempts = connection.execute(sa.select(outbox_table.c.attempts)).scalars().all()
    assert attempts == [0, 0]


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_claims_of_a_dead_worker_are_reconciled_without_duplicates(engine: sa.Engine) -> None:
    """A worker claimed 4 messages, the ESP accepted 2 of them, then the worker died."""
    emails = fill(engine, 6)
    ghost = f"{socket.gethostname()}:{dead_pid()}:dead"
    claimed = outbox.claim(engine, ghost, NOW, 4)
    fake = FakeProvider()
    fake.send_batch([c.email for c in claimed[:2]])  # accepted before the crash
    report = deliverer(engine, fake, FixedClock(NOW)).drain()
    assert report.reconciled == 2 and report.sent == 4
    assert sorted(m.send_key for m in fake.sent) == sorted(e.send_key for e in emails)
    assert states(engine) == Counter({"sent": 6})


def test_two_deliverers_settling_one_dead_workers_claims_never_both_act(
    engine: sa.Engine,
) -> None:
    """Both see the same stale claims; only the first takes them over, and the second can
    neither release nor mark what it no longer holds (it would resend what the first sent)."""
    fill(engine, 4)
    ghost = f"{socket.gethostname()}:{dead_pid()}:dead"
    outbox.claim(engine, ghost, NOW, 4)
    with engine.connect() as connection:
        seen = outbox.stale_claims(connection, NOW, 300.0, lambda who: False)
    with engine.begin() as connection:
        first = outbox.take_over(connection, seen, "a:1:x", NOW, lease_s=300.0, dead={ghost})
        second = outbox.take_over(connection, seen, "b:2:y", NOW, lease_s=300.0, dead={ghost})
        outbox.release(connection, [c.id for c in seen], NOW, by="b:2:y")
        outbox.mark_sent(connection, {c.id: "m" for c in seen}, NOW, by="b:2:y")
    assert len(first) == 4 and second == []
    with engine.connect() as connection:
        rows = connection.execute(sa.select(outbox_table.c.state, outbox_table.c.claimed_by)).all()
    assert rows == [("claimed", "a:1:x")] * 4


def test_a_body_failing_with_a_python_error_fails_alone(engine: sa.Engine, tmp_path: Path) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    (templates / "bad.html").write_text("{{ customer.id + 1 }}")  # str + int: a TypeError
    store(engine, [deferred(0, html="bad.html"), deferred(1)])
    fake = FakeProvider()
    Deliverer(engine, fake, ESP, FixedClock(NOW), renderer=Renderer(templates)).drain()
    assert [m.send_key for m in fake.sent] == [deferred(1).send_key]
    with engine.connect() as connection:
        error = connection.execute(
            sa.select(outbox_table.c.last_error).where(outbox_table.c.state == "failed")
        ).scalar_one()
    assert "TypeError" in error and "bad.html" in error


def test_a_claim_on_another_host_is_stale_only_after_its_lease(engine: sa.Engine) -> None:
    fill(engine, 2)
    outbox.claim(engine, "elsewhere:1:x", NOW, 2)
    clock = FixedClock(NOW + timedelta(seconds=60))
    fake = FakeProvider()
    assert deliverer(engine, fake, clock).drain().sent == 0  # the other worker may be alive
    clock.advance(timedelta(seconds=ESP.claim_lease_s))
    assert deliverer(engine, fake, clock).drain().sent == 2


@pytest.mark.parametrize("pid", ["mine", "free"])
def test_a_claim_of_another_container_on_this_host_is_stale_only_after_its_lease(
    engine: sa.Engine, pid: str
) -> None:
    """Two containers sharing the host's name (``--network host``) number their processes
    each from 1, so a live worker of the other one may have this process's pid (both pid 1:
    measured with ``unshare --pid``, the second took the first's fresh claims over as its
    own unfinished ones and sent them while the first was sending them) or a pid free here.
    Its claims wait for their lease, as another host's do."""
    namespace = Path("/proc/self/ns/pid")
    if not namespace.exists():
        pytest.skip("no pid namespace to read (not Linux)")
    space = int("".join(c for c in os.readlink(namespace) if c.isdigit()))
    fill(engine, 2)
    number = os.getpid() if pid == "mine" else dead_pid()
    other = f"{socket.gethostname()}:{number}:x:{space + 1}"
    outbox.claim(engine, other, NOW, 2)
    clock = FixedClock(NOW + timedelta(seconds=60))
    fake = FakeProvider()
    assert deliverer(engine, fake, clock).drain().sent == 0  # the other worker may be alive
    clock.advance(timedelta(seconds=ESP.claim_lease_s))
    assert deliverer(engine, fake, clock).drain().sent == 2


def test_a_campaign_pauses_itself_when_its_error_rate_passes_the_threshold(
    engine: sa.Engine,
) -> None:
    fill(engine, 40)
    fake = FakeProvider(batch_limit=10)
    for n in range(0, 40, 2):
        fake.script[f"winback/c{n}/2026-01-15"] = [SendStatus.REJECTED]
    settings = ESP.model_copy(update={"pause_min_messages": 10, "pause_error_rate": 0.2})
    report = deliverer(engine, fake, FixedClock(NOW), settings).drain()
    assert "winback" in report.paused and report.sent == 5 and report.waiting == 30
    with engine.begin() as connection:
        assert outbox.resume(connection, "winback")
    settings = ESP.model_copy(update={"pause_min_messages": 1000})
    assert deliverer(engine, fake, FixedClock(NOW), settings).drain().sent == 15


def test_two_deliverers_draining_at_once_never_send_twice(engine: sa.Engine) -> None:
    fill(engine, 60)
    fake = FakeProvider(batch_limit=5)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            Deliverer(engine, fake, ESP, FixedClock(NOW)).drain()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert len(fake.sent) == 60 and len({m.send_key for m in fake.sent}) == 60
    assert states(engine) == Counter({"sent": 60})


def test_rate_limiter_spaces_requests() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(2.0, sleep, monotonic=lambda: now[0])
    for _ in range(5):
        limiter.take()
    assert sum(slept) == pytest.approx(2.0)  # 1 from the bucket, then one per 0.5 s


def test_backoff_is_exponential_jittered_and_capped() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        value = backoff(attempt, 2.0, 60.0, rng)
        assert 0 <= value <= min(60.0, 2.0 * 2 ** (attempt - 1))
    assert max(backoff(10, 2.0, 60.0, rng) for _ in range(200)) > 30  # reaches the cap region


# --- bodies rendered by the deliverer (campaign runs enqueue templates, not HTML) ----------

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


def deferred(n: int, html: str = "winback.html") -> OutgoingEmail:
    body = BodyTemplate(html, "winback.txt", sample_context())
    return replace(email(n), html="", text="", template=body)


def test_deferred_bodies_are_rendered_when_they_go_out(engine: sa.Engine) -> None:
    store(engine, [deferred(0), deferred(1, html="missing.html")])
    fake = FakeProvider()
    clock = FixedClock(NOW)
    Deliverer(engine, fake, ESP, clock, renderer=Renderer(TEMPLATES)).drain()
    [sent] = fake.sent
    assert sent.template is None and "REGENCY CAKESTAND 3 TIER" in sent.html
    assert "REGENCY CAKESTAND 3 TIER" in sent.text and 'style="' in sent.html  # CSS inlined
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(outbox_table).where(outbox_table.c.send_key == deferred(1).send_key)
        ).one()
        suppressed = connection.execute(sa.select(suppressions)).all()
    assert row.state == "failed" and "missing.html" in row.last_error
    assert suppressed == []  # our template's fault, not the recipient's


def test_a_body_past_a_render_limit_fails_alone_with_its_template_and_line(
    engine: sa.Engine, tmp_path: Path
) -> None:
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    (templates / "stuck.html").write_text(  # would loop 10**10 times
        "<p>\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    )
    (templates / "huge.html").write_text("<p>{{ customer.first_name }}</p>\n{{ 9**(9**9) }}")
    store(engine, [deferred(0, html="stuck.html"), deferred(1), deferred(2, html="huge.html")])
    fake = FakeProvider()
    Deliverer(engine, fake, ESP, FixedClock(NOW), renderer=Renderer(templates)).drain()
    assert [m.send_key for m in fake.sent] == [deferred(1).send_key]
    with engine.connect() as connection:
        errors = dict(
            connection.execute(
                sa.select(outbox_table.c.send_key, outbox_table.c.last_error).where(
                    outbox_table.c.state == "failed"
                )
            ).all()
        )
    assert "stuck.html: line 2: more than 100,000 loop iterations" in errors[deferred(0).send_key]
    assert (
        "huge.html: line 2: ** would make a number of more than 4,096 bits"
        in errors[deferred(2).send_key]
    )


def test_a_deliverer_told_to_stop_gives_back_what_it_has_not_rendered(
    engine: sa.Engine,
) -> None:
    store(engine, [deferred(n) for n in range(3)])
    answers = iter([False, True])  # the drain starts, then the stop comes during the renders
    fake = FakeProvider()
    Deliverer(
        engine,
        fake,
        ESP,
        FixedClock(NOW),
        renderer=Renderer(TEMPLATES),
        stopping=lambda: next(answers, True),
    ).drain()
    assert [m.send_key for m in fake.sent] == [deferred(0).send_key]
    assert states(engine) == Counter({"sent": 1, "queued": 2})


def test_deferred_bodies_without_templates_stop_and_give_the_claims_back(
    engine: sa.Engine,
) -> None:
    store(engine, [deferred(0)])
    with pytest.raises(DeliveryError, match="templates"):
        Deliverer(engine, FakeProvider(), ESP, FixedClock(NOW)).drain()
    assert states(engine) == Counter({"queued": 1})


def test_delivery_processes_share_a_run_without_duplicates(engine: sa.Engine) -> None:
    store(engine, [deferred(n) for n in range(40)])
    fake = FakeEsp(token="t")
    with running(create_fake(fake)) as url:
        esp = EspSettings(base_url=url, batch_size=3, rate_limit_per_s=1000)
        settings = Settings(esp=esp, esp_token=SecretStr("t"), signing_key=SecretStr("k" * 32))
        # the processes render with the caller's templates, not with the files as they are now
        frozen = {
            **snapshot(TEMPLATES),
            "winback.html": '{% extends "base.html" %}'
            "{% block content %}FROZEN {{ offers[0].title }}{% endblock %}",
        }
        report = drain_in_processes(
            engine,
            settings,
            Renderer(TEMPLATES, frozen),
            "winback",
            2,
            0.0,
            producing=lambda: False,
        )
    assert report.sent == 40 and fake.stats() == {
        "received": 40,
        "unique_send_keys": 40,
        "duplicates": 0,
        "without_send_key": 0,
    }
    assert all("FROZEN REGENCY CAKESTAND" in m["HtmlBody"] for m in fake.messages)
    with engine.connect() as connection:
        workers = set(connection.execute(sa.select(outbox_table.c.claimed_by)).scalars())
    assert states(engine) == Counter({"sent": 40})
    assert all(str(os.getpid()) != w.split(":")[1] for w in workers)  # the children sent


MAIN = """import sys
from pathlib import Path

with open(sys.argv[1], "a") as marker:  # every run of this module, as main or not
    marker.write(__name__ + "\\n")
if __name__ == "__main__":
    from recocamp.campaigns.render import Renderer
    from recocamp.delivery.processes import drain_in_processes
    from recocamp.settings import EspSettings, Settings
    from recocamp.store.engine import make_engine

    settings = Settings(esp=EspSettings(provider="fake"))
    engine = make_engine(sys.argv[2])
    report = drain_in_processes(
        engine, settings, Renderer(Path(sys.argv[3])), None, 2, 0.0, lambda: False
    )
    print(report.sent)
"""


def test_delivering_processes_do_not_run_the_callers_main_module(
    tmp_path: Path, engine: sa.Engine
) -> None:
    """The ``recocamp`` console script is a main module that imports the whole CLI (~3 s of
    CPU): a delivering process must not run it again, as ``multiprocessing``'s spawn does."""
    fill(engine, 6)
    script, marker = tmp_path / "main.py", tmp_path / "imports.txt"
    script.write_text(MAIN)
    url = engine.url.render_as_string(hide_password=False)
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, str(script), str(marker), url, str(TEMPLATES)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": root},
        check=True,
    )
    assert done.stdout.split() == ["6"]
    assert marker.read_text().split() == ["__main__"]  # ran once: by the caller
    assert states(engine) == Counter({"sent": 6})


def test_a_delivering_processs_error_is_raised_in_the_caller(tmp_path: Path) -> None:
    broken = make_engine(f"sqlite:///{tmp_path / 'no such folder' / 'shop.db'}")
    settings = Settings(esp=EspSettings(provider="fake"))
    with pytest.raises(sa.exc.OperationalError, match="unable to open database"):
        drain_in_processes(broken, settings, Renderer(TEMPLATES), None, 2, 0.0, lambda: False)


def test_a_stop_ends_the_delivering_processes_without_leaving_claims(
    engine: sa.Engine,
) -> None:
    """Told to stop while the run is still being produced (it would otherwise wait for more
    e-mails), each process finishes the batch in flight, records it, and ends."""
    fill(engine, 400)  # at 100 a second in all: four seconds, if the stop did nothing
    settings = Settings(esp=EspSettings(provider="fake", batch_size=3, rate_limit_per_s=100))
    delivered: list[int] = []
    report = drain_in_processes(
        engine,
        settings,
        Renderer(TEMPLATES),
        None,
        2,
        0.0,
        producing=lambda: True,  # without the stop, the processes would wait for more
        on_progress=delivered.append,
        stopping=lambda: bool(delivered),  # once the first batch is reported
    )
    left = states(engine)
    assert delivered and report.sent >= 3  # it was running when told
    assert set(left) == {"sent", "queued"} and left["sent"] == report.sent  # no claim left


def test_a_delivering_processs_error_reaches_the_caller_whole(engine: sa.Engine) -> None:
    """An error whose constructor takes more than a message (a ConfigError lists problems)
    crosses the process boundary as itself: type, problems and words."""
    fill(engine, 3)
    settings = Settings(esp=EspSettings(provider="postmark"))  # and no token
    with pytest.raises(ConfigError) as raised:
        drain_in_processes(engine, settings, Renderer(TEMPLATES), None, 2, 0.0, lambda: False)
    assert [p.key for p in raised.value.problems] == ["esp_token"]
    assert "needs a token" in str(raised.value)
    assert states(engine) == Counter({"queued": 3})


def test_stored_errors_never_hold_the_recipients_address(engine: sa.Engine) -> None:
    """Providers quote the recipient in their messages (Postmark: "Invalid 'To' address:
    'c0@example.test'"); the outbox keeps the message, not the address."""

    class Quoting(FakeProvider):
        def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
            status = {"winback/c0/2026-01-15": SendStatus.REJECTED}
            return [
                SendResult(
                    m.send_key,
                    status.get(m.send_key, SendStatus.RETRY),
                    error=f"postmark 300: Invalid 'To' address: '{m.to}'",
                )
                for m in messages
            ]

    fill(engine, 2)
    deliverer(engine, Quoting(), FixedClock(NOW)).drain(max_wait_s=3600)
    with engine.connect() as connection:
        errors = connection.execute(sa.select(outbox_table.c.last_error)).scalars().all()
    assert sorted(errors) == ["postmark 300: Invalid 'To' address: '<address>'"] * 2


class AcceptsButNeverAnswers(FakeProvider):
    """Takes every request and loses every answer, and has no search (as SendGrid)."""

    def send_batch(self, messages: Sequence[OutgoingEmail]) -> list[SendResult]:
        super().send_batch(messages)
        raise TransientDeliveryError("read timeout", ambiguous=True)

    def lookup(self, send_keys: Sequence[str]) -> dict[str, str] | None:
        return None


def test_resends_that_may_duplicate_are_bounded_by_max_attempts(engine: sa.Engine) -> None:
    """An ambiguous failure the provider cannot be asked about may have been delivered: each
    resend may be a duplicate, so it costs an attempt (a plain outage costs none) and the
    message fails after ``max_attempts`` instead of being resent for ever."""
    fill(engine, 1)
    fake = AcceptsButNeverAnswers()
    report = deliverer(engine, fake, FixedClock(NOW)).drain(max_wait_s=24 * 3600)
    assert len(fake.sent) == ESP.max_attempts and report.sent == 0
    assert states(engine) == Counter({"failed": 1})
