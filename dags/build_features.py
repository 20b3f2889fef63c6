"""
### build_features

Builds point-in-time snapshots from the clean zone and publishes, per snapshot date `T`
(computed from data strictly before `T`): `features/snapshot=T/` (one row per customer),
`profiles/snapshot=T/` (profile tags) and, per propensity task, `labels/task=<task>/snapshot=T/`
(the task's eligible population with its label over `[T, T+H)`, null while that window
is not fully observed yet). Every output is validated before anything of the snapshot is
published; a republished date replaces the previous one atomically.

* **Schedule**: on the assets `clean.<table>` of *all* tables (`schedule=[...]`, an
  `AssetAll`), like `shop_validate` on the raw ones: a run starts once every table has
  been validated since the previous run, i.e. once per validate run, seeing all of its
  events. A snapshot joins every table, so it must not start on the first table's event
  (`AssetAny`) while the others are still being validated. A table with a critical
  failure emits no `clean.<table>` event, so no snapshot is built on that collection
  until the table is fixed and revalidated (or this DAG is triggered by hand).
* **Dates**: the `snapshot` param; otherwise the day after the latest date in the
  triggering `clean.*` events (validating day `D` allows the snapshot `D+1`); a manual
  run without it builds today's (UTC) snapshot. With `plan`, every snapshot of the tasks'
  out-of-time training plans (train, validation and test dates, as `propensity run
  --through features`), `snapshot` then capping the test date.
* **Params** (trigger form): `snapshot` (date), `tasks` (label only these tasks; all by
  default), `plan` (boolean).
* **Assets**: `merge_snapshots` updates `features`, `profiles` and `labels.<task>` per
  task (`propensity://features/`, `propensity://profiles/`, `propensity://labels/<task>`)
  with `extra = {lake, dates, rows}` (labels also `task` and `complete`: the dates whose
  label window is observed). Every outlet gets an event, so a task left out by `tasks`
  reports `dates: []`.
* **Scale-out**: `build_snapshots` is mapped over the customer hash shards of
  `features.shards` (default 1): each instance builds its customers' features and labels
  for every date; `merge_snapshots` joins the shards, computes the profile tags over the
  union, validates and publishes (equal to an unsharded build; with one shard the single
  instance publishes and the merge passes its records on). Both load the clean zone into
  memory and run in the `propensity_heavy` pool; execution timeout 4 h.
* **Failures**: a snapshot breaking its checks (`FrameValidationError`) or a request that
  cannot succeed (unknown task, empty clean zone, too little history for a plan) fails the
  task at once, without retries (`AirflowFailException`); nothing of that snapshot is
  published and no asset event is emitted. Other errors (lake I/O) retry 3 times with
  exponential backoff (1, 2, 4 min).

Logic lives in `propensity.features` and `propensity.orchestration`; this file is wiring.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowFailException

from propensity.contracts import TABLES
from propensity.orchestration import (
    HEAVY_POOL,
    SNAPSHOT_EXECUTION_TIMEOUT,
    SnapshotRequestError,
    build_snapshot_shard,
    clean_asset,
    default_task_args,
    features_params,
    io_task_args,
    merge_snapshot_shards,
    snapshot_dates_for_run,
    snapshot_extras,
    snapshot_outlets,
    snapshot_shards,
)

# DAG files are imported under a mangled module name, so name the logger explicitly.
log = logging.getLogger("propensity.dags.build_features")


@dag(
    dag_id="build_features",
    schedule=[clean_asset(t) for t in TABLES],
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["propensity", "features", "snapshot"],
    default_args=default_task_args(),
    doc_md=__doc__,
    params=features_params(),
)
def build_features():
    @task
    def shards() -> list[int]:
        from propensity.config import load_settings

        return snapshot_shards(load_settings())

    @task(
        task_id="build_snapshots",
        map_index_template="shard {{ task.op_kwargs['shard'] }}",
        **io_task_args(execution_timeout=SNAPSHOT_EXECUTION_TIMEOUT, pool=HEAVY_POOL),
    )
    def build(shard: int, params=None, triggering_asset_events=None, dag_run=None) -> list:
        from propensity.config import load_settings
        from propensity.validation.frames import FrameValidationError

        dates = snapshot_dates_for_run(
            snapshot=params["snapshot"], triggering_asset_events=triggering_asset_events, run_after=dag_run.run_after
        )
        try:
            return build_snapshot_shard(
                load_settings(), shard, dates, params["tasks"], plan=params["plan"], as_of=params["snapshot"]
            )
        except (FrameValidationError, SnapshotRequestError) as exc:
            # A verdict on the data or the request: retrying cannot change it.
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc

    @task(outlets=snapshot_outlets(), **io_task_args(execution_timeout=SNAPSHOT_EXECUTION_TIMEOUT, pool=HEAVY_POOL))
    def merge_snapshots(parts, outlet_events=None) -> list:
        from propensity.config import load_settings
        from propensity.validation.frames import FrameValidationError

        settings = load_settings()
        try:
            records = merge_snapshot_shards(settings, list(parts))
        except (FrameValidationError, SnapshotRequestError) as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        extras = snapshot_extras(records, settings.lake_uri)
        for asset in snapshot_outlets():
            outlet_events[asset].extra = extras[asset.name]
        return records

    @task
    def summary(records: list) -> list[str]:
        lines = [r["summary"] for r in records]
        for line in lines:
            log.info("%s", line)  # one Snapshot.summary() line per snapshot
        return lines

    summary(merge_snapshots(build.expand(shard=shards())))


build_features()
