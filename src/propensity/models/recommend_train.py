"""Train, evaluate, track and register the recommender (``propensity-recommendations``).

Out of time, like the propensity tasks, with ``H = recommendations.horizon_days``:

* the test date ``T`` is the latest whose window ``[T, T + H)`` the data cover (or ``--as-of``);
* the validation windows are ``[T - kH, T - (k-1)H)`` for ``k`` up to
  ``recommendations.valid_windows``: each weight pair of ``recommendations.blends`` x
  ``view_weights`` is fitted on the history before each window and scored on it; the best
  pooled recall@10 wins;
* the winner is refitted on the history before ``T`` and scored on ``[T, T + H)`` against the
  popularity and top-category baselines.

The run is logged to the propensity experiment (``task=recommend``), the model registered as
a pyfunc that returns product lists, and gated like the others: the challenger becomes
``champion`` unless the champion, scored on the same test, beats its recall@10 by more than
``recommendations.margin``.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from propensity.config import Settings
from propensity.errors import RequestError
from propensity.models.recommend import Evaluation, History, ItemItem, bought_between, evaluate, fit_at

log = logging.getLogger(__name__)

MODEL_NAME = "propensity-recommendations"


@dataclass
class RecommendResult:
    test_date: date
    valid_date: date
    params: dict[str, float]
    test: Evaluation
    valid_recall: dict[str, float]
    seconds: float
    model: ItemItem | None = None
    #: the test's history and later purchases, for the gate to score the champion on the same test
    test_history: History | None = None
    test_later: Any = None
    model_version: str | None = None
    promoted: bool = False
    decision: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            **self.test.report(),
            "test_date": str(self.test_date),
            "valid_date": str(self.valid_date),
            "params": self.params,
            "valid_recall_at_10": self.valid_recall,
            "model_version": self.model_version,
            "promoted": self.promoted,
            "seconds": round(self.seconds, 1),
        }


def test_date(observed_until: date | None, horizon_days: int, as_of: date | None) -> date:
    """The latest date whose ``horizon_days`` window the data cover, capped by ``as_of``."""
    if observed_until is None:
        raise RequestError("recommendations: the clean zone holds no orders or events")
    latest = observed_until + timedelta(days=1) - timedelta(days=horizon_days)
    return min(latest, as_of) if as_of else latest


def fit_and_evaluate(settings: Settings, data: Any, t: date) -> RecommendResult:
    """Choose the weights on the validation windows before ``t``, refit at ``t`` and evaluate
    on ``[t, t + H)``.

    The validation pools ``recommendations.valid_windows`` windows of ``H`` days, the latest
    ending at ``t`` (each window's recall weighted by its customers): one 60-day window of the
    demo shop holds about 900 customers with a new product, and on a second simulated shop it
    picked a blend whose test recall was 0.119 where another candidate's was 0.136."""
    cfg = settings.recommendations
    t0 = time.perf_counter()
    h = timedelta(days=cfg.horizon_days)
    start = data.start.date() if data.start else t
    dates = [t - k * h for k in range(1, cfg.valid_windows + 1) if t - k * h > start + h] or [t - h]
    windows = [(v, History.before(data, v, cfg.view_days), bought_between(data, v, v + h)) for v in dates]
    valid: dict[str, float] = {}
    best: tuple[float, dict[str, float]] | None = None
    for view_weight in cfg.view_weights:
        # the similarities depend on the view weight only: fitted once per window, re-blended
        fitted = [fit_at(data, v, cfg.view_days, history=h, view_weight=view_weight)[0] for v, h, _ in windows]
        for blend in cfg.blends:
            params = {"view_weight": view_weight, "blend": blend}
            hits = n = 0.0
            for model, (_, hist_v, later_v) in zip(fitted, windows, strict=True):
                ev = evaluate(replace(model, blend=blend), hist_v, later_v)
                hits, n = hits + ev.recall_at_10 * ev.customers, n + ev.customers
            recall = hits / n
            valid[f"view_weight={view_weight},blend={blend}"] = recall
            if best is None or recall > best[0]:
                best = (recall, params)
    assert best is not None  # blends and view_weights are never empty (config)
    model, hist = fit_at(data, t, cfg.view_days, **best[1])
    later = bought_between(data, t, t + h)
    ev = evaluate(model, hist, later)
    seconds = time.perf_counter() - t0
    return RecommendResult(t, dates[0], best[1], ev, valid, seconds, model, test_history=hist, test_later=later)


def train_recommendations(
    settings: Settings, builder: Any = None, as_of: date | None = None, register: bool = True, promote: bool = True
) -> RecommendResult:
    """Fit, evaluate and (with ``register``) log, register and gate the recommender."""
    from propensity.features.snapshot import SnapshotBuilder

    builder = builder or SnapshotBuilder(settings)
    t = test_date(builder.observed_until, settings.recommendations.horizon_days, as_of)
    r = fit_and_evaluate(settings, builder.data, t)
    if register:
        log_and_register(settings, r, promote)
    log.info(
        "recommend: recall@10 %.4f (popularity %.4f, top category %.4f), hit rate %.4f, %d customers; %s",
        r.test.recall_at_10,
        r.test.baseline_recall_at_10["popularity"],
        r.test.baseline_recall_at_10["top_category"],
        r.test.hit_rate_at_10,
        r.test.customers,
        r.params,
    )
    return r


def log_and_register(settings: Settings, r: RecommendResult, promote: bool) -> None:
    import mlflow
    from mlflow import MlflowClient

    from propensity.models.recommend_pyfunc import RecommendPyfunc, save_model, signature
    from propensity.models.tracking import code_version, configure, pip_requirements, process_tags

    assert r.model is not None
    experiment_id = configure(settings)
    cfg = settings.recommendations
    with mlflow.start_run(run_name=f"recommend {r.test_date}", experiment_id=experiment_id, tags=process_tags()):
        mlflow.set_tags({"task": "recommend", "propensity.code_version": code_version()})
        mlflow.log_params(
            {
                **r.params,
                "test_date": str(r.test_date),
                "valid_date": str(r.valid_date),
                "horizon_days": cfg.horizon_days,
                "view_days": cfg.view_days,
                "products": len(r.model.products),
            }
        )
        ev = r.test
        metrics = {"test_recall_at_10": ev.recall_at_10, "test_hit_rate_at_10": ev.hit_rate_at_10}
        metrics.update({f"baseline_{k}_recall_at_10": v for k, v in ev.baseline_recall_at_10.items()})
        metrics.update({f"baseline_{k}_hit_rate_at_10": v for k, v in ev.baseline_hit_rate_at_10.items()})
        metrics.update({"n_test": ev.customers, "train_seconds": r.seconds})
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=RecommendPyfunc(),
                artifacts=save_model(r.model, Path(tmp) / "model"),
                registered_model_name=MODEL_NAME,
                signature=signature(),
                pip_requirements=pip_requirements("polars", "scipy"),
            )
    r.model_version = str(info.registered_model_version)
    r.decision = gate(settings, r, MlflowClient(), promote)
    r.promoted = bool(r.decision.get("promoted"))


