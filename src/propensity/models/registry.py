"""The model registry: versions, the ``challenger``/``champion`` aliases, and the promotion gate.

No stages (deprecated in MLflow 3). A new version always becomes ``challenger``. It
becomes ``champion`` only if it clears the task's absolute AUC floor and is not worse
than the current champion by more than the margin, both measured on the SAME
out-of-time test set (the champion is re-scored on it). The decision, both scores and
the previous champion are recorded as version tags.

Every change of champion is also written to the champion history (:data:`HISTORY_TAG`, a
registered-model tag), a stack that ``rollback`` pops: it goes back one champion at a time
and never reinstates a version that was rolled back or left behind. ``promote`` (the human
override) refuses a version the gate rejected or never saw unless forced.

A version also carries its training fingerprint (``data_digest``, ``params_digest``: see
:mod:`propensity.models.fingerprint`), written last, once its gate has completed. The
trainer looks it up to skip refitting unchanged data (:func:`find_unchanged`), and the
gate never promotes a version whose fingerprint an earlier version already has (two
front doors training the same data at once): the same model cannot be promoted twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from propensity.config import Settings
from propensity.errors import RequestError
from propensity.models.fingerprint import Fingerprint
from propensity.models.metrics import safe_auc

log = logging.getLogger(__name__)

CHAMPION, CHALLENGER = "champion", "challenger"

#: Registered-model tag: the champions in the order they took over (JSON list of versions),
#: the current one last. Registries from before it start their history at the current champion.
HISTORY_TAG = "champion_history"
#: How many champions the history keeps (a tag value is limited in size).
HISTORY_LIMIT = 100
#: Gate decisions that let a human promote a version without ``--force``.
PASSING = ("promoted", "passed, not promoted")
#: Gate decision of a version whose training run died before its gate (see :mod:`propensity.models.tracking`).
ABANDONED = "abandoned"
#: Version tags: rolled back (or left behind by a return to an earlier champion), promoted by hand, forced.
ROLLED_BACK_TAG = "rolled_back"
BY_HAND_TAG = "promotion.by_hand"
FORCED_TAG = "promotion.forced"


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
    challenger_scores: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    measure: str = "auc",
) -> dict[str, Any]:
    """Tag ``version``, make it ``challenger`` and, if it passes the gate and ``promote``, ``champion``.

    ``measure`` is what the task is judged by: ``auc`` for a propensity task, ``gini`` (the
    normalised Gini of realised revenue, :func:`propensity.models.clv.normalized_gini`) for a
    value task, whose floor defaults to 0 (random order) instead of 0.5.

    With ``challenger_scores`` (the challenger's scores of ``x_test``), the champion is judged
    on the paired AUC difference: the challenger passes when the lower bound of the 95%
    interval of (challenger - champion), both scored on the same customer-cluster resamples
    (``groups``), is above ``-margin``. One test snapshot's AUC moves by about 0.02 from luck,
    so comparing two point estimates promoted or kept models on noise.

    With ``promote=False`` the gate still runs and its verdict is recorded, but the champion stays.
    With a ``fingerprint`` that an earlier version already carries, ``version`` is a duplicate:
    it is tagged as such and neither aliased nor promoted. The fingerprint tags are set last.
    """
    client = MlflowClient()
    name = model_name(task)
    for k, v in (tags or {}).items():
        client.set_model_version_tag(name, version, k, str(v))
    floor = settings.models.floors.get(task, 0.5 if measure == "auc" else 0.0)
    margin = settings.models.margin
    label = measure.upper() if measure == "auc" else measure.capitalize()
    champ = current_champion(client, name)
    if fingerprint is not None:
        earlier = [
            v.version for v in versions_with_fingerprint(client, name, fingerprint) if int(v.version) < int(version)
        ]
        original = pick_version(earlier, str(champ.version) if champ is not None else None)
        if original is not None:
            decision = duplicate_decision(
                task, version, challenger_auc, original, champ, floor, margin, promote, measure
            )
            client.set_model_version_tag(name, version, "gate.decision", decision["reasons"][0])
            _tag_fingerprint(client, name, version, fingerprint)
            log.info("%s v%s: %s", name, version, decision["reasons"][0])
            return decision
    client.set_registered_model_alias(name, CHALLENGER, version)
    champion_auc: float | None = None
    diff: dict[str, float] | None = None
    note = ""
    if champ is not None:
        try:
            scores = np.asarray(mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}").predict(x_test), dtype=float)
            champion_auc = measured(measure, y_test, scores)
            if challenger_scores is not None:
                diff = paired_measure_difference(settings, measure, y_test, challenger_scores, scores, groups)
        except Exception as exc:
            note = f"champion v{champ.version} could not score the test set: {exc}"
            log.warning("%s", note)
    reasons = []
    if challenger_auc < floor:
        reasons.append(f"test {label} {challenger_auc:.4f} below the floor {floor:.4f}")
    if diff is not None and diff["low"] < -margin:
        reasons.append(
            f"{label} difference to champion {diff['estimate']:+.4f} (95% interval [{diff['low']:+.4f}, "
            f"{diff['high']:+.4f}]): its lower bound is below -{margin}"
        )
    elif diff is None and champion_auc is not None and challenger_auc < champion_auc - margin:
        reasons.append(
            f"test {label} {challenger_auc:.4f} worse than champion {champion_auc:.4f} beyond margin {margin}"
        )
    passed = not reasons
    promoted = passed and promote
    if passed and not promote:
        note = "; ".join(filter(None, [note, "promotion disabled for this run: the champion stays"]))
    decision = {
        "task": task,
        "model": name,
        "challenger_version": version,
        f"challenger_{measure}": challenger_auc,
        "champion_version": champ.version if champ is not None else None,
        f"champion_{measure}": champion_auc,
        f"{measure}_diff": diff,
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
        f"gate.challenger_{measure}": f"{challenger_auc:.6f}",
        f"gate.champion_{measure}": "" if champion_auc is None else f"{champion_auc:.6f}",
        f"gate.{measure}_diff_low": "" if diff is None else f"{diff['low']:.6f}",
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


def measured(measure: str, y: np.ndarray, scores: np.ndarray) -> float | None:
    """A task's test figure of ``scores``: AUC, or a value task's normalised Gini."""
    if measure == "auc":
        return safe_auc(y, scores)
    from propensity.models.clv import normalized_gini

    return normalized_gini(y, scores)


def paired_measure_difference(
    settings: Settings,
    measure: str,
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    groups: np.ndarray | None,
) -> dict[str, float]:
    """(challenger - champion) ``measure`` with its paired 95% bootstrap interval, ``{estimate, low, high}``."""
    m = settings.models
    if measure == "auc":
        from propensity.models.intervals import paired_difference

        return paired_difference("auc", y, challenger, champion, groups, n_boot=m.bootstrap, seed=m.seed).to_dict()
    from propensity.models.clv import paired_gini_difference

    return paired_gini_difference(y, challenger, champion, groups, n_boot=m.bootstrap, seed=m.seed)


def duplicate_decision(
    task: str,
    version: str,
    challenger_auc: float,
    original: str,
    champ: Any | None,
    floor: float,
    margin: float,
    promote: bool,
    measure: str = "auc",
) -> dict[str, Any]:
    """The gate's record for a version that repeats ``original``: same keys as a verdict (named
    by the task's ``measure``), never promoted."""
    return {
        "task": task,
        "model": model_name(task),
        "challenger_version": version,
        f"challenger_{measure}": challenger_auc,
        "champion_version": champ.version if champ is not None else None,
        f"champion_{measure}": None,
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


# champion history --------------------------------------------------------------------


def parse_history(text: str | None) -> list[str]:
    """The champion history stored in :data:`HISTORY_TAG`; [] when missing or unreadable."""
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def reconcile(history: list[str], champion: str | None, existing: Iterable[str] | None = None) -> list[str]:
    """``history`` made to end at ``champion``, the alias being the truth (a crash between moving
    the alias and writing the history, or a hand edit in the UI): cut back to it when it is in
    the history, appended when not. Versions that no longer exist are dropped when ``existing`` is given."""
    alive = None if existing is None else set(existing)
    kept = [v for v in history if alive is None or v in alive]
    if champion is None:
        return kept
    if champion in kept:
        return kept[: len(kept) - kept[::-1].index(champion)]
    return [*kept, champion]


def promoted(history: list[str], version: str) -> tuple[list[str], list[str]]:
    """The history after ``version`` becomes champion, and the versions it leaves behind.

    A version already in the history is a return to it: everything after it is left behind
    (rolled back), so no later rollback can reinstate those. A new version is pushed.
    """
    if version in history:
        cut = history.index(version) + 1
        return history[:cut], history[cut:]
    return [*history, version][-HISTORY_LIMIT:], []


def read_history(client: MlflowClient, name: str) -> list[str]:
    return parse_history(client.get_registered_model(name).tags.get(HISTORY_TAG))


def write_history(client: MlflowClient, name: str, history: list[str]) -> None:
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[-HISTORY_LIMIT:]))


