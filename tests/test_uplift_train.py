"""Uplift models from our own campaigns, end to end: exploration sends go out, the simulated shop
responds, and the model learnt from treatment and control finds who the offer moves."""

from __future__ import annotations

import json
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from conftest import CLEAN, bulk_clean
from mlflow import MlflowClient

from propensity.audiences.select import EXPLORATION_TREATED, control_draw
from propensity.config import Settings
from propensity.lake import Lake
from propensity.models.uplift_train import campaign_kind, effects_at, split_dates, train_uplift, uplift_model_name
from propensity.services import MlflowServer
from propensity.simulate import simulate
from propensity.simulate.oracle import Truth
from propensity.sources.oltp import ShopDB

START = date(2025, 1, 1)
DAYS = 200
#: an exploration campaign every ten days from day 120: three train, two test
SENDS = [START + timedelta(days=120 + 10 * k) for k in range(5)]
OFFER = "EXPLORE15"


def test_campaign_kinds_and_the_out_of_time_split() -> None:
    assert campaign_kind("WINBACK15") == "winback15" and campaign_kind("X-SELL bundle") == "x-sell-bundle"
    assert uplift_model_name("winback15") == "propensity-uplift-winback15"
    dates = [date(2025, 5, 1) + timedelta(days=10 * k) for k in range(5)]
    train, test = split_dates(dates, date(2025, 6, 14), 14, 2)
    assert test == dates[2:4] and train == dates[:2]  # the 5th window (06-10..06-23) is still open
    with pytest.raises(Exception, match="need 3"):
        split_dates(dates[:2], date(2025, 12, 31), 14, 2)


def test_member_outcomes_count_the_window_and_skip_cancellations() -> None:
    from datetime import UTC, datetime

    from propensity.audiences.measure import member_outcomes

    d = date(2025, 5, 1)
    members = pl.DataFrame({"customer_id": ["a", "b", "c", "d"], "dt": [d] * 4, "group": ["treatment"] * 4})
    at = lambda day: datetime(2025, 5, day, 12, tzinfo=UTC)  # noqa: E731
    orders = pl.DataFrame(
        {
            "customer_id": ["a", "b", "c", "c", "d"],
            "order_time": [at(1), at(15), at(14), at(2), at(3)],
            "status": ["paid", "paid", "paid", "cancelled", "refunded"],
            "net": [10.0, 20.0, 30.0, 40.0, 50.0],
        }
    )
    out = member_outcomes(members, orders, 14).sort("customer_id")
    # a: on the send day; b: day 15 is past a 14-day window; c: its cancelled order does not count; d: refunded counts
    assert out["converted"].to_list() == [True, False, True, True]
    assert out["revenue"].to_list() == [10.0, 0.0, 30.0, 50.0]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("uplift-mlflow")
    with MlflowServer(f"sqlite:///{root}/mlflow.db", str(root / "artifacts")) as server:
        yield server


@pytest.fixture(scope="module")
def explored_shop(tmp_path_factory, registry) -> Settings:
    """A 6,000-customer shop whose contactable customers got five exploration sends, half treated."""
    s = Settings(home=tmp_path_factory.mktemp("uplift-shop"), mlflow_tracking_uri=registry.tracking_uri)
    shop = {"customers": 6000, "days": DAYS, "start": START, "seed": 11, "dirt_cfg": CLEAN}
    simulate(s, **shop)
    db = ShopDB(s.shop_db_url)
    try:  # the shop's current customer records: who may get an email
        customers = pl.from_arrow(db.extract("customers"))
    finally:
        db.dispose()
    contactable = customers.filter(pl.col("email_consent") & ~pl.col("global_opt_out"))
    lake = Lake.open(s.lake_uri)
    for d in SENDS:
        ids = contactable.filter(pl.col("created_at").dt.date() < d)["customer_id"].unique().sort()
        treated = control_draw(ids, "explore:test", d) >= 1.0 - EXPLORATION_TREATED
        members = pl.DataFrame(
            {
                "audience": "explore",
                "dt": d,
                "customer_id": ids,
                "group": np.where(treated, "treatment", "control"),
                "channel": "email",
                "offer": OFFER,
                "score": control_draw(ids, "a score that knows nothing", d),
                "selection": "exploration",
                "p_treatment": EXPLORATION_TREATED,
            }
        )
        lake.write_partition("audiences", "", {"dt": d.isoformat()}, members.to_arrow())
    simulate(s, campaigns=True, **shop)
    bulk_clean(s, START, DAYS)
    return s


