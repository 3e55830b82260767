"""Frozen value types shared by every layer.

Nothing here does I/O. Amounts are floats in the shop's currency (the store keeps
them as NUMERIC); datetimes are aware UTC. ``customer_id`` is ``None`` for guest
orders: they count for item popularity and the guest-checkout rate, never for a person.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from typing import Any, Literal, NamedTuple, TypeVar, get_args

# --- bounds: the one definition of what may come in --------------------------------------
# Every way data enters (CSV imports, the drop folder, purchase events, customer updates)
# checks these, so a value either fits the store on SQLite and PostgreSQL alike or is a
# clear problem naming where it came from; never a driver error or an ``inf`` in a KPI.

ID_MAX = 64  # customer, item and order ids: String(64) columns
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"  # printable: no NUL, no line breaks, no control bytes
TEXT_PATTERN = r"^[^\x00]*$"  # free text: anything but NUL (PostgreSQL cannot store it)
QUANTITY_MAX = 1_000_000  # per order line, either sign (negative: returned)
PRICE_MAX = 1e9  # a unit price, either sign; NUMERIC(14, 4) holds below 1e10
PRICE_DECIMALS = 4  # NUMERIC(14, 4): PostgreSQL rounds a price to this many decimals
LINE_NO_MAX = 1_000_000  # line numbers of an order: 0 (0-based exports) to this
YEAR_MIN, YEAR_MAX = 1900, 9000  # instants, in UTC: every time zone and both stores manage
MAX_DAYS = 36_500  # a day count (a setting, a campaign rule, an option): a hundred years
MAX_COUNT = 1_000_000_000  # a count or a cap a person writes: more is a typo, or an attack
MONEY_QUANTUM = Decimal("0.0001")  # the scale of NUMERIC(14, 4) (Money)
# every e-mail's header naming it: the send key in the shop, its digest once it leaves
# (``tokens.provider_key``, written by ``delivery.esp.http.headers_of``)
SEND_KEY_HEADER = "X-Recocamp-Send-Key"
FIELD_MAX = 100_000  # characters in one CSV field; every column's own limit is lower
TEXT_MAX = {  # free-text columns: their column sizes
    "email": 320,
    "first_name": 200,
    "locale": 16,
    "time_zone": 64,
    "country": 64,
    "consent_source": 200,
    "title": 500,
    "category": 100,
    "url": 2000,
    "image_url": 2000,
}


def id_problem(value: str) -> str | None:
    """Why ``value`` cannot be an id, or None; ids are keys in URLs, logs and e-mails, so
    every character must be printable (``str.isprintable``): no controls (C0, DEL, C1 such
    as NEL), no line or paragraph separators (U+2028/2029), no format characters such as
    the bidi overrides (U+202E shows ``abc`` as ``cba``) or zero-width ones. The message
    names the code point, not the character itself. No white space at either end: every
    import trims its fields, so ``" 10042"`` in a file is the customer ``10042``; taken as it
    is through the API, it would be another customer — one whose id no erasure tombstone
    names, so an erased customer could come back under it (``store.tombstones``)."""
    if len(value) <= ID_MAX and value.isprintable() and value == value.strip():  # one C call
        return None
    if len(value) > ID_MAX:
        return f"is longer than {ID_MAX} characters"
    bad = next((c for c in value if not c.isprintable()), None)
    if bad is None:
        return "begins or ends with white space (ids are compared trimmed, as imports read them)"
    kind = "a control" if unicodedata.category(bad) == "Cc" else "a non-printable"
    return f"contains {kind} character (U+{ord(bad):04X})"


# names that ``ZoneInfo`` opens in a system's zone directory but that name no IANA zone:
# the machine's own zone (``localtime``, a link to /etc/localtime), the default rules, and
# the ``posix/`` and ``right/`` copies of the database (``right/``: clocks that count leap
# seconds, 27 s off). The ``tzdata`` package — the zone data of a machine without a system
# one — has none of them.
LOCAL_ZONE_FILES = frozenset({"localtime", "posixrules"})
LOCAL_ZONE_DIRS = ("posix/", "right/")


def zone_name_problem(name: str) -> str | None:
    """Why ``name`` is no IANA time zone name although this machine may load it, or None.
    A customer's, a campaign's or the shop's zone is stored or read on one machine and used
    on others (a worker, an API process): ``localtime`` would mean each one's own zone, and
    where the zone data is the ``tzdata`` package, none of these names loads (every
    campaign run stopped at a customer with one). The name alone: loading it is the
    caller's."""
    if name in LOCAL_ZONE_FILES or name.startswith(LOCAL_ZONE_DIRS):
        return (
            "is a file of this machine's zone database, not an IANA time zone name "
            "(such as Europe/Berlin)"
        )
    return None


