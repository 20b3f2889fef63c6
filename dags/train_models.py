"""
### train_models

Trains one LightGBM model per propensity task on its out-of-time snapshot plan, logs it
to MLflow (a parent run per task with the task's nested run: parameters, metrics, plots,
the pyfunc model and the drift reference `reference.json`), registers it as a new version
of `propensity-<task>` (alias `challenger`) and runs the promotion gate (test AUC above
the task's floor and not worse than the current champion on the same test set), which
moves `champion`.

* **Schedule**: weekly, Mondays 03:00 UTC (`CronTriggerTimetable`), *or* when
  `monitor_drift` reports a drift breach (the asset `drift`): an `AssetOrTimeSchedule`.
  A drift-triggered run trains only the tasks whose drift breached (`extra.tasks` of the
  triggering events).
* **Params** (trigger form): `tasks` (default all three), `snapshot` (cap of the test
  snapshot, like `propensity train --as-of`), `tuning_trials` (Optuna trials; empty: the
  configured `models.tuning_trials`), `promote` (off: versions are registered and gated,
  the verdict is tagged, but `champion` never moves).
* **Mapping**: `select_tasks` resolves the tasks; `train` is mapped over them
  (`.expand`), one mapped instance per task (named after it), in the pool
  `propensity_heavy` (create it with the slots the workers can afford, e.g.
  `airflow pools set propensity_heavy 1 "training"`); execution timeout 4 h.
* **XCom**: every mapped instance pushes `mlflow` = `{tracking_uri, experiment_id, run_id,
  model_name, model_version, promoted}` (the MLflow link plugin reads it) and returns its
  report (test AUC, baselines, oracle, sizes, version, gate decision).
* **Assets**: through the asset alias `models`, a mapped instance that moved `champion`
  updates `models.<task>` (`propensity://models/<task>`, `extra = {task, model_name,
  model_version, run_id, test_auc}`); a rejected or unpromoted version emits nothing.
* **Failures**: a request the data cannot satisfy (empty clean zone, too little history,
  one label class) fails the mapped instance at once (`AirflowFailException`); other
  errors (lake, MLflow I/O) retry 3 times with exponential backoff (1, 2, 4 min). The
  other tasks' instances are independent.

Logic lives in `propensity.models` and `propensity.orchestration`; this file is wiring.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from propensity.orchestration import (
    HEAVY_POOL,
    MLFLOW_XCOM_KEY,
    TRAIN_EXECUTION_TIMEOUT,
    SnapshotRequestError,
    TrainingRequestError,
    default_task_args,
    drift_asset,
    io_task_args,
    models_alias,
    models_asset,
    models_extra,
    train_one,
    training_params,
    training_tasks,
)

# DAG files are imported under a mangled module name, so name the logger explicitly.
log = logging.getLogger("propensity.dags.train_models")


@dag(
    dag_id="train_models",
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 3 * * 1", timezone="UTC"),
        assets=drift_asset(),
    ),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["propensity", "train", "models"],
    default_args=default_task_args(),
    doc_md=__doc__,
    params=training_params(),
)
def train_models():
    @task
    def select_tasks(params=None, triggering_asset_events=None) -> list[str]:
        from propensity.config import load_settings

        try:
            names = training_tasks(load_settings(), params["tasks"], triggering_asset_events)
        except SnapshotRequestError as exc:
            raise AirflowFailException(str(exc)) from exc
        log.info("training %s", names or "nothing (no breached task selected)")
        return names

    @task(
        pool=HEAVY_POOL,
        outlets=[models_alias()],
        map_index_template="{{ propensity_task }}",
        **io_task_args(execution_timeout=TRAIN_EXECUTION_TIMEOUT),
    )
    def train(name: str, params=None, ti=None, outlet_events=None) -> dict:
        from propensity.config import load_settings

        get_current_context()["propensity_task"] = name  # names the mapped instance
        try:
            record = train_one(
                load_settings(),
                name,
                as_of=params["snapshot"],
                tuning_trials=params["tuning_trials"],
                promote=params["promote"],
            )
        except TrainingRequestError as exc:
            raise AirflowFailException(str(exc)) from exc
        ti.xcom_push(key=MLFLOW_XCOM_KEY, value=record[MLFLOW_XCOM_KEY])
        if record[MLFLOW_XCOM_KEY]["promoted"]:
            outlet_events[models_alias()].add(models_asset(name), extra=models_extra(record))
        log.info(
            "%s: test AUC %.4f, version %s, %s (%s)",
            name,
            record["test_auc"],
            record["model_version"],
            "promoted to champion" if record["promoted"] else "champion unchanged",
            "; ".join(record["decision"].get("reasons", [])),
        )
        return record

    @task
    def summary(records: list) -> list[str]:
        lines = [
            f"{r['task']:<12} AUC {r['test_auc']:.4f}  v{r['model_version']}  "
            f"{'champion' if r['promoted'] else 'not promoted'}  run {r['mlflow']['run_id']}"
            for r in records
        ]
        for line in lines:
            log.info("%s", line)
        return lines

    summary(train.expand(name=select_tasks()))


train_models()
