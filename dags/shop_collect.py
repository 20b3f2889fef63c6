"""
### shop_collect

Extracts one UTC day of every source (shop DB, clickstream landing area, FX drops) into
`raw/<table>/dt=D/` (Parquet + manifest, idempotent: a rerun gives the same bytes).

* **Partitions**: one run per UTC day `D` (`CronPartitionTimetable`, key `YYYY-MM-DD`),
  created after `D` ends. Trigger a past day with its partition key (or the `date` field).
* **Params**: `tables` (default all), `start` (also re-collect every day from `start` up to `D`
  as history: a backfill in one run; downstream runs are still for `D` only).
* **Assets**: `collect` updates `raw.<table>` for every table under the key `D`, `extra =
  {lake, days, rows}` (an unselected table reports `days: []`).
* **Failures**: a run without a partition fails at once; I/O errors retry 3 times (1, 2, 4 min).

Logic: `propensity.pipeline.collect` via `propensity.airflow.steps`; this file is wiring.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import dag, task

from propensity import zones
from propensity.airflow import fail_fast, partitions, steps
from propensity.airflow.assets import asset, assets
from propensity.airflow.params import collect_params
from propensity.airflow.tasks import default_task_args, io_task_args
from propensity.contracts import TABLES

log = logging.getLogger("propensity.dags.shop_collect")
RAW = assets(zones.RAW, list(TABLES))


@dag(
    dag_id="shop_collect",
    schedule=partitions.daily(),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["propensity", "collect", "raw"],
    default_args=default_task_args(),
    doc_md=__doc__,
    params=collect_params(),
)
def shop_collect():
    @task(outlets=RAW, **io_task_args())
    @fail_fast
    def collect(params=None, dag_run=None, outlet_events=None) -> dict:
        run = steps.Run.of(dag_run.partition_key, params)
        record, extras = steps.collect(run)
        for table in TABLES:
            outlet_events[asset(zones.RAW, table)].extra = extras[f"{zones.RAW}.{table}"]
        log.info("collected %s: %s rows over %d day(s)", run.day, record.rows, len(record.days))
        return record.to_dict()

    collect()


shop_collect()
