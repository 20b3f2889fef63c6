"""Customer buckets and shards: how the lake, feature building and scoring split customers.

Every customer falls in one of :data:`BUCKETS` buckets, a stable function of the customer
id alone: FNV-1a over the id's UTF-8 bytes, finished with MurmurHash3's 64-bit mixer, in
unsigned 64-bit arithmetic. It is computed over a whole column at once in NumPy (no Python
loop per id), and it is the same on every worker, process and platform (unlike Python's
salted ``hash`` or Polars' ``hash``, which may change between releases).

The compacted clean history (:mod:`propensity.history`) stores the customer-keyed tables
in bucket order, one file per contiguous range of buckets. A shard is a contiguous range of
buckets too (shard ``i`` of ``S`` holds buckets ``[i*B/S, (i+1)*B/S)``), so a shard reads
only the files of its buckets, and the union of the shards' outputs equals an unsharded run.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from propensity.zones import BUCKETS

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX = (np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53))
_SHIFT = np.uint64(33)


def customer_hash(ids: pl.Series) -> np.ndarray:
    """64-bit hash of each id's UTF-8 bytes (FNV-1a, then the fmix64 finaliser); nulls hash as ``""``.

    Vectorised over byte positions: one NumPy pass per character of the longest id, so a
    million ten-character ids cost ten array operations, not a million hashlib calls."""
    arr = pa.array(ids.cast(pl.String).fill_null("").to_arrow()).cast(pa.large_string())
    n = len(arr)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n:
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
        data = arr.buffers()[2]
        raw = np.frombuffer(data, dtype=np.uint8) if data is not None and data.size else np.zeros(1, np.uint8)
        starts, lengths = offsets[:-1], np.diff(offsets)
        last = len(raw) - 1
        width = int(lengths.max(initial=0))
        with np.errstate(over="ignore"):
            if width and (lengths == width).all():  # the usual case (C0000001): a byte matrix, no masks
                matrix = raw[int(starts[0]) : int(starts[0]) + n * width].reshape(n, width)
                for j in range(width):
                    h ^= matrix[:, j]
                    h *= _FNV_PRIME
            else:
                for j in range(width):
                    byte = raw[np.minimum(starts + j, last)]
                    h = np.where(lengths > j, (h ^ byte) * _FNV_PRIME, h)
            h ^= h >> _SHIFT
            h *= _MIX[0]
            h ^= h >> _SHIFT
            h *= _MIX[1]
            h ^= h >> _SHIFT
    return h


def bucket_of(ids: pl.Series) -> pl.Series:
    """The bucket in ``[0, BUCKETS)`` of each customer id (UInt8; null for a null id, which
    belongs to no customer). Each distinct id is hashed once: an events column repeats each
    customer hundreds of times."""
    ids = ids.cast(pl.String)
    distinct = ids.unique().drop_nulls()
    buckets = pl.Series("bucket", (customer_hash(distinct) % np.uint64(BUCKETS)).astype(np.uint8), dtype=pl.UInt8)
    lookup = pl.DataFrame({"id": distinct, "bucket": buckets})
    return ids.to_frame("id").join(lookup, on="id", how="left", maintain_order="left")["bucket"]


def check_shards(shards: int) -> None:
    if not 1 <= shards <= BUCKETS:
        raise ValueError(f"shards must be between 1 and {BUCKETS} (the customer buckets), got {shards}")


def shard_buckets(shard: int, shards: int) -> range:
    """The contiguous buckets shard ``shard`` of ``shards`` holds."""
    check_shards(shards)
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is out of range for {shards} shard(s)")
    return range(shard * BUCKETS // shards, (shard + 1) * BUCKETS // shards)


def shard_of(ids: pl.Series, shards: int) -> pl.Series:
    """Shard in ``[0, shards)`` per customer id: the shard whose bucket range holds its bucket."""
    check_shards(shards)
    if shards == 1:
        return pl.Series(np.zeros(len(ids), dtype=np.int64))
    owner = np.empty(BUCKETS, dtype=np.int64)
    for i in range(shards):
        b = shard_buckets(i, shards)
        owner[b.start : b.stop] = i
    return pl.Series(owner[bucket_of(ids).to_numpy()])


def in_shard(ids: pl.Series, shard: int, shards: int) -> pl.Series:
    """Boolean mask of the ids that fall in ``shard``."""
    return in_buckets(ids, shard_buckets(shard, shards))


def in_buckets(ids: pl.Series, buckets: range) -> pl.Series:
    """Boolean mask of the ids whose bucket is in ``buckets`` (null for a null id)."""
    b = bucket_of(ids)
    return (b >= buckets.start) & (b < buckets.stop)
