"""Templates compiled flat: ``extends`` and ``include`` resolved once, when a template is
compiled, instead of at every render.

Each ``{% extends %}`` and ``{% include %}`` costs about 45 µs per render (the parent or
included template is looked up, given a new context and run as its own generator, and the
sandbox counts it as a step and a level), several times per e-mail. Marketers keep writing
layouts and partials; :class:`FlatEnvironment` compiles each template with its layout's tree
around its blocks and its partials' trees in place of the ``include`` tags, once per
template file as the renderer loaded it (Jinja's cache; a renderer is built per set of
templates, see ``render.Renderer``).

Only what renders the same flat is flattened; anything else is left to Jinja as written:

- an ``include`` of a constant name, with context, not ``ignore missing``, escaped like the
  including template, of a template without blocks, ``extends``, ``self`` or ``super``: its
  tree goes in a scope of its own (what it sets stays inside, as in an include);
- a template whose top level is ``extends`` of a constant name followed by blocks only
  (whitespace between them aside), none of them scoped or required and neither it nor its
  layout using ``self`` or ``super``: the layout's tree, with the child's blocks in place
  of the layout's blocks of the same name;
- a template that includes or extends itself (directly or not), or one that cannot be
  loaded or parsed, stays an ``include``/``extends``: the sandbox's depth and step limits
  and the error messages apply as before;
- so does what lies past :data:`FLAT_DEPTH` files deep or past :data:`FLAT_NODES` nodes in
  all: a partial that includes the next one twice, 20 deep, made a tree of 2²⁰ partials
  (minutes and gigabytes when the first e-mail compiled it, even in a branch no e-mail takes),
  and 300 partials inside each other were too deep for Python's compiler;
- a flat template that Python cannot compile (more than 20 loops inside each other once
  its partials are in place) is compiled as written.

Every loop and literal of a flattened tree has gone through the sandbox's own parse (see
``render_limits.LimitedEnvironment._parse``), so the loop, output, size and time limits
hold as before. An error still names the file and line where it happened: each node taken
from another file carries that file's number in its line (``file × LINES + line``), which
:meth:`FlatEnvironment.origin` turns back into the file and its own line.
"""

from __future__ import annotations

from collections.abc import Callable
from types import CodeType
from typing import Any

from jinja2 import TemplateError, TemplateSyntaxError, nodes
from jinja2.visitor import NodeTransformer

from recocamp.campaigns.render_limits import LimitedEnvironment

UNFLATTENABLE_NAMES = frozenset({"self", "super"})  # they reach blocks by name at render time
LINES = 100_000  # a node from the flat template's n-th file has line n × LINES + its own line
FLAT_DEPTH = 8  # layouts and partials resolved inside each other, at most
FLAT_NODES = 50_000  # nodes of the templates resolved into one, at most (a shop's: 2,000)
Flat = tuple[nodes.Template, tuple[str, ...]]  # a tree and the files its lines refer to


class FlatEnvironment(LimitedEnvironment):
    """The sandbox, compiling each named template with its layout and partials resolved."""

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.origins: dict[str, tuple[str, ...]] = {}  # flat template → the files of its lines
        self.as_written: set[str] = set()  # templates whose flat tree did not compile

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        if name is None or name in self.as_written:  # a subject line; or see compile()
            return tree
        flat, files = _Flattener(self, (name,), [FLAT_NODES - len(_all(tree))]).template(tree)
        self.origins[name] = files
        return flat

    def compile(  # type: ignore[override]
        self,
        source: str | nodes.Template,
        name: str | None = None,
        filename: str | None = None,
        raw: bool = False,
        defer_init: bool = False,
    ) -> str | CodeType:
        """The flat template, or the template as written where the flat one does not
        compile (its partials' loops inside its own passed Python's 20 nested blocks)."""
        try:
            return super().compile(source, name, filename, raw, defer_init)
        except TemplateSyntaxError:
            flattened = name is not None and len(self.origins.get(name, ())) > 1
            if name is None or not isinstance(source, str) or not flattened:
                raise
        self.as_written.add(name)
        self.origins.pop(name, None)
        return super().compile(source, name, filename, raw, defer_init)

    def origin(self, name: str, line: int | None) -> tuple[str, int | None]:
        """The file and line that the flat template ``name``'s ``line`` came from."""
        files = self.origins.get(name)
        if files is None or line is None:
            return name, line
        number, own = divmod(line, LINES)
        return (files[number], own) if number < len(files) else (name, line)

    def parsed(self, name: str, stack: tuple[str, ...], left: list[int]) -> Flat | None:
        """``name``'s tree, its own includes and layout resolved, or None when it cannot be
        loaded or parsed, is already being resolved (``stack``: a cycle), or lies past
        :data:`FLAT_DEPTH` or the nodes ``left`` of :data:`FLAT_NODES` (shared by every
        file of one flat template, so the work is bounded however the files repeat)."""
        if name in stack or self.loader is None or len(stack) >= FLAT_DEPTH or left[0] <= 0:
            return None
        try:
            source, filename, _ = self.loader.get_source(self, name)
            tree = super()._parse(source, name, filename)
        except TemplateError:  # missing or broken: the render says so, as written
            return None
        left[0] -= len(_all(tree))
        if _longest(tree) >= LINES or left[0] < 0:  # no file number in its lines; too big
            return None
        return _Flattener(self, (*stack, name), left).template(tree)

    def escapes(self, name: str) -> bool:
        autoescape: bool | Callable[[str | None], bool] = self.autoescape
        return autoescape(name) if callable(autoescape) else bool(autoescape)


