"""Conversion sanity check on UCI Online Shoppers Intention with the project's trainer.

    .venv/bin/python bench/online_shoppers.py [PATH]

Stratified random 25% test holdout; prints ROC AUC next to the best published figure
(0.937) and a logistic-regression baseline fitted in the same process on the same split.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from propensity.config import Settings
from propensity.models.sessions import CATEGORICAL, online_shoppers_check, online_shoppers_frames

DEFAULT = (
    Path(__file__).resolve().parents[2] / "shared" / "datasets" / "online_shoppers" / "online_shoppers_intention.csv"
)


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT
    settings = Settings(home=Path(tempfile.mkdtemp()))
    t0 = time.perf_counter()
    m = online_shoppers_check(settings, path)
    secs = time.perf_counter() - t0
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    fr, features = online_shoppers_frames(path)
    numeric = [c for c in features if c not in CATEGORICAL]
    x_train, x_test = fr.train[numeric].fillna(0), fr.test[numeric].fillna(0)
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x_train, fr.train["label"])
    lr_auc = roc_auc_score(fr.test["label"], lr.predict_proba(x_test)[:, 1])
    print(f"Online Shoppers: {m['n_train']:,} train / {m['n_valid']:,} valid / {m['n_test']:,} test sessions")
    print(
        f"  LightGBM + calibration: ROC AUC {m['auc']:.4f}, PR AUC {m['pr_auc']:.4f}, ECE {m['ece']:.4f} "
        f"({m['best_iteration']} trees, {secs:.1f} s)"
    )
    print(f"  logistic regression (numeric columns): ROC AUC {lr_auc:.4f}; ratio {m['auc'] / lr_auc:.3f}")
    print("  best published ROC AUC: 0.937")


if __name__ == "__main__":
    main()
