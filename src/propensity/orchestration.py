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
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from propensity.config import Settings, default_tasks
from propensity.contracts import TABLES, contract

if TYPE_CHECKING:  # pragma: no cover - typing only
    from airflow.sdk import Asset, AssetAlias

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


def task_asset_name(zone: str, task: str) -> str:
    """Airflow Asset name of one propensity task's output in ``zone``, e.g. ``labels.churn``."""
    return f"{zone}.{_task_name(task)}"


def task_asset_uri(zone: str, task: str) -> str:
    """Asset URI of one propensity task's output in ``zone``, e.g. ``propensity://labels/churn``."""
    return f"{ASSET_SCHEME}://{zone}/{_task_name(task)}"


def task_asset(zone: str, task: str) -> Asset:
    from airflow.sdk import Asset

    return Asset(name=task_asset_name(zone, task), uri=task_asset_uri(zone, task), group=zone)


def labels_asset_name(task: str) -> str:
    return task_asset_name(LABELS_ZONE, task)


def labels_asset_uri(task: str) -> str:
    return task_asset_uri(LABELS_ZONE, task)


def labels_asset(task: str) -> Asset:
    """Updated when ``labels/task=<task>/snapshot=T/`` partitions are published."""
    return task_asset(LABELS_ZONE, task)


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


# Sharded feature building ------------------------------------------------------------------
#
# With ``features.shards = N > 1`` the build_features DAG maps ``build_snapshot_shard`` over
# the N customer hash shards: each builds the features and labels of its customers for every
# requested date and parks them in the lake (``features/_shards/snapshot=T/shard=i``,
# ``labels/_shards/task=<t>/snapshot=T/shard=i``); ``merge_snapshot_shards`` then joins them,
# computes the profile tags over the union, validates and publishes each snapshot exactly as
# an unsharded build would. With one shard the shard task builds and publishes directly.

SHARD_TABLE = "_shards"


def snapshot_shards(settings: Settings) -> list[int]:
    return list(range(settings.features.shards))


def _snapshot_dates(builder: Any, names: list[str], dates: Iterable[date | str], plan: bool, as_of: Any) -> list[date]:
    if plan:
        return planned_snapshot_dates(builder, names, as_of)
    if builder.data.start is None or builder.observed_until is None:
        raise SnapshotRequestError("the clean zone has no orders or events: run collect and validate first")
    return sorted({_as_date(d) for d in dates})


def build_snapshot_shard(
    settings: Settings,
    shard: int,
    dates: Iterable[date | str] = (),
    tasks: Iterable[str] | None = None,
    *,
    plan: bool = False,
    as_of: date | str | None = None,
) -> list[dict[str, Any]]:
    """One shard's part of :func:`build_snapshots`; with a single shard, the whole (published) build."""
    from propensity.features.snapshot import SnapshotBuilder
    from propensity.lake import Lake

    shards = settings.features.shards
    if not 0 <= shard < shards:
        raise SnapshotRequestError(f"shard {shard} is out of range: features.shards is {shards}")
    if shards == 1:
        return build_snapshots(settings, dates, tasks, plan=plan, as_of=as_of)
    names = selected_snapshot_tasks(settings, tasks)
    builder = SnapshotBuilder(settings)
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    out = []
    for d in _snapshot_dates(builder, names, dates, plan, as_of):
        snap = builder.build(d, names, shard=shard, shards=shards)
        day = d.isoformat()
        lake.write_partition("features", SHARD_TABLE, {"snapshot": day, "shard": str(shard)}, snap.features.to_arrow())
        for t, lab in snap.labels.items():
            meta = {"complete": snap.complete[t]}
            lake.write_partition(
                "labels", SHARD_TABLE, {"task": t, "snapshot": day, "shard": str(shard)}, lab.to_arrow(), meta
            )
        out.append(
            {"snapshot": day, "shard": shard, "shards": shards, "tasks": names, "customers": snap.features.height}
        )
    return out


