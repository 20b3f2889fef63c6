"""The clean zone's compacted history: a cache that never changes what a reader gets."""

from __future__ import annotations

from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from propensity import history
from propensity.errors import LakeIntegrityError
from propensity.lake import MANIFEST, Lake, partition_path
from propensity.zones import CLEAN, HISTORY

TABLE = "orders"


def _day(i: int) -> str:
    return (date(2025, 1, 1) + timedelta(days=i)).isoformat()


def _rows(i: int, n: int = 3, tag: str = "a") -> pa.Table:
    return pa.table({"customer_id": [f"C{i:03d}-{k}" for k in range(n)], "v": [f"{tag}{i}"] * n})


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
    assert _read(lake).equals(_direct(lake))


def test_a_history_reads_like_the_partitions_and_later_days_are_added(lake: Lake) -> None:
    history.compact(lake, TABLE, after=1)
    lake.write_partition(CLEAN, TABLE, {"dt": _day(6)}, _rows(6))
    df, listing = history.read(lake, TABLE, ["v"])
    assert df is not None and df.equals(_direct(lake, ["v"]))
    assert df["v"].to_list()[-3:] == ["a6"] * 3
    assert listing.values() == {_day(i) for i in range(7)}


def test_a_revalidated_day_is_read_from_the_clean_zone_in_its_place(lake: Lake) -> None:
    """Re-publishing day 2 with other rows writes other (content-addressed) files: the
    history's copy of day 2 is stale and the clean partition is read, in day order."""
    history.compact(lake, TABLE, after=1)
    lake.write_partition(CLEAN, TABLE, {"dt": _day(2)}, _rows(2, n=5, tag="b"))
    df = _read(lake)
    assert df.equals(_direct(lake))
    assert df["v"].to_list()[6:11] == ["b2"] * 5 and "a2" not in df["v"].to_list()


def test_an_unpublished_day_is_not_read_from_the_history(lake: Lake) -> None:
    history.compact(lake, TABLE, after=1)
    lake.store.delete([f"{partition_path(CLEAN, TABLE, {'dt': _day(3)})}/{MANIFEST}"])
    df, listing = history.read(lake, TABLE)
    assert df is not None and df.equals(_direct(lake))
    assert "a3" not in df["v"].to_list() and _day(3) not in listing.values()


def test_a_history_missing_a_column_asked_for_is_not_used(lake: Lake) -> None:
    """After a contract change adds a column, the old history cannot serve it."""
    history.compact(lake, TABLE, after=1)
    wider = _rows(6).append_column("w", pa.array([1, 2, 3]))
    lake.write_partition(CLEAN, TABLE, {"dt": _day(6)}, wider)
    with pytest.raises(Exception):  # noqa: B017 - a direct read of mixed schemas fails the same way
        _direct(lake, ["customer_id", "w"])
    assert _read(lake, ["customer_id"]).equals(_direct(lake, ["customer_id"]))


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
    assert _read(lake).equals(_direct(lake))
    (f,) = lake.data_files(HISTORY, TABLE, hist.parts)
    assert pl.read_parquet(f.path).drop(history.PARTITION).equals(_direct(lake))
