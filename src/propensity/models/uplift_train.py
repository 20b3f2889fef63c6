"""Uplift models from past campaigns: who buys *because* of a campaign kind's contact.

A campaign kind is an offer (``propensity-uplift-<kind>``, the kind being the offer code in
lower case: ``WINBACK15`` -> ``winback15``): every audience that sent that offer, on any date,
contributes its members. Both kinds of member count, with how they were selected recorded
(:data:`propensity.audiences.select.SELECTIONS`): an exploration slice (a random sample of
the eligible base, half treated) and a ranked audience's control group (random within the
top of a ranking). Within either, treatment is a coin flip of known weight, so a member's
outcome under the other arm is missing at random given its features.

Per member: the features of the snapshot at the campaign's date (what was known when it was
sent), whether it was treated, and whether it bought in the ``uplift.window_days`` after
(clean orders, not cancelled). The split is out of time like the propensity tasks': the
latest ``uplift.test_campaigns`` campaign dates whose window is over are the test, the
campaigns before them train, and a fixed fifth of the training customers (a hash of the id)
validates the choice of learner and boosting rounds by their Qini coefficient.

The model is tracked in MLflow (Qini, AUUC and uplift at the top 10/20/30% on the test, the
Qini curve as a figure), registered as ``propensity-uplift-<kind>`` and gated like the
propensity models: the challenger becomes ``champion`` unless its test Qini is below the
champion's on the same test by more than ``uplift.margin``.
"""

from __future__ import annotations

import logging
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

from propensity.audiences.measure import member_outcomes
from propensity.config import Settings
from propensity.errors import RequestError
from propensity.features.training import held_out
from propensity.models.uplift import (
    UpliftModel,
    feature_matrix,
    fit_bagged,
    fit_uplift,
    qini_curve,
    uplift_metrics,
)

log = logging.getLogger(__name__)

MEMBER_COLUMNS = ["audience", "dt", "customer_id", "group", "channel", "offer", "score", "selection", "p_treatment"]
#: what a member published before a column existed counts as
MEMBER_DEFAULTS = {
    "selection": pl.lit("ranked"),
    "p_treatment": pl.lit(None, pl.Float64),
    "score": pl.lit(None, pl.Float64),
}


def campaign_kind(offer: str) -> str:
    """The campaign kind of an offer code: lower case, runs of other characters as one ``-``."""
    kind = re.sub(r"[^a-z0-9]+", "-", offer.lower()).strip("-")
    if not kind:
        raise RequestError(f"offer code {offer!r} has no letters or digits to name a campaign kind")
    return kind


def uplift_model_name(kind: str) -> str:
    return f"propensity-uplift-{kind}"


def numeric_features() -> list[str]:
    """The catalogue's numeric features: the learners take a float matrix."""
    from propensity.features.catalogue import categorical_features, feature_names

    cats = set(categorical_features())
    return [f for f in feature_names() if f not in cats]


def campaign_members(lake: Any, kind: str) -> pl.DataFrame:
    """Every published member (treatment and control) of the audiences that sent ``kind``'s offer."""
    from propensity.audiences.sets import read_set_members

    frames = []
    for part in lake.partitions("audiences", ""):
        m = read_set_members(lake, part["dt"])
        if m is None:
            continue
        defaults = {
            "selection": pl.lit("ranked"),
            "p_treatment": pl.lit(None, pl.Float64),
            "score": pl.lit(None, pl.Float64),
        }
        for col, default in defaults.items():
            if col not in m.columns:  # published before members recorded how they were chosen
                m = m.with_columns(default.alias(col))
        frames.append(m.select(MEMBER_COLUMNS))
    if not frames:
        return pl.DataFrame(schema={c: pl.String for c in MEMBER_COLUMNS})
    members = pl.concat(frames, how="vertical_relaxed")
    kinds = members["offer"].unique().to_list()
    ours = [o for o in kinds if o is not None and campaign_kind(o) == kind]
    return members.filter(pl.col("offer").is_in(ours))


@dataclass
class UpliftFrames:
    """Training and test members with features, arm and outcome."""

    kind: str
    train_dates: list[date]
    test_dates: list[date]
    train: pd.DataFrame
    test: pd.DataFrame
    features: list[str] = field(default_factory=numeric_features)


