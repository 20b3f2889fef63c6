"""The extra-link plugin (``plugins/propensity_links.py``): URL builders, loading, resolution.

The URL builders are pure (``propensity.links``). The Airflow side runs in child processes
with a scrubbed environment (see ``airflow_env.py``): ``airflow plugins`` must list the
links, and after ``dag.test()`` of a DAG whose tasks push the XComs, the links resolve for
those tasks through the same call the API server makes (``task.get_extra_links(ti, name)``
on the serialized DAG) and stay disabled for a task that pushed nothing.

This file is also the child script of the resolution test (``python test_plugin.py links``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from propensity.links import (
    MLFLOW_UI_ENV,
    data_docs_link,
    data_docs_url,
    mlflow_model_version_link,
    mlflow_model_version_url,
    mlflow_run_link,
    mlflow_run_url,
    mlflow_ui_base,
    mlflow_xcom,
)

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
LINK_NAMES = {"MLflow run", "MLflow model version", "Data Docs"}
RESULT_MARK = "@@RESULT@@ "

# --------------------------------------------------------------------------- pure builders


def test_run_and_model_version_urls() -> None:
    assert mlflow_run_url("http://127.0.0.1:5000/", "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc"
    assert mlflow_run_url("http://h:5000", 3, "abc") == "http://h:5000/#/experiments/3/runs/abc"
    assert (
        mlflow_model_version_url("https://mlflow.example.com/ui", "propensity-churn", 7)
        == "https://mlflow.example.com/ui/#/models/propensity-churn/versions/7"
    )
    # names are free text in MLflow: quoted as one path segment
    assert mlflow_model_version_url("http://h", "a b/c", "1") == "http://h/#/models/a%20b%2Fc/versions/1"


def test_ui_base_prefers_a_web_tracking_uri_then_the_fallback() -> None:
    assert mlflow_ui_base("http://127.0.0.1:5000/") == "http://127.0.0.1:5000"
    assert mlflow_ui_base("http://tracking:5000", fallback="http://ui:5000") == "http://tracking:5000"
    assert mlflow_ui_base("sqlite:////var/mlflow.db", fallback="http://ui:5000") == "http://ui:5000"
    assert mlflow_ui_base("sqlite:////var/mlflow.db") is None
    assert mlflow_ui_base(None, fallback="file:///x") is None
    assert mlflow_ui_base("http://") is None


def test_links_from_the_mlflow_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MLFLOW_UI_ENV, raising=False)
    payload = mlflow_xcom("http://127.0.0.1:5000", 1, "r1", "propensity-conversion", 2)
    assert payload == {
        "tracking_uri": "http://127.0.0.1:5000",
        "experiment_id": "1",
        "run_id": "r1",
        "model_name": "propensity-conversion",
        "model_version": "2",
    }
    assert json.loads(json.dumps(payload)) == payload  # an XCom must survive JSON
    assert mlflow_run_link(payload) == "http://127.0.0.1:5000/#/experiments/1/runs/r1"
    assert mlflow_model_version_link(payload) == "http://127.0.0.1:5000/#/models/propensity-conversion/versions/2"

    # a run that registered nothing: run link only
    run_only = mlflow_xcom("http://127.0.0.1:5000", "1", "r1")
    assert "model_name" not in run_only
    assert mlflow_run_link(run_only)
    assert mlflow_model_version_link(run_only) == ""

    # logged straight to SQLite: the deployment's UI URL (argument, else environment), else disabled
    local = mlflow_xcom("sqlite:////var/mlflow.db", "4", "r9", "m", "1")
    assert mlflow_run_link(local) == ""
    assert mlflow_run_link(local, fallback_ui="http://ui:5000") == "http://ui:5000/#/experiments/4/runs/r9"
    monkeypatch.setenv(MLFLOW_UI_ENV, "http://127.0.0.1:15000/")
    assert mlflow_model_version_link(local) == "http://127.0.0.1:15000/#/models/m/versions/1"
    # an explicit browser-facing URL wins over the tracking URI
    inside = mlflow_xcom("http://mlflow:5000", "4", "r9", ui_url="https://mlflow.example.com")
    assert mlflow_run_link(inside) == "https://mlflow.example.com/#/experiments/4/runs/r9"


@pytest.mark.parametrize(
    "payload", [None, "", "not a dict", [], {}, {"run_id": "r"}, {"experiment_id": "1"}, {"model_name": "m"}]
)
def test_incomplete_mlflow_payloads_give_disabled_links(payload: object) -> None:
    assert mlflow_run_link(payload, fallback_ui="http://ui") == ""
    assert mlflow_model_version_link(payload, fallback_ui="http://ui") == ""


def test_experiment_zero_is_a_valid_id() -> None:
    assert mlflow_run_link({"experiment_id": "0", "run_id": "r"}, "http://ui") == "http://ui/#/experiments/0/runs/r"


def test_data_docs_urls() -> None:
    page = "/srv/home/gx/uncommitted/data_docs/local_site/validations/orders/index.html"
    assert data_docs_url(page) == "file://" + page
    assert data_docs_url("/with space/index.html") == "file:///with%20space/index.html"
    assert data_docs_url("file:///x/index.html") == "file:///x/index.html"
    assert data_docs_url("https://docs.example.com/gx/index.html") == "https://docs.example.com/gx/index.html"
    for useless in (None, "", "  ", "relative/index.html", "s3://bucket/index.html"):
        assert data_docs_url(useless) is None
    assert data_docs_link({"url": "http://d/index.html"}) == "http://d/index.html"
    assert data_docs_link(None) == "" and data_docs_link(3) == "" and data_docs_link({}) == ""


# --------------------------------------------------------------------------- inside Airflow


def _child_env(home: Path) -> dict[str, str]:
    from airflow_env import airflow_environ

    env = airflow_environ(home, dags_folder=home / "dags")
    env["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(PLUGINS)
    return env


@pytest.mark.slow
def test_airflow_loads_the_plugin(tmp_path: Path) -> None:
    (tmp_path / "dags").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "plugins", "--output", "json"],
        env=_child_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listing = next(line for line in reversed(proc.stdout.splitlines()) if line.startswith("["))
    plugins = {p["name"]: p for p in json.loads(listing)}
    assert "propensity_links" in plugins, proc.stdout
    links = plugins["propensity_links"]["global_operator_extra_links"]
    assert sorted(links) == sorted(
        f"<propensity_links.{cls} object>" for cls in ("MlflowRunLink", "MlflowModelVersionLink", "DataDocsLink")
    )


LINK_DAG = """
from datetime import UTC, datetime

