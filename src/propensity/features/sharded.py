"""Sharded snapshot building: customer hash shards built apart, merged into one snapshot.

With ``features.shards = N > 1`` each of the N shards builds its customers' features and
labels and parks them in the lake (:meth:`SnapshotStore.write_shard`); :func:`merge_shards`
joins them, computes the profile tags over the union (they rank customers against each
other), validates and publishes exactly what an unsharded build publishes, then removes the
parked shards. So shards can run on different workers, and the result does not depend on N.
"""

from __future__ import annotations

from datetime import date

from propensity.errors import RequestError
from propensity.features.snapshot import Snapshot, SnapshotBuilder


def check_shard(shard: int, shards: int) -> None:
    if not 0 <= shard < shards:
        raise RequestError(f"shard {shard} is out of range: there are {shards} shard(s)")


def build_shard(builder: SnapshotBuilder, d: date, tasks: list[str], shard: int, shards: int) -> Snapshot:
    """Build shard ``shard`` of ``shards`` at ``d`` and park it in the lake; returns it (no profiles)."""
    check_shard(shard, shards)
    snap = builder.build(d, tasks, shard=shard, shards=shards)
    builder.store.write_shard(snap, shard)
    return snap


def merge_shards(builder: SnapshotBuilder, d: date, tasks: list[str], shards: int) -> Snapshot:
    """Join the parked shards of ``d`` into the published snapshot; the shards are removed after."""
    store = builder.store
    parts = [store.read_shard(d, i, tasks) for i in range(shards)]
    merged = builder.merge(parts)
    builder.publish(merged)
    for i in range(shards):
        store.delete_shard(d, i, tasks)
    return merged