class _Flattener(NodeTransformer):
    """Resolves one template's includes (in place) and then its layout."""

    def __init__(self, env: FlatEnvironment, stack: tuple[str, ...], left: list[int]) -> None:
        self.env, self.stack, self.left = env, stack, left
        self.name = stack[-1]
        self.files = [self.name]  # the files the lines of the result refer to

    def template(self, tree: nodes.Template) -> Flat:
        if _longest(tree) >= LINES:  # its lines could not carry a file number
            return tree, (self.name,)
        tree = self.visit(tree)
        return self._extended(tree) or tree, tuple(self.files)

    def _taken(self, flat: Flat) -> list[nodes.Node]:
        """The body of another file's resolved tree, its lines numbered for this result."""
        tree, files = flat
        numbers = [self._number(name) for name in files]
        for node in _all(tree):
            if node.lineno is None:  # a node the sandbox added (its loop counter): no line
                continue
            where, own = divmod(node.lineno, LINES)
            node.lineno = numbers[where] * LINES + own
        return list(tree.body)

    def _number(self, name: str) -> int:
        if name not in self.files:
            self.files.append(name)
        return self.files.index(name)

    def visit_Include(self, node: nodes.Include) -> nodes.Node:
        target = _constant(node.template)
        if (
            target is None
            or not node.with_context
            or node.ignore_missing
            or self.env.escapes(target) != self.env.escapes(self.name)
        ):
            return node
        included = self.env.parsed(target, self.stack, self.left)
        if included is None or _uses_blocks(included[0]):
            return node
        return nodes.Scope(self._taken(included), lineno=node.lineno)

    def _extended(self, tree: nodes.Template) -> nodes.Template | None:
        """The layout's tree with this template's blocks in it, or None (not flattenable)."""
        if not tree.body or not isinstance(tree.body[0], nodes.Extends):
            return None
        parent = _constant(tree.body[0].template)
        rest = [n for n in tree.body[1:] if not _blank(n)]
        if parent is None or not all(isinstance(n, nodes.Block) for n in rest):
            return None
        blocks = {b.name: b for b in tree.find_all(nodes.Block)}
        if any(b.scoped or b.required for b in blocks.values()) or _names(tree):
            return None
        layout = self.env.parsed(parent, self.stack, self.left)
        if layout is None or _names(layout[0]):
            return None
        flat = nodes.Template(_Blocks(blocks).body(self._taken(layout)), lineno=1)
        names = [b.name for b in flat.find_all(nodes.Block)]
        if len(names) != len(set(names)):  # a block in two places: left to Jinja
            return None
        flat.set_environment(self.env)
        return flat


class _Blocks(NodeTransformer):
    """Puts the child's blocks in place of the layout's blocks of the same name."""

    def __init__(self, blocks: dict[str, nodes.Block]) -> None:
        self.blocks = blocks

    def body(self, body: list[nodes.Node]) -> list[nodes.Node]:
        return [self.visit(node) for node in body]

    def visit_Block(self, node: nodes.Block) -> nodes.Node:
        if node.name in self.blocks:
            return self.blocks[node.name]
        return self.generic_visit(node)


def _all(tree: nodes.Node) -> list[nodes.Node]:
    return [tree, *tree.find_all(nodes.Node)]


def _longest(tree: nodes.Template) -> int:
    return max((node.lineno or 0 for node in _all(tree)), default=0)


def _constant(node: nodes.Expr) -> str | None:
    return node.value if isinstance(node, nodes.Const) and isinstance(node.value, str) else None


def _blank(node: nodes.Node) -> bool:
    """Whitespace at a child template's top level: Jinja never prints it after ``extends``."""
    return isinstance(node, nodes.Output) and all(
        isinstance(n, nodes.TemplateData) and not n.data.strip() for n in node.nodes
    )


def _names(tree: nodes.Template) -> bool:
    """Whether the template reaches blocks by name (``self.x()``, ``super()``)."""
    return any(n.name in UNFLATTENABLE_NAMES for n in tree.find_all(nodes.Name))


def _uses_blocks(tree: nodes.Template) -> bool:
    return _names(tree) or any(True for _ in tree.find_all((nodes.Block, nodes.Extends)))
