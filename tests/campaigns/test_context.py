"""The template context contract: sample, README table and outbox JSON cannot drift from it."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import pytest

from recocamp.campaigns import compose
from recocamp.campaigns.context import (
    TemplateContext,
    contract_of,
    element,
    fields,
    markdown_table,
    money,
    sample_context,
)
from recocamp.campaigns.files import Campaign
from recocamp.campaigns.loyalty import Standing
from recocamp.campaigns.offers import Offer
from recocamp.campaigns.planner import CustomerView, Decision, Outcome
from recocamp.campaigns.render import Renderer
from recocamp.campaigns.segments import History
from recocamp.domain import ConsentBasis, Customer, Locale, OutgoingEmail
from recocamp.settings import EspSettings, Settings
from recocamp.store import outbox
from tests.token_forms import v1_token

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
NOW = datetime(2024, 6, 4, 10, 0, tzinfo=UTC)


def contract_paths(contract: type, prefix: str = "") -> set[str]:
    """Every key of a contract and of the contracts inside it (``offers[].title``)."""
    found = set()
    for name, (kind, _) in fields(contract).items():
        path = prefix + name
        found.add(path)
        item = element(kind)
        if item is not None:
            path, kind = path + "[]", item
        nested = contract_of(kind)
        if nested is not None:
            found |= contract_paths(nested, path + ".")
    return found


def value_paths(value: Mapping[str, object], prefix: str = "") -> set[str]:
    """Every key of a context value, with each list's elements as ``[]``."""
    found = set()
    for name, inner in value.items():
        path = prefix + name
        found.add(path)
        if isinstance(inner, list):
            assert inner, f"{path}: the sample's lists show an element"
            path, inner = path + "[]", inner[0]
        if isinstance(inner, Mapping):
            found |= value_paths(inner, path + ".")
    return found


@pytest.mark.parametrize("locale", ["de", "en"])
def test_the_sample_has_every_key_of_the_contract_and_no_other(locale: Locale) -> None:
    expected = contract_paths(TemplateContext)
    assert value_paths(sample_context(locale)) == expected
    assert {"customer.first_name", "offers[].discounted_price", "survey.scores[].url"} <= expected


def test_every_key_says_what_it_is() -> None:
    contracts: list[type] = [TemplateContext]
    while contracts:
        for name, (kind, meaning) in fields(contracts.pop()).items():
            assert len(meaning) > 10 and "TODO" not in meaning, name
            nested = contract_of(element(kind) or kind)
            if nested is not None:
                contracts.append(nested)


def test_the_readme_table_is_the_contract() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### The template context\n", 1)[1].split("\n#", 1)[0]
    table = "\n".join(line for line in section.splitlines() if line.startswith("|")) + "\n"
    assert table == markdown_table(), (
        "README's table differs from the contract: paste the output of\n"
        "python -c 'from recocamp.campaigns.context import markdown_table as t; print(t())'"
    )
    listed = set(re.findall(r"^\| `([^`]+)` \|", table, re.MULTILINE))
    assert listed == contract_paths(TemplateContext)


# --- the outbox keeps a deferred e-mail's context as JSON: rows queued before still render --

OLD_WINBACK_ROW = (  # what the code before the contract packed (1,665 bytes of JSON)
    '{"headers":[["List-Unsubscribe","<http://127.0.0.1:8000/u/v1.eyJjIjoiYzEiLCJrIjoid2luY'
    "mFjayIsInAiOiJ1bnN1YnNjcmliZSIsImkiOjE3MTc0OTUyMDB9.WYlpFdla0EyVvkFcy0Kj0BtKidvB8UNjF5"
    "UsM-ES8IM>, <mailto:unsubscribe@example.test?subject=unsubscribe%20v1.eyJjIjoiYzEiLCJr"
    "Ijoid2luYmFjayIsInAiOiJ1bnN1YnNjcmliZSIsImkiOjE3MTc0OTUyMDB9.WYlpFdla0EyVvkFcy0Kj0BtKi"
    'dvB8UNjF5UsM-ES8IM>"],["List-Unsubscribe-Post","List-Unsubscribe=One-Click"],["X-Recoc'
    'amp-Send-Key","winback/c1/2024-06-04"]],"template":{"html":"winback.html","text":"winb'
    'ack.txt","context":{"locale":"de","customer":{"id":"c1","first_name":"Anna","locale":"'
    'de"},"offers":[{"item_id":"22423","title":"CAKESTAND","price":"€12.75","discounted_pri'
    'ce":"€11.47","discount_percent":10,"url":"https://shop.example.test/items/22423","imag'
    'e_url":null,"why":"because"},{"item_id":"x<1>","title":"Mug & Cup","price":"€8.00","di'
    'scounted_price":null,"discount_percent":null,"url":"https://x.test/m","image_url":"htt'
    'ps://x.test/i.png","why":"popular"}],"shop":{"name":"Demo Shop","base_url":"https://sh'
    'op.example.test","currency":"EUR"},"campaign":{"name":"winback","description":"Win bac'
    'k lapsed customers","variant":null},"loyalty":{"points":2300,"tier":"gold","next_tier"'
    ':"platinum","points_to_next":7700},"reason":null,"discount_percent":10,"unsubscribe_ur'
    'l":"http://127.0.0.1:8000/u/v1.eyJjIjoiYzEiLCJrIjoid2luYmFjayIsInAiOiJ1bnN1YnNjcmliZSI'
    'sImkiOjE3MTc0OTUyMDB9.WYlpFdla0EyVvkFcy0Kj0BtKidvB8UNjF5UsM-ES8IM","preferences_url":"'
    "http://127.0.0.1:8000/p/v1.eyJjIjoiYzEiLCJrIjoid2luYmFjayIsInAiOiJwcmVmZXJlbmNlcyIsImk"
    'iOjE3MTc0OTUyMDB9.HCRx2e_Io59NZg5iD9eixXxxHFQp34iLiNreb3HUrZY","existing_customer_noti'
    'ce":true,"survey":null}}}'
).encode()
OLD_NPS_ROW_SHA256 = "4e5ac24bd213db9214935e065205ca0e4b53228e1279e3edd579e3495a99cceb"


