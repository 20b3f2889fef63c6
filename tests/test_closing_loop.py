"""The simulator reads published audiences: sends become campaign_contacts and treated customers respond."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
from conftest import CLEAN

from propensity.config import Settings
from propensity.lake import Lake
from propensity.simulate import simulate
from propensity.sources.oltp import ShopDB

START = date(2025, 1, 1)
DAYS = 120
SEND = START + timedelta(days=90)


def _table(s: Settings, name: str) -> pl.DataFrame:
    db = ShopDB(s.shop_db_url)
    try:
        return pl.from_arrow(db.extract(name))
    finally:
        db.dispose()


def test_audience_sends_change_the_future_not_the_past(tmp_path):
    s = Settings(home=tmp_path)
    shop = {"customers": 3000, "days": DAYS, "start": START, "seed": 5, "dirt_cfg": CLEAN}
    simulate(s, until=SEND - timedelta(days=1), **shop)
    past = _table(s, "orders")
    assert past["order_time"].max().date() < SEND  # the shop's systems end the day before the send
    customers = _table(s, "customers")["customer_id"].sort().to_list()
    rng = np.random.default_rng(0)
    chosen = rng.choice(customers, 2400, replace=False)
    members = pl.DataFrame(
        {
            "audience": "test-aud",
            "dt": SEND,
            "customer_id": chosen,
            "group": np.where(np.arange(2400) % 2 == 0, "treatment", "control"),
            "channel": "email",
        }
    )
    Lake.open(s.lake_uri).write_partition(
        "audiences", "", {"audience": "test-aud", "dt": SEND.isoformat()}, members.to_arrow()
    )

    simulate(s, **shop)
    baseline = _table(s, "orders")
    simulate(s, campaigns=True, **shop)
    treated = _table(s, "orders")
    cut = pl.lit(datetime(SEND.year, SEND.month, SEND.day, tzinfo=UTC)).dt.cast_time_unit("us")
    before = lambda df: df.filter(pl.col("order_time") < cut).sort("order_id")  # noqa: E731
    assert before(treated).equals(before(baseline))  # the past is untouched
    # a hidden future agrees with the revealed one on what had happened (statuses move on later)
    facts = ["order_id", "customer_id", "order_time", "currency", "gross_amount"]
    assert before(past).select(facts).equals(before(baseline).select(facts))

    contacts = _table(s, "campaign_contacts").filter(pl.col("campaign_id") == f"test-aud-{SEND:%Y%m%d}")
    sent_to = set(contacts["customer_id"].to_list())
    groups = dict(zip(members["customer_id"].to_list(), members["group"].to_list(), strict=True))
    assert sent_to == {c for c, g in groups.items() if g == "treatment"}
    assert set(contacts["channel"].unique()) == {"email"}

    window = treated.filter(
        (pl.col("order_time") >= cut)
        & (pl.col("order_time") < cut + pl.duration(days=14))
        & (pl.col("status") != "cancelled")
    )
    buyers = set(window["customer_id"].to_list())
    rate = {g: np.mean([c in buyers for c, gg in groups.items() if gg == g]) for g in ("treatment", "control")}
    assert rate["treatment"] > rate["control"] * 1.3, rate
