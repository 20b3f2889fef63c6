"""Bootstrap confidence intervals for out-of-time evaluation statistics (pure functions over numpy arrays).

A single AUC on one test snapshot says nothing about how much of it is luck. This module
attaches percentile bootstrap intervals to the headline statistics (AUC, PR AUC, ECE) and,
more importantly, to *differences* between two models scored on the same rows, which is
what a promotion gate ("challenger − champion > −margin with 95% confidence") and a
sanity check ("the model beats the best baseline") really ask.

Two design choices matter:

Cluster bootstrap
    The pooled out-of-time test set is the union of the last *k* labelled snapshots, so a
    customer appears once per snapshot, with strongly correlated features, scores and
    labels. Resampling rows treats those copies as independent evidence and gives intervals
    that are too narrow (about ``1/sqrt(k)`` too narrow if every customer appears *k*
    times). Resampling *customers* (all of a customer's rows go in or out together,
    :func:`cluster_indices`) keeps the dependence inside a replicate and gives honest widths.

Paired replicates
    Two models scored on the same rows have strongly correlated AUCs: a resample that
    happens to hold easy customers raises both. Their separate intervals therefore overlap
    even when one model is reliably better. :func:`paired_difference` and
    :func:`evaluate_with_intervals` compute every statistic of every model on the *same*
    resamples, so the interval of the difference cancels the shared noise.

Speed
    A replicate is represented by its row multiplicities (how many times each row was
    drawn) rather than by a materialised copy of the data. AUC, average precision and the
    equal-count ECE are exact functions of those multiplicities once each score vector has
    been sorted once (:class:`_Sorted`), so a replicate costs about two ``O(n)`` numpy passes
    per score vector and no sort (:func:`weighted_auc` and friends expose them, with
    integer ``weights`` as multiplicities). The named metrics ``"auc"``, ``"pr_auc"`` and ``"ece"`` take that path; any
    other callable ``metric(y, p)`` is evaluated on the materialised resample (general but
    slower, about a sort per model and replicate).

Intervals are plain percentile intervals of the replicate values; the point estimate is the
statistic on the full sample, computed with the same helpers as :mod:`propensity.models.metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import average_precision_score

from propensity.models.metrics import ECE_BINS, expected_calibration_error, safe_auc

#: Metrics with a fast, count-weighted bootstrap path.
MetricName = Literal["auc", "pr_auc", "ece"]
#: A named metric, or any ``metric(y, p)`` returning ``None``/NaN where it is undefined (like :func:`safe_auc`).
Metric = MetricName | Callable[[np.ndarray, np.ndarray], float | None]

#: Above this share of replicates with an undefined statistic, the interval is refused.
MAX_UNDEFINED_FRACTION = 0.05


@dataclass(frozen=True)
class Interval:
    """A point estimate (on the full sample) and a percentile bootstrap interval around it."""

    estimate: float
    low: float
    high: float

    def to_dict(self, ndigits: int | None = 4) -> dict[str, float]:
        """``{"estimate", "low", "high"}``, rounded to ``ndigits`` (``None`` keeps full precision)."""
        values = {"estimate": self.estimate, "low": self.low, "high": self.high}
        if ndigits is None:
            return {k: float(v) for k, v in values.items()}
        return {k: round(float(v), ndigits) for k, v in values.items()}

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


# --------------------------------------------------------------------------- resampling


def _group_codes(groups: ArrayLike | None, n_rows: int) -> np.ndarray | None:
    """Dense cluster codes ``0..G-1`` per row (``None``: every row is its own cluster)."""
    if groups is None:
        return None
    groups = np.asarray(groups)
    if groups.ndim != 1 or len(groups) != n_rows:
        raise ValueError(f"groups must be one-dimensional with one entry per row ({n_rows}), got shape {groups.shape}")
    _, codes = np.unique(groups, return_inverse=True)
    return codes.reshape(-1)


def _replicate_counts(
    codes: np.ndarray | None, n_rows: int, n_boot: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Per replicate, how many times each row is drawn (int array of length ``n_rows``).

    Clusters are drawn with replacement, as many as there are clusters; a row's
    multiplicity is its cluster's. Without clusters, rows are drawn with replacement.
    Vectorised: one ``integers`` draw and one ``bincount`` per replicate, no loop over rows.
    """
    if codes is None:
        for _ in range(n_boot):
            yield np.bincount(rng.integers(0, n_rows, size=n_rows), minlength=n_rows)
        return
    n_groups = int(codes.max()) + 1 if len(codes) else 0
    for _ in range(n_boot):
        drawn = np.bincount(rng.integers(0, n_groups, size=n_groups), minlength=n_groups)
        yield drawn[codes]


