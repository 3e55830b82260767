"""An objection to profiling covers every Unicode form of the objector's id (as export and
erasure do: ``domain.id_forms``): lines stored under ``Jose`` + U+0301 (another system's
export, or a version that stored API ids as given) are the objecting ``José``'s, and were
still learnt, forecast and served personally, since only the exact stored id was left out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from recocamp.domain import Customer, Item, Purchase
from recocamp.store import forecasts, measure, profiles, queries, serving, training_lines
from recocamp.store.schema import recommendations

NOW = datetime(2025, 1, 1, tzinfo=UTC)
START = datetime(2024, 3, 1, 8, 30, tzinfo=UTC)
COMPOSED, DECOMPOSED = "Jos\u00e9", "Jose\u0301"


def _shop(engine: sa.Engine) -> None:
    """The composed record objects; ten orders under the decomposed form, ten of ``c1``."""
    stored = [
        Purchase(f"{who}{n}", 1, who, f"i{n % 3}", 1, 2.5, START + timedelta(days=n))
        for who in (DECOMPOSED, "c1")
        for n in range(10)
    ]
    with engine.begin() as connection:
        queries.upsert_items(
            connection, [Item(f"i{n}", f"I{n}", "tea", 2.5) for n in range(3)], NOW
        )
        queries.upsert_customers(
            connection,
            [Customer(COMPOSED, None, objected_to_profiling=True), Customer("c1", None)],
            NOW,
        )
        queries.insert_purchases(connection, stored, None)


def test_lines_under_another_form_of_an_objectors_id_are_neither_learnt_nor_forecast(
    engine: sa.Engine,
) -> None:
    _shop(engine)
    with engine.connect() as connection:
        joined = list(training_lines.training_lines(connection, None, chunk=4))
        rows = list(training_lines.line_rows(connection, None, chunk=100))
        learnt = {c for part in joined + rows for c in part.customer}
        assert learnt == {"c1"}
        assert training_lines.unprofiled_buyers(connection) == 1
        ids, _, _ = forecasts.purchase_lines(connection, NOW)
        assert set(ids.tolist()) == {"c1"}
        flags = serving.profiling_flags(connection, DECOMPOSED)
        assert flags is not None and flags.objected_to_profiling
        assert serving.profiling_flags(connection, "c1") == serving.ProfilingFlags(False, None)
        assert profiles.objected_ids(connection) == sorted({COMPOSED, DECOMPOSED})


def test_an_objection_drops_the_personal_list_stored_under_another_form(
    engine: sa.Engine,
) -> None:
    _shop(engine)
    r = recommendations.c
    with engine.begin() as connection:
        for who in (DECOMPOSED, "c1"):
            connection.execute(
                sa.insert(recommendations).values(customer_id=who, model_version="v1", items=[])
            )
        queries.drop_unprofiled_recommendations(connection)
        left = connection.execute(sa.select(r.customer_id)).scalars().all()
    assert left == ["c1"]


def test_rfm_segments_leave_out_every_form_of_an_objectors_id(engine: sa.Engine) -> None:
    """The segment sizes (``measure.jobs``) count customers of the purchase lines but those
    ``unsegmented``: the objector's lines under the decomposed form were placed in one."""
    _shop(engine)
    with engine.connect() as connection:
        assert measure.unsegmented(connection) == {COMPOSED, DECOMPOSED}
