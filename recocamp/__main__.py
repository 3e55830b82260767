"""``python -m recocamp`` = the ``recocamp`` command."""

from recocamp.cli import app

if __name__ == "__main__":  # delivery processes are spawned: they import this module too
    app(prog_name="recocamp")