def scalar_gate(
    client: MlflowClient,
    name: str,
    version: str,
    metric: str,
    value: float,
    champion: Any | None,
    champion_value: float | None,
    margin: float,
    promote: bool,
    digits: int = 4,
) -> dict[str, Any]:
    """The gate of a model judged by one test figure (uplift's Qini, the recommender's recall):
    ``champion`` unless the champion's ``metric`` on the same test (``champion_value``; None for
    a first version) beats ``value`` by more than ``margin``. Tags the decision on the version."""
    passed = champion_value is None or value >= champion_value - margin
    promoted = passed and promote
    if promoted:
        set_champion(client, name, version, str(champion.version) if champion is not None else None)
    reason = (
        "first version"
        if champion_value is None or champion is None
        else f"test {metric} {value:.{digits}f} vs champion v{champion.version} {champion_value:.{digits}f} "
        f"(margin {margin})"
    )
    client.set_model_version_tag(name, version, "gate.decision", ("passed: " if passed else "refused: ") + reason)
    return {"model": name, "version": version, "passed": passed, "promoted": promoted, "reason": reason}


def champion_python_model(settings: Settings, name: str) -> Any | None:
    """The Python object behind ``name``'s champion pyfunc (None when there is no champion)."""
    from propensity.models.tracking import configure

    configure(settings)
    try:
        loaded = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    except MlflowException:
        return None
    return loaded.unwrap_python_model()


