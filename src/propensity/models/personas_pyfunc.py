"""The MLflow pyfunc that serves personas: a frame of a snapshot's features in, persona names out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from propensity.models.personas import Personas


class PersonasPyfunc(mlflow.pyfunc.PythonModel):
    """Each row's persona: the name of its nearest centroid."""

    def load_context(self, context: Any) -> None:
        self.personas = Personas.from_dict(json.loads(Path(context.artifacts["personas"]).read_text()))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return self.personas.assign(model_input)
