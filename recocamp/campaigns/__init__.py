"""Campaigns: who gets which e-mail, when, and why not — every decision with its reason.

Owns: the campaign files marketers write (:mod:`.files`) and ``recocamp check``
(:mod:`.check`), RFM segments (:mod:`.segments`), loyalty tiers (:mod:`.loyalty`), offers
(:mod:`.offers`), frequency caps and quiet hours (:mod:`.caps`), the planner's views of the
customers built from the store's rows (:mod:`.audience`), audiences by the live forecast
with their lapsed-days fallback (:mod:`.predictive`), the planner that decides per customer
(:mod:`.planner`), the words for its reasons (:mod:`.labels`), composing one e-mail
(:mod:`.compose`), sandboxed rendering and its limits (:mod:`.render`,
:mod:`.render_limits`), and the campaign run that records decisions and enqueues
(:mod:`.run`). Everything but ``run``, ``check`` and ``files`` is pure: values and ``now`` in,
values out.

May import: the base modules, ``store``, ``data``, ``recommender`` and ``forecast``.
Exports (by module): ``files.Campaign``, ``files.load_all``, ``planner.plan``,
``caps.check``, ``render.Renderer``, ``run.plan_and_enqueue``, ``run.RunReport``,
``run.load_snapshot`` (the planner's snapshot), ``audience.history_of``.
"""
