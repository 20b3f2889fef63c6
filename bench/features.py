"""One full feature snapshot at scale, against a pyarrow scan floor and a pandas baseline.

    .venv/bin/python bench/features.py                      # 500k customers x 60 days, ~10M events
    .venv/bin/python bench/features.py --customers 20000    # quick check

Data: ``simulate`` (no dirt) + ``collect`` into the raw zone of a lake under ``--home``. The
lake is cached there with a marker recording how it was made, and reused by later runs with
the same parameters. Validation is skipped: the raw zone has the clean zone's schema.

Printed, from one run:

* the full catalogue as production runs it (``ShopData.load`` of every column, ``as_of(T)``,
  ``compute_features``), timed per phase in a fresh child process whose peak RSS is read
  with ``getrusage(RUSAGE_CHILDREN)``, so the simulator's memory does not count;
* the scan floor: pyarrow alone reading only the columns the features need from the same
  Parquet files (read once to warm the page cache, then timed);
* a representative subset (RFM + windowed session/event-type counts) in idiomatic pandas and
  with build.py's own Polars functions, from the same in-memory inputs, checked to agree
  numerically with each other and with the full build before they are compared;
* a profile of the Polars build (load, ``as_of`` and feature groups) and the target ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from propensity.collect import RAW, collect, rows_per_table
from propensity.config import DirtConfig, Settings
from propensity.contracts import contract
from propensity.features import build
from propensity.features.inputs import TABLE_NAMES, ShopData
from propensity.lake import Lake, partition_path
from propensity.simulate import simulate

START = date(2025, 1, 1)
DEFAULT_DAYS = 60  # signups spread over the window, so short runs are denser: 500k x 60 d ~ 10.4M events
MARKER = "bench-features.json"
KEY = "customer_id"

# Every column that as_of + compute_features read (checked: loading only these gives the identical frame).
FEATURE_COLUMNS: dict[str, list[str]] = {
    "customers": [
        "customer_id", "signup_time", "country", "currency", "language", "acquisition_channel",
        "email_consent", "sms_consent", "push_consent", "global_opt_out", "updated_at",
    ],
    "products": ["product_id", "category", "list_price", "updated_at"],
    "orders": [
        "order_id", "customer_id", "order_time", "status", "currency", "gross_amount", "discount_amount",
        "coupon_code", "updated_at",
    ],
    "order_items": ["order_id", "line_no", "product_id", "quantity", "unit_price", "created_at", "updated_at"],
    "events": ["customer_id", "session_id", "event_time", "event_type", "product_id", "device", "dwell_seconds"],
    "reviews": ["customer_id", "rating", "review_time", "updated_at"],
    "deliveries": [
        "delivery_id", "order_id", "shipped_time", "delivered_time", "promised_days", "updated_at",
    ],
    "campaign_contacts": ["customer_id", "channel", "sent_time", "opened_time", "clicked_time"],
    "fx_rates": ["date", "currency", "rate"],
}  # fmt: skip

# The subset both implementations compute: RFM and windowed session / event-type counts. Both get the
# columns build.py's rfm_features / sessions_of read (coupon_code, device, dwell_seconds: pandas ignores them).
SUBSET_INPUTS = {
    "customers": ["customer_id", "signup_time", "updated_at"],
    "orders": [
        "order_id", "customer_id", "order_time", "status", "currency", "gross_amount", "discount_amount",
        "coupon_code", "updated_at",
    ],
    "events": ["customer_id", "session_id", "event_time", "event_type", "device", "dwell_seconds"],
    "fx_rates": ["date", "currency", "rate"],
}  # fmt: skip
ORDER_WINDOWS = (30, 90, 365)
EVENT_WINDOWS = (1, 7, 30, 90)
EVENT_TYPES = {  # feature name -> event type counted (per session, windowed on session start)
    "product_views": "product_view",
    "searches": "search",
    "favorites": "favorite",
    "carts": "add_to_cart",
    "checkouts": "checkout",
}
RFM_COUNTS = ["orders_total", "revenue_total"] + [f"{k}_{w}d" for w in ORDER_WINDOWS for k in ("orders", "revenue")]
EVENT_COUNTS = [f"{k}_{w}d" for w in EVENT_WINDOWS for k in ("sessions", *EVENT_TYPES)]
SUBSET_COUNTS = RFM_COUNTS + EVENT_COUNTS  # zero when the customer has none
SUBSET_DAYS = ["recency_days", "days_since_last_session"]  # null when never
SUBSET = [*SUBSET_COUNTS, *SUBSET_DAYS, "aov_365d"]

TARGET_FLOOR_RATIO = 6.0
TARGET_PANDAS_RATIO = 2.0
TARGET_RSS_GB = 2.0


def bench_settings(home: Path) -> Settings:
    # explicit None: a developer's PROPENSITY_SHOP_DB etc. must not receive the bench shop (simulate drops tables)
    return Settings(home=home, lake=None, shop_db=None, landing=None, drops=None, s3_endpoint_url=None)


def at_midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # KiB on Linux


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# data -------------------------------------------------------------------------------------


def prepare(home: Path, customers: int, days: int, seed: int) -> dict[str, Any]:
    """Simulate + collect into ``home`` unless a lake made with the same parameters is there."""
    params = {"customers": customers, "days": days, "start": START.isoformat(), "seed": seed, "dirt_rate": 0.0}
    marker = home / MARKER
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("params") == params:
            return {**info, "reused": True}
        print(f"  {marker} records {info.get('params')}; regenerating")
    home.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    shutil.rmtree(home / "lake" / RAW, ignore_errors=True)  # a longer earlier run would leave extra days
    s = bench_settings(home)
    rep, sim_s = timed(lambda: simulate(s, customers, days, START, seed, DirtConfig(rate=0.0)))
    manifests, col_s = timed(lambda: collect(s, START, START + timedelta(days=days - 1)))
    info = {
        "params": params,
        "made_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "simulate_seconds": round(sim_s, 1),
        "simulate_phases": {k: round(v, 1) for k, v in rep.seconds_by_phase.items()},
        "collect_seconds": round(col_s, 1),
        "partitions": len(manifests),
        "rows": rows_per_table(manifests),
    }
    marker.write_text(json.dumps(info, indent=2))
    return {**info, "reused": False}


def table_files(lake: Lake, table: str) -> list[str]:
    """The Parquet files the raw zone's manifests list for ``table`` (what ShopData.load reads)."""
    out = []
    for parts in lake.partitions(RAW, table):
        doc = lake.manifest(RAW, table, parts) or {"files": []}
        base = partition_path(RAW, table, parts)
        out += [lake.store.arrow_path(f"{base}/{f['name']}") for f in doc["files"]]
    return out


