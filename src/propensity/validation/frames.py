"""One-call validation of derived tables (feature snapshots, profiles, labels, scores), in Polars.

Derived tables have no quarantine: a feature or score table that breaks a rule is a bug
upstream, so any failure raises and the caller publishes nothing. Each table declares its
rules once, in the same vocabulary as the raw-zone gate (:mod:`.checks`), e.g. scores::

    SCORE_CHECKS = [not_null("customer_id"), unique(["customer_id"]), between("score", 0, 1),
                    null_rate("score", 0.0), row_count(min_value=1)]
    check_frame("scores.churn", table, SCORE_CHECKS)

The checks run here as vectorised Polars expressions with great-expectations' semantics
(column-map rules ignore nulls; uniqueness counts every copy of a duplicated value), so a
snapshot or score shard costs its data, not GX's import and context start-up (8 s, more
than the feature work of a 3,000-customer shop). The gate keeps GX and its Data Docs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from propensity.errors import DataQualityError
from propensity.validation.checks import Check, Expect

if TYPE_CHECKING:
    import pandas as pd

SAMPLE = 5


class FrameValidationError(DataQualityError):
    """A derived frame (features, profiles, labels, scores) breaks its checks: nothing of it is published."""


class CheckOutcome:
    """One check's verdict on one frame: failing rows (row checks) or the observed value (table checks)."""

    def __init__(self, check: Check, success: bool, unexpected_count: int = 0, observed: Any = None, sample=()):
        self.check, self.success, self.unexpected_count = check, success, unexpected_count
        self.observed, self.sample = observed, list(sample)[:SAMPLE]


class FrameResult:
    def __init__(self, name: str, results: list[CheckOutcome]):
        self.name, self.results = name, results
        self.success = all(r.success for r in results)

    def failed(self) -> list[CheckOutcome]:
        return [r for r in self.results if not r.success]


def _bound(col: pl.Expr, lo: Any, hi: Any, strict_lo: bool, strict_hi: bool) -> pl.Expr:
    ok = pl.lit(True)
    if lo is not None:
        ok = ok & ((col > lo) if strict_lo else (col >= lo))
    if hi is not None:
        ok = ok & ((col < hi) if strict_hi else (col <= hi))
    return ok


def _table(check: Check, observed: Any, ok: bool) -> CheckOutcome:
    return CheckOutcome(check, bool(ok), 0, observed)


def _unique(cols: list[str]) -> pl.Expr:
    present = pl.all_horizontal([pl.col(c).is_not_null() for c in cols])
    return present & pl.struct(cols).is_duplicated()


def _pair(k: dict[str, Any]) -> pl.Expr:
    a, b = pl.col(k["column_A"]), pl.col(k["column_B"])
    return ~((a >= b) if k.get("or_equal") else (a > b))


#: row checks: an expression marking the failing rows (null = not failing, as GX skips nulls)
#: and the column whose values a failure quotes
ROW_RULES: dict[str, Callable[[dict[str, Any]], tuple[pl.Expr, str]]] = {
    "ExpectColumnValuesToNotBeNull": lambda k: (pl.col(k["column"]).is_null(), k["column"]),
    "ExpectColumnValuesToBeUnique": lambda k: (_unique([k["column"]]), k["column"]),
    "ExpectCompoundColumnsToBeUnique": lambda k: (_unique(list(k["column_list"])), k["column_list"][0]),
    "ExpectColumnValuesToBeInSet": lambda k: (
        pl.col(k["column"]).is_not_null() & ~pl.col(k["column"]).is_in(list(k["value_set"])),
        k["column"],
    ),
    "ExpectColumnValuesToBeBetween": lambda k: (
        ~_bound(
            pl.col(k["column"]),
            k.get("min_value"),
            k.get("max_value"),
            k.get("strict_min", False),
            k.get("strict_max", False),
        ),
        k["column"],
    ),
    "ExpectColumnPairValuesAToBeGreaterThanB": lambda k: (_pair(k), k["column_B"]),
}


def _non_null(df: pl.DataFrame, check: Check, k: dict[str, Any]) -> CheckOutcome:
    share = 1.0 - df[k["column"]].null_count() / df.height if df.height else 1.0
    lo, hi = k.get("min_value"), k.get("max_value")
    return _table(check, share, (lo is None or share >= lo) and (hi is None or share <= hi))


