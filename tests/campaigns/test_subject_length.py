"""A subject the renderer lets through fits the outbox's column, on either backend."""

from __future__ import annotations

import sqlalchemy as sa

from recocamp.campaigns.render import SUBJECT_MAX
from recocamp.campaigns.run import plan_and_enqueue
from recocamp.store.schema import outbox
from tests.conftest import NOW
from tests.delivery.test_deferred_offers import DISCOVER, QUIET, TEMPLATES, shop


def test_a_subject_longer_than_the_outbox_holds_is_that_customers_render_error(
    engine: sa.Engine,
) -> None:
    """The renderer took subjects up to 2,000 characters and the outbox's ``subject`` column
    holds 1,000 (``VARCHAR(1000)``): on PostgreSQL the run's insert of a chunk holding a
    1,500-character subject failed, and with it the run of every customer of the chunk; on
    SQLite the row held more than its column declares. Such a subject is the customer's
    render error (``not_rendered``), as one past the provider's limit was."""
    long = DISCOVER.model_copy(
        update={
            "template": DISCOVER.template.model_copy(
                update={"subject": {"en": "{{ offers[0].title }} " + "!" * 1500}}
            )
        }
    )
    shop(engine)
    report = plan_and_enqueue(engine, QUIET, long, TEMPLATES, NOW)
    assert report.counts == {"not_rendered": 3}
    [column] = [c for c in sa.inspect(engine).get_columns("outbox") if c["name"] == "subject"]
    assert isinstance(column["type"], sa.String) and isinstance(outbox.c.subject.type, sa.String)
    assert column["type"].length == SUBJECT_MAX == outbox.c.subject.type.length
    with engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(outbox)).scalar() == 0
