"""What we hold about a customer, and where (GDPR Art. 15 and 20: access and portability).

Where personal data lives is read from the schema (``store.schema.metadata``), not listed by
hand, so a table somebody adds later is covered the day it appears:

- a text column named ``customer_id`` or ``…_customer_id`` ties a row to a customer (the
  ``customers`` table itself by its ``id``), and so does a text column holding an address
  (``email``, ``…_email``, ``recipient``), matched case-insensitively;
- :data:`PERSONAL` names every column that identifies a person; a test fails for any such
  column of a table that neither ties rows to a customer nor has a rule here.

**Export** (:func:`export`): every row of every table tied to the customer, with e-mail
bodies unpacked, plus the audit entries about them and whether their address is suppressed.
Erasure (``erasure``) removes the customer from the same tables.

**A shared address** (:func:`subject`): rows are tied by address too, so a request by one
customer id would also take in another customer id whose rows hold the same address — one
person with two accounts, or two people (a family) sharing one mailbox. Only the operator
can tell which, so a request whose address other ids hold is refused
(``SharedAddressError``, naming the ids, never the address) unless it says whom it covers
(:class:`Scope`): ``ID``, that customer alone (rows naming another customer stay theirs;
rows that hold the address and name nobody are left out, as nobody's: they cannot be
attributed, and the export says so), or ``ALL_MATCHING``,
every customer id holding the address, as one person (an erasure then needs their number,
:func:`check_count`: a placeholder address can be held by hundreds). A data subject acting for
themselves (a link token names one customer) always gets ``ID``: nobody can reach another
customer's data by sharing their address.
"""

from __future__ import annotations

import base64
import re
import zlib
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from recocamp.data import erasure_files
from recocamp.errors import CoverageCountError, SharedAddressError, VoidLinkError
from recocamp.privacy import artifacts
from recocamp.settings import Settings
from recocamp.store import outbox, tombstones
from recocamp.store import privacy as store
from recocamp.store.engine import Connection, Engine, snapshot
from recocamp.store.privacy import Column, MetaData, Subject, Ties
from recocamp.store.schema import metadata

CUSTOMER_KEY = re.compile(r"^(?:.+_)?customer_id$")
ADDRESS = re.compile(r"^(?:(?:.+_)?email|recipient)$")
PERSONAL = re.compile(
    r"^(?:(?:.+_)?customer_id|(?:.+_)?email|recipient|(?:first|last|full|middle)_name|"
    r"phone(?:_number)?|birthday|date_of_birth|(?:street_|postal_|home_)?address|ip_address)$"
)


LEFT_OUT = (
    "Rows that hold this customer's e-mail address but name no customer id are left out: "
    "other customer ids hold the address too, so those rows cannot be attributed to this one."
)


class Scope(StrEnum):
    """Whom a request by customer id covers when other customer ids hold their address."""

    UNSHARED = "unshared"  # refuse (SharedAddressError) when the address is shared
    ID = "id"  # this customer id alone
    ALL_MATCHING = "all-matching"  # every customer id holding the address, as one person


def ties(schema: MetaData = metadata) -> list[Ties]:
    """Every table that holds rows about a customer, found by column names."""
    return store.ties(schema, CUSTOMER_KEY, ADDRESS)


def personal_columns(schema: MetaData = metadata) -> list[Column[Any]]:
    """Columns that identify a person by their name (flags like ``channel_email`` do not)."""
    return store.named_columns(schema, PERSONAL)


def subject(
    connection: Connection, tied: list[Ties], customer_id: str, scope: Scope
) -> tuple[Subject, list[str]]:
    """Whose rows a request for ``customer_id`` selects, and the other customer ids that
    hold their address (none: it is not shared; see the module docstring);
    ``SharedAddressError`` when it is shared and ``scope`` does not say whom it covers."""
    _, email = store.customer_email(connection, customer_id)
    alone = Subject.of(customer_id, email)
    others = sorted(store.sharers(connection, tied, alone))
    if not others:
        return alone, others
    if scope is Scope.UNSHARED:
        raise SharedAddressError(customer_id, others)
    if scope is Scope.ID:
        return Subject(alone.ids, alone.email, exclusive=True), others
    return Subject((customer_id, *others), alone.email), others


def covered(
    engine: Engine, customer_id: str, scope: Scope, schema: MetaData = metadata
) -> tuple[str, ...]:
    """The customer ids a request for ``customer_id`` would cover, read before anything is
    done: the CLI names them before it asks (``SharedAddressError`` as :func:`subject`)."""
    with engine.connect() as connection:
        return subject(connection, ties(schema), customer_id, scope)[0].ids


