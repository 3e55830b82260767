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
  string; ``check`` refuses a template that reads a variable or a key outside the contract
  (:func:`contract_problems`, also in branches a sample never takes) and renders every
  template with the sample context, so that happens before a campaign runs, never mid-run.
- Autoescape for ``.html``; the text part is not escaped.
- CSS: ``templates/email.css`` is inlined into each HTML template's *source* when Jinja loads
  it (css-inline's fragment mode leaves Jinja syntax alone; templates use ``div``s, because an
  HTML parser moves text out of tables). Jinja caches the compiled result, so the cost is paid
  once per template, not per e-mail.

The context templates read is a typed contract, documented key by key (README.md §The
template context): :mod:`recocamp.campaigns.context`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path

import css_inline
from jinja2 import (
    BaseLoader,
    DictLoader,
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    nodes,
)
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.visitor import NodeVisitor

from recocamp.campaigns import context as contract
from recocamp.campaigns.context import context_for as context_for  # the callers' old home
from recocamp.campaigns.context import money as money
from recocamp.campaigns.context import sample_context as sample_context
from recocamp.campaigns.flatten import FlatEnvironment
from recocamp.campaigns.render_limits import (
    COUNTED,
    MADE,
    TOO_DEEP,
    LimitedEnvironment,
    location,
)
from recocamp.config_files import not_utf8, without_bom
from recocamp.errors import ConfigError, Problem, TemplateLimitError, shown
from recocamp.settings import TemplateSettings

STYLESHEET = "email.css"
QUARANTINE_AFTER = 3  # a template that ran out of time this often is not rendered any more
SUBJECT = "subject"  # the name a subject line's errors carry
JINJA_SYNTAX = re.compile(r"\{[{%#]")  # a string without these renders as itself
# What the outbox's ``subject`` column holds (``VARCHAR(1000)``), in UTF-16 code units (never
# fewer than characters): Postmark takes 2,000 ("Subject line and From address character
# limits"), and a subject between the two failed the run's insert on PostgreSQL, the whole
# chunk's customers with it
SUBJECT_MAX = 1000
# What rendering one e-mail raises because of its template and that e-mail's data (a
# division by zero, a filter given a value it cannot take, a limit): that e-mail fails,
# the others go on. Anything else (the process, the store) is not the e-mail's.
RENDER_ERRORS: tuple[type[Exception], ...] = (
    TemplateError,
    TemplateLimitError,
    ArithmeticError,
    LookupError,
    TypeError,
    ValueError,
    AttributeError,
    RecursionError,
)
# C0 and C1 control characters (NUL, ESC, DEL …): no header may hold them; each becomes a space
_CONTROLS = dict.fromkeys([*range(0x20), *range(0x7F, 0xA0)], " ")


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str


SUFFIXES = (".html", ".txt", ".css")  # template files; others (a logo.png) are no templates


def is_html(name: str | None) -> bool:
    """Whether a template is HTML (escaped, the stylesheet inlined), by its suffix in any case,
    as :func:`is_template` reads it: ``Offer.HTML`` was a template but rendered as text,
    customer data unescaped into the HTML part."""
    return name is not None and name.lower().endswith(".html")


def is_text(name: str | None) -> bool:
    """Whether a template is the text part's kind (``.txt``, in any case)."""
    return name is not None and name.lower().endswith(".txt")


def mixed(template: str, parent: str) -> str | None:
    """Why ``parent`` may not include, extend or import ``template``, or None: each template
    is escaped by its own suffix wherever it renders, so a text partial in an HTML e-mail
    printed customer data as markup (``<script>`` in a first name), and an HTML partial in
    the text part its tags and entities. A stylesheet (``<style>{% include "email.css" %}``)
    is neither."""
    if is_html(parent) and is_text(template):
        return (
            f"{shown(parent)!r} is HTML and {shown(template)!r} a text template, whose values "
            "are not escaped: include, extend or import .html templates in it"
        )
    if is_text(parent) and is_html(template):
        return (
            f"{shown(parent)!r} is a text template and {shown(template)!r} HTML, whose markup "
            "would be in the text part: include, extend or import .txt templates in it"
        )
    return None


def is_template(name: str) -> bool:
    """Whether a file is a template by its name: the loader reads no other file, so ``check``
    and the frozen templates a worker renders with (:func:`snapshot`) see the same ones."""
    return name.lower().endswith(SUFFIXES)


