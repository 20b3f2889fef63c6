"""
### shop_validate

Runs the great-expectations gate on what `shop_collect` wrote for one day: rows failing a
row-level rule go to `quarantine/<table>/dt=D/` (with rule and reason), the rest to
`clean/<table>/dt=D/`; a *critical* failure (schema drift, volume out of band, an empty day,
freshness, a broken key) stops the day.

* **Partitions**: a run for day `D` starts once *every* `raw.<table>` has an event for `D`
  (`PartitionedAssetTimetable` over all raw tables). It validates `D` and the days its raw
  events collected (a backfill), or from the `start` param, in one pass.
* **Assets**: `clean.<table>` for every table under the key `D`, only when no partition had a
  critical failure: a failed day triggers nothing downstream.
* **XCom**: `data_docs`, the Data Docs page (the task's "Data Docs" link).
* **Failures**: a critical failure fails at once, naming table, date, column and rule (passing
  partitions stay published); I/O errors retry 3 times.

Logic: `propensity.pipeline.validate` via `propensity.airflow.steps`; this file is wiring.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import dag, task

from propensity import zones
from propensity.airflow import fail_fast, partitions, steps
from propensity.airflow.assets import asset, assets
from propensity.airflow.params import validate_params
from propensity.airflow.tasks import DATA_DOCS_XCOM_KEY, default_task_args, io_task_args, log_lines
from propensity.contracts import TABLES

log = logging.getLogger("propensity.dags.shop_validate")


@dag(
    dag_id="shop_validate",
    schedule=partitions.on_all(assets(zones.RAW, list(TABLES))),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["propensity", "validate", "clean"],
    default_args=default_task_args(),
    doc_md=__doc__,
    params=validate_params(),
)
def shop_validate():
    @task(outlets=assets(zones.CLEAN, list(TABLES)), **io_task_args())
    @fail_fast
    def validate(params=None, dag_run=None, triggering_asset_events=None, outlet_events=None, ti=None) -> dict:
        run = steps.Run.of(dag_run.partition_key, params)
        record, extras = steps.validate(run, triggering_asset_events, dag_run.partition_key)
        ti.xcom_push(key=DATA_DOCS_XCOM_KEY, value=record.docs_url)
        log_lines(log, record.summaries)
        record.raise_for_critical()
        for table in TABLES:
            outlet_events[asset(zones.CLEAN, table)].extra = extras[f"{zones.CLEAN}.{table}"]
        return record.to_dict()

    validate()


shop_validate()
