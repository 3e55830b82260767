"""``forecast-evaluate`` with a cutoff before anyone's first purchase day: refused with exit 2
(README, Forecasts), also where the lines before it are no purchase day of anybody the
forecast counts (a postage-only order, an objector's orders)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from recocamp.cli import app, common
from recocamp.domain import Customer, Item, Purchase
from recocamp.store import queries
from recocamp.store.engine import make_engine

NOW = datetime(2012, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("before", ["postage only", "objector"])
def test_a_cutoff_before_every_counted_purchase_day_is_refused_with_exit_2(
    cli_store: CliRunner, monkeypatch: pytest.MonkeyPatch, before: str
) -> None:
    """'ann' bought postage alone (a service item) in January, or 'obi', who objected to
    profiling, bought a mug then; everybody else first bought in March. A cutoff in February
    has nobody to evaluate: exit 2 with the line that says so, as for a cutoff before the
    first line (it was exit 1, a model error, past the first line's check)."""
    monkeypatch.setattr(common.clock, "now", lambda: NOW)
    engine = make_engine("sqlite:///shop.db")
    first = (
        Purchase("early", 1, "ann", "POST", 1, 5.0, datetime(2011, 1, 10, 12, tzinfo=UTC))
        if before == "postage only"
        else Purchase("early", 1, "obi", "mug", 1, 5.0, datetime(2011, 1, 10, 12, tzinfo=UTC))
    )
    later = [
        Purchase(f"o{n}", 1, f"c{n % 60}", "mug", 1, 5.0, datetime(2011, 3 + n % 6, 5, tzinfo=UTC))
        for n in range(240)
    ]
    with engine.begin() as connection:
        catalogue = [
            Item("mug", "Mug", "home", 5.0),
            Item("POST", "Postage", "other", 5.0, is_service=True),
        ]
        queries.upsert_items(connection, catalogue, NOW)
        people = [Customer("ann", None), Customer("obi", None, objected_to_profiling=True)]
        queries.upsert_customers(connection, people, NOW)
        queries.insert_purchases(connection, [first, *later], None)
    engine.dispose()
    result = cli_store.invoke(app, ["forecast-evaluate", "--cutoff", "2011-02-01"])
    assert result.exit_code == 2, result.output
    assert "no purchase before the cutoff 2011-02-01" in result.output
    assert "nothing to evaluate" in result.output
