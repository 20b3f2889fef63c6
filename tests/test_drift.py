"""Drift monitoring: PSI and references (pure), the opt-in simulated shift, and a drill in
which the monitor fires on a shop whose behaviour shifted and stays quiet on the same shop
(same seed, same dates) without the shift.

The drill shops (:func:`drill_shops`) are shared with the DAG tests (``train_models`` and
``monitor_drift`` run on them); they are cached per session, not rebuilt per module.
"""

from __future__ import annotations

import json
import math
import os
from datetime import date, timedelta
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pytest
from conftest import CLEAN, built_once, bulk_clean, shared_root

from propensity.calendar import PromotionCalendar, known_calendar
from propensity.config import Settings, ShiftConfig, load_settings
from propensity.features.catalogue import categorical_features, feature_names
from propensity.features.snapshot import SnapshotBuilder
from propensity.features.training import plan_snapshots
from propensity.lake import Lake
from propensity.monitoring.drift import (
    EPS,
    MISSING,
    OTHER,
    DriftReport,
    build_reference,
    categorical_profile,
    numeric_profile,
    psi,
    psi_categorical,
    psi_numeric,
    task_drift,
)
from propensity.monitoring.monitor import (
    MonitorRequestError,
    calendar_context,
    monitor,
    report_keys,
    resolve_snapshot,
    write_report,
)
from propensity.simulate import simulate
from propensity.simulate.engine import Simulator

# PSI ----------------------------------------------------------------------------------------


def test_psi_of_identical_samples_is_zero_and_noise_is_small() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=20_000)
    assert psi_numeric(a, a) == 0.0
    assert psi_numeric(a, rng.normal(size=20_000)) < 0.01  # sampling noise only
    cats = rng.choice(["DE", "FR", "GB"], size=5000, p=[0.5, 0.3, 0.2])
    assert psi_categorical(cats, cats) == 0.0
    assert psi([0.2, 0.8], [0.2, 0.8]) == 0.0


def test_psi_of_shifted_samples_is_large() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=20_000)
    moved, far = psi_numeric(a, a + 0.5), psi_numeric(a, a + 2.0)
    assert 0.2 < moved < far  # half a standard deviation already counts as shifted
    assert psi_numeric(a, a * 2.0) > 0.2  # same mean, wider
    ref = rng.choice(["DE", "FR", "GB"], size=5000, p=[0.5, 0.3, 0.2])
    cur = rng.choice(["DE", "FR", "GB"], size=5000, p=[0.2, 0.3, 0.5])
    assert psi_categorical(ref, cur) > 0.5
    # a category first seen today pools into __other__, which the reference never saw
    assert psi_categorical(ref, np.array(["JP"] * 5000)) > 5


def test_profiles_bins_missing_values_and_empty_bins() -> None:
    zeros = np.r_[np.zeros(800), np.arange(1, 201, dtype=float)]  # zero-inflated count
    prof = numeric_profile(zeros, bins=10)
    assert prof["edges"][0] == 0.0 and len(prof["edges"]) == len(set(prof["edges"])) < 9  # deduplicated cuts
    assert prof["shares"][0] == pytest.approx(0.8) and sum(prof["shares"]) == pytest.approx(1.0)
    assert prof["missing"] == 0.0
    # nulls (pandas None/NaN, Polars null, nullable ints) are a bin of their own
    with_nulls = pl.Series([1.0, None, 2.0, None])
    assert numeric_profile(with_nulls)["missing"] == 0.5
    assert numeric_profile(pd.Series([1, None, 3, None], dtype="Int64"))["missing"] == 0.5
    assert psi_numeric(zeros, pd.Series([np.nan] * 100)) > 5  # everything went missing
    # an empty bin costs a large but finite PSI (floored at EPS)
    assert math.isfinite(psi([0.5, 0.5], [1.0, 0.0])) and psi([0.5, 0.5], [1.0, 0.0]) > 1
    assert psi([EPS / 2, 1.0], [0.0, 1.0]) == 0.0
    cats = categorical_profile(pl.Series(["a", "a", "b", "c", None]), max_categories=1)
    assert cats["shares"] == {"a": 0.4, OTHER: 0.4, MISSING: 0.2}
    with pytest.raises(ValueError, match="differ in length"):
        psi([0.5, 0.5], [1.0])


