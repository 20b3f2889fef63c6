"""Bootstrap intervals of evaluation statistics: exact count-weighted metrics, coverage, pairing, clusters."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from propensity.models.intervals import (
    Interval,
    bootstrap,
    cluster_indices,
    evaluate_with_intervals,
    paired_difference,
    weighted_auc,
    weighted_average_precision,
    weighted_ece,
)
from propensity.models.metrics import expected_calibration_error, safe_auc


def binormal(n: int, d: float, rng: np.random.Generator, rate: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Labels and [0, 1] scores whose latent is N(0,1) for negatives, N(d,1) for positives.

    The population AUC is Phi(d / sqrt(2)) (the sigmoid is monotone, so it keeps the AUC).
    """
    y = (rng.random(n) < rate).astype(float)
    latent = rng.normal(size=n) + d * y
    return y, 1 / (1 + np.exp(-latent))


def width(interval: Interval) -> float:
    return interval.high - interval.low


# --------------------------------------------------------------------------- exact metrics


def test_count_weighted_metrics_match_sklearn_and_metrics_on_the_expanded_sample_with_ties():
    rng = np.random.default_rng(3)
    checked = 0
    for _ in range(60):
        n = int(rng.integers(5, 400))
        y = (rng.random(n) < rng.uniform(0.05, 0.7)).astype(float)
        p = np.round(rng.random(n), int(rng.integers(1, 3)))  # heavy ties between rows
        w = rng.integers(0, 4, size=n)  # zeros and repeats, as in a bootstrap replicate
        ix = np.repeat(np.arange(n), w)
        if len(np.unique(y[ix])) < 2:
            continue
        checked += 1
        assert weighted_auc(y, p, w) == pytest.approx(roc_auc_score(y[ix], p[ix]), abs=1e-9)
        assert weighted_average_precision(y, p, w) == pytest.approx(average_precision_score(y[ix], p[ix]), abs=1e-9)
        assert weighted_ece(y, p, w) == pytest.approx(expected_calibration_error(y[ix], p[ix]), abs=1e-9)
        # unweighted: the plain rank AUC
        if len(np.unique(y)) == 2:
            assert weighted_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-9)
    assert checked > 40


def test_count_weighted_metrics_are_undefined_without_both_classes():
    y = np.array([0.0, 1.0, 1.0, 0.0])
    p = np.array([0.1, 0.7, 0.4, 0.2])
    assert math.isnan(weighted_auc(y, p, [1, 0, 0, 2]))  # negatives only
    assert math.isnan(weighted_average_precision(y, p, [1, 0, 0, 2]))
    assert math.isnan(weighted_auc(y, p, [0, 3, 1, 0]))  # positives only
    assert weighted_average_precision(y, p, [0, 3, 1, 0]) == 1.0
    with pytest.raises(ValueError, match="integer"):
        weighted_auc(y, p, [0.5, 1, 1, 1])


def test_fast_named_metrics_equal_the_generic_callable_path_replicate_by_replicate():
    """Same seed -> same resamples, whether a replicate is multiplicities or materialised indices."""
    rng = np.random.default_rng(5)
    n = 300
    y, p = binormal(n, 1.0, rng)
    p = np.round(p, 2)
    groups = rng.integers(0, 120, size=n)  # customers with 1..several rows
    pairs = [
        ("auc", safe_auc),
        ("pr_auc", average_precision_score),
        ("ece", expected_calibration_error),
    ]
    for name, fn in pairs:
        fast = bootstrap(name, y, p, groups=groups, n_boot=100, seed=11)
        slow = bootstrap(fn, y, p, groups=groups, n_boot=100, seed=11)
        for field in ("estimate", "low", "high"):
            assert getattr(fast, field) == pytest.approx(getattr(slow, field), abs=1e-9), (name, field)


# --------------------------------------------------------------------------- resampling


