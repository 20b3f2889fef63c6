"""Features, profiles and labels: point-in-time correctness, the catalogue, and real order-only data."""

from __future__ import annotations

import io
import re
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from conftest import SMALL_SHOP, copy_shop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from propensity import history
from propensity.config import default_tasks
from propensity.contracts import contract
from propensity.features.build import compute_features
from propensity.features.catalogue import feature_names, markdown_table
from propensity.features.inputs import TABLE_NAMES, ShopData
from propensity.features.labels import labels, population
from propensity.features.profiles import build_profiles
from propensity.features.snapshot import SnapshotBuilder, at_midnight
from propensity.features.training import plan_snapshots, stack
from propensity.lake import Lake
from propensity.shards import shard_buckets
from propensity.zones import HISTORY

T = at_midnight(SMALL_SHOP["start"] + timedelta(days=100))
BASE = "EUR"


@pytest.fixture(scope="module")
def shop_data(clean_bulk) -> ShopData:
    """The clean simulated shop's clean rows (built once per session)."""
    return ShopData.load(Lake.open(clean_bulk.lake_uri))


def _bytes(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    pq.write_table(df.to_arrow(), buf)
    return buf.getvalue()


def _snapshot_bytes(data: ShopData, t: datetime) -> tuple[bytes, bytes]:
    past = data.as_of(t)
    feats = compute_features(past, t, BASE)
    return _bytes(feats), _bytes(build_profiles(feats, past, t, BASE))


TIME_COLUMNS = {name: [c.name for c in contract(name).columns if c.dtype == "timestamp"] for name in TABLE_NAMES}


def _append_future(data: ShopData, table: str, n: int, offset_hours: int, new_keys: bool, seed: int) -> ShopData:
    """Copy ``n`` rows of ``table``, move every timestamp to >= T, optionally keep their keys (new versions)."""
    df: pl.DataFrame = getattr(data, table)
    if df.height == 0:
        return data
    rows = df.sample(n=min(n, df.height), with_replacement=True, seed=seed)
    shift_to = pl.lit(T + timedelta(hours=offset_hours)).dt.cast_time_unit("us")
    exprs = [shift_to.alias(c) for c in TIME_COLUMNS[table] if c in rows.columns]
    if table == "fx_rates":
        exprs.append(pl.lit((T + timedelta(hours=offset_hours)).date()).alias("date"))
    rows = rows.with_columns(exprs)
    if new_keys:
        key = contract(table).primary_key[0]
        if rows.schema[key] == pl.String:
            rows = rows.with_columns((pl.lit("NEW-") + pl.col(key)).alias(key))
    return data.__class__(**{**data.__dict__, table: pl.concat([df, rows.select(df.columns)])})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    table=st.sampled_from(list(TABLE_NAMES)),
    n=st.integers(1, 200),
    offset_hours=st.integers(0, 24 * 400),
    new_keys=st.booleans(),
    seed=st.integers(0, 10_000),
)
def test_rows_at_or_after_t_never_change_features_or_profiles(shop_data, table, n, offset_hours, new_keys, seed):
    before = _snapshot_bytes(shop_data, T)
    after = _snapshot_bytes(_append_future(shop_data, table, n, offset_hours, new_keys, seed), T)
    assert before == after, f"rows appended to {table} at/after T changed the snapshot"


