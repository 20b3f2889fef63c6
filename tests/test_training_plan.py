"""The out-of-time plan with pooled test and validation snapshots: no training, validation or
test label window overlaps one of another set, whatever the horizon, spacing, pool sizes,
history and holdout mode."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from propensity.config import FeatureConfig, TaskConfig, default_tasks
from propensity.errors import RequestError
from propensity.features.training import plan_snapshots

START = date(2024, 1, 1)


def _window(t: date, horizon: int) -> tuple[date, date]:
    """The label window [t, t + H) as a half-open pair."""
    return t, t + timedelta(days=horizon)


def _overlap(a: tuple[date, date], b: tuple[date, date]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


@settings(max_examples=400, deadline=None)
@given(
    horizon=st.integers(1, 120),
    k=st.integers(1, 10),
    m=st.integers(1, 8),
    every=st.integers(1, 35),
    span=st.integers(0, 400),
    min_history=st.integers(0, 120),
    days=st.integers(30, 900),
    holdout=st.sampled_from(["oot", "customers"]),
    as_of_back=st.one_of(st.none(), st.integers(0, 200)),
)
def test_no_training_or_validation_label_window_overlaps_a_test_window(
    horizon, k, m, every, span, min_history, days, holdout, as_of_back
):
    task = TaskConfig(horizon_days=horizon, label="purchase", test_snapshots=k, valid_snapshots=m)
    cfg = FeatureConfig(
        snapshot_every_days=every, training_span_days=span, min_history_days=min_history, holdout=holdout
    )
    last = START + timedelta(days=days - 1)
    latest_labelled = last + timedelta(days=1) - timedelta(days=horizon)
    as_of = None if as_of_back is None else latest_labelled - timedelta(days=as_of_back)
    try:
        plan = plan_snapshots("t", task, START, last, cfg, as_of)
    except RequestError:
        return  # too little history for any split: refused, never a leaky plan
    tests = [_window(t, horizon) for t in plan.tests]
    assert 1 <= len(plan.tests) <= k
    assert list(plan.tests) == sorted(set(plan.tests))
    assert plan.test == (as_of if as_of is not None and as_of < latest_labelled else latest_labelled)
    assert all(end <= last + timedelta(days=1) for _, end in tests), "a test label window is not complete"
    assert plan.train, "no training snapshot"
    for t in plan.train:
        assert all(not _overlap(_window(t, horizon), w) and t < w[0] for w in tests), (t, plan.tests)
    if holdout == "oot":
        assert 1 <= len(plan.valid) <= min(m, len(plan.train)) and list(plan.valid) == sorted(set(plan.valid))
        valid = [_window(v, horizon) for v in plan.valid]
        assert all(not _overlap(v, w) and v[0] < w[0] for v in valid for w in tests)
        assert all(not _overlap(_window(t, horizon), v) and t < v[0] for t in plan.train for v in valid)
    else:
        assert plan.valid == ()
    assert set(plan.all()) == {*plan.train, *plan.valid, *plan.tests}


def test_pooled_tests_are_spaced_and_shrink_with_a_short_history():
    cfg = FeatureConfig()  # every 14 days, 60 days of minimum history
    conversion = default_tasks()["conversion"]
    last = START + timedelta(days=729)
    plan = plan_snapshots("conversion", conversion, START, last, cfg)
    assert len(plan.tests) == conversion.test_snapshots == 4
    assert [b - a for a, b in zip(plan.tests, plan.tests[1:], strict=False)] == [timedelta(days=14)] * 3
    assert len(plan.valid) == conversion.valid_snapshots == 4
    assert plan.valid == tuple(plan.tests[0] - timedelta(days=14 * j) for j in (4, 3, 2, 1))
    assert max(plan.train) == plan.valid[0] - timedelta(days=14)

    # 120 days leave room for two test snapshots (60 days of history, a training and a validation
    # snapshot): the test pool is kept before the validation pool
    short = plan_snapshots("conversion", conversion, START, START + timedelta(days=119), cfg)
    assert short.tests == (START + timedelta(days=92), START + timedelta(days=106))  # labels end on day 119
    assert short.valid == (START + timedelta(days=78),) and short.train == (START + timedelta(days=64),)
    with pytest.raises(RequestError, match="not enough history"):
        plan_snapshots("conversion", conversion, START, START + timedelta(days=80), cfg)

    # five months at the test shops' settings: the validation pool stops where it would
    # outnumber the training snapshots
    small = FeatureConfig(training_span_days=42, min_history_days=30)
    five = plan_snapshots("conversion", conversion, START, START + timedelta(days=149), small)
    assert len(five.tests) == 4 and len(five.valid) == len(five.train) == 2
