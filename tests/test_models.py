"""Training against a real MLflow tracking server (SQLite backend, artifacts on the moto S3 server)."""

from __future__ import annotations

import itertools
import json
import logging
import os
import warnings
from datetime import date, timedelta

import boto3
import mlflow
import numpy as np
import pandas as pd
import polars as pl
import pytest
from conftest import CLEAN, ONLINE_SHOPPERS, bulk_clean
from mlflow import MlflowClient

from propensity.config import ModelConfig, Settings, TaskConfig
from propensity.features.catalogue import feature_names
from propensity.models.fingerprint import data_digest, model_parameters, params_digest
from propensity.models.model import ValueModel, model_input
from propensity.models.registry import gate_and_alias, pick_version, promote, rollback
from propensity.models.tracking import CLASSIC_ML, EXPERIMENT_KIND_TAG, configure, route_mlflow_logging
from propensity.models.train import WEIGHT, TaskFrames, Trainer, headline_metrics, sample_negatives
from propensity.services import MlflowServer
from propensity.simulate import simulate

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
        features={"training_span_days": 84},
        models={"max_rounds": 300, "early_stopping_rounds": 30},
    )
    simulate(s, customers=2500, days=DAYS, start=START, seed=21, dirt_cfg=CLEAN)
    bulk_clean(s, START, DAYS)  # the rows collect + validate publish, without 270 days of each
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
    # BG/NBD, what a practitioner fits on an order log, is a baseline of every report
    assert {"btyd", "btyd_p_alive"} <= set(r["baseline_auc"]) and 0.5 < r["baseline_auc"]["btyd"] < r["test_auc"]
    assert 0 <= r["ece"] < 0.1
    # pooled out-of-time test: every metric with its 95% interval, baselines as paired differences
    iv = r["intervals"]
    assert iv["resampling"] == "cluster" and iv["n_rows"] == r["n_test"] and 0 < iv["n_clusters"] <= iv["n_rows"]
    for name, value in (("auc", r["test_auc"]), ("pr_auc", r["test_pr_auc"]), ("ece", r["ece"])):
        m = iv["model"][name]
        assert m["low"] <= round(value, 4) <= m["high"] and m["low"] < m["high"], (name, m)
    for b, auc in r["baseline_auc"].items():
        d = iv["baselines"][b]["auc_diff"]
        assert d["estimate"] == pytest.approx(r["test_auc"] - auc, abs=1e-4) and d["low"] < d["estimate"] < d["high"]
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
    assert {"baseline_btyd_auc", "baseline_btyd_p_alive_auc", "baseline_btyd_auc_diff_low"} <= set(child.data.metrics)
    assert {"test_auc_low", "test_auc_high", "test_ece_high", "baseline_recency_frequency_auc_diff_low"} <= set(
        child.data.metrics
    )
    arts = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
    assert {"plots/roc_pr.png", "plots/gains_lift.png", "plots/calibration.png", "plots/shap_summary.png"} <= arts
    assert child.inputs.dataset_inputs, "training data lineage missing"
    schemas = [json.loads(d.dataset.schema)["mlflow_colspec"] for d in child.inputs.dataset_inputs]
    assert all([c["name"] for c in cols] == ["customer_id", "snapshot", "label"] for cols in schemas), schemas
    objects = boto3.client("s3", endpoint_url=s3_server.endpoint_url).list_objects_v2(Bucket="mlflow")
    assert objects.get("KeyCount", 0) > 0, "artifacts did not land on the S3 server"

    # a deliberately worse challenger is registered but not promoted
    bad = ShuffledLabels(shop).train(["churn"])["tasks"]["churn"]
    assert bad["model_version"] == "2" and bad["promoted"] is False
    assert client.get_model_version_by_alias("propensity-churn", "champion").version == "1"
    assert client.get_model_version_by_alias("propensity-churn", "challenger").version == "2"
    v2 = client.get_model_version("propensity-churn", "2").tags
    assert v2["gate.decision"] == "rejected" and float(v2["gate.auc_diff_low"]) < -shop.models.margin
    assert "AUC difference to champion" in v2["gate.reasons"] and "lower bound" in v2["gate.reasons"]

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
    assert "v2" in promote(shop, "churn", "2", force=True)  # v2 was rejected: only a forced promotion takes it
    assert client.get_model_version_by_alias("propensity-churn", "champion").version == "2"
    assert "-> v1" in rollback(shop, "churn")
    assert client.get_model_version_by_alias("propensity-churn", "champion").version == "1"

    from propensity.models.train import write_report

    write_report(report, tmp_path / "report.json")
    assert json.loads((tmp_path / "report.json").read_text())["tasks"]["churn"]["model_version"] == "1"


