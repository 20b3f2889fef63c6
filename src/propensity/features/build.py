"""Feature computation for one snapshot, in Polars.

Input is a :class:`ShopData` already cut at ``T`` (see :mod:`.inputs`); output is one row
per customer known at ``T`` with every feature of the catalogue
(``catalogue.yaml``, rendered in the README). Events are first reduced to sessions and
active days, so windowed counts are plain conditional sums rather than COUNT DISTINCTs.
Money is converted to the base currency with the FX rate of the order's day.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import polars as pl

from propensity.calendar import WINDOWS as CALENDAR_WINDOWS
from propensity.calendar import PromotionCalendar
from propensity.calendar import feature_names as calendar_names
from propensity.features.inputs import ShopData

log = logging.getLogger(__name__)

BEHAVIOUR_WINDOWS = (1, 7, 30, 90)
ORDER_WINDOWS = (30, 90, 180, 365)
CHANNELS = ("email", "sms", "push")
SESSION_COUNTS = {
    "sessions": None,
    "product_views": "n_view",
    "searches": "n_search",
    "favorites": "n_fav",
    "carts": "n_cart",
    "checkouts": "n_checkout",
}
PROFILE_CATEGORICALS = ("country", "language", "currency", "acquisition_channel")
KEY = "customer_id"


def _since(t: datetime, days: int) -> pl.Expr:
    return pl.lit(t - timedelta(days=days)).dt.cast_time_unit("us")


def _days_between(later: pl.Expr | datetime, earlier: pl.Expr) -> pl.Expr:
    later_e = pl.lit(later).dt.cast_time_unit("us") if isinstance(later, datetime) else later
    return (later_e - earlier).dt.total_seconds() / 86_400.0


def _ratio(a: str | pl.Expr, b: str | pl.Expr) -> pl.Expr:
    ea = pl.col(a) if isinstance(a, str) else a
    eb = pl.col(b) if isinstance(b, str) else b
    return pl.when(eb > 0).then(ea / eb).otherwise(None)


def orders_in_base(d: ShopData, base_currency: str) -> pl.DataFrame:
    """Orders with ``net`` (gross - discount) converted at the rate of the order's day."""
    o = d.orders.with_columns(pl.col("order_time").dt.date().alias("__day"))
    fx = d.fx_rates.select(pl.col("date").alias("__day"), "currency", "rate").sort("__day")
    if fx.height:
        o = o.sort("__day").join_asof(fx, on="__day", by="currency", strategy="backward", check_sortedness=False)
    else:
        o = o.with_columns(pl.lit(None, pl.Float64).alias("rate"))
    missing = o.filter(pl.col("rate").is_null() & (pl.col("currency") != base_currency))
    if missing.height:
        log.warning(
            "no FX rate for %d order(s) in %s; treating their amounts as %s",
            missing.height,
            sorted(missing["currency"].unique().to_list()),
            base_currency,
        )
    rate = pl.when(pl.col("currency") == base_currency).then(1.0).otherwise(pl.col("rate").fill_null(1.0))
    return o.with_columns(
        rate.alias("rate"),
        ((pl.col("gross_amount") - pl.col("discount_amount")) * rate).alias("net"),
        (pl.col("status") != "cancelled").alias("is_order"),
        (pl.col("status") == "paid").alias("is_paid"),
    ).drop("__day")


