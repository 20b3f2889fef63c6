"""
### shop_validate

Runs the data-quality gate on what `shop_collect` wrote: every `raw/<table>/dt=D`
partition is checked against suites generated from the table's contract; passing rows
are published to `clean/<table>/dt=D`, failing rows to `quarantine/<table>/dt=D` (with
rule and reason), and a partition with a *critical* failure (schema drift, volume out of
band, empty partition, freshness, a broken key) is not published at all.

* **Schedule**: on the assets `raw.<table>` of *all* tables (`schedule=[...]`, i.e. an
  `AssetAll`): a run starts once every raw table has been updated since the previous
  run. `shop_collect` updates every table in each run, so that is exactly one validate
  run per collect run, seeing all of its events. `AssetAny(...)` would start a run on
  the first table's event while the others are still collecting: several runs per
  collection, each seeing some of the tables. Consequence of `AssetAll`: a partial
  backfill (`shop_collect` with `tables`) is validated with the next full collection
  (its events wait for it; each table then validates the dates *its* events report),
  or right away by triggering this DAG by hand with the same `tables`/`start`/`end`.
* **Dates**: each task validates the dates in its raw table's triggering asset events
  (`extra.dates`: exactly what collection wrote, over all events since the previous
  run); the params `start`/`end` override them; a manual run without either validates
  yesterday (UTC).
* **Params** (trigger form): `start`/`end` (inclusive dates), `tables` (the other tables
  are skipped).
* **Assets**: each `validate_<table>` task updates `clean.<table>`
  (`propensity://clean/<table>`) with `extra = {lake, dates, rows_clean,
  rows_quarantined}`, only if none of its partitions had a critical failure.
* **Failures**: a critical failure fails the table's task at once, without retries
  (`AirflowFailException`, message naming table, date and rule); partitions that passed
  are still published, but `clean.<table>` is not updated, so nothing downstream is
  triggered by that table. The other tables' tasks are independent and still run.
  Other errors (lake I/O) retry 3 times with exponential backoff (1, 2, 4 min).
* **Concurrency**: one run and one validate task at a time. The gate keeps its suites,
  checkpoints and Data Docs in one great-expectations *file* project (`<home>/gx`), which
  is not safe for concurrent writers (parallel gates fail with
  `InvalidDataContextConfigError` on `great_expectations.yml`); the gate is also the
  memory-hungry step of a long backfill.

Logic lives in `propensity.validation` and `propensity.orchestration`; this file is wiring.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from propensity.contracts import TABLES
from propensity.orchestration import (
    clean_asset,
    default_task_args,
    io_task_args,
    raw_asset,
    selected_tables,
    table_range_params,
    validation_days,
    validation_extra,
)

# DAG files are imported under a mangled module name, so name the logger explicitly.
log = logging.getLogger("propensity.dags.shop_validate")

# Serialise the gates (see "Concurrency" above). With max_active_runs=1 this DAG-level limit
# covers every gate Airflow runs, and needs no setup; a 1-slot pool would also cover other
# DAGs, but Airflow never schedules a task whose pool does not exist and nothing provisions
# pools yet: switch to pool="great_expectations" once the deployment creates it.
MAX_ACTIVE_VALIDATIONS = 1


def validate_task_id(table: str) -> str:
    return f"validate_{table}"


@dag(
    dag_id="shop_validate",
    schedule=[raw_asset(t) for t in TABLES],
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    max_active_tasks=MAX_ACTIVE_VALIDATIONS,
    tags=["propensity", "validate", "clean"],
    default_args=default_task_args(),
    doc_md=__doc__,
    params=table_range_params("validate", "the dates of the triggering asset events"),
)
def shop_validate():
    @task(**io_task_args())
    def validate(table: str, params=None, triggering_asset_events=None, dag_run=None, outlet_events=None) -> dict:
        if table not in selected_tables(params["tables"]):
            raise AirflowSkipException(f"{table} not selected in params.tables")
        days = validation_days(
            table,
            start=params["start"],
            end=params["end"],
            triggering_asset_events=triggering_asset_events,
            run_after=dag_run.run_after,
        )
        if not days:
            raise AirflowSkipException(f"no dates to validate for {table}: its raw asset events report none")
        # Task logs record INFO; great-expectations logs ~200 INFO lines while being imported,
        # before propensity.validation.runner gets to silence it.
        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        from propensity.config import load_settings
        from propensity.validation import Gate, ValidationFailed

        settings = load_settings()
        log.info("validating %s: %d day(s) %s..%s", table, len(days), days[0], days[-1])
        # The gate logs one summary line per partition (PartitionOutcome.summary()).
        outcomes = Gate(settings).validate(days, [table])
        extra = {"lake": settings.lake_uri, **validation_extra(outcomes)}
        bad = [o.dt for o in outcomes if o.critical]
        log.info(
            "validated %s: %d partition(s), %d published, %d rows clean, %d quarantined, %d with critical failures",
            table,
            len(outcomes),
            len(extra["dates"]),
            extra["rows_clean"],
            extra["rows_quarantined"],
            len(bad),
        )
        if bad:
            # A data-quality verdict: retrying cannot change it, so fail at once, without retries.
            raise AirflowFailException(str(ValidationFailed(outcomes)))
        outlet_events[clean_asset(table)].extra = extra
        return extra

    for t in TABLES:
        validate.override(task_id=validate_task_id(t), outlets=[clean_asset(t)])(t)


shop_validate()