def cluster_indices(
    groups: ArrayLike | None, n_boot: int, rng: np.random.Generator, n_rows: int | None = None
) -> Iterator[np.ndarray]:
    """Yield the row indices of ``n_boot`` cluster-bootstrap replicates.

    Each replicate draws as many clusters (customers) as there are, with replacement, and
    yields the indices of all their rows; a cluster drawn twice contributes its rows twice.
    Indices come sorted, so a statistic that breaks ties by position sees the original
    row order. With ``groups=None`` rows are resampled (``n_rows`` is then required).

    Cluster, not row, resampling because a pooled out-of-time test set holds each customer
    once per snapshot: those rows are not independent, and resampling them one by one
    understates the uncertainty.
    """
    if groups is None:
        if n_rows is None:
            raise ValueError("cluster_indices needs n_rows when groups is None")
        codes = None
    else:
        n_rows = len(np.asarray(groups))
        codes = _group_codes(groups, n_rows)
    rows = np.arange(n_rows)
    for counts in _replicate_counts(codes, n_rows, n_boot, rng):
        yield np.repeat(rows, counts)


# --------------------------------------------------------------------------- count-weighted metrics


@dataclass(frozen=True)
class _Counts:
    """One replicate seen through one score vector's sort order."""

    ws: np.ndarray  # multiplicities in ascending score order
    tz: np.ndarray  # tz[k] = multiplicity of sorted rows 0..k-1 (tz[0] = 0): the expanded sample's ranks
    wp: np.ndarray  # multiplicities of the positives, ascending score
    n_pos: int
    n_all: int


