"""A customer-value task (``label: revenue``; ``clv`` by default) inside the :class:`~propensity.models.train.Trainer`.

The task shares everything with the propensity tasks that does not depend on the label's
kind: the out-of-time snapshot plan, sampling, fingerprints, the parent and child runs, the
registry (``propensity-<task>``) and the champion gate. What differs is here:

* **fit** (:func:`fit_value`): the :mod:`~propensity.models.clv` formulations (hurdle and
  Tweedie), each boosted with early stopping on the validation snapshots; the one with the
  higher validation Gini is served, as a :class:`~propensity.models.model.ValueModel` whose
  prediction is the expected net revenue over the horizon;
* **evaluate** (:func:`evaluate_value`): normalised Gini, Spearman, top-decile capture and
  MAE on the pooled test, against the BG/NBD x Gamma-Gamma and historic-revenue baselines,
  with customer-bootstrap intervals and paired differences;
* **log** (:func:`value_params`, :func:`value_plots`): its run parameters and the revenue
  gains (Lorenz) and calibration plots; :meth:`~propensity.models.train.Trainer.log_task`
  logs them with the pyfunc like any task's and gates on Gini (the champion scored on the
  same test, paired interval).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from propensity.models import plots
from propensity.models.clv import (
    btyd_revenue,
    fit_revenue,
    gini_intervals,
    historic_revenue,
    normalized_gini,
    value_metrics,
)
from propensity.models.model import Calibrator, ValueModel, model_input

if TYPE_CHECKING:
    from propensity.models.train import TaskFrames, TaskResult, Trainer

log = logging.getLogger(__name__)

#: a value task's baselines (``baseline_<name>_gini`` metrics): BG/NBD expected purchases x
#: Gamma-Gamma expected spend, and the last year's revenue scaled to the horizon
VALUE_BASELINES = ("btyd", "historic")
#: what a value task is judged and gated by
MEASURE = "gini"


def value_baselines(fr: TaskFrames, seed: int) -> dict[str, np.ndarray]:
    """The baselines' expected revenue of each test row; BG/NBD only when the training rows
    hold a repeat buyer to fit on (as for the propensity tasks' BTYD baseline)."""
    h = fr.plan.horizon_days
    out = {"historic": historic_revenue(fr.test, h)}
    if (fr.train["orders_total"].fillna(0) > 1).any():
        out["btyd"] = btyd_revenue(fr.train, fr.test, h, seed)
    return {k: out[k] for k in VALUE_BASELINES if k in out}


def fit_value(trainer: Trainer, fr: TaskFrames) -> tuple[ValueModel, int, dict[str, dict[str, float]]]:
    """The served value model, its number of trees, and each formulation's validation metrics."""
    from propensity.models.train import fit_inputs, lgb_params

    m = trainer.settings.models
    inp = fit_inputs(fr)
    y_train, y_valid = fr.train["label"].to_numpy(float), fr.valid["label"].to_numpy(float)
    if not (y_train > 0).any() or not (y_valid > 0).any():
        raise ValueError("training and validation snapshots need customers with revenue in the horizon")
    params = {k: v for k, v in lgb_params(m).items() if k not in ("objective", "metric")}
    fitted, by_formulation = fit_revenue(
        inp.xt,
        y_train,
        inp.xv,
        y_valid,
        params,
        rounds=m.max_rounds,
        weight=inp.weight,
        categorical=inp.categorical,
        early_stopping=m.early_stopping_rounds,
    )
    primary = fitted.boosters["tweedie" if fitted.formulation == "tweedie" else "buy"]
    spend = fitted.boosters.get("spend")
    model = ValueModel(primary, Calibrator("identity"), inp.encoder, inp.features, spend=spend, log_var=fitted.log_var)
    trainer.last_params = params
    log.info(
        "value model: %s chosen on validation Gini (%s)",
        fitted.formulation,
        ", ".join(f"{f} {v['gini']:.4f}" for f, v in by_formulation.items()),
    )
    return model, primary.current_iteration(), by_formulation


def evaluate_value(trainer: Trainer, task: str, fr: TaskFrames, t0: float) -> tuple[TaskResult, dict[str, np.ndarray]]:
    """Fit on ``fr`` and evaluate on its pooled test against the value baselines."""
    from propensity.models.train import TaskResult

    s = trainer.settings
    model, best, by_formulation = fit_value(trainer, fr)
    y = fr.test["label"].to_numpy(float)
    p = model.predict_proba(model_input(fr.test, model.features))
    metrics = value_metrics(y, p)
    metrics.update({f"valid_gini_{f}": v["gini"] for f, v in by_formulation.items()})
    valid_gini = by_formulation[model.formulation]["gini"]  # the served formulation's, on the same rows
    base_scores = value_baselines(fr, s.models.seed)
    baseline = {k: value_metrics(y, v)["gini"] for k, v in base_scores.items()}
    groups = fr.test["customer_id"].to_numpy()
    intervals = gini_intervals(y, p, base_scores, groups, n_boot=s.models.bootstrap, seed=s.models.seed)
    result = TaskResult.fitted(
        task,
        fr,
        t0,
        model,
        p,
        metrics=metrics,
        valid_auc=valid_gini,
        baseline_auc=baseline,
        oracle_auc=oracle_gini(s, fr),
        best_iteration=best,
        intervals=intervals,
        measure=MEASURE,
        formulation=model.formulation,
    )
    return result, base_scores


def oracle_gini(settings: Any, fr: TaskFrames) -> float | None:
    """On simulated data only, with ``models.value_oracle_paths``: the Gini of the truth store's
    expected revenue of each test row (:meth:`~propensity.simulate.oracle.Truth.expected_revenue`),
    the ceiling of any model."""
    paths = settings.models.value_oracle_paths
    if not paths or not (settings.truth_dir / "meta.json").exists():
        return None
    from propensity.simulate.oracle import Truth

    expected = Truth.read(settings.truth_dir).row_expected_revenue(fr.test, fr.plan.horizon_days, paths)
    known = ~np.isnan(expected)
    if known.sum() < 0.9 * len(fr.test):  # a different shop than the one simulated
        return None
    return normalized_gini(fr.test["label"].to_numpy(float)[known], expected[known])


def value_params(trainer: Trainer, r: TaskResult) -> dict[str, Any]:
    """A value task's run parameters beyond the plan's (:meth:`~propensity.models.train.Trainer.log_task`)."""
    assert isinstance(r.model, ValueModel)
    return {
        "label": "revenue",
        "formulation": r.model.formulation,
        **{k: getattr(trainer, "last_params", {}).get(k) for k in ("learning_rate", "num_leaves", "seed")},
    }


def value_plots(r: TaskResult, y: np.ndarray, x_test: Any, base_scores: dict[str, np.ndarray], d: Path) -> None:
    """A value task's run plots, written to ``d``: revenue gains (Lorenz curves of the model, the
    baselines and the perfect order), calibration by decile, and gain importance."""
    model = r.model
    assert isinstance(model, ValueModel) and r.test_scores is not None
    plots.lorenz(y, {"model": r.test_scores, **base_scores}, d / "revenue_gains.png")
    plots.calibration(y, r.test_scores, d / "calibration.png", unit=("predicted revenue", "revenue"))
    gain = model.booster.feature_importance("gain")
    plots.importance(model.features, gain, f"gain importance ({model.formulation})", d / "importance_gain.png")


def value_report(r: TaskResult) -> dict[str, Any]:
    """A value task's entry in the training report (``tasks.<task>``)."""
    fp = r.fingerprint
    return {
        "label": "revenue",
        "formulation": r.formulation,
        "test_gini": r.metrics.get("gini"),
        "test_spearman": r.metrics.get("spearman"),
        "top_decile_capture": r.metrics.get("top_decile_capture"),
        "test_mae": r.metrics.get("mae"),
        "mean_predicted": r.metrics.get("mean_predicted"),
        "mean_actual": r.metrics.get("mean_actual"),
        "valid_gini": r.valid_auc,
        "baseline_gini": r.baseline_auc,
        "oracle_gini": r.oracle_auc,
        "intervals": r.intervals,
        "n_train": r.n_train,
        "n_test": r.n_test,
        "model_version": r.model_version,
        "promoted": r.promoted,
        "unchanged": r.unchanged,
        "outcome": r.outcome,
        "data_digest": fp.data_digest if fp is not None else None,
        "params_digest": fp.params_digest if fp is not None else None,
        "train_seconds": round(r.seconds, 2),
    }