def merge_snapshot_shards(
    settings: Settings, shard_records: Iterable[Iterable[Mapping[str, Any]]]
) -> list[dict[str, Any]]:
    """Join every date's shards into the published snapshot (see above); one :func:`snapshot_record` each."""
    import polars as pl

    from propensity.features.snapshot import Snapshot, SnapshotBuilder
    from propensity.lake import Lake

    flat = [r for rs in shard_records for r in (rs or [])]
    if settings.features.shards == 1 or not flat or "shard" not in flat[0]:
        return flat  # one shard: it already published
    shards = int(flat[0]["shards"])
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    builder = SnapshotBuilder(settings)
    records = []
    for day in sorted({r["snapshot"] for r in flat}):
        mine = sorted((r for r in flat if r["snapshot"] == day), key=lambda r: r["shard"])
        if [r["shard"] for r in mine] != list(range(shards)):
            raise SnapshotRequestError(
                f"snapshot {day}: shards {[r['shard'] for r in mine]} built, expected 0..{shards - 1}"
            )
        parts = []
        for r in mine:
            where = {"snapshot": day, "shard": str(r["shard"])}
            feats = lake.read_partition("features", SHARD_TABLE, where)
            if feats is None:
                raise SnapshotRequestError(f"snapshot {day}: shard {r['shard']} is not in the lake")
            snap = Snapshot(_as_date(day), pl.from_arrow(feats), pl.DataFrame())  # type: ignore[arg-type]
            for t in r["tasks"]:
                lp = {"task": t, **where}
                snap.labels[t] = pl.from_arrow(lake.read_partition("labels", SHARD_TABLE, lp))  # type: ignore[assignment]
                snap.complete[t] = bool((lake.manifest("labels", SHARD_TABLE, lp) or {}).get("complete"))
            parts.append(snap)
        merged = builder.merge(parts)
        builder.publish(merged)
        for r in mine:
            where = {"snapshot": day, "shard": str(r["shard"])}
            lake.delete_partition("features", SHARD_TABLE, where)
            for t in r["tasks"]:
                lake.delete_partition("labels", SHARD_TABLE, {"task": t, **where})
        log.info("%s", merged.summary())
        records.append(snapshot_record(merged))
    return records


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


def date_param(title: str, description: str) -> Any:
    """An optional date in a trigger form (empty: the DAG's own default, which ``description`` names)."""
    from airflow.sdk import Param

    return Param(None, type=["null", "string"], format="date", title=title, description=description)


def choice_list_param(choices: Sequence[str], title: str, description: str) -> Any:
    """An optional subset of ``choices`` in a trigger form (empty: what ``description`` says)."""
    from airflow.sdk import Param

    return Param(
        None,
        type=["null", "array"],
        items={"type": "string", "enum": list(choices)},
        uniqueItems=True,
        examples=list(choices),
        title=title,
        description=description,
    )


def table_range_params(verb: str, start_overrides: str) -> dict[str, Any]:
    """The trigger-form Params shared by the per-table DAGs: which tables, and an optional date range.

    ``verb`` ("collect", "validate") and ``start_overrides`` (what an explicit start replaces)
    only change the descriptions users read in the form.
    """
    return {
        "tables": choice_list_param(TABLES, "Tables", f"Tables to {verb}; empty means all of them."),
        "start": date_param("Start date", f"First UTC day to {verb} (inclusive); overrides {start_overrides}."),
        "end": date_param("End date", f"Last UTC day to {verb} (inclusive); defaults to the start date."),
    }


# Training and drift monitoring --------------------------------------------------------------
#
# ``train_models`` maps one training task over the propensity tasks; each mapped task trains,
# registers and gates one model (``Trainer.train([task])``: its own MLflow parent run) and
# publishes, through the asset alias ``models``, an event on ``models.<task>``
# (``propensity://models/<task>``) when it moved ``champion``. ``monitor_drift`` compares the
# champions' references with the latest snapshot and, only on a breach, updates the asset
# ``drift`` (``propensity://monitoring/drift``, ``extra.tasks``: the breached tasks), on
# which ``train_models`` is scheduled besides its weekly cron: a drift-triggered run retrains
# the breached tasks only.