class _Sorted:
    """One score vector, sorted once, so that a replicate's metrics cost two O(n) numpy passes.

    A replicate is given by its row multiplicities ``w``; every metric equals the metric on
    the data with row ``i`` repeated ``w[i]`` times. The multiplicities in score order and
    their cumulative sum (the ranks in the expanded sample) are all that is needed:

    * AUC by Mann–Whitney: ``U = Σ_pos w_i · midrank_i − P(P+1)/2``, where a positive's
      midrank is that of its tie block, ``(ranks before the block + 1 + ranks through it) / 2``,
      so ties (between rows, and between copies of a row) count 1/2 as in sklearn.
    * Average precision: for each positive, the precision at its score's threshold, i.e.
      positives at or above it over all rows at or above it, from the same cumulative sums.
    * Equal-count ECE: the chunk boundaries of the expanded sample are found by
      ``searchsorted`` on the cumulative multiplicities.

    Integer arithmetic keeps AUC exact; results match sklearn and
    :func:`expected_calibration_error` on the expanded sample to rounding.
    """

    def __init__(self, y: np.ndarray, p: np.ndarray) -> None:
        n = len(p)
        # Stable: ties keep row order, as expected_calibration_error on a resample whose indices are sorted.
        self.order = np.argsort(p, kind="stable")
        self.y_sorted = y[self.order]
        self.p_sorted = p[self.order]
        new_block = np.empty(n, dtype=bool)
        new_block[:1] = True
        np.not_equal(self.p_sorted[1:], self.p_sorted[:-1], out=new_block[1:])
        starts = np.flatnonzero(new_block)
        ends = np.append(starts[1:], n)
        block = np.cumsum(new_block) - 1
        #: sorted positions of the positives
        self.pos = np.flatnonzero(self.y_sorted == 1)
        #: per positive, tz index before its tie block and after it
        self.before = starts[block[self.pos]]
        self.through = ends[block[self.pos]]
        #: per positive, how many positives sort before its tie block
        self.pos_before = np.searchsorted(self.pos, self.before, side="left")
        self._tz = np.zeros(n + 1, dtype=np.int64)

    def counts(self, w: np.ndarray) -> _Counts:
        ws = w[self.order]
        tz = self._tz.copy()
        np.cumsum(ws, out=tz[1:])
        wp = ws[self.pos]
        return _Counts(ws, tz, wp, int(wp.sum()), int(tz[-1]))

    def auc(self, c: _Counts) -> float:
        n_neg = c.n_all - c.n_pos
        if c.n_pos == 0 or n_neg == 0:
            return math.nan
        twice_rank_sum = int(c.wp @ (c.tz[self.before] + 1 + c.tz[self.through]))
        twice_u = twice_rank_sum - c.n_pos * (c.n_pos + 1)
        return twice_u / (2 * c.n_pos * n_neg)

    def average_precision(self, c: _Counts) -> float:
        if c.n_pos == 0:
            return math.nan
        cum_pos = np.concatenate(([0], np.cumsum(c.wp)))
        tp = c.n_pos - cum_pos[self.pos_before]  # positives at or above the threshold
        at_or_above = c.n_all - c.tz[self.before]
        precision = np.divide(tp, at_or_above, out=np.zeros(len(tp)), where=at_or_above > 0)
        return float(c.wp @ precision / c.n_pos)

    def ece(self, c: _Counts, bins: int = ECE_BINS) -> float:
        """Weighted |observed rate − mean score| over equal-count chunks of the expanded sample.

        Chunk ``k`` of ``np.array_split`` covers expanded positions ``[b_k, b_{k+1})``. The
        sum of ``y`` (or ``p``) over the first ``b`` positions is a cumulative sum up to the
        row holding position ``b`` plus a partial count of that row.
        """
        m = c.n_all
        if m == 0:
            return math.nan
        q, r = divmod(m, bins)
        sizes = np.full(bins, q)
        sizes[:r] += 1
        bounds = np.concatenate(([0], np.cumsum(sizes)))
        row = np.minimum(np.searchsorted(c.tz[1:], bounds, side="left"), len(c.ws) - 1)
        partial = bounds - c.tz[row]
        cum_pos = np.concatenate(([0], np.cumsum(c.wp)))
        sum_y = cum_pos[np.searchsorted(self.pos, row, side="left")] + partial * self.y_sorted[row]
        cum_p = np.concatenate(([0.0], np.cumsum(c.ws * self.p_sorted)))
        sum_p = cum_p[row] + partial * self.p_sorted[row]
        return float(np.abs(np.diff(sum_y) - np.diff(sum_p)).sum() / m)


def _weights(n: int, weights: ArrayLike | None) -> np.ndarray:
    if weights is None:
        return np.ones(n, dtype=np.int64)
    w = np.asarray(weights)
    if w.shape != (n,) or (w < 0).any() or (w != np.round(w)).any():
        raise ValueError("weights must be non-negative integer multiplicities, one per row")
    return w.astype(np.int64)


def weighted_auc(y: ArrayLike, p: ArrayLike, weights: ArrayLike | None = None) -> float:
    """ROC AUC of the sample with row ``i`` repeated ``weights[i]`` times (NaN with one class).

    Rank-based (Mann–Whitney, ties count 1/2), equal to sklearn's ``roc_auc_score`` on the
    expanded sample.
    """
    y, p = _binary(y), _scores(p, len(np.asarray(y)))
    w = _weights(len(y), weights)
    s = _Sorted(y, p)
    return s.auc(s.counts(w))


def weighted_average_precision(y: ArrayLike, p: ArrayLike, weights: ArrayLike | None = None) -> float:
    """Average precision (PR AUC) of the expanded sample, as sklearn's ``average_precision_score``.

    NaN without positives.
    """
    y, p = _binary(y), _scores(p, len(np.asarray(y)))
    w = _weights(len(y), weights)
    s = _Sorted(y, p)
    return s.average_precision(s.counts(w))


