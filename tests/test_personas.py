"""Personas (propensity.models.personas): k by silhouette, names from traits, stable across retrains."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from propensity.features.snapshot import SnapshotBuilder
from propensity.models.personas import TRAITS, Personas, fit_personas, name_of


def test_names_come_from_the_centroids_most_distinctive_traits():
    traits = list(TRAITS)
    c = np.zeros(len(traits))
    c[traits.index("discount_order_share_365d")] = 2.0
    c[traits.index("mobile_share_30d")] = 1.5
    assert name_of(c, buyers=0.2, traits=traits, taken=set()) == "bargain-hunting mobile browsers"
    assert name_of(c, 0.2, traits, {"bargain-hunting mobile browsers"}).startswith("bargain-hunting mobile ")
    c[traits.index("recency_days")] = -1.0
    assert name_of(c, buyers=0.9, traits=traits, taken=set()) == "bargain-hunting mobile buyers"


@pytest.fixture(scope="module")
def snapshots(clean_bulk):
    builder = SnapshotBuilder(clean_bulk)
    return {d: builder.build(d, ["churn"]).features.to_pandas() for d in (date(2025, 4, 1), date(2025, 4, 15))}


def test_the_same_data_and_seed_give_the_same_personas(snapshots):
    df = snapshots[date(2025, 4, 1)]
    a, b = fit_personas(df, (3, 6), seed=3), fit_personas(df, (3, 6), seed=3)
    assert a.names == b.names and np.allclose(a.centroids, b.centroids)
    assert 3 <= a.k <= 6 and a.silhouette == max(a.silhouettes.values()) and len(set(a.names)) == a.k
    assigned = a.assign(df)
    assert set(assigned) <= set(a.names) and len(set(assigned)) == a.k
    # the model survives a round trip through its JSON form (an MLflow artifact)
    again = Personas.from_dict(a.to_dict())
    assert (again.assign(df) == assigned).all()


def test_retraining_on_a_larger_shop_keeps_the_names_of_matched_clusters(snapshots):
    """Two weeks later the shop has more customers; the clusters that match keep their names."""
    first = fit_personas(snapshots[date(2025, 4, 1)], (3, 6), seed=3)
    later = snapshots[date(2025, 4, 15)]
    assert len(later) > len(snapshots[date(2025, 4, 1)])
    fresh = fit_personas(later, (first.k, first.k), seed=3)
    kept = fit_personas(later, (first.k, first.k), seed=3, previous=first)
    assert set(kept.names) & set(first.names), "no cluster kept its name"
    # what fresh naming would have called them does not matter: matched ones carry the old name
    same = [n for n in kept.names if n in first.names]
    assert len(same) >= first.k - 1, (first.names, kept.names, fresh.names)
    assert len(set(kept.names)) == kept.k
    # customers keep their persona between the two fits (most of them: the centroids moved little)
    df = snapshots[date(2025, 4, 1)]
    assert (first.assign(df) == kept.assign(df)).mean() > 0.8
    assert isinstance(pd.Series(kept.assign(later)).value_counts(), pd.Series)
