"""Batch scoring: every eligible customer gets a calibrated probability from the champion.

For each task, the date's snapshot (features + the task's eligible population) is scored by
``models:/propensity-<task>@champion``, loaded through ``mlflow.pyfunc.load_model`` (the
pyfunc wraps booster + calibrator + category mapping and returns probabilities). The
signature is checked against the snapshot once, up front: a mismatch stops the run with
an error naming the feature, and nothing is written. Scoring then runs in batches of
``scoring.batch_rows`` straight through the unwrapped model, so per-batch schema
enforcement does not eat the throughput.

Output ``scores/task=<task>/dt=D/``: one row per eligible customer with the calibrated
score, its decile (10 = highest), the model's name, version and run id, the snapshot, and
``reason_1..3``. Reason codes (the features with the largest positive TreeSHAP
contributions) cost ~300x a plain prediction, so they are computed only for audience
members, by the audience stage, which republishes the partition with them filled in
(:func:`with_reasons`); everyone else keeps nulls.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from propensity.config import Settings
from propensity.features.labels import KEY
from propensity.lake import Lake
from propensity.models.model import PropensityModel, model_input
from propensity.shards import shard_of
from propensity.validation import checks as ck
from propensity.validation.frames import check_frame

log = logging.getLogger(__name__)

ZONE = "scores"
REASON_COLUMNS = [f"reason_{i}" for i in (1, 2, 3)]
SCORE_SCHEMA = {
    KEY: pl.String,
    "score": pl.Float64,
    "decile": pl.Int8,
    "model_name": pl.String,
    "model_version": pl.String,
    "run_id": pl.String,
    "snapshot": pl.Date,
    **{c: pl.String for c in REASON_COLUMNS},
}


class SignatureMismatch(ValueError):
    """The champion's input signature does not fit the snapshot's features."""


@dataclass
class Champion:
    """A loaded champion: the pyfunc's wrapped model plus its registry coordinates."""

    task: str
    name: str
    version: str
    run_id: str
    model: PropensityModel
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (column, MLflow type) from the signature

    @property
    def categorical(self) -> set[str]:
        return set(self.model.encoder.mapping)


def load_champion(settings: Settings, task: str, alias: str = "champion") -> Champion:
    """Resolve ``models:/propensity-<task>@<alias>`` and load it through MLflow pyfunc."""
    import mlflow.pyfunc
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from propensity.models.registry import model_name
    from propensity.models.tracking import configure

    configure(settings)
    name = model_name(task)
    try:
        mv = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise ValueError(f"no {alias!r} model for task {task!r} ({name}): train and promote one first") from exc
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@{alias}")
    schema = pyfunc.metadata.get_input_schema()
    inputs = [(c.name, getattr(c.type, "name", str(c.type))) for c in schema.inputs] if schema is not None else []
    return Champion(task, name, str(mv.version), mv.run_id, pyfunc.unwrap_python_model().model, inputs)


def check_signature(champ: Champion, frame: pl.DataFrame, table: str) -> None:
    """Fail with the table, column and rule when the snapshot cannot feed the model."""
    cols = dict(zip(frame.columns, frame.dtypes, strict=True))
    expected = champ.inputs or [(f, "string" if f in champ.categorical else "double") for f in champ.model.features]
    for name, kind in expected:
        if name not in cols:
            raise SignatureMismatch(f"{table}: column {name!r}: rule model_signature: missing from the snapshot")
        dtype = cols[name]
        numeric = dtype.is_numeric() or dtype == pl.Boolean or dtype == pl.Null
        textual = dtype in (pl.String, pl.Categorical, pl.Enum, pl.Null)
        ok = True if kind.lower() == "any" else textual if kind == "string" else numeric
        if not ok:
            raise SignatureMismatch(
                f"{table}: column {name!r}: rule model_signature: the model expects {kind}, the snapshot has {dtype}"
            )


