"""The snapshot store: the one owner of where snapshots, labels and scores live in the lake.

Layout (``shared/DESIGN.md``, "Lake zones")::

    features/snapshot=T/                  one row per customer
    profiles/snapshot=T/                  profile tags
    labels/task=<task>/snapshot=T/        the task's population and label (null while incomplete)
    scores/task=<task>/dt=T/              calibrated scores, deciles, model version, reason codes
    features/_shards/snapshot=T/shard=i/  temporary per-shard frames of a sharded build
    profiles/_shards/snapshot=T/shard=i/  (the shard's per-customer profile inputs)
    labels/_shards/task=<t>/snapshot=T/shard=i/
    scores/_shards/task=<t>/dt=T/shard=i/

Every snapshot manifest records ``observed_until``, the last day of data the snapshot was
built on. Scoring and audiences use it for the freshness guard (:meth:`SnapshotStore.require_fresh`):
a snapshot more than ``scoring.max_staleness_days`` after that day describes a shop that
stopped reporting, and nothing is scored or exported from it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import Any

import polars as pl

from propensity.config import Settings
from propensity.errors import RequestError, StaleSnapshotError
from propensity.features.snapshot import Snapshot
from propensity.lake import Lake, partition_path
from propensity.zones import FEATURES, LABELS, PROFILES, SCORES, SHARDS


def _day(d: date | str) -> str:
    return d if isinstance(d, str) else d.isoformat()


@dataclass
class SnapshotStore:
    """Reads and writes snapshot outputs and scores; knows nothing about how they are computed."""

    lake: Lake

    @classmethod
    def open(cls, settings: Settings) -> SnapshotStore:
        return cls(Lake.open(settings.lake_uri, settings.s3_endpoint_url))

    # snapshots ---------------------------------------------------------------------------

    @staticmethod
    def snapshot_part(d: date | str) -> dict[str, str]:
        return {"snapshot": _day(d)}

    @staticmethod
    def labels_part(task: str, d: date | str) -> dict[str, str]:
        return {"task": task, "snapshot": _day(d)}

    def features_manifest(self, d: date | str) -> dict[str, Any] | None:
        return self.lake.manifest(FEATURES, "", self.snapshot_part(d))

    def labels_manifest(self, task: str, d: date | str) -> dict[str, Any] | None:
        return self.lake.manifest(LABELS, "", self.labels_part(task, d))

    def missing(self, d: date | str, tasks: Iterable[str], complete: bool = False) -> list[str]:
        """What of snapshot ``d`` is not published: ``features``, ``profiles``, ``labels.<task>``
        (with ``complete``: also labels published while their window was still open)."""
        out = []
        if self.features_manifest(d) is None:
            out.append(FEATURES)
        if self.lake.manifest(PROFILES, "", self.snapshot_part(d)) is None:
            out.append(PROFILES)
        for t in tasks:
            m = self.labels_manifest(t, d)
            if m is None or (complete and not m.get("complete")):
                out.append(f"{LABELS}.{t}")
        return out

    def write(self, snap: Snapshot) -> None:
        """Publish a (validated) snapshot: features, profiles, then each task's labels."""
        day = snap.snapshot.isoformat()
        meta = {
            "snapshot": day,
            "seconds": round(snap.seconds, 3),
            "observed_until": snap.observed_until.isoformat() if snap.observed_until else None,
        }
        part = self.snapshot_part(day)
        writes = [(FEATURES, part, snap.features, meta), (PROFILES, part, snap.profiles, meta)]
        writes += [
            (LABELS, self.labels_part(task, day), lab, {**meta, "complete": snap.complete[task]})
            for task, lab in snap.labels.items()
        ]
        # The partitions are independent (a reader needs all of them, see missing()), and
        # encoding, hashing and writing Parquet free the GIL: written at once, not in turn.
        with ThreadPoolExecutor(min(self.lake.io_threads, len(writes))) as pool:
            done = [pool.submit(self.lake.write_partition, z, "", p, df.to_arrow(), m) for z, p, df, m in writes]
        for f in done:
            f.result()

    def read(self, d: date | str, tasks: Iterable[str]) -> Snapshot | None:
        """The published snapshot ``d`` with the labels of ``tasks``; None when any part is missing."""
        tasks = list(tasks)
        if self.missing(d, tasks):
            return None
        part = self.snapshot_part(d)
        manifest = self.features_manifest(d) or {}
        feats = self.lake.read_partition(FEATURES, "", part)
        profiles = self.lake.read_partition(PROFILES, "", part)
        if feats is None or profiles is None:
            return None
        observed = manifest.get("observed_until")
        snap = Snapshot(
            date.fromisoformat(_day(d)),
            pl.from_arrow(feats),  # type: ignore[arg-type]
            pl.from_arrow(profiles),  # type: ignore[arg-type]
            observed_until=date.fromisoformat(observed) if observed else None,
        )
        for t in tasks:
            table = self.lake.read_partition(LABELS, "", self.labels_part(t, d))
            if table is None:
                return None
            snap.labels[t] = pl.from_arrow(table)  # type: ignore[assignment]
            snap.complete[t] = bool((self.labels_manifest(t, d) or {}).get("complete"))
        return snap

    def observed_until(self, d: date | str) -> date | None:
        """The last day of data the published snapshot ``d`` was built on (None: unknown or unpublished)."""
        value = (self.features_manifest(d) or {}).get("observed_until")
        return date.fromisoformat(value) if value else None

    def require_fresh(self, d: date | str, max_days: int, what: str) -> date:
        """Raise :class:`StaleSnapshotError` unless snapshot ``d`` is published and at most
        ``max_days`` after the last day it observed; returns that day."""
        day = date.fromisoformat(_day(d))
        if self.features_manifest(d) is None:
            raise RequestError(f"{what} {day}: snapshot {day} is not published: build it first (features)")
        last = self.observed_until(d)
        if last is None:
            raise StaleSnapshotError(
                f"{what} {day}: snapshot {day} does not record the last day it observed (built by an older "
                f"version): rebuild it with 'propensity features --snapshot {day}'"
            )
        return check_fresh(day, last, max_days, what)

    # shards of a sharded snapshot build ---------------------------------------------------

    @staticmethod
    def shard_part(d: date | str, shard: int) -> dict[str, str]:
        return {"snapshot": _day(d), "shard": str(int(shard))}

    def write_shard(self, snap: Snapshot, shard: int) -> None:
        """Park one customer shard's features, profile inputs and labels until the merge."""
        part = self.shard_part(snap.snapshot, shard)
        observed = {"observed_until": snap.observed_until.isoformat() if snap.observed_until else None}
        self.lake.write_partition(FEATURES, SHARDS, part, snap.features.to_arrow(), observed)
        self.lake.write_partition(PROFILES, SHARDS, part, snap.profiles.to_arrow())
        for t, lab in snap.labels.items():
            meta = {"complete": snap.complete[t]}
            self.lake.write_partition(LABELS, SHARDS, {"task": t, **part}, lab.to_arrow(), meta)

    def read_shard(self, d: date | str, shard: int, tasks: Iterable[str]) -> Snapshot:
        part = self.shard_part(d, shard)
        feats = self.lake.read_partition(FEATURES, SHARDS, part)
        if feats is None:
            raise RequestError(f"snapshot {_day(d)}: shard {shard} is not in the lake")
        inputs = self.lake.read_partition(PROFILES, SHARDS, part)
        if inputs is None:
            raise RequestError(f"snapshot {_day(d)}: the profile inputs of shard {shard} are not in the lake")
        observed = (self.lake.manifest(FEATURES, SHARDS, part) or {}).get("observed_until")
        snap = Snapshot(
            date.fromisoformat(_day(d)),
            pl.from_arrow(feats),  # type: ignore[arg-type]
            pl.from_arrow(inputs),  # type: ignore[arg-type]
            observed_until=date.fromisoformat(observed) if observed else None,
        )
        for t in tasks:
            lp = {"task": t, **part}
            table = self.lake.read_partition(LABELS, SHARDS, lp)
            if table is None:
                raise RequestError(f"snapshot {_day(d)}: labels of {t} for shard {shard} are not in the lake")
            snap.labels[t] = pl.from_arrow(table)  # type: ignore[assignment]
            snap.complete[t] = bool((self.lake.manifest(LABELS, SHARDS, lp) or {}).get("complete"))
        return snap

    def delete_shard(self, d: date | str, shard: int, tasks: Iterable[str]) -> None:
        part = self.shard_part(d, shard)
        self.lake.delete_partition(FEATURES, SHARDS, part)
        self.lake.delete_partition(PROFILES, SHARDS, part)
        for t in tasks:
            self.lake.delete_partition(LABELS, SHARDS, {"task": t, **part})

    # scores ---------------------------------------------------------------------------------

    @staticmethod
    def scores_part(task: str, d: date | str) -> dict[str, str]:
        return {"task": task, "dt": _day(d)}

    @staticmethod
    def score_shard_part(task: str, d: date | str, shard: int) -> dict[str, str]:
        return {"task": task, "dt": _day(d), "shard": str(int(shard))}

    def scores_key(self, task: str, d: date | str) -> str:
        return partition_path(SCORES, "", self.scores_part(task, d))

    def write_scores(self, task: str, d: date | str, df: pl.DataFrame, meta: Mapping[str, Any]) -> dict[str, Any]:
        return self.lake.write_partition(SCORES, "", self.scores_part(task, d), df.to_arrow(), meta)

    def read_scores(self, task: str, d: date | str, columns: list[str] | None = None) -> pl.DataFrame | None:
        table = self.lake.read_partition(SCORES, "", self.scores_part(task, d), columns=columns)
        return pl.from_arrow(table) if table is not None else None  # type: ignore[return-value]

    def write_score_shard(self, task: str, d: date | str, shard: int, df: pl.DataFrame, meta: Mapping[str, Any]) -> str:
        part = self.score_shard_part(task, d, shard)
        self.lake.write_partition(SCORES, SHARDS, part, df.to_arrow(), meta)
        return partition_path(SCORES, SHARDS, part)

    def read_score_shard(self, task: str, d: date | str, shard: int) -> pl.DataFrame:
        table = self.lake.read_partition(SCORES, SHARDS, self.score_shard_part(task, d, shard))
        if table is None:
            raise RequestError(f"scores.{task}.{_day(d)}: shard {shard} is not in the lake")
        return pl.from_arrow(table)  # type: ignore[return-value]

    def delete_score_shard(self, task: str, d: date | str, shard: int) -> None:
        self.lake.delete_partition(SCORES, SHARDS, self.score_shard_part(task, d, shard))


def check_fresh(day: date, last: date, max_days: int, what: str) -> date:
    """Raise :class:`StaleSnapshotError` when snapshot ``day`` is more than ``max_days`` after ``last``,
    the last day of data it observed (or would observe); returns ``last``."""
    lag = (day - last).days
    if lag > max_days:
        raise StaleSnapshotError(
            f"{what} {day}: snapshot {day} is {lag} days after the last observed day {last} "
            f"(scoring.max_staleness_days is {max_days}): nothing is scored or exported from stale data"
        )
    return last
