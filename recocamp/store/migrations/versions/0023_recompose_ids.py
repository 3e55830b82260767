"""recompose ids: every stored customer, item and order id in Unicode's composed form (NFC)

Since ids are read composed (``domain.composed``), a version before that left records
stored decomposed (``Jose`` + U+0301) while the same person's lines arriving since are
stored composed: one customer under two byte strings. Readers that find a customer by the
exact id (the planner's histories, caps, decisions, consent) saw two people: a winback went
to a customer whose order of last week was stored under the other form. This rewrites
every id that is not composed, in every table that holds one, and merges the rows a unique
key then holds twice:

- ``customers``: one record, the most recent values (``updated_at``) with the gaps filled
  from the other, and the strictest state: e-mail off, unsubscribed, objecting, paused or
  erased when either is; the least permissive consent among the records that state one (a
  record with an address does, "none" included; a bare record an import of orders made,
  without an address, states none and takes nobody's away);
- ``items``: the most recently updated record, its missing link and image filled from
  the other, a service when either is;
- ``decisions``: one per run, the one that contacted (send, defer, holdout, then skip);
- ``feedback``: the first answer of a survey stands;
- ``forecasts``, ``forecast_checkpoints``, ``recommendations``: the composed id's row
  (computed for it; the other is a second copy of one person's); ``offer_lists``, a
  re-computable cache, loses the rows of ids or items not composed;
- order ids (read composed too): an order held under two forms (an older version's
  delivery and a file's since, its lines stored twice) keeps the copy stored first, and
  the other copies' lines of line numbers it lacks (one order's lines split over forms);
- ``purchases``: customer and item ids (``purchase_totals`` follows by its triggers), and
  the digest of each order whose item ids changed (``orders``, ``domain.order_digest``), so
  an order posted again composed is a repeat;
- item ids in the cached lists (``recommendations.items``, ``models.popular``);
- the audit log's entries about a customer (subject type ``customer``): the subject id,
  so that an erasure and an export, which match the id's composed and decomposed forms,
  find an entry stored under a form that is neither (one accent composed, one not);
- ``engagement_events``: the event id (a review's, read composed), the one recorded first
  of an event held under two forms;
- ``outbox``, ``contact_events``, ``engagement_events``: the customer id; of the e-mails
  queued for one send key composed (one mailing queued for each of two records) one goes
  out, the others are cancelled.

Left as they are: tombstones and erasure times (keyed hashes, which cannot be made again
without the key; every check hashes every form of an id, ``tokens.id_hashes``, so an erased
customer stays erased), send keys (the key the provider knows a message by; a run resumed
after the upgrade finds its e-mails under any form, ``store.outbox.existing_keys``); an id
whose composed form is longer than the id columns hold (64 characters: composition
exclusions, ``nfc``).

Only rows with an id that is not ASCII are read (one scan of each table in SQL); of those
only the ones whose id is not composed are written, by key. There is no downgrade: which
rows were decomposed, and the rows merged away, are not kept; ``downgrade`` does nothing.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 06:00:00
"""

from __future__ import annotations

import functools
import hashlib
import json
import unicodedata
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

CHUNK = 500
WIDTH = 64  # the id columns: String(64)


def nfc(value: str) -> str:
    """``value`` composed, or as stored where its composed form is longer than the id
    columns hold (composition exclusions such as U+0958 compose to two characters): such an
    id cannot be stored composed (PostgreSQL refuses it, failing the whole upgrade), and the
    import refuses it now as too long, so no reader finds it composed anyway."""
    if value.isascii():
        return value
    composed = unicodedata.normalize("NFC", value)
    return composed if len(composed) <= WIDTH else value


def _non_ascii(connection: sa.Connection, column: sa.ColumnElement[Any]) -> Any:
    """Rows whose text is not ASCII: more bytes than characters (one scan, no Python)."""
    if connection.dialect.name == "postgresql":
        return sa.func.octet_length(column) != sa.func.length(column)
    return sa.func.length(sa.cast(column, sa.LargeBinary)) != sa.func.length(column)