def test_cluster_indices_keep_each_cluster_whole():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.array(["a", "b", "c", "d", "e"]), [1, 2, 3, 4, 5])
    rng.shuffle(groups)
    for ix in cluster_indices(groups, n_boot=50, rng=rng):
        assert np.all(np.diff(ix) >= 0)
        counts = np.bincount(ix, minlength=len(groups))
        drawn = 0
        for g in np.unique(groups):
            c = counts[groups == g]
            assert np.all(c == c[0]), "a cluster's rows are drawn together"
            drawn += c[0]
        assert drawn == 5, "as many clusters drawn as there are"

    rows = list(cluster_indices(None, n_boot=3, rng=rng, n_rows=7))
    assert [len(ix) for ix in rows] == [7, 7, 7]
    with pytest.raises(ValueError, match="n_rows"):
        next(cluster_indices(None, n_boot=1, rng=rng))


def test_cluster_bootstrap_is_honest_when_customers_repeat_across_snapshots():
    """k copies of each customer: rows look k times as numerous, customers do not."""
    rng = np.random.default_rng(21)
    n, k = 1500, 4
    y, p = binormal(n, 1.0, rng)
    base = bootstrap("auc", y, p, n_boot=1000, seed=1)

    customer = np.repeat(np.arange(n), k)
    shuffle = rng.permutation(n * k)
    y_dup, p_dup, groups = y[customer][shuffle], p[customer][shuffle], np.char.add("c", customer[shuffle].astype(str))

    rows = bootstrap("auc", y_dup, p_dup, n_boot=1000, seed=2)
    clusters = bootstrap("auc", y_dup, p_dup, groups=groups, n_boot=1000, seed=3)
    assert rows.estimate == clusters.estimate == pytest.approx(base.estimate)
    # the row bootstrap sees 4x the data: about half the width (1/sqrt(k))
    assert width(rows) < 0.7 * width(base)
    assert width(clusters) == pytest.approx(width(base), rel=0.15)


# --------------------------------------------------------------------------- coverage and pairing


def test_interval_covers_the_population_auc_about_95_percent_of_the_time():
    d = 1.0
    true_auc = norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(2024)
    covered = 0
    for rep in range(100):
        y, p = binormal(400, d, rng)
        interval = bootstrap("auc", y, p, n_boot=200, seed=rep)
        covered += interval.low <= true_auc <= interval.high
    assert 88 <= covered <= 99, covered


def test_paired_difference_sees_what_overlapping_separate_intervals_hide():
    rng = np.random.default_rng(8)
    n = 3000
    y = (rng.random(n) < 0.3).astype(float)
    latent = rng.normal(size=n) + 1.5 * y
    a = 1 / (1 + np.exp(-latent))
    b = 1 / (1 + np.exp(-(latent + rng.normal(0, 0.3, size=n))))  # a, blurred: truly worse
    # population AUCs: Phi(1.5/sqrt(2)) = 0.856 vs Phi(1.5/sqrt(2 * 1.09)) = 0.845

    separate = bootstrap("auc", y, {"a": a, "b": b}, n_boot=500, seed=4)
    diff = paired_difference("auc", y, a, b, n_boot=500, seed=4)

    assert diff.estimate == pytest.approx(separate["a"].estimate - separate["b"].estimate)
    assert separate["a"].low < separate["b"].high, "separate intervals overlap"
    assert diff.low > 0, "the paired interval shows a is better"
    assert width(diff) < 0.5 * width(separate["a"])  # independent resamples: ~1.4x (sqrt 2)
    # and the reverse comparison is its mirror image
    reverse = paired_difference("auc", y, b, a, n_boot=500, seed=4)
    assert reverse.high == pytest.approx(-diff.low)


