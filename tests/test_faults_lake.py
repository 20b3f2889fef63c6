"""Verified lake reads, found by fault injection (issue #13, finding 4, and schema drift).

A manifest is a promise about what a partition holds: the files, their sizes and row
counts. These tests break the promise the way a careless operator or a broken copy job
would (a data file swapped for another valid one, a truncated file, a garbage manifest, a
deleted manifest) on a real lake, on local files and on the moto S3 server, and check that
every reader refuses with one line naming the zone, table, partition and file, and that
``features`` refuses a snapshot whose input window has a missing clean partition.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta

import pyarrow as pa
import pytest
from conftest import make_shop

from propensity.cli import build_parser, main
from propensity.collect import collect
from propensity.config import Settings
from propensity.contracts import contract
from propensity.errors import LakeIntegrityError
from propensity.features.inputs import ShopData
from propensity.lake import MANIFEST, Lake, parquet_bytes, partition_path
from propensity.validation import Gate
from propensity.validation.gate import schema_drift

START = date(2025, 1, 1)
DAYS = 21
CUSTOMERS = 300
SNAPSHOT = START + timedelta(days=DAYS)  # sees every collected day
BACKENDS = ["local", pytest.param("s3", marks=pytest.mark.services)]


# --- fixtures ------------------------------------------------------------------------------


def _day(i: int) -> str:
    return (START + timedelta(days=i)).isoformat()


@pytest.fixture(scope="module")
def local_shop(tmp_path_factory) -> Settings:
    """A tiny clean shop collected into raw and validated into clean, once per module."""
    home = tmp_path_factory.mktemp("faults_lake_shop")
    settings = make_shop(home, customers=CUSTOMERS, days=DAYS)
    settings = settings.model_copy(update={"validation": settings.validation.model_copy(update={"docs": False})})
    collect(settings, START, START + timedelta(days=DAYS - 1))
    Gate(settings).validate([_day(i) for i in range(DAYS)])
    return settings


def _copy_lake(src: Lake, dst: Lake) -> None:
    """Every object of ``src`` into ``dst``, manifests last (as a writer would)."""
    keys = src.store.list()
    for key in sorted(keys, key=lambda k: k.endswith(MANIFEST)):
        dst.store.put_bytes(key, src.store.get_bytes(key))


@pytest.fixture(scope="module", params=BACKENDS)
def shop(request, local_shop) -> Settings:
    """The tiny shop with its lake on local files, or copied byte for byte onto moto's S3."""
    if request.param == "local":
        return local_shop
    s3 = request.getfixturevalue("s3_server")
    settings = local_shop.model_copy(update={"lake": "s3://faults-lake/lake", "s3_endpoint_url": s3.endpoint_url})
    _copy_lake(Lake.open(local_shop.lake_uri), Lake.open(settings.lake_uri, s3.endpoint_url))
    return settings


@pytest.fixture
def cli_env(shop, monkeypatch) -> Settings:
    """``propensity`` on the command line sees ``shop`` (its home, lake and endpoint)."""
    monkeypatch.delenv("PROPENSITY_CONFIG", raising=False)
    monkeypatch.setenv("PROPENSITY_HOME", str(shop.home_dir))
    monkeypatch.setenv("PROPENSITY_VALIDATION__DOCS", "false")
    if shop.lake:
        monkeypatch.setenv("PROPENSITY_LAKE", shop.lake)
        monkeypatch.setenv("PROPENSITY_S3_ENDPOINT_URL", shop.s3_endpoint_url or "")
    return shop


@pytest.fixture(params=BACKENDS)
def empty_lake(request, tmp_path) -> Lake:
    """A fresh lake on local files or on its own prefix of moto's S3."""
    if request.param == "local":
        return Lake.open(str(tmp_path / "lake"))
    s3 = request.getfixturevalue("s3_server")
    return Lake.open(f"s3://faults-lake-unit/{tmp_path.name}", s3.endpoint_url)


def _lake(settings: Settings) -> Lake:
    return Lake.open(settings.lake_uri, settings.s3_endpoint_url)


