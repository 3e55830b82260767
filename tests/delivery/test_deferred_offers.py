"""An e-mail deferred to the end of the customer's quiet hours (or put back for a retry)
goes out hours after its offers were chosen: what the customer bought meanwhile is no
longer offered, on a real store, through the real run and deliverer."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import orjson
import sqlalchemy as sa

from recocamp.campaigns.files import Campaign
from recocamp.campaigns.render import Renderer
from recocamp.campaigns.run import plan_and_enqueue
from recocamp.clock import FixedClock
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp.fake import FakeProvider
from recocamp.domain import ConsentBasis, Customer, Item, Purchase
from recocamp.errors import TransientDeliveryError
from recocamp.settings import EspSettings, Settings
from recocamp.store.outbox import load_body, pause, resume
from recocamp.store.queries import insert_purchases, upsert_customers, upsert_items
from recocamp.store.schema import outbox
from tests.conftest import NOW, ROOT

TEMPLATES = ROOT / "templates"
# 12:00 UTC is within these quiet hours in London: the run defers its e-mails to 16:00
QUIET = Settings(
    signing_key="f" * 32, caps={"quiet_hours_start": "11:00", "quiet_hours_end": "16:00"}
)
ESP = EspSettings(retry_base_s=1.0, retry_max_s=60.0, max_attempts=4)
ITEMS = [
    Item("tea", "Green Tea", "kitchen", 9.5),
    Item("mug", "Blue Mug", "kitchen", 7.0),
    Item("pot", "Clay Teapot", "kitchen", 30.0),
]
DISCOVER = Campaign(
    name="discover",
    legal_basis=["double_opt_in"],
    holdout_percent=0,
    schedule={"cron": "0 12 * * *"},
    audience={"lapsed_days": [0, 1000]},
    offer={"mode": "discover", "items": 2},
    template={"subject": {"en": "Hi"}, "html": "cross_sell.html", "text": "cross_sell.txt"},
)


def shop(engine: sa.Engine) -> None:
    """Kim bought tea 20 days ago; others made the mug and the teapot popular."""
    people = [
        Customer(
            name,
            f"{name}@example.test",
            "Kim",
            "en",
            "Europe/London",
            consent_basis=ConsentBasis.DOUBLE_OPT_IN,
            consent_at=NOW - timedelta(days=400),
        )
        for name in ("kim", "lee", "max")
    ]
    lines = [
        Purchase("o1", 1, "kim", "tea", 1, 9.5, NOW - timedelta(days=20)),
        Purchase("o2", 1, "lee", "mug", 1, 7.0, NOW - timedelta(days=5)),
        Purchase("o2", 2, "lee", "pot", 1, 30.0, NOW - timedelta(days=5)),
        Purchase("o3", 1, "max", "mug", 1, 7.0, NOW - timedelta(days=4)),
        Purchase("o3", 2, "max", "pot", 1, 30.0, NOW - timedelta(days=4)),
    ]
    with engine.begin() as connection:
        upsert_customers(connection, people, NOW)
        upsert_items(connection, ITEMS, NOW)
        insert_purchases(connection, lines, None)


def buy(engine: sa.Engine, order: str, items: list[str], hours: float) -> None:
    """Kim orders ``items`` ``hours`` after the run (before the quiet hours end)."""
    at = NOW + timedelta(hours=hours)
    lines = [Purchase(order, n, "kim", i, 1, 7.0, at) for n, i in enumerate(items, 1)]
    with engine.begin() as connection:
        insert_purchases(connection, lines, None)


def deliver_after_quiet_hours(engine: sa.Engine) -> FakeProvider:
    fake = FakeProvider()
    clock = FixedClock(NOW + timedelta(hours=4))
    Deliverer(engine, fake, ESP, clock, renderer=Renderer(TEMPLATES)).drain()
    return fake


def kims_mail_state(engine: sa.Engine) -> tuple[str, str | None]:
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(outbox.c.state, outbox.c.last_error).where(outbox.c.customer_id == "kim")
        ).one()
    return str(row.state), row.last_error


def test_an_item_bought_while_the_mail_waited_is_not_offered(engine: sa.Engine) -> None:
    shop(engine)
    report = plan_and_enqueue(engine, QUIET, DISCOVER, TEMPLATES, NOW)
    assert report.counts == {"quiet_hours_deferred": 3}
    buy(engine, "o4", ["mug"], hours=2)  # in Kim's quiet hours, after the run chose the mug
    fake = deliver_after_quiet_hours(engine)
    [kims] = [m for m in fake.sent if m.to == "kim@example.test"]
    assert "Clay Teapot" in kims.html and "Clay Teapot" in kims.text
    assert "Blue Mug" not in kims.html and "Blue Mug" not in kims.text
    assert len(fake.sent) == 3  # the others' mails go as they were chosen


def test_a_mail_whose_offers_were_all_bought_meanwhile_is_cancelled(engine: sa.Engine) -> None:
    shop(engine)
    plan_and_enqueue(engine, QUIET, DISCOVER, TEMPLATES, NOW)
    buy(engine, "o4", ["mug", "pot"], hours=2)
    fake = deliver_after_quiet_hours(engine)
    assert [m.to for m in fake.sent if m.to == "kim@example.test"] == []
    state, error = kims_mail_state(engine)
    assert state == "cancelled" and error is not None and "bought" in error
    with engine.connect() as connection:
        states = Counter(connection.execute(sa.select(outbox.c.state)).scalars())
    assert states["cancelled"] == 1


def test_a_retried_mail_leaves_out_what_was_bought_before_its_retry(engine: sa.Engine) -> None:
    """Not only quiet hours: a mail the provider refused for now (a 429) goes out at its
    retry; an item bought in between is not offered in it."""
    shop(engine)
    awake = Settings(signing_key="f" * 32)  # 12:00 in London: no quiet hours, sent at once
    plan_and_enqueue(engine, awake, DISCOVER, TEMPLATES, NOW)
    fake = FakeProvider()
    fake.fail_requests.append(TransientDeliveryError("HTTP 429", retry_after=600.0))
    Deliverer(engine, fake, ESP, FixedClock(NOW), renderer=Renderer(TEMPLATES)).drain()
    assert fake.sent == []
    buy(engine, "o4", ["mug"], hours=0.05)
    later = FixedClock(NOW + timedelta(hours=1))
    Deliverer(engine, fake, ESP, later, renderer=Renderer(TEMPLATES)).drain()
    [kims] = [m for m in fake.sent if m.to == "kim@example.test"]
    assert "Clay Teapot" in kims.html and "Blue Mug" not in kims.html


BACK_IN_STOCK = DISCOVER.model_copy(
    update={
        "template": DISCOVER.template.model_copy(
            update={"subject": {"en": "{{ offers[0].title }} is back in stock"}}
        )
    }
)


def kims_first_offer(engine: sa.Engine) -> tuple[str, str]:
    """The item id and name of the first offer of Kim's queued e-mail, as the run chose it."""
    with engine.connect() as connection:
        body = connection.execute(
            sa.select(outbox.c.body).where(outbox.c.customer_id == "kim")
        ).scalar_one()
    first = load_body(body)["template"]["context"]["offers"][0]
    return str(first["item_id"]), str(first["title"])