def inside(directory: Path, path: Path) -> bool:
    """Whether ``path``, its links followed, is a file of ``directory``: a link in the
    templates folder to ``/proc/self/environ`` or ``../settings.toml`` would otherwise put the
    process's secrets or any file it can read into an e-mail."""
    try:
        path.resolve(strict=True).relative_to(directory.resolve(strict=True))
    except (OSError, ValueError):
        return False
    return True


def _outside(directory: Path, path: Path) -> bool:
    """Whether ``path`` exists and is a link out of ``directory`` (a name the file system
    refuses, too long or with NUL, is no file: "not found", as the loader says)."""
    try:
        exists = path.exists()
    except (OSError, ValueError):
        return False
    return exists and not inside(directory, path)


def snapshot(directory: Path, *, unreadable_left_out: bool = False) -> dict[str, str]:
    """Every template file of ``directory`` as text, by its name in the directory (other
    files, an image beside the templates, and links to files outside the folder are left
    out); a template that is not UTF-8 is a ConfigError naming it and the line of its first
    bad byte — or, with ``unreadable_left_out``, left out (the worker's snapshot: ``check``
    names the file for every campaign that uses it, and those are not run, so an old Latin-1
    file no campaign uses stopped the whole worker), but for ``email.css``, which every HTML
    e-mail inlines."""
    found = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and is_template(path.name) and inside(directory, path):
            try:
                found[path.relative_to(directory).as_posix()] = without_bom(
                    path.read_text(encoding="utf-8")
                )
            except UnicodeDecodeError as exc:
                if not unreadable_left_out or path == directory / STYLESHEET:
                    # the stylesheet goes into every HTML e-mail: none without it
                    raise ConfigError(path, [not_utf8(exc)]) from None
    return found


class Refused(TemplateNotFound):
    """A template name the loader refuses to read; its message says why."""


class OutsideTemplates(Refused):
    """An include or extends of a path outside the templates folder (``/etc/passwd``)."""


class NotATemplate(Refused):
    """A file whose name is not a template's (:data:`SUFFIXES`): an image is not rendered."""


class UnreadableTemplate(TemplateError):
    """A template file that cannot be used as it is, wherever it is loaded (the campaign's
    template, or one it includes or extends): the problem names that file, not the template
    that was being rendered. A ``TemplateError``, so flattening leaves its include alone and
    the render reports it."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        super().__init__(str(self.problem))


class NotUtf8(UnreadableTemplate):
    """A template file that is not UTF-8 (the problem has the line of its first bad byte)."""

    def __init__(self, name: str, error: UnicodeDecodeError) -> None:
        super().__init__(replace(not_utf8(error), key=name))


class TooLong(UnreadableTemplate):
    """A template file longer than the output bound: parsing and compiling it are not
    within the render's budget (a 50 MB template took 9.5 s of CPU and 876 MB to refuse)."""

    def __init__(self, name: str, length: int, bound: int) -> None:
        message = f"the template is longer than {bound:,} characters ([templates] max_output_chars)"
        super().__init__(Problem(message, key=name, line=1, value=f"{length:,} characters"))


