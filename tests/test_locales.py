"""The languages are spelled once, in ``domain`` (``Locale``, ``LOCALES``): every place
that names them (settings, campaign files, the template context, the API, the pages) reads
them from there, so a third language is added in one place and nothing disagrees."""

from __future__ import annotations

import ast
import re
from collections import Counter
from pathlib import Path
from typing import get_args, get_type_hints

from recocamp.api.events import CustomerIn
from recocamp.api.page_views import TEXTS, language
from recocamp.campaigns.context import TemplateContext, sample_context
from recocamp.campaigns.files import Subject, Template, Variant
from recocamp.domain import LOCALES, Locale
from recocamp.settings import ShopSettings

PACKAGE = Path(__file__).resolve().parents[1] / "recocamp"
# the set spelled out in Python: a tuple, a list or a Literal of "de" and "en"
SPELLED = re.compile(r"""[\[(]\s*["']de["']\s*,\s*["']en["']\s*[\])]""")


def test_the_values_are_read_from_the_type() -> None:
    assert LOCALES == get_args(Locale) == ("de", "en")


def test_every_python_module_reads_the_languages_from_domain() -> None:
    spelled = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        for line in path.read_text(encoding="utf-8").splitlines()
        if SPELLED.search(line)
    ]
    assert spelled == ["domain.py"]  # once: Locale = Literal["de", "en"]


# where a language may still be named by its code, and why: (file, code) → how often
NAMED: dict[tuple[str, str], tuple[int, str]] = {
    ("domain.py", "de"): (1, "Locale, the one spelling"),
    ("domain.py", "en"): (2, "Locale, and FALLBACK_LOCALE"),
    ("api/page_views.py", "de"): (1, "the pages' German texts (content, keyed by language)"),
    ("api/page_views.py", "en"): (1, "the pages' English texts (content, keyed by language)"),
    ("api/pages.py", "de"): (1, "the German date format (content)"),
    ("campaigns/offers.py", "de"): (1, "the offers' reasons in German (content)"),
    ("campaigns/context.py", "en"): (1, "the sample context's default (the docs' examples)"),
    ("data/synthetic.py", "de"): (1, "demo data: German-speaking countries"),
    ("data/synthetic.py", "en"): (1, "demo data: everybody else"),
    ("settings.py", "de"): (1, "the shop's default_locale (a setting's default)"),
    ("store/schema.py", "en"): (1, "the column's server default, as the migration wrote it"),
    ("store/migrations/versions/0001_initial.py", "en"): (1, "a migration: history"),
}


def test_no_module_names_a_language_outside_the_list() -> None:
    """A third language is added in ``domain``; a code elsewhere ("en" if lang == "de" …)
    would silently leave it out, so every string literal "de"/"en" is listed with why."""
    found: Counter[tuple[str, str]] = Counter()
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in LOCALES:
                found[(path.relative_to(PACKAGE).as_posix(), node.value)] += 1
    assert dict(found) == {where: count for where, (count, _why) in NAMED.items()}


def test_settings_campaign_files_and_context_take_the_same_languages() -> None:
    # the alias as a value (mypy types a bare ``Literal`` as a special form, no annotation)
    locale_type: object = Locale
    assert ShopSettings.model_fields["default_locale"].annotation is locale_type
    assert get_args(Template.model_fields["subject"].annotation) == (Locale, Subject)
    [subject, _] = get_args(Variant.model_fields["subject"].annotation)
    assert get_args(subject) == (Locale, Subject)
    assert get_type_hints(TemplateContext)["locale"] is Locale
    assert [sample_context(locale)["locale"] for locale in LOCALES] == list(LOCALES)


def test_the_api_schema_lists_the_languages() -> None:
    schema = CustomerIn.model_json_schema()["properties"]["locale"]
    assert schema["enum"] == list(LOCALES)


def test_every_language_has_the_pages_texts_and_is_chosen() -> None:
    assert set(TEXTS) == set(LOCALES)
    assert [language(None, locale, "en") for locale in LOCALES] == list(LOCALES)
    assert language(None, "fr", "de") == "de"  # not one of them: the shop's default
