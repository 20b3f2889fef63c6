"""Small helpers shared by the Airflow DAG files in ``dags/``.

DAG files stay declarative: which days a run covers, which tables it touches, how raw
tables are named as Airflow Assets and how tasks retry are decided here, once. Nothing
in this module imports Airflow at import time (only the ``*_asset()`` functions do,
lazily), so it is importable, and unit-testable, without Airflow installed; nor does it
import the heavy libraries (polars, great-expectations) before a task needs them.

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

    Snapshot outputs are published per lake zone, ``group`` being the zone:
    ``features`` (``propensity://features/``), ``profiles`` (``propensity://profiles/``;
    Airflow normalises an empty URI path to ``/``, so the helpers return the URIs with it)
    and, per propensity task, ``labels.<task>`` (``propensity://labels/<task>``). One
    asset per zone, not per snapshot date: the date is event data (``extra.dates``),
    like the ``dt`` of a raw partition. Outlets are declared when DAG files are parsed,
    i.e. without loading settings, so the labels assets exist for the default tasks
    (:data:`SNAPSHOT_TASKS`); a task added by configuration is built and published but
    has no asset of its own.

Validation windows
    ``shop_validate`` is scheduled on the raw assets. Each raw asset event carries the
    ``dates`` the collect task wrote (``extra = {lake, dates, rows}``), and an
    asset-triggered run receives every event since its previous asset-triggered run, so
    :func:`dates_from_asset_events` turns them into exactly the partitions collection
    wrote (per table: a partial backfill of some tables does not make the other tables
    validate days they never collected). :func:`validation_days` adds the precedence:
    explicit ``start``/``end`` params, then the triggering events, then (a manual run with
    neither) yesterday, like a collect run.

Snapshot dates
    A snapshot at ``T`` uses the data strictly before ``T``, so once day ``D`` is
    validated the newest snapshot it allows is ``D + 1``. ``build_features`` is scheduled
    on the clean assets; :func:`snapshot_dates_for_run` picks the explicit ``snapshot``
    param, else the day after the latest date its triggering clean events report, else
    (a manual run) today in UTC, i.e. the day after the "yesterday" a manual collect run
    covers. With ``plan`` the dates come from the tasks' out-of-time training plans
    instead (:func:`planned_snapshot_dates`, what ``propensity run --through features``
    builds); ``snapshot`` then caps the test snapshot (``--as-of``).

Run windows
    A run collects whole UTC days. Explicit ``start``/``end`` params win (manual
    backfills from the trigger form); otherwise the run's data interval; otherwise
    (a manual run triggered without a logical date has no data interval in Airflow 3)
    the last complete UTC day before the run was triggered, which is also what Airflow
    itself infers for a manual run of a daily data-interval timetable.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from propensity.config import Settings, default_tasks
from propensity.contracts import TABLES, contract

if TYPE_CHECKING:  # pragma: no cover - typing only
    from airflow.sdk import Asset

    from propensity.features.snapshot import Snapshot, SnapshotBuilder

log = logging.getLogger(__name__)

ASSET_SCHEME = "propensity"
RAW_ZONE = "raw"
CLEAN_ZONE = "clean"
FEATURES_ZONE = "features"
PROFILES_ZONE = "profiles"
LABELS_ZONE = "labels"

#: Propensity tasks whose labels have an Airflow Asset: the default ones (see "Asset naming").
SNAPSHOT_TASKS: tuple[str, ...] = tuple(default_tasks())
_TASK_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

#: Task defaults for every task: no retries, a generous but finite run time.
DEFAULT_EXECUTION_TIMEOUT = timedelta(hours=2)
#: I/O tasks (extraction, lake writes) retry transient failures: 1, 2, 4 min (capped).
IO_RETRIES = 3
IO_RETRY_DELAY = timedelta(minutes=1)
IO_RETRY_BACKOFF = 2.0
IO_MAX_RETRY_DELAY = timedelta(minutes=15)
#: Building snapshots loads the whole clean zone into memory; a training plan builds dozens.
SNAPSHOT_EXECUTION_TIMEOUT = timedelta(hours=4)


# Assets ---------------------------------------------------------------------------------


def table_asset_name(zone: str, table: str) -> str:
    """Airflow Asset name of a table in a lake zone, e.g. ``raw.orders``, ``clean.orders``."""
    return f"{zone}.{contract(table).name}"


def table_asset_uri(zone: str, table: str) -> str:
    """Stable, deployment-independent Asset URI, e.g. ``propensity://raw/orders``."""
    return f"{ASSET_SCHEME}://{zone}/{contract(table).name}"