def weighted_ece(y: ArrayLike, p: ArrayLike, weights: ArrayLike | None = None, bins: int = ECE_BINS) -> float:
    """Equal-count ECE of the expanded sample, as :func:`expected_calibration_error` on it.

    Rows with equal scores are ordered by row index (stable sort), which decides the chunk of
    tied rows at a chunk boundary.
    """
    y, p = _binary(y), _scores(p, len(np.asarray(y)))
    w = _weights(len(y), weights)
    s = _Sorted(y, p)
    return s.ece(s.counts(w), bins)


# --------------------------------------------------------------------------- input checks and estimates


def _binary(y: ArrayLike) -> np.ndarray:
    y = np.asarray(y, dtype=float)
    if y.ndim != 1 or len(y) == 0:
        raise ValueError(f"y must be one-dimensional and non-empty, got shape {y.shape}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y must be binary (0/1)")
    return y


def _scores(p: ArrayLike, n_rows: int, name: str = "scores") -> np.ndarray:
    p = np.asarray(p, dtype=float)
    if p.shape != (n_rows,):
        raise ValueError(f"{name} must have one value per row ({n_rows}), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} must be finite (no NaN/inf)")
    return p


def _is_undefined(value: float | None) -> bool:
    return value is None or math.isnan(value)


def _estimate(metric: Metric, y: np.ndarray, p: np.ndarray) -> float:
    """The full-sample statistic, with the same helpers :func:`propensity.models.metrics.evaluate` uses."""
    if metric == "auc":
        value = safe_auc(y, p)
    elif metric == "pr_auc":
        value = float(average_precision_score(y, p)) if y.sum() > 0 else None
    elif metric == "ece":
        value = expected_calibration_error(y, p, bins=ECE_BINS)
    elif callable(metric):
        value = metric(y, p)
    else:
        raise ValueError(f"unknown metric {metric!r}: use 'auc', 'pr_auc', 'ece' or a callable metric(y, p)")
    if _is_undefined(value):
        raise ValueError(
            f"{_metric_label(metric)} is undefined on the full sample "
            f"({int(y.sum())} positives, {int(len(y) - y.sum())} negatives)"
        )
    return float(value)  # type: ignore[arg-type]


def _metric_label(metric: Metric) -> str:
    return metric if isinstance(metric, str) else getattr(metric, "__name__", repr(metric))


def _replicate_fn(metric: Metric, y: np.ndarray, p: np.ndarray) -> Callable[[np.ndarray], float]:
    """``f(w)`` -> the metric on the replicate with multiplicities ``w`` (NaN if undefined)."""
    if isinstance(metric, str):
        s = _Sorted(y, p)
        fast = {"auc": s.auc, "pr_auc": s.average_precision, "ece": s.ece}[metric]
        return lambda w: fast(s.counts(w))
    rows = np.arange(len(y))

    def materialised(w: np.ndarray) -> float:
        ix = np.repeat(rows, w)
        value = metric(y[ix], p[ix])
        return math.nan if _is_undefined(value) else float(value)  # type: ignore[arg-type]

    return materialised


def _percentile_interval(
    estimate: float, values: np.ndarray, level: float, label: str, y: np.ndarray, n_clusters: int
) -> Interval:
    """Percentile interval of the defined replicates; refuses when too many are undefined."""
    defined = values[~np.isnan(values)]
    skipped = len(values) - len(defined)
    if skipped > MAX_UNDEFINED_FRACTION * len(values) or len(defined) == 0:
        n_pos = int(y.sum())
        rare = "positives" if n_pos <= len(y) - n_pos else "negatives"
        raise ValueError(
            f"{label} is undefined in {skipped} of {len(values)} bootstrap replicates "
            f"(more than {MAX_UNDEFINED_FRACTION:.0%}): those resamples hold a single class. "
            f"The test set has {n_pos} positives and {len(y) - n_pos} negatives over {n_clusters} "
            f"resampled units; too few {rare} for a bootstrap interval (pool more snapshots "
            "or use a longer label window)"
        )
    tail = (1 - level) / 2
    low, high = np.quantile(defined, [tail, 1 - tail])
    return Interval(float(estimate), float(low), float(high))


