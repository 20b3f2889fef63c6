"""Airflow plugin: extra links from a task instance to what it produced.

Three global operator extra links (buttons on every task instance's page in the Airflow UI):

* **MLflow run**: the run the task logged (XCom ``mlflow``: experiment and run id);
* **MLflow model version**: the registered model version it produced (XCom ``mlflow``:
  ``model_name``, ``model_version``);
* **Data Docs**: the great-expectations Data Docs page of a validation task (XCom
  ``data_docs``).

A task that pushed no such XCom gets the link disabled. The XCom convention and the URL
building live in :mod:`propensity.links` (pure functions, tested without Airflow); this file
only reads the XComs.

Links are *global* rather than attached to operator classes because the DAGs use TaskFlow
(``@task``), whose operator class is shared by every Python task. Airflow resolves global
links in the API server when the UI asks for a task instance's links, by calling
``get_link(operator, ti_key=...)``: there the XCom is read from the metadata database. If a
link is ever attached to an operator instead (``operator_extra_links``), the task runner
resolves it at the end of the task, where only the Task SDK's ``XCom`` works; both cases
are handled.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from airflow.plugins_manager import AirflowPlugin
from airflow.sdk import BaseOperatorLink

from propensity.links import (
    XCOM_DATA_DOCS,
    XCOM_MLFLOW,
    data_docs_link,
    mlflow_model_version_link,
    mlflow_run_link,
)

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


def _in_task_runtime() -> bool:
    """True inside a running task (Task SDK), where the metadata DB is out of reach."""
    runner = sys.modules.get("airflow.sdk.execution_time.task_runner")
    return getattr(runner, "SUPERVISOR_COMMS", None) is not None


def xcom_value(ti_key: TaskInstanceKey, key: str) -> Any:
    """The XCom ``key`` of the task instance ``ti_key``, or None.

    In the API server (where global links are resolved) this reads the ``xcom`` table, as
    Airflow's own ``XComOperatorLink`` does; inside a task it goes through the Task SDK's
    ``XCom.get_value``. Values are decoded as plain JSON only: no class is instantiated
    from XCom data while rendering a web page.
    """
    if _in_task_runtime():
        from airflow.sdk.execution_time.xcom import XCom

        return XCom.get_value(ti_key=ti_key, key=key)

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.execute(
            XComModel.get_many(
                key=key,
                run_id=ti_key.run_id,
                dag_ids=ti_key.dag_id,
                task_ids=ti_key.task_id,
                map_indexes=ti_key.map_index,
            ).with_only_columns(XComModel.value)
        ).first()
    if row is None:
        return None
    value = row.value
    # Pushed through the Execution API the value is JSON already; an older path stores a JSON string.
    for _ in range(2):
        if not isinstance(value, str):
            break
        try:
            value = json.loads(value)
        except ValueError:
            break
    return value


class MlflowRunLink(BaseOperatorLink):
    """The MLflow run the task logged."""

    name = "MLflow run"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return mlflow_run_link(xcom_value(ti_key, XCOM_MLFLOW))


class MlflowModelVersionLink(BaseOperatorLink):
    """The registered model version the task produced."""

    name = "MLflow model version"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return mlflow_model_version_link(xcom_value(ti_key, XCOM_MLFLOW))


class DataDocsLink(BaseOperatorLink):
    """The great-expectations Data Docs page of a validation task."""

    name = "Data Docs"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return data_docs_link(xcom_value(ti_key, XCOM_DATA_DOCS))


class PropensityLinksPlugin(AirflowPlugin):
    """Registers the links on every operator (see the module docstring)."""

    name = "propensity_links"
    global_operator_extra_links = [MlflowRunLink(), MlflowModelVersionLink(), DataDocsLink()]  # noqa: RUF012
