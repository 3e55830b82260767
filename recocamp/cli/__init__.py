"""The ``recocamp`` command: one module per command group on one typer app.

Owns: the app and the commands for import, training, campaigns and the demo (:mod:`.main`),
sending and the fake ESP (:mod:`.delivery`), measurement (:mod:`.measure`), forecasts
(:mod:`.forecast`), the API server (:mod:`.api`) and the worker (:mod:`.worker`).

May import: every package.
Exports: ``app`` (the console script ``recocamp = "recocamp.cli:app"``).
"""

from recocamp.cli.main import app

__all__ = ["app"]
