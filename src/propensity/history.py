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
import tempfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from propensity.contracts import TABLES
from propensity.lake import MANIFEST, DataFile, Lake, partition_values, split_key
from propensity.shards import bucket_of
from propensity.zones import BUCKETS, CLEAN, HISTORY

log = logging.getLogger(__name__)

#: published partitions outside the newest history before :func:`compact` writes a new one
COMPACT_AFTER = 30
#: histories kept per table: the newest, and the one a concurrent reader may still be reading
KEEP = 2
#: the column that tags each history row with its clean partition (``dt=2025-01-31``)
PARTITION = "__partition"
#: the column that holds each history row's customer bucket (:mod:`propensity.shards`)
BUCKET = "__bucket"
#: rows of new partitions a compaction of a customer-keyed table reads at once
BATCH_ROWS = 1_000_000
#: rows per history file a compaction aims at: it splits a customer-keyed table into the
#: fewest power-of-two bucket ranges that keep files this small (at most one per bucket)
FILE_ROWS = 500_000


def bucket_key(table: str) -> str | None:
    """How a table's rows find their customer: ``customer_id``, their order (``order_id``),
    or None for a table shared by all customers (products, FX rates), which stays whole."""
    names = TABLES[table].names if table in TABLES else []
    return "customer_id" if "customer_id" in names else "order_id" if "order_id" in names else None


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
    #: clean partition -> the first and last value of each of its timestamp columns (ISO), so
    #: a reader of some buckets still knows where the whole shop's data begins and ends
    bounds: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def newest(cls, lake: Lake, table: str) -> History | None:
        """The newest history of ``table``, or None."""
        for parts in reversed(lake.partitions(HISTORY, table)):
            doc = lake.manifest(HISTORY, table, parts)
            if doc is not None and isinstance(doc.get("sources"), dict) and isinstance(doc.get("columns"), list):
                spans = doc.get("bounds")
                return cls(parts, doc["sources"], doc["columns"], spans if isinstance(spans, dict) else {})
        return None

    def still_true(self, listing: Listing) -> set[str]:
        """The recorded partitions still published with exactly the recorded data files."""
        return {p for p, names in self.sources.items() if listing.published.get(p) == frozenset(names)}


def _decode(lake: Lake, f: DataFile, columns: list[str] | None) -> pl.DataFrame:
    return lake.read_file(f, lambda fh: pl.read_parquet(fh, columns=columns), len, (pl.exceptions.ComputeError,))


def _read_partitions(
    lake: Lake,
    zone: str,
    table: str,
    paths: Iterable[str],
    columns: list[str] | None,
    tag: bool,
    listed: dict[str, list[DataFile]] | None = None,
) -> list[pl.DataFrame]:
    """Each partition's verified files, a few at a time (manifests too: one GET each, unless
    the caller ``listed`` them already)."""

    def one(path: str) -> list[pl.DataFrame]:
        files = listed[path] if listed is not None else lake.data_files(zone, table, partition_values(path))
        frames = [_decode(lake, f, columns) for f in files]
        return [df.with_columns(pl.lit(path).alias(PARTITION)) for df in frames] if tag else frames

    with ThreadPoolExecutor(lake.io_threads) as pool:
        return [df for frames in pool.map(one, paths) for df in frames]


def _wanted(f: DataFile, buckets: range | None) -> bool:
    """Whether a history file holds rows of ``buckets`` (all: None). A file of a table the
    history does not bucket has no range and holds every customer; rows with no customer
    (``buckets: null``) belong to no shard."""
    if buckets is None or "buckets" not in f.meta:
        return True
    span = f.meta["buckets"]
    return span is not None and span[0] < buckets.stop and buckets.start < span[1]


def _gather(
    lake: Lake,
    zone: str,
    table: str,
    columns: list[str] | None,
    listing: Listing,
    hist: History | None,
    tagged: bool,
    buckets: range | None = None,
) -> pl.DataFrame | None:
    """The published partitions of ``listing``: from ``hist`` where it is still true, the rest
    from ``zone``, in partition order (a bucketed history: per customer); with ``tagged``, each
    row keeps its :data:`PARTITION`; with ``buckets``, the history's rows are only those buckets'."""
    valid: set[str] = set()
    frames: list[pl.DataFrame] = []
    if hist is not None and (columns is None or set(columns) <= set(hist.columns)):  # else: a contract change
        valid = hist.still_true(listing)
        files = [f for f in lake.data_files(HISTORY, table, hist.parts) if _wanted(f, buckets)] if valid else []
        narrow = buckets is not None and any("buckets" in f.meta for f in files)
        cols = None if columns is None else [*columns, PARTITION, *([BUCKET] if narrow else [])]
        for f in files:
            df = _decode(lake, f, cols)
            keep = [pl.col(PARTITION).is_in(list(valid))] if len(valid) < len(hist.sources) else []
            if narrow and BUCKET in df.columns and not set(range(*f.meta["buckets"])) <= set(buckets):  # type: ignore[arg-type]
                keep.append(pl.col(BUCKET).is_between(buckets.start, buckets.stop - 1))  # type: ignore[union-attr]
            frames.append((df.filter(*keep) if keep else df).drop(BUCKET, strict=False))
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
    lake: Lake, table: str, columns: list[str] | None = None, zone: str = CLEAN, buckets: range | None = None
) -> tuple[pl.DataFrame | None, Listing]:
    """Every published partition of ``table``, concatenated in partition order (None when
    there is none), and the listing it was read from. The clean zone reads through its
    history where the history is still true (module docstring); other zones read directly.

    With ``buckets`` (a shard's, :func:`propensity.shards.shard_buckets`), the history's
    files of other buckets are not read at all; the partitions newer than the history are
    read whole, so the caller still narrows the rows to its customers."""
    listing = Listing.of(lake, zone, table)
    hist = History.newest(lake, table) if zone == CLEAN else None
    return _gather(lake, zone, table, columns, listing, hist, tagged=False, buckets=buckets), listing


