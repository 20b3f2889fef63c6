"""Training: per task, out-of-time snapshots -> LightGBM -> calibration -> evaluation -> MLflow.

For each task the snapshot plan (:mod:`propensity.features.training`) gives stacked
training snapshots, pooled validation snapshots (early stopping and calibration) and the
latest fully-labelled snapshots, pooled, as the test. The same run fits two baselines (logistic
regression on scaled RFM features, a recency/frequency heuristic) and, on simulated
data, reads the oracle from the truth store to report the gap to the best possible AUC.
Every task is a nested MLflow run under one parent run; the model is registered and
gated (:mod:`propensity.models.registry`). The parent run carries the task name(s) and
each task's headline metrics, so the runs list compares parents without picking columns.

Before fitting, a task's frames and parameters are fingerprinted
(:mod:`propensity.models.fingerprint`). When a registered version already carries the
same fingerprint, the task is *unchanged*: nothing is fitted, registered or gated, the
child run records which version it matches, and the report repeats that version's
metrics. Retraining on the same data therefore leaves the registry as it was.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import polars as pl
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from propensity.config import ModelConfig, Settings
from propensity.features.catalogue import categorical_features, feature_names
from propensity.features.snapshot import Snapshot, SnapshotBuilder
from propensity.features.training import WEIGHT, SnapshotPlan, held_out, stack
from propensity.models import plots
from propensity.models.fingerprint import Fingerprint, data_digest, model_parameters, params_digest
from propensity.models.intervals import evaluate_with_intervals
from propensity.models.metrics import evaluate, group_auc, safe_auc
from propensity.models.model import Calibrator, CategoryEncoder, PropensityModel, model_input
from propensity.models.pyfunc import PropensityPyfunc
from propensity.models.registry import find_unchanged, gate_and_alias, unchanged_note
from propensity.models.tracking import code_version, configure, pip_requirements, process_tags, settle_abandoned_runs

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
#: Baselines every task is compared with (``baseline_<name>_auc`` metrics): a logistic regression
#: on RFM columns, a recency/frequency rule, and BG/NBD's P(purchase within the horizon) and
#: P(alive) (:mod:`propensity.models.btyd`; for churn, one minus each).
BASELINES = ("logreg_rfm", "recency_frequency", "btyd", "btyd_p_alive")
#: Child-run metrics repeated on the parent run: what one compares runs by.
HEADLINE = (
    "test_auc",
    "test_pr_auc",
    "test_ece",
    *(f"baseline_{b}_auc" for b in BASELINES),
    "oracle_auc",
    "oracle_gap",
    # a value task's (label: revenue; propensity.models.value_train)
    "test_gini",
    "test_spearman",
    "test_top_decile_capture",
    "baseline_btyd_gini",
    "baseline_historic_gini",
    "oracle_gini",
)
#: Run tags of a task's child run: whether it was skipped as unchanged, and what it matched.
UNCHANGED_TAG = "propensity.unchanged"
MATCHED_VERSION_TAG = "propensity.matched_version"
MATCHED_RUN_TAG = "propensity.matched_run_id"
#: Parent-run tag: the tasks of the run that were unchanged (comma-separated, empty if none).
UNCHANGED_TASKS_TAG = "propensity.unchanged_tasks"


@dataclass
class TaskFrames:
    plan: SnapshotPlan
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame


@dataclass
class TaskResult:
    """One task's outcome. ``unchanged``: an existing version (``model_version``) was trained
    on the same data with the same parameters, so nothing was fitted: ``model`` and
    ``test_scores`` are None and the metrics are that version's."""

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
    model: PropensityModel | None
    test_scores: np.ndarray | None
    #: :func:`~propensity.models.intervals.evaluate_with_intervals` on the pooled test set
    intervals: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None
    model_version: str | None = None
    promoted: bool = False
    decision: dict[str, Any] = field(default_factory=dict)
    unchanged: bool = False
    fingerprint: Fingerprint | None = None
    #: what the task is judged by: ``auc``, or ``gini`` for a value task (``label: revenue``),
    #: whose ``metrics``, ``valid_auc`` and ``baseline_auc`` then hold Gini and its companions
    measure: str = "auc"
    #: a value task's served formulation (``hurdle`` or ``tweedie``)
    formulation: str | None = None

    @classmethod
    def fitted(
        cls, task: str, fr: TaskFrames, t0: float, model: PropensityModel, test_scores: np.ndarray, **kw: Any
    ) -> TaskResult:
        """A task fitted now on ``fr`` (started at ``t0``): its row counts and timing filled in."""
        return cls(
            task=task,
            n_train=len(fr.train),
            n_valid=len(fr.valid),
            n_test=len(fr.test),
            seconds=time.perf_counter() - t0,
            model=model,
            test_scores=test_scores,
            **kw,
        )

    @property
    def outcome(self) -> str:
        """One line on what happened to the registry, for logs and reports."""
        if self.unchanged:
            return unchanged_note(str(self.model_version))
        if self.model_version is None:
            return "not registered"
        if self.decision.get("unchanged"):
            return f"v{self.model_version} registered, {self.decision['reasons'][0]}: not promoted"
        if self.promoted:
            return f"v{self.model_version} promoted to champion"
        verdict = "passed the gate" if self.decision.get("passed") else "rejected by the gate"
        return f"v{self.model_version} {verdict}, champion unchanged"

    def report(self) -> dict[str, Any]:
        if self.measure == "gini":
            from propensity.models.value_train import value_report

            return value_report(self)
        fp = self.fingerprint
        return {
            "test_auc": self.metrics.get("auc"),
            "test_pr_auc": self.metrics.get("pr_auc"),
            "ece": self.metrics.get("ece"),
            "baseline_auc": self.baseline_auc,
            "oracle_auc": self.oracle_auc,
            "intervals": self.intervals,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "model_version": self.model_version,
            "promoted": self.promoted,
            "unchanged": self.unchanged,
            "outcome": self.outcome,
            "data_digest": fp.data_digest if fp is not None else None,
            "params_digest": fp.params_digest if fp is not None else None,
            "train_seconds": round(self.seconds, 2),
        }


