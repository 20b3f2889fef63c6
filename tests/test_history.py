"""The clean zone's compacted history: a cache that never changes what a reader gets."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from propensity import history
from propensity.errors import LakeIntegrityError
from propensity.lake import MANIFEST, Lake, partition_path
from propensity.shards import shard_buckets, shard_of
from propensity.zones import CLEAN, HISTORY

TABLE = "orders"


def _day(i: int) -> str:
    return (date(2025, 1, 1) + timedelta(days=i)).isoformat()


def _rows(i: int, n: int = 3, tag: str = "a") -> pa.Table:
    """Day ``i``: one row each of customers C0..C(n-1), so every customer has a row a day."""
    return pa.table({"customer_id": [f"C{k}" for k in range(n)], "v": [f"{tag}{i}"] * n})


def _same(got: pl.DataFrame, want: pl.DataFrame) -> bool:
    """The same rows, and each customer's rows in the same (partition) order: a bucketed
    history orders rows by customer bucket, which every per-customer reader is blind to."""
    if "customer_id" not in want.columns:
        return sorted(got.rows()) == sorted(want.rows())
    return got.sort("customer_id", maintain_order=True).equals(want.sort("customer_id", maintain_order=True))


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = Lake.open(str(tmp_path / "lake"))
    for i in range(6):
        lake.write_partition(CLEAN, TABLE, {"dt": _day(i)}, _rows(i))
    return lake


def _direct(lake: Lake, columns: list[str] | None = None) -> pl.DataFrame:
    """What a reader gets with no history at all: every published partition, in order."""
    t = lake.read_table(CLEAN, TABLE, columns=columns)
    out = pl.from_arrow(t)
    assert isinstance(out, pl.DataFrame)
    return out


def _read(lake: Lake, columns: list[str] | None = None) -> pl.DataFrame:
    df, _ = history.read(lake, TABLE, columns)
    assert df is not None
    return df


def test_compaction_waits_for_enough_new_partitions_and_keeps_the_two_newest(lake: Lake) -> None:
    assert history.compact(lake, TABLE, after=7) is None
    assert history.compact(lake, TABLE, after=6) == {"through": _day(5)}
    assert history.compact(lake, TABLE, after=1) is None  # nothing new since
    for i in range(6, 9):
        lake.write_partition(CLEAN, TABLE, {"dt": _day(i)}, _rows(i))
        assert history.compact(lake, TABLE, after=1) == {"through": _day(i)}
    assert [p["through"] for p in lake.partitions(HISTORY, TABLE)] == [_day(7), _day(8)]
    assert _same(_read(lake), _direct(lake))


def test_a_history_reads_like_the_partitions_and_later_days_are_added(lake: Lake) -> None:
    history.compact(lake, TABLE, after=1)
    lake.write_partition(CLEAN, TABLE, {"dt": _day(6)}, _rows(6))
    df, listing = history.read(lake, TABLE, ["v"])
    assert df is not None and _same(df, _direct(lake, ["v"]))
    assert df["v"].to_list()[-3:] == ["a6"] * 3
    assert listing.values() == {_day(i) for i in range(7)}


def test_a_revalidated_day_is_read_from_the_clean_zone_in_its_place(lake: Lake) -> None:
    """Re-publishing day 2 with other rows writes other (content-addressed) files: the
    history's copy of day 2 is stale and the clean partition is read, in day order."""
    history.compact(lake, TABLE, after=1)
    lake.write_partition(CLEAN, TABLE, {"dt": _day(2)}, _rows(2, n=5, tag="b"))
    df = _read(lake)
    assert _same(df, _direct(lake))
    assert df["v"].to_list()[6:11] == ["b2"] * 5 and "a2" not in df["v"].to_list()


def test_an_unpublished_day_is_not_read_from_the_history(lake: Lake) -> None:
    history.compact(lake, TABLE, after=1)
    lake.store.delete([f"{partition_path(CLEAN, TABLE, {'dt': _day(3)})}/{MANIFEST}"])
    df, listing = history.read(lake, TABLE)
    assert df is not None and _same(df, _direct(lake))
    assert "a3" not in df["v"].to_list() and _day(3) not in listing.values()


def test_a_history_missing_a_column_asked_for_is_not_used(lake: Lake) -> None:
    """After a contract change adds a column, the old history cannot serve it."""
    history.compact(lake, TABLE, after=1)
    wider = _rows(6).append_column("w", pa.array([1, 2, 3]))
    lake.write_partition(CLEAN, TABLE, {"dt": _day(6)}, wider)
    with pytest.raises(Exception):  # noqa: B017 - a direct read of mixed schemas fails the same way
        _direct(lake, ["customer_id", "w"])
    assert _same(_read(lake, ["customer_id"]), _direct(lake, ["customer_id"]))


def test_a_swapped_history_file_is_an_integrity_error_naming_it(lake: Lake) -> None:
    history.compact(lake, TABLE, after=1)
    parts = lake.partitions(HISTORY, TABLE)[-1]
    (f,) = lake.data_files(HISTORY, TABLE, parts)
    Path(f.path).write_bytes(Path(f.path).read_bytes()[:-20])
    with pytest.raises(LakeIntegrityError, match=f"lake zone {HISTORY}, table {TABLE}, partition through="):
        history.read(lake, TABLE)


