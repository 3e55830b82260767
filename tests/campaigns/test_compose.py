"""Composing one e-mail: the signed links, a variant's subject and parts, an NPS survey's links.

Pure functions with a fixed clock; the links are checked by verifying their tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from recocamp import tokens
from recocamp.campaigns import compose
from recocamp.campaigns.files import Campaign
from recocamp.campaigns.offers import Offer
from recocamp.campaigns.planner import CustomerView, Decision, Outcome
from recocamp.campaigns.render import Renderer
from recocamp.campaigns.segments import History
from recocamp.domain import ConsentBasis, Customer
from recocamp.settings import ApiSettings, EspSettings, Settings
from tests.token_forms import decodings

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"

KEY = b"k" * 32
NOW = datetime(2024, 6, 4, 10, 0, tzinfo=UTC)


def campaign(kind: str = "offers") -> Campaign:
    return Campaign(
        name="spring",
        description="Spring offers",
        type=kind,
        schedule={"cron": "0 10 * * TUE"},
        template={"subject": {"de": "Hallo", "en": "Hi"}, "html": "m.html", "text": "m.txt"},
        variants=[
            {"name": "A", "weight": 1, "subject": {"en": "Hey"}},
            {"name": "B", "weight": 1, "html": "b.html"},
        ],
    )


def test_links_are_signed_for_their_purpose_under_the_public_url() -> None:
    settings = Settings(api=ApiSettings(public_url="https://shop.example/recocamp/"))
    link = compose.links(settings, KEY, "c1", "spring", NOW)
    base = "https://shop.example/recocamp"
    for url, prefix, purpose in (
        (link.unsubscribe, f"{base}/u/", "unsubscribe"),
        (link.preferences, f"{base}/p/", "preferences"),
    ):
        assert url.startswith(prefix)
        claims = tokens.verify(KEY, url.removeprefix(prefix), purpose, NOW)
        assert (claims.customer_id, claims.campaign, claims.issued_at) == ("c1", "spring", NOW)
    assert link.feedback is not None
    answer = link.feedback("spring/2024-06-04")
    assert answer.startswith(f"{base}/v1/feedback?token=")
    claims = tokens.verify(KEY, answer.partition("=")[2], "feedback", NOW)
    assert (claims.customer_id, claims.survey) == ("c1", "spring/2024-06-04")


def test_an_e_mails_links_and_headers_do_not_carry_the_customer_id() -> None:
    """The List-Unsubscribe header (URL and mailto), the preferences and the survey links
    are read by the ESP's click tracking, the mailbox provider and whom the mail is forwarded
    to: none of them carries the shop's id of the customer, readable or in base64."""
    customer = "kunde.0000012748@shop.example"
    settings = Settings(
        api=ApiSettings(public_url="https://shop.example/"),
        esp=EspSettings(unsubscribe_mailto="unsubscribe@shop.example"),
    )
    link = compose.links(settings, KEY, customer, "spring", NOW, "anna@example.test")
    assert link.feedback is not None and link.mailto is not None
    header = dict(compose.headers("spring/d", link))["List-Unsubscribe"]
    seen = [header, link.preferences, link.feedback("spring/2024-06-04")]
    texts = [t.encode() for t in seen] + [d for t in seen for d in decodings(t)]
    for form in (customer, customer.split("@")[0], "0000012748"):
        assert not any(form.encode() in text for text in texts), form
    assert tokens.verify(KEY, link.unsubscribe.rpartition("/")[2], "unsubscribe", NOW)


def test_a_variant_replaces_the_subjects_and_parts_it_names() -> None:
    spring = campaign()
    assert compose.subject_of(spring, None, "de") == "Hallo"
    assert compose.subject_of(spring, None, "fr") == "Hallo"  # the first configured
    assert compose.subject_of(spring, "A", "en") == "Hey"
    assert compose.subject_of(spring, "A", "de") == "Hey"  # the variant's subjects alone
    assert compose.subject_of(spring, "B", "en") == "Hi"  # B names no subject
    assert compose.parts_of(spring, None) == ("m.html", "m.txt")
    assert compose.parts_of(spring, "A") == ("m.html", "m.txt")
    assert compose.parts_of(spring, "B") == ("b.html", "m.txt")


