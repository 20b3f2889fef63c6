"""
### shop_collect

Extracts every source table of the shop (OLTP database, clickstream landing area, FX
drops) for each UTC day of the run into the lake's raw zone: one `raw/<table>/dt=D`
partition per table and day, replaced atomically and idempotently, so re-running a day
or a whole range is safe.

* **Schedule**: daily, data interval `[D 00:00Z, D+1 00:00Z)`; the run for day `D`
  starts after midnight UTC of `D+1`. No catch-up: use the params for backfills.
* **Params** (trigger form): `tables` restricts the run to some tables (the others are
  skipped); `start`/`end` (inclusive dates) override the data interval, e.g. to
  re-collect a month. A manual run without a logical date and without `start`/`end`
  collects yesterday (UTC).
* **Assets**: each `collect_<table>` task updates the asset `raw.<table>`
  (`propensity://raw/<table>`); downstream DAGs can be scheduled on them.
* **Retries**: collect tasks retry 3 times with exponential backoff (1, 2, 4 min).

Logic lives in `propensity.collect` and `propensity.orchestration`; this file is wiring.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import CronDataIntervalTimetable, TriggerRule, dag, task
from airflow.sdk.exceptions import AirflowSkipException

from propensity.contracts import TABLES
from propensity.orchestration import (
    compact_manifest,
    default_task_args,
    io_task_args,
    raw_asset,
    run_days,
    selected_tables,
    summarize,
    table_range_params,
)

# DAG files are imported under a mangled module name ("unusual_prefix_<hash>_shop_collect"),
# so name the logger explicitly.
log = logging.getLogger("propensity.dags.shop_collect")


def collect_task_id(table: str) -> str:
    return f"collect_{table}"


@dag(
    dag_id="shop_collect",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["propensity", "collect", "raw"],
    default_args=default_task_args(),
    doc_md=__doc__,
    params=table_range_params("collect", "the run's data interval"),
)
def shop_collect():
    @task(**io_task_args())
    def collect(
        table: str,
        params=None,
        data_interval_start=None,
        data_interval_end=None,
        dag_run=None,
        outlet_events=None,
    ) -> list[dict]:
        if table not in selected_tables(params["tables"]):
            raise AirflowSkipException(f"{table} not selected in params.tables")
        days = run_days(
            start=params["start"],
            end=params["end"],
            data_interval_start=data_interval_start,
            data_interval_end=data_interval_end,
            run_after=dag_run.run_after,
        )
        from propensity.collect import Collector
        from propensity.config import load_settings

        settings = load_settings()
        collector = Collector(settings)
        try:
            manifests = [compact_manifest(m) for day in days for m in collector.collect_day(day, [table])]
        finally:
            collector.close()
        rows = sum(m["row_count"] for m in manifests)
        log.info("collected %s: %d rows over %d day(s) %s..%s", table, rows, len(days), days[0], days[-1])
        outlet_events[raw_asset(table)].extra = {
            "lake": settings.lake_uri,
            "dates": [m["partition"]["dt"] for m in manifests],
            "rows": rows,
        }
        return manifests

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def summary(params=None, ti=None) -> dict[str, dict[str, int]]:
        # Pull only the selected tables' results: pulling a skipped task's XCom works (None)
        # but logs "XCom not found" at error level.
        selected = selected_tables(params["tables"])
        totals = summarize(ti.xcom_pull(task_ids=[collect_task_id(t) for t in selected]))
        for table, entry in totals.items():
            log.info("%-18s %4d partition(s) %10d rows", table, entry["partitions"], entry["rows"])
        return totals

    collects = [collect.override(task_id=collect_task_id(t), outlets=[raw_asset(t)])(t) for t in TABLES]
    collects >> summary()


shop_collect()
