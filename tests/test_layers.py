"""Architecture rules, checked on the source: the package table (which package may import
which), no import cycles, no ``_private`` names across modules, SQL only in ``store/``, pure
modules do no I/O, only the shell reads the clock, only the provider edge imports httpx."""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recocamp"
TESTS = PACKAGE.parent / "tests"
BENCHMARKS = PACKAGE.parent / "benchmarks"
BASE = "base"  # settings, errors, clock, domain, tokens, ratelimit, metrics, config_files

# package → the packages it may import (besides itself and the base modules), in the order
# data flows: data in → recommender/forecast → campaigns → delivery → measure; privacy,
# worker, api and cli on top; store beneath everything.
LAYERS: dict[str, frozenset[str]] = {
    BASE: frozenset(),
    "store": frozenset(),
    "data": frozenset({"store"}),
    "forecast": frozenset({"store"}),
    "recommender": frozenset({"store", "data"}),
    "campaigns": frozenset({"store", "data", "recommender", "forecast"}),
    "delivery": frozenset({"store", "campaigns"}),
    "measure": frozenset({"store", "data", "forecast", "campaigns", "delivery"}),
    "privacy": frozenset({"store", "data", "recommender", "campaigns", "delivery"}),
    "worker": frozenset(
        {"store", "data", "recommender", "forecast", "campaigns", "delivery", "measure", "privacy"}
    ),
    "api": frozenset(
        {"store", "data", "recommender", "forecast", "campaigns", "delivery", "measure", "privacy"}
    ),
    "cli": frozenset(
        {
            "store",
            "data",
            "recommender",
            "forecast",
            "campaigns",
            "delivery",
            "measure",
            "privacy",
            "worker",
            "api",
        }
    ),
}
PURE_MODULES = (
    "domain.py",
    "errors.py",
    "clock.py",
    "tokens.py",
    "ratelimit.py",
    "data/catalog.py",
    "data/synthetic.py",
    "recommender/matrix.py",
    "recommender/baselines.py",
    "recommender/ranking.py",
    "recommender/repeat.py",
    "recommender/serving.py",
    "forecast/btyd.py",
    "forecast/history.py",
    "forecast/models.py",
    "forecast/evaluate.py",
    "forecast/outlook.py",
    "campaigns/caps.py",
    "campaigns/segments.py",
    "campaigns/loyalty.py",
    "campaigns/compose.py",
    "campaigns/planner.py",
    "campaigns/audience.py",
    "campaigns/predictive.py",
    "campaigns/offers.py",
    "campaigns/context.py",
    "delivery/webhooks.py",
    "measure/kpis.py",
    "measure/statistics.py",
    "measure/attribution.py",
)
FORBIDDEN = (
    "sqlalchemy",
    "alembic",
    "psycopg",
    "sqlite3",
    "httpx",
    "fastapi",
    "typer",
    "rich",
    "implicit",
    "requests",
    "urllib",
    "socket",
    "recocamp.store",
    "recocamp.data.sources",
    "recocamp.cli",
)
SQL_LIBRARIES = ("sqlalchemy", "sqlite3", "psycopg", "alembic")
CLOCK_READERS = {"cli/common.py", "clock.py", "delivery/esp/fake_server.py"}  # stand-in ESP
NOW_CALL = re.compile(r"\bdatetime\s*\.\s*(?:now|utcnow)\s*\(")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("recocamp", *parts))


def imported_modules(source: str, module: str) -> set[str]:
    """Absolute names of every module imported anywhere in ``source`` (also inside
    functions and ``if TYPE_CHECKING`` blocks); ``module`` resolves relative imports."""
    package = module.rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parent, base]) if base else ".".join(parent)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def is_forbidden(name: str, forbidden: tuple[str, ...] = FORBIDDEN) -> bool:
    return any(name == bad or name.startswith(bad + ".") for bad in forbidden)