def composed(value: str) -> str:
    """An id in Unicode's composed form (NFC): ``Müller`` typed on one system and exported
    decomposed (``u`` + U+0308) by another is the same id to a person, and was stored as a
    second customer (a file naming both forms held two; a person's orders split over two).
    Files and the API read every id composed, as they read it trimmed (the API's ids in
    bodies and paths: ``api.lean.PathId``); tombstones match every form. An ASCII id (the
    usual) costs one ``isascii()``."""
    return value if value.isascii() else unicodedata.normalize("NFC", value)


def composed_text(value: object) -> object:
    """:func:`composed` as a validator that runs before the type's own (pydantic's
    ``BeforeValidator``): a text composed, so its length and pattern are checked as a file's
    id is (composed first); anything else is left to the type to refuse."""
    return composed(value) if isinstance(value, str) else value


def check_id(value: str) -> str:
    """``value`` when it can be an id, else ValueError with :func:`id_problem`'s message: the
    one id rule as a validator (pydantic's ``AfterValidator`` on the API's ids)."""
    problem = id_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def text_problem(value: str, limit: int) -> str | None:
    """Why ``value`` cannot be stored as free text of at most ``limit`` characters, or None."""
    if len(value) > limit:
        return f"is longer than {limit} characters"
    if "\x00" in value:
        return "contains a NUL character"
    return None


def range_problem(value: float, low: float, high: float) -> str | None:
    """Why a number is out of bounds (NaN and infinities are), or None."""
    if not low <= value <= high:  # also true for NaN
        return f"is out of range ({_bound(low)} to {_bound(high)})"
    return None


# the languages of the e-mails and pages: the one spelling. ``Locale`` is the type (mypy
# cannot build a Literal from a tuple), ``LOCALES`` its values, read from it.
Locale = Literal["de", "en"]
LOCALES: tuple[Locale, ...] = get_args(Locale)
FALLBACK_LOCALE: Locale = "en"  # a customer's when neither the shop's data nor they said one
# decompressed bytes per byte of a .gz file: the default (CSV gzips about 6 to 1) and the
# setting's upper bound (deflate itself stops near 1,032)
GZIP_RATIO_MAX, GZIP_RATIO_LIMIT = 100, 1_000
CLOCK_SKEW = timedelta(minutes=5)  # how far past now a given instant may lie (clocks differ)
BIRTHDAY_MIN = date(1900, 1, 1)
_EARTH_AHEAD = timedelta(hours=14)  # UTC+14: where a date begins first


def locale_problem(value: str) -> str | None:
    """Why ``value`` cannot be a customer's locale, or None."""
    return None if value in LOCALES else f"is not one of {', '.join(LOCALES)}"


EMAIL_SEPARATORS = re.compile(r'[ ,;<>()\[\]"\\:]')  # what lists or names several recipients


def email_problem(value: str) -> str | None:
    """Why ``value`` is not one plain address (``local@domain``), or None. The address goes
    into the provider's ``To`` as it is, and Postmark reads ``"a@x, b@y"`` or ``"Ann
    <a@x>, b@y"`` as two recipients: a customer's e-mail, with their signed preferences link
    (their data, its erasure), would reach a second person who never consented, whose
    bounce, complaint or unsubscribe matches no customer's address. So: one ``@`` with
    text either side, no whitespace or other non-printable character, none of ``, ; < > ( )
    [ ] " \\ :``. Called for every customer a campaign decides on: C-speed checks only."""
    local, at, domain = value.rpartition("@")
    if not at or not local or not domain:
        return "is not an e-mail address"
    if "@" in local or EMAIL_SEPARATORS.search(value) or not value.isprintable():
        return (
            "is not one plain e-mail address (one per customer: no second @, whitespace, "
            'control character or any of , ; < > ( ) [ ] " \\ :)'
        )
    if any(part.startswith(".") or part.endswith(".") or ".." in part for part in (local, domain)):
        # RFC 5321's dot-atoms; "a@example.test." reaches a@example.test's mailbox, and an
        # erasure's tombstone of the address would not know it
        return "is not an e-mail address: a dot at the start or end of either part, or two dots"
    return None


