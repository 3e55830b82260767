"""Which items an e-mail or a widget offers: the candidate lists in order, the rules, the reasons.

Pure functions, checked directly with hand-made catalogues, so that every rule has a test that
fails when the rule changes (the API and planner tests reach these only through a model)."""

from __future__ import annotations

import pytest

from recocamp.campaigns.offers import (
    Candidates,
    Offer,
    Rules,
    Unscored,
    allowed,
    first_offerable,
    select,
    sources_for,
    why,
    why_in,
)
from recocamp.domain import Item
from recocamp.recommender.ranking import Mode

ITEMS = {
    "a": Item("a", "Apple", "fruit", 2.0),
    "b": Item("b", "Banana", "fruit", 1.0),
    "c": Item("c", "Cup", "kitchen", 8.0, url="https://x.test/c", image_url="https://x.test/c.png"),
    "d": Item("d", "Dish", "kitchen", 12.0),
    "gone": Item("gone", "Gone", "kitchen", 5.0, in_stock=False),
    "ship": Item("ship", "Shipping", "service", 4.95, is_service=True),
    "free": Item("free", "Free sample", "kitchen", 0.0),
}
NOTHING: frozenset[str] = frozenset()


def plain(sources: list[Candidates]) -> list[tuple[str, list[tuple[object, ...]], dict[str, str]]]:
    """The lists as plain values: source, entries, explanations."""
    return [(s.source, [tuple(e) for e in s.ranked], dict(s.because)) for s in sources]


def test_replenish_lists_due_then_personal_then_history_then_popular() -> None:
    sources = sources_for(
        Mode.REPLENISH,
        [["c", 0.9]],
        [["d", 0.5]],
        frozenset({"b", "a"}),
        due=("b",),
        because={"c": "Apple"},
    )
    assert plain(sources) == [
        ("due", [("b", 1.0)], {}),
        ("personal", [("c", 0.9)], {"c": "Apple"}),
        ("history", [("a", 0.0), ("b", 0.0)], {}),  # sorted: no set order
        ("popular", [("d", 0.5)], {}),
    ]


@pytest.mark.parametrize("mode", [Mode.MIXED, Mode.DISCOVER])
def test_other_modes_list_personal_then_popular_and_ignore_due_and_history(mode: Mode) -> None:
    sources = sources_for(mode, [["c", 0.9]], [["d", 0.5]], frozenset({"a"}), due=("a",))
    assert plain(sources) == [("personal", [("c", 0.9)], {}), ("popular", [("d", 0.5)], {})]


@pytest.mark.parametrize("personal", [None, []])
def test_without_a_personal_list_only_popularity_is_left(
    personal: list[list[object]] | None,
) -> None:
    """None: the customer objected to profiling; []: the model has nothing for them."""
    sources = sources_for(Mode.MIXED, personal, [["d", 0.5]], NOTHING)
    assert plain(sources) == [("popular", [("d", 0.5)], {})]


def test_unscored_reads_items_with_score_zero() -> None:
    history = Unscored(["a", "b", "c"])
    assert len(history) == 3
    assert history[1] == ("b", 0.0)
    assert history[1:] == [("b", 0.0), ("c", 0.0)]
    assert list(history) == [("a", 0.0), ("b", 0.0), ("c", 0.0)]


def test_select_takes_count_items_over_the_sources_in_order_without_repeats() -> None:
    sources = [
        Candidates([["c", 0.9], ["missing", 0.8], ["gone", 0.7]], "personal", {"c": "Apple"}),
        Candidates([["c", 0.6], ["d", 0.5], ["b", 0.4], ["a", 0.3]], "popular"),
    ]
    offers = select(sources, ITEMS, Rules(count=2, discount_percent=10.0), NOTHING, NOTHING)
    assert offers == [
        Offer(
            "c",
            "Cup",
            "kitchen",
            8.0,
            0.9,
            "because you bought Apple",
            "https://x.test/c",
            "https://x.test/c.png",
            10.0,
            "personal",
        ),
        Offer(
            "d",
            "Dish",
            "kitchen",
            12.0,
            0.5,
            "popular with other customers",
            None,
            None,
            10.0,
            "popular",
        ),
    ]


def test_select_returns_fewer_when_the_sources_run_out() -> None:
    sources = [Candidates([["a", 1.0], ["ship", 0.9], ["a", 0.8]], "popular")]
    offers = select(sources, ITEMS, Rules(count=4), NOTHING, NOTHING)
    assert [(o.item_id, o.score, o.discount_percent) for o in offers] == [("a", 1.0, None)]


def test_an_item_seen_first_in_a_list_it_may_not_come_from_is_not_taken_later() -> None:
    """Replenish: the popular list's ``d`` (never bought) is refused and not offered again
    from a later list: an item is judged once, where it first appears."""
    sources = [
        Candidates([["d", 0.9]], "popular"),
        Candidates(Unscored(["a", "d"]), "history"),
    ]
    offers = select(sources, ITEMS, Rules(mode=Mode.REPLENISH), frozenset({"a"}), NOTHING)
    assert [(o.item_id, o.why, o.source) for o in offers] == [
        ("a", "you bought this before", "history")
    ]


