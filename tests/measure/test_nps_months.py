"""The NPS per month says which months it saw only part of: the report reads the answers of
its last ``max(history_days, report_days)`` days, which rarely begin on a month's first day,
and the month of ``as_of`` is not over. Real store, answers recorded by the store's function."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from recocamp.measure import jobs, report
from recocamp.settings import MeasureSettings, Settings, ShopSettings
from recocamp.store import measure as measure_store

AS_OF = datetime(2026, 3, 10, tzinfo=UTC)  # answers read from 20 January (49 days)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    base = Settings()
    return base.model_copy(
        update={
            "shop": ShopSettings(time_zone="UTC", currency="GBP"),
            "recommender": base.recommender.model_copy(update={"artifacts_dir": tmp_path}),
            "signing_key": SecretStr("k" * 32),
            "measure": MeasureSettings(history_days=49, report_days=30, nps_min_responses=1),
        }
    )


def test_the_first_and_the_current_month_are_marked_partial(
    engine: sa.Engine, settings: Settings
) -> None:
    """January's NPS read its last 12 days only, March's its first 9: drawn beside February's
    whole month with nothing saying so, a month of few answers read as a swing of the score."""
    answered = [(datetime(2026, 1, 25, tzinfo=UTC), 2), (datetime(2026, 1, 28, tzinfo=UTC), 10)]
    answered += [(datetime(2026, 2, day, tzinfo=UTC), 9) for day in (3, 10, 17)]
    answered += [(datetime(2026, 3, 5, tzinfo=UTC), 3), (datetime(2026, 3, 6, tzinfo=UTC), 10)]
    with engine.begin() as connection:
        for n, (at, score) in enumerate(answered):
            measure_store.record_feedback(connection, "nps/x", "nps", f"c{n}", score, None, at)
    data = jobs.gather(engine, settings, AS_OF, AS_OF)
    monthly = report.summary(data)["nps"]["monthly"]
    assert [(m["month"], m["responses"], m["partial"]) for m in monthly] == [
        ("2026-01-01", 2, True),
        ("2026-02-01", 3, False),
        ("2026-03-01", 2, True),
    ]
    assert (monthly[0]["from"], monthly[0]["before"]) == ("2026-01-20", None)
    assert (monthly[1]["from"], monthly[1]["before"]) == (None, None)
    assert (monthly[2]["from"], monthly[2]["before"]) == (None, "2026-03-10")
    html = report.render_html(data)
    assert "January 2026 holds the answers from 20 January only" in html
    assert "March 2026 holds the answers before 10 March only" in html
