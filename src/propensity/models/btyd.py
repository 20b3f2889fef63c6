"""The "buy till you die" baselines: BG/NBD (Fader, Hardie & Lee, 2005) and Gamma-Gamma spend.

These are what a practitioner fits on an order log instead of a feature model, so every
repurchase and churn report carries them as a baseline, and CLV is judged against them.

They are written here in a few dozen lines of SciPy rather than imported:

* ``lifetimes`` (the reference implementation these formulas follow) has been in maintenance
  mode since 2020 and points its users to ``pymc-marketing``;
* ``pymc-marketing`` resolves with our pins only by downgrading ``cachetools``, and brings PyMC
  and PyTensor (a C compiler at first use, seconds of import) for what is a four-parameter
  maximum-likelihood fit here.

The likelihoods are the published closed forms; ``tests/test_btyd.py`` recovers the parameters
of data drawn from the model's own generative story and checks the predictions against a Monte
Carlo of it. Time is in days.

Inputs per customer, from an order history cut at the snapshot ``T``:

* ``x``: repeat purchases (orders after the first),
* ``t_x``: days from the first to the last purchase,
* ``T``: days from the first purchase to the snapshot,
* ``m``: mean order value (Gamma-Gamma; customers with ``x > 0`` only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, special


def _fit(neg_ll, start: np.ndarray) -> np.ndarray:
    """Minimise ``neg_ll`` over log-parameters (so every parameter stays positive)."""
    res = optimize.minimize(neg_ll, np.log(start), method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-6})
    res = optimize.minimize(neg_ll, res.x, method="L-BFGS-B")  # polish from the simplex's answer
    return np.exp(res.x)


@dataclass(frozen=True)
class BetaGeo:
    """BG/NBD: while alive a customer buys at a Poisson rate ``lambda ~ Gamma(r, alpha)``, and
    after each purchase drops out with probability ``p ~ Beta(a, b)``."""

    r: float
    alpha: float
    a: float
    b: float

    @staticmethod
    def log_likelihood(params: np.ndarray, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = params
        a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
        a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
        a3 = -(r + x) * np.log(alpha + T)
        with np.errstate(divide="ignore"):
            log_b = np.log(np.maximum(b + x - 1, 1e-12))
            a4 = np.where(x > 0, np.log(a) - log_b - (r + x) * np.log(alpha + t_x), -np.inf)
        return a1 + a2 + np.logaddexp(a3, a4)

    @classmethod
    def fit(cls, x: np.ndarray, t_x: np.ndarray, T: np.ndarray, penalizer: float = 0.0) -> BetaGeo:
        """Maximum likelihood; ``penalizer`` adds ``penalizer * sum(params**2)`` for shops whose
        histories leave a parameter unidentified. As in lifetimes, the fit runs with time scaled
        so the longest ``T`` is 1 (the penalty then weighs ``alpha`` as it weighs the shape
        parameters, not in days), and ``alpha`` is scaled back; with ``penalizer=0`` the answer
        is the unscaled maximum (``alpha`` is a scale parameter)."""
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        if not len(x):
            raise ValueError("BG/NBD: no customers to fit")
        unit = max(float(T.max()), 1e-9)
        ts, Ts = t_x / unit, T / unit

        def neg(logp: np.ndarray) -> float:
            p = np.exp(logp)
            return float(-cls.log_likelihood(p, x, ts, Ts).mean() + penalizer * (p**2).sum())

        r, alpha, a, b = _fit(neg, np.array([1.0, max(float(Ts.mean()), 1e-3), 1.0, 1.0]))
        return cls(r, alpha * unit, a, b)

    def _odds_dead(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        with np.errstate(divide="ignore", over="ignore"):
            log_b = np.log(np.maximum(b + x - 1, 1e-12))
            log_odds = np.log(a) - log_b + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
        return np.where(x > 0, np.exp(np.minimum(log_odds, 700.0)), 0.0)

    def p_alive(self, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """P(still alive at ``T``); a customer without repeat purchases has not had a chance to drop out."""
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        return 1.0 / (1.0 + self._odds_dead(x, t_x, T))

    def p_purchase(self, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """P(at least one purchase in ``(T, T + t]``). A BG/NBD customer drops out only right after
        a purchase, so one alive at ``T`` makes none in the window exactly when the Poisson draws
        none: ``P(alive) * (1 - ((alpha + T) / (alpha + T + t)) ** (r + x))``."""
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        none = np.exp((self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + T + t)))
        return self.p_alive(x, t_x, T) * (1.0 - none)

    def expected_purchases(self, t: float, x: np.ndarray, t_x: np.ndarray, T: np.ndarray) -> np.ndarray:
        """E[purchases in ``(T, T + t]``] given the history (the paper's equation 10)."""
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + T + t)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        ratio = np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t)))
        return (a + b + x - 1) / (a - 1) * (1 - ratio * hyp) / (1.0 + self._odds_dead(x, t_x, T))


