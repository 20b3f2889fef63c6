"""The stages of the chain, one function each: the only thing the two front doors call.

The command line (:mod:`propensity.cli`) and the Airflow tasks (``dags/`` through
:mod:`propensity.airflow`) are thin callers of these functions, so a stage behaves the same
whichever door it is run from. Each stage:

* takes the settings and an explicit partition (a list of days for collect and validate, a
  snapshot date for the rest) and never derives one from "the latest" anything;
* returns a small typed record whose :meth:`to_dict` is JSON-safe (an XCom, a report line);
* raises a :class:`~propensity.errors.FinalError` for a verdict (bad data, an impossible
  request, a stale snapshot) and lets every other error (I/O, bugs) propagate unchanged.

Heavy libraries (great-expectations, mlflow, lightgbm) are imported inside the stage that
needs them, so importing this module is cheap.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from propensity.config import Settings
from propensity.contracts import TABLES, contract
from propensity.errors import RequestError
from propensity.progress import track

if TYPE_CHECKING:  # pragma: no cover - typing only
    from propensity.features.snapshot import Snapshot, SnapshotBuilder
    from propensity.validation.gate import PartitionOutcome

log = logging.getLogger(__name__)

#: The stages in chain order (``propensity run --through <stage>``).
STAGES = ("collect", "validate", "features", "train", "score", "audiences")


def _plain(value: Any) -> Any:
    """A JSON-safe copy (numpy and polars scalars become numbers, dates strings)."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