class InliningLoader(BaseLoader):
    """A loader that inlines ``email.css`` into HTML sources as they are loaded; from the
    files of a directory, or from a :func:`snapshot` of them (``sources``)."""

    def __init__(self, directory: Path, sources: Mapping[str, str] | None = None) -> None:
        self.directory = None if sources is not None else directory  # read from: links checked
        self.root = directory
        self.files: BaseLoader = (
            FileSystemLoader(str(directory)) if sources is None else DictLoader(dict(sources))
        )
        sheet = directory / STYLESHEET
        self.unreadable: UnicodeDecodeError | None = None  # the stylesheet's, for HTML
        if sources is not None:
            self.css = sources.get(STYLESHEET, "")
        else:
            # a file (a named pipe there was read, waiting for a writer for ever)
            readable = sheet.is_file() and inside(directory, sheet)
            try:
                self.css = without_bom(sheet.read_text(encoding="utf-8")) if readable else ""
            except UnicodeDecodeError as exc:  # a problem of each HTML template, not a crash
                self.css, self.unreadable = "", exc
        self.fragments = css_inline.CSSInliner(load_remote_stylesheets=False)
        self.documents = css_inline.CSSInliner(
            load_remote_stylesheets=False, keep_style_tags=True, extra_css=self.css or None
        )

    def get_source(
        self, environment: Environment, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        named = shown(template)  # a long name cut, as a problem's value is
        pieces = template.replace("\\", "/").split("/")
        if template.startswith("/") or ".." in pieces or ":" in pieces[0]:
            raise OutsideTemplates(template, f"{named!r} is outside the templates folder")
        if not is_template(template):
            names = ", ".join(SUFFIXES)
            raise NotATemplate(template, f"{named!r} is not a template file ({names})")
        if self.directory is not None and _outside(self.directory, self.directory / template):
            raise OutsideTemplates(
                template, f"{named!r} is a link to a file outside the templates folder"
            )
        if self.unreadable is not None and is_html(template):
            raise NotUtf8(STYLESHEET, self.unreadable)  # inlined into every HTML template
        try:
            source, filename, uptodate = self.files.get_source(environment, template)
        except UnicodeDecodeError as exc:
            raise NotUtf8(template, exc) from None
        except TemplateNotFound:
            if self.directory is None:
                self._left_out(template)
            raise
        source = without_bom(source)
        bound = getattr(environment, "limits", TemplateSettings()).max_output_chars
        if len(source) > bound:
            raise TooLong(template, len(source), bound)
        if is_html(template) and self.css:
            source = self._inline(source)
        return source, filename, uptodate

    def _left_out(self, template: str) -> None:
        """A template a snapshot left out for not being UTF-8 is named as such (a worker
        checks its frozen templates: "not found" would send the marketer looking for a file
        that is there)."""
        path = self.root / template
        try:
            if path.is_file() and inside(self.root, path):
                path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise NotUtf8(template, exc) from None
        except (OSError, ValueError):  # gone, unreadable, a name the system refuses
            return

    def _inline(self, source: str) -> str:
        if "<html" in source.lower():  # a layout: inline the document, keep its <style>
            return str(self.documents.inline(source))
        return str(self.fragments.inline_fragment(source, self.css))


def environment(
    directory: Path,
    sources: Mapping[str, str] | None = None,
    limits: TemplateSettings | None = None,
    clock: Callable[[], float] | None = None,
    *,
    flat: bool = False,
) -> LimitedEnvironment:
    """The sandbox over the templates; ``flat``: layouts and partials resolved when a template
    is compiled (``flatten.FlatEnvironment``), for rendering e-mails."""
    kind = FlatEnvironment if flat else LimitedEnvironment
    return kind(
        limits or TemplateSettings(),
        clock,
        {"number": contract.number_filter},
        mixed,
        loader=InliningLoader(directory, sources),
        undefined=StrictUndefined,
        autoescape=is_html,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )


class Renderer:
    """Renders one campaign's subject, HTML and text part with a context, within ``limits``.

    :meth:`frozen` renders from the templates as they are *now*: a worker keeps the last set
    that passed ``check`` while a marketer edits the files, and hands the same set to its
    delivering processes, so queued mail never meets a half-saved template.

    Bodies render from templates compiled flat (``flatten``), each once per renderer;
    ``exact`` compiles them as written (what ``check`` renders).
    """

    def __init__(
        self,
        directory: Path,
        sources: Mapping[str, str] | None = None,
        limits: TemplateSettings | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.directory, self.sources = directory, sources
        self.limits = limits or TemplateSettings()
        self.env = environment(directory, sources, self.limits, clock, flat=True)
        self.exact = environment(directory, sources, self.limits, clock)
        self._subjects: dict[str, Template | str] = {}  # compiled, or plain text as it renders
        self._timeouts: dict[str, int] = {}  # template → renders in a row that ran out of time

    @classmethod
    def frozen(cls, directory: Path, limits: TemplateSettings | None = None) -> Renderer:
        """The templates as they are now, for what passed ``check`` with them (a template
        that is not UTF-8 is left out: each campaign that uses it failed ``check``)."""
        return cls(directory, snapshot(directory, unreadable_left_out=True), limits)

    def render(
        self, subject: str, html: str, text: str, context: Mapping[str, object]
    ) -> RenderedEmail:
        return RenderedEmail(self.subject(subject, context), *self.body(html, text, context))

    def subject(self, subject: str, context: Mapping[str, object]) -> str:
        """The subject line (a Jinja string), on one line. One without Jinja syntax (most
        are: "Picked for you") is its own render, returned without rendering it for every
        e-mail of a run."""
        compiled = self._subjects.get(subject)
        if compiled is None:
            plain = (
                not JINJA_SYNTAX.search(subject) and len(subject) <= self.limits.max_output_chars
            )
            compiled = self._subjects[subject] = (
                one_line(subject) if plain else self.env.from_string(subject)
            )
            if isinstance(compiled, Template):
                compiled.name = SUBJECT
        if isinstance(compiled, str):
            line = compiled
        else:
            line = one_line(self._render(compiled, context, subject))
        if not line.strip():  # "{{ customer.first_name }}" of a customer without one
            raise TemplateLimitError(SUBJECT, [Problem("the subject is empty", value=subject)])
        size = len(line.encode("utf-16-le")) // 2
        if size > SUBJECT_MAX:
            message = f"the subject is {size:,} characters long: at most {SUBJECT_MAX:,}"
            # the template, what to shorten: the rendered line holds a customer's data
            raise TemplateLimitError(SUBJECT, [Problem(message, value=subject)])
        return line

    def body(self, html: str, text: str, context: Mapping[str, object]) -> tuple[str, str]:
        """The HTML and the text part; raises jinja2's ``TemplateError`` subclasses and
        ``TemplateLimitError``."""
        return self._part(html, context), self._part(text, context)

    def _part(self, name: str, context: Mapping[str, object]) -> str:
        return self._render(self.env.get_template(name), context, name)

    def _render(self, template: Template, context: Mapping[str, object], key: str) -> str:
        """One render; a template that keeps running out of time is refused at once (its
        renders would each cost the whole budget)."""
        name = str(template.name)
        if self._timeouts.get(key, 0) >= QUARANTINE_AFTER:
            raise TemplateLimitError(
                name,
                [
                    Problem(
                        f"ran out of render time {QUARANTINE_AFTER} times: not rendered again "
                        "until the templates change"
                    )
                ],
            )
        try:
            rendered = self.env.render(template, context)
        except TemplateLimitError as exc:
            if any("render time" in p.message for p in exc.problems):
                self._timeouts[key] = self._timeouts.get(key, 0) + 1
            raise
        self._timeouts.pop(key, None)  # only timeouts in a row count: a slow moment is not a loop
        return rendered


def one_line(text: str) -> str:
    """``text`` as a header line: whitespace runs and control characters (a NUL or an escape
    in a customer's name) become one space, the ends trimmed."""
    return " ".join(text.translate(_CONTROLS).split())


def check_template(
    directory: Path,
    name: str,
    sample: Mapping[str, object],
    limits: TemplateSettings | None = None,
    sources: Mapping[str, str] | None = None,
) -> list[Problem]:
    """Syntax, what the template and the templates it includes or extends read outside the
    contract (a variable, or a key of one: see :func:`contract_problems`), that each of them
    compiles as e-mails compile it (flat: a partial with loops nested in a branch the sample
    skips passed, and every e-mail failed), and a sandboxed sample render within the limits;
    every failure is a problem with the template and line. ``sources``: the templates of a
    :func:`snapshot` (a worker's frozen set) instead of the files as they are now."""
    env = environment(directory, sources, limits)
    try:
        parsed = _parse(env, name)
    except TemplateNotFound as exc:
        return [Problem(_not_found(exc), key=name)]
    except TemplateSyntaxError as exc:
        return [Problem(f"syntax error: {exc.message}", key=name, line=exc.lineno)]
    except UnreadableTemplate as exc:
        return [exc.problem]
    others, found = _referenced(env, parsed[1])
    found += _mixed_kinds({name: parsed, **others})
    around = frozenset().union(*(_defined(t) for _, t in (parsed, *others.values())))
    found += _compiled_contract(env, parsed, name, _top_level(parsed[1]))
    for other, template in others.items():  # they also see what the templates around them set
        found += _compiled_contract(env, template, other, around)
    if found:
        return found
    flat = environment(directory, sources, limits, flat=True)
    try:
        for compiled in (name, *others):  # as e-mails compile them, branches a sample skips too
            flat.get_template(compiled)
        env.render(env.get_template(name), sample)
    except Exception as exc:  # whatever a template does is a problem, not a crash
        return [render_problem(exc, name)]
    return []


def sample_render(
    directory: Path,
    name: str,
    sample: Mapping[str, object],
    limits: TemplateSettings | None = None,
    sources: Mapping[str, str] | None = None,
) -> str | None:
    """``name`` rendered with ``sample`` (sandboxed, within the limits), or None where it
    cannot be: :func:`check_template` names why."""
    env = environment(directory, sources, limits)
    try:
        return env.render(env.get_template(name), sample)
    except Exception:  # whatever a template does is check_template's problem to name
        return None


def _mixed_kinds(templates: Mapping[str, tuple[str, nodes.Template]]) -> list[Problem]:
    """Each include, extends and import of a fixed name that :func:`mixed` refuses, at its
    template and line, also in a branch the sample render does not take."""
    found = []
    for name, (_, tree) in templates.items():
        for node in tree.find_all((nodes.Include, nodes.Extends, nodes.Import, nodes.FromImport)):
            target = getattr(node, "template", None)  # each of them has one
            if isinstance(target, nodes.Const) and isinstance(target.value, str):
                refused = mixed(target.value, name)
                if refused is not None:
                    message = f"blocked by the sandbox: {refused}"
                    found.append(Problem(message, key=name, line=node.lineno))
    return found


def _parse(env: Environment, name: str) -> tuple[str, nodes.Template]:
    assert env.loader is not None
    source = env.loader.get_source(env, name)[0]
    return source, env.parse(source, name)


def _referenced(
    env: Environment, parsed: nodes.Template
) -> tuple[dict[str, tuple[str, nodes.Template]], list[Problem]]:
    """The templates ``parsed`` includes, imports or extends by a constant name, and theirs;
    and the problems of those that cannot be parsed (a syntax error, not UTF-8), at their
    own file and line, reported with the rest. A missing one is left to the sample render,
    which names the template and line that wants it."""
    found: dict[str, tuple[str, nodes.Template]] = {}
    broken: dict[str, Problem | None] = {}
    waiting = [parsed]
    while waiting:
        for name in meta.find_referenced_templates(waiting.pop()):
            if name is None or name in found or name in broken:
                continue
            try:
                found[name] = _parse(env, name)
            except TemplateNotFound:
                broken[name] = None
                continue
            except TemplateSyntaxError as exc:
                problem = f"syntax error: {exc.message}"
                broken[name] = Problem(problem, key=exc.name or name, line=exc.lineno)
                continue
            except UnreadableTemplate as exc:
                broken[name] = exc.problem
                continue
            waiting.append(found[name][1])
    return found, [problem for problem in broken.values() if problem is not None]


def _top_level(parsed: nodes.Template) -> frozenset[str]:
    """The names a template imports or sets outside its blocks: its blocks see them when it
    extends a layout (Jinja's introspection treats each block as a scope of its own)."""
    names: set[str] = set()
    for node in parsed.body:
        if isinstance(node, nodes.Import):
            names.add(node.target)
        elif isinstance(node, nodes.FromImport):
            names |= {n if isinstance(n, str) else n[1] for n in node.names}
        elif isinstance(node, nodes.Assign | nodes.AssignBlock):
            names |= {n.name for n in node.target.find_all(nodes.Name)}
    return frozenset(names)


Scope = dict[str, object]  # a name a template reads → its type in the contract (None: not of it)
MAPPING_METHODS = frozenset(name for name in dir(dict) if not name.startswith("_"))
# filters that read a key of every element: ``attribute=``, or their first argument
ATTRIBUTE_FILTERS = frozenset(
    {"map", "sort", "unique", "min", "max", "sum", "groupby", "selectattr", "rejectattr"}
)
POSITIONAL_ATTRIBUTE = frozenset({"groupby", "selectattr", "rejectattr"})
MULTI_ATTRIBUTE = frozenset({"sort"})  # attribute='a,b': Jinja's make_multi_attrgetter


def contract_problems(
    template: tuple[str, nodes.Template], name: str, defined: AbstractSet[str] = frozenset()
) -> list[Problem]:
    """What a parsed template (source and tree) reads outside the contract
    (``context.TemplateContext``): a variable (``custmer``), or a key of a value of the
    contract, also through a loop variable or ``set`` (``customer.frist_name``, ``offer.titel``
    in ``for offer in offers``); ``defined`` are names the templates around it set."""
    source, parsed = template
    unknown = sorted(meta.find_undeclared_variables(parsed) - contract.CONTEXT_KEYS - defined)
    found = [
        Problem(
            "uses a variable outside the template context",
            key=name,
            line=_line(source, variable),
            value=variable,
        )
        for variable in unknown
    ]
    reads = ContractReads()
    reads.visit(
        parsed, {k: kind for k, (kind, _) in contract.fields(contract.TemplateContext).items()}
    )
    return found + [replace(p, key=name) for p in reads.problems]


def _compiled_contract(
    env: Environment,
    template: tuple[str, nodes.Template],
    name: str,
    defined: AbstractSet[str] = frozenset(),
) -> list[Problem]:
    """:func:`contract_problems` and every unknown filter or test (:func:`unknown_names`), or
    the template's compile error at its line: jinja's introspection names it
    ``<introspection>``, so the error would not say which template it is. An expression
    that parses but is too deep for the introspection's recursion (``not`` 400 times) is
    a syntax error at its deepest line, not a ``RecursionError`` that stopped ``check``."""
    try:
        unknown = unknown_names(env, template[1], name)
        return unknown or contract_problems(template, name, defined)
    except TemplateSyntaxError as exc:  # TemplateAssertionError among them
        return [Problem(f"syntax error: {exc.message}", key=name, line=exc.lineno)]
    except RecursionError:
        return [Problem(f"syntax error: {TOO_DEEP}", key=name, line=_deepest(template[1]))]


def _deepest(tree: nodes.Node) -> int | None:
    """The line of the most deeply nested node of ``tree`` (walked without recursion)."""
    line, most, stack = None, -1, [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > most and node.lineno:
            line, most = node.lineno, depth
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())
    return line


def unknown_names(env: Environment, parsed: nodes.Template, name: str) -> list[Problem]:
    """Filters and tests the environment lacks, wherever they are used: Jinja reports one
    only when the branch holding it renders, so a sample that skips an ``{% if %}`` would pass
    a template that fails for the customers the branch is for."""
    found = [
        Problem(f"syntax error: No filter named {shown(node.name)!r}.", key=name, line=node.lineno)
        for node in parsed.find_all(nodes.Filter)
        if node.name not in env.filters
    ]
    found += [
        Problem(f"syntax error: No test named {shown(node.name)!r}.", key=name, line=node.lineno)
        for node in parsed.find_all(nodes.Test)
        if node.name not in env.tests
    ]
    return sorted(found, key=lambda problem: problem.line or 0)


class ContractReads(NodeVisitor):
    """Follows the contract's types through a template: ``visit`` of an expression returns
    the type of its value (None where it is not a contract value: a literal, a filter's
    result) and records each key read from a contract mapping that the contract lacks.
    Attributes with an underscore are the sandbox's business, dict methods are allowed."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def read(self, node: nodes.Node, scope: Scope) -> object:
        kind: object = self.visit(node, scope)
        return kind

    def visit_Name(self, node: nodes.Name, scope: Scope) -> object:
        return scope.get(node.name) if node.ctx == "load" else None

    def visit_Getattr(self, node: nodes.Getattr, scope: Scope) -> object:
        return self._key(node, self.read(node.node, scope), node.attr)

    def visit_Getitem(self, node: nodes.Getitem, scope: Scope) -> object:
        parent = self.read(node.node, scope)
        value = node.arg.value if isinstance(node.arg, nodes.Const) else self.read(node.arg, scope)
        if isinstance(value, str):
            return self._key(node, parent, value)
        return contract.element(parent) if isinstance(value, int) else None

    def visit_Filter(self, node: nodes.Filter, scope: Scope) -> object:
        """The limits' own filters (every loop and literal goes through one) keep the type;
        a key named as a filter's argument (``offers|map(attribute='titel')``,
        ``customer|attr('frist_name')``) is read like ``.titel`` (each element's, for the
        filters that read one of every element): ``map`` made a list of undefined values
        that printed as ``[Undefined]``, and ``join`` failed only when the branch rendered."""
        if node.node is None:
            self.generic_visit(node, scope)
            return None
        kind = self.read(node.node, scope)
        if node.name in (COUNTED, MADE):
            return kind
        for child in [*node.args, *node.kwargs, *filter(None, (node.dyn_args, node.dyn_kwargs))]:
            self.visit(child, scope)
        named = [k.value for k in node.kwargs if k.key == "attribute"]
        if node.name in POSITIONAL_ATTRIBUTE and node.args:
            named.append(node.args[0])
        if node.name == "attr" and node.args and isinstance(node.args[0], nodes.Const):
            self._attr(node, kind, node.args[0].value)
        elif node.name in ATTRIBUTE_FILTERS and contract.element(kind) is not None:
            for path in named:
                if isinstance(path, nodes.Const) and isinstance(path.value, str):
                    each = f"{_spelled(node.node)}[]"
                    # sort reads each key of a comma-separated list ("price,title")
                    keys = path.value.split(",") if node.name in MULTI_ATTRIBUTE else [path.value]
                    for key in keys:
                        self._path(node, contract.element(kind), key, each)
        return None

    def _attr(self, node: nodes.Filter, kind: object, name: object) -> None:
        """``|attr`` reads an attribute, never a key: of a mapping of the contract only its
        methods (``customer|attr('first_name')`` is undefined in every e-mail)."""
        if contract.contract_of(kind) is None or not isinstance(name, str):
            return
        if name.startswith("_") or name in MAPPING_METHODS:
            return
        spelled = _spelled(node.node) if node.node is not None else "the value"
        self.problems.append(
            Problem(
                f"reads a key outside the template context: attr() reads attributes, and "
                f"{spelled} has only keys: write {spelled}.{name}",
                line=node.lineno,
                value=f"{spelled}|attr({name!r})",
            )
        )

    def _path(self, node: nodes.Filter, kind: object, path: str, spelled: str) -> None:
        """A dotted attribute path of a filter (``'scores.0.score'``) read from ``kind``."""
        for part in path.split("."):
            if part.isdigit():
                kind, spelled = contract.element(kind), f"{spelled}[{part}]"
                continue
            mapping = contract.contract_of(kind)
            if mapping is None:
                return
            known = contract.fields(mapping)
            if part not in known:
                if not part.startswith("_") and part not in MAPPING_METHODS:
                    self.problems.append(
                        Problem(
                            "reads a key outside the template context: "
                            f"{spelled} has no key {part!r}",
                            line=node.lineno,
                            value=f"{spelled}.{part}",
                        )
                    )
                return
            kind, spelled = known[part][0], f"{spelled}.{part}"

    def visit_For(self, node: nodes.For, scope: Scope) -> None:
        item = contract.element(self.read(node.iter, scope))
        inner = {**scope, **_bound(node.target, item), "loop": None}
        for child in [*([node.test] if node.test else []), *node.body]:
            self.visit(child, inner)
        for child in node.else_:
            self.visit(child, scope)

    def visit_Assign(self, node: nodes.Assign, scope: Scope) -> None:
        scope.update(_bound(node.target, self.read(node.node, scope)))

    def visit_AssignBlock(self, node: nodes.AssignBlock, scope: Scope) -> None:
        self.generic_visit(node, scope)
        scope.update(_bound(node.target, None))

    def visit_With(self, node: nodes.With, scope: Scope) -> None:
        inner = dict(scope)
        for target, value in zip(node.targets, node.values, strict=True):
            inner.update(_bound(target, self.read(value, scope)))
        for child in node.body:
            self.visit(child, inner)

    def visit_Macro(self, node: nodes.Macro, scope: Scope) -> None:
        self._callable(node, scope)
        scope[node.name] = None

    def visit_CallBlock(self, node: nodes.CallBlock, scope: Scope) -> None:
        self.visit(node.call, scope)
        self._callable(node, scope)

    def visit_Import(self, node: nodes.Import, scope: Scope) -> None:
        scope[node.target] = None

    def visit_FromImport(self, node: nodes.FromImport, scope: Scope) -> None:
        scope.update({n if isinstance(n, str) else n[1]: None for n in node.names})

    def _callable(self, node: nodes.Macro | nodes.CallBlock, scope: Scope) -> None:
        for default in node.defaults:
            self.visit(default, scope)
        inner = {**scope, **{arg.name: None for arg in node.args}, "caller": None}
        for child in node.body:
            self.visit(child, inner)

    def _key(self, node: nodes.Getattr | nodes.Getitem, parent: object, key: str) -> object:
        mapping = contract.contract_of(parent)
        if mapping is None:
            self._scalar_key(node, parent, key)
            return None
        known = contract.fields(mapping)
        if key in known:
            return known[key][0]
        if not key.startswith("_") and key not in MAPPING_METHODS:
            self.problems.append(
                Problem(
                    f"reads a key outside the template context: {_spelled(node.node)} has no key "
                    f"{key!r}",
                    line=node.lineno,
                    value=_spelled(node),
                )
            )
        return None

    def _scalar_key(self, node: nodes.Getattr | nodes.Getitem, parent: object, key: str) -> None:
        """A key of a text, number or flag of the contract that the value lacks (its methods,
        ``upper`` or ``startswith``, it has): ``campaign.variant.name`` passed a sample whose
        variant is none and failed every e-mail of a campaign with variants."""
        scalar = contract.scalar_of(parent)
        if scalar is None or key.startswith("_") or hasattr(scalar, key):
            return
        kind = contract.SCALARS[scalar]
        self.problems.append(
            Problem(
                f"reads a key outside the template context: {_spelled(node.node)} is {kind}, "
                f"which has no key {key!r}",
                line=node.lineno,
                value=_spelled(node),
            )
        )


def _bound(target: nodes.Node, kind: object) -> Scope:
    """The names an assignment or loop target binds, with their types."""
    if isinstance(target, nodes.Name):
        return {target.name: kind}
    return {name.name: None for name in target.find_all(nodes.Name)}


def _defined(parsed: nodes.Template) -> frozenset[str]:
    """The names a template sets (variables, loop variables, macros and their arguments,
    imports): an included template sees those of the template that includes it."""
    names = {n.name for n in parsed.find_all(nodes.Name) if n.ctx in ("store", "param")}
    names |= {m.name for m in parsed.find_all(nodes.Macro)}
    names |= {i.target for i in parsed.find_all(nodes.Import)}
    for imported in parsed.find_all(nodes.FromImport):
        names |= {n if isinstance(n, str) else n[1] for n in imported.names}
    return frozenset(names)


def _spelled(node: nodes.Node) -> str:
    """An expression as the template writes it (``customer``, ``survey.scores[0]``)."""
    if isinstance(node, nodes.Name):
        return node.name
    if isinstance(node, nodes.Getattr):
        return f"{_spelled(node.node)}.{node.attr}"
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
        return f"{_spelled(node.node)}[{node.arg.value!r}]"
    return "the value"


def render_problem(exc: Exception, name: str) -> Problem:
    """What went wrong in a render, at the template and line where it happened."""
    if isinstance(exc, TemplateLimitError):
        problem = exc.problems[0]
        return Problem(problem.message, key=str(exc.path), line=problem.line)
    if isinstance(exc, TemplateSyntaxError):  # in an included template
        return Problem(f"syntax error: {exc.message}", key=exc.name or name, line=exc.lineno)
    if isinstance(exc, UnreadableTemplate):  # that file, which may be an included one
        return exc.problem
    where, line = location(exc)
    key = name if where == "<template>" else where
    if isinstance(exc, TemplateNotFound):
        return Problem(_not_found(exc, included=True), key=key, line=line)
    if isinstance(exc, SecurityError):
        return Problem(f"blocked by the sandbox: {exc}", key=key, line=line)
    if isinstance(exc, UndefinedError):
        return Problem(
            f"reads something outside the template context: {exc.message}", key=key, line=line
        )
    return Problem(f"fails to render: {type(exc).__name__}: {exc}", key=key, line=line)


def _not_found(exc: TemplateNotFound, *, included: bool = False) -> str:
    """The "template not found" message, with the loader's reason or the included name."""
    if isinstance(exc, Refused):
        return f"template not found: {exc.message}"
    return f"template not found: {shown(exc.name)!r}" if included else "template not found"


def check_subject(
    subject: str,
    sample: Mapping[str, object],
    directory: Path,
    limits: TemplateSettings | None = None,
    sources: Mapping[str, str] | None = None,
) -> str | None:
    """A problem with a subject line template, or None (``sources``: see check_template)."""
    try:
        renderer = Renderer(directory, sources, limits)
        static = _compiled_contract(renderer.env, (subject, renderer.env.parse(subject)), SUBJECT)
        if static:
            return str(static[0])
        renderer.subject(subject, sample)
    except Exception as exc:  # a problem to list, not a crash
        return str(render_problem(exc, SUBJECT))
    return None


def _line(source: str, variable: str) -> int | None:
    match = re.search(rf"\b{re.escape(variable)}\b", source)
    return source.count("\n", 0, match.start()) + 1 if match else None
