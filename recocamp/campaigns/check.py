"""``recocamp check`` as a function: every campaign file and every template it uses.

Used by the ``check`` command, by ``send``/``plan`` before they run a campaign, and by the
worker before it starts (a broken file is left out, the rest runs) and on every reload (a
broken file keeps the last good version running). Nothing stops at the first problem: each
broken file comes back with all of its problems.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path

from recocamp.campaigns import files as campaign_files
from recocamp.campaigns import render
from recocamp.campaigns.context import TemplateContext, sample_context
from recocamp.campaigns.files import Campaign
from recocamp.config_files import line_of, without_bom
from recocamp.domain import LOCALES, ConsentBasis, Item, Locale
from recocamp.errors import ConfigError, Problem
from recocamp.settings import Settings, TemplateSettings


def campaign_problems(
    settings: Settings,
    campaigns: Path,
    templates: Path,
    sources: Mapping[str, str] | None = None,
) -> tuple[list[Campaign], list[ConfigError]]:
    """The valid campaigns, and one error per broken campaign file; ``sources``: check the
    templates of this snapshot (what a worker renders with), not the files as they are now."""
    loaded, failures = campaign_files.load_all(campaigns, settings, templates)
    good = []
    for campaign in loaded:
        path = campaigns / f"{campaign.name}.toml"
        found = template_problems(campaign, templates, settings.templates, _text(path), sources)
        if found:
            failures.append(ConfigError(path, found))
        else:
            good.append(campaign)
    return good, failures


def _text(path: Path) -> str:
    """A campaign file's text, for the lines of its subjects ("" if it went away since)."""
    try:
        return without_bom(path.read_text(encoding="utf-8"))  # as read_toml
    except (OSError, UnicodeDecodeError):
        return ""


def template_problems(
    campaign: Campaign,
    templates: Path,
    limits: TemplateSettings | None = None,
    text: str = "",
    sources: Mapping[str, str] | None = None,
) -> list[Problem]:
    """Every template and subject of a campaign, checked against the template context (a
    variable or key outside it, see ``render.contract_problems``) and rendered with its sample
    in each locale within the render limits (a sandbox escape, a syntax error, a missing
    include, a limit passed). A subject's problem has its line in the campaign's ``text``."""
    parts = [campaign.template.html, campaign.template.text]
    parts += [p for v in campaign.variants for p in (v.html, v.text) if p]
    subjects = _subjects(campaign)
    found: list[Problem] = []
    for locale in LOCALES:
        sample = _sample(campaign, locale)
        for name in dict.fromkeys(parts):
            found += [
                _at_template(p, templates, name, campaign.name)
                for p in render.check_template(templates, name, sample, limits, sources)
            ]
        for key, subject in subjects:
            problem = render.check_subject(subject, sample, templates, limits, sources)
            if problem:
                line = line_of(text, tuple(key.split(".")))
                found.append(Problem(f"subject: {problem}", key=key, line=line, value=subject))
    if not found:
        found += notice_problems(campaign, templates, limits, sources)
    return list(dict.fromkeys(found))


def notice_problems(
    campaign: Campaign,
    templates: Path,
    limits: TemplateSettings | None = None,
    sources: Mapping[str, str] | None = None,
) -> list[Problem]:
    """Each body template of a campaign that mails existing customers (UWG §7(3)) whose
    render, in some language, is the same whether ``existing_customer_notice`` is true or
    false: such a mail would not tell them that they may object at any time, which the
    exception requires of every one (the layouts print it). Checked on templates that
    render; a survey mails no existing customer (``planner._consented``)."""
    if campaign.is_survey or not campaign.allows(ConsentBasis.EXISTING_CUSTOMER):
        return []
    renderer = render.Renderer(templates, sources, limits)
    pairs = [(campaign.template.html, campaign.template.text)]
    pairs += [
        (v.html or campaign.template.html, v.text or campaign.template.text)
        for v in campaign.variants
    ]
    silent: dict[str, None] = {}
    for locale in LOCALES:
        told = _sample(campaign, locale)
        untold: TemplateContext = {**told, "existing_customer_notice": False}
        for html, text in dict.fromkeys(pairs):
            said, unsaid = _body(renderer, html, text, told), _body(renderer, html, text, untold)
            for n, name in enumerate((html, text)):
                if said is not None and unsaid is not None and said[n] == unsaid[n]:
                    silent[name] = None
    message = (
        "never prints the opt-out notice (existing_customer_notice) that every e-mail to an "
        f"existing customer must carry (UWG §7(3)); campaign {campaign.name} mails them"
    )
    return [Problem(message, path=templates / name) for name in silent]


def _body(
    renderer: render.Renderer, html: str, text: str, context: TemplateContext
) -> tuple[str, str] | None:
    """Both parts rendered, or None where that fails (``check_template`` says why)."""
    try:
        return renderer.body(html, text, context)
    except Exception:
        return None


def _sample(campaign: Campaign, locale: Locale) -> TemplateContext:
    """The sample context as this campaign's e-mails have it: only a survey (``type =
    "nps"``) has a ``survey``, and it has no ``offers`` (``compose``): with both in every
    sample, a winback template printing ``survey.id`` passed and failed every e-mail."""
    sample = sample_context(locale)
    if campaign.is_survey:
        sample["offers"] = []
    else:
        sample["survey"] = None
    return sample


def _at_template(problem: Problem, templates: Path, used: str, campaign: str) -> Problem:
    """A template's problem at the template's own path and line (its line means nothing in
    the campaign file), saying which template the campaign uses and which campaign."""
    name = problem.key or used
    by = f"included by {used}, " if name != used else ""
    message = f"{problem.message} ({by}campaign {campaign})"
    return replace(problem, message=message, key=None, path=templates / name)