def price_problem(value: float) -> str | None:
    """Why a price cannot be ``value``, or None: it has more decimals than the store keeps
    (``PRICE_DECIMALS``). PostgreSQL rounds it and SQLite keeps it, so ``0.00004`` was a
    purchase on one and a free line (an adjustment, left out of every figure) on the other,
    and a price's figures differed by store. A float's own noise is no decimal: a shop's
    JavaScript sends 4.35 × 100 as ``434.99999999999994``, which is 435."""
    if abs(round(value, PRICE_DECIMALS) - value) <= 1e-9 * abs(value):
        return None
    return f"has more than {PRICE_DECIMALS} decimals (prices are kept to {PRICE_DECIMALS})"


def future_problem(value: datetime, now: datetime) -> str | None:
    """Why an instant that has happened (a consent, a change) cannot be ``value``, or None:
    it lies past ``now`` by more than the clocks' skew."""
    return "lies in the future" if value > now + CLOCK_SKEW else None


def read_json(
    body: bytes, object_pairs_hook: Callable[[list[tuple[str, Any]]], Any] | None = None
) -> Any:
    """A request body's JSON document; a ValueError saying what is wrong (never quoting
    the body): not JSON, where; a number with more digits than Python converts (4,300, its
    guard against quadratic parsing); nesting deeper than the parser's stack; whatever
    ``object_pairs_hook`` refuses with a ValueError starting "the body" (a key twice)."""
    try:
        return json.loads(body, object_pairs_hook=object_pairs_hook)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"the body is not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise ValueError("the body's JSON is nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("the body is not JSON: it is not UTF-8 text") from None
    except ValueError as exc:  # int("9" * 5000): Python's limit on digits
        if "digits" in str(exc):
            raise ValueError(
                f"the body holds a number too long to read (more than "
                f"{sys.get_int_max_str_digits()} digits)"
            ) from None
        raise ValueError(
            str(exc) if str(exc).startswith("the body") else "the body is not JSON"
        ) from None


def birthday_problem(value: date, now: datetime) -> str | None:
    """Why ``value`` cannot be a birthday, or None: before :data:`BIRTHDAY_MIN`, or after
    the date of ``now`` anywhere on Earth."""
    if value < BIRTHDAY_MIN:
        return f"is before {BIRTHDAY_MIN.isoformat()}"
    if value > (now.astimezone(UTC) + _EARTH_AHEAD).date():
        return "lies in the future"
    return None


