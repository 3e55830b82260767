"""The NPS answer page in a real headless Chromium (Debian's, through Playwright's Python
package; never a downloaded browser), as in ``tests/api/test_preferences_browser.py``: a
comment the page's own form allows is recorded with the score. Skipped where Chromium is
absent."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
import uvicorn

from recocamp import tokens
from recocamp.store.schema import feedback
from tests.api.test_preferences_browser import ARGS, CHROMIUM
from tests.api_shop import NOW, SIGNING_KEY, bearer, call, make_app

pytestmark = pytest.mark.skipif(
    not CHROMIUM,
    reason="Chromium is absent (Debian: apt-get install chromium; CI sets RECOCAMP_TEST_CHROMIUM)",
)
SURVEY = "nps/2012-01-04"


@pytest.fixture
def served(engine: sa.Engine, tmp_path: Path) -> Iterator[str]:
    """The real app behind uvicorn on a free loopback port, with one German customer."""
    app = make_app(engine, tmp_path)
    body = {"source": "signup", "email": "anna@example.test", "locale": "de"}
    assert call(app, "PUT", "/v1/customers/c1", json=body, headers=bearer("shop")).status == 200
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{listening.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        listening.close()


def test_a_comment_as_long_as_the_page_allows_is_recorded_in_chromium(
    served: str, engine: sa.Engine
) -> None:
    """The textarea's maxlength counts a line break as one character and the browser sends
    it as two (CRLF): a comment of the full length with line breaks was refused (422), the
    score with it."""
    from playwright.sync_api import expect, sync_playwright

    token = tokens.sign(
        SIGNING_KEY.encode(), "c1", "nps", "feedback", NOW - timedelta(days=1), SURVEY
    )
    comment = ("Schnelle Lieferung, gut verpackt.\n" * 100)[:2000]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{served}/v1/feedback?token={token}&score=9")
            page.locator("#comment").fill(comment + " and more")  # maxlength cuts it
            assert page.locator("#comment").evaluate("e => e.value") == comment
            page.get_by_role("button", name="Antwort senden").click()
            expect(page.locator("body")).to_contain_text("Vielen Dank für Ihre Antwort (9 von 10)")
        finally:
            browser.close()
    with engine.connect() as connection:
        row = connection.execute(sa.select(feedback.c.score, feedback.c.comment)).one()
    assert tuple(row) == (9, comment.strip())
