"""
### score_and_build_audiences

Scores every eligible customer of every propensity task with the task's champion
(`models:/propensity-<task>@champion`), publishes `scores/task=<task>/dt=D/`, then builds
the declared campaign audiences from those scores and the snapshot's profile tags
(suppression, deduplication, channels, control groups, reason codes for members) and
publishes them: lake Parquet, pseudonymous CSV exports with their manifests, the CRM table
where configured, and the composition report.

* **Schedule**: on the asset `features` (`propensity://features/`), i.e. after every
  `build_features` run: the last link of `shop_collect` -> `shop_validate` ->
  `build_features` -> `score_and_build_audiences`.
* **Date**: the `date` param; otherwise the latest snapshot date of the triggering
  `features` events (a snapshot published at `T` is scored at `T`); otherwise the run's
  logical date (asset-triggered runs have none); otherwise today (UTC).
* **Params** (trigger form): `date` (YYYY-MM-DD), `audiences` (names declared in the
  audiences YAML; all by default), `dry_run` (select and report the audiences, publish
  none; scores are published either way, the audiences are built from them).
* **Mapping**: `prepare_scoring` resolves the date, the tasks and the customer hash shards
  (`scoring.shards`, default 1), publishes the date's snapshot first if it is missing, and
  returns one `{name, shard, day}` per task x shard. `score` is mapped over them
  (`.expand_kwargs`), one instance per task and shard (named e.g. `churn shard 1`), in the
  pool `propensity_heavy` (`airflow pools set propensity_heavy 2 "scoring and training"`).
  Each writes its shard's frame to the lake under `scores/_shards/task=<t>/dt=<d>/shard=<i>/`
  and returns only that key (no frames through XCom). `gather_shards` groups the keys per
  task; `merge_scores`, mapped over the tasks, unions a task's shards with deciles over the
  whole population, validates the union like an unsharded run (unique ids, scores in
  [0, 1], exactly the eligible population, one champion version) and publishes it; the
  shards are then removed.
* **XCom**: every `score` instance pushes `mlflow` = `{tracking_uri, experiment_id,
  run_id, model_name, model_version}` of the champion it used (the MLflow link plugin
  reads it).
* **Assets**: `merge_scores` updates `scores.<task>` (`propensity://scores/<task>`)
  through the asset alias `scores`, `extra = {lake, task, dates, rows, model_name,
  model_version, run_id}`; `build_audiences` updates `audiences`
  (`propensity://audiences/`), `extra = {lake, dates, dry_run, audiences}`, with
  `dates: []` for a dry run.
* **Log**: `build_audiences` logs the composition warnings as it finds them, then the summary
  table (audience, size, treatment, control, suppressed by reason, deduplicated, top reason
  codes) and the number of warnings.
* **Failures**: what a retry cannot fix (no champion, a signature mismatch, scores or a
  snapshot breaking their checks, shards scored by different champion versions, an
  unknown audience or a bad rule) fails the task at once (`AirflowFailException`); other
  errors (lake, MLflow I/O) retry 3 times with exponential backoff (1, 2, 4 min).

Logic lives in `propensity.scoring`, `propensity.audiences` and `propensity.orchestration`;
this file is wiring.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from propensity.orchestration import (
    AUDIENCES_EXECUTION_TIMEOUT,
    HEAVY_POOL,
    MLFLOW_XCOM_KEY,
    SCORE_EXECUTION_TIMEOUT,
    SNAPSHOT_EXECUTION_TIMEOUT,
    ScoringRequestError,
    SnapshotRequestError,
    audience_lines,
    audiences_asset,
    audiences_extra,
    build_audiences,
    default_task_args,
    features_asset,
    io_task_args,
    merge_score_shards,
    score_shard,
    scores_alias,
    scores_asset,
    scores_extra,
    scoring_date,
    scoring_params,
    scoring_plan,
    shard_groups,
)

# DAG files are imported under a mangled module name, so name the logger explicitly.
log = logging.getLogger("propensity.dags.score_and_build_audiences")


@dag(
    dag_id="score_and_build_audiences",
    schedule=[features_asset()],
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["propensity", "score", "audiences"],
    default_args=default_task_args(),
    doc_md=__doc__,
    params=scoring_params(),
)
def score_and_build_audiences():
    @task(task_id="prepare_scoring", **io_task_args(execution_timeout=SNAPSHOT_EXECUTION_TIMEOUT))
    def prepare(params=None, triggering_asset_events=None, dag_run=None, ti=None) -> list:
        from propensity.config import load_settings
        from propensity.validation.frames import FrameValidationError

        day = scoring_date(
            date=params["date"],
            triggering_asset_events=triggering_asset_events,
            logical_date=dag_run.logical_date,
            run_after=dag_run.run_after,
        )
        try:
            plan = scoring_plan(load_settings(), day)
        except (FrameValidationError, SnapshotRequestError) as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        log.info(
            "scoring %s: tasks %s x %d shard(s); %s customers, eligible %s%s",
            plan["date"],
            plan["tasks"],
            len(plan["shards"]),
            f"{plan['customers']:,}",
            plan["populations"],
            " (snapshot built now)" if plan["built"] else "",
        )
        ti.xcom_push(key="date", value=plan["date"])
        return plan["units"]  # one {name, shard, day} per mapped `score`

    @task(
        pool=HEAVY_POOL,
        map_index_template="{{ score_shard }}",
        **io_task_args(execution_timeout=SCORE_EXECUTION_TIMEOUT),
    )
    def score(name: str, shard: int, day: str, ti=None) -> dict:
        from propensity.config import load_settings

        get_current_context()["score_shard"] = f"{name} shard {shard}"  # names the mapped instance
        try:
            record = score_shard(load_settings(), day, name, shard)
        except ScoringRequestError as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        ti.xcom_push(key=MLFLOW_XCOM_KEY, value=record[MLFLOW_XCOM_KEY])
        log.info(
            "%s shard %d/%d: %s rows scored by %s v%s in %.1f s -> %s",
            name,
            shard,
            record["shards"],
            f"{record['rows']:,}",
            record["model_name"],
            record["model_version"],
            record["seconds"],
            record["key"],
        )
        # the lake key of the shard's frame, never the frame; `mlflow` went out as its own XCom
        return {k: v for k, v in record.items() if k != MLFLOW_XCOM_KEY}

    @task
    def gather_shards(records: list) -> list:
        return shard_groups(list(records))  # one {name, day, shards} per task

    @task(
        outlets=[scores_alias()],
        map_index_template="{{ propensity_task }}",
        **io_task_args(execution_timeout=SCORE_EXECUTION_TIMEOUT),
    )
    def merge_scores(name: str, day: str, shards: list, outlet_events=None) -> dict:
        from propensity.config import load_settings

        get_current_context()["propensity_task"] = name  # names the mapped instance
        settings = load_settings()
        try:
            record = merge_score_shards(settings, day, name, shards)
        except ScoringRequestError as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        outlet_events[scores_alias()].add(scores_asset(name), extra=scores_extra(record, settings.lake_uri))
        log.info(
            "%s: %s scores published (%d shard(s), %s v%s, mean %.4f) -> %s",
            name,
            f"{record['rows']:,}",
            record["shards"],
            record["model_name"],
            record["model_version"],
            record["mean_score"] or 0.0,
            record["key"],
        )
        return record

    @task(
        task_id="build_audiences",
        outlets=[audiences_asset()],
        **io_task_args(execution_timeout=AUDIENCES_EXECUTION_TIMEOUT),
    )
    def audiences(day: str, scores: list, params=None, outlet_events=None) -> dict:
        from propensity.config import load_settings

        settings = load_settings()
        try:
            record = build_audiences(settings, day, params["audiences"], dry_run=params["dry_run"])
        except ScoringRequestError as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        for line in audience_lines(record):
            (log.warning if "composition warning" in line else log.info)("%s", line)
        outlet_events[audiences_asset()].extra = audiences_extra(record, settings.lake_uri)
        return record

    units = prepare()
    scored = score.expand_kwargs(units)  # tasks x shards
    merged = merge_scores.expand_kwargs(gather_shards(scored))  # one per task
    audiences(day=units["date"], scores=merged)


score_and_build_audiences()