def test_evaluate_with_intervals_is_one_paired_pass_consistent_with_the_parts():
    rng = np.random.default_rng(12)
    n = 2000
    y, p = binormal(n, 1.2, rng, rate=0.15)
    baselines = {"recency": np.round(p + rng.normal(0, 0.2, n), 2), "random": rng.random(n)}
    groups = rng.integers(0, 800, size=n)

    out = evaluate_with_intervals(y, p, groups=groups, baselines=baselines, n_boot=300, seed=9, ndigits=None)
    json.dumps(out)  # serialisable
    assert out["resampling"] == "cluster"
    assert out["n_clusters"] == len(np.unique(groups))
    assert out["n_rows"] == n and out["n_positives"] == int(y.sum()) and out["skipped_replicates"] == 0

    kw = {"groups": groups, "n_boot": 300, "seed": 9}
    for metric in ("auc", "pr_auc", "ece"):
        assert out["model"][metric] == pytest.approx(bootstrap(metric, y, p, **kw).to_dict(None), abs=1e-12)
    for name, s in baselines.items():
        assert out["baselines"][name]["auc"] == pytest.approx(bootstrap("auc", y, s, **kw).to_dict(None), abs=1e-12)
        diff = paired_difference("auc", y, p, s, **kw)
        assert out["baselines"][name]["auc_diff"] == pytest.approx(diff.to_dict(None), abs=1e-12)
    assert out["baselines"]["random"]["auc_diff"]["low"] > 0.1
    assert out["model"]["auc"]["estimate"] == pytest.approx(safe_auc(y, p))
    assert out["model"]["ece"]["estimate"] == pytest.approx(expected_calibration_error(y, p))


# --------------------------------------------------------------------------- determinism and failures


def test_same_seed_same_output_and_rounding():
    rng = np.random.default_rng(1)
    y, p = binormal(500, 1.0, rng)
    base = {"b": rng.random(500)}
    first = evaluate_with_intervals(y, p, baselines=base, n_boot=100, seed=7)
    assert first == evaluate_with_intervals(y, p, baselines=base, n_boot=100, seed=7)
    assert first != evaluate_with_intervals(y, p, baselines=base, n_boot=100, seed=8)
    assert first["resampling"] == "row"
    assert all(v == round(v, 4) for v in first["model"]["auc"].values())


def test_too_few_positives_is_refused_with_a_reason():
    rng = np.random.default_rng(0)
    y = np.zeros(200)
    y[[3, 150]] = 1  # a resample misses both positives about e^-2 = 14% of the time
    p = rng.random(200)
    with pytest.raises(ValueError, match=r"undefined in \d+ of 200 bootstrap replicates.*2 positives"):
        evaluate_with_intervals(y, p, n_boot=200)
    with pytest.raises(ValueError, match="too few positives"):
        bootstrap("auc", y, p, n_boot=200)
    with pytest.raises(ValueError, match="undefined on the full sample"):
        bootstrap("auc", np.zeros(200), p)


def test_a_few_undefined_replicates_are_skipped():
    rng = np.random.default_rng(0)
    y = np.zeros(300)
    y[rng.choice(300, 6, replace=False)] = 1  # all positives missed about e^-6 = 0.25% of the time
    p = np.clip(rng.random(300) + 0.3 * y, 0, 1)
    out = evaluate_with_intervals(y, p, n_boot=1000, seed=3)
    assert 0 < out["skipped_replicates"] <= 50
    assert out["model"]["auc"]["low"] < out["model"]["auc"]["high"]


def test_input_checks():
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="binary"):
        bootstrap("auc", np.array([0, 2, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4]))
    with pytest.raises(ValueError, match="finite"):
        bootstrap("auc", y, np.array([0.1, np.nan, 0.3, 0.4]))
    with pytest.raises(ValueError, match="one value per row"):
        paired_difference("auc", y, np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="unknown metric"):
        bootstrap("brier", y, np.array([0.1, 0.2, 0.3, 0.4]))  # type: ignore[call-overload]


def test_interval_formatting():
    interval = Interval(0.85312, 0.84071, 0.86649)
    assert str(interval) == "0.853 [0.841, 0.866]"
    assert interval.to_dict() == {"estimate": 0.8531, "low": 0.8407, "high": 0.8665}
    assert interval.to_dict(None)["low"] == 0.84071
