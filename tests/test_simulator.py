"""The simulated shop: contracts hold, runs are deterministic, rates are plausible, the oracle is sound."""

from __future__ import annotations

import hashlib
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.compute as pc
import pytest
from conftest import SMALL_SHOP, make_shop

from propensity.contracts import OLTP_TABLES, TABLES, contract
from propensity.simulate.oracle import Truth
from propensity.sources.landing import read_events, read_fx
from propensity.sources.oltp import ShopDB
from propensity.storage import open_store


def _all_rows(settings, name):
    if name == "events":
        store = open_store(settings.landing_uri)
        days = [SMALL_SHOP["start"] + timedelta(days=i) for i in range(SMALL_SHOP["days"])]
        return pl.concat([pl.from_arrow(read_events(store, d)) for d in days])
    if name == "fx_rates":
        store = open_store(settings.drops_uri)
        days = [SMALL_SHOP["start"] + timedelta(days=i) for i in range(SMALL_SHOP["days"])]
        return pl.concat([pl.from_arrow(read_fx(store, d)) for d in days])
    db = ShopDB(settings.shop_db_url)
    try:
        return pl.from_arrow(db.extract(name))
    finally:
        db.dispose()


@pytest.mark.parametrize("name", list(TABLES))
def test_clean_output_honours_the_contract(clean_shop, name):
    tc = contract(name)
    df = _all_rows(clean_shop, name)
    assert df.height > 0, f"{name} is empty"
    assert df.columns == tc.names
    assert df.select(tc.primary_key).is_duplicated().sum() == 0, f"{name}: duplicate keys"
    for col in tc.columns:
        s = df.get_column(col.name)
        if not col.nullable:
            assert s.null_count() == 0, f"{name}.{col.name} has nulls"
        if col.allowed is not None:
            bad = set(s.drop_nulls().unique().to_list()) - col.allowed
            assert not bad, f"{name}.{col.name} has values outside its set: {sorted(bad)[:5]}"
        nn = s.drop_nulls()
        if col.gt is not None:
            assert (nn > col.gt).all(), f"{name}.{col.name} <= {col.gt}"
        if col.ge is not None:
            assert (nn >= col.ge).all(), f"{name}.{col.name} < {col.ge}"
        if col.le is not None:
            assert (nn <= col.le).all(), f"{name}.{col.name} > {col.le}"
    for fk in tc.foreign_keys:
        ref = _all_rows(clean_shop, fk.ref_table).get_column(fk.ref_column)
        vals = df.get_column(fk.column).drop_nulls()
        assert vals.is_in(ref.implode()).all(), f"{name}.{fk.column} has orphans"


def test_shop_is_cross_border(clean_shop):
    customers = _all_rows(clean_shop, "customers")
    assert customers["country"].n_unique() >= 6
    assert customers["currency"].n_unique() >= 4
    assert customers["language"].n_unique() >= 6
    fx = _all_rows(clean_shop, "fx_rates")
    assert set(customers["currency"].unique()) <= set(fx["currency"].unique())


def _digest_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix != ".db"
    }


def test_same_seed_gives_identical_files(tmp_path):
    small = {"customers": 800, "days": 40}
    a = make_shop(tmp_path / "a", **small)
    b = make_shop(tmp_path / "b", **small)
    c = make_shop(tmp_path / "c", seed=99, **small)
    assert _digest_tree(a.home_dir) == _digest_tree(b.home_dir)
    assert _digest_tree(a.home_dir) != _digest_tree(c.home_dir)
    for name in OLTP_TABLES:
        assert _all_rows(a, name).equals(_all_rows(b, name)), name


