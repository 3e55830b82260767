"""Rendering: sandbox escapes, strict context, autoescape, CSS inlined once per template."""

from __future__ import annotations

import gc
import json
import re
import time
from pathlib import Path

import pytest
from jinja2 import TemplateError, TemplateNotFound, TemplateSyntaxError

from recocamp.campaigns.render import (
    QUARANTINE_AFTER,
    Renderer,
    check_subject,
    check_template,
    sample_context,
    snapshot,
)
from recocamp.campaigns.render_limits import Budget, LimitExceeded, json_size, on_collection
from recocamp.domain import Locale
from recocamp.errors import ConfigError, TemplateLimitError
from recocamp.settings import TemplateSettings

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
CAMPAIGNS = ("winback", "cross_sell", "replenish", "birthday", "vip_tier")


@pytest.mark.parametrize("name", [f"{c}.{ext}" for c in CAMPAIGNS for ext in ("html", "txt")])
@pytest.mark.parametrize("locale", ["de", "en"])
def test_shipped_templates_pass_check(name: str, locale: Locale) -> None:
    assert check_template(TEMPLATES, name, sample_context(locale)) == []


def test_rendering_both_parts_with_inlined_css_and_the_opt_out() -> None:
    email = Renderer(TEMPLATES).render(
        "Hi {{ customer.first_name }}", "winback.html", "winback.txt", sample_context("en")
    )
    assert email.subject == "Hi Anna"
    assert 'class="offer" style="border: 1px solid #e2e2e2' in email.html  # inlined
    assert (
        "https://shop.example.test/u/token" in email.html
        and "https://shop.example.test/u/token" in email.text
    )
    assert "object to this use of your e-mail address" in email.text  # UWG § 7(3) notice
    assert "<div" not in email.text and "style=" not in email.text  # a real plain-text part


@pytest.mark.parametrize(
    ("locale", "reads", "never"), [("en", "(instead of ", "statt"), ("de", "(statt ", "instead")]
)
def test_the_text_part_names_the_old_price_in_the_customers_language(
    locale: Locale, reads: str, never: str
) -> None:
    context = sample_context(locale)
    email = Renderer(TEMPLATES).render("x", "winback.html", "winback.txt", context)
    offer = context["offers"][0]
    assert f"{offer['discounted_price']} {reads}{offer['price']})" in email.text
    assert never not in email.text


def test_html_is_autoescaped_text_is_not() -> None:
    context = sample_context("en")
    context["customer"] = {"id": "1", "first_name": "<script>alert(1)</script>", "locale": "en"}
    email = Renderer(TEMPLATES).render("x", "winback.html", "winback.txt", context)
    assert "<script>" not in email.html and "&lt;script&gt;" in email.html
    assert "<script>alert(1)</script>" in email.text


def test_an_html_template_is_escaped_and_styled_whatever_the_case_of_its_suffix(
    tmp_path: Path,
) -> None:
    """A file saved as ``Offer.HTML`` (an editor on Windows) is a template by its suffix in
    any case: it was rendered as a text template, customer data unescaped, CSS not inlined."""
    write(tmp_path, "email.css", ".x { color: red; }")
    write(tmp_path, "Offer.HTML", '<div class="x">{{ customer.first_name }}</div>')
    context = sample_context("en")
    context["customer"] = {"id": "1", "first_name": "<script>alert(1)</script>", "locale": "en"}
    html, _ = Renderer(tmp_path).body("Offer.HTML", "Offer.HTML", context)
    assert html == '<div class="x" style="color: red;">&lt;script&gt;alert(1)&lt;/script&gt;</div>'
    assert check_template(tmp_path, "Offer.HTML", sample_context("en")) == []


def write(tmp: Path, name: str, body: str) -> Path:
    (tmp / name).write_text(body, encoding="utf-8")
    return tmp


@pytest.mark.parametrize(
    "attack",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ customer.__class__.__init__.__globals__ }}",
        "{{ offers.__class__.__base__.__subclasses__() }}",
        "{{ '{0.__class__.__mro__}'.format(customer) }}",
        "{{ self._TemplateReference__context }}",
    ],
)
def test_sandbox_escapes_fail_check(tmp_path: Path, attack: str) -> None:
    write(tmp_path, "evil.html", f"<p>{attack}</p>")
    problems = check_template(tmp_path, "evil.html", sample_context())
    assert problems, attack
    assert any("sandbox" in p.message or "outside" in p.message for p in problems)


def test_unknown_variables_and_attributes_fail_check_with_their_line(tmp_path: Path) -> None:
    write(tmp_path, "typo.html", "<p>Hi</p>\n<p>{{ custmer.first_name }}</p>")
    (problem,) = check_template(tmp_path, "typo.html", sample_context())
    assert (problem.line, problem.value) == (2, "custmer")
    write(tmp_path, "attr.html", "<p>{{ customer.last_name }}</p>")
    (problem,) = check_template(tmp_path, "attr.html", sample_context())
    assert "outside the template context" in problem.message and "last_name" in problem.message
    write(tmp_path, "syntax.html", "<p>\n{% if customer %}</p>")
    (problem,) = check_template(tmp_path, "syntax.html", sample_context())
    assert problem.message.startswith("syntax error") and problem.line == 2
    assert (
        check_template(tmp_path, "missing.html", sample_context())[0].message
        == "template not found"
    )
    assert check_subject("{{ customer.nope }}", sample_context(), tmp_path) is not None
    assert check_subject("Hello {{ customer.first_name }}", sample_context(), tmp_path) is None


@pytest.mark.parametrize(
    ("body", "line", "value"),
    [
        ("<p>\n{{ customer.frist_name }}</p>", 2, "customer.frist_name"),
        (
            "{% if locale == 'fr' %}\n\n{{ customer['frist_name'] }}{% endif %}",
            3,
            "customer['frist_name']",
        ),  # a branch the sample never takes
        ("{% for offer in offers %}\n{{ offer.titel }}{% endfor %}", 2, "offer.titel"),
        (
            "{% for a in survey.scores %}{{ a.score }}{% endfor %}\n{{ survey.scores[0].scor }}",
            2,
            "survey.scores[0].scor",
        ),
        ("{% with s = shop %}\n{{ s.url }}{% endwith %}", 2, "s.url"),
        ("{% set who = customer %}\n\n{{ who.name }}", 3, "who.name"),
        ("{{ loyalty.tier }}\n{{ loyalty.points_to_next_tier }}", 2, "loyalty.points_to_next_tier"),
        # a key of a text or number: the sample's variant and image are none, so a render
        # never reads it, and every e-mail of a campaign with variants or pictures failed
        (
            "{% if campaign.variant %}\n{{ campaign.variant.name }}{% endif %}",
            2,
            "campaign.variant.name",
        ),
        (
            "{% for o in offers %}{% if o.image_url %}\n{{ o.image_url['src'] }}{% endif %}"
            "{% endfor %}",
            2,
            "o.image_url['src']",
        ),
        ("{{ locale.upper() }}\n{{ loyalty.points.value }}", 2, "loyalty.points.value"),
        # a key a filter reads by name: map's list of undefined values printed as
        # "[Undefined]", and join failed only for the customers the branch is for
        (
            "{% if locale == 'fr' %}\n{{ offers|map(attribute='titel')|join(', ') }}{% endif %}",
            2,
            "offers[].titel",
        ),
        ("<p>\n{{ offers|sort(attribute='prise')|first }}", 2, "offers[].prise"),
        ("<p>\n{{ survey.scores|selectattr('scor')|list }}", 2, "survey.scores[].scor"),
        # sort reads each of a comma-separated list of keys (Jinja's make_multi_attrgetter)
        ("<p>\n{{ offers|sort(attribute='price,titel')|first }}", 2, "offers[].titel"),
    ],
)
def test_check_names_each_key_outside_the_contract_with_its_line(
    tmp_path: Path, body: str, line: int, value: str
) -> None:
    write(tmp_path, "t.html", body)
    (problem,) = check_template(tmp_path, "t.html", sample_context())
    key = re.findall(r"\w+", value)[-1]
    assert problem.message.endswith(f"has no key {key!r}") and "outside the template" in (
        problem.message
    )
    assert (problem.key, problem.line, problem.value) == ("t.html", line, value)


