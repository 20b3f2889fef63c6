"""File-based sources: clickstream JSON-lines in the landing area, and CSV drops.

A shop's tracker writes one JSON-lines file per day (``events/dt=YYYY-MM-DD/``); a
finance system drops one FX CSV per day (``fx_rates/fx_rates_YYYY-MM-DD.csv``). Both
can sit in a local folder or an S3 bucket: all I/O goes through :class:`Store`.
"""

from __future__ import annotations

import io
from datetime import date

import polars as pl
import pyarrow as pa

from propensity.contracts import EVENTS, FX_RATES, TableContract
from propensity.storage import Store

EVENTS_PREFIX = "events"
FX_PREFIX = "fx_rates"


def events_key(day: date, part: int = 0) -> str:
    return f"{EVENTS_PREFIX}/dt={day.isoformat()}/events-{part:04d}.jsonl"


def fx_key(day: date) -> str:
    return f"{FX_PREFIX}/fx_rates_{day.isoformat()}.csv"


def _to_polars_text(tc: TableContract, table: pa.Table) -> pl.DataFrame:
    """Timestamps as ISO-8601 UTC strings, the way trackers and exports write them."""
    df = pl.from_arrow(tc.conform(table))
    assert isinstance(df, pl.DataFrame)
    exprs = []
    for c in tc.columns:
        if c.dtype == "timestamp":
            exprs.append(pl.col(c.name).dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
        elif c.dtype == "date":
            exprs.append(pl.col(c.name).dt.strftime("%Y-%m-%d"))
    return df.with_columns(exprs) if exprs else df


def _from_text(tc: TableContract, df: pl.DataFrame, where: str) -> pa.Table:
    exprs = []
    for c in tc.columns:
        if c.name not in df.columns:
            exprs.append(pl.lit(None).alias(c.name))
        elif c.dtype == "timestamp":
            exprs.append(pl.col(c.name).cast(pl.String).str.to_datetime(time_zone="UTC", time_unit="us", strict=True))
        elif c.dtype == "date":
            exprs.append(pl.col(c.name).cast(pl.String).str.to_date("%Y-%m-%d", strict=True))
    try:
        df = df.with_columns(exprs) if exprs else df
    except pl.exceptions.PolarsError as exc:
        raise ValueError(f"{where}: cannot parse {tc.name}: {exc}") from exc
    table = df.to_arrow()
    # polars writes large_string; the contract says string
    return tc.conform(table.select([n for n in tc.names]))


def write_events(store: Store, day: date, table: pa.Table) -> str:
    key = events_key(day)
    buf = io.BytesIO()
    _to_polars_text(EVENTS, table).write_ndjson(buf)
    store.put_bytes(key, buf.getvalue())
    return key


def read_events(store: Store, day: date) -> pa.Table:
    """All event files landed for ``day`` (empty table when none landed)."""
    keys = [k for k in store.list(f"{EVENTS_PREFIX}/dt={day.isoformat()}/") if k.endswith(".jsonl")]
    if not keys:
        return EVENTS.empty()
    schema = {c.name: pl.String if c.dtype in ("string", "timestamp") else None for c in EVENTS.columns}
    schema["dwell_seconds"] = pl.Float64
    frames = []
    for key in keys:
        data = store.get_bytes(key)
        if not data.strip():
            continue
        frames.append(pl.read_ndjson(io.BytesIO(data), schema=schema))  # type: ignore[arg-type]
    if not frames:
        return EVENTS.empty()
    return _from_text(EVENTS, pl.concat(frames), f"{store.uri}/{EVENTS_PREFIX}/dt={day}")


def write_fx(store: Store, day: date, table: pa.Table) -> str:
    key = fx_key(day)
    buf = io.BytesIO()
    _to_polars_text(FX_RATES, table).write_csv(buf)
    store.put_bytes(key, buf.getvalue())
    return key


def read_fx(store: Store, day: date) -> pa.Table:
    key = fx_key(day)
    if not store.exists(key):
        return FX_RATES.empty()
    where = f"{store.uri}/{key}"
    try:
        df = pl.read_csv(io.BytesIO(store.get_bytes(key)), schema_overrides={"date": pl.String, "rate": pl.Float64})
    except pl.exceptions.PolarsError as exc:  # extra fields (a decimal comma), bytes that are not UTF-8
        raise ValueError(f"{where}: cannot read fx_rates CSV: {' '.join(str(exc).split())}") from exc
    return _from_text(FX_RATES, df, where)