@dataclass
class Record:
    """Base of the stage records: ``to_dict`` is what an XCom or a JSON report holds."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


def day_range(start: date, end: date | None = None) -> list[date]:
    """Every day from ``start`` to ``end`` (inclusive; default ``start``)."""
    end = end or start
    if end < start:
        raise RequestError(f"end {end} is before start {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def selected_tables(tables: Iterable[str] | None = None) -> list[str]:
    """The tables a stage covers: every contract when ``tables`` is empty, else those named (checked)."""
    if not tables:
        return list(TABLES)
    try:
        return [contract(name).name for name in dict.fromkeys(tables)]
    except KeyError as exc:
        raise RequestError(f"unknown table {exc}: the tables are {list(TABLES)}") from None


def selected_tasks(settings: Settings, tasks: Iterable[str] | None = None) -> list[str]:
    """The configured tasks a stage covers: all when ``tasks`` is empty, else those named (checked)."""
    if not tasks:
        return list(settings.tasks)
    names = list(dict.fromkeys(tasks))
    unknown = [t for t in names if t not in settings.tasks]
    if unknown:
        raise RequestError(f"unknown task(s) {unknown}: configured are {sorted(settings.tasks)}")
    return names


# collect --------------------------------------------------------------------------------------


@dataclass
class CollectRecord(Record):
    days: list[str]
    tables: list[str]
    rows: dict[str, int]
    partitions: int
    seconds: float


def collect(settings: Settings, days: Sequence[date], tables: Iterable[str] | None = None) -> CollectRecord:
    """Extract every source table for each of ``days`` into ``raw/<table>/dt=D`` (idempotent)."""
    from propensity.collect import Collector

    names = selected_tables(tables)
    t0 = time.perf_counter()
    collector = Collector(settings)
    try:
        done = collector.collect_days(days, names)
        per_day = list(track(done, "collect", lambda item: item[0].isoformat(), total=len(days)))
        manifests = [m for _, day_manifests in per_day for m in day_manifests]
    finally:
        collector.close()
    rows = dict.fromkeys(names, 0)
    for m in manifests:
        rows[m["table"]] += int(m["row_count"])
    return CollectRecord([d.isoformat() for d in days], names, rows, len(manifests), time.perf_counter() - t0)


# validate -------------------------------------------------------------------------------------


@dataclass
class ValidateRecord(Record):
    days: list[str]
    tables: list[str]
    #: per table, the days published to the clean zone
    published: dict[str, list[str]]
    rows_clean: int
    rows_quarantined: int
    #: one line per critical failure: "<table> dt=<day>: <rule message>"
    critical: list[str]
    docs_url: str | None
    summaries: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.critical

    def raise_for_critical(self) -> None:
        """Raise :class:`~propensity.validation.ValidationFailed` (a final verdict) on critical failures."""
        if self.critical:
            from propensity.validation.gate import ValidationFailed

            raise ValidationFailed.from_lines(self.critical)


def validation_record(days: Sequence[str], tables: list[str], outcomes: Sequence[PartitionOutcome], docs: str | None):
    published: dict[str, list[str]] = {t: [] for t in tables}
    for o in outcomes:
        if o.published:
            published[o.table].append(o.dt)
    return ValidateRecord(
        days=list(days),
        tables=tables,
        published={t: sorted(v) for t, v in published.items()},
        rows_clean=sum(int(o.rows_clean) for o in outcomes),
        rows_quarantined=sum(int(o.rows_quarantined) for o in outcomes),
        critical=[f"{o.table} dt={o.dt}: {msg}" for o in outcomes for msg in o.critical],
        docs_url=docs,
        summaries=[o.summary() for o in outcomes],
    )


def validate(settings: Settings, days: Sequence[date], tables: Iterable[str] | None = None) -> ValidateRecord:
    """Gate ``raw`` into ``clean``/``quarantine`` for ``days`` in one pass (one great-expectations
    context for every table and day). Partitions that pass are published even when others fail;
    the record says which failed (:meth:`ValidateRecord.raise_for_critical`)."""
    from propensity import history
    from propensity.validation import Gate

    names = selected_tables(tables)
    dts = sorted({d.isoformat() for d in days})
    gate = Gate(settings)
    outcomes = gate.validate(dts, names)
    for name in names:  # every COMPACT_AFTER days published: every reader of the past reads a few files
        history.compact(gate.lake, name)
    return validation_record(dts, names, outcomes, gate.runner.docs_url())


# features -------------------------------------------------------------------------------------


@dataclass
class SnapshotRecord(Record):
    snapshot: str
    customers: int
    features: int
    profiles: int
    labels: dict[str, dict[str, Any]]
    observed_until: str | None
    seconds: float
    summary: str
    #: loading the clean zone for it (0 when the builder had loaded it for an earlier snapshot)
    read_seconds: float = 0.0

    @classmethod
    def of(cls, snap: Snapshot, read_seconds: float = 0.0) -> SnapshotRecord:
        return cls(
            snapshot=snap.snapshot.isoformat(),
            customers=snap.features.height,
            features=snap.features.width - 1,
            profiles=snap.profiles.height,
            labels={t: {"rows": lab.height, "complete": bool(snap.complete[t])} for t, lab in snap.labels.items()},
            observed_until=snap.observed_until.isoformat() if snap.observed_until else None,
            seconds=round(snap.seconds, 3),
            summary=snap.summary(),
            read_seconds=round(read_seconds, 3),
        )


def _builder(settings: Settings, builder: SnapshotBuilder | None = None) -> SnapshotBuilder:
    from propensity.features.snapshot import SnapshotBuilder

    builder = builder or SnapshotBuilder(settings)
    builder.span()  # an empty clean zone is a RequestError, never an empty snapshot
    return builder


def features(
    settings: Settings, snapshot: date, tasks: Iterable[str] | None = None, builder: SnapshotBuilder | None = None
) -> SnapshotRecord:
    """Build, validate and publish the snapshot at ``snapshot`` (data strictly before it)."""
    names = selected_tasks(settings, tasks)
    fresh = builder is None or builder.data_ is None  # then this call pays for reading the clean zone
    builder = _builder(settings, builder)
    snap = builder.build_and_publish(snapshot, names)
    return SnapshotRecord.of(snap, builder.read_seconds if fresh else 0.0)


def features_shard(
    settings: Settings, snapshot: date, shard: int, tasks: Iterable[str] | None = None
) -> dict[str, Any]:
    """One customer hash shard of the snapshot, parked in the lake for :func:`merge_features`."""
    from propensity.features.sharded import build_shard, check_shard
    from propensity.features.snapshot import SnapshotBuilder
    from propensity.shards import shard_buckets

    names = selected_tasks(settings, tasks)
    shards = settings.features.shards
    check_shard(shard, shards)
    builder = _builder(settings, SnapshotBuilder(settings, buckets=shard_buckets(shard, shards)))
    snap = build_shard(builder, snapshot, names, shard, shards)
    return {"snapshot": snapshot.isoformat(), "shard": shard, "customers": snap.features.height}


def merge_features(settings: Settings, snapshot: date, tasks: Iterable[str] | None = None) -> SnapshotRecord:
    """Join the parked shards of ``snapshot`` into the published snapshot (see :mod:`propensity.features.sharded`)."""
    from propensity.features.sharded import merge_shards
    from propensity.features.snapshot import SnapshotBuilder

    names = selected_tasks(settings, tasks)
    # no span check: the parked shards hold everything the merge needs (it reads no clean data)
    merged = merge_shards(SnapshotBuilder(settings), snapshot, names, settings.features.shards)
    return SnapshotRecord.of(merged)


def training_plan(
    settings: Settings,
    tasks: Iterable[str] | None = None,
    as_of: date | None = None,
    builder: SnapshotBuilder | None = None,
) -> list[date]:
    """Every snapshot date the tasks' out-of-time training plans need (``as_of`` caps the test snapshot)."""
    from propensity.features.training import plan_dates

    names = selected_tasks(settings, tasks)
    return plan_dates(_builder(settings, builder).plans(names, as_of).values())


