"""
### build_features

Builds the point-in-time snapshot `T = D + 1` once day `D` is validated: `features/snapshot=T/`,
`profiles/snapshot=T/` and `labels/task=<task>/snapshot=T/` for every configured task (data
strictly before `T`; labels null while `[T, T+H)` is not observed). Every output is checked
before anything is published.

* **Partitions**: a run for day `D` starts once *every* `clean.<table>` has an event for `D`.
  A day whose validation failed never gets one. It refuses a day the clean zone does not reach.
* **Params**: `date` (the day `D`, for a run without a partition key), `tasks`.
* **Scale-out**: `build_snapshot` is mapped over the customer hash shards of `features.shards`;
  `merge_snapshot` joins them and publishes (with one shard it passes the record on).
* **Assets**: `features`, `profiles` and `labels.<task>` under the key `T`, `extra = {lake,
  snapshot, observed_until, rows}` (labels also `complete`).

Logic: `propensity.pipeline.features` via `propensity.airflow.steps`; this file is wiring.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import dag, task

from propensity import zones
from propensity.airflow import fail_fast, partitions, steps
from propensity.airflow.assets import asset, assets
from propensity.airflow.params import features_params
from propensity.airflow.tasks import HEAVY_POOL, SNAPSHOT_EXECUTION_TIMEOUT, default_task_args, io_task_args
from propensity.contracts import TABLES

log = logging.getLogger("propensity.dags.build_features")
TASKS = steps.configured_tasks()
OUTLETS = [asset(zones.FEATURES), asset(zones.PROFILES), *assets(zones.LABELS, TASKS)]


@dag(
    dag_id="build_features",
    schedule=partitions.on_all(assets(zones.CLEAN, list(TABLES))),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["propensity", "features", "snapshot"],
    default_args=default_task_args(),
    doc_md=__doc__,
    params=features_params(TASKS),
)
def build_features():
    @task
    @fail_fast
    def plan_shards(params=None, dag_run=None) -> list[dict]:
        return steps.feature_shards(steps.Run.of(dag_run.partition_key, params))

    @task(
        map_index_template="shard {{ task.op_kwargs['shard'] }}",
        **io_task_args(execution_timeout=SNAPSHOT_EXECUTION_TIMEOUT, pool=HEAVY_POOL),
    )
    @fail_fast
    def build_snapshot(shard: int, snapshot: str, params=None, dag_run=None) -> dict:
        return steps.build_features(steps.Run.of(dag_run.partition_key, params), shard, snapshot)

    @task(outlets=OUTLETS, **io_task_args(execution_timeout=SNAPSHOT_EXECUTION_TIMEOUT, pool=HEAVY_POOL))
    @fail_fast
    def merge_snapshot(parts, params=None, dag_run=None, outlet_events=None) -> dict:
        run = steps.Run.of(dag_run.partition_key, params)
        record = steps.merge_features(run, list(parts))
        extras = steps.snapshot_extras(record, run.lake, TASKS)
        for outlet in OUTLETS:
            outlet_events[outlet].extra = extras[outlet.name]
            outlet_events[outlet].add_partitions(record["snapshot"])
        log.info("%s", record["summary"])
        return record

    merge_snapshot(build_snapshot.expand_kwargs(plan_shards()))


build_features()
