"""The buy-till-you-die models: BG/NBD (Fader, Hardie & Lee 2005, "Counting your customers the
easy way") for purchase counts, and Gamma-Gamma (Fader, Hardie & Lee 2005, "RFM and CLV") for
spend per purchase — both fitted by maximum likelihood with scipy (pure).

Customers with the same ``(x, t_x, T)`` share one likelihood term, so the fit runs over the
distinct summaries, weighted by how many customers have each: at day resolution a million
customers have far fewer of those.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, special

from recocamp.errors import ModelError


@dataclass(frozen=True)
class BgNbd:
    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float

    @staticmethod
    def fit(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> BgNbd:
        """Maximum-likelihood estimates: L-BFGS-B on the log-parameters, analytic gradient."""
        if len(x) == 0:
            raise ModelError("BG/NBD: no customer with a purchase before the cutoff")
        if not np.any(T > 0):
            # each customer's likelihood is (α/(α+T))^r = 1: every parameter fits alike, and
            # the optimizer stops where it starts (r = α = a = b = 1: 2.6 purchase days in 90)
            raise ModelError(
                "BG/NBD: no customer has a day of history after their first purchase day "
                "(every one first bought on the last day before the cutoff): nothing to "
                "learn a purchase rate from"
            )
        keys, weight = _distinct_rows(x, t_x, T)
        summaries = _Summaries.of(keys)

        def negative(log_params: np.ndarray) -> tuple[float, np.ndarray]:
            params = np.exp(np.clip(log_params, -30.0, 30.0))
            r, alpha, a, b = (float(v) for v in params)
            value, gradient = _log_likelihood_and_gradient(r, alpha, a, b, summaries)
            return -float(np.dot(weight, value)), -(gradient @ weight) * params

        # ftol 1e-10: the estimates agree with 1e-13 to 8 digits in half the iterations
        tight = {"ftol": 1e-10, "gtol": 1e-9, "maxiter": 2000}
        best = optimize.minimize(
            negative,
            np.zeros(4),
            jac=True,
            method="L-BFGS-B",
            bounds=[(-12.0, 12.0)] * 4,
            options=tight,
        )
        r, alpha, a, b = (float(v) for v in np.exp(best.x))
        return BgNbd(r, alpha, a, b, -float(best.fun))

    def _alive_odds(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """δ(x>0) · a/(b+x−1) · ((α+T)/(α+t_x))^(r+x): the odds of having dropped out."""
        with np.errstate(divide="ignore", invalid="ignore"):
            odds = (self.a / (self.b + x - 1.0)) * np.exp(
                (self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x))
            )
        return np.asarray(np.where(x > 0, odds, 0.0))

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + self._alive_odds(x, t_x, T))

    def expected(self, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """Expected purchases in the next ``t`` weeks given each customer's history (eq. 10).
        The hypergeometric part depends on x and T alone: it is evaluated once per distinct
        pair (at day resolution a million customers have a few ten thousand)."""
        keys, at = _distinct_pairs(x, T)
        part = self._unconditional(t, keys[:, 0], keys[:, 1])[at]
        value = part / (1.0 + self._alive_odds(x, t_x, T))
        finite = np.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
        return np.asarray(np.clip(finite, 0.0, None))

    def _unconditional(self, t: float, x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """Eq. 10 without the chance of being alive: (a+b+x−1)/(a−1) · (1 − …)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        if abs(a - 1.0) < 1e-6:  # the expression is continuous in a; 1 itself divides by 0
            a = 1.0 + 1e-6
        z = t / (alpha + T + t)
        # eq. 10's ((α+T)/(α+T+t))^(r+x) · 2F1(r+x, b+x; a+b+x−1; z) after Euler's transformation
        # (1 − z = (α+T)/(α+T+t)): the same value, but no inf × 0 for heavy buyers over long spans.
        # Where a fit puts a and b far out (a dropout chance that hardly varies between
        # customers: a, b in the 10^4s) the transformed form is 0 × inf instead, and eq. 10 as
        # printed is finite: each where the other is not.
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            euler = 1.0 - np.exp((a - 1.0) * np.log1p(-z)) * special.hyp2f1(
                a + b - 1.0 - r, a - 1.0, a + b + x - 1.0, z
            )
            printed = 1.0 - np.exp((r + x) * np.log1p(-z)) * special.hyp2f1(
                r + x, b + x, a + b + x - 1.0, z
            )
        part = np.where(np.isfinite(euler), euler, printed)
        failed = ~np.isfinite(part)
        if failed.any():  # scipy gave up on both (r, α in the 10^4s: the Poisson limit)
            xf, zf = x[failed], np.broadcast_to(z, x.shape)[failed]
            summed = _hypergeometric_series(r + xf, b + xf, a + b + xf - 1.0, zf)
            part[failed] = 1.0 - np.exp((r + xf) * np.log1p(-zf)) * summed
        return np.asarray((a + b + x - 1.0) / (a - 1.0) * part)


