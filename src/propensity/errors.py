"""Error kinds, defined once.

Every error that is a *verdict* (on the data, the configuration or a request) rather than
a bug or an outage subclasses :class:`FinalError`. The two front doors treat them alike:
the command line prints one line and exits 2 (1 for a failed data-quality gate), and the
Airflow adapter (:func:`propensity.airflow.fail_fast`) turns them into
``AirflowFailException``, so the task fails at once instead of retrying something that
cannot change. Anything else (a ``ValueError`` from a library bug, an S3 timeout) is left
alone: Airflow retries it and shows its traceback, so a bug is never mistaken for a
verdict.

``FinalError`` subclasses ``ValueError`` so that callers (and tests) that catch
``ValueError`` for bad input keep working.
"""

from __future__ import annotations


class FinalError(ValueError):
    """A verdict: retrying the same request on the same data cannot succeed."""


class RequestError(FinalError):
    """A request the configuration or the data cannot satisfy: an unknown task or audience,
    an empty clean zone, too little history for a training plan, no champion, a run without a
    partition."""


class StaleSnapshotError(FinalError):
    """A snapshot is more than ``scoring.max_staleness_days`` after the last day it observed:
    scoring or exporting it would act on data that no longer describes the shop."""


class DataQualityError(FinalError):
    """Data that breaks a rule: a critical gate failure, a derived frame failing its checks."""


class LakeIntegrityError(DataQualityError):
    """What is stored does not match what its manifest committed (row count, size, digest, or an
    unreadable manifest or data file): reading on would act on data nobody wrote."""


class StoreError(OSError):
    """An object-store call that still failed after its retries: the store is down or unreachable,
    or it refused the request (a missing bucket, denied access). Not a verdict: Airflow retries
    the task, and the command line prints this one line instead of a traceback."""