def package_of(module: str) -> str:
    """The table's package of ``recocamp.a.b``: ``a`` when it is a package, else base."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS and (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return BASE


def package_modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def ours(path: Path) -> set[str]:
    """The recocamp modules ``path`` imports: ``from pkg import module`` names the module
    (not the package), ``from pkg import name`` the package (its ``__init__``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("recocamp"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recocamp"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if is_module(child) else node.module or "")
    return found


def is_module(name: str) -> bool:
    target = PACKAGE.joinpath(*name.split(".")[1:])
    return target.with_suffix(".py").exists() or (target / "__init__.py").exists()


def layer_violations() -> list[str]:
    found = []
    for path in package_modules():
        if path.name == "__main__.py":
            continue  # the command's entry: ``python -m recocamp``
        source = module_name(path)
        mine = package_of(source)
        for target in sorted(ours(path)):
            theirs = package_of(target)
            if theirs not in (mine, BASE) and theirs not in LAYERS[mine]:
                found.append(f"{source} ({mine}) imports {target} ({theirs})")
            if theirs == BASE and mine == BASE and target != "recocamp":
                continue
    return found


def cycles() -> list[list[str]]:
    """Import cycles between modules (a package's ``__init__`` counts as a module)."""
    graph = {module_name(p): ours(p) for p in package_modules()}
    found, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(source: str) -> Iterator[str]:
    """``module.name`` of every private name taken from a recocamp module: imported
    (``from recocamp.x import _name``) or reached through an imported module
    (``from recocamp.x import y`` or ``import recocamp.x.y as y``, then ``y._name``)."""
    tree = ast.parse(source)
    modules: dict[str, str] = {}  # local name → the recocamp module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("recocamp"):
            for alias in node.names:
                if is_private(alias.name):
                    yield f"{node.module}.{alias.name}"
                elif is_module(f"{node.module}.{alias.name}"):
                    modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("recocamp") and alias.asname:
                    modules[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (  # monkeypatch.setattr(module, "_name", …)
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "setattr"
            and len(node.args) >= 2
            and isinstance(node.args[0], ast.Name)
            and node.args[0].id in modules
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and is_private(node.args[1].value)
        ):
            yield f"{modules[node.args[0].id]}.{node.args[1].value}"
        if (  # monkeypatch.setattr("recocamp.module._name", …)
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "setattr"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and node.args[0].value.startswith("recocamp.")
            and is_private(node.args[0].value.rsplit(".", 1)[-1])
        ):
            yield node.args[0].value
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and is_private(node.attr)
        ):
            yield f"{modules[node.value.id]}.{node.attr}"


def private_imports() -> list[str]:
    """Private names used outside their module: in the package, and in the tests and
    benchmarks too (a test of a private helper pins what its module may change freely)."""
    found = []
    outside = [*TESTS.rglob("*.py"), *BENCHMARKS.glob("*.py")]
    for path in [*package_modules(), *outside]:
        for used in private_uses(path.read_text(encoding="utf-8")):
            found.append(f"{path.relative_to(PACKAGE.parent)} uses {used}")
    return found


def sql_outside_store() -> list[str]:
    found = []
    for path in package_modules():
        module = module_name(path)
        if package_of(module) == "store":
            continue
        imports = imported_modules(path.read_text(encoding="utf-8"), module)
        bad = sorted(i for i in imports if is_forbidden(i, SQL_LIBRARIES))
        if bad:
            found.append(f"{module}: {bad}")
    return found


# -- the checkers see what they should ------------------------------------------------------


def test_the_checker_sees_every_kind_of_import() -> None:
    source = """
import socket
import urllib.request as ur
from sqlalchemy.orm import Session
from . import store
from .data.sources import csv
def later():
    import httpx
"""
    found = {n for n in imported_modules(source, "recocamp.kpis") if is_forbidden(n)}
    assert {
        "socket",
        "urllib.request",
        "sqlalchemy.orm",
        "recocamp.store",
        "recocamp.data.sources.csv",
        "httpx",
    } <= found
    assert not is_forbidden("richer")
    assert not is_forbidden("recocamp.storefront")


def test_the_checker_sees_private_names_imported_and_reached_through_modules() -> None:
    source = """
from recocamp.store.engine import _config, make_engine, __version__
from recocamp.store import queries
import recocamp.recommender.training as training
from recocamp import settings as s
queries._rows(1); training._seen; s._load; queries.public; make_engine._x; other._y
monkeypatch.setattr(training, "_fit", None); monkeypatch.setattr(other, "_z", None)
monkeypatch.setattr("recocamp.store.queries._read", None)
"""
    assert sorted(private_uses(source)) == [
        "recocamp.recommender.training._fit",
        "recocamp.recommender.training._seen",
        "recocamp.settings._load",
        "recocamp.store.engine._config",
        "recocamp.store.queries._read",
        "recocamp.store.queries._rows",
    ]


def test_the_table_covers_every_package_and_places_modules() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS) - {BASE}
    assert package_of("recocamp.campaigns.caps") == "campaigns"
    assert package_of("recocamp.settings") == BASE
    assert package_of("recocamp.delivery.esp.postmark") == "delivery"
    for name, allowed in LAYERS.items():  # a table without cycles: each may import only below
        assert name not in allowed
        for other in allowed:
            assert name not in LAYERS[other], f"{name} and {other} may import each other"


def test_the_cycle_finder_finds_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = {
        "recocamp.a": {"recocamp.b"},
        "recocamp.b": {"recocamp.c"},
        "recocamp.c": {"recocamp.a"},
    }
    paths = {name: PACKAGE / f"{name}.py" for name in fake}
    monkeypatch.setattr(f"{__name__}.package_modules", lambda: list(paths.values()))
    monkeypatch.setattr(f"{__name__}.module_name", lambda p: p.stem)
    monkeypatch.setattr(f"{__name__}.ours", lambda p: fake[p.stem])
    assert cycles() == [["recocamp.a", "recocamp.b", "recocamp.c", "recocamp.a"]]


def test_every_package_says_what_it_owns_and_exports() -> None:
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        assert len(doc) > 80 and "TODO" not in doc, f"{init.parent.name}/__init__.py: docstring"


# -- the rules -------------------------------------------------------------------------------


def test_packages_import_only_what_the_table_allows() -> None:
    assert layer_violations() == []


def test_no_import_cycles() -> None:
    assert cycles() == []


def test_no_private_names_are_imported_across_modules() -> None:
    assert private_imports() == []


def test_only_the_store_speaks_sql() -> None:
    assert sql_outside_store() == []


@pytest.mark.parametrize("filename", PURE_MODULES)
def test_pure_module_imports_no_io_library(filename: str) -> None:
    path = PACKAGE / filename
    imports = imported_modules(path.read_text(encoding="utf-8"), module_name(path))
    assert imports, f"{filename} was not parsed"
    bad = sorted(name for name in imports if is_forbidden(name))
    assert bad == [], f"{filename} imports I/O code: {bad}"


def test_the_clock_pattern_matches_what_it_should() -> None:
    assert NOW_CALL.search("x = datetime.now(UTC)")
    assert NOW_CALL.search("x = datetime.utcnow()")
    assert NOW_CALL.search("x = dt.datetime.now (tz=UTC)")
    assert not NOW_CALL.search("x = clock.now()")


def test_only_the_shell_reads_the_clock() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)}:{number}"
        for path in package_modules()
        if path.relative_to(PACKAGE).as_posix() not in CLOCK_READERS
        for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
        if NOW_CALL.search(text)
    ]
    assert offenders == [], f"read the time from a Clock instead: {offenders}"


