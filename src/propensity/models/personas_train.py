"""Fit, track and register the persona model (``propensity-personas``).

Fitted on the snapshot at the training date (a uniform sample of ``personas.max_rows``
customers), named against the champion's personas so that names survive retrains
(:mod:`propensity.models.personas`), logged with the silhouette of every ``k`` tried and each
persona's centroid, and registered as a pyfunc that maps a frame of features to persona
names. There is no held-out score to gate an unsupervised model on: every fit becomes
``champion``, and the matching keeps what marketers see stable.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from propensity.config import Settings
from propensity.models.personas import Personas, fit_personas

log = logging.getLogger(__name__)

MODEL_NAME = "propensity-personas"


@dataclass
class PersonaResult:
    snapshot: date
    personas: Personas
    sizes: dict[str, int]
    customers: int
    seconds: float
    model_version: str | None = None
    promoted: bool = False
    decision: dict[str, Any] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        p = self.personas
        return {
            "k": p.k,
            "silhouette": p.silhouette,
            "silhouette_by_k": {str(k): v for k, v in p.silhouettes.items()},
            "names": p.names,
            "sizes": self.sizes,
            "snapshot": str(self.snapshot),
            "customers": self.customers,
            "model_version": self.model_version,
            "seconds": round(self.seconds, 1),
        }


def champion_personas(settings: Settings) -> Personas | None:
    """The champion persona model (None when there is none)."""
    from propensity.models.registry import champion_python_model

    wrapper = champion_python_model(settings, MODEL_NAME)
    return None if wrapper is None else wrapper.personas


def fit_at(settings: Settings, features: pd.DataFrame, snapshot: date, previous: Personas | None) -> PersonaResult:
    cfg = settings.personas
    t0 = time.perf_counter()
    sample = features
    if len(features) > cfg.max_rows:
        sample = features.sample(cfg.max_rows, random_state=settings.models.seed)
    personas = fit_personas(sample, (cfg.k_min, cfg.k_max), seed=settings.models.seed, previous=previous)
    sizes = pd.Series(personas.assign(features)).value_counts()
    return PersonaResult(
        snapshot=snapshot,
        personas=personas,
        sizes={str(k): int(v) for k, v in sizes.items()},
        customers=len(features),
        seconds=time.perf_counter() - t0,
    )


def train_personas(
    settings: Settings, builder: Any = None, as_of: date | None = None, register: bool = True
) -> PersonaResult:
    """Fit on the snapshot after the last observed day (or ``as_of``), then log and register."""
    from propensity.errors import RequestError
    from propensity.features.snapshot import SnapshotBuilder

    builder = builder or SnapshotBuilder(settings)
    last = builder.observed_until
    if last is None:
        raise RequestError("personas: the clean zone holds no orders or events")
    d = min(last + timedelta(days=1), as_of) if as_of else last + timedelta(days=1)
    features = builder.load_or_build(d, []).features.to_pandas()
    previous = champion_personas(settings) if register else None
    r = fit_at(settings, features, d, previous)
    if register:
        log_and_register(settings, r, features)
    log.info("personas: k=%d, silhouette %.3f: %s", r.personas.k, r.personas.silhouette, ", ".join(r.personas.names))
    return r


def log_and_register(settings: Settings, r: PersonaResult, features: pd.DataFrame) -> None:
    import mlflow
    from mlflow import MlflowClient

    from propensity.models.personas_pyfunc import PersonasPyfunc
    from propensity.models.registry import current_champion, set_champion
    from propensity.models.tracking import code_version, configure, pip_requirements, process_tags

    experiment_id = configure(settings)
    p = r.personas
    with mlflow.start_run(run_name=f"personas {r.snapshot}", experiment_id=experiment_id, tags=process_tags()):
        mlflow.set_tags({"task": "personas", "propensity.code_version": code_version()})
        mlflow.log_params({"k": p.k, "snapshot": str(r.snapshot), "traits": ",".join(p.traits)})
        metrics = {"silhouette": p.silhouette, "customers": r.customers}
        metrics.update({f"silhouette_k{k}": v for k, v in p.silhouettes.items()})
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "personas.json"
            path.write_text(json.dumps(p.to_dict(), indent=2))
            centroids = pd.DataFrame(p.centroids, index=p.names, columns=p.traits).round(3)
            mlflow.log_text(centroids.to_csv(), "centroids.csv")
            mlflow.log_dict(r.sizes, "sizes.json")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=PersonasPyfunc(),
                artifacts={"personas": str(path)},
                registered_model_name=MODEL_NAME,
                input_example=features[p.traits].head(3).astype("float64"),
                pip_requirements=pip_requirements(),
            )
    r.model_version = str(info.registered_model_version)
    client = MlflowClient()
    champ = current_champion(client, MODEL_NAME)
    set_champion(client, MODEL_NAME, r.model_version, str(champ.version) if champ is not None else None)
    client.set_model_version_tag(MODEL_NAME, r.model_version, "gate.decision", "promoted: unsupervised, names matched")
    r.promoted = True
    r.decision = {"model": MODEL_NAME, "version": r.model_version, "promoted": True}
