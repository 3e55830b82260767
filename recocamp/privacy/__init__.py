"""Privacy: what we hold about a customer (GDPR Art. 15/20), erasure (Art. 17), retention.

Owns: the rules of export, erasure with its tombstone and retention purge
(:mod:`.rights`): which tables, caches, model artefacts and files a customer is removed
from, and what erasure cannot reach. Their SQL is in ``store`` (``store.tombstones`` keeps
the erased out of every way data comes in again).

May import: the base modules, ``store``, ``data``, ``recommender``, ``campaigns`` and
``delivery``.
Exports (by module): ``rights.export``, ``rights.erase``, ``rights.purge``.
"""
