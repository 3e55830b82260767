"""Log output with e-mail addresses masked, in every process recocamp starts: a record that
carries an address in its arguments, and an exception whose text quotes one (a provider's
error, a driver's message), comes out with ``<address>`` in the message and the traceback."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx

from recocamp import logs
from tests.conftest import ROOT

ADDRESS = "Anna.B+shop@Example.co.uk"


def test_the_redactor_masks_the_message_and_the_exception_text() -> None:
    stream = io.StringIO()
    handler = logs.redacted_handler()
    handler.setStream(stream)
    logger = logging.getLogger("recocamp.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        try:
            raise ValueError(f"550 mailbox {ADDRESS} unknown")
        except ValueError:
            logger.exception("mail to %s failed (customer %s)", ADDRESS, "c1")
        logger.warning("stack of %s", "c1", stack_info=True)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    written = stream.getvalue()
    assert "mail to <address> failed (customer c1)" in written
    assert "ValueError: 550 mailbox <address> unknown" in written
    assert "Traceback" in written and "stack of c1" in written
    assert "@" not in written


COMMAND = f"""
import logging
from recocamp.cli import app
try:
    app(["-v", "db", "current"], standalone_mode=False)
finally:
    log = logging.getLogger("recocamp.worker.jobs")
    try:
        raise RuntimeError("provider refused {ADDRESS}")
    except RuntimeError:
        log.exception("job deliver failed for %s", "{ADDRESS}")
"""


def test_every_command_logs_through_the_redactor(tmp_path: Path) -> None:
    """``recocamp -v COMMAND`` (the worker too: ``recocamp worker`` is one) set up logging
    with a plain ``basicConfig``: only ``serve`` masked addresses, and only in messages. Run
    in a fresh interpreter, as the console script runs, so no test runner's handler is in
    place before the command's."""
    env = {name: value for name, value in os.environ.items() if name != "RECOCAMP_SETTINGS"}
    env |= {"PYTHONPATH": str(ROOT), "RECOCAMP_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    done = subprocess.run(
        [sys.executable, "-c", COMMAND],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    said = done.stderr
    assert done.returncode == 0, said
    assert "ERROR recocamp.worker.jobs: job deliver failed for <address>" in said, said
    assert "RuntimeError: provider refused <address>" in said
    assert "@" not in said


def test_an_address_in_a_logged_url_is_masked_too() -> None:
    """A URL writes an address with its @ percent-encoded: httpx logs every request's URL
    (``recocamp -v``), and the provider's search for a message by its send key (claims of a
    crashed worker) puts the key, which holds the customer id, in the query. The redactor
    looked for @ only, and the line came out with the address in it."""
    stream = io.StringIO()
    handler = logs.redacted_handler()
    handler.setStream(stream)
    logger = logging.getLogger("httpx")
    level = logger.level
    logger.setLevel(logging.INFO)  # setLevel, not .level: it clears the logger's cached answers
    logger.addHandler(handler)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json={}))
    try:
        with httpx.Client(base_url="https://esp.example", transport=transport) as client:
            client.get("/messages/outbound", params={"key": f"winback/{ADDRESS}/2026-12-05"})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    written = stream.getvalue()
    assert "HTTP Request: GET https://esp.example/messages/outbound?key=" in written
    assert "Example.co.uk" not in written and "<address>" in written


def test_a_logged_value_cannot_end_its_line_and_forge_the_next() -> None:
    """A value someone else chose (a link's claim, a header, a file's field) holding a line
    break or a terminal's control sequence was written as it was: the log showed a second,
    forged line. The message is written on one line, those characters escaped; a traceback
    keeps its own lines."""
    stream = io.StringIO()
    handler = logs.redacted_handler()
    handler.setStream(stream)
    logger = logging.getLogger("recocamp.test_logs")
    logger.addHandler(handler)
    logger.propagate = False
    forged = "winback\n2026-12-06 07:00:00 INFO recocamp: all is well\x1b[2K\u2028"
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        logger.info("unsubscribe via %s link", forged)
        try:
            raise ValueError("bad")
        except ValueError:
            logger.exception("job of %s failed\r", ADDRESS)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(level)
    lines = stream.getvalue().splitlines()
    escaped = "winback\\n2026-12-06 07:00:00 INFO recocamp: all is well\\x1b[2K\\u2028"
    assert lines[0].endswith(f"unsubscribe via {escaped} link")
    assert lines[1].endswith("job of <address> failed\\r")
    assert lines[2] == "Traceback (most recent call last):" and lines[-1] == "ValueError: bad"
