"""One full feature snapshot at scale, against a pyarrow scan floor and a pandas baseline.

    .venv/bin/python bench/features.py                      # 500k customers x 60 days, ~10M events
    .venv/bin/python bench/features.py --customers 20000    # quick check

Data: ``simulate`` (no dirt) + ``collect`` into the raw zone of a lake under ``--home``. The
lake is cached there with a marker recording how it was made, and reused by later runs with
the same parameters. Validation is skipped: the raw zone has the clean zone's schema.

Printed, from one run:

* the full catalogue as production runs it (``ShopData.load(lake)`` as ``SnapshotBuilder`` calls
  it, ``as_of(T)``, ``compute_features``), timed per phase in fresh child processes that import
  only the build; peak RSS is read with ``getrusage(RUSAGE_CHILDREN)``, so the simulator's and
  this process's memory do not count;
* the scan floor: pyarrow alone reading only the columns the features need from the same
  Parquet files (read once to warm the page cache, then timed);
* a representative subset (RFM + windowed session/event-type counts) in idiomatic pandas and
  with build.py's own Polars functions, from the same in-memory inputs, checked to agree
  numerically with each other and with the full build before they are compared;
* a profile of the Polars build (``as_of`` per table, ``compute_features`` per feature group),
  and the target ratios.

Every timed step runs ``--repeat`` times and the best is kept: on a shared machine the rest is
waiting for CPU (the load average is printed at the start and the end).
"""

from __future__ import annotations

import argparse
import hashlib
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
import polars.selectors as cs
import pyarrow as pa
import pyarrow.parquet as pq

import propensity
from propensity.collect import RAW, collect, rows_per_table
from propensity.config import DirtConfig, Settings
from propensity.features import build
from propensity.features.inputs import TABLE_NAMES, ShopData
from propensity.lake import Lake, partition_path
from propensity.simulate import simulate

START = date(2025, 1, 1)
DEFAULT_DAYS = 60  # signups spread over the window, so short runs are denser: 500k x 60 d ~ 10.3M events
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


def generator_digest() -> str:
    """Digest of the code that makes the lake (simulator, sources, collection, contracts, lake format)."""
    root = Path(propensity.__file__).parent
    files = [*(root / "simulate").glob("*.py"), *(root / "sources").glob("*.py")]
    files += [root / "collect.py", root / "contracts.py", root / "lake.py"]
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def prepare(home: Path, customers: int, days: int, seed: int, regenerate: bool = False) -> dict[str, Any]:
    """Simulate + collect into ``home`` unless a lake made with the same parameters is there."""
    params = {"customers": customers, "days": days, "start": START.isoformat(), "seed": seed, "dirt_rate": 0.0}
    marker = home / MARKER
    code = generator_digest()
    if marker.exists() and not regenerate:
        info = json.loads(marker.read_text())
        if info.get("params") == params:
            if info.get("code") != code:
                print(
                    f"  note: the cached lake was made by other simulator/collect code ({info.get('code')}, "
                    f"now {code}); reusing it, --regenerate rebuilds it"
                )
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
        "code": code,
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


def scan(lake: Lake, columns: dict[str, list[str]] | None, reader: str = "pyarrow") -> dict[str, float]:
    """Seconds per table to read ``columns`` (all when None) of every raw file, with pyarrow or Polars alone."""
    secs = {}
    for name in TABLE_NAMES:
        files = table_files(lake, name)
        cols = None if columns is None else columns[name]
        t0 = time.perf_counter()
        if files and reader == "pyarrow":
            pq.read_table(files, columns=cols, filesystem=lake.store.arrow_fs, partitioning=None)
        elif files:
            pl.read_parquet(files, columns=cols)
        secs[name] = time.perf_counter() - t0
    return secs


def best_scan(
    lake: Lake, columns: dict[str, list[str]] | None, repeat: int, reader: str = "pyarrow"
) -> dict[str, float]:
    scan(lake, columns, reader)  # warm the page cache
    return min((scan(lake, columns, reader) for _ in range(repeat)), key=lambda secs: sum(secs.values()))


# the full build, in a fresh process that imports only what the build needs ------------------------

