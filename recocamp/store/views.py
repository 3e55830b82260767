"""What the planner needs from the store, read once per campaign run, as plain rows.

Orders are purchase lines of known customers grouped by order (time, revenue, items);
recommendation lists come from the top-N cache; the cold-start list from the live model, or
straight from recent sales when no model is live yet. Contact history is the outbox (every
e-mail queued, sent or delivered in the last ``history_days``, 35 or more, at the time it went
or will go out) and the holdout decisions of those days, at the instant they were decided: a
held-out customer meets the caps and cooldown as if the e-mail had gone out, so treated and
held-out customers stay comparable run after run (see ``planner``). Suppressions are the
hashed addresses of the suppression list; engagement, each customer's stored engagement
events (reviews) up to the run's instant, counted by kind (loyalty points).
``campaigns.audience`` turns these rows into the planner's views.

A run reads the contact histories of each chunk again, under :func:`lock_contacts`, in the
transaction that writes the chunk (:func:`contacts_of`): the caps hold across runs that
overlap.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import sqlalchemy as sa

from recocamp.domain import (
    CONTACT_HISTORY_DAYS,
    ConsentBasis,
    Contact,
    Customer,
    CustomerOrder,
    CustomerRecord,
    Item,
    PlanningRows,
    returned_in_full,
)
from recocamp.store import queries, registry
from recocamp.store.engine import driver_rows
from recocamp.store.locks import lock_key
from recocamp.store.outbox import LIVE_STATES
from recocamp.store.schema import (
    UtcDateTime,
    customers,
    decisions,
    engagement_events,
    items,
    models,
    outbox,
    purchase_line,
    purchases,
    recommendations,
    suppressions,
)


def planning_rows(
    connection: sa.Connection,
    now: datetime,
    top_n: int,
    *,
    own_run: str | None = None,
    history_days: int = CONTACT_HISTORY_DAYS,
    popularity_days: int,
) -> PlanningRows:
    """Everything the planner needs at ``now``. ``own_run`` (a run key, ``campaign/day``)
    leaves that run's own e-mails out of the contact history: a run resumed after a crash
    decides as it did the first time instead of seeing its own mail as a cap.
    ``history_days``: how far back the contact history reaches (a campaign's cooldown or
    ``not_contacted_days`` may look further back than the default five weeks).
    ``popularity_days``: the cold-start list's window with no model live
    (``recent_popularity_days``, as a trained model's list is counted)."""
    catalogue = _items(connection)
    orders, returned = _orders(connection, now)
    live_rows = sa.select(recommendations).where(registry.LIVE_ROWS)  # see registry.stage
    personal = {row.customer_id: row.items for row in connection.execute(live_rows)}
    contacts = _contacts(connection, now, own_run, history_days=history_days)
    suppressed = frozenset(connection.execute(sa.select(suppressions.c.email_hash)).scalars())
    records = [
        CustomerRecord(
            _customer(row), row.frequency_preference, row.paused_until, row.channel_email
        )
        for row in connection.execute(sa.select(customers).order_by(customers.c.id))
    ]
    popular = _popular(connection, now, top_n, popularity_days)
    engagement = _engagement(connection, now)
    return PlanningRows(
        records, orders, personal, contacts, suppressed, catalogue, popular, engagement, returned
    )


def _engagement(connection: sa.Connection, now: datetime) -> dict[str, dict[str, int]]:
    """Every customer's engagement events that happened at or before ``now``, counted by
    kind (a review posted after the run's instant earns its points in a later run)."""
    e = engagement_events.c
    query = (
        sa.select(e.customer_id, e.kind, sa.func.count())
        .where(e.occurred_at <= now)
        .group_by(e.customer_id, e.kind)
    )
    found: dict[str, dict[str, int]] = defaultdict(dict)
    for customer_id, kind, number in connection.execute(query):
        found[customer_id][kind] = int(number)
    return dict(found)


CONTACTS_LOCK = lock_key("contacts")  # see lock_contacts
IN_BATCH = 5000  # customer ids per IN (SQLite allows 32,766 parameters; a chunk 50,000 ids)


def lock_contacts(connection: sa.Connection) -> None:
    """Make reading contact histories and writing the contacts they allow one exclusive step
    per store, until the transaction ends: two campaign runs at the same time (two worker
    threads, a worker and a CLI ``send``, several workers) would otherwise both read "no
    e-mail today" for a customer and both enqueue one, past the caps of both.

    PostgreSQL: a transaction-level advisory lock, exclusive; it leaves deliverers and every
    other writer alone. SQLite: the database's write lock (``BEGIN IMMEDIATE``), which the
    chunk's inserts would take a moment later anyway. Hold it for one chunk, not a run."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": CONTACTS_LOCK})
    else:
        queries.write_lock(connection)


class Held(NamedTuple):
    """What a run's chunk checks again of a customer the store still holds (``still_held``)."""

    objected: bool  # to profiling, now
    consent_basis: ConsentBasis
    consent_at: datetime | None


def still_held(connection: sa.Connection, customer_ids: Sequence[str]) -> dict[str, Held]:
    """Which of ``customer_ids`` the store still holds, not erased, each with whether they
    object to profiling now and their consent as it is now: a run decides from a snapshot,
    and an erasure (its customer row is gone), an objection or a change of consent may have
    committed since. One look-up by primary key per 5,000 ids, a chunk's checks in one."""
    found: dict[str, Held] = {}
    c = customers.c
    for start in range(0, len(customer_ids), IN_BATCH):
        batch = customer_ids[start : start + IN_BATCH]
        query = sa.select(c.id, c.objected_to_profiling, c.consent_basis, c.consent_at).where(
            c.id.in_(batch), c.erased_at.is_(None)
        )
        for row in connection.execute(query):
            basis = ConsentBasis(row.consent_basis)
            found[row.id] = Held(bool(row.objected_to_profiling), basis, row.consent_at)
    return found


def contacts_of(
    connection: sa.Connection,
    customer_ids: Sequence[str],
    now: datetime,
    own_run: str | None = None,
    history_days: int = CONTACT_HISTORY_DAYS,
) -> dict[str, tuple[Contact, ...]]:
    """The contact histories of ``customer_ids`` as :func:`planning_rows` reads them (those
    with none left out): read again under :func:`lock_contacts` just before a chunk of a run
    is written, since other runs may have contacted its customers after the run's snapshot."""
    found: dict[str, tuple[Contact, ...]] = {}
    for start in range(0, len(customer_ids), IN_BATCH):
        batch = customer_ids[start : start + IN_BATCH]
        found |= _contacts(connection, now, own_run, batch, history_days)
    return found


def _contacts(
    connection: sa.Connection,
    now: datetime,
    own_run: str | None = None,
    customer_ids: Sequence[str] | None = None,
    history_days: int = CONTACT_HISTORY_DAYS,
) -> dict[str, tuple[Contact, ...]]:
    """Every contact of the last five weeks (what the caps and preferences count), and where
    ``history_days`` reaches further back, the latest older one per customer and campaign: a
    cooldown or ``not_contacted_days`` asks only whether there was one, and reading every
    e-mail of 300 days (the birthday campaign's cooldown) would cost a run its memory."""
    recent = now - timedelta(days=CONTACT_HISTORY_DAYS)
    found: dict[str, list[Contact]] = defaultdict(list)
    for row in connection.execute(_mailed(recent, own_run, customer_ids)):
        found[row.customer_id].append(Contact(row.campaign, row.not_before))
    for row in connection.execute(_held_out(now, own_run, recent, customer_ids)):
        found[row.customer_id].append(Contact(row.campaign, row.decided_at))
    if history_days > CONTACT_HISTORY_DAYS:
        oldest = now - timedelta(days=history_days)
        for query in _latest_older(oldest, recent, customer_ids):
            for row in connection.execute(query):
                found[row.customer_id].append(Contact(row.campaign, row.at))
    return {customer: tuple(sorted(c, key=lambda x: x.at)) for customer, c in found.items()}


def _mailed_at() -> sa.ColumnElement[Any]:
    """When an e-mail counts for the caps: the instant it was to go out (its run's, the end
    of quiet hours, its last retry's), as a holdout counts at its decision. Not when the
    provider took it, seconds to hours (a big run's rate limit) later: a weekly run under
    a seven days' cooldown, or a customer's weekly preference, found last week's e-mail
    still inside the seven days, and mailed every other week; a daily one under the 24 h
    cap every other day."""
    return outbox.c.not_before


def _mailed(
    since: datetime, own_run: str | None, customer_ids: Sequence[str] | None
) -> sa.Select[Any]:
    """E-mails queued, sent or delivered from ``since`` on (not the run's own)."""
    query = sa.select(outbox.c.customer_id, outbox.c.campaign, outbox.c.not_before).where(
        outbox.c.state.in_(LIVE_STATES), _mailed_at() >= since
    )
    if customer_ids is not None:
        query = query.where(outbox.c.customer_id.in_(customer_ids))
    if own_run is not None:  # send keys are campaign/customer/day, run keys campaign/day
        campaign, _, day = own_run.rpartition("/")
        query = query.where(
            sa.not_(
                sa.and_(
                    outbox.c.campaign == campaign,
                    outbox.c.send_key.endswith(f"/{day}", autoescape=True),
                )
            )
        )
    return query


def _held_out(
    now: datetime, own_run: str | None, since: datetime, customer_ids: Sequence[str] | None
) -> sa.Select[Any]:
    """Holdout decisions from ``since`` on (not the run's own: a resumed run decides as it
    did the first time)."""
    query = sa.select(decisions.c.customer_id, decisions.c.campaign, decisions.c.decided_at).where(
        decisions.c.holdout.is_(True),
        decisions.c.decided_at >= since,
        decisions.c.decided_at <= now,
    )
    if customer_ids is not None:
        query = query.where(decisions.c.customer_id.in_(customer_ids))
    return query if own_run is None else query.where(decisions.c.run_key != own_run)


def _latest_older(
    oldest: datetime, recent: datetime, customer_ids: Sequence[str] | None
) -> tuple[sa.Select[Any], sa.Select[Any]]:
    """The latest e-mail and holdout decision per customer and campaign in ``[oldest,
    recent)`` (a run's own are all recent: they are today's)."""
    at = _mailed_at()
    mailed = (
        sa.select(
            outbox.c.customer_id,
            outbox.c.campaign,
            sa.type_coerce(sa.func.max(at), UtcDateTime).label("at"),
        )
        .where(outbox.c.state.in_(LIVE_STATES), at >= oldest, at < recent)
        .group_by(outbox.c.customer_id, outbox.c.campaign)
    )
    held = (
        sa.select(
            decisions.c.customer_id,
            decisions.c.campaign,
            sa.type_coerce(sa.func.max(decisions.c.decided_at), UtcDateTime).label("at"),
        )
        .where(
            decisions.c.holdout.is_(True),
            decisions.c.decided_at >= oldest,
            decisions.c.decided_at < recent,
        )
        .group_by(decisions.c.customer_id, decisions.c.campaign)
    )
    if customer_ids is not None:
        mailed = mailed.where(outbox.c.customer_id.in_(customer_ids))
        held = held.where(decisions.c.customer_id.in_(customer_ids))
    return mailed, held


def _customer(row: Any) -> Customer:
    return Customer(
        id=row.id,
        email=row.email,
        first_name=row.first_name,
        locale=row.locale,
        time_zone=row.time_zone,
        country=row.country,
        birthday=row.birthday,
        consent_basis=ConsentBasis(row.consent_basis),
        consent_at=row.consent_at,
        consent_source=row.consent_source,
        unsubscribed_at=row.unsubscribed_at,
        objected_to_profiling=row.objected_to_profiling,
        erased_at=row.erased_at,
    )


def _items(connection: sa.Connection, ids: Sequence[str] | None = None) -> dict[str, Item]:
    query = sa.select(items) if ids is None else sa.select(items).where(items.c.id.in_(ids))
    return {
        row.id: Item(
            row.id,
            row.title,
            row.category,
            row.price,
            row.in_stock,
            row.url,
            row.image_url,
            row.is_service,
        )
        for row in connection.execute(query)
    }


def customer_orders(
    connection: sa.Connection, customer_id: str, now: datetime
) -> list[CustomerOrder]:
    """One customer's orders with the rules of a campaign run's (the shop API's view).

    Lines come straight from the driver as ``(item, order, epoch seconds, revenue)`` tuples:
    a wholesale customer has thousands, and turning each timestamp into a datetime would cost
    more than the whole answer; only orders become datetimes."""
    orders: dict[str, list[Any]] = {}
    for item, order, at, revenue in _lines(connection, customer_id, now):
        entry = orders.setdefault(order, [at, 0.0, set()])
        entry[0] = min(entry[0], at)
        entry[1] += revenue
        entry[2].add(item)
    return [
        CustomerOrder(
            customer_id,
            order,
            datetime.fromtimestamp(round(at, 3), UTC),
            revenue,
            frozenset(bought),
        )
        for order, (at, revenue, bought) in orders.items()
    ]


def _lines(connection: sa.Connection, customer_id: str, now: datetime) -> list[Any]:
    bind = {"customer_id": customer_id, "before": now.timestamp()}
    rows = driver_rows(connection, _lines_compiled(connection), bind)
    return [(item, order, float(at), float(revenue)) for item, order, at, revenue in rows]


_COMPILED: dict[str, Any] = {}  # dialect name → the compiled statement of _lines


def _lines_compiled(connection: sa.Connection) -> Any:
    """The statement of :func:`_lines`, compiled once per dialect (compiling it took longer
    than running it)."""
    found = _COMPILED.get(connection.dialect.name)
    if found is None:
        p = purchases.c
        epoch = queries.epoch_seconds(connection, p.ordered_at)
        query = sa.select(p.item_id, p.order_id, epoch, p.quantity * p.unit_price).where(
            p.customer_id == sa.bindparam("customer_id", type_=sa.String),
            purchase_line(),
            epoch < sa.bindparam("before", type_=sa.Float),
        )
        found = _COMPILED[connection.dialect.name] = query.compile(dialect=connection.dialect)
    return found


def catalogue(connection: sa.Connection) -> dict[str, Item]:
    """The whole catalogue by item id."""
    return _items(connection)


def catalogue_items(connection: sa.Connection, ids: Sequence[str]) -> dict[str, Item]:
    """The catalogue's entries of ``ids`` (a ranked list's few dozen items)."""
    return _items(connection, list(dict.fromkeys(ids))) if ids else {}


def recent_popular(
    connection: sa.Connection, now: datetime, n: int, *, days: int
) -> list[list[Any]]:
    """The cold-start list: the live model's, else straight from the sales of the last
    ``days`` (``recent_popularity_days``, the window a trained model's list counts)."""
    return _popular(connection, now, n, days)


def _orders(
    connection: sa.Connection, now: datetime
) -> tuple[list[CustomerOrder], dict[str, frozenset[str]]]:
    """Every known customer's orders before ``now`` (purchase lines), and the items each
    returned in full by then (``domain.returned_in_full``, over purchase and return lines)."""
    p = purchases.c
    columns = (p.customer_id, p.order_id, p.ordered_at, p.item_id, p.quantity, p.unit_price)
    purchase = purchase_line()
    query = sa.select(*columns, p.is_return).where(
        p.customer_id.is_not(None),
        sa.or_(purchase, p.is_return.is_(True)),
        p.ordered_at < now,
    )
    net: dict[tuple[str, str], float] = defaultdict(float)
    lines = []
    for *line, is_return in connection.execute(query):
        customer, _, _, item, quantity, _ = line
        if is_return:
            net[customer, item] -= abs(quantity)
        else:
            net[customer, item] += quantity
            lines.append(line)
    returned: dict[str, set[str]] = defaultdict(set)
    for customer, item in returned_in_full(net):
        returned[customer].add(item)
    return list(_grouped(lines)), {c: frozenset(found) for c, found in returned.items()}


def returned_items(connection: sa.Connection, customer_id: str, now: datetime) -> frozenset[str]:
    """The items ``customer_id`` returned in full before ``now`` (``_orders``' rule, for one
    customer: the command line's ``recommend``)."""
    p = purchases.c
    purchase = purchase_line()
    query = sa.select(p.item_id, p.quantity, p.is_return).where(
        p.customer_id == customer_id,
        sa.or_(purchase, p.is_return.is_(True)),
        p.ordered_at < now,
    )
    net: dict[str, float] = defaultdict(float)
    for item, quantity, is_return in connection.execute(query):
        net[item] += -abs(quantity) if is_return else quantity
    return returned_in_full(net)


def _grouped(lines: Iterable[Sequence[Any]]) -> Iterable[CustomerOrder]:
    """Lines ``(customer, order, at, item, quantity, price)`` grouped by order, in the order
    first seen: the earliest line's time, the summed revenue and the items."""
    orders: dict[tuple[str, str], list[Any]] = {}
    for customer, order, at, item, quantity, price in lines:
        entry = orders.setdefault((customer, order), [at, 0.0, set()])
        entry[0] = min(entry[0], at)
        entry[1] += quantity * price
        entry[2].add(item)
    for (customer, order), (at, revenue, bought) in orders.items():
        yield CustomerOrder(customer, order, at, revenue, frozenset(bought))


def _popular(connection: sa.Connection, now: datetime, n: int, days: int) -> list[list[Any]]:
    """The live model's cold-start list, else the ``3n`` items most customers bought in the
    last ``days``, as the model's is made: purchase lines of products (service items such as
    postage are never offered, and took the places of items that can be), over the model's
    window (``recent_popularity_days``: a fixed 90 days gave a shop that set 30 another list
    before its first model than after)."""
    live = connection.execute(sa.select(models.c.popular).where(models.c.status == "live")).first()
    if live is not None and live.popular:
        return list(live.popular)
    p = purchases.c
    buyers = sa.func.count(sa.distinct(p.customer_id))
    query = (
        sa.select(p.item_id, buyers)
        .where(
            p.ordered_at >= now - timedelta(days=days),
            p.ordered_at < now,
            p.customer_id.is_not(None),
            purchase_line(),
            p.item_id.not_in(sa.select(items.c.id).where(items.c.is_service.is_(True))),
        )
        .group_by(p.item_id)
        .order_by(buyers.desc(), p.item_id)
        .limit(n * 3)
    )
    rows: Sequence[Any] = connection.execute(query).all()
    top = max((row[1] for row in rows), default=1) or 1
    return [[row[0], row[1] / top] for row in rows]
