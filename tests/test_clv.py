"""Customer-value modelling (propensity.models.clv): metrics, formulations and the BTYD baseline."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from propensity.models.clv import (
    btyd_revenue,
    fit_revenue,
    historic_revenue,
    normalized_gini,
    top_decile_capture,
    value_metrics,
)


def test_value_metrics_on_hand_worked_cases():
    y = np.array([0.0, 0.0, 10.0, 0.0, 90.0])
    assert normalized_gini(y, y) == pytest.approx(1.0)
    assert normalized_gini(y, -y) < 0
    assert normalized_gini(y, 2 * y + 1) == pytest.approx(1.0)  # only the order matters
    many = np.r_[np.zeros(90), np.arange(1, 11, dtype=float)]
    assert top_decile_capture(many, many) == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    big = rng.gamma(0.3, 50, 20_000)
    assert abs(normalized_gini(big, rng.random(20_000))) < 0.05  # a random order
    m = value_metrics(y, np.full(5, 20.0))
    assert m["mae"] == pytest.approx(np.abs(y - 20).mean()) and m["mean_actual"] == pytest.approx(20.0)


def shop(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Customers whose past (a year: orders, revenue, recency, tenure) and next 90 days come
    from the same Poisson rate, dropout and spend: what a CLV model should learn."""
    rng = np.random.default_rng(seed)
    rate = rng.gamma(0.8, 1 / 60, n)  # purchases per day
    alive = rng.random(n) < 0.7
    spend = rng.gamma(4.0, 15.0, n)
    tenure = rng.uniform(30, 365, n)
    past = rng.poisson(rate * tenure) + 1
    last = np.minimum(tenure, rng.exponential(1 / np.maximum(rate, 1e-6)))
    frame = pd.DataFrame(
        {
            "snapshot": "2025-01-01",
            "orders_total": past.astype(float),
            "revenue_total": past * spend * rng.lognormal(0, 0.2, n),
            "tenure_days": tenure,
            "recency_days": np.where(alive, last * 0.3, last),
            "revenue_365d": past * spend,
            "noise": rng.random(n),
        }
    )
    future = rng.poisson(np.where(alive, rate, 0) * 90) * spend * rng.lognormal(0, 0.3, n)
    return frame, future


def test_a_revenue_model_beats_history_and_picks_a_formulation():
    train, y_train = shop(6000, 1)
    valid, y_valid = shop(3000, 2)
    test, y_test = shop(3000, 3)
    cols = ["orders_total", "revenue_total", "tenure_days", "recency_days", "revenue_365d", "noise"]
    params = {"learning_rate": 0.05, "num_leaves": 7, "min_data_in_leaf": 50, "seed": 7}
    model, by_formulation = fit_revenue(train[cols], y_train, valid[cols], y_valid, params, rounds=150)
    assert set(by_formulation) == {"hurdle", "tweedie"} and model.formulation in by_formulation
    chosen = by_formulation[model.formulation]["gini"]
    assert chosen == max(v["gini"] for v in by_formulation.values())
    pred = model.predict(test[cols].to_numpy(float))
    assert (pred >= 0).all() and 0.5 < pred.mean() / y_test.mean() < 2.0  # expected revenue, not a rank
    ours = value_metrics(y_test, pred)
    history = value_metrics(y_test, historic_revenue(test, 90))
    assert ours["gini"] > history["gini"] and ours["top_decile_capture"] > 0.2
    btyd = value_metrics(y_test, btyd_revenue(train, test, 90))
    assert btyd["gini"] > 0.2  # the BTYD baseline ranks (it sees the same RFM history)