def split_dates(dates: list[date], last_day: date, window: int, test: int) -> tuple[list[date], list[date]]:
    """(training dates, test dates): the latest ``test`` campaign dates whose window ends by
    ``last_day`` test; every earlier one trains. Later dates are still open and left out."""
    complete = sorted(d for d in dates if d + timedelta(days=window - 1) <= last_day)
    if len(complete) < test + 1:
        raise RequestError(
            f"uplift: {len(complete)} campaign date(s) with a complete {window}-day window (data ends {last_day}); "
            f"need {test + 1}: {test} to test and at least one to train"
        )
    return complete[:-test], complete[-test:]


def assemble(settings: Settings, kind: str) -> UpliftFrames:
    """The kind's members with the features of their campaign's snapshot and their outcome."""
    from propensity.features.build import orders_in_base
    from propensity.features.inputs import ShopData
    from propensity.features.snapshot import SnapshotBuilder, at_midnight
    from propensity.lake import Lake

    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    members = campaign_members(lake, kind)
    if members.is_empty():
        raise RequestError(f"uplift {kind}: no published audience sent an offer of this kind")
    data = ShopData.load(lake)
    if data.end is None:
        raise RequestError("uplift: the clean zone is empty: run collect and validate first")
    cfg = settings.uplift
    train_dates, test_dates = split_dates(
        members["dt"].unique().to_list(), data.end.date(), cfg.window_days, cfg.test_campaigns
    )
    used = members.filter(pl.col("dt").is_in(train_dates + test_dates))
    first, last = min(train_dates), max(test_dates) + timedelta(days=cfg.window_days)
    # between() keeps each order's latest version: a refund or cancellation updates an order
    window = data.between(at_midnight(first), at_midnight(last))
    orders = orders_in_base(window, settings.base_currency)
    rows = member_outcomes(used, orders, cfg.window_days)
    builder = SnapshotBuilder(settings)
    feats = numeric_features()
    blocks = []
    for d in train_dates + test_dates:
        snap = builder.store.read(d, []) or builder.build(d, [])
        blocks.append(
            rows.filter(pl.col("dt") == d).join(
                snap.features.select("customer_id", *feats), on="customer_id", how="inner"
            )
        )
    frame = pl.concat(blocks, how="vertical_relaxed").with_columns((pl.col("group") == "treatment").alias("treated"))
    is_test = frame["dt"].is_in(test_dates).to_numpy()
    df = frame.to_pandas()
    return UpliftFrames(
        kind,
        train_dates,
        test_dates,
        df[~is_test].reset_index(drop=True),
        df[is_test].reset_index(drop=True),
        feats,
    )


@dataclass
class UpliftResult:
    kind: str
    model: UpliftModel
    learner: str
    rounds: int
    metrics: dict[str, float | None]
    valid_qini: dict[str, float]
    n_train: int
    n_test: int
    seconds: float
    test_effect: np.ndarray
    model_version: str | None = None
    promoted: bool = False
    decision: dict[str, Any] = field(default_factory=dict)

    #: the test's Qini of other rankings: the members' propensity score, and on simulated shops the true effect
    baseline_qini: dict[str, float | None] = field(default_factory=dict)
    baseline_effects: dict[str, np.ndarray] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        return {
            "model": uplift_model_name(self.kind),
            "learner": self.learner,
            "rounds": self.rounds,
            "test": self.metrics,
            "baseline_qini": self.baseline_qini,
            "valid_qini": self.valid_qini,
            "n_train": self.n_train,
            "n_test": self.n_test,
            "model_version": self.model_version,
            "promoted": self.promoted,
            "seconds": round(self.seconds, 1),
        }


