"""Partition semantics: every DAG run processes exactly one day or one snapshot, named by its run.

Keys are ISO dates (``YYYY-MM-DD``):

* ``shop_collect`` runs on a daily :func:`daily` partition timetable: the run for key ``D``
  collects the UTC day ``D`` (the scheduler creates it after ``D`` ends). Its ``raw.<table>``
  events carry ``D``.
* ``shop_validate`` runs for ``D`` only when *every* ``raw.<table>`` has an event for ``D``
  (:func:`on_all`), and publishes ``clean.<table>`` events for ``D`` only when the whole day
  passed the gate: a day with a critical failure (an empty day, a broken key) triggers nothing.
* ``build_features`` runs for ``D`` when every ``clean.<table>`` has ``D``, builds the snapshot
  ``T = D + 1`` (:func:`snapshot_after`: data strictly before ``T``) and emits its ``features``,
  ``profiles`` and ``labels.<task>`` events under the key ``T``.
* ``score_and_build_audiences``, ``train_models`` and ``monitor_drift`` run for a snapshot key
  ``T``, which names the date they score, train as of, or check.

A run with no partition key (a manual trigger without one, ``dag.test()``) must name its
partition in its ``date`` param (:func:`run_partition`); nothing is ever derived from "the
latest" event or the wall clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from propensity.errors import RequestError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from airflow.sdk import Asset

KEY_FORMAT = "%Y-%m-%d"


def daily() -> Any:
    """One partition per UTC day; the run for day ``D`` is created once ``D`` is over."""
    from airflow.sdk import CronPartitionTimetable

    return CronPartitionTimetable("0 0 * * *", timezone="UTC", run_offset=-1, key_format=KEY_FORMAT)


def on_all(assets: Iterable[Asset]) -> Any:
    """A run per partition key once *every* asset of ``assets`` has an event for that key."""
    from airflow.sdk import AssetAll, IdentityMapper, PartitionedAssetTimetable

    return PartitionedAssetTimetable(assets=AssetAll(*assets), default_partition_mapper=IdentityMapper())


def on_any(assets: Iterable[Asset]) -> Any:
    """A run per partition key as soon as *any* asset of ``assets`` has an event for that key."""
    from airflow.sdk import AssetAny, IdentityMapper, PartitionedAssetTimetable

    return PartitionedAssetTimetable(assets=AssetAny(*assets), default_partition_mapper=IdentityMapper())


def parse_day(value: date | str, what: str = "partition key") -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip()[:10])
    except ValueError:
        raise RequestError(f"{what} {value!r} is not a date (YYYY-MM-DD)") from None


def run_partition(partition_key: str | None, params: Mapping[str, Any] | None = None, param: str = "date") -> date:
    """The day (or snapshot) a run processes: its partition key, else its ``param`` (``date``).

    Raises :class:`RequestError` (a final verdict) when the run names neither.
    """
    if partition_key:
        return parse_day(partition_key)
    value = (params or {}).get(param)
    if value:
        return parse_day(value, f"param {param!r}")
    raise RequestError(
        f"this run names no partition: trigger it with a partition key (YYYY-MM-DD) or the {param!r} field"
    )


def snapshot_after(day: date) -> date:
    """The snapshot that first sees every event of ``day`` (features use data strictly before it)."""
    return day + timedelta(days=1)


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def iter_events(triggering_asset_events: Any) -> Iterable[Any]:
    """Events of Airflow's ``triggering_asset_events`` (asset -> events) or any iterable of events."""
    if not triggering_asset_events:
        return
    groups = (
        triggering_asset_events.values() if isinstance(triggering_asset_events, Mapping) else [triggering_asset_events]
    )
    for events in groups:
        yield from events


def event_extras(triggering_asset_events: Any, uri_prefix: str, key: str | None) -> list[dict[str, Any]]:
    """The ``extra`` of the triggering events whose asset URI starts with ``uri_prefix`` and whose
    partition key is ``key`` (events of other partitions never leak into a run)."""
    out = []
    for event in iter_events(triggering_asset_events):
        uri = str(_field(_field(event, "asset"), "uri") or "")
        if not uri.startswith(uri_prefix):
            continue
        if key is not None and _field(event, "partition_key") not in (None, key):
            continue
        out.append(dict(_field(event, "extra") or {}))
    return out


def days_between(start: date, end: date) -> list[date]:
    if end < start:
        raise RequestError(f"start {start} is after the partition day {end}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]
