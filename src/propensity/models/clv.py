"""Customer value: the net revenue a customer brings in the next ``H`` days, and how to judge it.

Most customers spend nothing in any window, so the target is mostly zeros with a long tail.
Two LightGBM formulations handle that, and the validation split picks one
(:func:`fit_revenue`):

* **hurdle**: P(buy) from a binary booster times E[revenue | buy] from a regression booster
  fitted on the buyers only (on log revenue, mapped back with the residual variance's
  lognormal correction), so each part learns from the rows that inform it;
* **tweedie**: one booster with the Tweedie objective (a compound Poisson-Gamma with a point
  mass at zero), variance power 1.5.

Metrics (:func:`value_metrics`), all on revenue in the base currency:

* normalised Gini: the Gini of the Lorenz curve of realised revenue ordered by the
  prediction, over that of the perfect order (1: the ranking of the truth, 0: random);
* Spearman rank correlation;
* top-decile capture: the share of all realised revenue made by the 10% predicted highest;
* MAE.

The baselines a practitioner would use come from :mod:`.btyd`: BG/NBD expected purchases
times Gamma-Gamma expected spend (:func:`btyd_revenue`), and the customer's own past revenue
scaled to the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

FORMULATIONS = ("hurdle", "tweedie")


def normalized_gini(y: np.ndarray, score: np.ndarray) -> float:
    """Gini of ``y`` ordered by ``score`` (ties in random-free stable order) over the perfect
    order's; NaN when ``y`` has no spread."""
    y = np.asarray(y, dtype=float)
    score = np.asarray(score, dtype=float)

    def gini(order: np.ndarray) -> float:
        cum = np.cumsum(y[order]) / y.sum()
        return float((cum - np.arange(1, len(y) + 1) / len(y)).sum() / len(y))

    if len(y) < 2 or y.sum() <= 0:
        return float("nan")
    perfect = gini(np.argsort(-y, kind="stable"))
    return gini(np.argsort(-score, kind="stable")) / perfect if perfect > 0 else float("nan")


def top_decile_capture(y: np.ndarray, score: np.ndarray) -> float:
    """Share of all realised ``y`` made by the 10% of rows with the highest ``score``."""
    y = np.asarray(y, dtype=float)
    top = np.argsort(-np.asarray(score, dtype=float), kind="stable")[: max(1, len(y) // 10)]
    return float(y[top].sum() / y.sum()) if y.sum() > 0 else float("nan")


def value_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    from scipy.stats import spearmanr

    y, pred = np.asarray(y, dtype=float), np.asarray(pred, dtype=float)
    rho = spearmanr(y, pred).statistic if np.std(pred) > 0 and np.std(y) > 0 else float("nan")
    return {
        "gini": normalized_gini(y, pred),
        "spearman": float(rho),
        "top_decile_capture": top_decile_capture(y, pred),
        "mae": float(np.abs(y - pred).mean()),
        "mean_predicted": float(pred.mean()),
        "mean_actual": float(y.mean()),
    }


@dataclass
class RevenueModel:
    """A fitted formulation: :meth:`predict` is the expected revenue over the horizon."""

    formulation: str
    boosters: dict[str, Any]
    log_var: float = 0.0  #: residual variance of the hurdle's log-revenue model

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.formulation == "tweedie":
            return np.asarray(self.boosters["tweedie"].predict(x), dtype=float)
        p = self.boosters["buy"].predict(x)
        spend = np.exp(self.boosters["spend"].predict(x) + self.log_var / 2)
        return np.asarray(p * spend, dtype=float)


def _fit_one(
    formulation: str, x: np.ndarray, y: np.ndarray, params: dict[str, Any], rounds: int, weight: np.ndarray | None
) -> RevenueModel:
    import lightgbm as lgb

    base = {"verbose": -1, **params}
    if formulation == "tweedie":
        ds = lgb.Dataset(x, y, weight=weight)
        booster = lgb.train({**base, "objective": "tweedie", "tweedie_variance_power": 1.5}, ds, rounds)
        return RevenueModel("tweedie", {"tweedie": booster})
    buys = y > 0
    buy = lgb.train({**base, "objective": "binary"}, lgb.Dataset(x, buys.astype(float), weight=weight), rounds)
    log_y = np.log(y[buys])
    w = None if weight is None else weight[buys]
    spend = lgb.train({**base, "objective": "regression"}, lgb.Dataset(x[buys], log_y, weight=w), rounds)
    residual = log_y - spend.predict(x[buys])
    return RevenueModel("hurdle", {"buy": buy, "spend": spend}, log_var=float(np.var(residual)))


def fit_revenue(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_valid: np.ndarray,
    y_valid: np.ndarray,
    params: dict[str, Any] | None = None,
    rounds: int = 300,
    weight: np.ndarray | None = None,
) -> tuple[RevenueModel, dict[str, dict[str, float]]]:
    """Fit each of :data:`FORMULATIONS` and keep the one with the higher validation Gini;
    returns it and every formulation's validation metrics."""
    params = params or {"learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50, "seed": 7}
    fitted, valid = {}, {}
    for f in FORMULATIONS:
        fitted[f] = _fit_one(f, np.asarray(x_train, float), np.asarray(y_train, float), params, rounds, weight)
        valid[f] = value_metrics(y_valid, fitted[f].predict(np.asarray(x_valid, float)))
    best = max(FORMULATIONS, key=lambda f: np.nan_to_num(valid[f]["gini"], nan=-1.0))
    return fitted[best], valid


def btyd_revenue(train: pd.DataFrame, test: pd.DataFrame, horizon_days: int, seed: int = 0) -> np.ndarray:
    """BG/NBD expected purchases in the horizon times Gamma-Gamma expected order value, for
    each ``test`` row, both fitted on ``train``'s latest snapshot's buyers (see :mod:`.btyd`)."""
    from propensity.models.btyd import BetaGeo, GammaGamma, fit_rows, rfm

    fit_on = fit_rows(train, seed)
    bg = BetaGeo.fit(*rfm(fit_on), penalizer=1e-4)
    orders = fit_on["orders_total"].to_numpy(float)
    mean_value = fit_on["revenue_total"].fillna(0).to_numpy(float) / orders
    gg = GammaGamma.fit(orders, mean_value, penalizer=1e-4)
    x, t_x, T = rfm(test)
    n = test["orders_total"].fillna(0).to_numpy(float)
    m = np.divide(test["revenue_total"].fillna(0).to_numpy(float), n, out=np.zeros_like(n), where=n > 0)
    return bg.expected_purchases(horizon_days, x, t_x, T) * gg.expected_spend(n, m)


def historic_revenue(test: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """The customer's revenue of the last 365 days, scaled to the horizon."""
    return test["revenue_365d"].fillna(0).to_numpy(float) * horizon_days / 365.0
