"""Training-set planning: which snapshots train, validate and test a task, without label leakage.

For a task with horizon ``H`` and data observed through day ``last``:

* test snapshot ``T_test``: the latest fully-labelled one, ``last + 1 - H`` (or ``--as-of``);
* validation snapshot ``T_valid = T_test - H`` (early stopping, calibration);
* training snapshots every ``snapshot_every_days`` from ``T_valid - H`` back over
  ``training_span_days`` (measured from that latest training snapshot), never earlier
  than ``min_history_days`` after the data start.

So every training label window ``[T, T+H)`` ends by ``T_valid`` and every validation label
window ends by ``T_test``: out-of-time, with no overlap.

With ``features.holdout: customers`` (for short histories, e.g. a year of real orders)
there is no validation snapshot: training snapshots reach up to ``T_test - H`` and a
fixed 20% of customers (by a hash of their id) is held out of them for early stopping
and calibration. The test stays out of time either way.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl

from propensity.config import FeatureConfig, TaskConfig
from propensity.errors import RequestError
from propensity.features.snapshot import Snapshot


@dataclass(frozen=True)
class SnapshotPlan:
    task: str
    horizon_days: int
    train: tuple[date, ...]
    valid: date | None
    test: date

    def all(self) -> list[date]:
        return sorted({*self.train, self.test, *([self.valid] if self.valid else [])})

    def check(self) -> None:
        h = timedelta(days=self.horizon_days)
        assert all(t + h <= self.test for t in self.train), "training labels overlap the test snapshot"
        if self.valid is not None:
            assert all(t + h <= self.valid for t in self.train), "training labels overlap validation"
            assert self.valid + h <= self.test, "validation labels overlap the test snapshot"


def plan_snapshots(
    name: str, task: TaskConfig, first_day: date, last_day: date, cfg: FeatureConfig, as_of: date | None = None
) -> SnapshotPlan:
    h = timedelta(days=task.horizon_days)
    latest = last_day + timedelta(days=1) - h
    test = min(as_of, latest) if as_of else latest
    valid = test - h if cfg.holdout == "oot" else None
    latest_train = (valid or test) - h
    earliest = max(
        first_day + timedelta(days=cfg.min_history_days), latest_train - timedelta(days=cfg.training_span_days)
    )
    train = []
    t = latest_train
    while t >= earliest:
        train.append(t)
        t -= timedelta(days=cfg.snapshot_every_days)
    if not train or (valid is not None and valid < earliest):
        raise RequestError(
            f"task {name}: not enough history for an out-of-time split with horizon {task.horizon_days} d "
            f"(data {first_day}..{last_day}, min history {cfg.min_history_days} d): need about "
            f"{cfg.min_history_days + 3 * task.horizon_days} days"
        )
    plan = SnapshotPlan(name, task.horizon_days, tuple(sorted(train)), valid, test)
    plan.check()
    return plan


def stack(snapshots: list[Snapshot], task: str) -> pl.DataFrame:
    """Features joined with the task's labelled population, one block per snapshot."""
    blocks = []
    for s in snapshots:
        lab = s.labels[task]
        if not s.complete[task]:
            raise ValueError(f"task {task}: labels of snapshot {s.snapshot} are not complete yet")
        blocks.append(
            lab.select("customer_id", "label")
            .join(s.features, on="customer_id", how="inner")
            .with_columns(pl.lit(s.snapshot).alias("snapshot"))
        )
    return pl.concat(blocks, how="vertical")


def plan_dates(plans: Iterable[SnapshotPlan]) -> list[date]:
    """Every snapshot date the plans need, once each, ascending."""
    return sorted({d for p in plans for d in p.all()})