MODELS_ZONE = "models"
MONITORING_GROUP = "monitoring"
#: Pool of the CPU- and memory-hungry tasks (training). A deployment creates it once, e.g.
#: ``airflow pools set propensity_heavy 1 "training"``; ``dag.test()`` runs tasks without
#: consulting pools.
HEAVY_POOL = "propensity_heavy"
#: Training one task builds its snapshot plan (dozens of snapshots), fits, tunes and logs.
TRAIN_EXECUTION_TIMEOUT = timedelta(hours=4)
#: The XCom key of a training task's MLflow coordinates (read by the MLflow link plugin).
MLFLOW_XCOM_KEY = "mlflow"


class TrainingRequestError(ValueError):
    """A training request the data cannot satisfy (empty clean zone, too little history for
    an out-of-time split, a label with one class): retrying cannot help."""


def models_asset_name(task: str) -> str:
    return task_asset_name(MODELS_ZONE, task)


def models_asset_uri(task: str) -> str:
    return task_asset_uri(MODELS_ZONE, task)


def models_asset(task: str) -> Asset:
    """Updated when a new version of ``propensity-<task>`` becomes champion."""
    return task_asset(MODELS_ZONE, task)


def models_alias() -> AssetAlias:
    """Outlet of the mapped training task: each mapped instance adds an event for its own task's
    asset (a mapped task has one static outlet list; the alias lets it pick the asset at run time)."""
    from airflow.sdk import AssetAlias

    return AssetAlias(name=MODELS_ZONE, group=MODELS_ZONE)


def drift_asset_name() -> str:
    return "drift"


def drift_asset_uri() -> str:
    return f"{ASSET_SCHEME}://{MONITORING_GROUP}/drift"


def drift_asset() -> Asset:
    """The Airflow ``Asset`` updated only when the drift monitor finds a breach."""
    from airflow.sdk import Asset

    return Asset(name=drift_asset_name(), uri=drift_asset_uri(), group=MONITORING_GROUP)


def tasks_from_drift_events(triggering_asset_events: Any) -> list[str] | None:
    """The breached tasks (``extra.tasks``) of the triggering drift events; None without any
    drift event (a cron or manual run), so callers can tell "no drift event" from "no task"."""
    found: list[str] | None = None
    for event in _iter_events(triggering_asset_events):
        if str(_field(_field(event, "asset"), "uri") or "") != drift_asset_uri():
            continue
        found = found if found is not None else []
        found += [str(t) for t in (_field(event, "extra") or {}).get("tasks") or () if str(t) not in found]
    return found


def training_tasks(
    settings: Settings, tasks: Iterable[str] | None = None, triggering_asset_events: Any = None
) -> list[str]:
    """The tasks a ``train_models`` run trains: ``tasks`` (all configured when empty), narrowed
    to the breached ones when drift events triggered the run (an event naming no task: all)."""
    names = selected_snapshot_tasks(settings, tasks)
    drifted = tasks_from_drift_events(triggering_asset_events)
    if drifted:
        names = [t for t in names if t in drifted]
    return names


def features_params() -> dict[str, Any]:
    """The trigger-form Params of ``build_features``."""
    from airflow.sdk import Param

    return {
        "snapshot": date_param(
            "Snapshot date",
            "Snapshot date T (features from data before T); overrides the date derived from the "
            "triggering clean asset events. With 'plan': the latest test snapshot of the plans.",
        ),
        "tasks": choice_list_param(
            SNAPSHOT_TASKS, "Tasks", "Propensity tasks to build labels for; empty builds all configured tasks."
        ),
        "plan": Param(
            False,
            type="boolean",
            title="Training plan",
            description="Build every snapshot of the tasks' out-of-time training plans (train, validation, test "
            "dates; what 'propensity run --through features' builds) instead of one snapshot.",
        ),
    }