@pytest.mark.parametrize("task_name", list(default_tasks()))
def test_labels_change_only_through_rows_inside_the_horizon(shop_data, task_name):
    task = default_tasks()[task_name]
    h = timedelta(days=task.horizon_days)
    past = shop_data.as_of(T)
    pop = population(past, T, task)
    base = labels(pop, shop_data.between(T, T + h), task)
    # rows after the horizon: labels identical
    late = _append_future(shop_data, "orders", 300, int(h.total_seconds() // 3600) + 1, True, 1)
    late = _append_future(late, "events", 300, int(h.total_seconds() // 3600) + 1, True, 2)
    assert labels(population(late.as_of(T), T, task), late.between(T, T + h), task).equals(base)
    # a purchase inside the horizon by a population member flips a 0 label to the purchase outcome
    zero = base.filter(pl.col("label") == 0)
    if task.label == "purchase" and zero.height:
        cid = zero["customer_id"][0]
        order = shop_data.orders.head(1).with_columns(
            pl.lit(cid).alias("customer_id"),
            pl.lit("IN-HORIZON").alias("order_id"),
            pl.lit("paid").alias("status"),
            *[pl.lit(T + timedelta(hours=1)).dt.cast_time_unit("us").alias(c) for c in TIME_COLUMNS["orders"]],
        )
        inside = shop_data.__class__(**{**shop_data.__dict__, "orders": pl.concat([shop_data.orders, order])})
        new = labels(pop, inside.between(T, T + h), task)
        assert new.filter(pl.col("customer_id") == cid)["label"][0] == 1
        assert new.filter(pl.col("customer_id") != cid).equals(base.filter(pl.col("customer_id") != cid))


def test_populations_follow_their_definitions(shop_data):
    past = shop_data.as_of(T)
    tasks = default_tasks()
    since = lambda d: pl.lit(T - timedelta(days=d)).dt.cast_time_unit("us")  # noqa: E731
    bought = past.orders.filter(pl.col("status") != "cancelled")
    conv = set(population(past, T, tasks["conversion"])["customer_id"])
    recent_buyers = set(bought.filter(pl.col("order_time") >= since(90))["customer_id"])
    sessions = set(past.events.filter(pl.col("event_time") >= since(30))["customer_id"].drop_nulls())
    assert conv and conv <= sessions and not conv & recent_buyers
    rep = set(population(past, T, tasks["repurchase"])["customer_id"])
    assert rep == set(bought.filter(pl.col("order_time") >= since(365))["customer_id"])
    churn = set(population(past, T, tasks["churn"])["customer_id"])
    active = set(past.events.filter(pl.col("event_time") >= since(90))["customer_id"].drop_nulls()) | set(
        bought.filter(pl.col("order_time") >= since(90))["customer_id"]
    )
    assert churn == active & set(past.customers["customer_id"])


def test_catalogue_matches_produced_columns(shop_data):
    feats = compute_features(shop_data.as_of(T), T, BASE)
    produced = [c for c in feats.columns if c != "customer_id"]
    assert len(produced) >= 60
    assert set(produced) == set(feature_names()), (
        f"missing from catalogue: {sorted(set(produced) - set(feature_names()))}; "
        f"catalogued but not produced: {sorted(set(feature_names()) - set(produced))}"
    )
    assert "gender" not in produced and "age_band" not in produced  # kept for fairness reports only


def test_readme_renders_the_catalogue():
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"<!-- catalogue:start -->\n(.*?)\n<!-- catalogue:end -->", readme, re.S)
    assert block, "README has no catalogue block"
    assert block.group(1).strip() == markdown_table().strip(), "README catalogue is stale: run make catalogue"


def test_snapshot_publishes_validated_outputs_and_plans_do_not_leak(clean_bulk, tmp_path):
    clean_shop = copy_shop(clean_bulk, tmp_path / "home", ["lake/clean"])  # publishing writes to the lake
    start = SMALL_SHOP["start"]
    end = start + timedelta(days=SMALL_SHOP["days"] - 1)
    lake = Lake.open(clean_shop.lake_uri)
    b = SnapshotBuilder(clean_shop)
    snap = b.build_and_publish(date(2025, 4, 1))
    assert lake.manifest("features", "", {"snapshot": "2025-04-01"})["row_count"] == snap.features.height
    assert lake.manifest("profiles", "", {"snapshot": "2025-04-01"}) is not None
    for task, cfg in clean_shop.tasks.items():
        m = lake.manifest("labels", "", {"task": task, "snapshot": "2025-04-01"})
        assert m is not None and m["complete"] is (date(2025, 4, 1) + timedelta(days=cfg.horizon_days - 1) <= end)
    stages = set(snap.profiles["lifecycle_stage"])
    assert {"active", "churned"} <= stages
    plan = plan_snapshots("repurchase", clean_shop.tasks["repurchase"], start, end, clean_shop.features)
    h = timedelta(days=clean_shop.tasks["repurchase"].horizon_days)
    assert all(t + h <= min(plan.valid) for t in plan.train) and max(plan.valid) + h <= min(plan.tests)
    ts = stack([b.build(d, ["repurchase"]) for d in plan.train], "repurchase")
    assert ts["snapshot"].n_unique() == len(plan.train) and set(ts["label"].unique()) <= {0, 1}
    with pytest.raises(ValueError, match="not enough history"):
        plan_snapshots("churn", clean_shop.tasks["churn"], start, start + timedelta(days=90), clean_shop.features)


@pytest.mark.slow
def test_online_retail_features_and_labels(online_retail_zone, tmp_path):
    assert not [o for o in online_retail_zone.outcomes if o.critical]
    # the session's validated Online Retail, its clean zone copied (publishing writes to the lake)
    s = copy_shop(online_retail_zone.settings, tmp_path / "home", ["lake/clean"], base_currency="GBP")
    b = SnapshotBuilder(s)
    snap = b.build_and_publish(date(2011, 9, 1))
    assert snap.features.height > 3000
    assert snap.features["sessions_30d"].sum() == 0  # order-only data: behaviour features are zero, not errors
    rep = snap.labels["repurchase"]
    assert snap.complete["repurchase"] and rep.height > 1000 and 0.05 < rep["label"].mean() < 0.8
    assert snap.labels["conversion"].height == 0  # no sessions, no conversion population


def test_a_shard_reads_only_its_buckets_of_the_history_and_builds_the_same_shard(clean_bulk, tmp_path):
    """A shard task's builder loads only its customer buckets' history files, yet builds the
    same shard (features, labels, label completeness) as a builder that read the whole shop,
    and the merged shards are the unsharded snapshot."""
    s = copy_shop(clean_bulk, tmp_path, parts=["lake/clean"])
    lake = Lake.open(s.lake_uri)
    for name in TABLE_NAMES:  # histories split into several bucket ranges on this small shop
        history.compact(lake, name, after=1, rows_per_file=200)
    day = SMALL_SHOP["start"] + timedelta(days=100)
    whole_builder = SnapshotBuilder(s)
    whole = whole_builder.build(day)
    files = {n: lake.data_files(HISTORY, n, lake.partitions(HISTORY, n)[-1]) for n in ("events", "order_items")}
    assert all(len(f) >= 4 for f in files.values()), {n: len(f) for n, f in files.items()}
    read: list[str] = []
    original = Lake.read_file

    def spy(self, f, *args, **kwargs):
        read.append(f.path)
        return original(self, f, *args, **kwargs)

    parts = []
    for i in range(4):
        read.clear()
        builder = SnapshotBuilder(s, buckets=shard_buckets(i, 4))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Lake, "read_file", spy)
            part = builder.build(day, shard=i, shards=4)
        for name, listed in files.items():
            mine = {
                f.path
                for f in listed
                if f.meta["buckets"] and set(range(*f.meta["buckets"])) & set(shard_buckets(i, 4))
            }
            assert {p for p in read if p in {f.path for f in listed}} == mine, (name, i)
        assert builder.data.events.height < whole_builder.data.events.height
        assert builder.observed_until == whole_builder.observed_until and builder.span() == whole_builder.span()
        ref = whole_builder.build(day, shard=i, shards=4)
        assert part.features.equals(ref.features), i
        for task, lab in ref.labels.items():
            assert part.labels[task].equals(lab) and part.complete[task] == ref.complete[task], (i, task)
        parts.append(part)
    merger = SnapshotBuilder(s)
    merged = merger.merge(parts)
    assert merger.data_ is None  # the merge read nothing of the clean zone
    assert merged.features.equals(whole.features) and merged.profiles.equals(whole.profiles)
    assert merged.observed_until == whole.observed_until


@pytest.mark.parametrize("shards", [3])
def test_sharded_snapshot_equals_unsharded(clean_bulk, shards):
    """Feature building split into customer hash shards and merged gives the unsharded snapshot."""
    builder = SnapshotBuilder(clean_bulk)
    day = SMALL_SHOP["start"] + timedelta(days=100)
    whole = builder.build(day)
    parts = [builder.build(day, shard=i, shards=shards) for i in range(shards)]
    assert sum(p.features.height for p in parts) == whole.features.height
    assert all(p.features.height for p in parts)  # every shard got customers
    merged = builder.merge(parts)
    assert merged.features.equals(whole.features)
    assert merged.profiles.equals(whole.profiles)
    for task, lab in whole.labels.items():
        assert merged.labels[task].equals(lab), task
        assert merged.complete[task] == whole.complete[task]