def test_task_drift_verdict_and_report() -> None:
    rng = np.random.default_rng(2)
    n = 4000
    ref = pd.DataFrame({f"f{i}": rng.normal(size=n) for i in range(5)} | {"c": rng.choice(["x", "y"], size=n)})
    reference = build_reference(ref, [*ref.columns], ["c"], scores=rng.uniform(size=n), task="t", model={"v": 1})
    json.dumps(reference)  # what training logs as reference.json
    assert reference["features"]["c"]["kind"] == "categorical" and reference["score"]["kind"] == "numeric"
    cur = pl.from_pandas(ref.sample(n=2000, random_state=0))
    quiet = task_drift("t", reference, cur, scores=rng.uniform(size=2000))
    assert not quiet.breach and quiet.drifted == [] and quiet.score_psi < 0.05
    two = cur.with_columns(pl.col("f0") + 2, pl.col("f1") * 3)
    assert not task_drift("t", reference, two).breach  # 2 drifted < 3 (the default minimum)
    three = two.with_columns(pl.lit("z").alias("c"))
    verdict = task_drift("t", reference, three, exclude=["f4"])
    assert verdict.breach and set(verdict.drifted) == {"f0", "f1", "c"} and "f4" not in verdict.features
    assert list(verdict.features)[:3] == verdict.drifted[:3]  # highest PSI first
    by_score = task_drift("t", reference, cur, scores=rng.uniform(size=2000) ** 4)
    assert by_score.breach and by_score.drifted == [] and by_score.score_psi > 0.2
    sale = task_drift("t", reference, cur, scores=rng.uniform(size=2000) ** 4, score_context="a sale ahead")
    assert not sale.breach and sale.score_psi > 0.2 and sale.notes == ["score PSI not counted: a sale ahead"]
    missing = task_drift("t", reference, cur.drop("f3"))
    assert "f3" not in missing.features and "absent from the current data: f3" in missing.notes[0]

    report = DriftReport("2026-06-25", 0.2, 3, 0.2, tasks={"t": verdict, "u": quiet}, skipped={"w": "no champion"})
    assert report.breach and report.breached_tasks == ["t"]
    doc = json.loads(json.dumps(report.to_dict()))
    assert doc["breached_tasks"] == ["t"] and doc["tasks"]["t"]["drifted"] == verdict.drifted
    md = report.markdown()
    assert "**Breach: t**" in md and "## t: BREACH" in md and "## u: ok" in md and "- w: no champion" in md
    lines = report.summary_lines(top=2)
    assert lines[0].startswith("drift t snapshot 2026-06-25: BREACH")
    assert len([ln for ln in lines if ln.startswith("  t ")]) == 2  # the top 2 features


def test_scores_are_compared_only_when_the_same_sales_lie_ahead() -> None:
    # the shipped calendar: Black Friday week 11-24..12-01, January sale 01-02..01-09
    cal = PromotionCalendar.load(Settings().promotions_file)
    ahead = calendar_context(cal, 14, "2025-12-17", date(2025, 12, 31))
    assert ahead is not None and "14 days after 2025-12-31 hold 8 sale day(s)" in ahead and "2025-12-17 0" in ahead
    assert calendar_context(cal, 14, "2025-03-01", "2025-04-01") is None  # ordinary weeks on both
    assert calendar_context(cal, 14, None, "2025-12-31") is None  # an old reference without a test day
    off = Settings().model_copy(update={"calendar": Settings().calendar.model_copy(update={"enabled": False})})
    assert calendar_context(known_calendar(off.promotions_file), 14, "2025-12-17", "2025-12-31") is None


# The simulated shift -------------------------------------------------------------------------


def _events(shift: ShiftConfig | None, days: int = 12) -> list[pl.DataFrame]:
    out: list[pl.DataFrame] = []
    Simulator(300, days, date(2025, 3, 1), 5, shift=shift).run(lambda _d, df: out.append(df))
    return out


def test_shift_is_opt_in_and_starts_on_its_day() -> None:
    base = _events(None)
    assert all(a.equals(b) for a, b in zip(base, _events(ShiftConfig(day=12, sessions=5.0)), strict=True))
    mix = {"app": 3.0, "mobile": 1.0}
    shifted = _events(ShiftConfig(day=6, sessions=4.0, price_sensitivity=2.0, device_mix=mix))
    assert all(a.equals(b) for a, b in zip(base[:6], shifted[:6], strict=True)), "days before the shift changed"
    after = pl.concat(shifted[6:])
    assert after.height > 1.5 * pl.concat(base[6:]).height  # more traffic
    assert set(after["device"].unique()) == {"app", "mobile"}
    with pytest.raises(ValueError, match="unknown value"):
        _events(ShiftConfig(day=0, device_mix={"watch": 1.0}), days=1)
    assert Settings(home="/nonexistent").simulation.shift is None  # off by default