def check_count(customer_id: str, ids: tuple[str, ...], expect: int | None) -> None:
    """An erasure of more than one customer id needs their number, said beforehand
    (``expect``): one flag must not erase everyone holding a placeholder address.
    ``CoverageCountError`` when it is missing or differs (also when given for one id)."""
    if (len(ids) > 1 or expect is not None) and expect != len(ids):
        raise CoverageCountError(customer_id, list(ids), expect)


def export(
    engine: Engine,
    customer_id: str,
    now: datetime,
    schema: MetaData = metadata,
    scope: Scope = Scope.UNSHARED,
    link: Link | None = None,
    settings: Settings | None = None,
) -> dict[str, Any] | None:
    """Everything we hold about one customer as a JSON-ready document; None if nothing.
    With ``settings``, also what lies outside the store and erasure removes: every saved
    model's rows and factors of theirs (``model_artifacts``) and their rows in the files
    recocamp keeps (``files``: kept and refused drop-folder files, the demo's).
    ``scope``: whom it covers when other customer ids hold their address (:func:`subject`).
    Read in one snapshot (``store.engine.snapshot``): a change landing meanwhile is in all
    of it or in none. ``link``: the export is asked for through the customer's link; a link
    void by an erasure since (``tombstones.void_link``) gets nothing (``VoidLinkError``).
    Checked in the snapshot the rows are read from, so an erasure and a re-sign-up after
    the check are not in the rows either, and again once read, before anything is answered:
    a record erased while it was being read is not handed out."""
    with snapshot(engine) as connection:
        check_link(connection, customer_id, link)
        tied = ties(schema)
        who, others = subject(connection, tied, customer_id, scope)
        tables = {}
        for tie in tied:
            found = [_document(row) for row in store.tied_rows(connection, tie, who)]
            if found:
                tables[tie.table.name] = found
        audits = [_document(row) for row in store.audit_entries(connection, who.forms)]
        suppressed = store.suppression(connection, who.email) if who.email else None
    if link is not None:
        with engine.connect() as connection:  # outside the snapshot: erased since it began
            check_link(connection, customer_id, link)
    outside = {} if settings is None else _outside(engine, settings, who)
    if not tables and not audits and not any(outside.values()):
        return None
    return {
        "customer_id": customer_id,
        "customer_ids": list(who.ids),
        "customers": len(who.ids),
        "scope": scope.value if others else Scope.UNSHARED.value,
        "exported_at": now.isoformat(),
        "about": "Everything recocamp holds about this customer (GDPR Art. 15 and 20): one "
        "list of rows per table; e-mail bodies unpacked.",
        "tables": tables,
        **outside,
        **({"left_out": LEFT_OUT} if who.exclusive else {}),
        "audit_log": audits,
        "suppressed": None
        if suppressed is None
        else {"reason": suppressed[0], "since": suppressed[1].isoformat()},
    }


def _outside(engine: Engine, settings: Settings, who: Subject) -> dict[str, Any]:
    """What the saved models and the files recocamp writes hold about the subject: what
    erasure scrubs there (``artifacts.scrub``, ``erasure_files.scrub``), by id, and by
    address unless the address is shared and not theirs alone (``Subject.exclusive``)."""
    emails = [] if who.exclusive or not who.email else [who.email]
    files, unreadable = erasure_files.holding(erasure_files.written_dirs(settings), who.ids, emails)
    found: dict[str, Any] = {
        "model_artifacts": artifacts.held(engine, settings, who.forms),
        "files": files,
    }
    if unreadable:
        found["files_unreadable"] = unreadable
    return found


@dataclass(frozen=True, slots=True)
class Link:
    """A customer's signed link (the preferences page) through which a request came: the
    tombstones' keys (the key it was signed with first, then the retired ones: a tombstone
    made under one of those voids it too) and when it was issued."""

    key: tombstones.Keys
    issued_at: datetime


def check_link(connection: Connection, customer_id: str, link: Link | None) -> None:
    """``VoidLinkError`` when the request came through a link void by an erasure since
    (``tombstones.void_link``); nothing when it came through no link. Export and erasure
    both check their link with it, inside the transaction or snapshot that acts."""
    if link is not None and tombstones.void_link(
        connection, link.key, customer_id, link.issued_at, writing=False
    ):
        raise VoidLinkError(f"the link of customer {customer_id!r} is void: erased since")


def _document(row: store.Record) -> dict[str, Any]:
    return {k: _json(v) for k, v in row.items()}


def _json(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        try:
            return outbox.load_body(value)
        except (zlib.error, ValueError):
            return {"base64": base64.b64encode(value).decode()}
    return value
