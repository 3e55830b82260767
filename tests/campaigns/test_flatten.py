"""Templates compiled flat (layouts and partials resolved once): the same bytes as rendered
as written, the sandbox's limits still fire, errors still name the file and line."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
from jinja2 import nodes

from recocamp.campaigns import flatten
from recocamp.campaigns.render import Renderer, check_template, sample_context
from recocamp.domain import Locale
from recocamp.errors import TemplateLimitError
from recocamp.settings import TemplateSettings
from tests.campaigns.test_render import TickingClock

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = ("winback", "cross_sell", "replenish", "birthday", "vip_tier", "nps")
LAYOUT = (
    "<!DOCTYPE html>\n<html><body>\n<h1>{% block title %}Default{% endblock %}</h1>\n"
    "{% block content %}{% endblock %}\n{% include '_footer.html' %}\n</body></html>\n"
)
PARTIAL = (
    "{% set note = 'partial' %}{% macro price(o) %}<b>{{ o.price }}</b>{% endmacro %}"
    "{% for offer in offers %}<li>{{ loop.index }} {{ offer.title }} {{ price(offer) }}"
    "{{ note }}</li>\n{% endfor %}"
)
CHILD = (
    "{% extends 'layout.html' %}\n{% block title %}Hi {{ customer.first_name }}{% endblock %}\n"
    "{% block content %}{% set note = 'child' %}<ul>{% include '_offers.html' %}</ul>"
    "{{ note }}{% endblock %}\n"
)


def write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text, encoding="utf-8")


def unresolved(renderer: Renderer, name: str) -> list[str]:
    """The ``extends`` and ``include`` tags left in ``name`` as compiled for e-mails."""
    env = renderer.env
    assert env.loader is not None
    tree = env.parse(env.loader.get_source(env, name)[0], name)
    return [type(n).__name__ for n in tree.find_all((nodes.Extends, nodes.Include))]


def exactly(renderer: Renderer, name: str, context: Mapping[str, object]) -> str:
    return renderer.exact.render(renderer.exact.get_template(name), context)


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    write(tmp_path, "layout.html", LAYOUT)
    write(tmp_path, "_footer.html", "<p>{{ shop.name }}</p>")
    write(tmp_path, "_offers.html", PARTIAL)
    write(tmp_path, "child.html", CHILD)
    return tmp_path


@pytest.mark.parametrize("locale", ["de", "en"])
def test_extends_and_include_render_byte_identically_flat(shop: Path, locale: Locale) -> None:
    renderer = Renderer(shop)
    context = sample_context(locale)
    flat = renderer.body("child.html", "child.html", context)[0]
    assert unresolved(renderer, "child.html") == []  # it was flattened
    assert flat == exactly(renderer, "child.html", context)
    assert "<h1>Hi Anna</h1>" in flat and "partial</li>" in flat
    assert flat.count("<li>") == len(context["offers"]) > 0
    assert "</ul>child" in flat  # what the partial sets stays in the partial, as in an include


@pytest.mark.parametrize("name", [f"{c}.{ext}" for c in CAMPAIGNS for ext in ("html", "txt")])
def test_the_shipped_templates_are_flattened_and_render_the_same(name: str) -> None:
    renderer = Renderer(ROOT / "templates")
    assert unresolved(renderer, name) == []
    for locale in ("de", "en"):
        context = sample_context(locale)
        flat = renderer.body(name, name, context)[0]
        assert flat == exactly(renderer, name, context)


def test_what_cannot_be_flattened_is_left_as_written(shop: Path) -> None:
    """``super()`` reaches the layout's block by name: that template keeps its ``extends``
    (and renders as before); a template including itself keeps its ``include``."""
    write(
        shop,
        "super.html",
        "{% extends 'layout.html' %}{% block title %}{{ super() }}!{% endblock %}",
    )
    write(shop, "self.html", "{% if false %}{% include 'self.html' %}{% endif %}x")
    renderer = Renderer(shop)
    assert unresolved(renderer, "super.html") == ["Extends"]
    assert "<h1>Default!</h1>" in renderer.body("super.html", "super.html", sample_context())[0]
    assert unresolved(renderer, "self.html") == ["Include"]
    assert renderer.body("self.html", "self.html", sample_context()) == ("x", "x")


def test_the_limits_fire_inside_flattened_templates_naming_the_partial(shop: Path) -> None:
    write(
        shop,
        "_offers.html",
        "<p>\n{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    )
    renderer = Renderer(shop)
    assert unresolved(renderer, "child.html") == []
    with pytest.raises(TemplateLimitError, match=r"_offers\.html: line 2: more than 100,000 loop"):
        renderer.body("child.html", "child.html", sample_context())
    write(shop, "_offers.html", "{% for i in range(900) %}{{ 'x' * 90 }}{% endfor %}")
    small = TemplateSettings(max_output_chars=50_000)
    with pytest.raises(TemplateLimitError, match="output is longer than 50,000 characters"):
        Renderer(shop, limits=small).body("child.html", "child.html", sample_context())
    write(shop, "_offers.html", "{% for i in range(50) %}{{ i }}{% endfor %}")
    slow = Renderer(shop, clock=TickingClock(0.1))  # 1 s budget: about 10 steps
    with pytest.raises(TemplateLimitError, match="rendering took longer"):
        slow.body("child.html", "child.html", sample_context())


def test_a_self_including_template_still_hits_the_depth_limit(tmp_path: Path) -> None:
    write(tmp_path, "main.html", "{% set ns = namespace(d='') %}\n{% include 'once.html' %}")
    write(
        tmp_path,
        "once.html",
        "{% set ns.d = ns.d ~ 'x' %}{% if ns.d < 'x' * 15 %}{% include 'once.html' %}{% endif %}",
    )
    renderer = Renderer(tmp_path, limits=TemplateSettings(max_depth=10))
    with pytest.raises(TemplateLimitError, match="nested deeper than 10"):
        renderer.body("main.html", "main.html", sample_context())


def test_a_partial_too_long_to_number_its_lines_stays_an_include(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(flatten, "LINES", 4)  # lines 4 and beyond could not carry a file
    write(tmp_path, "main.html", "{% include '_short.html' %}|{% include '_long.html' %}")
    write(tmp_path, "_short.html", "{{ shop.name }}")
    write(tmp_path, "_long.html", "<p>\n\n\n\n{{ shop.name }}</p>")
    renderer = Renderer(tmp_path)
    assert unresolved(renderer, "main.html") == ["Include"]  # the long one, left as written
    context = sample_context()
    flat = renderer.body("main.html", "main.html", context)[0]
    assert (
        flat == exactly(renderer, "main.html", context) and flat.count(context["shop"]["name"]) == 2
    )


def chain(directory: Path, depth: int, body: str) -> None:
    """``_p0.html`` … ``_p{depth}.html``, each wrapping ``body`` around the next one's
    include (``{}`` in ``body``); the last one prints x."""
    for n in range(depth):
        write(directory, f"_p{n}.html", body.format(f"{{% include '_p{n + 1}.html' %}}"))
    write(directory, f"_p{depth}.html", "x")


def nodes_of(renderer: Renderer, name: str) -> int:
    env = renderer.env
    assert env.loader is not None
    tree = env.parse(env.loader.get_source(env, name)[0], name)
    return len([tree, *tree.find_all(nodes.Node)])


def test_partials_that_repeat_are_resolved_within_a_bound_of_nodes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partial that includes the next one twice, 20 deep, is 2²⁰ partials resolved into
    one tree: the first e-mail ran for minutes and gigabytes compiling it (a branch no
    e-mail takes too, which ``check`` never renders). Past the bound, includes stay."""
    monkeypatch.setattr(flatten, "FLAT_NODES", 1000)
    chain(tmp_path, 12, "{0}{0}")  # 4,096 copies of the last one
    write(tmp_path, "main.html", "{% include '_p0.html' %}")
    renderer = Renderer(tmp_path)
    assert nodes_of(renderer, "main.html") <= 1100  # the bound, and a scope per include
    assert "Include" in unresolved(renderer, "main.html")
    context = sample_context()
    flat = renderer.body("main.html", "main.html", context)[0]
    assert flat == exactly(renderer, "main.html", context) == "x" * 4096


