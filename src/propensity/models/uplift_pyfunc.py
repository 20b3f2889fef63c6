"""The MLflow pyfunc that serves an uplift model: a frame of features in, predicted effects out.

Its own module, like :mod:`propensity.models.pyfunc`: subclassing ``PythonModel`` imports
mlflow, which only training and model loading need.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from propensity.models.uplift import UpliftModel, feature_matrix


def save_model(model: UpliftModel, features: list[str], folder: Path) -> dict[str, str]:
    """Write the fitted learner and its feature list; returns the pyfunc's artifacts."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "uplift.pkl").write_bytes(pickle.dumps(model))
    (folder / "features.json").write_text(json.dumps(features))
    return {"uplift": str(folder / "uplift.pkl"), "features": str(folder / "features.json")}


class UpliftPyfunc(mlflow.pyfunc.PythonModel):
    """Predicted treatment effect (change in purchase probability) per row of features."""

    def load_context(self, context: Any) -> None:
        self.model: UpliftModel = pickle.loads(Path(context.artifacts["uplift"]).read_bytes())
        self.features: list[str] = json.loads(Path(context.artifacts["features"]).read_text())

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return self.model.effect(feature_matrix(model_input, self.features))
