"""Delivery: queued e-mails sent exactly once through an ESP's HTTP API.

Owns: the deliverer — claims, retries, rate limit, reconciliation after a crash —
(:mod:`.deliverer`), the delivering processes of a big run (:mod:`.processes`), sending a
campaign run while it is enqueued (:mod:`.campaign_send`), the providers and the stand-in ESP
(:mod:`.esp`), and provider webhooks turned into contact events (:mod:`.webhooks`). The
outbox table's statements are in ``store.outbox``.

May import: the base modules, ``store`` and ``campaigns`` (to render deferred bodies).
Exports (by module): ``deliverer.Deliverer``, ``processes.drain_in_processes``,
``campaign_send.send_campaign``, ``esp.make_provider``, ``esp.Provider``, ``webhooks.parse``.
"""
