"""Diagnostic plots logged with every task run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def roc_pr(y: np.ndarray, p: np.ndarray, baselines: dict[str, np.ndarray], path: Path) -> Path:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name, score in {"model": p, **baselines}.items():
        fpr, tpr, _ = roc_curve(y, score)
        a.plot(fpr, tpr, label=name)
        prec, rec, _ = precision_recall_curve(y, score)
        b.plot(rec, prec, label=name)
    a.plot([0, 1], [0, 1], "k:", lw=0.8)
    a.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    b.set(xlabel="recall", ylabel="precision", title="precision-recall")
    a.legend()
    return _save(fig, path)


def gains(y: np.ndarray, p: np.ndarray, path: Path) -> Path:
    order = np.argsort(-p, kind="stable")
    frac = np.arange(1, len(y) + 1) / len(y)
    captured = np.cumsum(y[order]) / max(y.sum(), 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.5))
    a.plot(frac, captured, label="model")
    a.plot([0, 1], [0, 1], "k:", lw=0.8, label="random")
    a.set(xlabel="share of customers targeted", ylabel="share of positives captured", title="cumulative gains")
    lift = captured / frac
    b.plot(frac, lift)
    b.axhline(1, color="k", ls=":", lw=0.8)
    b.set(
        xlabel="share of customers targeted",
        ylabel="lift",
        title="lift",
        ylim=(0, max(2, float(lift[10:].max()) * 1.1)),
    )
    a.legend()
    return _save(fig, path)


def calibration(
    y: np.ndarray, p: np.ndarray, path: Path, bins: int = 10, unit: tuple[str, str] = ("predicted probability", "rate")
) -> Path:
    order = np.argsort(p, kind="stable")
    chunks = [c for c in np.array_split(order, bins) if len(c)]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([p[c].mean() for c in chunks], [y[c].mean() for c in chunks], "o-", label="model")
    hi = max(float(p.max()), float(y.mean()) * 2, 0.05)
    ax.plot([0, hi], [0, hi], "k:", lw=0.8, label="perfect")
    ax.set(xlabel=f"mean {unit[0]}", ylabel=f"observed {unit[1]}", title="calibration (equal-count bins)")
    ax.legend()
    return _save(fig, path)


def importance(names: list[str], values: np.ndarray, title: str, path: Path, top: int = 25) -> Path:
    idx = np.argsort(values)[-top:]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(idx) + 1.2))
    ax.barh([names[i] for i in idx], values[idx])
    ax.set(title=title)
    return _save(fig, path)


def lorenz(y: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> Path:
    """A value task's gains: the share of realised revenue made by the customers ranked
    highest by each score (the model, its baselines), with the perfect order and random."""
    frac = np.arange(1, len(y) + 1) / len(y)
    fig, ax = plt.subplots(figsize=(6, 5))
    total = max(float(y.sum()), 1e-12)
    for name, score in {**scores, "perfect": y}.items():
        order = np.argsort(-np.asarray(score, dtype=float), kind="stable")
        ax.plot(frac, np.cumsum(y[order]) / total, label=name, ls="--" if name == "perfect" else "-")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8, label="random")
    ax.set(xlabel="share of customers, highest predicted first", ylabel="share of revenue", title="revenue gains")
    ax.legend()
    return _save(fig, path)
