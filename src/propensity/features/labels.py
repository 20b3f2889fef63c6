"""Task populations (who is eligible at T) and labels (what happens in [T, T+H)).

Populations look only at data before ``T`` (the same :class:`ShopData` cut the features
use); labels look only at ``[T, T+H)``. Both are driven by the task definitions in
configuration (:class:`propensity.config.TaskConfig`), so a YAML override changes them
everywhere at once.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from propensity.config import TaskConfig
from propensity.features.inputs import ShopData

KEY = "customer_id"


def _ids_since(df: pl.DataFrame, time_col: str, t: datetime, days: int, extra: pl.Expr | None = None) -> pl.DataFrame:
    since = pl.lit(t - timedelta(days=days)).dt.cast_time_unit("us")
    cond = (pl.col(time_col) >= since) & pl.col(KEY).is_not_null()
    if extra is not None:
        cond = cond & extra
    return df.filter(cond).select(KEY).unique()


def population(past: ShopData, t: datetime, task: TaskConfig) -> pl.DataFrame:
    """Eligible customers at ``t`` (``past`` must be ``as_of(t)``), sorted by id."""
    pop = past.customers.select(KEY)
    bought = pl.col("status") != "cancelled"
    if task.session_days:
        pop = pop.join(_ids_since(past.events, "event_time", t, task.session_days), on=KEY, how="semi")
    if task.purchase_days:
        pop = pop.join(_ids_since(past.orders, "order_time", t, task.purchase_days, bought), on=KEY, how="semi")
    if task.no_purchase_days:
        pop = pop.join(_ids_since(past.orders, "order_time", t, task.no_purchase_days, bought), on=KEY, how="anti")
    if task.active_days:
        active = pl.concat(
            [
                _ids_since(past.events, "event_time", t, task.active_days),
                _ids_since(past.orders, "order_time", t, task.active_days, bought),
            ]
        ).unique()
        pop = pop.join(active, on=KEY, how="semi")
    return pop.sort(KEY)


def labels(pop: pl.DataFrame, future: ShopData, task: TaskConfig, base_currency: str = "EUR") -> pl.DataFrame:
    """The label per population member; ``future`` must be ``between(t, t + horizon)``: 0/1
    (Int8) for a propensity task, the net revenue in ``base_currency`` (Float64, 0 for no
    paid order) for a value task (:func:`revenue_labels`)."""
    if task.is_value:
        return revenue_labels(pop, future, base_currency)
    buyers = future.orders.filter(pl.col("status") != "cancelled").select(KEY).unique()
    if task.label == "purchase":
        positive = buyers
    else:
        active = pl.concat([buyers, future.events.filter(pl.col(KEY).is_not_null()).select(KEY).unique()]).unique()
        positive = pop.join(active, on=KEY, how="anti")
    return pop.with_columns(pl.col(KEY).is_in(positive[KEY].implode()).cast(pl.Int8).alias("label"))


def revenue_labels(pop: pl.DataFrame, future: ShopData, base_currency: str) -> pl.DataFrame:
    """Net revenue (gross minus discount, at the order day's FX rate) of each member's paid
    orders in the window: the same orders and amounts as the ``revenue_*`` features, so the
    label is the feature's next window."""
    from propensity.features.build import orders_in_base

    paid = orders_in_base(future, base_currency).filter(pl.col("is_paid") & pl.col(KEY).is_not_null())
    spent = paid.group_by(KEY).agg(pl.col("net").sum().alias("label"))
    return pop.join(spent, on=KEY, how="left").with_columns(pl.col("label").fill_null(0.0).cast(pl.Float64))