def training_params() -> dict[str, Any]:
    """The trigger-form Params of ``train_models``."""
    from airflow.sdk import Param

    return {
        "tasks": Param(
            list(SNAPSHOT_TASKS),
            type="array",
            items={"type": "string", "enum": list(SNAPSHOT_TASKS)},
            uniqueItems=True,
            minItems=1,
            title="Tasks",
            description="Propensity tasks to train (one mapped task each). A run triggered by drift "
            "trains only those of them whose drift breached.",
        ),
        "snapshot": date_param(
            "Test snapshot (as of)",
            "Cap the test snapshot of the out-of-time plans at this date (like 'propensity train "
            "--as-of'); empty: the latest fully labelled snapshot.",
        ),
        "tuning_trials": Param(
            None,
            type=["null", "integer"],
            minimum=0,
            title="Tuning trials",
            description="Optuna trials per task (0: no tuning); empty: the configured models.tuning_trials.",
        ),
        "promote": Param(
            True,
            type="boolean",
            title="Promote",
            description="Let a version that passes the gate become champion. Off: versions are registered, "
            "gated and tagged with the verdict, but the champion stays.",
        ),
    }


def monitor_params() -> dict[str, Any]:
    """The trigger-form Params of ``monitor_drift``."""
    return {
        "snapshot": date_param(
            "Snapshot", "Features snapshot to compare with the champions' references; empty: the latest published."
        ),
        "tasks": choice_list_param(
            SNAPSHOT_TASKS, "Tasks", "Propensity tasks to monitor; empty monitors all configured tasks."
        ),
    }


def mlflow_record(settings: Settings, result: Any) -> dict[str, Any]:
    """The ``mlflow`` XCom of a training task from its ``TaskResult`` (the format of
    :func:`propensity.links.mlflow_xcom`, which the MLflow link plugin reads, plus ``promoted``)."""
    from mlflow import MlflowClient

    from propensity.links import mlflow_xcom
    from propensity.models.registry import model_name

    run = MlflowClient(tracking_uri=settings.tracking_uri).get_run(result.run_id)
    payload = mlflow_xcom(
        settings.tracking_uri, run.info.experiment_id, result.run_id, model_name(result.task), result.model_version
    )
    return {**payload, "promoted": bool(result.promoted)}


def train_one(
    settings: Settings,
    task: str,
    as_of: date | str | None = None,
    tuning_trials: int | None = None,
    promote: bool = True,
) -> dict[str, Any]:
    """Train, register and gate one task (its own MLflow parent run); returns its report
    (``TaskResult.report()``), the gate ``decision`` and ``mlflow`` (:func:`mlflow_record`).

    Raises :class:`TrainingRequestError` when the data cannot give a model (final).
    """
    from propensity.models.train import Trainer

    if tuning_trials is not None:
        models = settings.models.model_copy(update={"tuning_trials": int(tuning_trials)})
        settings = settings.model_copy(update={"models": models})
    trainer = Trainer(settings)
    try:
        report = trainer.train([task], _as_date(as_of) if as_of else None, promote=promote)
    except ValueError as exc:
        raise TrainingRequestError(f"task {task}: {exc}") from exc
    result = trainer.results[task]
    return {
        "task": task,
        **report["tasks"][task],
        "parent_run_id": report["parent_run_id"],
        "decision": result.decision,
        MLFLOW_XCOM_KEY: mlflow_record(settings, result),
    }


def models_extra(record: Mapping[str, Any]) -> dict[str, Any]:
    """Asset event ``extra`` of ``models.<task>`` from a :func:`train_one` record."""
    ml = record[MLFLOW_XCOM_KEY]
    return {
        "task": record["task"],
        "model_name": ml["model_name"],
        "model_version": ml["model_version"],
        "run_id": ml["run_id"],
        "test_auc": record.get("test_auc"),
    }


def run_drift_monitor(
    settings: Settings, snapshot: date | str | None = None, tasks: Iterable[str] | None = None
) -> dict[str, Any]:
    """Compare the champions with a snapshot, write the report to the lake; the report as a dict
    (``DriftReport.to_dict()``) plus ``keys`` (where it was written) and ``lines`` (log lines)."""
    from propensity.monitoring.monitor import monitor, write_report

    names = selected_snapshot_tasks(settings, tasks)
    report = monitor(settings, snapshot, names)
    keys = write_report(settings, report)
    return {**report.to_dict(), "keys": keys, "lines": report.summary_lines(top=10)}


def drift_extra(report: Mapping[str, Any], lake: str) -> dict[str, Any]:
    """Asset event ``extra`` of ``drift``: the snapshot, the breached tasks and the report's key."""
    return {
        "lake": lake,
        "snapshot": report["snapshot"],
        "tasks": list(report["breached_tasks"]),
        "report": report["keys"]["json"],
    }


