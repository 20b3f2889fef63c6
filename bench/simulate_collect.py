"""Throughput of the simulator and of collection, with same-process floors as baselines.

    .venv/bin/python bench/simulate_collect.py --customers 100000 --days 365

Prints wall time and rows/s for each phase, and the ratio to a floor measured in the same
run on the same data: for the simulator, just writing its events as JSON lines; for
collection, just reading the landed files and writing one Parquet file per day with
pyarrow (no manifests, no contracts, no OLTP extraction).
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from propensity.collect import collect, rows_per_table
from propensity.config import DirtConfig, Settings
from propensity.simulate import simulate
from propensity.sources.landing import read_events
from propensity.storage import open_store


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--collect-days", type=int, default=None, help="days to collect (default: all)")
    ap.add_argument("--home", type=Path, default=None)
    a = ap.parse_args()
    home = a.home or Path(tempfile.mkdtemp(prefix="bench-"))
    s = Settings(home=home)
    start = date(2025, 1, 1)

    t0 = time.perf_counter()
    rep = simulate(s, a.customers, a.days, start, 1, DirtConfig())
    sim_s = time.perf_counter() - t0
    ev = rep.rows["events"]
    print(
        f"simulate {a.customers:,} customers x {a.days} days: {sim_s:.1f} s, {ev:,} events, {ev / sim_s:,.0f} events/s"
    )
    print("  phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in rep.seconds_by_phase.items()))

    # floor: serialising and writing the same events as JSON lines, nothing else
    landing = open_store(s.landing_uri)
    days = [start + timedelta(days=i) for i in range(a.days)]
    frames = [pl.from_arrow(read_events(landing, d)) for d in days]
    t0 = time.perf_counter()
    out = Path(tempfile.mkdtemp(prefix="floor-"))
    for i, df in enumerate(frames):
        buf = io.BytesIO()
        df.write_ndjson(buf)
        (out / f"{i}.jsonl").write_bytes(buf.getvalue())
    floor_s = time.perf_counter() - t0
    print(f"  floor (write the events as JSON lines only): {floor_s:.1f} s -> simulator/floor = {sim_s / floor_s:.1f}x")

    n = a.collect_days or a.days
    end = start + timedelta(days=n - 1)
    t0 = time.perf_counter()
    manifests = collect(s, start, end)
    col_s = time.perf_counter() - t0
    rows = sum(rows_per_table(manifests).values())
    print(f"collect {n} days: {col_s:.1f} s, {len(manifests)} partitions, {rows:,} rows, {rows / col_s:,.0f} rows/s")

    t0 = time.perf_counter()
    for i, d in enumerate(days[:n]):
        pq.write_table(read_events(landing, d), out / f"ev-{i}.parquet", compression="zstd")
    ev_floor = time.perf_counter() - t0
    t0 = time.perf_counter()
    collect(s, start, end, ["events"])
    ev_s = time.perf_counter() - t0
    print(
        f"  events only: {ev_s:.1f} s vs floor (read landed files + write Parquet) {ev_floor:.1f} s "
        f"-> collect/floor = {ev_s / ev_floor:.2f}x"
    )


if __name__ == "__main__":
    main()
