"""Privacy-aware contact rules, pure: contact history × policy × ``now`` → a verdict.

Applied to every marketing decision, in this order (the first rule that says no decides the
recorded reason): paused by the customer → customer frequency preference → global caps
(rolling 24 h and 7 days, across all campaigns) → per-campaign cooldown → quiet hours.
Quiet hours never drop a decision: it is deferred to the next allowed instant.

The 24 h cap counts hours; windows of days (the 7 days, the cooldown, a daily or weekly
preference; a monthly one is a calendar month) count calendar days in the customer's zone,
ending at the wall time the e-mail goes out (``now``, or the end of quiet hours) that many
days earlier, so a campaign that runs at 10:00 every week is not "within 7 days" of last
week's mail in the week the clocks spring forward, nor of last week's mail deferred to
08:00 in the customer's zone; nor, where the campaign's schedule runs in another zone that
changes its clocks on another day (a Berlin shop's customer in Tokyo), of last week's run
an hour later on the customer's clock: a window ends at the later of the two wall times.

Quiet hours are wall-clock times in the customer's zone (the shop's when unknown), so
"21:00–08:00" means the same to a customer in Berlin and in Sydney, and across DST changes.
If the end of quiet hours falls into a DST gap (a wall time that does not exist that day),
the deferral lands at the first instant after the gap.
"""

from __future__ import annotations

import calendar
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from recocamp.domain import PREFERENCE_PERIODS as PREFERENCE_PERIODS  # shared values, re-exported
from recocamp.domain import Contact as Contact
from recocamp.settings import CapsSettings


class Reason(StrEnum):
    PAUSED = "paused_by_customer"
    PREFERENCE = "frequency_preference"
    CAPPED_24H = "capped_24h"
    CAPPED_7D = "capped_7d"
    COOLDOWN = "cooldown"
    QUIET_HOURS = "quiet_hours_deferred"


SHOP_DEFAULTS = CapsSettings()  # the defaults live in settings, where marketers set caps


