"""Frozen value types shared by every layer.

Nothing here does I/O. Amounts are floats in the shop's currency (the store keeps
them as NUMERIC); datetimes are aware UTC. ``customer_id`` is ``None`` for guest
orders: they count for item popularity and the guest-checkout rate, never for a person.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any


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
    locale: str = "en"
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
    process (and every worker) shares that work (see ``outbox`` and ``deliver``). The context
    is plain JSON data, the documented template context (README.md §Templates).
    """

    html: str
    text: str
    context: Mapping[str, Any]


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


class SendStatus(StrEnum):
    ACCEPTED = "accepted"  # the provider took it; message_id says under which id
    RETRY = "retry"  # this recipient, this time: try again later
    REJECTED = "rejected"  # never send to this recipient again (inactive, invalid)


@dataclass(frozen=True, slots=True)
class SendResult:
    send_key: str
    status: SendStatus
    message_id: str | None = None
    error: str | None = None
    retry_after: float | None = None


def email_hash(address: str) -> str:
    """How suppressions know an address without keeping it: SHA-256 of the trimmed lowercase."""
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()
