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
from propensity.errors import RequestError
from propensity.features.labels import KEY
from propensity.lake import Lake
from propensity.models.model import PropensityModel, model_input
from propensity.shards import shard_of
from propensity.validation import checks as ck
from propensity.validation.frames import check_frame
from propensity.zones import SCORES

log = logging.getLogger(__name__)

ZONE = SCORES
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


class SignatureMismatch(RequestError):
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


def load_champion(settings: Settings, task: str, alias: str = "champion", version: str | None = None) -> Champion:
    """Resolve ``models:/propensity-<task>@<alias>`` (or, with ``version``, that exact version: what
    made a date's scores) and load it through MLflow pyfunc."""
    import mlflow.pyfunc
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from propensity.models.registry import model_name
    from propensity.models.tracking import configure

    configure(settings)
    name = model_name(task)
    try:
        if version is not None:
            mv = MlflowClient().get_model_version(name, str(version))
        else:
            mv = MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        which = f"version {version}" if version is not None else f"{alias!r} model"
        raise RequestError(f"no {which} for task {task!r} ({name}): train and promote one first") from exc
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{mv.version}")
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
    """Calibrated probabilities (a value task's expected revenue), batch by batch (memory: one
    batch of model input at a time)."""
    out = np.empty(frame.height, dtype=np.float64)
    model = champ.model
    for start in range(0, frame.height, batch_rows):
        x = model.matrix_from_polars(frame.slice(start, batch_rows))
        out[start : start + len(x)] = model.predict_matrix(x)
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


