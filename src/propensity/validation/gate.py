"""The raw-zone gate: raw partitions in, clean and quarantine partitions out.

For each table, the suites are generated from its contract (never listed by hand):
keys, not-null, value sets, ranges, timestamps inside the partition's interval,
referential integrity, bot sessions (row level), and schema drift, volume, empty
partitions and freshness (partition level, checked on a one-row-per-partition profile).
Row-level failures are quarantined with rule and reason; critical failures stop the
partition from being published and are raised together at the end.

A date range is validated in one great-expectations run per table (rows of all days in
one batch, tagged with their ``dt``), which is what makes a year of backfill fast;
every rule is evaluated per partition, so one day validated alone gives the same result.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from propensity.config import Settings
from propensity.contracts import TABLES, TableContract, contract
from propensity.errors import DataQualityError
from propensity.lake import Lake, partition_path
from propensity.validation import checks as ck
from propensity.validation.keys import key_index
from propensity.validation.runner import CheckResult, GXRunner

log = logging.getLogger(__name__)

from propensity.zones import CLEAN, QUARANTINE, RAW  # noqa: E402
from propensity.zones import VALIDATION as RESULTS  # noqa: E402

PARTITION_RULES = ("schema", "volume", "empty_partition", "freshness")
#: raw rows a validation holds at once: consecutive days are validated together up to this many
BATCH_ROWS = 1_000_000
DQ_COLUMNS = ("dq_rule", "dq_column", "dq_reason")


class ValidationFailed(DataQualityError):
    """Raised after a run when any partition had a critical failure; carries every outcome."""

    def __init__(self, outcomes: Sequence[PartitionOutcome], lines: Sequence[str] | None = None) -> None:
        self.outcomes = list(outcomes)
        bad = {(o.table, o.dt) for o in outcomes if o.critical}
        lines = (
            list(lines) if lines is not None else [f"{o.table} dt={o.dt}: {m}" for o in outcomes for m in o.critical]
        )
        count = len(bad) or len({line.split(":", 1)[0] for line in lines})
        super().__init__(
            f"critical data-quality failures in {count} partition(s); nothing published for them:\n  "
            + "\n  ".join(lines)
        )

    @classmethod
    def from_lines(cls, lines: Sequence[str]) -> ValidationFailed:
        """From the ``"<table> dt=<day>: <message>"`` lines of a validation record (no outcomes at hand)."""
        return cls([], lines)


@dataclass
class PartitionOutcome:
    table: str
    dt: str
    rows_in: int = 0
    rows_clean: int = 0
    quarantined: dict[str, int] = field(default_factory=dict)
    critical: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    published: bool = False

    @property
    def rows_quarantined(self) -> int:
        return sum(self.quarantined.values())

    def summary(self) -> str:
        by_rule = ", ".join(f"{k} {v:,}" for k, v in sorted(self.quarantined.items())) or "none"
        status = "published" if self.published else "NOT PUBLISHED"
        return (
            f"{self.table} dt={self.dt}: {self.rows_in:,} in, {self.rows_clean:,} clean, "
            f"{self.rows_quarantined:,} quarantined ({by_rule}), {len(self.critical)} critical [{status}]"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "dt": self.dt,
            "rows_in": self.rows_in,
            "rows_clean": self.rows_clean,
            "quarantined_by_rule": self.quarantined,
            "critical": self.critical,
            "findings": self.findings,
            "published": self.published,
        }


# rules from contracts --------------------------------------------------------------------


def _severity(settings: Settings, table: str, check: ck.Check) -> ck.Check:
    sev = settings.validation.severity
    wanted = sev.get(f"{table}.{check.rule}") or sev.get(check.rule)
    if wanted is None:
        return check
    if wanted not in ("critical", "row"):
        raise ValueError(f"validation.severity for {table}.{check.rule}: {wanted!r} is not 'critical' or 'row'")
    return replace(check, severity=wanted)


def row_checks(tc: TableContract, settings: Settings) -> list[ck.Check]:
    """Row-level checks generated from a table contract."""
    out: list[ck.Check] = []
    pk = list(tc.primary_key)
    out.append(replace(ck.unique([*pk, "__dt"]), column="+".join(pk)))
    for c in tc.columns:
        if not c.nullable:
            out.append(ck.not_null(c.name))
        if c.allowed is not None:
            reason = {
                "country": "must be an ISO 3166-1 alpha-2 country code",
                "currency": "must be an ISO 4217 currency code",
                "base_currency": "must be an ISO 4217 currency code",
            }.get(c.name)
            out.append(ck.in_set(c.name, sorted(c.allowed), reason=reason))
        if c.gt is not None or c.ge is not None or c.le is not None:
            lo = c.gt if c.gt is not None else c.ge
            out.append(ck.between(c.name, lo, c.le, strict_min=c.gt is not None))
        if c.dtype in ("timestamp", "date"):
            if c.name == tc.watermark:
                out.append(ck.before(c.name, "__interval_end", "in_interval", "must fall inside the partition's day"))
                out.append(
                    ck.before(
                        "__interval_start",
                        c.name,
                        "in_interval",
                        "must fall inside the partition's day",
                        or_equal=True,
                        reported_column=c.name,
                    )
                )
            else:
                out.append(ck.before(c.name, "__interval_end", "not_future", "must not be after the partition's day"))
    for fk in tc.foreign_keys:
        out.append(
            ck.flag_true(
                f"__fk_{fk.column}",
                "foreign_key",
                fk.column,
                f"must reference an existing {fk.ref_table}.{fk.ref_column}",
            )
        )
    if tc.name == "events":
        v = settings.validation
        out.append(ck.between("__session_events_per_minute", max_value=v.bot_events_per_minute, rule="bot_session"))
        out[-1] = replace(
            out[-1],
            column="session_id",
            reason=f"session with >= {v.bot_min_events} events at more than {v.bot_events_per_minute:g} events/minute",
        )
    return [_severity(settings, tc.name, c) for c in out]


def partition_checks(tc: TableContract, settings: Settings) -> list[ck.Check]:
    """Partition-level (critical by default) checks over the per-partition profile frame."""
    import great_expectations.expectations as gxe

    out = [
        ck.table_between("n_missing_columns", None, 0, "schema", "missing column(s)"),
        ck.table_between("n_extra_columns", None, 0, "schema", "extra column(s)"),
        ck.table_between("n_retyped_columns", None, 0, "schema", "retyped column(s)"),
    ]
    for col, name in (("volume_min", "row count below the band"), ("volume_max", "row count above the band")):
        a, b = ("row_count", col) if col == "volume_min" else (col, "row_count")
        exp = gxe.ExpectColumnPairValuesAToBeGreaterThanB(
            column_A=a, column_B=b, or_equal=True, ignore_row_if="either_value_is_missing"
        )
        out.append(ck._with_meta(ck.Check("volume", col, name, exp, severity="critical")))
    out.append(
        replace(
            ck.flag_true(
                "__not_empty_or_unexpected",
                "empty_partition",
                "row_count",
                "empty partition for a table that normally has rows",
            ),
            severity="critical",
        )
    )
    hours = settings.validation.freshness_hours.get(tc.name)
    if hours is not None:
        out.append(
            ck.table_between(
                "freshness_lag_hours",
                None,
                hours,
                "freshness",
                f"latest {tc.watermark} must be within {hours:g} h of the interval end",
            )
        )
    for c in out:
        c.expectation.meta = c.meta()
    return [_severity(settings, tc.name, c) for c in out]


# the gate ------------------------------------------------------------------------------------


def _interval(dt: str) -> tuple[datetime, datetime]:
    d = date.fromisoformat(dt)
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


def logical_type(t: pa.DataType) -> pa.DataType:
    """``t`` without its physical layout: 64-bit offsets (large_string, large_binary, large_list),
    string and binary views and dictionary encoding describe how values are stored, not what they
    are. Polars and pandas 3 write large_string; :meth:`TableContract.conform` casts each of these
    to the contract's type losslessly (list views are left out: pyarrow cannot cast them yet)."""
    if pa.types.is_dictionary(t):
        return logical_type(t.value_type)
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return pa.list_(logical_type(t.value_type))
    return t