def test_a_survey_is_the_campaign_and_the_day_of_its_send_keys() -> None:
    assert compose.survey_of("nps", "nps/c1/2024-06-04") == "nps/2024-06-04"
    assert compose.survey_of("nps", None) == "nps/preview"
    assert compose.survey_of("nps", "") == "nps/preview"


def test_an_nps_mail_has_eleven_answer_links_and_an_offer_mail_none() -> None:
    link = compose.links(Settings(), KEY, "c1", "spring", NOW)
    assert compose.survey_context(campaign(), link, "spring/c1/2024-06-04") is None
    survey = compose.survey_context(campaign("nps"), link, "spring/c1/2024-06-04")
    assert survey is not None and survey["id"] == "spring/2024-06-04"
    answers = survey["scores"]
    assert [a["score"] for a in answers] == list(range(11))
    # one token for the eleven answers (each token draws its own nonce: a second call to
    # link.feedback is another string), signed for the survey
    url, _, score = answers[7]["url"].rpartition("&score=")
    assert score == "7" and [a["url"] for a in answers] == [f"{url}&score={n}" for n in range(11)]
    token = parse_qs(urlsplit(url).query)["token"][0]
    assert tokens.verify(KEY, token, "feedback", NOW).survey == "spring/2024-06-04"


def offer_mail(email: str | None = "c1@example.test") -> tuple[Decision, CustomerView, Campaign]:
    spring = Campaign(
        name="winback",
        schedule={"cron": "0 10 * * TUE"},
        template={
            "subject": {"en": "Hi {{ customer.first_name }}"},
            "html": "winback.html",
            "text": "winback.txt",
        },
    )
    customer = Customer("c1", email, "Anna", "en", consent_basis=ConsentBasis.DOUBLE_OPT_IN)
    mug = Offer("mug", "Blue Mug", "kitchen", 8.0, 1.0, "popular with other customers")
    decision = Decision("winback", "c1", Outcome.SEND, "eligible", (mug,))
    return decision, CustomerView(customer, History(())), spring


def test_an_e_mail_is_rendered_now_unless_its_body_is_deferred() -> None:
    decision, view, spring = offer_mail()
    link = compose.links(Settings(), KEY, "c1", "winback", NOW)
    renderer = Renderer(TEMPLATES)
    now = compose.compose(decision, view, spring, Settings(), renderer, link, "winback/c1/d")
    assert (now.to, now.subject, now.campaign, now.template) == (
        "c1@example.test",
        "Hi Anna",
        "winback",
        None,
    )
    assert "Blue Mug" in now.text and "Blue Mug" in now.html
    assert now.headers == compose.headers("winback/c1/d", link)
    later = compose.compose(
        decision, view, spring, Settings(), renderer, link, "winback/c1/d", defer_body=True
    )
    assert (later.subject, later.html, later.text) == ("Hi Anna", "", "")
    assert later.template is not None and later.template.html == "winback.html"


def test_an_e_mail_to_nobody_has_an_empty_address_not_none() -> None:
    decision, view, spring = offer_mail(email=None)
    link = compose.links(Settings(), KEY, "c1", "winback", NOW)
    email = compose.compose(decision, view, spring, Settings(), Renderer(TEMPLATES), link, "k")
    assert email.to == ""


def test_a_preview_shows_the_offers_it_is_given_else_the_decisions() -> None:
    decision, view, spring = offer_mail()
    link = compose.links(Settings(), KEY, "c1", "winback", NOW)
    renderer = Renderer(TEMPLATES)
    own = compose.render_for(decision, view, spring, Settings(), renderer, link)
    assert own.subject == "Hi Anna" and "Blue Mug" in own.text
    cup = Offer("cup", "Red Cup", "kitchen", 6.0, 1.0, "popular with other customers")
    other = compose.render_for(decision, view, spring, Settings(), renderer, link, (cup,))
    assert "Red Cup" in other.text and "Blue Mug" not in other.text
