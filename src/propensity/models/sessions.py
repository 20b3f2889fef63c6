"""Session-level conversion with the same trainer: an adapter for UCI Online Shoppers Intention.

That data set is one row per browsing session with a purchase flag (``Revenue``), not a
shop's tables, so it bypasses the snapshot pipeline: a stratified random split gives
train / validation (early stopping, calibration) / test (25%), and
:meth:`propensity.models.train.Trainer.fit` fits the same LightGBM + calibrator as for
the shop tasks. It is a sanity check of the learner against a published figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from propensity.config import Settings
from propensity.models.metrics import evaluate
from propensity.models.model import model_input

CATEGORICAL = ["Month", "VisitorType", "Weekend", "OperatingSystems", "Browser", "Region", "TrafficType"]


@dataclass
class SessionFrames:
    plan: None
    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame


def online_shoppers_frames(path: Path, seed: int = 7, test_size: float = 0.25) -> tuple[SessionFrames, list[str]]:
    from sklearn.model_selection import train_test_split

    df = pd.read_csv(path)
    if "Revenue" not in df.columns:
        raise ValueError(f"{path}: column Revenue (the purchase flag) is missing")
    df["label"] = df.pop("Revenue").astype(str).str.upper().eq("TRUE").astype(int)
    for c in CATEGORICAL:
        df[c] = df[c].astype(str)
    rest, test = train_test_split(df, test_size=test_size, stratify=df["label"], random_state=seed)
    train, valid = train_test_split(rest, test_size=0.2, stratify=rest["label"], random_state=seed)
    features = [c for c in df.columns if c != "label"]
    return SessionFrames(
        None, train.reset_index(drop=True), valid.reset_index(drop=True), test.reset_index(drop=True)
    ), features


def online_shoppers_check(settings: Settings, path: Path, seed: int = 7) -> dict[str, float]:
    """Fit on the stratified split and return the test metrics (ROC AUC under ``auc``)."""
    from propensity.models.train import Trainer

    fr, features = online_shoppers_frames(path, seed)
    model, best = Trainer(settings).fit(fr, features, CATEGORICAL)  # type: ignore[arg-type]
    p = model.predict_proba(model_input(fr.test, features, set(CATEGORICAL)))
    out = evaluate(fr.test["label"].to_numpy(), np.asarray(p))
    out.update({"best_iteration": best, "n_train": len(fr.train), "n_valid": len(fr.valid), "n_test": len(fr.test)})
    return out