# The drill -----------------------------------------------------------------------------------

#: Two years, so that the year-long and lifetime features are past their warm-up (the lake's
#: history starts with the simulation) when the reference is taken.
START, DAYS, CUSTOMERS, SEED = date(2024, 7, 1), 720, 2000, 11
END = START + timedelta(days=DAYS - 1)  # 2026-06-20
CURRENT = END + timedelta(days=1)  # the snapshot after the last observed day
# references span the half year before the shift: this shop's history starts with the
# simulation, so a year-long span reaches back to when every history was short, and the
# purchase-interval features then drift as histories lengthen
DRILL_FEATURES = {"training_span_days": 168}
SHIFT_DAY = date(2026, 5, 10)  # the current windows avoid the promotion weeks
#: an app launch: four times the traffic, mostly in the app, price-sensitive customers
SHIFT = {
    "day": (SHIFT_DAY - START).days,
    "price_sensitivity": 2.5,
    "sessions": 4.0,
    "device_mix": {"app": 0.5, "mobile": 0.35, "desktop": 0.1, "tablet": 0.05},
}
TASKS = ("conversion", "repurchase", "churn")


def drill_shops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Settings]:
    """Two shops, same seed and dates: ``stable`` and ``shifted`` (:data:`SHIFT` from
    :data:`SHIFT_DAY`), each with a clean zone and the :data:`CURRENT` snapshot published;
    built once per run (:func:`conftest.built_once`), whichever worker asks first."""
    shops = {}
    saved = {k: os.environ.pop(k) for k in [k for k in os.environ if k.startswith("PROPENSITY_")]}
    try:
        for name, shift in (("stable", None), ("shifted", SHIFT)):
            home = shared_root(tmp_path_factory) / f"drift_{name}"
            # the propensity tasks only: the drill's year does not hold clv's half-year horizon three times
            tasks = {"clv": None}
            settings = load_settings(home=home, simulation={"shift": shift}, features=DRILL_FEATURES, tasks=tasks)
            with built_once(home.with_name(home.name + ".built")) as build:
                if build:
                    simulate(settings, customers=CUSTOMERS, days=DAYS, start=START, seed=SEED, dirt_cfg=CLEAN)
                    bulk_clean(settings, START, DAYS)
                    SnapshotBuilder(settings).build_and_publish(CURRENT)
            shops[name] = settings
    finally:
        os.environ.update(saved)
    return shops


@pytest.fixture(scope="module")
def shops(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Settings]:
    return drill_shops(tmp_path_factory)


def toy_scores(features: pl.DataFrame) -> np.ndarray:
    """A stand-in model (no training in this module): more sessions and orders, higher score."""
    x = features.select(
        0.4 * pl.col("sessions_30d").fill_null(0)
        + 0.8 * pl.col("orders_365d").fill_null(0)
        - 0.02 * pl.col("days_since_last_session").fill_null(365)
    ).to_series()
    return 1.0 / (1.0 + np.exp(-x.to_numpy()))


def population(snap: Any, task: str) -> pl.DataFrame:
    return snap.features.join(snap.labels[task].select("customer_id"), on="customer_id", how="semi")


@pytest.fixture(scope="module")
def references(shops: dict[str, Settings]) -> dict[str, dict]:
    """What training before the shift logs: per task, the profiles of its training rows
    (the out-of-time plan's training snapshots as of the shift day, restricted to its
    population) and of its (stand-in) test scores."""
    stable = shops["stable"]
    builder = SnapshotBuilder(stable)
    refs = {}
    for task in TASKS:
        plan = plan_snapshots(task, stable.tasks[task], START, END, stable.features, as_of=SHIFT_DAY)
        train = pl.concat([population(builder.build(d, [task]), task) for d in plan.train])
        test = population(builder.build(plan.test, [task]), task)
        refs[task] = build_reference(
            train,
            feature_names(),
            categorical_features(),
            toy_scores(test),
            task=task,
            model={"model_name": f"propensity-{task}", "model_version": "1", "run_id": "drill"},
        )
    return refs