def queued(name: str) -> bytes:
    """A deferred e-mail of campaign ``name`` as the outbox stores it, packed by this code."""
    return outbox.pack(composed(name))


def composed(name: str) -> OutgoingEmail:
    """A deferred e-mail of campaign ``name``: a customer in a language the templates lack,
    an existing customer with a loyalty standing, an offer with and one without a discount
    (and HTML in its id and title)."""
    survey = name == "nps"
    campaign = Campaign(
        name=name,
        description="Win back lapsed customers",
        type="nps" if survey else "offers",
        schedule={"cron": "0 10 * * TUE"},
        offer={} if survey else {"discount_percent": 10.0},
        template={
            "subject": {"en": "Hi {{ customer.first_name }}"},
            "html": f"{name}.html",
            "text": f"{name}.txt",
        },
    )
    customer = Customer(
        "c1", "c1@example.test", "Anna", "fr", consent_basis=ConsentBasis.EXISTING_CUSTOMER
    )
    view = CustomerView(customer, History(()), standing=Standing(2300, "gold", "platinum", 7700))
    offers = (
        Offer("22423", "CAKESTAND", "kitchen", 12.75, 1.0, "because", discount_percent=10.0),
        Offer(
            "x<1>",
            "Mug & Cup",
            "kitchen",
            8.0,
            0.5,
            "popular",
            url="https://x.test/m",
            image_url="https://x.test/i.png",
        ),
    )
    decision = Decision(name, "c1", Outcome.SEND, "eligible", () if survey else offers)
    # the old rows carried a mailto (then the default, now only when configured)
    settings = Settings(esp=EspSettings(unsubscribe_mailto="unsubscribe@example.test"))
    link = v1_links(settings, name)
    return compose.compose(
        decision,
        view,
        campaign,
        settings,
        Renderer(TEMPLATES),
        link,
        f"{name}/c1/2024-06-04",
        defer_body=True,
    )


def v1_links(settings: Settings, campaign: str) -> compose.Links:
    """The links as ``compose.links`` made them when those rows were queued (first-format
    tokens, made by hand): a token is sealed with a random nonce since, and this test pins
    the row's bytes, not the tokens (``test_tokens``, ``test_compose``)."""
    base = str(settings.api.public_url).rstrip("/")

    def token(purpose: str, survey: str | None = None) -> str:
        claims: dict[str, object] = {"c": "c1", "k": campaign, "p": purpose}
        claims["i"] = int(NOW.timestamp())
        return v1_token(b"k" * 32, claims if survey is None else claims | {"s": survey})

    unsubscribe = token("unsubscribe")
    mailto = f"mailto:{settings.esp.unsubscribe_mailto}?subject=unsubscribe%20{unsubscribe}"
    return compose.Links(
        f"{base}/u/{unsubscribe}",
        f"{base}/p/{token('preferences')}",
        mailto,
        lambda survey: f"{base}/v1/feedback?token={token('feedback', survey)}",
    )


# German prices are written as German writes them since (Babel: "12,75 €", no-break space)
GERMAN_PRICES = {"€12.75": "12,75\u00a0€", "€11.47": "11,47\u00a0€", "€8.00": "8,00\u00a0€"}


# the subject line as written travels after the context since it is rendered at delivery
SUBJECT_LINE = b',"subject":"Hi {{ customer.first_name }}"}}'


def without_subject_line(row: bytes) -> bytes:
    """A row packed now as the code before the subject line travelled packed it: the same
    bytes but for the subject line after the context (rows queued before have none)."""
    assert row.endswith(SUBJECT_LINE)
    return row.removesuffix(SUBJECT_LINE) + b"}}"


def test_the_outbox_json_of_a_context_is_byte_for_byte_what_it_was() -> None:
    expected = OLD_WINBACK_ROW
    for before, after in GERMAN_PRICES.items():
        expected = expected.replace(before.encode(), after.encode())
    assert without_subject_line(queued("winback")) == expected
    nps = without_subject_line(queued("nps"))  # under 4 KiB: JSON
    assert hashlib.sha256(nps).hexdigest() == OLD_NPS_ROW_SHA256


