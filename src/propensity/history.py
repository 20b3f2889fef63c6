"""Compacted history of the clean zone: a table's many day partitions read as a few files.

Collection and the gate write one partition per table and day, so two years of a shop are
6,570 small clean partitions, and every process that needs the past (a snapshot, an
Airflow task, the consent overlay) paid a manifest read and a file open for each of them:
12 s of a 13 s ``features --snapshot`` on the demo shop, for 1 s of feature work.

``history/<table>/through=D/`` holds the rows of every clean partition of ``table`` up to
``D``, in partition order, each row tagged with the partition it came from, and its
manifest records which data files each partition had (``sources``). It is a cache, never a
source of truth, and readers hold it to the clean zone on every read:

* one listing of ``clean/<table>/`` (which a reader needs anyway to know the published days)
  gives, per partition, whether it has a manifest and which data files it holds;
* a partition is taken from the history only when it is still published with exactly the
  data files the history recorded (clean data files are content-addressed, so a partition
  re-validated with other rows has other file names, and one unpublished has no manifest);
* every other published partition is read from the clean zone itself, as before.

So a re-validated day, a deleted manifest or a day published after the compaction is read
from the clean zone, and the result is the rows a full read would give, in the same order.
The validate stage compacts a table once :data:`COMPACT_AFTER` of its published partitions
are outside the newest history (:func:`compact`); the two newest histories are kept, so a
reader that listed the older one while a new one was written still finds its files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl

from propensity.lake import MANIFEST, DataFile, Lake, partition_values, split_key
from propensity.zones import CLEAN, HISTORY

log = logging.getLogger(__name__)

#: published partitions outside the newest history before :func:`compact` writes a new one
COMPACT_AFTER = 30
#: histories kept per table: the newest, and the one a concurrent reader may still be reading
KEEP = 2
#: the column that tags each history row with its clean partition (``dt=2025-01-31``)
PARTITION = "__partition"


@dataclass(frozen=True)
class Listing:
    """What one listing of ``<zone>/<table>/`` shows: each published partition's data files."""

    published: dict[str, frozenset[str]]  #: ``dt=D`` -> data file names, for partitions with a manifest

    @classmethod
    def of(cls, lake: Lake, zone: str, table: str) -> Listing:
        prefix = f"{zone}/{table}/"
        files: dict[str, set[str]] = {}
        committed = set()
        for key in lake.store.list(prefix):
            split = split_key(prefix, key)
            if split is None:
                continue
            path, name = split
            if name == MANIFEST:
                committed.add(path)
            else:
                files.setdefault(path, set()).add(name)
        return cls({p: frozenset(files.get(p, ())) for p in sorted(committed)})

    def values(self, key: str = "dt") -> set[str]:
        """The partitions' values of ``key`` (``dt``: the published days)."""
        return {partition_values(p).get(key, "") for p in self.published} - {""}


@dataclass(frozen=True)
class History:
    parts: dict[str, str]  #: ``{"through": D}``
    sources: dict[str, list[str]]  #: clean partition -> its data file names when compacted
    columns: list[str]

    @classmethod
    def newest(cls, lake: Lake, table: str) -> History | None:
        """The newest history of ``table``, or None."""
        for parts in reversed(lake.partitions(HISTORY, table)):
            doc = lake.manifest(HISTORY, table, parts)
            if doc is not None and isinstance(doc.get("sources"), dict) and isinstance(doc.get("columns"), list):
                return cls(parts, doc["sources"], doc["columns"])
        return None

    def still_true(self, listing: Listing) -> set[str]:
        """The recorded partitions still published with exactly the recorded data files."""
        return {p for p, names in self.sources.items() if listing.published.get(p) == frozenset(names)}


def _decode(lake: Lake, f: DataFile, columns: list[str] | None) -> pl.DataFrame:
    return lake.read_file(f, lambda fh: pl.read_parquet(fh, columns=columns), len, (pl.exceptions.ComputeError,))


