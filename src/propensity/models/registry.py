"""The model registry: versions, the ``challenger``/``champion`` aliases, and the promotion gate.

No stages (deprecated in MLflow 3). A new version always becomes ``challenger``. It
becomes ``champion`` only if it clears the task's absolute AUC floor and is not worse
than the current champion by more than the margin, both measured on the SAME
out-of-time test set (the champion is re-scored on it). The decision, both scores and
the previous champion are recorded as version tags, so ``rollback`` can undo a promotion.
"""

from __future__ import annotations

import logging
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from propensity.config import Settings
from propensity.models.metrics import safe_auc

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"


def model_name(task: str) -> str:
    return f"propensity-{task}"


def current_champion(client: MlflowClient, name: str) -> Any | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def gate_and_alias(
    settings: Settings,
    task: str,
    version: str,
    challenger_auc: float,
    x_test: pd.DataFrame,
    y_test: np.ndarray,
    tags: dict[str, str] | None = None,
    promote: bool = True,
) -> dict[str, Any]:
    """Tag ``version``, make it ``challenger`` and, if it passes the gate and ``promote``, ``champion``.

    With ``promote=False`` the gate still runs and its verdict is recorded, but the champion stays.
    """
    client = MlflowClient()
    name = model_name(task)
    for k, v in (tags or {}).items():
        client.set_model_version_tag(name, version, k, str(v))
    client.set_registered_model_alias(name, CHALLENGER, version)
    floor = settings.models.floors.get(task, 0.5)
    margin = settings.models.margin
    champ = current_champion(client, name)
    champion_auc: float | None = None
    note = ""
    if champ is not None:
        try:
            scores = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}").predict(x_test)
            champion_auc = safe_auc(y_test, np.asarray(scores))
        except Exception as exc:
            note = f"champion v{champ.version} could not score the test set: {exc}"
            log.warning("%s", note)
    reasons = []
    if challenger_auc < floor:
        reasons.append(f"test AUC {challenger_auc:.4f} below the floor {floor:.4f}")
    if champion_auc is not None and challenger_auc < champion_auc - margin:
        reasons.append(f"test AUC {challenger_auc:.4f} worse than champion {champion_auc:.4f} beyond margin {margin}")
    passed = not reasons
    promoted = passed and promote
    if passed and not promote:
        note = "; ".join(filter(None, [note, "promotion disabled for this run: the champion stays"]))
    decision = {
        "task": task,
        "model": name,
        "challenger_version": version,
        "challenger_auc": challenger_auc,
        "champion_version": champ.version if champ is not None else None,
        "champion_auc": champion_auc,
        "floor": floor,
        "margin": margin,
        "promoted": promoted,
        "passed": passed,
        "promote": promote,
        "reasons": reasons or ["passes the floor and is not worse than the champion"],
        "note": note,
    }
    tag = {
        "gate.decision": "promoted" if promoted else "passed, not promoted" if passed else "rejected",
        "gate.challenger_auc": f"{challenger_auc:.6f}",
        "gate.champion_auc": "" if champion_auc is None else f"{champion_auc:.6f}",
        "gate.reasons": "; ".join(decision["reasons"]),
    }
    for k, v in tag.items():
        client.set_model_version_tag(name, version, k, v)
    if promoted:
        set_champion(client, name, version, previous=champ.version if champ is not None else None)
    log.info("%s v%s: %s (%s)", name, version, tag["gate.decision"], tag["gate.reasons"])
    return decision


def set_champion(client: MlflowClient, name: str, version: str, previous: str | None) -> None:
    if previous is not None and previous != version:
        client.set_model_version_tag(name, version, "previous_champion", previous)
    client.set_registered_model_alias(name, CHAMPION, version)


def promote(settings: Settings, task: str, version: str) -> str:
    """Human override: make ``version`` the champion (the previous one is remembered for rollback)."""
    from propensity.models.tracking import configure

    configure(settings)
    client = MlflowClient()
    name = model_name(task)
    client.get_model_version(name, version)  # raises a clear error for an unknown version
    champ = current_champion(client, name)
    set_champion(client, name, version, previous=champ.version if champ is not None else None)
    client.set_model_version_tag(name, version, "gate.decision", "promoted by hand")
    return f"{name}: champion -> v{version}" + (f" (was v{champ.version})" if champ is not None else "")


def rollback(settings: Settings, task: str) -> str:
    """Point ``champion`` back at the version it replaced."""
    from propensity.models.tracking import configure

    configure(settings)
    client = MlflowClient()
    name = model_name(task)
    champ = current_champion(client, name)
    if champ is None:
        raise ValueError(f"{name} has no champion to roll back")
    previous = champ.tags.get("previous_champion")
    if not previous:
        raise ValueError(f"{name} v{champ.version} has no previous champion recorded")
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, champ.version, "rolled_back", "true")
    return f"{name}: champion v{champ.version} -> v{previous}"