@pytest.mark.parametrize(
    "body",
    [
        "{{ customer.get('first_name') }} {{ customer.items() | list | length }}",  # dict methods
        "{% set customer = {'nick': 'A'} %}{{ customer.nick }}",  # a name of one's own
        "{% macro card(customer) %}{{ customer.nick }}{% endmacro %}{{ card({'nick': 1}) }}",
        "{% for offer in offers %}{{ loop.index }} {{ offer.title }}{% endfor %}",
        "{{ (offers | first).title }} {{ offers[0].price }} {{ survey.scores[-1].url }}",
        "{{ customer.id.zfill(6) }} {{ campaign.variant.upper() if campaign.variant }}",  # methods
        "{{ offers|map(attribute='title')|join }} {{ (offers|sort(attribute='price')|first).url }}"
        "{{ customer|attr('items') is defined }} {{ survey.scores|selectattr('url')|list|length }}",
        "{% for o in offers|sort(attribute='price,title') %}{{ o.title }}{% endfor %}",  # two keys
    ],
)
def test_check_accepts_what_the_contract_has(tmp_path: Path, body: str) -> None:
    write(tmp_path, "t.html", body)
    assert check_template(tmp_path, "t.html", sample_context()) == []


def test_attr_of_a_key_of_the_contract_fails_check_in_any_branch(tmp_path: Path) -> None:
    """``attr`` reads an attribute, and the context's values have keys: undefined in every
    e-mail, while a sample that skipped the branch passed."""
    write(
        tmp_path,
        "t.html",
        "<p>\n{% if locale == 'fr' %}{{ customer|attr('first_name') }}{% endif %}",
    )
    (problem,) = check_template(tmp_path, "t.html", sample_context())
    assert (problem.key, problem.line) == ("t.html", 2)
    assert problem.value == "customer|attr('first_name')"
    assert problem.message.endswith("write customer.first_name")


def test_check_reads_the_templates_a_template_includes_and_extends(tmp_path: Path) -> None:
    write(tmp_path, "layout.html", "{% block c %}{% endblock %}\n{{ shop.nmae }}")
    write(
        tmp_path, "_one.html", "{{ offer.title }}{% if not offer %}{{ customer.nick }}{% endif %}"
    )
    write(
        tmp_path,
        "main.html",
        '{% extends "layout.html" %}{% block c %}{% for offer in '
        'offers %}{% include "_one.html" %}{% endfor %}{% endblock %}',
    )
    problems = check_template(tmp_path, "main.html", sample_context())
    assert sorted((p.key, p.line, p.value) for p in problems) == [
        ("_one.html", 1, "customer.nick"),  # ``offer``: the includer's loop variable, not unknown
        ("layout.html", 2, "shop.nmae"),
    ]


def test_an_unknown_filter_is_a_problem_of_its_template_and_line(tmp_path: Path) -> None:
    write(tmp_path, "layout.txt", "Hi\n{{ customer.first_name|nosuchfilter }}\n")
    write(tmp_path, "main.txt", '{% extends "layout.txt" %}')
    (problem,) = check_template(tmp_path, "main.txt", sample_context())
    assert (problem.key, problem.line) == ("layout.txt", 2)
    assert problem.message == "syntax error: No filter named 'nosuchfilter'."
    (problem,) = check_template(tmp_path, "layout.txt", sample_context())
    assert (problem.key, problem.line) == ("layout.txt", 2)
    subject = check_subject("{{ shop.name|nosuchfilter }}", sample_context(), tmp_path)
    assert subject is not None and "No filter named 'nosuchfilter'" in subject
    assert "<introspection>" not in subject


def test_an_unknown_filter_or_test_in_a_branch_the_sample_skips_is_found(tmp_path: Path) -> None:
    """Jinja raises for an unknown filter only when its branch renders: the sample customer
    is not "Zed", yet the template would fail for every Zed."""
    write(
        tmp_path,
        "main.txt",
        'Hi\n{% if customer.first_name == "Zed" %}{{ shop.name|nosuchfilter }}{% endif %}\n'
        "{% if offers is nosuchtest %}x{% endif %}\n",
    )
    problems = check_template(tmp_path, "main.txt", sample_context())
    assert [(p.key, p.line, p.message) for p in problems] == [
        ("main.txt", 2, "syntax error: No filter named 'nosuchfilter'."),
        ("main.txt", 3, "syntax error: No test named 'nosuchtest'."),
    ]


def test_a_template_that_is_not_utf8_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_bytes(b"Hi\n\xff\xfe")
    write(tmp_path, "main.txt", '{% include "bad.txt" %}')
    (problem,) = check_template(tmp_path, "bad.txt", sample_context())
    assert (problem.key, problem.line) == ("bad.txt", 2) and "not UTF-8" in problem.message
    (problem,) = check_template(tmp_path, "main.txt", sample_context())
    # the file that is not UTF-8 and its line, not the template that includes it
    assert (problem.key, problem.line) == ("bad.txt", 2) and "not UTF-8" in problem.message


