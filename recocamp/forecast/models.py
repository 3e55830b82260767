"""The forecasters: expected purchase days per customer in ``[cutoff, cutoff + H)`` (pure).

- ``naive``: the customer's own past rate carried forward, x / max(T, 1 week) × H.
- ``bgnbd``: the textbook BG/NBD model's conditional expectation.
- ``rhythm`` (ours): a Poisson regression on what BG/NBD ignores — the customer's own rhythm
  and how overdue they are against it, purchase days in recent windows (30/90/180/365 days),
  spend per purchase day, tenure — with BG/NBD's and the naive forecast as inputs (those two
  held to the range they took in training: :func:`within_training`). It learns
  its weights on the window just before the cutoff (features at ``cutoff − H``, target the
  purchase days in ``[cutoff − H, cutoff)``) and the three before it (below). Where the
  history reaches a year and two horizons before the cutoff, the shop's seasonal level scales
  the forecast: what its customers bought in the horizon a year earlier over what the same
  learner, learnt as now, forecast for them there (:func:`seasonal_level`).
- ``hurdle`` (ours): the chance of at least one purchase day in the horizon (a logistic
  regression) times the purchase days expected by those who buy (a Poisson regression on
  them, at least 1) — still an expectation, for totals and revenue. Its features are rates
  rather than counts (purchase days in each recent window over the part of it the customer was
  known, recency over tenure), so a model learnt on a short history applies to a longer one, and
  they are clipped to the range seen in training. Same training window and seasonal level.
- ``blend``: the mean of the three model-based expectations (``bgnbd``, ``rhythm``,
  ``hurdle``), with equal weights. Which single model forecasts best changes from one window
  to the next (in ``benchmarks/forecast.py`` the window before the cutoff and the horizon
  after it mostly disagree on the best of the three; by the MAE of the likely count they
  agree on one of the seven splits); an equal-weight combination is the standard hedge
  against that (Bates & Granger 1969; Timmermann 2006, "Forecast combinations",
  Handbook of Economic Forecasting 1), and weights fitted on one noisy window usually do no
  better than equal ones (the "forecast combination puzzle", Smith & Wallis 2009). ``naive``
  stays out: it is a baseline, not a model of the count (0 for every one-time buyer). An
  expectation like the others, so totals, p_active, tiers and revenue follow from it
  unchanged. Other ways to combine the three, measured on the ten validation splits
  (``benchmarks/forecast.py --validation``) for the AUC of "buys again", paired with the mean's
  on the same customers (DeLong) and pooled over the nine splits where they differ: the
  geometric mean (the log-linear pool, which pools Poisson counts into a Poisson count)
  −0.0002 (z −0.5); the mean of the chances 1 − e^(−E), turned back into an expectation,
  +0.0001 (z +1.2) with a worse likely count (0.943 of the better reference's MAE against
  0.940); weights fitted on the horizon before the cutoff, shrunk half way to equal ones,
  ±0.0000 (0.957); ``hurdle``'s chance learnt on ``rhythm``'s count features +0.0007 (z +3.4),
  but the live forecaster's likely count then worsened (0.992 against 0.987). None is worth
  its cost, so the plain mean stays (issue #17's one AUC miss, CDNOW at 1998-04-01, is
  −0.0017 with a standard error of 0.0035: see README, Forecasts). Nor did giving the learners
  more to go on, one at a time: BG/NBD's own chance of a purchase day in the horizon, survival
  in the customer's own rhythm (gamma gaps: the chance the next gap ends within H given that it
  already exceeds the recency), recency × frequency terms, spend trend, the crowd of the
  acquisition week, the share of past windows with a purchase, or Pareto/NBD in BG/NBD's place
  in the mean: none ranks "buys again" better on the validation splits beyond noise (pooled
  −0.0009 to +0.0002 against the mean), so none is used.

Both learning forecasters train on the shop's own past at several origins (rolling origins):
the latest window as above and up to three more ending 30, 60 and 90 days earlier, stacked
one under the other with a level of their own per window (an indicator column) and shared
slopes; the forecast is made at the latest window's level. One window of a small shop is a
few thousand customers and a noisy fit; four give the same dozen slopes more rows to settle on,
while a window's season still sets only its own level. Chosen on ten splits none of the
benchmark's seven (``benchmarks/forecast.py --validation``: other cutoffs of UCI and CDNOW,
two more seeds of the demo shop, two BG/NBD-like synthetic shops), before the seven were
measured: the blend's MAE of the likely count fell from 0.940 to 0.937 of BG/NBD's and
``rhythm``'s AUC rose by 0.0025 on average (eight or twelve windows did no better).
A learning forecaster trains only on windows whose features see at least ``H`` days of the
shop's history (BG/NBD where not even the latest does). The seasonal level counts only the
purchase days of customers known a year before the cutoff, so a cohort's first purchases
(CDNOW: everybody's first purchase in one quarter) do not pass for a season. A learning
forecaster whose total leaves a factor 2 of BG/NBD's on the same customers gives way to
BG/NBD's (:func:`carries`): on a young shop its slopes, extrapolated to customers older than
any it learnt on, forecast several times what came.

Nothing here sees a day at or after the cutoff.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from recocamp.forecast.history import WINDOWS, History, PurchaseDays

YEAR = 365
RIDGE = 1.0  # L2 penalty of the Poisson regression on standardised features
REGRESSION_SAMPLE = 50_000  # rows a regression learns from, at most: a dozen weights settle
ORIGINS = 4  # training windows a learning forecaster stacks, the latest first ...
ORIGIN_STEP = 30  # ... their origins this many days apart
TEXTBOOK_FACTOR = 2.0  # a learnt total over this many times BG/NBD's, or under 1/it, gives way


def naive(purchases: PurchaseDays, history: History, horizon_days: int) -> np.ndarray:
    return naive_rate(history, horizon_days)


def bgnbd(purchases: PurchaseDays, history: History, horizon_days: int) -> np.ndarray:
    return at_most(history.expected(horizon_days), horizon_days)


def at_most(expected: np.ndarray, horizon_days: int) -> np.ndarray:
    """A purchase day is a calendar day: H days hold at most H. BG/NBD counts in continuous
    time and the regressions (times the seasonal level) know no bound, so a customer who buys
    every day was expected on 31 of 30 (``naive`` stays within it: x ≤ 7 T)."""
    return np.asarray(np.minimum(expected, float(horizon_days)))


def blend(purchases: PurchaseDays, history: History, horizon_days: int) -> np.ndarray:
    parts = [model(purchases, history, horizon_days) for model in (bgnbd, rhythm, hurdle)]
    return np.asarray(sum(parts) / len(parts))


def _once(
    forecaster: Callable[[PurchaseDays, History, int], np.ndarray],
) -> Callable[[PurchaseDays, History, int], np.ndarray]:
    """The forecaster's answer kept on the history, so ``blend`` and the evaluation of every
    forecaster fit each regression once (the history belongs to one PurchaseDays)."""

    def kept(purchases: PurchaseDays, history: History, horizon_days: int) -> np.ndarray:
        key = (forecaster.__name__, horizon_days)
        if key not in history.forecasts:
            value = forecaster(purchases, history, horizon_days)
            value.setflags(write=False)  # shared by every caller
            history.forecasts[key] = value
        return history.forecasts[key]

    kept.__name__ = forecaster.__name__
    kept.__doc__ = forecaster.__doc__
    return kept


@_once
def rhythm(purchases: PurchaseDays, history: History, horizon_days: int) -> np.ndarray:
    return _seasoned(learnt_rhythm, purchases, history, horizon_days)


@_once
def hurdle(purchases: PurchaseDays, history: History, horizon_days: int) -> np.ndarray:
    return _seasoned(learnt_hurdle, purchases, history, horizon_days)


Learner = Callable[[PurchaseDays, History, int], "np.ndarray | None"]


def _seasoned(
    learner: Learner, purchases: PurchaseDays, history: History, horizon_days: int
) -> np.ndarray:
    """The learner's forecast times its seasonal level; BG/NBD's where it cannot learn, or
    where what it learnt does not carry to the cutoff (:func:`carries`)."""
    textbook = bgnbd(purchases, history, horizon_days)
    predicted = learner(purchases, history, horizon_days)
    if predicted is None:
        return textbook
    level = seasonal_level(learner, purchases, history.cutoff, horizon_days)
    seasoned = at_most(predicted * level, horizon_days)
    return seasoned if carries(seasoned, textbook) else textbook


def carries(learnt: np.ndarray, textbook: np.ndarray) -> bool:
    """Whether a learnt forecast's total is within a factor :data:`TEXTBOOK_FACTOR` of
    BG/NBD's on the same customers.

    The regressions' slopes are learnt on features taken a horizon and more before the
    cutoff; on a young shop (one cohort, everyone's first purchase in one quarter:
    CDNOW, or a shop a few months old) every customer at the cutoff is older, has a longer
    recency and more purchase days than anyone in them, and a dozen slopes learnt on a few
    hundred rows, extrapolated, forecast 4.8 times the purchase days that came (400-customer
    CDNOW slices at 1997-07-01; 18.7 times on 150-customer ones), or a fifth of them. BG/NBD
    has four parameters fitted on the whole history and no feature to extrapolate: on those
    slices its total stayed within 1.75 times the actual. On the seven reported splits, the
    ten validation splits and the splits the live forecaster was chosen on, the learnt totals
    (seasonal level included) stayed within 0.59 to 1.71 times BG/NBD's: the factor 2 keeps
    every one of them and falls back only where a learner has left what it learnt."""
    expected, ours = float(np.sum(textbook)), float(np.sum(learnt))
    if expected <= 0.0 or ours <= 0.0:
        return expected == ours
    return 1.0 / TEXTBOOK_FACTOR <= ours / expected <= TEXTBOOK_FACTOR


def learnt_rhythm(
    purchases: PurchaseDays, history: History, horizon_days: int
) -> np.ndarray | None:
    windows = training_windows(purchases, history.cutoff, horizon_days)
    if not windows:
        return None
    train, target = stacked_windows(windows, lambda inner: _features(inner, horizon_days))
    regression = PoissonRegression.fit(train, target)
    features = at_latest_level(_features(history, horizon_days), len(windows))
    return regression.predict(within_training(features, train, MODEL_COLUMNS))


def learnt_hurdle(
    purchases: PurchaseDays, history: History, horizon_days: int
) -> np.ndarray | None:
    windows = training_windows(purchases, history.cutoff, horizon_days)
    if not windows:
        return None
    train, seen = stacked_windows(windows, lambda inner: _rates(inner, horizon_days))
    buys = seen > 0
    if buys.all() or not buys.any():  # one class: nothing to separate
        return None
    chance = PoissonRegression.fit(train, buys.astype(np.float64), logistic=True)
    days = PoissonRegression.fit(train[buys], seen[buys])
    features = at_latest_level(_rates(history, horizon_days), len(windows))
    features = np.clip(features, train.min(axis=0), train.max(axis=0))
    return np.asarray(chance.predict(features) * np.maximum(days.predict(features), 1.0))


FORECASTERS: dict[str, Callable[[PurchaseDays, History, int], np.ndarray]] = {
    "naive": naive,
    "bgnbd": bgnbd,
    "rhythm": rhythm,
    "hurdle": hurdle,
    "blend": blend,
}


def training_windows(
    purchases: PurchaseDays, cutoff: int, horizon_days: int
) -> list[tuple[History, np.ndarray]]:
    """The learning forecasters' training windows, the latest first: for each origin
    ``cutoff − H − k · ORIGIN_STEP`` (k < ORIGINS) the history at that origin and each of its
    customers' purchase days in the H days after it — every target day before ``cutoff``.
    Only origins whose history reaches ``H`` days back (features of a few days' history teach
    nothing about later ones: at UCI's 2011-03-03 they made the forecast 50 times too large)
    and holds at least 50 customers and a repeat purchase; empty where the latest does not."""
    windows: list[tuple[History, np.ndarray]] = []
    first_day = int(purchases.day.min()) if len(purchases.day) else cutoff
    for k in range(ORIGINS):
        end = cutoff - k * ORIGIN_STEP
        start = end - horizon_days
        if start - first_day < horizon_days:
            break
        inner = History.at(purchases, start)
        if len(inner.rows) < 50 or inner.x.sum() == 0:
            break
        windows.append((inner, purchases.count_in(start, end)[inner.rows]))
    return windows


def stacked_windows(
    windows: list[tuple[History, np.ndarray]], featurise: Callable[[History], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The windows' features and targets one under the other, each window's customers a fixed
    sample of at most REGRESSION_SAMPLE / windows (:meth:`History.sample`: described on the
    sample alone), with an indicator column per window but the latest: the slopes are shared,
    each older window has its own level (its season), and the forecast is made at the latest
    window's level (:func:`at_latest_level`)."""
    per_window = max(REGRESSION_SAMPLE // len(windows), 1)
    parts, targets = [], []
    for k, (inner, target) in enumerate(windows):
        chosen = inner.fit_sample(per_window)
        features = featurise(inner.sample(per_window))
        levels = np.zeros((len(features), len(windows) - 1))
        if k:
            levels[:, k - 1] = 1.0
        parts.append(np.hstack([features, levels]))
        targets.append(target[chosen])
    return np.vstack(parts), np.concatenate(targets)


def at_latest_level(features: np.ndarray, windows: int) -> np.ndarray:
    """``features`` with the indicators of :func:`stacked_windows` all 0: the latest level."""
    return np.hstack([features, np.zeros((len(features), windows - 1))])


MODEL_COLUMNS = slice(0, 2)  # _features' columns that are other models' forecasts


def within_training(features: np.ndarray, train: np.ndarray, columns: slice) -> np.ndarray:
    """``features`` with ``columns`` held to the range they took in ``train``.

    ``rhythm``'s inputs BG/NBD's and the naive forecast can all but collapse in a training
    window: where BG/NBD's fit finds no heterogeneity (r and α in the tens or thousands: a
    Poisson), its forecast is nearly the same for every customer (a spread of 5·10⁻⁵ to 0.01
    on a young UCI slice at 2011-06-10 and 06-15) and spreads widely at the cutoff, and the
    slope learnt on that sliver, extrapolated 40 spreads and more, put e^30 on customers: 90
    purchase days of 90. The counts stay unclipped: they grow with the history by design."""
    held = features.copy()
    held[:, columns] = np.clip(
        features[:, columns], train[:, columns].min(axis=0), train[:, columns].max(axis=0)
    )
    return held


def _features(history: History, horizon_days: int) -> np.ndarray:
    """``rhythm``'s inputs; the first two (:data:`MODEL_COLUMNS`) are BG/NBD's and the naive
    forecast."""
    expected = history.expected(horizon_days)
    overdue = np.nan_to_num(history.overdue, nan=0.0)
    columns = [
        np.log1p(expected),
        np.log1p(naive_rate(history, horizon_days)),
        *(np.log1p(history.recent[:, i]) for i in range(history.recent.shape[1])),
        np.log1p(history.recency),
        np.log1p(overdue),
        (history.days == 1).astype(np.float64),
        np.log1p(history.spend_per_day.clip(0.0, None)),
        np.log1p(history.days),
        np.log1p((history.cutoff - history.first).astype(np.float64)),
    ]
    return np.stack(columns, axis=1)


def _rates(history: History, horizon_days: int) -> np.ndarray:
    """``hurdle``'s features: rates and ratios whose range does not grow with the history."""
    tenure = np.maximum((history.cutoff - history.first).astype(np.float64), 1.0)
    columns = [
        np.log1p(history.expected(horizon_days)),
        np.log1p(naive_rate(history, horizon_days)),
        np.log1p(history.recency),
        np.log1p(np.nan_to_num(history.overdue, nan=0.0)),
        (history.days == 1).astype(np.float64),
        np.log1p(history.spend_per_day.clip(0.0, None)),
        *(
            np.log1p(history.recent[:, i] / np.minimum(tenure, w) * horizon_days)
            for i, w in enumerate(WINDOWS)
        ),
        history.recency / tenure,
    ]
    return np.stack(columns, axis=1)


def naive_rate(history: History, horizon_days: int) -> np.ndarray:
    """x / max(T, 1 week) × H: the customer's own past rate carried forward."""
    return np.asarray(history.x / np.maximum(history.T, 1.0) * (horizon_days / 7.0))


def seasonal_level(
    learner: Learner, purchases: PurchaseDays, cutoff: int, horizon_days: int
) -> float:
    """How far the same learner fell short a year ago: the purchase days its customers made in
    ``[cutoff − 1 year, + H)`` over what it forecast for them there, learnt as now on the
    windows just before (their season). The learner carries the customers' aging itself, so
    this is the season ahead over the season trained and nothing else: the ratio of one
    cohort's purchase days in the two seasons re-counted the cohort's dropout (0.53–0.65 on
    stationary synthetic shops). Its customers are those known a year ago, so newcomers' first
    days (acquisition, not season) stay out. 1 where the learner could not learn a year ago
    or the history does not reach ``H`` days before its training window there."""
    first_day = int(purchases.day.min()) if len(purchases.day) else cutoff
    year_ago = cutoff - YEAR
    if horizon_days > YEAR or year_ago - 2 * horizon_days < first_day:
        return 1.0  # past a year, last year's season ahead would reach beyond the cutoff
    then = History.at(purchases, year_ago)
    predicted = learner(purchases, then, horizon_days)
    if predicted is None:
        return 1.0
    expected = float(predicted.sum())
    actual = float(purchases.count_in(year_ago, year_ago + horizon_days)[then.rows].sum())
    return actual / expected if expected > 0.0 and actual > 0.0 else 1.0


@dataclass(frozen=True)
class PoissonRegression:
    """log E[y] = w · standardised features + bias, by penalised maximum likelihood; with
    ``logistic``, log-odds of y ∈ {0, 1} instead."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    logistic: bool = False

    @staticmethod
    def fit(features: np.ndarray, target: np.ndarray, logistic: bool = False) -> PoissonRegression:
        mean = features.mean(axis=0)
        scale = np.where(features.std(axis=0) > 0, features.std(axis=0), 1.0)
        design = _with_bias((features - mean) / scale)
        penalty = np.r_[np.full(features.shape[1], RIDGE), 0.0]

        def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
            eta = np.clip(design @ w, -30.0, 30.0)
            if logistic:  # log(1 + e^eta) − y·eta, gradient sigmoid(eta) − y
                value = float(np.sum(np.logaddexp(0.0, eta) - target * eta))
                mu = special.expit(eta)
            else:
                mu = np.exp(eta)
                value = float(np.sum(mu - target * eta))
            value += 0.5 * float(np.dot(penalty * w, w))
            return value, design.T @ (mu - target) + penalty * w

        level = min(max(float(target.mean()), 1e-6), 1.0 - 1e-6) if logistic else target.mean()
        bias = float(special.logit(level)) if logistic else np.log(max(float(level), 1e-6))
        start = np.r_[np.zeros(features.shape[1]), bias]
        best = optimize.minimize(loss, start, jac=True, method="L-BFGS-B")
        return PoissonRegression(mean, scale, np.asarray(best.x), logistic)

    def predict(self, features: np.ndarray) -> np.ndarray:
        design = _with_bias((features - self.mean) / self.scale)
        eta = np.clip(design @ self.weights, -30.0, 30.0)
        return np.asarray(special.expit(eta) if self.logistic else np.exp(eta))


def _with_bias(features: np.ndarray) -> np.ndarray:
    return np.hstack([features, np.ones((len(features), 1))])
