"""Synthetic data: a deterministic demo shop with the shape of retail data, and people."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from functools import cache

import pytest

from recocamp.data import synthetic
from recocamp.data.synthetic import COUNTRY_ZONES, ConsentMix, SyntheticShop, customer_record
from recocamp.domain import ConsentBasis

SEED = 20111209


@cache
def small_shop(seed: int = SEED) -> SyntheticShop:
    return synthetic.generate_shop(seed, customers=200, items=100, days=120)


# --- generate_shop --------------------------------------------------------------------------


def test_same_seed_gives_the_same_shop() -> None:
    first = synthetic.generate_shop(SEED, customers=200, items=100, days=120)
    again = synthetic.generate_shop(SEED, customers=200, items=100, days=120)
    assert first == again
    assert len(first.purchases) > 0


def test_different_seed_gives_a_different_shop() -> None:
    other = synthetic.generate_shop(SEED + 1, customers=200, items=100, days=120)
    assert other.purchases != small_shop().purchases


def test_sizes_follow_the_arguments() -> None:
    shop = small_shop()
    products = [item for item in shop.items if not item.is_service]
    assert len(products) == 100
    assert len({item.id for item in shop.items}) == len(shop.items)
    assert len(shop.countries) == 200
    assert {p.customer_id for p in shop.purchases} - {None} <= set(shop.countries)
    assert {p.item_id for p in shop.purchases} <= {item.id for item in shop.items}
    assert set(shop.countries.values()) <= set(COUNTRY_ZONES)


def test_there_are_returns_on_credit_notes() -> None:
    shop = small_shop()
    returns = [p for p in shop.purchases if p.is_return]
    assert returns
    for ret in returns:
        assert ret.quantity < 0
        assert ret.order_id.startswith("C")
        assert not ret.is_purchase
    # each return refers to a real order line of the same customer and item, made earlier
    lines = {(p.order_id, p.line_no): p for p in shop.purchases if not p.is_return}
    for ret in returns:
        bought = lines[(ret.order_id[1:], ret.line_no)]
        assert (bought.customer_id, bought.item_id) == (ret.customer_id, ret.item_id)
        assert bought.quantity == -ret.quantity
        assert bought.ordered_at < ret.ordered_at


def test_non_returns_are_purchases_on_normal_orders() -> None:
    for p in small_shop().purchases:
        if not p.is_return:
            assert p.order_id.startswith("S")
            assert p.is_purchase


def test_there_are_guest_lines_but_most_lines_belong_to_customers() -> None:
    purchases = small_shop().purchases
    guests = sum(p.customer_id is None for p in purchases)
    assert 0 < guests < len(purchases) / 2


def test_order_lines_are_unique() -> None:
    purchases = small_shop().purchases
    keys = [(p.order_id, p.line_no) for p in purchases]
    assert len(keys) == len(set(keys))


def test_some_customer_buys_the_same_item_in_two_orders() -> None:
    orders: dict[tuple[str, str], set[str]] = {}
    for p in small_shop().purchases:
        if p.is_purchase and p.customer_id is not None and p.item_id != "POST":
            orders.setdefault((p.customer_id, p.item_id), set()).add(p.order_id)
    assert any(len(ids) >= 2 for ids in orders.values())


def test_item_popularity_is_heavy_tailed() -> None:
    shop = small_shop()
    counts = Counter(p.item_id for p in shop.purchases if p.is_purchase and p.item_id != "POST")
    ordered = sorted(counts.values(), reverse=True)
    top_tenth = ordered[: max(1, len(ordered) // 10)]
    # uniform popularity would give about 10 %; a power law gives several times that
    assert sum(top_tenth) / sum(ordered) > 0.3


def test_timestamps_are_aware_utc_and_not_after_end() -> None:
    purchases = small_shop().purchases
    start = synthetic.END - timedelta(days=120)
    for p in purchases:
        assert p.ordered_at.tzinfo is not None
        assert p.ordered_at.utcoffset() == timedelta(0)
        assert start <= p.ordered_at <= synthetic.END, p


def test_end_is_the_uci_files_last_day() -> None:
    assert datetime(2011, 12, 9, tzinfo=UTC) <= synthetic.END < datetime(2011, 12, 10, tzinfo=UTC)


# --- customer_record ------------------------------------------------------------------------

FIRST_SEEN = datetime(2011, 2, 3, 12, 30, tzinfo=UTC)


def test_customer_record_is_deterministic() -> None:
    one = customer_record("12583", "France", FIRST_SEEN, SEED, ConsentMix())
    two = customer_record("12583", "France", FIRST_SEEN, SEED, ConsentMix())
    assert one == two
    # another seed draws another person for some of many ids
    others = [
        customer_record(str(n), "France", FIRST_SEEN, SEED + 1, ConsentMix()) for n in range(50)
    ]
    mine = [customer_record(str(n), "France", FIRST_SEEN, SEED, ConsentMix()) for n in range(50)]
    assert others != mine


def test_email_is_on_example_test() -> None:
    for n in range(100):
        customer = customer_record(str(12000 + n), "United Kingdom", None, SEED, ConsentMix())
        assert customer.email is not None
        assert customer.email.endswith("@example.test")
        assert customer.id == str(12000 + n)
    emails = {customer_record(str(n), None, None, SEED, ConsentMix()).email for n in range(100)}
    assert len(emails) == 100


@pytest.mark.parametrize(
    ("country", "locale"),
    [
        ("Germany", "de"),
        ("Austria", "de"),
        ("Switzerland", "de"),
        ("United Kingdom", "en"),
        ("France", "en"),
        ("USA", "en"),
        (None, "en"),
    ],
)
def test_locale_follows_the_country(country: str | None, locale: str) -> None:
    customer = customer_record("12347", country, None, SEED, ConsentMix())
    assert customer.locale == locale
    assert customer.country == country


@pytest.mark.parametrize(
    ("country", "zone"),
    [
        ("Germany", "Europe/Berlin"),
        ("United Kingdom", "Europe/London"),
        ("EIRE", "Europe/Dublin"),
        ("Australia", "Australia/Sydney"),
        ("Unspecified", None),
        (None, None),
    ],
)
def test_time_zone_comes_from_the_country(country: str | None, zone: str | None) -> None:
    customer = customer_record("12347", country, None, SEED, ConsentMix())
    assert customer.time_zone == zone
    if country in COUNTRY_ZONES:
        assert customer.time_zone == COUNTRY_ZONES[country]


def test_consent_shares_follow_the_mix() -> None:
    mix = ConsentMix(double_opt_in=0.5, existing_customer=0.3, objected=0.1)
    people = [customer_record(str(10000 + n), "Germany", None, SEED, mix) for n in range(2000)]
    shares = Counter(person.consent_basis for person in people)
    assert shares[ConsentBasis.DOUBLE_OPT_IN] / 2000 == pytest.approx(0.5, abs=0.04)
    assert shares[ConsentBasis.EXISTING_CUSTOMER] / 2000 == pytest.approx(0.3, abs=0.04)
    assert shares[ConsentBasis.NONE] / 2000 == pytest.approx(0.2, abs=0.04)
    objected = sum(person.objected_to_profiling for person in people)
    assert objected / 2000 == pytest.approx(0.1, abs=0.03)


def test_default_mix_shares() -> None:
    people = [customer_record(str(n), None, None, 7, ConsentMix()) for n in range(2000)]
    shares = Counter(person.consent_basis for person in people)
    assert shares[ConsentBasis.DOUBLE_OPT_IN] / 2000 == pytest.approx(0.55, abs=0.04)
    assert shares[ConsentBasis.EXISTING_CUSTOMER] / 2000 == pytest.approx(0.30, abs=0.04)
    assert shares[ConsentBasis.NONE] / 2000 == pytest.approx(0.15, abs=0.04)


def test_extreme_mixes_give_one_basis() -> None:
    everyone = ConsentMix(double_opt_in=1.0, existing_customer=0.0, objected=0.0)
    nobody = ConsentMix(double_opt_in=0.0, existing_customer=0.0, objected=1.0)
    for n in range(200):
        assert customer_record(str(n), None, None, SEED, everyone).consent_basis is (
            ConsentBasis.DOUBLE_OPT_IN
        )
        person = customer_record(str(n), None, None, SEED, nobody)
        assert person.consent_basis is ConsentBasis.NONE
        assert person.objected_to_profiling is True


def test_consent_at_is_set_exactly_when_there_is_a_basis() -> None:
    people = [
        customer_record(str(n), "Germany", FIRST_SEEN, SEED, ConsentMix()) for n in range(500)
    ]
    assert {person.consent_basis for person in people} == set(ConsentBasis)
    for person in people:
        if person.consent_basis is ConsentBasis.NONE:
            assert person.consent_at is None
            assert person.consent_source is None
        else:
            assert person.consent_at == FIRST_SEEN
            assert person.consent_source is not None


def test_consent_at_defaults_to_end_without_first_seen() -> None:
    mix = ConsentMix(double_opt_in=1.0, existing_customer=0.0, objected=0.0)
    assert customer_record("12347", None, None, SEED, mix).consent_at == synthetic.END


def test_birthday_and_first_name_are_plausible() -> None:
    for n in range(200):
        person = customer_record(str(n), None, None, SEED, ConsentMix())
        assert person.first_name in synthetic.FIRST_NAMES
        assert person.birthday is not None
        assert 1950 <= person.birthday.year <= 2000
