"""Uplift: the effect of a contact on each customer, learnt from treatment and control outcomes.

Propensity ranks who will buy; uplift ranks who buys *because* of the contact. The data are
past campaigns' members with a random treatment/control split: the control groups of our
audiences (a hash of id, audience and date decides the group, so within an audience the split
is random with a known treatment share) and exploration slices of the eligible base.

Learners are econml's meta-learners with LightGBM components (econml resolves with our pins
and adds about 260 MB; causalml would add about 1 GB, xgboost and a CUDA library included):

* ``t``: the two-model (T-)learner, one outcome model per arm, effect = mu1(x) - mu0(x);
* ``x``: the X-learner (Kuenzel et al., 2019): the two outcome models impute each member's
  effect from the other arm's model, two effect models fit those, and the treatment share
  ``e`` weighs them (``e * tau0 + (1 - e) * tau1``), which helps when one arm is much
  smaller than the other (a 10% control group);
* ``dr``: the doubly robust learner (Kennedy, 2020; econml's ``DRLearner``), cross-fitted: an
  outcome model of features and arm gives each member a doubly robust pseudo-effect, weighted
  by the inverse of the member's known chance of its arm (:class:`KnownPropensity`: half for
  an exploration slice, ``1 - control_fraction`` for a ranked audience), and one final model
  fits the pseudo-effects. Pooling members drawn at 50% and at 90% is exactly what the known
  probabilities are for.

The metrics below are our own (thirty lines of NumPy, tested against hand-worked cases):
econml has no Qini or AUUC function, and scikit-uplift, which has them, was last released
in 2022 and imports a scikit-learn helper that scikit-learn 1.10 removes.

Metrics, all on members ranked by predicted effect (best first), counting ties as one step:

* the Qini curve ``Q(k) = Y_T(k) - Y_C(k) * N_T(k) / N_C(k)``: incremental outcomes among
  the top ``k`` (Radcliffe, 2007), over the whole population's count (a ratio whose arm is
  still empty counts 0, as in scikit-uplift);
* the Qini coefficient: the area between that curve and the random-targeting line, as a
  share of the population (so a model that ranks no better than chance scores about 0);
* AUUC: the same area under the uplift curve ``(Y_T/N_T - Y_C/N_C)(k) * (N_T + N_C)(k)``;
* uplift at the top ``s``: the treated rate minus the control rate among the top share ``s``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

META_LEARNERS = ("t", "x", "dr")


# --- metrics ---------------------------------------------------------------------------------


def _ranked_cumulative(
    y: np.ndarray, treated: np.ndarray, score: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (treated outcomes, treated count, control outcomes, control count) at the end
    of each group of tied scores, best score first; each array starts with 0 (nobody targeted)."""
    y = np.asarray(y, dtype=float)
    t = np.asarray(treated, dtype=bool)
    s = np.asarray(score, dtype=float)
    if not (len(y) == len(t) == len(s)):
        raise ValueError("uplift metrics: outcomes, treatment flags and scores differ in length")
    if not t.any() or t.all():
        raise ValueError("uplift metrics need both treated and control members")
    order = np.argsort(-s, kind="stable")
    y, t, s = y[order], t[order], s[order]
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    cols = [np.cumsum(y * t), np.cumsum(t), np.cumsum(y * ~t), np.cumsum(~t)]
    return tuple(np.r_[0.0, c[ends].astype(float)] for c in cols)  # type: ignore[return-value]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 0 where ``den`` is 0 (an arm nobody from the top ``k`` is in yet)."""
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def qini_curve(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of members targeted, incremental outcomes per member of the whole population)."""
    yt, nt, yc, nc = _ranked_cumulative(y, treated, score)
    q = yt - _ratio(yc * nt, nc)
    n = nt[-1] + nc[-1]
    return (nt + nc) / n, q / n


def uplift_curve(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(share of members targeted, uplift among them times their count, per member of the population)."""
    yt, nt, yc, nc = _ranked_cumulative(y, treated, score)
    u = (_ratio(yt, nt) - _ratio(yc, nc)) * (nt + nc)
    n = nt[-1] + nc[-1]
    return (nt + nc) / n, u / n


