"""Profile tags (用户画像) per snapshot: lifecycle stage, RFM scores and segment, value tier, interests.

Tags are derived from the snapshot's features (so they are point-in-time by
construction) and carry the sensitive attributes (gender, age band) that fairness and
composition reports need but models do not use.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from propensity.features.build import KEY, category_counts, orders_in_base
from propensity.features.inputs import ShopData


def lifecycle_stage() -> pl.Expr:
    rec = pl.col("recency_days")
    ses = pl.col("days_since_last_session")
    return (
        pl.when(pl.col("signup_tenure_days") < 30)
        .then(pl.lit("new"))
        .when((rec <= 90) | (ses <= 30))
        .then(pl.lit("active"))
        .when((rec <= 180) | (ses <= 90))
        .then(pl.lit("at-risk"))
        .when((rec <= 365) | (ses <= 180))
        .then(pl.lit("lapsed"))
        .otherwise(pl.lit("churned"))
    )


def rfm_segment() -> pl.Expr:
    r, f = pl.col("rfm_r"), pl.col("rfm_f")
    return (
        pl.when(r.is_null())
        .then(pl.lit("no purchase"))
        .when((r >= 4) & (f >= 4))
        .then(pl.lit("champions"))
        .when((r >= 3) & (f >= 3))
        .then(pl.lit("loyal"))
        .when(r >= 4)
        .then(pl.lit("promising"))
        .when((r <= 2) & (f >= 3))
        .then(pl.lit("at risk"))
        .when(r <= 2)
        .then(pl.lit("hibernating"))
        .otherwise(pl.lit("need attention"))
    )


#: per-customer profile columns computed from the customer's own rows (a shard computes them)
INPUT_COLUMNS = ["top_interests", "gender", "age_band"]


def profile_inputs(features: pl.DataFrame, past: ShopData, t: datetime, base_currency: str) -> pl.DataFrame:
    """The profile columns that need the customer's own history, not the other customers:
    top interests (from views and purchases) and the sensitive attributes, one row per
    customer of ``features``. A feature shard computes them for its customers, so merging
    shards never reads the clean zone again."""
    o = orders_in_base(past, base_currency)
    counts, _ = category_counts(past, o, t)
    interests = counts.group_by(KEY, maintain_order=True).agg(
        pl.col("category").head(3).str.join("|").alias("top_interests")
    )
    sensitive = past.customers.select(KEY, "gender", "age_band")
    return (
        features.select(KEY)
        .join(interests, on=KEY, how="left")
        .join(sensitive, on=KEY, how="left")
        .select(KEY, *INPUT_COLUMNS)
    )


def rank_profiles(features: pl.DataFrame, inputs: pl.DataFrame, t: datetime) -> pl.DataFrame:
    """Profile tags from the features of every customer (RFM quintiles and value tiers rank
    customers against each other) and the per-customer :func:`profile_inputs`."""
    f = features.with_columns(
        # rank recency among buyers: most recent gets 5
        pl.when(pl.col("orders_365d") > 0).then(pl.col("recency_days")).otherwise(None).alias("__rec"),
    )
    buyers = f.filter(pl.col("orders_365d") > 0)
    n = buyers.height
    scored = buyers.select(
        KEY,
        ((pl.col("__rec").rank("ordinal", descending=True)) * 5 / max(n, 1))
        .ceil()
        .clip(1, 5)
        .cast(pl.Int8)
        .alias("rfm_r"),
        (pl.col("orders_365d").rank("ordinal") * 5 / max(n, 1)).ceil().clip(1, 5).cast(pl.Int8).alias("rfm_f"),
        (pl.col("revenue_365d").rank("ordinal") * 5 / max(n, 1)).ceil().clip(1, 5).cast(pl.Int8).alias("rfm_m"),
        (pl.col("revenue_365d").rank("ordinal", descending=True) / max(n, 1)).alias("__value_rank"),
    )
    out = (
        f.select(KEY, "signup_tenure_days", "recency_days", "days_since_last_session", "orders_365d", "revenue_365d")
        .join(scored, on=KEY, how="left")
        .join(inputs, on=KEY, how="left")
        .with_columns(
            lifecycle_stage().alias("lifecycle_stage"),
            rfm_segment().alias("rfm_segment"),
            pl.when(pl.col("__value_rank").is_null())
            .then(pl.lit("none"))
            .when(pl.col("__value_rank") <= 0.1)
            .then(pl.lit("high"))
            .when(pl.col("__value_rank") <= 0.4)
            .then(pl.lit("medium"))
            .otherwise(pl.lit("low"))
            .alias("value_tier"),
            pl.lit(t).dt.cast_time_unit("us").alias("snapshot"),
        )
    )
    return out.select(
        KEY,
        "snapshot",
        "lifecycle_stage",
        "rfm_r",
        "rfm_f",
        "rfm_m",
        "rfm_segment",
        "value_tier",
        "top_interests",
        "gender",
        "age_band",
    ).sort(KEY)


def build_profiles(features: pl.DataFrame, past: ShopData, t: datetime, base_currency: str) -> pl.DataFrame:
    """Profile tags of every customer of ``features`` at ``t``."""
    return rank_profiles(features, profile_inputs(features, past, t, base_currency), t)
