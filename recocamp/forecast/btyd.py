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
        """Maximum-likelihood estimates (log-parameters: L-BFGS-B, then Nelder-Mead to polish)."""
        if len(x) == 0:
            raise ModelError("BG/NBD: no customer with a purchase before the cutoff")
        keys, weight = np.unique(np.stack([x, t_x, T], axis=1), axis=0, return_counts=True)
        kx, kt, kT = keys[:, 0], keys[:, 1], keys[:, 2]

        def negative(log_params: np.ndarray) -> float:
            r, alpha, a, b = np.exp(np.clip(log_params, -30.0, 30.0))
            return -float(np.dot(weight, _log_likelihood(r, alpha, a, b, kx, kt, kT)))

        bounds = [(-12.0, 12.0)] * 4
        rough = optimize.minimize(negative, np.zeros(4), method="L-BFGS-B", bounds=bounds)
        polish = {"xatol": 1e-6, "fatol": 1e-6, "maxiter": 300}
        fine = optimize.minimize(negative, rough.x, method="Nelder-Mead", bounds=bounds,
                                 options=polish)  # fmt: skip
        best = fine if fine.fun <= rough.fun else rough
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
        z = t / (alpha + T + t)
        hyper = special.hyp2f1(r + x, b + x, a + b + x - 1.0, z)
        part = 1.0 - np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t))) * hyper
        value = (a + b + x - 1.0) / (a - 1.0) * part / (1.0 + self._alive_odds(x, t_x, T))
        finite = np.nan_to_num(value, nan=0.0, posinf=0.0, neginf=0.0)
        return np.asarray(np.clip(finite, 0.0, None))


def _log_likelihood(
    r: float,
    alpha: float,
    a: float,
    b: float,
    x: np.ndarray,
    t_x: np.ndarray,
    T: np.ndarray,
) -> np.ndarray:
    """Per-customer BG/NBD log-likelihood (eq. 6 of the paper, in a stable form)."""
    a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
    a2 = (special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b)
          - special.gammaln(a + b + x))  # fmt: skip
    a3 = -(r + x) * np.log(alpha + T)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(
            x > 0,
            np.log(a) - np.log(np.maximum(b + x - 1.0, 1e-300)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return np.asarray(a1 + a2 + np.logaddexp(a3, a4))


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

        def negative(log_params: np.ndarray) -> float:
            p, q, v = np.exp(np.clip(log_params, -30.0, 30.0))
            value = (special.gammaln(p * n + q) - special.gammaln(p * n) - special.gammaln(q)
                     + q * np.log(v) + (p * n - 1.0) * np.log(m) + p * n * np.log(n)
                     - (p * n + q) * np.log(n * m + v))  # fmt: skip
            return -float(value.sum())

        start = np.log([1.0, 2.0, float(np.mean(m))])
        polish = {"xatol": 1e-8, "fatol": 1e-8, "maxiter": 4000}
        best = optimize.minimize(negative, start, method="Nelder-Mead", options=polish)
        p, q, v = (float(value) for value in np.exp(best.x))
        return GammaGamma(p, q, v, -float(best.fun))

    def expected_spend(self, frequency: np.ndarray, mean_spend: np.ndarray) -> np.ndarray:
        """Each customer's expected spend per purchase: a weighted mean of their own mean and
        the population's (the population's alone without history)."""
        p, q, v = self.p, self.q, self.v
        population = p * v / (q - 1.0) if q > 1.0 else float(np.nanmean(mean_spend))
        with np.errstate(divide="ignore", invalid="ignore"):
            own = p * (v + frequency * mean_spend) / (p * frequency + q - 1.0)
        return np.where((frequency > 0) & np.isfinite(own) & (own > 0), own, population)
