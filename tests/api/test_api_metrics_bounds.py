"""The request metrics' labels stay a bounded set whatever clients send: the method is the
client's word (any token passes the HTTP parser), and each new label set is a new series
in ``/metrics`` and an entry in the middleware's dictionary, kept for the process's life."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from prometheus_client import REGISTRY

from tests.api_shop import Closing, call, make_app

LABELS = {"method": "OTHER", "route": "/healthz", "status": "405"}


def test_made_up_methods_add_no_metric_series(
    engine: sa.Engine, tmp_path: Path, closing: Closing
) -> None:
    app = closing(make_app(engine, tmp_path))
    before = REGISTRY.get_sample_value("recocamp_http_requests_total", LABELS) or 0.0
    for number in range(20):
        assert call(app, f"X{number}", "/healthz").status == 405
    assert 'method="X' not in call(app, "GET", "/metrics").text
    assert REGISTRY.get_sample_value("recocamp_http_requests_total", LABELS) == before + 20