@dataclass(frozen=True, slots=True)
class CapPolicy:
    """The caps one decision obeys: ``[caps]`` of the settings, tightened (or, where the shop
    allows it, relaxed) by a campaign's own ``[caps]``."""

    max_per_24h: int = SHOP_DEFAULTS.max_per_24h
    max_per_7d: int = SHOP_DEFAULTS.max_per_7d
    cooldown_days: int = SHOP_DEFAULTS.campaign_cooldown_days
    quiet_start: time = SHOP_DEFAULTS.quiet_hours_start
    quiet_end: time = SHOP_DEFAULTS.quiet_hours_end

    @classmethod
    def from_settings(cls, caps: CapsSettings) -> CapPolicy:
        """The shop's policy, from ``[caps]`` of the settings."""
        return cls(
            caps.max_per_24h,
            caps.max_per_7d,
            caps.campaign_cooldown_days,
            caps.quiet_hours_start,
            caps.quiet_hours_end,
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """Allowed now (``reason`` None), skipped, or deferred until ``send_at``."""

    reason: Reason | None = None
    send_at: datetime | None = None

    @property
    def allowed(self) -> bool:
        return self.reason is None

    @property
    def deferred(self) -> bool:
        return self.reason is Reason.QUIET_HOURS


ALLOWED = Verdict()


def check(
    history: Sequence[Contact],
    policy: CapPolicy,
    campaign: str,
    now: datetime,
    zone: ZoneInfo,
    *,
    preference: str | None = None,
    paused_until: datetime | None = None,
    schedule: ZoneInfo | None = None,
) -> Verdict:
    """The verdict for one marketing e-mail of ``campaign`` to one customer at ``now``.

    The windows end when this e-mail goes out (``now``, or the end of quiet hours), as the
    history counts each e-mail when it was to go out (``store.views``): measured from ``now``,
    a weekly 09:00 London run found last week's mail, deferred to 08:00 in Los Angeles, still
    within the 7 days' cooldown (01:00 there) and mailed such customers every other week. A
    pause is judged then too (one over by 08:00 holds nothing back; the deliverer cancels
    the mail if the customer pauses again before it goes). ``schedule``: the zone the
    campaign runs in, where its runs repeat (see :func:`days_before`)."""
    wake = quiet_until(now, zone, policy.quiet_start, policy.quiet_end)
    at = now if wake is None else wake
    if paused_until is not None and at < paused_until:  # over by then: the mail may go
        return Verdict(Reason.PAUSED)
    since = preference_since(at, preference, zone, schedule)
    if since is not None and _count(history, since) >= 1:
        return Verdict(Reason.PREFERENCE)
    if _count(history, at - timedelta(hours=24)) >= policy.max_per_24h:
        return Verdict(Reason.CAPPED_24H)
    if _count(history, days_before(at, 7, zone, schedule)) >= policy.max_per_7d:
        return Verdict(Reason.CAPPED_7D)
    since = days_before(at, policy.cooldown_days, zone, schedule)
    if any(c.campaign == campaign and c.at > since for c in history):
        return Verdict(Reason.COOLDOWN)
    return ALLOWED if wake is None else Verdict(Reason.QUIET_HOURS, wake)


def days_before(
    now: datetime, days: int, zone: ZoneInfo, schedule: ZoneInfo | None = None
) -> datetime:
    """The instant ``days`` calendar days before ``now`` at the same wall time in ``zone``:
    a window of days ends where a campaign scheduled at a fixed local time runs again. In
    UTC hours, the week across a spring-forward change is 167 h, and a weekly mail sent at
    10:00 would still be "within seven days" of the last one an hour later every spring.
    With the ``schedule``'s zone, the later of the two instants: where the schedule changes
    its clocks and the customer's zone does not (a Berlin shop's customer in Tokyo), the
    run is an hour earlier on the customer's clock, and last week's mail was within seven
    days of it there (the window is at most the difference in offsets shorter)."""
    since = _days_before(now, days, zone)
    if schedule is None or schedule == zone:
        return since
    return max(since, _days_before(now, days, schedule))


def _days_before(now: datetime, days: int, zone: ZoneInfo) -> datetime:
    local = now.astimezone(zone)
    wall = local.replace(tzinfo=None) - timedelta(days=days)
    return wall.replace(tzinfo=zone, fold=local.fold).astimezone(UTC)


def preference_since(
    at: datetime, preference: str | None, zone: ZoneInfo, schedule: ZoneInfo | None = None
) -> datetime | None:
    """Where the customer's own frequency preference looks back from ``at`` (None: no
    preference). "monthly" is one calendar month, to the same day (or the last day of a
    shorter month) at the same wall time: in 30 days, a campaign on the 1st of every month
    found February's e-mail 28 days before 1 March and skipped the customer every March.
    ``schedule``: as for :func:`days_before`, the later of the two zones' instants."""
    if preference == "monthly":
        since = _month_before(at, zone)
        return since if schedule is None else max(since, _month_before(at, schedule))
    period = PREFERENCE_PERIODS.get(preference or "")
    return None if period is None else days_before(at, period.days, zone, schedule)


def _month_before(at: datetime, zone: ZoneInfo) -> datetime:
    local = at.astimezone(zone)
    year, month = (local.year, local.month - 1) if local.month > 1 else (local.year - 1, 12)
    day = min(local.day, calendar.monthrange(year, month)[1])
    wall = local.replace(year=year, month=month, day=day, tzinfo=None)
    return wall.replace(tzinfo=zone, fold=local.fold).astimezone(UTC)


def _count(history: Sequence[Contact], since: datetime) -> int:
    return sum(1 for contact in history if contact.at > since)


def in_quiet_hours(local: time, start: time, end: time) -> bool:
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end  # across midnight


def quiet_until(now: datetime, zone: ZoneInfo, start: time, end: time) -> datetime | None:
    """``None`` outside quiet hours, else the UTC instant they end in the customer's zone."""
    local = now.astimezone(zone)
    if not in_quiet_hours(local.time().replace(tzinfo=None), start, end):
        return None
    day = local.date() if local.time() < end else local.date() + timedelta(days=1)
    wake = datetime.combine(day, end, tzinfo=zone)
    # round-trip through UTC: a wall time inside a DST gap maps to the instant after it
    utc = wake.astimezone(UTC)
    if utc.astimezone(zone).replace(tzinfo=None) != wake.replace(tzinfo=None):
        utc = (wake + timedelta(hours=1)).replace(minute=0, second=0).astimezone(UTC)
    if utc <= now:  # the end falls into the repeated hour, whose first pass is over
        utc = wake.replace(fold=1).astimezone(UTC)
    return utc


def in_holdout(campaign: str, customer_id: str, percent: float) -> bool:
    """Deterministic, stable holdout: the same customer stays in (or out of) a campaign's
    holdout on every run and machine, independently across campaigns."""
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"holdout:{campaign}:{customer_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < percent / 100


def stricter(
    defaults: CapPolicy, overrides: Mapping[str, int | time]
) -> tuple[CapPolicy, list[str]]:
    """Apply a campaign's cap overrides; returns the policy and the keys that would relax
    the defaults (callers refuse those unless the shop allows relaxing). Quiet hours relax
    the defaults unless they cover every quiet instant of the defaults: quiet hours as long
    as the shop's but shifted (06:00–17:00 for 21:00–08:00) would let e-mails out at night."""
    policy = replace(defaults, **overrides)  # type: ignore[arg-type]
    relaxing = [
        key
        for key in ("max_per_24h", "max_per_7d")
        if getattr(policy, key) > getattr(defaults, key)
    ]
    if policy.cooldown_days < defaults.cooldown_days:
        relaxing.append("cooldown_days")
    if not _covers(_quiet_spans(policy), _quiet_spans(defaults)):
        relaxing.append("quiet_hours")
    return policy, relaxing


_DAY_SECONDS = 24 * 3600


def _quiet_spans(policy: CapPolicy) -> list[tuple[int, int]]:
    """The quiet hours as spans [from, to) of seconds of the day, cut at midnight."""
    start, end = (
        t.hour * 3600 + t.minute * 60 + t.second for t in (policy.quiet_start, policy.quiet_end)
    )
    if start == end:
        return []  # no quiet hours (see in_quiet_hours)
    if start < end:
        return [(start, end)]
    return [span for span in ((start, _DAY_SECONDS), (0, end)) if span[0] < span[1]]


def _covers(spans: list[tuple[int, int]], others: list[tuple[int, int]]) -> bool:
    """Whether every span of ``others`` lies within one of ``spans`` (the spans of one
    policy neither overlap nor touch, but at midnight, where ``others`` are cut as well)."""
    return all(any(low <= a and b <= high for low, high in spans) for a, b in others)