def _bound(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"


class ConsentBasis(StrEnum):
    """Why we may send marketing email to someone (UWG §7 / GDPR)."""

    DOUBLE_OPT_IN = "double_opt_in"
    EXISTING_CUSTOMER = (
        "existing_customer"  # UWG §7(3): own similar products, opt-out in every mail
    )
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    email: str | None
    first_name: str | None = None
    locale: str = FALLBACK_LOCALE
    time_zone: str | None = None
    country: str | None = None
    birthday: date | None = None
    consent_basis: ConsentBasis = ConsentBasis.NONE
    consent_at: datetime | None = None
    consent_source: str | None = None
    unsubscribed_at: datetime | None = None
    objected_to_profiling: bool = False
    erased_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Item:
    id: str
    title: str
    category: str
    price: float
    in_stock: bool = True
    url: str | None = None
    image_url: str | None = None
    is_service: bool = False


@dataclass(frozen=True, slots=True)
class Purchase:
    """One order line. Returns are lines with ``is_return`` (and negative quantity)."""

    order_id: str
    line_no: int
    customer_id: str | None
    item_id: str
    quantity: int
    unit_price: float
    ordered_at: datetime
    is_return: bool = False

    @property
    def is_purchase(self) -> bool:
        """A real purchase line: not a return, not an adjustment (DESIGN.md §KPIs)."""
        return not self.is_return and self.quantity > 0 and self.unit_price > 0


@dataclass(frozen=True, slots=True)
class BodyTemplate:
    """An e-mail body still to be rendered: template names and the template context.

    Campaign runs enqueue this instead of the rendered HTML and text: rendering is the most
    expensive step of a send, and whoever delivers the e-mail renders it, so every delivering
    process (and every worker) shares that work (see ``store.outbox`` and
    ``delivery.deliverer``). The context is plain JSON data, the documented template context
    (``campaigns.context``, README.md §The template context).

    ``subject``: the subject line as written (a Jinja string), rendered with the body from
    the same context: the offers it reads are those that go out (an item bought while the
    e-mail waited is left out of both, ``store.outbox``). None for an e-mail queued before
    subjects were rendered at delivery: its subject was rendered when it was queued.
    """

    html: str
    text: str
    context: Mapping[str, Any]
    subject: str | None = None


@dataclass(frozen=True, slots=True)
class OutgoingEmail:
    """One e-mail on its way to a provider; ``send_key`` makes it unique.

    ``template`` is set while the body is not rendered yet (``html`` and ``text`` are
    empty then); providers only ever see rendered e-mails.
    """

    send_key: str
    to: str
    subject: str
    html: str
    text: str
    headers: tuple[tuple[str, str], ...] = ()
    campaign: str = ""
    template: BodyTemplate | None = None

    def rendered(self, html: str, text: str, subject: str | None = None) -> OutgoingEmail:
        """This e-mail with its body (and ``subject``, when given) rendered. Built field by
        field, not by ``dataclasses.replace``, which looks the fields up again on every call:
        a delivering process renders every e-mail of a run (1.8 µs saved of 3 each)."""
        return OutgoingEmail(
            self.send_key,
            self.to,
            self.subject if subject is None else subject,
            html,
            text,
            self.headers,
            self.campaign,
        )


class SendStatus(StrEnum):
    ACCEPTED = "accepted"  # the provider took it; message_id says under which id
    RETRY = "retry"  # this recipient, this time: try again later
    REJECTED = "rejected"  # never send to this recipient again (inactive, invalid)
    FAILED = "failed"  # this message cannot go out as it is (our sender, our body): no retry,
    # and the recipient is not to blame (not suppressed)


@dataclass(frozen=True, slots=True)
class SendResult:
    send_key: str
    status: SendStatus
    message_id: str | None = None
    error: str | None = None
    retry_after: float | None = None


def order_digest(lines: Iterable[Purchase]) -> str:
    """SHA-256 of an order's stored content (its lines, as the store keeps them), so a second
    delivery of the same order can be told apart from a different order under the same id.

    The customer is left out on purpose: an erasure takes the customer off the stored lines,
    and an order posted again after that is still the same order (and its digest must not
    identify anybody). Prices count as the store keeps them (:func:`stored_price`), so an
    order digested from stored lines (migration 0010's backfill) matches the order posted.

    Migration 0010 holds a frozen copy of this function: a change here needs a migration
    that recomputes ``orders.content_sha256``."""
    digest = hashlib.sha256()
    for line in sorted(lines, key=lambda p: p.line_no):
        digest.update(order_digest_part(line).encode())
    return digest.hexdigest()


def order_digest_part(line: Purchase) -> str:
    """What one line adds to :func:`order_digest`: an import computes it while it reads the
    line and digests the parts of an order later, in line order, without the lines."""
    price, at = stored_price(line.unit_price), line.ordered_at.astimezone(UTC).isoformat()
    return _digest_part(line.line_no, line.item_id, line.quantity, price, at, line.is_return)


def _digest_part(
    line_no: int, item_id: str, quantity: int, price: str, at: str, is_return: bool
) -> str:
    return f"{line_no}\x1f{item_id}\x1f{quantity}\x1f{price}\x1f{at}\x1f{int(is_return)}\x1e"


class OrderDigestParts:
    """:func:`order_digest_part` for a stream of lines, with the texts of prices and times
    kept (an item's lines repeat its price, an order's lines its time; rendering them was
    a fifth of an import's time). At most ``kept`` of each are kept."""

    def __init__(self, kept: int = 100_000) -> None:
        self.kept = kept
        self._prices: dict[float, str] = {}
        self._times: dict[datetime, str] = {}

    def __call__(self, line: Purchase) -> str:
        return self.of(
            line.line_no,
            line.item_id,
            line.quantity,
            line.unit_price,
            line.ordered_at,
            line.is_return,
        )

    def of(
        self,
        line_no: int,
        item_id: str,
        quantity: int,
        unit_price: float,
        ordered_at: datetime,
        is_return: bool,
    ) -> str:
        """The part of a line given by its values (no :class:`Purchase` built)."""
        price = self._prices.get(unit_price) or self._price(unit_price)
        at = self._times.get(ordered_at) or self._time(ordered_at)
        return _digest_part(line_no, item_id, quantity, price, at, is_return)

    def many(
        self,
        line_nos: list[int],
        item_ids: list[str],
        quantities: list[int],
        unit_prices: list[float],
        ordered_at: list[datetime],
        is_returns: list[bool],
    ) -> list[str]:
        """:meth:`of` of many lines, given column by column: each distinct price and time
        rendered once, the parts joined in C (what ``_digest_part`` writes)."""
        prices = {price: self._price(price) for price in set(unit_prices)}
        times = {at: self._time(at) for at in set(ordered_at)}
        return list(
            map(
                "\x1f".join,
                zip(
                    map(str, line_nos),
                    item_ids,
                    map(str, quantities),
                    map(prices.__getitem__, unit_prices),
                    map(times.__getitem__, ordered_at),
                    map(_PART_ENDS.__getitem__, is_returns),
                    strict=True,
                ),
            )
        )

    def _price(self, price: float) -> str:
        text = self._prices.get(price)
        if text is None:
            if len(self._prices) >= self.kept:
                self._prices.clear()
            text = self._prices[price] = stored_price(price)
        return text

    def _time(self, at: datetime) -> str:
        text = self._times.get(at)
        if text is None:
            if len(self._times) >= self.kept:
                self._times.clear()
            text = self._times[at] = at.astimezone(UTC).isoformat()
        return text


_PART_ENDS = {False: "0\x1e", True: "1\x1e"}  # a part's last field: int(is_return), the end


def stored_price(price: float) -> str:
    """A price as NUMERIC(14, 4) keeps it: PostgreSQL rounds the decimal the float prints as
    half away from zero (2.00005 is 2.0001; ``f"{2.00005:.4f}"`` is 2.0000, the binary
    value lying just below), and has no negative zero. SQLite keeps the float itself, which
    this maps to the same text."""
    rounded = Decimal(repr(float(price))).quantize(MONEY_QUANTUM, ROUND_HALF_UP)
    return str(rounded.copy_abs() if rounded.is_zero() else rounded)


def id_forms(customer_ids: Iterable[str]) -> tuple[str, ...]:
    """The ids as given and, for an id that is not ASCII, in Unicode's composed and
    decomposed forms (NFC, NFD): ``José`` typed on one system and exported decomposed by
    another is one id to a person. The forms a tombstone refuses (``tokens.id_hashes``),
    and so the rows a privacy request selects. ASCII ids (the usual) have one."""
    forms: dict[str, None] = {}
    for customer_id in customer_ids:
        forms[customer_id] = None
        if not customer_id.isascii():
            for form in ("NFC", "NFD"):
                forms[unicodedata.normalize(form, customer_id)] = None
    return tuple(forms)


def email_hash(address: str) -> str:
    """How suppressions know an address without keeping it: SHA-256 of the trimmed, lower-case
    address in Unicode's composed form (NFC, as RFC 6532 asks, and as erasure compares
    addresses: ``tokens.address_key``)."""
    return email_hashes(address)[0]


def email_hashes(address: str) -> tuple[str, ...]:
    """Every hash a suppression of ``address`` may be stored under, :func:`email_hash`'s
    first: for an address that is not ASCII also its decomposed form's and the form's as
    given (trimmed, lower-case), which suppressions written before addresses were composed
    hold. A complaint about ``Müller@…`` typed on one system holds for the same address
    exported decomposed (``u`` + U+0308) by another."""
    return tuple(hashlib.sha256(form.encode()).hexdigest() for form in address_forms(address))


def address_forms(address: str) -> tuple[str, ...]:
    """The forms one address is known by, trimmed and lower-case: composed (NFC, how it is
    compared and hashed now) first, then, for an address that is not ASCII, decomposed
    (NFD) and as given (what was hashed before addresses were composed). ASCII: one.

    An internationalised domain is one domain in either spelling (``müller.test`` and its
    IDNA form ``xn--mller-kva.test`` reach one mailbox): it is compared in Unicode, and its
    other spelling is one of its forms, so a tombstone, a suppression or a second account
    of the one spelling finds the other (it took an erased address back in its IDNA form)."""
    text = address.strip().lower()
    if text.isascii() and "xn--" not in text:
        return (text,)
    local, at, domain = text.rpartition("@")
    unicode_domain, ascii_domain = _domain_spellings(domain) if at else (domain, None)
    canonical = f"{local}{at}{unicode_domain}"
    composed, decomposed = (unicodedata.normalize(f, canonical) for f in ("NFC", "NFD"))
    spelt = (
        None if ascii_domain is None else f"{unicodedata.normalize('NFC', local)}@{ascii_domain}"
    )
    return tuple(f for f in dict.fromkeys((composed, decomposed, text, spelt)) if f is not None)


def _domain_spellings(domain: str) -> tuple[str, str | None]:
    """A domain in Unicode (IDNA labels ``xn--…`` decoded, lower-case) and in its ASCII
    (IDNA) spelling; a domain that is not valid IDNA as it is, with no other spelling."""
    try:
        unicode_domain = domain.encode("ascii").decode("idna") if domain.isascii() else domain
        ascii_domain = unicodedata.normalize("NFC", unicode_domain).encode("idna").decode("ascii")
    except UnicodeError:
        return domain, None
    return unicode_domain.lower(), ascii_domain.lower()


@dataclass
class DeliveryReport:
    """What one drain of the outbox did (the deliverer's answer, a campaign run's part)."""

    sent: int = 0
    rejected: int = 0  # permanent for the recipient: suppressed
    failed: int = 0  # out of attempts or refused for good
    retried: int = 0  # put back for a later attempt
    cancelled: int = 0
    reconciled: int = 0  # stale claims the provider had already accepted
    requests: int = 0
    paused: dict[str, str] = field(default_factory=dict)
    waiting: int = 0  # still queued for later (retry or quiet hours) when the drain ended

    def add(self, other: DeliveryReport) -> None:
        for name in (
            "sent",
            "rejected",
            "failed",
            "retried",
            "cancelled",
            "reconciled",
            "requests",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))