def _rows(
    connection: sa.Connection, table: str, columns: Sequence[str], ids: Sequence[str]
) -> list[Any]:
    """``columns`` of the rows of ``table`` where one of ``ids`` is not ASCII."""
    t = sa.table(table, *(sa.column(c) for c in dict.fromkeys([*columns, *ids])))
    where = sa.or_(*(_non_ascii(connection, t.c[c]) for c in ids))
    return list(connection.execute(sa.select(*(t.c[c] for c in columns)).where(where)))


def _by_key(
    connection: sa.Connection, table: str, columns: Sequence[str], key: str, values: Iterable[str]
) -> list[Any]:
    t = sa.table(table, *(sa.column(c) for c in columns))
    wanted = sorted(set(values))
    found: list[Any] = []
    for start in range(0, len(wanted), CHUNK):
        query = sa.select(*(t.c[c] for c in columns)).where(
            t.c[key].in_(wanted[start : start + CHUNK])
        )
        found.extend(connection.execute(query))
    return found


def _update(
    connection: sa.Connection, table: str, keys: Sequence[str], values: list[dict[str, Any]]
) -> None:
    """Rows by key (``keys``, bound as ``k_<name>``): the other entries are the new values."""
    if not values:
        return
    names = [n for n in values[0] if not n.startswith("k_")]
    t = sa.table(table, *(sa.column(c) for c in dict.fromkeys([*keys, *names])))
    statement = (
        sa.update(t)
        .where(*(t.c[k] == sa.bindparam(f"k_{k}") for k in keys))
        .values({n: sa.bindparam(n) for n in names})
    )
    connection.execute(statement, values)


