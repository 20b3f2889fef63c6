"""URLs from an Airflow task instance to what it produced: MLflow runs, model versions, Data Docs.

The Airflow plugin ``plugins/propensity_links.py`` adds three extra links to every task
(buttons on the task instance page). Each reads an XCom the task pushed and turns it into
a URL with the pure functions below, so the URL logic is testable without Airflow.

Convention for tasks (push with ``ti.xcom_push(key, value)``, values JSON-serialisable):

* key :data:`XCOM_MLFLOW` (``"mlflow"``): :func:`mlflow_xcom` builds it::

      {"tracking_uri": "http://127.0.0.1:5000",  # browser-facing MLflow UI base URL
       "experiment_id": "1", "run_id": "ab12...",
       "model_name": "propensity-churn", "model_version": "3"}

  ``model_name``/``model_version`` are optional (a run that registered nothing). An
  optional ``ui_url`` wins over ``tracking_uri``; a ``tracking_uri`` that is not http(s)
  (``sqlite:///...``: the task logged straight to the database) falls back to the
  deployment's UI URL in ``$PROPENSITY_MLFLOW_UI_URL`` (``python -m propensity.stack up``
  sets it for the Airflow processes).
* key :data:`XCOM_DATA_DOCS` (``"data_docs"``): the great-expectations Data Docs page of
  a validation task, an ``http(s)://`` or ``file://`` URL or an absolute local path
  (what ``context.get_docs_sites_urls()`` returns), or ``{"url": ...}``.

Link functions return ``""`` when the task pushed nothing usable: Airflow then shows the
link disabled instead of failing the page.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = [
    "MLFLOW_UI_ENV",
    "XCOM_DATA_DOCS",
    "XCOM_MLFLOW",
    "data_docs_link",
    "data_docs_url",
    "mlflow_model_version_link",
    "mlflow_model_version_url",
    "mlflow_run_link",
    "mlflow_run_url",
    "mlflow_ui_base",
    "mlflow_xcom",
]

XCOM_MLFLOW = "mlflow"
"""XCom key of the MLflow payload a training task pushes (see :func:`mlflow_xcom`)."""

XCOM_DATA_DOCS = "data_docs"
"""XCom key of the Data Docs URL or path a validation task pushes."""

MLFLOW_UI_ENV = "PROPENSITY_MLFLOW_UI_URL"
"""Environment variable with the browser-facing MLflow UI URL, used when a payload has none."""

_WEB_SCHEMES = ("http", "https")


def _is_web_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in _WEB_SCHEMES and bool(parts.netloc)


def mlflow_ui_base(tracking_uri: str | None, fallback: str | None = None) -> str | None:
    """The MLflow UI base URL (no trailing slash) for links, or None if there is none.

    ``tracking_uri`` is used when it is an ``http(s)`` URL (a tracking server also serves
    the UI); a database or file URI is no place a browser can go, so ``fallback`` (the
    deployment's UI URL) is used instead, if it is an ``http(s)`` URL.
    """
    for candidate in (tracking_uri, fallback):
        if candidate and _is_web_url(candidate.strip()):
            return candidate.strip().rstrip("/")
    return None


def mlflow_experiment_url(ui: str, experiment_id: str | int) -> str:
    """``<ui>/#/experiments/<id>?workflowType=machine_learning``: the experiment on its training runs.

    MLflow 3.17's UI otherwise opens an experiment on its GenAI overview (a browser-local
    sidebar toggle decides, GenAI by default); the query overrides it.
    """
    return f"{ui.rstrip('/')}/#/experiments/{quote(str(experiment_id), safe='')}?workflowType=machine_learning"


def mlflow_run_url(ui: str, experiment_id: str | int, run_id: str) -> str:
    """``<ui>/#/experiments/<experiment_id>/runs/<run_id>``: the run page of the MLflow UI."""
    return f"{ui.rstrip('/')}/#/experiments/{quote(str(experiment_id), safe='')}/runs/{quote(run_id, safe='')}"


def mlflow_model_version_url(ui: str, name: str, version: str | int) -> str:
    """``<ui>/#/models/<name>/versions/<version>``: a registered model version in the MLflow UI."""
    return f"{ui.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{quote(str(version), safe='')}"


def data_docs_url(location: str | None) -> str | None:
    """A browser URL for a Data Docs page: web and ``file://`` URLs as they are, absolute paths as ``file://``.

    Returns None for anything else (empty, relative paths, other schemes), since a link
    that cannot open is worse than a disabled one.
    """
    if not location or not location.strip():
        return None
    location = location.strip()
    if _is_web_url(location):
        return location
    if location.startswith("file://"):
        return location
    path = PurePosixPath(location)
    if path.is_absolute():
        return path.as_uri()
    return None


def mlflow_xcom(
    tracking_uri: str,
    experiment_id: str | int,
    run_id: str,
    model_name: str | None = None,
    model_version: str | int | None = None,
    ui_url: str | None = None,
) -> dict[str, str]:
    """The :data:`XCOM_MLFLOW` payload a task pushes after logging (and maybe registering) a model."""
    payload = {"tracking_uri": tracking_uri, "experiment_id": str(experiment_id), "run_id": run_id}
    if model_name is not None and model_version is not None:
        payload.update(model_name=model_name, model_version=str(model_version))
    if ui_url:
        payload["ui_url"] = ui_url
    return payload


def _payload_ui(payload: Mapping[str, Any], fallback: str | None) -> str | None:
    if payload.get("ui_url") and _is_web_url(str(payload["ui_url"])):
        return str(payload["ui_url"]).rstrip("/")
    return mlflow_ui_base(payload.get("tracking_uri"), fallback)


def _fallback_ui(fallback: str | None) -> str | None:
    return fallback if fallback is not None else os.environ.get(MLFLOW_UI_ENV)


def mlflow_run_link(payload: Any, fallback_ui: str | None = None) -> str:
    """The run URL for an :data:`XCOM_MLFLOW` payload, or ``""`` if it lacks a run or a UI.

    ``fallback_ui`` defaults to ``$PROPENSITY_MLFLOW_UI_URL``.
    """
    if not isinstance(payload, Mapping) or not payload.get("run_id") or payload.get("experiment_id") in (None, ""):
        return ""
    ui = _payload_ui(payload, _fallback_ui(fallback_ui))
    return mlflow_run_url(ui, payload["experiment_id"], str(payload["run_id"])) if ui else ""


def mlflow_model_version_link(payload: Any, fallback_ui: str | None = None) -> str:
    """The model version URL for an :data:`XCOM_MLFLOW` payload, or ``""`` if it registered nothing."""
    if not isinstance(payload, Mapping) or not payload.get("model_name") or payload.get("model_version") in (None, ""):
        return ""
    ui = _payload_ui(payload, _fallback_ui(fallback_ui))
    return mlflow_model_version_url(ui, str(payload["model_name"]), payload["model_version"]) if ui else ""


def data_docs_link(value: Any) -> str:
    """The Data Docs URL for an :data:`XCOM_DATA_DOCS` value (string or ``{"url": ...}``), or ``""``."""
    if isinstance(value, Mapping):
        value = value.get("url")
    return (data_docs_url(value) or "") if isinstance(value, str) else ""
