"""The ``recocamp`` command: one module per command group on one typer app.

Owns: the app and what every command shares (:mod:`.common`: settings, engines, errors →
exit codes, progress, the clock), and the commands: the database, imports and the demo data
(:mod:`.data`), training and the model registry (:mod:`.recommender`), checking, planning and
previewing campaigns (:mod:`.campaigns`), KPIs, the report and snapshots (:mod:`.measure`),
sending and the fake ESP (:mod:`.delivery`), the demo (:mod:`.demo`), forecasts
(:mod:`.forecast`), the API server, privacy and API keys (:mod:`.api`), a customer's signed
link (:mod:`.links`) and the worker (:mod:`.worker`). A command never calls another: what
two share is a plain function.

May import: every package.
Exports: ``app`` (the console script ``recocamp = "recocamp.cli:app"``).
"""

from recocamp.cli import (  # each registers its commands on the app
    api,
    campaigns,
    data,
    delivery,
    demo,
    forecast,
    links,
    measure,
    recommender,
    worker,
)
from recocamp.cli.common import app, in_help_order

# as `recocamp --help` lists them: a user's path from data to results, then the groups
in_help_order(
    commands=(
        *("demo-data", "kpis", "train", "evaluate", "recommend", "similar", "check", "plan"),
        *("preview", "serve", "link", "send", "fake-esp", "demo", "forecast", "forecast-evaluate"),
        *("report", "worker"),
    ),
    groups=("db", "import", "models", "privacy", "api-key", "outbox", "snapshots", "runs"),
)

__all__ = [
    "api",
    "app",
    "campaigns",
    "data",
    "delivery",
    "demo",
    "forecast",
    "links",
    "measure",
    "recommender",
    "worker",
]