def _area_over_random(x: np.ndarray, curve: np.ndarray) -> float:
    """Area between ``curve`` and the straight line from nobody to everybody targeted."""
    random = x * curve[-1]
    return float(np.trapezoid(curve - random, x))


def qini_coefficient(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> float:
    return _area_over_random(*qini_curve(y, treated, score))


def auuc(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> float:
    return _area_over_random(*uplift_curve(y, treated, score))


def uplift_at(y: np.ndarray, treated: np.ndarray, score: np.ndarray, share: float) -> float | None:
    """Treated minus control outcome rate among the top ``share`` of members by score (None
    when that slice lacks one of the arms)."""
    if not 0 < share <= 1:
        raise ValueError(f"uplift_at: share must be in (0, 1], got {share}")
    y = np.asarray(y, dtype=float)
    t = np.asarray(treated, dtype=bool)
    top = np.argsort(-np.asarray(score, dtype=float), kind="stable")[: max(1, round(share * len(y)))]
    yt, yc = y[top][t[top]], y[top][~t[top]]
    if not len(yt) or not len(yc):
        return None
    return float(yt.mean() - yc.mean())


def uplift_metrics(y: np.ndarray, treated: np.ndarray, score: np.ndarray) -> dict[str, float | None]:
    """The figures a run logs: Qini coefficient, AUUC and the uplift at the top 10/20/30%."""
    out: dict[str, float | None] = {"qini": qini_coefficient(y, treated, score), "auuc": auuc(y, treated, score)}
    for pct in (10, 20, 30):
        out[f"uplift_at_{pct}"] = uplift_at(y, treated, score, pct / 100)
    return out


# --- learners --------------------------------------------------------------------------------


def _booster(params: dict[str, Any], rounds: int, binary: bool) -> Any:
    """A LightGBM model in scikit-learn's interface, as econml's learners take them. A 0/1
    outcome is fitted with the cross-entropy objective: predictions are then probabilities,
    so the learners' differences are changes in probability."""
    from lightgbm import LGBMRegressor

    p = {k: v for k, v in params.items() if k not in ("objective", "metric", "is_unbalance", "scale_pos_weight")}
    return LGBMRegressor(n_estimators=rounds, objective="cross_entropy" if binary else "regression", verbose=-1, **p)


def feature_matrix(frame: Any, features: list[str]) -> np.ndarray:
    """The float matrix the learners take: ``features`` of a pandas frame, numbers as float64
    (a value that is not a number, or is missing, as NaN)."""
    import pandas as pd

    return frame[features].apply(pd.to_numeric, errors="coerce").astype("float64").to_numpy()


def _is_binary(y: np.ndarray) -> bool:
    return bool(np.isin(np.unique(y), (0.0, 1.0)).all())


class KnownPropensity:
    """A scikit-learn classifier that knows the design: P(treated) is the last column of its
    input (econml hands the propensity model ``[X, W]``, and ``W`` is each member's
    ``p_treatment``), clipped to [0.01, 0.99]. Nothing is learnt: the arms were drawn at random."""

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {}

    def set_params(self, **params: Any) -> KnownPropensity:
        return self

    def fit(self, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> KnownPropensity:
        self.classes_ = np.array([0, 1])
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(x, dtype=float)[:, -1], 0.01, 0.99)
        return np.column_stack([1.0 - p, p])

    def predict(self, x: np.ndarray) -> np.ndarray:
        return (self.predict_proba(x)[:, 1] > 0.5).astype(int)


@dataclass
class UpliftModel:
    """A fitted meta-learner: :meth:`effect` is the predicted individual treatment effect
    (for a 0/1 outcome, the change in its probability; for revenue, in its expectation)."""

    learner: str
    estimator: Any
    binary: bool = True

    def effect(self, x: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*contains NaN. Causal identification", category=UserWarning)
            return np.asarray(self.estimator.effect(np.asarray(x, dtype=float)), dtype=float).ravel()


@dataclass
class Bagged:
    """Several fitted meta-learners whose effects are averaged (``uplift.bags``)."""

    fits: list[Any]

    def effect(self, x: np.ndarray) -> np.ndarray:
        return np.mean([np.asarray(f.effect(x), dtype=float).ravel() for f in self.fits], axis=0)


def fit_bagged(
    x: np.ndarray,
    treated: np.ndarray,
    y: np.ndarray,
    learner: str,
    params: dict[str, Any],
    rounds: int,
    propensity: np.ndarray | None,
    bags: int,
    seed: int,
) -> UpliftModel:
    """:func:`fit_uplift` once (``bags`` 1) or on ``bags`` bootstrap resamples of the members, averaged."""
    if bags <= 1:
        return fit_uplift(x, treated, y, learner, params, rounds, propensity)
    rng = np.random.default_rng(seed)
    fits = []
    for b in range(bags):
        i = rng.integers(0, len(y), len(y))
        e = None if propensity is None else np.asarray(propensity)[i]
        boot = {**params, "random_state": int(params.get("random_state", 0)) + b}
        fits.append(fit_uplift(np.asarray(x)[i], np.asarray(treated)[i], np.asarray(y)[i], learner, boot, rounds, e))
    return UpliftModel(learner, Bagged([f.estimator for f in fits]), binary=fits[0].binary)


def fit_uplift(
    x: np.ndarray,
    treated: np.ndarray,
    y: np.ndarray,
    learner: str = "x",
    params: dict[str, Any] | None = None,
    rounds: int = 200,
    propensity: np.ndarray | None = None,
) -> UpliftModel:
    """Fit a ``learner`` (``t`` or ``x``, econml's :class:`~econml.metalearners.TLearner` and
    :class:`~econml.metalearners.XLearner`) with LightGBM components on members' features
    ``x``, arms ``treated`` and outcomes ``y`` (0/1 conversions or revenue).

    ``rounds`` boosting rounds per component: the effect is never observed for one member,
    so no component can stop early on it; the uplift trainer picks the rounds on the Qini of
    a validation split instead. The X-learner's propensity is the design's treatment share
    (a prior, not a model of ``x``): within an audience or an exploration slice the arms are
    drawn at random, so nothing in ``x`` predicts them. The DR-learner uses each member's own
    ``propensity`` (P(treated) by design; default: the treatment share)."""
    from econml.metalearners import TLearner, XLearner
    from sklearn.dummy import DummyClassifier

    if learner not in META_LEARNERS:
        raise ValueError(f"unknown uplift learner {learner!r}; known: {list(META_LEARNERS)}")
    x = np.asarray(x, dtype=float)
    t = np.asarray(treated, dtype=bool)
    y = np.asarray(y, dtype=float)
    if t.all() or not t.any():
        raise ValueError("uplift training needs both treated and control members")
    params = dict(params or {"learning_rate": 0.05, "num_leaves": 15, "min_child_samples": 50, "random_state": 7})
    binary = _is_binary(y)
    if learner == "dr":
        from econml.dr import DRLearner

        e = np.full(len(t), t.mean()) if propensity is None else np.asarray(propensity, dtype=float)
        e = np.where(np.isnan(e), t.mean(), e)
        final = {**params, "min_child_samples": 4 * int(params.get("min_child_samples", 50))}
        est = DRLearner(
            model_propensity=KnownPropensity(),
            model_regression=_booster(params, rounds, binary),
            model_final=_booster(final, rounds, False),
            cv=2,
            random_state=int(params.get("random_state", 0)),
            allow_missing=True,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*contains NaN. Causal identification", category=UserWarning)
            est.fit(y, t.astype(int), X=x, W=e.reshape(-1, 1))
        return UpliftModel(learner, est, binary=binary)
    if learner == "t":
        est = TLearner(models=_booster(params, rounds, binary), allow_missing=True)
    else:
        est = XLearner(
            models=_booster(params, rounds, binary),
            cate_models=_booster(params, rounds, False),
            propensity_model=DummyClassifier(strategy="prior"),
            allow_missing=True,  # LightGBM routes missing values itself (a customer with no orders yet)
        )
    with warnings.catch_warnings():
        # econml warns that missing values may break identification; here the arms are drawn
        # at random, whatever a feature's value or absence (a customer with no orders yet)
        warnings.filterwarnings("ignore", message=".*contains NaN. Causal identification", category=UserWarning)
        est.fit(y, t.astype(int), X=x)
    return UpliftModel(learner, est, binary=binary)