# --- contacts: what went out to a customer and what came back ----------------------------

# a customer's own choice on the preferences page: at most one marketing mail per …
CONTACT_HISTORY_DAYS = 35  # the least contact history a plan reads: a monthly preference and slack

PREFERENCE_PERIODS = {
    "daily": timedelta(days=1),
    "weekly": timedelta(days=7),
    "monthly": timedelta(days=30),
}


@dataclass(frozen=True, slots=True)
class Contact:
    """A marketing e-mail that went (or is going) out to the customer.

    Here, not in ``campaigns.caps``, because the store reads contact histories for the caps."""

    campaign: str
    at: datetime


# the contact events that put an address on the suppression list
SUPPRESSING = frozenset({"bounced", "complained", "unsubscribed"})


@dataclass(frozen=True, slots=True)
class Event:
    """A contact event from a provider's webhook (``delivery.webhooks`` reads them; the
    store records them and applies their consequences)."""

    provider: str
    kind: str  # delivered | bounced | soft_bounced | complained | unsubscribed | opened | clicked
    event_key: str
    at: datetime
    email: str | None = None
    message_id: str | None = None
    send_key: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Touch:
    """A send (treated) or a holdout decision (a would-have-been send) of one customer.

    The store reads touches; ``measure.attribution`` attributes orders to them."""

    campaign: str
    customer_id: str
    at: datetime
    holdout: bool
    variant: str | None = None
    key: str = ""  # send key, or run key for a holdout