def schema_drift(tc: TableContract, schema: pa.Schema) -> tuple[list[str], list[str], list[str]]:
    """Missing, extra and retyped columns of ``schema`` against the contract; types are compared
    as :func:`logical_type`, so another writer's layout of the same values is not drift."""
    names = set(schema.names)
    missing = [c.name for c in tc.columns if c.name not in names]
    extra = [n for n in schema.names if n not in set(tc.names)]
    retyped = [
        f"{c.name} ({schema.field(c.name).type} instead of {c.arrow_type})"
        for c in tc.columns
        if c.name in names
        and schema.field(c.name).type != pa.null()
        and logical_type(schema.field(c.name).type) != logical_type(c.arrow_type)
    ]
    return missing, extra, retyped


def volume_band(table: str, history: Sequence[int], settings: Settings) -> tuple[float | None, float | None]:
    v = settings.validation.volume
    recent = list(history)[-v.history :]
    if table not in v.tables or len(recent) < v.min_history:
        return None, None
    mid = float(np.median(recent))  # robust to a one-off initial load or a single outage
    if mid == 0:
        return None, None
    lo = max(0.0, mid * v.min_ratio - v.z * math.sqrt(mid))
    top = float(max(recent))  # a ramp-up (0, 0, 3, 11...) is growth, not an explosion
    hi = max(mid * v.max_ratio, top * 2.0) + v.z * math.sqrt(top) + 10
    return lo, hi


