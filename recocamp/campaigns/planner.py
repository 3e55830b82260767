"""The planner, pure: one campaign × customers × ``now`` → one explained decision each.

Order of the rules (the first that says no is the recorded reason):

1. e-mail allowed at all: erased, no address, unsubscribed, suppressed (bounces,
   complaints), consent basis not one the campaign's ``legal_basis`` allows → skip;
2. audience rules → skip ``not_in_audience:<rule>``; a campaign with forecast keys checks
   them (or their lapsed-days fallback, see ``predictive``) after the history rules;
3. contact rules (customer pause and frequency preference, 24 h / 7 d caps, cooldown) →
   skip with the cap's reason;
4. offers → ``no_offer`` when nothing may be offered (an NPS survey offers nothing and
   needs nothing);
5. holdout (stable hash per campaign and customer) → ``holdout``: recorded, never contacted;
6. quiet hours → ``defer`` with the instant to send at; A/B variant by stable hash and
   weights → ``send``.

(A send whose subject then fails for that customer's data becomes ``not_rendered`` in the
run, ``run.enqueue_decisions``: rendering is not the planner's.)

The holdout is drawn last, among the customers who would have got the e-mail, so treated
and held-out customers pass the same rules and the holdout measures the e-mail alone. A
holdout decision also counts as a contact in the held-out customer's history (see
``store.views``): without that, a daily campaign's holdout would be decided again every day
while its recipients wait out the cooldown, and the holdout group would fill with repeated,
diluted "would-have" touches (on the demo shop: replenish showed +4.4 pp of uplift from
mails nobody received).

Customers who objected to profiling never get personal offers (only the popularity list),
and the existing-customer basis limits offers to the categories the customer bought.

A reason is a stable code (what ``counts``, the metrics and the report group by), and for a
campaign with forecast keys every decision from the audience on adds `` — `` and the words of
the forecast (or fallback) that drove it: ``eligible — forecast rhythm 2011-12-10:
churn_risk=high (p_active 0.23, overdue 1.8×)``, ``not_in_audience:p_active_below —
forecast rhythm 2011-12-10: p_active 0.81 ≥ 0.5``, ``eligible — lapsed 74 days (no live
forecast)``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from itertools import islice
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from recocamp.campaigns import caps, offers, predictive, segments
from recocamp.campaigns.files import Campaign
from recocamp.campaigns.loyalty import Standing
from recocamp.campaigns.segments import History, Rfm
from recocamp.domain import (
    CONTACT_HISTORY_DAYS,
    ConsentBasis,
    Customer,
    CustomerForecast,
    Item,
    email_problem,
)
from recocamp.recommender.ranking import Mode
from recocamp.settings import Settings


class Outcome(StrEnum):
    SEND = "send"
    SKIP = "skip"
    HOLDOUT = "holdout"
    DEFER = "defer"


class Reason(StrEnum):
    """The reasons a decision records besides the contact rules' (``caps.Reason``) and the
    audience's (``audience_reason``): named once, so the report can word every one of them."""

    ELIGIBLE = "eligible"
    HOLDOUT = "holdout"
    ERASED = "erased"
    NO_EMAIL = "no_email"
    UNSUBSCRIBED = "unsubscribed"
    EMAIL_OFF = "email_off"  # the customer switched e-mail offers off (preferences page)
    SUPPRESSED = "suppressed"
    NO_CONSENT = "no_consent"
    NO_OFFER = "no_offer"
    # the e-mail's subject failed for this customer's data (the template alone passed
    # ``check``): skipped and logged, the run goes on (``run.enqueue_decisions``)
    NOT_RENDERED = "not_rendered"
    # the customer objected to profiling while the run went on, and the decision made from
    # the run's snapshot used their profile (personal offers, RFM segment, forecast): the
    # e-mail is not sent; the next run decides for them without it (``run.enqueue_decisions``)
    OBJECTED = "objected_to_profiling"
    # the customer's consent (its basis or time) changed while the run went on, and the
    # e-mail composed from the snapshot was written for the consent they had (a double
    # opt-in mail carries no UWG §7(3) notice): not sent; the next run decides for them
    CONSENT_CHANGED = "consent_changed"


