"""The planner with a fixed clock: every consent and cap rule, holdouts, offers, variants."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from recocamp.campaigns import caps
from recocamp.campaigns.audience import snapshot
from recocamp.campaigns.files import Campaign
from recocamp.campaigns.loyalty import Standing
from recocamp.campaigns.planner import (
    Context,
    CustomerView,
    Outcome,
    context_for,
    counts,
    decide,
    plan,
    reason_code,
    with_detail,
)
from recocamp.campaigns.segments import History, Order
from recocamp.domain import (
    ConsentBasis,
    Customer,
    CustomerOrder,
    CustomerRecord,
    Item,
    PlanningRows,
)
from recocamp.settings import (
    CapsSettings,
    LoyaltySettings,
    LoyaltyTier,
    Settings,
    ShopSettings,
)

NOW = datetime(2024, 6, 4, 10, 0, tzinfo=UTC)  # a Tuesday, 12:00 in Berlin
ITEMS = {
    "mug": Item("mug", "Mug", "kitchen", 8.0),
    "cup": Item("cup", "Cup", "kitchen", 6.0),
    "jar": Item("jar", "Jar", "kitchen", 4.0),
    "lamp": Item("lamp", "Lamp", "lights", 30.0),
    "gone": Item("gone", "Sold out", "kitchen", 5.0, in_stock=False),
    "POST": Item("POST", "Postage", "service", 18.0, is_service=True),
}
POPULAR = [["lamp", 1.0], ["POST", 0.9], ["jar", 0.8], ["cup", 0.7]]
CONTEXT = Context(NOW, ITEMS, POPULAR, caps.CapPolicy(), ZoneInfo("Europe/Berlin"))


def campaign(**changes: object) -> Campaign:
    base = {
        "name": "winback",
        "legal_basis": ["double_opt_in", "existing_customer"],
        "schedule": {"cron": "0 10 * * TUE"},
        "holdout_percent": 0,
        "audience": {"lapsed_days": [30, 180]},
        "offer": {"mode": "mixed", "items": 2},
        "template": {"subject": {"en": "Hi"}, "html": "winback.html", "text": "winback.txt"},
    }
    return Campaign(**(base | changes))


def view(**changes: object) -> CustomerView:
    customer = Customer(
        "c1",
        "c1@example.test",
        "Anna",
        "en",
        "Europe/Berlin",
        consent_basis=ConsentBasis.DOUBLE_OPT_IN,
        consent_at=NOW - timedelta(days=400),
    )
    order = Order(NOW - timedelta(days=60), 20.0, frozenset({"mug"}), frozenset({"kitchen"}))
    base = CustomerView(
        customer, History((order,)), personal=[["mug", 2.0], ["cup", 0.5], ["lamp", 0.4]]
    )
    customer_changes = {k: v for k, v in changes.items() if k in Customer.__slots__}
    view_changes = {k: v for k, v in changes.items() if k not in Customer.__slots__}
    return replace(base, customer=replace(customer, **customer_changes), **view_changes)  # type: ignore[arg-type]


def run(c: Campaign, v: CustomerView, context: Context = CONTEXT) -> tuple[Outcome, str]:
    decision = decide(c, v, context, c.policy(context.policy))
    return decision.outcome, decision.reason


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, (Outcome.SEND, "eligible")),
        ({"erased_at": NOW}, (Outcome.SKIP, "erased")),
        ({"email": None}, (Outcome.SKIP, "no_email")),
        # stored before addresses were checked: Postmark would mail both (or the second)
        ({"email": "a@example.test, b@example.test"}, (Outcome.SKIP, "no_email")),
        ({"email": "Ann <a@example.test>"}, (Outcome.SKIP, "no_email")),
        ({"email": " a@example.test "}, (Outcome.SEND, "eligible")),  # PUT keeps the spaces
        ({"unsubscribed_at": NOW - timedelta(days=1)}, (Outcome.SKIP, "unsubscribed")),
        ({"channel_email": False}, (Outcome.SKIP, "email_off")),
        ({"suppressed": True}, (Outcome.SKIP, "suppressed")),
        ({"consent_basis": ConsentBasis.NONE}, (Outcome.SKIP, "no_consent")),
        ({"history": History(())}, (Outcome.SKIP, "not_in_audience:lapsed_days")),
        (
            {"contacts": (caps.Contact("other", NOW - timedelta(hours=3)),)},
            (Outcome.SKIP, "capped_24h"),
        ),
        (
            {"contacts": tuple(caps.Contact("other", NOW - timedelta(days=d)) for d in (2, 3, 4))},
            (Outcome.SKIP, "capped_7d"),
        ),
        (
            {"contacts": (caps.Contact("winback", NOW - timedelta(days=5)),)},
            (Outcome.SKIP, "cooldown"),
        ),
        ({"paused_until": NOW + timedelta(days=7)}, (Outcome.SKIP, "paused_by_customer")),
        (
            {
                "frequency_preference": "monthly",
                "contacts": (caps.Contact("other", NOW - timedelta(days=10)),),
            },
            (Outcome.SKIP, "frequency_preference"),
        ),
    ],
)
def test_consent_audience_and_caps(
    changes: dict[str, object], expected: tuple[Outcome, str]
) -> None:
    assert run(campaign(), view(**changes)) == expected


def test_a_campaign_needs_the_right_legal_basis() -> None:
    birthday_like = campaign(legal_basis=["double_opt_in"])
    assert run(birthday_like, view(consent_basis=ConsentBasis.EXISTING_CUSTOMER)) == (
        Outcome.SKIP,
        "no_consent",
    )


def test_existing_customers_get_only_their_categories_and_objectors_no_personal_list() -> None:
    existing = decide(
        campaign(), view(consent_basis=ConsentBasis.EXISTING_CUSTOMER), CONTEXT, caps.CapPolicy()
    )
    assert [o.item_id for o in existing.offers] == ["mug", "cup"]  # the lamp is another category
    objector = decide(campaign(), view(objected_to_profiling=True), CONTEXT, caps.CapPolicy())
    assert [o.item_id for o in objector.offers] == ["lamp", "jar"]  # popular list, no service item
    assert all(o.why == "popular with other customers" for o in objector.offers)


def test_offer_modes_and_no_offer() -> None:
    discover = decide(
        campaign(offer={"mode": "discover", "items": 3}), view(), CONTEXT, caps.CapPolicy()
    )
    assert [o.item_id for o in discover.offers] == ["cup", "lamp", "jar"]
    replenish = decide(
        campaign(offer={"mode": "replenish", "items": 3}), view(), CONTEXT, caps.CapPolicy()
    )
    assert [o.item_id for o in replenish.offers] == ["mug"] and replenish.offers[
        0
    ].why == "you bought this before"
    expensive = campaign(offer={"mode": "discover", "items": 2, "min_price": 100})
    assert run(expensive, view()) == (Outcome.SKIP, "no_offer")


def test_holdout_is_recorded_and_never_contacted() -> None:
    held = [
        decide(campaign(holdout_percent=50), view(id=str(n)), CONTEXT, caps.CapPolicy())
        for n in range(400)
    ]
    holdout = [d for d in held if d.outcome is Outcome.HOLDOUT]
    assert 150 < len(holdout) < 250 and all(d.reason == "holdout" and not d.offers for d in holdout)


def test_quiet_hours_defer_with_the_instant_and_keep_the_offers() -> None:
    late = replace(CONTEXT, now=datetime(2024, 6, 4, 20, 30, tzinfo=UTC))  # 22:30 in Berlin
    decision = decide(campaign(), view(), late, caps.CapPolicy())
    assert decision.outcome is Outcome.DEFER and decision.offers
    assert decision.send_at == datetime(2024, 6, 5, 6, 0, tzinfo=UTC)  # 08:00 CEST


def test_audience_rules() -> None:
    loyal = campaign(audience={"loyalty_tiers": ["gold"]})
    assert run(loyal, view())[1] == "not_in_audience:loyalty_tiers"
    assert run(loyal, view(standing=Standing(2500, "gold", "platinum", 7500)))[0] is Outcome.SEND
    birthday = campaign(audience={"birthday_today": True})
    assert run(birthday, view(birthday=date(1990, 6, 4)))[0] is Outcome.SEND
    assert run(birthday, view(birthday=date(1990, 6, 5)))[1] == "not_in_audience:birthday_today"
    quiet = campaign(audience={"not_contacted_days": 30})
    recent = (caps.Contact("other", NOW - timedelta(days=20)),)
    assert run(quiet, view(contacts=recent))[1] == "not_in_audience:not_contacted_days"


@pytest.mark.parametrize("zone", ["Pacific/Auckland", "Pacific/Honolulu", "Europe/Berlin"])
def test_a_birthday_mail_arrives_on_the_birthday_in_the_customers_zone(zone: str) -> None:
    """A daily 09:00 London run is 22:00 in Auckland (its summer) and 23:00 of the day before
    in Honolulu: quiet hours defer the mail to 08:00, so the run of the birthday itself would
    deliver it the day after. The birthday is checked for the day the mail arrives: of the
    week's runs, one contacts the customer, and its mail arrives on the birthday."""
    london = ZoneInfo("Europe/London")
    shop = Context(NOW, ITEMS, POPULAR, caps.CapPolicy(), london)
    birthday = campaign(
        audience={"birthday_today": True},
        schedule={"cron": "0 9 * * *", "time_zone": "Europe/London"},
    )
    customer = view(birthday=date(1990, 1, 15), time_zone=zone)
    arrivals = []
    for day in range(12, 19):
        at = datetime(2025, 1, day, 9, 0, tzinfo=UTC)
        decision = decide(birthday, customer, replace(shop, now=at), birthday.policy(shop.policy))
        if decision.outcome in (Outcome.SEND, Outcome.DEFER):
            arrivals.append((decision.send_at or at).astimezone(ZoneInfo(zone)).date())
    assert arrivals == [date(2025, 1, 15)]


