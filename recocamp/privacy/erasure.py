"""Erasure (GDPR Art. 17): the customer removed everywhere, and kept out.

In one transaction, serialised against every way in (``tombstones.serialise``): the customer
row goes; tables that feed non-identifying aggregates keep their rows with the person taken
out (:data:`KEEPS`): order lines lose their customer (popularity and revenue KPIs stay
right), decisions, e-mails and audit entries name an anonymous stand-in (``erased-<n>``, one
per erasure: the campaign counts stay right) and lose addresses, subjects, bodies and event
details; every other row tied to the customer (``holdings.ties``) is deleted (the top-N
cache entry at once), and a tombstone is written (``store.tombstones``: keyed hashes of the
id and the address, no personal data) that every way in checks, so no re-import, drop-folder
file, API call or purchase event brings them back. Then the customer's rows are removed from
every saved model's artifacts and from every file recocamp writes (``erasure_files``: kept
drop-folder files, rejected files, the demo's files), and on SQLite the freed pages are
overwritten (``secure_delete``) and the write-ahead log is emptied. ``files_clean`` is true
only when all of that succeeded; what erasure cannot reach is listed
(``erasure_files.NOT_COVERED``). The model trained next learns from none of it.

Kept on purpose: the suppression list's SHA-256 of the address (it is what keeps an address
that bounced, complained or unsubscribed from being mailed again if a feed brings it back),
an ``erasures`` row saying when, through which channel and how many rows, and the tombstone
(keyed hashes only; lifted by a new sign-up with a fresh consent, see ``api.events``).

A shared address (``holdings.subject``): erasure refuses until told whom it covers.
``Scope.ALL_MATCHING`` erases every customer id holding the address, as one person (one
stand-in, a tombstone per id, each with the address), when told how many there are
(``expect``: a placeholder address held by hundreds must not erase them all on one flag).
``Scope.ID`` erases that id alone: rows naming the other customers stay, and its tombstone
holds the id's hash only — an address tombstone would refuse the other customers' next
import and profile change as if they were erased. That customer stays erased (their id is
refused); the address stays usable by whoever else holds it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from recocamp import metrics
from recocamp.data import erasure_files
from recocamp.privacy import artifacts
from recocamp.privacy.holdings import Link, Scope, check_count, check_link, subject, ties
from recocamp.settings import Settings
from recocamp.store import notifications, tombstones
from recocamp.store import privacy as store
from recocamp.store.engine import Connection, Engine
from recocamp.store.privacy import MetaData, Person, Subject, Ties
from recocamp.store.queries import audit
from recocamp.store.schema import metadata

log = logging.getLogger(__name__)
STAND_IN = "erased-"  # + the erasure's id: the anonymous stand-in of an erased customer


@dataclass(frozen=True, slots=True)
class ErasureReport:
    erasure_id: int
    rows: dict[str, int]
    artifacts: int  # saved models the customer was removed from
    files_clean: bool  # every file we know of is clean: the SQLite write-ahead log could be
    # emptied (no reader held it) and every file of erasure_files.written_dirs was cleaned
    files: int = 0  # files of erasure_files.written_dirs rewritten without the customer
    files_left: tuple[str, ...] = ()  # files that could not be cleaned (their paths)
    not_covered: tuple[str, ...] = erasure_files.NOT_COVERED
    customer_ids: tuple[str, ...] = ()  # erased: more than one only with Scope.ALL_MATCHING
    address_kept_for: int = 0  # Scope.ID on a shared address: the other ids that hold it
    # (the address is not tombstoned: it stays open to them and to new sign-ups)


Keep = Callable[[Connection, Ties, Person], int]

# tables that keep their rows, with the person taken out (the rest lose the rows)
KEEPS: dict[str, Keep] = {
    "purchases": store.unlink_purchases,
    "decisions": store.stand_in_decisions,
    "outbox": store.blank_emails,
    "contact_events": store.blank_contact_events,
}


def erase(
    engine: Engine,
    settings: Settings,
    customer_id: str,
    now: datetime,
    via: str,
    schema: MetaData = metadata,
    scope: Scope = Scope.UNSHARED,
    expect: int | None = None,
    link: Link | None = None,
) -> ErasureReport | None:
    """Remove a customer everywhere (see the module docstring); None if we hold nothing.
    Needs the tombstones' key (``tombstones.KeyMissing`` without it): an erasure that a
    re-import could undo is not done at all. ``scope``: whom it covers when other customer
    ids hold their address (``SharedAddressError`` if it does not say; nothing is done).
    ``expect``: with ``Scope.ALL_MATCHING``, how many ids the operator was shown; checked
    in the erasing transaction (``CoverageCountError``; nothing is done).
    ``link``: the erasure is asked for through the customer's link; a link void by an
    erasure since (``holdings.check_link``) erases nobody — checked in this
    transaction, so an erasure and a re-sign-up in between cannot let the old link erase
    the new record (``VoidLinkError``; nothing is done)."""
    key = tombstones.key_of(settings)
    if key is None:
        raise tombstones.KeyMissing("erasure", erasing=True)
    with engine.connect() as connection:
        unknown = not store.customer_email(connection, customer_id)[0]
    in_files = unknown and _in_files(settings, customer_id)  # read before the lock is taken
    with engine.begin() as connection, store.scrubbing(connection):
        tombstones.serialise(connection, erasing=True)  # first: see serialise (SQLite too)
        check_link(connection, customer_id, link)  # locked already: reads only
        tied = ties(schema)
        who, others = subject(connection, tied, customer_id, scope)
        shared, kept_for = bool(others), len(others) if who.exclusive else 0
        if not (in_files or _holds(connection, tied, who, customer_id)):
            return None  # before the count: an id we do not hold is a 404, not a miscount
        if scope is Scope.ALL_MATCHING:
            check_count(customer_id, who.ids, expect)
        erasure_id = store.new_erasure(connection, now, via)
        addresses = _tombstone(connection, key, who, now, keep_address=shared and who.exclusive)
        keys = store.send_keys(connection, who.forms)
        person = Person(who, f"{STAND_IN}{erasure_id}", keys)
        rows = {tie.table.name: _erase_rows(connection, tie, person) for tie in tied}
        rows["audit_log"] = store.stand_in_audit(connection, person)
        rows = {name: number for name, number in rows.items() if number}
        store.finish_erasure(connection, erasure_id, rows)
        for erased in who.forms:
            notifications.erased(connection, erased)
        audit(
            connection,
            at=now,
            actor=via[:200],
            action="customer_erased",
            subject_type="erasure",
            subject_id=str(erasure_id),
            details={"rows": rows, "customers": len(who.ids), "address_shared": shared},
        )
    scrubbed = artifacts.scrub(engine, settings, who.forms, "erasure")
    # every id and address at once: each file is read and rewritten once per erasure
    files = erasure_files.scrub(
        erasure_files.written_dirs(settings), addresses.keys(), addresses.values()
    )
    clean = store.empty_wal(engine) and not files.failed and not scrubbed.missing
    metrics.PRIVACY_REQUESTS.labels("erasure", via).inc()
    log.info(
        "erasure %d via %s: %d customer(s), rows %s, %d model(s), %d file(s) scrubbed, %d not",
        erasure_id,
        via,
        len(who.ids),
        rows,
        scrubbed.models,
        len(files.rewritten),
        len(files.failed),
    )
    return ErasureReport(
        erasure_id,
        rows,
        scrubbed.models,
        clean,
        len(files.rewritten),
        tuple(str(path) for path in (*scrubbed.missing, *files.failed)),
        customer_ids=who.ids,
        address_kept_for=kept_for,
    )


def held(
    engine: Engine,
    settings: Settings,
    customer_id: str,
    scope: Scope = Scope.UNSHARED,
    schema: MetaData = metadata,
) -> bool:
    """Whether :func:`erase` would find anything of ``customer_id`` (else it erases nobody
    and answers None), read before anything is done: the CLI checks the count of an
    all-matching erasure (:func:`check_count`) before it asks, and, as :func:`erase`, only
    for an id held — one held by nobody is "we hold no data", not a miscount.
    ``SharedAddressError`` as :func:`subject`."""
    with engine.connect() as connection:
        tied = ties(schema)
        who, _ = subject(connection, tied, customer_id, scope)
        if _holds(connection, tied, who, customer_id):
            return True
    return _in_files(settings, customer_id)


def _holds(connection: Connection, tied: list[Ties], who: Subject, customer_id: str) -> bool:
    """Whether the store holds the customer: their record, or any row tied to them."""
    known = store.customer_email(connection, customer_id)[0]
    return bool(known) or store.holds_any(connection, tied, who)


def _in_files(settings: Settings, customer_id: str) -> bool:
    """Whether the files recocamp keeps hold a customer whom the ``customers`` table does
    not: a refused customers file names everybody in it, also those never imported. Their
    export shows those rows (``holdings.export``), so their erasure must remove them, not
    answer that nothing is held. Read before the erasure's lock (a large kept file would
    hold every writer back): a file changed meanwhile is scrubbed after the commit anyway."""
    held, _ = erasure_files.holding(erasure_files.written_dirs(settings), [customer_id], [])
    return bool(held)


def _tombstone(
    connection: Connection,
    key: tombstones.Keys,
    who: Subject,
    now: datetime,
    *,
    keep_address: bool,
) -> dict[str, str | None]:
    """A tombstone for every erased id, with its address — its own, else the subject's —
    unless ``keep_address`` (an id erased alone from a shared address: the others keep
    it); and one for each record of the id in another Unicode form, with that record's
    address (the erasure takes those records too: ``Subject.forms``). Returns each id's
    address as files are cleaned of it (None: by the id only)."""
    addresses: dict[str, str | None] = {}
    for erased in who.ids:
        own = store.customer_email(connection, erased)[1]
        address = None if keep_address else own or who.email
        tombstones.record(connection, key, erased, address, now)
        addresses[erased] = address
        for other, email in store.records(connection, erased):
            if other not in addresses and email and not keep_address:
                tombstones.record(connection, key, other, email, now)
                addresses[other] = email
    return addresses


def _erase_rows(connection: Connection, tie: Ties, person: Person) -> int:
    keep = KEEPS.get(tie.table.name, store.delete_rows)
    return keep(connection, tie, person)
