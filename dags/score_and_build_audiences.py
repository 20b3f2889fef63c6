"""
### score_and_build_audiences

Scores every eligible customer of every configured task at snapshot `T` with the task's
champion (`models:/propensity-<task>@champion`), publishes `scores/task=<task>/dt=T/`, then
builds the declared audiences (suppression, dedup, channels, control groups, reason codes
from the model version that made the scores) and publishes them: lake Parquet,
pseudonymous CSV exports with manifests, the CRM table, the composition report.

* **Partitions**: one run per snapshot `T`, when `train_models` has settled the champions for the
  new snapshot `T` (the asset `champions`): scoring never races the training of its models.
* **Freshness**: a snapshot more than `scoring.max_staleness_days` (default 2) after the last day
  it observed is refused, naming both dates: nothing is scored, published or exported.
* **Params**: `date` (the snapshot, for a run without a partition key), `audiences`, `dry_run`.
* **Mapping**: `prepare_scoring` lists task x shard units (`scoring.shards`); `score` is
  mapped over them in the `propensity_heavy` pool and parks each shard in the lake;
  `merge_scores` (one per task) checks and publishes the union.
* **XCom**: each `score` instance pushes `mlflow` (the champion it used; the MLflow links).
* **Assets**: `scores.<task>` (through the alias `scores`) and `audiences`, under the key `T`.

Logic: `propensity.pipeline`, `propensity.scoring`, `propensity.audiences`; this file is wiring.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import dag, get_current_context, task

from propensity import zones
from propensity.airflow import fail_fast, partitions, steps
from propensity.airflow.assets import alias, asset
from propensity.airflow.params import scoring_params
from propensity.airflow.tasks import (
    HEAVY_POOL,
    MLFLOW_XCOM_KEY,
    SCORE_EXECUTION_TIMEOUT,
    SNAPSHOT_EXECUTION_TIMEOUT,
    default_task_args,
    io_task_args,
    log_lines,
)

log = logging.getLogger("propensity.dags.score_and_build_audiences")
TASKS = steps.configured_tasks()


@dag(
    dag_id="score_and_build_audiences",
    schedule=partitions.on_all([asset("champions")]),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["propensity", "score", "audiences"],
    default_args=default_task_args(),
    doc_md=__doc__,
    params=scoring_params(TASKS, steps.configured_audiences()),
)
def score_and_build_audiences():
    @task(**io_task_args(execution_timeout=SNAPSHOT_EXECUTION_TIMEOUT))
    @fail_fast
    def prepare_scoring(params=None, dag_run=None) -> list:
        plan = steps.prepare_scoring(steps.Run.of(dag_run.partition_key, params))
        log.info("scoring %s: %s x %d unit(s)", plan["date"], plan["tasks"], len(plan["units"]))
        return plan["units"]  # one {name, shard, day} per mapped `score`

    @task(
        pool=HEAVY_POOL,
        map_index_template="{{ score_unit }}",
        **io_task_args(execution_timeout=SCORE_EXECUTION_TIMEOUT),
    )
    @fail_fast
    def score(name: str, shard: int, day: str, ti=None) -> dict:
        get_current_context()["score_unit"] = f"{name} shard {shard}"
        settings = steps.load_settings()
        record = steps.score_shard(settings, name, shard, day)
        ti.xcom_push(key=MLFLOW_XCOM_KEY, value=steps.champion_xcom(settings, record))
        return record

    @task
    def gather_shards(records: list) -> list:
        return steps.shard_groups(list(records))

    @task(
        outlets=[alias(zones.SCORES)],
        map_index_template="{{ propensity_task }}",
        **io_task_args(execution_timeout=SCORE_EXECUTION_TIMEOUT),
    )
    @fail_fast
    def merge_scores(name: str, day: str, shards: list, outlet_events=None) -> dict:
        get_current_context()["propensity_task"] = name
        settings = steps.load_settings()
        record = steps.merge_scores(settings, name, day, shards)
        outlet_events[alias(zones.SCORES)].add(
            asset(zones.SCORES, name), extra=steps.scores_extra(record, settings.lake_uri)
        )
        log.info(
            "%s: %s scores published (%s v%s) -> %s",
            name,
            record["rows"],
            record["model_name"],
            record["model_version"],
            record["key"],
        )
        return record

    @task(outlets=[asset(zones.AUDIENCES)], **io_task_args())
    @fail_fast
    def build_audiences(scores: list, params=None, dag_run=None, outlet_events=None) -> dict:
        run = steps.Run.of(dag_run.partition_key, params)
        record = steps.audiences(run)
        log_lines(log, record.lines())
        outlet_events[asset(zones.AUDIENCES)].extra = steps.audiences_extra(record, run.lake)
        return record.to_dict()

    plan = prepare_scoring()
    merged = merge_scores.expand_kwargs(gather_shards(score.expand_kwargs(plan)))
    build_audiences(merged)


score_and_build_audiences()
