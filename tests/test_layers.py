"""Architecture rules: pure modules do no I/O, and only the shell reads the clock."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "recocamp"
PURE_MODULES = (
    "domain.py", "errors.py", "clock.py", "kpis.py", "catalog.py", "synthetic.py",
    "matrix.py", "baselines.py", "recommend.py", "caps.py", "segments.py", "loyalty.py",
    "compose.py", "planner.py", "offers.py", "tokens.py", "stats.py", "measure.py",
)  # fmt: skip
FORBIDDEN = (
    "sqlalchemy",
    "alembic",
    "psycopg",
    "httpx",
    "fastapi",
    "typer",
    "rich",
    "implicit",
    "requests",
    "urllib",
    "socket",
    "recocamp.store",
    "recocamp.sources",
    "recocamp.cli",
)
CLOCK_READERS = {"cli.py", "clock.py", "esp/fake_server.py"}  # the stand-in ESP is not ours
NOW_CALL = re.compile(r"\bdatetime\s*\.\s*(?:now|utcnow)\s*\(")


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


def is_forbidden(name: str) -> bool:
    return any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN)


def test_the_checker_sees_every_kind_of_import() -> None:
    source = """
import socket
import urllib.request as ur
from sqlalchemy.orm import Session
from . import store
from .sources import online_retail
def later():
    import httpx
"""
    found = {name for name in imported_modules(source, "recocamp.kpis") if is_forbidden(name)}
    assert {
        "socket",
        "urllib.request",
        "sqlalchemy.orm",
        "recocamp.store",
        "recocamp.sources",
        "httpx",
    } <= found
    assert not is_forbidden("richer")
    assert not is_forbidden("recocamp.storefront")


@pytest.mark.parametrize("filename", PURE_MODULES)
def test_pure_module_imports_no_io_library(filename: str) -> None:
    path = PACKAGE / filename
    imports = imported_modules(path.read_text(encoding="utf-8"), f"recocamp.{path.stem}")
    assert imports, f"{filename} was not parsed"
    bad = sorted(name for name in imports if is_forbidden(name))
    assert bad == [], f"{filename} imports I/O code: {bad}"


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_package_has_modules_to_check() -> None:
    names = {path.relative_to(PACKAGE).as_posix() for path in package_modules()}
    assert {"cli.py", "clock.py", "kpis.py", "settings.py"} <= names


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
        module = "recocamp." + name.removesuffix(".py").replace("/", ".")
        imports = imported_modules(path.read_text(encoding="utf-8"), module)
        if any(i == "httpx" or i.startswith("httpx.") for i in imports) and not name.startswith(
            "esp/"
        ):
            offenders.append(name)
    assert offenders == []
