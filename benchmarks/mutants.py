"""Mutation testing of one source file against the tests that should pin it down.

    .venv/bin/python benchmarks/mutants.py recocamp/campaigns/caps.py \\
        tests/campaigns/test_caps.py tests/campaigns/test_planner.py
    .venv/bin/python benchmarks/mutants.py recocamp/campaigns/caps.py tests/... --list
    .venv/bin/python benchmarks/mutants.py recocamp/campaigns/caps.py tests/... --only 3,17
    .venv/bin/python benchmarks/mutants.py recocamp/measure/kpis.py --fork --lines 60-98 \\
        -- tests/measure/test_kpis.py -k "hand or empty or window"

Everything after ``--`` goes to pytest as it is (a ``-k`` to leave out slow tests). ``--fork``
runs each mutant's tests in a child forked from this process, with numpy, scipy and SQLAlchemy
already imported, instead of a fresh interpreter that imports them again for every mutant;
``--lines`` mutates one line range.

A test suite that passes whatever the code does cannot fail, and a test that cannot fail is a
defect. This script changes ONE thing in the file at a time (``<``↔``<=``, ``>``↔``>=``,
``==``↔``!=``, ``is``↔``is not``, ``in``↔``not in``, ``and``↔``or``, ``+``↔``-``, ``*``↔``/``,
``not x``→``x``, ``-x``→``x``, ``True``↔``False``, a number c→c+1, ``min``↔``max``,
``any``↔``all``, ``return x``→``return None``, an ``if`` whose branch is dropped, a
conditional expression that always takes one side, a comprehension's filter dropped), runs
the given test files (``nice -n 10 pytest -q -x``), and records whether the tests killed the
mutant, let it survive, or timed out. Each mutant is made from the file's AST but spliced into
the original bytes, so the rest of the file (comments, layout) is untouched. The file is
restored after every mutant, also on Ctrl-C or SIGTERM.

Bytecode: a mutant of the same size written within the same second as the original could be
served from the original's ``.pyc`` (checked by mtime and size); each mutant gets its own
mtime and the tests run with ``PYTHONDONTWRITEBYTECODE=1``, and the original mtime is put back.

The surviving mutants are printed (line, column, what changed); the last line is one JSON
object with the counts. Survivors are not all gaps: some are equivalent (the change cannot
alter behaviour), which only a person can tell.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

SWAPPED_COMPARISONS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
SWAPPED_OPERATORS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div,
}
SWAPPED_NAMES = {"min": "max", "max": "min", "any": "all", "all": "any"}


@dataclass(frozen=True, slots=True)
class Mutant:
    """One change: the byte span of the original it replaces, and the new text."""

    number: int
    line: int
    column: int
    what: str
    start: int
    end: int
    text: str


@dataclass(frozen=True, slots=True)
class Result:
    mutant: Mutant
    outcome: str  # killed | survived | timeout
    seconds: float


class _Offsets:
    """Byte offsets of (line, column) positions: ``ast`` columns count UTF-8 bytes."""

    def __init__(self, source: bytes) -> None:
        self.starts = [0]
        for line in source.splitlines(keepends=True):
            self.starts.append(self.starts[-1] + len(line))

    def of(self, line: int, column: int) -> int:
        return self.starts[line - 1] + column


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """Ids of nodes never mutated: docstrings, annotations, f-strings, and decorators
    (``frozen=True`` of a dataclass is a promise to the type checker, not behaviour)."""
    skipped: set[int] = set()

    def skip(node: ast.AST | None) -> None:
        if node is not None:
            skipped.update(id(child) for child in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skip(node)
        elif isinstance(node, ast.arg | ast.AnnAssign):
            skip(node.annotation)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            skip(node.returns)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for decorator in node.decorator_list:
                skip(decorator)
        if isinstance(node, ast.JoinedStr):
            skip(node)
    return skipped


def _changes(node: ast.AST) -> Iterator[tuple[str, ast.AST | str]]:
    """The mutations of one node: a description and the replacement (a node or plain text)."""
    if isinstance(node, ast.Compare):
        for index, op in enumerate(node.ops):
            swapped = SWAPPED_COMPARISONS.get(type(op))
            if swapped is not None:
                new = copy.deepcopy(node)
                new.ops[index] = swapped()
                yield f"{type(op).__name__} -> {swapped.__name__}", new
    elif isinstance(node, ast.BoolOp):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        yield f"{type(node.op).__name__} -> {type(other).__name__}", ast.BoolOp(other, node.values)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not | ast.USub):
        yield f"drop {type(node.op).__name__}", node.operand
    elif isinstance(node, ast.BinOp) and type(node.op) in SWAPPED_OPERATORS:
        swapped_op = SWAPPED_OPERATORS[type(node.op)]
        name = f"{type(node.op).__name__} -> {swapped_op.__name__}"
        yield name, ast.BinOp(node.left, swapped_op(), node.right)
    elif isinstance(node, ast.Constant):
        yield from _constant_changes(node)
    elif isinstance(node, ast.Name) and node.id in SWAPPED_NAMES:
        yield f"{node.id} -> {SWAPPED_NAMES[node.id]}", SWAPPED_NAMES[node.id]


def _constant_changes(node: ast.Constant) -> Iterator[tuple[str, ast.AST | str]]:
    value = node.value
    if isinstance(value, bool):
        yield f"{value} -> {not value}", str(not value)
    elif isinstance(value, int | float):
        yield f"{value!r} -> {value + 1!r}", repr(value + 1)


def _statement_changes(node: ast.AST) -> Iterator[tuple[str, ast.AST, str]]:
    """Mutations of a statement's part: (description, the node replaced, the new text)."""
    if isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            yield "return None", node, "return None"
    elif isinstance(node, ast.If):
        yield "drop the if branch", node.test, "False"
    elif isinstance(node, ast.IfExp):
        yield "always the value before else", node.test, "True"
        yield "always the value after else", node.test, "False"
    elif isinstance(node, ast.comprehension):
        for condition in node.ifs:
            yield "drop the filter", condition, "True"


