"""The customer-value task's parts that need no service: revenue labels, the served
:class:`ValueModel`, Gini intervals, and the predicted value tier of the audiences.

Training, registering, gating and scoring ``clv`` end to end run in ``test_models.py``
(a real MLflow server)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import polars as pl
import pytest

from propensity.audiences import predicted_value_tier
from propensity.config import Settings, TaskConfig
from propensity.features.inputs import ShopData
from propensity.features.labels import labels
from propensity.models.clv import fit_revenue, gini_intervals, normalized_gini, paired_gini_difference
from propensity.models.model import Calibrator, CategoryEncoder, PropensityModel, ValueModel


def _shop(orders: pl.DataFrame, fx: pl.DataFrame) -> ShopData:
    empty = pl.DataFrame({"customer_id": pl.Series([], dtype=pl.String)})
    return ShopData(empty, empty, orders, empty, empty, empty, empty, empty, fx)


def test_revenue_labels_sum_paid_net_revenue_in_the_base_currency():
    t = datetime(2025, 3, 1, tzinfo=UTC)
    orders = pl.DataFrame(
        {
            "order_id": ["o1", "o2", "o3", "o4", "o5"],
            "customer_id": ["a", "a", "b", "c", "c"],
            "order_time": [t, t, t, t, t],
            "updated_at": [t, t, t, t, t],
            "status": ["paid", "paid", "cancelled", "paid", "refunded"],
            "currency": ["EUR", "GBP", "EUR", "EUR", "EUR"],
            "gross_amount": [100.0, 50.0, 80.0, 30.0, 60.0],
            "discount_amount": [10.0, 0.0, 0.0, 5.0, 0.0],
        }
    )
    fx = pl.DataFrame({"date": [t.date()], "currency": ["GBP"], "rate": [1.2]})
    pop = pl.DataFrame({"customer_id": ["a", "b", "c", "d"]})
    task = TaskConfig(horizon_days=30, label="revenue")
    lab = labels(pop, _shop(orders, fx), task, "EUR")
    assert lab.schema["label"] == pl.Float64
    got = dict(zip(lab["customer_id"], lab["label"], strict=True))
    # a: 90 EUR + 50 GBP at 1.2; b: cancelled only; c: the refunded order does not count; d: nothing
    assert got == pytest.approx({"a": 150.0, "b": 0.0, "c": 25.0, "d": 0.0})
    assert TaskConfig(horizon_days=30, label="revenue").is_value and not Settings().tasks["churn"].is_value
    assert Settings().tasks["clv"].is_value  # the default value task


def test_a_value_model_serves_expected_revenue_and_survives_save_and_load(tmp_path):
    rng = np.random.default_rng(3)
    n = 3000
    x = pd.DataFrame({"orders": rng.poisson(2, n).astype(float), "spend": rng.gamma(2, 20, n), "noise": rng.random(n)})
    buys = rng.random(n) < 1 / (1 + np.exp(1.5 - x["orders"].to_numpy()))
    y = np.where(buys, x["spend"].to_numpy() * rng.lognormal(0, 0.3, n), 0.0)
    params = {"learning_rate": 0.1, "num_leaves": 7, "min_data_in_leaf": 30, "seed": 1, "num_threads": 1}
    for only in ("hurdle", "tweedie"):
        fitted, _ = fit_revenue(x, y, x, y, params, rounds=60, early_stopping=10, formulations=(only,))
        primary = fitted.boosters["buy" if only == "hurdle" else "tweedie"]
        model = ValueModel(
            primary, Calibrator("identity"), CategoryEncoder({}), list(x.columns), fitted.boosters.get("spend"),
            fitted.log_var,
        )  # fmt: skip
        assert model.formulation == only
        pred = model.serve(x)
        np.testing.assert_allclose(pred, fitted.predict(x), rtol=1e-9)
        assert (pred >= 0).all() and pred.max() > 1.0  # a revenue, not a probability
        loaded = PropensityModel.load(model.save(tmp_path / only))  # what the pyfunc calls
        assert isinstance(loaded, ValueModel) and loaded.formulation == only
        np.testing.assert_allclose(loaded.predict_matrix(x.to_numpy()), pred, rtol=1e-9)


def test_gini_intervals_are_paired_and_match_the_point_estimate():
    rng = np.random.default_rng(5)
    n = 2000
    truth = rng.gamma(0.5, 40, n)
    y = np.where(rng.random(n) < 0.3, truth, 0.0)
    good, noisy = truth + rng.normal(0, 5, n), truth + rng.normal(0, 60, n)
    groups = np.repeat(np.arange(n // 2), 2)  # each customer twice, as in a pooled test
    iv = gini_intervals(y, good, {"noisy": noisy}, groups, n_boot=200, seed=1)
    assert iv["model"]["gini"]["estimate"] == pytest.approx(normalized_gini(y, good), abs=1e-4)
    assert iv["model"]["gini"]["low"] < iv["model"]["gini"]["estimate"] < iv["model"]["gini"]["high"]
    diff = iv["baselines"]["noisy"]["gini_diff"]
    assert diff["low"] > 0  # the better ranking wins on every resample's pairing
    same = paired_gini_difference(y, good, good, groups, n_boot=50)
    assert same == {"estimate": 0.0, "low": 0.0, "high": 0.0}


def test_the_predicted_value_tier_cuts_predicted_revenue_and_keeps_the_rest():
    c = pl.DataFrame(
        {
            "customer_id": [f"c{i:02d}" for i in range(21)],
            "clv_score": [float(i) for i in range(20)] + [None],
            "value_tier": ["none"] * 20 + ["low"],  # the profile's tier, from past revenue
        }
    )
    tiers = c.with_columns(predicted_value_tier("clv_score"))["value_tier"].to_list()
    assert tiers[18:20] == ["high", "high"] and tiers[12:18] == ["medium"] * 6 and tiers[:12] == ["low"] * 12
    assert tiers[20] == "low"  # outside the value task's population: the profile's tier stays