def test_optuna_tuning_is_bounded_and_reproducible(clean_bulk):
    clean_shop = clean_bulk
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


def test_sampled_negatives_keep_every_positive_and_the_weighted_label_mix() -> None:
    rng = np.random.default_rng(1)
    train = pl.DataFrame({"customer_id": [f"C{i}" for i in range(20_000)], "label": (rng.random(20_000) < 0.05)})
    train = train.with_columns(pl.col("label").cast(pl.Int8))
    same, rate = sample_negatives(train, None, 7)
    assert same is train and rate == 1.0
    out, rate = sample_negatives(train, 5_000, 7)
    assert out["label"].sum() == train["label"].sum()  # every positive
    assert 4_500 < out.height < 5_500 and 0.2 < rate < 0.25
    negatives = out.filter(pl.col("label") == 0)
    assert abs(negatives[WEIGHT].sum() - (train["label"] == 0).sum()) < 0.05 * train.height
    assert (out.filter(pl.col("label") == 1)[WEIGHT] == 1.0).all()
    assert sample_negatives(train, 5_000, 7)[0].equals(out)  # the same seed, the same sample
    # positives more than half the cap: both classes sampled to half each, weights restore the mix
    common = train.with_columns(label=pl.Series((rng.random(20_000) < 0.4).astype(np.int8)))
    out, rate = sample_negatives(common, 4_000, 7)
    assert 1_800 < out["label"].sum() < 2_200 and 1_800 < (out["label"] == 0).sum() < 2_200
    for label in (0, 1):
        weighted = out.filter(pl.col("label") == label)[WEIGHT].sum()
        assert abs(weighted - (common["label"] == label).sum()) < 0.05 * common.height


def test_a_training_row_cap_samples_only_the_training_rows(clean_bulk):
    """With models.max_train_rows the booster sees the cap's worth of training rows, weighted;
    validation (early stopping, calibration) and test keep every row. The cap is applied as each
    training snapshot is loaded, so the trainer never holds a training snapshot's unsampled rows,
    and the sample does not depend on which task loaded a snapshot first. (What the sampling
    costs in AUC is measured on a shop of realistic size: bench/negative_sampling.py.)"""
    t = Trainer(clean_bulk)
    plans = t.plans(["repurchase", "conversion"], None)
    plan = plans["repurchase"]
    whole = t.frames("repurchase", plan, ["repurchase"])
    cap = len(whole.train) // 3
    models = clean_bulk.models.model_copy(update={"max_train_rows": cap, "min_data_in_leaf": 10})  # a small shop
    capped = Trainer(clean_bulk.model_copy(update={"models": models}))
    capped.plans(["repurchase", "conversion"], None)
    fr = capped.frames("repurchase", plan, ["repurchase", "conversion"])
    assert len(fr.train) < 0.5 * len(whole.train) and WEIGHT in fr.train.columns
    assert fr.train["label"].sum() == whole.train["label"].sum()
    assert len(fr.valid) == len(whole.valid) and len(fr.test) == len(whole.test)
    assert WEIGHT not in fr.valid.columns and WEIGHT not in fr.test.columns
    # what the trainer keeps of a repurchase-only training snapshot is the sample, not the population
    only_repurchase = sorted(set(plan.train) - set(plans["conversion"].all()))
    assert only_repurchase
    kept = sum(capped.snapshots[d].features.height for d in only_repurchase)
    assert kept < 0.5 * sum(t.snapshots[d].features.height for d in only_repurchase)
    # another trainer that loads the snapshots for conversion first draws the same repurchase sample
    other = Trainer(clean_bulk.model_copy(update={"models": models}))
    other.frames("conversion", other.plans(["conversion"], None)["conversion"], ["repurchase", "conversion"])
    again = other.frames("repurchase", plan, ["repurchase", "conversion"])
    pd.testing.assert_frame_equal(again.train, fr.train)
    result, _ = capped.evaluate("repurchase", fr, 0.0)
    assert 0 < result.metrics["train_negative_rate"] < 0.5
    # a fitted, weighted booster that ranks (on this small shop it stops after a few rounds)
    assert result.test_scores is not None and len(np.unique(result.test_scores)) > 1
    assert result.metrics["auc"] > 0.55