SERIES_TERMS = 100_000  # z < 1: the terms shrink geometrically once k passes (A + B) z / (1 − z)


def _hypergeometric_series(
    first: np.ndarray, second: np.ndarray, third: np.ndarray, z: np.ndarray
) -> np.ndarray:
    """Gauss's series 2F1(A, B; C; z), summed term by term until the terms no longer count
    (NaN where they still do after SERIES_TERMS). Where eq. 10's parameters are all positive
    every term is, so nothing cancels: scipy's hyp2f1 returns NaN for some fits whose r and α
    run into the 10^4s (A ≈ r, C − A − B ≈ −r), where this converges in a few dozen terms."""
    total, term = np.ones_like(z), np.ones_like(z)
    active = np.ones(z.shape, dtype=bool)
    for k in range(SERIES_TERMS):
        step = (first + k) * (second + k) / ((third + k) * (k + 1.0)) * z
        term = np.where(active, term * step, 0.0)
        total += term
        active &= np.abs(term) > 1e-17 * np.abs(total)
        if not active.any():
            return total
    return np.where(active, np.nan, total)


def _distinct_pairs(x: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``(x, T)`` pairs and, for each customer, the index of theirs: one sort of
    a single key (x · 2^20 + T; purchase counts are whole, T is below 2^20 weeks), twice as
    fast as sorting on both."""
    key = x * 1048576.0 + T
    _, first, at = np.unique(key, return_index=True, return_inverse=True)
    return np.stack([x[first], T[first]], axis=1), at.ravel()


def _distinct_rows(x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``(x, t_x, T)`` rows and how many customers have each (a lexicographic sort:
    ``np.unique(axis=0)`` compares rows as bytes, several times slower at a million)."""
    order = np.lexsort((T, t_x, x))
    rows = np.stack([x[order], t_x[order], T[order]], axis=1)
    first = np.ones(len(rows), dtype=bool)
    first[1:] = np.any(rows[1:] != rows[:-1], axis=1)
    at = np.flatnonzero(first)
    return rows[at], np.diff(np.r_[at, len(rows)])


@dataclass(frozen=True)
class _Summaries:
    """Distinct customer summaries, each column as its distinct values and an index into them:
    the special functions of the likelihood depend on x alone, the logarithms on t_x or T
    alone, and purchase days and day-resolution spans take few distinct values, so each is
    evaluated once per value rather than once per summary."""

    x: np.ndarray
    x_values: np.ndarray
    x_at: np.ndarray
    t_values: np.ndarray
    t_at: np.ndarray
    big_t_values: np.ndarray
    big_t_at: np.ndarray

    @staticmethod
    def of(keys: np.ndarray) -> _Summaries:
        columns = [np.unique(keys[:, i], return_inverse=True) for i in range(3)]
        (xv, xi), (tv, ti), (bv, bi) = ((v, i.ravel()) for v, i in columns)
        return _Summaries(keys[:, 0], xv, xi, tv, ti, bv, bi)


def _log_likelihood_and_gradient(
    r: float, alpha: float, a: float, b: float, s: _Summaries
) -> tuple[np.ndarray, np.ndarray]:
    """Per-summary BG/NBD log-likelihood (eq. 6 of the paper, in a stable form) and its
    gradient in (r, alpha, a, b), one row per parameter."""
    xv, x, at = s.x_values, s.x, s.x_at
    log_t = np.log(alpha + s.t_values)[s.t_at]
    log_big_t = np.log(alpha + s.big_t_values)[s.big_t_at]
    a1 = (special.gammaln(r + xv) - special.gammaln(r))[at] + r * np.log(alpha)
    a2 = (
        special.gammaln(a + b)
        + special.gammaln(b + xv)
        - special.gammaln(b)
        - special.gammaln(a + b + xv)
    )[at]
    a3 = -(r + x) * log_big_t
    repeat = x > 0
    b_x = np.where(repeat, b + x - 1.0, 1.0)
    log_b_x = np.log(np.where(xv > 0, b + xv - 1.0, 1.0))[at]
    a4 = np.where(repeat, np.log(a) - log_b_x - (r + x) * log_t, -np.inf)
    mix = np.logaddexp(a3, a4)
    w3, w4 = np.exp(a3 - mix), np.exp(a4 - mix)  # the two terms' shares (w4 = 0 without x)
    psi_ab, psi_abx = special.digamma(a + b), special.digamma(a + b + xv)
    psi_r = (special.digamma(r + xv) - special.digamma(r))[at]
    psi_b = (special.digamma(b + xv) - special.digamma(b) - psi_abx)[at]
    gradient = np.stack(
        [
            psi_r + np.log(alpha) - w3 * log_big_t - w4 * log_t,
            r / alpha - (r + x) * (w3 / (alpha + s.big_t_values)[s.big_t_at] + w4 * np.exp(-log_t)),
            (psi_ab - psi_abx)[at] + w4 / a,
            psi_ab + psi_b - w4 / b_x,
        ]
    )
    return np.asarray(a1 + a2 + mix), gradient


@dataclass(frozen=True)
class GammaGamma:
    """Spend per purchase: each customer's mean spend varies around their own latent mean."""

    p: float
    q: float
    v: float
    log_likelihood: float

    @staticmethod
    def fit(frequency: np.ndarray, mean_spend: np.ndarray) -> GammaGamma:
        """Fitted on customers with a positive mean spend (``frequency`` purchases each)."""
        keep = (frequency > 0) & (mean_spend > 0) & np.isfinite(mean_spend)
        n, m = frequency[keep], mean_spend[keep]
        if len(n) < 2:
            raise ModelError("Gamma-Gamma: fewer than two customers with spend")
        # fitted in units of the mean spend: the model is scale-equivariant (v scales with the
        # currency), and the bounds on log v would otherwise cut off rupiah or dong amounts
        unit = float(np.mean(m))
        m = m / unit

        log_m, spent = np.log(m), n * m
        counts, at = np.unique(n, return_inverse=True)  # few distinct purchase counts
        at = at.ravel()
        # the terms in the parameters and the data alone, summed once
        fixed_m, fixed_n = float(np.dot(n, log_m)), float(np.dot(n, np.log(n)))
        sum_log_m = float(log_m.sum())

        def negative(log_params: np.ndarray) -> tuple[float, np.ndarray]:
            p, q, v = (float(value) for value in np.exp(np.clip(log_params, -30.0, 30.0)))
            pn, log_total = p * counts, np.log(spent + v)
            per_count = special.gammaln(pn + q) - special.gammaln(pn)
            value = (
                float(per_count[at].sum())
                - len(n) * (special.gammaln(q) - q * np.log(v))
                + p * (fixed_m + fixed_n)
                - sum_log_m
                - float(np.dot(p * n + q, log_total))
            )
            psi = special.digamma(pn + q)
            psi_n = (counts * (psi - special.digamma(pn)))[at]
            gradient = np.array(
                [
                    (float(psi_n.sum()) + fixed_m + fixed_n - float(np.dot(n, log_total))) * p,
                    (float(psi[at].sum()) - len(n) * (special.digamma(q) - np.log(v))) * q
                    - float(log_total.sum()) * q,
                    (len(n) * q / v - float(np.sum((p * n + q) / (spent + v)))) * v,
                ]
            )
            return -value, -gradient

        start = np.log([1.0, 2.0, float(np.mean(m))])
        # ftol 1e-10: the estimates agree with 1e-13 to 8 digits in half the iterations
        tight = {"ftol": 1e-10, "gtol": 1e-9, "maxiter": 2000}
        best = optimize.minimize(
            negative, start, jac=True, method="L-BFGS-B", bounds=[(-12.0, 12.0)] * 3, options=tight
        )
        p, q, v = (float(value) for value in np.exp(best.x))
        # the density of a mean spend in the currency is that of its share of the unit / unit
        return GammaGamma(p, q, v * unit, -float(best.fun) - len(n) * float(np.log(unit)))

    def expected_spend(self, frequency: np.ndarray, mean_spend: np.ndarray) -> np.ndarray:
        """Each customer's expected spend per purchase: a weighted mean of their own mean and
        the population's (the population's alone without history)."""
        p, q, v = self.p, self.q, self.v
        seen = mean_spend[(frequency > 0) & np.isfinite(mean_spend) & (mean_spend > 0)]
        plain = float(seen.mean()) if len(seen) else 0.0  # q <= 1: the model has no mean
        population = p * v / (q - 1.0) if q > 1.0 else plain
        with np.errstate(divide="ignore", invalid="ignore"):
            own = p * (v + frequency * mean_spend) / (p * frequency + q - 1.0)
        return np.where((frequency > 0) & np.isfinite(own) & (own > 0), own, population)
