"""Installs are reproducible: README's commands and CI install the versions CI tested."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

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


def test_what_the_readme_commands_write_into_the_checkout_is_git_ignored() -> None:
    """The quick start runs in the checkout: its outputs must not show up in `git status`."""
    import shutil
    import subprocess

    from recocamp.settings import Settings

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shipped = tomllib.loads((ROOT / "settings.toml").read_text(encoding="utf-8"))
    database = shipped["database_url"].removeprefix("sqlite:///")
    defaults = Settings()
    written = {
        *re.findall(r"--html (\S+\.html)", readme),  # report.html, preview.html
        "demo/purchases.csv",
        "demo/fake-esp/messages.jsonl",  # demo-data, worker --demo
        f"{defaults.ingest.drop_dir}/orders.csv",
        f"{defaults.ingest.processed_dir}/orders.csv",
        f"{defaults.recommender.artifacts_dir}/v1/meta.json",
        database,
        f"{database}-wal",
        f"{database}-shm",
        f"{database}.worker-lock",
    }
    assert {"report.html", "preview.html"} <= written
    found = subprocess.run(
        ["git", "check-ignore", "--no-index", *sorted(written)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert found.returncode in (0, 1), found.stderr
    assert sorted(written - set(found.stdout.split())) == []
