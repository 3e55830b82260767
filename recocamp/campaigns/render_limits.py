"""Hard limits on rendering one template: time, output size, loop iterations, integers, depth.

Templates are written by people, and one template must not be able to stop all sending: a
render that runs past a limit raises :class:`~recocamp.errors.TemplateLimitError` (file and
line), which fails that one message (or is a problem for ``recocamp check``).

Pure-Python checks cannot interrupt one long C call (``9 ** (9 ** 9)`` holds the GIL for
hours, and with it every thread of the worker), so every operation that could make one is
refused *before* it runs when its result would pass a bound: the intercepted arithmetic
operators, string concatenation (``~``), method calls and filters that expand their input,
``range``. Each of those is then cheap, and a deadline check at each of them and at each
loop iteration and call is the time budget (what runs between two of them is bounded by the
template's own size). A render's strings and lists together are bounded too (ten times the
output bound), so a loop cannot pile up copies that are each small enough. Loops are counted
because every ``for`` of a template iterates through :func:`counted` (added to the parsed
tree), which stops nested loops that Jinja's own ``MAX_RANGE`` (one range at a time) lets
through; every include, import and extends is a step and one level of nesting too, so a
template that includes itself twice cannot grow exponentially.

Every value a template makes (list, tuple and dict literals, results of operators, calls and
filters) is measured as the tree it prints as: shared children count each time they occur
(:func:`size_of`), so ``[x, x]`` repeated 40 times is refused after a few steps instead of
being a value whose comparison or hash costs 2 ** 40. Templates cannot change a list, dict or
set in place (``append``, ``extend``, ``update`` …; a ``namespace()`` can still be assigned):
otherwise a value measured when it was made could grow behind the measurement. With every
value bounded, comparing, hashing and testing one is bounded too. ``bytes`` are bounded like
``str``.

The budget of the render in progress lives in a :class:`~contextvars.ContextVar`: renders in
different threads of a worker never share one.
"""

from __future__ import annotations

import codecs
import gc
import inspect
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from itertools import islice
from types import CodeType, TracebackType
from typing import Any, TypeGuard, TypeVar

from jinja2 import Template, TemplateSyntaxError, nodes, pass_context
from jinja2.exceptions import SecurityError
from jinja2.parser import Parser
from jinja2.runtime import Context, LoopContext, Macro, markup_join, str_join
from jinja2.sandbox import SandboxedEnvironment, SandboxedFormatter, modifies_known_mutable
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer
from markupsafe import escape

from recocamp.errors import Problem, RecocampError, TemplateLimitError, shown
from recocamp.settings import TemplateSettings

COUNTED = "__counted_loop"  # the filter every ``for`` iterates through (see ``_parse``)
MADE = "__made_value"  # the filter every list, tuple and dict literal goes through
TOO_DEEP = "nested too deeply (blocks, brackets or operators inside each other)"
KEPT_GLOBALS = "recocamp_globals"  # a template's globals as one dict, kept on the template
T = TypeVar("T")
PRODUCED_FACTOR = 10  # a render makes at most 10 × max_output_chars of strings and lists in all
_EXPANDING = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join"})
_REFUSED = frozenset({"translate", "maketrans"})  # a table can blow up every character
# the filters whose arguments :func:`filter_size` and the checks beside it read by position
_SIZED = frozenset(
    {"center", "indent", "wordwrap", "replace", "format", "join", "batch", "slice", "urlize"}
    | {"tojson", "sum", "round"}
)
_TEXT = (str, bytes, bytearray)
_CODECS = frozenset({"utf-8", "ascii", "iso8859-1", "iso8859-15", "cp1252", "utf-16", "utf-32"})
_SUMMED = (*_TEXT, list, tuple)  # ``+`` makes their lengths' sum
_CONTAINERS = (list, tuple, dict, set, frozenset, Namespace)
URLIZE_MARKUP = 64  # '<a href="https://' and the rest of a link's markup, at most
# characters textwrap copies breaking the words longer than a line (``wordwrap``): a word
# of L characters broken into lines of w is copied about L² / 2w times, each break copying
# the rest of it (490,000 characters at width 1: 3.3 s); 5·10⁹ is about a tenth of a second
WRAP_STEPS_MAX = 5_000_000_000
FLOAT_FIXED = 330  # characters a float may print as in a fixed-point field ('{:f}' of 1e308)
_DEBUG_INFO = re.compile(r"^debug_info = '([0-9=&]*)'$", re.MULTILINE)  # template=Python lines
# a ``%`` field after its mapping key: flags, width, precision (what follows adds no width)
_PERCENT_SPEC = re.compile(r"[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")
_PARENS = re.compile(r"[()]")


class LimitExceeded(RecocampError):
    """A limit was passed; :meth:`LimitedEnvironment.render` turns it into a
    ``TemplateLimitError`` with the template's name and line."""