class Gate:
    """Validates raw partitions and publishes clean/quarantine partitions; one instance per run."""

    def __init__(self, settings: Settings, runner: GXRunner | None = None) -> None:
        self.settings = settings
        self.lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
        self.runner = runner or GXRunner(settings.gx_dir if settings.validation.docs else None)
        self._keys: dict[str, pa.Array] = {}

    def parent_keys(self, table: str, column: str) -> pa.Array:
        """Every key the raw zone has for ``table`` (any date: CDC puts updated rows at their update date)."""
        k = f"{table}.{column}"
        if k not in self._keys:
            self._keys[k] = key_index(self.lake, table, column)
        return self._keys[k]

    def _history_counts(self, table: str, present: list[str], dts: Sequence[str]) -> dict[str, int]:
        """Row counts of the partitions the volume bands of ``dts`` look back at, and no others:
        a day's validation reads ``volume.history`` manifests, not the whole history's."""
        v = self.settings.validation.volume
        if table not in v.tables:
            return {}
        need: set[str] = set()
        for dt in dts:
            i = bisect.bisect_left(present, dt)
            need.update(present[max(0, i - v.history) : i])
        docs = {d: self.lake.manifest(RAW, table, {"dt": d}) for d in sorted(need - set(dts))}
        return {d: int(m["row_count"]) for d, m in docs.items() if m is not None}

    def validate(self, dts: Iterable[str | date], tables: Iterable[str] | None = None) -> list[PartitionOutcome]:
        days = sorted({d if isinstance(d, str) else d.isoformat() for d in dts})
        outcomes = []
        try:
            for name in tables or TABLES:
                outcomes.extend(self.validate_table(name, days))
        finally:  # the results of the tables validated are in the docs even when a later one fails
            self.runner.build_docs()
        return outcomes

    def validate_table(self, table: str, dts: Sequence[str]) -> list[PartitionOutcome]:
        """Validate ``dts`` of ``table`` in date order, :data:`BATCH_ROWS` raw rows at a time (read a
        few partitions ahead on threads): a run over two years holds a batch, not the table."""
        tc = contract(table)
        manifests = {p["dt"]: p for p in self.lake.partitions(RAW, table)}
        counts = self._history_counts(table, sorted(manifests), dts)
        outcomes: dict[str, PartitionOutcome] = {}
        pending: list[tuple[str, pa.Table]] = []
        ahead = max(1, self.lake.io_threads) * 4
        for i in range(0, len(dts), ahead):
            window = list(dts[i : i + ahead])
            present = [dt for dt in window if dt in manifests]
            with ThreadPoolExecutor(self.lake.io_threads) as pool:
                raws = dict(
                    zip(
                        present,
                        pool.map(lambda dt: self.lake.read_partition(RAW, table, {"dt": dt}), present),
                        strict=True,
                    )
                )
            for dt in window:
                if dt not in manifests:
                    out = outcomes[dt] = PartitionOutcome(table, dt)
                    out.critical.append("no raw partition: collection has not run for this date")
                    self._write_result(out)
                    log.info("%s", out.summary())
                    continue
                raw = raws.pop(dt)
                assert raw is not None
                pending.append((dt, raw))
                if sum(r.num_rows for _, r in pending) >= BATCH_ROWS:
                    self._validate_batch(tc, pending, counts, outcomes)
                    pending = []
        if pending:
            self._validate_batch(tc, pending, counts, outcomes)
        return [outcomes[dt] for dt in dts]

    def _validate_batch(
        self,
        tc: TableContract,
        raws: list[tuple[str, pa.Table]],
        counts: dict[str, int],
        outcomes: dict[str, PartitionOutcome],
    ) -> None:
        """Partition checks, row checks and the clean/quarantine writes of consecutive days;
        ``counts`` carries each day's row count to the volume bands of the days after it."""
        profile: list[dict[str, Any]] = []
        batches: list[tuple[str, pa.Table]] = []
        done: dict[str, PartitionOutcome] = {}
        for dt, raw in raws:
            out = outcomes[dt] = done[dt] = PartitionOutcome(tc.name, dt)
            out.rows_in = counts[dt] = raw.num_rows  # the baseline of the run's later days
            missing, extra, retyped = schema_drift(tc, raw.schema)
            _, end = _interval(dt)
            lag = None
            if raw.num_rows and tc.watermark in raw.column_names and not retyped:
                wm = pc.max(raw.column(tc.watermark)).as_py()
                if isinstance(wm, datetime):
                    lag = (end - wm).total_seconds() / 3600.0
            lo, hi = volume_band(tc.name, [counts[d] for d in sorted(counts) if d < dt], self.settings)
            profile.append(
                {
                    "dt": dt,
                    "row_count": raw.num_rows,
                    "volume_min": lo,
                    "volume_max": hi,
                    "__not_empty_or_unexpected": bool(raw.num_rows > 0 or not lo),
                    "n_missing_columns": len(missing),
                    "n_extra_columns": len(extra),
                    "n_retyped_columns": len(retyped),
                    "missing": ", ".join(missing),
                    "extra": ", ".join(extra),
                    "retyped": ", ".join(retyped),
                    "freshness_lag_hours": lag,
                }
            )
            if not missing and not retyped:
                batches.append((dt, tc.conform(raw)))
        prof_df = pd.DataFrame(profile)
        if len(prof_df):
            self._apply_partition_results(tc, prof_df, done)
        if batches:
            self._validate_rows(tc, batches, done)
        with ThreadPoolExecutor(self.lake.io_threads) as pool:
            list(pool.map(self._write_result, done.values()))
        for out in done.values():
            log.info("%s", out.summary())

    # partition level ----------------------------------------------------------------

    def _apply_partition_results(self, tc: TableContract, prof: pd.DataFrame, outcomes: dict) -> None:
        res = self.runner.run(f"raw.{tc.name}.partitions", prof, partition_checks(tc, self.settings))
        for r in res.failed():
            for i in r.unexpected_index:
                row = prof.iloc[i]
                out = outcomes[row["dt"]]
                out.critical.append(self._partition_message(r, row))

    @staticmethod
    def _partition_message(r: CheckResult, row: pd.Series) -> str:
        rule = r.check.rule
        if rule == "schema":
            kind = r.check.column.split("_")[1]  # missing / extra / retyped
            return f"schema: {kind} column(s): {row[kind]}"
        if rule in ("volume", "empty_partition"):
            lo, hi = row["volume_min"], row["volume_max"]
            return (
                f"{rule}: column row_count = {int(row['row_count']):,}, expected within "
                f"[{lo:,.0f}, {hi:,.0f}] from the trailing partitions"
            )
        return f"{rule}: {r.check.reason} (lag {row['freshness_lag_hours']:.1f} h)"

    # row level --------------------------------------------------------------------------

    def _helpers(self, tc: TableContract, df: pd.DataFrame, big: pa.Table, rows: RowBlocks) -> None:
        """Helper columns the row checks compare against, built per partition block and repeated
        (a year of events is millions of rows and hundreds of days: no per-row Python)."""
        if contract(tc.name).column(tc.watermark).dtype == "date":
            first = [date.fromisoformat(d) for d in rows.days]
            df["__interval_start"] = rows.repeat(np.array(first, dtype=object))
            df["__interval_end"] = rows.repeat(np.array([d + timedelta(days=1) for d in first], dtype=object))
        else:
            first = np.array([np.datetime64(d, "us") for d in rows.days])
            df["__interval_start"] = pd.to_datetime(rows.repeat(first), utc=True)
            df["__interval_end"] = pd.to_datetime(rows.repeat(first + np.timedelta64(1, "D")), utc=True)
        for fk in tc.foreign_keys:
            col = big.column(fk.column)
            keys = self.parent_keys(fk.ref_table, fk.ref_column).cast(col.type)
            if fk.ref_table == tc.name:
                own = pc.unique(big.column(fk.ref_column).combine_chunks()).drop_null().cast(col.type)
                keys = pa.concat_arrays([keys, own])
            known = pc.or_(pc.is_null(col), pc.is_in(col, value_set=keys))
            df[f"__fk_{fk.column}"] = known.to_numpy()
        if tc.name == "events":
            v = self.settings.validation
            ev = pl.from_arrow(big.select(["session_id", "event_time"]))
            assert isinstance(ev, pl.DataFrame)
            by = [pl.Series("__block", rows.repeat(np.arange(len(rows.days)))), "session_id"]
            n = pl.len().over(by)
            t = pl.col("event_time")
            span = ((t.max() - t.min()).over(by).dt.total_microseconds() / 60e6).clip(lower_bound=1.0)
            epm = ev.select(pl.when(n >= v.bot_min_events).then(n / span).otherwise(0.0).alias("epm"))
            df["__session_events_per_minute"] = epm.get_column("epm").to_numpy()

    def _validate_rows(self, tc: TableContract, batches: list[tuple[str, pa.Table]], outcomes: dict) -> None:
        big = pa.concat_tables([t for _, t in batches])
        if big.num_rows == 0:
            self._publish_all(
                (tc, outcomes[dt], t, t.slice(0, 0), [])
                for dt, t in batches
                if not outcomes[dt].critical  # an empty partition can be critical (empty_partition, volume)
            )
            return
        rows = RowBlocks.of(batches)
        dts = rows.repeat(np.array(rows.days, dtype=object))
        df = big.to_pandas()
        df["__dt"] = dts
        self._helpers(tc, df, big, rows)
        checks = row_checks(tc, self.settings)
        res = self.runner.run(f"raw.{tc.name}.rows", df, checks)
        n = len(df)
        fail_rule = np.full(n, -1, dtype=np.int64)  # first failing row-level check per row
        v = self.settings.validation
        for ci, r in enumerate(res.results):
            if r.success or not r.unexpected_index:
                continue
            idx = np.asarray(r.unexpected_index, dtype=np.int64)
            if r.check.keep_first:  # keep one copy of each key; null keys are not_null's business
                key = df.loc[idx, list(r.check.key)]
                idx = idx[(key.duplicated(keep="first") & key.notna().all(axis=1)).to_numpy()]
            if not len(idx):
                continue
            idx = np.sort(idx)
            for b, in_dt, sample in rows.failures(idx, big, r.check.column):
                dt = rows.days[b]
                out = outcomes[dt]
                cnt = len(in_dt)
                share = cnt / max(rows.counts[b], 1)
                msg = f"{r.check.rule} on column {r.check.column}: {cnt:,} row(s) {r.check.reason}" + (
                    f" (e.g. {sample})" if sample else ""
                )
                if r.check.severity == "critical":
                    out.critical.append(msg)
                elif r.check.rule in v.escalate_rules and share > v.escalate_share:
                    out.critical.append(f"{msg}; {share:.0%} of the partition, escalated to critical")
                else:
                    out.findings.append(msg)
            if r.check.severity == "row":
                free = idx[fail_rule[idx] < 0]
                fail_rule[free] = ci
        jobs = []
        for dt, lo, hi in rows.slices():
            out = outcomes[dt]
            if out.critical:
                continue
            rules = fail_rule[lo:hi]
            bad = np.flatnonzero(rules >= 0)
            part = big.slice(lo, hi - lo)
            checks = [res.results[i].check for i in rules[bad]]
            jobs.append((tc, out, part.filter(pa.array(rules < 0)), part.take(pa.array(bad, pa.int64())), checks))
        self._publish_all(jobs)

    def _publish_all(self, jobs: Iterable[tuple[TableContract, PartitionOutcome, pa.Table, pa.Table, list]]) -> None:
        """Publish partitions a few at a time: each is its own quarantine-then-clean commit.

        A run over many days lists the table's clean and quarantine folders once, not each
        partition's twice (an object-store call per partition and zone, most of them empty)."""
        jobs = list(jobs)
        listed: dict[str, dict[str, list[str]]] | None = None
        if len(jobs) > 1:
            listed = {zone: self.lake.listing(zone, jobs[0][0].name) for zone in (QUARANTINE, CLEAN)}
        with ThreadPoolExecutor(self.lake.io_threads) as pool:
            list(pool.map(lambda job: self._publish(*job, listed=listed), jobs))

    def _publish(
        self,
        tc: TableContract,
        out: PartitionOutcome,
        clean: pa.Table,
        bad: pa.Table,
        bad_checks: list[ck.Check],
        listed: Mapping[str, Mapping[str, list[str]]] | None = None,
    ) -> None:
        """Quarantine first, then clean: the clean manifest is the commit point downstream sees.

        A day without failing rows has no quarantine partition (one left by an earlier validation
        of the day is removed): most days have none, and its result already says so, so writing
        empty ones was over a third of publishing a shop's history."""
        q = bad
        for name, values in zip(
            DQ_COLUMNS,
            ([c.rule for c in bad_checks], [c.column for c in bad_checks], [c.reason for c in bad_checks]),
            strict=True,
        ):
            q = q.append_column(name, pa.array(values, pa.string()))
        for c in bad_checks:
            out.quarantined[c.rule] = out.quarantined.get(c.rule, 0) + 1
        out.rows_clean = clean.num_rows
        parts = {"dt": out.dt}
        meta = {"rows_in": out.rows_in, "quarantined_by_rule": out.quarantined}

        def existing(zone: str) -> list[str] | None:
            return None if listed is None else listed[zone].get(partition_path(zone, tc.name, parts), [])

        if q.num_rows:
            self.lake.write_partition(QUARANTINE, tc.name, parts, q, meta, existing(QUARANTINE))
        else:
            self.lake.delete_partition(QUARANTINE, tc.name, parts, existing(QUARANTINE))
        self.lake.write_partition(CLEAN, tc.name, parts, clean, meta, existing(CLEAN))
        out.published = True

    def _write_result(self, out: PartitionOutcome) -> None:
        self.lake.write_json(f"{RESULTS}/{out.table}/dt={out.dt}/result.json", out.to_json())


