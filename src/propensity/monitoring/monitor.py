"""Drift monitoring of the champions: references from MLflow, current data from the lake.

Reference
    Training logs ``reference.json`` in each task's MLflow run (:func:`training_reference`):
    the profiles of the features over the training rows (the stacked training snapshots,
    each restricted to the task's population) and of the model's test-set scores. The
    monitor reads it from the run of ``models:/propensity-<task>@champion``, so it always
    compares with the data the *served* model learned from.

Current
    The latest published features snapshot ``features/snapshot=T/`` (or the one asked
    for), restricted to the task's population at ``T`` (``labels/task=<task>/snapshot=T/``,
    published with the snapshot; the whole snapshot, with a note, when it is missing), and
    the task's scores ``scores/task=<task>/dt=T/`` (or the latest before ``T``) when the
    scoring stage has published them; without scores only the features are compared.

Report
    ``drift/dt=T/report.json`` and ``drift/dt=T/report.md`` in the lake (replaced when the
    same snapshot is monitored again). A task without a champion or whose champion has no
    reference (trained before references existed) is listed as not monitored.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from propensity.calendar import PromotionCalendar, feature_names, known_calendar
from propensity.config import Settings
from propensity.errors import RequestError
from propensity.features.catalogue import group_features
from propensity.lake import Lake
from propensity.monitoring.drift import DriftReport, build_reference, task_drift
from propensity.zones import DRIFT as DRIFT_ZONE
from propensity.zones import FEATURES as FEATURES_ZONE
from propensity.zones import LABELS as LABELS_ZONE
from propensity.zones import SCORES as SCORES_ZONE

log = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "reference.json"
KEY = "customer_id"


class ReferenceUnavailable(LookupError):
    """No champion, or a champion without a drift reference: the task cannot be monitored."""


class MonitorRequestError(RequestError):
    """Nothing to monitor (no features snapshot published, or not the one asked for)."""


# Reference --------------------------------------------------------------------------------


def training_reference(settings: Settings, model: Any, frames: Any, test_scores: Any) -> dict[str, Any]:
    """The drift reference of a freshly trained model (``PropensityModel``) from its ``TaskFrames``:
    profiles of its features over the training rows and of its test-set scores."""
    from propensity.models.model import model_input

    mon = settings.monitoring
    return build_reference(
        model_input(frames.train, model.features),
        model.features,
        model.encoder.mapping,
        test_scores,
        bins=mon.bins,
        max_categories=mon.max_categories,
        task=frames.plan.task,
        train_snapshots=[d.isoformat() for d in frames.plan.train],
        test_snapshot=frames.plan.test.isoformat(),
    )


def champion_reference(settings: Settings, task: str) -> dict[str, Any]:
    """``reference.json`` of the champion's run, with ``model`` = {model_name, model_version, run_id}."""
    import mlflow.artifacts
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from propensity.models.registry import CHAMPION, model_name

    name = model_name(task)
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as exc:
        raise ReferenceUnavailable(f"{name} has no {CHAMPION}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=version.run_id,
                artifact_path=REFERENCE_ARTIFACT,
                dst_path=tmp,
                tracking_uri=settings.tracking_uri,
            )
        except (MlflowException, OSError) as exc:
            raise ReferenceUnavailable(
                f"{name} v{version.version} (run {version.run_id}) has no {REFERENCE_ARTIFACT}: retrain it"
            ) from exc
        reference = json.loads(Path(path).read_text())
    reference["model"] = {"model_name": name, "model_version": str(version.version), "run_id": version.run_id}
    return reference


# Current data -----------------------------------------------------------------------------


def published_snapshots(lake: Lake) -> list[str]:
    """Dates of the published features snapshots, oldest first."""
    return sorted(p["snapshot"] for p in lake.partitions(FEATURES_ZONE, "") if "snapshot" in p)


def resolve_snapshot(lake: Lake, snapshot: date | str | None = None) -> str:
    """The snapshot to monitor: ``snapshot`` if published, else the latest published one."""
    days = published_snapshots(lake)
    if snapshot:
        day = str(snapshot)[:10]
        if day not in days:
            raise MonitorRequestError(f"features snapshot {day} is not published in {lake.uri}")
        return day
    if not days:
        raise MonitorRequestError(f"no features snapshot is published in {lake.uri}: run build_features first")
    return days[-1]