# Scoring and audiences ----------------------------------------------------------------------
#
# ``score_and_build_audiences`` runs when ``build_features`` publishes a snapshot (the asset
# ``features``). :func:`scoring_plan` resolves the run's tasks and shards and makes sure the
# date's snapshot is published (building it once, up front, rather than in every shard);
# :func:`score_shard` (one mapped Airflow task per task x customer hash shard, of
# ``scoring.shards``) scores one shard and writes its frame to the lake under
# ``scores/_shards/task=<t>/dt=<d>/shard=<i>/``: XCom carries that key, never the frame.
# :func:`merge_score_shards` (one mapped task per task) unions the shards with deciles over the
# whole population, validates the result like an unsharded run and publishes
# ``scores/task=<t>/dt=<d>/``, then removes the shards; through the asset alias ``scores`` it
# updates ``scores.<task>`` (``propensity://scores/<task>``). :func:`build_audiences` builds
# the declared audiences and updates ``audiences`` (``propensity://audiences/``; a dry run
# reports ``dates: []``, like every outlet event that published nothing).

SCORES_ZONE = "scores"
AUDIENCES_ZONE = "audiences"
#: Table level of the temporary per-shard frames (``scores/_shards/...``). Its name has no ``=``,
#: so ``Lake.partitions("scores", "")`` (readers of published scores) never lists them.
SHARDS_TABLE = "_shards"
#: Scoring one shard of one task: loading the champion, the snapshot and predicting.
SCORE_EXECUTION_TIMEOUT = timedelta(hours=1)
#: Audiences: reason codes (TreeSHAP) for every member, exports, the CRM table.
AUDIENCES_EXECUTION_TIMEOUT = timedelta(hours=2)


class ScoringRequestError(ValueError):
    """A scoring or audience request the models or the data cannot satisfy (no champion, a
    signature mismatch, scores breaking their checks, an unknown audience or a bad rule, shards
    scored by different champions): retrying the task cannot help."""


def scores_asset_name(task: str) -> str:
    return task_asset_name(SCORES_ZONE, task)


def scores_asset_uri(task: str) -> str:
    return task_asset_uri(SCORES_ZONE, task)


def scores_asset(task: str) -> Asset:
    """Updated when ``scores/task=<task>/dt=D/`` is published."""
    return task_asset(SCORES_ZONE, task)


def scores_alias() -> AssetAlias:
    """Outlet of the mapped merge task: each mapped instance adds the event of its own task's
    ``scores.<task>`` (a mapped task has one static outlet list, see :func:`models_alias`)."""
    from airflow.sdk import AssetAlias

    return AssetAlias(name=SCORES_ZONE, group=SCORES_ZONE)


def audiences_asset_name() -> str:
    return AUDIENCES_ZONE


def audiences_asset_uri() -> str:
    """Asset URI of the audiences: ``propensity://audiences/`` (slash: see :func:`features_asset_uri`)."""
    return f"{ASSET_SCHEME}://{AUDIENCES_ZONE}/"


def audiences_asset() -> Asset:
    """The Airflow ``Asset`` updated when a date's audiences (lake, exports, manifests) are published."""
    from airflow.sdk import Asset

    return Asset(name=audiences_asset_name(), uri=audiences_asset_uri(), group=AUDIENCES_ZONE)


def scoring_params() -> dict[str, Any]:
    """The trigger-form Params of ``score_and_build_audiences``."""
    from airflow.sdk import Param

    return {
        "date": date_param(
            "Date",
            "Snapshot date to score and build audiences for (YYYY-MM-DD); empty: the latest date "
            "of the triggering features asset events, else the run's logical date, else today (UTC).",
        ),
        "audiences": Param(
            None,
            type=["null", "array"],
            items={"type": "string"},
            uniqueItems=True,
            examples=["win-back", "cross-sell", "conversion-nudge"],
            title="Audiences",
            description="Audiences to build (names declared in the audiences YAML); empty builds all declared. "
            "Every configured task is scored either way.",
        ),
        "dry_run": Param(
            False,
            type="boolean",
            title="Dry run",
            description="Select and report the audiences but publish none (no lake partition, export, manifest "
            "or CRM rows). Scores are still published: audiences are built from them.",
        ),
    }