def monitor_home(shop: Settings, home: Any) -> Settings:
    """A lake with the shop's current snapshot and the stand-in model's scores of it
    (the shared shops stay without scores: the DAG tests monitor real champions on them)."""
    src, dst = Lake.open(shop.lake_uri), Lake.open(f"file://{home}/lake")
    day = CURRENT.isoformat()
    features = src.read_partition("features", "", {"snapshot": day})
    dst.write_partition("features", "", {"snapshot": day}, features)
    for task in TASKS:
        labels = src.read_partition("labels", "", {"task": task, "snapshot": day})
        dst.write_partition("labels", "", {"task": task, "snapshot": day}, labels)
        pop = pl.from_arrow(features).join(pl.from_arrow(labels).select("customer_id"), on="customer_id", how="semi")
        scores = pl.DataFrame({"customer_id": pop["customer_id"], "score": toy_scores(pop)})
        dst.write_partition("scores", "", {"task": task, "dt": day}, scores.to_arrow())
    return shop.model_copy(update={"home": home, "lake": None})


@pytest.mark.slow  # the drill's two-year shops
def test_the_shift_leaves_history_before_it_untouched(shops: dict[str, Settings]) -> None:
    stable, shifted = (SnapshotBuilder(shops[n]).build(SHIFT_DAY) for n in ("stable", "shifted"))
    assert stable.features.equals(shifted.features)
    for task in TASKS:  # populations come from the past too; labels (the future) may differ
        assert stable.labels[task]["customer_id"].equals(shifted.labels[task]["customer_id"]), task
    later = [SnapshotBuilder(shops[n]).build(CURRENT).features for n in ("stable", "shifted")]
    assert not later[0].equals(later[1])


@pytest.mark.slow  # the drill's two-year shops
def test_monitor_fires_on_the_shifted_period_only(shops, references, tmp_path) -> None:
    reports = {
        name: monitor(monitor_home(shops[name], tmp_path / name), references=references)
        for name in ("stable", "shifted")
    }
    stable, shifted = reports["stable"], reports["shifted"]
    assert stable.snapshot == shifted.snapshot == CURRENT.isoformat()
    assert set(stable.tasks) == set(shifted.tasks) == set(TASKS) and not stable.skipped

    assert not stable.breach, "\n".join(stable.summary_lines())
    for task in TASKS:
        assert len(stable.tasks[task].drifted) < 3 and stable.tasks[task].score_psi < 0.2, task

    assert shifted.breach and set(shifted.breached_tasks) == set(TASKS), "\n".join(shifted.summary_lines())
    for task in TASKS:
        drift = shifted.tasks[task]
        assert {"app_share_30d", "mobile_share_30d"} <= set(drift.drifted), task  # the device mix moved
        assert drift.score_psi > stable.tasks[task].score_psi and drift.scores_dt == CURRENT.isoformat()
        assert drift.model["model_name"] == f"propensity-{task}"
        assert not set(drift.features) & set(shops["shifted"].monitoring.exclude)  # ages are not monitored

    # the report lands in the lake, JSON and Markdown
    settings = shops["shifted"].model_copy(update={"home": tmp_path / "shifted", "lake": None})
    keys = write_report(settings, shifted)
    assert (
        keys
        == report_keys(CURRENT.isoformat())
        == {
            "json": f"drift/dt={CURRENT}/report.json",
            "markdown": f"drift/dt={CURRENT}/report.md",
        }
    )
    lake = Lake.open(settings.lake_uri)
    doc = lake.read_json(keys["json"])
    assert doc["breach"] is True and doc["tasks"]["churn"]["drifted"] == shifted.tasks["churn"].drifted
    assert "app_share_30d" in lake.store.get_text(keys["markdown"])


@pytest.mark.slow  # the drill's two-year shops
def test_monitor_requests_and_missing_references(shops, references, tmp_path) -> None:
    empty = Settings(home=tmp_path)
    with pytest.raises(MonitorRequestError, match="no features snapshot"):
        monitor(empty, references=references)
    lake = Lake.open(shops["stable"].lake_uri)
    assert resolve_snapshot(lake) == CURRENT.isoformat()
    with pytest.raises(MonitorRequestError, match="is not published"):
        resolve_snapshot(lake, "2026-01-01")
    # a task without a reference is reported, not fatal; without labels every customer is compared
    home = monitor_home(shops["stable"], tmp_path / "m")
    Lake.open(home.lake_uri).delete_partition("labels", "", {"task": "churn", "snapshot": CURRENT.isoformat()})
    report = monitor(home, references={k: v for k, v in references.items() if k != "conversion"})
    assert report.skipped == {"conversion": "no reference given"}
    assert "not published: compared every customer" in report.tasks["churn"].notes[0]
