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
from recocamp.campaigns.context import sample_context
from recocamp.campaigns.files import Campaign
from recocamp.domain import LOCALES
from recocamp.errors import ConfigError, Problem
from recocamp.settings import Settings, TemplateSettings


def campaign_problems(
    settings: Settings, campaigns: Path, templates: Path
) -> tuple[list[Campaign], list[ConfigError]]:
    """The valid campaigns, and one error per broken campaign file."""
    loaded, failures = campaign_files.load_all(campaigns, settings, templates)
    good = []
    for campaign in loaded:
        found = template_problems(campaign, templates, settings.templates)
        if found:
            failures.append(ConfigError(campaigns / f"{campaign.name}.toml", found))
        else:
            good.append(campaign)
    return good, failures


def template_problems(
    campaign: Campaign, templates: Path, limits: TemplateSettings | None = None
) -> list[Problem]:
    """Every template and subject of a campaign, checked against the template context (a
    variable or key outside it, see ``render.contract_problems``) and rendered with its sample
    in each locale within the render limits (a sandbox escape, a syntax error, a missing
    include, a limit passed)."""
    parts = [campaign.template.html, campaign.template.text]
    parts += [p for v in campaign.variants for p in (v.html, v.text) if p]
    subjects = [*campaign.template.subject.values()]
    subjects += [s for v in campaign.variants if v.subject for s in v.subject.values()]
    found: list[Problem] = []
    for locale in LOCALES:
        sample = sample_context(locale)
        for name in dict.fromkeys(parts):
            found += [
                replace(p, key=f"template {p.key}")
                for p in render.check_template(templates, name, sample, limits)
            ]
        for subject in subjects:
            problem = render.check_subject(subject, sample, templates, limits)
            if problem:
                found.append(Problem(f"subject: {problem}", key="template.subject", value=subject))
    return list(dict.fromkeys(found))