def features_plan(
    settings: Settings,
    tasks: Iterable[str] | None = None,
    as_of: date | None = None,
    builder: SnapshotBuilder | None = None,
    progress: Callable[[SnapshotRecord], None] | None = None,
) -> list[SnapshotRecord]:
    """Publish every snapshot of the training plans, from one load of the clean zone."""
    builder = _builder(settings, builder)
    names = selected_tasks(settings, tasks)
    out = []
    for d in track(training_plan(settings, names, as_of, builder), "features", date.isoformat):
        out.append(features(settings, d, names, builder))
        if progress is not None:
            progress(out[-1])
    return out


# train ----------------------------------------------------------------------------------------


@dataclass
class TrainRecord(Record):
    task: str
    report: dict[str, Any]
    parent_run_id: str
    decision: dict[str, Any]
    mlflow: dict[str, Any]

    @property
    def promoted(self) -> bool:
        return bool(self.report.get("promoted"))


def _tuned(settings: Settings, tuning_trials: int | None) -> Settings:
    if tuning_trials is None:
        return settings
    models = settings.models.model_copy(update={"tuning_trials": int(tuning_trials)})
    return settings.model_copy(update={"models": models})


def train_uplift(settings: Settings, kinds: Iterable[str], promote: bool = True) -> dict[str, dict[str, Any]]:
    """Train, register and gate the uplift model of each campaign kind (an offer code, in any case)."""
    from propensity.models.uplift_train import campaign_kind
    from propensity.models.uplift_train import train_uplift as train_one

    return {kind: train_one(settings, kind, promote=promote).report() for kind in map(campaign_kind, kinds)}


#: Models trained beside the propensity tasks by a full ``propensity train`` (each enabled in
#: its own configuration section): product recommendations and behavioural personas.
TOOLKIT = ("recommendations", "personas")


def enabled_toolkit(settings: Settings) -> list[str]:
    return [name for name in TOOLKIT if getattr(settings, name).enabled]


@dataclass
class ToolkitRecord(Record):
    name: str
    report: dict[str, Any]
    mlflow: dict[str, Any]

    @property
    def promoted(self) -> bool:
        return bool(self.mlflow.get("promoted"))


def train_toolkit(
    settings: Settings, name: str, as_of: date | None = None, *, builder: SnapshotBuilder | None = None
) -> ToolkitRecord:
    """Train, track and register one of :data:`TOOLKIT` as of ``as_of`` (default: the data's end)."""
    builder = _builder(settings, builder)
    if name == "recommendations":
        from propensity.models.recommend_train import train_recommendations

        r: Any = train_recommendations(settings, builder, as_of)
    elif name == "personas":
        from propensity.models.personas_train import train_personas

        r = train_personas(settings, builder, as_of)
    else:
        raise RequestError(f"unknown model {name!r}: one of {list(TOOLKIT)}")
    coords = {"model_version": r.model_version, "promoted": r.promoted, **r.decision}
    return ToolkitRecord(name=name, report=_plain(r.report()), mlflow=_plain(coords))