@pytest.mark.services
@pytest.mark.slow
def test_an_uplift_model_learns_who_the_offer_moves_and_is_gated_on_qini(explored_shop, registry) -> None:
    s = explored_shop
    kind = campaign_kind(OFFER)
    r = train_uplift(s, kind)
    assert r.n_train > 8_000 and r.n_test > 5_000  # five sends to about 2,900 contactable customers
    learners = ("t", "x")
    assert r.learner in learners and set(r.valid_qini) == {f"{lr}:{n}" for lr in learners for n in (100, 200, 400)}
    assert r.metrics["qini"] > 0, r.metrics  # better than random targeting, out of time
    # the baselines: the members' (here uninformative) score, and the true effects as the ceiling
    assert set(r.baseline_qini) == {"propensity", "oracle"}
    assert r.baseline_qini["oracle"] > max(r.metrics["qini"], r.baseline_qini["propensity"])
    client = MlflowClient(registry.tracking_uri, registry_uri=registry.tracking_uri)
    name = uplift_model_name(kind)
    assert client.get_model_version_by_alias(name, "champion").version == r.model_version == "1"
    run = client.get_run(client.get_model_version(name, "1").run_id)
    assert {"test_qini", "test_auuc", "test_uplift_at_10", "test_uplift_at_20", "test_uplift_at_30"} <= set(
        run.data.metrics
    )
    assert "qini.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    # the served model predicts what the truth says: its effects track the oracle's on a test date
    d = SENDS[3]
    from propensity.features.snapshot import SnapshotBuilder

    feats = SnapshotBuilder(s).load_or_build(d, []).features.to_pandas()
    predicted = effects_at(s, kind, feats)
    truth = Truth.read(s.truth_dir).effects(d, feats["customer_id"].to_numpy(), "email").to_pandas()
    decile = len(predicted) // 10
    by_model, by_propensity = np.argsort(-predicted)[:decile], np.argsort(-truth["p_control"].to_numpy())[:decile]
    true_uplift, money = truth["uplift"].to_numpy(), truth["net_revenue_effect"].to_numpy()
    assert true_uplift[by_model].mean() > 1.3 * true_uplift.mean()  # it finds customers the offer moves
    assert money[by_model].mean() > money[by_propensity].mean() + 0.5  # and does not pay sure things to buy
    # a challenger that ranks at random does not replace the champion
    worse = s.model_copy(update={"uplift": s.uplift.model_copy(update={"rounds": [1], "learners": ["t"]})})
    r2 = train_uplift(worse, kind)
    assert r2.model_version == "2"
    champion = client.get_model_version_by_alias(name, "champion").version
    assert (champion == "2") == r2.decision["passed"]
    assert r2.decision["champion_qini"] == pytest.approx(r.metrics["qini"], abs=1e-9)


@pytest.mark.services
@pytest.mark.slow
def test_the_command_line_trains_a_campaign_kind(explored_shop, registry, monkeypatch, capsys, tmp_path) -> None:
    from propensity import cli

    monkeypatch.setenv("PROPENSITY_HOME", str(explored_shop.home))
    monkeypatch.setenv("PROPENSITY_MLFLOW_TRACKING_URI", registry.tracking_uri)
    monkeypatch.setenv("PROPENSITY_UPLIFT__ROUNDS", "[100]")
    report = tmp_path / "uplift.json"
    assert cli.main(["train", "--uplift", "explore15", "--report", str(report)]) == 0
    out = capsys.readouterr().out
    assert "propensity-uplift-explore15:" in out and "test Qini" in out
    doc = json.loads(report.read_text())
    assert doc["uplift"]["explore15"]["model"] == "propensity-uplift-explore15"
    assert set(doc["uplift"]["explore15"]["valid_qini"]) == {"t:100", "x:100"}
