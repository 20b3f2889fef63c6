"""Task arguments and the one error adapter every DAG task goes through.

* :func:`default_task_args` / :func:`io_task_args`: owner, retries with exponential backoff
  for tasks that touch sources, the lake or MLflow, finite execution timeouts.
* :func:`fail_fast`: a :class:`~propensity.errors.FinalError` (a verdict on the data or the
  request) becomes ``AirflowFailException``, so the task fails at once instead of retrying
  what cannot change. Every other exception (an outage, a library bug, a plain
  ``ValueError``) is left alone: Airflow retries it and shows its traceback.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from propensity.errors import FinalError

F = TypeVar("F", bound=Callable[..., Any])

#: Pool of the CPU- and memory-hungry tasks (snapshots, scoring, training); ``make up`` and the
#: compose init create it. ``dag.test()`` runs tasks without consulting pools.
HEAVY_POOL = "propensity_heavy"
DEFAULT_EXECUTION_TIMEOUT = timedelta(hours=2)
SNAPSHOT_EXECUTION_TIMEOUT = timedelta(hours=4)
TRAIN_EXECUTION_TIMEOUT = timedelta(hours=4)
SCORE_EXECUTION_TIMEOUT = timedelta(hours=1)
#: I/O retries: 1, 2, 4 minutes (capped at 15).
IO_RETRIES = 3
IO_RETRY_DELAY = timedelta(minutes=1)
IO_RETRY_BACKOFF = 2.0
IO_MAX_RETRY_DELAY = timedelta(minutes=15)
#: The XCom keys the link plugin reads (see :mod:`propensity.links`).
MLFLOW_XCOM_KEY = "mlflow"
DATA_DOCS_XCOM_KEY = "data_docs"


def default_task_args(**overrides: Any) -> dict[str, Any]:
    """``default_args`` for every DAG: an owner, no retries, a finite execution timeout."""
    return {"owner": "propensity", "retries": 0, "execution_timeout": DEFAULT_EXECUTION_TIMEOUT, **overrides}


def io_task_args(**overrides: Any) -> dict[str, Any]:
    """Arguments of tasks doing I/O: retries with exponential backoff.

    Airflow 3 takes ``retry_exponential_backoff`` as a float multiplier (``True`` would mean
    1.0, a constant delay), hence ``2.0``.
    """
    return {
        "retries": IO_RETRIES,
        "retry_delay": IO_RETRY_DELAY,
        "retry_exponential_backoff": IO_RETRY_BACKOFF,
        "max_retry_delay": IO_MAX_RETRY_DELAY,
        "execution_timeout": DEFAULT_EXECUTION_TIMEOUT,
        **overrides,
    }


def fail_fast(fn: F) -> F:
    """Wrap a task function so that final errors fail the task without retries (see the module doc).

    ``functools.wraps`` keeps the signature visible (``inspect.signature`` follows
    ``__wrapped__``), so TaskFlow still injects the context arguments the function names.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FinalError as exc:
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc

    return wrapper  # type: ignore[return-value]


def log_lines(logger: logging.Logger, lines: list[str], level: int = logging.INFO) -> None:
    for line in lines:
        logger.log(level, "%s", line)
