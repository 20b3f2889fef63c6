"""Population stability (PSI) of a model's inputs and scores: pure functions, no I/O.

``PSI = sum_i (a_i - e_i) * ln(a_i / e_i)`` over bins ``i``, ``e`` being the reference
(expected) share of rows in a bin and ``a`` the current (actual) one. Rule of thumb:
below 0.1 stable, 0.1-0.2 moving, above 0.2 shifted.

A *reference* (what training logs as the MLflow artifact ``reference.json``) keeps, per
feature, only what PSI needs, so it stays small (~20 KB for 100 features):

* numeric: the interior cut points at the reference's quantiles (``bins`` bins,
  deduplicated, so a zero-inflated count gets fewer, wider bins), the shares of the bins
  ``(-inf, c1], (c1, c2], ..., (ck, inf)`` and the share of missing values (null, NaN,
  infinite), which is a bin of its own;
* categorical: the shares of the ``max_categories`` most frequent values; rarer values
  pool into ``__other__`` (a value first seen today too), missing ones into ``__missing__``;
* the score: the model's test-set scores, profiled like a numeric feature.

Current data are binned with the reference's cut points and categories. Empty bins are
floored at :data:`EPS` on both sides, so a bin that empties (or appears) costs a large
but finite PSI.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

EPS = 1e-4
MISSING = "__missing__"
OTHER = "__other__"
REFERENCE_VERSION = 1


# Profiles ------------------------------------------------------------------------------------


def _as_float(values: Any) -> np.ndarray:
    """Any column (NumPy, pandas, Polars, list) as float64, nulls as NaN."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values.astype(np.float64, copy=False)
    if hasattr(values, "cast") and hasattr(values, "to_numpy"):  # a Polars Series: nulls -> NaN via Float64
        import polars as pl

        return values.cast(pl.Float64, strict=False).fill_null(np.nan).to_numpy()
    if hasattr(values, "to_numpy"):  # pandas, including nullable dtypes
        return np.asarray(values.to_numpy(dtype="float64", na_value=np.nan), dtype=np.float64)
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _as_labels(values: Any) -> list[str | None]:
    """Any column as strings, None for missing (null, NaN)."""
    items = values.to_list() if hasattr(values, "to_list") else list(values)
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in items]


def _numeric_shares(edges: Sequence[float], values: Any) -> tuple[np.ndarray, float]:
    x = _as_float(values)
    n = len(x)
    if n == 0:
        raise ValueError("no rows to profile")
    finite = np.isfinite(x)
    idx = np.searchsorted(np.asarray(edges, dtype=np.float64), x[finite], side="left")
    counts = np.bincount(idx, minlength=len(edges) + 1)
    return counts / n, float((~finite).sum() / n)


def _categorical_shares(categories: Sequence[str], values: Any) -> dict[str, float]:
    labels = _as_labels(values)
    n = len(labels)
    if n == 0:
        raise ValueError("no rows to profile")
    known = set(categories)
    counts = Counter(v if v is None or v in known else OTHER for v in labels)
    shares = {c: counts.get(c, 0) / n for c in categories}
    shares[OTHER] = counts.get(OTHER, 0) / n
    shares[MISSING] = counts.get(None, 0) / n
    return shares


def numeric_profile(values: Any, bins: int = 10) -> dict[str, Any]:
    """Quantile cut points of ``values`` and the shares of the bins they make (plus missing)."""
    x = _as_float(values)
    finite = x[np.isfinite(x)]
    cuts = np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1]) if finite.size else np.array([])
    edges = [float(e) for e in np.unique(cuts)]
    shares, missing = _numeric_shares(edges, x)
    return {
        "kind": "numeric",
        "rows": len(x),
        "edges": edges,
        "shares": [round(float(s), 6) for s in shares],
        "missing": round(missing, 6),
    }


def categorical_profile(values: Any, max_categories: int = 20) -> dict[str, Any]:
    """Shares of the ``max_categories`` most frequent values, ``__other__`` and ``__missing__``."""
    labels = _as_labels(values)
    counts = Counter(v for v in labels if v is not None)
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_categories]
    shares = _categorical_shares([c for c, _ in top], labels)
    return {"kind": "categorical", "rows": len(labels), "shares": {k: round(v, 6) for k, v in shares.items()}}