@pytest.mark.parametrize(
    ("main", "partial", "expected"),
    [
        # an include, an include in an include, an extended layout, an imported macro file
        ('a\n{% include "parts/x.txt" %}', b"ok\n\xff", "line 2, key 'parts/x.txt': not UTF-8"),
        ('{% include "parts/y.txt" %}', b"ok\n\xff", "line 2, key 'parts/x.txt': not UTF-8"),
        ('{% extends "parts/x.txt" %}', b"\n\n\xff", "line 3, key 'parts/x.txt': not UTF-8"),
        (
            'a\n{% include "parts/y.txt" %}',
            b"ok\n{% if %}",
            "line 2, key 'parts/x.txt': syntax error: Expected an expression",
        ),
        (
            '{% import "parts/x.txt" as m %}\n{{ m.f() }}',
            b"\n{% macro f( %}",
            "line 2, key 'parts/x.txt': syntax error",
        ),
        (
            '{% import "parts/x.txt" as m %}\n{{ m.f() }}',
            b"\n\n{% macro f() %}{{ 1 // 0 }}{% endmacro %}",
            "line 3, key 'parts/x.txt': fails to render: ZeroDivisionError",
        ),
    ],
)
def test_a_problem_in_an_included_template_names_that_file_and_its_line(
    tmp_path: Path, main: str, partial: bytes, expected: str
) -> None:
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "x.txt").write_bytes(partial)
    write(tmp_path, "parts/y.txt", '\n{% include "parts/x.txt" %}')
    write(tmp_path, "main.txt", main)
    problems = check_template(tmp_path, "main.txt", sample_context())
    assert [str(p) for p in problems if str(p).startswith(expected)], problems
    assert all(p.key != "main.txt" for p in problems), problems
    if b"\xff" in partial:  # what a worker freezes names the file too
        with pytest.raises(ConfigError, match=r"x\.txt: line \d: not UTF-8"):
            snapshot(tmp_path)


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"


def test_files_beside_the_templates_are_no_templates_for_check_nor_the_worker(
    tmp_path: Path,
) -> None:
    """A logo beside the templates: ``check`` passes the templates, the frozen templates a
    worker renders with leave it out (no "not UTF-8"), and both refuse it as a template."""
    write(tmp_path, "main.html", "<p>{{ customer.first_name }}</p>")
    write(tmp_path, "logo.html", '{% include "logo.png" %}')
    (tmp_path / "logo.png").write_bytes(PNG)
    assert check_template(tmp_path, "main.html", sample_context()) == []
    assert set(snapshot(tmp_path)) == {"main.html", "logo.html"}
    frozen = Renderer.frozen(tmp_path)
    email = frozen.render("Hi", "main.html", "main.html", sample_context("en"))
    assert email.html == "<p>Anna</p>"
    (problem,) = check_template(tmp_path, "logo.html", sample_context())
    assert problem.message == "template not found: 'logo.png' is not a template file " + (
        "(.html, .txt, .css)"
    )


@pytest.mark.parametrize(
    ("macros", "expected"),
    [
        ("{% macro f() %}hi{% endmacro %}", []),
        ("\n{% macro f( %}", ["line 2, key 'parts/x.txt': syntax error"]),
    ],
)
def test_a_macro_file_imported_outside_the_blocks_is_seen_in_them(
    tmp_path: Path, macros: str, expected: list[str]
) -> None:
    """A template that extends a layout and imports macros at its top: its blocks use them
    (no "variable outside the template context"), and a broken macro file is named."""
    (tmp_path / "parts").mkdir()
    write(tmp_path, "parts/base.txt", "{% block content %}{% endblock %}")
    write(tmp_path, "parts/x.txt", macros)
    write(
        tmp_path,
        "main.txt",
        '{% extends "parts/base.txt" %}{% import "parts/x.txt" as m %}'
        "{% block content %}\n{{ m.f() }}{% endblock %}",
    )
    problems = [str(p) for p in check_template(tmp_path, "main.txt", sample_context())]
    assert [p for p in problems if not any(p.startswith(e) for e in expected)] == []
    assert len(problems) == len(expected)


def test_a_subject_reading_a_key_outside_the_contract_fails_check(tmp_path: Path) -> None:
    problem = check_subject(
        "{% if false %}{{ customer.frist_name }}{% endif %}", sample_context(), tmp_path
    )
    assert problem is not None and "customer has no key 'frist_name'" in problem


def test_css_is_inlined_when_the_template_is_loaded_not_per_email(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "email.css", ".x { color: red; }")
    write(tmp_path, "t.html", '<div class="x">{{ customer.first_name }}</div>')
    renderer = Renderer(tmp_path)
    import recocamp.campaigns.render as render_module

    calls = []
    original = render_module.InliningLoader._inline

    def counting(self: render_module.InliningLoader, source: str) -> str:
        calls.append(source)
        return original(self, source)

    monkeypatch.setattr(render_module.InliningLoader, "_inline", counting)
    for name in ("A", "B", "C"):
        context = sample_context()
        context["customer"] = {**context["customer"], "first_name": name}
        email = renderer.render("s", "t.html", "t.html", context)
        assert email.html == f'<div class="x" style="color: red;">{name}</div>'
    assert len(calls) == 1


# --- limits: one template must not be able to stop the sending (issue 15) ------------------

