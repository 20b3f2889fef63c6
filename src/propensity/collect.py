"""Collection: extract each source for one data interval into the raw zone.

One call handles one day ``[D, D+1)`` for a set of tables and is idempotent: the
partition ``raw/<table>/dt=D`` is replaced atomically (see :mod:`propensity.lake`), so
re-running a date, or a whole backfill, gives the same bytes and counts. OLTP tables are
extracted by their watermark (``updated_at``), clickstream by landing day, FX by drop.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa

from propensity.config import Settings
from propensity.contracts import TABLES, contract
from propensity.lake import Lake
from propensity.sources.landing import read_events, read_fx
from propensity.sources.oltp import ShopDB
from propensity.storage import open_store
from propensity.zones import RAW


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def days(start: date, end: date) -> list[date]:
    """Every date from ``start`` to ``end`` inclusive."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


@dataclass
class Collector:
    """Holds open connections to the sources and the lake for a run of many days."""

    settings: Settings

    def __post_init__(self) -> None:
        s = self.settings
        self.lake = Lake.open(s.lake_uri, s.s3_endpoint_url)
        self.db = ShopDB(s.shop_db_url)
        self.landing = open_store(s.landing_uri, s.s3_endpoint_url)
        self.drops = open_store(s.drops_uri, s.s3_endpoint_url)

    def source_uri(self, table: str) -> str:
        src = contract(table).source
        if src == "oltp":
            return self.db.engine.url.render_as_string(hide_password=True)
        return self.landing.uri if src == "clickstream" else self.drops.uri

    def extract(self, table: str, day: date) -> pa.Table:
        src = contract(table).source
        if src == "oltp":
            return self.db.extract(table, *day_bounds(day))
        if src == "clickstream":
            return read_events(self.landing, day)
        return read_fx(self.drops, day)

    def collect_day(self, day: date, tables: Iterable[str] | None = None) -> list[dict[str, Any]]:
        manifests = []
        for name in tables or TABLES:
            tc = contract(name)
            t0 = time.perf_counter()
            data = self.extract(name, day)
            start, end = day_bounds(day)
            manifests.append(
                self.lake.write_partition(
                    RAW,
                    name,
                    {"dt": day.isoformat()},
                    data,
                    {
                        "source": tc.source,
                        "source_uri": self.source_uri(name),
                        "extracted_at": datetime.now(UTC).isoformat(timespec="seconds"),
                        "interval": [start.isoformat(), end.isoformat()],
                        "schema_hash": tc.schema_hash,
                        "extract_seconds": round(time.perf_counter() - t0, 4),
                    },
                )
            )
        return manifests

    def collect_days(
        self, days: Sequence[date], tables: Iterable[str] | None = None
    ) -> Iterator[tuple[date, list[dict[str, Any]]]]:
        """Each day with its manifests, in day order, a few days at once: extraction queries,
        Parquet encoding and fsyncs overlap (the shop database pools its connections, and
        each day is its own set of partition commits)."""
        with ThreadPoolExecutor(self.lake.io_threads) as pool:
            yield from zip(days, pool.map(lambda d: self.collect_day(d, tables), days), strict=True)

    def close(self) -> None:
        self.db.dispose()


def collect(settings: Settings, start: date, end: date, tables: Iterable[str] | None = None) -> list[dict]:
    """Backfill ``[start, end]`` day by day; returns every manifest written."""
    names = list(tables) if tables else list(TABLES)
    collector = Collector(settings)
    try:
        return [m for _, manifests in collector.collect_days(days(start, end), names) for m in manifests]
    finally:
        collector.close()


def rows_per_table(manifests: Iterable[dict]) -> dict[str, int]:
    counts: dict[str, int] = dict.fromkeys(TABLES, 0)
    for m in manifests:
        counts[m["table"]] = counts.get(m["table"], 0) + int(m["row_count"])
    return counts