class AudienceRule(StrEnum):
    """The audience rules in the order they are checked; a skip records the first one failed
    as ``not_in_audience:<rule>``."""

    LAPSED_DAYS = "lapsed_days"
    ORDERS = "orders"
    SPEND = "spend"
    CATEGORIES = "categories"
    RFM_SEGMENTS = "rfm_segments"
    LOYALTY_TIERS = "loyalty_tiers"
    BIRTHDAY_TODAY = "birthday_today"
    REPLENISHMENT_DUE = "replenishment_due"
    CHURN_RISK = "churn_risk"
    P_ACTIVE_BELOW = "p_active_below"
    OVERDUE_RATIO_AT_LEAST = "overdue_ratio_at_least"
    LIFETIME_VALUE_TOP_SHARE = "lifetime_value_top_share"
    # no forecast speaks for the customer (none live, an objector, not in it, ordered since)
    # and the campaign has no fallback_lapsed_days: no forecast key judged them
    NO_FORECAST = predictive.NO_FORECAST
    FALLBACK_LAPSED_DAYS = "fallback_lapsed_days"
    NOT_CONTACTED_DAYS = "not_contacted_days"


log = logging.getLogger(__name__)
NOT_IN_AUDIENCE = "not_in_audience"
DETAIL = " — "  # between a reason's code and its words
REASON_LENGTH = 100  # the decisions table's reason column


def audience_reason(rule: AudienceRule) -> str:
    return f"{NOT_IN_AUDIENCE}:{rule.value}"


def with_detail(code: str, detail: str | None) -> str:
    """The recorded reason: the code, then the words when there are any (cut to the column)."""
    if not detail:
        return code
    reason = f"{code}{DETAIL}{detail}"
    return reason if len(reason) <= REASON_LENGTH else reason[: REASON_LENGTH - 1] + "…"


def reason_code(reason: str) -> str:
    """The code of a recorded reason (``eligible — forecast …`` → ``eligible``)."""
    return reason.partition(DETAIL)[0]


# every reason ``decide`` can record
REASONS: tuple[str, ...] = (
    *(r.value for r in Reason),
    *(r.value for r in caps.Reason),
    *(audience_reason(r) for r in AudienceRule),
)


@dataclass(frozen=True, slots=True)
class CustomerView:
    """What the planner knows about one customer at planning time."""

    customer: Customer
    history: History
    contacts: tuple[caps.Contact, ...] = ()
    personal: Sequence[Sequence[object]] | None = None  # top-N from the live model
    suppressed: bool = False
    standing: Standing | None = None
    rfm: Rfm | None = None
    frequency_preference: str | None = None
    paused_until: datetime | None = None
    forecast: CustomerForecast | None = None  # from the live stored forecast; None for objectors
    channel_email: bool = True  # False: they switched e-mail offers off (Reason.EMAIL_OFF)


@dataclass(frozen=True, slots=True)
class Decision:
    campaign: str
    customer_id: str
    outcome: Outcome
    reason: str
    offers: tuple[offers.Offer, ...] = ()
    variant: str | None = None
    send_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """Everything shared by all customers of one run."""

    now: datetime
    items: Mapping[str, Item]
    popular: Sequence[Sequence[object]]
    policy: caps.CapPolicy
    shop_zone: ZoneInfo
    zones: dict[str, ZoneInfo] = field(default_factory=dict)
    forecast: predictive.LiveForecast | None = None  # None: no forecast is live at ``now``

    def zone(self, name: str | None) -> ZoneInfo:
        """A customer's zone: the shop's for a customer without one, or with one this machine
        cannot load — stored where the zone data had it (``localtime``, a system's
        ``right/…``, a zone newer than this machine's ``tzdata``; refused on input since,
        ``domain.zone_name_problem``). It raised ZoneInfoNotFoundError, and one customer
        stopped the run for everybody; the log names the zone once per run."""
        if not name:
            return self.shop_zone
        zone = self.zones.get(name)
        if zone is None:
            zone = self.zones[name] = _loaded(name, self.shop_zone)
        return zone