def bounds(lake: Lake, table: str, listing: Listing) -> dict[str, tuple[str, str]]:
    """The first and last value of each timestamp column over the still-true partitions of
    the newest history of ``table`` (ISO strings): what a reader of some buckets does not
    see of the whole shop (where its data begins and ends)."""
    hist = History.newest(lake, table)
    out: dict[str, list[str]] = {}
    for p in hist.still_true(listing) if hist else ():
        _widen(out, hist.bounds.get(p, {}))  # type: ignore[union-attr]
    return {col: (lo, hi) for col, (lo, hi) in out.items()}


def _owners(lake: Lake, table: str) -> pl.DataFrame | None:
    """``order_id -> customer_id`` for a table whose rows find their customer through their
    order (None for the others): the published orders, the last version of each."""
    if bucket_key(table) != "order_id":
        return None
    orders, _ = read(lake, "orders", ["order_id", "customer_id"])
    if orders is None:
        orders = pl.DataFrame(schema={"order_id": pl.String, "customer_id": pl.String})
    return orders.unique("order_id", keep="last", maintain_order=True)


def _tag_buckets(df: pl.DataFrame, owners: pl.DataFrame | None) -> pl.DataFrame:
    """``df`` with each row's customer bucket in :data:`BUCKET` (null: no known customer)."""
    if owners is None:
        ids = df["customer_id"]
    else:
        ids = df.select("order_id").join(owners, on="order_id", how="left", maintain_order="left")["customer_id"]
    return df.with_columns(bucket_of(ids).alias(BUCKET))


def _ranges(rows: int, rows_per_file: int) -> int:
    """The fewest power-of-two bucket ranges (at most one per bucket) that keep files near ``rows_per_file``."""
    n = 1
    while n < BUCKETS and rows > n * rows_per_file:
        n *= 2
    return n


def _widen(into: dict[str, list[str]], more: dict[str, list[str]]) -> None:
    """Widen each column's ``[first, last]`` in ``into`` to cover ``more``'s (ISO strings
    of one time zone compare as the times do)."""
    for col, (lo, hi) in more.items():
        old = into.get(col)
        into[col] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]