class Budget:
    """What one render has used so far, against its :class:`TemplateSettings`.

    Time is the render's own CPU time (``clock``, by default the thread's): a sandboxed
    template cannot wait on anything, so CPU is what it spends, and a busy or paused machine
    (a loaded CI runner, a GC pause of another thread) must not fail a healthy message. The
    CPU clock costs a system call, so it is read only once the cheap wall clock (``wall``)
    says the budget could be spent; until then the wall deadline moves on by what the render
    has not used.
    """

    def __init__(
        self,
        limits: TemplateSettings,
        clock: Callable[[], float] = time.thread_time,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits, self.clock, self.wall = limits, clock, wall
        self.started = clock()
        self.collecting: float | None = None  # the clock when a garbage collection began
        self.deadline = wall() + limits.render_time_s
        self.steps = self.depth = self.produced = 0
        self.templates: list[Iterator[str]] = []  # included, imported, extended: see nest()

    def collected(self, phase: str) -> None:
        """Python's garbage collector ran in this render's thread: its time is the whole
        process's housekeeping (a large heap takes seconds under load), not the template's
        work, so it is not spent from the budget (see :func:`on_collection`)."""
        if phase == "start":
            self.collecting = self.clock()
        elif self.collecting is not None:
            self.started += self.clock() - self.collecting
            self.collecting = None

    def tick(self) -> None:
        if self.wall() <= self.deadline:
            return
        left = self.limits.render_time_s - (self.clock() - self.started)
        if left < 0:
            raise LimitExceeded(
                f"rendering took longer than {self.limits.render_time_s:g} s (the render time "
                "budget, [templates] render_time_s)"
            )
        self.deadline = self.wall() + left

    def produce(self, size: int) -> None:
        """A string or list of ``size`` the render made: all of them together are bounded,
        so a loop cannot pile up copies of values that are each within the bound (memory)."""
        self.produced += size
        if self.produced > self.limits.max_output_chars * PRODUCED_FACTOR:
            raise LimitExceeded(
                f"the render made more than {PRODUCED_FACTOR} × "
                f"{self.limits.max_output_chars:,} characters of text and lists in all "
                "([templates] max_output_chars)"
            )

    def enter(self, template: Iterator[str]) -> None:
        """A template's render (an include, import or extends) begins: one step, and one
        level while it runs."""
        self.step()
        self._running().append(template)
        self._check_depth()

    def nest(self) -> None:
        """One level deeper: a macro or a recursive loop (counted down by the caller)."""
        self.depth += 1
        self._check_depth()

    def _running(self) -> list[Iterator[str]]:
        """The included, imported and extended templates whose render still runs. Those end
        inside ``yield from``, where nothing can count them down: a finished generator has no
        frame, and they nest like a stack."""
        running = self.templates
        while running and getattr(running[-1], "gi_frame", True) is None:
            running.pop()
        return running

    def _check_depth(self) -> None:
        if self.depth + len(self._running()) > self.limits.max_depth:
            raise LimitExceeded(
                f"macros, recursive loops or includes nested deeper than "
                f"{self.limits.max_depth} ([templates] max_depth)"
            )

    def step(self) -> None:
        """One loop iteration or call."""
        self.steps += 1
        if self.steps > self.limits.max_loop_iterations:
            raise LimitExceeded(
                f"more than {self.limits.max_loop_iterations:,} loop iterations and calls in "
                "one render ([templates] max_loop_iterations)"
            )
        self.tick()


_BUDGET: ContextVar[Budget | None] = ContextVar("recocamp_template_budget", default=None)
# the same budget for the garbage collector's callback, which must not read the ContextVar: a
# collection can start inside ``ContextVar.reset`` (its new mapping is allocated after it
# cleared its cache and before it drops the old one), and a ``get`` there caches a borrowed
# pointer to the budget the reset is about to free; the next ``get`` returned freed memory
# (an AttributeError on whatever object lived there next, or a segmentation fault
# "Garbage-collecting": twice in CI, and every time with ``gc.set_threshold(1)``)
_COLLECTING = threading.local()


def on_collection(phase: str, info: dict[str, int]) -> None:
    """``gc.callbacks`` entry: garbage collections during a render are credited back."""
    budget: Budget | None = getattr(_COLLECTING, "budget", None)
    if budget is not None:
        budget.collected(phase)


gc.callbacks.append(on_collection)


def size_of(value: object, cap: int) -> int:
    """An upper estimate of ``len(str(value))``; stops counting once it passes ``cap`` (a list
    that holds one big list a million times costs ``cap`` steps, not its printed size). A child
    shared by several containers counts each time it occurs: this is also the bound of the
    work to compare, hash or copy ``value``."""
    total, stack = 0, [value]
    while stack and total <= cap:
        item = stack.pop()
        if isinstance(item, _TEXT):
            total += len(item) + (0 if item is value else 3)  # quoted inside a container
        elif isinstance(item, int):
            total += item.bit_length() // 3 + 2
        elif isinstance(item, (list, tuple, set, frozenset)):  # before the slower ABC check
            total += 2 * len(item) + 2
            stack.extend(item if len(item) <= cap else islice(item, cap + 1))
        elif isinstance(item, Mapping):
            total += 2 * len(item) + 2
            stack.extend(k for pair in islice(item.items(), cap + 1) for k in pair)
        elif isinstance(item, Namespace):
            stack.append(item._Namespace__attrs)
        else:  # numbers, None, dates, jinja's helpers: short when printed
            total += 40
    return total


def total_size(values: Iterable[object], cap: int) -> int:
    """The :func:`size_of` of ``values`` added up, each measured only to what is left of
    ``cap``: measured to ``cap`` each, 200 references to one large list (the items of a
    ``join``, the operands of ``~``) cost 200 times the bound, 5 s of CPU with nothing
    checking the time budget, before the result was refused."""
    total = 0
    for value in values:
        total += size_of(value, cap - total)
        if total > cap:
            break
    return total


class LimitedTemplate(Template):
    """A template whose ``~`` goes through :meth:`LimitedEnvironment.joiner`."""

    @classmethod
    def from_code(
        cls,
        environment: Any,
        code: CodeType,
        globals: Any,
        uptodate: Callable[[], bool] | None = None,
    ) -> Template:
        namespace: dict[str, Any] = {"environment": environment, "__file__": code.co_filename}
        exec(code, namespace)  # noqa: S102 - Template.from_code, then the two joins replaced
        if isinstance(environment, LimitedEnvironment):
            namespace["str_join"] = environment.joiner(markup=False)
            namespace["markup_join"] = environment.joiner(markup=True)
            namespace["root"] = nested(namespace["root"])
        template = cls._from_namespace(environment, namespace, globals)
        template._uptodate = uptodate
        return template


Root = Callable[[Context], Iterator[str]]


def nested(root: Root) -> Root:
    """A template's render function, as a step and one level of nesting: includes, imports
    and extends call it (the outermost template of a render is called unwrapped, as
    ``__wrapped__``). It hands back the template's own generator, not a wrapping one: every
    piece of every e-mail passes through each level (a wrapper cost 17 % of a render)."""

    def root_render_func(context: Context) -> Iterator[str]:
        events = root(context)
        budget = _BUDGET.get()
        if budget is not None:
            budget.enter(events)
        return events

    root_render_func.__wrapped__ = root  # type: ignore[attr-defined]
    return root_render_func


class LimitedEnvironment(SandboxedEnvironment):
    """The sandbox with every expanding operation bounded (see the module docstring)."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})
    template_class = LimitedTemplate

    def __init__(
        self,
        limits: TemplateSettings,
        clock: Callable[[], float] | None = None,
        own_filters: Mapping[str, Callable[..., Any]] | None = None,
        refused_join: Callable[[str, str], str | None] | None = None,
        **options: Any,
    ) -> None:
        """``clock``: the render time (default: the thread's CPU time, see :class:`Budget`);
        a test's clock stands for both the CPU and the wall clock. ``own_filters``: filters
        beside Jinja's, checked as they are. ``refused_join``: why a template (first) may not
        be included, extended or imported by another (second), or None."""
        self.limits, self.refused_join = limits, refused_join
        self.clock, self.wall = (
            (time.thread_time, time.monotonic) if clock is None else (clock, clock)
        )
        super().__init__(finalize=self._finalize, **options)
        self.globals["range"] = self._range
        self.globals.pop("lipsum", None)  # lipsum(10**9): nothing an e-mail needs
        self.filters.update(own_filters or {})
        self.filters = {name: self._guard(name, f) for name, f in self.filters.items()}
        self.filters[COUNTED] = counted
        self.filters[MADE] = self._made
        self.concat = self._concat  # type: ignore[method-assign]

    # -- rendering ---------------------------------------------------------------------------

    def render(self, template: Template, context: Mapping[str, Any]) -> str:
        """``template`` rendered with ``context`` within the limits: raises
        ``TemplateLimitError`` naming the template and line where a limit was passed."""
        budget = Budget(self.limits, self.clock, self.wall)
        outer: Budget | None = getattr(_COLLECTING, "budget", None)  # a render in a render
        _COLLECTING.budget = budget
        token = _BUDGET.set(budget)
        try:
            parts: list[str] = []
            size, bound = 0, self.limits.max_output_chars
            root = template.root_render_func
            events = getattr(root, "__wrapped__", root)(self._context(template, context))
            for seen, part in enumerate(events, 1):  # inline: runs for every piece of every e-mail
                size += len(part)
                if not seen & 1023:
                    budget.tick()
                if size > bound:
                    name, line = suspended(events, template)
                    message = (
                        f"the output is longer than {bound:,} characters "
                        "([templates] max_output_chars)"
                    )
                    raise TemplateLimitError(name, [Problem(message, line=line)])
                parts.append(part)
            return "".join(parts)
        except LimitExceeded as exc:
            raise located(exc, str(exc), template) from None
        except RecursionError as exc:
            raise located(
                exc, "recursion too deep (a macro or include that calls itself)", template
            ) from None
        except MemoryError as exc:
            raise located(exc, "out of memory", template) from None
        finally:
            _BUDGET.reset(token)
            _COLLECTING.budget = outer

    def join_path(self, template: str, parent: str) -> str:
        """Every include, extends and import names its template here, with the template that
        asks for it, also when the name is computed at render time (and with ``ignore
        missing``: a refusal is no missing template)."""
        refused = self.refused_join(template, parent) if self.refused_join else None
        if refused is not None:
            raise SecurityError(refused)
        return template

    def _context(self, template: Template, context: Mapping[str, Any]) -> Context:
        """``template.new_context(dict(context))``, without reading the template's globals
        (a ``ChainMap``) twice per render: that cost 10 µs of a 75 µs render. They are read
        once per template and kept on it."""
        kept = template.__dict__.get(KEPT_GLOBALS)
        if kept is None:
            kept = template.__dict__[KEPT_GLOBALS] = dict(template.globals)
        return self.context_class(self, {**kept, **context}, template.name, template.blocks, kept)

    def origin(self, name: str, line: int | None) -> tuple[str, int | None]:
        """The file and line a compiled template's ``line`` is in: its own here (a flattening
        environment maps lines of flattened layouts and partials back to their files)."""
        return name, line

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Every ``for`` iterates through :func:`counted`; every list, tuple and dict literal
        is measured (:meth:`_made`). What Python cannot parse (blocks or brackets nested
        thousands deep, a number of more than 4,300 digits) is a syntax error at its line, not
        a ``RecursionError`` or ``ValueError`` that stopped ``recocamp check``."""
        parser = Parser(self, source, name, filename)
        try:
            tree = parser.parse()
            _MeasuredLiterals().visit(tree)  # replaces the literals inside ``tree``
            for loop in list(tree.find_all(nodes.For)):
                loop.iter = nodes.Filter(
                    loop.iter, COUNTED, [], [], None, None, lineno=loop.iter.lineno
                )
        except RecursionError:
            line = parser.stream.current.lineno
            raise TemplateSyntaxError(TOO_DEEP, line, name, filename) from None
        except ValueError as exc:  # the lexer's int() of a number past Python's digit limit
            line = parser.stream.current.lineno
            raise TemplateSyntaxError(str(shown(str(exc))), line, name, filename) from None
        tree.set_environment(self)
        return tree

    def compile(  # type: ignore[override]
        self,
        source: str | nodes.Template,
        name: str | None = None,
        filename: str | None = None,
        raw: bool = False,
        defer_init: bool = False,
    ) -> str | CodeType:
        """Jinja's compile; where Python's own compiler gives up on the generated code (more
        than 20 loops inside each other: "too many statically nested blocks", or an expression
        nested too deeply), a syntax error naming the template and, where Python says, the
        line: the same for ``check`` and for every e-mail."""
        try:
            return super().compile(source, name, filename, raw, defer_init)  # type: ignore[call-overload, no-any-return]
        except (RecursionError, MemoryError) as exc:  # generating the code
            failed = Uncompilable(f"cannot be compiled: {type(exc).__name__}", None)
        except Uncompilable as exc:  # compiling it
            failed = exc
        where, line = self.origin(name, failed.line) if name else (name, failed.line)
        error = TemplateSyntaxError(failed.message, line or 0, where, filename)
        error.lineno = line  # type: ignore[assignment]  # unknown: no line, not line 0
        raise error from None

    def _compile(self, source: str, filename: str) -> CodeType:
        try:
            return super()._compile(source, filename)
        except (RecursionError, SyntaxError, MemoryError) as exc:
            reason = exc.msg if isinstance(exc, SyntaxError) else type(exc).__name__
            raise Uncompilable(
                f"cannot be compiled: {reason}", _template_line(source, exc)
            ) from None

    # -- the intercepted operations -----------------------------------------------------------

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self._tick()
        self._check_binop(operator, left, right)
        result = self.binop_table[operator](left, right)
        if isinstance(result, int) and result.bit_length() > self.limits.max_int_bits:
            raise LimitExceeded(self._int_message(operator))
        return self._made(result)

    def _check_binop(self, operator: str, left: Any, right: Any) -> None:
        bound, bits = self.limits.max_output_chars, self.limits.max_int_bits
        if operator == "**" and _is_int(left) and _is_int(right) and right > 0:
            if left.bit_length() > 1 and left.bit_length() * right > bits:
                raise LimitExceeded(self._int_message("**"))
        elif operator == "*" and _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > bits:
                raise LimitExceeded(self._int_message("*"))
        elif operator == "*":
            sequence, times = (left, right) if _is_int(right) else (right, left)
            if _is_int(times) and hasattr(sequence, "__len__") and len(sequence) * times > bound:
                raise LimitExceeded(self._size_message("*", bound))
        elif operator == "+" and isinstance(left, _SUMMED) and hasattr(right, "__len__"):
            if len(left) + len(right) > bound:
                raise LimitExceeded(self._size_message("+", bound))
        elif operator == "%" and isinstance(left, _TEXT):
            text = left if isinstance(left, str) else bytes(left).decode("latin-1")
            self._check_size(percent_size(text, right, bound), "%")

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        """Every call from a template: counted, timed, depth-limited for macros and
        recursive loops, and bounded for the string methods that expand."""
        budget = _BUDGET.get()
        if budget is not None:
            budget.step()
        args = __self._check_method(__obj, args, kwargs)
        if not isinstance(__obj, (Macro, LoopContext)) or budget is None:
            return __self._made(super().call(__context, __obj, *args, **kwargs))
        try:
            budget.nest()
            return super().call(__context, __obj, *args, **kwargs)
        finally:
            budget.depth -= 1

    def _check_method(
        self, obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, ...]:
        """Refuse a string or bytes method whose result would pass the output bound, and a
        method that changes a list, dict or set in place (see the module docstring); a
        ``join`` argument comes back as a list (it is counted, so a generator is read once)."""
        wrapped = getattr(obj, "__wrapped__", None)  # the sandbox's str.format wrapper
        if isinstance(getattr(wrapped, "__self__", None), str):
            source = wrapped.__self__  # type: ignore[union-attr]
            if wrapped.__name__ == "format_map" and args:  # type: ignore[union-attr]
                self._check_size(format_size(self, source, (), args[0], "format_map"), "format_map")
            else:
                self._check_size(format_size(self, source, args, kwargs, "format"), "format")
            return args
        owner, name = getattr(obj, "__self__", None), getattr(obj, "__name__", "")
        if isinstance(owner, int) and name == "to_bytes":  # (1).to_bytes(10**9): 1 GB at once
            length = args[0] if args else kwargs.get("length", 1)
            self._check_size(length if _is_int(length) else 0, "to_bytes")
        if not isinstance(owner, _TEXT):
            if owner is not None and modifies_known_mutable(owner, name):
                raise LimitExceeded(
                    f"{type(owner).__name__}.{name} is not available in templates (they may "
                    "not change a list, dict or set in place: make a new one, or assign to "
                    "a namespace())"
                )
            return args
        if name in ("encode", "decode"):
            self._check_codec(owner, name, args, kwargs)
        if name not in _EXPANDING | _REFUSED:
            return args
        if name in _REFUSED:
            raise LimitExceeded(f"{type(owner).__name__}.{name} is not available in templates")
        if name == "join" and args:
            args = (list(args[0]), *args[1:])
        self._check_size(method_size(owner, name, args, kwargs, self.limits), name)
        return args

    @staticmethod
    def _check_codec(
        owner: object, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Only codecs that take linear time: some are written in Python and are quadratic
        (``punycode`` spends 16 s on 10,000 characters, inside one call)."""
        encoding = kwargs.get("encoding", args[0] if args else "utf-8")
        try:
            known = codecs.lookup(str(encoding)).name
        except LookupError:
            known = ""
        if known not in _CODECS:
            shown = ", ".join(sorted(_CODECS))
            raise LimitExceeded(
                f"{type(owner).__name__}.{name}({str(encoding)[:40]!r}) is not "
                f"available in templates (only {shown})"
            )

    # -- filters, ``~``, buffers, output ------------------------------------------------------

    def _guard(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` with its input and expected output size checked before it runs."""
        return _Guarded(self, name, func)

    def _guarded_call(
        self, name: str, func: Callable[..., Any], skip: int, /, *args: Any, **kwargs: Any
    ) -> Any:
        self._tick()
        front, values = args[:skip], list(args[skip:])
        if name == "join" and values:
            values[0] = list(values[0])
        if values:
            self._check_size(size_of(values[0], self.limits.max_output_chars), name)
            self._check_size(filter_size(name, values, kwargs, self.limits), name)
            if name == "wordwrap":
                _check_wrap(values, kwargs)
            if name == "round":
                self._check_round(values, kwargs)
        return self._made(func(*front, *values, **kwargs))

    def _concat(self, parts: Iterable[str]) -> str:
        """Blocks, macros and ``{% set %}`` blocks join their buffers with this."""
        parts = list(parts)
        self._check_size(sum(map(len, parts)), "a block")
        return self._made("".join(parts))

    def joiner(self, markup: bool) -> Callable[[Iterable[Any]], str]:
        """The ``~`` operator (Jinja's ``str_join``/``markup_join``), size-checked."""
        join = markup_join if markup else str_join

        def bounded(seq: Iterable[Any]) -> str:
            items = list(seq)
            bound = self.limits.max_output_chars
            self._check_size(total_size(items, bound), "~")
            return self._made(join(items))

        return bounded

    def _finalize(self, value: Any) -> Any:
        """Every ``{{ … }}`` before it is turned into text: printed into the output or a
        block, it counts as made (escaping copies it). Inline: it runs for every value of
        every e-mail. None prints as nothing, not as "None": the context's keys that may be
        none (``customer.first_name``) mailed "Hi None" to each customer without a name."""
        if value is None:
            return ""
        bound = self.limits.max_output_chars
        size = len(value) if isinstance(value, str) else size_of(value, bound)
        if size > bound:
            raise LimitExceeded(self._size_message("output", bound))
        budget = _BUDGET.get()
        if budget is not None:
            budget.produced += size
            if budget.produced > bound * PRODUCED_FACTOR:
                budget.produce(0)  # raises, with the message
        return value

    def _range(self, *args: int) -> range:
        """``range``: at most ``max_loop_iterations`` numbers (its loop is counted too)."""
        numbers = range(*args)
        if len(numbers) > self.limits.max_loop_iterations:
            shown = ", ".join(map(str, args))
            raise LimitExceeded(
                f"range({shown}) has more than {self.limits.max_loop_iterations:,} "
                "numbers ([templates] max_loop_iterations)"
            )
        return numbers

    # -- helpers ------------------------------------------------------------------------------

    def _made(self, value: T) -> T:
        """A value the template made: text counts its length, a container the tree it prints
        as (refused past the output bound: comparing or hashing it costs that much), a number
        its bits (``int.from_bytes`` of a long text made one of 8,000,000 bits, whose ``//``,
        not an intercepted operator, ran for minutes inside one C call)."""
        budget = _BUDGET.get()
        if budget is None:
            return value
        if isinstance(value, _TEXT):
            budget.produce(len(value))
        elif isinstance(value, int) and value.bit_length() > self.limits.max_int_bits:
            raise LimitExceeded(self._int_message("a call"))
        elif isinstance(value, _CONTAINERS):
            bound = self.limits.max_output_chars
            size = size_of(value, bound)
            if size > bound:
                raise LimitExceeded(self._size_message(f"a {type(value).__name__}", bound))
            budget.produce(size)
        return value

    def _check_round(self, values: list[Any], kwargs: dict[str, Any]) -> None:
        """``round``'s precision: rounding computes ten to its power as a whole number
        (``1|round(-10**7)``, or ``1.5|round(10**9, 'floor')``), one C call that held every
        thread of the worker for good. A power of ten within ``max_int_bits`` is allowed."""
        precision = values[1] if len(values) > 1 else kwargs.get("precision", 0)
        digits = self.limits.max_int_bits * 3 // 10  # 10 ** digits has fewer bits than that
        if _is_int(precision) and abs(precision) > digits:
            raise LimitExceeded(
                f"round to {precision:,} digits: more than {digits:,} "
                f"(10 ** {digits:,} has about {self.limits.max_int_bits:,} bits, "
                "[templates] max_int_bits)"
            )

    def _tick(self) -> None:
        budget = _BUDGET.get()
        if budget is not None:
            budget.tick()

    def _check_size(self, size: int, what: str) -> None:
        if size > self.limits.max_output_chars:
            raise LimitExceeded(self._size_message(what, self.limits.max_output_chars))

    @staticmethod
    def _size_message(what: str, bound: int) -> str:
        return (
            f"{what} would make a value longer than {bound:,} characters "
            "([templates] max_output_chars)"
        )

    def _int_message(self, operator: str) -> str:
        return (
            f"{operator} would make a number of more than {self.limits.max_int_bits:,} "
            "bits ([templates] max_int_bits)"
        )


class _Guarded:
    """A filter of a :class:`LimitedEnvironment`, checked before it runs
    (``LimitedEnvironment._guarded_call``). An object, not a closure: every environment
    wrapped its ~50 filters in closures, and their cells were where CI's two segmentation
    faults "Garbage-collecting" happened (then put down to cpython#111629; the cause was the
    collector's callback reading freed memory: see ``_COLLECTING``)."""

    def __init__(self, env: LimitedEnvironment, name: str, func: Callable[..., Any]) -> None:
        self.env, self.name, self.func = env, name, func
        pass_arg = getattr(func, "jinja_pass_arg", None)
        self.skip = 1 if pass_arg is not None else 0
        if pass_arg is not None:
            self.jinja_pass_arg = pass_arg  # Jinja reads it to pass the context or environment
        self.__name__ = getattr(func, "__name__", name)
        self.signature = inspect.signature(func) if name in _SIZED else None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs and self.signature is not None:
            args, kwargs = by_position(self.signature, args, kwargs)
        return self.env._guarded_call(self.name, self.func, self.skip, *args, **kwargs)


def by_position(
    signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A filter's arguments with every one that has a position at it (the defaults filled
    in): the size estimates read them by position, and keywords in another order
    (``indent(first=true, width=10**8)``) were read as the wrong parameters, so the filter
    ran unchecked (13 s of CPU and 4 GB in one call). Arguments the filter does not take
    are left as they are, for its call to refuse."""
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError:
        return args, kwargs
    bound.apply_defaults()
    return bound.args, bound.kwargs


class _MeasuredLiterals(NodeTransformer):
    """Wraps every list, tuple and dict literal (not an assignment's target) in the
    :data:`MADE` filter."""

    def visit_List(self, node: nodes.List) -> nodes.Expr:
        return self._measured(node)

    def visit_Dict(self, node: nodes.Dict) -> nodes.Expr:
        return self._measured(node)

    def visit_Tuple(self, node: nodes.Tuple) -> nodes.Expr:
        return self._measured(node) if node.ctx == "load" else node

    def _measured(self, node: nodes.Expr) -> nodes.Expr:
        self.generic_visit(node)
        return nodes.Filter(node, MADE, [], [], None, None, lineno=node.lineno)


@pass_context
def counted(_context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    """What a ``for`` loop iterates: each item is one step of the render's budget."""
    budget = _BUDGET.get()
    for item in iterable:
        if budget is not None:
            budget.step()
        yield item


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int)


# -- size estimates: an upper bound of the result's length, computed before the call ----------


def replace_size(length: int, old: str, new: str, count: int | None) -> int:
    grows = max(0, len(new) - len(old))
    times = length + 1 if count is None or count < 0 else min(count, length + 1)
    return length + times * grows


def method_size(
    owner: str | bytes | bytearray,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    limits: TemplateSettings,
) -> int:
    bound = limits.max_output_chars
    values = [*args, *kwargs.values()]
    if name in ("center", "ljust", "rjust", "zfill"):
        width = values[0] if values and _is_int(values[0]) else 0
        return max(len(owner), width)
    if name == "expandtabs":
        tab = values[0] if values and _is_int(values[0]) else 8
        tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
        return len(owner) + tabs * max(tab, 0)
    if name == "replace" and len(values) >= 2:
        count = values[2] if len(values) > 2 and _is_int(values[2]) else None
        return replace_size(len(owner), str(values[0]), str(values[1]), count)
    if name == "join" and values:
        items = values[0]
        return total_size(items, bound) + len(owner) * max(0, len(items) - 1)
    return len(owner)


def filter_size(
    name: str, values: list[Any], kwargs: dict[str, Any], limits: TemplateSettings
) -> int:
    """The size a filter's result may reach, for the filters whose result can be larger than
    their input; 0 for the others (their input is checked)."""
    bound = limits.max_output_chars
    value, rest = values[0], [*values[1:], *kwargs.values()]
    first = rest[0] if rest else None
    if name == "center":
        return max(size_of(value, bound), first if _is_int(first) else 80)
    if name == "indent":
        width = first if _is_int(first) else len(str(first if first is not None else "    "))
        return size_of(value, bound) + (str(value).count("\n") + 1) * width
    if name == "wordwrap":
        width = first if _is_int(first) and first > 0 else 1
        wrap = kwargs.get("wrapstring") or (values[3] if len(values) > 3 else None) or "\n"
        size = size_of(value, bound)
        return size + (size // width + 1) * len(str(wrap))
    if name == "replace" and len(rest) >= 2:
        count = rest[2] if len(rest) > 2 and _is_int(rest[2]) else None
        return replace_size(size_of(value, bound), str(rest[0]), str(rest[1]), count)
    if name == "format":
        return percent_size(str(value), kwargs or tuple(values[1:]), bound)
    if name == "join":
        sep = str(first) if isinstance(first, str) else ""
        return total_size(value, bound) + len(sep) * max(0, len(value) - 1)
    if name in ("batch", "slice") and _is_int(first):
        return int(first)
    if name in ("urlize", "tojson"):
        return repeating_size(name, values, kwargs, bound)
    start = kwargs.get("start", values[2] if len(values) > 2 else 0)
    if name == "sum" and not isinstance(start, (int, float)):
        return bound + 1  # sum(start=[]) adds up lists: quadratic
    return 0


def wrap_steps(values: list[Any], kwargs: dict[str, Any]) -> tuple[int, int, int]:
    """``wordwrap``'s cost before it runs: (characters copied, longest word, width). With
    ``break_long_words`` (the default) each word longer than the width is broken by copying
    the rest of it after every line: quadratic in the word (:data:`WRAP_STEPS_MAX`)."""
    width = values[1] if len(values) > 1 else kwargs.get("width", 79)
    width = width if _is_int(width) and width > 0 else 1
    breaks = values[2] if len(values) > 2 else kwargs.get("break_long_words", True)
    if not breaks:
        return 0, 0, width
    longer = re.findall(rf"\S{{{width + 1},}}", str(values[0]))  # the words it breaks
    lengths = list(map(len, longer))
    steps = sum(length * length // (2 * width) for length in lengths)
    return steps, max(lengths, default=0), width


def _check_wrap(values: list[Any], kwargs: dict[str, Any]) -> None:
    steps, longest, width = wrap_steps(values, kwargs)
    if steps > WRAP_STEPS_MAX:
        raise LimitExceeded(
            f"wordwrap would break words of up to {longest:,} characters into lines of "
            f"{width:,} (about {steps:,} characters copied, more than {WRAP_STEPS_MAX:,}): "
            "wrap wider, or pass break_long_words=false"
        )


def repeating_size(name: str, values: list[Any], kwargs: dict[str, Any], bound: int) -> int:
    """The filters that repeat an argument per link (``urlize``: target, rel) or per line
    (``tojson``: indent): their result can be far larger than input and argument together."""
    value = values[0]
    if name == "urlize":
        escaped = str(escape(str(value)))  # what urlize splits into words
        links = [w for w in escaped.split() if _linkish(w)]  # each may be a link: href repeats it
        added = total_size([*values[1:], *kwargs.values()], bound) + URLIZE_MARKUP
        return len(escaped) + sum(map(len, links)) + len(links) * added
    indent = kwargs.get("indent", values[1] if len(values) > 1 else None)
    return json_size(value, indent, bound)


def _linkish(word: str) -> bool:
    """Whether ``urlize`` may make a link of a word: one with a ``.``, ``:`` or ``@``. Not a
    pattern over the whole text (``\\S*[.:@]\\S*``): that backtracked over the rest of a
    word without one from each of its characters, quadratic inside one call (40,000
    characters took 7 s, however short the render's time budget)."""
    return "." in word or ":" in word or "@" in word


def json_size(value: object, indent: object, bound: int) -> int:
    """``value`` as indented JSON: every element of a container is on a line of its own,
    indented by its depth times ``indent`` (an ``indent`` of 10⁶ makes one line of a
    list 20 deep 20 MB, and every line of the list that long)."""
    if indent is None:
        return 0
    width = (max(indent, 0) if _is_int(indent) else len(str(indent))) + 1  # and the newline
    total, stack = size_of(value, bound) + 2, [(value, 0)]  # + a string's quotes
    while stack and total <= bound:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[Any] = islice(item.values(), bound + 1)
        elif isinstance(item, (list, tuple)):
            children = islice(item, bound + 1)
        else:
            continue
        count = 0
        for child in children:
            count += 1
            total += (depth + 1) * width
            stack.append((child, depth + 1))
            if total > bound:
                break
        total += depth * width if count else 0
    return total


def percent_size(template: str, values: Any, bound: int) -> int:
    """``template % values``: the fields' widths and precisions, and the values."""
    items = (
        list(values.values())
        if isinstance(values, Mapping)
        else (list(values) if isinstance(values, tuple) else [values])
    )
    widest = max((size_of(v, bound) for v in items), default=0)
    largest = max((abs(v) for v in items if _is_int(v)), default=0)
    total = len(template)
    for numbers in percent_fields(template):
        total += widest
        total += sum(largest if n == "*" else _digits(n, bound) for n in numbers if n)
        if total > bound:
            break
    return total


def percent_fields(template: str) -> Iterator[tuple[str | None, str | None]]:
    """The width and precision of each ``%`` field of ``template`` as written (digits or
    ``*``), found as Python's ``%`` finds them, in one pass: a mapping key's parentheses
    nest (``%(a(b)c)9s`` is the key ``a(b)c`` with the width 9, which a pattern had read as
    text: 1 GB made unchecked), and a pattern that looked for the key's ``)`` from every
    ``%(`` spent minutes on ``%(`` repeated, inside one call."""
    at = template.find("%")
    while at != -1:
        end = at + 1
        if template.startswith("(", end):
            end = _key_end(template, end)
            if end < 0:  # no end to the key: ``%`` refuses the text
                return
        spec = _PERCENT_SPEC.match(template, end)
        assert spec is not None  # every part of it is optional
        yield spec.group(1), spec.group(2)
        at = template.find("%", spec.end() + 1)  # past the conversion character


def _key_end(template: str, start: int) -> int:
    """Where the mapping key opened at ``start`` ends (its nested parentheses counted), -1
    if it does not."""
    depth = 0
    for paren in _PARENS.finditer(template, start):
        depth += 1 if paren.group() == "(" else -1
        if not depth:
            return paren.end()
    return -1


def _digits(number: str, bound: int) -> int:
    """A width or precision as written: past nine digits it is past any bound (``int()`` of
    more than 4,300 digits raises)."""
    return int(number) if len(number) < 10 else bound + 1


def format_size(env: SandboxedEnvironment, template: str, args: Any, kwargs: Any, what: str) -> int:
    """``template.format(...)``: every field may print its value padded to the widths and
    precisions in its spec. Nested fields in a spec (``'{0:{1}}'``) are resolved first, as
    ``format`` resolves them, through the sandbox: a width can come from a text, a list's
    element or an attribute (``'{0:{1}}'.format('x', '999999999')`` made 1 GB, 4 GB with a
    fill character outside Latin-1, before the result was measured)."""
    measure = _MeasuringFormatter(env, what)
    mapping = kwargs if isinstance(kwargs, Mapping) else {}
    measure.vformat(template, tuple(args), mapping)
    return len(template) + measure.size


class _MeasuringFormatter(SandboxedFormatter):
    """Resolves a format string's fields and specs as ``str.format`` would, through the
    sandbox, each field formatted only once its spec's widths and precisions are known to
    fit; ``size`` adds up what the fields print."""

    def __init__(self, env: SandboxedEnvironment, what: str) -> None:
        super().__init__(env)
        self.size, self.what = 0, what
        self.bound = env.limits.max_output_chars if isinstance(env, LimitedEnvironment) else 0

    def format_field(self, value: Any, format_spec: str) -> Any:
        numbers = re.findall(r"\d+", format_spec)
        widths = sum(int(n) if len(n) < 10 else self.bound + 1 for n in numbers)
        fixed = FLOAT_FIXED if isinstance(value, float) else 0
        if self.size + size_of(value, self.bound) + widths + fixed > self.bound:
            raise LimitExceeded(
                f"{self.what} would make a value longer than {self.bound:,} characters "
                "([templates] max_output_chars)"
            )
        field = super().format_field(value, format_spec)  # a nested spec needs its text
        self.size += len(field)
        return field


# -- where a limit was passed ----------------------------------------------------------------


class Uncompilable(Exception):
    """Python's compiler refused a template's generated code (see
    :meth:`LimitedEnvironment.compile`, which names the template)."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.message, self.line = message, line


def _template_line(source: str, exc: BaseException) -> int | None:
    """The template line of a Python ``SyntaxError`` in generated ``source`` (its
    ``debug_info`` maps template lines to code lines), or None."""
    line = getattr(exc, "lineno", None)
    if not isinstance(line, int):
        return None
    found = _DEBUG_INFO.search(source)
    pairs = [p.split("=") for p in found.group(1).split("&") if p] if found else []
    below = [int(t) for t, c in pairs if int(c) <= line]
    return max(below, default=None)


def location(exc: BaseException, fallback: Template | None = None) -> tuple[str, int | None]:
    """The template and line of the innermost template frame of ``exc``'s traceback."""
    name = fallback.name if fallback is not None and fallback.name else "<template>"
    line: int | None = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        template = tb.tb_frame.f_globals.get("__jinja_template__")
        if isinstance(template, Template):
            name, line = _origin(template, tb.tb_lineno)
        tb = tb.tb_next
    return name, line


def _origin(template: Template, python_line: int) -> tuple[str, int | None]:
    """The file and line of a compiled template's Python line (the template's own, or the
    layout's or partial's it was flattened from: see ``LimitedEnvironment.origin``)."""
    name, line = template.name or "<template>", template.get_corresponding_lineno(python_line)
    environment = template.environment
    return (
        environment.origin(name, line)
        if isinstance(environment, LimitedEnvironment)
        else (
            name,
            line,
        )
    )


def suspended(events: Any, fallback: Template) -> tuple[str, int | None]:
    """The template and line where a render's generator last yielded output (through
    ``yield from`` into blocks of the templates it extends)."""
    name, line = fallback.name or "<template>", None
    while events is not None and getattr(events, "gi_frame", None) is not None:
        frame = events.gi_frame
        template = frame.f_globals.get("__jinja_template__")
        if isinstance(template, Template):
            name, line = _origin(template, frame.f_lineno)
        events = getattr(events, "gi_yieldfrom", None)
    return name, line


def located(exc: BaseException, message: str, template: Template) -> TemplateLimitError:
    name, line = location(exc, template)
    return TemplateLimitError(name, [Problem(message, line=line)])
