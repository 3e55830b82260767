"""The HTTP protocol ``recocamp serve`` runs: uvicorn's httptools protocol, with each request
stamped as its head is parsed.

The next-best-offer cache may serve a request only after a look at the store taken after the
request arrived (SQLite: ``PRAGMA data_version``, ``OfferService.catch_up``), so that every
commit its client could know of is seen. The app itself can only time a request when its task
starts, and on a busy process each task starts after the previous one's look: every request
paid a look of its own (~13 µs of the event loop's CPU, about a tenth of a cached answer). The
stamp taken here, while the event loop parses the bytes it has just read, is still later than
the request's arrival (and so than any commit its client knew of), and earlier than any task
step: the requests read in one pass of the loop start in the next one, where the first look
serves them all. ``HttpMetrics`` keeps the stamp as ``lean.ENTERED``; other servers (tests,
``h11``) leave it to ``HttpMetrics``, which takes the time then, as before.
"""

from __future__ import annotations

import time
from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from recocamp.api.lean import ENTERED

HTTP = "recocamp.api.protocol:StampedHttpTools"  # uvicorn's ``http`` option


class StampedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol; each request's scope gets ``lean.ENTERED`` on parsing."""

    def on_message_begin(self) -> None:
        super().on_message_begin()
        cast(dict[str, Any], self.scope)[ENTERED] = time.perf_counter()
