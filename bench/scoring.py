"""Batch scoring throughput: our path against a raw ``Booster.predict`` on the same matrix.

    .venv/bin/python bench/scoring.py                    # 1M customers, the demo's model size
    .venv/bin/python bench/scoring.py --rows 200000      # quick check

A model of the size the demo ships: LightGBM with the training defaults of
``propensity.config.ModelConfig`` (31 leaves, learning rate 0.05, early stopping after 100
rounds without a gain), capped at ``--trees`` rounds (200: the demo's champions stop early at
12 to 176 trees on a 20k-customer shop), fitted on synthetic rows shaped like the feature
catalogue (every feature, the catalogue's categorical features as strings, counts as integers,
rates and amounts as floats with missing values), wrapped like ``Trainer.fit`` wraps it: a
``CategoryEncoder`` fitted on the training rows and an isotonic ``Calibrator`` fitted on a
validation set, in a ``PropensityModel``.

Then, on a ``--rows`` polars feature frame (1M by default, the lake's dtypes: ``Int8`` flags,
``Int64`` counts, ``Float64`` with nulls, ``String`` categories):

a. the floor: ``Booster.predict`` on the already encoded float64 matrix (numpy), all threads;
b. our path: ``propensity.scoring.predict(champion, frame, batch_rows)``, i.e. per batch the
   float64 matrix built straight from polars (``PropensityModel.matrix_from_polars``: numbers
   cast, categories mapped to the encoder's codes), ``Booster.predict`` and the calibrator,
   checked equal to (a) + calibration;
c. loading the model the way ``load_champion`` does, through ``mlflow.pyfunc.load_model`` from a
   local sqlite tracking store (logged once, load timed), plus the pyfunc's own ``predict``
   (MLflow schema enforcement per call) on ``--pyfunc-rows`` rows for comparison;
d. reason codes (``propensity.scoring.reason_codes``: TreeSHAP) on ``--reason-rows`` rows;
b0. the earlier pandas path (polars -> pandas, ``model_input``, ``CategoryEncoder.transform``,
   LightGBM's DataFrame conversion), kept for comparison: it ran at 0.68x of (a).

Printed: a table of rows/s and rows/min, the ratio a-time / b-time (target >= 0.8; also in
CPU time) and our customers per minute per task (target >= 1M), and where (b)'s time goes per
phase. Each timed step runs ``--repeat`` times and the best is kept, (a) and (b) taking turns:
on a shared machine the rest is waiting for CPU (the load average is printed).
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
import tempfile
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from propensity.config import ModelConfig, ScoringConfig
from propensity.features.catalogue import categorical_features, feature_names
from propensity.models.model import Calibrator, CategoryEncoder, PropensityModel, model_input
from propensity.models.pyfunc import PropensityPyfunc
from propensity.models.train import lgb_params
from propensity.scoring import Champion, predict, reason_codes

CATEGORIES = {
    "country": ["DE", "FR", "GB", "US", "NL", "ES", "IT", "PL"],
    "language": ["de", "fr", "en", "nl", "es", "it", "pl"],
    "currency": ["EUR", "GBP", "USD", "PLN", "CHF", "SEK"],
    "acquisition_channel": ["organic", "paid_search", "social", "referral", "email", "affiliate"],
    "top_category": ["fashion", "home", "electronics", "beauty", "sports", "toys", "books", "garden"],
}
FLAGS = ("email_consent", "sms_consent", "push_consent", "global_opt_out")
COUNT_WORDS = (
    "orders_",
    "sessions_",
    "product_views_",
    "searches_",
    "favorites_",
    "carts_",
    "checkouts_",
    "removes_",
    "active_days_",
    "contacts_",
    "coupon_orders_",
    "distinct_",
    "low_ratings",
    "reviews",
)


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Best wall time of ``repeat`` calls, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def interleaved(repeat: int, fns: dict[str, Callable[[], Any]]) -> dict[str, tuple[float, float, Any]]:
    """``{name: (best wall s, best CPU s, last result)}``, the functions taking turns each round, so
    that a change in the machine's load hits them alike; CPU time (every thread of this process)
    is the figure that load from other processes disturbs least."""
    best = {k: (float("inf"), float("inf"), None) for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            out = fn()
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu), out)
    return best


def feature_frame(n: int, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    """``n`` customers with every catalogue feature (lake dtypes) and a label with some signal."""
    rng = np.random.default_rng(seed)
    cats = set(categorical_features())
    cols: dict[str, Any] = {"customer_id": [f"C{i:08d}" for i in range(n)]}
    signal = np.zeros(n)
    for j, name in enumerate(feature_names()):
        if name in cats:
            values = CATEGORIES.get(name, [f"{name}_{k}" for k in range(6)])
            idx = rng.integers(0, len(values), n)
            col = np.array(values, dtype=object)[idx]
            col[rng.random(n) < 0.02] = None
            cols[name] = pl.Series(name, col.tolist(), pl.String)
            signal += 0.15 * (idx == 0)
        elif name in FLAGS:
            cols[name] = pl.Series(name, (rng.random(n) < 0.6).astype(np.int8), pl.Int8)
        elif name.startswith(COUNT_WORDS):
            v = rng.poisson(rng.gamma(1.0, 2.0, n))
            cols[name] = pl.Series(name, v, pl.Int64)
            signal += (0.3 if j % 3 == 0 else 0.05) * np.log1p(v)
        else:
            v = rng.gamma(2.0, 20.0, n)
            missing = rng.random(n) < 0.3
            signal += np.where(missing, -0.2, (0.2 if j % 4 == 0 else 0.02) * np.log1p(v))
            cols[name] = pl.Series(name, np.where(missing, np.nan, v)).fill_nan(None)
    logit = signal - signal.mean() - 2.0 + rng.normal(0, 1.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return pl.DataFrame(cols), y


def train_model(train_rows: int, trees: int, seed: int) -> tuple[PropensityModel, dict[str, Any]]:
    """A booster trained like ``Trainer.fit`` with the ModelConfig defaults, plus encoder and calibrator."""
    m = ModelConfig()
    feats, cats = feature_names(), categorical_features()
    frame, y = feature_frame(train_rows, seed + 1)
    x = model_input(frame.select(feats).to_pandas(), feats, set(cats))
    cut = int(0.75 * train_rows)
    encoder = CategoryEncoder.fit(x.iloc[:cut], cats)
    xm = encoder.transform(x).astype("float64")
    params = lgb_params(m)  # exactly what Trainer.fit uses
    dtrain = lgb.Dataset(xm.iloc[:cut], y[:cut], categorical_feature=cats, free_raw_data=False)
    dvalid = lgb.Dataset(xm.iloc[cut:], y[cut:], categorical_feature=cats, reference=dtrain)
    booster = lgb.train(
        params,
        dtrain,
        num_boost_round=min(m.max_rounds, trees),
        valid_sets=[dvalid],
        callbacks=[lgb.early_stopping(m.early_stopping_rounds, verbose=False)],
    )
    booster = lgb.Booster(model_str=booster.model_to_string(num_iteration=booster.best_iteration))
    raw_valid = booster.predict(xm.iloc[cut:])
    calibrator = Calibrator.fit(raw_valid, y[cut:], "isotonic")
    info = {"trees": booster.num_trees(), "features": len(feats), "categorical": len(cats), "train_rows": cut}
    return PropensityModel(booster, calibrator, encoder, feats), info


def mlflow_load(model: PropensityModel, frame: pl.DataFrame, repeat: int, pyfunc_rows: int) -> dict[str, float]:
    """Log the model as the pyfunc training logs, then time ``mlflow.pyfunc.load_model`` and its predict."""
    import logging
    import warnings

    import mlflow
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        mlflow.set_tracking_uri(f"sqlite:///{tmpdir / 'mlflow.db'}")
        mlflow.set_experiment("bench-scoring")
        example = model_input(frame.head(5).select(model.features).to_pandas(), model.features)
        t0 = time.perf_counter()
        with mlflow.start_run():
            paths = model.save(tmpdir / "model")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=PropensityPyfunc(),
                artifacts=paths,
                signature=infer_signature(example, model.predict_proba(example)),
                input_example=example,
                pip_requirements=[f"lightgbm=={lgb.__version__}"],
            )
        out["log_s"] = time.perf_counter() - t0
        out["load_s"], pyfunc = best_of(repeat, lambda: mlflow.pyfunc.load_model(info.model_uri))
        rows = frame.head(pyfunc_rows)
        x = model_input(rows.select(model.features).to_pandas(), model.features)
        out["pyfunc_rows"] = float(rows.height)
        out["pyfunc_predict_s"], p = best_of(repeat, lambda: np.asarray(pyfunc.predict(x)))
        np.testing.assert_allclose(p, model.predict_proba(x), rtol=1e-12)
    return out


def pandas_predict(champ: Champion, frame: pl.DataFrame, batch_rows: int) -> np.ndarray:
    """(b0) the earlier path: polars -> pandas -> ``model_input`` -> encoder -> booster -> calibrator."""
    out = np.empty(frame.height, dtype=np.float64)
    cols = champ.model.features
    for start in range(0, frame.height, batch_rows):
        part = frame.slice(start, batch_rows).select(cols).to_pandas()
        out[start : start + len(part)] = champ.model.predict_proba(model_input(part, cols, champ.categorical))
    return out


def phases(champ: Champion, frame: pl.DataFrame, batch_rows: int) -> dict[str, tuple[float, float]]:
    """Where ``scoring.predict`` spends its time, phase by phase over the whole frame: ``{phase: (wall s, CPU s)}``."""
    model = champ.model
    names = ["matrix_from_polars", "booster.predict", "calibrator"]
    t = {k: [0.0, 0.0] for k in names}

    def clock() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    for start in range(0, frame.height, batch_rows):
        marks = [clock()]
        mat = model.matrix_from_polars(frame.slice(start, batch_rows))
        marks.append(clock())
        raw = model.booster.predict(mat, num_threads=0)
        marks.append(clock())
        model.calibrator(raw)
        marks.append(clock())
        for k, (a, b) in zip(names, pairwise(marks), strict=True):
            t[k][0] += b[0] - a[0]
            t[k][1] += b[1] - a[1]
    return {k: (v[0], v[1]) for k, v in t.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000, help="customers to score")
    ap.add_argument("--train-rows", type=int, default=20_000, help="synthetic training + validation rows")
    ap.add_argument("--trees", type=int, default=200, help="boosting rounds at most (early stopping may stop sooner)")
    ap.add_argument("--batch-rows", type=int, default=ScoringConfig().batch_rows)
    ap.add_argument("--reason-rows", type=int, default=2_000)
    ap.add_argument("--pyfunc-rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args(argv)

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpu(s); lightgbm {lgb.__version__}")
    t0 = time.perf_counter()
    model, info = train_model(a.train_rows, a.trees, a.seed)
    print(
        f"model: {info['trees']} trees x 31 leaves, {info['features']} features ({info['categorical']} categorical), "
        f"trained on {info['train_rows']:,} rows in {time.perf_counter() - t0:.1f} s"
    )
    champ = Champion("bench", "propensity-bench", "1", "bench-run", model)

    t0 = time.perf_counter()
    frame, _ = feature_frame(a.rows, a.seed)
    print(f"feature frame: {frame.height:,} rows x {frame.width} columns, {frame.estimated_size('mb'):.0f} MB (polars)")
    # (a) the floor's input: the encoded float64 matrix, built outside the timing
    matrix = np.ascontiguousarray(
        model.matrix(model_input(frame.select(model.features).to_pandas(), model.features)).to_numpy()
    )
    print(f"  built in {time.perf_counter() - t0:.1f} s (matrix {matrix.nbytes / 1e6:.0f} MB)")

    timed = interleaved(
        a.repeat,
        {
            "a": lambda: model.booster.predict(matrix, num_threads=0),
            "b": lambda: predict(champ, frame, a.batch_rows),
            "b0": lambda: pandas_predict(champ, frame, a.batch_rows),
        },
    )
    (raw_s, raw_cpu, raw), (ours_s, ours_cpu, ours) = timed["a"], timed["b"]
    old_s, old_cpu, old = timed["b0"]
    np.testing.assert_allclose(ours, model.calibrator(raw), rtol=1e-12)  # same numbers, not just same speed
    np.testing.assert_allclose(old, ours, rtol=1e-12)
    ml = mlflow_load(model, frame, a.repeat, a.pyfunc_rows)
    reason_frame = frame.head(a.reason_rows)
    reason_s, reasons = best_of(a.repeat, lambda: reason_codes(model, reason_frame, 3))
    assert len(reasons) == reason_frame.height

    n = frame.height
    rows = [
        ("a  Booster.predict (float64 matrix)", n, raw_s),
        ("b  scoring.predict (polars -> calibrated)", n, ours_s),
        ("b0 earlier path (via pandas)", n, old_s),
        ("c  pyfunc.predict (MLflow schema checks)", int(ml["pyfunc_rows"]), ml["pyfunc_predict_s"]),
        ("d  reason_codes (TreeSHAP, top 3)", reason_frame.height, reason_s),
    ]
    print()
    print(f"{'step':<44} {'rows':>10} {'seconds':>9} {'rows/s':>12} {'rows/min':>14}")
    for name, r, s in rows:
        print(f"{name:<44} {r:>10,} {s:>9.3f} {r / s:>12,.0f} {r / s * 60:>14,.0f}")
    print(f"{'   CPU seconds (all threads): a':<44} {'':>10} {raw_cpu:>9.3f}")
    print(f"{'   CPU seconds (all threads): b':<44} {'':>10} {ours_cpu:>9.3f}")
    print(f"{'   CPU seconds (all threads): b0':<44} {'':>10} {old_cpu:>9.3f}")
    print(f"{'c  mlflow.pyfunc.load_model (sqlite store)':<44} {'':>10} {ml['load_s']:>9.3f}")
    ratio = raw_s / ours_s
    per_min = n / ours_s * 60
    print()
    print(f"ratio a-time / b-time: {ratio:.2f} (target >= 0.80) {'OK' if ratio >= 0.8 else 'BELOW TARGET'}")
    print(f"ratio a-CPU / b-CPU:   {raw_cpu / ours_cpu:.2f} (the same ratio in CPU time, less sensitive to load)")
    print(f"earlier pandas path b0: a-time / b0-time {raw_s / old_s:.2f}, a-CPU / b0-CPU {raw_cpu / old_cpu:.2f}")
    print(
        f"our path: {per_min:,.0f} customers/minute/task (target >= 1,000,000) "
        f"{'OK' if per_min >= 1_000_000 else 'BELOW TARGET'}"
    )
    print(f"reason codes cost {reason_s / reason_frame.height / (ours_s / n):,.0f}x a scored row")

    t = phases(champ, frame, a.batch_rows)
    wall, cpu = sum(w for w, _ in t.values()), sum(c for _, c in t.values())
    print()
    print(f"where scoring.predict's time goes (one pass, batch_rows={a.batch_rows:,}):")
    print(f"  {'phase':<28} {'wall s':>8} {'share':>7} {'CPU s':>8} {'share':>7}")
    for k, (w, c) in t.items():
        print(f"  {k:<28} {w:>8.3f} {w / wall:>7.1%} {c:>8.3f} {c / cpu:>7.1%}")
    print(f"  {'total':<28} {wall:>8.3f} {'':>7} {cpu:>8.3f}")


if __name__ == "__main__":
    main()
