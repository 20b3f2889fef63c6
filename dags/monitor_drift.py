"""
### monitor_drift

Compares, for each propensity task, today's data with what its champion model
(`models:/propensity-<task>@champion`) was trained on: the population stability index
(PSI) of every feature between the champion's training rows (the `reference.json` its
training run logged: quantile bins and category shares) and the task's population in the
latest published features snapshot, and of the score between the champion's test-set
scores and the latest published scores (`scores/task=<task>/dt=D/`, when scoring has run).

* **Schedule**: daily at 06:00 UTC (`CronTriggerTimetable`), after the nightly collect,
  validate and features runs.
* **Params** (trigger form): `snapshot` (the features snapshot to check; default the
  latest published), `tasks` (default all configured).
* **Breach**: a task breaches when at least `monitoring.min_drifted_features` features
  (default 3) have PSI >= `monitoring.psi_threshold` (default 0.2), or its score PSI is
  >= `monitoring.score_psi_threshold` (default 0.2). A task without a champion, or whose
  champion has no reference, is reported as not monitored.
* **Report**: `drift/dt=<snapshot>/report.json` and `report.md` in the lake; the task log
  has one verdict line per task and its 10 features with the highest PSI.
* **Assets**: `signal_drift` updates the asset `drift` (`propensity://monitoring/drift`,
  `extra = {lake, snapshot, tasks, report}`, `tasks` being the breached ones) only on a
  breach; without one it is skipped, and a skipped task emits no asset event.
  `train_models` is scheduled on `drift` and retrains the breached tasks.
* **Failures**: no published snapshot (or not the one asked for) fails at once
  (`AirflowFailException`); other errors (lake, MLflow I/O) retry 3 times with
  exponential backoff (1, 2, 4 min).

Logic lives in `propensity.monitoring` and `propensity.orchestration`; this file is wiring.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from airflow.sdk import CronTriggerTimetable, dag, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from propensity.orchestration import (
    SNAPSHOT_TASKS,
    default_task_args,
    drift_asset,
    drift_extra,
    io_task_args,
    models_asset,
    monitor_params,
    run_drift_monitor,
)

# DAG files are imported under a mangled module name, so name the logger explicitly.
log = logging.getLogger("propensity.dags.monitor_drift")


@dag(
    dag_id="monitor_drift",
    schedule=CronTriggerTimetable("0 6 * * *", timezone="UTC"),
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["propensity", "monitoring", "drift"],
    default_args=default_task_args(),
    doc_md=__doc__,
    params=monitor_params(),
)
def monitor_drift():
    @task(inlets=[models_asset(t) for t in SNAPSHOT_TASKS], **io_task_args())
    def compute_drift(params=None) -> dict:
        from propensity.config import load_settings
        from propensity.monitoring.monitor import MonitorRequestError
        from propensity.orchestration import SnapshotRequestError

        try:
            report = run_drift_monitor(load_settings(), params["snapshot"], params["tasks"])
        except (MonitorRequestError, SnapshotRequestError) as exc:
            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
        for line in report.pop("lines"):
            log.info("%s", line)
        log.info(
            "drift report %s: %s",
            report["keys"]["json"],
            f"BREACH {report['breached_tasks']}" if report["breach"] else "no breach",
        )
        return report

    @task(outlets=[drift_asset()])
    def signal_drift(report: dict, outlet_events=None) -> list[str]:
        from propensity.config import load_settings

        if not report["breach"]:
            raise AirflowSkipException(f"no drift breach on snapshot {report['snapshot']}: no drift event")
        outlet_events[drift_asset()].extra = drift_extra(report, load_settings().lake_uri)
        log.info("drift breach on %s: signalling retraining", report["breached_tasks"])
        return report["breached_tasks"]

    signal_drift(compute_drift())


monitor_drift()