def _loaded(name: str, shop: ZoneInfo) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        log.warning(
            "time zone %r cannot be loaded on this machine: its customers are decided in the "
            "shop's zone (%s)",
            name[:100],
            shop.key,
        )
        return shop


def context_for(
    settings: Settings,
    now: datetime,
    items: Mapping[str, Item],
    popular: Sequence[Sequence[object]],
    forecast: predictive.LiveForecast | None = None,
) -> Context:
    """The one way to build a run's context (campaign runs, ``recocamp plan`` and ``preview``):
    the shop's cap policy and time zone from the settings, the snapshot's items, popularity
    and live forecast."""
    policy = caps.CapPolicy.from_settings(settings.caps)
    return Context(now, items, popular, policy, settings.shop.zone, forecast=forecast)


def history_days(campaign: Campaign, defaults: caps.CapPolicy) -> int:
    """How many days of contact history ``campaign``'s decisions read: the cooldown and
    ``not_contacted_days`` (a day more, for the hour a DST change adds), at least the five
    weeks the caps and preferences need. A history cut shorter lets a 60-day cooldown lapse
    after 35 days."""
    rules = (campaign.policy(defaults).cooldown_days, campaign.audience.not_contacted_days or 0)
    return max(CONTACT_HISTORY_DAYS, *(days + 1 for days in rules))


def plan(campaign: Campaign, views: Iterable[CustomerView], context: Context) -> list[Decision]:
    policy = campaign.policy(context.policy)
    return [decide(campaign, view, context, policy) for view in views]


@dataclass(frozen=True, slots=True)
class Chunk:
    """``size`` customers and their decisions, in the same order."""

    views: Sequence[CustomerView]
    decisions: Sequence[Decision]