def table_asset(zone: str, table: str) -> Asset:
    """The Airflow ``Asset`` of a table in a zone (imports Airflow lazily)."""
    from airflow.sdk import Asset

    return Asset(name=table_asset_name(zone, table), uri=table_asset_uri(zone, table), group=zone)


def raw_asset_name(table: str) -> str:
    return table_asset_name(RAW_ZONE, table)


def raw_asset_uri(table: str) -> str:
    return table_asset_uri(RAW_ZONE, table)


def raw_asset(table: str) -> Asset:
    """What a collect task declares as outlet."""
    return table_asset(RAW_ZONE, table)


def clean_asset_name(table: str) -> str:
    return table_asset_name(CLEAN_ZONE, table)


def clean_asset_uri(table: str) -> str:
    return table_asset_uri(CLEAN_ZONE, table)


def clean_asset(table: str) -> Asset:
    """What a validate task declares as outlet."""
    return table_asset(CLEAN_ZONE, table)


def features_asset_name() -> str:
    """Airflow Asset name of the feature snapshots: ``features``."""
    return FEATURES_ZONE


def features_asset_uri() -> str:
    """Asset URI of the feature snapshots: ``propensity://features/``.

    Written with its trailing slash because that is how Airflow stores and reports it:
    the normaliser turns an empty path into ``/`` (``Asset(uri="propensity://features")``
    is the same asset, but its ``.uri`` and every event's ``asset.uri`` read
    ``propensity://features/``), so comparisons with event URIs must use this form.
    """
    return f"{ASSET_SCHEME}://{FEATURES_ZONE}/"


def features_asset() -> Asset:
    """The Airflow ``Asset`` updated when ``features/snapshot=T/`` partitions are published."""
    from airflow.sdk import Asset

    return Asset(name=features_asset_name(), uri=features_asset_uri(), group=FEATURES_ZONE)


def profiles_asset_name() -> str:
    """Airflow Asset name of the profile-tag snapshots: ``profiles``."""
    return PROFILES_ZONE


def profiles_asset_uri() -> str:
    """Asset URI of the profile-tag snapshots: ``propensity://profiles/`` (slash: see :func:`features_asset_uri`)."""
    return f"{ASSET_SCHEME}://{PROFILES_ZONE}/"


def profiles_asset() -> Asset:
    """The Airflow ``Asset`` updated when ``profiles/snapshot=T/`` partitions are published."""
    from airflow.sdk import Asset

    return Asset(name=profiles_asset_name(), uri=profiles_asset_uri(), group=PROFILES_ZONE)


def _task_name(task: str) -> str:
    if not _TASK_NAME.match(task):
        raise ValueError(f"invalid task name {task!r}: use lower-case letters, digits, '_' and '-'")
    return task


def labels_asset_name(task: str) -> str:
    """Airflow Asset name of a task's labels, e.g. ``labels.churn``."""
    return f"{LABELS_ZONE}.{_task_name(task)}"


def labels_asset_uri(task: str) -> str:
    """Asset URI of a task's labels, e.g. ``propensity://labels/churn``."""
    return f"{ASSET_SCHEME}://{LABELS_ZONE}/{_task_name(task)}"


def labels_asset(task: str) -> Asset:
    """The Airflow ``Asset`` updated when ``labels/task=<task>/snapshot=T/`` partitions are published."""
    from airflow.sdk import Asset

    return Asset(name=labels_asset_name(task), uri=labels_asset_uri(task), group=LABELS_ZONE)


def snapshot_outlets(tasks: Iterable[str] = SNAPSHOT_TASKS) -> list[Asset]:
    """Outlets of a task publishing snapshots: features, profiles and the labels of ``tasks``."""
    return [features_asset(), profiles_asset(), *(labels_asset(t) for t in tasks)]


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