def _subjects(campaign: Campaign) -> list[tuple[str, str]]:
    """Every subject line with its dotted key (``variants.1.subject.de``)."""
    found = [(f"template.subject.{k}", s) for k, s in campaign.template.subject.items()]
    for n, variant in enumerate(campaign.variants):
        found += [(f"variants.{n}.subject.{k}", s) for k, s in (variant.subject or {}).items()]
    return found


def language_problems(campaign: Campaign, text: str, locale: str) -> list[Problem]:
    """A subject line missing in the shop's language (``[shop] default_locale``): its
    customers got another language's subject over their own body, and nothing said so."""
    keyed: list[tuple[tuple[str, ...], dict[Locale, str] | None]] = [
        (("template", "subject"), campaign.template.subject)
    ]
    keyed += [(("variants", str(n), "subject"), v.subject) for n, v in enumerate(campaign.variants)]
    found = []
    for key, subjects in keyed:
        if subjects and locale not in subjects:
            used = next(iter(subjects))
            message = (
                f"no subject in '{locale}' (the shop's default_locale): customers in that "
                f"language get the '{used}' one"
            )
            found.append(Problem(message, key=".".join(key), line=line_of(text, key), value=used))
    return found


def opt_out_problems(
    campaign: Campaign,
    templates: Path,
    limits: TemplateSettings | None = None,
    sources: Mapping[str, str] | None = None,
) -> list[tuple[str, Problem]]:
    """Each template of the campaign (by name) whose sample e-mail has no unsubscribe link:
    the layouts print it; a template of the marketer's own that does not extend them passed
    ``check`` without it. Each language is rendered: a template printing the link in its
    English branch alone mailed German customers none. (One that ignores
    ``existing_customer_notice`` where the campaign mails existing customers is refused
    outright: ``template_problems``.)"""
    parts = [campaign.template.html, campaign.template.text]
    parts += [p for v in campaign.variants for p in (v.html, v.text) if p]
    found = []
    for name in dict.fromkeys(parts):
        missing = []
        for locale in LOCALES:
            sample = _sample(campaign, locale)
            mailed = render.sample_render(templates, name, sample, limits, sources)
            if mailed is not None and str(sample["unsubscribe_url"]) not in mailed:
                missing.append(locale)  # None: template_problems names why
        if missing:
            where = "" if len(missing) == len(LOCALES) else f" in {', '.join(map(repr, missing))}"
            message = (
                f"prints no unsubscribe link (unsubscribe_url){where}: every marketing e-mail "
                "must let its reader opt out in its body; the layouts base.html and base.txt "
                "print it ({% extends %} one)"
            )
            found.append((name, Problem(f"{message} (campaign {campaign.name})")))
    return found


# the filters that name catalogue values: (section, key, what they name)
FILTERS = (
    ("audience", "categories", "category"),
    ("offer", "categories", "category"),
    ("offer", "exclude_categories", "category"),
    ("offer", "exclude_items", "id"),
)


@dataclass(frozen=True, slots=True)
class Catalogue:
    """What the campaigns' filters can name: the categories of the catalogue's items
    (service items' aside), and the item ids it holds (all of them, or those asked about)."""

    categories: frozenset[str]
    items: AbstractSet[str]

    @classmethod
    def of(cls, items: Mapping[str, Item]) -> Catalogue:
        """From the catalogue itself (a plan's snapshot)."""
        return cls(frozenset(i.category for i in items.values() if not i.is_service), items.keys())


def named_items(campaigns: Iterable[Campaign]) -> set[str]:
    """Every item id the campaigns' filters name (what ``check`` asks the store about)."""
    return {item for c in campaigns for item in c.offer.exclude_items}


def catalogue_problems(campaign: Campaign, text: str, catalogue: Catalogue) -> list[Problem]:
    """Filter values no item in the catalogue has (``categories = ["christmass"]``): such a
    filter matches nobody, or excludes nothing. Warnings, not errors: the catalogue changes
    without the campaign, and an empty one (a new shop) is not checked against."""
    if not catalogue.categories:
        return []
    found = []
    ordered = sorted(catalogue.categories)
    suggested = 0
    for section, key, kind in FILTERS:
        known = catalogue.categories if kind == "category" else catalogue.items
        line = line_of(text, (section, key))
        for n, value in enumerate(getattr(getattr(campaign, section), key)):
            if value not in known:
                hint = ""
                if kind == "category":
                    hint = _closest(value, ordered) if suggested < SUGGESTED_MAX else _UNCOMPARED
                    suggested += 1
                message = f"no item in the catalogue has this {kind}{hint}"
                found.append(Problem(message, key=f"{section}.{key}.{n}", line=line, value=value))
    return found


# the unknown categories of a campaign that get a "did you mean": each costs a comparison
# with every category (1.3 ms against 300), and a file (at most 1 MiB) may list 40,000
SUGGESTED_MAX = 20
_UNCOMPARED = f" (not compared: suggestions for the first {SUGGESTED_MAX} unknown categories)"


def _closest(value: str, categories: list[str]) -> str:
    """ "did you mean" the closest known categories (item ids are too many to compare)."""
    close = difflib.get_close_matches(value, categories, n=3, cutoff=0.6)
    if close:
        return f" (did you mean {' or '.join(repr(c) for c in close)}?)"
    return f" (none of its {len(categories)} categories is close)"


def campaign_text(campaigns: Path, campaign: Campaign) -> str:
    """A campaign's file text (its lines for problems found after loading it)."""
    return _text(campaigns / f"{campaign.name}.toml")
