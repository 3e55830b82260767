"""The worker: the scheduler-driven process that runs every job of a shop.

Owns: the process — signals, heartbeat, template reloads, shutdown — (:mod:`.process`), the
job table and the cron schedules (:mod:`.scheduler`), the jobs themselves (:mod:`.jobs`) and
who schedules among several workers (:mod:`.leadership`).

May import: every package but ``api`` and ``cli``.
Exports: :func:`dispatch` (the scheduler's job function; its dotted name
``recocamp.worker:dispatch`` is stored with each job, so it stays here).
"""

from recocamp.worker.process import dispatch

__all__ = ["dispatch"]
