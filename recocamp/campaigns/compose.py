"""One decision → one :class:`~recocamp.domain.OutgoingEmail`, pure (``now`` and key passed in).

Every marketing e-mail carries (RFC 8058, UWG §7(3)):

- ``List-Unsubscribe: <https://…/u/TOKEN>`` and ``List-Unsubscribe-Post:
  List-Unsubscribe=One-Click``: mail clients unsubscribe with one POST, no cookies, no page;
  the same URL opened in a browser shows a confirm button. RFC 8058 asks for exactly one
  HTTPS URI there and allows others; Gmail's and Yahoo's bulk-sender rules ask for the
  one-click URL. A ``<mailto:…?subject=unsubscribe%20TOKEN>`` follows only when ``[esp]
  unsubscribe_mailto`` names a mailbox that someone reads: an address nobody processes
  would swallow the unsubscribes of mail clients that prefer mailto;
- a preferences link (``/p/TOKEN``) in the body;
- ``X-Recocamp-Send-Key``: any receiver can count duplicates. It holds the send key here
  (the outbox keeps it so); each provider writes its keyed digest instead
  (``tokens.provider_key``, ``delivery.esp.http.headers_of``): the send key names the
  shop's customer id, which the provider and the recipient's mailbox kept;
- for an NPS campaign (``type = "nps"``) the template's ``survey``: eleven answer links,
  0–10, signed for this customer and survey (see :func:`survey_context`).

Tokens are bound to customer, campaign and purpose and sealed (encrypted and authenticated:
the link names no customer id to whoever sees it; see ``tokens``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from recocamp import tokens
from recocamp.campaigns import render
from recocamp.campaigns.context import SurveyAnswer, SurveyContext, TemplateContext, context_for
from recocamp.campaigns.files import Campaign
from recocamp.campaigns.offers import Offer
from recocamp.campaigns.planner import CustomerView, Decision
from recocamp.domain import SEND_KEY_HEADER as SEND_KEY_HEADER  # re-exported: read here
from recocamp.domain import BodyTemplate, OutgoingEmail
from recocamp.errors import SubjectError
from recocamp.settings import Settings


@dataclass(frozen=True, slots=True)
class Links:
    unsubscribe: str
    preferences: str
    mailto: str | None
    # survey id → the answer link of an NPS survey (a token bound to customer and survey)
    feedback: Callable[[str], str] | None = None


def links(
    settings: Settings,
    key: bytes,
    customer_id: str,
    campaign: str,
    now: datetime,
    address: str | None = None,
) -> Links:
    """The e-mail's links; ``address``: the one it is mailed to, which its preferences link
    names (``tokens.mailbox_tag``): that link shows, exports and erases the customer's data,
    and is refused once their address is another. The unsubscribe link is not bound."""
    base = str(settings.api.public_url).rstrip("/")
    unsubscribe = tokens.sign(key, customer_id, campaign, "unsubscribe", now)
    mailbox = None if address is None else tokens.mailbox_tag(key, address)
    preferences = tokens.sign(key, customer_id, campaign, "preferences", now, mailbox=mailbox)
    mailbox = settings.esp.unsubscribe_mailto
    # tokens are URL-safe
    mailto = f"mailto:{mailbox}?subject=unsubscribe%20{unsubscribe}" if mailbox else None

    def feedback(survey: str) -> str:
        token = tokens.sign(key, customer_id, campaign, "feedback", now, survey)
        return f"{base}/v1/feedback?token={token}"

    return Links(f"{base}/u/{unsubscribe}", f"{base}/p/{preferences}", mailto, feedback)


def survey_of(campaign: str, send_key: str | None) -> str:
    """An NPS survey is one mailing: the campaign and the period of its send keys (the
    shop-local day of the run); a preview answers the survey ``campaign/preview``."""
    return f"{campaign}/{send_key.rpartition('/')[2] if send_key else 'preview'}"


def survey_context(campaign: Campaign, link: Links, send_key: str | None) -> SurveyContext | None:
    """The template's ``survey``: the 0–10 answer links of an NPS campaign, else None. The
    links open a confirm page (``GET /v1/feedback``): a mail scanner records nothing."""
    if not campaign.is_survey or link.feedback is None:
        return None
    survey = survey_of(campaign.name, send_key)
    url = link.feedback(survey)
    scores = [SurveyAnswer(score=n, url=f"{url}&score={n}") for n in range(11)]
    return SurveyContext(id=survey, scores=scores)


def headers(send_key: str, link: Links) -> tuple[tuple[str, str], ...]:
    targets = f"<{link.unsubscribe}>" + (f", <{link.mailto}>" if link.mailto else "")
    return (
        ("List-Unsubscribe", targets),
        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
        (SEND_KEY_HEADER, send_key),
    )


def subject_of(campaign: Campaign, variant: str | None, locale: str) -> str:
    subjects: dict[str, str] = {str(k): v for k, v in campaign.template.subject.items()}
    for v in campaign.variants:
        if v.name == variant and v.subject:
            subjects = {str(k): text for k, text in v.subject.items()}
    return subjects.get(locale) or next(iter(subjects.values()))


def parts_of(campaign: Campaign, variant: str | None) -> tuple[str, str]:
    html, text = campaign.template.html, campaign.template.text
    for v in campaign.variants:
        if v.name == variant:
            html, text = v.html or html, v.text or text
    return html, text


def compose(
    decision: Decision,
    view: CustomerView,
    campaign: Campaign,
    settings: Settings,
    renderer: render.Renderer,
    link: Links,
    send_key: str,
    *,
    defer_body: bool = False,
) -> OutgoingEmail:
    """The e-mail for one decision. With ``defer_body`` the body travels as a
    :class:`BodyTemplate` that the deliverer renders when it sends, with the subject line as
    written, which it renders again from the same context (the offers that go out). The
    subject is rendered now as well: one that fails on this customer's data skips them at
    the run (``SubjectError``), and the outbox keeps it until the deliverer writes the one
    it sends (a version before that sends this one)."""
    context = _context(decision, view, campaign, settings, link, send_key)
    line = subject_of(campaign, decision.variant, context["locale"])
    try:
        subject = renderer.subject(line, context)
    except render.RENDER_ERRORS as exc:  # this customer's data: see ``run.enqueue_decisions``
        raise SubjectError(f"{type(exc).__name__}: {exc}") from exc
    html, text = parts_of(campaign, decision.variant)
    template = BodyTemplate(html, text, context, line) if defer_body else None
    if template is None:
        html, text = renderer.body(html, text, context)
    else:
        html = text = ""
    return OutgoingEmail(
        send_key=send_key,
        to=view.customer.email or "",
        subject=subject,
        html=html,
        text=text,
        headers=headers(send_key, link),
        campaign=campaign.name,
        template=template,
    )


def render_for(
    decision: Decision,
    view: CustomerView,
    campaign: Campaign,
    settings: Settings,
    renderer: render.Renderer,
    link: Links,
    offers: tuple[Offer, ...] | None = None,
) -> render.RenderedEmail:
    shown = decision if offers is None else replace(decision, offers=offers)
    context = _context(shown, view, campaign, settings, link)
    return renderer.render(
        subject_of(campaign, decision.variant, context["locale"]),
        *parts_of(campaign, decision.variant),
        context,
    )


def _context(
    decision: Decision,
    view: CustomerView,
    campaign: Campaign,
    settings: Settings,
    link: Links,
    send_key: str | None = None,
) -> TemplateContext:
    return context_for(
        decision,
        view,
        campaign,
        settings.shop,
        (link.unsubscribe, link.preferences),
        survey=survey_context(campaign, link, send_key),
    )
