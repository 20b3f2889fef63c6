"""Recommendations and personas trained, tracked and registered like the propensity models."""

from __future__ import annotations

from datetime import date

import boto3
import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from propensity import pipeline
from propensity.features.snapshot import SnapshotBuilder
from propensity.models.recommend import History
from propensity.models.recommend_pyfunc import input_frame
from propensity.services import MlflowServer

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture(scope="module")
def shop(clean_bulk, s3_server, tmp_path_factory):
    boto3.client("s3", endpoint_url=s3_server.endpoint_url).create_bucket(Bucket="mlflow")
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    with MlflowServer(f"sqlite:///{db}", "s3://mlflow/artifacts", extra_env=s3_server.env()) as server:
        yield clean_bulk.model_copy(update={"mlflow_tracking_uri": server.tracking_uri})


def test_recommendations_are_evaluated_registered_and_served_as_product_lists(shop):
    first = pipeline.train_toolkit(shop, "recommendations")
    r = first.report
    assert set(r) >= {"recall_at_10", "hit_rate_at_10", "baseline_recall_at_10", "params", "valid_recall_at_10"}
    assert set(r["baseline_recall_at_10"]) == {"popularity", "top_category"}
    assert 0 < r["recall_at_10"] <= r["hit_rate_at_10"] <= 1 and r["customers"] > 100
    # the weights were chosen on the validation window, and the winner's is the best recall there
    chosen = f"view_weight={r['params']['view_weight']},blend={r['params']['blend']}"
    assert r["valid_recall_at_10"][chosen] == max(r["valid_recall_at_10"].values())
    client = MlflowClient(shop.tracking_uri, registry_uri=shop.tracking_uri)
    assert client.get_model_version_by_alias("propensity-recommendations", "champion").version == "1"
    run = client.get_run(client.get_model_version("propensity-recommendations", "1").run_id)
    assert run.data.metrics["test_recall_at_10"] == pytest.approx(r["recall_at_10"])
    assert {"baseline_popularity_recall_at_10", "baseline_top_category_recall_at_10"} <= set(run.data.metrics)

    # the served model: histories in, ten products out, none the customer already bought
    mlflow.set_tracking_uri(shop.tracking_uri)
    served = mlflow.pyfunc.load_model("models:/propensity-recommendations@champion")
    data = SnapshotBuilder(shop).data
    hist = History.before(data, date.fromisoformat(r["test_date"]), shop.recommendations.view_days)
    customers = hist.customers().head(200).to_numpy()
    frame = input_frame(hist, np.append(customers, "C-cold-start"))
    lists = served.predict(frame)
    assert list(lists.columns) == ["customer_id", *(f"product_{i}" for i in range(1, 11))]
    catalogue = set(data.products["product_id"].to_list())
    for row, bought in zip(lists.itertuples(index=False), frame["bought"], strict=True):
        products = list(row[1:])
        assert len(set(products)) == 10 and set(products) <= catalogue and not set(products) & set(bought)
    assert len(served.predict(frame, params={"k": 3}).columns) == 4

    # retrained on the same data: the same recall, so the gate passes and v2 is champion
    second = pipeline.train_toolkit(shop, "recommendations")
    assert second.mlflow["passed"] and second.mlflow["version"] == "2"
    assert "vs champion v1" in second.mlflow["reason"]
    assert client.get_model_version_by_alias("propensity-recommendations", "champion").version == "2"


def test_personas_are_registered_and_keep_their_names_across_retrains(shop):
    first = pipeline.train_toolkit(shop, "personas", as_of=date(2025, 4, 1))
    r = first.report
    assert shop.personas.k_min <= r["k"] <= shop.personas.k_max and -1 <= r["silhouette"] <= 1
    assert len(set(r["names"])) == r["k"] and sum(r["sizes"].values()) == r["customers"]
    later = pipeline.train_toolkit(shop, "personas", as_of=date(2025, 4, 15))
    assert later.report["customers"] > r["customers"]
    kept = set(later.report["names"]) & set(r["names"])
    assert len(kept) >= min(r["k"], later.report["k"]) - 1, (r["names"], later.report["names"])
    client = MlflowClient(shop.tracking_uri, registry_uri=shop.tracking_uri)
    assert client.get_model_version_by_alias("propensity-personas", "champion").version == "2"
    mlflow.set_tracking_uri(shop.tracking_uri)
    served = mlflow.pyfunc.load_model("models:/propensity-personas@champion")
    feats = SnapshotBuilder(shop).build(date(2025, 4, 15), ["churn"]).features.to_pandas()
    names = served.predict(feats)
    assert set(names) <= set(later.report["names"]) and len(names) == len(feats)