def scan(lake: Lake, columns: dict[str, list[str]] | None) -> dict[str, float]:
    """Seconds per table for pyarrow alone to read ``columns`` (all when None) of every raw file."""
    secs = {}
    for name in TABLE_NAMES:
        files = table_files(lake, name)
        cols = None if columns is None else columns[name]
        t0 = time.perf_counter()
        if files:
            pq.read_table(files, columns=cols, filesystem=lake.store.arrow_fs, partitioning=None)
        secs[name] = time.perf_counter() - t0
    return secs


# the full build, in a fresh process ---------------------------------------------------------


def child_build(home: Path, snapshot: date, out: Path) -> None:
    s = bench_settings(home)
    t = at_midnight(snapshot)
    data, load_s = timed(lambda: ShopData.load(Lake.open(s.lake_uri), zone=RAW))
    rss_load = peak_rss_mb()
    past, asof_s = timed(lambda: data.as_of(t))
    feats, compute_s = timed(lambda: build.compute_features(past, t, s.base_currency))
    rss = peak_rss_mb()
    feats.write_parquet(out)
    doc = {
        "load_s": load_s,
        "as_of_s": asof_s,
        "compute_s": compute_s,
        "rss_load_mb": rss_load,
        "rss_mb": rss,
        "rows": feats.height,
        "features": feats.width - 1,
        "events": data.events.height,
    }
    print(json.dumps(doc))


def run_child_build(home: Path, snapshot: date, out: Path) -> tuple[dict[str, Any], float]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--home", str(home), "--snapshot", snapshot.isoformat()]
    proc = subprocess.run([*cmd, "--child-build", str(out)], check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1]), peak_rss_mb(resource.RUSAGE_CHILDREN)


# the subset in Polars (build.py's own functions) and in pandas -------------------------------


def polars_subset(d: ShopData, t: datetime, base: str) -> pl.DataFrame:
    past = d.as_of(t)
    o = build.orders_in_base(past, base)
    rfm = build.rfm_features(o, t)
    behaviour = build.behaviour_features(build.sessions_of(past.events), t)
    out = past.customers.select(KEY).join(rfm, on=KEY, how="left").join(behaviour, on=KEY, how="left")
    return out.select(KEY, *SUBSET).with_columns(pl.col(SUBSET_COUNTS).fill_null(0)).sort(KEY)


