"""Collection into the raw zone: idempotent, atomic, and the same on local disk, S3 and PostgreSQL."""

from __future__ import annotations

import json
from datetime import date, timedelta

import pyarrow as pa
import pytest
from conftest import CLEAN, make_shop

from propensity.collect import Collector, collect, rows_per_table
from propensity.config import Settings
from propensity.contracts import TABLES, contract
from propensity.lake import MANIFEST, Lake, parquet_bytes
from propensity.simulate import simulate
from propensity.sources.oltp import ShopDB

START = date(2025, 1, 1)
DAYS = 30  # a month's backfill
END = START + timedelta(days=DAYS - 1)


@pytest.fixture
def shop(tmp_path):
    return make_shop(tmp_path / "home", customers=1500, days=DAYS)


def _data_files(lake: Lake) -> dict[str, bytes]:
    return {k: lake.store.get_bytes(k) for k in lake.store.list("raw/") if k.endswith(".parquet")}


def _manifests(lake: Lake) -> dict[str, dict]:
    """Every raw manifest without its wall-clock stamps and timings."""
    stamps = {"written_at", "extracted_at", "extract_seconds"}
    out = {}
    for k in lake.store.list("raw/"):
        if k.endswith("manifest.json"):
            out[k] = {f: v for f, v in json.loads(lake.store.get_text(k)).items() if f not in stamps}
    return out


def test_collect_is_idempotent(shop):
    """A month's backfill run twice leaves the same lake: same files, same bytes, same manifests."""
    first = collect(shop, START, END)
    lake = Lake.open(shop.lake_uri)
    files1, manifests1 = _data_files(lake), _manifests(lake)
    second = collect(shop, START, END)
    assert _data_files(lake) == files1  # same bytes, no extra files
    assert _manifests(lake) == manifests1
    assert rows_per_table(first) == rows_per_table(second)
    counts = rows_per_table(first)
    db = ShopDB(shop.shop_db_url)
    for name in ("customers", "orders", "order_items", "campaign_contacts"):
        assert counts[name] == db.count(name), name
    db.dispose()
    assert counts["events"] > 0 and counts["fx_rates"] == DAYS * 6
    # one manifest per table and day, carrying what downstream needs
    assert len(first) == DAYS * len(TABLES)
    m = lake.manifest("raw", "orders", {"dt": START.isoformat()})
    assert m is not None
    assert {"row_count", "source", "extracted_at", "schema_hash", "files"} <= set(m)
    assert m["schema_hash"] == contract("orders").schema_hash
    data = lake.read_partition("raw", "orders", {"dt": START.isoformat()})
    assert data.num_rows == m["row_count"]
    assert data.schema.equals(contract("orders").arrow_schema)


def test_rerun_replaces_partition_and_drops_stale_files(shop):
    day = START + timedelta(days=3)
    c = Collector(shop)
    c.collect_day(day, ["orders"])
    lake = c.lake
    before = lake.read_partition("raw", "orders", {"dt": day.isoformat()})
    assert before.num_rows > 0
    # the source changes: one order disappears; re-collecting the day reflects exactly that
    victim = before.column("order_id")[0].as_py()
    with c.db.engine.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM orders WHERE order_id = '{victim}'")
    c.collect_day(day, ["orders"])
    after = lake.read_partition("raw", "orders", {"dt": day.isoformat()})
    assert after.num_rows == before.num_rows - 1
    keys = lake.store.list(f"raw/orders/dt={day.isoformat()}/")
    assert len([k for k in keys if k.endswith(".parquet")]) == 1
    c.close()


def test_partition_without_manifest_is_invisible(tmp_path):
    lake = Lake.open(f"file://{tmp_path}")
    lake.write_partition("raw", "t", {"dt": "2025-01-01"}, pa.table({"a": [1, 2]}))
    # a crashed writer left data but no manifest
    lake.store.put_bytes("raw/t/dt=2025-01-02/part-00000-deadbeef.parquet", parquet_bytes(pa.table({"a": [9]})))
    assert lake.partitions("raw", "t") == [{"dt": "2025-01-01"}]
    assert lake.read_table("raw", "t").column("a").to_pylist() == [1, 2]


