"""A provider address that answers with a redirect (``http://`` where the API wants
``https://``, a moved endpoint, a proxy's login page) or has no such endpoint (404/405):
real local servers, the real providers, a deliverer on real SQLite with a fixed clock.

Redirects are not followed (the token would travel to wherever they point). A redirect is
no answer of the API: nothing was sent. It stops the run naming ``[esp] base_url`` and gives
the claims back, as refused credentials do; SendGrid and Brevo marked every message of the
run failed instead (mail lost until ``retry-failed``), Postmark looked them up in vain.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa

from recocamp.clock import FixedClock
from recocamp.delivery.deliverer import Deliverer
from recocamp.delivery.esp import Provider
from recocamp.delivery.esp.brevo import Brevo
from recocamp.delivery.esp.postmark import Postmark
from recocamp.delivery.esp.sendgrid import SendGrid
from recocamp.errors import DeliveryError
from tests.conftest import NOW
from tests.delivery.test_deliver import ESP, Sleeper, fill, states
from tests.local_http import QuietHandler, serving


class Server:
    """A local server answering every request with ``status`` and ``Location: location``;
    ``seen`` counts the requests it got."""

    def __init__(self, status: int = 404, location: str = "") -> None:
        self.seen = 0
        owner = self

        class Handler(QuietHandler):
            def _any(self) -> None:
                owner.seen += 1
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.send_response(status)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _any

        self.server, self.url = serving(Handler)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    made: list[Server] = []

    def make(status: int = 404, location: str = "") -> Server:
        made.append(Server(status, location))
        return made[-1]

    yield make
    for server in made:
        server.close()


PROVIDERS: dict[str, Callable[[str], Provider]] = {
    "postmark": lambda url: Postmark(url, "token-7f3a", "shop@example.test", timeout_s=5),
    "sendgrid": lambda url: SendGrid(url, "token-7f3a", "shop@example.test", timeout_s=5),
    "brevo": lambda url: Brevo(url, "token-7f3a", "shop@example.test", timeout_s=5),
}


@pytest.mark.parametrize("status", [301, 302, 307, 308, 404, 405])
@pytest.mark.parametrize("make", PROVIDERS.values(), ids=PROVIDERS.keys())
def test_a_redirect_or_no_such_endpoint_stops_the_run_and_gives_the_claims_back(
    engine: sa.Engine,
    servers: Callable[..., Server],
    make: Callable[[str], Provider],
    status: int,
) -> None:
    """A redirect (not followed: the token would go with it) or a 404/405 (a base_url
    without the provider's API: a typo in the path, another provider's address) is no
    answer about any message: none fails, the run stops naming the setting. Each provider
    had failed every message of the run (Postmark looked them up in vain)."""
    elsewhere = servers()
    answering = servers(status, f"{elsewhere.url}/v3/mail/send" if status < 400 else "")
    fill(engine, 3)
    clock = FixedClock(NOW)
    provider = make(answering.url)
    deliverer = Deliverer(
        engine, provider, ESP, clock, sleep=Sleeper(clock), rng=random.Random(1), worker="w1"
    )
    with pytest.raises(DeliveryError, match=r"base_url") as raised:
        deliverer.drain(max_wait_s=600)
    provider.close()
    assert f"HTTP {status}" in str(raised.value) and "token-7f3a" not in str(raised.value)
    assert elsewhere.seen == 0  # not followed: the token stays home
    assert answering.seen == 1  # one request, then the run stopped
    assert states(engine) == Counter({"queued": 3})  # nothing failed, nothing held