def fit_and_evaluate(fr: UpliftFrames, settings: Settings) -> UpliftResult:
    """Pick the learner and rounds on the validation fifth of the training customers (Qini),
    refit the choice on every training member, and evaluate it on the out-of-time test."""
    cfg = settings.uplift
    t0 = time.perf_counter()
    if len(fr.train) < cfg.min_members:
        raise RequestError(f"uplift {fr.kind}: {len(fr.train)} training members, fewer than {cfg.min_members}")
    x, t, y = (
        feature_matrix(fr.train, fr.features),
        fr.train["treated"].to_numpy(bool),
        fr.train["converted"].to_numpy(float),
    )
    held = held_out(fr.train["customer_id"])
    params = {
        "learning_rate": cfg.learning_rate,
        "num_leaves": cfg.num_leaves,
        "min_child_samples": cfg.min_child_samples,
        "subsample": cfg.subsample,
        "subsample_freq": 1,
        "colsample_bytree": cfg.colsample_bytree,
        "random_state": settings.models.seed,
    }
    e = fr.train["p_treatment"].to_numpy(float) if "p_treatment" in fr.train.columns else None
    valid_qini: dict[str, float] = {}
    for learner in cfg.learners:
        for rounds in cfg.rounds:
            m = fit_uplift(x[~held], t[~held], y[~held], learner, params, rounds, None if e is None else e[~held])
            valid_qini[f"{learner}:{rounds}"] = _qini(y[held], t[held], m.effect(x[held]))
    best = max(valid_qini, key=lambda k: valid_qini[k])
    learner, rounds = best.split(":")[0], int(best.split(":")[1])
    seed = settings.models.seed
    model = fit_bagged(x, t, y, learner, params, rounds, e, cfg.bags, seed)
    xt = feature_matrix(fr.test, fr.features)
    effect = model.effect(xt)
    yt, tt = fr.test["converted"].to_numpy(float), fr.test["treated"].to_numpy(bool)
    metrics = uplift_metrics(yt, tt, effect)
    if cfg.refit_on_test and len(fr.test):  # served: the same choice, fitted on every member
        et = fr.test["p_treatment"].to_numpy(float) if e is not None and "p_treatment" in fr.test.columns else None
        ea = None if e is None or et is None else np.concatenate([e, et])
        model = fit_bagged(
            np.vstack([x, xt]), np.concatenate([t, tt]), np.concatenate([y, yt]), learner, params, rounds, ea,
            cfg.bags, seed,
        )  # fmt: skip
    baselines = baseline_rankings(settings, fr)
    return UpliftResult(
        fr.kind,
        model,
        learner,
        rounds,
        metrics,
        valid_qini,
        len(fr.train),
        len(fr.test),
        time.perf_counter() - t0,
        effect,
        baseline_qini={k: _qini(yt, tt, v) for k, v in baselines.items()},
        baseline_effects=baselines,
    )


def baseline_rankings(settings: Settings, fr: UpliftFrames) -> dict[str, np.ndarray]:
    """Other rankings of the test members: ``propensity`` (the score their audience ranked
    them by), and on a simulated shop ``oracle`` (each member's true effect, the ceiling)."""
    out: dict[str, np.ndarray] = {}
    score = pd.to_numeric(fr.test["score"], errors="coerce").to_numpy(float)
    if np.isfinite(score).all():
        out["propensity"] = score
    truth_dir = settings.truth_dir
    if (truth_dir / "meta.json").exists():
        from propensity.simulate.oracle import Truth

        truth = Truth.read(truth_dir)
        known = set(truth.customer_ids.tolist())
        if fr.test["customer_id"].isin(known).all():
            effect = np.zeros(len(fr.test))
            days = fr.test["dt"].dt.date.to_numpy()
            for (d, channel), rows in fr.test.groupby([days, fr.test["channel"]]):
                at = rows.index.to_numpy()
                effect[at] = truth.effects(d, rows["customer_id"].to_numpy(), channel).column("uplift").to_numpy()
            out["oracle"] = effect
    return out


def _qini(y: np.ndarray, t: np.ndarray, effect: np.ndarray) -> float:
    from propensity.models.uplift import qini_coefficient

    return qini_coefficient(y, t, effect) if t.any() and not t.all() else float("nan")


# --- tracking, registry, gate --------------------------------------------------------------------


