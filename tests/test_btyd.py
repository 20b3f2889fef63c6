"""BG/NBD and Gamma-Gamma (propensity.models.btyd) against their own generative stories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from propensity.models.btyd import BetaGeo, GammaGamma, purchase_baseline, rfm

TRUE = {"r": 0.8, "alpha": 40.0, "a": 0.9, "b": 3.0}


def draw_histories(n: int, horizon: float, seed: int) -> dict[str, np.ndarray]:
    """Customers from the BG/NBD story, each observed for ``T`` days after a first purchase at 0,
    then followed for ``horizon`` more days: ``x``, ``t_x``, ``T`` and whether they buy in the window."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(TRUE["r"], 1 / TRUE["alpha"], n)
    p = rng.beta(TRUE["a"], TRUE["b"], n)
    T = rng.uniform(30, 400, n)
    x, t_x, later = np.zeros(n), np.zeros(n), np.zeros(n, bool)
    for i in range(n):
        t, alive = 0.0, True
        while alive:
            t += rng.exponential(1 / lam[i])
            if t > T[i] + horizon:
                break
            if t > T[i]:
                later[i] = True
                break
            x[i], t_x[i] = x[i] + 1, t
            alive = rng.random() >= p[i]  # drops out right after a repeat purchase
    return {"x": x, "t_x": t_x, "T": T, "later": later}


@pytest.fixture(scope="module")
def histories():
    return draw_histories(6000, 60.0, seed=11)


def test_bgnbd_recovers_the_parameters_it_was_drawn_from(histories):
    h = histories
    m = BetaGeo.fit(h["x"], h["t_x"], h["T"])
    # r/alpha (the mean purchase rate) and a/(a+b) (the mean dropout) are what 6,000 customers pin down
    assert m.r / m.alpha == pytest.approx(TRUE["r"] / TRUE["alpha"], rel=0.15)
    assert m.a / (m.a + m.b) == pytest.approx(TRUE["a"] / (TRUE["a"] + TRUE["b"]), rel=0.2)
    assert m.r == pytest.approx(TRUE["r"], rel=0.25)


def test_bgnbd_purchase_probability_matches_what_happens_next(histories):
    """P(purchase in the next 60 days) is calibrated on the customers' actual next 60 days,
    overall and by decile of the prediction, and ranks them (AUC well above chance)."""
    from sklearn.metrics import roc_auc_score

    h = histories
    m = BetaGeo.fit(h["x"], h["t_x"], h["T"])
    p = m.p_purchase(60.0, h["x"], h["t_x"], h["T"])
    assert p.mean() == pytest.approx(h["later"].mean(), abs=0.015)
    deciles = pd.qcut(p, 10, labels=False, duplicates="drop")
    by = pd.DataFrame({"p": p, "y": h["later"], "d": deciles}).groupby("d").mean()
    assert (by["p"] - by["y"]).abs().max() < 0.05
    assert roc_auc_score(h["later"], p) > 0.7
    # expected purchases in the window is at least the chance of one, and P(alive) is a probability
    assert (m.expected_purchases(60.0, h["x"], h["t_x"], h["T"]) >= p - 1e-9).all()
    alive = m.p_alive(h["x"], h["t_x"], h["T"])
    assert ((alive > 0) & (alive <= 1)).all() and (alive[h["x"] == 0] == 1).all()


def test_gamma_gamma_recovers_mean_spend():
    rng = np.random.default_rng(3)
    p, q, g = 6.0, 4.0, 150.0
    nu = rng.gamma(q, 1 / g, 4000)
    x = rng.integers(1, 8, 4000)
    m = np.array([rng.gamma(p, 1 / v, k).mean() for v, k in zip(nu, x, strict=True)])
    gg = GammaGamma.fit(x, m)
    assert gg.p * gg.gamma / (gg.q - 1) == pytest.approx(p * g / (q - 1), rel=0.1)  # population mean spend
    spend = gg.expected_spend(x, m)
    truth = p / nu  # each customer's own mean order value
    # shrinking each observed mean toward the population's beats the observed mean alone
    assert np.mean((spend - truth) ** 2) < np.mean((m - truth) ** 2)


def test_the_feature_frame_gives_btyd_its_history():
    """orders_total, tenure_days and recency_days carry x, t_x and T; a customer without orders is
    a newcomer (the prior), and the baseline fits on the latest training snapshot's buyers."""
    df = pd.DataFrame(
        {
            "snapshot": ["2025-01-01"] * 3 + ["2025-02-01"] * 3,
            "orders_total": [3, 1, 0, 4, 1, None],
            "tenure_days": [100, 20, None, 131, 51, None],
            "recency_days": [10, 20, None, 5, 51, None],
        }
    )
    x, t_x, T = rfm(df)
    assert list(x) == [2, 0, 0, 3, 0, 0] and list(T) == [100, 20, 0, 131, 51, 0] and list(t_x) == [90, 0, 0, 126, 0, 0]
    h = draw_histories(800, 30.0, seed=5)
    train = pd.DataFrame(
        {"snapshot": "2025-01-01", "orders_total": h["x"] + 1, "tenure_days": h["T"], "recency_days": h["T"] - h["t_x"]}
    )
    scores, alive, model = purchase_baseline(train, df, 30)
    assert scores.shape == alive.shape == (6,) and ((scores >= 0) & (scores <= alive)).all() and model.r > 0
    assert scores[3] > scores[5]  # four orders in 131 days, the last 5 days ago, against a newcomer
