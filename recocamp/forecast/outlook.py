"""Per-customer forecasts at ``as_of``, and the choice of forecaster by a time split (pure).

For each customer with a purchase day before ``as_of`` (horizon ``[as_of, as_of + H)``):

- ``expected_purchase_days``: the chosen forecaster's expectation — what totals, expected
  revenue and lifetime value add up;
- ``likely_purchase_days`` (in :func:`documents`, derived from the stored expectation): the
  point forecast, the median of the predictive count (a Poisson with that mean) — what a
  person's actual count is scored against (``mae_point`` in ``forecast-evaluate``; the
  absolute error is smallest at the median, which is 0 for most customers);
- ``p_active``: the probability of at least one purchase day in the horizon, 1 − e^(−expected)
  (a Poisson count with that mean; its calibration is in ``forecast-evaluate``);
- ``churn_risk``: ``high`` below p_active 1/3, ``medium`` below 2/3, else ``low``;
- ``expected_revenue``: expected purchase days × expected spend per purchase day (Gamma-Gamma);
- ``lifetime_value``: expected revenue over ``lifetime_days`` (default 365), the horizon's
  forecast stretched by BG/NBD's shape over the longer span;
- ``next_purchase_by``: the last purchase day plus the customer's own mean gap between purchase
  days (the day that moment falls in: a gap of 3.5 days after day L is due on day L + 3);
  ``overdue_ratio``: days since the last purchase day over that gap — above 1 exactly when
  ``next_purchase_by`` is before ``as_of``. A customer with a
  single purchase day has no gap of their own and gets the shop's typical one
  (:attr:`History.typical_gap`: the median of the repeat customers' own gaps, history before
  ``as_of`` only), so the predictive winback (``overdue_ratio_at_least``) reaches one-time
  buyers too, about half of those at risk. Both None only where the shop has no repeat
  customer yet.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from recocamp.domain import RISK_CUTS
from recocamp.domain import CustomerForecast as CustomerForecast  # re-exported
from recocamp.errors import ModelError
from recocamp.forecast.btyd import GammaGamma
from recocamp.forecast.evaluate import Quality, log_loss, poisson_median, quality
from recocamp.forecast.history import History, PurchaseDays, day_of
from recocamp.forecast.models import FORECASTERS

MIN_CUSTOMERS_TO_CHOOSE = 50  # fewer customers on the split: too few to judge, BG/NBD is used
DEFAULT = "blend"  # the live forecaster unless the split shows a single one clearly better
TOO_LITTLE = "too little history for a time split before as_of: BG/NBD is used"
CLEARLY = 1.645  # the one-sided 5 % point of the standard normal: "clearly" lower


def risk_tier(p_active: float) -> str:
    """One customer's tier, by :func:`risk_tiers` (one definition for the rows and the tests)."""
    return str(risk_tiers(np.array([p_active]))[0])


def risk_tiers(p_active: np.ndarray) -> np.ndarray:
    """``high`` below p_active 1/3, ``medium`` below 2/3, else ``low``, for every customer."""
    return np.where(
        p_active < RISK_CUTS[0], "high", np.where(p_active < RISK_CUTS[1], "medium", "low")
    )


