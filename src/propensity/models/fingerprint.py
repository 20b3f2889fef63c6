"""Fingerprints of a training run: what the model is a function of, digested.

A LightGBM model here is fully determined by its training, validation and test frames and
by the parameters around them (model configuration, task definition, snapshot plan,
feature list, training code and library versions). Two runs with equal fingerprints fit
the same model, so the second one has nothing to register (see :mod:`propensity.models.train`).

Digests are built to be stable across processes and machines: per-row hashes from
:func:`pandas.util.hash_pandas_object` (a fixed hash key, no ``PYTHONHASHSEED``), combined
as a sorted multiset (row order of a polars join is not part of the data), and canonical
JSON for the parameters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from propensity.features.training import WEIGHT

#: Version tags (and run tags) carrying the fingerprint. ``data_digest`` keeps the name
#: registered versions had before; it now digests every model input column and the label.
DATA_DIGEST_TAG = "data_digest"
PARAMS_DIGEST_TAG = "params_digest"

#: Columns that identify a row (not model inputs, but part of what "the same data" means)
ROW_KEYS = ("customer_id", "snapshot")
#: Columns besides the features that change the fit or what a run reports: the label, the
#: sample weight of a capped training set, and the lifecycle stage the test AUC is broken down by.
REPORTED = ("label", WEIGHT, "lifecycle_stage")
#: ModelConfig fields that steer the registry gate or tracking, not the fitted model.
NOT_MODEL_FIELDS = frozenset({"margin", "floors", "experiment"})
#: Source files (in this package) that turn frames into a model and its evaluation.
MODEL_SOURCES = ("train.py", "model.py", "metrics.py")

_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant: column order changes the row hash


@dataclass(frozen=True)
class Fingerprint:
    """Digest of a run's data and of its model-determining parameters."""

    data_digest: str
    params_digest: str

    def tags(self) -> dict[str, str]:
        """The version/run tags recording this fingerprint."""
        return {DATA_DIGEST_TAG: self.data_digest, PARAMS_DIGEST_TAG: self.params_digest}

    def matches(self, tags: Mapping[str, str]) -> bool:
        """True when ``tags`` (a model version's) record exactly this fingerprint."""
        return all(tags.get(k) == v for k, v in self.tags().items())


def canonical_column(col: pd.Series, categorical: bool) -> pd.Series:
    """One representation per value, whatever dtype a run happened to produce: categories and
    other non-numeric columns as objects (missing: None; pandas hashes non-strings by their
    ``str``), numbers and booleans as float64 (as :func:`~propensity.models.model.model_input`)."""
    if categorical or not (pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)):
        return col.astype(object).where(col.notna(), None)
    return col.astype("float64")


def row_hashes(df: pd.DataFrame, columns: Iterable[str], categorical: frozenset[str]) -> np.ndarray:
    """A 64-bit hash per row over ``columns`` (in order), column by column to bound memory."""
    h = np.zeros(len(df), dtype=np.uint64)
    for c in columns:
        col = pd.util.hash_pandas_object(canonical_column(df[c], c in categorical), index=False).to_numpy()
        h = h * _MIX + col  # uint64 arithmetic wraps, which is what a hash combine wants
    return h


def frame_digest(df: pd.DataFrame, features: list[str], categorical: frozenset[str]) -> str:
    """Digest of a frame's row keys, features, label and reported columns, ignoring row order."""
    columns = [c for c in ROW_KEYS if c in df.columns] + list(features) + [c for c in REPORTED if c in df.columns]
    missing = [c for c in features if c not in df.columns]
    if missing:
        raise ValueError(f"cannot fingerprint a frame without feature column(s): {', '.join(missing)}")
    digest = hashlib.sha256(json.dumps({"columns": columns, "rows": len(df)}).encode())
    digest.update(np.sort(row_hashes(df, columns, categorical)).tobytes())
    return digest.hexdigest()


def data_digest(frames: Mapping[str, pd.DataFrame], features: list[str], categorical: Iterable[str]) -> str:
    """Digest of every split (``train``/``valid``/``test``): a row moving between splits changes it."""
    cats = frozenset(categorical)
    parts = {name: frame_digest(df, features, cats) for name, df in sorted(frames.items())}
    return _sha(parts)


def params_digest(parameters: Mapping[str, Any]) -> str:
    """Digest of JSON-serialisable parameters, independent of key order."""
    return _sha(parameters)


def model_parameters(
    models: Mapping[str, Any],
    task: str,
    task_config: Mapping[str, Any],
    plan: Mapping[str, Any],
    features: list[str],
    categorical: list[str],
) -> dict[str, Any]:
    """Everything besides the data that decides the fitted model, as plain JSON values.

    ``models`` is the ModelConfig dump; its gate and tracking fields are dropped, so
    changing the promotion margin does not make an identical model look new.
    """
    return {
        "models": {k: v for k, v in models.items() if k not in NOT_MODEL_FIELDS},
        "task": task,
        "task_config": dict(task_config),
        "plan": dict(plan),
        "features": list(features),
        "categorical": list(categorical),
        "code": code_fingerprint(),
    }


@cache
def code_fingerprint() -> dict[str, str]:
    """Package and library versions plus a digest of the training source.

    The source digest (rather than the git commit) catches uncommitted edits to the
    trainer and ignores commits that do not touch it.
    """
    import lightgbm
    import sklearn

    from propensity import __version__

    here = Path(__file__).parent
    source = hashlib.sha256()
    for name in MODEL_SOURCES:
        source.update(name.encode() + b"\0" + (here / name).read_bytes())
    return {
        "propensity": __version__,
        "source": source.hexdigest()[:16],
        "lightgbm": lightgbm.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scikit-learn": sklearn.__version__,
    }


def _sha(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]
