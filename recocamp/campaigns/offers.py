"""Offers, pure: candidate items with scores × business rules → ranked offers with reasons.

The same function serves the campaign planner and the shop API, so an e-mail and a widget
never disagree. Candidates come first from the customer's personal list (the recommender's
top-N cache), then from the recent-popularity list; rules drop what may not be offered:
service items, items out of stock or without a price, items the customer returned in full
(``segments.History.returned``), the offer mode (replenish: bought before; discover: never
bought), category and price filters, exclusions, and — for
customers who receive mail under the existing-customer exception (UWG §7(3)) — anything
outside the categories they bought.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from recocamp.domain import FALLBACK_LOCALE, Item
from recocamp.recommender.ranking import Mode


@dataclass(frozen=True, slots=True)
class Rules:
    mode: Mode = Mode.MIXED
    count: int = 4
    categories: frozenset[str] = frozenset()
    min_price: float | None = None
    max_price: float | None = None
    exclude_items: frozenset[str] = frozenset()
    exclude_categories: frozenset[str] = frozenset()
    discount_percent: float | None = None
    same_categories_only: bool = False  # UWG §7(3): similar products only


@dataclass(frozen=True, slots=True)
class Offer:
    item_id: str
    title: str
    category: str
    price: float
    score: float
    why: str
    url: str | None = None
    image_url: str | None = None
    discount_percent: float | None = None
    source: str = "popular"  # the candidate list it came from (see Candidates.source)

    @property
    def discounted_price(self) -> float | None:
        if not self.discount_percent:
            return None
        return round(self.price * (1 - self.discount_percent / 100), 2)


@dataclass(frozen=True, slots=True)
class Candidates:
    """Scored item ids from one source, and how to explain an item picked from it:
    ``because`` names, per personal item, the bought item it is most similar to."""

    ranked: Sequence[Sequence[object]]  # [[item_id, score], ...]
    source: str  # "personal" | "popular" | "due" | "history"
    because: Mapping[str, str] = field(default_factory=dict)  # item id → a bought item's title


def offerable(item: Item | None) -> bool:
    """Whether an item may be shown at all, whatever the rules: in the catalogue, in stock,
    not a service item (shipping, fees), priced (a line at price 0 is an adjustment, not a
    purchase: an item at 0 — an items file's, or one an online-retail import saw only in
    returns and free lines — cannot be sold as offered). The offers, the API's similar items
    and the command line's ``similar``/``recommend`` all leave out the others."""
    return item is not None and item.in_stock and not item.is_service and item.price > 0


def first_offerable(
    ranked: Iterable[Sequence[Any]], catalogue: Mapping[str, Item], n: int, leave_out: str = ""
) -> list[tuple[Item, float]]:
    """The first ``n`` offerable items of ``[item_id, score]`` entries, but ``leave_out``
    (the item whose similar items these are)."""
    found: list[tuple[Item, float]] = []
    for item_id, score in ranked:
        item = catalogue.get(str(item_id))
        if item is not None and offerable(item) and item.id != leave_out:
            found.append((item, float(score)))
            if len(found) == n:
                break
    return found


def similar_pool(n: int) -> int:
    """How many similar items to score for ``n`` offerable ones (some are out of stock)."""
    return n * 4 + 10


def allowed(
    item: Item | None, rules: Rules, bought: frozenset[str], categories: frozenset[str]
) -> bool:
    if item is None or not offerable(item):
        return False
    if item.id in rules.exclude_items or item.category in rules.exclude_categories:
        return False
    owned = item.id in bought
    if (rules.mode is Mode.REPLENISH and not owned) or (rules.mode is Mode.DISCOVER and owned):
        return False
    if rules.categories and item.category not in rules.categories:
        return False
    if rules.same_categories_only and item.category not in categories:
        return False
    if rules.min_price is not None and item.price < rules.min_price:
        return False
    return rules.max_price is None or item.price <= rules.max_price


# Why an item is offered, in each language: ``why`` writes the English, which the store,
# the API and the logs keep; ``why_in`` writes it in the customer's language for an e-mail or
# a page (a German e-mail read "because you bought …" under German text). The popularity
# list counts the buyers of ``recent_popularity_days`` (90 by default): "popular this week"
# said of an item last sold weeks ago was not why it was offered.
WHY: dict[str, dict[str, str]] = {
    FALLBACK_LOCALE: {
        "owned": "you bought this before",
        "due": "about time to restock",
        "because": "because you bought {item}",
        "category": "picked for you: you like {category}",
        "picked": "picked for you",
        "popular": "popular with other customers",
    },
    "de": {
        "owned": "Sie haben diesen Artikel schon einmal gekauft",
        "due": "Zeit zum Nachkaufen",
        "because": "weil Sie {item} gekauft haben",
        "category": "für Sie ausgewählt aus der Kategorie {category}",
        "picked": "für Sie ausgewählt",
        "popular": "bei anderen Kunden beliebt",
    },
}


