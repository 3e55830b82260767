"""Deterministic synthetic data: a demo shop when the UCI file is absent, and customer
records for the UCI shop (which has purchases but no people).

Everything is drawn from ``numpy.random.default_rng(seed)`` or from a stable hash of the
customer id, so the same seed gives the same shop on every machine. The synthetic shop has
the shape of real retail data: power-law item popularity and customer activity, yearly
seasonality with a Christmas peak, repeat purchases of favourite items, returns, guests.
All e-mail addresses are on ``example.test`` (RFC 2606): they can never reach a person.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from math import cos, pi

import numpy as np

from recocamp.data.catalog import CATEGORY_RULES
from recocamp.domain import ConsentBasis, Customer, Item, Purchase

END = datetime(2011, 12, 9, 18, 0, tzinfo=UTC)  # the UCI file's last day, so demos line up
FIRST_NAMES = (
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Emma",
    "Felix",
    "Greta",
    "Hannah",
    "Jonas",
    "Lena",
    "Lukas",
    "Marie",
    "Noah",
    "Olivia",
    "Paul",
    "Sophie",
    "Tom",
    "Ulla",
    "Yusuf",
    "Zoe",
)
COUNTRY_ZONES = {
    "Australia": "Australia/Sydney",
    "Austria": "Europe/Vienna",
    "Bahrain": "Asia/Bahrain",
    "Belgium": "Europe/Brussels",
    "Brazil": "America/Sao_Paulo",
    "Canada": "America/Toronto",
    "Channel Islands": "Europe/Jersey",
    "Cyprus": "Asia/Nicosia",
    "Czech Republic": "Europe/Prague",
    "Denmark": "Europe/Copenhagen",
    "EIRE": "Europe/Dublin",
    "Finland": "Europe/Helsinki",
    "France": "Europe/Paris",
    "Germany": "Europe/Berlin",
    "Greece": "Europe/Athens",
    "Hong Kong": "Asia/Hong_Kong",
    "Iceland": "Atlantic/Reykjavik",
    "Israel": "Asia/Jerusalem",
    "Italy": "Europe/Rome",
    "Japan": "Asia/Tokyo",
    "Lebanon": "Asia/Beirut",
    "Lithuania": "Europe/Vilnius",
    "Malta": "Europe/Malta",
    "Netherlands": "Europe/Amsterdam",
    "Norway": "Europe/Oslo",
    "Poland": "Europe/Warsaw",
    "Portugal": "Europe/Lisbon",
    "RSA": "Africa/Johannesburg",
    "Saudi Arabia": "Asia/Riyadh",
    "Singapore": "Asia/Singapore",
    "Spain": "Europe/Madrid",
    "Sweden": "Europe/Stockholm",
    "Switzerland": "Europe/Zurich",
    "USA": "America/New_York",
    "United Arab Emirates": "Asia/Dubai",
    "United Kingdom": "Europe/London",
}
GERMAN_SPEAKING = {"Germany", "Austria", "Switzerland"}


def _unit(seed: int, *parts: object) -> float:
    """A stable uniform number in [0, 1) from a seed and a key (same on every machine)."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True, slots=True)
class ConsentMix:
    double_opt_in: float = 0.55
    existing_customer: float = 0.30
    objected: float = 0.03


def customer_record(
    customer_id: str, country: str | None, first_seen: datetime | None, seed: int, mix: ConsentMix
) -> Customer:
    """The synthetic person behind a real customer id: e-mail on example.test, a first name,
    locale and time zone from the country, a birthday, a consent basis drawn with the seed."""
    draw = _unit(seed, customer_id, "consent")
    if draw < mix.double_opt_in:
        basis = ConsentBasis.DOUBLE_OPT_IN
    elif draw < mix.double_opt_in + mix.existing_customer:
        basis = ConsentBasis.EXISTING_CUSTOMER
    else:
        basis = ConsentBasis.NONE
    consent_at = (first_seen or END) if basis is not ConsentBasis.NONE else None
    birthday = date(1950, 1, 1) + timedelta(days=int(_unit(seed, customer_id, "bday") * 18_250))
    name = FIRST_NAMES[int(_unit(seed, customer_id, "name") * len(FIRST_NAMES))]
    return Customer(
        id=customer_id,
        email=f"customer-{customer_id}@example.test",
        first_name=name,
        locale="de" if country in GERMAN_SPEAKING else "en",
        time_zone=COUNTRY_ZONES.get(country or ""),
        country=country,
        birthday=birthday,
        consent_basis=basis,
        consent_at=consent_at,
        consent_source="demo-generator" if consent_at else None,
        objected_to_profiling=_unit(seed, customer_id, "objected") < mix.objected,
    )