def rfm_features(o: pl.DataFrame, t: datetime) -> pl.DataFrame:
    aggs = [
        pl.col("order_time").filter(pl.col("is_order")).max().alias("__last"),
        pl.col("order_time").filter(pl.col("is_order")).min().alias("__first"),
        pl.col("is_order").sum().alias("orders_total"),
        pl.col("net").filter(pl.col("is_paid")).sum().alias("revenue_total"),
    ]
    for w in ORDER_WINDOWS:
        inw = pl.col("order_time") >= _since(t, w)
        aggs += [
            (pl.col("is_order") & inw).sum().alias(f"orders_{w}d"),
            pl.col("net").filter(pl.col("is_paid") & inw).sum().alias(f"revenue_{w}d"),
        ]
    last_year = (pl.col("order_time") >= _since(t, 365)) & (pl.col("order_time") < _since(t, 275))
    aggs.append((pl.col("is_order") & last_year).sum().alias("orders_last_year_next_90d"))
    y = pl.col("order_time") >= _since(t, 365)
    aggs += [
        (y & (pl.col("status") == "cancelled")).sum().alias("__cancelled_365"),
        y.sum().alias("__all_365"),
        (y & (pl.col("status") == "refunded")).sum().alias("__refunded_365"),
        (y & pl.col("is_order") & (pl.col("discount_amount") > 0)).sum().alias("__disc_orders_365"),
        (pl.col("discount_amount") / pl.col("gross_amount"))
        .filter(y & pl.col("is_order") & (pl.col("gross_amount") > 0))
        .mean()
        .alias("mean_discount_rate_365d"),
        (y & pl.col("is_order") & pl.col("coupon_code").is_not_null()).sum().alias("coupon_orders_365d"),
    ]
    g = o.group_by(KEY).agg(aggs)
    gaps = (
        o.filter(pl.col("is_order"))
        .sort([KEY, "order_time"])
        .with_columns(_days_between(pl.col("order_time"), pl.col("order_time").shift(1).over(KEY)).alias("__gap"))
        .group_by(KEY)
        .agg(pl.col("__gap").mean().alias("ipi_mean_days"), pl.col("__gap").std().alias("ipi_std_days"))
    )
    g = g.join(gaps, on=KEY, how="left")
    return (
        g.with_columns(
            _days_between(t, pl.col("__last")).alias("recency_days"),
            _days_between(t, pl.col("__first")).alias("tenure_days"),
            _ratio("revenue_365d", "orders_365d").alias("aov_365d"),
            _ratio("__cancelled_365", "__all_365").alias("cancel_rate_365d"),
            _ratio("__refunded_365", "orders_365d").alias("refund_rate_365d"),
            _ratio("__disc_orders_365", "orders_365d").alias("discount_order_share_365d"),
        )
        .with_columns(
            _ratio("recency_days", "ipi_mean_days").alias("recency_over_ipi"),
        )
        .drop("__last", "__first", "__cancelled_365", "__all_365", "__refunded_365", "__disc_orders_365")
    )


def item_features(d: ShopData, o: pl.DataFrame, t: datetime) -> pl.DataFrame:
    y = o.filter(pl.col("is_order") & (pl.col("order_time") >= _since(t, 365))).select("order_id", KEY, "rate")
    it = d.order_items.join(y, on="order_id", how="inner")
    return it.group_by(KEY).agg(
        pl.col("quantity").sum().alias("__qty_365"),
        pl.col("product_id").n_unique().alias("distinct_products_365d"),
        (pl.col("unit_price") * pl.col("rate")).mean().alias("avg_item_price_bought_365d"),
    )


def sessions_of(events: pl.DataFrame) -> pl.DataFrame:
    """Events reduced to one row per session of a known customer."""
    et = pl.col("event_type")
    return (
        events.lazy()
        .filter(pl.col(KEY).is_not_null())
        .group_by("session_id")
        .agg(
            pl.col(KEY).first(),
            pl.col("event_time").min().alias("start"),
            (et == "product_view").sum().alias("n_view"),
            (et == "search").sum().alias("n_search"),
            (et == "favorite").sum().alias("n_fav"),
            (et == "add_to_cart").sum().alias("n_cart"),
            (et == "remove_from_cart").sum().alias("n_remove"),
            (et == "checkout").sum().alias("n_checkout"),
            (et == "purchase").sum().alias("n_purchase"),
            pl.col("dwell_seconds").sum().alias("dwell"),
            pl.col("device").first().alias("device"),
        )
        .collect()
    )


