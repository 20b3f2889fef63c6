"""What each DAG task does, between Airflow's context and :mod:`propensity.pipeline`.

A step resolves the run's partition (:func:`propensity.airflow.partitions.run_partition`),
calls one stage function, and shapes what Airflow needs back: the asset event ``extra`` of
each outlet, the XComs the link plugin reads, log lines. DAG files call these and hold no
logic of their own; every step runs inside :func:`propensity.airflow.tasks.fail_fast`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from propensity import pipeline, zones
from propensity.airflow import partitions
from propensity.airflow.assets import SCHEME, asset_name
from propensity.config import Settings, load_settings, load_yaml
from propensity.contracts import TABLES
from propensity.errors import RequestError

log = logging.getLogger(__name__)


def configured_tasks() -> list[str]:
    """The configured ``tasks:`` (read when a DAG file is parsed: Params, mapped tasks and assets follow it)."""
    return list(load_settings().tasks)


def configured_audiences() -> list[str]:
    """The audience names declared in the configured audiences YAML (for the trigger form).

    Read as plain YAML: DAG files are parsed often and under a timeout, so the audiences
    package (polars, the lake, the object store client) is not imported here; the file is
    validated when a run builds the audiences.
    """
    import yaml

    path = load_settings().audiences_file
    try:
        doc = load_yaml(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    return [str(a["name"]) for a in doc.get("audiences") or [] if isinstance(a, dict) and a.get("name")]


@dataclass(frozen=True)
class Run:
    """The run's partition and params, and the settings every step starts from."""

    day: date
    params: Mapping[str, Any]
    settings: Settings

    @classmethod
    def of(cls, partition_key: str | None, params: Mapping[str, Any] | None) -> Run:
        params = dict(params or {})
        return cls(partitions.run_partition(partition_key, params), params, load_settings())

    @property
    def lake(self) -> str:
        return self.settings.lake_uri


# collect and validate ---------------------------------------------------------------------------


def collect(run: Run) -> tuple[pipeline.CollectRecord, dict[str, dict[str, Any]]]:
    """Collect the run's day (and, with ``start``, the history before it); one extra per raw asset."""
    start = partitions.parse_day(run.params["start"], "param 'start'") if run.params.get("start") else run.day
    days = partitions.days_between(start, run.day)
    record = pipeline.collect(run.settings, days, run.params.get("tables"))
    extras = {
        asset_name(zones.RAW, t): {
            "lake": run.lake,
            "days": record.days if t in record.tables else [],
            "rows": record.rows.get(t, 0),
        }
        for t in TABLES
    }
    return record, extras


def validation_days(run: Run, triggering_asset_events: Any, key: str | None) -> list[date]:
    """The run's day, plus the ``start`` param's range or the days its raw events collected."""
    if run.params.get("start"):
        return partitions.days_between(partitions.parse_day(run.params["start"], "param 'start'"), run.day)
    found = {run.day}
    for extra in partitions.event_extras(triggering_asset_events, f"{SCHEME}://{zones.RAW}/", key):
        found.update(partitions.parse_day(d, "raw event day") for d in extra.get("days") or ())
    return sorted(found)


def validate(run: Run, triggering_asset_events: Any, key: str | None) -> tuple[pipeline.ValidateRecord, dict]:
    """Gate every table for the run's days in one pass. A critical failure anywhere stops the day
    (:class:`ValidationFailed`, final) after the passing partitions are published, so no
    ``clean.<table>`` event is emitted and nothing downstream runs for it."""
    days = validation_days(run, triggering_asset_events, key)
    record = pipeline.validate(run.settings, days)
    extras = {
        asset_name(zones.CLEAN, t): {
            "lake": run.lake,
            "days": record.published.get(t, []),
            "rows_clean": record.rows_clean,
            "rows_quarantined": record.rows_quarantined,
        }
        for t in TABLES
    }
    return record, extras


# features -----------------------------------------------------------------------------------------


def snapshot_day(run: Run) -> date:
    """The snapshot a ``build_features`` run builds: the day after its partition day, provided every
    table of that day is in the clean zone (a snapshot past the data would describe nobody). Read
    from the partitions' manifests: nothing is loaded."""
    from propensity.lake import Lake

    lake = Lake.open(run.settings.lake_uri, run.settings.s3_endpoint_url)
    missing = [t for t in TABLES if lake.manifest(zones.CLEAN, t, {"dt": run.day.isoformat()}) is None]
    if missing:
        raise RequestError(
            f"features for day {run.day}: clean/{{{','.join(missing)}}}/dt={run.day} is not published; "
            f"validate {run.day} before building the snapshot {partitions.snapshot_after(run.day)}"
        )
    return partitions.snapshot_after(run.day)