def test_the_reason_follows_the_list_and_ownership() -> None:
    sources = [
        Candidates([["b", 1.0]], "due"),
        Candidates([["a", 0.9], ["c", 0.8]], "personal", {"c": "Banana"}),
        Candidates([["d", 0.1]], "personal"),
    ]
    offers = select(sources, ITEMS, Rules(), frozenset({"a", "b"}), frozenset({"fruit", "kitchen"}))
    assert [(o.item_id, o.why) for o in offers] == [
        ("b", "about time to restock"),
        ("a", "you bought this before"),
        ("c", "because you bought Banana"),
        ("d", "picked for you: you like kitchen"),
    ]


def test_a_personal_pick_says_they_like_its_category_only_when_they_bought_in_it() -> None:
    """A fruit buyer's personal pick from the kitchen read "picked for you: you like kitchen"
    in a discover e-mail: a category they never bought, given as the reason."""
    sources = [Candidates([["d", 0.9], ["b", 0.8]], "personal")]
    offers = select(
        sources, ITEMS, Rules(mode=Mode.DISCOVER), frozenset({"a"}), frozenset({"fruit"})
    )
    assert [(o.item_id, o.why) for o in offers] == [
        ("d", "picked for you"),
        ("b", "picked for you: you like fruit"),
    ]
    assert why_in("picked for you", "de") == "für Sie ausgewählt"


def test_why_names_the_category_in_words() -> None:
    item = Item("z", "Zester", "kitchen_tools", 3.0)
    kitchen = frozenset({"kitchen_tools"})
    assert why(item, "personal", False, None, kitchen) == "picked for you: you like kitchen tools"
    assert why(item, "personal", False, "", kitchen) == "picked for you: you like kitchen tools"
    assert why(item, "personal", False) == "picked for you"
    assert why(item, "popular", False, "Apple") == "popular with other customers"
    assert why(item, "history", True) == "you bought this before"


@pytest.mark.parametrize(
    ("rules", "bought", "categories", "expected"),
    [
        (Rules(), NOTHING, NOTHING, {"a", "b", "c", "d"}),
        (Rules(mode=Mode.REPLENISH), frozenset({"a", "c"}), NOTHING, {"a", "c"}),
        (Rules(mode=Mode.DISCOVER), frozenset({"a", "c"}), NOTHING, {"b", "d"}),
        (Rules(mode=Mode.MIXED), frozenset({"a", "c"}), NOTHING, {"a", "b", "c", "d"}),
        (Rules(categories=frozenset({"fruit"})), NOTHING, NOTHING, {"a", "b"}),
        (Rules(same_categories_only=True), NOTHING, frozenset({"kitchen"}), {"c", "d"}),
        (Rules(exclude_items=frozenset({"a"})), NOTHING, NOTHING, {"b", "c", "d"}),
        (Rules(exclude_categories=frozenset({"fruit"})), NOTHING, NOTHING, {"c", "d"}),
        (Rules(min_price=2.0), NOTHING, NOTHING, {"a", "c", "d"}),  # the bound is allowed
        (Rules(max_price=8.0), NOTHING, NOTHING, {"a", "b", "c"}),  # the bound is allowed
        (Rules(min_price=2.0, max_price=8.0), NOTHING, NOTHING, {"a", "c"}),
    ],
)
def test_the_rules(
    rules: Rules, bought: frozenset[str], categories: frozenset[str], expected: set[str]
) -> None:
    """Out of stock, service and unpriced items never pass, whatever the rules."""
    passed = {i for i, item in ITEMS.items() if allowed(item, rules, bought, categories)}
    assert passed == expected
    assert not allowed(None, rules, bought, categories)


def test_first_offerable_skips_unknown_unavailable_and_the_item_itself() -> None:
    ranked = [["c", 0.9], ["x", 0.8], ["gone", 0.7], ["ship", 0.6], ["free", 0.55], ["a", 0.5]]
    ranked += [["b", 0.4]]
    found = first_offerable(ranked, ITEMS, 2, leave_out="c")
    assert [(item.id, score) for item, score in found] == [("a", 0.5), ("b", 0.4)]
    assert [item.id for item, _ in first_offerable(ranked, ITEMS, 1)] == ["c"]


@pytest.mark.parametrize(
    ("price", "percent", "expected"),
    [(8.0, None, None), (8.0, 0.0, None), (8.0, 15.0, 6.8), (9.99, 15.0, 8.49)],
)
def test_discounted_price_is_in_cents(
    price: float, percent: float | None, expected: float | None
) -> None:
    """8.00 less 15 % is 6.80; 9.99 less 15 % is 8.4915, shown as 8.49."""
    offer = Offer("c", "Cup", "kitchen", price, 1.0, "", discount_percent=percent)
    assert offer.discounted_price == expected