@dataclass(frozen=True)
class RowBlocks:
    """Where each partition's rows lie in the batch of all the run's rows: ``days[b]`` holds
    ``counts[b]`` rows ending (exclusive) at ``ends[b]``."""

    days: list[str]
    counts: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, batches: Sequence[tuple[str, pa.Table]]) -> RowBlocks:
        counts = np.array([t.num_rows for _, t in batches], dtype=np.int64)
        return cls([dt for dt, _ in batches], counts, np.cumsum(counts))

    def repeat(self, per_block: np.ndarray) -> np.ndarray:
        """One value per block, repeated for each of its rows."""
        return np.repeat(per_block, self.counts)

    def slices(self) -> Iterator[tuple[str, int, int]]:
        for dt, hi, n in zip(self.days, self.ends, self.counts, strict=True):
            yield dt, int(hi - n), int(hi)

    def failures(
        self, idx: np.ndarray, big: pa.Table, column: str | None, shown: int = 3, scanned: int = 50
    ) -> Iterator[tuple[int, np.ndarray, str]]:
        """Per block with failing rows (``idx`` sorted): its number, its failing rows, and a few
        distinct failing values of ``column`` for the message (one take for all the blocks)."""
        block = np.searchsorted(self.ends, idx, side="right")
        present, first, count = np.unique(block, return_index=True, return_counts=True)
        values: list[Any] = []
        if column is not None and column in big.column_names:
            picks = [idx[f : f + min(c, scanned)] for f, c in zip(first, count, strict=True)]
            values = big.column(column).take(pa.array(np.concatenate(picks), pa.int64())).to_pylist()
        pos = 0
        for b, f, c in zip(present, first, count, strict=True):
            sample = ""
            if values:
                taken = values[pos : pos + min(c, scanned)]
                pos += len(taken)
                sample = ", ".join(map(str, list(dict.fromkeys(taken))[:shown]))
            yield int(b), idx[f : f + c], sample


def validate(
    settings: Settings, dts: Iterable[str | date], tables: Iterable[str] | None = None, raise_on_critical: bool = True
) -> list[PartitionOutcome]:
    """Validate raw partitions for ``dts``; raises :class:`ValidationFailed` after publishing the good ones."""
    outcomes = Gate(settings).validate(dts, tables)
    if raise_on_critical and any(o.critical for o in outcomes):
        raise ValidationFailed(outcomes)
    return outcomes