def dates_from_asset_events(triggering_asset_events: Any, table: str | None = None, zone: str = RAW_ZONE) -> list[str]:
    """The ``dates`` (ISO strings, sorted, unique) that the ``zone`` asset events of a run report.

    ``triggering_asset_events`` is the task context value of that name (a mapping from
    asset to its events; an event has ``.asset.uri`` and ``.extra``) or any iterable of
    events; plain dicts work too. Only the zone's table assets count (raw by default:
    ``propensity://raw/...``; ``zone="clean"`` for ``propensity://clean/...``), and with
    ``table`` only that table's. Events without ``dates`` in their extra (e.g. one
    created by hand in the UI) contribute nothing. The same event is listed under its
    asset and under each alias it came through: the result is deduplicated.
    """
    prefix = f"{ASSET_SCHEME}://{zone}/"
    wanted = f"{prefix}{contract(table).name}" if table is not None else None
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


def snapshot_dates_for_run(
    *,
    snapshot: date | str | None = None,
    triggering_asset_events: Any = None,
    run_after: datetime | None = None,
) -> list[str]:
    """The snapshot date(s) a ``build_features`` run builds (ISO strings; see "Snapshot dates" above).

    The ``snapshot`` param wins; else the day after the latest date the triggering
    *clean* asset events report (validated day ``D`` -> snapshot ``D + 1``); else (a
    manual run, or events without dates) the day after yesterday relative to
    ``run_after``, i.e. today in UTC. Always one date today; a list so that callers
    need not change if a run ever catches up several.
    """
    if snapshot:
        return [_as_date(snapshot).isoformat()]
    dates = dates_from_asset_events(triggering_asset_events, zone=CLEAN_ZONE)
    if dates:
        return [(date.fromisoformat(dates[-1]) + timedelta(days=1)).isoformat()]
    if run_after is None:
        raise ValueError("no snapshot param, dated clean asset events or run_after: cannot tell which snapshot")
    yesterday = run_days(run_after=run_after)[-1]
    return [(yesterday + timedelta(days=1)).isoformat()]


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


# Snapshots ------------------------------------------------------------------------------


class SnapshotRequestError(ValueError):
    """A snapshot run asked for what the configuration or the data cannot give (an unknown
    task, an empty clean zone, too little history for a training plan): retrying cannot help."""


def selected_snapshot_tasks(settings: Settings, tasks: Iterable[str] | None = None) -> list[str]:
    """The propensity tasks a run labels: every configured task when ``tasks`` is empty, else those named."""
    if not tasks:
        return list(settings.tasks)
    names = list(dict.fromkeys(tasks))
    unknown = [t for t in names if t not in settings.tasks]
    if unknown:
        raise SnapshotRequestError(f"unknown task(s) {unknown}: configured are {sorted(settings.tasks)}")
    return names


def planned_snapshot_dates(
    builder: SnapshotBuilder, tasks: Iterable[str], as_of: date | str | None = None
) -> list[date]:
    """Every snapshot date the out-of-time training plans of ``tasks`` need (what ``propensity run
    --through features`` builds), over ``builder``'s clean zone; ``as_of`` caps the test snapshot."""
    from propensity.features.training import plan_snapshots

    settings = builder.settings
    first, last = builder.data.start, builder.observed_until
    if first is None or last is None:
        raise SnapshotRequestError("the clean zone has no orders or events: run collect and validate first")
    cap = _as_date(as_of) if as_of else None
    try:
        plans = [plan_snapshots(t, settings.tasks[t], first.date(), last, settings.features, cap) for t in tasks]
    except ValueError as exc:  # not enough history for an out-of-time split
        raise SnapshotRequestError(str(exc)) from exc
    return sorted({d for p in plans for d in p.all()})


def snapshot_record(snap: Snapshot) -> dict[str, Any]:
    """What a task keeps of a published :class:`~propensity.features.snapshot.Snapshot` (an XCom):
    sizes, label completeness and its summary line, not the frames."""
    return {
        "snapshot": snap.snapshot.isoformat(),
        "customers": snap.features.height,
        "features": snap.features.width - 1,
        "profiles": snap.profiles.height,
        "labels": {t: {"rows": lab.height, "complete": bool(snap.complete[t])} for t, lab in snap.labels.items()},
        "seconds": round(snap.seconds, 3),
        "summary": snap.summary(),
    }


