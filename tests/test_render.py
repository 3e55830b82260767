"""Rendering: sandbox escapes, strict context, autoescape, CSS inlined once per template."""

from __future__ import annotations

from pathlib import Path

import pytest

from recocamp.render import Renderer, check_subject, check_template, sample_context

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates"
CAMPAIGNS = ("winback", "cross_sell", "replenish", "birthday", "vip_tier")


@pytest.mark.parametrize("name", [f"{c}.{ext}" for c in CAMPAIGNS for ext in ("html", "txt")])
@pytest.mark.parametrize("locale", ["de", "en"])
def test_shipped_templates_pass_check(name: str, locale: str) -> None:
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
    locale: str, reads: str, never: str
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


def test_css_is_inlined_when_the_template_is_loaded_not_per_email(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "email.css", ".x { color: red; }")
    write(tmp_path, "t.html", '<div class="x">{{ customer.first_name }}</div>')
    renderer = Renderer(tmp_path)
    import recocamp.render as render_module

    calls = []
    original = render_module.InliningLoader._inline

    def counting(self: render_module.InliningLoader, source: str) -> str:
        calls.append(source)
        return original(self, source)

    monkeypatch.setattr(render_module.InliningLoader, "_inline", counting)
    for name in ("A", "B", "C"):
        context = sample_context()
        context["customer"] = {"first_name": name}
        email = renderer.render("s", "t.html", "t.html", context)
        assert email.html == f'<div class="x" style="color: red;">{name}</div>'
    assert len(calls) == 1