def test_a_subject_naming_an_item_bought_while_the_mail_waited_names_another(
    engine: sa.Engine,
) -> None:
    """A subject that reads the offers is rendered from the offers that go out: Kim bought
    the item it named during her quiet hours, her body no longer offers it, and her subject
    named it all the same ("Blue Mug is back in stock", the morning after she bought it)."""
    shop(engine)
    plan_and_enqueue(engine, QUIET, BACK_IN_STOCK, TEMPLATES, NOW)
    item, name = kims_first_offer(engine)
    buy(engine, "o4", [item], hours=2)
    fake = deliver_after_quiet_hours(engine)
    [kims] = [m for m in fake.sent if m.to == "kim@example.test"]
    assert name not in kims.html
    assert name not in kims.subject
    assert kims.subject.endswith(" is back in stock")
    assert kims.subject.removesuffix(" is back in stock") in kims.html
    with engine.connect() as connection:
        stored = connection.execute(
            sa.select(outbox.c.subject).where(outbox.c.customer_id == "kim")
        ).scalar_one()
    assert stored == kims.subject  # the outbox keeps the subject that was sent


def test_a_subject_that_fails_on_the_offers_left_fails_that_mail_alone(engine: sa.Engine) -> None:
    """Kim's subject divides by the offers but one: it renders when the run decides (two
    offers) and not once she bought one of them. Her e-mail fails with the reason recorded,
    the others go out, and the deliverer goes on."""
    line = "{% if customer.id == 'kim' %}{{ 2 // (offers | length - 1) }}{% else %}Hi{% endif %}"
    second = DISCOVER.model_copy(
        update={"template": DISCOVER.template.model_copy(update={"subject": {"en": line}})}
    )
    shop(engine)
    report = plan_and_enqueue(engine, QUIET, second, TEMPLATES, NOW)
    assert report.counts == {"quiet_hours_deferred": 3}
    item, _ = kims_first_offer(engine)
    buy(engine, "o4", [item], hours=2)
    fake = deliver_after_quiet_hours(engine)
    assert sorted(m.to for m in fake.sent) == ["lee@example.test", "max@example.test"]
    state, error = kims_mail_state(engine)
    assert state == "failed"
    assert error is not None and error.startswith("subject: ") and "ZeroDivisionError" in error


