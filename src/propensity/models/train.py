"""Training: per task, out-of-time snapshots -> LightGBM -> calibration -> evaluation -> MLflow.

For each task the snapshot plan (:mod:`propensity.features.training`) gives stacked
training snapshots, one validation snapshot (early stopping and calibration) and the
latest fully-labelled snapshot as the test. The same run fits two baselines (logistic
regression on scaled RFM features, a recency/frequency heuristic) and, on simulated
data, reads the oracle from the truth store to report the gap to the best possible AUC.
Every task is a nested MLflow run under one parent run; the model is registered and
gated (:mod:`propensity.models.registry`).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import polars as pl

from propensity.config import ModelConfig, Settings
from propensity.features.catalogue import categorical_features, feature_names
from propensity.features.snapshot import Snapshot, SnapshotBuilder
from propensity.features.training import SnapshotPlan, plan_snapshots, stack
from propensity.models import plots
from propensity.models.metrics import evaluate, group_auc, safe_auc
from propensity.models.model import Calibrator, CategoryEncoder, PropensityModel, PropensityPyfunc, model_input
from propensity.models.registry import gate_and_alias
from propensity.models.tracking import code_version, configure

log = logging.getLogger(__name__)

RFM_BASELINE = [
    "recency_days",
    "orders_30d",
    "orders_90d",
    "orders_365d",
    "revenue_30d",
    "revenue_90d",
    "revenue_365d",
    "tenure_days",
    "aov_365d",
    "ipi_mean_days",
]


@dataclass
class TaskFrames:
    plan: SnapshotPlan
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame


@dataclass
class TaskResult:
    task: str
    metrics: dict[str, float]
    valid_auc: float | None
    baseline_auc: dict[str, float | None]
    oracle_auc: float | None
    n_train: int
    n_valid: int
    n_test: int
    best_iteration: int
    seconds: float
    model: PropensityModel
    test_scores: np.ndarray
    run_id: str | None = None
    model_version: str | None = None
    promoted: bool = False
    decision: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "test_auc": self.metrics["auc"],
            "test_pr_auc": self.metrics["pr_auc"],
            "ece": self.metrics["ece"],
            "baseline_auc": self.baseline_auc,
            "oracle_auc": self.oracle_auc,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "model_version": self.model_version,
            "promoted": self.promoted,
            "train_seconds": round(self.seconds, 2),
        }


def heuristic_score(df: pd.DataFrame, label: str) -> np.ndarray:
    """Recency/frequency rule of thumb: recent and frequent customers buy (and do not churn)."""
    rec = np.fmin(df["recency_days"].fillna(9999).to_numpy(), df["days_since_last_session"].fillna(9999).to_numpy())
    freq = df["orders_365d"].fillna(0).to_numpy() + df["sessions_90d"].fillna(0).to_numpy() / 10.0
    s = (1.0 + freq) / (1.0 + rec / 30.0)
    return -s if label == "inactive" else s


def logreg_baseline(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def prep(df: pd.DataFrame) -> np.ndarray:
        x = df[RFM_BASELINE].astype(float).copy()
        x["recency_days"] = x["recency_days"].fillna(1000.0)
        x["ipi_mean_days"] = x["ipi_mean_days"].fillna(1000.0)
        return x.fillna(0.0).to_numpy()

    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    pipe.fit(prep(train), train["label"].to_numpy())
    return pipe.predict_proba(prep(test))[:, 1]


def lgb_params(m: ModelConfig, y_train: np.ndarray) -> dict[str, Any]:
    """LightGBM parameters of a training run: the configured model, deterministic, imbalance-aware."""
    pos = max(int(np.sum(y_train)), 1)
    return {
        "objective": "binary",
        "metric": "auc",
        "learning_rate": m.learning_rate,
        "num_leaves": m.num_leaves,
        "min_data_in_leaf": m.min_data_in_leaf,
        "feature_fraction": m.feature_fraction,
        "bagging_fraction": m.bagging_fraction,
        "bagging_freq": 1,
        "lambda_l2": m.lambda_l2,
        # imbalance: moderate up-weighting of positives; calibration restores probabilities
        "scale_pos_weight": float(np.sqrt((len(y_train) - pos) / pos)),
        "seed": m.seed,
        "deterministic": True,
        "force_row_wise": True,
        "feature_pre_filter": False,  # lets tuning vary min_data_in_leaf on one Dataset
        "num_threads": m.threads,
        "verbosity": -1,
    }


def train_booster(params: dict[str, Any], dtrain: lgb.Dataset, dvalid: lgb.Dataset, m: ModelConfig) -> lgb.Booster:
    """Boost up to ``max_rounds``, stopping early on the validation snapshot."""
    return lgb.train(
        params,
        dtrain,
        num_boost_round=m.max_rounds,
        valid_sets=[dvalid],
        callbacks=[lgb.early_stopping(m.early_stopping_rounds, verbose=False)],
    )


class Trainer:
    def __init__(
        self, settings: Settings, builder: SnapshotBuilder | None = None, snapshots: dict[date, Snapshot] | None = None
    ) -> None:
        self.settings = settings
        self.builder = builder or SnapshotBuilder(settings)
        self.snapshots: dict[date, Snapshot] = dict(snapshots or {})

    # data ---------------------------------------------------------------------------------

    def plans(self, tasks: list[str], as_of: date | None) -> dict[str, SnapshotPlan]:
        first, last = self.builder.data.start, self.builder.observed_until
        if first is None or last is None:
            raise ValueError("the clean zone has no orders or events: run collect and validate first")
        return {
            n: plan_snapshots(n, self.settings.tasks[n], first.date(), last, self.settings.features, as_of)
            for n in tasks
        }

    def snapshot(self, d: date, tasks: list[str]) -> Snapshot:
        if d not in self.snapshots:
            self.snapshots[d] = self.builder.build(d, tasks)
        return self.snapshots[d]

    def frames(self, task: str, plan: SnapshotPlan, tasks: list[str]) -> TaskFrames:
        def block(dates: list[date], with_profile: bool = False) -> pd.DataFrame:
            snaps = [self.snapshot(d, tasks) for d in dates]
            df = stack(snaps, task)
            if with_profile:
                prof = pl.concat([s.profiles.select("customer_id", "lifecycle_stage") for s in snaps])
                df = df.join(prof, on="customer_id", how="left")
            return df.to_pandas()

        train, test = block(list(plan.train)), block([plan.test], True)
        if plan.valid is not None:
            return TaskFrames(plan, train, block([plan.valid]), test)
        held = train["customer_id"].map(lambda c: zlib.crc32(str(c).encode()) % 5 == 0).to_numpy()
        return TaskFrames(plan, train[~held].reset_index(drop=True), train[held].reset_index(drop=True), test)

    # model --------------------------------------------------------------------------------

    def fit(
        self, fr: TaskFrames, features: list[str] | None = None, categorical: list[str] | None = None
    ) -> tuple[PropensityModel, int]:
        """Fit booster + calibrator; ``features``/``categorical`` default to the feature catalogue."""
        m = self.settings.models
        feats = features or feature_names()
        cats = [c for c in (categorical if categorical is not None else categorical_features()) if c in feats]
        x_train, x_valid = model_input(fr.train, feats, set(cats)), model_input(fr.valid, feats, set(cats))
        encoder = CategoryEncoder.fit(x_train, cats)
        y_train, y_valid = fr.train["label"].to_numpy(), fr.valid["label"].to_numpy()
        if len(np.unique(y_train)) < 2 or len(np.unique(y_valid)) < 2:
            raise ValueError("training and validation snapshots need both positive and negative labels")
        params = lgb_params(m, y_train)
        xt, xv = encoder.transform(x_train).astype("float64"), encoder.transform(x_valid).astype("float64")
        dtrain = lgb.Dataset(xt, y_train, categorical_feature=cats, free_raw_data=False)
        dvalid = lgb.Dataset(xv, y_valid, categorical_feature=cats, reference=dtrain)
        if m.tuning_trials > 0:
            params.update(
                tune(
                    params,
                    dtrain,
                    dvalid,
                    m.tuning_trials,
                    m.tuning_seconds,
                    m.max_rounds,
                    m.early_stopping_rounds,
                    m.seed,
                )
            )
        self.last_params = params
        booster = train_booster(params, dtrain, dvalid, m)
        raw_valid = booster.predict(xv, num_iteration=booster.best_iteration)
        calibrator = Calibrator.fit(raw_valid, y_valid, m.calibration)
        booster = booster if booster.best_iteration <= 0 else _truncate(booster)
        return PropensityModel(booster, calibrator, encoder, feats), booster.current_iteration()

    # evaluation ---------------------------------------------------------------------------

    def oracle_auc(self, task: str, plan: SnapshotPlan, test: pd.DataFrame) -> float | None:
        """On simulated data only: AUC of the oracle probabilities on the realised test labels."""
        truth_dir = self.settings.truth_dir
        if not (truth_dir / "meta.json").exists():
            return None
        from propensity.simulate.oracle import Truth

        col = "p_inactive" if self.settings.tasks[task].label == "inactive" else "p_purchase"
        probs = Truth.read(truth_dir).probabilities(plan.test, plan.horizon_days).to_pandas()
        joined = test[["customer_id", "label"]].merge(probs, on="customer_id", how="inner")
        if len(joined) < 0.9 * len(test):  # a different shop than the one simulated
            return None
        return safe_auc(joined["label"].to_numpy(), joined[col].to_numpy())

    def train_task(
        self, task: str, plan: SnapshotPlan, tasks: list[str]
    ) -> tuple[TaskResult, TaskFrames, dict[str, np.ndarray]]:
        """Fit and evaluate one task; also returns its frames and baseline scores for logging."""
        t0 = time.perf_counter()
        fr = self.frames(task, plan, tasks)
        model, best = self.fit(fr)
        y = fr.test["label"].to_numpy()
        p = model.predict_proba(model_input(fr.test, model.features))
        metrics = evaluate(y, p)
        valid_auc = safe_auc(fr.valid["label"].to_numpy(), model.predict_proba(model_input(fr.valid, model.features)))
        label = self.settings.tasks[task].label
        base_scores = {
            "logreg_rfm": logreg_baseline(fr.train, fr.test),
            "recency_frequency": heuristic_score(fr.test, label),
        }
        baseline_auc = {k: safe_auc(y, v) for k, v in base_scores.items()}
        for col in ("country", "lifecycle_stage"):
            for g, auc in group_auc(y, p, fr.test[col].fillna("unknown").to_numpy()).items():
                metrics[f"auc_{col}_{g}"] = auc
        result = TaskResult(
            task=task,
            metrics=metrics,
            valid_auc=valid_auc,
            baseline_auc=baseline_auc,
            oracle_auc=self.oracle_auc(task, plan, fr.test),
            n_train=len(fr.train),
            n_valid=len(fr.valid),
            n_test=len(fr.test),
            best_iteration=best,
            seconds=time.perf_counter() - t0,
            model=model,
            test_scores=p,
        )
        return result, fr, base_scores

    # MLflow -------------------------------------------------------------------------------

    def log_task(
        self, r: TaskResult, fr: TaskFrames, base_scores: dict[str, np.ndarray], register: bool, promote: bool = True
    ) -> None:
        s = self.settings
        m = s.models
        mlflow.log_params(
            {
                "task": r.task,
                "horizon_days": fr.plan.horizon_days,
                "test_snapshot": fr.plan.test.isoformat(),
                "valid_snapshot": fr.plan.valid.isoformat() if fr.plan.valid else "customer holdout",
                "train_snapshots": ",".join(d.isoformat() for d in fr.plan.train),
                "n_features": len(r.model.features),
                "best_iteration": r.best_iteration,
                "calibration": r.model.calibrator.kind,
                "tuning_trials": m.tuning_trials,
                **{
                    k: getattr(self, "last_params", {}).get(k, getattr(m, k))  # tuned values when tuning ran
                    for k in (
                        "learning_rate",
                        "num_leaves",
                        "min_data_in_leaf",
                        "feature_fraction",
                        "bagging_fraction",
                        "lambda_l2",
                        "seed",
                    )
                },
            }
        )
        metrics = {f"test_{k}": v for k, v in r.metrics.items() if np.isfinite(v)}
        metrics.update({f"baseline_{k}_auc": v for k, v in r.baseline_auc.items() if v is not None})
        metrics.update({"n_train": r.n_train, "n_valid": r.n_valid, "n_test": r.n_test, "train_seconds": r.seconds})
        if r.valid_auc is not None:
            metrics["valid_auc"] = r.valid_auc
        if r.oracle_auc is not None:
            metrics["oracle_auc"] = r.oracle_auc
            metrics["oracle_gap"] = r.oracle_auc - r.metrics["auc"]
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"features": r.model.features, "categorical": list(r.model.encoder.mapping)}, "features.json")
        from propensity.monitoring.monitor import training_reference

        mlflow.log_dict(training_reference(s, r.model, fr, r.test_scores), "reference.json")  # drift monitoring
        train_ds = mlflow.data.from_pandas(
            fr.train[["customer_id", "snapshot", "label"]].astype({"snapshot": str}),
            source=f"{s.lake_uri}/features",
            name=f"{r.task}-train",
            targets="label",
        )
        test_ds = mlflow.data.from_pandas(
            fr.test[["customer_id", "snapshot", "label"]].astype({"snapshot": str}),
            source=f"{s.lake_uri}/features/snapshot={fr.plan.test.isoformat()}",
            name=f"{r.task}-test",
            targets="label",
        )
        mlflow.log_input(train_ds, context="training")
        mlflow.log_input(test_ds, context="testing")
        y = fr.test["label"].to_numpy()
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            plots.roc_pr(y, r.test_scores, base_scores, d / "roc_pr.png")
            plots.gains(y, r.test_scores, d / "gains_lift.png")
            plots.calibration(y, r.test_scores, d / "calibration.png")
            gain = r.model.booster.feature_importance("gain")
            plots.importance(r.model.features, gain, "gain importance", d / "importance_gain.png")
            sample = model_input(fr.test, r.model.features).head(2000)
            contrib = r.model.contributions(sample)[:, :-1]
            plots.importance(
                r.model.features, np.abs(contrib).mean(axis=0), "mean |SHAP| (pred_contrib)", d / "shap_summary.png"
            )
            for f in d.glob("*.png"):
                mlflow.log_artifact(str(f), "plots")
            paths = r.model.save(d / "model")
            example = model_input(fr.test, r.model.features).head(5)
            from mlflow.models import infer_signature

            signature = infer_signature(example, r.model.predict_proba(example))
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=PropensityPyfunc(),
                artifacts=paths,
                signature=signature,
                input_example=example,
                pip_requirements=_pip_requirements(),
                registered_model_name=f"propensity-{r.task}" if register else None,
            )
        if register:
            version = str(info.registered_model_version)
            r.model_version = version
            r.decision = gate_and_alias(
                s,
                r.task,
                version,
                r.metrics["auc"],
                model_input(fr.test, r.model.features),
                y,
                tags={
                    "snapshot": fr.plan.test.isoformat(),
                    "data_digest": train_ds.digest,
                    "code_version": code_version(),
                },
                promote=promote,
            )
            r.promoted = bool(r.decision["promoted"])
            mlflow.log_dict(r.decision, "comparison.json")

    def train(
        self, tasks: list[str] | None = None, as_of: date | None = None, register: bool = True, promote: bool = True
    ) -> dict[str, Any]:
        """Train, log, register and gate ``tasks``; with ``promote=False`` versions are registered
        and gated (the verdict is recorded) but ``champion`` never moves."""
        names = tasks or list(self.settings.tasks)
        plans = self.plans(names, as_of)
        experiment_id = configure(self.settings)
        results: dict[str, TaskResult] = {}
        run_name = f"train {max(p.test for p in plans.values())}"
        with mlflow.start_run(run_name=run_name, experiment_id=experiment_id) as parent:
            mlflow.set_tags({"propensity.code_version": code_version(), "propensity.lake": self.settings.lake_uri})
            mlflow.log_params({"tasks": ",".join(names), "as_of": str(as_of) if as_of else "latest"})
            for name in names:
                with mlflow.start_run(run_name=name, nested=True, experiment_id=experiment_id) as child:
                    r, fr, base_scores = self.train_task(name, plans[name], names)
                    r.run_id = child.info.run_id
                    self.log_task(r, fr, base_scores, register, promote)
                    results[name] = r
                    log.info(
                        "%s: test AUC %.4f (valid %.4f, logreg %.4f, heuristic %.4f, oracle %s), ECE %.4f, "
                        "%d train rows, %.1f s, version %s, promoted %s",
                        name,
                        r.metrics["auc"],
                        r.valid_auc or float("nan"),
                        r.baseline_auc["logreg_rfm"] or float("nan"),
                        r.baseline_auc["recency_frequency"] or float("nan"),
                        f"{r.oracle_auc:.4f}" if r.oracle_auc is not None else "n/a",
                        r.metrics["ece"],
                        r.n_train,
                        r.seconds,
                        r.model_version,
                        r.promoted,
                    )
        report = {"tasks": {n: r.report() for n, r in results.items()}, "parent_run_id": parent.info.run_id}
        self.results = results
        return report


def tune(
    base: dict[str, Any],
    dtrain: lgb.Dataset,
    dvalid: lgb.Dataset,
    trials: int,
    seconds: float,
    max_rounds: int,
    early_stopping: int,
    seed: int,
) -> dict[str, Any]:
    """Optuna TPE search of the tree shape and regularisation, pruning hopeless trials on validation AUC."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial: optuna.Trial) -> float:
        params = {
            **base,
            "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
            "num_leaves": trial.suggest_int("num_leaves", 7, 127, log=True),
            "min_data_in_leaf": trial.suggest_int("min_data_in_leaf", 20, 500, log=True),
            "feature_fraction": trial.suggest_float("feature_fraction", 0.4, 1.0),
            "bagging_fraction": trial.suggest_float("bagging_fraction", 0.5, 1.0),
            "lambda_l2": trial.suggest_float("lambda_l2", 1e-3, 30.0, log=True),
        }

        def prune(env: lgb.callback.CallbackEnv) -> None:
            if env.iteration % 25 == 0 and env.evaluation_result_list:
                trial.report(env.evaluation_result_list[0][2], env.iteration)
                if trial.should_prune():
                    raise optuna.TrialPruned()

        booster = lgb.train(
            params, dtrain, num_boost_round=max_rounds, valid_sets=[dvalid],
            callbacks=[lgb.early_stopping(early_stopping, verbose=False), prune],
        )  # fmt: skip
        return float(booster.best_score["valid_0"]["auc"])

    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=50),
    )
    study.optimize(objective, n_trials=trials, timeout=seconds)
    log.info(
        "tuning: %d trials, best validation AUC %.4f with %s", len(study.trials), study.best_value, study.best_params
    )
    return dict(study.best_params)


def _truncate(booster: lgb.Booster) -> lgb.Booster:
    """Keep only the trees up to the best iteration, so the shipped model is no deeper than it needs."""
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))


def _pip_requirements() -> list[str]:
    import sklearn

    return [
        f"mlflow=={mlflow.__version__}",
        f"lightgbm=={lgb.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"scikit-learn=={sklearn.__version__}",
    ]


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float))