def why(
    item: Item,
    source: str,
    owned: bool,
    because: str | None = None,
    categories: frozenset[str] = frozenset(),
) -> str:
    """The English reason for offering ``item`` from ``source`` to a customer who bought
    ``categories``. "You like {category}" only for a category they bought: a discover
    e-mail told a customer who had bought kitchen things alone "picked for you: you like
    garden" of the model's garden pick."""
    words = WHY[FALLBACK_LOCALE]
    if owned:
        return words["owned"] if source != "due" else words["due"]
    if source == "personal":
        if because:
            return words["because"].format(item=because)
        if item.category in categories:
            return words["category"].format(category=item.category.replace("_", " "))
        return words["picked"]
    return words["popular"]


def _pattern(text: str) -> re.Pattern[str]:
    """An English reason as a pattern: its ``{name}`` fields match any text."""
    parts = re.split(r"\{(\w+)\}", text)
    spelled = "".join(
        re.escape(part) if n % 2 == 0 else f"(?P<{part}>.+)" for n, part in enumerate(parts)
    )
    return re.compile(spelled + r"\Z")


_ENGLISH = {key: _pattern(text) for key, text in WHY[FALLBACK_LOCALE].items()}


def why_in(reason: str, locale: str) -> str:
    """``reason`` (written by :func:`why`) in ``locale``'s words; a reason in no known form
    (an older version's) or a language without words stays as it is."""
    words = WHY.get(locale)
    if words is None or locale == FALLBACK_LOCALE:
        return reason
    for key, pattern in _ENGLISH.items():
        found = pattern.match(reason)
        if found:
            return words[key].format(**found.groupdict())
    return reason


class Unscored(Sequence[tuple[str, float]]):
    """Items as ``[item_id, score]`` entries of score 0, made as they are read: a wholesale
    buyer's history holds thousands of items, and :func:`select` reads a few."""

    def __init__(self, items: Sequence[str]) -> None:
        self.items = items

    @overload
    def __getitem__(self, index: int) -> tuple[str, float]: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, float]]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [(item, 0.0) for item in self.items[index]]
        return self.items[index], 0.0

    def __iter__(self) -> Iterator[tuple[str, float]]:
        return ((item, 0.0) for item in self.items)

    def __len__(self) -> int:
        return len(self.items)


def sources_for(
    mode: Mode,
    personal: Sequence[Sequence[object]] | None,
    popular: Sequence[Sequence[object]],
    owned: frozenset[str],
    due: Sequence[str] = (),
    because: Mapping[str, str] | None = None,
) -> list[Candidates]:
    """The candidate lists in the order the campaign planner uses them (``planner.offers_for``):
    items due for replenishment, the personal list, in replenish mode everything bought
    before, then recent popularity. ``personal`` is None for anybody who objected to
    profiling."""
    sources = []
    if mode is Mode.REPLENISH:
        sources.append(Candidates([[item, 1.0] for item in due], "due"))
    if personal:
        sources.append(Candidates(personal, "personal", {} if because is None else because))
    if mode is Mode.REPLENISH:
        sources.append(Candidates(Unscored(sorted(owned)), "history"))
    sources.append(Candidates(popular, "popular"))
    return sources


def select(
    sources: Iterable[Candidates],
    items: Mapping[str, Item],
    rules: Rules,
    bought: frozenset[str],
    categories: frozenset[str],
    returned: frozenset[str] = frozenset(),
) -> list[Offer]:
    """The first ``rules.count`` allowed items over the sources, in order, without repeats,
    never one the customer returned in full (``returned``, ``segments.History.returned``: a
    cached list learnt the purchase, and the customer knows the item, so not in discover
    mode either)."""
    chosen: list[Offer] = []
    seen: set[str] = set()
    for source in sources:
        for entry in source.ranked:
            item_id, score = str(entry[0]), float(entry[1])  # type: ignore[arg-type]
            if item_id in seen or item_id in returned:
                continue
            seen.add(item_id)
            item = items.get(item_id)
            if item is None or not allowed(item, rules, bought, categories):
                continue
            owned, because = item.id in bought, source.because.get(item.id)
            reason = why(item, source.source, owned, because, categories)
            chosen.append(
                Offer(
                    item.id,
                    item.title,
                    item.category,
                    item.price,
                    score,
                    reason,
                    item.url,
                    item.image_url,
                    rules.discount_percent,
                    source.source,
                )
            )
            if len(chosen) == rules.count:
                return chosen
    return chosen