def forecast(
    purchases: PurchaseDays, as_of: int, horizon_days: int, model: str, lifetime_days: int = 365
) -> list[CustomerForecast]:
    """Forecasts for every customer with a purchase day before ``as_of``, in customer-id order."""
    history = History.at(purchases, as_of)
    if len(history.rows) == 0:
        return []
    expected = FORECASTERS[model](purchases, history, horizon_days)
    spend = _spend_per_day(history)
    stretch = _lifetime_stretch(history, horizon_days, lifetime_days)
    gap = np.where(np.isfinite(history.gap), history.gap, history.typical_gap)
    has_gap = np.isfinite(gap)
    due = np.where(has_gap, history.last + np.floor(np.nan_to_num(gap)), 0).astype(int)
    due_dates = (np.datetime64("1970-01-01", "D") + due.astype("timedelta64[D]")).astype(object)
    p_active = 1.0 - np.exp(-expected)
    risk = risk_tiers(p_active)
    columns = zip(  # whole columns to Python at once: a loop per customer would take seconds
        purchases.customers[history.rows].astype(str).tolist(),
        expected.tolist(),
        p_active.tolist(),
        risk.tolist(),
        (expected * spend).tolist(),
        (expected * stretch * spend).tolist(),
        _or_none(has_gap, due_dates),
        _or_none(has_gap, history.recency / gap),
        strict=True,
    )
    # A million tuples of fresh objects set off the cyclic garbage collector dozens of times
    # over an ever larger heap (3.6 s of 1.3 s here); tuples of numbers and strings hold no
    # cycles, so it waits until they are built.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return list(map(CustomerForecast._make, columns))
    finally:
        if collecting:
            gc.enable()


def documents(rows: Sequence[CustomerForecast]) -> list[dict[str, object]]:
    """The rows as ``recocamp forecast --format json`` and the shop API print them: the stored
    fields with ``likely_purchase_days``, the point forecast, after the expectation. Derived
    here, at once for all rows, so the store keeps only the expectation."""
    expected = np.array([row.expected_purchase_days for row in rows], dtype=np.float64)
    likely = poisson_median(expected).tolist()
    return [_with_likely(row, k) for row, k in zip(rows, likely, strict=True)]


def _with_likely(row: CustomerForecast, likely: int) -> dict[str, object]:
    fields = row.as_dict() | {"p_active": shown_p_active(row.p_active, row.churn_risk)}
    if row.overdue_ratio is not None:
        fields["overdue_ratio"] = shown_overdue_ratio(row.overdue_ratio)
    items = list(fields.items())
    after = list(fields).index("expected_purchase_days") + 1
    return dict([*items[:after], ("likely_purchase_days", likely), *items[after:]])


P_ACTIVE_PLACES = 4  # decimals of p_active as JSON prints it


def shown_p_active(p_active: float, tier: str) -> float:
    """``p_active`` to :data:`P_ACTIVE_PLACES` places, on the side of the cut-offs its tier
    is on: rounded to the nearest, a customer at p_active 1/3 (medium) was printed 0.3333,
    and one at 0.66665 (medium) 0.6667 — values that by the documented cut-offs are high
    and low. Where the nearest crosses a cut-off, the value is cut the other way instead
    (0.3334, 0.6666): still within one unit of the last place."""
    scale = 10.0**P_ACTIVE_PLACES
    shown = round(p_active, P_ACTIVE_PLACES)
    if risk_tier(shown) == tier:
        return shown
    toward = math.ceil if shown < p_active else math.floor
    return toward(p_active * scale) / scale


OVERDUE_PLACES = 3  # decimals of overdue_ratio as JSON prints it


def shown_overdue_ratio(ratio: float) -> float:
    """``overdue_ratio`` to :data:`OVERDUE_PLACES` places, above 1 exactly when the ratio is
    (README: above 1 exactly when ``next_purchase_by`` is before ``as_of``): a gap of
    1999.5 days at a recency of 2000 (1.00025) was printed 1.0, not overdue; it is 1.001."""
    shown = round(ratio, OVERDUE_PLACES)
    if ratio > 1.0 >= shown:
        return math.ceil(ratio * 10.0**OVERDUE_PLACES) / 10.0**OVERDUE_PLACES
    return shown


def _or_none(where: np.ndarray, values: np.ndarray) -> list[object]:
    """``values`` as Python objects, None where ``where`` is false."""
    chosen = values.astype(object)
    chosen[~where] = None
    return list(chosen.tolist())


