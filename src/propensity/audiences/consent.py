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
"""

from __future__ import annotations

import polars as pl

from propensity import history
from propensity.audiences.spec import CONSENT_COLUMN
from propensity.lake import Lake

KEY = "customer_id"
OPT_OUT = "global_opt_out"
CONSENTS = tuple(CONSENT_COLUMN.values())
FLAGS = (*CONSENTS, OPT_OUT)


def latest_consent(lake: Lake) -> pl.DataFrame:
    """Each customer's newest validated consent flags (``customer_id``, the flags as booleans)."""
    rows, _ = history.read(lake, "customers", [KEY, "updated_at", *FLAGS])
    if rows is None:
        return pl.DataFrame(schema={KEY: pl.String, **{f: pl.Boolean for f in FLAGS}})
    rows = rows.with_row_index("__order")  # partitions come in date order: ties go to the later one
    newest = rows.sort(["updated_at", "__order"]).group_by(KEY, maintain_order=True).last()
    return newest.select(pl.col(KEY).cast(pl.String), *[pl.col(f).cast(pl.Boolean) for f in FLAGS])


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