def plan_chunks(
    campaign: Campaign, views: Iterable[CustomerView], context: Context, size: int
) -> Iterator[Chunk]:
    """The decisions of :func:`plan`, ``size`` customers at a time and only as they are asked
    for: a run records and enqueues one chunk while the next is still undecided, so delivery
    starts within a chunk's time instead of after the whole plan. Each customer is in one chunk
    only, and every rule reads that customer's own view and the run's ``context`` alone, so
    the decisions are those of :func:`plan` whatever the chunk size."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, not {size}")
    policy = campaign.policy(context.policy)
    remaining = iter(views)
    while batch := tuple(islice(remaining, size)):
        yield Chunk(batch, [decide(campaign, view, context, policy) for view in batch])


CONTACTING = (Outcome.SEND, Outcome.DEFER, Outcome.HOLDOUT)  # count in the contact history


def to_recheck(chunk: Chunk) -> list[str]:
    """The customers of ``chunk`` it would contact (an e-mail, or a holdout that counts as
    one): whose contact history a run reads again before writing the chunk."""
    return [d.customer_id for d in chunk.decisions if d.outcome in CONTACTING]


def recheck(
    campaign: Campaign,
    chunk: Chunk,
    contacts: Mapping[str, tuple[caps.Contact, ...]],
    context: Context,
) -> Chunk:
    """``chunk`` decided again where a contacted customer's history is no longer the one the
    run's snapshot held (``contacts``: the histories read now; a customer missing has none):
    another run mailed them meanwhile, and the caps, cooldown, preference and
    ``not_contacted_days`` must count that e-mail. Only a skip replaces a decision: offers,
    holdout, variant and quiet hours do not depend on the history, so a contact that stays a
    contact stays the same decision (and its composed e-mail stays valid)."""
    policy = campaign.policy(context.policy)
    decisions = list(chunk.decisions)
    for n, (view, decision) in enumerate(zip(chunk.views, decisions, strict=True)):
        fresh = contacts.get(view.customer.id, ())
        if decision.outcome not in CONTACTING or fresh == view.contacts:
            continue
        again = decide(campaign, replace(view, contacts=fresh), context, policy)
        if again.outcome is Outcome.SKIP:
            decisions[n] = again
    return Chunk(chunk.views, decisions)


def unprofiled(view: CustomerView) -> CustomerView:
    """``view`` as the snapshot holds an objector: no personal list, RFM score or forecast
    (``audience.snapshot``)."""
    customer = replace(view.customer, objected_to_profiling=True)
    return replace(view, customer=customer, personal=None, rfm=None, forecast=None)


def without_profiles(
    campaign: Campaign, chunk: Chunk, objecting: Collection[str], context: Context
) -> Chunk:
    """``chunk`` with the customers in ``objecting``, who objected to profiling after the
    run's snapshot, decided again as objectors. A decision the profile did not shape (a
    survey, popular offers, a skip for consent) comes out the same and stays, its e-mail
    too; one it did (personal offers, an RFM segment or a forecast let them in) becomes the
    objector's skip where that is one, else an ``objected_to_profiling`` skip: the e-mail
    composed from the profile is not sent, and there is no other composed in its place."""
    policy = campaign.policy(context.policy)
    views, decisions = list(chunk.views), list(chunk.decisions)
    for n, (view, decision) in enumerate(zip(views, decisions, strict=True)):
        if view.customer.id not in objecting or view.customer.objected_to_profiling:
            continue
        views[n] = unprofiled(view)
        again = decide(campaign, views[n], context, policy)
        if again != decision:
            decisions[n] = (
                again
                if again.outcome is Outcome.SKIP
                else Decision(campaign.name, view.customer.id, Outcome.SKIP, Reason.OBJECTED.value)
            )
    return Chunk(views, decisions)


def with_consent_now(
    campaign: Campaign,
    chunk: Chunk,
    consents: Mapping[str, tuple[ConsentBasis, datetime | None]],
    context: Context,
) -> Chunk:
    """``chunk`` with the customers whose consent (``consents``: basis and time as they are
    now) changed after the run's snapshot decided again with it. A skip it gives (no consent
    for this campaign now) is recorded; an e-mail decided from the old consent is not sent
    (``consent_changed``): it was composed for that consent, and the next run decides anew.
    Other decisions (a holdout, a skip) stay."""
    policy = campaign.policy(context.policy)
    views, decisions = list(chunk.views), list(chunk.decisions)
    for n, (view, decision) in enumerate(zip(views, decisions, strict=True)):
        customer = view.customer
        now = consents.get(customer.id)
        if now is None or now == (customer.consent_basis, customer.consent_at):
            continue
        changed = replace(customer, consent_basis=now[0], consent_at=now[1])
        views[n] = replace(view, customer=changed)
        again = decide(campaign, views[n], context, policy)
        if again.outcome is Outcome.SKIP:
            decisions[n] = again
        elif decision.outcome in (Outcome.SEND, Outcome.DEFER):  # an e-mail was composed
            decisions[n] = Decision(
                campaign.name, customer.id, Outcome.SKIP, Reason.CONSENT_CHANGED.value
            )
    return Chunk(views, decisions)


def decide(
    campaign: Campaign, view: CustomerView, context: Context, policy: caps.CapPolicy
) -> Decision:
    customer = view.customer

    blocked = _consent(campaign, view, context.now)
    if blocked is not None:
        return Decision(campaign.name, customer.id, Outcome.SKIP, blocked.value)
    zone = context.zone(customer.time_zone)
    trigger = _trigger(campaign, view, context)
    why = trigger.detail if trigger is not None else None

    def skip(reason: str) -> Decision:
        return Decision(campaign.name, customer.id, Outcome.SKIP, with_detail(str(reason), why))

    outside = _audience(campaign, view, context.now, zone, policy, trigger)
    if outside is not None:
        said = why if trigger is not None and trigger.failed == outside.value else None
        return Decision(
            campaign.name, customer.id, Outcome.SKIP, with_detail(audience_reason(outside), said)
        )
    verdict = caps.check(
        view.contacts,
        policy,
        campaign.name,
        context.now,
        zone,
        preference=view.frequency_preference,
        paused_until=view.paused_until,
        schedule=campaign.schedule.zone,
    )
    if not verdict.allowed and not verdict.deferred:
        return skip(str(verdict.reason))
    chosen = () if campaign.is_survey else tuple(offers_for(campaign, view, context))
    if not chosen and not campaign.is_survey:
        return skip(Reason.NO_OFFER)
    if caps.in_holdout(campaign.name, customer.id, campaign.holdout_percent):
        held = with_detail(Reason.HOLDOUT.value, why)
        return Decision(campaign.name, customer.id, Outcome.HOLDOUT, held)
    variant = _variant(campaign, customer.id)
    if verdict.deferred:
        return Decision(
            campaign.name,
            customer.id,
            Outcome.DEFER,
            with_detail(str(verdict.reason), why),
            chosen,
            variant,
            verdict.send_at,
        )
    sent = with_detail(Reason.ELIGIBLE.value, why)
    return Decision(campaign.name, customer.id, Outcome.SEND, sent, chosen, variant)


def _trigger(campaign: Campaign, view: CustomerView, context: Context) -> predictive.Trigger | None:
    """The forecast keys' verdict, None for a campaign without them."""
    if not campaign.audience.uses_forecast:
        return None
    return predictive.trigger(
        campaign.audience,
        view.customer.objected_to_profiling,
        view.forecast,
        context.forecast,
        view.history,
        context.now,
        context.zone(view.customer.time_zone),
    )