def pandas_subset(
    customers: pd.DataFrame, orders: pd.DataFrame, events: pd.DataFrame, fx: pd.DataFrame, t: datetime, base: str
) -> pd.DataFrame:
    """The same features as a data scientist would write them in pandas: vectorised, one groupby per grain."""
    t_ = pd.Timestamp(t)
    one_day = pd.Timedelta(days=1)

    # point in time: customers and orders as last known before T; an order only seen in a later
    # version (e.g. refunded after T) is taken as it was created, i.e. paid
    c = customers[customers["updated_at"] < t_].sort_values("updated_at").drop_duplicates(KEY, keep="last")
    c = c.loc[c["signup_time"] < t_, [KEY]].set_index(KEY)
    o = orders[orders["order_time"] < t_].assign(known=lambda x: x["updated_at"] < t_)
    o = o.sort_values(["order_id", "known", "updated_at"]).drop_duplicates("order_id", keep="last")
    o["status"] = o["status"].where(o["known"], "paid")

    # net amount in base currency at the rate of the order's day (latest rate on or before it)
    fx = fx.assign(date=fx["date"].astype("datetime64[us]"))
    fx = fx[fx["date"] < t_.tz_localize(None)].sort_values("date")
    o["day"] = o["order_time"].dt.tz_localize(None).dt.normalize()
    o = pd.merge_asof(o.sort_values("day"), fx, left_on="day", right_on="date", by="currency")
    rate = o["rate"].fillna(1.0).where(o["currency"] != base, 1.0)
    o["net"] = (o["gross_amount"] - o["discount_amount"]) * rate

    # RFM: one row per order with masked columns, then one groupby
    is_order = o["status"] != "cancelled"
    paid_net = o["net"].where(o["status"] == "paid", 0.0)
    cols = {
        "last_order": o["order_time"].where(is_order),
        "orders_total": is_order,
        "revenue_total": paid_net,
    }
    for w in ORDER_WINDOWS:
        inw = o["order_time"] >= t_ - w * one_day
        cols[f"orders_{w}d"] = is_order & inw
        cols[f"revenue_{w}d"] = paid_net.where(inw, 0.0)
    rfm = pd.DataFrame(cols).groupby(o[KEY]).agg({"last_order": "max", **{c: "sum" for c in cols if c != "last_order"}})
    rfm["recency_days"] = (t_ - rfm.pop("last_order")) / one_day
    rfm["aov_365d"] = (rfm["revenue_365d"] / rfm["orders_365d"]).where(rfm["orders_365d"] > 0)

    # sessions of known customers, with their event-type counts
    e = events[(events["event_time"] < t_) & events[KEY].notna()]
    sessions = e.groupby("session_id").agg(customer_id=(KEY, "first"), start=("event_time", "min"))
    per_type = pd.crosstab(e["session_id"], e["event_type"].astype("category"))
    sessions = sessions.join(per_type.reindex(columns=list(EVENT_TYPES.values()), fill_value=0))

    # windowed sums over sessions starting in the window, one groupby
    cols = {}
    for w in EVENT_WINDOWS:
        inw = sessions["start"] >= t_ - w * one_day
        cols[f"sessions_{w}d"] = inw
        for name, etype in EVENT_TYPES.items():
            cols[f"{name}_{w}d"] = sessions[etype].where(inw, 0)
    behaviour = pd.DataFrame(cols).groupby(sessions[KEY]).sum()
    behaviour["days_since_last_session"] = (t_ - sessions.groupby(KEY)["start"].max()) / one_day

    out = c.join(rfm).join(behaviour)
    out[SUBSET_COUNTS] = out[SUBSET_COUNTS].fillna(0)
    return out[SUBSET].sort_index().reset_index()


def assert_agree(label: str, pd_frame: pd.DataFrame, pl_frame: pl.DataFrame, columns: list[str]) -> int:
    """Same customers, and every shared column equal (nulls in the same places); returns columns checked."""
    got = pl_frame.select(KEY, *columns).sort(KEY)
    want = pd_frame.sort_values(KEY)
    assert got[KEY].to_list() == want[KEY].tolist(), f"{label}: different customers"
    for c in columns:
        a = want[c].to_numpy(dtype=float, na_value=np.nan)
        b = got[c].cast(pl.Float64).to_numpy()
        # build.py's day differences use dt.total_seconds(), which truncates to whole seconds
        atol = 1.0 / 86_400 if c in SUBSET_DAYS else 1e-6
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=atol, equal_nan=True, err_msg=f"{label}: {c}")
    return len(columns)