def _check_run(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")


def _n_clusters(codes: np.ndarray | None, n_rows: int) -> int:
    return n_rows if codes is None else int(codes.max()) + 1


# --------------------------------------------------------------------------- public API


@overload
def bootstrap(
    metric: Metric,
    y: ArrayLike,
    scores: Mapping[str, ArrayLike],
    groups: ArrayLike | None = ...,
    n_boot: int = ...,
    seed: int | np.random.Generator = ...,
    level: float = ...,
) -> dict[str, Interval]: ...


@overload
def bootstrap(
    metric: Metric,
    y: ArrayLike,
    scores: np.ndarray,
    groups: ArrayLike | None = ...,
    n_boot: int = ...,
    seed: int | np.random.Generator = ...,
    level: float = ...,
) -> Interval: ...


def bootstrap(
    metric: Metric,
    y: ArrayLike,
    scores: Mapping[str, ArrayLike] | np.ndarray,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int | np.random.Generator = 0,
    level: float = 0.95,
) -> dict[str, Interval] | Interval:
    """Percentile bootstrap interval of ``metric(y, p)`` for one score vector or several.

    ``metric`` is ``"auc"``, ``"pr_auc"`` or ``"ece"`` (fast path) or a callable
    ``metric(y, p) -> float | None`` (evaluated on each materialised resample).
    ``groups`` holds the customer of each row: resampling is then by customer (cluster
    bootstrap), since the pooled test set repeats customers across snapshots; ``None``
    resamples rows. All models share the same resamples, so their intervals are
    comparable; use :func:`paired_difference` to compare two of them.

    Replicates where the metric is undefined (one class only: no AUC) are skipped; more
    than :data:`MAX_UNDEFINED_FRACTION` of them raises ``ValueError`` (too few positives).
    Returns an :class:`Interval` for an array of scores, ``{name: Interval}`` for a mapping.
    """
    _check_run(n_boot, level)
    yv = _binary(y)
    single = not isinstance(scores, Mapping)
    named = {"scores": scores} if single else dict(scores)  # type: ignore[dict-item]
    ps = {name: _scores(p, len(yv), name) for name, p in named.items()}
    codes = _group_codes(groups, len(yv))
    estimates = {name: _estimate(metric, yv, p) for name, p in ps.items()}
    fns = {name: _replicate_fn(metric, yv, p) for name, p in ps.items()}
    values = {name: np.empty(n_boot) for name in ps}
    rng = np.random.default_rng(seed)
    for b, w in enumerate(_replicate_counts(codes, len(yv), n_boot, rng)):
        for name, fn in fns.items():
            values[name][b] = fn(w)
    n_clusters = _n_clusters(codes, len(yv))
    out = {
        name: _percentile_interval(
            estimates[name], values[name], level, f"{_metric_label(metric)} of {name}", yv, n_clusters
        )
        for name in ps
    }
    return out["scores"] if single else out


def paired_difference(
    metric: Metric,
    y: ArrayLike,
    a: ArrayLike,
    b: ArrayLike,
    groups: ArrayLike | None = None,
    n_boot: int = 1000,
    seed: int | np.random.Generator = 0,
    level: float = 0.95,
) -> Interval:
    """Interval of ``metric(y, a) − metric(y, b)``, both computed on the SAME resamples.

    Two models scored on the same customers have strongly correlated statistics, so the
    difference varies far less than either statistic: separate intervals overlap even when
    ``a`` is reliably better. Pairing the replicates cancels the shared noise. A promotion
    gate reads ``paired_difference("auc", y, challenger, champion, groups).low > -margin``;
    "the model beats the baseline" reads ``.low > 0``.
    """
    _check_run(n_boot, level)
    yv = _binary(y)
    pa, pb = _scores(a, len(yv), "a"), _scores(b, len(yv), "b")
    codes = _group_codes(groups, len(yv))
    estimate = _estimate(metric, yv, pa) - _estimate(metric, yv, pb)
    fa, fb = _replicate_fn(metric, yv, pa), _replicate_fn(metric, yv, pb)
    values = np.empty(n_boot)
    rng = np.random.default_rng(seed)
    for i, w in enumerate(_replicate_counts(codes, len(yv), n_boot, rng)):
        values[i] = fa(w) - fb(w)  # NaN if either is undefined
    label = f"{_metric_label(metric)} difference"
    return _percentile_interval(estimate, values, level, label, yv, _n_clusters(codes, len(yv)))


def evaluate_with_intervals(
    y: ArrayLike,
    p: ArrayLike,
    groups: ArrayLike | None = None,
    baselines: Mapping[str, ArrayLike] | None = None,
    n_boot: int = 1000,
    seed: int | np.random.Generator = 0,
    level: float = 0.95,
    ndigits: int | None = 4,
) -> dict[str, Any]:
    """AUC, PR AUC and ECE intervals for a model, and AUC plus paired AUC difference for each baseline.

    One resampling pass: each replicate's multiplicities feed every statistic of every
    model, so all intervals are paired (the ``model − baseline`` difference is computed per
    replicate) and the cost is one draw per replicate plus O(n) work per score vector.
    ``groups`` (customer per row) switches to the cluster bootstrap, as the pooled test
    set repeats customers. JSON-serialisable::

        {"n_rows", "n_clusters", "n_positives", "n_boot", "level", "resampling": "cluster"|"row",
         "skipped_replicates",                      # replicates with a single class (no AUC)
         "model": {"auc", "pr_auc", "ece"},         # each {"estimate", "low", "high"}
         "baselines": {name: {"auc", "auc_diff"}}}  # auc_diff = model AUC − baseline AUC, paired
    """
    _check_run(n_boot, level)
    yv = _binary(y)
    pv = _scores(p, len(yv), "p")
    base = {name: _scores(s, len(yv), f"baseline {name!r}") for name, s in (baselines or {}).items()}
    codes = _group_codes(groups, len(yv))
    n_clusters = _n_clusters(codes, len(yv))

    model = _Sorted(yv, pv)
    sorted_base = {name: _Sorted(yv, s) for name, s in base.items()}
    model_auc = np.empty(n_boot)
    model_ap = np.empty(n_boot)
    model_ece = np.empty(n_boot)
    base_auc = {name: np.empty(n_boot) for name in base}
    rng = np.random.default_rng(seed)
    for b, w in enumerate(_replicate_counts(codes, len(yv), n_boot, rng)):
        c = model.counts(w)
        model_auc[b] = model.auc(c)
        model_ap[b] = model.average_precision(c)
        model_ece[b] = model.ece(c)
        for name, s in sorted_base.items():
            base_auc[name][b] = s.auc(s.counts(w))

    def interval(estimate: float, values: np.ndarray, label: str) -> dict[str, float]:
        return _percentile_interval(estimate, values, level, label, yv, n_clusters).to_dict(ndigits)

    auc = _estimate("auc", yv, pv)
    out_baselines: dict[str, dict[str, dict[str, float]]] = {}
    for name, s in base.items():
        b_auc = _estimate("auc", yv, s)
        out_baselines[name] = {
            "auc": interval(b_auc, base_auc[name], f"auc of baseline {name!r}"),
            "auc_diff": interval(auc - b_auc, model_auc - base_auc[name], f"auc difference to {name!r}"),
        }
    return {
        "n_rows": len(yv),
        "n_clusters": n_clusters,
        "n_positives": int(yv.sum()),
        "n_boot": n_boot,
        "level": level,
        "resampling": "row" if codes is None else "cluster",
        "skipped_replicates": int(np.isnan(model_auc).sum()),
        "model": {
            "auc": interval(auc, model_auc, "auc of the model"),
            "pr_auc": interval(_estimate("pr_auc", yv, pv), model_ap, "pr_auc of the model"),
            "ece": interval(_estimate("ece", yv, pv), model_ece, "ece of the model"),
        },
        "baselines": out_baselines,
    }
