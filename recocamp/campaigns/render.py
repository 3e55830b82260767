"""Render campaign e-mails: sandboxed Jinja, HTML + plain text, CSS inlined once per template.

- ``SandboxedEnvironment``: templates are written by marketers, so they may not reach
  Python internals (``''.__class__``, globals, unsafe ``str.format``); attempts raise
  ``SecurityError`` and fail ``recocamp check``.
- TemplateSettings (``template_limits``, ``[templates]``): every render has a time budget and bounds
  on output, loop iterations, numbers and nesting; past one it raises
  ``TemplateLimitError`` with the template and line. A template that ran out of time
  ``QUARANTINE_AFTER`` times in a row (no render of it succeeded between) is not rendered
  again by that renderer (a worker takes a new
  one when the templates change), so one broken campaign costs seconds, not hours.
- The loader reads only files inside the templates folder: ``include '/etc/passwd'`` or
  ``extends '../x'`` is "not found", with the reason.
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
from collections.abc import Callable, Mapping
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

from recocamp.campaigns.render_limits import LimitedEnvironment, location
from recocamp.errors import Problem, TemplateLimitError
from recocamp.settings import TemplateSettings

CONTEXT_KEYS = frozenset({
    "customer", "offers", "shop", "campaign", "loyalty", "reason", "discount_percent",
    "unsubscribe_url", "preferences_url", "existing_customer_notice", "locale", "survey",
})  # fmt: skip
STYLESHEET = "email.css"
QUARANTINE_AFTER = 3  # a template that ran out of time this often is not rendered any more
SUBJECT = "subject"  # the name a subject line's errors carry


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


class OutsideTemplates(TemplateNotFound):
    """An include or extends of a path outside the templates folder (``/etc/passwd``)."""


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
        pieces = template.replace("\\", "/").split("/")
        if template.startswith("/") or ".." in pieces or ":" in pieces[0]:
            raise OutsideTemplates(template, f"{template!r} is outside the templates folder")
        source, filename, uptodate = self.files.get_source(environment, template)
        if template.endswith(".html") and self.css:
            source = self._inline(source)
        return source, filename, uptodate

    def _inline(self, source: str) -> str:
        if "<html" in source.lower():  # a layout: inline the document, keep its <style>
            return str(self.documents.inline(source))
        return str(self.fragments.inline_fragment(source, self.css))


def environment(directory: Path, sources: Mapping[str, str] | None = None,
                limits: TemplateSettings | None = None,
                clock: Callable[[], float] | None = None) -> LimitedEnvironment:  # fmt: skip
    return LimitedEnvironment(
        limits or TemplateSettings(),
        clock,
        loader=InliningLoader(directory, sources),
        undefined=StrictUndefined,
        autoescape=lambda name: name is not None and name.endswith(".html"),
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


class Renderer:
    """Renders one campaign's subject, HTML and text part with a context, within ``limits``.

    :meth:`frozen` renders from the templates as they are *now*: a worker keeps the last set
    that passed ``check`` while a marketer edits the files, and hands the same set to its
    delivering processes, so queued mail never meets a half-saved template.
    """

    def __init__(self, directory: Path, sources: Mapping[str, str] | None = None,
                 limits: TemplateSettings | None = None,
                 clock: Callable[[], float] | None = None) -> None:  # fmt: skip
        self.directory, self.sources = directory, sources
        self.limits = limits or TemplateSettings()
        self.env = environment(directory, sources, self.limits, clock)
        self._subjects: dict[str, Any] = {}
        self._timeouts: dict[str, int] = {}  # template → renders in a row that ran out of time

    @classmethod
    def frozen(cls, directory: Path, limits: TemplateSettings | None = None) -> Renderer:
        return cls(directory, snapshot(directory), limits)

    def render(self, subject: str, html: str, text: str, context: dict[str, Any]) -> RenderedEmail:
        return RenderedEmail(self.subject(subject, context), *self.body(html, text, context))

    def subject(self, subject: str, context: Mapping[str, Any]) -> str:
        """The subject line (a Jinja string), on one line."""
        compiled = self._subjects.get(subject)
        if compiled is None:
            compiled = self._subjects[subject] = self.env.from_string(subject)
            compiled.name = SUBJECT
        return " ".join(self._render(compiled, context, subject).split())

    def body(self, html: str, text: str, context: Mapping[str, Any]) -> tuple[str, str]:
        """The HTML and the text part; raises jinja2's ``TemplateError`` subclasses and
        ``TemplateLimitError``."""
        return (self._render(self.env.get_template(html), context, html),
                self._render(self.env.get_template(text), context, text))  # fmt: skip

    def _render(self, template: Any, context: Mapping[str, Any], key: str) -> str:
        """One render; a template that keeps running out of time is refused at once (its
        renders would each cost the whole budget)."""
        name = str(template.name)
        if self._timeouts.get(key, 0) >= QUARANTINE_AFTER:
            raise TemplateLimitError(name, [Problem(
                f"ran out of render time {QUARANTINE_AFTER} times: not rendered again until "
                "the templates change")])  # fmt: skip
        try:
            rendered = self.env.render(template, context)
        except TemplateLimitError as exc:
            if any("render time" in p.message for p in exc.problems):
                self._timeouts[key] = self._timeouts.get(key, 0) + 1
            raise
        self._timeouts.pop(key, None)  # only timeouts in a row count: a slow moment is not a loop
        return rendered


def check_template(directory: Path, name: str, sample: dict[str, Any],
                   limits: TemplateSettings | None = None) -> list[Problem]:  # fmt: skip
    """Syntax, variables outside the documented context, and a sandboxed sample render
    within the limits; every failure is a problem with the template and line."""
    env = environment(directory, limits=limits)
    try:
        assert env.loader is not None
        source = env.loader.get_source(env, name)[0]
        parsed = env.parse(source)
    except TemplateNotFound as exc:
        return [Problem(_not_found(exc), key=name)]
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
        env.render(env.get_template(name), sample)
    except Exception as exc:  # whatever a template does is a problem, not a crash
        return [render_problem(exc, name)]
    return []


def render_problem(exc: Exception, name: str) -> Problem:
    """What went wrong in a render, at the template and line where it happened."""
    if isinstance(exc, TemplateLimitError):
        problem = exc.problems[0]
        return Problem(problem.message, key=str(exc.path), line=problem.line)
    if isinstance(exc, TemplateSyntaxError):  # in an included template
        return Problem(f"syntax error: {exc.message}", key=exc.name or name, line=exc.lineno)
    where, line = location(exc)
    key = name if where == "<template>" else where
    if isinstance(exc, TemplateNotFound):
        return Problem(_not_found(exc, included=True), key=key, line=line)
    if isinstance(exc, SecurityError):
        return Problem(f"blocked by the sandbox: {exc}", key=key, line=line)
    if isinstance(exc, UndefinedError):
        return Problem(f"reads something outside the template context: {exc.message}",
                       key=key, line=line)  # fmt: skip
    return Problem(f"fails to render: {type(exc).__name__}: {exc}", key=key, line=line)


def _not_found(exc: TemplateNotFound, *, included: bool = False) -> str:
    """The "template not found" message, with the loader's reason or the included name."""
    if isinstance(exc, OutsideTemplates):
        return f"template not found: {exc.message}"
    return f"template not found: {exc.name!r}" if included else "template not found"


def check_subject(subject: str, sample: dict[str, Any], directory: Path,
                  limits: TemplateSettings | None = None) -> str | None:  # fmt: skip
    """A problem with a subject line template, or None."""
    try:
        Renderer(directory, limits=limits).subject(subject, sample)
    except Exception as exc:  # a problem to list, not a crash
        return str(render_problem(exc, SUBJECT))
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