def test_prices_are_written_as_the_customers_language_writes_money() -> None:
    """A German reader took "€1,234.50" for a decimal comma: every language wrote English
    prices. Now CLDR's (Babel), with the currency's own decimals."""
    assert money(1234.5, "EUR", "de") == "1.234,50\u00a0€"
    assert money(1234.5, "EUR", "en") == "€1,234.50"
    assert money(1234.0, "GBP", "de") == "1.234,00\u00a0£"
    assert money(1234.0, "JPY", "en") == "¥1,234"  # yen have no minor unit
    assert money(12.5, "BHD", "de") == "12,500\u00a0BHD"  # dinars three
    deferred = outbox.load_body(queued("winback"))["template"]
    _, text = Renderer(TEMPLATES).body(deferred["html"], deferred["text"], deferred["context"])
    assert "Hallo Anna" in text and "11,47\u00a0€ (statt 12,75\u00a0€)" in text


def test_the_number_filter_writes_counts_and_shares_in_the_emails_language() -> None:
    renderer = Renderer(TEMPLATES)
    written = "{{ 12300|number }} {{ 12.5|number }} {{ 10.0|number }}"
    assert renderer.subject(written, sample_context("de")) == "12.300 12,5 10"
    assert renderer.subject(written, sample_context("en")) == "12,300 12.5 10"
    with pytest.raises(TypeError, match="writes numbers, not str"):
        renderer.subject("{{ customer.first_name|number }}", sample_context())


def test_the_number_filter_writes_numbers_past_decimals_default_precision() -> None:
    """Babel rounds in Python's decimal context (28 digits): ``{{ x|number }}`` of a number
    of 25 digits or more (10 ** 25, 1e25) failed with "InvalidOperation:
    [<class 'decimal.InvalidOperation'>]", an error naming neither value nor reason."""
    renderer = Renderer(TEMPLATES)
    written = "{{ (10 ** 30)|number }} {{ 1e25|number }}"
    written_de = "1.000.000.000.000.000.000.000.000.000.000 10.000.000.000.000.000.000.000.000"
    assert renderer.subject(written, sample_context("de")) == written_de
    line = renderer.subject("{{ (2 ** 2000)|number }}", sample_context("en"))
    assert line.replace(",", "") == str(2**2000)  # every digit, none rounded away


def test_a_row_queued_by_the_old_code_still_renders() -> None:
    deferred = outbox.load_body(OLD_WINBACK_ROW)["template"]
    html, text = Renderer(TEMPLATES).body(deferred["html"], deferred["text"], deferred["context"])
    assert "Hallo Anna" in text and "€11.47 (statt €12.75)" in text
    assert "Mug &amp; Cup" in html and "§ 7 Abs. 3 UWG" in html  # escaped; the opt-out notice


# --- List-Unsubscribe: the one-click URL; a mailto only when a mailbox is configured -------


def test_list_unsubscribe_is_the_one_click_url_alone_unless_a_mailbox_is_set() -> None:
    plain = compose.links(Settings(), b"k" * 32, "c1", "winback", NOW)
    assert plain.mailto is None
    assert dict(compose.headers("s", plain)) == {
        "List-Unsubscribe": f"<{plain.unsubscribe}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        compose.SEND_KEY_HEADER: "s",
    }
    esp = EspSettings(from_email="shop@shop.example", unsubscribe_mailto="optout@shop.example")
    mailed = compose.links(Settings(esp=esp), b"k" * 32, "c1", "winback", NOW)
    token = mailed.unsubscribe.rpartition("/")[2]
    assert dict(compose.headers("s", mailed))["List-Unsubscribe"] == (
        f"<{mailed.unsubscribe}>, <mailto:optout@shop.example?subject=unsubscribe%20{token}>"
    )


def typed(value: object) -> object:
    """A value with the type of every part spelled out: 10 and 10.0 print differently in a
    template, and a tuple is no list, though Python compares them equal or alike."""
    if isinstance(value, Mapping):
        return {repr(k): typed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return (type(value).__name__, [typed(v) for v in value])
    return (type(value).__name__, value)


@pytest.mark.parametrize("name", ["winback", "nps"])
def test_check_and_preview_render_the_context_the_deliverer_renders(name: str) -> None:
    """``check`` renders subjects and bodies with the sample context and ``preview`` with
    the one the run composes, both as Python builds them; the deliverer renders both from
    the outbox's JSON. Each part keeps its type through the outbox (no tuple becomes a list,
    no whole float an int), so what they print is what is sent."""
    email = composed(name)
    assert email.template is not None
    stored = outbox.load_body(outbox.pack(email))["template"]
    assert typed(stored["context"]) == typed(email.template.context)
    for locale in ("en", "de"):
        sample = sample_context(locale)
        template = dataclasses.replace(email.template, context=sample)
        trip = outbox.load_body(outbox.pack(dataclasses.replace(email, template=template)))
        assert typed(trip["template"]["context"]) == typed(sample)
