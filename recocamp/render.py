"""Render campaign e-mails: sandboxed Jinja, HTML + plain text, CSS inlined once per template.

- ``SandboxedEnvironment``: templates are written by marketers, so they may not reach
  Python internals (``''.__class__``, globals, unsafe ``str.format``); attempts raise
  ``SecurityError`` and fail ``recocamp check``.
- ``StrictUndefined``: a variable outside the documented context is an error, not an empty
  string; ``check`` renders every template with a sample context, so that happens before a
  campaign runs, never mid-run.
- Autoescape for ``.html``; the text part is not escaped.
- CSS: ``templates/email.css`` is inlined into each HTML template's *source* when Jinja loads
  it (css-inline's fragment mode leaves Jinja syntax alone; templates use ``div``s, because an
  HTML parser moves text out of tables). Jinja caches the compiled result, so the cost is paid
  once per template, not per e-mail.

The documented context (README.md §Templates) is :data:`CONTEXT_KEYS`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import css_inline
from jinja2 import (
    BaseLoader,
    DictLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    meta,
)
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from recocamp.errors import Problem

CONTEXT_KEYS = frozenset({
    "customer", "offers", "shop", "campaign", "loyalty", "reason", "discount_percent",
    "unsubscribe_url", "preferences_url", "existing_customer_notice", "locale", "survey",
})  # fmt: skip
STYLESHEET = "email.css"


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


def snapshot(directory: Path) -> dict[str, str]:
    """Every template file of ``directory`` as text, by its name in the directory."""
    return {
        path.relative_to(directory).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(directory.rglob("*")) if path.is_file()
    }  # fmt: skip


class InliningLoader(BaseLoader):
    """A loader that inlines ``email.css`` into HTML sources as they are loaded; from the
    files of a directory, or from a :func:`snapshot` of them (``sources``)."""

    def __init__(self, directory: Path, sources: Mapping[str, str] | None = None) -> None:
        self.files: BaseLoader = (
            FileSystemLoader(str(directory)) if sources is None else DictLoader(dict(sources))
        )
        sheet = directory / STYLESHEET
        if sources is not None:
            self.css = sources.get(STYLESHEET, "")
        else:
            self.css = sheet.read_text(encoding="utf-8") if sheet.exists() else ""
        self.fragments = css_inline.CSSInliner(load_remote_stylesheets=False)
        self.documents = css_inline.CSSInliner(
            load_remote_stylesheets=False, keep_style_tags=True, extra_css=self.css or None
        )

    def get_source(self, environment: Environment, template: str) -> tuple[str, str | None, Any]:
        source, filename, uptodate = self.files.get_source(environment, template)
        if template.endswith(".html") and self.css:
            source = self._inline(source)
        return source, filename, uptodate

    def _inline(self, source: str) -> str:
        if "<html" in source.lower():  # a layout: inline the document, keep its <style>
            return str(self.documents.inline(source))
        return str(self.fragments.inline_fragment(source, self.css))


def environment(directory: Path, sources: Mapping[str, str] | None = None) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        loader=InliningLoader(directory, sources),
        undefined=StrictUndefined,
        autoescape=lambda name: name is not None and name.endswith(".html"),
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


class Renderer:
    """Renders one campaign's subject, HTML and text part with a context.

    :meth:`frozen` renders from the templates as they are *now*: a worker keeps the last set
    that passed ``check`` while a marketer edits the files, and hands the same set to its
    delivering processes, so queued mail never meets a half-saved template.
    """

    def __init__(self, directory: Path, sources: Mapping[str, str] | None = None) -> None:
        self.directory, self.sources = directory, sources
        self.env = environment(directory, sources)
        self._subjects: dict[str, Any] = {}

    @classmethod
    def frozen(cls, directory: Path) -> Renderer:
        return cls(directory, snapshot(directory))

    def render(self, subject: str, html: str, text: str, context: dict[str, Any]) -> RenderedEmail:
        return RenderedEmail(self.subject(subject, context), *self.body(html, text, context))

    def subject(self, subject: str, context: Mapping[str, Any]) -> str:
        """The subject line (a Jinja string), on one line."""
        compiled = self._subjects.get(subject)
        if compiled is None:
            compiled = self._subjects[subject] = self.env.from_string(subject)
        return " ".join(compiled.render(context).split())

    def body(self, html: str, text: str, context: Mapping[str, Any]) -> tuple[str, str]:
        """The HTML and the text part; raises jinja2's ``TemplateError`` subclasses."""
        return self.env.get_template(html).render(context), self.env.get_template(
            text).render(context)  # fmt: skip