def set_champion(client: MlflowClient, name: str, version: str, previous: str | None) -> None:
    """Make ``version`` the champion and record it in the history; versions a return to an
    earlier champion leaves behind are tagged rolled back, and ``version`` itself no longer is."""
    if previous is not None and previous != version:
        client.set_model_version_tag(name, version, "previous_champion", previous)
    history, left = promoted(reconcile(read_history(client, name), previous), version)
    client.set_registered_model_alias(name, CHAMPION, version)
    write_history(client, name, history)
    for v in left:
        client.set_model_version_tag(name, v, ROLLED_BACK_TAG, "true")
    if ROLLED_BACK_TAG in client.get_model_version(name, version).tags:
        client.delete_model_version_tag(name, version, ROLLED_BACK_TAG)


# human overrides -----------------------------------------------------------------------


def known_versions(client: MlflowClient, name: str) -> list[str]:
    """Every registered version of ``name``, ascending; [] for a model that does not exist."""
    quoted = name.replace("'", "\\'")
    return sorted({str(v.version) for v in client.search_model_versions(f"name = '{quoted}'")}, key=int)


def unknown_version(name: str, version: str, known: list[str]) -> RequestError:
    return RequestError(f"{name} has no version {version}; known versions: {', '.join(known) or 'none'}")


def gate_refusal(name: str, version: str, tags: Mapping[str, str]) -> str | None:
    """Why ``version`` may not be promoted without ``--force`` (its gate decision), or None."""
    decision = tags.get("gate.decision")
    if decision in PASSING:
        return None
    if decision is None:
        return f"{name} v{version} was never gated (no gate decision recorded; its training may have been killed)"
    reasons = tags.get("gate.reasons")
    return f"{name} v{version} did not pass the gate (gate decision: {decision}" + (f": {reasons})" if reasons else ")")


def promote(settings: Settings, task: str, version: str, force: bool = False) -> str:
    """Human override: make ``version`` the champion (recorded in the champion history).

    A version the gate rejected, or never gated (its training was killed), is refused unless
    ``force``; a forced promotion is tagged as such and the gate's verdict stays as it was.
    """
    from propensity.models.tracking import configure

    configure(settings)
    client = MlflowClient()
    name = model_name(task)
    version = str(version)
    known = known_versions(client, name)
    if version not in known:
        raise unknown_version(name, version, known)
    champ = current_champion(client, name)
    if champ is not None and str(champ.version) == version:
        return f"{name}: v{version} is already the champion"
    refusal = gate_refusal(name, version, client.get_model_version(name, version).tags)
    if refusal is not None and not force:
        raise RequestError(f"{refusal}; use --force to promote it anyway")
    set_champion(client, name, version, previous=champ.version if champ is not None else None)
    client.set_model_version_tag(name, version, BY_HAND_TAG, "true")
    note = ""
    if refusal is not None:
        client.set_model_version_tag(name, version, FORCED_TAG, "true")
        log.warning("forced: %s", refusal)
        note = f"; forced past the gate ({refusal})"
    was = f" (was v{champ.version})" if champ is not None else ""
    return f"{name}: champion -> v{version}{was}{note}"


def rollback(settings: Settings, task: str) -> str:
    """Point ``champion`` back at the champion before it in the history, and pop the history.

    The version rolled back is tagged :data:`ROLLED_BACK_TAG`; it is out of the history, so
    a later rollback cannot bring it back (only an explicit ``promote`` can).
    """
    from propensity.models.tracking import configure

    configure(settings)
    client = MlflowClient()
    name = model_name(task)
    champ = current_champion(client, name)
    if champ is None:
        raise RequestError(f"{name} has no champion to roll back")
    current = str(champ.version)
    history = reconcile(read_history(client, name), current, known_versions(client, name))
    if len(history) < 2:
        raise RequestError(
            f"{name} v{current} is the first champion on record: there is no earlier champion to roll back to"
        )
    target = history[-2]
    client.set_registered_model_alias(name, CHAMPION, target)
    write_history(client, name, history[:-1])
    client.set_model_version_tag(name, current, ROLLED_BACK_TAG, "true")
    return f"{name}: champion v{current} -> v{target}"