# --- what the planner reads: the store's rows, before campaigns make views of them --------


K = TypeVar("K")


def returned_in_full(net: Mapping[K, float]) -> frozenset[K]:
    """The keys (items, or (customer, item) pairs) returned in full, of their net quantities:
    what the purchase lines bought less what the return lines took back (their quantity's
    absolute value; UCI's C-invoices are negative), over the customer's whole history,
    whichever orders hold the two (a return comes in an order of its own, days later). Net 0
    or less: an item the customer did not want, no longer "bought" (not offered again, not a
    reason, never due for replenishment), nor offered at all. Bought 3 and returned 1 is
    still bought; a return of an item bought before the data began is returned in full."""
    return frozenset(key for key, quantity in net.items() if quantity <= 0)


@dataclass(frozen=True, slots=True)
class CustomerOrder:
    """One order of a known customer as the store keeps it: when (its earliest line), its
    revenue and items (purchase lines only: no returns, adjustments or free lines)."""

    customer_id: str
    order_id: str
    at: datetime
    revenue: float
    items: frozenset[str]


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    """A customer with the choices that bound their contacts (preferences page, pauses)."""

    customer: Customer
    frequency_preference: str | None = None
    paused_until: datetime | None = None
    channel_email: bool = True  # False: the customer switched e-mail offers off
    # (preferences page, PUT /v1/customers/{id}); the planner mails them nothing