def check_template(directory: Path, name: str, sample: dict[str, Any]) -> list[Problem]:
    """Syntax, variables outside the documented context, and a sandboxed sample render."""
    env = environment(directory)
    try:
        assert env.loader is not None
        source = env.loader.get_source(env, name)[0]
        parsed = env.parse(source)
    except TemplateNotFound:
        return [Problem("template not found", key=name)]
    except TemplateSyntaxError as exc:
        return [Problem(f"syntax error: {exc.message}", key=name, line=exc.lineno)]
    unknown = sorted(meta.find_undeclared_variables(parsed) - CONTEXT_KEYS)
    found = [
        Problem("uses a variable outside the template context", key=name,
                line=_line(source, variable), value=variable)
        for variable in unknown
    ]  # fmt: skip
    if found:
        return found
    try:
        env.get_template(name).render(sample)
    except SecurityError as exc:
        return [Problem(f"blocked by the sandbox: {exc}", key=name)]
    except UndefinedError as exc:
        return [Problem(f"reads something outside the template context: {exc.message}", key=name)]
    except TemplateSyntaxError as exc:
        return [Problem(f"syntax error: {exc.message}", key=exc.name or name, line=exc.lineno)]
    return []


def check_subject(subject: str, sample: dict[str, Any], directory: Path) -> str | None:
    """A problem with a subject line template, or None."""
    try:
        environment(directory).from_string(subject).render(sample)
    except (TemplateSyntaxError, UndefinedError, SecurityError) as exc:
        return str(exc)
    return None


def _line(source: str, variable: str) -> int | None:
    match = re.search(rf"\b{re.escape(variable)}\b", source)
    return source.count("\n", 0, match.start()) + 1 if match else None


def sample_context(locale: str = "en") -> dict[str, Any]:
    """The documented template context with example values (used by ``check`` and docs)."""
    offer = {
        "item_id": "22423", "title": "REGENCY CAKESTAND 3 TIER", "price": "£12.75",
        "discounted_price": "£11.48", "discount_percent": 10,
        "url": "https://shop.example.test/items/22423", "image_url": None,
        "why": "because you bought JUMBO BAG RED RETROSPOT",
    }  # fmt: skip
    return {
        "locale": locale,
        "customer": {"id": "12748", "first_name": "Anna", "locale": locale},
        "offers": [offer],
        "shop": {
            "name": "Demo Gift Shop",
            "base_url": "https://shop.example.test",
            "currency": "GBP",
        },
        "campaign": {
            "name": "winback",
            "description": "Win back lapsed customers",
            "variant": None,
        },
        "loyalty": {
            "points": 2300,
            "tier": "gold",
            "next_tier": "platinum",
            "points_to_next": 7700,
        },
        "reason": "your last order was 75 days ago",
        "discount_percent": 10,
        "unsubscribe_url": "https://shop.example.test/u/token",
        "preferences_url": "https://shop.example.test/p/token",
        "existing_customer_notice": True,
        "survey": {  # NPS campaigns (type = "nps"); None for every other campaign
            "id": "nps/2026-01-15",
            "scores": [
                {"score": n, "url": f"https://shop.example.test/v1/feedback?token=t&score={n}"}
                for n in range(11)
            ],
        },
    }


def money(amount: float, currency: str) -> str:
    symbol = {"EUR": "€", "GBP": "£", "USD": "$"}.get(currency)
    return f"{symbol}{amount:,.2f}" if symbol else f"{amount:,.2f} {currency}"


def context_for(
    decision: Any,
    view: Any,
    campaign: Any,
    shop: Any,
    links: tuple[str, str],
    reason: str | None = None,
) -> dict[str, Any]:
    """The documented template context for one decision (see :data:`CONTEXT_KEYS`)."""
    customer = view.customer
    locale = customer.locale if customer.locale in ("de", "en") else shop.default_locale
    offers = [
        {
            "item_id": o.item_id,
            "title": o.title,
            "price": money(o.price, shop.currency),
            "discounted_price": money(o.discounted_price, shop.currency)
            if o.discounted_price
            else None,
            "discount_percent": _number(o.discount_percent),
            "url": o.url or f"{str(shop.base_url).rstrip('/')}/items/{o.item_id}",
            "image_url": o.image_url,
            "why": o.why,
        }
        for o in decision.offers
    ]
    standing = view.standing
    return {
        "locale": locale,
        "customer": {"id": customer.id, "first_name": customer.first_name, "locale": locale},
        "offers": offers,
        "shop": {
            "name": shop.name,
            "base_url": str(shop.base_url).rstrip("/"),
            "currency": shop.currency,
        },
        "campaign": {
            "name": campaign.name,
            "description": campaign.description,
            "variant": decision.variant,
        },
        "loyalty": {
            "points": standing.points if standing else 0,
            "tier": standing.tier if standing else None,
            "next_tier": standing.next_tier if standing else None,
            "points_to_next": standing.points_to_next if standing else None,
        },
        "reason": reason,
        "discount_percent": _number(campaign.offer.discount_percent),
        "unsubscribe_url": links[0],
        "preferences_url": links[1],
        "existing_customer_notice": customer.consent_basis.value == "existing_customer",
        "survey": None,  # set by compose for NPS campaigns
    }


def _number(value: float | None) -> float | int | None:
    """``10.0`` reads as ``10`` in an e-mail."""
    return int(value) if value is not None and float(value).is_integer() else value
