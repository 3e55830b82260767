"""``recocamp preview`` of a customer the plan skips: the audience rule it names, with the
campaign's values and the customer's own, reads as the comparison that was made."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recocamp.cli import app
from recocamp.domain import ConsentBasis, Customer, CustomerForecast, Item, Purchase
from recocamp.store import forecasts as forecast_store
from recocamp.store.engine import make_engine
from recocamp.store.queries import insert_purchases, upsert_customers, upsert_items
from tests.conftest import NOW, ROOT

CAMPAIGN = """\
name = "lapsers"
legal_basis = ["double_opt_in"]

[schedule]
cron = "0 10 * * TUE"

[audience]
lapsed_days = [60, 180]
min_orders = 2
min_spend = 20

[offer]
items = 1

[template]
subject = { en = "Hi", de = "Hallo" }
html = "winback.html"
text = "winback.txt"
"""

# customer: days before NOW of each order (9.50 each)
ORDERS = {"a": (100.0, 59.97), "b": (100.0,), "c": (100.0, 80.0)}


@pytest.fixture
def shop(cli_store: CliRunner, tmp_path: Path) -> CliRunner:
    (tmp_path / "campaigns").mkdir()
    (tmp_path / "campaigns" / "lapsers.toml").write_text(CAMPAIGN, encoding="utf-8")
    shutil.copytree(ROOT / "templates", tmp_path / "templates")
    people = [
        Customer(
            cid,
            f"{cid}@example.test",
            "Kim",
            "en",
            "Europe/London",
            consent_basis=ConsentBasis.DOUBLE_OPT_IN,
            consent_at=NOW - timedelta(days=400),
        )
        for cid in ORDERS
    ]
    lines = [
        Purchase(f"o-{cid}-{n}", 1, cid, "i1", 1, 9.5, NOW - timedelta(days=days))
        for cid, ago in ORDERS.items()
        for n, days in enumerate(ago)
    ]
    engine = make_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    with engine.begin() as connection:
        upsert_customers(connection, people, NOW)
        upsert_items(connection, [Item("i1", "Tea", "kitchen", 9.5)], NOW)
        insert_purchases(connection, lines, None)
    engine.dispose()
    return cli_store


@pytest.mark.parametrize(
    ("customer", "said"),
    [
        # 59.97 days: not yet 60, and "60.0 days ago" said it was
        ("a", "lapsed_days = [60, 180], the customer's last order was 59.97 days ago)"),
        # the rule is min_orders/max_orders: "orders = null" named a key that does not exist
        ("b", "min_orders = 2, the customer has 1 order)"),
        ("c", "min_spend = 20.0, the customer has spent 19.00)"),
    ],
)
def test_preview_of_a_skip_names_the_rules_values_and_the_customers(
    shop: CliRunner, customer: str, said: str
) -> None:
    args = ["preview", "lapsers", "--customer", customer, "--as-of", NOW.isoformat()]
    result = shop.invoke(app, args)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stdout.split())
    assert f"customer {customer} would be skipped by lapsers: not_in_audience:" in flat
    assert said in flat, flat


PREDICTIVE = CAMPAIGN.replace('name = "lapsers"', 'name = "atrisk"').replace(
    "lapsed_days = [60, 180]\nmin_orders = 2\nmin_spend = 20", 'churn_risk = ["high"]'
)


def test_plan_shows_the_forecast_each_contact_was_chosen_by(
    shop: CliRunner, tmp_path: Path
) -> None:
    """The table's sample of contacts showed customers, offers and send times, and not the
    recorded reason's words: for a predictive campaign, which forecast chose them and on
    what figures was in the JSON alone."""
    (tmp_path / "campaigns" / "atrisk.toml").write_text(PREDICTIVE, encoding="utf-8")
    as_of = (NOW - timedelta(days=1)).date()
    version = forecast_store.ForecastVersion(
        "rhythm-v1", "rhythm", as_of, 90, 365, 3, None, NOW - timedelta(hours=9)
    )
    rows = [CustomerForecast(cid, 0.1, 0.2, "high", 1.0, 10.0, None, 1.5) for cid in sorted(ORDERS)]
    engine = make_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    with engine.begin() as connection:
        forecast_store.replace(connection, version, rows)
    engine.dispose()
    result = shop.invoke(app, ["plan", "atrisk", "--as-of", NOW.isoformat()])
    assert result.exit_code == 0, result.output
    flat = " ".join(" ".join(part.strip(" │┃") for part in result.stdout.splitlines()).split())
    assert f"forecast rhythm {as_of}: churn_risk=high (p_active 0.20" in flat, result.stdout


def test_preview_finds_a_customer_named_in_another_unicode_form(
    shop: CliRunner, tmp_path: Path
) -> None:
    """Ids are stored composed (files, the API, migration 0023); an operator pasting the id
    from another system's export, decomposed (``Zoe`` + U+0308), was told "no such
    customer" (exit 2) for a customer the plan decides for."""
    engine = make_engine(f"sqlite:///{tmp_path / 'shop.db'}")
    with engine.begin() as connection:
        upsert_customers(connection, [Customer("Zo\u00eb", "zoe@example.test")], NOW)
    engine.dispose()
    args = ["preview", "lapsers", "--customer", "Zoe\u0308", "--as-of", NOW.isoformat()]
    result = shop.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "would be skipped by lapsers" in " ".join(result.stdout.split())
