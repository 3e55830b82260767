"""The template context: everything a template can read, as a typed and documented contract.

Marketers write templates against these names, so they are a public interface like the CLI:

- each key is ``Annotated[type, "meaning"]``, and README's table "The template context" is
  :func:`markdown_table` of these classes (a test compares them);
- ``recocamp check`` refuses a template that reads a variable, or a key of one of these
  objects, that is not here (``render.check_template``), and renders every template with
  :func:`sample_context`, which is built from the same classes;
- :func:`context_for` builds the context of one e-mail from the planner's typed values.

TypedDicts, not dataclasses: Jinja reads mappings (``customer.first_name`` looks the key up),
and a deferred e-mail carries its context through the outbox as JSON (``domain.BodyTemplate``):
plain dicts in this key order keep that JSON byte for byte, also for rows queued before.
"""

from __future__ import annotations

import decimal
import functools
import math
import types
from collections.abc import Iterator, Mapping
from typing import (
    TYPE_CHECKING,
    Annotated,
    Literal,
    TypedDict,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

from jinja2 import pass_context
from jinja2.runtime import Context

from recocamp.domain import FALLBACK_LOCALE, LOCALES, ConsentBasis, Locale
from recocamp.settings import ShopSettings

if TYPE_CHECKING:  # annotations only: a delivering process renders without the planner,
    # the campaign files and what they import (numpy, scipy): a second less to start
    from recocamp.campaigns.files import Campaign
    from recocamp.campaigns.loyalty import Standing
    from recocamp.campaigns.offers import Offer
    from recocamp.campaigns.planner import CustomerView, Decision


class CustomerContext(TypedDict):
    id: Annotated[str, "the customer's id in the shop"]
    first_name: Annotated[
        str | None,
        "the first name; none when the shop does not know it "
        '(write `customer.first_name or "there"`)',
    ]
    locale: Annotated[Locale, "the language of the e-mail, the same as `locale`"]


class OfferContext(TypedDict):
    item_id: Annotated[str, "the item's id in the catalogue"]
    title: Annotated[str, "the item's name in the catalogue"]
    price: Annotated[
        str, "the price in the shop's currency, as the customer's language writes it (12,75 £)"
    ]
    discounted_price: Annotated[
        str | None, "the price after the campaign's discount, written so; none without a discount"
    ]
    discount_percent: Annotated[float | None, "the discount in percent; none without a discount"]
    url: Annotated[
        str, "the item's page: its URL in the catalogue, else `shop.base_url` + `/items/` + id"
    ]
    image_url: Annotated[str | None, "the item's picture; none when the catalogue has none"]
    why: Annotated[
        str,
        "why this item, in words, in the e-mail's language: in a campaign's e-mail `you "
        "bought this before`, `about time to restock`, `picked for you: you like <category>` "
        "(an item of the personal list from a category the customer bought; the catalogue's "
        "category, `_` written as a space, not translated), `picked for you` (one from a "
        "category they never bought) or `popular with other customers` (`because you bought "
        "…`, as in the sample, is the shop API's reason)",
    ]


class ShopContext(TypedDict):
    name: Annotated[str, "the shop's name (`[shop] name` in settings.toml)"]
    base_url: Annotated[str, "the shop's address, without a trailing slash"]
    currency: Annotated[str, "the currency of all prices (ISO 4217 code)"]


class CampaignContext(TypedDict):
    name: Annotated[str, "the campaign's name (its file name)"]
    description: Annotated[str, "the campaign's `description`; empty when it has none"]
    variant: Annotated[
        str | None, "the A/B variant this customer gets; none in a campaign without variants"
    ]


class LoyaltyContext(TypedDict):
    points: Annotated[int, "the customer's loyalty points; 0 when the customer has no standing"]
    tier: Annotated[str | None, "the loyalty tier; none below the lowest tier or without standing"]
    next_tier: Annotated[str | None, "the next tier up; none at the top tier or without standing"]
    points_to_next: Annotated[
        int | None, "points still missing to `next_tier`; none at the top tier or without standing"
    ]


class SurveyAnswer(TypedDict):
    score: Annotated[int, "the answer this link gives, 0 to 10"]
    url: Annotated[str, "the link that answers it (opens a page to confirm and comment)"]


class SurveyContext(TypedDict):
    id: Annotated[str, "the survey: the campaign and the day of the mailing"]
    scores: Annotated[list[SurveyAnswer], "the eleven answers, 0 to 10 in order"]


class TemplateContext(TypedDict):
    locale: Annotated[
        Locale,
        "the language of the e-mail: the customer's, else the shop's `default_locale`",
    ]
    customer: Annotated[CustomerContext, "the recipient"]
    offers: Annotated[
        list[OfferContext], "the items offered, best first; empty in a survey (`nps`) campaign"
    ]
    shop: Annotated[ShopContext, "the shop (`[shop]` in settings.toml)"]
    campaign: Annotated[CampaignContext, "the campaign that sends the e-mail"]
    loyalty: Annotated[LoyaltyContext, "the customer's loyalty standing"]
    reason: Annotated[
        str | None,
        "why the customer gets this e-mail, in words, for the footer; none unless given "
        "(campaign runs give none)",
    ]
    discount_percent: Annotated[
        float | None, "the campaign's `[offer] discount_percent`; none without a discount"
    ]
    unsubscribe_url: Annotated[
        str, "the link that unsubscribes the customer at once, signed for customer and campaign"
    ]
    preferences_url: Annotated[str, "the link to the customer's preferences and data, signed"]
    existing_customer_notice: Annotated[
        bool,
        "true when the customer gets offers as an existing customer (UWG §7(3)): the e-mail "
        "must then say that they may object (the layouts do)",
    ]
    survey: Annotated[
        SurveyContext | None,
        'the answer links of an NPS campaign (`type = "nps"`); none in every other campaign',
    ]


# -- the contract, read back (for check and for the README's table) --------------------------


@functools.cache
def fields(contract: type) -> Mapping[str, tuple[object, str]]:
    """A contract's keys in order: name → (type, meaning)."""
    found = {}
    for name, hint in get_type_hints(contract, include_extras=True).items():
        kind, meaning = get_args(hint)  # every key is Annotated[type, meaning]
        found[name] = (kind, str(meaning))
    return found


CONTEXT_KEYS = frozenset(fields(TemplateContext))


def without_none(kind: object) -> object:
    """``X`` for ``X | None``; any other type as it is."""
    if isinstance(kind, types.UnionType):
        rest = [k for k in get_args(kind) if k is not type(None)]
        return rest[0] if len(rest) == 1 else kind
    return kind


def contract_of(kind: object) -> type | None:
    """The contract of a value of type ``kind`` (``SurveyContext | None`` → SurveyContext), or
    None when it is no mapping of the contract (text, numbers, lists)."""
    inner = without_none(kind)
    return inner if isinstance(inner, type) and is_typeddict(inner) else None


SCALARS = {str: "text", bool: "true/false", int: "a whole number", float: "a number"}


def scalar_of(kind: object) -> type | None:
    """The Python type of a value of type ``kind`` that is text, a number or a flag
    (``str | None`` → str, ``Locale`` → str), else None."""
    inner = without_none(kind)
    if get_origin(inner) is Literal:
        inner = type(get_args(inner)[0])
    return inner if isinstance(inner, type) and inner in SCALARS else None


def element(kind: object) -> object | None:
    """The element type of a list type (``offers`` → :class:`OfferContext`), else None."""
    inner = without_none(kind)
    return get_args(inner)[0] if get_origin(inner) is list else None


# -- the sample that check and the docs use ---------------------------------------------------


def sample_context(locale: Locale = "en") -> TemplateContext:
    """The whole context with example values: ``check`` renders every template with it, and
    the README's examples are its values (a fresh copy per call: tests change it)."""
    offer = OfferContext(
        item_id="22423",
        title="REGENCY CAKESTAND 3 TIER",
        price=money(12.75, "GBP", locale),
        discounted_price=money(11.48, "GBP", locale),
        discount_percent=10,
        url="https://shop.example.test/items/22423",
        image_url=None,
        why="because you bought JUMBO BAG RED RETROSPOT",
    )
    answers = [
        SurveyAnswer(score=n, url=f"https://shop.example.test/v1/feedback?token=t&score={n}")
        for n in range(11)
    ]
    return TemplateContext(
        locale=locale,
        customer=CustomerContext(id="12748", first_name="Anna", locale=locale),
        offers=[offer],
        shop=ShopContext(
            name="Demo Gift Shop", base_url="https://shop.example.test", currency="GBP"
        ),
        campaign=CampaignContext(
            name="winback", description="Win back lapsed customers", variant=None
        ),
        loyalty=LoyaltyContext(points=2300, tier="gold", next_tier="platinum", points_to_next=7700),
        reason="your last order was 75 days ago",
        discount_percent=10,
        unsubscribe_url="https://shop.example.test/u/token",
        preferences_url="https://shop.example.test/p/token",
        existing_customer_notice=True,
        survey=SurveyContext(id="nps/2026-01-15", scores=answers),
    )


# -- one e-mail's context ---------------------------------------------------------------------


def context_for(
    decision: Decision,
    view: CustomerView,
    campaign: Campaign,
    shop: ShopSettings,
    links: tuple[str, str],
    reason: str | None = None,
    *,
    survey: SurveyContext | None = None,
) -> TemplateContext:
    """The context of one decision's e-mail; ``links`` are the unsubscribe and preferences
    URLs, ``survey`` the answer links of an NPS campaign (see ``compose.survey_context``)."""
    customer = view.customer
    locale = _locale(customer.locale, shop.default_locale)
    base_url = str(shop.base_url).rstrip("/")
    return TemplateContext(  # this key order is the JSON of queued e-mails: keep it
        locale=locale,
        customer=CustomerContext(id=customer.id, first_name=customer.first_name, locale=locale),
        offers=[_offer(o, shop.currency, base_url, locale) for o in decision.offers],
        shop=ShopContext(name=shop.name, base_url=base_url, currency=shop.currency),
        campaign=CampaignContext(
            name=campaign.name, description=campaign.description, variant=decision.variant
        ),
        loyalty=_loyalty(view.standing),
        reason=reason,
        discount_percent=_number(campaign.offer.discount_percent),
        unsubscribe_url=links[0],
        preferences_url=links[1],
        existing_customer_notice=customer.consent_basis == ConsentBasis.EXISTING_CUSTOMER,
        survey=survey,
    )


@functools.lru_cache(maxsize=1 << 16)
def money(amount: float, currency: str, locale: str = FALLBACK_LOCALE) -> str:
    """``amount`` as ``locale``'s language writes money (CLDR, through Babel): 12,75 € in
    German and €12.75 in English, with the currency's own decimals (0 for JPY, 3 for BHD).
    By hand it was €12.75 in every language: a German reads "€1,234.50" as a decimal comma.
    Remembered: a catalogue repeats its prices, and Babel takes ~30 µs a call."""
    from babel.numbers import format_currency  # imported when a price is first written

    return format_currency(amount, currency, locale=locale)


def number(value: float, locale: str = FALLBACK_LOCALE) -> str:
    """A count or a share as ``locale``'s language writes it (CLDR, through Babel): 12,300
    and 12.5 in English, 12.300 and 12,5 in German; at most three decimals. Babel rounds
    in the thread's decimal context, 28 digits by default: a number of 25 digits or more
    raised ``InvalidOperation``; it gets the digits it needs (a template's numbers are
    bounded, ``[templates] max_int_bits``, and a float has at most 309 digits)."""
    from babel.numbers import format_decimal  # imported when a number is first written

    finite = isinstance(value, int) or math.isfinite(value)  # an int past a float's range too
    digits = len(str(int(abs(value)))) if finite else 0
    with decimal.localcontext() as context:
        context.prec = max(context.prec, digits + 10)
        return format_decimal(value, locale=locale)


@pass_context
def number_filter(context: Context, value: object) -> str:
    """The templates' ``number`` filter: :func:`number` in the e-mail's language (its
    ``locale``), so ``{{ loyalty.points|number }}`` reads 12.300 in German (the templates
    had replaced commas by hand)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"the number filter writes numbers, not {type(value).__name__}")
    locale = context.get("locale")
    return number(value, locale if locale in LOCALES else FALLBACK_LOCALE)


def _locale(wanted: str, default: Locale) -> Locale:
    """The customer's language where the templates have it, else the shop's."""
    return next((locale for locale in LOCALES if locale == wanted), default)


def _offer(offer: Offer, currency: str, base_url: str, locale: str) -> OfferContext:
    from recocamp.campaigns.offers import why_in  # the planner's side: numpy is loaded there

    discounted = offer.discounted_price
    return OfferContext(
        item_id=offer.item_id,
        title=offer.title,
        price=money(offer.price, currency, locale),
        discounted_price=money(discounted, currency, locale) if discounted else None,
        discount_percent=_number(offer.discount_percent),
        url=offer.url or f"{base_url}/items/{offer.item_id}",
        image_url=offer.image_url,
        why=why_in(offer.why, locale),
    )


def _loyalty(standing: Standing | None) -> LoyaltyContext:
    if standing is None:
        return LoyaltyContext(points=0, tier=None, next_tier=None, points_to_next=None)
    return LoyaltyContext(
        points=standing.points,
        tier=standing.tier,
        next_tier=standing.next_tier,
        points_to_next=standing.points_to_next,
    )


def _number(value: float | None) -> float | None:
    """``10.0`` reads as ``10`` in an e-mail."""
    return int(value) if value is not None and float(value).is_integer() else value


# -- the README's table -----------------------------------------------------------------------


def markdown_table() -> str:
    """README's "The template context" table: every key of the contract, its type, meaning
    and the sample's value (``x[]`` is each element of the list ``x``)."""
    lines = ["| variable | type | meaning | example |", "|---|---|---|---|"]
    sample = sample_context()
    for path, kind, meaning, example in _rows(TemplateContext, sample, ""):
        cells = (f"`{path}`", type_name(kind), meaning, _example(example))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _rows(
    contract: type, sample: Mapping[str, object], prefix: str
) -> Iterator[tuple[str, object, str, object]]:
    for name, (kind, meaning) in fields(contract).items():
        path, value = prefix + name, sample[name]
        yield path, kind, meaning, value
        item = element(kind)
        if item is not None and isinstance(value, list) and value:
            path, kind, value = path + "[]", item, value[0]
        nested = contract_of(kind)
        if nested is not None and isinstance(value, Mapping):
            yield from _rows(nested, value, path + ".")


def type_name(kind: object) -> str:
    """A type in a marketer's words: ``str | None`` → "text or none"."""
    inner = without_none(kind)
    name = _NAMES.get(inner)
    if name is None and get_origin(inner) is Literal:
        name = "text: " + " or ".join(f"`{v}`" for v in get_args(inner))
    if name is None:
        name = "list" if element(inner) is not None else "object"
    return name if inner is kind else f"{name} or none"


_NAMES: dict[object, str] = {str: "text", int: "whole number", float: "number", bool: "true/false"}


def _example(value: object) -> str:
    """A sample value as a template prints it (``none``, ``true``); objects and lists are
    the rows below theirs."""
    if isinstance(value, Mapping | list):
        return "(below)"
    if value is None or isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"