def feature_shards(run: Run) -> list[dict[str, Any]]:
    """One ``{shard, snapshot}`` per customer hash shard of ``features.shards``."""
    snapshot = snapshot_day(run).isoformat()
    return [{"shard": i, "snapshot": snapshot} for i in range(run.settings.features.shards)]


def build_features(run: Run, shard: int, snapshot: str) -> dict[str, Any]:
    """With one shard, build and publish the snapshot; with several, park this shard's part."""
    day = partitions.parse_day(snapshot)
    if run.settings.features.shards == 1:
        return pipeline.features(run.settings, day, run.params.get("tasks")).to_dict()
    return pipeline.features_shard(run.settings, day, shard, run.params.get("tasks"))


def merge_features(run: Run, parts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The published snapshot's record (merging the shards first when there are several)."""
    if run.settings.features.shards == 1:
        [record] = list(parts)
        return dict(record)
    day = partitions.parse_day(next(iter(parts))["snapshot"])
    return pipeline.merge_features(run.settings, day, run.params.get("tasks")).to_dict()


def snapshot_extras(record: Mapping[str, Any], lake: str, tasks: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``extra`` per snapshot asset: ``features``/``profiles`` ``{lake, snapshot, rows}``;
    ``labels.<task>`` also ``complete`` (whether its label window is observed)."""
    base = {"lake": lake, "snapshot": record["snapshot"], "observed_until": record["observed_until"]}
    extras = {
        asset_name(zones.FEATURES): {**base, "rows": record["customers"]},
        asset_name(zones.PROFILES): {**base, "rows": record["profiles"]},
    }
    for t in tasks:
        lab = record["labels"].get(t)
        extras[asset_name(zones.LABELS, t)] = {
            **base,
            "rows": lab["rows"] if lab else 0,
            "complete": bool(lab and lab["complete"]),
        }
    return extras


# scoring and audiences ----------------------------------------------------------------------------


def prepare_scoring(run: Run) -> dict[str, Any]:
    """Publish the run's snapshot when missing, refuse a stale one, and list the task x shard units."""
    return pipeline.prepare_scoring(run.settings, run.day)


def score_shard(settings: Settings, name: str, shard: int, day: str) -> dict[str, Any]:
    from propensity import scoring

    return scoring.score_shard(settings, partitions.parse_day(day), name, shard)


def shard_groups(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The shard records grouped per task and date: one ``{name, day, shards}`` per merge."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["date"]), []).append(dict(r))
    return [{"name": t, "day": d, "shards": rs} for (t, d), rs in groups.items()]


def merge_scores(settings: Settings, name: str, day: str, shards: list[dict[str, Any]]) -> dict[str, Any]:
    from propensity import scoring

    return scoring.merge_score_shards(settings, partitions.parse_day(day), name, shards)


def champion_xcom(settings: Settings, record: Mapping[str, Any]) -> dict[str, str]:
    """The ``mlflow`` XCom of a scoring task: the champion version it scored with (the links plugin)."""
    from mlflow import MlflowClient

    from propensity.links import mlflow_xcom

    run = MlflowClient(tracking_uri=settings.tracking_uri).get_run(record["run_id"])
    uri = settings.tracking_uri
    return mlflow_xcom(uri, run.info.experiment_id, record["run_id"], record["model_name"], record["model_version"])


def audiences(run: Run) -> pipeline.AudienceRecord:
    return pipeline.audiences(run.settings, run.day, run.params.get("audiences"), bool(run.params.get("dry_run")))


def scores_extra(record: Mapping[str, Any], lake: str) -> dict[str, Any]:
    keys = ("task", "rows", "model_name", "model_version", "run_id")
    return {"lake": lake, "date": record["date"], **{k: record[k] for k in keys}}


def audiences_extra(record: pipeline.AudienceRecord, lake: str) -> dict[str, Any]:
    """``extra`` of ``audiences``; ``published`` is false for a dry run (nothing was)."""
    return {
        "lake": lake,
        "date": record.date,
        "published": not record.dry_run,
        "audiences": {r["audience"]: {"size": r["size"], "treatment": r["treatment"]} for r in record.rows},
    }


# training and drift -------------------------------------------------------------------------------


def drift_tasks(triggering_asset_events: Any, key: str | None) -> list[str] | None:
    """The breached tasks of the triggering drift events; None when no drift event triggered the run."""
    extras = partitions.event_extras(triggering_asset_events, f"{SCHEME}://monitoring/drift", key)
    if not extras:
        return None
    return list(dict.fromkeys(str(t) for e in extras for t in e.get("tasks") or ()))


def features_triggered(triggering_asset_events: Any, key: str | None) -> bool:
    return bool(partitions.event_extras(triggering_asset_events, f"{SCHEME}://{zones.FEATURES}/", key))


def has_champion(settings: Settings, task: str) -> bool:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from propensity.models.registry import CHAMPION, model_name

    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    try:
        client.get_model_version_by_alias(model_name(task), CHAMPION)
    except MlflowException:
        return False
    return True


def training_tasks(run: Run, triggering_asset_events: Any, key: str | None) -> tuple[list[str], str]:
    """The tasks a ``train_models`` run trains, and why.

    * drift events: the breached tasks (among the selected ones);
    * a new snapshot: every selected task on the retraining weekday (``models.retrain_weekday``),
      otherwise only tasks without a champion (so a new shop gets its first models);
    * a manual run: the selected tasks.
    """
    names = pipeline.selected_tasks(run.settings, run.params.get("tasks"))
    drifted = drift_tasks(triggering_asset_events, key)
    if drifted is not None:
        return [t for t in names if t in drifted or not drifted], f"drift breached on {drifted or 'all tasks'}"
    if features_triggered(triggering_asset_events, key):
        return on_new_snapshot(run, names)
    return names, "manual run"


def on_new_snapshot(run: Run, names: list[str]) -> tuple[list[str], str]:
    """What a run started by a new snapshot trains of ``names`` (tasks or toolkit models): all
    on the retraining weekday (``models.retrain_weekday``), otherwise those without a champion."""
    weekday = run.settings.models.retrain_weekday
    if run.day.weekday() == weekday:
        return names, f"snapshot {run.day} falls on the retraining weekday ({weekday})"
    missing = [t for t in names if not has_champion(run.settings, t)]
    return missing, f"snapshot {run.day}: not the retraining weekday ({weekday}); models without a champion"


def toolkit_models(run: Run, triggering_asset_events: Any, key: str | None) -> tuple[list[str], str]:
    """The toolkit models (:data:`propensity.pipeline.TOOLKIT`, the enabled ones) a
    ``train_models`` run trains, and why: on a new snapshot, all on the retraining weekday and
    otherwise those without a champion; on a manual run, all unless ``tasks`` names only some
    of the tasks; never on drift, which is measured per propensity task."""
    names = pipeline.enabled_toolkit(run.settings)
    if drift_tasks(triggering_asset_events, key) is not None:
        return [], "drift retrains the breached tasks only"
    if features_triggered(triggering_asset_events, key):
        return on_new_snapshot(run, names)
    requested = run.params.get("tasks")
    if requested and set(pipeline.selected_tasks(run.settings, requested)) != set(run.settings.tasks):
        return [], f"manual run of {requested} only"
    return names, "manual run"


def train_toolkit(run: Run, name: str) -> pipeline.ToolkitRecord:
    """Train, register and gate one toolkit model as of the run's snapshot."""
    return pipeline.train_toolkit(run.settings, name, as_of=run.day)


def train(run: Run, name: str) -> pipeline.TrainRecord:
    """Train, register and gate one task as of the run's snapshot."""
    [record] = pipeline.train(
        run.settings,
        [name],
        as_of=run.day,
        promote=bool(run.params.get("promote", True)),
        tuning_trials=run.params.get("tuning_trials"),
    )
    return record


def champions_extra(run: Run, trained: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """``extra`` of ``champions``: the snapshot, what this run trained and promoted."""
    records = list(trained or [])
    return {
        "snapshot": run.day.isoformat(),
        "trained": [r["task"] for r in records],
        "promoted": [r["task"] for r in records if r["mlflow"].get("promoted")],
    }


def models_extra(record: pipeline.TrainRecord) -> dict[str, Any]:
    ml = record.mlflow
    keys = ("model_name", "model_version", "run_id")
    measure = "test_gini" if "test_gini" in record.report else "test_auc"
    return {"task": record.task, **{k: ml[k] for k in keys}, measure: record.report.get(measure)}


def drift_extra(record: pipeline.MonitorRecord, lake: str) -> dict[str, Any]:
    return {"lake": lake, "snapshot": record.snapshot, "tasks": record.breached_tasks, "report": record.keys["json"]}
