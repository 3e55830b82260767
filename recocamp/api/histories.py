"""A customer's order history as the offer cache keeps it: read whole once, then extended by
the lines committed since, and read whole again whenever the extension is not shown exact.

A purchase event of a big buyer used to re-read thousands of lines (and rebuild hundreds of
orders) to add one. :func:`read` given what was kept reads only the lines with a higher id,
dated from a day before the newest kept order on (a range of the customer and time index,
not a scan of the customer's every entry), and the count and id sum of all the customer's
lines in the same statement, from the one row of ``purchase_totals`` that triggers keep
(``store.serving.customer_lines``; migration 0016). The extension is taken only when

- those totals equal the kept ones plus the new lines' (no line was removed or moved away,
  as an erasure's unlinking does, and none came in below the kept ids, as a late commit
  does on PostgreSQL, and none above them was dated before the day the new lines are
  sought from);
- every new line belongs to a new order (an order's lines are written in one transaction);
- no counted line lay at or after the ``now`` of either read (such a line is left out of the
  history until its time comes, and the extension would never see it);

otherwise the history is read whole. The lines are folded into orders by time, then id, in
both cases, so the two give the same history, tie for tie.

The repurchase intervals of the history's items (replenish queries) are extended likewise,
by the new orders' items (``segments.Repurchases``).

What the history does not hold (objection, erasure, the cached top-N row, the live model and
the catalogue) the offer cache reads or checks anew for every basis.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from recocamp.campaigns.audience import history_of
from recocamp.campaigns.segments import History, Order, Repurchases
from recocamp.domain import CustomerOrder, Item, returned_in_full
from recocamp.store import serving as store
from recocamp.store.engine import Connection

Line = tuple[int, str, str, float, float, int, float]  # store.serving.CustomerLines.new
SLACK = timedelta(days=1)  # new lines are sought from this long before the newest kept order


@dataclass(frozen=True, slots=True)
class Kept:
    """A history and what identifies the lines it was read from."""

    history: History
    orders: frozenset[str]  # ids of the orders in the history
    lines: int  # every line of the customer when read (returns and adjustments too)
    id_sum: int
    last_id: int  # the highest id of those lines (0: none)
    before: float  # the read's ``now`` (epoch s): lines at or after it are left out
    complete: bool  # no counted line was left out for lying at or after ``before``
    # each item's net quantity, bought less returned (``domain.returned_in_full``): an
    # extension is exact while the items returned in full stay the same
    net: Mapping[str, float]
    # the history's repurchase intervals once a replenish query needed them (one slot),
    # extended with the history rather than computed again: see :meth:`repurchases`
    derived: list[Repurchases] = field(default_factory=list, compare=False)

    def repurchases(self) -> Repurchases:
        """The history's repurchase intervals (``segments.Repurchases``), computed on first
        use and kept (two threads may both compute them: the same)."""
        if not self.derived:
            self.derived.append(Repurchases.of(self.history))
        return self.derived[0]


def read(
    connection: Connection,
    customer_id: str,
    now: datetime,
    catalogue: Mapping[str, Item],
    kept: Kept | None = None,
) -> tuple[Kept, bool]:
    """The customer's history now, and whether it extended ``kept`` (read with the same
    ``catalogue``) rather than reading it whole."""
    before = now.timestamp()
    if kept is not None and kept.complete and before >= kept.before:
        found = store.customer_lines(connection, customer_id, kept.last_id, _since(kept))
        extended = _extended(kept, found, customer_id, before, catalogue)
        if extended is not None:
            return extended, True
    found = store.customer_lines(connection, customer_id, 0)
    orders, net, complete = _orders(customer_id, found.new, before)
    return (
        Kept(
            history_of(orders, catalogue, returned_in_full(net)),
            frozenset(order.order_id for order in orders),
            found.lines,
            found.id_sum,
            max((line[0] for line in found.new), default=0),
            before,
            complete,
            net,
        ),
        False,
    )


def _since(kept: Kept) -> datetime | None:
    """From when new lines are sought: a day before the newest kept order (None: from the
    start). New lines come after it as a rule; one dated earlier is missed, the totals
    disagree, and the history is read whole (so the bound costs exactness nothing)."""
    orders = kept.history.orders
    return orders[-1].at - SLACK if orders else None


def _extended(
    kept: Kept,
    found: store.CustomerLines,
    customer_id: str,
    before: float,
    catalogue: Mapping[str, Item],
) -> Kept | None:
    """``kept`` plus the new lines, or None when that would not be the whole history."""
    new = found.new
    if found.lines != kept.lines + len(new) or found.id_sum != kept.id_sum + sum(
        line[0] for line in new
    ):
        return None
    orders, added_net, complete = _orders(customer_id, new, before)
    if not complete or any(order.order_id in kept.orders for order in orders):
        return None
    if not new:  # the same history (and its derived intervals), read at a later ``before``
        return replace(kept, before=before, complete=True)
    net, gone = dict(kept.net), kept.history.returned
    for item, quantity in added_net.items():
        net[item] = net.get(item, 0.0) + quantity
    touched = {item: net[item] for item in added_net}
    if returned_in_full(touched) != gone.intersection(touched):  # returned in full now, or
        return None  # bought again: the kept orders hold an item they may not, or lack one
    added = history_of(orders, catalogue, gone).orders
    history = History(tuple(sorted((*kept.history.orders, *added), key=_time)), gone)
    return Kept(
        history,
        kept.orders | {order.order_id for order in orders},
        found.lines,
        found.id_sum,
        max(kept.last_id, max(line[0] for line in new)),
        before,
        True,
        net,
        [derived.extended(added) for derived in kept.derived[:1]],
    )


def _time(order: Order) -> datetime:
    return order.at


def _orders(
    customer_id: str, lines: Iterable[Line], before: float
) -> tuple[list[CustomerOrder], dict[str, float], bool]:
    """Counted lines before ``before`` as orders (first seen first; lines by time, then id),
    each item's net quantity over them and the return lines before it (bought less
    returned, ``domain.returned_in_full``, ``views.planning_rows``' rule), and whether no
    purchase or return line was left out for its time (``views.customer_orders``' rules)."""
    first: dict[str, float] = {}
    revenue: dict[str, float] = {}
    items: dict[str, set[str]] = {}
    net: dict[str, float] = {}
    complete = True
    for _, item, order, at, amount, counted, quantity in lines:
        if not counted:
            continue
        if at >= before:
            complete = False
            continue
        net[item] = net.get(item, 0.0) + (quantity if counted > 0 else -abs(quantity))
        if counted < 0:
            continue
        if order in first:
            first[order] = min(first[order], at)
            revenue[order] += amount
            items[order].add(item)
        else:
            first[order], revenue[order], items[order] = at, amount, {item}
    found = [
        CustomerOrder(
            customer_id,
            order,
            datetime.fromtimestamp(round(at, 3), UTC),
            revenue[order],
            frozenset(items[order]),
        )
        for order, at in first.items()
    ]
    return found, net, complete
