"""The words a marketer reads for the codes the engine records.

Decisions record reasons such as ``not_in_audience:birthday_today`` or ``capped_7d`` and the
RFM segmentation names segments such as ``cant_lose_them``: stable codes for the store, the
JSON summary and the logs, but not for a report a marketer reads. This is the one mapping
from those codes to words; the report's charts and tables use it and keep the code at hand
(a tooltip). The keys are the code's own constants (``planner.Reason``, ``caps.Reason``,
``planner.AudienceRule``, ``segments.RFM_SEGMENTS``), so a new code without words fails the
tests instead of reaching a report raw; a code from an older version still reads as words.
"""

from __future__ import annotations

from collections.abc import Iterable

from recocamp.campaigns.caps import Reason as Cap
from recocamp.campaigns.planner import NOT_IN_AUDIENCE, AudienceRule, reason_code
from recocamp.campaigns.planner import Reason as Why
from recocamp.campaigns.segments import OTHERS

REASONS: dict[str, str] = {
    Why.ELIGIBLE: "Mailed",
    Why.HOLDOUT: "Held out (holdout group)",
    Why.ERASED: "Personal data erased",
    Why.NO_EMAIL: "No e-mail address",
    Why.UNSUBSCRIBED: "Unsubscribed",
    Why.EMAIL_OFF: "Switched e-mail offers off",
    Why.SUPPRESSED: "Address blocked after a bounce or complaint",
    Why.NO_CONSENT: "No consent for this campaign",
    Why.NO_OFFER: "No product to offer",
    Why.NOT_RENDERED: "Their e-mail could not be written (see the log)",
    Why.OBJECTED: "Objected to profiling while the run went on",
    Why.CONSENT_CHANGED: "Their consent changed while the run went on",
    Cap.PAUSED: "Paused e-mails themselves",
    Cap.PREFERENCE: "Their chosen e-mail frequency reached",
    Cap.CAPPED_24H: "Already e-mailed in the last 24 hours",
    Cap.CAPPED_7D: "Weekly e-mail limit reached",
    Cap.COOLDOWN: "This campaign mailed them recently",
    Cap.QUIET_HOURS: "Postponed until quiet hours end",
}
AUDIENCE: dict[str, str] = {
    AudienceRule.LAPSED_DAYS: "last order outside the campaign's time range",
    AudienceRule.ORDERS: "number of orders outside the range",
    AudienceRule.SPEND: "total spend outside the range",
    AudienceRule.CATEGORIES: "never bought the campaign's categories",
    AudienceRule.RFM_SEGMENTS: "not in the campaign's customer segments",
    AudienceRule.LOYALTY_TIERS: "not in the campaign's loyalty tiers",
    AudienceRule.BIRTHDAY_TODAY: "no birthday today",
    AudienceRule.REPLENISHMENT_DUE: "nothing due for a reorder",
    AudienceRule.CHURN_RISK: "forecast churn risk not in the campaign's tiers",
    AudienceRule.P_ACTIVE_BELOW: "forecast chance of ordering again too high",
    AudienceRule.OVERDUE_RATIO_AT_LEAST: "not overdue enough by their own rhythm",
    AudienceRule.LIFETIME_VALUE_TOP_SHARE: "forecast lifetime value not in the top share",
    AudienceRule.NO_FORECAST: "no forecast for them, and no fallback rule",
    AudienceRule.FALLBACK_LAPSED_DAYS: "last order outside the fallback time range",
    AudienceRule.NOT_CONTACTED_DAYS: "contacted too recently",
}
SEGMENTS: dict[str, str] = {
    "champions": "Champions",
    "loyal_customers": "Loyal customers",
    "potential_loyalists": "Potential loyalists",
    "new_customers": "New customers",
    "promising": "Promising",
    "cant_lose_them": "Can’t lose them",
    "at_risk": "At risk",
    "need_attention": "Need attention",
    "about_to_sleep": "About to sleep",
    "hibernating": "Hibernating",
    "lost": "Lost",
    OTHERS: "Other customers",
}
KPIS: dict[str, str] = {
    "orders": "Orders",
    "customers": "Active customers",
    "average_order_value": "Average order value",
    "purchase_frequency": "Orders per customer",
    "repeat_purchase_rate": "Repeat purchase rate",
    "churn_rate": "Churn rate",
    "clv": "Customer lifetime value",
    "guest_checkout_rate": "Guest checkout rate",
}


def _words(code: str) -> str:
    """An unknown code (from an older or newer version) as words rather than as a code."""
    text = code.replace("_", " ").strip()
    return text[:1].upper() + text[1:]


def reason(code: str) -> str:
    """Why a customer was (not) mailed, in words (a recorded reason's words after its code,
    such as the forecast's, are left out: they are per customer)."""
    code = reason_code(code)
    prefix, _, rule = code.partition(":")
    if prefix == NOT_IN_AUDIENCE and rule:
        return f"Not in the audience: {AUDIENCE.get(rule, _words(rule).lower())}"
    return REASONS.get(code) or _words(code)


def segment(code: str) -> str:
    return SEGMENTS.get(code) or _words(code)


def kpi(code: str) -> str:
    return KPIS.get(code) or _words(code)


def by_code(
    reasons: Iterable[tuple[str, str, str, int]],
) -> list[tuple[str, str, str, int]]:
    """``(campaign, outcome, reason, count)`` rows summed per reason code: a forecast-driven
    campaign records each customer's figures with the code, and a report groups by the code."""
    tally: dict[tuple[str, str, str], int] = {}
    for campaign, outcome, recorded, count in reasons:
        key = (campaign, outcome, reason_code(recorded))
        tally[key] = tally.get(key, 0) + count
    rows = [(*key, count) for key, count in tally.items()]
    return sorted(rows, key=lambda row: (row[0], -row[3], row[2], row[1]))
