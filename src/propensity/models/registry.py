"""The model registry: versions, the ``challenger``/``champion`` aliases, and the promotion gate.

No stages (deprecated in MLflow 3). A new version always becomes ``challenger``. It
becomes ``champion`` only if it clears the task's absolute AUC floor and is not worse
than the current champion by more than the margin, both measured on the SAME
out-of-time test set (the champion is re-scored on it). The decision, both scores and
the previous champion are recorded as version tags, so ``rollback`` can undo a promotion.

A version also carries its training fingerprint (``data_digest``, ``params_digest``: see
:mod:`propensity.models.fingerprint`), written last, once its gate has completed. The
trainer looks it up to skip refitting unchanged data (:func:`find_unchanged`), and the
gate never promotes a version whose fingerprint an earlier version already has (two
front doors training the same data at once): the same model cannot be promoted twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from propensity.config import Settings
from propensity.models.fingerprint import Fingerprint
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


def versions_with_fingerprint(client: MlflowClient, name: str, fingerprint: Fingerprint) -> list[ModelVersion]:
    """Versions of ``name`` whose gate completed with exactly ``fingerprint``.

    The tag filter narrows the search on the server; :meth:`Fingerprint.matches` re-checks,
    so a store that ignores tag filters cannot produce a false match.
    """
    quoted = name.replace("'", "\\'")
    clauses = [f"name = '{quoted}'", *(f"tags.{k} = '{v}'" for k, v in fingerprint.tags().items())]
    return [v for v in client.search_model_versions(" and ".join(clauses)) if fingerprint.matches(v.tags)]


def pick_version(versions: Iterable[str], champion: str | None) -> str | None:
    """The version to report among equivalent ones: the champion if it is one, else the oldest."""
    found = sorted({str(v) for v in versions}, key=int)
    if not found:
        return None
    return champion if champion in found else found[0]


def find_unchanged(client: MlflowClient, task: str, fingerprint: Fingerprint) -> ModelVersion | None:
    """The registered version of ``task`` trained on the same data with the same parameters, if any."""
    name = model_name(task)
    matches = {str(v.version): v for v in versions_with_fingerprint(client, name, fingerprint)}
    champ = current_champion(client, name)
    chosen = pick_version(matches, str(champ.version) if champ is not None else None)
    return matches[chosen] if chosen is not None else None


def unchanged_note(version: str) -> str:
    """How a run that matched ``version`` is described in logs, reports and tags."""
    return f"unchanged (same data and parameters as v{version})"


def gate_and_alias(
    settings: Settings,
    task: str,
    version: str,
    challenger_auc: float,
    x_test: pd.DataFrame,
    y_test: np.ndarray,
    tags: dict[str, str] | None = None,
    promote: bool = True,
    fingerprint: Fingerprint | None = None,
) -> dict[str, Any]:
    """Tag ``version``, make it ``challenger`` and, if it passes the gate and ``promote``, ``champion``.

    With ``promote=False`` the gate still runs and its verdict is recorded, but the champion stays.
    With a ``fingerprint`` that an earlier version already carries, ``version`` is a duplicate:
    it is tagged as such and neither aliased nor promoted. The fingerprint tags are set last.
    """
    client = MlflowClient()
    name = model_name(task)
    for k, v in (tags or {}).items():
        client.set_model_version_tag(name, version, k, str(v))
    floor = settings.models.floors.get(task, 0.5)
    margin = settings.models.margin
    champ = current_champion(client, name)
    if fingerprint is not None:
        earlier = [
            v.version for v in versions_with_fingerprint(client, name, fingerprint) if int(v.version) < int(version)
        ]
        original = pick_version(earlier, str(champ.version) if champ is not None else None)
        if original is not None:
            decision = duplicate_decision(task, version, challenger_auc, original, champ, floor, margin, promote)
            client.set_model_version_tag(name, version, "gate.decision", decision["reasons"][0])
            _tag_fingerprint(client, name, version, fingerprint)
            log.info("%s v%s: %s", name, version, decision["reasons"][0])
            return decision
    client.set_registered_model_alias(name, CHALLENGER, version)
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
    if fingerprint is not None:
        _tag_fingerprint(client, name, version, fingerprint)
    log.info("%s v%s: %s (%s)", name, version, tag["gate.decision"], tag["gate.reasons"])
    return decision


def duplicate_decision(
    task: str,
    version: str,
    challenger_auc: float,
    original: str,
    champ: Any | None,
    floor: float,
    margin: float,
    promote: bool,
) -> dict[str, Any]:
    """The gate's record for a version that repeats ``original``: same keys as a verdict, never promoted."""
    return {
        "task": task,
        "model": model_name(task),
        "challenger_version": version,
        "challenger_auc": challenger_auc,
        "champion_version": champ.version if champ is not None else None,
        "champion_auc": None,
        "floor": floor,
        "margin": margin,
        "promoted": False,
        "passed": False,
        "promote": promote,
        "reasons": [unchanged_note(original)],
        "note": f"v{version} repeats v{original}; the gate ran on v{original}",
        "unchanged": True,
        "matched_version": original,
    }


def _tag_fingerprint(client: MlflowClient, name: str, version: str, fingerprint: Fingerprint) -> None:
    for k, v in fingerprint.tags().items():
        client.set_model_version_tag(name, version, k, v)


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
