"""Forecast edges found in review: day boundaries in the shop's zone, the due date against
the overdue ratio, degenerate shops, and what the stored forecast lets through."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
import sqlalchemy as sa
from scipy import integrate, special

from recocamp import forecast as f
from recocamp.domain import Customer, Item, Purchase
from recocamp.settings import Settings, ShopSettings
from recocamp.store import queries

NOW = datetime(2012, 1, 1, tzinfo=UTC)
BERLIN = ZoneInfo("Europe/Berlin")


def _shop(engine: sa.Engine, lines: list[Purchase], people: list[Customer]) -> None:
    with engine.begin() as connection:
        queries.upsert_items(connection, [Item("i1", "Mug", "home", 10.0)], NOW)
        queries.upsert_customers(connection, people, NOW)
        queries.insert_purchases(connection, lines, None)


def test_an_order_at_the_shops_midnight_falls_on_the_day_it_starts(engine: sa.Engine) -> None:
    """A shop that records only dates stamps its orders at local midnight (22:00 or 23:00
    UTC): each is on the day that midnight starts, never the day before, every day of years."""
    first = date(2010, 1, 1)
    days = [first + timedelta(days=n) for n in range(0, 3 * 365, 1)]
    lines = [
        Purchase(f"o{n}", 1, "a", "i1", 1, 10.0, datetime.combine(d, datetime.min.time(), BERLIN))
        for n, d in enumerate(days)
    ]
    _shop(engine, lines, [Customer("a", "a@example.test")])
    settings = Settings().model_copy(update={"shop": ShopSettings(time_zone="Europe/Berlin")})
    purchases = f.purchase_days(engine, settings, f.day_number(date(2013, 1, 1)))
    assert [f.day_of(d) for d in purchases.day.tolist()] == days


def test_local_days_hold_where_a_zone_changes_its_offset_within_an_hour() -> None:
    """Tehran left summer time at 24:00 local (+04:30), 19:30 UTC, on 20 September 2008:
    19:45 UTC is 23:15 that day (+03:30); the offset at 19:00 UTC would make it 00:15 the
    next. Likewise St. John's, which changed at 00:01 local until 2011."""
    tehran, st_johns = ZoneInfo("Asia/Tehran"), ZoneInfo("America/St_Johns")
    instants = [
        (datetime(2008, 9, 20, 19, 45, tzinfo=UTC), tehran),
        (datetime(2008, 9, 20, 19, 15, tzinfo=UTC), tehran),  # 23:45 (+04:30)
        (datetime(2010, 11, 7, 2, 45, tzinfo=UTC), st_johns),  # 23:15 on 6 November (-03:30)
    ]
    for instant, zone in instants:
        (day,) = f.local_days(np.array([instant.timestamp()]), zone).tolist()
        assert f.day_of(day) == instant.astimezone(zone).date(), (instant, zone)


def test_a_customer_is_overdue_exactly_when_the_next_purchase_by_day_has_passed() -> None:
    """Gaps of half days: 'a' bought on days 0, 3 and 7 (mean gap 3.5), 'b' on 2, 4 and 7
    (2.5). At every as_of, an overdue ratio above 1 goes with a next_purchase_by before
    as_of, and one of at most 1 with a day on or after it (not rounded half to even: 7 + 3.5
    was due on day 11, so at as_of 11 'a' was overdue but 'not due before today')."""
    purchases = f.PurchaseDays.from_lines(
        np.array(["a", "a", "a", "b", "b", "b"]),
        np.array([0, 3, 7, 2, 4, 7]),
        np.ones(6),
    )
    for as_of in range(8, 16):
        for row in f.forecast(purchases, as_of, 90, "naive"):
            assert row.next_purchase_by is not None and row.overdue_ratio is not None
            passed = row.next_purchase_by < f.day_of(as_of)
            assert passed == (row.overdue_ratio > 1.0), (as_of, row)
    a, b = f.forecast(purchases, 11, 90, "naive")
    assert (a.next_purchase_by, b.next_purchase_by) == (f.day_of(10), f.day_of(9))


