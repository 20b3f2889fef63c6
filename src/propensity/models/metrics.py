"""Evaluation metrics for propensity scores (pure functions over numpy arrays)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

TOP_FRACTIONS = (0.05, 0.10, 0.20)
#: equal-count score bins of the expected calibration error
ECE_BINS = 10


def safe_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return None
    return float(roc_auc_score(y, p))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Weighted mean |observed rate - mean score| over equal-count score bins."""
    order = np.argsort(p, kind="stable")
    chunks = np.array_split(order, bins)
    n = len(p)
    return float(sum(len(c) / n * abs(y[c].mean() - p[c].mean()) for c in chunks if len(c)))


def lift_and_capture(y: np.ndarray, p: np.ndarray, fractions=TOP_FRACTIONS) -> dict[str, float]:
    """Lift (rate in the top k% / base rate) and capture (share of positives in the top k%)."""
    order = np.argsort(-p, kind="stable")
    base = y.mean()
    out = {}
    for f in fractions:
        k = max(1, round(f * len(y)))
        top = y[order[:k]]
        pct = round(f * 100)
        out[f"lift_top{pct}"] = float(top.mean() / base) if base > 0 else float("nan")
        out[f"capture_top{pct}"] = float(top.sum() / y.sum()) if y.sum() > 0 else float("nan")
    return out


def evaluate(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    y = np.asarray(y, dtype=float)
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    out: dict[str, float] = {
        "auc": safe_auc(y, p) or float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if y.sum() > 0 else float("nan"),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
        "positive_rate": float(y.mean()),
        "mean_score": float(p.mean()),
    }
    out.update(lift_and_capture(y, p))
    return out


def group_auc(y: np.ndarray, p: np.ndarray, groups: np.ndarray, min_size: int = 50) -> Mapping[str, float]:
    """AUC within each group (country, lifecycle stage...) big enough and with both classes."""
    out = {}
    for g in np.unique(groups.astype(str)):
        m = groups.astype(str) == g
        if m.sum() >= min_size:
            auc = safe_auc(y[m], p[m])
            if auc is not None:
                out[g] = auc
    return out
