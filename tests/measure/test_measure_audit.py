"""Measurement defects found by an analyst's audit of what the report says."""

from __future__ import annotations

from datetime import UTC, datetime

from recocamp.campaigns.caps import in_holdout
from recocamp.measure import attribution as measure
from recocamp.measure.attribution import Result, Thresholds, Touch

T0 = datetime(2011, 10, 4, 10, tzinfo=UTC)


def test_an_empty_holdout_of_a_campaign_that_holds_out_is_not_called_holdout_percent_0() -> None:
    """A campaign with ``holdout_percent = 10`` draws each customer into its holdout with
    chance 1/10 (a stable hash): of its first few mailed customers often none is held out
    (here, by the real draw, none of eight). The report said "this campaign holds nobody
    out (holdout_percent = 0)": a setting the campaign does not have, so the marketer looks
    for a misconfiguration instead of waiting for customers."""
    customers = [f"c{k}" for k in range(8)]
    assert not any(in_holdout("welcome", c, 10.0) for c in customers)
    mailed = [Result(Touch("welcome", c, T0, False, None, f"k{c}"), 1, 20.0) for c in customers]
    (uplift,) = measure.uplifts(mailed, Thresholds(2, 1))
    assert not uplift.enough and uplift.note.startswith("no holdout: ")
    assert "holdout_percent = 0" not in uplift.note
    assert "holdout_percent" in uplift.note and "too few" in uplift.note
