"""Customer buckets and shards: stable across processes and releases, and a partition of the customers."""

from __future__ import annotations

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from propensity.shards import bucket_of, customer_hash, in_shard, shard_buckets, shard_of
from propensity.zones import BUCKETS

MASK = 2**64 - 1


def reference_hash(text: str) -> int:
    """FNV-1a 64 then fmix64, one byte at a time in Python integers: the definition."""
    h = 0xCBF29CE484222325
    for byte in text.encode("utf-8"):
        h = ((h ^ byte) * 0x100000001B3) & MASK
    for mult in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h ^= h >> 33
        h = (h * mult) & MASK
    return h ^ (h >> 33)


def test_buckets_are_pinned() -> None:
    """A changed hash would move every customer to another bucket, and a history written
    before the change would be read by the wrong shards: these values must never change."""
    assert bucket_of(pl.Series(["C0000001", "C0000002", "C0000003", "anna@example.com"])).to_list() == [50, 55, 34, 36]


@given(st.lists(st.one_of(st.none(), st.text(max_size=30)), max_size=40))
def test_the_vectorised_hash_is_the_definition(ids: list[str | None]) -> None:
    """Equal-length ids take a matrix path, mixed lengths a masked one: both are the definition."""
    assert customer_hash(pl.Series(ids, dtype=pl.String)).tolist() == [reference_hash(i or "") for i in ids]


@given(st.integers(1, BUCKETS))
def test_shards_are_contiguous_bucket_ranges_that_partition_the_customers(shards: int) -> None:
    ids = pl.Series([f"C{k:07d}" for k in range(2_000)])
    ranges = [shard_buckets(i, shards) for i in range(shards)]
    assert [b for r in ranges for b in r] == list(range(BUCKETS))
    owner = shard_of(ids, shards)
    for i in range(shards):
        assert (in_shard(ids, i, shards) == (owner == i)).all()