SMALL = TemplateSettings(max_output_chars=10_000, max_loop_iterations=1000, max_depth=10)
LIMIT_CASES = {  # template (the limit is passed on its line 2) → what the problem says
    "{{ 9**(9**9) }}": "max_int_bits",
    "{{ 2**5000 }}": "max_int_bits",
    "{{ (2**4000) * (2**4000) }}": "max_int_bits",
    "{{ 'x'*3000000000 }}": "max_output_chars",
    "{{ ['x'] * 20000 }}": "max_output_chars",
    "{% for i in range(10**9) %}{% endfor %}": "max_loop_iterations",
    "{% for i in range(1000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}": (
        "max_loop_iterations"
    ),
    "{% for c in 'x' * 5000 %}{% endfor %}": "max_loop_iterations",
    "{% macro m(n) %}{{ m(n + 1) }}{% endmacro %}{{ m(1) }}": "max_depth",
    "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}": "max_depth",
    "{{ 'x'|center(10**9) }}": "max_output_chars",
    "{{ 'x'.ljust(10**9) }}": "max_output_chars",
    "{{ ('x' * 5000).replace('', 'yy') }}": "max_output_chars",
    "{{ ('x' * 5000)|replace('x', 'yyy') }}": "max_output_chars",
    "{{ 'ab'|indent(20000) }}": "max_output_chars",
    "{{ ('a b ' * 2000)|wordwrap(1, wrapstring='-' * 10) }}": "max_output_chars",
    "{{ '{:>999999999}'.format(1) }}": "max_output_chars",
    "{{ '{:>{w}}'.format(1, w=10**8) }}": "max_output_chars",
    "{{ '%999999999s' % 'x' }}": "max_output_chars",
    "{{ '%*s'|format(10**8, 'x') }}": "max_output_chars",
    # a mapping key's parentheses nest, as Python reads them: the width after it was missed
    "{{ '%(a(b)c)20000s' % {'a(b)c': 1} }}": "% would make a value longer",
    "{{ '%(a(b)c)20000s'|format(**{'a(b)c': 1}) }}": "format would make a value longer",
    "{{ (['x' * 100] * 1000)|join('-' * 100) }}": "max_output_chars",
    "{{ ('x' * 100).join(['y'] * 1000) }}": "max_output_chars",
    "{{ [1]|batch(10**9, 'x')|list }}": "max_output_chars",
    "{{ ([[1] * 100] * 100)|sum(start=[]) }}": "max_output_chars",
    "{% set a = [1] * 5000 %}{{ [a] * 5000 }}": "max_output_chars",
    "{% set ns = namespace(s='x' * 5000) %}{% for i in range(30) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}": "max_output_chars",
    "{% set s = 'x' * 9000 %}{% set y %}{% for i in range(100) %}{{ s }}{% endfor %}{% endset %}"
    "{{ y|length }}": "max_output_chars",
    "{% for i in range(900) %}{{ 'x' * 12 }}{% endfor %}": "max_output_chars",
    "{{ ('x' * 100).translate({120: 'y'}) }}": "not available",
    # filters that repeat an argument per line or per link: refused before they run (an
    # indent of 10**6 or a target of a million characters made gigabytes in one call)
    "{{ [[[[[[[[[[1]]]]]]]]]]|tojson(indent=5000) }}": "tojson would make a value longer",
    "{{ {'a': [[1, 2]] * 40}|tojson('x' * 100) }}": "tojson would make a value longer",
    "{{ ('www.a.com ' * 100)|urlize(target='x' * 5000) }}": "urlize would make a value longer",
    # values that share children: each doubles a tree that compares and hashes in 2 ** steps
    "{% set ns = namespace(x=[0], y=[0]) %}{% for i in range(22) %}{% set ns.x = [ns.x, ns.x] %}"
    "{% set ns.y = [ns.y, ns.y] %}{% endfor %}{{ ns.x == ns.y }}": "max_output_chars",
    "{% set ns = namespace(t=(0,)) %}{% for i in range(22) %}{% set ns.t = (ns.t, ns.t) %}"
    "{% endfor %}{{ {ns.t: 1} is mapping }}": "max_output_chars",
    "{% set ns = namespace(x={}, y={}) %}{% for i in range(22) %}"
    "{% set ns.x = {'a': ns.x, 'b': ns.x} %}{% set ns.y = dict(a=ns.y, b=ns.y) %}{% endfor %}"
    "{{ ns.x is eq(ns.y) }}{% for v in [ns.x, ns.y] %}{{ loop.changed(v) }}{% endfor %}": (
        "max_output_chars"
    ),
    # bytes are text too
    "{{ 'x'.encode().ljust(10**6)|length }}": "max_output_chars",
    "{{ ('x'.encode() * 6000 + 'x'.encode() * 6000)|length }}": "max_output_chars",
    "{{ ('%999999s'.encode() % 'x'.encode())|length }}": "max_output_chars",
    "{{ ('\u0100' * 1000).encode('punycode')|length }}": "not available",  # quadratic
    # a list, dict or set cannot grow in place, where no operator sees it
    "{% set l = [1] %}{% for i in range(16) %}{{ l.extend(l) or '' }}{% endfor %}{{ l[0] }}": (
        "list.extend is not available"
    ),
    "{% set d = {} %}{{ d.update(a=1) or '' }}": "dict.update is not available",
    # round computes ten to the precision as a whole number: 1|round(-10**7) held the GIL for
    # good (and ``check`` with it); refused past max_int_bits' digits before it runs
    "{{ 1|round(-5000) }}": "round to -5,000 digits: more than 1,228",
    "{{ 1.5|round(5000, 'floor') }}": "round to 5,000 digits",
    # a number no operator made: int.from_bytes of a long text; its // ran for minutes
    "{{ (1).from_bytes(('\\xff' * 600).encode('latin-1'), 'big') // 3 }}": "max_int_bits",
    "{{ (1).to_bytes(20000, 'big')|length }}": "to_bytes would make a value longer",
    # a width from a nested field that is a text, an element or a mapping's value: 1 GB
    # (4 GB with a fill character outside Latin-1) was made before it was measured
    "{{ '{0:{1}}'.format('x', '20000')|length }}": "format would make a value longer",
    "{{ '{0:\U0010ffff>{1[0]}}'.format('x', ['20000'])|length }}": "format would make",
    "{{ '{a:{b}}'.format_map({'a': 'x', 'b': '20000'})|length }}": "format_map would make",
    "{{ ('{0:{1}}'|safe).format('x', '20000')|length }}": "format would make a value longer",
    # a filter's arguments by keyword, in any order, are sized as by position: the estimate
    # read the first keyword as the second parameter (indent(first=true, width=10**8): 13 s
    # of CPU and 4 GB in one call; replace(new=…, old='') and join(attribute=0, d=…): 1 GB)
    "{{ 'ab\\n'|indent(first=true, width=20000) }}": "indent would make a value longer",
    "{{ ('x' * 5000)|replace(new='yy', old='') }}": "replace would make a value longer",
    "{{ ('x' * 500)|list|join(attribute=0, d='-' * 100) }}": "join would make a value longer",
    "{{ [1]|batch(fill_with=0, linecount=10**6)|list|length }}": "batch would make a value",
}


@pytest.mark.parametrize("body", list(LIMIT_CASES))
def test_a_template_past_a_limit_is_a_problem_with_its_file_and_line(
    tmp_path: Path, body: str
) -> None:
    write(tmp_path, "hostile.html", f"<p>{{{{ customer.first_name }}}}</p>\n{body}\n")
    (problem,) = check_template(tmp_path, "hostile.html", sample_context(), SMALL)
    assert (problem.key, problem.line) == ("hostile.html", 2)
    assert LIMIT_CASES[body] in problem.message
    with pytest.raises(TemplateLimitError) as raised:
        Renderer(tmp_path, limits=SMALL).body("hostile.html", "hostile.html", sample_context())
    assert "hostile.html: line 2: " in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "call",
    ["wordwrap(1)", "wordwrap(width=2)", "wordwrap(10, wrapstring='-')", "wordwrap(0)"],
)
def test_wordwrap_breaking_a_long_word_into_many_lines_is_refused_before_it_runs(
    tmp_path: Path, call: str
) -> None:
    """A 490,000-character word at width 1 took 3.3 s of CPU (textwrap copies the rest of
    the word at every break), three times the render budget, with the output size within
    bounds: its cost is sized first."""
    write(tmp_path, "t.html", f"<p>x</p>\n{{{{ ('x' * 490000)|{call} }}}}\n")
    started = time.process_time()
    (problem,) = check_template(tmp_path, "t.html", sample_context(), TemplateSettings())
    assert time.process_time() - started < 1.0
    assert (problem.key, problem.line) == ("t.html", 2)
    assert "wordwrap would break words of up to 490,000 characters into lines of" in problem.message


@pytest.mark.parametrize(
    "call", ["wordwrap(79)", "wordwrap(1, false)", "wordwrap(1, break_long_words=false)"]
)
def test_wordwrap_of_a_long_word_at_a_fair_width_or_unbroken_renders(
    tmp_path: Path, call: str
) -> None:
    write(tmp_path, "t.html", f"{{{{ ('x' * 490000 ~ ' y')|{call}|length }}}}")
    (html, _) = Renderer(tmp_path).body("t.html", "t.html", sample_context())
    assert int(html) >= 490_002


@pytest.mark.parametrize(
    "value", [[], [1], {"a": [1, {"b": [2, 3]}], "c": {}}, [[[[["x"]]]]], [[1, 2]] * 30, "x"]
)
@pytest.mark.parametrize("indent", [None, 0, 1, 4, "\t", -3])
def test_the_estimate_of_indented_json_is_an_upper_bound(
    value: object, indent: int | str | None
) -> None:
    actual = len(json.dumps(value, indent=indent))
    assert json_size(value, indent, 10**6) >= (actual if indent is not None else 0)