def test_failed_publish_keeps_previous_partition(tmp_path, monkeypatch):
    lake = Lake.open(f"file://{tmp_path}")
    parts = {"dt": "2025-01-01"}
    lake.write_partition("raw", "t", parts, pa.table({"a": [1, 2, 3]}))

    def boom(key, text):
        raise OSError("disk full")

    monkeypatch.setattr(lake.store, "put_text", boom)
    with pytest.raises(OSError):
        lake.write_partition("raw", "t", parts, pa.table({"a": [7]}))
    monkeypatch.undo()
    assert lake.read_partition("raw", "t", parts).column("a").to_pylist() == [1, 2, 3]
    assert not [k for k in lake.store.list() if ".tmp-" in k]


@pytest.mark.services
def test_s3_round_trip_through_moto_server(tmp_path, s3_server):
    local = make_shop(tmp_path / "local", customers=600, days=5)
    remote = Settings(
        home=tmp_path / "remote",
        lake="s3://lake/propensity",
        landing="s3://landing/clickstream",
        drops="s3://drops",
        s3_endpoint_url=s3_server.endpoint_url,
    )
    simulate(remote, customers=600, days=5, start=START, seed=11, dirt_cfg=CLEAN)
    end = START + timedelta(days=4)
    m_local = collect(local, START, end)
    m_remote = collect(remote, START, end)
    assert rows_per_table(m_local) == rows_per_table(m_remote)
    s3_lake = Lake.open(remote.lake_uri, s3_server.endpoint_url)
    assert s3_lake.store.uri == "s3://lake/propensity"
    keys = s3_lake.store.list("raw/events/")
    assert any(k.endswith(MANIFEST) for k in keys)
    local_lake = Lake.open(local.lake_uri)
    for name in ("events", "orders", "customers", "fx_rates"):
        a = local_lake.read_table("raw", name)
        b = s3_lake.read_table("raw", name)
        assert a.equals(b), name
    # idempotent on S3 too: the same objects, no extras
    before = {k: s3_lake.store.get_bytes(k) for k in s3_lake.store.list("raw/") if k.endswith(".parquet")}
    collect(remote, START, end)
    after = {k: s3_lake.store.get_bytes(k) for k in s3_lake.store.list("raw/") if k.endswith(".parquet")}
    assert before == after


@pytest.mark.services
def test_postgres_source_extraction(tmp_path, postgres):
    local = make_shop(tmp_path / "sqlite", customers=600, days=5)
    pg_url = postgres.create_database("shop_extract")
    pg = Settings(home=tmp_path / "pg", shop_db=pg_url)
    simulate(pg, customers=600, days=5, start=START, seed=11, dirt_cfg=CLEAN)
    end = START + timedelta(days=4)
    collect(local, START, end)
    manifests = collect(pg, START, end)
    assert all(m["source_uri"].startswith("postgresql") for m in manifests if m["source"] == "oltp")
    a, b = Lake.open(local.lake_uri), Lake.open(pg.lake_uri)
    for name in ("customers", "orders", "order_items", "deliveries", "campaign_contacts"):
        ta, tb = a.read_table("raw", name), b.read_table("raw", name)
        assert ta.num_rows == tb.num_rows > 0, name
        assert ta.equals(tb), f"{name}: PostgreSQL extraction differs from SQLite"


@pytest.mark.slow  # needs the session's validated small shop (minutes when it is not built yet)
def test_bulk_clean_publishes_the_rows_collect_and_validate_do(clean_zone, clean_bulk):
    """Tests that read the clean zone as a whole use ``clean_bulk`` (conftest.bulk_clean):
    on the clean shop it holds exactly the rows that collecting and validating every day publish."""
    import polars as pl

    daily, bulk = Lake.open(clean_zone.lake_uri), Lake.open(clean_bulk.lake_uri)
    assert daily.store.uri != bulk.store.uri
    for name in TABLES:
        a, b = (pl.from_arrow(lake.read_table("clean", name)) for lake in (daily, bulk))
        assert a.schema == b.schema, name
        assert a.height > 0 and a.sort(a.columns).equals(b.sort(b.columns)), name
        assert len(bulk.partitions("clean", name)) == 1
