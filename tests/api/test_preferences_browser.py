"""The preferences page in a real headless Chromium (Debian's, through Playwright's Python
package; never a downloaded browser): open it from a signed link, change the frequency,
unsubscribe, and check the store. Skipped where Chromium is absent.

``RECOCAMP_TEST_SCREENSHOT=/path.png`` keeps a screenshot of the page after saving.
"""

from __future__ import annotations

import os
import shutil
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
from recocamp.store.schema import customers
from tests.api_shop import NOW, SIGNING_KEY, Template, build_template, clone, make_app

# read at import: an autouse fixture hides RECOCAMP_* variables from the tests themselves
CHROMIUM = os.environ.get("RECOCAMP_TEST_CHROMIUM") or shutil.which("chromium")
SCREENSHOT = os.environ.get("RECOCAMP_TEST_SCREENSHOT")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
pytestmark = pytest.mark.skipif(
    not CHROMIUM,
    reason="Chromium is absent (Debian: apt-get install chromium; CI sets RECOCAMP_TEST_CHROMIUM)",
)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Template]:
    yield from build_template("sqlite", tmp_path_factory.mktemp("sqlite"))


@pytest.fixture
def served(template: Template, tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    """The real app behind uvicorn on a free loopback port."""
    for engine, artifacts in clone(template, tmp_path):
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        server = uvicorn.Server(
            uvicorn.Config(make_app(engine, artifacts), log_level="warning", lifespan="off")
        )
        thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)
        try:
            yield f"http://127.0.0.1:{listening.getsockname()[1]}", engine
        finally:
            server.should_exit = True
            thread.join(10)
            listening.close()


def test_change_frequency_and_unsubscribe_in_chromium(
    served: tuple[str, sa.Engine], tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, engine = served
    with engine.connect() as connection:
        person = connection.execute(
            sa.select(customers)
            .where(
                customers.c.locale == "en",
                customers.c.consent_basis == "double_opt_in",
                customers.c.email.is_not(None),
            )
            .order_by(customers.c.id)
        ).first()
    assert person is not None and person.frequency_preference is None
    token = tokens.sign(
        SIGNING_KEY.encode(), person.id, "winback", "preferences", NOW - timedelta(days=1)
    )
    shot = Path(SCREENSHOT or tmp_path / "preferences.png")

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 1200})
            page.goto(f"{base}/p/{token}")
            expect(page.get_by_role("heading", level=1)).to_have_text("Your e-mail preferences")
            expect(page.locator("#status")).to_have_text("You receive our offers by e-mail.")
            page.get_by_label("At most once a week").check()
            page.locator("#preferences button[type=submit]").click()
            page.wait_for_url("**/p/*?done=saved&lang=en")
            expect(page.get_by_role("status")).to_have_text("Your preferences are saved.")
            expect(page.get_by_label("At most once a week")).to_be_checked()
            page.screenshot(path=str(shot), full_page=True)
            assert _row(engine, person.id).frequency_preference == "weekly"

            page.get_by_role("button", name="Unsubscribe from everything").click()
            page.wait_for_url("**/p/*?done=unsubscribed&lang=en")
            expect(page.locator("#status")).to_have_text(
                "You are unsubscribed: we send you no marketing e-mails."
            )
        finally:
            browser.close()
    row = _row(engine, person.id)
    assert row.unsubscribed_at == NOW and row.frequency_preference == "weekly"
    assert shot.stat().st_size > 10_000


def _row(engine: sa.Engine, customer: str) -> sa.Row[object]:
    with engine.connect() as connection:
        return connection.execute(sa.select(customers).where(customers.c.id == customer)).one()