def behaviour_features(sessions: pl.DataFrame, t: datetime) -> pl.DataFrame:
    aggs: list[pl.Expr] = [pl.col("start").max().alias("__last_session")]
    for w in BEHAVIOUR_WINDOWS:
        inw = pl.col("start") >= _since(t, w)
        for name, col in SESSION_COUNTS.items():
            expr = inw.sum() if col is None else pl.when(inw).then(pl.col(col)).otherwise(0).sum()
            aggs.append(expr.alias(f"{name}_{w}d"))
    for w in (30, 90):
        inw = pl.col("start") >= _since(t, w)
        carted = inw & (pl.col("n_cart") > 0)
        aggs += [
            carted.sum().alias(f"__carted_{w}"),
            (carted & (pl.col("n_purchase") == 0)).sum().alias(f"__abandoned_{w}"),
        ]
    w30 = pl.col("start") >= _since(t, 30)
    aggs += [
        pl.col("dwell").filter(pl.col("start") >= _since(t, 7)).sum().alias("dwell_seconds_7d"),
        pl.col("dwell").filter(w30).sum().alias("dwell_seconds_30d"),
        pl.col("n_remove").filter(w30).sum().alias("removes_30d"),
        (w30 & (pl.col("device") == "mobile")).sum().alias("__mobile_30"),
        (w30 & (pl.col("device") == "app")).sum().alias("__app_30"),
    ]
    g = sessions.group_by(KEY).agg(aggs)
    days = sessions.select(KEY, pl.col("start").dt.date().alias("day")).unique()
    active = days.group_by(KEY).agg(
        [
            (pl.col("day") >= pl.lit((t - timedelta(days=w)).date())).sum().alias(f"active_days_{w}d")
            for w in (7, 30, 90)
        ]
    )
    g = g.join(active, on=KEY, how="left")
    return g.with_columns(
        _ratio("__abandoned_30", "__carted_30").alias("cart_abandonment_30d"),
        _ratio("__abandoned_90", "__carted_90").alias("cart_abandonment_90d"),
        _ratio("dwell_seconds_30d", "sessions_30d").alias("dwell_per_session_30d"),
        _ratio(pl.col("sessions_7d") * (30.0 / 7.0), "sessions_30d").alias("sessions_trend_7_30"),
        _ratio(pl.col("product_views_7d") * (30.0 / 7.0), "product_views_30d").alias("views_trend_7_30"),
        _days_between(t, pl.col("__last_session")).alias("days_since_last_session"),
        _ratio("__mobile_30", "sessions_30d").alias("mobile_share_30d"),
        _ratio("__app_30", "sessions_30d").alias("app_share_30d"),
    ).drop(
        "__last_session", "__carted_30", "__abandoned_30", "__carted_90", "__abandoned_90", "__mobile_30", "__app_30"
    )


