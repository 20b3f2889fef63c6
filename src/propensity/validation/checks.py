"""Checks: one declaration per rule, turned into great-expectations expectations.

A :class:`Check` names its rule, the column it is about, a human reason, its level and
its severity. ``row`` checks judge individual rows (failing rows can be quarantined);
``table`` checks judge a whole frame (row count, null rate, schema) and can only pass or
fail. The builders below are the vocabulary the raw-zone gate, feature tables and score
tables all declare their rules in, so each new table is one list of checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import great_expectations.expectations as gxe

Level = Literal["row", "table"]
Severity = Literal["critical", "row"]


@dataclass(frozen=True)
class Check:
    rule: str
    column: str | None
    reason: str
    expectation: gxe.Expectation
    level: Level = "row"
    severity: Severity = "row"
    keep_first: bool = False  # uniqueness: the first occurrence of a key is not a failure
    key: tuple[str, ...] = field(default_factory=tuple)

    @property
    def id(self) -> str:
        return f"{self.rule}:{self.column or '*'}"

    def meta(self) -> dict[str, Any]:
        return {"rule": self.rule, "column": self.column, "reason": self.reason, "check_id": self.id}


def _with_meta(check: Check) -> Check:
    check.expectation.meta = check.meta()
    return check


def not_null(column: str, severity: Severity = "row") -> Check:
    return _with_meta(
        Check(
            "not_null", column, "must not be null", gxe.ExpectColumnValuesToNotBeNull(column=column), severity=severity
        )
    )


def unique(columns: Sequence[str], severity: Severity = "row") -> Check:
    cols = list(columns)
    exp = (
        gxe.ExpectColumnValuesToBeUnique(column=cols[0])
        if len(cols) == 1
        else gxe.ExpectCompoundColumnsToBeUnique(column_list=cols)
    )
    return _with_meta(
        Check(
            "unique_key",
            "+".join(cols),
            "duplicate key (first copy kept)",
            exp,
            severity=severity,
            keep_first=True,
            key=tuple(cols),
        )
    )


def in_set(column: str, values: Sequence[Any], rule: str = "value_set", reason: str | None = None) -> Check:
    values = sorted(values)
    shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
    return _with_meta(
        Check(
            rule,
            column,
            reason or f"must be one of {{{shown}}}",
            gxe.ExpectColumnValuesToBeInSet(column=column, value_set=values),
        )
    )


def between(
    column: str,
    min_value: float | None = None,
    max_value: float | None = None,
    strict_min: bool = False,
    strict_max: bool = False,
    rule: str = "range",
    severity: Severity = "row",
) -> Check:
    parts = []
    if min_value is not None:
        parts.append(f"{'>' if strict_min else '>='} {min_value}")
    if max_value is not None:
        parts.append(f"{'<' if strict_max else '<='} {max_value}")
    exp = gxe.ExpectColumnValuesToBeBetween(
        column=column, min_value=min_value, max_value=max_value, strict_min=strict_min, strict_max=strict_max
    )
    return _with_meta(Check(rule, column, "must be " + " and ".join(parts), exp, severity=severity))


def before(
    column: str, bound_column: str, rule: str, reason: str, or_equal: bool = False, reported_column: str | None = None
) -> Check:
    """Row check ``column < bound_column`` (nulls pass), e.g. a timestamp against its interval end."""
    exp = gxe.ExpectColumnPairValuesAToBeGreaterThanB(
        column_A=bound_column, column_B=column, or_equal=or_equal, ignore_row_if="either_value_is_missing"
    )
    return _with_meta(Check(rule, reported_column or column, reason, exp))


def flag_true(flag_column: str, rule: str, column: str, reason: str, severity: Severity = "row") -> Check:
    """Row check on a precomputed boolean helper column (e.g. 'parent key exists')."""
    exp = gxe.ExpectColumnValuesToBeInSet(column=flag_column, value_set=[True])
    return _with_meta(Check(rule, column, reason, exp, severity=severity))


# table-level -----------------------------------------------------------------------------


def row_count(min_value: int | None = None, max_value: int | None = None) -> Check:
    exp = gxe.ExpectTableRowCountToBeBetween(min_value=min_value, max_value=max_value)
    return _with_meta(
        Check(
            "row_count",
            None,
            f"row count must be within [{min_value}, {max_value}]",
            exp,
            level="table",
            severity="critical",
        )
    )


def null_rate(column: str, max_rate: float) -> Check:
    exp = gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(column=column, min_value=1.0 - max_rate)
    return _with_meta(
        Check("null_rate", column, f"null rate must be <= {max_rate:.0%}", exp, level="table", severity="critical")
    )


def columns_match(columns: Sequence[str]) -> Check:
    exp = gxe.ExpectTableColumnsToMatchSet(column_set=list(columns), exact_match=True)
    return _with_meta(Check("schema", None, "columns must match the contract", exp, level="table", severity="critical"))


def table_between(column: str, min_value: float | None, max_value: float | None, rule: str, reason: str) -> Check:
    """A critical check over a per-partition profile frame (one row per partition)."""
    exp = gxe.ExpectColumnValuesToBeBetween(column=column, min_value=min_value, max_value=max_value)
    return _with_meta(Check(rule, column, reason, exp, level="row", severity="critical"))
