"""
### monitor_drift

Compares, for each task, snapshot `T` with what its champion was trained on: the population
stability index (PSI) of every feature against the champion's logged `reference.json`, and of
the scores at `T` against the champion's test scores.

* **Partitions**: one run per snapshot `T`, once every task's `scores.<task>` is published for `T`.
* **Breach**: at least `monitoring.min_drifted_features` features with PSI >=
  `monitoring.psi_threshold`, or score PSI >= `monitoring.score_psi_threshold`.
* **Report**: `drift/dt=T/report.json` and `report.md` in the lake; one verdict line per task.
* **Assets**: `signal_drift` updates `drift` under the key `T` only on a breach (else it is
  skipped); `train_models` retrains the breached tasks.

Logic: `propensity.pipeline.monitor`; this file is wiring.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowSkipException

from propensity import pipeline, zones
from propensity.airflow import fail_fast, partitions, steps
from propensity.airflow.assets import asset, assets
from propensity.airflow.params import monitor_params
from propensity.airflow.tasks import default_task_args, io_task_args, log_lines

log = logging.getLogger("propensity.dags.monitor_drift")
TASKS = steps.configured_tasks()


@dag(
    dag_id="monitor_drift",
    schedule=partitions.on_all(assets(zones.SCORES, TASKS)),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["propensity", "monitoring", "drift"],
    default_args=default_task_args(),
    doc_md=__doc__,
    params=monitor_params(TASKS),
)
def monitor_drift():
    @task(**io_task_args())
    @fail_fast
    def compute_drift(params=None, dag_run=None) -> dict:
        run = steps.Run.of(dag_run.partition_key, params)
        record = pipeline.monitor(run.settings, run.day, params.get("tasks"))
        log_lines(log, record.lines)
        return record.to_dict()

    @task(outlets=[asset(zones.DRIFT)])
    def signal_drift(report: dict, outlet_events=None) -> list[str]:
        record = pipeline.MonitorRecord(**report)
        if not record.breach:
            raise AirflowSkipException(f"no drift breach on snapshot {record.snapshot}: no drift event")
        outlet_events[asset(zones.DRIFT)].extra = steps.drift_extra(record, steps.load_settings().lake_uri)
        return record.breached_tasks

    signal_drift(compute_drift())


monitor_drift()
