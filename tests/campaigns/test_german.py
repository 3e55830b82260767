"""What a German customer reads: every shipped campaign composed for a German customer of a
euro shop, through the real campaign files, templates and renderer, at a fixed time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from recocamp.campaigns import compose
from recocamp.campaigns.files import load
from recocamp.campaigns.loyalty import Standing
from recocamp.campaigns.offers import Offer
from recocamp.campaigns.planner import CustomerView, Decision, Outcome
from recocamp.campaigns.render import RenderedEmail, Renderer
from recocamp.campaigns.segments import History
from recocamp.domain import ConsentBasis, Customer
from recocamp.settings import Settings, ShopSettings

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
CAMPAIGNS = ("birthday", "cross_sell", "nps", "replenish", "vip_tier", "winback")
OFFERS = (
    Offer("k1", "Teekanne", "kitchen", 1234.5, 1.0, "because you bought Teetasse"),
    Offer("k2", "Tasse", "kitchen", 8.0, 0.9, "picked for you: you like kitchen"),
    Offer("k3", "Kerze", "home_decor", 4.5, 0.8, "popular with other customers"),
    Offer("k4", "Tee", "kitchen", 6.0, 0.7, "you bought this before"),
    Offer("k5", "Honig", "kitchen", 7.0, 0.6, "about time to restock"),
)


def german_mail(
    name: str,
    first_name: str | None = "Anna",
    basis: ConsentBasis = ConsentBasis.EXISTING_CUSTOMER,
    standing: Standing | None = None,
    variant: str | None = None,
    offer: dict[str, object] | None = None,
) -> RenderedEmail:
    """Campaign ``name`` as shipped (its ``[offer]`` changed by ``offer``), for a German
    customer of a euro shop."""
    campaign, _ = load(ROOT / "campaigns" / f"{name}.toml")
    if offer is not None:
        campaign = campaign.model_copy(update={"offer": campaign.offer.model_copy(update=offer)})
    customer = Customer("c1", "c1@example.test", first_name, "de", consent_basis=basis)
    view = CustomerView(customer, History(()), standing=standing)
    offers = () if campaign.is_survey else OFFERS
    decision = Decision(name, "c1", Outcome.SEND, "eligible", offers, variant=variant)
    settings = Settings(shop=ShopSettings(name="Teeladen", currency="EUR"))
    link = compose.links(settings, b"k" * 32, "c1", name, NOW)
    email = compose.compose(
        decision, view, campaign, settings, Renderer(ROOT / "templates"), link, f"{name}/c1"
    )
    return RenderedEmail(email.subject, email.html, email.text)


@pytest.mark.parametrize("name", [c for c in CAMPAIGNS if c != "nps"])
def test_why_an_item_is_offered_is_german(name: str) -> None:
    """The offers' reasons read "because you bought …" under German text."""
    email = german_mail(name)
    for part in (email.html, email.text):
        assert "because you bought" not in part and "popular with other customers" not in part
        assert "weil Sie Teetasse gekauft haben" in part
        assert "für Sie ausgewählt aus der Kategorie kitchen" in part
        assert "bei anderen Kunden beliebt" in part
        assert "Sie haben diesen Artikel schon einmal gekauft" in part
        assert "Zeit zum Nachkaufen" in part


@pytest.mark.parametrize("name", CAMPAIGNS)
def test_a_customer_without_a_first_name_is_greeted_in_plain_german(name: str) -> None:
    """Without a first name the greeting read "Hallo Kundin, Kunde," — no German greets so."""
    email = german_mail(name, first_name=None)
    assert email.text.startswith("Hallo,\n")
    assert "<p>Hallo,</p>" in email.html
    assert "Kundin, Kunde" not in email.html + email.text
    assert german_mail(name).text.startswith("Hallo Anna,\n")


def test_a_birthday_without_a_discount_says_a_whole_sentence() -> None:
    """Without a discount the birthday text broke off: "Als kleines Geschenk haben wir diese
    Auswahl:" (the verb was missing)."""
    text = german_mail("birthday", offer={"discount_percent": None}).text
    assert "Als kleines Geschenk haben wir diese Auswahl für Sie zusammengestellt:" in text


def test_the_loyalty_tier_and_points_are_written_as_german_writes_them() -> None:
    """The VIP mail read "Danke, dass Sie gold-Kundin/-Kunde sind" and "Sie haben die Stufe
    gold erreicht (12300 Punkte)": a German noun starts upper case, and 12.300 is grouped."""
    email = german_mail("vip_tier", standing=Standing(12300, "gold", "platinum", 7700))
    assert email.subject == "Danke, dass Sie Gold-Kundin/-Kunde sind"
    for part in (email.html, email.text):
        assert "Sie haben die Stufe Gold erreicht (12.300 Punkte)." in part
    shop_spelt = german_mail("vip_tier", standing=Standing(900, "VIP plus", None, None))
    assert shop_spelt.subject == "Danke, dass Sie VIP plus-Kundin/-Kunde sind"  # as it is


@pytest.mark.parametrize("name", ["birthday", "winback"])
def test_a_discount_with_decimals_has_a_decimal_comma(name: str) -> None:
    """A discount of 12.5 % read "12.5 % Rabatt" in German, where 12.5 is twelve thousand."""
    email = german_mail(name, offer={"discount_percent": 12.5})
    for part in (email.html, email.text):
        assert "12,5 % Rabatt" in part and "12.5" not in part
    assert "15 % Rabatt" in german_mail("birthday").text  # a whole number stays whole


@pytest.mark.parametrize("name", CAMPAIGNS)
def test_every_mail_to_an_existing_customer_says_they_may_object_at_no_cost(name: str) -> None:
    """UWG § 7 Abs. 3 Nr. 4: each mail under the existing-customer exception must say the
    customer may object at any time at no cost beyond the basic transmission tariffs (a guard:
    the layouts say so, and a campaign's own template must keep it)."""
    campaign, _ = load(ROOT / "campaigns" / f"{name}.toml")
    notice = (
        "Sie können der Verwendung Ihrer E-Mail-Adresse jederzeit widersprechen, ohne dass "
        "hierfür andere als die Übermittlungskosten nach den Basistarifen entstehen."
    )
    email = german_mail(name)
    if campaign.allows(ConsentBasis.EXISTING_CUSTOMER):
        assert notice in email.text and notice in email.html
    assert notice not in german_mail(name, basis=ConsentBasis.DOUBLE_OPT_IN).text


def test_the_objection_notice_is_a_paragraph_of_its_own_in_the_text_part() -> None:
    """The notice ran straight into "Abmelden: https://…" on the next line, without the
    blank line that sets paragraphs apart in plain text."""
    text = german_mail("winback").text
    assert "nach den Basistarifen entstehen.\n\nAbmelden: " in text
    assert "\n\n\n" not in text