@dataclass(frozen=True)
class GammaGamma:
    """Gamma-Gamma spend: a customer's order values are ``Gamma(p, nu)`` around their own mean,
    with ``nu ~ Gamma(q, gamma)`` across customers (assumed independent of the purchase process)."""

    p: float
    q: float
    gamma: float

    @staticmethod
    def log_likelihood(params: np.ndarray, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        p, q, g = params
        return (
            special.gammaln(p * x + q)
            - special.gammaln(p * x)
            - special.gammaln(q)
            + q * np.log(g)
            + (p * x - 1) * np.log(m)
            + p * x * np.log(x)
            - (p * x + q) * np.log(x * m + g)
        )

    @classmethod
    def fit(cls, x: np.ndarray, m: np.ndarray, penalizer: float = 0.0) -> GammaGamma:
        """Fit on customers with at least one order (``x`` orders averaging ``m`` > 0)."""
        x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
        keep = (x > 0) & (m > 0)
        if keep.sum() < 3:
            raise ValueError("Gamma-Gamma: fewer than 3 customers with a positive order value")
        x, m = x[keep], m[keep]

        def neg(logp: np.ndarray) -> float:
            p = np.exp(logp)
            return float(-cls.log_likelihood(p, x, m).mean() + penalizer * (p**2).sum())

        return cls(*_fit(neg, np.array([1.0, 2.0, float(m.mean())])))

    def expected_spend(self, x: np.ndarray, m: np.ndarray) -> np.ndarray:
        """E[order value] given ``x`` orders averaging ``m``; the population mean when ``x`` is 0."""
        x, m = np.asarray(x, dtype=float), np.nan_to_num(np.asarray(m, dtype=float))
        p, q, g = self.p, self.q, self.gamma
        return (p * (g + x * m)) / (p * x + q - 1)


def rfm(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, t_x, T)`` from a snapshot frame's features: repeat orders from ``orders_total``, the
    span of purchases from ``tenure_days - recency_days``, age from ``tenure_days``.

    BG/NBD describes buyers only. A customer without an order counts as born at signup with no
    purchase since (``x = t_x = 0``, ``T`` = days since signup, ``signup_tenure_days``), so a
    long-registered browser gets a low P(purchase); as a newcomer at the snapshot (``T = 0``)
    every browser got the prior's high one, and the churn baseline ranked backwards (AUC 0.40
    on the test shop)."""
    orders = df["orders_total"].fillna(0).to_numpy(dtype=float)
    tenure = df["tenure_days"].fillna(0).to_numpy(dtype=float)
    recency = df["recency_days"].fillna(0).to_numpy(dtype=float)
    signed = df["signup_tenure_days"] if "signup_tenure_days" in df.columns else pd.Series(0.0, index=df.index)
    signed = signed.fillna(0).to_numpy(dtype=float)
    bought = orders > 0
    x = np.where(bought, orders - 1, 0.0)
    T = np.where(bought, tenure, np.maximum(signed, 0.0))
    t_x = np.where(bought, np.clip(tenure - recency, 0.0, T), 0.0)
    return x, t_x, T


def latest_snapshot(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``df``'s latest snapshot (pooled frames repeat a customer once per snapshot;
    BTYD is fitted on one history per customer)."""
    return df[df["snapshot"] == df["snapshot"].max()] if "snapshot" in df.columns else df


#: customers a baseline is fitted on at most: four parameters need thousands, not millions
FIT_ROWS = 20_000


def fit_rows(train: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The rows a baseline is fitted on: the buyers of ``train``'s latest snapshot, a uniform
    sample of :data:`FIT_ROWS` of them on a large shop."""
    fit_on = latest_snapshot(train)
    fit_on = fit_on[fit_on["orders_total"].fillna(0) > 0]
    return fit_on.sample(FIT_ROWS, random_state=seed) if len(fit_on) > FIT_ROWS else fit_on


def purchase_baseline(
    train: pd.DataFrame, test: pd.DataFrame, horizon_days: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, BetaGeo]:
    """BG/NBD P(purchase within ``horizon_days``) and P(alive) for each ``test`` row, fitted on
    the buyers of ``train``'s latest snapshot (what a practitioner would fit at the last
    training date; a uniform sample of :data:`FIT_ROWS` of them on a large shop)."""
    model = BetaGeo.fit(*rfm(fit_rows(train, seed)), penalizer=1e-4)
    history = rfm(test)
    return model.p_purchase(horizon_days, *history), model.p_alive(*history), model
