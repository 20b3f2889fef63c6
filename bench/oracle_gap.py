"""Where the gap between each model and the simulator's oracle comes from.

    .venv/bin/python bench/oracle_gap.py [--home var] [--tasks conversion,repurchase,churn]

Run it on a simulated shop that went through features (``make demo`` leaves one in
``var``). For each task it fits, on the same snapshot plan and test set as ``propensity
train``:

- ``model``: the production trainer (labels, early stopping, calibration);
- ``ceiling``: the same LightGBM on the same features, but trained on the oracle's
  probabilities of the training rows instead of their 0/1 labels. That is what the
  feature set could reach with noise-free labels (as if training data were unlimited),
  so ``oracle - ceiling`` is information the features do not carry (latent traits,
  deaths, history before the simulated window) and ``ceiling - model`` is what learning
  from finite, noisy labels costs;
- ``oracle``: the exact probabilities from the truth store (evaluation code only).

It also prints the oracle's AUC on the customers still alive at the snapshot, and the
paired bootstrap spread of the model-oracle gap, since a test set of a few hundred
positives leaves the AUC itself with a standard error near 0.02.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from propensity.config import Settings
from propensity.features.catalogue import categorical_features, feature_names
from propensity.models.metrics import safe_auc
from propensity.models.model import CategoryEncoder, model_input
from propensity.models.train import TaskFrames, Trainer, lgb_params, train_booster
from propensity.simulate.oracle import Truth


def ceiling_auc(trainer: Trainer, fr: TaskFrames, target_train: np.ndarray) -> float:
    """Test AUC of the production LightGBM settings trained on oracle probabilities (soft labels)."""
    return float(safe_auc(fr.test["label"].to_numpy(), ceiling_scores(trainer, fr, target_train)))


def ceiling_scores(trainer: Trainer, fr: TaskFrames, target_train: np.ndarray) -> np.ndarray:
    """Test scores of the production LightGBM settings trained on oracle probabilities (soft labels)."""
    feats = feature_names()
    cats = [c for c in categorical_features() if c in feats]
    x_train = model_input(fr.train, feats, set(cats))
    enc = CategoryEncoder.fit(x_train, cats)

    def x(df: pd.DataFrame) -> pd.DataFrame:
        return enc.transform(model_input(df, feats, set(cats))).astype("float64")

    m = trainer.settings.models
    params = {**lgb_params(m), "objective": "cross_entropy", "metric": "auc"}
    dtrain = lgb.Dataset(x(fr.train), target_train, categorical_feature=cats)
    # early stopping on the validation snapshot's AUC against its real labels, like the trainer
    dvalid = lgb.Dataset(x(fr.valid), fr.valid["label"].to_numpy(), categorical_feature=cats, reference=dtrain)
    booster = train_booster(params, dtrain, dvalid, m)
    return booster.predict(x(fr.test), num_iteration=booster.best_iteration)


def bootstrap_gap(y: np.ndarray, p_model: np.ndarray, p_oracle: np.ndarray, n: int = 200) -> tuple[float, float]:
    """95% interval of oracle AUC - model AUC over paired bootstrap resamples of the test set."""
    rng = np.random.default_rng(0)
    gaps = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if y[i].min() == y[i].max():
            continue
        gaps.append(safe_auc(y[i], p_oracle[i]) - safe_auc(y[i], p_model[i]))
    lo, hi = np.percentile(gaps, [2.5, 97.5])
    return float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, default=Path("var"))
    ap.add_argument("--tasks", default=None, help="comma-separated; default: all configured tasks")
    args = ap.parse_args()
    settings = Settings(home=args.home)
    if not (settings.truth_dir / "meta.json").exists():
        raise SystemExit(f"{settings.truth_dir}: no truth store; run `make demo` (a simulated shop) first")
    tasks = args.tasks.split(",") if args.tasks else list(settings.tasks)
    trainer = Trainer(settings)
    truth = Truth.read(settings.truth_dir)
    plans = trainer.plans(tasks, None)
    rows = []
    for task in tasks:
        t0 = time.perf_counter()
        plan, label = plans[task], settings.tasks[task].label
        fr = trainer.frames(task, plan, tasks)
        model, _ = trainer.fit(fr)
        y = fr.test["label"].to_numpy()
        p_model = model.predict_proba(model_input(fr.test, model.features))
        p_oracle = truth.row_probabilities(fr.test, plan.horizon_days, label)
        soft_train = truth.row_probabilities(fr.train, plan.horizon_days, label)
        t_idx = (plan.test - truth.start).days
        alive_ids = set(truth.customer_ids[truth.state_at(t_idx)["alive"]].astype(str))
        alive = fr.test["customer_id"].astype(str).isin(alive_ids).to_numpy()
        lo, hi = bootstrap_gap(y, p_model, p_oracle)
        rows.append(
            {
                "task": task,
                "n_test": len(y),
                "positives": int(y.sum()),
                "model": safe_auc(y, p_model),
                "ceiling": ceiling_auc(trainer, fr, soft_train),
                "oracle": safe_auc(y, p_oracle),
                "gap_lo": lo,
                "gap_hi": hi,
                "model_alive": safe_auc(y[alive], p_model[alive]),
                "oracle_alive": safe_auc(y[alive], p_oracle[alive]),
                "seconds": time.perf_counter() - t0,
            }
        )
    print(f"oracle gap decomposition ({args.home}, test snapshots as in `propensity train`)")
    print(
        "| task | test n (pos) | model | ceiling (oracle-trained) | oracle | gap | of which information | "
        "of which learning | gap 95% CI | alive only: model / oracle |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gap = r["oracle"] - r["model"]
        info = r["oracle"] - r["ceiling"]
        print(
            f"| {r['task']} | {r['n_test']:,} ({r['positives']:,}) | {r['model']:.4f} | {r['ceiling']:.4f} | "
            f"{r['oracle']:.4f} | {gap:.4f} | {info:.4f} ({info / gap:.0%}) | {gap - info:.4f} | "
            f"[{r['gap_lo']:.3f}, {r['gap_hi']:.3f}] | {r['model_alive']:.4f} / {r['oracle_alive']:.4f} |"
        )


if __name__ == "__main__":
    main()
