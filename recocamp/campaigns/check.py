"""``recocamp check`` as a function: every campaign file and every template it uses.

Used by the ``check`` command, by ``send``/``plan`` before they run a campaign, and by the
worker before it starts and on every reload (a broken file keeps the last good version
running). Nothing stops at the first problem: each broken file comes back with all of its
problems.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from recocamp.campaigns import files as campaign_files
from recocamp.campaigns import render
from recocamp.campaigns.context import LOCALES, sample_context
from recocamp.campaigns.files import Campaign
from recocamp.config_files import line_of
from recocamp.errors import ConfigError, Problem
from recocamp.settings import Settings, TemplateSettings


def campaign_problems(
    settings: Settings, campaigns: Path, templates: Path
) -> tuple[list[Campaign], list[ConfigError]]:
    """The valid campaigns, and one error per broken campaign file."""
    loaded, failures = campaign_files.load_all(campaigns, settings, templates)
    good = []
    for campaign in loaded:
        path = campaigns / f"{campaign.name}.toml"
        found = template_problems(campaign, templates, settings.templates, _text(path))
        if found:
            failures.append(ConfigError(path, found))
        else:
            good.append(campaign)
    return good, failures


def _text(path: Path) -> str:
    """A campaign file's text, for the lines of its subjects ("" if it went away since)."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""


def template_problems(
    campaign: Campaign, templates: Path, limits: TemplateSettings | None = None, text: str = ""
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
        sample = sample_context(locale)
        for name in dict.fromkeys(parts):
            found += [
                replace(p, key=f"template {p.key}")
                for p in render.check_template(templates, name, sample, limits)
            ]
        for key, subject in subjects:
            problem = render.check_subject(subject, sample, templates, limits)
            if problem:
                line = line_of(text, tuple(key.split(".")))
                found.append(Problem(f"subject: {problem}", key=key, line=line, value=subject))
    return list(dict.fromkeys(found))


def _subjects(campaign: Campaign) -> list[tuple[str, str]]:
    """Every subject line with its dotted key (``variants.1.subject.de``)."""
    found = [(f"template.subject.{k}", s) for k, s in campaign.template.subject.items()]
    for n, variant in enumerate(campaign.variants):
        found += [(f"variants.{n}.subject.{k}", s) for k, s in (variant.subject or {}).items()]
    return found
