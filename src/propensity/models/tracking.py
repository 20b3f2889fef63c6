"""MLflow wiring: tracking URI, experiment with the configured artifact root, code version."""

from __future__ import annotations

import os
import subprocess
from functools import cache
from pathlib import Path

import mlflow

from propensity import __version__
from propensity.config import Settings


def configure(settings: Settings) -> str:
    """Point MLflow at the configured tracking store; returns the experiment id.

    Against a local store (SQLite, files) the experiment's artifact root is
    ``settings.artifacts_uri``; a tracking server decides its own artifact root.
    """
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    uri = settings.tracking_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = settings.models.experiment
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None if uri.startswith("http") else _as_uri(settings.artifacts_uri)
    return mlflow.create_experiment(name, artifact_location=location)


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