def test_a_customer_zone_this_machine_cannot_load_is_decided_in_the_shops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A zone stored where the zone data had it (``localtime``, ``right/…`` of a system's
    zone directory, a zone newer than this machine's ``tzdata``) does not load on every
    machine: ZoneInfoNotFoundError stopped the whole run (``recocamp plan``, every
    campaign) at that one customer. Such a customer is decided as a customer without a zone
    (the shop's), and the log names the zone once."""
    late = replace(CONTEXT, now=datetime(2024, 6, 4, 21, 30, tzinfo=ZoneInfo("Europe/Berlin")))
    people = [view(id="c1", time_zone="Nowhere/Atlantis"), view(id="c2", time_zone=None)]
    people.append(view(id="c3", time_zone="Nowhere/Atlantis"))
    with caplog.at_level(logging.WARNING, logger="recocamp.campaigns.planner"):
        decisions = plan(campaign(), people, late)
    assert [(d.customer_id, d.outcome) for d in decisions] == [
        ("c1", Outcome.DEFER),  # 21:30 in Berlin, the shop's zone: quiet hours
        ("c2", Outcome.DEFER),
        ("c3", Outcome.DEFER),
    ]
    assert decisions[0].send_at == decisions[1].send_at
    assert caplog.text.count("Nowhere/Atlantis") == 1


def test_not_contacted_days_count_calendar_days_across_the_spring_forward() -> None:
    """A weekly run at 10:00 Berlin with ``not_contacted_days = 7``: last week's e-mail went
    out at 10:00 CET, seven calendar days but only 167 hours before this week's 10:00 CEST.
    Counted in hours it was "within seven days" and the customer missed the week, as the
    caps count calendar days (``caps.days_before``) for this very reason."""
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime(2024, 4, 2, 10, 0, tzinfo=berlin).astimezone(UTC)
    last_week = datetime(2024, 3, 26, 10, 0, tzinfo=berlin).astimezone(UTC)
    weekly = campaign(name="weekly", audience={"not_contacted_days": 7})
    context = replace(CONTEXT, now=now)
    history = view(contacts=(caps.Contact("weekly", last_week),))
    loose = caps.CapPolicy(cooldown_days=7, max_per_7d=5)
    assert decide(weekly, history, context, loose).outcome is Outcome.SEND
    later = view(contacts=(caps.Contact("weekly", last_week + timedelta(minutes=1)),))
    decision = decide(weekly, later, context, loose)
    assert decision.reason == "not_in_audience:not_contacted_days"


@pytest.mark.parametrize(
    ("zone", "ordered", "now", "outcome", "days"),
    [
        # 60 days and 30 minutes on the wall clock, 1,439.5 hours: spring forward in between
        ("Europe/Berlin", (2026, 1, 30, 9, 30), (2026, 3, 31, 10, 0), Outcome.SEND, 60),
        ("Europe/Berlin", (2026, 1, 30, 10, 30), (2026, 3, 31, 10, 0), Outcome.SKIP, 59),
        # 179 days 23.5 hours on the wall clock, 4,320.5 hours: fall back in between
        ("Europe/Berlin", (2026, 5, 7, 10, 30), (2026, 11, 3, 10, 0), Outcome.SEND, 179),
        ("Europe/Berlin", (2026, 5, 7, 9, 30), (2026, 11, 3, 10, 0), Outcome.SKIP, 180),
        # the same instants for a customer in New York (its own change on 8 March; 04:00
        # there: deferred to the end of quiet hours) and in Tokyo (no change: hours are days)
        ("America/New_York", (2026, 1, 30, 3, 30), (2026, 3, 31, 4, 0), Outcome.DEFER, 60),
        ("Asia/Tokyo", (2026, 1, 30, 16, 30), (2026, 3, 31, 17, 0), Outcome.SEND, 60),
        ("Asia/Tokyo", (2026, 1, 30, 17, 30), (2026, 3, 31, 17, 0), Outcome.SKIP, 59),
    ],
)
@pytest.mark.parametrize("key", ["lapsed_days", "fallback_lapsed_days"])
def test_lapsed_days_count_calendar_days_in_the_customers_zone(
    zone: str,
    ordered: tuple[int, int, int, int, int],
    now: tuple[int, int, int, int, int],
    outcome: Outcome,
    days: int,
    key: str,
) -> None:
    """``lapsed_days = [60, 180]`` at a weekly 10:00 Berlin run: a customer whose last order
    was at 09:30 sixty calendar days before was 1,439.5 hours, under 60 × 24, before a run
    after the spring-forward change, skipped as not lapsed, and came a week late; one at 10:30
    179 days before the autumn change was 4,320.5 hours before it and never came. Days are
    counted on the customer's wall clock, as ``not_contacted_days`` and the caps count them."""
    local = ZoneInfo(zone)
    at = datetime(*ordered[:5], tzinfo=local).astimezone(UTC)
    run_at = datetime(*now[:5], tzinfo=local).astimezone(UTC)
    audience: dict[str, object] = {key: [60, 180]}
    if key == "fallback_lapsed_days":
        audience["churn_risk"] = ["high"]  # no live forecast: the fallback decides
    lapsed = campaign(audience=audience)
    order = Order(at, 20.0, frozenset({"mug"}), frozenset({"kitchen"}))
    customer = view(time_zone=zone, history=History((order,)))
    decision = decide(lapsed, customer, replace(CONTEXT, now=run_at), lapsed.policy(CONTEXT.policy))
    assert decision.outcome is outcome, decision.reason
    if key == "fallback_lapsed_days":  # the words count the days the rule counted
        assert f"lapsed {days} days (no live forecast)" in decision.reason


@pytest.mark.parametrize(
    ("schedule", "customer", "last", "now"),
    [
        # a Berlin shop's weekly 10:00 run is 18:00 in Tokyo, then 17:00 after the EU change
        ("Europe/Berlin", "Asia/Tokyo", (2026, 3, 24), (2026, 3, 31)),
        # a New York shop's weekly 10:00 run is 16:00 in Berlin, then 15:00 after the US change
        ("America/New_York", "Europe/Berlin", (2026, 3, 3), (2026, 3, 10)),
    ],
)
def test_a_weekly_run_is_a_week_after_the_last_for_customers_in_other_zones(
    schedule: str, customer: str, last: tuple[int, int, int], now: tuple[int, int, int]
) -> None:
    """Seven days' cooldown and a weekly campaign at 10:00 in the schedule's zone: when that
    zone changes its clocks and the customer's does not (or on another day), this week's run
    is an hour earlier on the customer's clock, last week's mail was "within seven days" of it
    there, and every such customer was skipped for ``cooldown`` that week. The windows of
    days end where the run repeats on the schedule's clock as well: a mail one minute later
    than last week's run still counts."""
    zone = ZoneInfo(schedule)
    ran = datetime(*last, 10, 0, tzinfo=zone).astimezone(UTC)
    run_at = datetime(*now, 10, 0, tzinfo=zone).astimezone(UTC)
    weekly = campaign(
        name="weekly",
        schedule={"cron": "0 10 * * TUE", "time_zone": schedule},
        audience={"not_contacted_days": 7},
    )
    context = replace(CONTEXT, now=run_at, policy=caps.CapPolicy(cooldown_days=7))
    for gone, outcome in ((ran, Outcome.SEND), (ran + timedelta(minutes=1), Outcome.SKIP)):
        mailed = view(time_zone=customer, contacts=(caps.Contact("weekly", gone),))
        decision = decide(weekly, mailed, context, weekly.policy(context.policy))
        assert decision.outcome is outcome, decision.reason


def test_variants_are_stable_and_follow_their_weights() -> None:
    ab = campaign(variants=[{"name": "A", "weight": 75}, {"name": "B", "weight": 25}])
    first = plan(ab, [view(id=str(n)) for n in range(2000)], CONTEXT)
    again = plan(ab, [view(id=str(n)) for n in range(2000)], CONTEXT)
    assert [d.variant for d in first] == [d.variant for d in again]
    share = sum(d.variant == "A" for d in first) / len(first)
    assert 0.71 < share < 0.79
    assert counts(first) == {"eligible": 2000}


def test_one_builder_makes_the_context_from_the_settings() -> None:
    """Campaign runs and ``recocamp plan``/``preview`` share it: the shop's caps and zone."""
    settings = Settings(
        shop=ShopSettings(time_zone="America/New_York"),
        caps=CapsSettings(max_per_7d=2, campaign_cooldown_days=10),
    )
    context = context_for(settings, NOW, ITEMS, POPULAR)
    assert context.policy == caps.CapPolicy.from_settings(settings.caps)
    assert (context.policy.max_per_7d, context.policy.cooldown_days) == (2, 10)
    assert context.shop_zone == ZoneInfo("America/New_York") == context.zone(None)
    assert (context.now, context.items, context.popular) == (NOW, ITEMS, POPULAR)


def test_a_mail_waiting_out_quiet_hours_is_a_contact_for_not_contacted_days() -> None:
    """Another campaign's e-mail is queued for 08:00 tomorrow (deferred past quiet hours):
    the customer is being contacted, and a campaign for customers not contacted in 14 days
    must not mail them too, even where the shop's caps allow two e-mails a day."""
    quiet = campaign(audience={"not_contacted_days": 14})
    waiting = (caps.Contact("other", NOW + timedelta(hours=20)),)
    two_a_day = replace(CONTEXT, policy=caps.CapPolicy(max_per_24h=2))
    assert run(quiet, view(contacts=waiting), two_a_day) == (
        Outcome.SKIP,
        "not_in_audience:not_contacted_days",
    )


def test_a_survey_never_goes_out_under_the_existing_customer_exception() -> None:
    """UWG §7(3) allows mail to existing customers only for the shop's own goods similar to
    those bought; a survey offers none, so it needs consent even where its file lists the
    exception (as a BGH ruling holds a feedback request to be advertising)."""
    survey = campaign(type="nps", legal_basis=["double_opt_in", "existing_customer"])
    assert run(survey, view(consent_basis=ConsentBasis.EXISTING_CUSTOMER)) == (
        Outcome.SKIP,
        "no_consent",
    )
    assert run(survey, view())[0] is Outcome.SEND


def test_a_consent_given_after_now_does_not_count_yet() -> None:
    """Planning as of a day before the customer confirmed the double opt-in (``plan
    --as-of``, a simulated run): at that instant there was no consent to mail them."""
    later = view(consent_at=NOW + timedelta(days=3))
    assert run(campaign(), later) == (Outcome.SKIP, "no_consent")
    assert run(campaign(), view(consent_at=NOW - timedelta(seconds=1)))[0] is Outcome.SEND


def test_a_survey_is_sent_without_offers() -> None:
    """An NPS mail asks for a score and offers nothing, whatever its ``[offer]`` says."""
    survey = decide(campaign(type="nps"), view(), CONTEXT, caps.CapPolicy())
    assert (survey.outcome, survey.reason, survey.offers) == (Outcome.SEND, "eligible", ())


def test_a_consent_given_at_now_counts() -> None:
    assert run(campaign(), view(consent_at=NOW)) == (Outcome.SEND, "eligible")


def test_a_reason_with_words_fits_the_column_of_100_characters() -> None:
    """``code — words``; a reason longer than the column is cut to 99 characters and "…"."""
    assert with_detail("eligible", None) == with_detail("eligible", "") == "eligible"
    assert with_detail("eligible", "lapsed 100 days") == "eligible — lapsed 100 days"
    fits = "x" * (100 - len("eligible — "))
    assert with_detail("eligible", fits) == f"eligible — {fits}"
    cut = with_detail("eligible", fits + "yz")
    assert cut == f"eligible — {fits[:-1]}…" and len(cut) == 100
    assert reason_code(cut) == "eligible"


def test_not_contacted_days_count_to_the_mails_arrival_after_quiet_hours() -> None:
    """A weekly 10:00 London run with ``not_contacted_days = 7`` (Tuesday, winback) is 02:00
    in Los Angeles: last week's e-mail went out at 08:00 there, the end of quiet hours. From
    the run's instant it was still "within seven days" and the customer missed every other
    week; counted to this mail's own 08:00, as the caps count, it is seven days ago."""
    la = ZoneInfo("America/Los_Angeles")
    now = datetime(2026, 1, 13, 10, 0, tzinfo=UTC)
    last_week = datetime(2026, 1, 6, 8, 0, tzinfo=la).astimezone(UTC)
    weekly = campaign(name="weekly", audience={"not_contacted_days": 7})
    context = replace(CONTEXT, now=now)
    loose = caps.CapPolicy(cooldown_days=7, max_per_7d=5)
    history = view(time_zone=la.key, contacts=(caps.Contact("weekly", last_week),))
    decision = decide(weekly, history, context, loose)
    assert decision.outcome is Outcome.DEFER
    assert decision.send_at == datetime(2026, 1, 13, 8, 0, tzinfo=la)
    later = view(time_zone=la.key, contacts=(caps.Contact("x", last_week + timedelta(hours=1)),))
    assert decide(weekly, later, context, loose).reason == "not_in_audience:not_contacted_days"


def test_a_loyalty_tier_campaign_leaves_out_customers_below_the_lowest_tier() -> None:
    """With tiers ``member`` from 100 points and ``gold`` from 2,000, a customer with an order
    of 20.00 and a double opt-in (10 + 20 + 50 = 80 points) has no tier: a campaign for
    members leaves them out; with another order of 60.00 (160 points) it mails them. Below
    the lowest threshold the standing named the first tier, and members' mail went out to
    every customer who had not earned it."""
    table = LoyaltySettings(
        tiers=(
            LoyaltyTier(name="member", min_points=100),
            LoyaltyTier(name="gold", min_points=2000),
        )
    )
    rows = PlanningRows(
        customers=[CustomerRecord(view().customer)],
        orders=[CustomerOrder("c1", "o1", NOW - timedelta(days=60), 20.0, frozenset({"mug"}))],
        personal={},
        contacts={},
        suppressed=frozenset(),
        items=ITEMS,
        popular=POPULAR,
    )
    members = campaign(audience={"loyalty_tiers": ["member"]})
    newcomer = snapshot(rows, table, NOW).views[0]
    assert newcomer.standing is not None and newcomer.standing.tier is None
    assert run(members, newcomer)[1] == "not_in_audience:loyalty_tiers"
    more = CustomerOrder("c1", "o2", NOW - timedelta(days=40), 60.0, frozenset({"cup"}))
    member = snapshot(replace(rows, orders=[*rows.orders, more]), table, NOW).views[0]
    assert member.standing is not None and member.standing.tier == "member"
    assert run(members, member)[0] is Outcome.SEND