def _data_key(lake: Lake, zone: str, table: str, dt: str, i: int = 0) -> str:
    doc = lake.manifest(zone, table, {"dt": dt})
    assert doc is not None
    return f"{partition_path(zone, table, {'dt': dt})}/{doc['files'][i]['name']}"


@contextmanager
def tampered(lake: Lake, key: str, data: bytes | None) -> Iterator[None]:
    """Replace (or with ``None`` delete) one object, and put the original back afterwards."""
    original = lake.store.get_bytes(key)
    if data is None:
        lake.store.delete([key])
    else:
        lake.store.put_bytes(key, data)
    try:
        yield
    finally:
        lake.store.put_bytes(key, original)


def _one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"propensity {command}: error: "), err
    assert "\n" not in err and "Traceback" not in err, err
    return err


def _where(zone: str, table: str, dt: str, file: str = r"part-\d{5}-[0-9a-f]+\.parquet") -> str:
    return rf"zone {zone}, table {table}, partition dt={dt}, file {file}"


# --- the lake itself, on both backends ------------------------------------------------------


def _two_partitions(lake: Lake) -> tuple[dict[str, str], dict[str, str]]:
    six, three = {"dt": "2025-01-01"}, {"dt": "2025-01-02"}
    lake.write_partition("raw", "orders", six, pa.table({"order_id": [f"o{i}" for i in range(6)]}))
    lake.write_partition("raw", "orders", three, pa.table({"order_id": ["x", "y", "z"]}))
    return six, three


def _file_key(lake: Lake, parts: dict[str, str]) -> str:
    doc = lake.manifest("raw", "orders", parts)
    assert doc is not None
    return f"{partition_path('raw', 'orders', parts)}/{doc['files'][0]['name']}"


def _reads(lake: Lake, parts: dict[str, str]) -> list:
    """Every way the lake is read: one partition, a whole table, a chosen set, a projection."""
    return [
        lambda: lake.read_partition("raw", "orders", parts),
        lambda: lake.read_table("raw", "orders"),
        lambda: lake.read_table("raw", "orders", columns=["order_id"], where=[parts]),
    ]


def test_swapped_data_file_is_refused_by_every_reader(empty_lake):
    """Finding 4.1: a data file replaced by another valid Parquet file (3 rows where the manifest says 6)."""
    lake = empty_lake
    six, three = _two_partitions(lake)
    with tampered(lake, _file_key(lake, six), lake.store.get_bytes(_file_key(lake, three))):
        for read in _reads(lake, six):
            with pytest.raises(LakeIntegrityError, match=_where("raw", "orders", "2025-01-01") + ": .*manifest"):
                read()
    assert lake.read_partition("raw", "orders", six).num_rows == 6  # restored: reads again


def test_row_count_that_disagrees_with_the_manifest_is_refused(empty_lake):
    """Same bytes, but the manifest promises another row count: the Parquet footer says 6."""
    lake = empty_lake
    six, _ = _two_partitions(lake)
    key = f"{partition_path('raw', 'orders', six)}/{MANIFEST}"
    doc = json.loads(lake.store.get_bytes(key))
    doc["files"][0]["rows"] = doc["row_count"] = 7
    with tampered(lake, key, json.dumps(doc).encode()):
        for read in _reads(lake, six):
            with pytest.raises(LakeIntegrityError, match=_where("raw", "orders", "2025-01-01") + ": 6 rows where"):
                read()


@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00not json", b'{"files": [', b"[1, 2]", b'{"files": [{"name": "x"}]}'])
def test_garbage_manifest_names_the_file(empty_lake, garbage):
    """Finding 4.3: an undecodable or malformed manifest is an error naming it, not a codec error."""
    lake = empty_lake
    six, _ = _two_partitions(lake)
    key = f"{partition_path('raw', 'orders', six)}/{MANIFEST}"
    with tampered(lake, key, garbage):
        for read in [lambda: lake.manifest("raw", "orders", six), *_reads(lake, six)]:
            with pytest.raises(LakeIntegrityError, match=_where("raw", "orders", "2025-01-01", MANIFEST)):
                read()