def _compact_bucketed(
    lake: Lake,
    table: str,
    listing: Listing,
    hist: History | None,
    through: dict[str, str],
    doc: dict[str, Any],
    rows_per_file: int,
) -> None:
    """Write the new history of a customer-keyed table in bucket ranges, with memory bounded
    by :data:`BATCH_ROWS` and one range, not by the table.

    The old history's still-true rows (file by file) and the new partitions (a batch at a
    time) are split by bucket range into a local spill folder; then each range's pieces are
    joined, in partition order per customer, and written as one file before the next range
    is read."""
    owners = _owners(lake, table)
    valid = hist.still_true(listing) if hist is not None else set()
    old_files = lake.data_files(HISTORY, table, hist.parts) if hist is not None and valid else []
    rest = [p for p in listing.published if p not in valid]
    with ThreadPoolExecutor(lake.io_threads) as pool:  # the manifests, once: sizes now, files later
        listed = dict(
            zip(rest, pool.map(lambda p: lake.data_files(CLEAN, table, partition_values(p)), rest), strict=True)
        )
    rest_rows = {p: sum(f.rows for f in listed[p]) for p in rest}
    n = _ranges(sum(f.rows for f in old_files) + sum(rest_rows.values()), rows_per_file)
    width = BUCKETS // n
    resort = bool(valid and rest and min(rest) < max(valid))  # a re-published older day
    bounds: dict[str, dict[str, list[str]]] = {}
    with tempfile.TemporaryDirectory(prefix="propensity-compact-") as tmp:
        spill: dict[int, list[Path]] = {}
        empty: list[pl.DataFrame] = []

        def park(df: pl.DataFrame) -> None:
            if not empty:
                empty.append(df.head(0))
            df = df if BUCKET in df.columns else _tag_buckets(df, owners)
            for part, cols in _bounds(df.drop(BUCKET)).items():
                _widen(bounds.setdefault(part, {}), cols)
            ranged = df.with_columns((pl.col(BUCKET) // width).fill_null(-1).alias("__range"))
            for (r,), piece in ranged.partition_by("__range", maintain_order=True, as_dict=True).items():
                path = Path(tmp) / f"{sum(map(len, spill.values()))}.arrow"
                piece.drop("__range").write_ipc(path)
                spill.setdefault(int(r), []).append(path)  # type: ignore[call-overload]

        for f in old_files:
            df = _decode(lake, f, None)
            park(df if len(valid) == len(hist.sources) else df.filter(pl.col(PARTITION).is_in(list(valid))))  # type: ignore[union-attr]
        batch: list[str] = []
        for i, p in enumerate(rest):
            batch.append(p)
            if sum(rest_rows[b] for b in batch) >= BATCH_ROWS or i == len(rest) - 1:
                frames = _read_partitions(lake, CLEAN, table, batch, None, True, listed)
                if frames:
                    park(pl.concat(frames, how="vertical"))
                batch = []

        had_rows = bool(spill)

        def load(paths: list[Path]) -> pl.DataFrame:
            return pl.concat([pl.read_ipc(p.read_bytes()) for p in paths], how="vertical")

        def files() -> Iterable[tuple[Any, dict[str, Any]]]:
            for r in range(n):
                if r in spill:
                    df = load(spill.pop(r))
                    yield (
                        (df.sort(PARTITION, maintain_order=True) if resort else df).to_arrow(),
                        {"buckets": [r * width, (r + 1) * width]},
                    )
            # rows with no customer (anonymous events: a large share) in files of at most
            # rows_per_file, a spilled piece at a time; they have no customer order to keep
            for path in spill.pop(-1, []):
                df = load([path])
                for start in range(0, df.height, rows_per_file):
                    yield df.slice(start, rows_per_file).to_arrow(), {"buckets": None}
            if not had_rows and empty:  # only empty partitions: one empty file keeps the schema
                frame = empty[0] if BUCKET in empty[0].columns else _tag_buckets(empty[0], owners)
                yield frame.to_arrow(), {"buckets": [0, BUCKETS]}

        def manifest() -> dict[str, Any]:
            columns = [c for c in empty[0].columns if c not in (PARTITION, BUCKET)] if empty else []
            return {**doc, "columns": columns, "bounds": bounds}

        lake.write_files(HISTORY, table, through, files(), manifest=manifest)


def _bounds(data: pl.DataFrame) -> dict[str, dict[str, list[str]]]:
    """Per partition, the first and last value of each timestamp column (ISO)."""
    cols = [c for c, t in data.schema.items() if isinstance(t, (pl.Datetime, pl.Date)) and c != PARTITION]
    if not cols or not data.height:
        return {}
    agg = data.group_by(PARTITION).agg(
        *(pl.col(c).min().alias(f"{c}\0min") for c in cols), *(pl.col(c).max().alias(f"{c}\0max") for c in cols)
    )
    out: dict[str, dict[str, list[str]]] = {}
    for row in agg.iter_rows(named=True):
        lo_hi = {c: (row[f"{c}\0min"], row[f"{c}\0max"]) for c in cols}
        out[row[PARTITION]] = {c: [lo.isoformat(), hi.isoformat()] for c, (lo, hi) in lo_hi.items() if lo is not None}
    return out


def compact(
    lake: Lake, table: str, after: int = COMPACT_AFTER, rows_per_file: int = FILE_ROWS
) -> dict[str, str] | None:
    """Write a new history of ``table`` when ``after`` or more published partitions are outside
    the newest one; returns its partition (None when nothing was written). The new history is
    the old one's still-true rows plus the other partitions, so a compaction reads the days
    since the last one, not the whole past. A customer-keyed table is written in customer
    bucket order, one file per bucket range (:func:`_compact_bucketed`), so a shard reads only
    its own. Histories beyond the :data:`KEEP` newest are removed."""
    listing = Listing.of(lake, CLEAN, table)
    hist = History.newest(lake, table)
    fresh = len(listing.published) - (len(hist.still_true(listing)) if hist else 0)
    if not listing.published or fresh < after:
        return None
    through = {"through": max(listing.values())}
    recorded = {p: sorted(names) for p, names in listing.published.items()}
    if bucket_key(table) is not None:
        _compact_bucketed(lake, table, listing, hist, through, {"sources": recorded}, rows_per_file)
    else:
        data = _gather(lake, CLEAN, table, None, listing, hist, tagged=True)
        assert data is not None
        data = data.rechunk()
        doc = {"sources": recorded, "columns": [c for c in data.columns if c != PARTITION], "bounds": _bounds(data)}
        lake.write_partition(HISTORY, table, through, data.to_arrow(), manifest=doc)
    for old in lake.partitions(HISTORY, table)[:-KEEP]:
        lake.delete_partition(HISTORY, table, old)
    log.info("history of %s: %d partitions through %s", table, len(recorded), through["through"])
    return through