def test_urlize_and_tojson_within_the_limits_render(tmp_path: Path) -> None:
    write(
        tmp_path,
        "t.html",
        "{{ 'see www.shop.test or a@b.test'|urlize(target='_blank') }}"
        "{{ {'a': [1, 2]}|tojson(indent=2) }}",
    )
    (html, _) = Renderer(tmp_path, limits=SMALL).body("t.html", "t.html", sample_context())
    assert 'target="_blank">www.shop.test</a>' in html and '\n  "a": [\n    1,' in html


@pytest.mark.parametrize("word", ["'x' * 40000", "'<' * 10000"])
def test_urlize_of_a_long_word_is_sized_in_linear_time(tmp_path: Path, word: str) -> None:
    """The estimate before ``urlize`` looked for the words it may link with a pattern that
    backtracked over the whole of a word without ``.``, ``:`` or ``@`` from each of its
    characters: 40,000 characters took 7 s of CPU in one call, a million about an hour,
    however short the time budget (nothing checks the clock inside a call)."""
    write(tmp_path, "t.txt", f"{{{{ ({word})|urlize|length }}}}")
    started = time.process_time()
    (text, _) = Renderer(tmp_path).body("t.txt", "t.txt", sample_context())
    assert time.process_time() - started < 1.0
    assert text == "40000"


def test_the_fields_of_a_percent_format_are_found_in_linear_time(tmp_path: Path) -> None:
    """Looking for each field's width, a pattern searched for the ``)`` of a mapping key from
    every ``%(``: a text of ``%(`` repeated 100,000 times took 7.5 s of CPU in one call
    before ``%`` said "incomplete format key" (a million characters, minutes)."""
    write(tmp_path, "t.txt", "x\n{{ ('%(' * 100000) % {} }}")
    started = time.process_time()
    (problem,) = check_template(tmp_path, "t.txt", sample_context())
    assert time.process_time() - started < 1.0
    assert (problem.line, problem.message) == (
        2,
        "fails to render: ValueError: incomplete format key",
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "{{ 'x'.join(range(200)|map(attribute='no', default=big))|length }}",
            "join would make a value longer",
        ),
        ("{{ " + " ~ ".join(["big"] * 200) + " }}", "~ would make a value longer"),
    ],
)
def test_many_references_to_one_large_value_are_sized_once_past_the_bound(
    tmp_path: Path, body: str, message: str
) -> None:
    """The items of a join and the operands of ``~`` were each measured to the bound before
    their sizes were added up: 200 references to one list of 200,000 numbers took 5 s of
    CPU before the join was refused (a million, hours), nothing checking the time budget
    in between."""
    write(tmp_path, "t.txt", "{% set big = [1] * 200000 %}\n" + body)
    started = time.process_time()
    (problem,) = check_template(tmp_path, "t.txt", sample_context())
    assert time.process_time() - started < 1.0
    assert problem.line == 2 and message in problem.message


def test_the_defaults_stop_the_issue_s_templates(tmp_path: Path) -> None:
    write(tmp_path, "a.html", "x\n{{ 9**(9**9) }}")
    write(tmp_path, "b.html", "x\n{{ 'x'*3000000000 }}")
    write(tmp_path, "c.html", "x\n{% for i in range(10**9) %}{% endfor %}")
    write(tmp_path, "d.html", "{% macro m() %}{{ m() }}{% endmacro %}\n{{ m() }}")
    for name, limit in [
        ("a.html", "4,096 bits"),
        ("b.html", "1,000,000 characters"),
        ("c.html", "100,000"),
        ("d.html", "deeper than 50"),
    ]:
        (problem,) = check_template(tmp_path, name, sample_context())
        assert problem.line in (1, 2) and limit in problem.message, problem


def test_a_loop_that_runs_only_for_real_data_fails_that_render(tmp_path: Path) -> None:
    write(
        tmp_path,
        "real.html",
        "<p>Hi</p>\n{% if customer.id != '12748' %}\n"
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}\n"
        "{% endif %}",
    )
    assert check_template(tmp_path, "real.html", sample_context()) == []  # the sample is 12748
    context = sample_context()
    context["customer"] = {"id": "1", "first_name": "A", "locale": "en"}
    with pytest.raises(TemplateLimitError, match="line 3: more than 100,000 loop iterations"):
        Renderer(tmp_path).body("real.html", "real.html", context)