def _delete(
    connection: sa.Connection, table: str, keys: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    if not rows:
        return
    t = sa.table(table, *(sa.column(c) for c in keys))
    statement = sa.delete(t).where(*(t.c[k] == sa.bindparam(f"k_{k}") for k in keys))
    connection.execute(
        statement, [{f"k_{k}": v for k, v in zip(keys, row, strict=True)} for row in rows]
    )


def _merge_keyed(
    connection: sa.Connection,
    table: str,
    keys: Sequence[str],
    id_column: str,
    columns: Sequence[str],
    best: Callable[[Any], Any],
) -> None:
    """A table whose key (``keys``) holds the id (``id_column``): the rows whose id is not
    composed take the composed id; where that makes several rows of one key (the composed
    row, or two other forms), the row ``best`` ranks lowest stays and the others go."""
    every = list(dict.fromkeys([*keys, *columns]))
    odd = [
        r
        for r in _rows(connection, table, every, [id_column])
        if nfc(r._mapping[id_column]) != r._mapping[id_column]
    ]
    if not odd:
        return
    at = keys.index(id_column)

    def key_of(row: Any, composed: bool = False) -> tuple[Any, ...]:
        values = [row._mapping[k] for k in keys]
        if composed:
            values[at] = nfc(values[at])
        return tuple(values)

    groups: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for row in odd:
        groups[key_of(row, composed=True)].append(row)
    for row in _held(connection, table, keys, every, list(groups)):
        groups[key_of(row)].append(row)
    gone: list[tuple[Any, ...]] = []
    renamed: list[dict[str, Any]] = []
    for target, rows in groups.items():
        keep = min(rows, key=lambda r: (best(r), r._mapping[id_column] != target[at]))
        gone.extend(key_of(r) for r in rows if r is not keep)
        if keep._mapping[id_column] != target[at]:
            renamed.append(
                {
                    **{f"k_{k}": v for k, v in zip(keys, key_of(keep), strict=True)},
                    id_column: target[at],
                }
            )
    _delete(connection, table, keys, gone)
    _update(connection, table, keys, renamed)


def _held(
    connection: sa.Connection,
    table: str,
    keys: Sequence[str],
    columns: Sequence[str],
    wanted: list[tuple[Any, ...]],
) -> list[Any]:
    """The rows of these whole keys: by IN for a key of one column, else one look-up each
    through the key's unique index (decisions has no index on customer_id alone: an IN of
    ids would read the whole table per chunk)."""
    if len(keys) == 1:
        return _by_key(connection, table, columns, keys[0], [k[0] for k in wanted])
    t = sa.table(table, *(sa.column(c) for c in columns))
    query = sa.select(*(t.c[c] for c in columns)).where(
        *(t.c[k] == sa.bindparam(f"k_{k}") for k in keys)
    )
    found: list[Any] = []
    for key in wanted:
        bound = {f"k_{k}": v for k, v in zip(keys, key, strict=True)}
        found.extend(connection.execute(query, bound))
    return found


def _rename(connection: sa.Connection, table: str, keys: Sequence[str], ids: Sequence[str]) -> None:
    """A table no unique key of which holds the ids: each id not composed takes its composed
    form, row by row (by ``keys``)."""
    values = []
    for row in _rows(connection, table, [*keys, *ids], ids):
        new = {c: nfc(row._mapping[c]) for c in ids if row._mapping[c] is not None}
        if any(new[c] != row._mapping[c] for c in new):
            values.append({**{f"k_{k}": row._mapping[k] for k in keys}, **new})
    for start in range(0, len(values), CHUNK):
        chunk = values[start : start + CHUNK]
        # rows of one statement must bind the same names: group by which ids are set
        for names in {tuple(v) for v in chunk}:
            _update(connection, table, keys, [v for v in chunk if tuple(v) == names])


# --- customers -----------------------------------------------------------------------------

CUSTOMER_COLUMNS = (
    "id",
    "email",
    "first_name",
    "locale",
    "time_zone",
    "country",
    "birthday",
    "consent_basis",
    "consent_at",
    "consent_source",
    "channel_email",
    "frequency_preference",
    "paused_until",
    "unsubscribed_at",
    "objected_to_profiling",
    "erased_at",
    "updated_at",
)
FILLED = ("email", "first_name", "time_zone", "country", "birthday", "frequency_preference")
PERMISSIVE = {"none": 0, "existing_customer": 1, "double_opt_in": 2}


def _latest(values: Iterable[Any]) -> Any:
    present = [v for v in values if v is not None]
    return max(present) if present else None


def merged_customer(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One customer of several records of one person: see the module docstring."""
    newest = sorted(records, key=lambda r: r["updated_at"], reverse=True)
    merged = dict(newest[0])
    for column in FILLED:
        merged[column] = next((r[column] for r in newest if r[column] is not None), None)
    # a record with an address states consent (a customers file's row saying none, too); a
    # bare record an import of orders made holds no address and takes nobody's consent away
    decided = [
        r
        for r in newest
        if r["consent_at"] is not None or r["consent_basis"] != "none" or r["email"] is not None
    ]
    strictest = min(decided or newest, key=lambda r: PERMISSIVE.get(r["consent_basis"], 0))
    for column in ("consent_basis", "consent_at", "consent_source"):
        merged[column] = strictest[column]
    merged["channel_email"] = all(bool(r["channel_email"]) for r in records)
    merged["objected_to_profiling"] = any(bool(r["objected_to_profiling"]) for r in records)
    for column in ("paused_until", "unsubscribed_at", "erased_at", "updated_at"):
        merged[column] = _latest(r[column] for r in records)
    return merged


def _merge_records(
    connection: sa.Connection,
    table: str,
    columns: Sequence[str],
    merged: Callable[[Sequence[dict[str, Any]]], dict[str, Any]],
) -> None:
    """A table keyed by the id alone (customers, items): the records of one id composed
    become one, ``merged`` of them, under the composed id."""
    odd = [dict(r._mapping) for r in _rows(connection, table, columns, ["id"]) if nfc(r.id) != r.id]
    if not odd:
        return
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in odd:
        groups[nfc(record["id"])].append(record)
    for record in _by_key(connection, table, columns, "id", groups):
        groups[record.id].append(dict(record._mapping))
    gone: list[tuple[Any, ...]] = []
    written: list[dict[str, Any]] = []
    for target, records in groups.items():
        keep = next((r for r in records if r["id"] == target), records[0])
        gone.extend((r["id"],) for r in records if r is not keep)
        written.append({"k_id": keep["id"], **merged(records), "id": target})
    _delete(connection, table, ["id"], gone)
    _update(connection, table, ["id"], written)


ITEM_COLUMNS = (
    "id",
    "title",
    "category",
    "price",
    "in_stock",
    "url",
    "image_url",
    "is_service",
    "updated_at",
)


def merged_item(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One item of several records: the most recently updated, its missing link and image
    filled from the others (a purchases file makes a bare record, ``add_missing_items``,
    beside the catalogue's), and a service when either is one (a service is never offered:
    postage must not become an offer)."""
    newest = sorted(records, key=lambda r: _instant(r["updated_at"]), reverse=True)
    merged = dict(newest[0])
    for column in ("url", "image_url"):
        merged[column] = next((r[column] for r in newest if r[column] is not None), None)
    merged["is_service"] = any(bool(r["is_service"]) for r in records)
    return merged


# --- purchases and their orders ------------------------------------------------------------


def _order_forms(connection: sa.Connection) -> dict[str, set[str]]:
    """The order ids not composed, by their composed form."""
    forms: dict[str, set[str]] = defaultdict(set)
    for table in ("purchases", "orders"):
        t = sa.table(table, sa.column("order_id"))
        query = sa.select(t.c.order_id).where(_non_ascii(connection, t.c.order_id)).distinct()
        for (order_id,) in connection.execute(query):
            if nfc(order_id) != order_id:
                forms[nfc(order_id)].add(order_id)
    return forms


def _order_ids(connection: sa.Connection) -> set[str]:
    """Order ids (read composed as well, ``sources.csv.ident``): an order stored under
    another form takes the composed one. Where several forms hold one order (an older
    version's delivery and a file's since, which did not find it: its lines stored twice),
    the copy stored first stays (as the importer keeps the first delivery of an order and
    refuses or skips the others) and the other copies' lines of a line number it holds go,
    with their ``orders`` rows. A line number it lacks joins it (one file named the order in
    two forms, each line stored as an order of its own: a line of the order, no repeat).
    Returns the orders that took lines, to be digested again."""
    forms = _order_forms(connection)
    if not forms:
        return set()
    every = sorted({form for target, held in forms.items() for form in (target, *held)})
    lines_of: dict[str, list[Any]] = defaultdict(list)
    for line in _by_key(connection, "purchases", ["id", "order_id", "line_no"], "order_id", every):
        lines_of[line.order_id].append(line)
    first = {form: min(line.id for line in found) for form, found in lines_of.items()}
    stored = {r.order_id for r in _by_key(connection, "orders", ["order_id"], "order_id", every)}
    gone: list[tuple[Any, ...]] = []
    gone_lines: list[tuple[Any, ...]] = []
    joined: list[dict[str, Any]] = []
    renamed: list[dict[str, Any]] = []
    grown: set[str] = set()
    for target, held in forms.items():
        copies = [f for f in (target, *sorted(held)) if f in first or f in stored]
        keep = min(copies, key=lambda f: (f not in first, first.get(f, 0), f != target))
        taken = {line.line_no for line in lines_of[keep]}
        for form in sorted((f for f in copies if f != keep), key=lambda f: first.get(f, 0)):
            gone.append((form,))
            for line in sorted(lines_of[form], key=lambda r: r.id):
                if line.line_no in taken:
                    gone_lines.append((line.id,))
                else:
                    taken.add(line.line_no)
                    joined.append({"k_id": line.id, "order_id": target})
                    grown.add(target)
        if keep != target:
            renamed.append({"k_order_id": keep, "order_id": target})
    _delete(connection, "purchases", ["id"], gone_lines)
    _delete(connection, "orders", ["order_id"], [g for g in gone if g[0] in stored])
    _update(connection, "purchases", ["order_id"], renamed)
    _update(connection, "purchases", ["id"], joined)
    _update(connection, "orders", ["order_id"], [r for r in renamed if r["k_order_id"] in stored])
    return grown


def _purchases(connection: sa.Connection, grown: set[str]) -> None:
    """Customer and item ids of the lines; each order an item id of which changed, or that
    took lines of another copy (``grown``), is digested again from its lines as now stored."""
    columns = ["id", "order_id", "customer_id", "item_id"]
    rows = _rows(connection, "purchases", columns, ["customer_id", "item_id"])
    orders = sorted(grown | {r.order_id for r in rows if nfc(r.item_id) != r.item_id})
    _rename(connection, "purchases", ["id"], ["customer_id", "item_id"])
    digests: list[dict[str, Any]] = []
    line_columns = ["order_id", "line_no", "item_id", "quantity", "unit_price", "ordered_at"]
    for start in range(0, len(orders), CHUNK):
        lines = _by_key(
            connection,
            "purchases",
            [*line_columns, "is_return"],
            "order_id",
            orders[start : start + CHUNK],
        )
        by_order: dict[str, list[Any]] = defaultdict(list)
        for line in lines:
            by_order[line.order_id].append(line)
        digests.extend(
            {"k_order_id": order, "content_sha256": _digest(found)}
            for order, found in by_order.items()
        )
    _update(connection, "orders", ["order_id"], digests)


def _digest(lines: list[Any]) -> str:
    """``domain.order_digest`` as it was at this revision (as 0010's copy: a later change
    of the function must not change what this migration wrote)."""
    digest = hashlib.sha256()
    for line in sorted(lines, key=lambda r: r.line_no):
        part = (
            f"{line.line_no}\x1f{line.item_id}\x1f{line.quantity}\x1f{_price(line.unit_price)}"
            f"\x1f{_at(line.ordered_at)}\x1f{int(bool(line.is_return))}\x1e"
        )
        digest.update(part.encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=100_000)
def _price(value: Any) -> str:
    """A price as NUMERIC(14, 4) keeps it (an order's lines repeat few prices: cached)."""
    rounded = Decimal(repr(float(value))).quantize(Decimal("0.0001"), ROUND_HALF_UP)
    return str(rounded.copy_abs() if rounded.is_zero() else rounded)


@functools.lru_cache(maxsize=100_000)
def _at(value: Any) -> str:
    """A stored time as the digest writes it (an order's lines repeat its time: cached)."""
    return _instant(value).isoformat()


def _instant(value: Any) -> datetime:
    """A stored time as an aware UTC datetime (SQLite's text keeps no offset: UTC)."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    assert isinstance(when, datetime)
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


# --- item ids in JSON lists ----------------------------------------------------------------


def _composed_list(pairs: list[list[Any]]) -> list[list[Any]]:
    """``[[item_id, score], …]`` with each id composed; an item named twice stays once, at
    its first (best) place."""
    seen: set[str] = set()
    found = []
    for item, *rest in pairs:
        item = nfc(item)
        if item not in seen:
            seen.add(item)
            found.append([item, *rest])
    return found


def _json_lists(connection: sa.Connection, table: str, keys: Sequence[str], column: str) -> None:
    """The item ids of a JSON column of ``[[item_id, score], …]`` lists: only rows whose
    text holds an escaped or a raw character that is not ASCII are read."""
    t = sa.table(table, *(sa.column(c) for c in [*keys, column]))
    text = sa.cast(t.c[column], sa.Text)
    where = sa.or_(text.like("%\\u%", escape="!"), _non_ascii(connection, text))
    values = []
    for row in connection.execute(sa.select(*(t.c[k] for k in keys), text).where(where)):
        stored = row[-1]
        pairs = json.loads(stored)
        again = _composed_list(pairs)
        if again != pairs:
            keyed = {f"k_{k}": row._mapping[k] for k in keys}
            values.append({**keyed, column: again})
    if values:
        typed = sa.table(table, *(sa.column(c) for c in keys), sa.column(column, sa.JSON))
        statement = (
            sa.update(typed)
            .where(*(typed.c[k] == sa.bindparam(f"k_{k}") for k in keys))
            .values({column: sa.bindparam(column, type_=sa.JSON)})
        )
        connection.execute(statement, values)


def upgrade() -> None:
    connection = op.get_bind()
    _merge_records(connection, "customers", CUSTOMER_COLUMNS, merged_customer)
    _merge_records(connection, "items", ITEM_COLUMNS, merged_item)
    _purchases(connection, _order_ids(connection))
    outcome = {"send": 0, "defer": 1, "holdout": 2}
    _merge_keyed(
        connection,
        "decisions",
        ["run_key", "customer_id"],
        "customer_id",
        ["outcome", "decided_at", "id"],
        lambda r: (outcome.get(r.outcome, 3), r.decided_at, r.id),
    )
    _merge_keyed(
        connection,
        "feedback",
        ["survey", "customer_id"],
        "customer_id",
        ["answered_at", "id"],
        lambda r: (r.answered_at, r.id),
    )
    for table, keys in (
        ("forecasts", ["customer_id", "version"]),
        ("forecast_checkpoints", ["version", "customer_id"]),
        ("recommendations", ["customer_id", "model_version"]),
    ):
        _merge_keyed(connection, table, keys, "customer_id", [], lambda r: 0)
    _rename(connection, "outbox", ["id"], ["customer_id"])
    _one_mail_per_key(connection)
    _rename(connection, "contact_events", ["id"], ["customer_id"])
    _merge_keyed(  # the shop's event ids are read composed too (``api.events.Id``)
        connection,
        "engagement_events",
        ["kind", "event_id"],
        "event_id",
        ["recorded_at"],
        lambda r: _instant(r.recorded_at),
    )
    _rename(connection, "engagement_events", ["kind", "event_id"], ["customer_id"])
    _audit_subjects(connection)
    _json_lists(connection, "recommendations", ["customer_id", "model_version"], "items")
    _json_lists(connection, "models", ["version"], "popular")
    _offer_lists(connection)


def _one_mail_per_key(connection: sa.Connection) -> None:
    """E-mails whose send keys (``campaign/customer/period``) are one key composed: the
    mailing of one period queued for each of a person's two records. One stays (one the
    provider may hold, else the first queued); the other queued ones are cancelled, as one
    send key would have held one e-mail. Their send keys stay (``store.outbox.existing_keys``)."""
    t = sa.table("outbox", *(sa.column(c) for c in ("id", "campaign", "send_key", "state")))
    query = sa.select(t.c.id, t.c.campaign, t.c.send_key, t.c.state).where(
        _non_ascii(connection, t.c.send_key)
    )
    groups: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in connection.execute(query):
        groups[(row.campaign, unicodedata.normalize("NFC", row.send_key))].append(row)
    cancelled: list[dict[str, Any]] = []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        rank = {"queued": 1, "cancelled": 2}
        keep = min(rows, key=lambda r: (rank.get(r.state, 0), r.id))
        cancelled.extend(
            {"k_id": r.id, "state": "cancelled", "last_error": "another e-mail of its send key"}
            for r in rows
            if r is not keep and r.state == "queued"
        )
    _update(connection, "outbox", ["id"], cancelled)


def _audit_subjects(connection: sa.Connection) -> None:
    """The subject ids of the audit log's entries about customers, composed; the entries'
    actions, times and details stay."""
    renamed = [
        {"k_id": row.id, "subject_id": nfc(row.subject_id)}
        for row in _rows(
            connection, "audit_log", ["id", "subject_type", "subject_id"], ["subject_id"]
        )
        if row.subject_type == "customer" and nfc(row.subject_id) != row.subject_id
    ]
    _update(connection, "audit_log", ["id"], renamed)


def _offer_lists(connection: sa.Connection) -> None:
    """The shared re-scored lists of a customer id not composed, or naming an item that may
    not be (any text not ASCII, escaped or raw), go: a cache, made again when next asked."""
    t = sa.table("offer_lists", *(sa.column(c) for c in ("customer_id", "items", "padding")))
    where = sa.or_(
        _non_ascii(connection, t.c.customer_id),
        *(t.c[c].like("%\\u%", escape="!") for c in ("items", "padding")),
        *(_non_ascii(connection, t.c[c]) for c in ("items", "padding")),
    )
    gone = [(row[0],) for row in connection.execute(sa.select(t.c.customer_id).where(where))]
    _delete(connection, "offer_lists", ["customer_id"], gone)


def downgrade() -> None:
    """Nothing: which ids were stored decomposed, and the rows merged, are not kept."""
