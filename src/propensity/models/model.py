"""The served model: LightGBM booster + probability calibrator + categorical encoding.

Kept free of pickles: the booster is LightGBM's text format, the calibrator and the
category mapping are JSON, so a model logged today loads with any future Python.
:class:`~propensity.models.pyfunc.PropensityPyfunc` is the MLflow pyfunc that wraps them
(in its own module, so that reading a model's inputs imports neither mlflow nor lightgbm).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import polars as pl

if TYPE_CHECKING:  # lightgbm (and sklearn under it) is a 2-3 s import, paid only where a model is used
    import lightgbm as lgb


def model_input(df: pd.DataFrame, features: list[str], categorical: set[str] | None = None) -> pd.DataFrame:
    """The frame a model consumes: its features, numbers as float64, categories as strings (or None).

    One canonical input type keeps the MLflow signature stable between training and scoring.
    ``categorical`` defaults to the feature catalogue's categorical features.
    """
    from propensity.features.catalogue import categorical_features

    cats = set(categorical_features()) if categorical is None else categorical
    missing = [c for c in features if c not in df.columns]
    if missing:
        raise ValueError(f"model input is missing feature column(s): {', '.join(missing)}")
    out = {}
    for c in features:
        col = df[c]
        if c in cats:
            out[c] = col.astype(object).where(col.notna(), None)
        else:
            out[c] = pd.to_numeric(col, errors="raise").astype("float64")
    return pd.DataFrame(out, index=df.index)


@dataclass
class CategoryEncoder:
    """String categories -> integer codes (unknown or missing -> NaN), fitted on training data.

    LightGBM consumes the codes as native categoricals; pandas ``category`` dtypes are
    avoided because they break MLflow signatures.
    """

    mapping: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def fit(cls, df: pd.DataFrame, columns: list[str]) -> CategoryEncoder:
        return cls({c: sorted(df[c].dropna().astype(str).unique().tolist()) for c in columns})

    def transform(self, df: pd.DataFrame) -> pd.DataFrame:
        out = df.copy()
        for c, values in self.mapping.items():
            col = out[c]
            as_text = col.where(col.isna(), col.astype(str))
            codes = pd.Categorical(as_text, categories=values).codes.astype("float64")  # vectorised: 1M rows in ms
            codes[codes < 0] = np.nan
            out[c] = codes
        return out

    def to_json(self) -> str:
        return json.dumps(self.mapping)

    @classmethod
    def from_json(cls, text: str) -> CategoryEncoder:
        return cls(json.loads(text))


@dataclass
class Calibrator:
    """Monotone map from raw booster scores to probabilities: isotonic steps or a Platt sigmoid."""

    kind: str
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    a: float = 1.0
    b: float = 0.0

    @classmethod
    def fit(cls, raw: np.ndarray, y: np.ndarray, kind: str = "auto") -> Calibrator:
        if kind == "auto":
            kind = "isotonic" if y.sum() >= 200 and (len(y) - y.sum()) >= 200 else "platt"
        if kind == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6).fit(raw, y)
            return cls("isotonic", iso.X_thresholds_.tolist(), iso.y_thresholds_.tolist())
        from sklearn.linear_model import LogisticRegression

        logit = np.log(np.clip(raw, 1e-7, 1 - 1e-7) / (1 - np.clip(raw, 1e-7, 1 - 1e-7)))
        lr = LogisticRegression(C=1e6).fit(logit.reshape(-1, 1), y)
        return cls("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]))

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        if self.kind == "identity":  # a value model's prediction (ValueModel)
            return np.asarray(raw, dtype=float)
        if self.kind == "isotonic":
            return np.interp(raw, self.x, self.y)
        logit = np.log(np.clip(raw, 1e-7, 1 - 1e-7) / (1 - np.clip(raw, 1e-7, 1 - 1e-7)))
        return 1.0 / (1.0 + np.exp(-(self.a * logit + self.b)))

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Calibrator:
        return cls(**json.loads(text))


@dataclass
class PropensityModel:
    booster: lgb.Booster
    calibrator: Calibrator
    encoder: CategoryEncoder
    features: list[str]

    def matrix(self, df: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in self.features if c not in df.columns]
        if missing:
            raise ValueError(f"model input is missing feature column(s): {', '.join(missing)}")
        x = self.encoder.transform(df[self.features])
        return x.astype("float64")

    def matrix_from_polars(self, frame: pl.DataFrame) -> np.ndarray:
        """The booster's float64 matrix straight from polars: the batch-scoring path.

        Same values as :meth:`matrix` (numbers as float64, nulls as NaN; categories as the
        encoder's codes, unknown or missing as NaN) without the single-threaded pandas
        round trip, which took a third of the scoring time.
        """
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise ValueError(f"model input is missing feature column(s): {', '.join(missing)}")
        mapping = self.encoder.mapping
        exprs = [
            pl.col(c)
            .cast(pl.String)
            .replace_strict(
                mapping[c], [float(i) for i in range(len(mapping[c]))], default=None, return_dtype=pl.Float64
            )
            if c in mapping
            else pl.col(c).cast(pl.Float64)
            for c in self.features
        ]
        return frame.select(exprs).to_numpy(order="c")

    def predict_raw(self, df: pd.DataFrame) -> np.ndarray:
        return self.booster.predict(self.matrix(df), num_threads=0)

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        return self.calibrator(self.predict_raw(df))

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        """The served prediction from the booster's matrix (:meth:`matrix_from_polars`): here a
        calibrated probability; a :class:`ValueModel`'s expected revenue."""
        return self.calibrator(self.booster.predict(x, num_threads=0))

    def serve(self, df: pd.DataFrame) -> np.ndarray:
        """What the pyfunc returns for a frame of raw features (:meth:`predict_matrix`)."""
        return self.predict_matrix(self.matrix(df).to_numpy())

    def contributions(self, df: pd.DataFrame) -> np.ndarray:
        """TreeSHAP contributions (n, features + 1 bias), in raw-score units; expensive."""
        return self.booster.predict(self.matrix(df), pred_contrib=True)

    def save(self, folder: Path) -> dict[str, str]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = {
            "booster": folder / "booster.txt",
            "calibrator": folder / "calibrator.json",
            "encoder": folder / "encoder.json",
            "features": folder / "features.json",
        }
        self.booster.save_model(str(paths["booster"]))
        paths["calibrator"].write_text(self.calibrator.to_json())
        paths["encoder"].write_text(self.encoder.to_json())
        paths["features"].write_text(json.dumps(self.features))
        return {k: str(v) for k, v in paths.items()}

    @classmethod
    def load(cls, artifacts: dict[str, str]) -> PropensityModel:
        import lightgbm as lgb

        if "value" in artifacts:  # a customer-value model (propensity-clv)
            return ValueModel.load(artifacts)
        return cls(
            booster=lgb.Booster(model_file=artifacts["booster"]),
            calibrator=Calibrator.from_json(Path(artifacts["calibrator"]).read_text()),
            encoder=CategoryEncoder.from_json(Path(artifacts["encoder"]).read_text()),
            features=json.loads(Path(artifacts["features"]).read_text()),
        )


@dataclass
class ValueModel(PropensityModel):
    """A customer-value model (a task with ``label: revenue``): the expected net revenue over
    the task's horizon, from :mod:`propensity.models.clv`'s winning formulation.

    ``booster`` is the Tweedie booster, or the hurdle's P(buy) booster with ``spend`` its
    E[log revenue | buy] booster (mapped back with the lognormal correction ``log_var / 2``).
    Reason codes (TreeSHAP of ``booster``) then explain P(buy), the part that ranks most.
    The calibrator is the identity: a revenue is not a probability to calibrate."""

    spend: lgb.Booster | None = None
    log_var: float = 0.0

    @property
    def formulation(self) -> str:
        return "tweedie" if self.spend is None else "hurdle"

    def predict_matrix(self, x: np.ndarray) -> np.ndarray:
        first = np.asarray(self.booster.predict(x, num_threads=0), dtype=float)
        if self.spend is None:
            return first
        return first * np.exp(self.spend.predict(x, num_threads=0) + self.log_var / 2)

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """The expected revenue (the name is the served-prediction interface every task shares)."""
        return self.serve(df)

    def save(self, folder: Path) -> dict[str, str]:
        paths = super().save(folder)
        value = folder / "value.json"
        value.write_text(json.dumps({"formulation": self.formulation, "log_var": self.log_var}))
        paths["value"] = str(value)
        if self.spend is not None:
            self.spend.save_model(str(folder / "spend.txt"))
            paths["spend"] = str(folder / "spend.txt")
        return paths

    @classmethod
    def load(cls, artifacts: dict[str, str]) -> ValueModel:
        import lightgbm as lgb

        meta = json.loads(Path(artifacts["value"]).read_text())
        return cls(
            booster=lgb.Booster(model_file=artifacts["booster"]),
            calibrator=Calibrator("identity"),
            encoder=CategoryEncoder.from_json(Path(artifacts["encoder"]).read_text()),
            features=json.loads(Path(artifacts["features"]).read_text()),
            spend=lgb.Booster(model_file=artifacts["spend"]) if "spend" in artifacts else None,
            log_var=float(meta["log_var"]),
        )


def __getattr__(name: str) -> Any:
    """:class:`~propensity.models.pyfunc.PropensityPyfunc` under its former address: models
    logged before it moved unpickle it from here (cloudpickle records classes by reference)."""
    if name == "PropensityPyfunc":
        from propensity.models.pyfunc import PropensityPyfunc

        return PropensityPyfunc
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
