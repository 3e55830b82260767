"""Saved models cleaned of customers: an erasure (GDPR Art. 17) and an objection to profiling
(Art. 21) both take the customer out of every model that still has artifacts — live,
candidate, rollback target, retired — since a trained model holding a customer's factors and
purchase row is a profile of them. One scrub for both (``models.drop_customers``: the ids,
their rows of the training matrices, their user factors); the next training learns from none
of it either way (``store.training_lines.training_lines`` leaves them out).

A model that should have artifacts (``registry.kept_artifact_paths``: candidate, live,
rollback target) but whose ``model.npz`` is missing or cannot be read cannot be cleaned: it
is logged as an error and listed, so the request does not pass for done.

Saved models the registry does not know are cleaned and exported too (:func:`unregistered`):
a training killed between writing its model and registering it (the OOM killer, a power
cut: its own clean-up never ran) leaves a directory under ``[recommender] artifacts_dir``
that holds every customer's rows and factors.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recocamp.errors import ModelError
from recocamp.recommender import models as model
from recocamp.settings import Settings
from recocamp.store import registry
from recocamp.store.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Scrubbed:
    models: int  # saved models that held one of the customers, rewritten without them
    missing: tuple[Path, ...]  # model directories that could not be cleaned (see the module)


def scrub(engine: Engine, settings: Settings, customer_ids: Collection[str], why: str) -> Scrubbed:
    """Remove the customers from every saved model that still has artifacts (``why``: the
    erasure, the objection, for the log). A relative ``models.path`` (older versions) is
    relative to the settings file's directory."""
    if not customer_ids:
        return Scrubbed(0, ())
    with engine.connect() as connection:
        paths = registry.artifact_paths(connection)
        kept = registry.kept_artifact_paths(connection)
    located = [(path, settings.locate(path)) for path in paths]
    left = unregistered(settings, [directory for _, directory in located])
    scrubbed, missing = 0, []
    for path, directory in [*located, *left]:
        if not (directory / "model.npz").exists():
            if path in kept:
                log.error("model artifacts missing at %s: the %s cannot clean them", directory, why)
                missing.append(directory)
            continue
        try:
            scrubbed += model.drop_customers(directory, customer_ids) > 0
        except ModelError as exc:
            log.error("%s: the %s cannot clean them", exc, why)
            missing.append(directory)
    return Scrubbed(scrubbed, tuple(missing))


def held(engine: Engine, settings: Settings, customer_ids: Collection[str]) -> list[dict[str, Any]]:
    """What every saved model still holds about the customers, for their export (Art. 15:
    the profile erasure and an objection remove, :func:`scrub`): per model and customer, the
    version, its status, their rows of the training matrices and their user factors. A model
    whose artifacts are gone holds nothing; one that cannot be read is named, with no rows."""
    if not customer_ids:
        return []
    with engine.connect() as connection:
        registered = [
            (version, status, settings.locate(path))
            for version, status, path in registry.artifact_models(connection)
        ]
    left = unregistered(settings, [directory for _, _, directory in registered])
    found: list[dict[str, Any]] = []
    for version, status, directory in [
        *registered,
        *((directory.name, "unregistered", directory) for _, directory in left),
    ]:
        if not (directory / "model.npz").exists():
            continue
        try:
            rows = model.customer_rows(directory, customer_ids)
        except ModelError as exc:
            log.error("%s: the export cannot read it", exc)
            found.append({"version": version, "status": status, "unreadable": True})
            continue
        for customer_id, held_rows in rows.items():
            found.append(
                {"version": version, "status": status, "customer_id": customer_id, **held_rows}
            )
    return found


def unregistered(settings: Settings, registered: Collection[Path]) -> list[tuple[str, Path]]:
    """Model directories under ``[recommender] artifacts_dir`` that no registered model
    names (see the module docstring), as ``(path, directory)``; one being written by a
    training under way is among them (cleaning it is what that training does itself)."""
    root = settings.locate(settings.recommender.artifacts_dir)
    known = {directory.resolve() for directory in registered}
    versions = {directory.name for directory in registered}  # a model moved: still its own
    try:
        children = sorted(root.iterdir())
    except OSError:  # no model saved yet
        return []
    return [
        (str(child), child)
        for child in children
        if child.is_dir()
        and not child.is_symlink()
        and (child / "model.npz").is_file()
        and child.resolve() not in known
        and child.name not in versions
    ]
