"""The benchmarks are run by hand, never by CI, so nothing noticed when they rotted: a later
bound (``lapsed_days`` at most 36,500) refused the campaign files of ``send.py`` and
``workers.py``, which then failed before measuring anything. Each benchmark must still start
(its ``--help``) and its campaign file must still load."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from recocamp.campaigns.files import load_all
from recocamp.settings import Settings
from tests.conftest import ROOT

SCRIPTS = sorted(path.name for path in (ROOT / "benchmarks").glob("*.py"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_benchmark_starts(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout


@pytest.mark.parametrize("module", ["benchmarks.send", "benchmarks.workers"])
def test_a_benchmarks_campaign_file_loads(module: str, tmp_path: Path) -> None:
    text = importlib.import_module(module).CAMPAIGN
    (tmp_path / "bench.toml").write_text(text, encoding="utf-8")
    settings = Settings().model_copy(update={"signing_key": SecretStr("bench-key")})
    loaded, problems = load_all(tmp_path, settings, ROOT / "templates")
    assert [str(problem) for problem in problems] == []
    assert [campaign.name for campaign in loaded] == ["bench"]