def _consent(campaign: Campaign, view: CustomerView, now: datetime) -> Reason | None:
    customer = view.customer
    if customer.erased_at is not None:
        return Reason.ERASED
    if not customer.email or email_problem(customer.email.strip()):  # stored unchecked
        return Reason.NO_EMAIL
    if customer.unsubscribed_at is not None:
        return Reason.UNSUBSCRIBED
    if not view.channel_email:  # their own choice: decided here, not by the deliverer's
        return Reason.EMAIL_OFF  # cancel (a send decision would count, and hold out, them)
    if view.suppressed:
        return Reason.SUPPRESSED
    if not _consented(campaign, customer, now):
        return Reason.NO_CONSENT
    return None


def _consented(campaign: Campaign, customer: Customer, now: datetime) -> bool:
    """A basis the campaign allows, given by ``now`` (planning ``--as-of`` a day before the
    double opt-in was confirmed must not use it). The existing-customer exception (UWG
    §7(3)) covers offers of goods similar to those bought, never a survey, which offers none."""
    basis = customer.consent_basis
    if basis is ConsentBasis.NONE or not campaign.allows(basis):
        return False
    if customer.consent_at is not None and customer.consent_at > now:
        return False
    return not (basis is ConsentBasis.EXISTING_CUSTOMER and campaign.is_survey)


def _audience(
    campaign: Campaign,
    view: CustomerView,
    now: datetime,
    zone: ZoneInfo,
    policy: caps.CapPolicy,
    trigger: predictive.Trigger | None = None,
) -> AudienceRule | None:
    """The first audience rule the customer fails, or None (``trigger``: the forecast keys').
    ``not_contacted_days`` counts to when the mail goes out, as the caps do (``caps.check``):
    from ``now``, a mail deferred to the end of quiet hours 14 days ago was still "within 14
    days" of a run in that customer's night."""
    failed = _history_rules(campaign, view, now, zone, policy)
    if failed is not None:
        return failed
    if trigger is not None and trigger.failed is not None:
        return AudienceRule(trigger.failed)
    contacted = (contact.at for contact in view.contacts)
    rules = campaign.audience
    if rules.not_contacted_days and segments.last_contacted_within(
        contacted,
        _arrival(now, zone, policy),
        rules.not_contacted_days,
        zone,
        campaign.schedule.zone,
    ):
        return AudienceRule.NOT_CONTACTED_DAYS
    return None


