"""A tiny shop with a known answer, shared by the recommender tests.

Two clusters: customers a0..a5 buy p1, p2, p3 (p1 in several orders); b0..b5 buy q1, q2,
q3. Customer ``a_new`` bought only p1 and p2, so every sensible model must offer p3 first in
``discover`` mode, never a q item; in ``replenish`` mode p1 (more orders) comes before p2.
q1 is the most popular item of the recent window (two extra buyers).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from recocamp.recommender.matrix import Lines

CUTOFF = datetime(2024, 6, 1, tzinfo=UTC)


def toy_lines(extra: tuple[tuple[str, str, str, datetime], ...] = ()) -> Lines:
    """The toy shop, plus ``extra`` lines ``(customer, item, order, time)``."""
    rows: list[tuple[str, str, str, datetime]] = []
    day = CUTOFF - timedelta(days=60)
    for group, items in (("a", ("p1", "p2", "p3")), ("b", ("q1", "q2", "q3"))):
        for n in range(6):
            customer = f"{group}{n}"
            for order in range(2):
                basket = items if order == 0 else items[:1]
                for item in basket:
                    rows.append(
                        (customer, item, f"{customer}-o{order}", day + timedelta(days=n + order))
                    )
    rows += [("a_new", "p1", "x-o1", day), ("a_new", "p1", "x-o2", day + timedelta(days=3))]
    rows += [("a_new", "p2", "x-o2", day + timedelta(days=3))]
    rows += [("solo", "q1", "s-o1", day + timedelta(days=5)), ("solo2", "q1", "s-o2", day)]
    customers, items_bought, orders, at = zip(*(rows + list(extra)), strict=True)
    return Lines.from_ids(
        np.array(customers),
        np.array(items_bought),
        np.array(orders),
        np.array([t.timestamp() for t in at]),
    )


@dataclass(frozen=True)
class Order:
    """One order as the serving rules read it (``recommender.serving.Purchases``)."""

    at: datetime
    items: frozenset[str]


@dataclass(frozen=True)
class History:
    """A customer's orders, oldest first, as the serving rules read them."""

    orders: tuple[Order, ...]
    returned: frozenset[str] = frozenset()  # items returned in full: in no order

    @property
    def count(self) -> int:
        return len(self.orders)

    @property
    def last_at(self) -> datetime | None:
        return self.orders[-1].at if self.orders else None