CHILD = """
import json, resource, sys, time
from datetime import UTC, datetime
from propensity.features.build import compute_features
from propensity.features.inputs import USED_COLUMNS, ShopData
from propensity.lake import Lake

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

lake_uri, snapshot, base, out = sys.argv[1:]
t = datetime.fromisoformat(snapshot).replace(tzinfo=UTC)
t0 = time.perf_counter()
data = ShopData.load(Lake.open(lake_uri), zone="raw", columns=USED_COLUMNS)  # as SnapshotBuilder loads it
t1 = time.perf_counter()
rss_load = peak_mb()
past = data.as_of(t)
t2 = time.perf_counter()
feats = compute_features(past, t, base)
t3 = time.perf_counter()
doc = dict(load_s=t1 - t0, as_of_s=t2 - t1, compute_s=t3 - t2, rss_load_mb=rss_load, rss_mb=peak_mb(),
           rows=feats.height, features=feats.width - 1, events=data.events.height)
feats.write_parquet(out)
print(json.dumps(doc))
"""


def run_child_build(settings: Settings, t: datetime, out: Path) -> dict[str, Any]:
    """``ShopData.load`` + ``as_of`` + ``compute_features`` in a fresh interpreter; its timings and peak RSS."""
    args = [settings.lake_uri, t.replace(tzinfo=None).isoformat(), settings.base_currency, str(out)]
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], check=True, capture_output=True, text=True)
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    doc["total_s"] = doc["load_s"] + doc["as_of_s"] + doc["compute_s"]
    return doc


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
    per_type = e.groupby(["session_id", "event_type"]).size().unstack(fill_value=0)
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


def profile_build(d: ShopData, t: datetime, base: str) -> dict[str, dict[str, float]]:
    """Seconds per table for as_of, per feature group for compute_features (build.py's own functions)."""
    prof: dict[str, dict[str, float]] = {"as_of": {}, "compute": {}}
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
    c["(joins, zero-fill, sort: the rest)"] = max(total - sum(c.values()), 0.0)
    return prof


def show(title: str, secs: dict[str, float]) -> None:
    total = sum(secs.values())
    print(f"  {title}: {total:.2f} s")
    for k, v in sorted(secs.items(), key=lambda kv: -kv[1]):
        if v >= 0.005:
            print(f"    {k:<36}{v:6.2f} s {100 * v / total:5.1f}%")


