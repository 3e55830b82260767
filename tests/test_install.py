"""Installs are reproducible: README's commands and CI install the versions CI tested."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_COMMAND = " && ".join(
    (
        "python3 -m venv .venv",
        ".venv/bin/pip install -q -c constraints.txt -e '.[dev]'",
        ".venv/bin/pytest",
    )
)


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_dependency_and_dev_tool_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = project["dependencies"] + project["optional-dependencies"]["dev"]
    missing = sorted({_name(r) for r in wanted} - set(_pins()))
    assert not missing, f"not in constraints.txt: {missing} (bash .ci/refresh-constraints)"


def test_readme_commands_and_ci_install_with_the_constraints() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    demo, tests = blocks[0], blocks[1]
    assert "pip install -q -c constraints.txt -e . " in demo
    assert tests == TEST_COMMAND
    assert tests in ci, ".ci/run must run README's test command as written"