@dataclass(frozen=True, slots=True)
class SyntheticShop:
    items: list[Item]
    purchases: list[Purchase]
    countries: dict[str, str]


def generate_shop(seed: int, customers: int, items: int, days: int) -> SyntheticShop:
    """A shop with ``customers`` customers and ``items`` products over ``days`` days."""
    rng = np.random.default_rng(seed)
    catalogue = _items(rng, items)
    countries = {
        f"{10000 + n}": (
            "United Kingdom"
            if rng.random() < 0.8
            else str(
                rng.choice(["Germany", "France", "EIRE", "Netherlands", "Spain", "Austria", "USA"])
            )
        )
        for n in range(customers)
    }
    purchases = list(_orders(rng, catalogue, list(countries), days))
    return SyntheticShop(catalogue, purchases, countries)


def _items(rng: np.random.Generator, count: int) -> list[Item]:
    prices = np.round(rng.lognormal(mean=1.2, sigma=0.8, size=count) + 0.19, 2)
    result = []
    for n in range(count):
        category, keywords = CATEGORY_RULES[n % len(CATEGORY_RULES)]
        keyword = keywords[(n // len(CATEGORY_RULES)) % len(keywords)]
        result.append(
            Item(
                id=f"{20000 + n}",
                title=f"{keyword.strip()} NO. {n}",
                category=category,
                price=float(prices[n]),
            )
        )
    result.append(Item(id="POST", title="POSTAGE", category="service", price=18.0, is_service=True))
    return result


def _season(days: int) -> np.ndarray:
    """Weight per day: a yearly wave peaking in late November (Christmas shopping)."""
    weights = []
    for offset in range(days):
        day = END - timedelta(days=days - 1 - offset)
        angle = 2 * pi * (day.timetuple().tm_yday - 330) / 365
        weights.append(1.0 + 0.6 * cos(angle) + (0.3 if day.weekday() < 5 else 0.0))
    array = np.array(weights)
    normalised: np.ndarray = array / array.sum()
    return normalised


def _orders(
    rng: np.random.Generator, catalogue: list[Item], customer_ids: list[str], days: int
) -> Iterator[Purchase]:
    products = [item for item in catalogue if not item.is_service]
    popularity = 1.0 / np.arange(1, len(products) + 1) ** 1.1
    popularity /= popularity.sum()
    activity = rng.pareto(1.5, size=len(customer_ids)) + 1.0
    activity /= activity.sum()
    day_weights = _season(days)
    history: dict[str, list[int]] = {}
    for number in range(len(customer_ids) * 5):
        guest = rng.random() < 0.1
        customer = None if guest else customer_ids[int(rng.choice(len(customer_ids), p=activity))]
        day = int(rng.choice(days, p=day_weights))
        at = min(  # the last day ends at END: nothing happens after the data's "now"
            END,
            datetime.combine(
                (END - timedelta(days=days - 1 - day)).date(),
                time(8 + int(rng.integers(0, 11)), int(rng.integers(0, 60))),
                tzinfo=UTC,
            ),
        )
        order_id = f"S{100000 + number}"
        lines = _pick_lines(rng, products, popularity, history.setdefault(customer or "", []))
        for line_no, (index, quantity) in enumerate(lines, start=1):
            item = products[index]
            yield Purchase(order_id, line_no, customer, item.id, quantity, item.price, at)
            if rng.random() < 0.02:  # a return a few days later, on its own credit note
                returned_at = at + timedelta(days=int(rng.integers(1, 14)))
                if returned_at <= END:  # a return after END has not happened yet
                    yield Purchase(
                        f"C{order_id}",
                        line_no,
                        customer,
                        item.id,
                        -quantity,
                        item.price,
                        returned_at,
                        is_return=True,
                    )
        if rng.random() < 0.5:
            yield Purchase(order_id, len(lines) + 1, customer, "POST", 1, 18.0, at)


def _pick_lines(
    rng: np.random.Generator, products: list[Item], popularity: np.ndarray, past: list[int]
) -> list[tuple[int, int]]:
    chosen: dict[int, int] = {}
    for _ in range(int(rng.integers(1, 9))):
        if past and rng.random() < 0.4:
            index = past[int(rng.integers(0, len(past)))]  # a favourite, bought again
        else:
            index = int(rng.choice(len(products), p=popularity))
        chosen[index] = chosen.get(index, 0) + int(rng.integers(1, 13))
    past.extend(index for index in chosen if index not in past)
    return sorted(chosen.items())