def test_only_the_provider_edge_imports_httpx() -> None:
    """DESIGN.md §Conventions 1: httpx errors are translated in esp/, nobody above sees them."""
    offenders = []
    for path in package_modules():
        name = path.relative_to(PACKAGE).as_posix()
        imports = imported_modules(path.read_text(encoding="utf-8"), module_name(path))
        if any(i == "httpx" or i.startswith("httpx.") for i in imports) and not name.startswith(
            "delivery/esp/"
        ):
            offenders.append(name)
    assert offenders == []


def exported_names(init: Path) -> list[str]:
    """The names a package's docstring says it exports (after ``Exports``)."""
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
    part = doc[doc.find("Exports") :] if "Exports" in doc else ""
    found = re.findall(r"``([\w.]+)``|:(?:func|class|data):`~?\.?([\w.]+)`", part)
    return [a or b for a, b in found]


@pytest.mark.parametrize("init", sorted(PACKAGE.glob("*/__init__.py")), ids=lambda p: p.parent.name)
def test_what_a_package_says_it_exports_exists(init: Path) -> None:
    """A newcomer trusts the docstring: every name it exports is there."""
    names = exported_names(init)
    assert names, f"{init.parent.name}/__init__.py names no exports"
    for dotted in names:
        where, target = module_name(init), importlib.import_module(module_name(init))
        for part in dotted.split("."):
            if hasattr(target, part):
                target = getattr(target, part)
            else:  # a submodule the package does not import itself
                target = importlib.import_module(f"{where}.{part}")
            where = f"{where}.{part}"