# profile -------------------------------------------------------------------------------------


def profile_build(lake: Lake, t: datetime, base: str) -> tuple[ShopData, dict[str, dict[str, float]]]:
    """Seconds per table for load (pyarrow read vs to Polars) and as_of, per feature group for compute."""
    prof: dict[str, dict[str, float]] = {"read": {}, "from_arrow": {}, "as_of": {}, "compute": {}}
    frames = {}
    for name in TABLE_NAMES:
        tab, prof["read"][name] = timed(lambda n=name: lake.read_table(RAW, n, schema=contract(n).arrow_schema))
        frames[name], prof["from_arrow"][name] = timed(lambda tab=tab: pl.from_arrow(tab))
    d = ShopData.from_frames(**frames)
    empty = ShopData.from_frames()
    for name in TABLE_NAMES:  # as_of on empty frames is free, so this isolates each table's cut
        _, prof["as_of"][name] = timed(lambda n=name: replace(empty, **{n: getattr(d, n)}).as_of(t))
    past = d.as_of(t)
    c = prof["compute"]
    o, c["orders_in_base"] = timed(lambda: build.orders_in_base(past, base))
    _, c["rfm_features"] = timed(lambda: build.rfm_features(o, t))
    _, c["item_features"] = timed(lambda: build.item_features(past, o, t))
    sessions, c["sessions_of"] = timed(lambda: build.sessions_of(past.events))
    _, c["behaviour_features"] = timed(lambda: build.behaviour_features(sessions, t))
    counts, c["category_counts"] = timed(lambda: build.category_counts(past, o, t))
    _, c["category_features"] = timed(lambda: build.category_features(*counts))
    _, c["experience_features"] = timed(lambda: build.experience_features(past, o, t))
    _, c["campaign_features"] = timed(lambda: build.campaign_features(past, t))
    _, c["profile_features"] = timed(lambda: build.profile_features(past, t))
    _, total = timed(lambda: build.compute_features(past, t, base))
    c["joins, zero-fill, sort (rest)"] = max(total - sum(c.values()), 0.0)
    return d, prof


def show_profile(title: str, secs: dict[str, float], total: float | None = None) -> None:
    total = total or sum(secs.values())
    print(f"  {title}: {sum(secs.values()):.2f} s")
    for k, v in sorted(secs.items(), key=lambda kv: -kv[1]):
        if v >= 0.005:
            print(f"    {k:<32}{v:7.2f} s  {100 * v / total:5.1f}%")


