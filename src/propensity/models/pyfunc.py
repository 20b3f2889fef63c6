"""The MLflow pyfunc that serves a :class:`~propensity.models.model.PropensityModel`.

It returns calibrated probabilities (MLflow's LightGBM flavour would return class labels
for sklearn-API models). Its own module, because subclassing ``PythonModel`` imports
mlflow, which only training and model loading need.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from propensity.models.model import PropensityModel


class PropensityPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc returning calibrated probabilities for a frame of raw features (a
    customer-value model's expected revenue: :class:`~propensity.models.model.ValueModel`)."""

    def load_context(self, context: Any) -> None:
        self.model = PropensityModel.load(context.artifacts)

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return self.model.serve(model_input)