def run_metrics(r: TaskResult) -> dict[str, float]:
    """The metrics of a task's child run (names the tests and the drift monitor rely on)."""
    metrics = {f"test_{k}": v for k, v in r.metrics.items() if np.isfinite(v)}
    metrics.update({f"baseline_{k}_{r.measure}": v for k, v in r.baseline_auc.items() if v is not None})
    metrics.update(interval_metrics(r.intervals))
    metrics.update({"n_train": r.n_train, "n_valid": r.n_valid, "n_test": r.n_test, "train_seconds": r.seconds})
    if r.valid_auc is not None and np.isfinite(r.valid_auc):
        metrics[f"valid_{r.measure}"] = r.valid_auc
    if r.oracle_auc is not None and r.measure in r.metrics:  # a value task's is the oracle's Gini
        metrics[f"oracle_{r.measure}"] = r.oracle_auc
        metrics["oracle_gap"] = r.oracle_auc - r.metrics[r.measure]
    return metrics


def interval_metrics(intervals: dict[str, Any]) -> dict[str, float]:
    """The 95% bounds as run metrics: ``test_<m>_low/high`` for AUC, PR AUC and ECE (a value
    task's Gini), and the paired ``baseline_<b>_auc_diff`` (``_gini_diff``; model minus
    baseline) with its ``_low/_high``."""
    out: dict[str, float] = {}
    for name, iv in intervals.get("model", {}).items():
        out.update({f"test_{name}_low": iv["low"], f"test_{name}_high": iv["high"]})
    for b, ivs in intervals.get("baselines", {}).items():
        for key in (k for k in ivs if k.endswith("_diff")):
            d = ivs[key]
            out.update({f"baseline_{b}_{key}": d["estimate"], f"baseline_{b}_{key}_low": d["low"]})
            out[f"baseline_{b}_{key}_high"] = d["high"]
    if "n_positives" in intervals:
        out["test_positives"] = intervals["n_positives"]
    return {k: float(v) for k, v in out.items() if v is not None and np.isfinite(v)}


def intervals_from_metrics(logged: dict[str, float]) -> dict[str, Any]:
    """What :func:`interval_metrics` logged, back in the report's shape (for an unchanged task,
    whose figures are its matched version's run); empty for runs logged without intervals."""
    model = {
        k: {"estimate": logged[f"test_{k}"], "low": logged[f"test_{k}_low"], "high": logged[f"test_{k}_high"]}
        for k in ("auc", "pr_auc", "ece")
        if f"test_{k}_low" in logged
    }
    if not model:
        return {}
    baselines = {
        b: {"auc_diff": {"estimate": logged[f"{pre}"], "low": logged[f"{pre}_low"], "high": logged[f"{pre}_high"]}}
        for b in BASELINES
        if (pre := f"baseline_{b}_auc_diff") in logged
    }
    return {
        "n_rows": int(logged.get("n_test", 0)),
        "n_positives": int(logged.get("test_positives", 0)),
        "model": model,
        "baselines": baselines,
    }


def headline_metrics(metrics: dict[str, float], task: str, several: bool) -> dict[str, float]:
    """:data:`HEADLINE` metrics of one task for its parent run: plain names when the parent
    trains one task (same columns as the child runs), ``<task>/<metric>`` when it trains several."""
    prefix = f"{task}/" if several else ""
    return {f"{prefix}{k}": metrics[k] for k in HEADLINE if k in metrics}


