"""Small helpers shared by the Airflow DAG files in ``dags/``.

DAG files stay declarative: which days a run covers, which tables it touches, how raw
tables are named as Airflow Assets and how tasks retry are decided here, once. Nothing
in this module imports Airflow at import time (only :func:`raw_asset` and
:func:`clean_asset` do, lazily), so it is importable, and unit-testable, without Airflow
installed.

Asset naming
    A raw table is published as the Airflow Asset ``name="raw.<table>"``,
    ``uri="propensity://raw/<table>"``, ``group="raw"``. The URI is *logical*, not the
    lake location: Airflow identifies assets by name/URI, so tying them to
    ``settings.lake_uri`` (``file:///…/var/lake`` on a laptop, ``s3://…`` in production)
    would make the same table a different asset per deployment, require loading
    settings while parsing DAG files, and break consumers scheduled on it when the lake
    moves. Airflow 3 accepts any scheme except the reserved ``airflow``; a scheme
    without a registered normaliser (like ``propensity``) is only lower-cased and
    stripped of trailing slashes, so the string is stable. The physical location and
    row counts of what a run wrote go into the asset *event* ``extra`` instead.

    A validated table is published the same way as ``name="clean.<table>"``,
    ``uri="propensity://clean/<table>"``, ``group="clean"``, updated by the validate
    task of that table only when every partition it covered passed the gate.

Validation windows
    ``shop_validate`` is scheduled on the raw assets. Each raw asset event carries the
    ``dates`` the collect task wrote (``extra = {lake, dates, rows}``), and an
    asset-triggered run receives every event since its previous asset-triggered run, so
    :func:`dates_from_asset_events` turns them into exactly the partitions collection
    wrote (per table: a partial backfill of some tables does not make the other tables
    validate days they never collected). :func:`validation_days` adds the precedence:
    explicit ``start``/``end`` params, then the triggering events, then (a manual run with
    neither) yesterday, like a collect run.

Run windows
    A run collects whole UTC days. Explicit ``start``/``end`` params win (manual
    backfills from the trigger form); otherwise the run's data interval; otherwise
    (a manual run triggered without a logical date has no data interval in Airflow 3)
    the last complete UTC day before the run was triggered, which is also what Airflow
    itself infers for a manual run of a daily data-interval timetable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from propensity.contracts import TABLES, contract

if TYPE_CHECKING:  # pragma: no cover - typing only
    from airflow.sdk import Asset

ASSET_SCHEME = "propensity"
RAW_ZONE = "raw"
CLEAN_ZONE = "clean"

#: Task defaults for every task: no retries, a generous but finite run time.
DEFAULT_EXECUTION_TIMEOUT = timedelta(hours=2)
#: I/O tasks (extraction, lake writes) retry transient failures: 1, 2, 4 min (capped).
IO_RETRIES = 3
IO_RETRY_DELAY = timedelta(minutes=1)
IO_RETRY_BACKOFF = 2.0
IO_MAX_RETRY_DELAY = timedelta(minutes=15)


# Assets ---------------------------------------------------------------------------------


def raw_asset_name(table: str) -> str:
    """Airflow Asset name of a raw table, e.g. ``raw.orders``."""
    return f"{RAW_ZONE}.{contract(table).name}"


def raw_asset_uri(table: str) -> str:
    """Stable, deployment-independent Asset URI of a raw table, e.g. ``propensity://raw/orders``."""
    return f"{ASSET_SCHEME}://{RAW_ZONE}/{contract(table).name}"


def raw_asset(table: str) -> Asset:
    """The Airflow ``Asset`` a collect task declares as outlet (imports Airflow lazily)."""
    from airflow.sdk import Asset

    return Asset(name=raw_asset_name(table), uri=raw_asset_uri(table), group=RAW_ZONE)


def clean_asset_name(table: str) -> str:
    """Airflow Asset name of a validated table, e.g. ``clean.orders``."""
    return f"{CLEAN_ZONE}.{contract(table).name}"


def clean_asset_uri(table: str) -> str:
    """Stable Asset URI of a validated table, e.g. ``propensity://clean/orders``."""
    return f"{ASSET_SCHEME}://{CLEAN_ZONE}/{contract(table).name}"


def clean_asset(table: str) -> Asset:
    """The Airflow ``Asset`` a validate task declares as outlet (imports Airflow lazily)."""
    from airflow.sdk import Asset

    return Asset(name=clean_asset_name(table), uri=clean_asset_uri(table), group=CLEAN_ZONE)


# Run windows ----------------------------------------------------------------------------


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _as_date(value: date | str) -> date:
    if isinstance(value, datetime):
        return _utc(value).date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def interval_days(data_interval_start: datetime, data_interval_end: datetime) -> list[date]:
    """Every UTC calendar day that overlaps the half-open interval ``[start, end)``.

    ``[2025-03-01T00:00Z, 2025-03-02T00:00Z)`` is ``[2025-03-01]``; an empty interval
    (``end <= start``, e.g. a trigger timetable without ``interval``) gives ``[]``.
    Naive datetimes are taken as UTC.
    """
    start, end = _utc(data_interval_start), _utc(data_interval_end)
    if end <= start:
        return []
    first, last = start.date(), (end - timedelta(microseconds=1)).date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def run_days(
    *,
    start: date | str | None = None,
    end: date | str | None = None,
    data_interval_start: datetime | None = None,
    data_interval_end: datetime | None = None,
    run_after: datetime | None = None,
) -> list[date]:
    """The days a run collects (see the module docstring for the precedence).

    ``start``/``end`` are inclusive dates (or ISO strings); either alone means one day.
    """
    if start or end:
        first, last = _as_date(start or end), _as_date(end or start)  # type: ignore[arg-type]
        if last < first:
            raise ValueError(f"end {last} is before start {first}")
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]
    if data_interval_start is not None and data_interval_end is not None:
        found = interval_days(data_interval_start, data_interval_end)
        if found:
            return found
    ref = data_interval_end or run_after
    if ref is None:
        raise ValueError("no start/end, data interval or run_after: cannot tell which day to collect")
    return [_utc(ref).date() - timedelta(days=1)]


