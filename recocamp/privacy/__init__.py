"""Privacy: what we hold about a customer (GDPR Art. 15/20), erasure (Art. 17), retention.

Owns the rules, not the SQL: where personal data lives and the export of it
(:mod:`.holdings`), what erasure removes where, in which order, and what it cannot reach
(:mod:`.erasure`), what an objection to profiling removes from the saved models
(:mod:`.objection`; one scrub of the models for both, :mod:`.artifacts`), and how long what
is kept (:mod:`.retention`). Their statements are in
``store.privacy``; ``store.tombstones`` keeps the erased out of every way data comes in
again.

May import: the base modules, ``store``, ``data``, ``recommender``, ``campaigns`` and
``delivery``.
Exports: :func:`export`, :func:`ties`, :func:`personal_columns`, :func:`erase`,
:class:`ErasureReport`, :class:`Scope` (whom a request covers when other customers hold the
address), :class:`Link` (the customer's link a request came through), :func:`covered` (the
ids it would cover, read before asking), :func:`check_count`, :func:`held` (whether an
erasure finds anything, read before asking), :func:`purge`, :class:`PurgeReport`,
:func:`unprofile`, :class:`ObjectionScrub`, :data:`KEPT` (callers import the package:
``from recocamp import privacy``).
"""

from recocamp.privacy.erasure import ErasureReport, erase, held
from recocamp.privacy.holdings import (
    Link,
    Scope,
    check_count,
    covered,
    export,
    personal_columns,
    ties,
)
from recocamp.privacy.objection import ObjectionScrub, unprofile
from recocamp.privacy.retention import KEPT, PurgeReport, purge

__all__ = [
    "KEPT",
    "ErasureReport",
    "Link",
    "ObjectionScrub",
    "PurgeReport",
    "Scope",
    "check_count",
    "covered",
    "erase",
    "export",
    "held",
    "personal_columns",
    "purge",
    "ties",
    "unprofile",
]
