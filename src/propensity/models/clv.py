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

    def predict(self, x: Any) -> np.ndarray:
        if self.formulation == "tweedie":
            return np.asarray(self.boosters["tweedie"].predict(x), dtype=float)
        p = self.boosters["buy"].predict(x)
        spend = np.exp(self.boosters["spend"].predict(x) + self.log_var / 2)
        return np.asarray(p * spend, dtype=float)


def _fit_one(
    formulation: str,
    x: Any,
    y: np.ndarray,
    xv: Any,
    yv: np.ndarray,
    params: dict[str, Any],
    rounds: int,
    weight: np.ndarray | None,
    categorical: list[str] | str = "auto",
    early_stopping: int | None = None,
) -> RevenueModel:
    """One formulation; with ``early_stopping`` each booster stops on the validation rows by
    its own objective's loss (the hurdle's spend model on the validation buyers)."""
    import lightgbm as lgb

    base = {"verbose": -1, **params}
    base.pop("metric", None)  # each booster is stopped by its own objective's loss

    def boost(p: dict[str, Any], xt: Any, yt: np.ndarray, w: np.ndarray | None, xvv: Any, yvv: np.ndarray) -> Any:
        dtrain = lgb.Dataset(xt, yt, weight=w, categorical_feature=categorical, free_raw_data=False)
        if early_stopping is None or len(yvv) == 0:
            return lgb.train(p, dtrain, rounds)
        dvalid = lgb.Dataset(xvv, yvv, categorical_feature=categorical, reference=dtrain)
        booster = lgb.train(
            p, dtrain, rounds, valid_sets=[dvalid], callbacks=[lgb.early_stopping(early_stopping, verbose=False)]
        )
        if 0 < booster.best_iteration < booster.current_iteration():
            booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
        return booster

    def rows(frame: Any, keep: np.ndarray) -> Any:
        return frame[keep] if isinstance(frame, np.ndarray) else frame.loc[keep]

    if formulation == "tweedie":
        params_t = {**base, "objective": "tweedie", "tweedie_variance_power": 1.5}
        return RevenueModel("tweedie", {"tweedie": boost(params_t, x, y, weight, xv, yv)})
    buys, vbuys = y > 0, yv > 0
    buy = boost({**base, "objective": "binary"}, x, buys.astype(float), weight, xv, vbuys.astype(float))
    log_y = np.log(y[buys])
    w = None if weight is None else weight[buys]
    spend_params = {**base, "objective": "regression"}
    spend = boost(spend_params, rows(x, buys), log_y, w, rows(xv, vbuys), np.log(yv[vbuys]))
    residual = log_y - spend.predict(rows(x, buys))
    return RevenueModel("hurdle", {"buy": buy, "spend": spend}, log_var=float(np.var(residual)))