class TickingClock:
    """Each reading is ``step`` seconds after the last: a render's time, without waiting."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_the_time_budget_and_a_template_that_keeps_running_out_of_it(tmp_path: Path) -> None:
    write(tmp_path, "slow.html", "<p>\n{% for i in range(50) %}{{ i }}{% endfor %}</p>")
    write(tmp_path, "ok.html", "<p>{{ customer.first_name }}</p>")
    renderer = Renderer(tmp_path, clock=TickingClock(0.1))  # 1 s budget: about 10 steps
    for _ in range(QUARANTINE_AFTER):
        with pytest.raises(TemplateLimitError, match=r"slow\.html: line 2: rendering took longer"):
            renderer.body("slow.html", "ok.html", sample_context())
    with pytest.raises(TemplateLimitError, match="ran out of render time 3 times"):
        renderer.body("slow.html", "ok.html", sample_context())  # refused before rendering
    assert renderer.body("ok.html", "ok.html", sample_context()) == ("<p>Anna</p>",) * 2
    assert (
        Renderer(tmp_path, clock=TickingClock(0.001))
        .body("slow.html", "ok.html", sample_context())[0]
        .startswith("<p>\n0123")
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{% include '_offer.html' %}", "template not found: '_offer.html'"),
        ("{% include '/etc/passwd' %}", "'/etc/passwd' is outside the templates folder"),
        ("{% extends '../../x' %}", "'../../x' is outside the templates folder"),
        ("{% include 'loop.html' %}", "includes nested deeper than 50"),
        ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ],
)
def test_includes_and_errors_at_render_are_problems_not_crashes(
    tmp_path: Path, body: str, message: str
) -> None:
    write(tmp_path, "_offers.html", "offers")
    write(tmp_path, "loop.html", "{% include 'loop.html' %}")
    write(tmp_path, "t.html", f"<p>Hi</p>\n{body}")
    (problem,) = check_template(tmp_path, "t.html", sample_context())
    assert problem.key in ("t.html", "loop.html") and problem.line in (1, 2)
    assert message in problem.message
    subject = check_subject("{{ 9**(9**9) }}", sample_context(), tmp_path)
    assert subject is not None and "key 'subject'" in subject and "4,096 bits" in subject


@pytest.mark.parametrize(
    ("name", "body", "message"),
    [
        ("t.html", "{% include 'p.txt' %}", "'p.txt' a text template, whose values are not"),
        ("t.html", "{% extends 'base.txt' %}", "'base.txt' a text template"),
        ("t.html", "{% import 'm.txt' as m %}", "'m.txt' a text template"),
        ("t.html", "{% if customer.id == 'x' %}{% include 'p.txt' %}{% endif %}", "'p.txt' a"),
        ("t.txt", "{% include 'p.html' %}", "'p.html' HTML, whose markup would be in the text"),
        ("t.txt", "{% from 'm.html' import hi %}", "'m.html' HTML"),
    ],
)
def test_a_template_includes_only_templates_escaped_as_it_is(
    tmp_path: Path, name: str, body: str, message: str
) -> None:
    """A template is escaped by its own suffix, also where another includes it: a text
    partial in an HTML e-mail printed customer data as markup, an HTML one in the text part
    its tags and entities. ``check`` refuses it in every branch."""
    for partial in ("p.txt", "p.html", "base.txt", "m.txt", "m.html"):
        write(tmp_path, partial, "{% macro hi() %}{% endmacro %}{{ customer.first_name }}")
    write(tmp_path, name, f"<p>Hi</p>\n{body}")
    (problem,) = check_template(tmp_path, name, sample_context())
    assert (problem.key, problem.line) == (name, 2)
    assert message in problem.message and problem.message.startswith("blocked by the sandbox")


@pytest.mark.parametrize(
    "include", ["{% include 'p.' ~ 'txt' %}", "{% include 'p.txt' ignore missing %}"]
)
def test_a_text_partial_is_refused_in_an_html_email_at_render_time(
    tmp_path: Path, include: str
) -> None:
    write(tmp_path, "p.txt", "{{ customer.first_name }}")
    write(tmp_path, "t.html", f"<p>{include}</p>")
    context = sample_context()
    context["customer"] = {"id": "1", "first_name": "<script>x()</script>", "locale": "en"}
    with pytest.raises(TemplateError, match=r"'p\.txt' a text template"):
        Renderer(tmp_path).body("t.html", "t.html", context)


def test_format_and_round_within_the_limits_render(tmp_path: Path) -> None:
    """The checks before ``format`` and ``round`` resolve what the call would: fair
    widths from nested fields and fair precisions render as Python renders them."""
    write(
        tmp_path,
        "t.txt",
        "{{ '{0:>{1}}'.format('x', 3) }}|{{ '{:.2f}'.format(2.5) }}|"
        "{{ '{a:{b}}'.format_map({'a': 1, 'b': '03'}) }}|{{ 1234|round(-2) }}|"
        "{{ 1.25|round(1, 'floor') }}|{{ (1).to_bytes(2, 'big')|length }}",
    )
    assert check_template(tmp_path, "t.txt", sample_context()) == []
    (_, text) = Renderer(tmp_path).body("t.txt", "t.txt", sample_context())
    assert text == "  x|2.50|001|1200|1.2|2"


NESTED_LOOPS = "{% for a in [1] %}" * 25 + "x" + "{% endfor %}" * 25


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{% if true %}" * 3000 + "x" + "{% endif %}" * 3000, "nested too deeply"),
        ("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nested too deeply"),
        ("{{ " + " + ".join(["1"] * 20000) + " }}", "nested too deeply"),
        ("{{ " + "9" * 5000 + " }}", "Exceeds the limit (4300 digits)"),
        (NESTED_LOOPS, "cannot be compiled: too many statically nested blocks"),
    ],
)
def test_what_python_cannot_parse_or_compile_is_a_syntax_error_at_its_line(
    tmp_path: Path, body: str, message: str
) -> None:
    """Blocks or brackets thousands deep, a number past Python's 4,300 digits, more than 20
    loops inside each other: a ``RecursionError``, ``ValueError`` or ``SyntaxError`` came out
    of ``check`` (a traceback, exit 1, no file named) and out of every e-mail's render."""
    write(tmp_path, "t.html", f"<p>Hi</p>\n{body}\n")
    (problem,) = check_template(tmp_path, "t.html", sample_context())
    assert problem.message.startswith("syntax error: ") and message in problem.message
    assert (problem.key, problem.line) == ("t.html", 2)
    with pytest.raises(TemplateSyntaxError, match=re.escape(message)) as raised:
        Renderer(tmp_path).body("t.html", "t.html", sample_context())
    assert raised.value.name == "t.html"


@pytest.mark.parametrize(
    "expression", ["not " * 400 + "customer", "customer" + ".a" * 400, "customer" + "|e" * 400]
)
def test_an_expression_too_deep_to_check_is_a_problem_of_its_template(
    tmp_path: Path, expression: str
) -> None:
    """An expression 400 deep parses, but reading what it uses of the context went past
    Python's recursion limit: the ``RecursionError`` came out of ``check`` (a traceback, and
    no campaign checked after it) and out of the worker's load and reload."""
    write(tmp_path, "t.html", f"<p>Hi</p>\n{{{{ {expression} }}}}\n")
    (problem,) = check_template(tmp_path, "t.html", sample_context())
    assert problem.message.startswith("syntax error: nested too deeply")
    assert (problem.key, problem.line) == ("t.html", 2)


def test_a_partial_that_cannot_compile_fails_check_in_a_branch_the_sample_skips(
    tmp_path: Path,
) -> None:
    """``check`` rendered the sample, which never included the partial, and passed it:
    every e-mail then compiled the template with the partial in place, and failed."""
    write(tmp_path, "_deep.html", NESTED_LOOPS)
    write(
        tmp_path,
        "t.html",
        "<p>Hi</p>\n{% if locale == 'fr' %}{% include '_deep.html' %}{% endif %}",
    )
    (problem,) = check_template(tmp_path, "t.html", sample_context())
    assert (problem.key, problem.line) == ("_deep.html", 1)
    assert "too many statically nested blocks" in problem.message


def test_a_template_longer_than_the_output_bound_is_refused_before_it_is_parsed(
    tmp_path: Path,
) -> None:
    """Parsing and compiling are outside the render's budget: a 50 MB template cost 9.5 s
    of CPU and 876 MB before its output was found too long; a partial that long in a branch
    the sample skips passed check."""
    write(tmp_path, "big.html", "{# a comment #}" + "x" * 10_000)
    write(
        tmp_path, "t.html", "<p>Hi</p>\n{% if locale == 'fr' %}{% include 'big.html' %}{% endif %}"
    )
    for name in ("big.html", "t.html"):
        (problem,) = check_template(tmp_path, name, sample_context(), SMALL)
        assert (problem.key, problem.line, problem.value) == ("big.html", 1, "10,015 characters")
        assert problem.message.startswith("the template is longer than 10,000 characters")
    with pytest.raises(TemplateError, match="longer than 10,000 characters"):
        Renderer(tmp_path, limits=SMALL).body("big.html", "big.html", sample_context())