def plan_params(task: str, plan: SnapshotPlan) -> dict[str, Any]:
    """Run parameters describing a task's snapshot plan."""
    return {
        "task": task,
        "horizon_days": plan.horizon_days,
        "test_snapshot": plan.test.isoformat(),
        "test_snapshots": ",".join(d.isoformat() for d in plan.tests),
        "valid_snapshots": ",".join(d.isoformat() for d in plan.valid) or "customer holdout",
        "train_snapshots": ",".join(d.isoformat() for d in plan.train),
    }


def plan_identity(plan: SnapshotPlan) -> dict[str, Any]:
    """The snapshot plan as JSON values, for the parameter digest."""
    return {
        "horizon_days": plan.horizon_days,
        "train": [d.isoformat() for d in plan.train],
        "valid": [d.isoformat() for d in plan.valid] or None,
        "test": [d.isoformat() for d in plan.tests],
    }


def unchanged_result(
    task: str, fr: TaskFrames, version: str, run: Run, seconds: float, fingerprint: Fingerprint, measure: str = "auc"
) -> TaskResult:
    """The result of a task that matched ``version``: its metrics are read back from the
    version's training run (``run``), the row counts are this run's (equal by construction)."""
    from propensity.models.value_train import VALUE_BASELINES

    logged = run.data.metrics
    best = run.data.params.get("best_iteration", "0")
    baselines = BASELINES if measure == "auc" else VALUE_BASELINES
    return TaskResult(
        task=task,
        metrics={k.removeprefix("test_"): v for k, v in logged.items() if k.startswith("test_")},
        valid_auc=logged.get(f"valid_{measure}"),
        baseline_auc={b: logged.get(f"baseline_{b}_{measure}") for b in baselines},
        oracle_auc=logged.get(f"oracle_{measure}"),
        intervals=intervals_from_metrics(logged) if measure == "auc" else {},
        measure=measure,
        formulation=run.data.params.get("formulation"),
        n_train=len(fr.train),
        n_valid=len(fr.valid),
        n_test=len(fr.test),
        best_iteration=int(best) if best.isdigit() else 0,
        seconds=seconds,
        model=None,
        test_scores=None,
        model_version=version,
        promoted=False,
        decision={
            "task": task,
            "model": f"propensity-{task}",
            "unchanged": True,
            "matched_version": version,
            "matched_run_id": run.info.run_id,
            "promoted": False,
            "reasons": [unchanged_note(version)],
            "note": "nothing fitted, registered or gated",
        },
        unchanged=True,
        fingerprint=fingerprint,
    )


def summary(r: TaskResult) -> str:
    """The log line of a trained (or unchanged) task."""

    def f(v: float | None) -> str:
        return f"{v:.4f}" if v is not None else "n/a"

    if r.measure == "gini":
        return (
            f"{r.task}: {r.outcome}; test Gini {f(r.metrics.get('gini'))} ({r.formulation}; valid {f(r.valid_auc)}, "
            f"BG/NBD x Gamma-Gamma {f(r.baseline_auc.get('btyd'))}, historic {f(r.baseline_auc.get('historic'))}, "
            f"oracle {f(r.oracle_auc)}), "
            f"Spearman {f(r.metrics.get('spearman'))}, top-decile capture {f(r.metrics.get('top_decile_capture'))}, "
            f"{r.n_train} train rows, {r.seconds:.1f} s, version {r.model_version}, promoted {r.promoted}"
        )
    return (
        f"{r.task}: {r.outcome}; test AUC {f(r.metrics.get('auc'))} (valid {f(r.valid_auc)}, "
        f"logreg {f(r.baseline_auc.get('logreg_rfm'))}, heuristic {f(r.baseline_auc.get('recency_frequency'))}, "
        f"BG/NBD {f(r.baseline_auc.get('btyd'))}, "
        f"oracle {f(r.oracle_auc)}), ECE {f(r.metrics.get('ece'))}, {r.n_train} train rows, {r.seconds:.1f} s, "
        f"version {r.model_version}, promoted {r.promoted}"
    )


def heuristic_score(df: pd.DataFrame, label: str) -> np.ndarray:
    """Recency/frequency rule of thumb: recent and frequent customers buy (and do not churn)."""
    rec = np.fmin(df["recency_days"].fillna(9999).to_numpy(), df["days_since_last_session"].fillna(9999).to_numpy())
    freq = df["orders_365d"].fillna(0).to_numpy() + df["sessions_90d"].fillna(0).to_numpy() / 10.0
    s = (1.0 + freq) / (1.0 + rec / 30.0)
    return -s if label == "inactive" else s


def btyd_scores(fr: TaskFrames, label: str, seed: int) -> dict[str, np.ndarray]:
    """BG/NBD's P(purchase within the horizon) and P(alive) on the test rows, as scores of
    ``label`` (churn is their complement); none when the training rows hold no repeat buyer
    to fit on (a shop too young), since a baseline that cannot be fitted is not reported."""
    from propensity.models.btyd import purchase_baseline

    if not (fr.train["orders_total"].fillna(0) > 1).any():
        return {}
    buy, alive, _ = purchase_baseline(fr.train, fr.test, fr.plan.horizon_days, seed)
    if label == "inactive":
        buy, alive = 1.0 - buy, 1.0 - alive
    return {"btyd": buy, "btyd_p_alive": alive}


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


