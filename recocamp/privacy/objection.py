"""An objection to profiling (GDPR Art. 21) reaches the saved models.

Recording an objection (``data.profiles.apply``: the API's ``PUT /v1/customers/{id}``, the
preferences page; a customers import, ``store.queries.upsert_customers``) drops the customer's
cached top-N row and forecasts in its transaction. A trained model holding their factors and
purchase row is still a profile of them, so right after that transaction commits the customer
is removed from every saved model's artifacts, the way an erasure removes them
(``artifacts.scrub``): in the request (a scrub rewrites a ``model.npz``: on the demo, with
three saved 8–9.5 MB hybrids, the objecting ``PUT`` took 0.20 s, 0.12 s when no model held
the customer any more), in the import command, in the worker's import job. The worker's
nightly train job sweeps every objector out of every model again (:func:`unprofile` without
ids), also when it skips training: that catches an objection recorded while a model was being
trained, and objections recorded before this existed. A model that cannot be found or read
is reported as an erasure reports it (logged as an error; ``models_left``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass

from recocamp.domain import id_forms
from recocamp.privacy import artifacts
from recocamp.settings import Settings
from recocamp.store import profiles
from recocamp.store.engine import Engine

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ObjectionScrub:
    customers: int  # objecting customers looked for
    models: int  # saved models that held one of them, rewritten without them
    models_left: tuple[str, ...]  # model directories that could not be cleaned

    @property
    def clean(self) -> bool:
        return not self.models_left

    def counts(self) -> dict[str, int]:
        """For a worker run's counts."""
        return {
            "objection_models_scrubbed": self.models,
            "objection_models_left": len(self.models_left),
        }


def unprofile(
    engine: Engine, settings: Settings, customer_ids: Collection[str] | None = None
) -> ObjectionScrub:
    """Remove customers who objected to profiling from every saved model: ``customer_ids``
    (just recorded as objecting), or every objector in the store (None). Call it after the
    objection's transaction committed (a rolled-back change must not have scrubbed)."""
    if customer_ids is None:
        with engine.connect() as connection:
            customer_ids = profiles.objected_ids(connection)
    # every Unicode form: a model learnt lines stored under another form of the id as theirs
    scrubbed = artifacts.scrub(engine, settings, id_forms(customer_ids), "objection")
    if scrubbed.models:
        log.info(
            "objection to profiling: %d customer(s) removed from %d saved model(s)",
            len(customer_ids),
            scrubbed.models,
        )
    return ObjectionScrub(
        len(customer_ids), scrubbed.models, tuple(str(path) for path in scrubbed.missing)
    )
