"""Checks: one declaration per rule, run by great-expectations or by Polars.

A :class:`Check` names its rule, the column it is about, a human reason, its level and
its severity, and says what it expects as an :class:`Expect` (a great-expectations class
name and its arguments). The raw-to-clean gate turns that into a GX expectation
(:meth:`Check.gx`) and runs it with Data Docs; derived frames (features, profiles,
labels, scores) evaluate the same declaration as vectorised Polars expressions
(:mod:`.frames`), so a snapshot or a score shard never pays great-expectations' import
and context start-up. Either way the rule and its message are this one declaration.

``row`` checks judge individual rows (failing rows can be quarantined);
``table`` checks judge a whole frame (row count, null rate, schema) and can only pass or
fail. The builders below are the vocabulary the raw-zone gate, feature tables and score
tables all declare their rules in, so each new table is one list of checks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Level = Literal["row", "table"]
Severity = Literal["critical", "row"]


@dataclass
class Expect:
    """A great-expectations expectation by class name and arguments, built only when GX runs."""

    kind: str
    kwargs: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        import great_expectations.expectations as gxe

        exp = getattr(gxe, self.kind)(**self.kwargs)
        exp.meta = dict(self.meta)
        return exp


@dataclass(frozen=True)
class Check:
    rule: str
    column: str | None
    reason: str
    expectation: Expect | Any  # an Expect, or a ready GX expectation (gate-only checks)
    level: Level = "row"
    severity: Severity = "row"
    keep_first: bool = False  # uniqueness: the first occurrence of a key is not a failure
    key: tuple[str, ...] = field(default_factory=tuple)

    @property
    def id(self) -> str:
        return f"{self.rule}:{self.column or '*'}"

    def meta(self) -> dict[str, Any]:
        return {"rule": self.rule, "column": self.column, "reason": self.reason, "check_id": self.id}

    def gx(self) -> Any:
        """The great-expectations expectation (imports GX on first use)."""
        return self.expectation.build() if isinstance(self.expectation, Expect) else self.expectation


def _with_meta(check: Check) -> Check:
    check.expectation.meta = check.meta()
    return check


def not_null(column: str, severity: Severity = "row") -> Check:
    return _with_meta(
        Check(
            "not_null",
            column,
            "must not be null",
            Expect("ExpectColumnValuesToNotBeNull", dict(column=column)),
            severity=severity,
        )
    )


def unique(columns: Sequence[str], severity: Severity = "row") -> Check:
    cols = list(columns)
    exp = (
        Expect("ExpectColumnValuesToBeUnique", dict(column=cols[0]))
        if len(cols) == 1
        else Expect("ExpectCompoundColumnsToBeUnique", dict(column_list=cols))
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
            Expect("ExpectColumnValuesToBeInSet", dict(column=column, value_set=values)),
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
    exp = Expect(
        "ExpectColumnValuesToBeBetween",
        dict(column=column, min_value=min_value, max_value=max_value, strict_min=strict_min, strict_max=strict_max),
    )
    return _with_meta(Check(rule, column, "must be " + " and ".join(parts), exp, severity=severity))


def before(
    column: str, bound_column: str, rule: str, reason: str, or_equal: bool = False, reported_column: str | None = None
) -> Check:
    """Row check ``column < bound_column`` (nulls pass), e.g. a timestamp against its interval end."""
    exp = Expect(
        "ExpectColumnPairValuesAToBeGreaterThanB",
        dict(column_A=bound_column, column_B=column, or_equal=or_equal, ignore_row_if="either_value_is_missing"),
    )
    return _with_meta(Check(rule, reported_column or column, reason, exp))


def flag_true(flag_column: str, rule: str, column: str, reason: str, severity: Severity = "row") -> Check:
    """Row check on a precomputed boolean helper column (e.g. 'parent key exists')."""
    exp = Expect("ExpectColumnValuesToBeInSet", dict(column=flag_column, value_set=[True]))
    return _with_meta(Check(rule, column, reason, exp, severity=severity))


# table-level -----------------------------------------------------------------------------


def row_count(min_value: int | None = None, max_value: int | None = None) -> Check:
    exp = Expect("ExpectTableRowCountToBeBetween", dict(min_value=min_value, max_value=max_value))
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
    exp = Expect("ExpectColumnProportionOfNonNullValuesToBeBetween", dict(column=column, min_value=1.0 - max_rate))
    return _with_meta(
        Check("null_rate", column, f"null rate must be <= {max_rate:.0%}", exp, level="table", severity="critical")
    )


def columns_match(columns: Sequence[str]) -> Check:
    exp = Expect("ExpectTableColumnsToMatchSet", dict(column_set=list(columns), exact_match=True))
    return _with_meta(Check("schema", None, "columns must match the contract", exp, level="table", severity="critical"))


def table_between(column: str, min_value: float | None, max_value: float | None, rule: str, reason: str) -> Check:
    """A critical check over a per-partition profile frame (one row per partition)."""
    exp = Expect("ExpectColumnValuesToBeBetween", dict(column=column, min_value=min_value, max_value=max_value))
    return _with_meta(Check(rule, column, reason, exp, level="row", severity="critical"))