def _spend_per_day(history: History) -> np.ndarray:
    """Expected spend per future purchase day: Gamma-Gamma on repeat purchase days (the
    textbook's input), the customer's own mean where it cannot be fitted or its fit has no
    mean (q ≤ 1: spends too far apart for the model, one customer at a million times the
    others'; its expectation was then infinite for most, and each got the shop's plain mean)."""
    x, repeat = history.x, np.nan_to_num(history.repeat_spend, nan=0.0)
    sample = history.fit_sample()
    try:
        model = GammaGamma.fit(x[sample], repeat[sample])
    except ModelError:
        return history.spend_per_day
    if model.q <= 1.0:
        return history.spend_per_day
    return model.expected_spend(x, repeat)


def _lifetime_stretch(history: History, horizon_days: int, lifetime_days: int) -> np.ndarray:
    """Expected purchase days over the lifetime span per expected purchase day in the horizon,
    by BG/NBD's shape (the plain ratio of spans where BG/NBD expects nothing or cannot be
    fitted: ``naive`` forecasts a history of one day, BG/NBD has no span to learn from)."""
    plain = lifetime_days / horizon_days
    try:
        span, life = history.expected(horizon_days), history.expected(lifetime_days)
    except ModelError:
        return np.full(len(history.rows), plain)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(span > 1e-9, life / span, plain)


@dataclass(frozen=True)
class Evaluation:
    cutoff: int
    horizon_days: int
    qualities: dict[str, Quality]
    # per forecaster, each customer's Poisson log loss, in customer order: what the choice
    # compares, customer by customer
    losses: dict[str, np.ndarray] = field(compare=False, repr=False)


def evaluate(purchases: PurchaseDays, cutoff: int, horizon_days: int) -> Evaluation:
    """Every forecaster on history before ``cutoff`` against ``[cutoff, cutoff + H)``."""
    history = History.at(purchases, cutoff)
    if len(history.rows) == 0:
        raise ModelError(f"no customer has a purchase before {day_of(cutoff).isoformat()}")
    actual = purchases.count_in(cutoff, cutoff + horizon_days)[history.rows]
    predicted = {
        name: forecaster(purchases, history, horizon_days)
        for name, forecaster in FORECASTERS.items()
    }
    return Evaluation(
        cutoff,
        horizon_days,
        {name: quality(value, actual) for name, value in predicted.items()},
        {name: log_loss(value, actual) for name, value in predicted.items()},
    )


def choose(evaluation: Evaluation) -> str:
    """The live forecaster, from the split before ``as_of``.

    Only forecasters that rank "buys again" at least as well as the textbook model qualify
    (BG/NBD itself always does). The default is ``blend`` (BG/NBD where the blend does not
    qualify): one window's ranking of single models is noise-prone, and the combination hedges
    it. A single forecaster replaces the default only where the split shows it better beyond
    that noise: the qualifying one with the lowest mean log loss (:func:`log_loss`; the order
    of FORECASTERS breaks a tie, so the simpler model wins it) must beat the default by a
    one-sided paired test at 5 % (:func:`clearly_lower`).

    Why the log loss and not an MAE: every forecaster gives an expectation, and p_active, the
    tier and the likely count are all read from the Poisson distribution with that mean. The
    log loss scores that distribution and is lowest, in expectation, at the true mean; the
    MAE of an expectation is lowest at the median instead, so it prefers forecasts biased
    towards 0; and the MAE of the likely count sees the expectation only through the
    thresholds where the median steps (ln 2, 1.68, …), a coarse and noisy ranking.
    """
    qualities = evaluation.qualities
    textbook = qualities["bgnbd"].auc or 0.0
    fit = [name for name, q in qualities.items() if name == "bgnbd" or (q.auc or 0.0) >= textbook]
    default = DEFAULT if DEFAULT in fit else "bgnbd"
    order = list(qualities)
    losses = evaluation.losses
    best = min(fit, key=lambda name: (_mean_or_inf(losses[name]), order.index(name)))
    if best != default and clearly_lower(losses[best], losses[default]):
        return best
    return default


def _mean_or_inf(values: np.ndarray) -> float:
    mean = float(np.mean(values)) if len(values) else float("inf")
    return mean if np.isfinite(mean) else float("inf")