def score_checks(population: int, value: bool = False) -> list:
    """A probability lies in [0, 1]; a value task's score is an expected revenue, never negative."""
    return [
        ck.not_null(KEY, severity="critical"),
        ck.unique([KEY], severity="critical"),
        ck.not_null("score", severity="critical"),
        ck.between("score", 0.0, None if value else 1.0, severity="critical"),
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


def ensure_snapshot(settings: Settings, d: date, tasks: list[str], builder: Any = None) -> bool:
    """Publish the snapshot at ``d`` when any part of it is missing (so every shard reads one
    published snapshot); True when it was built now. Then the freshness guard: a snapshot more
    than ``scoring.max_staleness_days`` after its last observed day raises :class:`StaleSnapshotError`."""
    from propensity.features.snapshot import SnapshotBuilder
    from propensity.features.store import SnapshotStore, check_fresh

    store = SnapshotStore.open(settings)
    max_days = settings.scoring.max_staleness_days
    built = bool(store.missing(d, tasks))
    if built:  # checked before building: a stale snapshot is not even published
        builder = builder or SnapshotBuilder(settings)
        check_fresh(d, builder.span()[1], max_days, "scores")
        builder.build_and_publish(d, tasks)
    store.require_fresh(d, max_days, "scores")
    return built


def snapshot_inputs(settings: Settings, d: date, tasks: list[str], builder: Any = None):
    """The snapshot at ``d`` (features, profiles, populations): published first when missing, and fresh."""
    from propensity.features.store import SnapshotStore

    ensure_snapshot(settings, d, tasks, builder)
    snap = SnapshotStore.open(settings).read(d, tasks)
    if snap is None:  # pragma: no cover - published just above
        raise RequestError(f"snapshot {d} vanished while scoring")
    return snap


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
        check_frame(f"scores.{task}.{d}", df, score_checks(pop.height, settings.tasks[task].is_value))
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
    from propensity.features.store import SnapshotStore

    day = d if isinstance(d, str) else d.isoformat()
    meta = {"model_name": name, "model_version": str(version), "run_id": run_id, "snapshot": day}
    return SnapshotStore(lake).write_scores(task, day, df, meta)


def publish_scores(settings: Settings, run: ScoreRun) -> None:
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    for task, df in run.scores.items():
        c = run.champions[task]
        publish_frame(lake, task, run.date, df, c.name, c.version, c.run_id)


def read_scores(settings: Settings, task: str, d: date) -> pl.DataFrame | None:
    from propensity.features.store import SnapshotStore

    return SnapshotStore.open(settings).read_scores(task, d)


# Sharded scoring ------------------------------------------------------------------------------
#
# With ``scoring.shards = N`` a date's scoring is split by customer hash: :func:`score_shard`
# scores one shard of one task and parks its frame in the lake (``scores/_shards/...``), so only
# a small record travels between workers; :func:`merge_score_shards` unions a task's shards with
# deciles over the whole population, checks the union like an unsharded run and publishes it.


def score_shard(settings: Settings, d: date, task: str, shard: int) -> dict[str, Any]:
    """Score shard ``shard`` of ``task`` at ``d`` and park it; returns ``{task, date, shard, shards,
    key, rows, seconds, model_name, model_version, run_id}``."""
    from propensity.features.sharded import check_shard
    from propensity.features.store import SnapshotStore

    shards = settings.scoring.shards
    check_shard(int(shard), shards)
    run = score(settings, d, [task], shard=int(shard), publish=False)
    df, champ = run.scores[task], run.champions[task]
    meta = {"model_name": champ.name, "model_version": champ.version, "run_id": champ.run_id, "shards": shards}
    key = SnapshotStore.open(settings).write_score_shard(task, d, int(shard), df, {**meta, "snapshot": d.isoformat()})
    return {
        "task": task,
        "date": d.isoformat(),
        "shard": int(shard),
        "shards": shards,
        "key": key,
        "rows": df.height,
        "seconds": round(run.seconds[task], 3),
        **meta,
    }


def merge_score_shards(settings: Settings, d: date, task: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge the parked shards of ``task`` at ``d`` (their :func:`score_shard` records) and publish.

    Every shard must be there and all must come from one champion version (the alias can move
    while a run scores); the union passes the checks of an unsharded run. Returns ``{task, date,
    rows, shards, mean_score, model_name, model_version, run_id, key}``.
    """
    from propensity.features.store import SnapshotStore

    day = d.isoformat()
    mine = sorted((r for r in records if r["task"] == task and r["date"] == day), key=lambda r: int(r["shard"]))
    if not mine:
        raise RequestError(f"scores.{task}.{day}: no shard was scored")
    shards = int(mine[0]["shards"])
    got = [int(r["shard"]) for r in mine]
    if got != list(range(shards)):
        raise RequestError(f"scores.{task}.{day}: shards {got} scored, expected 0..{shards - 1}")
    models = sorted({(r["model_name"], str(r["model_version"]), r["run_id"]) for r in mine})
    if len(models) > 1:
        versions = ", ".join(f"{n} v{v}" for n, v, _ in models)
        raise RequestError(
            f"scores.{task}.{day}: the shards were scored by different champions ({versions}): the champion "
            "moved during the run; rerun it"
        )
    name, version, run_id = models[0]
    store = SnapshotStore.open(settings)
    df = merge_shards([store.read_score_shard(task, day, r["shard"]) for r in mine])
    labels = store.labels_manifest(task, day)
    if labels is None:
        raise RequestError(f"scores.{task}.{day}: labels/task={task}/snapshot={day} is not published")
    value = settings.tasks[task].is_value
    check_frame(f"scores.{task}.{day}", df, score_checks(int(labels["row_count"]), value))
    publish_frame(store.lake, task, day, df, name, version, run_id)
    for r in mine:
        store.delete_score_shard(task, day, r["shard"])
    return {
        "task": task,
        "date": day,
        "rows": df.height,
        "shards": shards,
        "mean_score": round(float(df["score"].mean()), 6) if df.height else None,
        "model_name": name,
        "model_version": version,
        "run_id": run_id,
        "key": store.scores_key(task, day),
    }


def score_inputs_frame(champ: Champion, frame: pl.DataFrame) -> pd.DataFrame:
    """The pandas frame the pyfunc takes (used by tests and the bench to go through MLflow)."""
    return model_input(frame.select(champ.model.features).to_pandas(), champ.model.features, champ.categorical)