def test_a_compaction_builds_on_the_last_history_and_reads_only_what_changed(lake: Lake) -> None:
    """The next history is the old one's still-true rows plus the changed and new days:
    the same rows, in the same order, as compacting everything afresh."""
    history.compact(lake, TABLE, after=1)
    lake.write_partition(CLEAN, TABLE, {"dt": _day(2)}, _rows(2, n=5, tag="b"))
    lake.store.delete([f"{partition_path(CLEAN, TABLE, {'dt': _day(4)})}/{MANIFEST}"])
    for i in range(6, 8):
        lake.write_partition(CLEAN, TABLE, {"dt": _day(i)}, _rows(i))
    read_clean: list[str] = []
    original = lake.data_files

    def spy(zone: str, table: str, parts: dict) -> list:
        if zone == CLEAN:
            read_clean.append(parts["dt"])
        return original(zone, table, parts)

    lake.data_files = spy  # type: ignore[method-assign]
    assert history.compact(lake, TABLE, after=3) == {"through": _day(7)}
    assert sorted(read_clean) == [_day(2), _day(6), _day(7)]
    lake.data_files = original  # type: ignore[method-assign]
    hist = history.History.newest(lake, TABLE)
    assert hist is not None and set(hist.sources) == {f"dt={_day(i)}" for i in (0, 1, 2, 3, 5, 6, 7)}
    assert _same(_read(lake), _direct(lake))
    (f,) = lake.data_files(HISTORY, TABLE, hist.parts)
    assert _same(pl.read_parquet(f.path).drop(history.PARTITION, history.BUCKET), _direct(lake))


def test_order_rows_follow_their_customer_and_orphans_belong_to_no_shard(tmp_path: Path) -> None:
    """Items are bucketed by their order's customer, so a shard's read holds exactly its
    customers' items; an item whose order is not published is read whole, never by a shard."""
    lake = Lake.open(str(tmp_path / "lake"))
    owner = {f"O{k}": f"C{k % 10}" for k in range(40)}
    lake.write_partition(
        CLEAN, "orders", {"dt": _day(0)}, pa.table({"order_id": list(owner), "customer_id": list(owner.values())})
    )
    items = pa.table({"order_id": [*owner, "O-none"], "line_no": list(range(41))})
    lake.write_partition(CLEAN, "order_items", {"dt": _day(0)}, items)
    for name in ("orders", "order_items"):
        history.compact(lake, name, after=1, rows_per_file=5)
    hist = history.History.newest(lake, "order_items")
    assert hist is not None and len(lake.data_files(HISTORY, "order_items", hist.parts)) > 4
    seen: list[str] = []
    for i in range(4):
        df, _ = history.read(lake, "order_items", buckets=shard_buckets(i, 4))
        assert df is not None and df.height
        assert (shard_of(pl.Series([owner[o] for o in df["order_id"]]), 4) == i).all(), i
        seen += df["order_id"].to_list()
    assert sorted(seen) == sorted(owner)
    full, _ = history.read(lake, "order_items")
    assert full is not None and full.height == 41 and "O-none" in full["order_id"].to_list()


def test_the_history_records_where_its_days_begin_and_end(tmp_path: Path) -> None:
    """A shard sees only its customers' rows; the history's per-day first and last times
    still tell it where the whole shop's data ends, for the days that are still true."""
    lake = Lake.open(str(tmp_path / "lake"))

    def events(i: int, hour: int) -> pa.Table:
        t = datetime(2025, 1, 1 + i, hour, tzinfo=UTC)
        return pa.table({"customer_id": ["C1", "C2"], "event_time": pa.array([t, t], pa.timestamp("us", tz="UTC"))})

    for i in range(3):
        lake.write_partition(CLEAN, "events", {"dt": _day(i)}, events(i, 5 + i))
    history.compact(lake, "events", after=1)
    listing = history.Listing.of(lake, CLEAN, "events")
    assert history.bounds(lake, "events", listing)["event_time"] == (
        "2025-01-01T05:00:00+00:00",
        "2025-01-03T07:00:00+00:00",
    )
    lake.write_partition(CLEAN, "events", {"dt": _day(2)}, events(2, 1))  # re-validated: not the history's any more
    listing = history.Listing.of(lake, CLEAN, "events")
    assert history.bounds(lake, "events", listing)["event_time"][1] == "2025-01-02T06:00:00+00:00"


def test_a_compaction_in_small_batches_gives_the_same_rows_in_bounded_files(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The compaction spills the new partitions a few rows at a time and writes a bucket
    range at a time: the rows and each customer's order are what one pass would give, and
    rows with no customer are cut into files of at most rows_per_file."""
    for i in range(6, 9):
        anonymous = pa.table({"customer_id": pa.array([None] * 4, pa.string()), "v": [f"n{i}"] * 4})
        lake.write_partition(CLEAN, TABLE, {"dt": _day(i)}, pa.concat_tables([_rows(i), anonymous]))
    monkeypatch.setattr(history, "BATCH_ROWS", 4)
    history.compact(lake, TABLE, after=1, rows_per_file=5)
    lake.write_partition(CLEAN, TABLE, {"dt": _day(1)}, _rows(1, tag="b"))  # an older day re-published
    history.compact(lake, TABLE, after=1, rows_per_file=5)
    assert _same(_read(lake), _direct(lake))
    hist = history.History.newest(lake, TABLE)
    assert hist is not None
    files = lake.data_files(HISTORY, TABLE, hist.parts)
    orphans = [f for f in files if f.meta["buckets"] is None]
    assert sum(f.rows for f in orphans) == 12 and all(f.rows <= 5 for f in orphans)