def clearly_lower(losses: np.ndarray, against: np.ndarray) -> bool:
    """Whether the mean of ``losses`` is below that of ``against`` by more than chance allows,
    paired customer by customer: the one-sided z-test of the mean difference at 5 % (Diebold &
    Mariano 1995, with customers as independent pairs). Identical losses, or infinite ones,
    are never clearly lower; finite ones always are against infinite ones (a forecast of 0 for
    a customer who bought is refuted by that one customer)."""
    if not np.isfinite(losses).all():
        return False
    if not np.isfinite(against).all():
        return True
    difference = losses - against
    if len(difference) < 2:
        return False
    spread = float(np.std(difference, ddof=1))
    if spread == 0.0:
        return False
    z = float(np.mean(difference)) / (spread / float(np.sqrt(len(difference))))
    return z < -CLEARLY


class LiveChoice(NamedTuple):
    """The live forecaster, the split it was chosen on (None where none was usable) and why,
    in one line (what ``recocamp forecast`` prints)."""

    model: str
    chosen_on: Evaluation | None
    reason: str


QUIET_DAYS = 7  # days without an order after which a store is no longer taken as current


def data_reaches(newest: int, today: int) -> int:
    """The last day the data covers: the newest purchase day, and past it up to yesterday
    (``today − 1``) while that is at most :data:`QUIET_DAYS` later — a shop without an order
    yesterday has still recorded yesterday, but a store whose data stopped weeks ago (an old
    export, the demo's 2011) holds nothing of the days since."""
    return max(newest, min(today - 1, newest + QUIET_DAYS))


def closed(end: int, newest_day: int | None) -> bool:
    """Whether the horizon ending before day ``end`` has passed as far as the data can tell:
    the newest purchase day on record (``newest_day``) reaches its last day, ``end − 1``.
    Without data reaching it, a horizon counts only the days seen so far, and its figures
    (no purchase at all, on a horizon past the data) measure nothing."""
    return newest_day is not None and end - 1 <= newest_day


def live_model(
    purchases: PurchaseDays, as_of: int, horizon_days: int, newest_day: int | None = None
) -> LiveChoice:
    """The forecaster to use at ``as_of``, chosen on the last closed horizon before it
    (cutoff ``as_of − H``): no day at or after ``as_of`` is seen. ``newest_day``: the last
    day the data reaches (``stored.newest_day``: the day before the clock's, or a later
    purchase's; default: the newest in ``purchases``).

    The default (``blend``) stays where that horizon is not closed (the data does not reach
    its last day, e.g. an ``as_of`` past the data) or holds no purchase day: a split with
    nothing to count cannot show one forecaster better, and its AUC is undefined. BG/NBD
    where the split holds fewer than 50 customers."""
    if newest_day is None and len(purchases.day):
        newest_day = int(purchases.day.max())
    first, last = day_of(as_of - horizon_days), day_of(as_of - 1)
    span = f"the horizon before, {first.isoformat()} to {last.isoformat()}"
    if not closed(as_of, newest_day):
        newest = "none" if newest_day is None else day_of(newest_day).isoformat()
        return LiveChoice(
            DEFAULT,
            None,
            f"{span}, is not closed: the data reaches {newest}; the default {DEFAULT} is used",
        )
    try:
        evaluation = evaluate(purchases, as_of - horizon_days, horizon_days)
    except ModelError:
        return LiveChoice("bgnbd", None, TOO_LITTLE)
    any_quality = next(iter(evaluation.qualities.values()))
    if any_quality.customers < MIN_CUSTOMERS_TO_CHOOSE:
        return LiveChoice("bgnbd", None, TOO_LITTLE)
    if any_quality.actual_total == 0:
        return LiveChoice(
            DEFAULT, None, f"no purchase day in {span}: the default {DEFAULT} is used"
        )
    return LiveChoice(choose(evaluation), evaluation, "chosen on the horizon before")
