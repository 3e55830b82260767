"""The shop API: next-best offers, forecasts, events, privacy requests, webhooks and the
customer pages.

Owns: the app factory (:mod:`.app`), API keys and rate limits (:mod:`.auth`), one router
module per area (:mod:`.offers`, :mod:`.forecasts`, :mod:`.events`, :mod:`.privacy`,
:mod:`.measure`, :mod:`.webhooks`, :mod:`.pages`), the lean routes (:mod:`.lean`), the offer
cache that keeps answers fresh after every purchase (:mod:`.offer_cache`), the customer pages'
HTML (:mod:`.page_views`) and form posts read with limits (:mod:`.forms`).

May import: every package but ``worker`` and ``cli``.
Exports: :func:`app_from_environment` (what ``recocamp api`` hands to uvicorn).
"""

from recocamp.api.app import app_from_environment

__all__ = ["app_from_environment"]
