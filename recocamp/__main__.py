"""``python -m recocamp`` = the ``recocamp`` command."""

from recocamp.cli import app

app(prog_name="recocamp")
