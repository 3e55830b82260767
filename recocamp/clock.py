"""Time is passed in, never read inside pure code.

Pure stages take ``now``; shells get it from a :class:`Clock`. ``FixedClock`` makes
caps, schedules and KPIs testable with exact instants, across time zones and DST.
All datetimes inside recocamp are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current instant, timezone-aware UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that stands still until told to move; for tests and dry runs."""

    def __init__(self, at: datetime) -> None:
        self._at = ensure_utc(at)

    def now(self) -> datetime:
        return self._at

    def advance(self, delta: timedelta) -> datetime:
        self._at += delta
        return self._at


def ensure_utc(value: datetime) -> datetime:
    """Convert an aware datetime to UTC; refuse naive ones (their meaning is a guess)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"naive datetime {value.isoformat()} (a time zone is required)")
    return value.astimezone(UTC)