def mutants(source: bytes) -> list[Mutant]:
    """Every mutant of ``source`` that compiles and differs from it, in file order."""
    tree = ast.parse(source)
    skipped = _skipped_nodes(tree)
    offsets = _Offsets(source)
    found: list[tuple[str, ast.AST, str]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        found.extend(_statement_changes(node))
        if isinstance(node, ast.expr) and isinstance(getattr(node, "ctx", ast.Load()), ast.Load):
            for what, new in _changes(node):
                text = new if isinstance(new, str) else f"({ast.unparse(new)})"
                found.append((what, node, text))
    result: list[Mutant] = []
    original = ast.dump(tree)
    ordered = sorted(found, key=lambda item: (item[1].lineno, item[1].col_offset))  # type: ignore[attr-defined]
    for what, node, text in ordered:
        line, column = node.lineno, node.col_offset  # type: ignore[attr-defined]
        start = offsets.of(line, column)
        end = offsets.of(node.end_lineno, node.end_col_offset)  # type: ignore[attr-defined]
        changed = source[:start] + text.encode() + source[end:]
        try:
            if ast.dump(ast.parse(changed)) == original:
                continue
        except SyntaxError:
            continue
        result.append(Mutant(len(result) + 1, line, column, what, start, end, text))
    return result


def _run_tests(tests: list[str], timeout: float) -> tuple[str, float]:
    """``killed``, ``survived`` or ``timeout`` and the seconds the tests took."""
    command = ["nice", "-n", "10", sys.executable, "-m", "pytest", "-q", "-x"]
    command += ["-p", "no:cacheprovider", "-p", "no:randomly", *tests]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": os.getcwd()}
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the group we started, by its id
        process.wait()
        return "timeout", time.monotonic() - started
    except BaseException:  # Ctrl-C: no test run may outlive the restored file
        os.killpg(process.pid, signal.SIGKILL)
        raise
    return ("survived" if code == 0 else "killed"), time.monotonic() - started


# not hypothesis or another pytest plugin: pytest warns that it cannot rewrite its asserts
PRELOADED = (
    "pytest",
    "numpy",
    "scipy.stats",
    "sqlalchemy",
    "pydantic",
    "jinja2",
    "httpx",
)


def _run_forked(tests: list[str], timeout: float) -> tuple[str, float]:
    """As :func:`_run_tests`, in a child forked from this process, which has the libraries
    (:data:`PRELOADED`) but not the project imported: the child imports the project, the
    mutant included, from source, and saves the seconds a fresh interpreter spends loading
    numpy, scipy and SQLAlchemy for every mutant."""
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: it never returns into the caller
        code = 3
        try:
            os.setsid()
            os.nice(10)
            quiet = os.open(os.devnull, os.O_WRONLY)
            os.dup2(quiet, 1)
            os.dup2(quiet, 2)
            sys.dont_write_bytecode = True
            import pytest

            code = int(pytest.main(["-q", "-x", "-p", "no:cacheprovider", *tests]))
        finally:
            os._exit(code)
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - started > timeout:
                os.killpg(pid, signal.SIGKILL)  # the child we forked, by its id
                os.waitpid(pid, 0)
                return "timeout", time.monotonic() - started
            time.sleep(0.05)
    except BaseException:
        os.killpg(pid, signal.SIGKILL)
        raise
    code = os.waitstatus_to_exitcode(status)
    return ("survived" if code == 0 else "killed"), time.monotonic() - started


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(
    target: Path,
    tests: list[str],
    only: set[int] | None,
    timeout: float,
    fork: bool = False,
    lines: tuple[int, int] | None = None,
) -> list[Result]:
    """Each mutant in turn, the file put back after each (and on any interruption)."""
    run_tests = _run_forked if fork else _run_tests
    if fork:
        if any(name.split(".")[0] in ("recocamp", "tests") for name in sys.modules):
            raise SystemExit("--fork: the project must not be imported before the fork")
        for name in PRELOADED:
            importlib.import_module(name)
        sys.path.insert(0, os.getcwd())
    original = target.read_bytes()
    stat = target.stat()
    signal.signal(signal.SIGTERM, _raise_interrupt)
    baseline, seconds = run_tests(tests, timeout * 4)
    if baseline != "survived":
        raise SystemExit(f"the tests fail on the unchanged {target} ({baseline}): fix them first")
    limit = max(timeout, seconds * 3)
    print(f"baseline {seconds:.1f} s, timeout per mutant {limit:.0f} s", flush=True)
    results: list[Result] = []
    for mutant in mutants(original):
        if only is not None and mutant.number not in only:
            continue
        if lines is not None and not lines[0] <= mutant.line <= lines[1]:
            continue
        try:
            target.write_bytes(
                original[: mutant.start] + mutant.text.encode() + original[mutant.end :]
            )
            stamp = stat.st_mtime_ns + (10_000 + mutant.number) * 1_000_000_000
            os.utime(target, ns=(stamp, stamp))
            outcome, took = run_tests(tests, limit)
        finally:
            target.write_bytes(original)
            os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        results.append(Result(mutant, outcome, took))
        mark = {"killed": ".", "survived": "S", "timeout": "T"}[outcome]
        print(
            f"{mark} #{mutant.number} {mutant.line}:{mutant.column} {mutant.what} {took:.1f}s",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("target", type=Path, help="the source file to mutate")
    parser.add_argument("tests", nargs="+", help="the test files that should kill the mutants")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--only", help="comma-separated mutant numbers to run")
    parser.add_argument(
        "--fork", action="store_true", help="fork each run from a process with the libraries loaded"
    )
    parser.add_argument("--lines", help="only mutants on these lines: FIRST-LAST")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per mutant (min)")
    args = parser.parse_args()
    if args.list:
        for mutant in mutants(args.target.read_bytes()):
            print(f"#{mutant.number} {mutant.line}:{mutant.column} {mutant.what}: {mutant.text}")
        return
    only = {int(n) for n in args.only.split(",")} if args.only else None
    lines = tuple(int(n) for n in args.lines.split("-")) if args.lines else None
    results = run(args.target, args.tests, only, args.timeout, args.fork, lines)  # type: ignore[arg-type]
    survivors = [r.mutant for r in results if r.outcome == "survived"]
    for mutant in survivors:
        print(
            f"survived #{mutant.number} {mutant.line}:{mutant.column} {mutant.what}: {mutant.text}"
        )
    counts = {o: sum(r.outcome == o for r in results) for o in ("killed", "survived", "timeout")}
    summary: dict[str, object] = {"target": str(args.target), "total": len(results), **counts}
    summary["survivors"] = [m.number for m in survivors]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