def test_an_evaluation_row_cap_keeps_the_same_customers_in_every_snapshot(clean_bulk):
    """With models.max_eval_rows each validation and test snapshot keeps its split's share of
    the cap as a uniform sample of customers: unweighted, the same customers across snapshots
    (so the bootstrap still groups a customer's pooled rows), and the training rows untouched."""
    t = Trainer(clean_bulk)
    plan = t.plans(["repurchase"], None)["repurchase"]
    whole = t.frames("repurchase", plan, ["repurchase"])
    cap = len(whole.test) // 2
    models = clean_bulk.models.model_copy(update={"max_eval_rows": cap})
    capped = Trainer(clean_bulk.model_copy(update={"models": models}))
    fr = capped.frames("repurchase", capped.plans(["repurchase"], None)["repurchase"], ["repurchase"])
    pd.testing.assert_frame_equal(fr.train, whole.train)
    for got, full, split in ((fr.test, whole.test, plan.tests), (fr.valid, whole.valid, plan.valid)):
        assert len(got) <= len(full) and WEIGHT not in got.columns
        share = -(-cap // len(split))
        per_snapshot = got.groupby("snapshot").size()
        assert (per_snapshot < 1.2 * share).all(), per_snapshot
        # a uniform sample: the label rate stays the population's (within sampling error)
        n = len(got)
        assert abs(got["label"].mean() - full["label"].mean()) < 4 * np.sqrt(0.25 / n) + 1e-9
    # the same customers in every snapshot: of the customers two test snapshots share, those the
    # lower-rate snapshot keeps are kept by the other too
    full = {d: set(g["customer_id"]) for d, g in whole.test.groupby("snapshot")}
    kept = {d: set(g["customer_id"]) for d, g in fr.test.groupby("snapshot")}
    by_rate = sorted(kept, key=lambda d: -(-cap // len(plan.tests)) / len(full[d]))
    for low, high in itertools.pairwise(by_rate):
        common = full[low] & full[high]
        assert kept[low] & common <= kept[high] and kept[low] & common
    assert len(fr.test) < 0.8 * len(whole.test)


@pytest.mark.skipif(not ONLINE_SHOPPERS.exists(), reason="Online Shoppers dataset not present in ../shared/datasets")
def test_online_shoppers_conversion_sanity(tmp_path):
    from propensity.models.sessions import online_shoppers_check

    m = online_shoppers_check(Settings(home=tmp_path), ONLINE_SHOPPERS)
    assert m["n_test"] == 3083  # stratified 25% of 12,330 sessions
    assert m["auc"] >= 0.90, f"session conversion AUC {m['auc']:.4f}; the best published figure is 0.937"
    assert m["ece"] < 0.05


@pytest.mark.services
@pytest.mark.slow
def test_retraining_on_the_same_data_leaves_one_model_version(shop, mlflow_server):
    client = MlflowClient(mlflow_server.tracking_uri, registry_uri=mlflow_server.tracking_uri)
    first = Trainer(shop).train(["churn"])["tasks"]["churn"]  # v1, or the version an earlier test registered
    versions = {v.version for v in client.search_model_versions("name = 'propensity-churn'")}
    champion = client.get_model_version_by_alias("propensity-churn", "champion").version
    matched = client.get_model_version("propensity-churn", first["model_version"])
    assert {"data_digest", "params_digest"} <= set(matched.tags)

    again = Trainer(shop)  # a new trainer: snapshots rebuilt from the lake, as in a new process
    report = again.train(["churn"])
    r = report["tasks"]["churn"]
    assert r["unchanged"] is True and r["promoted"] is False
    assert r["model_version"] == first["model_version"]
    assert r["outcome"] == f"unchanged (same data and parameters as v{first['model_version']})"
    assert (r["data_digest"], r["params_digest"]) == (matched.tags["data_digest"], matched.tags["params_digest"])
    assert r["test_auc"] == pytest.approx(first["test_auc"]) and r["ece"] == pytest.approx(first["ece"])
    if first["intervals"]:  # read back from the matched version's run
        assert r["intervals"]["model"]["auc"] == pytest.approx(first["intervals"]["model"]["auc"])
    assert r["baseline_auc"] == pytest.approx(first["baseline_auc"]) and r["n_train"] == first["n_train"]
    assert {v.version for v in client.search_model_versions("name = 'propensity-churn'")} == versions
    assert client.get_model_version_by_alias("propensity-churn", "champion").version == champion
    assert client.get_model_version("propensity-churn", matched.version).tags == matched.tags  # not re-gated
    result = again.results["churn"]
    assert result.unchanged and result.model is None and result.decision["matched_version"] == matched.version

    # the child run says it matched, and repeats the metrics under the usual names
    child = client.get_run(result.run_id)
    assert child.data.tags["propensity.unchanged"] == "true"
    assert child.data.tags["propensity.matched_version"] == matched.version
    assert child.data.tags["propensity.matched_run_id"] == matched.run_id
    assert child.data.params["task"] == "churn" and child.data.metrics["test_auc"] == pytest.approx(r["test_auc"])
    assert child.data.tags["mlflow.parentRunId"] == report["parent_run_id"]

    # the parent run of one task: task name and headline metrics, under the child runs' names
    parent = client.get_run(report["parent_run_id"])
    assert parent.data.tags["task"] == parent.data.params["task"] == "churn"
    assert parent.data.tags["propensity.unchanged_tasks"] == "churn"
    assert {"test_auc", "test_pr_auc", "test_ece", "baseline_logreg_rfm_auc", "oracle_auc", "oracle_gap"} <= set(
        parent.data.metrics
    )
    assert parent.data.metrics["test_auc"] == pytest.approx(r["test_auc"])
    assert not [k for k in parent.data.metrics if "/" in k]

    # the experiment is a classic ML one
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"

    # without registering, the task is fitted again and nothing is registered
    fitted = Trainer(shop).train(["churn"], register=False)["tasks"]["churn"]
    assert fitted["unchanged"] is False and fitted["model_version"] is None and fitted["outcome"] == "not registered"
    assert fitted["data_digest"] == r["data_digest"] and fitted["test_auc"] == pytest.approx(r["test_auc"])
    assert {v.version for v in client.search_model_versions("name = 'propensity-churn'")} == versions

    # two front doors racing: a second version with the same fingerprint is never promoted
    fp = result.fingerprint
    mlflow.set_registry_uri(mlflow_server.tracking_uri)
    dup = mlflow.register_model(matched.source, "propensity-churn")
    fr = again.frames("churn", again.plans(["churn"], None)["churn"], ["churn"])
    x = model_input(fr.test, feature_names())
    decision = gate_and_alias(shop, "churn", dup.version, r["test_auc"], x, fr.test["label"].to_numpy(), fingerprint=fp)
    assert decision["promoted"] is False and decision["unchanged"] is True
    assert decision["matched_version"] == matched.version and decision["challenger_version"] == dup.version
    assert client.get_model_version_by_alias("propensity-churn", "challenger").version != dup.version
    assert client.get_model_version_by_alias("propensity-churn", "champion").version == champion
    tags = client.get_model_version("propensity-churn", dup.version).tags
    assert tags["gate.decision"].startswith("unchanged (same data and parameters as v")
    assert fp.matches(tags)


@pytest.mark.services
@pytest.mark.slow
def test_a_value_task_trains_gates_scores_and_reports_gini(shop, mlflow_server):
    """``clv`` (label: revenue) through the trainer, the registry and batch scoring: the report
    carries Gini and its baselines, the champion serves expected revenue, a retrain on the
    same data registers nothing."""
    from propensity.scoring import load_champion, score

    clv = TaskConfig(horizon_days=45, label="revenue", active_days=365, test_snapshots=2)
    s = shop.model_copy(update={"tasks": {**shop.tasks, "clv": clv}})
    r = Trainer(s).train(["clv"])["tasks"]["clv"]
    assert r["label"] == "revenue" and r["formulation"] in ("hurdle", "tweedie")
    assert set(r["baseline_gini"]) == {"btyd", "historic"}
    assert 0.3 < r["test_gini"] <= 1.0 and 0.0 < r["top_decile_capture"] <= 1.0 and r["test_spearman"] > 0
    iv = r["intervals"]
    assert iv["model"]["gini"]["low"] <= r["test_gini"] <= iv["model"]["gini"]["high"]
    assert r["model_version"] is not None and r["promoted"], r["outcome"]  # a first version
    client = MlflowClient()
    version = client.get_model_version("propensity-clv", r["model_version"])
    logged = client.get_run(version.run_id).data
    assert logged.metrics["test_gini"] == pytest.approx(r["test_gini"])
    assert {"baseline_btyd_gini", "baseline_historic_gini", "baseline_btyd_gini_diff_low"} <= set(logged.metrics)
    assert logged.params["formulation"] == r["formulation"]
    plots = {a.path for a in client.list_artifacts(version.run_id, "plots")}
    assert "plots/revenue_gains.png" in plots
    assert version.tags["gate.decision"] == "promoted" and "gate.challenger_gini" in version.tags

    champ = load_champion(s, "clv")
    assert isinstance(champ.model, ValueModel) and champ.model.formulation == r["formulation"]
    run = score(s, START + timedelta(days=DAYS), ["clv"])
    scores = run.scores["clv"]["score"]
    assert scores.min() >= 0 and scores.max() > 1.0  # expected revenue, in the base currency

    again = Trainer(s).train(["clv"])["tasks"]["clv"]
    assert again["unchanged"] and again["model_version"] == r["model_version"]
    assert again["test_gini"] == pytest.approx(r["test_gini"]) and again["baseline_gini"] == pytest.approx(
        r["baseline_gini"]
    )


def test_headline_metrics_plain_for_one_task_prefixed_for_several():
    child = {"test_auc": 0.8, "test_pr_auc": 0.4, "test_ece": 0.01, "test_lift_top10": 3.0, "n_train": 100.0}
    child |= {"baseline_logreg_rfm_auc": 0.7, "oracle_auc": 0.85, "oracle_gap": 0.05}
    one = headline_metrics(child, "churn", several=False)
    assert one == {k: child[k] for k in ("test_auc", "test_pr_auc", "test_ece", "baseline_logreg_rfm_auc")} | {
        "oracle_auc": 0.85,
        "oracle_gap": 0.05,
    }
    several = headline_metrics(child, "churn", several=True)
    assert several == {f"churn/{k}": v for k, v in one.items()}


def _frames(rng: np.random.Generator, n: int = 300) -> dict[str, pd.DataFrame]:
    def frame(snapshot: str) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "customer_id": np.arange(n),
                "snapshot": snapshot,
                "label": rng.integers(0, 2, n),
                "recency_days": rng.exponential(30, n).round(),
                "country": rng.choice(["DE", "FR", None], n),
            }
        )

    return {"train": frame("2025-01-01"), "valid": frame("2025-02-01"), "test": frame("2025-03-01")}


def test_data_digest_ignores_row_order_and_dtype_but_sees_every_value_and_split():
    frames = _frames(np.random.default_rng(0))
    feats, cats = ["recency_days", "country"], ["country"]
    digest = data_digest(frames, feats, cats)
    shuffled = {k: v.sample(frac=1.0, random_state=1) for k, v in frames.items()}
    assert data_digest(shuffled, feats, cats) == digest, "row order is not data"
    as_float = {k: v.astype({"label": "float64"}) for k, v in frames.items()}
    assert data_digest(as_float, feats, cats) == digest, "the same values in another dtype"

    changed = {k: v.copy() for k, v in frames.items()}
    changed["valid"].loc[7, "recency_days"] += 1
    assert data_digest(changed, feats, cats) != digest
    relabelled = {k: v.copy() for k, v in frames.items()}
    relabelled["test"].loc[3, "label"] = 1 - relabelled["test"].loc[3, "label"]
    assert data_digest(relabelled, feats, cats) != digest
    moved = dict(frames, train=frames["train"].iloc[1:], valid=pd.concat([frames["valid"], frames["train"].iloc[:1]]))
    assert data_digest(moved, feats, cats) != digest, "a row moving between splits"
    assert data_digest(frames, ["recency_days"], []) != digest, "fewer model inputs"


def test_params_digest_follows_the_model_not_the_gate():
    def digest(**update) -> str:
        models = ModelConfig().model_copy(update=update).model_dump(mode="json")
        plan = {"horizon_days": 60, "train": ["2025-01-01"], "valid": "2025-03-01", "test": "2025-05-01"}
        task = {"horizon_days": 60, "label": "inactive"}
        return params_digest(model_parameters(models, "churn", task, plan, ["a", "b"], ["b"]))

    base = digest()
    assert digest() == base
    assert digest(margin=0.5, floors={"churn": 0.9}, experiment="other") == base
    assert digest(learning_rate=0.1) != base and digest(seed=8) != base and digest(tuning_trials=5) != base


def test_pick_version_prefers_the_champion_then_the_oldest():
    assert pick_version([], "3") is None
    assert pick_version(["10", "9", "4"], None) == "4"
    assert pick_version(["10", "9", "4"], "9") == "9"
    assert pick_version(["10", "9"], "4") == "9"


def test_configure_marks_new_and_existing_experiments_as_classic_ml(tmp_path):
    s = Settings(home=tmp_path, models={"experiment": "existing"})
    client = MlflowClient(s.tracking_uri, registry_uri=s.tracking_uri)
    old = client.create_experiment("existing")
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(old).tags
    assert configure(s) == old
    assert client.get_experiment(old).tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML == "custom_model_development"
    new = configure(s.model_copy(update={"models": s.models.model_copy(update={"experiment": "new"})}))
    assert client.get_experiment(new).tags[EXPERIMENT_KIND_TAG] == CLASSIC_ML
    assert configure(s) == old  # idempotent


def test_route_mlflow_logging_sends_mlflow_output_through_logging(monkeypatch, capfd, caplog):
    from mlflow.utils import logging_utils

    # MLflow's import-time setup: a handler on its own stderr stream, no propagation
    monkeypatch.setattr(logging_utils, "MLFLOW_LOGGING_STREAM", logging_utils.MlflowLoggingStream())
    logging_utils._configure_mlflow_loggers(root_module_name="mlflow")
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    caplog.set_level(logging.INFO)
    logging.getLogger("mlflow.store.probe").info("before routing")
    assert "before routing" in capfd.readouterr().err and "before routing" not in caplog.text

    route_mlflow_logging()
    route_mlflow_logging()  # idempotent
    logging.getLogger("mlflow.store.probe").info("an info line")
    logging_utils.eprint("Created version '7' of model 'propensity-churn'.")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn_explicit("a schema hint", UserWarning, str(logging_utils.__file__), 1)
    assert capfd.readouterr().err == ""
    levels = {r.getMessage(): r.levelname for r in caplog.records}
    assert levels["an info line"] == "INFO"
    assert levels["Created version '7' of model 'propensity-churn'."] == "INFO"
    assert [lvl for msg, lvl in levels.items() if msg.startswith("UserWarning: a schema hint")] == ["WARNING"]
    assert logging.getLogger("mlflow").propagate and not logging.getLogger("mlflow").handlers
    assert logging.getLogger("sqlalchemy.engine").level == logging.WARNING  # no SQL echo through propagation
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
