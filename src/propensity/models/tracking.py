"""MLflow wiring: tracking URI, experiment with the configured artifact root, code version, logging.

Two things MLflow does by default that do not suit a training pipeline run by Airflow:

* it marks nothing about the kind of experiment, and MLflow 3 offers an unmarked one as
  a GenAI experiment; :func:`configure` tags ours as classic model development
  (:data:`EXPERIMENT_KIND_TAG` = :data:`CLASSIC_ML`, the value MLflow's own experiment-kind
  selector writes). The 3.17 UI still picks the page from its GenAI / model-training
  sidebar toggle (browser-local, GenAI by default) unless the URL says
  :data:`ML_PAGE_QUERY`, so links into the experiment should carry that query;
* on import it gives its loggers a handler writing straight to ``sys.stderr``, and it
  ``print``s registry messages ("Created version '2' ...") and progress bars there too,
  and its Python warnings (schema hints, dataset source guesses) go to stderr as well.
  Airflow records a task's stderr at ERROR level, so ordinary INFO lines showed up as
  errors. :func:`route_mlflow_logging` sends all of it through :mod:`logging` instead.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from functools import cache
from pathlib import Path
from typing import Any, TextIO

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils import logging_utils

from propensity import __version__
from propensity.config import Settings

#: Experiment tag MLflow 3 reads to tell GenAI experiments from model-training ones.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: Its value for classic ML ("custom_model_development"; the GenAI one is "genai_development").
CLASSIC_ML = "custom_model_development"

#: Query string that opens an experiment on its training runs in the MLflow 3.17 UI,
#: e.g. ``<ui>/#/experiments/<id>?workflowType=machine_learning``.
ML_PAGE_QUERY = "workflowType=machine_learning"

#: Loggers MLflow gives a stderr handler on import (``mlflow.utils.logging_utils._configure_mlflow_loggers``).
MLFLOW_LOGGERS = ("mlflow", "sqlalchemy.engine", "alembic", "huey")
#: Environment switches for MLflow's direct terminal output.
QUIET_ENV = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
#: Warnings raised from files under this folder are MLflow's.
MLFLOW_DIR = str(Path(mlflow.__file__).resolve().parent)


class LoggingStream(logging_utils.MlflowLoggingStream):
    """MLflow's ``eprint`` stream, turned into INFO records of the ``mlflow`` logger.

    ``eprint`` writes informational messages (model registered, version created, logged
    model URL); line-buffered so one message is one record.
    """

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger
        self._pending = ""

    def write(self, text: str) -> int:
        if not self.enabled:
            return len(text)
        *lines, self._pending = (self._pending + text).split("\n")
        for line in lines:
            if line.strip():
                self.logger.info("%s", line.rstrip())
        return len(text)

    def flush(self) -> None:
        if self.enabled and self._pending.strip():
            self.logger.info("%s", self._pending.rstrip())
        self._pending = ""


class MlflowWarnings:
    """``warnings.showwarning`` hook: MLflow's warnings become WARNING records of
    ``mlflow.warnings``; every other warning goes to the hook it replaced, untouched."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous
        self.logger = logging.getLogger("mlflow.warnings")

    def __call__(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if file is None and is_mlflow_file(filename):
            self.logger.warning("%s: %s (%s:%d)", category.__name__, message, filename, lineno)
        else:
            self.previous(message, category, filename, lineno, file, line)


def is_mlflow_file(filename: str) -> bool:
    """True for a source file of the installed MLflow package."""
    try:
        return Path(filename).resolve().is_relative_to(MLFLOW_DIR)
    except (OSError, ValueError):
        return False


def is_mlflow_stderr_handler(handler: logging.Handler) -> bool:
    """True for the handler MLflow installs on import (a stream handler on its stderr stream)."""
    return isinstance(handler, logging.StreamHandler) and isinstance(
        getattr(handler, "stream", None), logging_utils.MlflowLoggingStream
    )


def route_mlflow_logging() -> None:
    """Make MLflow log through the standard :mod:`logging` hierarchy, at each record's own level.

    Removes the stderr handlers MLflow put on its loggers at import and lets their records
    propagate to whatever the host configured (Airflow's task log, the CLI's root handler);
    the loggers keep the levels MLflow gave them (``MLFLOW_LOGGING_LEVEL`` for ``mlflow``,
    WARNING for SQLAlchemy and Alembic, so no SQL is echoed). Redirects ``eprint`` to INFO
    records of ``mlflow``, MLflow's Python warnings to WARNING records of
    ``mlflow.warnings``, and turns off the artifact progress bars. Idempotent: safe to
    call from every entry point and from :func:`configure`; it works after ``import
    mlflow`` (it undoes the import-time setup), so it need not run first.
    """
    os.environ.update(QUIET_ENV)
    for name in MLFLOW_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if is_mlflow_stderr_handler(h)]:
            logger.removeHandler(handler)
        logger.propagate = True
    if not isinstance(logging_utils.MLFLOW_LOGGING_STREAM, LoggingStream):
        stream = LoggingStream(logging.getLogger("mlflow"))
        stream.enabled = logging_utils.MLFLOW_LOGGING_STREAM.enabled  # keep disable_logging() in force
        logging_utils.MLFLOW_LOGGING_STREAM = stream  # eprint looks the stream up on every call
    if not isinstance(warnings.showwarning, MlflowWarnings):
        warnings.showwarning = MlflowWarnings(warnings.showwarning)


def configure(settings: Settings) -> str:
    """Point MLflow at the configured tracking store; returns the experiment id.

    Against a local store (SQLite, files) the experiment's artifact root is
    ``settings.artifacts_uri``; a tracking server decides its own artifact root. The
    experiment is marked as classic ML, also when it existed before that mark.
    """
    route_mlflow_logging()
    uri = settings.tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return ensure_experiment(
        MlflowClient(uri, registry_uri=uri),
        settings.models.experiment,
        None if uri.startswith("http") else _as_uri(settings.artifacts_uri),
    )


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created if missing, tagged as classic ML either way.

    A concurrent creator (the CLI and an Airflow task) may win the race: then its
    experiment is used.
    """
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, artifact_location, tags={EXPERIMENT_KIND_TAG: CLASSIC_ML})
        except MlflowException:
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.tags.get(EXPERIMENT_KIND_TAG) != CLASSIC_ML:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML)
    return exp.experiment_id


def _as_uri(path_or_uri: str) -> str:
    if "://" in path_or_uri:
        return path_or_uri
    p = Path(path_or_uri).expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p.as_uri()


@cache
def code_version() -> str:
    """Package version plus git commit when run from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{__version__}+{sha}" if sha else __version__
