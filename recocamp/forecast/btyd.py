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
        keys, weight = np.unique(np.stack([x, t_x, T], axis=1), axis=0, return_counts=True)
        kx, kt, kT = keys[:, 0], keys[:, 1], keys[:, 2]

        def negative(log_params: np.ndarray) -> tuple[float, np.ndarray]:
            params = np.exp(np.clip(log_params, -30.0, 30.0))
            r, alpha, a, b = (float(v) for v in params)
            value, gradient = _log_likelihood_and_gradient(r, alpha, a, b, kx, kt, kT)
            return -float(np.dot(weight, value)), -(gradient @ weight) * params

        tight = {"ftol": 1e-13, "gtol": 1e-9, "maxiter": 2000}
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
        """Expected purchases in the next ``t`` weeks given each customer's history (eq. 10)."""
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
        value = (a + b + x - 1.0) / (a - 1.0) * part / (1.0 + self._alive_odds(x, t_x, T))
        finite = np.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
        return np.asarray(np.clip(finite, 0.0, None))


def _log_likelihood_and_gradient(
    r: float, alpha: float, a: float, b: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-customer BG/NBD log-likelihood (eq. 6 of the paper, in a stable form) and its
    gradient in (r, alpha, a, b), one row per parameter."""
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = (
        special.gammaln(a + b)
        + special.gammaln(b + x)
        - special.gammaln(b)
        - special.gammaln(a + b + x)
    )
    a3 = -(r + x) * np.log(alpha + T)
    repeat = x > 0
    b_x = np.where(repeat, b + x - 1.0, 1.0)
    a4 = np.where(repeat, np.log(a) - np.log(b_x) - (r + x) * np.log(alpha + t_x), -np.inf)
    mix = np.logaddexp(a3, a4)
    w3, w4 = np.exp(a3 - mix), np.exp(a4 - mix)  # the two terms' shares (w4 = 0 without x)
    psi_ab, psi_abx = special.digamma(a + b), special.digamma(a + b + x)
    gradient = np.stack(
        [
            special.digamma(r + x)
            - special.digamma(r)
            + np.log(alpha)
            - w3 * np.log(alpha + T)
            - w4 * np.log(alpha + t_x),
            r / alpha - (r + x) * (w3 / (alpha + T) + w4 / (alpha + t_x)),
            psi_ab - psi_abx + w4 / a,
            psi_ab + special.digamma(b + x) - special.digamma(b) - psi_abx - w4 / b_x,
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

        log_n, log_m, spent = np.log(n), np.log(m), n * m

        def negative(log_params: np.ndarray) -> tuple[float, np.ndarray]:
            p, q, v = (float(value) for value in np.exp(np.clip(log_params, -30.0, 30.0)))
            pn, log_total = p * n, np.log(spent + v)
            value = (
                special.gammaln(pn + q)
                - special.gammaln(pn)
                - special.gammaln(q)
                + q * np.log(v)
                + (pn - 1.0) * log_m
                + pn * log_n
                - (pn + q) * log_total
            )
            psi = special.digamma(pn + q)
            gradient = np.array(
                [
                    np.sum(n * (psi - special.digamma(pn) + log_m + log_n - log_total)) * p,
                    np.sum(psi - special.digamma(q) + np.log(v) - log_total) * q,
                    np.sum(q / v - (pn + q) / (spent + v)) * v,
                ]
            )
            return -float(value.sum()), -gradient

        start = np.log([1.0, 2.0, float(np.mean(m))])
        tight = {"ftol": 1e-13, "gtol": 1e-9, "maxiter": 2000}
        best = optimize.minimize(
            negative, start, jac=True, method="L-BFGS-B", bounds=[(-12.0, 12.0)] * 3, options=tight
        )
        p, q, v = (float(value) for value in np.exp(best.x))
        return GammaGamma(p, q, v, -float(best.fun))

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