def deciles(scores: np.ndarray) -> np.ndarray:
    """1..10 by rank, 10 = highest scores; ties broken by row order (rows are sorted by id)."""
    n = len(scores)
    if n == 0:
        return np.array([], dtype=np.int8)
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n)
    return (ranks * 10 // n + 1).astype(np.int8)


def predict(champ: Champion, frame: pl.DataFrame, batch_rows: int) -> np.ndarray:
    """Calibrated probabilities, batch by batch (memory: one batch of model input at a time)."""
    out = np.empty(frame.height, dtype=np.float64)
    model = champ.model
    for start in range(0, frame.height, batch_rows):
        x = model.matrix_from_polars(frame.slice(start, batch_rows))
        out[start : start + len(x)] = model.calibrator(model.booster.predict(x, num_threads=0))
    return out


def score_frame(champ: Champion, features: pl.DataFrame, population: pl.DataFrame, snapshot: date, batch_rows: int):
    """Score ``population`` (customer ids) from ``features``; returns the scores frame."""
    table = f"scores.{champ.task}.{snapshot}"
    check_signature(champ, features, table)
    rows = features.join(population.select(KEY), on=KEY, how="semi").sort(KEY)
    if rows.height != population.select(KEY).unique().height:
        missing = population.select(KEY).unique().height - rows.height
        raise ValueError(f"{table}: column {KEY!r}: rule population_has_features: {missing} customer(s) lack features")
    p = predict(champ, rows, batch_rows)
    return pl.DataFrame(
        {
            KEY: rows[KEY],
            "score": p,
            "decile": deciles(p),
            "model_name": champ.name,
            "model_version": champ.version,
            "run_id": champ.run_id,
            "snapshot": snapshot,
            **{c: pl.Series(c, [None] * rows.height, pl.String) for c in REASON_COLUMNS},
        },
        schema=SCORE_SCHEMA,
    )


def score_checks(population: int) -> list:
    return [
        ck.not_null(KEY, severity="critical"),
        ck.unique([KEY], severity="critical"),
        ck.not_null("score", severity="critical"),
        ck.between("score", 0.0, 1.0, severity="critical"),
        ck.row_count(population, population),
    ]


def reason_codes(model: PropensityModel, frame: pl.DataFrame, k: int = 3) -> list[list[str | None]]:
    """Per row, the ``k`` features with the largest positive contributions (TreeSHAP), best first."""
    if frame.height == 0 or k == 0:
        return [[None] * k for _ in range(frame.height)]
    contrib = model.booster.predict(model.matrix_from_polars(frame), pred_contrib=True)[:, :-1]  # drop the bias
    top = np.argsort(-contrib, axis=1, kind="stable")[:, :k]
    names = np.array(model.features, dtype=object)
    out = []
    for row, idx in zip(contrib, top, strict=True):
        out.append([names[j] if row[j] > 0 else None for j in idx])
    return out


def reason_frame(ids: pl.Series, reasons: list[list[str | None]]) -> pl.DataFrame:
    """``customer_id`` + ``reason_1..3`` from :func:`reason_codes` (shorter lists padded with nulls)."""
    padded = [(list(r) + [None] * len(REASON_COLUMNS))[: len(REASON_COLUMNS)] for r in reasons]
    return pl.DataFrame(
        {KEY: ids, **{c: [r[i] for r in padded] for i, c in enumerate(REASON_COLUMNS)}},
        schema={KEY: pl.String, **{c: pl.String for c in REASON_COLUMNS}},
    )


def with_reasons(scores: pl.DataFrame, reasons: pl.DataFrame) -> pl.DataFrame:
    """``scores`` with the reason columns of :func:`reason_frame` filled in for its customers."""
    if not reasons.height:
        return scores
    fill = reasons.rename({c: f"_{c}" for c in REASON_COLUMNS})
    joined = scores.join(fill, on=KEY, how="left")
    return joined.with_columns([pl.coalesce(f"_{c}", c).alias(c) for c in REASON_COLUMNS]).select(scores.columns)


@dataclass
class ScoreRun:
    """What one scoring run produced, per task."""

    date: date
    scores: dict[str, pl.DataFrame] = field(default_factory=dict)
    champions: dict[str, Champion] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> list[str]:
        lines = []
        for task, df in self.scores.items():
            c = self.champions[task]
            rate = df.height / self.seconds[task] if self.seconds[task] else float("nan")
            mean = df["score"].mean() if df.height else float("nan")
            lines.append(
                f"{task}: {df.height:,} scored by {c.name} v{c.version}, mean score {mean:.4f} "
                f"({self.seconds[task]:.1f} s, {rate:,.0f} rows/s)"
            )
        return lines


def snapshot_inputs(settings: Settings, d: date, tasks: list[str], builder: Any = None):
    """The snapshot at ``d`` (features, profiles, populations), read from the lake or built and published."""
    from propensity.features.snapshot import Snapshot, SnapshotBuilder

    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    day = {"snapshot": d.isoformat()}
    feats = lake.read_partition("features", "", day)
    profiles = lake.read_partition("profiles", "", day)
    labels = {t: lake.read_partition("labels", "", {"task": t, **day}) for t in tasks}
    if feats is not None and profiles is not None and all(v is not None for v in labels.values()):
        snap = Snapshot(d, pl.from_arrow(feats), pl.from_arrow(profiles))  # type: ignore[arg-type]
        snap.labels = {t: pl.from_arrow(v) for t, v in labels.items()}  # type: ignore[misc]
        return snap
    builder = builder or SnapshotBuilder(settings)
    return builder.build_and_publish(d, tasks)


def score(
    settings: Settings,
    d: date,
    tasks: list[str] | None = None,
    shard: int | None = None,
    publish: bool = True,
    builder: Any = None,
) -> ScoreRun:
    """Score every task at ``d``; validate everything before writing anything.

    With ``shard``, only customers of that hash shard (of ``scoring.shards``) are scored and
    the result is returned, not published: :func:`merge_shards` publishes the union.
    """
    tasks = tasks or list(settings.tasks)
    snap = snapshot_inputs(settings, d, tasks, builder)
    run = ScoreRun(d)
    for task in tasks:
        t0 = time.perf_counter()
        champ = load_champion(settings, task)
        pop = snap.labels[task].select(KEY)
        if shard is not None:
            pop = pop.filter(shard_of(pop[KEY], settings.scoring.shards) == shard)
        df = score_frame(champ, snap.features, pop, d, settings.scoring.batch_rows)
        check_frame(f"scores.{task}.{d}", df, score_checks(pop.height))
        run.scores[task], run.champions[task] = df, champ
        run.seconds[task] = time.perf_counter() - t0
    if publish and shard is None:
        publish_scores(settings, run)
    return run


def merge_shards(parts: list[pl.DataFrame]) -> pl.DataFrame:
    """The union of shard outputs, with deciles recomputed over the whole population."""
    df = pl.concat(parts).sort(KEY)
    return df.with_columns(pl.Series("decile", deciles(df["score"].to_numpy()), pl.Int8))


def publish_frame(lake: Lake, task: str, d: date | str, df: pl.DataFrame, name: str, version: str, run_id: str):
    """Write one task's scores at ``d`` with the manifest fields every reader relies on."""
    day = d if isinstance(d, str) else d.isoformat()
    meta = {"model_name": name, "model_version": str(version), "run_id": run_id, "snapshot": day}
    return lake.write_partition(ZONE, "", {"task": task, "dt": day}, df.to_arrow(), meta)


def publish_scores(settings: Settings, run: ScoreRun) -> None:
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    for task, df in run.scores.items():
        c = run.champions[task]
        publish_frame(lake, task, run.date, df, c.name, c.version, c.run_id)


def read_scores(settings: Settings, task: str, d: date) -> pl.DataFrame | None:
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    t = lake.read_partition(ZONE, "", {"task": task, "dt": d.isoformat()})
    return pl.from_arrow(t) if t is not None else None  # type: ignore[return-value]


def score_inputs_frame(champ: Champion, frame: pl.DataFrame) -> pd.DataFrame:
    """The pandas frame the pyfunc takes (used by tests and the bench to go through MLflow)."""
    return model_input(frame.select(champ.model.features).to_pandas(), champ.model.features, champ.categorical)