def champion_model(settings: Settings) -> ItemItem | None:
    """The champion recommender (None when there is none)."""
    from propensity.models.registry import champion_python_model

    wrapper = champion_python_model(settings, MODEL_NAME)
    return None if wrapper is None else wrapper.model


def gate(settings: Settings, r: RecommendResult, client: Any, promote: bool) -> dict[str, Any]:
    """``challenger`` always; ``champion`` unless the champion's recall@10 on the same test is
    higher by more than the margin."""
    from propensity.models.registry import CHALLENGER, current_champion, scalar_gate

    version = str(r.model_version)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
    champ = current_champion(client, MODEL_NAME)
    champion_recall = None
    if champ is not None and str(champ.version) != version:
        model = champion_model(settings)
        if model is not None and r.test_history is not None:
            champion_recall = evaluate(model, r.test_history, r.test_later).recall_at_10
    margin = settings.recommendations.margin
    recall = r.test.recall_at_10
    return scalar_gate(client, MODEL_NAME, version, "recall@10", recall, champ, champion_recall, margin, promote)


def products_for(settings: Settings, d: date, customers: list[str], n: int) -> Any:
    """``customer_id`` and ``product_1..n`` for ``customers``: the champion's recommendations from
    what each bought before ``d`` and viewed in ``recommendations.view_days`` before it."""
    import polars as pl

    from propensity.lake import Lake
    from propensity.models.recommend import history_data
    from propensity.models.recommend_pyfunc import input_frame, product_lists

    model = champion_model(settings)
    if model is None:
        raise RequestError(f"{MODEL_NAME}@champion does not exist: run propensity train first")
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    hist = History.before(history_data(lake), d, settings.recommendations.view_days)
    lists = product_lists(model, input_frame(hist, sorted(set(customers))), min(n, len(model.products)))
    return pl.from_pandas(lists).cast(pl.String)