def _by_integration(model: f.BgNbd, t: float, x: float, t_x: float, T: float) -> float:
    """BG/NBD's conditional expectation (eq. 10) as the integral it stands for: alive with
    P(alive), then (1 − E[e^(−λpt)]) / p averaged over the dropout chance p ~ Beta(a, b + x)
    and λ ~ Gamma(r + x, α + T) — computed here by adaptive quadrature, independently."""
    c, n = t / (model.alpha + T), model.r + x

    def integrand(p: float) -> float:
        log_density = (
            (model.a - 1) * np.log(p)
            + (model.b + x - 1) * np.log1p(-p)
            - special.betaln(model.a, model.b + x)
        )
        return float(np.exp(log_density) * -np.expm1(-n * np.log1p(c * p)) / p)

    mean, _ = integrate.quad(integrand, 0.0, 1.0, limit=500, points=[1e-6, 1e-4, 1e-2])
    alive = model.p_alive(np.array([x]), np.array([t_x]), np.array([T]))[0]
    return float(mean * alive)


def test_bgnbd_expects_purchases_where_scipys_hypergeometric_gives_up() -> None:
    """A small shop's fit with r and alpha in the 10^4s and 10^5s (rates that hardly vary:
    the Poisson limit): scipy's hyp2f1 returns NaN in both of eq. 10's forms, and every
    customer's expectation became 0 — p_active 0, 'high' churn risk for all. The series,
    summed directly, gives the integral's value."""
    model = f.BgNbd(r=10164.876, alpha=160136.23, a=0.039135, b=58.233, log_likelihood=0.0)
    x, t_x, T = np.array([0.0, 1.0, 4.0]), np.array([0.0, 3.0, 40.0]), np.array([10.0, 14.0, 50.0])
    got = model.expected(90 / 7, x, t_x, T)
    wanted = [_by_integration(model, 90 / 7, *row) for row in zip(x, t_x, T, strict=True)]
    assert got == pytest.approx(wanted, rel=1e-6)
    assert (got > 0.5).all()


def test_a_sample_is_drawn_for_a_cutoff_before_1970() -> None:
    """Day numbers count from 1970-01-01 and the import takes years from 1900: a cutoff in
    the 1960s is negative, and numpy refuses a negative seed (ValueError, not a forecast) once
    a window holds more customers than a regression's sample."""
    ids = np.array([f"c{n:03d}" for n in range(40)])
    purchases = f.PurchaseDays.from_lines(ids, np.full(40, -3000), np.ones(40))
    history = f.History.at(purchases, -2000)
    chosen = history.fit_sample(10)
    assert isinstance(chosen, np.ndarray) and len(np.unique(chosen)) == 10
    again = f.History.at(purchases, -2000).fit_sample(10)
    assert isinstance(again, np.ndarray) and again.tolist() == chosen.tolist()
    assert history.sample(10).rows.tolist() == chosen.tolist()


def test_gamma_gamma_fits_alike_in_any_currency_unit() -> None:
    """The model is scale-equivariant: spends in rupiah rather than dollars (× 25,000) give
    the same p and q, v × 25,000 and the same expected spends in the new unit. The fit's
    bound on log v (±12: v ≤ 162,755) cut v off there, and p and q bent to make up for it."""
    rng = np.random.default_rng(3)
    x = rng.integers(1, 8, 3000).astype(np.float64)
    nu = rng.gamma(4.0, 1 / 15.0, 3000)
    spend = rng.gamma(6.0 * x, 1 / (nu * x))
    dollars, rupiah = f.GammaGamma.fit(x, spend), f.GammaGamma.fit(x, spend * 25_000)
    assert (rupiah.p, rupiah.q) == pytest.approx((dollars.p, dollars.q), rel=1e-4)
    assert rupiah.v == pytest.approx(dollars.v * 25_000, rel=1e-4)
    assert rupiah.expected_spend(x, spend * 25_000) == pytest.approx(
        dollars.expected_spend(x, spend) * 25_000, rel=1e-4
    )
