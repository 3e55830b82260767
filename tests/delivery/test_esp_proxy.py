"""An HTTPS proxy (``HTTPS_PROXY``, which httpx honours) that refuses the tunnel: a real
local proxy answering CONNECT with 407, the real SendGrid provider, a deliverer on real
SQLite with a fixed clock.

No byte reached the provider, so nothing may have been sent: the messages wait as in any
outage. The refusal was taken for a lost answer ("may have been accepted"), and as SendGrid
cannot be asked, each one cost the messages an attempt: a proxy down for four deliver
rounds failed all queued mail.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from recocamp.clock import FixedClock
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp.sendgrid import SendGrid
from recocamp.errors import TransientDeliveryError
from tests.conftest import NOW
from tests.delivery.test_deliver import ESP, Sleeper, email, fill, states
from tests.local_http import QuietHandler, serving


class RefusingProxy:
    """Answers every CONNECT with 407; ``tunnels`` counts them."""

    def __init__(self) -> None:
        self.tunnels = 0
        owner = self

        class Handler(QuietHandler):
            def do_CONNECT(self) -> None:
                owner.tunnels += 1
                self.send_response(407)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server, self.url = serving(Handler)


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[RefusingProxy]:
    refusing = RefusingProxy()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", refusing.url)
    yield refusing
    refusing.server.shutdown()
    refusing.server.server_close()


def test_a_refused_proxy_tunnel_is_no_lost_answer(proxy: RefusingProxy) -> None:
    provider = SendGrid("https://api.sendgrid.test", "token", "shop@example.test", timeout_s=5)
    with pytest.raises(TransientDeliveryError) as raised:
        provider.send_batch([email(0)])
    provider.close()
    assert not raised.value.ambiguous
    assert "cannot connect (ProxyError)" in str(raised.value)
    assert proxy.tunnels == 1


def test_a_proxy_that_refuses_the_tunnel_makes_mail_wait_not_fail(
    engine: sa.Engine, proxy: RefusingProxy
) -> None:
    fill(engine, 2)
    clock = FixedClock(NOW)
    provider = SendGrid("https://api.sendgrid.test", "token", "shop@example.test", timeout_s=5)
    deliverer = Deliverer(
        engine, provider, ESP, clock, sleep=Sleeper(clock), rng=random.Random(1), worker="w1"
    )
    for _ in range(2 * ESP.max_attempts):  # the deliver job, round after round
        deliverer.drain(max_wait_s=0)
        clock.advance(timedelta(hours=1))
    provider.close()
    assert proxy.tunnels >= 2 * ESP.max_attempts
    assert states(engine) == Counter({"queued": 2})
