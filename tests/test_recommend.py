"""Product recommendations (propensity.models.recommend) on a simulated shop's clean zone."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from propensity.features.snapshot import SnapshotBuilder
from propensity.models import recommend as rec

FIT = date(2025, 4, 15)
WINDOW = 45


@pytest.fixture(scope="module")
def data(clean_bulk):
    return SnapshotBuilder(clean_bulk).data


def test_recommendations_are_catalogue_products_the_customer_never_bought(data):
    model, hist = rec.fit_at(data, FIT, view_days=365)
    inter = hist.matrices()
    top = model.recommend(inter.bought, inter.viewed, k=10)
    assert top.shape == (len(inter.customers), 10)
    bought = inter.bought.toarray() > 0
    assert not bought[np.arange(len(top))[:, None], top].any(), "a recommendation the customer already bought"
    assert set(model.products[top.ravel()]) <= set(data.products["product_id"].to_list())
    # each list has ten distinct products, best first
    assert all(len(set(row)) == 10 for row in top)
    scores = model.scores(inter.bought[:50], inter.viewed[:50])
    ranked = np.take_along_axis(scores, top[:50], axis=1)
    assert (np.diff(ranked, axis=1) <= 1e-12).all()
    # the same data give the same lists
    again, _ = rec.fit_at(data, FIT, view_days=365)
    assert (again.recommend(inter.bought, inter.viewed, k=10) == top).all()


def test_cold_customers_get_the_popular_products(data):
    model, hist = rec.fit_at(data, FIT, view_days=365)
    cold = hist.matrices(pl.Series(["nobody-1", "nobody-2"]))
    top = model.recommend(cold.bought, cold.viewed, k=5)
    assert (top[0] == top[1]).all() and (top[0] == np.argsort(-model.popularity, kind="stable")[:5]).all()


def test_out_of_time_recall_beats_popularity(data):
    """recall@10 of the next 45 days' new purchases: the blended item-item model beats the shop's
    most popular products (on the demo shop the bench measures the ratio; this small shop has
    4,000 customers and about 600 of them buy a new product in the window)."""
    model, hist = rec.fit_at(data, FIT, view_days=365)
    later = rec.bought_between(data, FIT, FIT + timedelta(days=WINDOW))
    ev = rec.evaluate(model, hist, later)
    assert ev.customers > 200
    assert 0 < ev.baseline_recall_at_10["popularity"] < ev.recall_at_10 <= 1
    assert ev.hit_rate_at_10 >= ev.recall_at_10
    assert set(ev.baseline_recall_at_10) == {"popularity", "top_category"}


def test_the_recommenders_narrow_read_gives_the_same_history(clean_bulk, data):
    """history_data reads four tables and a few columns; what History sees is the same."""
    from propensity.lake import Lake

    narrow = rec.History.before(rec.history_data(Lake.open(clean_bulk.lake_uri)), FIT, 365)
    whole = rec.History.before(data, FIT, 365)
    for a, b in ((narrow.bought, whole.bought), (narrow.viewed, whole.viewed)):
        assert a.sort(a.columns).equals(b.sort(b.columns)) and a.height > 0
    assert narrow.products.equals(whole.products)
