"""The Airflow adapter: what the thin DAG files in ``dags/`` are wired from.

* :mod:`~propensity.airflow.assets`: the asset table (names, logical URIs, groups).
* :mod:`~propensity.airflow.partitions`: partition timetables and how a run names its day.
* :mod:`~propensity.airflow.params`: trigger-form Params.
* :mod:`~propensity.airflow.tasks`: task arguments, pools, timeouts and :func:`fail_fast`.
* :mod:`~propensity.airflow.steps`: what each task does, calling :mod:`propensity.pipeline`.

Nothing here imports Airflow at module import time, so all of it is testable without it.
"""

from __future__ import annotations

from propensity.airflow.tasks import fail_fast

__all__ = ["fail_fast"]
