"""``worker --demo``'s console lines for the jobs it ran."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

from recocamp.cli.worker import job_line
from recocamp.settings import Settings
from recocamp.worker.process import Worker

AT = datetime(2011, 12, 5, 9, tzinfo=UTC)


def process_with(last: dict[str, tuple[dict[str, Any], str | None]]) -> Worker:
    return cast(Worker, SimpleNamespace(last=last, settings=Settings()))


def test_a_jobs_error_is_shown_with_its_addresses_masked_and_its_brackets_as_they_are() -> None:
    """A job's error is its exception's text: a provider's answer quoting the recipient, a
    file's value. The demo printed it to the console unmasked (logs and the runs table
    mask addresses), and read ``[/x]`` in it as rich markup (a MarkupError, or text lost)."""
    error = "DeliveryError: 422 from the ESP: 'anna.muster@example.test' [/bold] inactive"
    process = process_with({"send:winback": ({}, error)})
    line = job_line(process, AT, "send:winback", "error")
    assert line is not None
    assert "example.test" not in line and "<address>" in line
    assert line.endswith("[/bold] inactive") and line.startswith("Mon 05 Dec ")


def test_an_idle_poll_shows_nothing_and_a_busy_one_its_counts() -> None:
    process = process_with({"deliver": ({}, None), "import": ({"imported": 2}, None)})
    assert job_line(process, AT, "deliver", "ok") is None
    line = job_line(process, AT, "import", "ok")
    assert line is not None and "imported" in line and "2" in line
