"""Garbage collections during and between renders. The render budget credits a collection
back to the template (``render_limits.on_collection``, a ``gc.callbacks`` entry); that
callback read the budget's ContextVar, and a collection that starts inside the
ContextVar's ``reset`` (it allocates its new mapping after clearing its cache) left the
cache pointing at the budget being freed: the next read returned freed memory. It crashed
the process ("Segmentation fault", twice in CI) or raised on whatever object lived there
next. With a collection at every allocation it happened on every run; in a child process,
so that a crash fails this test rather than ending the suite."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

CHILD = """
import gc, sys
from pathlib import Path
from recocamp.campaigns.context import sample_context
from recocamp.campaigns.render import Renderer
renderer, context, errors = Renderer(Path("templates")), sample_context(), []
sys.unraisablehook = lambda failed: errors.append(repr(failed.exc_value))
gc.set_threshold(1, 1, 1)  # a collection at every allocation
for _ in range(200):
    renderer.subject("Hi {{ customer.first_name }}", context)
    renderer.render("Hi", "winback.html", "winback.txt", context)
gc.set_threshold(700, 10, 10)
print(len(errors), errors[:1])
"""


def test_collections_at_any_allocation_of_a_render_crash_nothing() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.strip() == "0 []", done.stdout
