"""Building and publishing snapshots: features, profile tags and per-task labels at T.

Outputs (each validated through :func:`propensity.validation.frames.check_frame`, then
published atomically, manifest last):

* ``features/snapshot=T/``
* ``profiles/snapshot=T/``
* ``labels/task=<task>/snapshot=T/`` - the task's population with its label, or a null
  label while ``[T, T+H)`` is not fully observed yet (scoring uses those rows).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING

import polars as pl

from propensity.calendar import PromotionCalendar, known_calendar
from propensity.config import Settings, TaskConfig
from propensity.errors import RequestError
from propensity.features.build import compute_features
from propensity.features.catalogue import feature_checks
from propensity.features.inputs import USED_COLUMNS, ShopData, describe_gaps, missing_days
from propensity.features.labels import KEY, labels, population
from propensity.features.profiles import profile_inputs, rank_profiles
from propensity.lake import Lake
from propensity.shards import shard_buckets
from propensity.validation import checks as ck
from propensity.validation.frames import check_frame

if TYPE_CHECKING:  # pragma: no cover - typing only
    from propensity.features.store import SnapshotStore
    from propensity.features.training import SnapshotPlan

log = logging.getLogger(__name__)

PROFILE_CHECKS = [
    ck.not_null("customer_id"),
    ck.unique(["customer_id"]),
    ck.in_set("lifecycle_stage", ["new", "active", "at-risk", "lapsed", "churned"]),
    ck.in_set("value_tier", ["high", "medium", "low", "none"]),
]
LABEL_CHECKS = [ck.not_null("customer_id"), ck.unique(["customer_id"]), ck.in_set("label", [0, 1])]
#: a value task's labels (``label: revenue``): a revenue, never missing (0 without an order)
VALUE_LABEL_CHECKS = [*LABEL_CHECKS[:2], ck.not_null("label")]


def label_checks(task: TaskConfig) -> list:
    return VALUE_LABEL_CHECKS if task.is_value else LABEL_CHECKS


def label_dtype(task: TaskConfig) -> type[pl.DataType]:
    return pl.Float64 if task.is_value else pl.Int8


def at_midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


@dataclass
class Snapshot:
    snapshot: date
    features: pl.DataFrame
    profiles: pl.DataFrame
    labels: dict[str, pl.DataFrame] = field(default_factory=dict)
    complete: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0
    #: The last day of data the snapshot was built on (the freshness guard compares with it).
    observed_until: date | None = None

    def summary(self) -> str:
        parts = [f"snapshot {self.snapshot}: {self.features.height:,} customers x {self.features.width - 1} features"]
        for task, lab in self.labels.items():
            if self.complete[task]:
                rate = lab["label"].mean() if lab.height else float("nan")
                what = "mean label" if lab["label"].dtype == pl.Float64 else "positive rate"
                parts.append(f"{task}: {lab.height:,} eligible, {what} {rate:.3f}")
            else:
                parts.append(f"{task}: {lab.height:,} eligible, label window not complete")
        return "; ".join(parts) + f" ({self.seconds:.2f} s)"


@dataclass
class SnapshotBuilder:
    """Loads the clean zone once and builds any number of snapshots from it."""

    settings: Settings
    data_: ShopData | None = None
    #: the days each clean table had published when :attr:`data` was loaded
    days_: dict[str, set[date]] = field(default_factory=dict)
    #: how long loading :attr:`data` took: the input side of the feature work, paid once per builder
    read_seconds: float = 0.0
    #: load only these customer buckets (a shard's, :func:`propensity.shards.shard_buckets`): a
    #: shard task reads its part of the clean history, not the whole shop
    buckets: range | None = None
    #: where the orders' and events' history begins and ends across all buckets (bucketed loads)
    edges_: dict[str, tuple[datetime, datetime]] = field(default_factory=dict)

    @cached_property
    def lake(self) -> Lake:
        return Lake.open(self.settings.lake_uri, self.settings.s3_endpoint_url)

    @cached_property
    def store(self) -> SnapshotStore:
        from propensity.features.store import SnapshotStore

        return SnapshotStore(self.lake)

    @property
    def data(self) -> ShopData:
        if self.data_ is None:
            t0 = time.perf_counter()
            self.data_, self.days_, self.edges_ = ShopData.load_listed(
                self.lake, columns=USED_COLUMNS, buckets=self.buckets
            )
            self.read_seconds = time.perf_counter() - t0
        return self.data_

    @cached_property
    def promotions(self) -> PromotionCalendar | None:
        """The shop's promotion calendar; None when disabled (calendar features stay null)."""
        return known_calendar(self.settings.promotions_file)

    def _edge(self, which: int) -> datetime | None:
        """The shop's first (0) or last (1) order or event time, whichever buckets were loaded."""
        data = self.data
        times = [t for t in (data.start if which == 0 else data.end, *(e[which] for e in self.edges_.values())) if t]
        if not times:
            return None
        return min(times) if which == 0 else max(times)

    @property
    def observed_until(self) -> date | None:
        """The last day with data: labels are complete only up to the end of it."""
        end = self._edge(1)
        return end.date() if end is not None else None

    def span(self) -> tuple[date, date]:
        """First and last day of data in the clean zone; a :class:`RequestError` when it is empty
        (the one place that says so, for every stage that needs data)."""
        first, last = self._edge(0), self.observed_until
        if first is None or last is None:
            raise RequestError("the clean zone has no orders or events: run collect and validate first")
        return first.date(), last

    def label_complete(self, snapshot: date, horizon_days: int) -> bool:
        """Whether ``[snapshot, snapshot + horizon)`` is observed: labels are final only then."""
        last = self.observed_until  # of the whole shop: label completeness must not depend on the shard
        end = at_midnight(snapshot) + timedelta(days=horizon_days)
        return last is not None and end <= at_midnight(last) + timedelta(days=1)

    def check_window(self, snapshot: date, tasks: Iterable[str]) -> None:
        """Refuse a snapshot whose input window has a day with no clean partition.

        The window is what the snapshot reads: every day before it (features, profiles) and
        the label windows that are complete. A missing day would not fail anything later: the
        snapshot would just be built without it (fewer eligible customers, wrong recencies)
        and published over a good one. ``features.allow_gaps`` (``--allow-gaps``) accepts
        gaps for a shop that was really closed.
        """
        if self.settings.features.allow_gaps:
            return
        self.data  # noqa: B018 - loads the clean zone and lists its days together
        horizons = [self.settings.tasks[n].horizon_days for n in tasks]
        until = max([0, *(h for h in horizons if self.label_complete(snapshot, h))])
        gaps = missing_days(self.days_, snapshot + timedelta(days=until))
        if gaps:
            raise RequestError(
                f"snapshot {snapshot}: the clean zone has no partition for {describe_gaps(gaps)}; "
                "validate those days, or pass --allow-gaps (features.allow_gaps: true) if the shop was closed"
            )

    def plans(self, tasks: Iterable[str], as_of: date | None = None) -> dict[str, SnapshotPlan]:
        """Each task's out-of-time training plan over the clean zone (``as_of`` caps the test snapshot)."""
        from propensity.features.training import plan_snapshots

        first, last = self.span()
        return {t: plan_snapshots(t, self.settings.tasks[t], first, last, self.settings.features, as_of) for t in tasks}

    def load_or_build(self, d: date, tasks: list[str]) -> Snapshot:
        """The snapshot at ``d`` for ``tasks``: read when published with complete labels (training
        needs them final), else built in memory from the clean zone."""
        snap = self.store.read(d, tasks)
        if snap is not None and all(snap.complete.values()):
            return snap
        return self.build(d, tasks)

    def build(
        self, snapshot: date, tasks: list[str] | None = None, shard: int | None = None, shards: int = 1
    ) -> Snapshot:
        """Features, profiles and labels at ``snapshot``.

        With ``shard``, only that customer shard's features and labels are built, and its
        ``profiles`` are the per-customer profile inputs: profile tags rank customers against
        each other (RFM quintiles, value tiers), so :meth:`merge` ranks them over the union.
        """
        t0 = time.perf_counter()
        s = self.settings
        names = list(tasks or s.tasks)
        self.check_window(snapshot, names)
        t = at_midnight(snapshot)
        last = self.observed_until  # of the whole shop: label completeness must not depend on the shard
        data = self.data
        if shard is not None:
            wanted = shard_buckets(shard, shards)
            if self.buckets is not None and not set(wanted) <= set(self.buckets):
                raise ValueError(f"shard {shard}/{shards} needs buckets {wanted}, this builder loaded {self.buckets}")
            if wanted != self.buckets:  # loaded with exactly these buckets: narrowed already
                data = data.in_buckets(wanted)
        past = data.as_of(t)
        feats = compute_features(past, t, s.base_currency, self.promotions)
        # a shard's profile inputs only: the tags rank customers against each other (merge)
        inputs = profile_inputs(feats, past, t, s.base_currency)
        profiles = rank_profiles(feats, inputs, t) if shard is None else inputs
        snap = Snapshot(snapshot, feats, profiles, observed_until=last)
        for name in names:
            task = s.tasks[name]
            pop = population(past, t, task)
            horizon_end = t + timedelta(days=task.horizon_days)
            complete = self.label_complete(snapshot, task.horizon_days)
            if complete:
                lab = labels(pop, data.between(t, horizon_end), task, s.base_currency)
            else:
                lab = pop.with_columns(pl.lit(None, label_dtype(task)).alias("label"))
            snap.labels[name] = lab.with_columns(pl.lit(task.horizon_days).alias("horizon_days"))
            snap.complete[name] = complete
        snap.seconds = time.perf_counter() - t0
        return snap

    def merge(self, parts: list[Snapshot]) -> Snapshot:
        """One snapshot from its shards: features and labels concatenated, the profile tags
        ranked over the union from the shards' profile inputs. It reads nothing of the clean
        zone: each shard checked its input window and recorded the shop's last observed day."""
        if not parts or len({p.snapshot for p in parts}) != 1:
            raise ValueError("merge needs the shards of exactly one snapshot")
        t0 = time.perf_counter()
        day = parts[0].snapshot
        observed = {p.observed_until for p in parts}
        if len(observed) != 1:
            raise ValueError(f"snapshot {day}: shards disagree on the last observed day ({sorted(map(str, observed))})")
        feats = pl.concat([p.features for p in parts], how="vertical_relaxed").sort(KEY)
        inputs = pl.concat([p.profiles for p in parts], how="vertical_relaxed")
        profiles = rank_profiles(feats, inputs, at_midnight(day))
        snap = Snapshot(day, feats, profiles, observed_until=observed.pop())
        for name in parts[0].labels:
            if len({p.complete[name] for p in parts}) != 1:
                raise ValueError(f"labels.{name}.{day}: shards disagree on whether the label window is complete")
            snap.labels[name] = pl.concat([p.labels[name] for p in parts], how="vertical_relaxed").sort(KEY)
            snap.complete[name] = parts[0].complete[name]
        snap.seconds = sum(p.seconds for p in parts) + time.perf_counter() - t0
        return snap

    def publish(self, snap: Snapshot) -> None:
        """Validate every output, then write them; a failing check publishes nothing."""
        day = snap.snapshot.isoformat()
        check_frame(f"features.{day}", snap.features, feature_checks())
        check_frame(f"profiles.{day}", snap.profiles, PROFILE_CHECKS)
        for task, lab in snap.labels.items():
            if snap.complete[task] and lab.height:
                check_frame(f"labels.{task}.{day}", lab, label_checks(self.settings.tasks[task]))
        self.store.write(snap)

    def build_and_publish(self, snapshot: date, tasks: list[str] | None = None) -> Snapshot:
        snap = self.build(snapshot, tasks)
        self.publish(snap)
        log.info("%s", snap.summary())
        return snap
