"""The languages are spelled once, in ``domain`` (``Locale``, ``LOCALES``): every place
that names them (settings, campaign files, the template context, the API, the pages) reads
them from there, so a third language is added in one place and nothing disagrees."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args, get_type_hints

from recocamp.api.events import CustomerIn
from recocamp.api.page_views import TEXTS, language
from recocamp.campaigns.context import TemplateContext, sample_context
from recocamp.campaigns.files import Template, Variant
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


def test_settings_campaign_files_and_context_take_the_same_languages() -> None:
    assert ShopSettings.model_fields["default_locale"].annotation is Locale
    assert get_args(Template.model_fields["subject"].annotation) == (Locale, str)
    [subject, _] = get_args(Variant.model_fields["subject"].annotation)
    assert get_args(subject) == (Locale, str)
    assert get_type_hints(TemplateContext)["locale"] is Locale
    assert [sample_context(locale)["locale"] for locale in LOCALES] == list(LOCALES)


def test_the_api_schema_lists_the_languages() -> None:
    schema = CustomerIn.model_json_schema()["properties"]["locale"]
    assert schema["enum"] == list(LOCALES)


def test_every_language_has_the_pages_texts_and_is_chosen() -> None:
    assert set(TEXTS) == set(LOCALES)
    assert [language(None, locale, "en") for locale in LOCALES] == list(LOCALES)
    assert language(None, "fr", "de") == "de"  # not one of them: the shop's default