def test_truncated_missing_or_corrupt_data_file_names_the_file(empty_lake):
    """Finding 4.3: a truncated file, a listed file that is gone, and a same-size corrupt one."""
    lake = empty_lake
    six, _ = _two_partitions(lake)
    key = _file_key(lake, six)
    data = lake.store.get_bytes(key)
    footer_len = int.from_bytes(data[-8:-4], "little")
    garbled_footer = data[: -8 - footer_len] + b"\xff" * footer_len + data[-8:]
    for bad, why in [(data[: len(data) // 2], "bytes where"), (None, "missing"), (garbled_footer, "not readable")]:
        with tampered(lake, key, bad):
            for read in _reads(lake, six):
                with pytest.raises(LakeIntegrityError, match=_where("raw", "orders", "2025-01-01") + f": .*{why}"):
                    read()


def test_checksums_catch_a_same_size_change_when_asked(empty_lake):
    """Size and row count cannot see other values of the same width; the opt-in sha256 check can."""
    lake = empty_lake
    parts = {"dt": "2025-01-01"}
    lake.write_partition("raw", "orders", parts, pa.table({"n": pa.array([1, 2, 3], pa.int64())}))
    key = _file_key(lake, parts)
    other = parquet_bytes(pa.table({"n": pa.array([1, 2, 4], pa.int64())}))
    assert other != lake.store.get_bytes(key) and len(other) == len(lake.store.get_bytes(key))
    with tampered(lake, key, other):
        assert lake.read_partition("raw", "orders", parts).column("n").to_pylist() == [1, 2, 4]  # undetectable
        checked = Lake(lake.store, checksums=True)
        with pytest.raises(LakeIntegrityError, match=_where("raw", "orders", "2025-01-01") + ": sha256"):
            checked.read_partition("raw", "orders", parts)


# --- the findings through the front door, on a real shop -------------------------------------


def test_validate_refuses_a_swapped_raw_file(cli_env, capsys):
    """Finding 4.1: before, validate exited 0 and republished the clean partition with 0 orders."""
    lake = _lake(cli_env)
    rows = {
        i: lake.manifest("raw", "orders", {"dt": _day(i)})["row_count"]  # type: ignore[index]
        for i in range(1, DAYS)
    }
    victim, donor = next((a, b) for a in rows for b in rows if rows[a] > rows[b])
    clean_before = lake.manifest("clean", "orders", {"dt": _day(victim)})
    donor_bytes = lake.store.get_bytes(_data_key(lake, "raw", "orders", _day(donor)))
    with tampered(lake, _data_key(lake, "raw", "orders", _day(victim)), donor_bytes):
        rc = main(["validate", "--date", _day(victim), "--tables", "orders"])
        err = _one_line_error(capsys, "validate")
        assert rc == 2
        assert re.search(_where("raw", "orders", _day(victim)), err), err
        assert lake.manifest("clean", "orders", {"dt": _day(victim)}) == clean_before  # nothing republished


def test_features_refuses_a_garbage_clean_manifest(cli_env, capsys):
    lake = _lake(cli_env)
    dt = _day(5)
    key = f"{partition_path('clean', 'orders', {'dt': dt})}/{MANIFEST}"
    with tampered(lake, key, b"\xff\xfe garbage"):
        rc = main(["features", "--snapshot", SNAPSHOT.isoformat()])
        err = _one_line_error(capsys, "features")
    assert rc == 2
    assert re.search(_where("clean", "orders", dt, MANIFEST), err), err


def test_features_refuses_a_truncated_clean_file(cli_env, capsys):
    lake = _lake(cli_env)
    dt = _day(7)
    key = _data_key(lake, "clean", "events", dt)
    with tampered(lake, key, lake.store.get_bytes(key)[:200]):
        rc = main(["features", "--snapshot", SNAPSHOT.isoformat()])
        err = _one_line_error(capsys, "features")
    assert rc == 2
    assert re.search(_where("clean", "events", dt), err), err


def test_clean_zone_loads_verify_every_file(shop):
    """The Polars path of :class:`ShopData` checks the manifest as :meth:`Lake.read_table` does."""
    lake = _lake(shop)
    dt = _day(3)
    key = _data_key(lake, "clean", "orders", dt)
    other = lake.store.get_bytes(_data_key(lake, "clean", "orders", _day(4)))
    with tampered(lake, key, other), pytest.raises(LakeIntegrityError, match=_where("clean", "orders", dt)):
        ShopData.load(lake)


def test_features_refuses_a_missing_clean_partition_unless_gaps_are_allowed(cli_env, capsys):
    """Finding 4.2: before, the day was silently skipped and the published snapshot overwritten."""
    lake = _lake(cli_env)
    day = SNAPSHOT - timedelta(days=2)
    assert main(["features", "--snapshot", day.isoformat()]) == 0
    capsys.readouterr()
    published = lake.manifest("features", "", {"snapshot": day.isoformat()})
    gap = _day(9)
    key = f"{partition_path('clean', 'customers', {'dt': gap})}/{MANIFEST}"
    with tampered(lake, key, None):
        rc = main(["features", "--snapshot", day.isoformat()])
        err = _one_line_error(capsys, "features")
        assert rc == 2
        assert f"{gap} (customers)" in err and "--allow-gaps" in err, err
        assert lake.manifest("features", "", {"snapshot": day.isoformat()}) == published  # not overwritten
        assert main(["features", "--snapshot", day.isoformat(), "--allow-gaps"]) == 0  # a shop really closed


def test_a_gap_after_the_snapshot_matters_only_to_a_complete_label_window(local_shop):
    """Days from T on are read only by complete label windows ``[T, T + H)``; an open one ignores them."""
    from propensity.features.snapshot import SnapshotBuilder

    lake = _lake(local_shop)
    key = f"{partition_path('clean', 'orders', {'dt': _day(15)})}/{MANIFEST}"
    with tampered(lake, key, None):
        builder = SnapshotBuilder(local_shop)
        horizon = local_shop.tasks["conversion"].horizon_days
        assert 5 + horizon <= DAYS < 10 + horizon  # day 5's label window is complete, day 10's is open
        builder.build(START + timedelta(days=10), ["conversion"])
        with pytest.raises(ValueError, match=f"{_day(15)} \\(orders\\)"):
            builder.build(START + timedelta(days=5), ["conversion"])


def test_run_takes_allow_gaps():
    args = build_parser().parse_args(["run", "--start", _day(0), "--end", _day(1), "--allow-gaps"])
    assert args.allow_gaps is True


# --- schema drift --------------------------------------------------------------------------


def _widened(schema: pa.Schema) -> pa.Schema:
    """The same logical types as Polars and pandas 3 write them: large strings, binaries, lists."""
    wide = {pa.string(): pa.large_string(), pa.binary(): pa.large_binary()}
    return pa.schema([pa.field(f.name, wide.get(f.type, f.type)) for f in schema])


def test_schema_drift_treats_large_types_as_the_same_logical_type():
    tc = contract("customers")
    assert schema_drift(tc, _widened(tc.arrow_schema)) == ([], [], [])
    as_list = pa.schema([pa.field("tags", pa.large_list(pa.large_string()))])
    assert schema_drift(_FakeContract("tags", pa.list_(pa.string())), as_list) == ([], [], [])
    retyped = pa.schema([pa.field(f.name, pa.int64() if f.name == "country" else f.type) for f in tc.arrow_schema])
    assert schema_drift(tc, retyped)[2] == ["country (int64 instead of string)"]


class _FakeContract:
    """A one-column contract, for a list type no real table has."""

    def __init__(self, name: str, arrow_type: pa.DataType) -> None:
        col = type("Col", (), {"name": name, "arrow_type": arrow_type})()
        self.columns, self.names = [col], [name]


def test_validate_accepts_a_partition_written_with_large_strings(local_shop):
    """Finding 6: a raw partition written by Polars (large_string) is not a retyped column."""
    lake = _lake(local_shop)
    dt = _day(DAYS - 1)
    raw = lake.read_partition("raw", "customers", {"dt": dt})
    assert raw is not None and raw.num_rows
    try:
        lake.write_partition("raw", "customers", {"dt": dt}, raw.cast(_widened(raw.schema)))
        [outcome] = Gate(local_shop).validate([dt], ["customers"])
        assert not outcome.critical, outcome.summary()
        assert outcome.published
    finally:
        lake.write_partition("raw", "customers", {"dt": dt}, raw)