#: table checks: the verdict from the frame's shape or one aggregate
TABLE_RULES: dict[str, Callable[[pl.DataFrame, Check, dict[str, Any]], CheckOutcome]] = {
    "ExpectTableRowCountToBeBetween": lambda df, c, k: _table(
        c,
        df.height,
        (k.get("min_value") is None or df.height >= k["min_value"])
        and (k.get("max_value") is None or df.height <= k["max_value"]),
    ),
    "ExpectColumnProportionOfNonNullValuesToBeBetween": _non_null,
    "ExpectTableColumnsToMatchSet": lambda df, c, k: _table(c, df.columns, set(df.columns) == set(k["column_set"])),
}


def _expect(check: Check) -> Expect:
    exp = check.expectation
    if not isinstance(exp, Expect) or exp.kind not in ROW_RULES | TABLE_RULES:
        raise TypeError(f"check {check.id} has no Polars evaluation ({type(exp).__name__}); run it through the gate")
    return exp


def _missing_columns(df: pl.DataFrame, exp: Expect) -> list[str]:
    named = [exp.kwargs.get(k) for k in ("column", "column_A", "column_B")] + list(exp.kwargs.get("column_list", []))
    return [c for c in named if c is not None and c not in df.columns]


def evaluate_all(df: pl.DataFrame, checks: Sequence[Check]) -> list[CheckOutcome]:
    """Every check on ``df``: the row checks' failure counts in one pass over the frame, samples
    only for the failing ones (a feature table has a hundred range checks)."""
    outcomes: dict[int, CheckOutcome] = {}
    rows: dict[int, tuple[pl.Expr, str]] = {}
    for i, c in enumerate(checks):
        exp = _expect(c)
        missing = _missing_columns(df, exp)
        if missing:
            outcomes[i] = _table(c, f"column {missing[0]!r} is missing", False)
        elif exp.kind in ROW_RULES:
            rows[i] = ROW_RULES[exp.kind](exp.kwargs)
        else:
            outcomes[i] = TABLE_RULES[exp.kind](df, c, exp.kwargs)
    if rows:
        counts = df.select([bad.fill_null(False).sum().alias(str(i)) for i, (bad, _) in rows.items()]).row(0)
        for (i, (bad, column)), n in zip(rows.items(), counts, strict=True):
            sample = df.filter(bad.fill_null(False))[column].head(SAMPLE).to_list() if n else []
            outcomes[i] = CheckOutcome(checks[i], n == 0, int(n), None, sample)
    return [outcomes[i] for i in range(len(checks))]


def evaluate(df: pl.DataFrame, check: Check) -> CheckOutcome:
    """One declared check on ``df``, with great-expectations' semantics, in Polars."""
    return evaluate_all(df, [check])[0]


def check_frame(name: str, data: pd.DataFrame | pa.Table | pl.DataFrame, checks: Sequence[Check]) -> FrameResult:
    """Validate ``data`` against ``checks``; raise :class:`FrameValidationError` naming every failure."""
    df = (
        data
        if isinstance(data, pl.DataFrame)
        else pl.from_pandas(data)
        if isinstance(data, pd.DataFrame)
        else pl.from_arrow(data)
    )
    assert isinstance(df, pl.DataFrame)
    df = df.with_columns(pl.col(pl.Float32, pl.Float64).fill_nan(None))  # NaN is null, as in GX on pandas
    result = FrameResult(name, evaluate_all(df, checks))
    failed = result.failed()
    if failed:
        lines = []
        for r in failed:
            observed = r.observed
            if r.check.rule == "null_rate" and isinstance(observed, float):
                observed = f"{1.0 - observed:.1%}"  # the share of nulls, as the rule is worded
            what = f"{r.unexpected_count:,} row(s)" if r.check.level == "row" else f"observed {observed}"
            sample = f" (e.g. {', '.join(map(str, r.sample[:3]))})" if r.sample else ""
            lines.append(f"{name}: {r.check.rule} on column {r.check.column or '*'}: {what} {r.check.reason}{sample}")
        raise FrameValidationError("\n".join(lines))
    return result
