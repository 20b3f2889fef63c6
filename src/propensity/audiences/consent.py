"""Consent at decision time: the newest validated customer state narrows what a snapshot says.

A feature snapshot freezes consents as they were before its date, and it is reused for
days (scoring, reruns, partial audience runs). A customer who opts out after it was
built must still never be exported. So every audience run reads the consent flags of
every validated ``clean/customers`` partition, keeps each customer's newest row, and
combines it with the snapshot's flags in the direction that can only remove people:

* a channel is consented only when both the snapshot and the newest state say so;
* a customer is opted out when either says so.

A consent *granted* after the snapshot therefore waits for the next snapshot, while a
revocation is honoured at once; that asymmetry is the privacy rule.

A row the gate quarantined (for any rule: an unknown country code in the same update, a
malformed signup time) still tells us what the customer asked for. Its revocations count,
its grants do not: a quarantined row newer than the customer's newest clean row (or with no
usable ``updated_at``) can opt the customer out or withdraw a channel, never add one. Without
that, an opt-out written together with a typo elsewhere in the row was exported.
"""

from __future__ import annotations

import polars as pl

from propensity import history
from propensity.audiences.spec import CONSENT_COLUMN
from propensity.lake import Lake
from propensity.zones import QUARANTINE

KEY = "customer_id"
OPT_OUT = "global_opt_out"
CONSENTS = tuple(CONSENT_COLUMN.values())
FLAGS = (*CONSENTS, OPT_OUT)


COLUMNS = [KEY, "updated_at", *FLAGS]
SCHEMA = {KEY: pl.String, "updated_at": pl.Datetime("us", "UTC"), **{f: pl.Boolean for f in FLAGS}}


def latest_consent(lake: Lake) -> pl.DataFrame:
    """Each customer's consent flags as of the newest validated state, narrowed by the
    revocations in quarantined rows (``customer_id``, the flags as booleans; null = no word)."""
    rows, _ = history.read(lake, "customers", COLUMNS)
    clean = _typed(rows) if rows is not None else pl.DataFrame(schema=SCHEMA)
    clean = clean.with_row_index("__order")  # partitions come in date order: ties go to the later one
    newest = clean.sort(["updated_at", "__order"]).group_by(KEY, maintain_order=True).last().drop("__order")
    return with_revocations(newest, quarantined_rows(lake)).select(KEY, *FLAGS)


def quarantined_rows(lake: Lake) -> pl.DataFrame:
    """The consent columns of every quarantined customer row (their failing rule aside)."""
    table = lake.read_table(QUARANTINE, "customers")
    if table is None or table.num_rows == 0:
        return pl.DataFrame(schema=SCHEMA)
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return _typed(df.select([c for c in COLUMNS if c in df.columns]))


def _typed(df: pl.DataFrame) -> pl.DataFrame:
    """``df`` in :data:`SCHEMA` (a missing or unreadable column is null: no word on that flag)."""
    exprs = []
    for col, dtype in SCHEMA.items():
        present = col in df.columns
        exprs.append(pl.col(col).cast(dtype, strict=False) if present else pl.lit(None, dtype).alias(col))
    return df.select(exprs)


def with_revocations(newest: pl.DataFrame, quarantined: pl.DataFrame) -> pl.DataFrame:
    """``newest`` (one clean row per customer) narrowed by the quarantined rows that are not
    older than it: an opt-out or a withdrawn channel there counts, a grant does not."""
    q = quarantined.filter(pl.col(KEY).is_not_null()).join(
        newest.select(KEY, pl.col("updated_at").alias("__clean_at")), on=KEY, how="left"
    )
    current = (
        pl.col("__clean_at").is_null() | pl.col("updated_at").is_null() | (pl.col("updated_at") >= pl.col("__clean_at"))
    )
    revoked = (
        q.filter(current)
        .group_by(KEY)
        .agg(
            pl.col(OPT_OUT).fill_null(False).any().alias(f"__q_{OPT_OUT}"),
            *[(~pl.col(c).fill_null(True)).any().alias(f"__q_{c}") for c in CONSENTS],
        )
    )
    if revoked.height == 0:
        return newest
    merged = newest.join(revoked, on=KEY, how="full", coalesce=True)
    return merged.with_columns(
        pl.when(pl.col(f"__q_{OPT_OUT}").fill_null(False)).then(True).otherwise(pl.col(OPT_OUT)).alias(OPT_OUT),
        *[pl.when(pl.col(f"__q_{c}").fill_null(False)).then(False).otherwise(pl.col(c)).alias(c) for c in CONSENTS],
    ).drop([f"__q_{f}" for f in FLAGS])


def overlay(candidates: pl.DataFrame, latest: pl.DataFrame) -> pl.DataFrame:
    """``candidates`` with consent flags narrowed by ``latest`` (customers absent there keep theirs)."""
    joined = candidates.join(latest.rename({f: f"__new_{f}" for f in FLAGS}), on=KEY, how="left", maintain_order="left")
    exprs = []
    for f in FLAGS:
        if f not in candidates.columns:
            continue
        dtype = candidates.schema[f]
        old = pl.col(f).cast(pl.Boolean)
        new = pl.col(f"__new_{f}")
        if f == OPT_OUT:
            merged = old.fill_null(True) | new.fill_null(False)
        else:
            merged = old.fill_null(False) & new.fill_null(True)
        exprs.append(merged.cast(dtype).alias(f))
    return joined.with_columns(exprs).drop([f"__new_{f}" for f in FLAGS])


def still_contactable(members: pl.DataFrame, latest: pl.DataFrame) -> pl.Series:
    """Per published member: False when the newest state opts them out or revokes their channel."""
    m = members.select(KEY, "channel").join(latest, on=KEY, how="left", maintain_order="left")
    revoked = pl.col(OPT_OUT).fill_null(False)
    for ch, col in CONSENT_COLUMN.items():
        revoked = revoked | ((pl.col("channel") == ch) & ~pl.col(col).fill_null(True))
    return m.select((~revoked).alias("ok"))["ok"]