# main ------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=500_000)
    ap.add_argument("--days", type=int, default=DEFAULT_DAYS, help="simulated days (default %(default)s: ~10M events)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--home", type=Path, default=None, help="lake cache (default: /tmp/propensity-bench-features-...)")
    ap.add_argument("--snapshot", type=date.fromisoformat, default=None, help="T (default: the last simulated day)")
    ap.add_argument("--child-build", type=Path, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    home = (a.home or Path(tempfile.gettempdir()) / f"propensity-bench-features-{a.customers}c-{a.days}d").resolve()
    snapshot = a.snapshot or START + timedelta(days=a.days - 1)
    if a.child_build is not None:
        child_build(home, snapshot, a.child_build)
        return
    t = at_midnight(snapshot)
    s = bench_settings(home)
    base = s.base_currency

    print("== data preparation")
    info, prep_s = timed(lambda: prepare(home, a.customers, a.days, a.seed))
    p, rows = info["params"], info["rows"]
    how = "reused cached lake" if info["reused"] else "generated now"
    print(f"  {how} in {prep_s:.1f} s: {home}")
    print(
        f"  made {info['made_at']} by simulate({p['customers']:,} customers x {p['days']} days from {p['start']}, "
        f"seed {p['seed']}, DirtConfig(rate=0)) {info['simulate_seconds']:.1f} s "
        f"{info['simulate_phases']} + collect({info['partitions']} raw partitions) {info['collect_seconds']:.1f} s"
    )
    print("  raw rows: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    print(f"  snapshot T = {t.isoformat()} (validation skipped: features read the raw zone)")

    print("\n== full catalogue (fresh child process: ShopData.load of all columns + as_of + compute_features)")
    feats_path = home / f"features-{snapshot.isoformat()}.parquet"
    child, rss_children = run_child_build(home, snapshot, feats_path)
    full_s = child["load_s"] + child["as_of_s"] + child["compute_s"]
    rss_gb = rss_children / 1024
    print(f"  {child['rows']:,} customers x {child['features']} features from {child['events']:,} events")
    print(
        f"  load {child['load_s']:.2f} s | as_of {child['as_of_s']:.2f} s | compute_features {child['compute_s']:.2f} s"
        f" | total {full_s:.2f} s"
    )
    print(
        f"  peak RSS: after load {child['rss_load_mb']:,.0f} MB, whole build {child['rss_mb']:,.0f} MB "
        f"(RUSAGE_CHILDREN {rss_children:,.0f} MB)"
    )

    print("\n== scan floor (pyarrow.parquet.read_table, same files, warm)")
    lake = Lake.open(s.lake_uri)
    scan(lake, FEATURE_COLUMNS)
    floor = scan(lake, FEATURE_COLUMNS)
    floor_s = sum(floor.values())
    all_cols = scan(lake, None)
    print(f"  columns the features need: {floor_s:.2f} s   (all columns: {sum(all_cols.values()):.2f} s)")
    print("  per table (needed / all): " + ", ".join(f"{k} {floor[k]:.2f}/{all_cols[k]:.2f}" for k in TABLE_NAMES))

    print("\n== profile of the Polars build (this process)")
    d, prof = profile_build(lake, t, base)
    show_profile("load: lake.read_table (pyarrow, all columns)", prof["read"])
    show_profile("load: pl.from_arrow", prof["from_arrow"])
    show_profile("as_of, per table", prof["as_of"])
    show_profile("compute_features, per feature group", prof["compute"])
    d_cols, load_cols_s = timed(lambda: ShopData.load(lake, zone=RAW, columns=FEATURE_COLUMNS))
    same = build.compute_features(d_cols.as_of(t), t, base).equals(pl.read_parquet(feats_path))
    print(
        f"  ShopData.load(columns=FEATURE_COLUMNS): {load_cols_s:.2f} s vs {child['load_s']:.2f} s for all columns; "
        f"identical features: {same}"
    )
    del d_cols

    print("\n== subset: RFM + windowed session/event-type counts, from the same in-memory raw tables")
    sub = ShopData.from_frames(**{n: getattr(d, n).select(cols) for n, cols in SUBSET_INPUTS.items()})
    del d
    pl_out, pl_s = timed(lambda: polars_subset(sub, t, base))
    frames = {n: getattr(sub, n).to_pandas() for n in SUBSET_INPUTS}
    pd_out, pd_s = timed(
        lambda: pandas_subset(frames["customers"], frames["orders"], frames["events"], frames["fx_rates"], t, base)
    )
    n_cols = assert_agree("pandas vs polars subset", pd_out, pl_out, SUBSET)
    assert_agree("pandas vs full build", pd_out, pl.read_parquet(feats_path), SUBSET)
    print(f"  {len(pd_out):,} customers x {n_cols} features; pandas == Polars subset == full build (assert_allclose)")
    print(f"  pandas {pd_s:.2f} s | Polars (build.py functions, incl. as_of) {pl_s:.2f} s")
    print("  (the Polars side also computes the rest of rfm_features and behaviour_features: gaps, rates, dwell, ...)")

    print("\n== ratios")
    r_floor, r_pd = full_s / floor_s, pd_s / pl_s
    ok_floor, ok_pd, ok_rss = r_floor <= TARGET_FLOOR_RATIO, r_pd >= TARGET_PANDAS_RATIO, rss_gb < TARGET_RSS_GB
    print(f"  full catalogue / scan floor   {r_floor:5.1f}x   target <= {TARGET_FLOOR_RATIO:.0f}x  {verdict(ok_floor)}")
    print(f"  pandas subset / Polars subset {r_pd:5.1f}x   target >= {TARGET_PANDAS_RATIO:.0f}x  {verdict(ok_pd)}")
    print(f"  peak RSS of the build         {rss_gb:5.2f} GB  target < {TARGET_RSS_GB:.0f} GB  {verdict(ok_rss)}")
    print(
        f"  full catalogue {child['events'] / full_s:,.0f} events/s; "
        f"{pa.cpu_count()} CPU(s), polars threads {pl.thread_pool_size()}"
    )


if __name__ == "__main__":
    main()