def _qini_figure(fr: UpliftFrames, effect: np.ndarray, baselines: dict[str, np.ndarray], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y, t = fr.test["converted"].to_numpy(float), fr.test["treated"].to_numpy(bool)
    fig, ax = plt.subplots(figsize=(5, 4))
    x, q = qini_curve(y, t, effect)
    ax.plot(x, q * len(y), label="uplift model")
    for name, ranking in baselines.items():
        bx, bq = qini_curve(y, t, ranking)
        ax.plot(bx, bq * len(y), label=name)
    ax.plot([0, 1], [0, q[-1] * len(y)], "--", label="random")
    ax.set_xlabel("share targeted")
    ax.set_ylabel("incremental conversions")
    ax.set_title(f"Qini curve, {uplift_model_name(fr.kind)}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def log_and_register(settings: Settings, fr: UpliftFrames, r: UpliftResult, promote: bool = True) -> None:
    """Log the run, register the model and apply the Qini gate (sets ``r.model_version``,
    ``r.promoted`` and ``r.decision``)."""
    import mlflow
    from mlflow import MlflowClient

    from propensity.models.tracking import code_version, configure, pip_requirements, process_tags
    from propensity.models.uplift_pyfunc import UpliftPyfunc, save_model

    name = uplift_model_name(fr.kind)
    experiment_id = configure(settings)
    client = MlflowClient()
    run_name = f"uplift {fr.kind} {fr.test_dates[-1]}"
    with mlflow.start_run(run_name=run_name, experiment_id=experiment_id, tags=process_tags()):
        mlflow.set_tags({"task": f"uplift-{fr.kind}", "propensity.code_version": code_version()})
        mlflow.log_params(
            {
                "kind": fr.kind,
                "learner": r.learner,
                "rounds": r.rounds,
                "window_days": settings.uplift.window_days,
                "train_dates": ",".join(map(str, fr.train_dates)),
                "test_dates": ",".join(map(str, fr.test_dates)),
                "n_features": len(fr.features),
                "bags": settings.uplift.bags,
                # the served model's members; the test figures are the fit's without the test
                "refit_on_test": settings.uplift.refit_on_test,
            }
        )
        logged = {f"test_{k}": v for k, v in r.metrics.items() if v is not None}
        logged.update({f"valid_qini_{k.replace(':', '_')}": v for k, v in r.valid_qini.items() if np.isfinite(v)})
        logged.update({f"test_qini_{k}": v for k, v in r.baseline_qini.items() if v is not None and np.isfinite(v)})
        logged.update({"n_train": r.n_train, "n_test": r.n_test})
        mlflow.log_metrics(logged)
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.log_artifact(str(_qini_figure(fr, r.test_effect, r.baseline_effects, Path(tmp) / "qini.png")))
            artifacts = save_model(r.model, fr.features, Path(tmp) / "model")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=UpliftPyfunc(),
                artifacts=artifacts,
                registered_model_name=name,
                input_example=fr.test[fr.features].head(5).astype("float64"),
                pip_requirements=pip_requirements("lightgbm", "scikit-learn", "econml"),
            )
    r.model_version = str(info.registered_model_version)
    r.decision = gate_uplift(settings, fr, r, client, promote)
    r.promoted = bool(r.decision.get("promoted"))


def gate_uplift(settings: Settings, fr: UpliftFrames, r: UpliftResult, client: Any, promote: bool) -> dict[str, Any]:
    """Make the new version ``challenger``, and ``champion`` unless the champion's Qini on the
    same test beats it by more than ``uplift.margin``."""
    import mlflow

    from propensity.models.registry import CHALLENGER, CHAMPION, current_champion, scalar_gate

    name, version = uplift_model_name(fr.kind), str(r.model_version)
    client.set_registered_model_alias(name, CHALLENGER, version)
    champ = current_champion(client, name)
    champion_qini = None
    if champ is not None and str(champ.version) != version:
        scorer = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
        effect = np.asarray(scorer.predict(fr.test[fr.features].astype("float64")), dtype=float)
        champion_qini = _qini(fr.test["converted"].to_numpy(float), fr.test["treated"].to_numpy(bool), effect)
    qini = float(r.metrics["qini"] or 0.0)
    decision = scalar_gate(
        client, name, version, "Qini", qini, champ, champion_qini, settings.uplift.margin, promote, digits=5
    )
    return {**decision, "qini": qini, "champion_qini": champion_qini}


def train_uplift(settings: Settings, kind: str, register: bool = True, promote: bool = True) -> UpliftResult:
    """Assemble, fit, evaluate, and (with ``register``) log, register and gate one campaign kind's model."""
    fr = assemble(settings, kind)
    r = fit_and_evaluate(fr, settings)
    if register:
        log_and_register(settings, fr, r, promote)
    log.info(
        "%s: %s learner, %d rounds; test Qini %.5f, uplift@10%% %s (%d train, %d test members)",
        uplift_model_name(kind),
        r.learner,
        r.rounds,
        r.metrics["qini"] or 0.0,
        r.metrics["uplift_at_10"],
        r.n_train,
        r.n_test,
    )
    return r


def effects_at(settings: Settings, kind: str, features: pd.DataFrame) -> np.ndarray:
    """The champion's predicted effect for each row of a snapshot's ``features``."""
    import mlflow

    from propensity.models.registry import CHAMPION

    scorer = mlflow.pyfunc.load_model(f"models:/{uplift_model_name(kind)}@{CHAMPION}")
    return np.asarray(scorer.predict(features[numeric_features()].astype("float64")), dtype=float)
