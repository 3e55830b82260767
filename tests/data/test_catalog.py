"""Catalogue rules: service codes, keyword categories, titles and prices from sale lines."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from recocamp.data.catalog import (
    OTHER_CATEGORY,
    SERVICE_CATEGORY,
    CatalogBuilder,
    SaleLine,
    build_catalog,
    categorize,
    is_service_code,
)

T0 = datetime(2011, 3, 1, 10, 0, tzinfo=UTC)


def line(
    item_id: str,
    description: str = "",
    unit_price: float = 1.0,
    days: int = 0,
    *,
    is_purchase: bool = True,
) -> SaleLine:
    return SaleLine(item_id, description, unit_price, T0 + timedelta(days=days), is_purchase)


# --- service codes --------------------------------------------------------------------------

SERVICE_CODES = [
    "POST",
    "DOT",
    "M",
    "D",
    "BANK CHARGES",
    "AMAZONFEE",
    "CRUK",
    "PADS",
    "S",
    "B",
    "C2",
    "gift_0001_40",
    "m",
]
PRODUCT_CODES = ["85123A", "71053", "84406B", "22423", "84879", "C20", "90214Y"]


@pytest.mark.parametrize("code", SERVICE_CODES)
def test_real_service_codes_are_services(code: str) -> None:
    assert is_service_code(code) is True


@pytest.mark.parametrize("code", PRODUCT_CODES)
def test_real_product_codes_are_not_services(code: str) -> None:
    assert is_service_code(code) is False


@pytest.mark.parametrize("code", [" POST ", "c2", "GIFT_0001_10", "gift_0001_20"])
def test_service_code_variants(code: str) -> None:
    assert is_service_code(code) is True


# --- categories -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("description", "category"),
    [
        # T-LIGHT (candles_lights) comes before HOLDER (storage) and HEART (home_decor)
        ("WHITE HANGING HEART T-LIGHT HOLDER", "candles_lights"),
        ("GLASS STAR FROSTED T-LIGHT HOLDER", "candles_lights"),
        ("WHITE METAL LANTERN", "candles_lights"),
        ("JUMBO BAG RED RETROSPOT", "bags"),
        ("LUNCH BAG RED RETROSPOT", "bags"),
        # CHRISTMAS (first rule) wins over PAPER (stationery)
        ("PAPER CHAIN KIT 50'S CHRISTMAS", "christmas"),
        ("PACK OF 72 RETROSPOT CAKE CASES", "party"),
        ("REGENCY CAKESTAND 3 TIER", "kitchen_dining"),
        ("JAM MAKING SET WITH JARS", "kitchen_dining"),
        ("POPPY'S PLAYHOUSE BEDROOM", "toys_kids"),
        ("SET 7 BABUSHKA NESTING BOXES", "storage"),
        ("ALARM CLOCK BAKELIKE PINK", "home_decor"),
        ("RED WOOLLY HOTTIE WHITE HEART.", "home_decor"),
        ("SET OF 3 COLOURED  FLYING DUCKS", OTHER_CATEGORY),
        ("HAND WARMER UNION JACK", OTHER_CATEGORY),
        ("", OTHER_CATEGORY),
    ],
)
def test_categorize_real_descriptions(description: str, category: str) -> None:
    assert categorize(description) == category


def test_categorize_ignores_case() -> None:
    assert categorize("wrap christmas village") == "christmas"
    assert categorize("jumbo bag red retrospot") == "bags"


# --- build_catalog --------------------------------------------------------------------------


def test_title_is_the_most_frequent_description() -> None:
    [item] = build_catalog(
        [
            line("85123A", "CREAM HANGING HEART T-LIGHT HOLDER"),
            line("85123A", "WHITE HANGING HEART T-LIGHT HOLDER"),
            line("85123A", "WHITE HANGING HEART T-LIGHT HOLDER"),
            line("85123A", "?"),
        ]
    )
    assert item.id == "85123A"
    assert item.title == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert item.category == "candles_lights"
    assert item.is_service is False


@pytest.mark.parametrize("order", [("ZEBRA", "APPLE"), ("APPLE", "ZEBRA")])
def test_title_tie_is_broken_alphabetically(order: tuple[str, str]) -> None:
    lines = [line("22423", description) for description in order * 2]
    [item] = build_catalog(lines)
    assert item.title == "APPLE"


def test_empty_descriptions_are_ignored_for_the_title() -> None:
    [item] = build_catalog(
        [line("71053", ""), line("71053", ""), line("71053", "WHITE METAL LANTERN")]
    )
    assert item.title == "WHITE METAL LANTERN"


def test_item_without_any_description_is_titled_by_its_code() -> None:
    [item] = build_catalog([line("71053", "", 3.39)])
    assert item.title == "71053"
    assert item.price == 3.39


def test_price_is_that_of_the_latest_purchase_line() -> None:
    lines = [
        line("22423", "REGENCY CAKESTAND 3 TIER", 12.75, days=5),
        line("22423", "REGENCY CAKESTAND 3 TIER", 10.95, days=9),
        line("22423", "REGENCY CAKESTAND 3 TIER", 14.95, days=1),
    ]
    [item] = build_catalog(lines)
    assert item.price == 10.95
    [reversed_item] = build_catalog(list(reversed(lines)))
    assert reversed_item.price == 10.95


def test_later_non_purchase_line_does_not_change_the_price() -> None:
    [item] = build_catalog(
        [
            line("84406B", "CREAM CUPID HEARTS COAT HANGER", 2.75, days=1),
            line("84406B", "CREAM CUPID HEARTS COAT HANGER", 3.25, days=2),
            # a return and an adjustment, both later than every purchase
            line("84406B", "CREAM CUPID HEARTS COAT HANGER", 4.15, days=3, is_purchase=False),
            line("84406B", "CREAM CUPID HEARTS COAT HANGER", 0.0, days=4, is_purchase=False),
        ]
    )
    assert item.price == 3.25


def test_item_with_only_non_purchase_lines_has_price_zero() -> None:
    [item] = build_catalog(
        [line("84879", "ASSORTED COLOUR BIRD ORNAMENT", 1.69, is_purchase=False)]
    )
    assert item.price == 0.0
    assert item.title == "ASSORTED COLOUR BIRD ORNAMENT"


def test_service_items_are_marked_and_categorised_as_service() -> None:
    items = build_catalog(
        [
            line("POST", "POSTAGE", 18.0),
            line("gift_0001_40", "Dotcomgiftshop Gift Voucher £40.00", 34.04),
            line("C2", "CARRIAGE", 50.0),
            line("85123A", "WHITE HANGING HEART T-LIGHT HOLDER", 2.55),
        ]
    )
    by_id = {item.id: item for item in items}
    assert set(by_id) == {"POST", "gift_0001_40", "C2", "85123A"}
    for code in ("POST", "gift_0001_40", "C2"):
        assert by_id[code].is_service is True
        assert by_id[code].category == SERVICE_CATEGORY
    # "CARRIAGE" would otherwise not be a service category: the code decides
    assert by_id["C2"].title == "CARRIAGE"
    assert by_id["85123A"].is_service is False
    assert by_id["85123A"].category == "candles_lights"


def test_catalog_is_sorted_by_item_id_with_one_item_each() -> None:
    items = build_catalog(
        [
            line("85123A", "WHITE HANGING HEART T-LIGHT HOLDER"),
            line("22423", "REGENCY CAKESTAND 3 TIER"),
            line("85123A", "WHITE HANGING HEART T-LIGHT HOLDER"),
            line("71053", "WHITE METAL LANTERN"),
        ]
    )
    assert [item.id for item in items] == ["22423", "71053", "85123A"]


def test_empty_input_gives_an_empty_catalog() -> None:
    assert build_catalog([]) == []


def test_lines_noted_column_by_column_make_the_catalogue_of_lines_noted_one_by_one() -> None:
    """``note_many`` (the importer's batches) is ``note`` over again: in time order (the
    fast way), out of order, with ties, non-purchase lines and empty descriptions."""
    rows = [
        ("A", "RED", 1.0, 0, True),
        ("B", "", 2.0, 0, True),
        ("A", "ROSE", 1.5, 1, True),
        ("A", "RED", 9.0, 1, False),
        ("C", "", 3.0, 2, False),
        ("B", "BLUE", 2.5, 2, True),
        ("A", "ROSE", 1.7, 2, True),
        ("B", "BLUE", 2.2, 1, True),  # older than B's newest: not the latest price
        ("A", "RED", 1.9, 2, True),  # a tie: the later line wins
    ]
    lines = [line(item, text, price, day, is_purchase=buy) for item, text, price, day, buy in rows]
    one_by_one = build_catalog(lines)
    for batches in ([lines], [lines[:4], lines[4:7], lines[7:]], [[one] for one in lines]):
        builder = CatalogBuilder()
        for batch in batches:
            builder.note_many(
                [one.item_id for one in batch],
                [one.description for one in batch],
                [one.unit_price for one in batch],
                [one.ordered_at for one in batch],
                [one.is_purchase for one in batch],
            )
        assert builder.items() == one_by_one
    assert [(item.id, item.title, item.price) for item in one_by_one] == [
        ("A", "RED", 1.9),
        ("B", "BLUE", 2.5),
        ("C", "C", 0.0),
    ]
