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

A process killed in the middle of training (SIGKILL, OOM, a lost worker) cannot end its
runs: they stay RUNNING forever, and a version it registered is never gated. Every run
records the process that runs it (:func:`process_tags`); :func:`settle_abandoned_runs`,
called when training starts, marks FAILED the RUNNING runs whose process is gone (or, for
another host's, that have run longer than :data:`ABANDONED_AFTER`) and tags the versions
they registered but never gated as ``abandoned``, so ``promote`` refuses them.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import warnings
from collections.abc import Callable, Mapping
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, TextIO

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils import logging_utils

from propensity import __version__
from propensity.config import Settings
from propensity.storage import pid_alive

#: Experiment tag MLflow 3 reads to tell GenAI experiments from model-training ones.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: Its value for classic ML ("custom_model_development"; the GenAI one is "genai_development").
CLASSIC_ML = "custom_model_development"

#: Query string that opens an experiment on its training runs in the MLflow 3.17 UI,
#: e.g. ``<ui>/#/experiments/<id>?workflowType=machine_learning``.
ML_PAGE_QUERY = "workflowType=machine_learning"

#: Run tags naming the process that runs it: pid, host, and the pid's start time (tells a
#: recycled pid from the original process).
PID_TAG, HOST_TAG, PROCESS_START_TAG = "propensity.pid", "propensity.host", "propensity.process_start"
#: Run tag on a run marked FAILED because its process died: why, and who noticed.
ABANDONED_TAG = "propensity.abandoned"
#: A RUNNING run of another host (or without process tags) older than this is abandoned: no
#: training run lasts a day.
ABANDONED_AFTER = timedelta(hours=24)

log = logging.getLogger(__name__)

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


# abandoned runs ------------------------------------------------------------------------


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from ``/proc``); None when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may contain spaces and parentheses
    return fields[19] if len(fields) > 19 else None


def process_tags() -> dict[str, str]:
    """Tags naming this process, set on every training run."""
    pid = os.getpid()
    tags = {PID_TAG: str(pid), HOST_TAG: socket.gethostname()}
    started = process_start(pid)
    if started is not None:
        tags[PROCESS_START_TAG] = started
    return tags


def abandonment(
    tags: Mapping[str, str],
    age: timedelta,
    host: str,
    alive: Callable[[int], bool] = pid_alive,
    started: Callable[[int], str | None] = process_start,
) -> str | None:
    """Why a RUNNING run with ``tags``, started ``age`` ago, is abandoned; None while it may be live.

    On this ``host`` its process is asked directly: gone, or the pid now belongs to another
    process. Elsewhere (or for a run without process tags) only its age can tell.
    """
    pid_text, run_host = tags.get(PID_TAG, ""), tags.get(HOST_TAG)
    if run_host == host and pid_text.isdigit():
        pid = int(pid_text)
        if not alive(pid):
            return f"its process {pid} on {host} is gone: it was killed or crashed before ending the run"
        recorded = tags.get(PROCESS_START_TAG)
        if recorded is not None and started(pid) not in (None, recorded):
            return f"its process {pid} on {host} is gone (the pid now belongs to another process)"
        return None
    if age > ABANDONED_AFTER:
        owner = f"process {pid_text} on {run_host}" if run_host else "a process that left no pid"
        return f"RUNNING for {age.total_seconds() / 3600:.0f} h, longer than any training ({owner})"
    return None


def settle_abandoned_runs(client: MlflowClient, experiment_id: str, now: float | None = None) -> list[str]:
    """Mark FAILED the RUNNING runs of ``experiment_id`` whose process is gone; returns their ids.

    Each gets :data:`ABANDONED_TAG` saying why; a model version it registered but never gated
    gets the gate decision ``abandoned``, so it cannot be promoted without ``--force``.
    """
    from propensity.models.registry import ABANDONED

    now_ms = (time.time() if now is None else now) * 1000
    host = socket.gethostname()
    settled = []
    for run in client.search_runs([experiment_id], "attributes.status = 'RUNNING'", max_results=1000):
        age = timedelta(milliseconds=max(now_ms - (run.info.start_time or now_ms), 0))
        reason = abandonment(run.data.tags, age, host)
        if reason is None:
            continue
        run_id = run.info.run_id
        note = f"{reason}; marked FAILED by process {os.getpid()} on {host}"
        client.set_tag(run_id, ABANDONED_TAG, note)
        client.set_terminated(run_id, "FAILED")
        log.warning("training run %s (%s) was abandoned: %s", run_id, run.info.run_name, note)
        for version in client.search_model_versions(f"run_id = '{run_id}'"):
            if "gate.decision" in version.tags:
                continue
            client.set_model_version_tag(version.name, version.version, "gate.decision", ABANDONED)
            client.set_model_version_tag(
                version.name, version.version, "gate.reasons", f"training run {run_id} died before its gate: {reason}"
            )
            log.warning(
                "%s v%s was registered by that run and never gated: tagged abandoned", version.name, version.version
            )
        settled.append(run_id)
    return settled


def pip_requirements(*packages: str) -> list[str]:
    """Pinned requirements of a logged pyfunc: mlflow, numpy, pandas and ``packages``, at the
    versions it was trained with. Left to itself, MLflow infers them by loading the model in a
    subprocess, which took seconds per model and warned that it could not resolve pip."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in ("mlflow", "numpy", "pandas", *packages)]