def train_all(
    settings: Settings,
    tasks: Iterable[str] | None = None,
    as_of: date | None = None,
    *,
    builder: SnapshotBuilder | None = None,
) -> list[TrainRecord | ToolkitRecord]:
    """``propensity train``: the ``tasks`` (:func:`train`) and, when no tasks are named (the
    whole set), the enabled toolkit models (:func:`train_toolkit`) as of the same date."""
    builder = _builder(settings, builder)
    records: list[TrainRecord | ToolkitRecord] = list(train(settings, tasks, as_of, builder=builder))
    if not tasks:
        records += [train_toolkit(settings, n, as_of, builder=builder) for n in enabled_toolkit(settings)]
    return records


def train(
    settings: Settings,
    tasks: Iterable[str] | None = None,
    as_of: date | None = None,
    *,
    promote: bool = True,
    tuning_trials: int | None = None,
    builder: SnapshotBuilder | None = None,
) -> list[TrainRecord]:
    """Train, evaluate, register and gate each task (its own MLflow parent run), reading the
    published snapshots of its plan where they exist. ``as_of`` caps the test snapshot."""
    from mlflow import MlflowClient

    from propensity.links import mlflow_xcom
    from propensity.models.registry import model_name
    from propensity.models.train import Trainer

    names = selected_tasks(settings, tasks)
    settings = _tuned(settings, tuning_trials)
    builder = _builder(settings, builder)
    out = []
    for name in track(names, "train"):
        trainer = Trainer(settings, builder)
        report = trainer.train([name], as_of, promote=promote)
        result = trainer.results[name]
        experiment_id = MlflowClient(tracking_uri=settings.tracking_uri).get_run(result.run_id).info.experiment_id
        coords = mlflow_xcom(
            settings.tracking_uri,
            experiment_id,
            result.run_id,
            model_name(name),
            result.model_version,
        )
        out.append(
            TrainRecord(
                task=name,
                report=_plain(report["tasks"][name]),
                parent_run_id=report["parent_run_id"],
                decision=_plain(result.decision or {}),
                mlflow={**coords, "promoted": bool(result.promoted)},
            )
        )
    return out


# score ----------------------------------------------------------------------------------------


@dataclass
class ScoreRecord(Record):
    date: str
    tasks: dict[str, dict[str, Any]]
    built_snapshot: bool
    lines: list[str]


def score(
    settings: Settings, day: date, tasks: Iterable[str] | None = None, builder: SnapshotBuilder | None = None
) -> ScoreRecord:
    """Score every eligible customer of each task at ``day`` with its champion and publish
    ``scores/task=<task>/dt=<day>``. The snapshot is published first when missing; a stale one
    (see ``scoring.max_staleness_days``) stops the stage before anything is written."""
    from propensity import scoring

    names = selected_tasks(settings, tasks)
    built = scoring.ensure_snapshot(settings, day, names, builder)
    run = scoring.score(settings, day, names)
    per_task = {
        t: {
            "rows": df.height,
            "mean_score": round(float(df["score"].mean()), 6) if df.height else None,
            "model_name": run.champions[t].name,
            "model_version": run.champions[t].version,
            "run_id": run.champions[t].run_id,
            "seconds": round(run.seconds[t], 3),
        }
        for t, df in run.scores.items()
    }
    return ScoreRecord(day.isoformat(), per_task, built, run.summary())


def prepare_scoring(settings: Settings, day: date, tasks: Iterable[str] | None = None) -> dict[str, Any]:
    """What a sharded scoring run maps over, after publishing the snapshot if missing and checking
    its freshness: ``{date, tasks, units, built}`` with one ``{name, shard, day}`` per task x shard."""
    from propensity import scoring

    names = selected_tasks(settings, tasks)
    built = scoring.ensure_snapshot(settings, day, names)
    shards = range(settings.scoring.shards)
    units = [{"name": t, "shard": i, "day": day.isoformat()} for t in names for i in shards]
    return {"date": day.isoformat(), "tasks": names, "units": units, "built": built}


# audiences ------------------------------------------------------------------------------------