def fit_revenue(
    x_train: Any,
    y_train: np.ndarray,
    x_valid: Any,
    y_valid: np.ndarray,
    params: dict[str, Any] | None = None,
    rounds: int = 300,
    weight: np.ndarray | None = None,
    categorical: list[str] | str = "auto",
    early_stopping: int | None = None,
    formulations: tuple[str, ...] = FORMULATIONS,
) -> tuple[RevenueModel, dict[str, dict[str, float]]]:
    """Fit each of ``formulations`` and keep the one with the higher validation Gini;
    returns it and every formulation's validation metrics. ``x_*`` are float matrices or
    frames of numbers (categories already coded, named in ``categorical``)."""
    params = params or {"learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 50, "seed": 7}
    y_train, y_valid = np.asarray(y_train, float), np.asarray(y_valid, float)
    fitted, valid = {}, {}
    for f in formulations:
        fitted[f] = _fit_one(f, x_train, y_train, x_valid, y_valid, params, rounds, weight, categorical, early_stopping)
        valid[f] = value_metrics(y_valid, fitted[f].predict(x_valid))
    best = max(formulations, key=lambda f: np.nan_to_num(valid[f]["gini"], nan=-1.0))
    return fitted[best], valid


def btyd_revenue(train: pd.DataFrame, test: pd.DataFrame, horizon_days: int, seed: int = 0) -> np.ndarray:
    """BG/NBD expected purchases in the horizon times Gamma-Gamma expected order value, for
    each ``test`` row, both fitted on ``train``'s latest snapshot's buyers (see :mod:`.btyd`).

    A customer without an order gets 0: BTYD models the repeat purchases of buyers, and a
    practitioner's CLV table holds buyers only. Scoring browsers as one-time buyers at signup
    (what :func:`.btyd.rfm` does for P(alive)) gave every recent sign-up the population's mean
    spend, and the baseline's Gini on the demo shop fell from 0.73 to 0.23."""
    from propensity.models.btyd import BetaGeo, GammaGamma, fit_rows, rfm

    fit_on = fit_rows(train, seed)
    bg = BetaGeo.fit(*rfm(fit_on), penalizer=1e-4)
    orders = fit_on["orders_total"].to_numpy(float)
    mean_value = fit_on["revenue_total"].fillna(0).to_numpy(float) / orders
    gg = GammaGamma.fit(orders, mean_value, penalizer=1e-4)
    x, t_x, T = rfm(test)
    n = test["orders_total"].fillna(0).to_numpy(float)
    m = np.divide(test["revenue_total"].fillna(0).to_numpy(float), n, out=np.zeros_like(n), where=n > 0)
    return np.where(n > 0, bg.expected_purchases(horizon_days, x, t_x, T) * gg.expected_spend(n, m), 0.0)


def historic_revenue(test: pd.DataFrame, horizon_days: int) -> np.ndarray:
    """The customer's revenue of the last 365 days, scaled to the horizon."""
    return test["revenue_365d"].fillna(0).to_numpy(float) * horizon_days / 365.0


# intervals -------------------------------------------------------------------------------
#
# The pooled test set holds each customer once per test snapshot, so, as for AUC
# (:mod:`propensity.models.intervals`), resampling is by customer, and every score vector is
# judged on the same resamples, which makes the differences paired.


def _gini_in_order(y: np.ndarray, w: np.ndarray) -> float:
    """Area between the Lorenz curve of ``y`` (already in ranking order) and the diagonal, each
    row counted ``w`` times (a bootstrap multiplicity; 1 reproduces :func:`normalized_gini`'s)."""
    total_w, total_y = w.sum(), (w * y).sum()
    if total_w <= 0 or total_y <= 0:
        return float("nan")
    lorenz = np.cumsum(w * y) / total_y
    share = np.cumsum(w) / total_w
    return float((w * (lorenz - share)).sum() / total_w)


class _GiniReplicates:
    """Normalised Gini of several score vectors on one ``y``, per bootstrap weight vector: the
    orders are sorted once, so a replicate costs O(n) per vector."""

    def __init__(self, y: np.ndarray, scores: dict[str, np.ndarray]) -> None:
        self.y = np.asarray(y, dtype=float)
        self.orders = {k: np.argsort(-np.asarray(v, dtype=float), kind="stable") for k, v in scores.items()}
        self.perfect = np.argsort(-self.y, kind="stable")

    def __call__(self, w: np.ndarray) -> dict[str, float]:
        w = np.asarray(w, dtype=float)
        best = _gini_in_order(self.y[self.perfect], w[self.perfect])
        return {k: _gini_in_order(self.y[o], w[o]) / best if best > 0 else float("nan") for k, o in self.orders.items()}


def _replicates(
    y: np.ndarray, scores: dict[str, np.ndarray], groups: np.ndarray | None, n_boot: int, seed: int
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    from propensity.models.intervals import _group_codes, _replicate_counts

    fn = _GiniReplicates(y, scores)
    estimate = fn(np.ones(len(fn.y)))
    values = {k: np.empty(n_boot) for k in scores}
    codes = _group_codes(groups, len(fn.y))
    for b, w in enumerate(_replicate_counts(codes, len(fn.y), n_boot, np.random.default_rng(seed))):
        for k, v in fn(w).items():
            values[k][b] = v
    return estimate, values


def _interval(estimate: float, values: np.ndarray, level: float = 0.95) -> dict[str, float]:
    defined = values[~np.isnan(values)]
    if not len(defined):
        return {"estimate": round(estimate, 4), "low": float("nan"), "high": float("nan")}
    low, high = np.quantile(defined, [(1 - level) / 2, (1 + level) / 2])
    return {"estimate": round(float(estimate), 4), "low": round(float(low), 4), "high": round(float(high), 4)}


def gini_intervals(
    y: np.ndarray,
    pred: np.ndarray,
    baselines: dict[str, np.ndarray],
    groups: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The model's normalised Gini with its 95% customer-bootstrap interval, and per baseline
    its Gini and the paired difference (model minus baseline): the value task's counterpart of
    :func:`propensity.models.intervals.evaluate_with_intervals`."""
    estimate, values = _replicates(np.asarray(y, float), {"model": pred, **baselines}, groups, n_boot, seed)
    out: dict[str, Any] = {
        "n_rows": len(y),
        "n_buyers": int((np.asarray(y) > 0).sum()),
        "model": {"gini": _interval(estimate["model"], values["model"])},
        "baselines": {},
    }
    for b in baselines:
        diff = _interval(estimate["model"] - estimate[b], values["model"] - values[b])
        out["baselines"][b] = {"gini": _interval(estimate[b], values[b]), "gini_diff": diff}
    return out


def paired_gini_difference(
    y: np.ndarray, a: np.ndarray, b: np.ndarray, groups: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Gini of ``a`` minus Gini of ``b`` on the same customer resamples, ``{estimate, low, high}``
    (a value task's champion gate)."""
    estimate, values = _replicates(np.asarray(y, float), {"a": a, "b": b}, groups, n_boot, seed)
    return _interval(estimate["a"] - estimate["b"], values["a"] - values["b"])