def lgb_params(m: ModelConfig) -> dict[str, Any]:
    """LightGBM parameters of a training run: the configured model, deterministic.

    Positives are not up-weighted: on three simulated shops it moved no task's AUC by more
    than 0.001, and unweighted raw scores are already near probabilities, which leaves the
    calibrator less to bend."""
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


def sample_negatives(train: pl.DataFrame, cap: int | None, seed: int) -> tuple[pl.DataFrame, float]:
    """``train`` cut to about ``cap`` rows, each kept row weighted by the inverse of its
    sampling rate, so the weighted label mix is the population's. Returns the frame and the
    negatives' rate (1.0: not sampled).

    Every positive is kept while that leaves at least as many negatives: rare positives carry
    the signal. When positives are half the cap or more (repurchase on a loyal shop), both
    classes are sampled to half the cap each, so the booster never sees a single class.
    The draw follows the frame's row order (a snapshot's labels are sorted by customer)."""
    if cap is None or train.height <= cap:
        return train, 1.0
    positive = (train["label"] > 0).to_numpy()  # a value task's buyers are its positives
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    rate_pos = 1.0 if 2 * n_pos <= cap else (cap / 2) / n_pos
    rate_neg = min(1.0, (cap - n_pos * rate_pos) / max(n_neg, 1))
    draw = np.random.default_rng(seed).random(train.height)
    keep = draw < np.where(positive, rate_pos, rate_neg)
    out = train.filter(pl.Series(keep)).with_columns(
        pl.when(pl.col("label") > 0).then(1.0 / rate_pos).otherwise(1.0 / rate_neg).alias(WEIGHT)
    )
    return out, rate_neg


def sample_snapshot(
    labels: pl.DataFrame, cap: int | None, seed: int, day: date, holdout: bool, held_cap: int | None = None
) -> pl.DataFrame:
    """One training snapshot's labelled rows sampled to ``cap`` (:func:`sample_negatives`,
    seeded by ``seed`` and the day). With a customer holdout its held-out rows validate: they
    are not weighted, and only cut to ``held_cap`` by a uniform customer sample
    (:func:`sample_customers`). Every row gains :data:`WEIGHT`."""
    held = held_out(labels["customer_id"]) if holdout else np.zeros(labels.height, bool)
    fitted, _ = sample_negatives(labels.filter(pl.Series(~held)), cap, seed + day.toordinal())
    if WEIGHT not in fitted.columns:
        fitted = fitted.with_columns(pl.lit(1.0).alias(WEIGHT))
    kept = labels.filter(pl.Series(held))
    kept = (kept if held_cap is None else sample_customers(kept, held_cap)).with_columns(pl.lit(1.0).alias(WEIGHT))
    return pl.concat([fitted, kept], how="vertical_relaxed").sort("customer_id")