def category_counts(d: ShopData, o: pl.DataFrame, t: datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(customer, category, n) interest counts from views (90 days) and purchases (365 days), and the views."""
    prod = d.products.select("product_id", "category", "list_price")
    views = (
        d.events.filter(
            pl.col(KEY).is_not_null()
            & (pl.col("event_type") == "product_view")
            & (pl.col("event_time") >= _since(t, 90))
        )
        .select(KEY, "product_id")
        .join(prod, on="product_id", how="inner")
    )
    bought = (
        d.order_items.join(
            o.filter(pl.col("is_order") & (pl.col("order_time") >= _since(t, 365))).select("order_id", KEY),
            on="order_id",
            how="inner",
        )
        .select(KEY, "product_id")
        .join(prod, on="product_id", how="inner")
    )
    both = pl.concat([views.select(KEY, "category"), bought.select(KEY, "category")])
    counts = both.group_by([KEY, "category"]).len().sort([KEY, "len", "category"], descending=[False, True, False])
    return counts, views


def category_features(counts: pl.DataFrame, views: pl.DataFrame) -> pl.DataFrame:
    per_cat = counts.with_columns((pl.col("len") / pl.col("len").sum().over(KEY)).alias("p"))
    cats = per_cat.group_by(KEY, maintain_order=True).agg(
        pl.col("p").first().alias("top_category_share"),
        pl.col("category").first().alias("top_category"),
        pl.len().alias("distinct_categories"),
        (-(pl.col("p") * pl.col("p").log())).sum().alias("category_entropy"),
    )
    price_viewed = views.group_by(KEY).agg(pl.col("list_price").mean().alias("avg_price_viewed_90d"))
    return cats.join(price_viewed, on=KEY, how="full", coalesce=True)


def experience_features(d: ShopData, o: pl.DataFrame, t: datetime) -> pl.DataFrame:
    y = _since(t, 365)
    dl = (
        d.deliveries.filter(pl.col("delivered_time").is_not_null())
        .join(o.select("order_id", KEY, "order_time"), on="order_id", how="inner")
        .filter(pl.col("order_time") >= y)
        .with_columns(
            (_days_between(pl.col("delivered_time"), pl.col("shipped_time")) - pl.col("promised_days")).alias("__delay")
        )
        .group_by(KEY)
        .agg(
            pl.col("__delay").mean().alias("delivery_delay_mean_365d"),
            (pl.col("__delay") > 0).mean().alias("late_delivery_share_365d"),
        )
    )
    rv = d.reviews.group_by(KEY).agg(
        pl.col("rating").mean().alias("rating_mean"),
        pl.col("rating").min().alias("rating_min"),
        (pl.col("rating") <= 2).sum().alias("low_ratings"),
        pl.len().alias("reviews"),
    )
    return dl.join(rv, on=KEY, how="full", coalesce=True)


def campaign_features(d: ShopData, t: datetime) -> pl.DataFrame:
    c = d.campaign_contacts
    w = pl.col("sent_time") >= _since(t, 90)
    aggs: list[pl.Expr] = [pl.col("clicked_time").max().alias("__last_click")]
    for ch in CHANNELS:
        sel = w & (pl.col("channel") == ch)
        aggs += [
            sel.sum().alias(f"contacts_{ch}_90d"),
            (sel & pl.col("opened_time").is_not_null()).sum().alias(f"__opened_{ch}"),
            (sel & pl.col("clicked_time").is_not_null()).sum().alias(f"__clicked_{ch}"),
        ]
    g = c.group_by(KEY).agg(aggs)
    exprs = [_days_between(t, pl.col("__last_click")).alias("days_since_last_click")]
    for ch in CHANNELS:
        exprs += [
            _ratio(f"__opened_{ch}", f"contacts_{ch}_90d").alias(f"open_rate_{ch}_90d"),
            _ratio(f"__clicked_{ch}", f"contacts_{ch}_90d").alias(f"click_rate_{ch}_90d"),
        ]
    drop = ["__last_click"] + [f"__{k}_{ch}" for ch in CHANNELS for k in ("opened", "clicked")]
    return g.with_columns(exprs).drop(drop)


def profile_features(d: ShopData, t: datetime) -> pl.DataFrame:
    return d.customers.select(
        KEY,
        *PROFILE_CATEGORICALS,
        *[pl.col(c).cast(pl.Int8) for c in ("email_consent", "sms_consent", "push_consent", "global_opt_out")],
        _days_between(t, pl.col("signup_time")).alias("signup_tenure_days"),
    )


def calendar_features(t: datetime, promotions: PromotionCalendar | None) -> list[pl.Expr]:
    """Promotions planned for the days after ``t``: the same for every customer of a snapshot.

    They let a model trained over a year of windows tell a Black Friday label window from
    an ordinary one. Without a calendar (``None``) they are null: unknown, not "no sale".
    """
    names = [n for w in CALENDAR_WINDOWS for n in calendar_names(w)]
    if promotions is None:
        return [pl.lit(None, pl.Float64).alias(n) for n in names]
    values = promotions.features(t.date(), CALENDAR_WINDOWS)
    return [pl.lit(values[n], pl.Float64).alias(n) for n in names]


def compute_features(
    d: ShopData, t: datetime, base_currency: str, promotions: PromotionCalendar | None = None
) -> pl.DataFrame:
    """All features at ``t`` for every customer known at ``t`` (``d`` must already be ``as_of(t)``).

    ``promotions`` is the shop's promotion calendar (None: not known).
    """
    o = orders_in_base(d, base_currency)
    items = item_features(d, o, t)
    sessions = sessions_of(d.events)
    parts = [
        rfm_features(o, t),
        items,
        behaviour_features(sessions, t),
        category_features(*category_counts(d, o, t)),
        experience_features(d, o, t),
        campaign_features(d, t),
    ]
    out = profile_features(d, t)
    for p in parts:
        out = out.join(p, on=KEY, how="left")
    observed = pl.min_horizontal(pl.col("signup_tenure_days"), pl.lit(90.0))
    out = out.with_columns(
        _ratio("__qty_365", "orders_365d").alias("items_per_order_365d"),
        _ratio("avg_item_price_bought_365d", "avg_price_viewed_90d").alias("price_tier_ratio"),
        _ratio(pl.col("sessions_90d").fill_null(0) * 7.0, observed).alias("sessions_per_week_90d"),
        _ratio("orders_90d", "sessions_90d").alias("orders_per_session_90d"),
        _ratio("carts_90d", "product_views_90d").alias("cart_rate_90d"),
        *calendar_features(t, promotions),
    ).drop("__qty_365")
    zero_fill = [
        c
        for c, dt in out.schema.items()
        if dt.is_numeric()
        and c.split("_")[0]
        in {
            "orders",
            "revenue",
            "sessions",
            "product",
            "searches",
            "favorites",
            "carts",
            "checkouts",
            "dwell",
            "removes",
            "active",
            "contacts",
            "coupon",
            "low",
            "reviews",
            "distinct",
        }
        and not c.endswith("trend_7_30")
    ]
    out = out.with_columns([pl.col(c).fill_null(0) for c in zero_fill])
    # parallel float sums are not bit-reproducible; 9 decimals makes snapshots byte-stable
    out = out.with_columns([pl.col(c).round(9) for c, dt in out.schema.items() if dt == pl.Float64])
    return out.sort(KEY)