def test_a_mail_queued_with_its_subject_rendered_goes_out_with_that_subject(
    engine: sa.Engine,
) -> None:
    """An e-mail queued by a version that rendered the subject when it queued (its stored
    template has no subject line) goes out with the subject it was queued with."""
    shop(engine)
    plan_and_enqueue(engine, QUIET, BACK_IN_STOCK, TEMPLATES, NOW)
    with engine.begin() as connection:
        for row in connection.execute(sa.select(outbox.c.id, outbox.c.body)).all():
            document = load_body(row.body)
            del document["template"]["subject"]
            connection.execute(
                sa.update(outbox)
                .where(outbox.c.id == row.id)
                .values(subject="Queued before", body=orjson.dumps(document))
            )
    item, _ = kims_first_offer(engine)
    buy(engine, "o4", [item], hours=2)
    fake = deliver_after_quiet_hours(engine)
    assert [m.subject for m in fake.sent] == ["Queued before"] * 3


def test_a_mail_of_a_paused_campaign_leaves_out_what_was_bought_before_it_resumed(
    engine: sa.Engine,
) -> None:
    """Not only quiet hours and retries: a campaign paused (by hand, or by its error rate)
    keeps its mail queued until it is resumed, a day later; an item Kim bought meanwhile is
    neither offered in her e-mail nor named in its subject."""
    shop(engine)
    awake = Settings(signing_key="f" * 32)  # 12:00 in London: no quiet hours, due at once
    with engine.begin() as connection:
        pause(connection, "discover", "by hand", NOW)
    plan_and_enqueue(engine, awake, BACK_IN_STOCK, TEMPLATES, NOW)
    item, name = kims_first_offer(engine)
    buy(engine, "o4", [item], hours=5)
    with engine.begin() as connection:
        resume(connection, "discover")
    fake = FakeProvider()
    later = FixedClock(NOW + timedelta(days=1))
    Deliverer(engine, fake, ESP, later, renderer=Renderer(TEMPLATES)).drain()
    [kims] = [m for m in fake.sent if m.to == "kim@example.test"]
    assert name not in kims.subject and name not in kims.html


REPLENISH = DISCOVER.model_copy(
    update={"offer": DISCOVER.offer.model_copy(update={"mode": "replenish", "items": 1})}
)


def test_an_item_returned_in_full_while_the_mail_waited_is_not_offered(engine: sa.Engine) -> None:
    """Kim's replenishment mail offers the tea she bought; she sends the tea back while the
    mail waits for her quiet hours to end. An item returned in full is offered in no mode,
    not by the e-mails either (README, Returned items): the mail is cancelled as one whose
    offers all went, instead of asking her to restock what she returned."""
    shop(engine)
    plan_and_enqueue(engine, QUIET, REPLENISH, TEMPLATES, NOW)
    assert kims_first_offer(engine)[0] == "tea"
    back = Purchase("c5", 1, "kim", "tea", -1, 9.5, NOW + timedelta(hours=2), is_return=True)
    with engine.begin() as connection:
        insert_purchases(connection, [back], None)
    fake = deliver_after_quiet_hours(engine)
    assert [m.to for m in fake.sent if m.to == "kim@example.test"] == []
    assert kims_mail_state(engine)[0] == "cancelled"