def task_population(lake: Lake, task: str, snapshot: str, features: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
    """The features of the task's population at ``snapshot`` (all customers when its labels are missing)."""
    labels = lake.read_partition(LABELS_ZONE, "", {"task": task, "snapshot": snapshot}, columns=[KEY])
    if labels is None:
        return features, [f"labels/task={task}/snapshot={snapshot} not published: compared every customer"]
    ids = pl.from_arrow(labels)
    assert isinstance(ids, pl.DataFrame)
    return features.join(ids.unique(), on=KEY, how="semi"), []


def task_scores(lake: Lake, task: str, snapshot: str) -> tuple[np.ndarray | None, str | None]:
    """The task's published scores for ``snapshot`` (or the latest partition before it), and its ``dt``."""
    dts = sorted(p["dt"] for p in lake.partitions(SCORES_ZONE, "") if p.get("task") == task and p.get("dt"))
    usable = [d for d in dts if d <= snapshot]
    if not usable:
        return None, None
    table = lake.read_partition(SCORES_ZONE, "", {"task": task, "dt": usable[-1]}, columns=["score"])
    if table is None or table.num_rows == 0:
        return None, None
    return table.column("score").to_numpy(zero_copy_only=False).astype(np.float64), usable[-1]


# The monitor ------------------------------------------------------------------------------


def monitor(
    settings: Settings,
    snapshot: date | str | None = None,
    tasks: Iterable[str] | None = None,
    references: Mapping[str, Mapping[str, Any]] | None = None,
) -> DriftReport:
    """Drift of every task's champion (or of ``references``, task -> reference) on ``snapshot``
    (default: the latest published). Nothing is written: see :func:`write_report`."""
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    day = resolve_snapshot(lake, snapshot)
    mon = settings.monitoring
    calendar = known_calendar(settings.promotions_file)
    report = DriftReport(day, mon.psi_threshold, mon.min_drifted_features, mon.score_psi_threshold)
    table = lake.read_partition(FEATURES_ZONE, "", {"snapshot": day})
    features = pl.from_arrow(table) if table is not None else None
    assert isinstance(features, pl.DataFrame)
    for task in tasks or list(settings.tasks):
        try:
            reference = references[task] if references is not None else champion_reference(settings, task)
        except KeyError:
            report.skipped[task] = "no reference given"
            continue
        except ReferenceUnavailable as exc:
            report.skipped[task] = str(exc)
            continue
        current, notes = task_population(lake, task, day, features)
        if current.height == 0:
            report.skipped[task] = f"no eligible customer in snapshot {day}"
            continue
        scores, scores_dt = task_scores(lake, task, day)
        drift = task_drift(
            task,
            reference,
            current,
            scores,
            psi_threshold=mon.psi_threshold,
            min_drifted_features=mon.min_drifted_features,
            score_psi_threshold=mon.score_psi_threshold,
            # calendar features (planned promotions) are one value per snapshot and move with
            # the calendar by design: their PSI would breach on every sale
            exclude=[*mon.exclude, *group_features("calendar")],
            model=reference.get("model"),
            scores_dt=scores_dt,
            score_context=calendar_context(
                calendar, settings.tasks[task].horizon_days, reference.get("test_snapshot"), day
            ),
        )
        if scores_dt is not None and scores_dt != day:
            notes.append(f"latest scores are from {scores_dt}, before the snapshot")
        drift.notes[:0] = notes
        report.tasks[task] = drift
    return report


def calendar_context(
    calendar: PromotionCalendar | None, horizon: int, reference_day: str | None, day: date | str
) -> str | None:
    """Why this snapshot's scores are not comparable with the reference's test scores: the
    promotion calendar holds a different sale in the ``horizon`` days ahead of the two dates,
    and a model that knows the calendar moves every score with it. None when the days ahead
    look alike, or without a calendar."""
    if reference_day is None or calendar is None:
        return None
    ref, cur = date.fromisoformat(str(reference_day)), date.fromisoformat(str(day))
    a, b = calendar.features(ref, [horizon]), calendar.features(cur, [horizon])
    if a == b:
        return None
    days, discount = feature_names(horizon)
    return (
        f"the {horizon} days after {cur} hold {b[days]:.0f} sale day(s), the {horizon} days after the "
        f"reference's test snapshot {ref} {a[days]:.0f} (mean discount {b[discount]:.3f} vs {a[discount]:.3f})"
    )


def report_keys(snapshot: str) -> dict[str, str]:
    """Lake keys of a drift report: ``json`` and ``markdown``."""
    base = f"{DRIFT_ZONE}/dt={snapshot}"
    return {"json": f"{base}/report.json", "markdown": f"{base}/report.md"}


def write_report(settings: Settings, report: DriftReport) -> dict[str, str]:
    """Write the report (JSON, Markdown) into the lake; returns the keys."""
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    keys = report_keys(report.snapshot)
    lake.store.put_text(keys["markdown"], report.markdown())
    lake.write_json(keys["json"], report.to_dict())  # last: the JSON is what readers look for
    return keys