from airflow.sdk import dag, task

from propensity.links import XCOM_DATA_DOCS, XCOM_MLFLOW, mlflow_xcom


@dag(dag_id="link_demo", schedule=None, start_date=datetime(2025, 1, 1, tzinfo=UTC), catchup=False)
def link_demo():
    @task
    def train(ti=None):
        ti.xcom_push(XCOM_MLFLOW, mlflow_xcom("sqlite:////srv/mlflow.db", "5", "run42", "propensity-churn", 3))

    @task
    def validate(ti=None):
        ti.xcom_push(XCOM_DATA_DOCS, "file:///srv/gx/uncommitted/data_docs/local_site/index.html")

    @task
    def plain():
        return 1

    train() >> validate() >> plain()


link_demo()
"""


@pytest.mark.slow
def test_task_xcoms_resolve_to_links(tmp_path: Path) -> None:
    from airflow_env import AirflowEnv

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "link_demo.py").write_text(LINK_DAG)
    env = AirflowEnv(tmp_path, dags_folder=dags)
    env.init_db()
    [run] = env.dag_test("link_demo", [{"logical_date": "2025-03-02T00:00:00+00:00"}])
    assert run["state"] == "success", run["log"]

    proc = subprocess.run(
        [sys.executable, __file__, "links", "link_demo", run["run_id"]],
        env={**_child_env(tmp_path), MLFLOW_UI_ENV: "http://127.0.0.1:5000"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    assert proc.returncode == 0 and lines, proc.stdout + proc.stderr
    links = json.loads(lines[-1][len(RESULT_MARK) :])
    assert links == {
        "train": {
            "MLflow run": "http://127.0.0.1:5000/#/experiments/5/runs/run42",
            "MLflow model version": "http://127.0.0.1:5000/#/models/propensity-churn/versions/3",
            "Data Docs": None,
        },
        "validate": {
            "MLflow run": None,
            "MLflow model version": None,
            "Data Docs": "file:///srv/gx/uncommitted/data_docs/local_site/index.html",
        },
        "plain": dict.fromkeys(LINK_NAMES),
    }


# --------------------------------------------------------------------------- child side


def _resolve_links(dag_id: str, run_id: str) -> dict[str, dict[str, str | None]]:
    """Every task's extra links as the API server computes them (``link_url or None``)."""
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        dag = SerializedDagModel.get_dag(dag_id, session=session)
        assert dag is not None, f"{dag_id} is not serialized"
        tis = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id))
        result = {}
        for ti in tis:
            task = dag.get_task(ti.task_id)
            result[ti.task_id] = {name: task.get_extra_links(ti, name) or None for name in task.extra_links}
    return result


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    assert command == "links", command
    print(RESULT_MARK + json.dumps(_resolve_links(*args)), flush=True)
