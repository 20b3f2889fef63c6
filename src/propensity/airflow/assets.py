"""The Airflow Assets of the chain, from one table.

Every asset is named ``<kind>`` or ``<kind>.<key>`` (``raw.orders``, ``labels.churn``,
``features``) with the *logical* URI ``propensity://<zone>/<key>``: Airflow identifies assets
by name and URI, so tying them to the lake location (``file:///...`` on a laptop, ``s3://...``
in production) would make the same table a different asset per deployment. The physical
location and row counts go into each event's ``extra``; the day or snapshot an event is about
is its *partition key* (see :mod:`propensity.airflow.partitions`).

Airflow normalises an empty URI path to ``/``, so the single-asset kinds are written with it
(``propensity://features/``): that is how Airflow reports them back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from propensity import zones
from propensity.contracts import contract

if TYPE_CHECKING:  # pragma: no cover - typing only
    from airflow.sdk import Asset, AssetAlias

SCHEME = "propensity"
_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class AssetKind:
    """One kind of asset: its group (the lake zone, or ``monitoring``) and what its key is."""

    group: str
    path: str  # URI path under propensity://<group>/
    keyed_by: str | None  # "table", "task" or None (one asset of this kind)


#: The asset table: every kind the DAGs produce or consume.
KINDS: dict[str, AssetKind] = {
    zones.RAW: AssetKind(zones.RAW, "", "table"),
    zones.CLEAN: AssetKind(zones.CLEAN, "", "table"),
    zones.FEATURES: AssetKind(zones.FEATURES, "", None),
    zones.PROFILES: AssetKind(zones.PROFILES, "", None),
    zones.LABELS: AssetKind(zones.LABELS, "", "task"),
    zones.SCORES: AssetKind(zones.SCORES, "", "task"),
    "models": AssetKind("models", "", "task"),
    # the champions to score a snapshot with are settled (train_models ran for it): scoring waits for it
    "champions": AssetKind("models", "champions", None),
    zones.AUDIENCES: AssetKind(zones.AUDIENCES, "", None),
    zones.DRIFT: AssetKind("monitoring", "drift", None),
}


def _key(kind: AssetKind, key: str | None) -> str:
    if kind.keyed_by is None:
        if key is not None:
            raise ValueError(f"assets of group {kind.group!r} have no key, got {key!r}")
        return ""
    if key is None:
        raise ValueError(f"assets of group {kind.group!r} are keyed by {kind.keyed_by}")
    if kind.keyed_by == "table":
        return contract(key).name
    if not _KEY.match(key):
        raise ValueError(f"invalid task name {key!r}: use lower-case letters, digits, '_' and '-'")
    return key


def asset_name(kind: str, key: str | None = None) -> str:
    """``raw.orders``, ``labels.churn``, ``features``, ``drift``."""
    k = _key(KINDS[kind], key)
    return f"{kind}.{k}" if k else kind


def asset_uri(kind: str, key: str | None = None) -> str:
    """``propensity://raw/orders``, ``propensity://features/``, ``propensity://monitoring/drift``."""
    spec = KINDS[kind]
    k = _key(spec, key)
    return f"{SCHEME}://{spec.group}/{k or spec.path}"


def asset(kind: str, key: str | None = None) -> Asset:
    """The Airflow ``Asset`` (imports Airflow lazily, so this module loads without it)."""
    from airflow.sdk import Asset

    return Asset(name=asset_name(kind, key), uri=asset_uri(kind, key), group=KINDS[kind].group)


def assets(kind: str, keys: list[str]) -> list[Asset]:
    return [asset(kind, k) for k in keys]


def alias(kind: str) -> AssetAlias:
    """An alias through which a mapped task emits the event of its own key's asset (a mapped task
    has one static outlet list; the alias lets each instance pick its asset at run time)."""
    from airflow.sdk import AssetAlias

    return AssetAlias(name=kind, group=KINDS[kind].group)
