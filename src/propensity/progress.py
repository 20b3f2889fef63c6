"""Progress users can see: a bar with counts and an ETA on a terminal, one log line per step elsewhere.

Long stages (collect over many days, a plan of 86 snapshots, training several tasks)
wrap their loop in :func:`track`. On an interactive terminal that draws a ``rich``
progress bar on stderr; when output is a file or a pipe, and inside Airflow tasks (whose
log is a file read later), it logs one line per step instead, so logs stay greppable
and free of control characters. ``rich`` is imported only when a bar is drawn.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sized
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("propensity.progress")


def interactive() -> bool:
    """A bar only for a person watching a terminal: not in Airflow, not when stderr is redirected."""
    if os.environ.get("AIRFLOW_CTX_DAG_ID") or os.environ.get("PROPENSITY_PROGRESS", "").lower() in ("0", "off"):
        return False
    return sys.stderr.isatty()


def track(items: Iterable[T], stage: str, label: Callable[[T], str] = str, total: int | None = None) -> Iterator[T]:
    """Yield ``items`` while showing ``stage`` progress (counts, elapsed, ETA). Give ``total`` for
    an iterator that must not be drained first (results completing in a thread pool)."""
    seq = items if total is not None or isinstance(items, Sized) else list(items)
    total = len(seq) if total is None else total  # type: ignore[arg-type]
    if interactive() and total > 1:
        yield from _bar(seq, total, stage, label)
        return
    t0 = time.perf_counter()
    for i, item in enumerate(seq, 1):  # type: ignore[arg-type]
        yield item
        elapsed = time.perf_counter() - t0
        eta = elapsed / i * (total - i)
        log.info("%s %d/%d %s (%.1f s, ETA %.0f s)", stage, i, total, label(item), elapsed, eta)


def _bar(seq: Iterable[T], total: int, stage: str, label: Callable[[T], str]) -> Iterator[T]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[item]}"),
    )
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(stage, total=total, item="")
        for item in seq:
            bar.update(task, item=label(item))
            yield item
            bar.advance(task)