def shares_against(profile: Mapping[str, Any], values: Any) -> tuple[np.ndarray, np.ndarray]:
    """(reference shares, current shares) over the reference's bins, missing last."""
    if profile["kind"] == "numeric":
        current, missing = _numeric_shares(profile["edges"], values)
        expected = np.array([*profile["shares"], profile["missing"]], dtype=np.float64)
        return expected, np.append(current, missing)
    categories = [c for c in profile["shares"] if c not in (OTHER, MISSING)]
    current_map = _categorical_shares(categories, values)
    keys = [*categories, OTHER, MISSING]
    return (
        np.array([profile["shares"].get(k, 0.0) for k in keys], dtype=np.float64),
        np.array([current_map[k] for k in keys], dtype=np.float64),
    )


# PSI -----------------------------------------------------------------------------------------


def psi(expected: Sequence[float] | np.ndarray, actual: Sequence[float] | np.ndarray, eps: float = EPS) -> float:
    """PSI of two share vectors over the same bins; shares below ``eps`` count as ``eps``."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), eps)
    a = np.maximum(np.asarray(actual, dtype=np.float64), eps)
    if e.shape != a.shape:
        raise ValueError(f"share vectors differ in length: {e.shape} vs {a.shape}")
    return float(np.sum((a - e) * np.log(a / e)))


def psi_against(profile: Mapping[str, Any], values: Any) -> float:
    """PSI of ``values`` against a reference profile (numeric or categorical)."""
    return psi(*shares_against(profile, values))


def psi_numeric(reference: Any, current: Any, bins: int = 10) -> float:
    """PSI of two numeric samples, binned at the reference's quantiles."""
    return psi_against(numeric_profile(reference, bins), current)


def psi_categorical(reference: Any, current: Any, max_categories: int = 20) -> float:
    """PSI of two categorical samples over the reference's most frequent values."""
    return psi_against(categorical_profile(reference, max_categories), current)


# References ----------------------------------------------------------------------------------


def build_reference(
    frame: Any,
    features: Iterable[str],
    categorical: Iterable[str] = (),
    scores: Any = None,
    *,
    bins: int = 10,
    max_categories: int = 20,
    **meta: Any,
) -> dict[str, Any]:
    """The drift reference of a model: a profile per feature of ``frame`` (pandas or Polars),
    of ``scores`` if given, plus ``meta`` (task, snapshots, ...). JSON-serialisable."""
    cats = set(categorical)
    profiles = {
        name: categorical_profile(frame[name], max_categories) if name in cats else numeric_profile(frame[name], bins)
        for name in features
    }
    return {
        "version": REFERENCE_VERSION,
        "rows": len(frame),
        "bins": bins,
        "max_categories": max_categories,
        **meta,
        "features": profiles,
        "score": numeric_profile(scores, bins) if scores is not None and len(scores) else None,
    }


# Reports -------------------------------------------------------------------------------------


@dataclass
class TaskDrift:
    """One task's drift: PSI per feature (highest first), of the score, and the verdict."""

    task: str
    features: dict[str, float]
    score_psi: float | None
    drifted: list[str]
    breach: bool
    reasons: list[str]
    rows_reference: int
    rows_current: int
    model: dict[str, Any] = field(default_factory=dict)
    scores_dt: str | None = None
    notes: list[str] = field(default_factory=list)

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        return list(self.features.items())[:n]


