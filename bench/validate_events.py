"""Throughput of the raw-zone gate on one big events partition, with a same-process I/O floor.

    .venv/bin/python bench/validate_events.py --rows 1000000

Simulates a shop (default dirt on, so the gate has duplicates, null ids, future timestamps
and bot sessions to quarantine), collects its customers and products into raw (the parent
keys the foreign-key checks read), then stacks the landed clickstream of consecutive days
into ONE raw partition of ``--rows`` events: each day's events are shifted by whole days onto
the last simulated day, so timestamps keep their diurnal shape and fall inside the partition.

Times ``Gate(settings).validate([day], ["events"])`` end to end (read, great-expectations,
quarantine and clean writes), and as the floor the same partition read and written back
through ``Lake.write_partition`` (same Parquet encoding, same manifest commit), then prints
both, rows/s and the ratio.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from propensity.collect import collect
from propensity.config import DirtConfig, Settings
from propensity.lake import Lake
from propensity.simulate import simulate
from propensity.sources.landing import read_events
from propensity.storage import open_store
from propensity.validation import Gate

TARGET_SECONDS = 60.0


def stacked_events(settings: Settings, start: date, days: int, rows: int) -> tuple[pa.Table, date]:
    """The last ``rows`` landed events, every day shifted onto the last simulated day."""
    landing = open_store(settings.landing_uri)
    last = start + timedelta(days=days - 1)
    parts: list[pa.Table] = []
    have = 0
    for i in range(days):
        day = last - timedelta(days=i)
        t = read_events(landing, day)
        if i:
            shift = pa.scalar(timedelta(days=i), pa.duration("us"))
            t = t.set_column(
                t.schema.get_field_index("event_time"), "event_time", pc.add(t.column("event_time"), shift)
            )
        parts.append(t)
        have += t.num_rows
        if have >= rows:
            break
    if have < rows:
        raise SystemExit(f"only {have:,} events landed in {days} days; raise --customers or --days")
    return pa.concat_tables(parts).slice(0, rows).combine_chunks(), last


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--dirt", type=float, default=DirtConfig().rate, help="dirt rate (0 for a clean shop)")
    ap.add_argument("--no-docs", action="store_true", help="skip the great-expectations Data Docs update")
    ap.add_argument("--home", type=Path, default=None)
    a = ap.parse_args()
    home = a.home or Path(tempfile.mkdtemp(prefix="bench-validate-"))
    settings = Settings(home=home, validation={"docs": not a.no_docs})
    start = date(2025, 1, 1)

    t0 = time.perf_counter()
    simulate(settings, a.customers, a.days, start, 1, DirtConfig(rate=a.dirt))
    end = start + timedelta(days=a.days - 1)
    collect(settings, start, end, ["customers", "products"])
    events, day = stacked_events(settings, start, a.days, a.rows)
    lake = Lake.open(settings.lake_uri)
    parts = {"dt": day.isoformat()}
    lake.write_partition("raw", "events", parts, events, {"source": "clickstream", "bench": True})
    print(
        f"setup: {a.customers:,} customers x {a.days} days simulated, {events.num_rows:,} events stacked into "
        f"raw/events/dt={day} ({lake.manifest('raw', 'events', parts)['files'][0]['bytes'] / 1e6:.1f} MB), "
        f"{time.perf_counter() - t0:.1f} s"
    )

    # floor: read the partition and write it back through the lake, nothing else
    lake.read_partition("raw", "events", parts)  # warm the page cache for both measurements
    t0 = time.perf_counter()
    t = lake.read_partition("raw", "events", parts)
    lake.write_partition("floor", "events", parts, t)
    floor_s = time.perf_counter() - t0

    gate = Gate(settings)
    spent: dict[str, float] = defaultdict(float)

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t

        return wrapper

    gate.runner.run = timed("great-expectations", gate.runner.run)
    gate.lake.write_partition = timed("clean+quarantine writes", gate.lake.write_partition)
    gate.lake.read_partition = timed("raw read", gate.lake.read_partition)
    gate.parent_keys = timed("parent keys", gate.parent_keys)
    t0 = time.perf_counter()
    [out] = gate.validate([day], ["events"])
    gate_s = time.perf_counter() - t0

    n = out.rows_in
    print(out.summary())
    for f in out.findings + out.critical:
        print(f"  {f[:160]}")
    print(f"floor (read + write back as Parquet): {floor_s:6.2f} s  {n / floor_s:>12,.0f} rows/s")
    print(f"gate end to end:                      {gate_s:6.2f} s  {n / gate_s:>12,.0f} rows/s")
    other = gate_s - sum(spent.values())
    print("  " + ", ".join(f"{k} {v:.2f} s" for k, v in spent.items()) + f", rest (helpers, pandas) {other:.2f} s")
    ratio = gate_s / floor_s if floor_s else math.inf
    verdict = "OK" if gate_s < TARGET_SECONDS else "OVER TARGET"
    docs = "off" if a.no_docs else "on"
    print(f"ratio gate/floor: {ratio:.1f}x; target < {TARGET_SECONDS:.0f} s: {verdict} (docs={docs})")


if __name__ == "__main__":
    main()