@dataclass
class AudienceRecord(Record):
    date: str
    dry_run: bool
    rows: list[dict[str, Any]]
    table: str
    warnings: list[str]
    exports: dict[str, str]
    models: dict[str, Any]

    def lines(self) -> list[str]:
        """A heading, the summary table and the number of composition warnings (logged as found)."""
        what = "dry run, nothing published" if self.dry_run else f"{len(self.exports)} export(s) published"
        out = [f"audiences dt={self.date} ({what}):", *self.table.splitlines()]
        if self.warnings:
            where = "" if self.dry_run else f"; report: reports/audiences/dt={self.date}/composition.md"
            out.append(f"{len(self.warnings)} composition warning(s) (logged above{where})")
        return out


def audiences(
    settings: Settings, day: date, names: Iterable[str] | None = None, dry_run: bool = False
) -> AudienceRecord:
    """Build (unless ``dry_run``, publish) the declared audiences at ``day`` from its published scores."""
    from propensity.audiences import build

    run = build(settings, day, list(dict.fromkeys(names)) if names else None, dry_run=bool(dry_run))
    return AudienceRecord(
        date=day.isoformat(),
        dry_run=bool(dry_run),
        rows=_plain(run.rows()),
        table=run.table(),
        warnings=[w for c in run.compositions for w in c.warnings],
        exports=dict(run.exports),
        models=_plain(run.models),
    )


# monitor --------------------------------------------------------------------------------------


@dataclass
class MonitorRecord(Record):
    snapshot: str
    breach: bool
    breached_tasks: list[str]
    keys: dict[str, str]
    report: dict[str, Any]
    lines: list[str]


def monitor(settings: Settings, snapshot: date, tasks: Iterable[str] | None = None) -> MonitorRecord:
    """Compare the champions' training references with the snapshot (PSI of features and scores);
    writes ``drift/dt=<snapshot>/`` and returns the verdict."""
    from propensity.monitoring.monitor import monitor as run_monitor
    from propensity.monitoring.monitor import write_report

    names = selected_tasks(settings, tasks)
    report = run_monitor(settings, snapshot, names)
    keys = write_report(settings, report)
    doc = report.to_dict()
    return MonitorRecord(
        snapshot=str(doc["snapshot"]),
        breach=bool(doc["breach"]),
        breached_tasks=list(doc["breached_tasks"]),
        keys=keys,
        report=_plain(doc),
        lines=report.summary_lines(top=10),
    )


# the chain ------------------------------------------------------------------------------------


@dataclass
class RunOptions:
    """What ``propensity run`` passes down: the stages, tasks, test cap and audience mode."""

    through: str = STAGES[-1]
    tasks: list[str] | None = None
    as_of: date | None = None
    dry_run: bool = False


def run(
    settings: Settings,
    start: date,
    end: date,
    options: RunOptions,
    echo: Callable[[str, Record | list[Record]], None] = lambda stage, record: None,
) -> dict[str, Any]:
    """Run the stages up to ``options.through`` over ``[start, end]``, then score and build the
    audiences for the snapshot ``end + 1`` (the one that sees every collected day).

    ``echo(stage, record)`` is called after each stage (the command line prints there). A
    failed validation stops the chain with :class:`ValidationFailed` after echoing its record.
    Returns ``{stage: record(s)}``.
    """
    stages = STAGES[: STAGES.index(options.through) + 1]
    days = day_range(start, end)
    done: dict[str, Any] = {}
    builder = None

    def step(stage: str, record: Record | list[Record]) -> None:
        done[stage] = record
        echo(stage, record)

    if "collect" in stages:
        step("collect", collect(settings, days))
    if "validate" in stages:
        record = validate(settings, days)
        step("validate", record)
        record.raise_for_critical()
    if "features" in stages:
        from propensity.features.snapshot import SnapshotBuilder

        builder = SnapshotBuilder(settings)
        step("features", features_plan(settings, options.tasks, options.as_of, builder))
    if "train" in stages:
        step("train", train_all(settings, options.tasks, options.as_of, builder=builder))
    day = end + timedelta(days=1)
    if "score" in stages:
        step("score", score(settings, day, options.tasks, builder))
    if "audiences" in stages:
        step("audiences", audiences(settings, day, dry_run=options.dry_run))
    return done