def task_drift(
    task: str,
    reference: Mapping[str, Any],
    current: Any,
    scores: Any = None,
    *,
    psi_threshold: float = 0.2,
    min_drifted_features: int = 3,
    score_psi_threshold: float = 0.2,
    exclude: Iterable[str] = (),
    model: Mapping[str, Any] | None = None,
    scores_dt: str | None = None,
    score_context: str | None = None,
) -> TaskDrift:
    """Compare ``current`` (a frame with the reference's feature columns) and optional current
    ``scores`` with ``reference``; breach when ``min_drifted_features`` features reach
    ``psi_threshold`` or the score PSI reaches ``score_psi_threshold``.

    ``score_context`` says why the scores are not comparable with the reference's (a sale
    ahead of one and not the other): the score PSI is then reported but not counted."""
    skip = set(exclude)
    notes: list[str] = []
    columns = set(current.columns)
    missing = [f for f in reference["features"] if f not in columns and f not in skip]
    if missing:
        notes.append(f"{len(missing)} reference feature(s) absent from the current data: {', '.join(missing[:10])}")
    values = {
        name: psi_against(profile, current[name])
        for name, profile in reference["features"].items()
        if name in columns and name not in skip
    }
    ranked = dict(sorted(values.items(), key=lambda kv: (-kv[1], kv[0])))
    drifted = [f for f, v in ranked.items() if v >= psi_threshold]
    score_psi = None
    if scores is not None and reference.get("score"):
        score_psi = psi_against(reference["score"], scores)
    elif scores is not None:
        notes.append("the reference has no score profile: score drift not measured")
    reasons = []
    if len(drifted) >= min_drifted_features:
        reasons.append(f"{len(drifted)} feature(s) with PSI >= {psi_threshold} (at least {min_drifted_features})")
    if score_psi is not None and score_context:
        notes.append(f"score PSI not counted: {score_context}")
    elif score_psi is not None and score_psi >= score_psi_threshold:
        reasons.append(f"score PSI {score_psi:.3f} >= {score_psi_threshold}")
    return TaskDrift(
        task=task,
        features={k: round(v, 6) for k, v in ranked.items()},
        score_psi=None if score_psi is None else round(score_psi, 6),
        drifted=drifted,
        breach=bool(reasons),
        reasons=reasons,
        rows_reference=int(reference.get("rows", 0)),
        rows_current=len(current),
        model=dict(model or {}),
        scores_dt=scores_dt,
        notes=notes,
    )


@dataclass
class DriftReport:
    """Drift of every monitored task on one snapshot; ``skipped`` says why a task was not monitored."""

    snapshot: str
    psi_threshold: float
    min_drifted_features: int
    score_psi_threshold: float
    tasks: dict[str, TaskDrift] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def breach(self) -> bool:
        return any(t.breach for t in self.tasks.values())

    @property
    def breached_tasks(self) -> list[str]:
        return [name for name, t in self.tasks.items() if t.breach]

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["breach"] = self.breach
        doc["breached_tasks"] = self.breached_tasks
        return doc

    def summary_lines(self, top: int = 10) -> list[str]:
        """Log lines: one verdict per task, then its ``top`` features by PSI."""
        lines = []
        for name, t in self.tasks.items():
            score = "n/a" if t.score_psi is None else f"{t.score_psi:.3f}"
            verdict = "BREACH (" + "; ".join(t.reasons) + ")" if t.breach else "ok"
            lines.append(
                f"drift {name} snapshot {self.snapshot}: {verdict}; {len(t.drifted)} drifted feature(s), "
                f"score PSI {score}, {t.rows_current:,} current vs {t.rows_reference:,} reference rows"
            )
            lines += [f"  {name} {feature:<28} PSI {value:8.4f}" for feature, value in t.top(top)]
            lines += [f"  {name} note: {note}" for note in t.notes]
        lines += [f"drift {name}: not monitored: {why}" for name, why in self.skipped.items()]
        return lines

    def markdown(self, top: int = 20) -> str:
        out = [
            f"# Drift report: snapshot {self.snapshot}",
            "",
            f"Generated {self.created_at}. A task breaches when at least {self.min_drifted_features} feature(s) "
            f"have PSI >= {self.psi_threshold}, or its score PSI is >= {self.score_psi_threshold}.",
            "",
            f"**Breach: {', '.join(self.breached_tasks)}**" if self.breach else "**No breach.**",
        ]
        for name, t in self.tasks.items():
            m = t.model
            model = f"{m.get('model_name', '?')} v{m.get('model_version', '?')}" if m else "unknown model"
            out += [
                "",
                f"## {name}: {'BREACH' if t.breach else 'ok'}",
                "",
                f"Reference: {model} (run `{m.get('run_id', '?')}`), {t.rows_reference:,} rows; "
                f"current: {t.rows_current:,} rows; scores: {t.scores_dt or 'none published'}.",
            ]
            out += [f"- {r}" for r in t.reasons] + [f"- note: {n}" for n in t.notes]
            out += ["", "| feature | PSI | drifted |", "|---|---:|:---:|"]
            if t.score_psi is not None:
                flag = "yes" if t.score_psi >= self.score_psi_threshold else ""
                out.append(f"| *score* | {t.score_psi:.4f} | {flag} |")
            out += [f"| `{f}` | {v:.4f} | {'yes' if f in t.drifted else ''} |" for f, v in t.top(top)]
        if self.skipped:
            out += ["", "## Not monitored", ""] + [f"- {name}: {why}" for name, why in self.skipped.items()]
        return "\n".join(out) + "\n"
