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
* **log** (:func:`log_value_task`): the revenue gains (Lorenz) and calibration plots, the
  pyfunc, and the gate on Gini (the champion scored on the same test, paired interval).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np

from propensity.features.catalogue import categorical_features, feature_names
from propensity.features.training import WEIGHT
from propensity.models import plots
from propensity.models.clv import (
    btyd_revenue,
    fit_revenue,
    gini_intervals,
    historic_revenue,
    normalized_gini,
    value_metrics,
)
from propensity.models.model import Calibrator, CategoryEncoder, ValueModel, model_input

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
    from propensity.models.train import lgb_params

    m = trainer.settings.models
    feats = feature_names()
    cats = [c for c in categorical_features() if c in feats]
    x_train, x_valid = model_input(fr.train, feats, set(cats)), model_input(fr.valid, feats, set(cats))
    encoder = CategoryEncoder.fit(x_train, cats)
    xt, xv = encoder.transform(x_train).astype("float64"), encoder.transform(x_valid).astype("float64")
    y_train, y_valid = fr.train["label"].to_numpy(float), fr.valid["label"].to_numpy(float)
    if not (y_train > 0).any() or not (y_valid > 0).any():
        raise ValueError("training and validation snapshots need customers with revenue in the horizon")
    params = {k: v for k, v in lgb_params(m).items() if k not in ("objective", "metric")}
    weight = fr.train[WEIGHT].to_numpy() if WEIGHT in fr.train.columns else None
    fitted, by_formulation = fit_revenue(
        xt,
        y_train,
        xv,
        y_valid,
        params,
        rounds=m.max_rounds,
        weight=weight,
        categorical=cats,
        early_stopping=m.early_stopping_rounds,
    )
    primary = fitted.boosters["tweedie" if fitted.formulation == "tweedie" else "buy"]
    spend = fitted.boosters.get("spend")
    model = ValueModel(primary, Calibrator("identity"), encoder, feats, spend=spend, log_var=fitted.log_var)
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
    valid_pred = model.predict_proba(model_input(fr.valid, model.features))
    valid_gini = value_metrics(fr.valid["label"].to_numpy(float), valid_pred)["gini"]
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


def log_value_task(
    trainer: Trainer,
    r: TaskResult,
    fr: TaskFrames,
    base_scores: dict[str, np.ndarray],
    register: bool,
    promote: bool,
) -> None:
    """Log a fitted value task to the active (child) run; register and gate it on Gini."""
    from mlflow.models import infer_signature

    from propensity.models.pyfunc import PropensityPyfunc
    from propensity.models.registry import gate_and_alias
    from propensity.models.tracking import code_version, pip_requirements
    from propensity.models.train import UNCHANGED_TAG, _dataset, plan_params, run_metrics

    model = r.model
    assert isinstance(model, ValueModel) and r.test_scores is not None
    s = trainer.settings
    fp = r.fingerprint or trainer.fingerprint(r.task, fr, model.features, list(model.encoder.mapping))
    r.fingerprint = fp
    mlflow.set_tags({**fp.tags(), UNCHANGED_TAG: "false"})
    mlflow.log_params(
        {
            **plan_params(r.task, fr.plan),
            "label": "revenue",
            "formulation": model.formulation,
            "n_features": len(model.features),
            "best_iteration": r.best_iteration,
            **{k: getattr(trainer, "last_params", {}).get(k) for k in ("learning_rate", "num_leaves", "seed")},
        }
    )
    mlflow.log_metrics(run_metrics(r))
    mlflow.log_dict({"features": model.features, "categorical": list(model.encoder.mapping)}, "features.json")
    from propensity.monitoring.monitor import training_reference

    mlflow.log_dict(training_reference(s, model, fr, r.test_scores), "reference.json")  # drift monitoring
    mlflow.log_input(_dataset(fr.train, f"{s.lake_uri}/features", f"{r.task}-train"), context="training")
    test_source = f"{s.lake_uri}/features/snapshot={fr.plan.test.isoformat()}"
    mlflow.log_input(_dataset(fr.test, test_source, f"{r.task}-test"), context="testing")
    y = fr.test["label"].to_numpy(float)
    x_test = model_input(fr.test, model.features)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        plots.lorenz(y, {"model": r.test_scores, **base_scores}, d / "revenue_gains.png")
        plots.calibration(y, r.test_scores, d / "calibration.png", unit=("predicted revenue", "revenue"))
        gain = model.booster.feature_importance("gain")
        plots.importance(model.features, gain, f"gain importance ({model.formulation})", d / "importance_gain.png")
        for f in d.glob("*.png"):
            mlflow.log_artifact(str(f), "plots")
        example = x_test.head(5)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=PropensityPyfunc(),
            artifacts=model.save(d / "model"),
            signature=infer_signature(example, model.predict_proba(example)),
            input_example=example,
            pip_requirements=pip_requirements("lightgbm", "scikit-learn"),
            registered_model_name=f"propensity-{r.task}" if register else None,
        )
    if not register:
        return
    r.model_version = str(info.registered_model_version)
    r.decision = gate_and_alias(
        s,
        r.task,
        r.model_version,
        r.metrics["gini"],
        x_test,
        y,
        tags={"snapshot": fr.plan.test.isoformat(), "code_version": code_version()},
        promote=promote,
        fingerprint=fp,
        challenger_scores=r.test_scores,
        groups=fr.test["customer_id"].to_numpy(),
        measure=MEASURE,
    )
    r.promoted = bool(r.decision["promoted"])
    mlflow.log_dict(r.decision, "comparison.json")


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
