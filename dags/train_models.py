"""
### train_models

Trains one LightGBM model per task on its out-of-time plan as of snapshot `T` (reading the
published snapshots where they exist), logs it to MLflow, registers it as a new version of
`propensity-<task>` (alias `challenger`) and runs the promotion gate, which moves `champion`.
Retraining on the same data digest and parameters registers nothing and says "unchanged".

* **Partitions**: one run per snapshot `T`, when `features` is published for `T` *or*
  `monitor_drift` reports a breach for `T` (`PartitionedAssetTimetable` over `features | drift`).
* **Which tasks**: on drift, the breached ones; on a new snapshot, every task on the
  retraining weekday (`models.retrain_weekday`, Monday) and otherwise only tasks without a
  champion (a new shop gets its first models); a manual run, the `tasks` param.
* **Params**: `date` (`T`, for a run without a partition key), `tasks` (the configured ones),
  `tuning_trials`, `promote`.
* **Toolkit models**: `train_toolkit` trains `propensity-recommendations` and `propensity-personas`
  (the enabled ones) on the retraining weekday, when they have no champion, and on a manual run
  of every task; never on drift.
* **XCom**: each mapped `train` pushes `mlflow` (run, model version, promoted): the MLflow links.
* **Assets**: `models.<task>` (through the alias `models`) when a version became champion;
  in a run started by a new snapshot, `champions_ready` then updates `champions` for `T`:
  `score_and_build_audiences` waits for it, so a snapshot is never scored while its models train.

Logic: `propensity.pipeline.train` via `propensity.airflow.steps`; this file is wiring.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import TriggerRule, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException

from propensity import zones
from propensity.airflow import fail_fast, partitions, steps
from propensity.airflow.assets import alias, asset
from propensity.airflow.params import training_params
from propensity.airflow.tasks import (
    HEAVY_POOL,
    MLFLOW_XCOM_KEY,
    TRAIN_EXECUTION_TIMEOUT,
    default_task_args,
    io_task_args,
)

log = logging.getLogger("propensity.dags.train_models")
TASKS = steps.configured_tasks()


@dag(
    dag_id="train_models",
    schedule=partitions.on_any([asset(zones.FEATURES), asset(zones.DRIFT)]),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["propensity", "train", "models"],
    default_args=default_task_args(),
    doc_md=__doc__,
    params=training_params(TASKS),
)
def train_models():
    @task
    @fail_fast
    def select_tasks(params=None, dag_run=None, triggering_asset_events=None) -> list[str]:
        run = steps.Run.of(dag_run.partition_key, params)
        names, why = steps.training_tasks(run, triggering_asset_events, dag_run.partition_key)
        log.info("training %s as of %s: %s", names or "nothing", run.day, why)
        return names

    @task(
        pool=HEAVY_POOL,
        outlets=[alias("models")],
        map_index_template="{{ propensity_task }}",
        **io_task_args(execution_timeout=TRAIN_EXECUTION_TIMEOUT),
    )
    @fail_fast
    def train(name: str, params=None, dag_run=None, ti=None, outlet_events=None) -> dict:
        get_current_context()["propensity_task"] = name
        record = steps.train(steps.Run.of(dag_run.partition_key, params), name)
        ti.xcom_push(key=MLFLOW_XCOM_KEY, value=record.mlflow)
        if record.promoted:
            outlet_events[alias("models")].add(asset("models", name), extra=steps.models_extra(record))
        log.info("%s: %s", name, record.report.get("outcome"))
        return record.to_dict()

    @task
    @fail_fast
    def select_toolkit(params=None, dag_run=None, triggering_asset_events=None) -> list[str]:
        run = steps.Run.of(dag_run.partition_key, params)
        names, why = steps.toolkit_models(run, triggering_asset_events, dag_run.partition_key)
        log.info("training %s as of %s: %s", names or "no toolkit model", run.day, why)
        return names

    @task(
        pool=HEAVY_POOL,
        map_index_template="{{ propensity_task }}",
        **io_task_args(execution_timeout=TRAIN_EXECUTION_TIMEOUT),
    )
    @fail_fast
    def train_toolkit(name: str, params=None, dag_run=None, ti=None) -> dict:
        get_current_context()["propensity_task"] = name
        record = steps.train_toolkit(steps.Run.of(dag_run.partition_key, params), name)
        ti.xcom_push(key=MLFLOW_XCOM_KEY, value=record.mlflow)
        return record.to_dict()

    @task(outlets=[asset("champions")], trigger_rule=TriggerRule.NONE_FAILED)
    @fail_fast
    def champions_ready(
        trained, toolkit, params=None, dag_run=None, triggering_asset_events=None, outlet_events=None
    ) -> dict:
        run = steps.Run.of(dag_run.partition_key, params)
        if not steps.features_triggered(triggering_asset_events, dag_run.partition_key):
            raise AirflowSkipException("not started by a new snapshot: its scores are not redone")
        outlet_events[asset("champions")].extra = extra = steps.champions_extra(run, trained)
        return extra

    champions_ready(train.expand(name=select_tasks()), train_toolkit.expand(name=select_toolkit()))


train_models()