def test_partials_nested_past_pythons_block_limit_render(tmp_path: Path) -> None:
    """Thirty partials, each a loop around the next: each compiles, and ``check`` passed
    them, but resolved into one template they were 30 loops inside each other, past
    Python's 20 nested blocks, and every e-mail failed with a SyntaxError."""
    chain(tmp_path, 30, "{{% for a in [1] %}}{0}{{% endfor %}}")
    write(tmp_path, "main.html", "{% include '_p0.html' %}")
    assert check_template(tmp_path, "main.html", sample_context()) == []
    renderer = Renderer(tmp_path)
    flat = renderer.body("main.html", "main.html", sample_context())[0]
    assert flat == exactly(renderer, "main.html", sample_context()) == "x"


def test_a_flat_template_python_cannot_compile_is_compiled_as_written(tmp_path: Path) -> None:
    """Three partials of seven loops each, within the files resolved: 21 loops in the flat
    template; as written, each has seven."""
    loops = "{{% for a in [1] %}}" * 7 + "{0}" + "{{% endfor %}}" * 7
    chain(tmp_path, 3, loops)
    write(tmp_path, "main.html", "{% include '_p0.html' %}")
    assert check_template(tmp_path, "main.html", sample_context()) == []
    renderer = Renderer(tmp_path)
    assert renderer.body("main.html", "main.html", sample_context())[0] == "x"
    assert unresolved(renderer, "main.html") == ["Include"]
