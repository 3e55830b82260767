"""Pure rules for the items catalogue: service codes and categories.

The UCI file has no categories, but consent rules (UWG §7(3): "similar products") and offer
filters work by category, so every product gets one from an ordered keyword table over its
description: the first rule with a keyword contained in the upper-cased description wins,
otherwise ``other``. It is reproducible, explainable to a marketer, and editable in one
place; clustering co-purchase vectors was the alternative, but its labels mean nothing to a
person reading a campaign file.

Service codes (postage, fees, vouchers: a code without a digit, ``C2``, ``gift_…``) count in
revenue but are never offered nor used for training (shared/data/README.md).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import compress, islice
from operator import le

from recocamp.domain import Item

SERVICE_CATEGORY = "service"
OTHER_CATEGORY = "other"

CATEGORY_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("christmas", ("CHRISTMAS", "XMAS", "ADVENT", "BAUBLE", "REINDEER", "SANTA", "SNOWFLAKE")),
    ("candles_lights", ("T-LIGHT", "TLIGHT", "CANDLE", "LANTERN", "LIGHT", "LAMP", "NIGHTLIGHT")),
    ("party", ("PARTY", "BUNTING", "BALLOON", "CAKE CASES", "PARTY BAG", "CONFETTI")),
    ("bags", ("BAG", "TOTE", "SHOPPER", "BACKPACK")),
    (
        "kitchen_dining",
        (
            "MUG",
            "CUP",
            "TEA",
            "PLATE",
            "BOWL",
            "CAKE",
            "BAKING",
            "JAR",
            "SPOON",
            "NAPKIN",
            "CUTLERY",
            "KITCHEN",
            "LUNCH BOX",
            "BOTTLE",
            "GLASS",
            "TRAY",
            "COASTER",
            "EGG",
            "JUG",
            "COOKIE",
            "CHOPSTICK",
            "SUGAR",
            "DINNER",
        ),
    ),
    (
        "stationery",
        (
            "CARD",
            "PAPER",
            "NOTEBOOK",
            "PENCIL",
            "PEN ",
            "WRAP",
            "STICKER",
            "TAPE",
            "ENVELOPE",
            "CALENDAR",
            "BOOK",
            "ERASER",
            "RULER",
            "STATIONERY",
            "DIARY",
        ),
    ),
    (
        "toys_kids",
        (
            "TOY",
            "DOLL",
            "GAME",
            "CHILDREN",
            "KIDS",
            "SPACEBOY",
            "TEDDY",
            "PLAYHOUSE",
            "JIGSAW",
            "SKIPPING",
            "CHILDS",
            "BABY",
            "PUZZLE",
            "CIRCUS",
            "PIRATE",
        ),
    ),
    ("garden", ("GARDEN", "PLANT", "FLOWER POT", "BIRD", "WATERING", "HERB", "SEED")),
    (
        "jewellery_accessories",
        (
            "NECKLACE",
            "BRACELET",
            "EARRING",
            "RING",
            "PURSE",
            "WALLET",
            "HAIR",
            "UMBRELLA",
            "BROOCH",
            "CHARM",
            "SCARF",
            "GLOVE",
            "BEAD",
        ),
    ),
    (
        "textiles",
        (
            "APRON",
            "TOWEL",
            "BLANKET",
            "HOT WATER BOTTLE",
            "CUSHION",
            "THROW",
            "QUILT",
            "OVEN GLOVE",
            "PICNIC",
        ),
    ),
    ("storage", ("BOX", "BASKET", "STORAGE", "TIN", "DRAWER", "CASE", "HOLDER", "RACK")),
    (
        "home_decor",
        (
            "FRAME",
            "CLOCK",
            "SIGN",
            "HANGER",
            "HOOK",
            "MIRROR",
            "DOORMAT",
            "VASE",
            "ORNAMENT",
            "WICKER",
            "HEART",
            "DOORSTOP",
            "DECORATION",
            "WREATH",
            "GARLAND",
            "CHIME",
            "PLAQUE",
            "FLOWER",
            "HANGING",
            "PHOTO",
            "WALL",
        ),
    ),
    ("bath_beauty", ("SOAP", "BATH", "LIP", "COMPACT", "MAKE UP", "BEAUTY", "PERFUME")),
)


def is_service_code(code: str) -> bool:
    """Postage, fees and vouchers: a code without a digit, ``C2``, or ``gift_…``."""
    stripped = code.strip()
    return (
        not any(char.isdigit() for char in stripped)
        or stripped.upper() == "C2"
        or stripped.lower().startswith("gift_")
    )


def categorize(description: str) -> str:
    """The first matching rule of :data:`CATEGORY_RULES`, else ``other``."""
    text = f" {description.upper()} "
    for category, keywords in CATEGORY_RULES:
        if any(keyword in text for keyword in keywords):
            return category
    return OTHER_CATEGORY


@dataclass(frozen=True, slots=True)
class SaleLine:
    """What the catalogue needs from one purchase line."""

    item_id: str
    description: str
    unit_price: float
    ordered_at: datetime
    is_purchase: bool


def build_catalog(lines: Iterable[SaleLine]) -> list[Item]:
    """Items from sale lines: title = most frequent description (ties: alphabetical),
    price = unit price of the latest purchase line, category from the title."""
    builder = CatalogBuilder()
    for line in lines:
        builder.add(line)
    return builder.items()


class CatalogBuilder:
    """:func:`build_catalog` one line at a time, for an import that streams its file: it
    holds the descriptions and the latest price per item, not the lines."""

    def __init__(self) -> None:
        self._described: Counter[tuple[str, str]] = Counter()  # (item, description): lines
        self._latest: dict[str, tuple[datetime, float]] = {}
        self._newest: datetime | None = None  # of the purchase lines noted

    def add(self, line: SaleLine) -> None:
        self.note(
            line.item_id, line.description, line.unit_price, line.ordered_at, line.is_purchase
        )

    def note(
        self,
        item_id: str,
        description: str,
        unit_price: float,
        ordered_at: datetime,
        is_purchase: bool,
    ) -> None:
        """:meth:`add` of a line given by its values (no SaleLine built)."""
        self._described[item_id, description] += 1
        if is_purchase:
            self._purchase(item_id, ordered_at, unit_price)

    def _purchase(self, item_id: str, ordered_at: datetime, unit_price: float) -> None:
        seen = self._latest.get(item_id)
        if seen is None or ordered_at >= seen[0]:
            self._latest[item_id] = (ordered_at, unit_price)
        if self._newest is None or ordered_at > self._newest:
            self._newest = ordered_at

    def note_many(
        self,
        item_ids: list[str],
        descriptions: list[str],
        unit_prices: list[float],
        ordered_at: list[datetime],
        is_purchases: list[bool],
    ) -> None:
        """:meth:`note` of many lines, given column by column, in C where it can: the
        descriptions counted at once; purchase lines in time order, none before the newest
        noted (a file in time order), each take their item's latest price, as :meth:`note`
        would have them do one by one (the later of two lines of the same time wins)."""
        self._described.update(zip(item_ids, descriptions, strict=True))
        items = list(compress(item_ids, is_purchases))
        if not items:
            return
        times = list(compress(ordered_at, is_purchases))
        prices = list(compress(unit_prices, is_purchases))
        if (self._newest is None or times[0] >= self._newest) and all(
            map(le, times, islice(times, 1, None))
        ):
            self._latest.update(zip(items, zip(times, prices, strict=True), strict=True))
            self._newest = times[-1]
            return
        for item_id, at, price in zip(items, times, prices, strict=True):
            self._purchase(item_id, at, price)

    def items(self) -> list[Item]:
        titles: dict[str, Counter[str]] = {}
        for (item_id, description), count in self._described.items():
            counts = titles.setdefault(item_id, Counter())
            if description:
                counts[description] += count
        return [
            _item(item_id, counts, self._latest.get(item_id, (None, 0.0))[1])
            for item_id, counts in sorted(titles.items())
        ]


def _item(item_id: str, counts: Counter[str], price: float) -> Item:
    title = min(counts, key=lambda d: (-counts[d], d)) if counts else item_id
    service = is_service_code(item_id)
    return Item(
        id=item_id,
        title=title,
        category=SERVICE_CATEGORY if service else categorize(title),
        price=price,
        is_service=service,
    )