def _history_rules(
    campaign: Campaign, view: CustomerView, now: datetime, zone: ZoneInfo, policy: caps.CapPolicy
) -> AudienceRule | None:
    """The first rule on the customer's own data (orders, segments, tiers, dates) failed.
    The birthday is the customer's on the day the mail arrives: quiet hours defer a 09:00
    London run, 22:00 in Auckland, to 08:00 there the next day, after the birthday."""
    rules = campaign.audience
    history = view.history
    if rules.lapsed_days is not None and not segments.lapsed_between(
        history, now, *rules.lapsed_days, zone
    ):
        return AudienceRule.LAPSED_DAYS
    if not segments.orders_between(history, rules.min_orders or 0, rules.max_orders):
        return AudienceRule.ORDERS
    if not segments.spend_between(history, rules.min_spend or 0.0, rules.max_spend):
        return AudienceRule.SPEND
    if rules.categories and not segments.bought_category(history, rules.categories):
        return AudienceRule.CATEGORIES
    if rules.rfm_segments and (view.rfm is None or view.rfm.segment not in rules.rfm_segments):
        return AudienceRule.RFM_SEGMENTS
    if rules.loyalty_tiers and (
        view.standing is None or view.standing.tier not in rules.loyalty_tiers
    ):
        return AudienceRule.LOYALTY_TIERS
    if rules.birthday_today and not segments.birthday_today(
        view.customer.birthday, _arrival(now, zone, policy), zone
    ):
        return AudienceRule.BIRTHDAY_TODAY
    if rules.replenishment_due and not segments.due_for_replenishment(history, now):
        return AudienceRule.REPLENISHMENT_DUE
    return None


def _arrival(now: datetime, zone: ZoneInfo, policy: caps.CapPolicy) -> datetime:
    """When a mail decided at ``now`` goes out: at once, or when the quiet hours end."""
    return caps.quiet_until(now, zone, policy.quiet_start, policy.quiet_end) or now


def offers_for(campaign: Campaign, view: CustomerView, context: Context) -> list[offers.Offer]:
    rule = campaign.offer
    rules = offers.Rules(
        mode=Mode(rule.mode),
        count=rule.items,
        categories=frozenset(rule.categories),
        min_price=rule.min_price,
        max_price=rule.max_price,
        exclude_items=frozenset(rule.exclude_items),
        exclude_categories=frozenset(rule.exclude_categories),
        discount_percent=rule.discount_percent,
        same_categories_only=view.customer.consent_basis is ConsentBasis.EXISTING_CUSTOMER,
    )
    sources = []
    if campaign.audience.replenishment_due or rules.mode is Mode.REPLENISH:
        due = segments.due_for_replenishment(view.history, context.now)
        sources.append(offers.Candidates([[item, 1.0] for item in due], "due"))
    if view.personal and not view.customer.objected_to_profiling:
        sources.append(offers.Candidates(view.personal, "personal"))
    if rules.mode is Mode.REPLENISH:
        owned = sorted(view.history.items)
        sources.append(offers.Candidates([[item, 0.0] for item in owned], "history"))
    sources.append(offers.Candidates(context.popular, "popular"))
    history = view.history
    return offers.select(
        sources, context.items, rules, history.items, history.categories, history.returned
    )


def _variant(campaign: Campaign, customer_id: str) -> str | None:
    if not campaign.variants:
        return None
    digest = hashlib.sha256(f"variant:{campaign.name}:{customer_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(v.weight for v in campaign.variants)
    for variant in campaign.variants:
        point -= variant.weight
        if point < 0:
            return variant.name
    return campaign.variants[-1].name


def counts(decisions: Iterable[Decision]) -> dict[str, int]:
    """Decisions per reason code (sends counted as ``eligible``), largest first."""
    return ordered(tally(decisions, {}))


def tally(decisions: Iterable[Decision], into: dict[str, int]) -> dict[str, int]:
    """Add ``decisions`` to the counts per reason code ``into`` (a run counts chunk by chunk)."""
    for decision in decisions:
        code = reason_code(decision.reason)
        into[code] = into.get(code, 0) + 1
    return into


def ordered(counted: Mapping[str, int]) -> dict[str, int]:
    """Counts per reason code, largest first (ties by code)."""
    return dict(sorted(counted.items(), key=lambda pair: (-pair[1], pair[0])))
