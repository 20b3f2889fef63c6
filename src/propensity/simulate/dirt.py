"""Deliberate dirt: the defects real shop feeds carry, injected at a set rate per type.

Each function takes clean rows and returns rows with one defect type mixed in, drawn
from its own seeded generator so a run stays deterministic. The validation gates are
tested against exactly these defects.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from propensity.config import DirtConfig

YEAR_US = 365 * 86_400_000_000


def _pick(rng: np.random.Generator, n: int, rate: float) -> np.ndarray:
    return rng.random(n) < rate


def events(df: pl.DataFrame, cfg: DirtConfig, rng: np.random.Generator, day_index: int) -> pl.DataFrame:
    n = df.height
    if n == 0 or cfg.rate <= 0:
        return df
    if cfg.null_ids:
        hit = pl.Series(_pick(rng, n, cfg.rate))
        df = df.with_columns(pl.when(hit).then(None).otherwise(pl.col("event_id")).alias("event_id"))
    if cfg.future_timestamps:
        hit = pl.Series(_pick(rng, n, cfg.rate))
        shifted = pl.col("event_time") + pl.duration(days=int(rng.integers(400, 1200)))
        df = df.with_columns(pl.when(hit).then(shifted).otherwise(pl.col("event_time")).alias("event_time"))
    if cfg.duplicate_events:
        dup = df.filter(pl.Series(_pick(rng, n, cfg.rate)))
        df = pl.concat([df, dup])
    if cfg.bot_sessions and rng.random() < min(1.0, cfg.rate * 50):
        k = int(rng.integers(1500, 4000))
        base = df.select(pl.col("event_time").min()).item()
        bot = pl.DataFrame(
            {
                "event_id": [f"B{day_index:05d}{i:06d}" for i in range(k)],
                "customer_id": pl.Series([None] * k, dtype=pl.String),
                "session_id": [f"BOT{day_index:06d}"] * k,
                "event_time": [base] * k,
                "event_type": ["product_view"] * k,
                "product_id": pl.Series([None] * k, dtype=pl.String),
                "device": ["desktop"] * k,
                "traffic_source": ["direct"] * k,
                "dwell_seconds": np.round(rng.exponential(0.2, k), 2),
            },
            schema=df.schema,
        ).with_columns(pl.col("event_time") + pl.duration(milliseconds=pl.int_range(0, k) * 150))
        df = pl.concat([df, bot])
    return df


def customers(df: pl.DataFrame, cfg: DirtConfig, rng: np.random.Generator) -> pl.DataFrame:
    if not cfg.unknown_codes or df.height == 0:
        return df
    hit = pl.Series(_pick(rng, df.height, cfg.rate))
    hit2 = pl.Series(_pick(rng, df.height, cfg.rate))
    return df.with_columns(
        pl.when(hit).then(pl.lit("XX")).otherwise(pl.col("country")).alias("country"),
        pl.when(hit2).then(pl.lit("XXX")).otherwise(pl.col("currency")).alias("currency"),
    )


def orders(df: pl.DataFrame, cfg: DirtConfig, rng: np.random.Generator) -> pl.DataFrame:
    if not cfg.null_ids or df.height == 0:
        return df
    hit = pl.Series(_pick(rng, df.height, cfg.rate))
    return df.with_columns(pl.when(hit).then(None).otherwise(pl.col("customer_id")).alias("customer_id"))


def order_items(df: pl.DataFrame, cfg: DirtConfig, rng: np.random.Generator) -> pl.DataFrame:
    n = df.height
    if n == 0:
        return df
    if cfg.negative_prices:
        hit = pl.Series(_pick(rng, n, cfg.rate))
        df = df.with_columns(
            pl.when(hit).then(-pl.col("unit_price")).otherwise(pl.col("unit_price")).alias("unit_price")
        )
    if cfg.zero_quantities:
        hit = pl.Series(_pick(rng, n, cfg.rate))
        df = df.with_columns(pl.when(hit).then(0).otherwise(pl.col("quantity")).alias("quantity"))
    if cfg.orphan_order_items:
        orphans = df.filter(pl.Series(_pick(rng, n, cfg.rate))).with_columns(
            ("X" + pl.col("order_id")).alias("order_id")
        )
        df = pl.concat([df, orphans])
    return df