LONG = "x" * 5000


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"{{% include '{LONG}.html' %}}", "template not found: '"),
        (f"{{% include '{LONG}.png' %}}", "template not found: '"),
        (f"{{% include '/{LONG}.html' %}}", "template not found: '/"),
        (f"{{{{ 1|{LONG} }}}}", "syntax error: No filter named '"),
    ],
)
def test_a_long_template_name_is_cut_in_its_problem(
    tmp_path: Path, body: str, message: str
) -> None:
    """A name of 5,000 characters made a 5,000-character line; cut as ``errors.shown``
    cuts a problem's value (its first 200 characters and its length)."""
    write(tmp_path, "t.html", f"<p>Hi</p>\n{body}")
    (problem,) = check_template(tmp_path, "t.html", sample_context())
    assert problem.message.startswith(message)
    assert "x" * 199 + "… (5,0" in problem.message and "x" * 201 not in problem.message
    assert len(problem.message) < 400


def test_a_link_to_a_file_outside_the_templates_folder_is_not_read(tmp_path: Path) -> None:
    """A link in the folder to a secret (``/proc/self/environ``: the signing key, the ESP
    token) would put it into every e-mail: ``check`` refuses it, a worker's frozen copy
    leaves it out; a link to a template inside the folder is an ordinary template."""
    folder, secret = tmp_path / "templates", tmp_path / "secret.txt"
    folder.mkdir()
    secret.write_text("RECOCAMP_SIGNING_KEY=s3cret", encoding="utf-8")
    (folder / "env.txt").symlink_to(secret)
    write(folder, "_part.txt", "part")
    (folder / "alias.txt").symlink_to(folder / "_part.txt")
    write(folder, "t.txt", "{% include 'env.txt' %}")
    write(folder, "ok.txt", "{% include 'alias.txt' %}")
    (problem,) = check_template(folder, "t.txt", sample_context())
    assert "'env.txt' is a link to a file outside the templates folder" in problem.message
    assert check_template(folder, "ok.txt", sample_context()) == []
    assert sorted(snapshot(folder)) == ["_part.txt", "alias.txt", "ok.txt", "t.txt"]
    with pytest.raises(TemplateNotFound):
        Renderer.frozen(folder).body("ok.txt", "t.txt", sample_context())
    assert Renderer.frozen(folder).body("ok.txt", "ok.txt", sample_context()) == ("part",) * 2
    write(folder, "long.txt", "{% include ('x' * 5000) ~ '.txt' %}")  # ENAMETOOLONG
    (problem,) = check_template(folder, "long.txt", sample_context())
    assert problem.message.startswith("template not found: 'xxx")


def test_each_render_has_its_own_budget(tmp_path: Path) -> None:
    """Budgets are per render: many renders that each stay below a limit all pass."""
    write(tmp_path, "t.html", "{% for i in range(900) %}.{% endfor %}")
    renderer = Renderer(tmp_path, limits=SMALL)
    for _ in range(5):
        assert renderer.body("t.html", "t.html", sample_context())[0] == "." * 900


def test_a_template_that_includes_itself_is_counted_and_nested(tmp_path: Path) -> None:
    """Each include is a step and a level: twice per level grows exponentially, once per
    level nests deeply, and neither goes through a loop, a call or an operator."""
    write(tmp_path, "main.html", "{% set ns = namespace(d='') %}\n{% include 'twice.html' %}")
    write(
        tmp_path,
        "twice.html",
        "{% set ns.d = ns.d ~ 'x' %}{% if ns.d < 'xxxxxxxxxxxx' %}"
        "{% include 'twice.html' %}{% include 'twice.html' %}{% endif %}"
        "{% set ns.d = ns.d[:-1] %}",
    )
    deep = SMALL.model_copy(update={"max_depth": 20})  # 12 levels, 4,095 includes
    (problem,) = check_template(tmp_path, "main.html", sample_context(), deep)
    assert problem.key == "twice.html" and "more than 1,000 loop iterations" in problem.message
    write(tmp_path, "main.html", "{% set ns = namespace(d='') %}\n{% include 'once.html' %}")
    write(
        tmp_path,
        "once.html",
        "{% set ns.d = ns.d ~ 'x' %}{% if ns.d < 'x' * 15 %}{% include 'once.html' %}{% endif %}",
    )
    (problem,) = check_template(tmp_path, "main.html", sample_context(), SMALL)
    assert problem.key == "once.html" and "nested deeper than 10" in problem.message
    write(
        tmp_path,
        "main.html",
        "{% extends 'base.html' %}{% block b %}{% include 'part.html' %}{% endblock %}",
    )
    write(tmp_path, "base.html", "{% block b %}{% endblock %}")
    write(tmp_path, "part.html", "{% macro m() %}ok{% endmacro %}{{ m() }}")
    three = TemplateSettings(max_depth=3)  # extends, include, macro: the outermost is no level
    assert Renderer(tmp_path, limits=three).body("main.html", "main.html", {}) == ("ok", "ok")


def test_only_timeouts_in_a_row_quarantine_a_template(tmp_path: Path) -> None:
    """A success between timeouts starts the count again: a busy moment, repeated over a
    long-running worker's life, does not stop a template for good."""
    write(tmp_path, "slow.html", "{% for i in range(50) %}{{ i }}{% endfor %}")
    clock = TickingClock(0.1)  # 1 s budget: about 10 steps
    renderer = Renderer(tmp_path, clock=clock)
    for _ in range(2):
        for _ in range(QUARANTINE_AFTER - 1):
            with pytest.raises(TemplateLimitError, match="rendering took longer"):
                renderer.body("slow.html", "slow.html", sample_context())
        clock.step = 0.001
        assert renderer.body("slow.html", "slow.html", sample_context())[0].startswith("0123")
        clock.step = 0.1


def test_the_budget_counts_the_renders_cpu_not_a_stalled_machine(tmp_path: Path) -> None:
    """A render that is paused (a loaded machine, another thread's GC: here a call that
    sleeps) has not spent its budget: the message goes out. A render that computes for
    longer than the budget still fails, with the real clocks."""
    write(
        tmp_path,
        "paused.html",
        "<p>{{ pause() }}{% for i in range(3) %}{{ i|string }}{% endfor %}</p>",
    )
    write(tmp_path, "busy.html", "{% for i in range(100000) %}{{ i * i * i }}{% endfor %}")
    tight = TemplateSettings(render_time_s=0.05)

    def pause() -> str:
        time.sleep(0.2)
        return ""

    context = {**sample_context(), "pause": pause}
    renderer = Renderer(tmp_path, limits=tight)
    assert renderer.body("paused.html", "paused.html", context)[0] == "<p>012</p>"
    with pytest.raises(TemplateLimitError, match=r"rendering took longer than 0\.05 s"):
        renderer.body("busy.html", "busy.html", context)


def test_a_garbage_collection_during_a_render_is_not_spent_from_its_budget() -> None:
    """The collector runs in whatever thread allocates when it is due, and over a big heap
    it takes seconds: that is the process's housekeeping, not the template's work."""
    now = [0.0]
    budget = Budget(TemplateSettings(render_time_s=1.0), lambda: now[0], lambda: now[0])
    now[0] = 0.5
    budget.collected("start")
    now[0] = 4.5  # a four-second collection
    budget.collected("stop")
    now[0] = 4.9
    budget.tick()  # 0.9 s of the render's own time: within the budget
    now[0] = 5.6
    with pytest.raises(LimitExceeded, match="rendering took longer than 1 s"):
        budget.tick()
    assert on_collection in gc.callbacks  # every render's budget hears of collections