def _read_partitions(
    lake: Lake, zone: str, table: str, paths: Iterable[str], columns: list[str] | None, tag: bool
) -> list[pl.DataFrame]:
    """Each partition's verified files, a few at a time (manifests too: one GET each)."""

    def one(path: str) -> list[pl.DataFrame]:
        frames = [_decode(lake, f, columns) for f in lake.data_files(zone, table, partition_values(path))]
        return [df.with_columns(pl.lit(path).alias(PARTITION)) for df in frames] if tag else frames

    with ThreadPoolExecutor(lake.io_threads) as pool:
        return [df for frames in pool.map(one, paths) for df in frames]


def _gather(
    lake: Lake, zone: str, table: str, columns: list[str] | None, listing: Listing, hist: History | None, tagged: bool
) -> pl.DataFrame | None:
    """The published partitions of ``listing``: from ``hist`` where it is still true, the rest
    from ``zone``, in partition order; with ``tagged``, each row keeps its :data:`PARTITION`."""
    valid: set[str] = set()
    frames: list[pl.DataFrame] = []
    if hist is not None and (columns is None or set(columns) <= set(hist.columns)):  # else: a contract change
        valid = hist.still_true(listing)
        cols = None if columns is None else [*columns, PARTITION]
        for f in lake.data_files(HISTORY, table, hist.parts) if valid else []:
            df = _decode(lake, f, cols)
            frames.append(df if len(valid) == len(hist.sources) else df.filter(pl.col(PARTITION).is_in(list(valid))))
    rest = [p for p in listing.published if p not in valid]
    tag = tagged or bool(frames)  # history rows carry their partition: the clean ones must too
    frames += _read_partitions(lake, zone, table, rest, columns, tag)
    if not frames:
        return None
    out = pl.concat(frames, how="vertical", rechunk=False)
    if valid and rest and min(rest) < max(valid):
        # a re-published older day read from the clean zone: back into partition order
        # (one `k=v` level, so the paths sort as their values do)
        out = out.sort(PARTITION, maintain_order=True)
    return out.drop(PARTITION) if tag and not tagged else out


def read(
    lake: Lake, table: str, columns: list[str] | None = None, zone: str = CLEAN
) -> tuple[pl.DataFrame | None, Listing]:
    """Every published partition of ``table``, concatenated in partition order (None when
    there is none), and the listing it was read from. The clean zone reads through its
    history where the history is still true (module docstring); other zones read directly."""
    listing = Listing.of(lake, zone, table)
    hist = History.newest(lake, table) if zone == CLEAN else None
    return _gather(lake, zone, table, columns, listing, hist, tagged=False), listing


def compact(lake: Lake, table: str, after: int = COMPACT_AFTER) -> dict[str, str] | None:
    """Write a new history of ``table`` when ``after`` or more published partitions are outside
    the newest one; returns its partition (None when nothing was written). The new history is
    the old one's still-true rows plus the other partitions, so a compaction reads the days
    since the last one, not the whole past. Histories beyond the :data:`KEEP` newest are removed."""
    listing = Listing.of(lake, CLEAN, table)
    hist = History.newest(lake, table)
    fresh = len(listing.published) - (len(hist.still_true(listing)) if hist else 0)
    if not listing.published or fresh < after:
        return None
    data = _gather(lake, CLEAN, table, None, listing, hist, tagged=True)
    assert data is not None
    data = data.rechunk()
    through = {"through": max(listing.values())}
    recorded = {p: sorted(names) for p, names in listing.published.items()}
    doc = {"sources": recorded, "columns": [c for c in data.columns if c != PARTITION]}
    lake.write_partition(HISTORY, table, through, data.to_arrow(), manifest=doc)
    for old in lake.partitions(HISTORY, table)[:-KEEP]:
        lake.delete_partition(HISTORY, table, old)
    log.info("history of %s: %d partitions, %d rows, through %s", table, len(recorded), data.height, through["through"])
    return through