def scoring_date(
    *,
    date: date | str | None = None,
    triggering_asset_events: Any = None,
    logical_date: datetime | None = None,
    run_after: datetime | None = None,
) -> str:
    """The date a ``score_and_build_audiences`` run scores (ISO string).

    The ``date`` param wins; else the latest date the triggering ``features`` asset events
    report (a snapshot published at ``T`` is scored at ``T``); else the run's logical date
    (asset-triggered runs have none in Airflow 3); else (a manual run without one) the day of
    ``run_after`` in UTC, i.e. today's snapshot, as a manual ``build_features`` run builds.
    """
    if date:
        return _as_date(date).isoformat()
    dates = dates_from_asset_events(triggering_asset_events, zone=FEATURES_ZONE)
    if dates:
        return dates[-1]
    ref = logical_date or run_after
    if ref is None:
        raise ValueError("no date param, dated features asset events, logical date or run_after: cannot tell the date")
    return _utc(ref).date().isoformat()


def scoring_plan(settings: Settings, d: date | str, tasks: Iterable[str] | None = None) -> dict[str, Any]:
    """What a scoring run maps over: ``{date, tasks, shards, units, customers, populations, built}``.

    The snapshot at ``d`` (features, profiles and the tasks' labels) is built and published
    first when any part of it is missing (``built``), so that the shards all read one published
    snapshot instead of each building it. ``shards`` is ``[0, .., scoring.shards - 1]``;
    ``units`` the cross product, one ``{name, shard, day}`` per mapped scoring task.
    Raises :class:`SnapshotRequestError` (unknown task, empty clean zone) and
    ``FrameValidationError`` (the snapshot breaks its checks): final verdicts.
    """
    from propensity.lake import Lake

    names = selected_snapshot_tasks(settings, tasks)
    day = _as_date(d)
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    snap = {"snapshot": day.isoformat()}

    def manifests() -> dict[str, Any]:
        return {
            FEATURES_ZONE: lake.manifest(FEATURES_ZONE, "", snap),
            PROFILES_ZONE: lake.manifest(PROFILES_ZONE, "", snap),
            **{t: lake.manifest(LABELS_ZONE, "", {"task": t, **snap}) for t in names},
        }

    found = manifests()
    built = not all(found.values())
    if built:
        from propensity.features.snapshot import SnapshotBuilder

        builder = SnapshotBuilder(settings)
        if builder.data.start is None or builder.observed_until is None:
            raise SnapshotRequestError("the clean zone has no orders or events: run collect and validate first")
        log.info("snapshot %s is not published: building it for %s", day, names)
        builder.build_and_publish(day, names)
        found = manifests()
    return {
        "date": day.isoformat(),
        "tasks": names,
        "shards": list(range(settings.scoring.shards)),
        "units": [
            {"name": t, "shard": i, "day": day.isoformat()} for t in names for i in range(settings.scoring.shards)
        ],
        "customers": int(found[FEATURES_ZONE]["row_count"]),
        "populations": {t: int(found[t]["row_count"]) for t in names},
        "built": built,
    }


