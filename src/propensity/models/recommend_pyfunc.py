"""The MLflow pyfunc that serves recommendations: customers' histories in, product lists out.

Input: one row per customer with ``customer_id``, ``bought`` and ``viewed`` (lists of product
ids: what they bought before the day, and viewed in the configured days before it). Output:
``customer_id`` and ``product_1`` .. ``product_k`` (k from the params, default 10), best
first, never a product in ``bought``. Histories are inputs, not artifacts, so the served
model recommends from what a customer did up to today, with the similarities of its training.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
import polars as pl

from propensity.models.recommend import History, ItemItem


def save_model(model: ItemItem, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recommender.pkl").write_bytes(pickle.dumps(model))
    return {"recommender": str(folder / "recommender.pkl")}


def history_of(frame: pd.DataFrame) -> History:
    """A :class:`History` from the pyfunc's input frame (lists of product ids per customer)."""

    def pairs(column: str) -> pl.DataFrame:
        df = pl.from_pandas(frame[["customer_id", column]].rename(columns={column: "product_id"}))
        return (
            df.explode("product_id")
            .drop_nulls()
            .select(pl.col("customer_id").cast(pl.String), pl.col("product_id").cast(pl.String))
        )

    empty = pl.Series("product_id", [], dtype=pl.String)
    return History(bought=pairs("bought"), viewed=pairs("viewed"), products=empty)


def product_lists(model: ItemItem, frame: pd.DataFrame, k: int) -> pd.DataFrame:
    """``product_1..k`` per row of ``frame`` (columns customer_id, bought, viewed)."""
    ids = pl.Series("customer_id", frame["customer_id"].astype(str).to_numpy(), dtype=pl.String)
    inter = history_of(frame).matrices(ids, model.products)
    top = model.recommend(inter.bought, inter.viewed, k)
    out = pd.DataFrame(model.products[top], columns=[f"product_{i + 1}" for i in range(top.shape[1])])
    out.insert(0, "customer_id", inter.customers)
    return out


class RecommendPyfunc(mlflow.pyfunc.PythonModel):
    """Top-k products per customer from their purchase and view history."""

    def load_context(self, context: Any) -> None:
        self.model: ItemItem = pickle.loads(Path(context.artifacts["recommender"]).read_bytes())

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        k = int((params or {}).get("k", 10))
        if model_input.empty:
            return pd.DataFrame(columns=["customer_id", *(f"product_{i + 1}" for i in range(k))])
        return product_lists(self.model, model_input, min(k, len(self.model.products)))


def signature(k: int = 10) -> Any:
    """Inputs (customer_id, bought and viewed lists), outputs (``product_1..k``) and the ``k``
    param (how many products per customer; default 10)."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = [ColSpec(DataType.string, "customer_id")]
    inputs += [ColSpec(Array(DataType.string), c, required=False) for c in ("bought", "viewed")]
    products = [ColSpec(DataType.string, f"product_{i + 1}") for i in range(k)]
    outputs = [ColSpec(DataType.string, "customer_id"), *products]
    return ModelSignature(Schema(inputs), Schema(outputs), ParamSchema([ParamSpec("k", DataType.long, k)]))


def input_frame(hist: History, customers: np.ndarray) -> pd.DataFrame:
    """The pyfunc's input for ``customers`` from a :class:`History` (empty lists for the cold)."""
    ids = pl.Series("customer_id", customers, dtype=pl.String).to_frame()

    def lists(df: pl.DataFrame, name: str) -> pl.DataFrame:
        return df.group_by("customer_id").agg(pl.col("product_id").sort().alias(name))

    out = ids.join(lists(hist.bought, "bought"), on="customer_id", how="left", maintain_order="left")
    out = out.join(lists(hist.viewed, "viewed"), on="customer_id", how="left", maintain_order="left")
    out = out.with_columns([pl.col(c).fill_null(pl.lit([], dtype=pl.List(pl.String))) for c in ("bought", "viewed")])
    return out.to_pandas()
