"""Customer hash shards: how feature building and scoring split work across Airflow workers.

A shard is a stable function of the customer id alone (BLAKE2b, not Python's salted
``hash``), so every worker, process and platform agrees on it, and the union of the
shards' outputs equals an unsharded run.
"""

from __future__ import annotations

import hashlib

import numpy as np
import polars as pl


def shard_of(ids: pl.Series, shards: int) -> pl.Series:
    """Shard in ``[0, shards)`` per customer id."""
    if shards < 1:
        raise ValueError(f"shards must be at least 1, got {shards}")
    if shards == 1:
        return pl.Series(np.zeros(len(ids), dtype=np.int64))
    return pl.Series(
        [int.from_bytes(hashlib.blake2b(str(v).encode(), digest_size=8).digest(), "big") % shards for v in ids]
    )


def in_shard(ids: pl.Series, shard: int, shards: int) -> pl.Series:
    """Boolean mask of the ids that fall in ``shard``."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is out of range for {shards} shard(s)")
    return shard_of(ids, shards) == shard
