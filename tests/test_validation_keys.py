"""The parent-key index: a day's validation reads the index and the new raw partitions only,
and a rewritten or removed raw partition never leaves a key behind (local files and moto S3)."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
import pytest

from propensity.lake import Lake
from propensity.validation.keys import index_name, key_index
from propensity.zones import RAW
from propensity.zones import VALIDATION as INDEX_ZONE


@pytest.fixture(params=["local", "s3"])
def lake(request, tmp_path) -> Lake:
    if request.param == "local":
        return Lake.open(str(tmp_path / "lake"))
    s3 = request.getfixturevalue("s3_server")
    return Lake.open(f"s3://keys-index/{tmp_path.name}", s3.endpoint_url)


def put_day(lake: Lake, day: int, ids: list[str]) -> None:
    lake.write_partition(RAW, "customers", {"dt": f"2025-01-{day:02d}"}, pa.table({"customer_id": ids}))


def reads(lake: Lake, monkeypatch) -> Counter:
    count: Counter = Counter()
    original = Lake.read_file

    def counted(self, f, *args, **kwargs):
        if f.where.startswith(f"lake zone {RAW},"):  # raw partitions read, by dt
            count[f.where.split(", partition ")[1].split(",")[0]] += 1
        return original(self, f, *args, **kwargs)

    monkeypatch.setattr(Lake, "read_file", counted)
    return count


def test_the_index_reads_only_new_partitions(lake, monkeypatch):
    for day in range(1, 11):
        put_day(lake, day, [f"c{day}", f"c{day + 100}"])
    assert sorted(key_index(lake, "customers", "customer_id").to_pylist()) == sorted(
        [f"c{d}" for d in range(1, 11)] + [f"c{d + 100}" for d in range(1, 11)]
    )
    put_day(lake, 11, ["c11", "c1"])
    count = reads(lake, monkeypatch)
    keys = key_index(lake, "customers", "customer_id").to_pylist()
    assert "c11" in keys and len(keys) == 21
    assert count == {"dt=2025-01-11": 1}, count  # the new day only, not the ten before it
    count.clear()
    assert len(key_index(lake, "customers", "customer_id")) == 21
    assert not count  # nothing new: no raw partition is read


def test_a_rewritten_partition_rebuilds_the_index(lake):
    for day in range(1, 6):
        put_day(lake, day, [f"c{day}"])
    assert "c3" in key_index(lake, "customers", "customer_id").to_pylist()
    put_day(lake, 3, ["c33"])  # re-collected: c3 is no longer in the raw zone
    keys = key_index(lake, "customers", "customer_id").to_pylist()
    assert "c3" not in keys and "c33" in keys
    lake.delete_partition(RAW, "customers", {"dt": "2025-01-05"})
    assert "c5" not in key_index(lake, "customers", "customer_id").to_pylist()


def test_a_damaged_index_is_rebuilt(lake):
    for day in range(1, 4):
        put_day(lake, day, [f"c{day}"])
    key_index(lake, "customers", "customer_id")
    lake.store.put_bytes(f"{INDEX_ZONE}/{index_name('customers', 'customer_id')}/_manifest.json", b"\xff garbage")
    assert sorted(key_index(lake, "customers", "customer_id").to_pylist()) == ["c1", "c2", "c3"]