def sample_customers(labels: pl.DataFrame, cap: int) -> pl.DataFrame:
    """``labels`` cut to about ``cap`` rows by a uniform sample of customers, unweighted: a
    customer is kept when its id's hash (:func:`propensity.shards.customer_hash`) falls below
    the rate, so every snapshot and task sampled at the same rate keeps the same customers
    (pooled test snapshots stay grouped by customer for the bootstrap), and a lower rate keeps
    a subset of a higher one's."""
    if labels.height <= cap:
        return labels
    from propensity.shards import customer_hash

    unit = (customer_hash(labels["customer_id"]) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return labels.filter(pl.Series(unit < cap / labels.height))


def for_training(snap: Snapshot) -> Snapshot:
    """``snap`` with the features and profile rows of its labelled customers only, and of the
    profile only the lifecycle stage (the test report's slices). A trainer keeps every plan
    snapshot for all its tasks: whole feature frames were most of its memory (8.5 GB at 100k
    customers), and a customer no task's population holds is never read."""
    if not snap.labels:
        return snap
    labelled = pl.col("customer_id").is_in(pl.concat([lab["customer_id"] for lab in snap.labels.values()]).implode())
    return replace(
        snap,
        features=snap.features.filter(labelled),
        profiles=snap.profiles.select("customer_id", "lifecycle_stage").filter(labelled),
    )


class Trainer:
    def __init__(
        self, settings: Settings, builder: SnapshotBuilder | None = None, snapshots: dict[date, Snapshot] | None = None
    ) -> None:
        self.settings = settings
        self.builder = builder or SnapshotBuilder(settings)
        self.snapshots: dict[date, Snapshot] = dict(snapshots or {})
        #: the plans of the tasks being trained, known before their snapshots are loaded
        self._plans: dict[str, SnapshotPlan] = {}

    # data ---------------------------------------------------------------------------------

    def plans(self, tasks: list[str], as_of: date | None) -> dict[str, SnapshotPlan]:
        plans = self.builder.plans(tasks, as_of)
        self._plans.update(plans)
        return plans

    def snapshot(self, d: date, tasks: list[str]) -> Snapshot:
        """The snapshot at ``d``: the published one when its labels are final, else built in
        memory; kept for the other tasks with only what training reads (:func:`for_training`).
        Only the tasks whose plans use ``d`` are read, and with
        ``models.max_train_rows`` those of every task that trains on ``d`` are sampled first,
        so the training snapshots held in memory follow the cap, not the shop (at 200k
        customers they were most of training's 10 GB)."""
        if d not in self.snapshots:
            # only the tasks whose plans use d: another task's labels at d may be incomplete
            # (its horizon is longer), and asking for them rebuilt the snapshot from the whole
            # clean zone instead of reading the published one
            needed = [t for t in tasks if t not in self._plans or d in self._plans[t].all()]
            snap = self.builder.load_or_build(d, needed)
            labels = {t: self.training_labels(snap, t) for t in needed}
            self.snapshots[d] = for_training(replace(snap, labels=labels))
        return self.snapshots[d]

    def training_labels(self, snap: Snapshot, task: str) -> pl.DataFrame:
        """``task``'s labels of ``snap``, sampled (:func:`sample_snapshot`) when ``snap`` is one
        of the task's training snapshots and ``models.max_train_rows`` caps them: each of the
        plan's training snapshots gets an equal share of the cap. The sample depends only on
        the seed, the task and the day, so it is the same whichever task loaded the snapshot.
        With ``models.max_eval_rows`` a validation or test snapshot keeps a uniform sample of
        its customers (:func:`sample_customers`), its split's share of that cap."""
        labels = snap.labels[task]
        plan, m = self._plans.get(task), self.settings.models
        if plan is None or WEIGHT in labels.columns:
            return labels
        d, eval_cap = snap.snapshot, m.max_eval_rows
        if d not in plan.train:
            split = plan.tests if d in plan.tests else plan.valid
            return (
                labels if eval_cap is None or d not in split else sample_customers(labels, -(-eval_cap // len(split)))
            )
        held_cap = None if plan.valid or eval_cap is None else -(-eval_cap // len(plan.train))
        if m.max_train_rows is None and held_cap is None:
            return labels
        cap = None if m.max_train_rows is None else -(-m.max_train_rows // len(plan.train))
        return sample_snapshot(labels, cap, m.seed + zlib.crc32(task.encode()), d, not plan.valid, held_cap)

    def frames(self, task: str, plan: SnapshotPlan, tasks: list[str]) -> TaskFrames:
        self._plans.setdefault(task, plan)

        def block(dates: list[date], with_profile: bool = False, training: bool = False) -> pd.DataFrame:
            snaps = [self.snapshot(d, tasks) for d in dates]
            if training:
                snaps = [replace(s, labels={task: self.training_labels(s, task)}) for s in snaps]
            df = stack(snaps, task)
            if with_profile:
                prof = pl.concat([s.profiles.select("customer_id", "lifecycle_stage") for s in snaps])
                df = df.join(prof, on="customer_id", how="left")
            return df.to_pandas()

        train, test = block(list(plan.train), training=True), block(list(plan.tests), True)
        if plan.valid:
            return TaskFrames(plan, train, block(list(plan.valid)), test)
        held = held_out(train["customer_id"])
        valid = train[held].drop(columns=[WEIGHT], errors="ignore").reset_index(drop=True)
        return TaskFrames(plan, train[~held].reset_index(drop=True), valid, test)

    # model --------------------------------------------------------------------------------

    def fit(
        self, fr: TaskFrames, features: list[str] | None = None, categorical: list[str] | None = None
    ) -> tuple[PropensityModel, int]:
        """Fit booster + calibrator; ``features``/``categorical`` default to the feature catalogue."""
        m = self.settings.models
        inp = fit_inputs(fr, features, categorical)
        feats, cats, encoder, xt, xv, weight = inp.features, inp.categorical, inp.encoder, inp.xt, inp.xv, inp.weight
        y_train, y_valid = fr.train["label"].to_numpy(), fr.valid["label"].to_numpy()
        if len(np.unique(y_train)) < 2 or len(np.unique(y_valid)) < 2:
            raise ValueError("training and validation snapshots need both positive and negative labels")
        params = lgb_params(m)
        dtrain = lgb.Dataset(xt, y_train, weight=weight, categorical_feature=cats, free_raw_data=False)
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
        """On simulated data only: AUC of the oracle probabilities on the realised test labels
        (each pooled test snapshot's rows against that snapshot's probabilities)."""
        truth_dir = self.settings.truth_dir
        if not (truth_dir / "meta.json").exists():
            return None
        from propensity.simulate.oracle import Truth

        p = Truth.read(truth_dir).row_probabilities(test, plan.horizon_days, self.settings.tasks[task].label)
        known = ~np.isnan(p)
        if known.sum() < 0.9 * len(test):  # a different shop than the one simulated
            return None
        return safe_auc(test["label"].to_numpy()[known], p[known])

    def train_task(
        self, task: str, plan: SnapshotPlan, tasks: list[str]
    ) -> tuple[TaskResult, TaskFrames, dict[str, np.ndarray]]:
        """Fit and evaluate one task; also returns its frames and baseline scores for logging."""
        t0 = time.perf_counter()
        fr = self.frames(task, plan, tasks)
        result, base_scores = self.evaluate(task, fr, t0)
        return result, fr, base_scores

    def evaluate(self, task: str, fr: TaskFrames, t0: float) -> tuple[TaskResult, dict[str, np.ndarray]]:
        """Fit on ``fr`` and evaluate on its test frame against the baselines (and the oracle);
        ``t0`` is when the task started, for its timing."""
        if self.settings.tasks[task].is_value:
            from propensity.models.value_train import evaluate_value

            return evaluate_value(self, task, fr, t0)
        plan = fr.plan
        model, best = self.fit(fr)
        y = fr.test["label"].to_numpy()
        p = model.predict_proba(model_input(fr.test, model.features))
        metrics = evaluate(y, p)
        valid_auc = safe_auc(fr.valid["label"].to_numpy(), model.predict_proba(model_input(fr.valid, model.features)))
        label = self.settings.tasks[task].label
        base_scores = {
            "logreg_rfm": logreg_baseline(fr.train, fr.test),
            "recency_frequency": heuristic_score(fr.test, label),
            **btyd_scores(fr, label, self.settings.models.seed),
        }
        baseline_auc = {k: safe_auc(y, v) for k, v in base_scores.items()}
        try:
            intervals = evaluate_with_intervals(
                y,
                p,
                groups=fr.test["customer_id"].to_numpy(),  # a customer is in several pooled snapshots
                baselines=base_scores,
                n_boot=self.settings.models.bootstrap,
                seed=self.settings.models.seed,
            )
        except ValueError as exc:  # too few positives for an interval (a tiny shop): the point estimates stand
            log.warning("%s: no test intervals: %s", task, exc)
            intervals = {}
        for col in ("country", "lifecycle_stage"):
            for g, auc in group_auc(y, p, fr.test[col].fillna("unknown").to_numpy()).items():
                metrics[f"auc_{col}_{g}"] = auc
        if WEIGHT in fr.train.columns:  # rows were sampled (models.max_train_rows)
            negatives = fr.train["label"].to_numpy() == 0
            weights = fr.train.loc[negatives, WEIGHT]
            metrics["train_negative_rate"] = float(negatives.sum() / weights.sum()) if negatives.any() else 1.0
        result = TaskResult.fitted(
            task,
            fr,
            t0,
            model,
            p,
            metrics=metrics,
            valid_auc=valid_auc,
            baseline_auc=baseline_auc,
            oracle_auc=self.oracle_auc(task, plan, fr.test),
            best_iteration=best,
            intervals=intervals,
        )
        return result, base_scores

    # fingerprint --------------------------------------------------------------------------

    def fingerprint(
        self, task: str, fr: TaskFrames, features: list[str] | None = None, categorical: list[str] | None = None
    ) -> Fingerprint:
        """Digest of what :meth:`fit` would see: the frames, and the parameters that shape the model."""
        feats = features or feature_names()
        cats = [c for c in (categorical if categorical is not None else categorical_features()) if c in feats]
        params = model_parameters(
            self.settings.models.model_dump(mode="json"),
            task,
            self.settings.tasks[task].model_dump(mode="json"),
            plan_identity(fr.plan),
            feats,
            cats,
        )
        frames = {"train": fr.train, "valid": fr.valid, "test": fr.test}
        return Fingerprint(data_digest(frames, feats, cats), params_digest(params))

    def measure(self, task: str) -> str:
        """What ``task`` is judged by: AUC, or Gini for a value task (``label: revenue``)."""
        return "gini" if self.settings.tasks[task].is_value else "auc"

    def matched_version(self, task: str, fingerprint: Fingerprint) -> tuple[ModelVersion, Run] | None:
        """The registered version with ``fingerprint`` and its training run, when that run can
        still be read with its metrics (else the task is trained again rather than reported blind)."""
        client = MlflowClient()
        version = find_unchanged(client, task, fingerprint)
        if version is None:
            return None
        try:
            run = client.get_run(version.run_id) if version.run_id else None
        except MlflowException as exc:
            log.warning("%s v%s matches but its run cannot be read (%s): training again", task, version.version, exc)
            return None
        if run is None or f"test_{self.measure(task)}" not in run.data.metrics:
            log.warning("%s v%s matches but its run has no test metrics: training again", task, version.version)
            return None
        return version, run

    # MLflow -------------------------------------------------------------------------------

    def log_task(
        self, r: TaskResult, fr: TaskFrames, base_scores: dict[str, np.ndarray], register: bool, promote: bool = True
    ) -> None:
        """Log a fitted task to the active (child) run; register and gate it when ``register``.

        Every task logs the same things (fingerprint, metrics, features, drift reference,
        datasets, plots, the pyfunc) and is gated on its measure; a value task
        (:mod:`~propensity.models.value_train`) brings its own parameters and plots."""
        if r.model is None or r.test_scores is None:
            raise ValueError(f"task {r.task}: nothing was fitted, there is no model to log")
        if r.measure == "gini":
            from propensity.models.value_train import value_params, value_plots

            params, draw = value_params(self, r), value_plots
        else:
            params, draw = self.propensity_params(r), propensity_plots
        s = self.settings
        model = r.model
        fp = r.fingerprint or self.fingerprint(r.task, fr, model.features, list(model.encoder.mapping))
        r.fingerprint = fp
        mlflow.set_tags({**fp.tags(), UNCHANGED_TAG: "false"})
        mlflow.log_params(
            {
                **plan_params(r.task, fr.plan),
                "n_features": len(model.features),
                "best_iteration": r.best_iteration,
                **params,
            }
        )
        mlflow.log_metrics(run_metrics(r))
        mlflow.log_dict({"features": model.features, "categorical": list(model.encoder.mapping)}, "features.json")
        from propensity.monitoring.monitor import training_reference

        mlflow.log_dict(training_reference(s, model, fr, r.test_scores), "reference.json")  # drift monitoring
        train_ds = _dataset(fr.train, f"{s.lake_uri}/features", f"{r.task}-train")
        test_ds = _dataset(fr.test, f"{s.lake_uri}/features/snapshot={fr.plan.test.isoformat()}", f"{r.task}-test")
        mlflow.log_input(train_ds, context="training")
        mlflow.log_input(test_ds, context="testing")
        y = fr.test["label"].to_numpy(dtype=float if r.measure == "gini" else None)
        x_test = model_input(fr.test, model.features)
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            draw(r, y, x_test, base_scores, d)
            for f in d.glob("*.png"):
                mlflow.log_artifact(str(f), "plots")
            paths = model.save(d / "model")
            example = x_test.head(5)
            from mlflow.models import infer_signature

            signature = infer_signature(example, model.predict_proba(example))
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=PropensityPyfunc(),
                artifacts=paths,
                signature=signature,
                input_example=example,
                pip_requirements=pip_requirements("lightgbm", "scikit-learn"),
                registered_model_name=f"propensity-{r.task}" if register else None,
            )
        if register:
            version = str(info.registered_model_version)
            r.model_version = version
            r.decision = gate_and_alias(
                s,
                r.task,
                version,
                r.metrics[r.measure],
                x_test,
                y,
                tags={"snapshot": fr.plan.test.isoformat(), "code_version": code_version()},
                promote=promote,
                fingerprint=fp,
                challenger_scores=r.test_scores,
                groups=fr.test["customer_id"].to_numpy(),
                measure=r.measure,
            )
            r.promoted = bool(r.decision["promoted"])
            mlflow.log_dict(r.decision, "comparison.json")

    def propensity_params(self, r: TaskResult) -> dict[str, Any]:
        """A propensity task's run parameters beyond the plan's: calibration and the booster's."""
        m = self.settings.models
        assert r.model is not None
        return {
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

    def log_unchanged(self, r: TaskResult, fr: TaskFrames) -> None:
        """Record on the active (child) run that the task matched a registered version: the
        plan, the matched version and run as tags, and that version's metrics."""
        fp = r.fingerprint
        mlflow.set_tags(
            {
                **(fp.tags() if fp is not None else {}),
                UNCHANGED_TAG: "true",
                MATCHED_VERSION_TAG: str(r.model_version),
                MATCHED_RUN_TAG: str(r.decision.get("matched_run_id", "")),
                "mlflow.note.content": f"{r.outcome}: nothing fitted or registered.",
            }
        )
        mlflow.log_params(plan_params(r.task, fr.plan))
        mlflow.log_metrics(run_metrics(r))

    def run_task(self, task: str, plan: SnapshotPlan, tasks: list[str], register: bool, promote: bool) -> TaskResult:
        """One task inside its active child run: fit, log, register and gate it, or, when
        ``register`` and a registered version has the same fingerprint, only record that.

        Without ``register`` the task is always fitted: such a run is for its model and
        evaluation (benches, experiments), which a registry match would not give back.
        """
        t0 = time.perf_counter()
        fr = self.frames(task, plan, tasks)
        fp = self.fingerprint(task, fr)
        matched = self.matched_version(task, fp) if register else None
        if matched is not None:
            version, run = matched
            r = unchanged_result(task, fr, str(version.version), run, time.perf_counter() - t0, fp, self.measure(task))
            self.log_unchanged(r, fr)
            return r
        r, base_scores = self.evaluate(task, fr, t0)
        r.fingerprint = fp
        self.log_task(r, fr, base_scores, register, promote)
        return r

    def train(
        self, tasks: list[str] | None = None, as_of: date | None = None, register: bool = True, promote: bool = True
    ) -> dict[str, Any]:
        """Train, log, register and gate ``tasks``; with ``promote=False`` versions are registered
        and gated (the verdict is recorded) but ``champion`` never moves. A task whose data and
        parameters a registered version already has is reported ``unchanged`` (see :meth:`run_task`)."""
        names = tasks or list(self.settings.tasks)
        plans = self.plans(names, as_of)
        experiment_id = configure(self.settings)
        settle_abandoned_runs(MlflowClient(), experiment_id)  # runs a killed train left RUNNING
        results: dict[str, TaskResult] = {}
        run_name = f"train {max(p.test for p in plans.values())}"
        several = len(names) > 1
        with mlflow.start_run(run_name=run_name, experiment_id=experiment_id, tags=process_tags()) as parent:
            mlflow.set_tags(
                {
                    "task": ",".join(names),
                    "propensity.code_version": code_version(),
                    "propensity.lake": self.settings.lake_uri,
                }
            )
            mlflow.log_params({"task": ",".join(names), "tasks": ",".join(names), "as_of": str(as_of or "latest")})
            for name in names:
                with mlflow.start_run(
                    run_name=name, nested=True, experiment_id=experiment_id, tags=process_tags()
                ) as child:
                    r = self.run_task(name, plans[name], names, register, promote)
                    r.run_id = child.info.run_id
                results[name] = r
                mlflow.log_metrics(headline_metrics(run_metrics(r), name, several))  # on the parent
                log.info("%s", summary(r))
            mlflow.set_tag(UNCHANGED_TASKS_TAG, ",".join(n for n, r in results.items() if r.unchanged))
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


def _dataset(frame: pd.DataFrame, source: str, name: str) -> Any:
    """The MLflow dataset of a training or test frame's rows (customer, snapshot, label).

    MLflow infers a text column's type value by value (9 s of a demo's training for 600k
    rows); these columns are typed by their contracts, so the first rows give the same schema,
    set before MLflow would compute it."""
    from mlflow.models import infer_signature

    rows = frame[["customer_id", "snapshot", "label"]].astype({"snapshot": str})
    with warnings.catch_warnings():  # a local source "can be interpreted in multiple ways"; a hint on integer inputs
        warnings.simplefilter("ignore")
        ds = mlflow.data.from_pandas(rows, source=source, name=name, targets="label")
        ds.__dict__["schema"] = infer_signature(rows.head(100)).inputs  # PandasDataset.schema is a cached_property
    return ds


@dataclass
class FitInputs:
    """What every task's boosters are fitted on: the encoded float matrices of the training and
    validation rows, the features and categories they hold, and the sampling weights."""

    features: list[str]
    categorical: list[str]
    encoder: CategoryEncoder
    xt: pd.DataFrame
    xv: pd.DataFrame
    weight: np.ndarray | None


def fit_inputs(fr: TaskFrames, features: list[str] | None = None, categorical: list[str] | None = None) -> FitInputs:
    """The encoded inputs of ``fr``'s training and validation rows; ``features``/``categorical``
    default to the feature catalogue (the encoder is fitted on the training rows)."""
    feats = features or feature_names()
    cats = [c for c in (categorical if categorical is not None else categorical_features()) if c in feats]
    x_train, x_valid = model_input(fr.train, feats, set(cats)), model_input(fr.valid, feats, set(cats))
    encoder = CategoryEncoder.fit(x_train, cats)
    xt, xv = encoder.transform(x_train).astype("float64"), encoder.transform(x_valid).astype("float64")
    weight = fr.train[WEIGHT].to_numpy() if WEIGHT in fr.train.columns else None
    return FitInputs(feats, cats, encoder, xt, xv, weight)


def propensity_plots(
    r: TaskResult, y: np.ndarray, x_test: pd.DataFrame, base_scores: dict[str, np.ndarray], d: Path
) -> None:
    """A propensity task's run plots, written to ``d``: ROC/PR against the baselines, gains,
    calibration, and gain and mean |SHAP| importance."""
    model = r.model
    assert model is not None and r.test_scores is not None
    plots.roc_pr(y, r.test_scores, base_scores, d / "roc_pr.png")
    plots.gains(y, r.test_scores, d / "gains_lift.png")
    plots.calibration(y, r.test_scores, d / "calibration.png")
    gain = model.booster.feature_importance("gain")
    plots.importance(model.features, gain, "gain importance", d / "importance_gain.png")
    contrib = model.contributions(x_test.head(2000))[:, :-1]
    plots.importance(model.features, np.abs(contrib).mean(axis=0), "mean |SHAP| (pred_contrib)", d / "shap_summary.png")


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=float))