# main ------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def load_average() -> str:
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "?"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--customers", type=int, default=500_000)
    ap.add_argument("--days", type=int, default=DEFAULT_DAYS, help="simulated days (default %(default)s: ~10M events)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--home", type=Path, default=None, help="lake cache (default: /tmp/propensity-bench-features-...)")
    ap.add_argument("--snapshot", type=date.fromisoformat, default=None, help="T (default: the last simulated day)")
    ap.add_argument("--regenerate", action="store_true", help="simulate + collect again even if cached")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each timed step; the best is kept (shared CPUs)")
    a = ap.parse_args()
    home = (a.home or Path(tempfile.gettempdir()) / f"propensity-bench-features-{a.customers}c-{a.days}d").resolve()
    snapshot = a.snapshot or START + timedelta(days=a.days - 1)
    t = at_midnight(snapshot)
    s = bench_settings(home)
    base = s.base_currency
    cpus = pa.cpu_count()
    print(f"{cpus} CPU(s), polars threads {pl.thread_pool_size()}, load average {load_average()}; best of {a.repeat}")

    print("\n== data preparation")
    info, prep_s = timed(lambda: prepare(home, a.customers, a.days, a.seed, a.regenerate))
    p, rows = info["params"], info["rows"]
    how = "reused the cached lake" if info["reused"] else "generated now"
    print(f"  {how} in {prep_s:.1f} s: {home}")
    print(
        f"  made {info['made_at']} by simulate({p['customers']:,} customers x {p['days']} days from {p['start']}, "
        f"seed {p['seed']}, DirtConfig(rate=0)) in {info['simulate_seconds']:.1f} s {info['simulate_phases']}, "
        f"then collect() of {info['partitions']} raw partitions in {info['collect_seconds']:.1f} s "
        f"(generator code {info.get('code', '?')})"
    )
    print("  raw rows: " + ", ".join(f"{k} {v:,}" for k, v in rows.items()))
    print(f"  snapshot T = {t.isoformat()} (validation skipped: features read the raw zone)")

    print(
        "\n== full catalogue: ShopData.load(lake) (as SnapshotBuilder calls it) + as_of + compute_features, "
        f"in {a.repeat} fresh process(es)"
    )
    feats_path = home / f"features-{snapshot.isoformat()}.parquet"
    runs = [run_child_build(s, t, feats_path) for _ in range(a.repeat)]
    rss_gb = peak_rss_mb(resource.RUSAGE_CHILDREN) / 1024  # the largest of the build processes
    child = min(runs, key=lambda r: r["total_s"])
    full_s = child["total_s"]
    print(f"  {child['rows']:,} customers x {child['features']} features from {child['events']:,} events")
    print(
        f"  load {child['load_s']:.2f} s | as_of {child['as_of_s']:.2f} s | compute_features {child['compute_s']:.2f} s"
        f" | total {full_s:.2f} s  ({child['events'] / full_s:,.0f} events/s)"
    )
    print("  all runs (s): " + ", ".join(f"{r['total_s']:.1f}" for r in runs))
    print(
        f"  peak RSS: after load {max(r['rss_load_mb'] for r in runs):,.0f} MB, "
        f"whole build {max(r['rss_mb'] for r in runs):,.0f} MB (getrusage RUSAGE_CHILDREN {rss_gb * 1024:,.0f} MB)"
    )

    print("\n== scan floor: pyarrow.parquet.read_table of the columns the features need, same files, warm")
    lake = Lake.open(s.lake_uri)
    floor = best_scan(lake, FEATURE_COLUMNS, a.repeat)
    floor_s = sum(floor.values())
    all_s = sum(best_scan(lake, None, a.repeat).values())
    native_s = sum(best_scan(lake, FEATURE_COLUMNS, a.repeat, reader="polars").values())
    print(
        f"  {floor_s:.2f} s   (pyarrow, all columns: {all_s:.2f} s; "
        f"polars.read_parquet, needed columns: {native_s:.2f} s)"
    )

    print("\n== profile of the Polars build (this process)")
    d, load_s = timed(lambda: ShopData.load(lake, zone=RAW))
    d_cols, load_cols_s = timed(lambda: ShopData.load(lake, zone=RAW, columns=FEATURE_COLUMNS))
    try:
        same = str(build.compute_features(d_cols.as_of(t), t, base).equals(pl.read_parquet(feats_path)))
    except pl.exceptions.ColumnNotFoundError as exc:
        same = f"no, FEATURE_COLUMNS is stale and the scan floor too low: {exc}".splitlines()[0]
    print(
        f"  ShopData.load: {load_s:.2f} s; with columns=FEATURE_COLUMNS: {load_cols_s:.2f} s "
        f"(features identical: {same}); scan floor {floor_s:.2f} s"
    )
    del d_cols
    prof = min((profile_build(d, t, base) for _ in range(a.repeat)), key=lambda p: sum(p["compute"].values()))
    show("as_of, per table", prof["as_of"])
    show("compute_features, per feature group", prof["compute"])

    print("\n== subset: RFM + windowed session/event-type counts, from the same in-memory raw tables")
    sub = ShopData.from_frames(**{n: getattr(d, n).select(cols) for n, cols in SUBSET_INPUTS.items()})
    del d
    pl_runs = [timed(lambda: polars_subset(sub, t, base)) for _ in range(a.repeat)]
    # converted after the Polars runs, so the conversion's garbage cannot slow them down, and to plain
    # strings, as pd.read_parquet would give them, whatever dtypes ShopData.load chooses
    to_str = (cs.enum() | cs.categorical()).cast(pl.String)
    frames = {n: getattr(sub, n).with_columns(to_str).to_pandas() for n in SUBSET_INPUTS}
    pd_runs = [
        timed(
            lambda: pandas_subset(frames["customers"], frames["orders"], frames["events"], frames["fx_rates"], t, base)
        )
        for _ in range(a.repeat)
    ]
    pl_out, pl_s = min(pl_runs, key=lambda r: r[1])
    pd_out, pd_s = min(pd_runs, key=lambda r: r[1])
    n_cols = assert_agree("pandas vs Polars subset", pd_out, pl_out, SUBSET)
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
    print(f"  load average at the end {load_average()} (on {cpus} CPU(s): above that, timings include waiting)")


if __name__ == "__main__":
    main()