def shard_groups(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The :func:`score_shard` hand-offs grouped per task and date, in first-seen order: one
    ``{name, day, shards}`` per mapped merge task (``shards``: that task's records)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["task"], r["date"]), []).append(dict(r))
    return [{"name": t, "day": d, "shards": rs} for (t, d), rs in groups.items()]


def shard_partition(task: str, d: date | str, shard: int) -> dict[str, str]:
    """Partition values of one shard's temporary frame under ``scores/_shards/``."""
    return {"task": _task_name(task), "dt": _as_date(d).isoformat(), "shard": str(int(shard))}


def champion_mlflow_record(settings: Settings, champ: Any) -> dict[str, str]:
    """The ``mlflow`` XCom of a scoring task: the champion it used (``scoring.Champion``)."""
    from mlflow import MlflowClient

    from propensity.links import mlflow_xcom

    run = MlflowClient(tracking_uri=settings.tracking_uri).get_run(champ.run_id)
    return mlflow_xcom(settings.tracking_uri, run.info.experiment_id, champ.run_id, champ.name, champ.version)


def score_shard(settings: Settings, d: date | str, task: str, shard: int) -> dict[str, Any]:
    """Score one customer hash shard of ``task`` at ``d`` and write it under ``scores/_shards/``.

    Returns the hand-off for :func:`merge_score_shards` (small, an XCom): ``{task, date, shard,
    shards, key, rows, seconds, model_name, model_version, run_id, mlflow}``, ``key`` being where
    the frame is. Raises :class:`ScoringRequestError` for what a retry cannot fix (no champion,
    a signature mismatch, a shard breaking its checks); I/O errors propagate as they are.
    """
    from propensity import scoring
    from propensity.lake import Lake, partition_path

    shards = settings.scoring.shards
    if not 0 <= int(shard) < shards:
        raise ScoringRequestError(f"shard {shard} is out of range: scoring.shards is {shards}")
    day = _as_date(d)
    try:
        run = scoring.score(settings, day, [task], shard=int(shard), publish=False)
    except ValueError as exc:  # SignatureMismatch, FrameValidationError, no champion, missing features
        raise ScoringRequestError(f"scores.{task}.{day} shard {shard}/{shards}: {exc}") from exc
    df, champ = run.scores[task], run.champions[task]
    parts = shard_partition(task, day, shard)
    meta = {
        "model_name": champ.name,
        "model_version": champ.version,
        "run_id": champ.run_id,
        "snapshot": day.isoformat(),
        "shards": shards,
    }
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    lake.write_partition(SCORES_ZONE, SHARDS_TABLE, parts, df.to_arrow(), meta)
    return {
        "task": task,
        "date": day.isoformat(),
        "shard": int(shard),
        "shards": shards,
        "key": partition_path(SCORES_ZONE, SHARDS_TABLE, parts),
        "rows": df.height,
        "seconds": round(run.seconds[task], 3),
        "model_name": champ.name,
        "model_version": champ.version,
        "run_id": champ.run_id,
        MLFLOW_XCOM_KEY: champion_mlflow_record(settings, champ),
    }


def merge_score_shards(
    settings: Settings, d: date | str, task: str, records: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """Merge the shards :func:`score_shard` wrote for ``task`` at ``d`` into ``scores/task=<t>/dt=<d>/``.

    ``records`` are the shard hand-offs (those of other tasks or dates are ignored). Every
    shard must be there and all must come from one champion version (the alias can move while
    a run scores); the union gets deciles over the whole population
    (``scoring.merge_shards``), passes the checks of an unsharded run (``scoring.score_checks``:
    keys unique and not null, scores in [0, 1], exactly the task's eligible population), and is
    published with the same manifest fields as ``propensity score``. The shards are removed
    afterwards. Returns ``{task, date, rows, shards, mean_score, model_name, model_version,
    run_id, key}``.
    """
    import polars as pl

    from propensity import scoring
    from propensity.lake import Lake, partition_path
    from propensity.validation.frames import FrameValidationError, check_frame

    day = _as_date(d).isoformat()
    mine = sorted((r for r in records if r["task"] == task and r["date"] == day), key=lambda r: int(r["shard"]))
    if not mine:
        raise ScoringRequestError(f"scores.{task}.{day}: no shard was scored")
    shards = int(mine[0]["shards"])
    got = [int(r["shard"]) for r in mine]
    if got != list(range(shards)):
        raise ScoringRequestError(f"scores.{task}.{day}: shards {got} scored, expected 0..{shards - 1}")
    models = sorted({(r["model_name"], str(r["model_version"]), r["run_id"]) for r in mine})
    if len(models) > 1:
        versions = ", ".join(f"{n} v{v}" for n, v, _ in models)
        raise ScoringRequestError(
            f"scores.{task}.{day}: the shards were scored by different champions ({versions}): the champion "
            "moved during the run; rerun it"
        )
    name, version, run_id = models[0]
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    frames = []
    for r in mine:
        table = lake.read_partition(SCORES_ZONE, SHARDS_TABLE, shard_partition(task, day, r["shard"]))
        if table is None:
            raise ScoringRequestError(f"scores.{task}.{day}: shard {r['shard']} is not in the lake ({r['key']})")
        frames.append(pl.from_arrow(table))
    df = scoring.merge_shards(frames)  # type: ignore[arg-type]
    labels = lake.manifest(LABELS_ZONE, "", {"task": task, "snapshot": day})
    if labels is None:
        raise ScoringRequestError(f"scores.{task}.{day}: labels/task={task}/snapshot={day} is not published")
    try:
        check_frame(f"scores.{task}.{day}", df, scoring.score_checks(int(labels["row_count"])))
    except FrameValidationError as exc:
        raise ScoringRequestError(str(exc)) from exc
    parts = {"task": task, "dt": day}
    scoring.publish_frame(lake, task, day, df, name, version, run_id)
    for r in mine:
        lake.delete_partition(SCORES_ZONE, SHARDS_TABLE, shard_partition(task, day, r["shard"]))
    return {
        "task": task,
        "date": day,
        "rows": df.height,
        "shards": shards,
        "mean_score": round(float(df["score"].mean()), 6) if df.height else None,
        "model_name": name,
        "model_version": version,
        "run_id": run_id,
        "key": partition_path(SCORES_ZONE, "", parts),
    }


def scores_extra(record: Mapping[str, Any], lake: str) -> dict[str, Any]:
    """Asset event ``extra`` of ``scores.<task>`` from a :func:`merge_score_shards` record."""
    return {
        "lake": lake,
        "task": record["task"],
        "dates": [record["date"]],
        "rows": record["rows"],
        "model_name": record["model_name"],
        "model_version": record["model_version"],
        "run_id": record["run_id"],
    }


def _plain(value: Any) -> Any:
    """JSON-safe copy (numpy/polars scalars to Python numbers) for XCom."""
    import json

    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def build_audiences(
    settings: Settings, d: date | str, names: Iterable[str] | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Build (unless ``dry_run``, publish) the declared audiences at ``d`` from its published scores.

    Returns ``{date, dry_run, rows, table, warnings, exports, models}``: ``rows`` and ``table`` are
    ``AudienceRun.rows()`` / ``AudienceRun.table()`` (the summary the CLI prints), ``warnings`` the
    composition warnings. Raises :class:`ScoringRequestError` for an unknown audience, a rule
    that cannot be evaluated or scores that are not published.
    """
    from propensity.audiences import build

    day = _as_date(d)
    try:
        run = build(settings, day, list(dict.fromkeys(names)) if names else None, dry_run=bool(dry_run))
    except ValueError as exc:
        raise ScoringRequestError(f"audiences dt={day}: {exc}") from exc
    return _plain(
        {
            "date": day.isoformat(),
            "dry_run": bool(dry_run),
            "rows": run.rows(),
            "table": run.table(),
            "warnings": [w for c in run.compositions for w in c.warnings],
            "exports": dict(run.exports),
            "models": run.models,
        }
    )


def audience_lines(record: Mapping[str, Any]) -> list[str]:
    """Log lines of a :func:`build_audiences` record: a heading, the summary table and, if any, the
    number of composition warnings (``audiences.build`` logs each one as it finds it)."""
    what = "dry run, nothing published" if record["dry_run"] else f"{len(record['exports'])} export(s) published"
    lines = [f"audiences dt={record['date']} ({what}):", *record["table"].splitlines()]
    if record["warnings"]:
        where = "" if record["dry_run"] else f"; report: reports/audiences/dt={record['date']}/composition.md"
        lines.append(f"{len(record['warnings'])} composition warning(s) (logged above{where})")
    return lines


def audiences_extra(record: Mapping[str, Any], lake: str) -> dict[str, Any]:
    """Asset event ``extra`` of ``audiences``: ``dates`` is empty for a dry run (nothing published)."""
    return {
        "lake": lake,
        "dates": [] if record["dry_run"] else [record["date"]],
        "dry_run": record["dry_run"],
        "audiences": {r["audience"]: {"size": r["size"], "treatment": r["treatment"]} for r in record["rows"]},
    }
