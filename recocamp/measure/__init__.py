"""Measurement: retention KPIs, campaign attribution and uplift against the holdout, the report.

Owns: the KPI definitions of DESIGN.md (:mod:`.kpis`, pure), attribution, uplift, cohorts and
NPS (:mod:`.attribution`, pure), confidence intervals (:mod:`.statistics`, pure), the
measurement jobs — daily snapshots, the report's inputs — (:mod:`.jobs`) and the HTML/JSON
report with its charts (:mod:`.report`, page templates in ``html/``).

May import: the base modules, ``store``, ``data``, ``forecast`` (the report's forecast
sections), ``campaigns`` and ``delivery``.
Exports (by module): ``kpis.compute``, ``attribution.uplifts``, ``jobs.snapshot_kpis``,
``report.render_html``, ``report.summary``.
"""