def build_snapshots(
    settings: Settings,
    dates: Iterable[date | str] = (),
    tasks: Iterable[str] | None = None,
    *,
    plan: bool = False,
    as_of: date | str | None = None,
) -> list[dict[str, Any]]:
    """Build and publish the snapshots at ``dates`` (with ``plan``: every date of the tasks'
    training plans) for ``tasks`` (default: all configured); one :func:`snapshot_record` each.

    The clean zone is loaded once. Raises :class:`SnapshotRequestError` for a request that
    cannot succeed and ``propensity.validation.frames.FrameValidationError`` when an output
    breaks its checks (nothing of that snapshot is published): both are final verdicts.
    Snapshots built before a failure stay published (each one is atomic).
    """
    from propensity.features.snapshot import SnapshotBuilder

    names = selected_snapshot_tasks(settings, tasks)
    undeclared = [t for t in names if t not in SNAPSHOT_TASKS]
    if undeclared:
        log.warning("task(s) %s have no labels asset: their labels are published without asset events", undeclared)
    builder = SnapshotBuilder(settings)
    if plan:
        days = planned_snapshot_dates(builder, names, as_of)
    else:
        days = sorted({_as_date(d) for d in dates})
        last = builder.observed_until
        if builder.data.start is None or last is None:
            raise SnapshotRequestError("the clean zone has no orders or events: run collect and validate first")
        late = [d.isoformat() for d in days if (d - last).days > 1]
        if late:
            log.warning("snapshot(s) %s: the last observed day is %s, features see no activity after it", late, last)
    log.info("building %d snapshot(s) for task(s) %s: %s", len(days), names, [d.isoformat() for d in days])
    return [snapshot_record(builder.build_and_publish(d, names)) for d in days]


def snapshot_extras(
    records: Iterable[Mapping[str, Any]], lake: str, tasks: Iterable[str] = SNAPSHOT_TASKS
) -> dict[str, dict[str, Any]]:
    """Asset event ``extra`` per asset name of :func:`snapshot_outlets`, from the snapshots' records.

    ``features``/``profiles``: ``{lake, dates, rows}``; ``labels.<task>``: ``{lake, task,
    dates, rows, complete}`` (``complete``: the dates whose label window is fully
    observed). ``rows`` is summed over the dates. A declared task that was not built gets
    ``dates == []``: Airflow emits an event for every outlet of a successful task, so
    consumers must go by ``dates`` (as :func:`dates_from_asset_events` does).
    """
    records = sorted(records, key=lambda r: r["snapshot"])
    dates = [r["snapshot"] for r in records]
    extras: dict[str, dict[str, Any]] = {
        features_asset_name(): {"lake": lake, "dates": dates, "rows": sum(r["customers"] for r in records)},
        profiles_asset_name(): {"lake": lake, "dates": dates, "rows": sum(r["profiles"] for r in records)},
    }
    for task in tasks:
        built = [r for r in records if task in r["labels"]]
        extras[labels_asset_name(task)] = {
            "lake": lake,
            "task": task,
            "dates": [r["snapshot"] for r in built],
            "rows": sum(r["labels"][task]["rows"] for r in built),
            "complete": [r["snapshot"] for r in built if r["labels"][task]["complete"]],
        }
    return extras


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


def table_range_params(verb: str, start_overrides: str) -> dict[str, Any]:
    """The trigger-form Params shared by the per-table DAGs: which tables, and an optional date range.

    ``verb`` ("collect", "validate") and ``start_overrides`` (what an explicit start replaces)
    only change the descriptions users read in the form.
    """
    from airflow.sdk import Param

    return {
        "tables": Param(
            None,
            type=["null", "array"],
            items={"type": "string", "enum": list(TABLES)},
            uniqueItems=True,
            examples=list(TABLES),
            title="Tables",
            description=f"Tables to {verb}; empty means all of them.",
        ),
        "start": Param(
            None,
            type=["null", "string"],
            format="date",
            title="Start date",
            description=f"First UTC day to {verb} (inclusive); overrides {start_overrides}.",
        ),
        "end": Param(
            None,
            type=["null", "string"],
            format="date",
            title="End date",
            description=f"Last UTC day to {verb} (inclusive); defaults to the start date.",
        ),
    }
