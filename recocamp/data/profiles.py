"""Customer profile, consent and contact-preference changes, with their audit trail.

One function applies every change, whoever makes it: the shop (``PUT /v1/customers/{id}``,
a sign-up, a consent given at checkout, a CRM sync) or the customer (the preferences page).
The values a change gives are checked with the customers import's own rules
(``sources.csv.customer_row``: a consent basis needs its timestamp, one plain address, IANA
time zones, dates); stored values it leaves alone are not held to them again. Every
change is written to the audit log with its time, actor and source; the entry names the
fields that changed and the values of the consent and contact fields, never an address or
a name.

Semantics worth knowing:

- fields that are not given are left as they are (a partial update, also for PUT);
- a field changed after the change's own time (``at``) keeps its newer value: a delayed
  sync does not undo the customer's later objection or opt-out (``Changed.kept_newer``);
- a change of ``consent_basis`` (to a basis other than ``none``) is a new consent and needs
  its own ``consent_at`` in the same change, not the stored one: otherwise the time of the
  old consent (a double opt-in, say) would stand as the time of the new basis;
- an objection to profiling drops the customer's cached personal list at once, cancels
  their queued e-mails with offers (chosen by their profile: ``outbox.cancel_profiled``), and
  says so (``Changed.objected``): the caller removes them from the saved models after the
  commit;
- ``unsubscribed = true`` unsubscribes (and suppresses the address) like a link click;
  ``false`` re-subscribes only together with a new consent given after the unsubscribe —
  an earlier consent does not outlive the customer's own opt-out. Bounces and complaints
  stay suppressed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from recocamp.data.sources import csv as sources
from recocamp.domain import (
    FALLBACK_LOCALE,
    LOCALES,
    PREFERENCE_PERIODS,
    ConsentBasis,
    Locale,
    birthday_problem,
    future_problem,
)
from recocamp.errors import RecocampError
from recocamp.store import contacts, outbox, profiles, views
from recocamp.store.engine import Connection
from recocamp.store.queries import audit

PROFILE = ("email", "first_name", "locale", "time_zone", "country", "birthday")
CONSENT = ("consent_basis", "consent_at", "consent_source")
CONTACT = ("channel_email", "frequency_preference", "paused_until", "objected_to_profiling")
FIELDS = PROFILE + CONSENT + CONTACT
AUDITED_VALUES = CONSENT + CONTACT  # identify nobody; the audit entry keeps their new values
FREQUENCIES = tuple(PREFERENCE_PERIODS)


class ProfileError(RecocampError):
    """A change that breaks a rule; ``field`` and ``value`` say which (addresses redacted)."""

    def __init__(self, field: str, message: str, value: object) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.value = field, message, value


@dataclass(frozen=True, slots=True)
class Changed:
    created: bool
    fields: tuple[str, ...]
    objected: bool = False  # the change records an objection to profiling: the caller
    # removes the customer from the saved models once it committed (``privacy.unprofile``)
    kept_newer: tuple[str, ...] = ()  # given, not applied: changed later than this change


def apply(
    connection: Connection,
    customer_id: str,
    changes: Mapping[str, Any],
    *,
    at: datetime,
    actor: str,
    source: str,
    unsubscribed: bool | None = None,
    zone: ZoneInfo | None = None,
    now: datetime | None = None,
    default_locale: Locale = FALLBACK_LOCALE,
) -> Changed:
    """Create or update one customer with ``changes`` (a subset of :data:`FIELDS`); a
    changed consent time or birthday must not lie past ``now`` (default: ``at``). A new
    customer without a ``locale`` gets ``default_locale`` (the shop's)."""
    unknown = sorted(set(changes) - set(FIELDS))
    if unknown:
        raise ProfileError(unknown[0], "is not a customer field", unknown[0])
    if isinstance(changes.get("email"), str):  # as the import reads it: trimmed
        changes = {**changes, "email": changes["email"].strip()}
    row = profiles.profile(connection, customer_id)
    kept_newer = _changed_since(connection, customer_id, changes, at) if row is not None else ()
    changes = {name: value for name, value in changes.items() if name not in kept_newer}
    before = (
        row
        if row is not None
        else {"locale": default_locale, "channel_email": True, "objected_to_profiling": False}
    )
    after = {**before, **changes}
    _validate(customer_id, after, zone or ZoneInfo("UTC"), None if row is None else set(changes))
    _not_ahead(changes, now or at)
    if row is not None:
        _own_consent_time(before, changes)
    changed = tuple(name for name in FIELDS if name in changes and before.get(name) != after[name])
    values = {name: after[name] for name in changed}
    if row is None:
        given = {name: after[name] for name in FIELDS if after.get(name) is not None}
        profiles.create(connection, customer_id, given, at)
    elif changed:
        profiles.update(connection, customer_id, values, at)
    if values.get("objected_to_profiling") or {"consent_basis", "consent_at"} & set(values):
        views.lock_contacts(connection)  # a campaign run's chunk: written before, or sees it
    if values.get("objected_to_profiling"):
        profiles.drop_personal_list(connection, customer_id)
        outbox.cancel_profiled(connection, [customer_id], now or at)
    if values.get("consent_basis") == ConsentBasis.EXISTING_CUSTOMER:
        outbox.cancel_rebased(connection, [customer_id], now or at)
    opted = _subscription(connection, customer_id, unsubscribed, after, at, source)
    if changed or row is None or opted == "resubscribed":  # contacts audits unsubscribes
        details = {
            "source": source[:200],
            "fields": list(changed) + ([opted] if opted else []),
            "values": {k: _plain(values[k]) for k in changed if k in AUDITED_VALUES},
        }
        audit(
            connection,
            at=at,
            actor=actor[:200],
            action="customer_created" if row is None else "customer_changed",
            subject_type="customer",
            subject_id=customer_id,
            details=details,
        )
    objected = bool(changes.get("objected_to_profiling")) and bool(after["objected_to_profiling"])
    return Changed(row is None, changed + ((opted,) if opted else ()), objected, kept_newer)


def _changed_since(
    connection: Connection, customer_id: str, changes: Mapping[str, Any], at: datetime
) -> tuple[str, ...]:
    """The fields of ``changes`` changed after ``at`` (by the audit log): a delayed CRM sync
    carrying ``objected_to_profiling: false`` or ``channel_email: true`` from before the
    customer's own objection or opt-out on the preferences page undid it, whatever its
    ``at`` said. A field's newer value stands; the consent fields go together (a basis
    belongs to its time)."""
    latest = profiles.last_changed(connection, customer_id)
    stale = {name for name in changes if name in latest and latest[name] > at}
    if stale & set(CONSENT):
        stale |= set(CONSENT) & set(changes)
    return tuple(name for name in FIELDS if name in stale)


def _validate(
    customer_id: str, after: Mapping[str, Any], zone: ZoneInfo, given: set[str] | None
) -> None:
    """The import's rules over the changed profile (consent needs its time …): a new one
    as a whole (``given`` None), a stored one over the fields ``given`` (the consent fields
    together, a basis belongs to its time). A stored value is not held to them again: an
    address an older release took (a zero-width space in it) refused every change of the
    customer's, their objection to profiling on the preferences page too (a 500)."""
    if given is not None and given & set(CONSENT):
        given = given | set(CONSENT)
    held = set(FIELDS) if given is None else given
    row = {"id": customer_id, **{n: _text(after.get(n)) if n in held else "" for n in FIELDS}}
    try:
        sources.customer_row(row, sources.Timestamps(zone), None)
    except sources.RowProblem as problem:
        raise ProfileError(problem.column, problem.message, problem.value) from None
    if "locale" in held and after.get("locale") not in LOCALES:
        raise ProfileError("locale", "must be de or en", after.get("locale"))
    frequency = after.get("frequency_preference")
    if frequency is not None and frequency not in FREQUENCIES:
        raise ProfileError(
            "frequency_preference", f"must be one of {', '.join(FREQUENCIES)}", frequency
        )


def _not_ahead(changes: Mapping[str, Any], now: datetime) -> None:
    """The bounds against now of the values changed (``domain``, as the import holds them):
    a stored value is not held to them again, or an old import would block every change."""
    consent_at, birthday = changes.get("consent_at"), changes.get("birthday")
    if isinstance(consent_at, datetime):
        late = future_problem(consent_at, now)
        if late:
            raise ProfileError("consent_at", late, consent_at.isoformat())
    wrong = birthday_problem(birthday, now) if isinstance(birthday, date) else None
    if wrong:
        raise ProfileError("birthday", wrong, "<redacted>")


def _own_consent_time(before: Mapping[str, Any], changes: Mapping[str, Any]) -> None:
    """A new consent basis comes with the time of that consent: given in the change, and
    not the stored one (which belongs to the previous basis). Withdrawing consent
    (``none``) needs no time."""
    basis = changes.get("consent_basis")
    if basis is None or str(basis) in ("none", str(before.get("consent_basis") or "none")):
        return
    consent_at, stored = changes.get("consent_at"), before.get("consent_at")
    if consent_at is None or consent_at == stored:
        raise ProfileError(
            "consent_at",
            f"a change of consent_basis to {basis} needs the time of that consent (the "
            "stored consent_at belongs to the previous basis)",
            None if consent_at is None else consent_at.isoformat(),
        )


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime | date) else value


def _subscription(
    connection: Connection,
    customer_id: str,
    unsubscribed: bool | None,
    after: Mapping[str, Any],
    at: datetime,
    source: str,
) -> str | None:
    """Apply ``unsubscribed``; returns "unsubscribed" / "resubscribed" when it changed."""
    if unsubscribed is None:
        return None
    current = profiles.subscription(connection, customer_id)
    if current is None:
        return None
    if unsubscribed:
        return "unsubscribed" if contacts.unsubscribe(connection, customer_id, at, source) else None
    if current.unsubscribed_at is None:
        return None
    consent_at = after.get("consent_at")
    if (
        after.get("consent_basis") in (None, "none")
        or consent_at is None
        or (consent_at <= current.unsubscribed_at)
    ):
        raise ProfileError(
            "unsubscribed",
            "re-subscribing needs a new consent: consent_basis "
            "and a consent_at after the unsubscribe",
            False,
        )
    profiles.resubscribe(connection, customer_id, current.email, at)
    return "resubscribed"
