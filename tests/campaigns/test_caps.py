"""Caps, quiet hours (time zones, DST) and holdouts with fixed instants."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from recocamp.campaigns.caps import (
    CapPolicy,
    Contact,
    Reason,
    check,
    in_holdout,
    quiet_until,
    stricter,
)
from recocamp.settings import CapsSettings

BERLIN, SYDNEY, LA = (
    ZoneInfo("Europe/Berlin"),
    ZoneInfo("Australia/Sydney"),
    ZoneInfo("America/Los_Angeles"),
)
POLICY = CapPolicy()  # 1 per 24 h, 3 per 7 days, 7-day cooldown, quiet 21:00–08:00
NOON = datetime(2024, 1, 10, 11, 0, tzinfo=UTC)  # 12:00 in Berlin, 22:00 in Sydney


def ago(hours: float, campaign: str = "other") -> Contact:
    return Contact(campaign, NOON - timedelta(hours=hours))


@pytest.mark.parametrize(
    ("history", "campaign", "expected"),
    [
        ([], "winback", None),
        ([ago(23)], "winback", Reason.CAPPED_24H),
        ([ago(25)], "winback", None),
        ([ago(25), ago(49), ago(73)], "winback", Reason.CAPPED_7D),
        ([ago(25), ago(49), ago(24 * 7 + 1)], "winback", None),  # the third is out of the 7 days
        ([ago(6 * 24, "winback")], "winback", Reason.COOLDOWN),
        ([ago(6 * 24, "winback")], "birthday", None),
        ([ago(8 * 24, "winback")], "winback", None),
        ([ago(23, "winback")], "winback", Reason.CAPPED_24H),  # the first rule that says no
    ],
)
def test_caps_table(history: list[Contact], campaign: str, expected: Reason | None) -> None:
    assert check(history, POLICY, campaign, NOON, BERLIN).reason == expected


def test_customer_preferences_come_first() -> None:
    assert (
        check([], POLICY, "c", NOON, BERLIN, paused_until=NOON + timedelta(days=1)).reason
        == Reason.PAUSED
    )
    assert check([], POLICY, "c", NOON, BERLIN, paused_until=NOON - timedelta(days=1)).allowed
    weekly = [ago(3 * 24)]
    assert check(weekly, POLICY, "c", NOON, BERLIN, preference="weekly").reason == Reason.PREFERENCE
    assert check(weekly, POLICY, "c", NOON, BERLIN, preference="daily").allowed
    assert (
        check([ago(20 * 24)], POLICY, "c", NOON, BERLIN, preference="monthly").reason
        == Reason.PREFERENCE
    )


@pytest.mark.parametrize(
    ("local", "zone", "wake_local"),
    [
        ("2024-01-10 12:00", BERLIN, None),
        ("2024-01-10 20:59", BERLIN, None),
        ("2024-01-10 21:00", BERLIN, "2024-01-11 08:00"),
        ("2024-01-10 23:30", BERLIN, "2024-01-11 08:00"),
        ("2024-01-11 07:59", BERLIN, "2024-01-11 08:00"),
        ("2024-01-11 08:00", BERLIN, None),
        ("2024-07-10 22:00", LA, "2024-07-11 08:00"),
        # DST: Berlin springs forward on 2024-03-31 (02:00 → 03:00) and falls back on 2024-10-27
        ("2024-03-30 22:00", BERLIN, "2024-03-31 08:00"),
        ("2024-10-26 22:00", BERLIN, "2024-10-27 08:00"),
        ("2024-04-06 23:00", SYDNEY, "2024-04-07 08:00"),  # Sydney leaves DST that night
    ],
)
def test_quiet_hours_in_the_customers_zone(
    local: str, zone: ZoneInfo, wake_local: str | None
) -> None:
    now = datetime.fromisoformat(local).replace(tzinfo=zone)
    verdict = check([], POLICY, "c", now.astimezone(UTC), zone)
    if wake_local is None:
        assert verdict.allowed
        return
    assert verdict.reason == Reason.QUIET_HOURS and verdict.deferred
    assert verdict.send_at is not None and verdict.send_at.tzinfo == UTC
    assert verdict.send_at.astimezone(zone).replace(tzinfo=None) == datetime.fromisoformat(
        wake_local
    )


def test_the_same_instant_is_quiet_in_sydney_and_not_in_berlin() -> None:
    assert check([], POLICY, "c", NOON, BERLIN).allowed
    assert check([], POLICY, "c", NOON, SYDNEY).reason == Reason.QUIET_HOURS


def test_deferral_into_a_dst_gap_lands_after_the_gap() -> None:
    # quiet until 02:30, which does not exist in Berlin on 2024-03-31
    night = datetime(2024, 3, 31, 1, 0, tzinfo=BERLIN)
    wake = quiet_until(night.astimezone(UTC), BERLIN, time(21, 0), time(2, 30))
    assert wake == datetime(2024, 3, 31, 3, 0, tzinfo=BERLIN).astimezone(UTC)


def test_fall_back_hour_deferral_is_exact() -> None:
    # 02:30 happens twice on 2024-10-27 in Berlin; both are quiet, both wake at 08:00 CET
    for fold in (0, 1):
        night = datetime(2024, 10, 27, 2, 30, tzinfo=BERLIN, fold=fold)
        wake = quiet_until(night.astimezone(UTC), BERLIN, time(21, 0), time(8, 0))
        assert wake == datetime(2024, 10, 27, 7, 0, tzinfo=UTC)


def test_holdout_is_stable_independent_and_close_to_its_share() -> None:
    ids = [str(n) for n in range(20000)]
    winback = [in_holdout("winback", i, 10) for i in ids]
    assert winback == [in_holdout("winback", i, 10) for i in ids]
    assert 0.09 < sum(winback) / len(ids) < 0.11
    other = [in_holdout("birthday", i, 10) for i in ids]
    overlap = sum(a and b for a, b in zip(winback, other, strict=True)) / len(ids)
    assert 0.005 < overlap < 0.015  # ≈ 10 % × 10 %: independent across campaigns
    assert not any(in_holdout("winback", i, 0) for i in ids)
    assert all(in_holdout("winback", i, 100) for i in ids)


def test_overrides_may_tighten_and_relaxing_is_detected() -> None:
    tighter, relaxing = stricter(
        POLICY, {"max_per_7d": 1, "cooldown_days": 14, "quiet_start": time(20, 0)}
    )
    assert (tighter.max_per_7d, tighter.cooldown_days, relaxing) == (1, 14, [])
    _, relaxing = stricter(POLICY, {"max_per_24h": 2, "cooldown_days": 1, "quiet_end": time(6, 0)})
    assert relaxing == ["max_per_24h", "cooldown_days", "quiet_hours"]


def test_the_cap_defaults_are_the_settings_defaults() -> None:
    """One place for them: ``[caps]`` of the settings; the policy reads them from there."""
    assert CapPolicy() == CapPolicy.from_settings(CapsSettings())
    assumed = CapPolicy(1, 3, 7, time(21, 0), time(8, 0))  # what the tests above assume
    assert assumed == POLICY
    caps = CapsSettings(
        max_per_24h=2,
        max_per_7d=5,
        campaign_cooldown_days=3,
        quiet_hours_start=time(22, 0),
        quiet_hours_end=time(7, 30),
    )
    assert CapPolicy.from_settings(caps) == CapPolicy(2, 5, 3, time(22, 0), time(7, 30))


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        # a weekly campaign at 10:00 Berlin: 2024-03-26 (CET) and 2024-04-02 (CEST) are seven
        # calendar days apart, but only 167 hours: the week across the spring-forward change
        ([Contact("weekly", datetime(2024, 3, 26, 9, 0, tzinfo=UTC))], None),
        # one hour later on the same day is still inside the seven days
        ([Contact("weekly", datetime(2024, 3, 26, 10, 0, tzinfo=UTC))], Reason.COOLDOWN),
    ],
)
def test_a_cooldown_counts_calendar_days_across_the_spring_forward(
    history: list[Contact], expected: Reason | None
) -> None:
    now = datetime(2024, 4, 2, 10, 0, tzinfo=BERLIN).astimezone(UTC)  # 08:00 UTC
    loose = CapPolicy(max_per_24h=5, max_per_7d=5, cooldown_days=7)
    assert check(history, loose, "weekly", now, BERLIN).reason == expected


def test_the_seven_day_cap_and_a_weekly_preference_count_calendar_days_across_dst() -> None:
    """Three mails at 10:00 Berlin, the first seven calendar days before ``now``: the seven
    days end at 10:00 local, whatever the clocks did in between."""
    now = datetime(2024, 4, 2, 10, 0, tzinfo=BERLIN).astimezone(UTC)
    days = (datetime(2024, 3, 26, 10, 0), datetime(2024, 3, 28, 10, 0), datetime(2024, 4, 1, 10))
    history = [Contact("other", day.replace(tzinfo=BERLIN).astimezone(UTC)) for day in days]
    assert check(history, POLICY, "c", now, BERLIN).allowed
    weekly = history[:1]
    assert check(weekly, POLICY, "c", now, BERLIN, preference="weekly").allowed


def test_a_quiet_end_in_the_repeated_hour_never_wakes_before_now() -> None:
    """Quiet hours until 02:30 on 2024-10-27 in Berlin, when 02:00–03:00 happens twice: at
    02:15 the second time, the e-mail waits for the 02:30 that is still to come."""
    night = datetime(2024, 10, 27, 2, 15, tzinfo=BERLIN, fold=1).astimezone(UTC)
    wake = quiet_until(night, BERLIN, time(21, 0), time(2, 30))
    assert wake == datetime(2024, 10, 27, 2, 30, tzinfo=BERLIN, fold=1).astimezone(UTC)
    assert wake is not None and wake > night


# --- boundaries: exactly at each cap, window edge and quiet-hour edge -----------------------


@pytest.mark.parametrize(
    ("history", "policy", "expected"),
    [
        # a contact exactly 24 h before ``now`` is outside the 24 h (windows are (now − 24 h, now])
        ([ago(24)], POLICY, None),
        ([ago(24 - 1 / 3600)], POLICY, Reason.CAPPED_24H),
        # exactly at the cap: two allowed, two sent in the last 24 h
        ([ago(2)], CapPolicy(max_per_24h=2), None),
        ([ago(2), ago(3)], CapPolicy(max_per_24h=2), Reason.CAPPED_24H),
        # seven days: the third contact exactly seven days (January: 168 h) before is outside
        ([ago(25), ago(49), ago(7 * 24)], POLICY, None),
        ([ago(25), ago(49), ago(7 * 24 - 1 / 3600)], POLICY, Reason.CAPPED_7D),
        # the cooldown ends exactly seven calendar days after the campaign's last e-mail
        ([ago(7 * 24, "winback")], POLICY, None),
        ([ago(7 * 24 - 1 / 3600, "winback")], POLICY, Reason.COOLDOWN),
        # a cooldown of 0 days never holds a campaign back
        ([ago(25, "winback")], CapPolicy(cooldown_days=0), None),
    ],
)
def test_caps_at_their_exact_edges(
    history: list[Contact], policy: CapPolicy, expected: Reason | None
) -> None:
    assert check(history, policy, "winback", NOON, BERLIN).reason == expected


def test_a_pause_ends_at_its_instant_and_a_weekly_preference_after_seven_days() -> None:
    assert check([], POLICY, "c", NOON, BERLIN, paused_until=NOON).allowed
    tick = timedelta(microseconds=1)
    assert check([], POLICY, "c", NOON, BERLIN, paused_until=NOON + tick).reason == Reason.PAUSED
    week = [ago(7 * 24)]
    assert check(week, POLICY, "c", NOON, BERLIN, preference="weekly").allowed
    nearly = [ago(7 * 24 - 1 / 3600)]
    assert check(nearly, POLICY, "c", NOON, BERLIN, preference="weekly").reason == (
        Reason.PREFERENCE
    )


@pytest.mark.parametrize(
    ("local", "wake_local"),
    [
        ("2024-01-10 23:59", None),
        ("2024-01-11 00:00", "2024-01-11 07:00"),  # wakes the same day, not the next
        ("2024-01-11 06:59", "2024-01-11 07:00"),
        ("2024-01-11 07:00", None),
        ("2024-01-11 12:00", None),
        # the night Berlin springs forward (02:00 → 03:00): still 07:00 local, 05:00 UTC
        ("2024-03-31 03:30", "2024-03-31 07:00"),
    ],
)
def test_quiet_hours_that_do_not_cross_midnight(local: str, wake_local: str | None) -> None:
    policy = CapPolicy(quiet_start=time(0, 0), quiet_end=time(7, 0))
    now = datetime.fromisoformat(local).replace(tzinfo=BERLIN).astimezone(UTC)
    verdict = check([], policy, "c", now, BERLIN)
    if wake_local is None:
        assert verdict.allowed
        return
    assert verdict.deferred and verdict.send_at is not None
    assert verdict.send_at == datetime.fromisoformat(wake_local).replace(tzinfo=BERLIN).astimezone(
        UTC
    )


@pytest.mark.parametrize(
    ("local", "wake_utc"),
    [
        # the spring-forward day in Berlin: 08:00 CEST is 06:00 UTC, 21:00 CEST is 19:00 UTC
        ("2024-03-31 07:59", "2024-03-31 06:00"),
        ("2024-03-31 08:00", None),
        ("2024-03-31 20:59", None),
        ("2024-03-31 21:00", "2024-04-01 06:00"),
        # the fall-back day: 08:00 CET is 07:00 UTC, 21:00 CET is 20:00 UTC
        ("2024-10-27 07:59", "2024-10-27 07:00"),
        ("2024-10-27 08:00", None),
        ("2024-10-27 21:00", "2024-10-28 07:00"),
    ],
)
def test_the_quiet_hour_edges_on_the_days_berlin_changes_its_clocks(
    local: str, wake_utc: str | None
) -> None:
    now = datetime.fromisoformat(local).replace(tzinfo=BERLIN).astimezone(UTC)
    verdict = check([], POLICY, "c", now, BERLIN)
    expected = None if wake_utc is None else datetime.fromisoformat(wake_utc).replace(tzinfo=UTC)
    assert (verdict.allowed, verdict.send_at) == (wake_utc is None, expected)


def test_equal_quiet_start_and_end_mean_no_quiet_hours() -> None:
    policy = CapPolicy(quiet_start=time(22, 0), quiet_end=time(22, 0))
    for hour in (3, 21, 22, 23):
        now = datetime(2024, 1, 10, hour, 0, tzinfo=BERLIN).astimezone(UTC)
        assert check([], policy, "c", now, BERLIN).allowed, hour


def test_holdout_draws_are_the_documented_hash_pinned_at_the_share_edges() -> None:
    """The draw is sha256("holdout:<campaign>:<customer>")'s first 8 bytes / 2⁶⁴ < percent /
    100. Pinned with customers whose draws lie just either side of 1 %, 10 % and 50 %: a
    changed draw would move customers between the groups of a running campaign, and a share
    off by a little (percent / 101) would pass any test of the share alone."""
    draws = {"812": 0.009805169806, "254": 0.012133530529, "1063": 0.099893189912}
    draws |= {"1942": 0.100460477489, "483": 0.499994035516, "1909": 0.500410943661}
    for customer, draw in draws.items():
        for percent in (1, 10, 50):
            assert in_holdout("winback", customer, percent) is (draw < percent / 100), customer
    assert in_holdout("winback", "1063", 9.99) and not in_holdout("winback", "1063", 9.98)
    assert in_holdout("winback", "812", 0.99) and not in_holdout("winback", "812", 0.98)
    assert not in_holdout("birthday", "42", 50) and in_holdout("winback", "42", 20)


def test_restating_the_defaults_relaxes_nothing_and_minutes_count() -> None:
    same = {"max_per_24h": 1, "max_per_7d": 3, "cooldown_days": 7}
    assert stricter(POLICY, {**same, "quiet_start": time(21, 0), "quiet_end": time(8, 0)}) == (
        POLICY,
        [],
    )
    # quiet until 07:30 is half an hour less quiet; until 08:30 half an hour more
    assert stricter(POLICY, {"quiet_end": time(7, 30)})[1] == ["quiet_hours"]
    assert stricter(POLICY, {"quiet_end": time(8, 30)})[1] == []
    assert stricter(POLICY, {"quiet_start": time(21, 30)})[1] == ["quiet_hours"]
    assert stricter(POLICY, {"max_per_7d": 4})[1] == ["max_per_7d"]


@pytest.mark.parametrize(
    ("defaults", "start", "end", "relaxes"),
    [
        (POLICY, time(6, 0), time(17, 0), True),  # as long as 21:00–08:00, but by day
        (POLICY, time(0, 0), time(9, 0), True),  # longer, but 21:00–24:00 open
        (POLICY, time(12, 0), time(12, 0), True),  # no quiet hours at all
        (POLICY, time(20, 59, 59), time(8, 0, 1), False),
        (CapPolicy(quiet_end=time(8, 30)), time(21, 0), time(8, 0, 45), True),  # seconds count
        (CapPolicy(quiet_start=time(1, 0), quiet_end=time(5, 0)), time(0, 0), time(6, 0), False),
        (CapPolicy(quiet_start=time(1, 0), quiet_end=time(5, 0)), time(23, 0), time(4, 0), True),
        (CapPolicy(quiet_start=time(1, 0), quiet_end=time(5, 0)), time(23, 0), time(5, 0), False),
        (CapPolicy(quiet_start=time(0, 0), quiet_end=time(6, 0)), time(22, 0), time(6, 0), False),
        (CapPolicy(quiet_start=time(9, 0), quiet_end=time(9, 0)), time(1, 0), time(2, 0), False),
    ],
)
def test_quiet_hours_relax_the_defaults_unless_they_cover_them(
    defaults: CapPolicy, start: time, end: time, relaxes: bool
) -> None:
    """Stricter quiet hours are quiet whenever the shop's are: the length alone does not
    say it (the first case was taken as stricter: 11 hours, as many as the shop's)."""
    relaxing = stricter(defaults, {"quiet_start": start, "quiet_end": end})[1]
    assert relaxing == (["quiet_hours"] if relaxes else [])


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Pacific/Auckland"])
def test_a_weekly_campaign_reaches_a_customer_in_quiet_hours_every_week(zone: str) -> None:
    """A weekly 09:00 London run (cross_sell) is 01:00 in Los Angeles and 22:00 in Auckland:
    quiet hours defer the mail to 08:00 there, and the history counts it then (the outbox's
    ``not_before``). Next week's run, at 01:00 or 22:00 again, found that mail within the
    seven days' cooldown and skipped the customer: measured, every other week. The windows end
    when the mail goes out (08:00 again), seven days after the last one."""
    customer = ZoneInfo(zone)
    history: list[Contact] = []
    outcomes: list[Reason | None] = []
    for week in range(4):
        now = datetime(2026, 1, 8, 9, 0, tzinfo=UTC) + timedelta(weeks=week)
        verdict = check(history, POLICY, "cross_sell", now, customer)
        outcomes.append(verdict.reason)
        if verdict.allowed or verdict.deferred:
            history.append(Contact("cross_sell", verdict.send_at or now))
    assert outcomes == [Reason.QUIET_HOURS] * 4
    assert {c.at.astimezone(customer).time() for c in history} == {time(8, 0)}
    # the caps still count it: another campaign at noon there is capped; one at 22:00 goes
    # out at 08:00 tomorrow, 24 h after it; this campaign waits out its seven days
    last = history[-1:]
    noon = last[0].at + timedelta(hours=4)
    assert check(last, POLICY, "other", noon, customer).reason == Reason.CAPPED_24H
    night = last[0].at + timedelta(hours=14)
    assert check(last, POLICY, "other", night, customer).send_at == last[0].at + timedelta(days=1)
    assert check(last, POLICY, "cross_sell", night, customer).reason == Reason.COOLDOWN


def test_a_monthly_preference_is_one_calendar_month_so_a_monthly_campaign_reaches_march() -> None:
    """vip_tier runs at 11:00 London on the 1st of every month. A customer who chose
    "monthly" (at most one e-mail a month) got 1 February's and was skipped on 1 March:
    28 days are less than the 30 the preference counted. A month is a calendar month in
    the customer's zone (to the same day, or the last of a shorter month)."""
    london = ZoneInfo("Europe/London")
    loose = CapPolicy(max_per_7d=5, cooldown_days=0)

    def at(day: str) -> datetime:
        return datetime.fromisoformat(f"{day} 11:00").replace(tzinfo=london).astimezone(UTC)

    def verdict(history: list[str], now: str) -> Reason | None:
        mailed = [Contact("vip_tier", at(day)) for day in history]
        return check(mailed, loose, "vip_tier", at(now), london, preference="monthly").reason

    assert verdict(["2026-01-01", "2026-02-01"], "2026-03-01") is None
    assert verdict(["2028-02-01"], "2028-03-01") is None  # 29 days in a leap year
    assert verdict(["2026-02-15"], "2026-03-01") == Reason.PREFERENCE
    assert verdict(["2026-03-01"], "2026-03-31") == Reason.PREFERENCE
    assert verdict(["2026-02-28"], "2026-03-31") is None  # from the last of February
    assert verdict(["2026-03-01"], "2026-04-01") is None  # the clocks went forward between


def test_a_pause_that_ends_before_the_mail_goes_out_holds_back_nothing() -> None:
    """A customer in Los Angeles paused e-mails until 07:00 Thursday; the weekly 09:00 London
    run is 01:00 there, and its mail waits for 08:00, after the pause: the customer was
    skipped as ``paused_by_customer`` for a mail they would have got once it was over. A
    pause that runs past 08:00 still holds it back."""
    la = ZoneInfo("America/Los_Angeles")
    now = datetime(2026, 1, 8, 9, 0, tzinfo=UTC)
    wake = datetime(2026, 1, 8, 8, 0, tzinfo=la)
    over = check([], POLICY, "c", now, la, paused_until=wake - timedelta(hours=1))
    assert over.deferred and over.send_at == wake
    on = check([], POLICY, "c", now, la, paused_until=wake + timedelta(microseconds=1))
    assert on.reason == Reason.PAUSED
