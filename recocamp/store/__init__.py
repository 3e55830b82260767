"""The store: every SQL statement of recocamp, on SQLite or PostgreSQL.

Owns: the schema (:mod:`.schema`), engines and migrations (:mod:`.engine`, ``migrations/``),
and the statements per area: purchases, customers and the audit log (:mod:`.queries`), the
recommender's read of every learnable purchase line (:mod:`.training_lines`), a purchases
file's staged lines during its import (:mod:`.staging`), the outbox (:mod:`.outbox`), the
rows the planner plans with (:mod:`.views`), planner decisions (:mod:`.decisions`), customer
profiles (:mod:`.profiles`), contact events (:mod:`.contacts`), job runs (:mod:`.runs`), the
model registry (:mod:`.registry`), measurement (:mod:`.measure`), forecasts' inputs
(:mod:`.forecasts`), export, erasure and retention purge (:mod:`.privacy`), tombstones of
erased customers (:mod:`.tombstones`), advisory lock keys (:mod:`.locks`), the worker's
advisory locks (:mod:`.leadership`) and scheduler job store (:mod:`.jobstore`), the offer
API's reads and per-request check (:mod:`.serving`), the customer pages' reads
(:mod:`.pages`) and engagement events such as reviews (:mod:`.engagement`).

May import: the base modules only; every other package reaches the database through here.
Exports (by module): ``engine.make_engine``, ``engine.upgrade``, ``engine.Engine`` and
``engine.Connection`` (the types other packages hold), ``queries.upsert_statement``,
``outbox.claim``, ``views.planning_rows``, ``tombstones.serialise``.
"""
