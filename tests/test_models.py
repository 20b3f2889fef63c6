"""Training against a real MLflow tracking server (SQLite backend, artifacts on the moto S3 server)."""

from __future__ import annotations

import json
from datetime import date, timedelta

import boto3
import mlflow
import numpy as np
import pytest
from conftest import CLEAN, ONLINE_SHOPPERS
from mlflow import MlflowClient

from propensity.collect import collect
from propensity.config import Settings
from propensity.models.model import model_input
from propensity.models.registry import promote, rollback
from propensity.models.train import TaskFrames, Trainer
from propensity.services import MlflowServer
from propensity.simulate import simulate
from propensity.validation import Gate

START = date(2025, 1, 1)
DAYS = 270


@pytest.fixture(scope="module")
def mlflow_server(s3_server, tmp_path_factory):
    boto3.client("s3", endpoint_url=s3_server.endpoint_url).create_bucket(Bucket="mlflow")
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    with MlflowServer(f"sqlite:///{db}", "s3://mlflow/artifacts", extra_env=s3_server.env()) as server:
        yield server


@pytest.fixture(scope="module")
def shop(tmp_path_factory, mlflow_server) -> Settings:
    s = Settings(
        home=tmp_path_factory.mktemp("shop"),
        mlflow_tracking_uri=mlflow_server.tracking_uri,
        validation={"docs": False},
        features={"training_span_days": 84},
        models={"max_rounds": 300, "early_stopping_rounds": 30},
    )
    simulate(s, customers=2500, days=DAYS, start=START, seed=21, dirt_cfg=CLEAN)
    collect(s, START, START + timedelta(days=DAYS - 1))
    Gate(s).validate([START + timedelta(days=i) for i in range(DAYS)])
    return s


class ShuffledLabels(Trainer):
    """A deliberately worse model: training labels permuted, so it learns nothing real."""

    def frames(self, task, plan, tasks) -> TaskFrames:
        fr = super().frames(task, plan, tasks)
        rng = np.random.default_rng(0)
        fr.train["label"] = rng.permutation(fr.train["label"].to_numpy())
        return fr


@pytest.mark.services
@pytest.mark.slow
def test_train_register_gate_and_reload(shop, mlflow_server, s3_server, tmp_path):
    trainer = Trainer(shop)
    report = trainer.train(["churn"])
    r = report["tasks"]["churn"]
    assert set(r) >= {
        "test_auc",
        "test_pr_auc",
        "ece",
        "baseline_auc",
        "oracle_auc",
        "n_train",
        "n_test",
        "model_version",
        "promoted",
    }
    assert r["model_version"] == "1" and r["promoted"] is True
    assert r["test_auc"] > 0.7 and r["oracle_auc"] is not None and r["oracle_auc"] >= r["test_auc"] - 0.05
    assert r["test_auc"] > max(v for v in r["baseline_auc"].values() if v is not None) - 0.02
    assert 0 <= r["ece"] < 0.1
    client = MlflowClient(mlflow_server.tracking_uri, registry_uri=mlflow_server.tracking_uri)
    assert client.get_model_version_by_alias("propensity-churn", "champion").version == "1"
    v1 = client.get_model_version("propensity-churn", "1")
    assert v1.tags["gate.decision"] == "promoted" and {"snapshot", "data_digest", "code_version"} <= set(v1.tags)

    # nested runs, consistent metric names, plots and lineage on the child run
    child = client.get_run(trainer.results["churn"].run_id)
    assert child.data.tags["mlflow.parentRunId"] == report["parent_run_id"]
    assert {"test_auc", "test_pr_auc", "test_ece", "test_lift_top10", "baseline_logreg_rfm_auc", "oracle_auc"} <= set(
        child.data.metrics
    )
    arts = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
    assert {"plots/roc_pr.png", "plots/gains_lift.png", "plots/calibration.png", "plots/shap_summary.png"} <= arts
    assert child.inputs.dataset_inputs, "training data lineage missing"
    objects = boto3.client("s3", endpoint_url=s3_server.endpoint_url).list_objects_v2(Bucket="mlflow")
    assert objects.get("KeyCount", 0) > 0, "artifacts did not land on the S3 server"

    # a deliberately worse challenger is registered but not promoted
    bad = ShuffledLabels(shop).train(["churn"])["tasks"]["churn"]
    assert bad["model_version"] == "2" and bad["promoted"] is False
    assert client.get_model_version_by_alias("propensity-churn", "champion").version == "1"
    assert client.get_model_version_by_alias("propensity-churn", "challenger").version == "2"
    assert client.get_model_version("propensity-churn", "2").tags["gate.decision"] == "rejected"

    # the champion reloads through pyfunc and returns calibrated probabilities, same as in memory
    mlflow.set_tracking_uri(mlflow_server.tracking_uri)
    loaded = mlflow.pyfunc.load_model("models:/propensity-churn@champion")
    good = trainer.results["churn"].model
    snap = trainer.snapshot(max(trainer.snapshots), ["churn"]).features.to_pandas()
    x = model_input(snap, good.features)
    p = np.asarray(loaded.predict(x))
    assert p.shape == (len(x),) and (p >= 0).all() and (p <= 1).all()
    np.testing.assert_allclose(p, good.predict_proba(x), rtol=1e-9)

    # humans can override and undo
    assert "v2" in promote(shop, "churn", "2")
    assert client.get_model_version_by_alias("propensity-churn", "champion").version == "2"
    assert "-> v1" in rollback(shop, "churn")
    assert client.get_model_version_by_alias("propensity-churn", "champion").version == "1"

    from propensity.models.train import write_report

    write_report(report, tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["tasks"]["churn"]["model_version"] == "1"


def test_optuna_tuning_is_bounded_and_reproducible(clean_zone):
    clean_shop = clean_zone
    s = clean_shop.model_copy(
        update={
            "models": clean_shop.models.model_copy(
                update={"tuning_trials": 4, "tuning_seconds": 120, "max_rounds": 200, "early_stopping_rounds": 20}
            )
        }
    )
    fits = []
    for _ in range(2):
        t = Trainer(s)
        plan = t.plans(["conversion"], None)["conversion"]
        fr = t.frames("conversion", plan, ["conversion"])
        model, _ = t.fit(fr)
        fits.append((t.last_params, model.predict_proba(model_input(fr.test, model.features))))
    (p1, s1), (p2, s2) = fits
    assert p1 == p2, "same seed, same tuned parameters"
    assert p1["num_leaves"] != s.models.num_leaves or p1["learning_rate"] != s.models.learning_rate
    np.testing.assert_array_equal(s1, s2)


@pytest.mark.skipif(not ONLINE_SHOPPERS.exists(), reason="Online Shoppers dataset not present in ../shared/datasets")
def test_online_shoppers_conversion_sanity(tmp_path):
    from propensity.models.sessions import online_shoppers_check

    m = online_shoppers_check(Settings(home=tmp_path), ONLINE_SHOPPERS)
    assert m["n_test"] == 3083  # stratified 25% of 12,330 sessions
    assert m["auc"] >= 0.90, f"session conversion AUC {m['auc']:.4f}; the best published figure is 0.937"
    assert m["ece"] < 0.05