def test_rates_are_plausible(clean_shop):
    events = _all_rows(clean_shop, "events")
    sessions = events.group_by("session_id").agg(pl.col("event_type").eq("purchase").any().alias("buy"))
    conversion = sessions["buy"].mean()
    assert 0.01 <= conversion <= 0.06, f"session conversion {conversion:.3f} is not low single-digit"
    funnel = events["event_type"].value_counts().to_dict(as_series=False)
    n = dict(zip(funnel["event_type"], funnel["count"], strict=True))
    assert n["product_view"] > n["add_to_cart"] > n["checkout"] >= n["purchase"] > 0
    orders = _all_rows(clean_shop, "orders").filter(pl.col("status") != "cancelled")
    per_buyer = orders.group_by("customer_id").len()["len"]
    repeat = (per_buyer >= 2).mean()
    assert 0.15 <= repeat <= 0.75, f"repeat share {repeat:.2f}"
    cancelled = (_all_rows(clean_shop, "orders")["status"] == "cancelled").mean()
    assert 0.005 <= cancelled <= 0.08
    # churn: of customers active in the first 60 days, a plausible share shows no activity in the last 60
    ev = events.filter(pl.col("customer_id").is_not_null())
    start = SMALL_SHOP["start"]
    first = set(ev.filter(pl.col("event_time").dt.date() < start + timedelta(days=60))["customer_id"])
    last = set(ev.filter(pl.col("event_time").dt.date() >= start + timedelta(days=90))["customer_id"])
    churned = len(first - last) / len(first)
    assert 0.15 <= churned <= 0.8, f"churn share {churned:.2f}"


def test_oracle_is_well_formed_and_calibrated(clean_shop):
    truth = Truth.read(clean_shop.truth_dir)
    start = SMALL_SHOP["start"]
    t = 100
    snap = start + timedelta(days=t)
    probs = truth.probabilities(snap, 30)
    assert probs.column_names == ["customer_id", "p_purchase", "p_inactive"]
    for col in ("p_purchase", "p_inactive"):
        v = probs.column(col).to_numpy()
        assert np.isfinite(v).all() and (v >= 0).all() and (v <= 1).all()
    customers = set(_all_rows(clean_shop, "customers").filter(pl.col("signup_time").dt.date() <= snap)["customer_id"])
    assert set(probs.column("customer_id").to_pylist()) == customers
    # calibration against realised outcomes: mean oracle probability ~ realised rate
    orders = _all_rows(clean_shop, "orders").filter(pl.col("status") != "cancelled")
    d = orders.with_columns(pl.col("order_time").dt.date().alias("d"))
    buyers = set(d.filter((pl.col("d") >= snap) & (pl.col("d") < snap + timedelta(days=30)))["customer_id"])
    y = np.isin(probs.column("customer_id").to_numpy(zero_copy_only=False), list(buyers))
    p = probs.column("p_purchase").to_numpy()
    assert abs(p.mean() - y.mean()) < 0.01
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y, p) > 0.8
    # the truth store is separate from everything the pipeline reads
    assert not str(clean_shop.truth_dir).startswith(str(Path(clean_shop.lake_uri.removeprefix("file://"))))


def test_oracle_rejects_snapshot_before_start(clean_shop):
    truth = Truth.read(clean_shop.truth_dir)
    with pytest.raises(ValueError, match="before the simulation start"):
        truth.probabilities(SMALL_SHOP["start"] - timedelta(days=1), 30)


def test_dirt_types_appear_when_switched_on(tmp_path):
    from propensity.config import DirtConfig

    s = make_shop(tmp_path, dirt=DirtConfig(rate=0.02), customers=1500, days=30)
    ev = pl.concat(
        [pl.from_arrow(read_events(open_store(s.landing_uri), date(2025, 1, 1) + timedelta(days=i))) for i in range(30)]
    )
    assert ev["event_id"].null_count() > 0
    assert ev["event_id"].drop_nulls().is_duplicated().any()
    assert (ev["event_time"].dt.date() > date(2026, 1, 1)).any()
    assert ev.group_by("session_id").len()["len"].max() > 1000  # a bot session
    db = ShopDB(s.shop_db_url)
    items = db.extract("order_items")
    assert pc.any(pc.less(items.column("unit_price"), 0)).as_py()
    assert pc.any(pc.equal(items.column("quantity"), 0)).as_py()
    orders = set(db.extract("orders").column("order_id").to_pylist())
    assert not set(items.column("order_id").to_pylist()) <= orders
    customers = db.extract("customers")
    assert "XX" in customers.column("country").to_pylist()
    db.dispose()
