"""One-call validation of derived tables (feature snapshots, labels, scores).

Derived tables have no quarantine: a feature or score table that breaks a rule is a bug
upstream, so any failure raises and the caller publishes nothing. Each table declares its
rules once, e.g. scores::

    SCORE_CHECKS = [not_null("customer_id"), unique(["customer_id"]), between("score", 0, 1),
                    null_rate("score", 0.0), row_count(min_value=1)]
    check_frame("scores.churn", table, SCORE_CHECKS)
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import polars as pl
import pyarrow as pa

from propensity.errors import DataQualityError
from propensity.validation.checks import Check
from propensity.validation.runner import GXRunner, SuiteResult

_RUNNER: GXRunner | None = None


class FrameValidationError(DataQualityError):
    """A derived frame (features, profiles, labels, scores) breaks its checks: nothing of it is published."""


def _runner() -> GXRunner:
    global _RUNNER
    if _RUNNER is None:
        _RUNNER = GXRunner()
    return _RUNNER


def check_frame(
    name: str, data: pd.DataFrame | pa.Table | pl.DataFrame, checks: Sequence[Check], runner: GXRunner | None = None
) -> SuiteResult:
    """Validate ``data`` against ``checks``; raise :class:`FrameValidationError` naming every failure."""
    if isinstance(data, pl.DataFrame):
        data = data.to_arrow()
    df = data.to_pandas() if isinstance(data, pa.Table) else data.reset_index(drop=True)
    result = (runner or _runner()).run(name, df, checks)
    failed = result.failed()
    if failed:
        lines = []
        for r in failed:
            observed = r.observed
            if r.check.rule == "null_rate" and isinstance(observed, float):
                observed = f"{1.0 - observed:.1%}"  # GX reports the non-null proportion
            what = f"{r.unexpected_count:,} row(s)" if r.check.level == "row" else f"observed {observed}"
            sample = f" (e.g. {', '.join(map(str, r.sample[:3]))})" if r.sample else ""
            lines.append(f"{name}: {r.check.rule} on column {r.check.column or '*'}: {what} {r.check.reason}{sample}")
        raise FrameValidationError("\n".join(lines))
    return result