@dataclass(frozen=True, slots=True)
class PlanningRows:
    """Everything the store holds that a campaign run plans with, read at one instant;
    ``campaigns.audience`` turns it into the planner's views."""

    customers: list[CustomerRecord]
    orders: list[CustomerOrder]  # in the order first seen: histories sort them
    personal: dict[str, list[Any]]  # customer → top-N from the live model
    contacts: dict[str, tuple[Contact, ...]]  # customer → contacts, oldest first
    suppressed: frozenset[str]  # address hashes
    items: dict[str, Item]
    popular: list[list[Any]]  # the cold-start list: [item, score]
    # customer → engagement events stored up to the instant read, by kind (``review``); the
    # newsletter sign-up is no stored event: ``campaigns.loyalty.engagement`` reads it off
    # the customer's consent
    engagement: dict[str, dict[str, int]] = field(default_factory=dict)
    # customer → the items they returned in full (``returned_in_full``), left out of the
    # orders' items by ``campaigns.audience``
    returned: dict[str, frozenset[str]] = field(default_factory=dict)


# --- forecasts: computed in ``forecast``, kept in ``store.forecasts`` ---------------------

# p_active below the first: high churn risk; below the second: medium; else low. Here, not in
# ``forecast.outlook``: a campaign file's check reads them too (``campaigns.files``)
RISK_CUTS = (1 / 3, 2 / 3)


class CustomerForecast(NamedTuple):
    """One customer's forecast for a horizon: what the forecaster computes, the store keeps
    (one row per customer) and the API and ``recocamp forecast`` print (:meth:`as_dict`)."""

    customer_id: str
    expected_purchase_days: float
    p_active: float
    churn_risk: str
    expected_revenue: float
    lifetime_value: float
    next_purchase_by: date | None
    overdue_ratio: float | None

    def as_dict(self) -> dict[str, object]:
        by = self.next_purchase_by
        return {
            "customer_id": self.customer_id,
            "expected_purchase_days": round(self.expected_purchase_days, 4),
            "p_active": round(self.p_active, 4),
            "churn_risk": self.churn_risk,
            "expected_revenue": round(self.expected_revenue, 2),
            "lifetime_value": round(self.lifetime_value, 2),
            "next_purchase_by": None if by is None else by.isoformat(),
            "overdue_ratio": None if self.overdue_ratio is None else round(self.overdue_ratio, 3),
        }