def test_a_real_collection_inside_a_render_is_credited(tmp_path: Path) -> None:
    write(tmp_path, "t.html", "{{ collect() }}{% for i in range(3) %}{{ i|string }}{% endfor %}")
    seen: list[str] = []
    renderer = Renderer(tmp_path, limits=TemplateSettings(render_time_s=1.0))
    original = Budget.collected

    def spy(self: Budget, phase: str) -> None:
        seen.append(phase)
        original(self, phase)

    context = {**sample_context(), "collect": lambda: gc.collect() and ""}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Budget, "collected", spy)
        assert renderer.body("t.html", "t.html", context)[0].endswith("012")
    assert seen[:2] == ["start", "stop"]


@pytest.mark.parametrize(
    "subject", ["Picked for you", "  Für Sie\r\n ausgewählt \n", "50 % off {not jinja}", "x" * 99]
)
def test_a_subject_without_jinja_is_what_its_render_would_be(subject: str) -> None:
    renderer = Renderer(TEMPLATES)
    rendered = renderer.env.render(renderer.env.from_string(subject), sample_context())
    assert renderer.subject(subject, sample_context()) == " ".join(rendered.split())
    assert renderer.subject(subject, sample_context()) == " ".join(subject.split())


def test_a_subject_with_jinja_is_rendered_and_limited() -> None:
    renderer = Renderer(TEMPLATES, limits=TemplateSettings(max_output_chars=10_000))
    assert renderer.subject("Hi {# note #}{{ customer.first_name }}", sample_context()) == "Hi Anna"
    with pytest.raises(TemplateLimitError, match="longer than 10,000 characters"):
        renderer.subject("x" * 10_001, sample_context())  # a plain one past the bound still fails


def test_a_subject_holds_no_control_character() -> None:
    """A customer's name with a NUL, an escape, a DEL or a C1 control (from a careless
    import) reached the Subject header; each is a space now, like a line break."""
    renderer = Renderer(TEMPLATES)
    name = "Eve\x00 Bcc\x1b[31m\x7fx\x85y\u2028z"
    context = {**sample_context(), "customer": {**sample_context()["customer"], "first_name": name}}
    assert renderer.subject("Hi {{ customer.first_name }}!", context) == "Hi Eve Bcc [31m x y z!"
    assert renderer.subject("Hi\x00 there\x07", sample_context()) == "Hi there"


def test_a_subject_is_at_most_what_the_provider_takes() -> None:
    """Postmark refuses a subject past 2,000 UTF-16 code units, message by message, at send
    time, and the outbox holds 1,000 characters; a longer one is a render error naming the
    length, also in ``check``. An emoji counts twice."""
    renderer = Renderer(TEMPLATES)
    assert renderer.subject("x" * 1000, sample_context()) == "x" * 1000
    assert renderer.subject("\U0001f600" * 500, sample_context()) == "\U0001f600" * 500
    for long in ("x" * 1001, "\U0001f600" * 500 + "x", "{{ 'y' * 3000 }}"):
        with pytest.raises(TemplateLimitError, match=r"the subject is [\d,]+ characters long"):
            renderer.subject(long, sample_context())
    problem = check_subject(
        "Hi {{ customer.first_name }}" + "!" * 1000, sample_context(), TEMPLATES
    )
    assert problem is not None and "1,007 characters long: at most 1,000" in problem


def test_a_subject_that_renders_empty_is_an_error() -> None:
    """A subject made only of a customer's field (or a blank text) rendered to nothing: the
    e-mail went out without a subject. It is this customer's render error now (the run
    skips them as ``not_rendered``), and ``check`` names it for the sample."""
    renderer = Renderer(TEMPLATES)
    context = {**sample_context(), "customer": {**sample_context()["customer"], "first_name": ""}}
    assert renderer.subject("{{ customer.first_name }}", sample_context()) != ""
    for subject in ("{{ customer.first_name }}", "{{ '  ' }}", "\x00 \x07"):
        with pytest.raises(TemplateLimitError, match="the subject is empty"):
            renderer.subject(subject, context)


def test_a_none_prints_as_nothing_not_as_the_word_none() -> None:
    """A customer without a first name has ``first_name`` none: ``Hi {{ customer.first_name
    }}`` passed ``check`` (the sample is Anna) and mailed "Hi None" to each of them, and a
    subject of their name alone went out as "None", though README says it is that
    customer's render error. None prints as nothing (the subject is then empty: an error)."""
    renderer = Renderer(TEMPLATES)
    customer = {**sample_context()["customer"], "first_name": None}
    nameless = {**sample_context(), "customer": customer}
    assert renderer.subject("Hi {{ customer.first_name }}!", nameless) == "Hi !"
    with pytest.raises(TemplateLimitError, match="the subject is empty"):
        renderer.subject("{{ customer.first_name }}", nameless)
    _, text = renderer.body("winback.html", "winback.txt", nameless)
    assert "None" not in text
    html = renderer.exact.from_string("<p>{{ offers[0].discounted_price }}{{ none }}</p>")
    html.name = "x.html"
    offer = {**sample_context()["offers"][0], "discounted_price": None}
    assert renderer.exact.render(html, {**nameless, "offers": [offer]}) == "<p></p>"


def test_a_subject_too_long_is_named_by_its_template_not_by_a_customers_data() -> None:
    """The error goes to the worker's log and the run's report: it quotes the subject's
    template, which is what to shorten, never the rendered line with a customer's address."""
    renderer = Renderer(TEMPLATES)
    customer = {**sample_context()["customer"], "email": "jane.doe@example.test"}
    context = {**sample_context(), "customer": customer}
    subject = "{{ customer.email }} " + "x" * 2000
    with pytest.raises(TemplateLimitError) as caught:
        renderer.subject(subject, context)
    assert "@" not in str(caught.value)
    assert "{{ customer.email }}" in str(caught.value)


def test_a_template_saved_with_a_byte_order_mark_prints_none(tmp_path: Path) -> None:
    """Windows editors save UTF-8 with a byte order mark: read as text it is U+FEFF, which
    Jinja printed before the layout's doctype and at the start of the text part. Stripped
    from every template file and the stylesheet, read from the folder or its snapshot."""
    bom = "\ufeff"
    write(
        tmp_path,
        "layout.html",
        bom + "<!DOCTYPE html><html><body>{% block b %}{% endblock %}</body></html>",
    )
    write(
        tmp_path,
        "main.html",
        bom + '{% extends "layout.html" %}{% block b %}<p>Hi</p>{% endblock %}',
    )
    write(tmp_path, "main.txt", bom + "Hi {{ customer.first_name }}")
    write(tmp_path, "email.css", bom + "p { color: red }")
    for renderer in (Renderer(tmp_path), Renderer(tmp_path, snapshot(tmp_path))):
        email = renderer.render("Hello", "main.html", "main.txt", sample_context("en"))
        assert email.html.startswith("<!DOCTYPE html>") and email.text.startswith("Hi Anna")
        assert bom not in email.html + email.text and "color: red" in email.html
