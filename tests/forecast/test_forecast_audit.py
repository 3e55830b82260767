"""Forecast defects found by an analyst's audit of the printed figures (JSON of ``recocamp
forecast`` and the shop API), each checked against the documented definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recocamp import forecast as f
from recocamp.forecast.outlook import risk_tier


@pytest.mark.parametrize(
    ("p_active", "tier"),
    [
        (1 / 3, "medium"),  # at the cut-off: medium, printed 0.3333 read as high
        (0.333345, "medium"),
        (0.66665, "medium"),  # below 2/3: medium, printed 0.6667 read as low
        (0.666666, "medium"),
        (0.33333, "high"),
        (2 / 3, "low"),
    ],
)
def test_the_printed_chance_of_buying_again_lies_in_its_churn_tier(
    p_active: float, tier: str
) -> None:
    """churn_risk is ``high`` below p_active 1/3 and ``medium`` below 2/3 (README), and the
    JSON prints p_active to four places: a customer at p_active 1/3 or 0.66665 had the tier
    of the exact value (medium) and a printed value (0.3333, 0.6667) that by the documented
    cut-offs is high or low. The printed value stays within four places and its tier."""
    expected = -math.log1p(-p_active)
    row = f.CustomerForecast("c1", expected, p_active, risk_tier(p_active), 1.0, 2.0, None, None)
    assert row.churn_risk == tier
    (document,) = f.documents([row])
    printed = document["p_active"]
    assert isinstance(printed, float)
    assert risk_tier(printed) == document["churn_risk"] == tier
    assert abs(printed - p_active) <= 1e-4
    assert round(printed, 4) == printed
    assert document["next_purchase_by"] is None


def test_a_printed_overdue_ratio_above_1_goes_with_a_due_day_before_as_of() -> None:
    """README: ``overdue_ratio`` > 1 exactly when ``next_purchase_by`` is before ``as_of``.
    A customer who buys every five and a half years (days 0, 1999, 3999: a mean gap of
    1999.5 days) was due on day 5998; at as_of 5999 the ratio is 2000 / 1999.5 = 1.00025,
    overdue, and JSON printed it to three places as 1.0, which says not overdue."""
    purchases = f.PurchaseDays.from_lines(
        np.array(["a", "a", "a"], dtype=object), np.array([0, 1999, 3999]), np.ones(3)
    )
    (row,) = f.forecast(purchases, 5999, 90, "naive")
    assert row.next_purchase_by == f.day_of(5998) < f.day_of(5999)
    assert row.overdue_ratio is not None and row.overdue_ratio > 1.0
    (document,) = f.documents([row])
    printed = document["overdue_ratio"]
    assert isinstance(printed, float) and printed > 1.0
    assert abs(printed - row.overdue_ratio) <= 1e-3 and round(printed, 3) == printed