def _field(obj: Any, name: str) -> Any:
    """``obj.name`` or ``obj[name]``: Airflow's event objects and plain dicts alike."""
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _iter_events(triggering_asset_events: Any) -> Iterable[Any]:
    """Events from Airflow's ``triggering_asset_events`` mapping (asset -> events) or a flat iterable."""
    if not triggering_asset_events:
        return
    groups = (
        triggering_asset_events.values() if isinstance(triggering_asset_events, Mapping) else [triggering_asset_events]
    )
    for events in groups:
        yield from events


def dates_from_asset_events(triggering_asset_events: Any, table: str | None = None) -> list[str]:
    """The ``dates`` (ISO strings, sorted, unique) that the raw asset events of a run report.

    ``triggering_asset_events`` is the task context value of that name (a mapping from
    asset to its events; an event has ``.asset.uri`` and ``.extra``) or any iterable of
    events; plain dicts work too. Only raw assets (``propensity://raw/...``) count, and
    with ``table`` only that table's. Events without ``dates`` in their extra (e.g. one
    created by hand in the UI) contribute nothing. The same event is listed under its
    asset and under each alias it came through: the result is deduplicated.
    """
    prefix = f"{ASSET_SCHEME}://{RAW_ZONE}/"
    wanted = raw_asset_uri(table) if table is not None else None
    found: set[str] = set()
    for event in _iter_events(triggering_asset_events):
        uri = str(_field(_field(event, "asset"), "uri") or "")
        if not uri.startswith(prefix) or (wanted is not None and uri != wanted):
            continue
        for value in (_field(event, "extra") or {}).get("dates") or ():
            found.add(_as_date(value).isoformat())
    return sorted(found)


def validation_days(
    table: str,
    *,
    start: date | str | None = None,
    end: date | str | None = None,
    triggering_asset_events: Any = None,
    run_after: datetime | None = None,
) -> list[str]:
    """The days a validate run checks for ``table`` (ISO strings; see "Validation windows" above).

    Explicit ``start``/``end`` win; else the dates the triggering raw events of ``table``
    report (possibly none: nothing to validate); a run without any triggering event (a
    manual run) falls back to yesterday relative to ``run_after``.
    """
    if start or end:
        return [d.isoformat() for d in run_days(start=start, end=end)]
    if triggering_asset_events:
        return dates_from_asset_events(triggering_asset_events, table)
    return [d.isoformat() for d in run_days(run_after=run_after)]


def selected_tables(tables: Iterable[str] | None = None) -> list[str]:
    """The tables a run collects: all contracts when ``tables`` is empty, else those named (validated)."""
    if not tables:
        return list(TABLES)
    return [contract(name).name for name in dict.fromkeys(tables)]


# Task arguments -------------------------------------------------------------------------


def default_task_args(**overrides: Any) -> dict[str, Any]:
    """``default_args`` for every DAG: an owner, no retries, a finite execution timeout."""
    return {"owner": "propensity", "retries": 0, "execution_timeout": DEFAULT_EXECUTION_TIMEOUT, **overrides}


def io_task_args(**overrides: Any) -> dict[str, Any]:
    """Arguments for tasks doing I/O against sources or the lake: retries with exponential backoff.

    Airflow 3 takes ``retry_exponential_backoff`` as a float *multiplier* (``True`` would
    mean 1.0, i.e. a constant delay), so it is given as ``2.0`` explicitly.
    """
    return {
        "retries": IO_RETRIES,
        "retry_delay": IO_RETRY_DELAY,
        "retry_exponential_backoff": IO_RETRY_BACKOFF,
        "max_retry_delay": IO_MAX_RETRY_DELAY,
        "execution_timeout": DEFAULT_EXECUTION_TIMEOUT,
        **overrides,
    }


# Results --------------------------------------------------------------------------------


def compact_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a partition manifest worth an XCom: table, partition, rows, schema hash."""
    return {
        "table": manifest["table"],
        "partition": dict(manifest["partition"]),
        "row_count": int(manifest["row_count"]),
        "schema_hash": manifest.get("schema_hash"),
    }


def summarize(results: Iterable[Iterable[Mapping[str, Any]] | None]) -> dict[str, dict[str, int]]:
    """Rows and partitions per table from the collect tasks' results (``None`` = skipped task)."""
    summary: dict[str, dict[str, int]] = {}
    for manifests in results:
        for m in manifests or ():
            entry = summary.setdefault(m["table"], {"partitions": 0, "rows": 0})
            entry["partitions"] += 1
            entry["rows"] += int(m["row_count"])
    return summary


def validation_extra(outcomes: Iterable[Any]) -> dict[str, Any]:
    """Asset event ``extra`` of a validate task from its gate outcomes (``PartitionOutcome``-like).

    ``dates`` lists the partitions published to the clean zone; row counts are summed.
    """
    outcomes = list(outcomes)
    return {
        "dates": sorted({o.dt for o in outcomes if o.published}),
        "rows_clean": sum(int(o.rows_clean) for o in outcomes),
        "rows_quarantined": sum(int(o.rows_quarantined) for o in outcomes),
    }
