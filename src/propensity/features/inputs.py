"""Point-in-time views of the clean zone.

:class:`ShopData` loads each clean table once (Polars, via pyarrow filesystems, so local
and ``s3://`` lakes read the same way) and :meth:`ShopData.as_of` cuts every table to
what was knowable strictly before a snapshot time ``T``:

* events, reviews, contacts, FX: by their own timestamp (< T); opens, clicks and
  deliveries that happen at or after ``T`` are masked as not yet happened;
* OLTP rows with change history (orders, deliveries, customers): the latest version
  changed before ``T``. The raw zone is extracted by ``updated_at``, so an order refunded
  after ``T`` may exist only in its refunded version; it is then seen as it was at
  creation (``paid``), never with its future status.

Any row whose timestamps are all ``>= T`` therefore cannot influence a snapshot at ``T``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from datetime import date, datetime, timedelta

import polars as pl

from propensity import history
from propensity.contracts import contract
from propensity.lake import Lake
from propensity.shards import in_buckets
from propensity.zones import CLEAN

TABLE_NAMES = (
    "customers",
    "products",
    "orders",
    "order_items",
    "events",
    "reviews",
    "deliveries",
    "campaign_contacts",
    "fx_rates",
)


# every column features, labels and profiles read (SnapshotBuilder loads only these)
USED_COLUMNS: dict[str, list[str]] = {
    "customers": [
        "customer_id",
        "signup_time",
        "country",
        "currency",
        "language",
        "acquisition_channel",
        "email_consent",
        "sms_consent",
        "push_consent",
        "global_opt_out",
        "gender",
        "age_band",
        "updated_at",
    ],
    "products": ["product_id", "category", "list_price", "updated_at"],
    "orders": [
        "order_id",
        "customer_id",
        "order_time",
        "status",
        "currency",
        "gross_amount",
        "discount_amount",
        "coupon_code",
        "updated_at",
    ],
    "order_items": ["order_id", "line_no", "product_id", "quantity", "unit_price", "created_at", "updated_at"],
    "events": ["customer_id", "session_id", "event_time", "event_type", "product_id", "device", "dwell_seconds"],
    "reviews": ["customer_id", "rating", "review_time", "updated_at"],
    "deliveries": ["delivery_id", "order_id", "shipped_time", "delivered_time", "promised_days", "updated_at"],
    "campaign_contacts": ["customer_id", "channel", "sent_time", "opened_time", "clicked_time"],
    "fx_rates": ["date", "currency", "rate"],
}


#: the times that say where a shop's observable history begins and ends (:attr:`ShopData.start`, ``end``)
EDGE_COLUMNS = {"orders": "order_time", "events": "event_time"}

#: low-cardinality event columns kept as dictionary-encoded categoricals: the events table is most of the memory
COMPACT_COLUMNS = {"events": ("event_type", "device")}


def _compact(name: str, df: pl.DataFrame) -> pl.DataFrame:
    cols = [c for c in COMPACT_COLUMNS.get(name, ()) if c in df.columns]
    return df.with_columns(pl.col(c).cast(pl.Categorical) for c in cols) if cols else df


def _empty(name: str) -> pl.DataFrame:
    df = pl.from_arrow(contract(name).empty())
    assert isinstance(df, pl.DataFrame)
    return df


def missing_days(days: Mapping[str, Collection[date]], until: date) -> dict[date, list[str]]:
    """Days before ``until`` where some table has no partition, with those tables.

    Collection writes a partition of every table for every day, empty or not, and the gate
    publishes each one it passes; so inside ``[first published day, last published day]``
    a table without a day is a day that was never validated, or a manifest lost since. A
    snapshot built over it silently misses that day's customers, orders and events. Days
    after the last published one are not gaps but the edge of the data (the freshness
    guards judge that).
    """
    every = set().union(*days.values()) if days else set()
    if not every:
        return {}
    d, end = min(every), min(until, max(every) + timedelta(days=1))
    out: dict[date, list[str]] = {}
    while d < end:
        absent = [t for t, ds in days.items() if d not in ds]
        if absent:
            out[d] = absent
        d += timedelta(days=1)
    return out


def describe_gaps(gaps: Mapping[date, list[str]], limit: int = 5) -> str:
    """``2025-01-10 (customers), 2025-01-11 (orders, events) and 3 more day(s)``: one line however many."""
    shown = [f"{d} ({', '.join(ts)})" for d, ts in sorted(gaps.items())[:limit]]
    more = len(gaps) - limit
    return ", ".join(shown) + (f" and {more} more day(s)" if more > 0 else "")


@dataclass(frozen=True)
class ShopData:
    customers: pl.DataFrame
    products: pl.DataFrame
    orders: pl.DataFrame
    order_items: pl.DataFrame
    events: pl.DataFrame
    reviews: pl.DataFrame
    deliveries: pl.DataFrame
    campaign_contacts: pl.DataFrame
    fx_rates: pl.DataFrame

    @classmethod
    def load(cls, lake: Lake, zone: str = CLEAN, columns: dict[str, list[str]] | None = None) -> ShopData:
        return cls.load_listed(lake, zone, columns)[0]

    @classmethod
    def load_listed(
        cls,
        lake: Lake,
        zone: str = CLEAN,
        columns: dict[str, list[str]] | None = None,
        buckets: range | None = None,
        tables: Collection[str] | None = None,
    ) -> tuple[ShopData, dict[str, set[date]], dict[str, tuple[datetime, datetime]]]:
        """Every table (the clean zone through its compacted history, :mod:`propensity.history`),
        and the days each table had published in the listing its rows were read from: the gap
        check then judges exactly the data loaded.

        With ``buckets`` (a shard's), the customer-keyed tables' history files of other
        buckets are not read, and every table is narrowed to the buckets (:meth:`in_buckets`:
        only the days newer than the history have rows to drop); the third
        value then gives, per :data:`EDGE_COLUMNS` table, the first and last time of the
        history's rows (all buckets), so :meth:`span` of the shard is the whole shop's.
        ``tables`` reads only those tables; the others are empty (a reader that needs four
        tables does not hold the other five)."""
        frames, days, edges = {}, {}, {}
        cols_of = columns or {}
        wanted = [n for n in TABLE_NAMES if tables is None or n in tables]
        with ThreadPoolExecutor(min(lake.io_threads, len(wanted))) as pool:  # Parquet decoding frees the GIL
            read = pool.map(lambda name: history.read(lake, name, cols_of.get(name), zone, buckets), wanted)
            found = dict(zip(wanted, read, strict=True))
        for name in TABLE_NAMES:
            cols = cols_of.get(name)
            if name not in found:
                frames[name] = _empty(name).select(cols or pl.all())
                days[name] = set()
                continue
            df, listing = found[name]
            df = df if df is not None and df.height else _empty(name).select(cols or pl.all())
            frames[name] = _compact(name, df)
            days[name] = {date.fromisoformat(d) for d in listing.values("dt")}
            if buckets is not None and name in EDGE_COLUMNS and zone == CLEAN:
                span = history.bounds(lake, name, listing).get(EDGE_COLUMNS[name])
                if span is not None:
                    edges[name] = (datetime.fromisoformat(span[0]), datetime.fromisoformat(span[1]))
        data = cls(**frames)
        return (data if buckets is None else data.in_buckets(buckets)), days, edges

    @classmethod
    def from_frames(cls, **frames: pl.DataFrame) -> ShopData:
        return cls(**{f.name: frames.get(f.name, _empty(f.name)) for f in fields(cls)})

    def in_buckets(self, buckets: range) -> ShopData:
        """Only the rows of the customers whose bucket is in ``buckets`` (a shard's data).

        Shared reference data (products, FX rates) stays whole; items and deliveries follow
        their orders; rows with no customer belong to no shard. Features are per-customer
        aggregates, so a shard's features equal the same customers' rows of an unsharded
        build. A table that holds only those customers already (a shard's history rows) is
        kept as it is, not copied.
        """

        def mine(df: pl.DataFrame) -> pl.DataFrame:
            ids = df["customer_id"]
            mask = in_buckets(ids, buckets) & ids.is_not_null()
            return df if mask.all() else df.filter(mask)

        orders = mine(self.orders)
        order_ids = orders["order_id"].unique().implode()

        def of_orders(df: pl.DataFrame) -> pl.DataFrame:
            mask = df["order_id"].is_in(order_ids)
            return df if mask.all() and not mask.null_count() else df.filter(mask)

        return replace(
            self,
            customers=mine(self.customers),
            orders=orders,
            order_items=of_orders(self.order_items),
            events=mine(self.events),
            reviews=mine(self.reviews),
            deliveries=of_orders(self.deliveries),
            campaign_contacts=mine(self.campaign_contacts),
        )

    @property
    def start(self) -> datetime | None:
        """Earliest order or event time: where the shop's observable history begins."""
        times = [t for t in (getattr(self, n)[c].min() for n, c in EDGE_COLUMNS.items()) if t is not None]
        return min(times) if times else None  # type: ignore[return-value,type-var]

    @property
    def end(self) -> datetime | None:
        times = [t for t in (getattr(self, n)[c].max() for n, c in EDGE_COLUMNS.items()) if t is not None]
        return max(times) if times else None  # type: ignore[return-value,type-var]

    def as_of(self, t: datetime) -> ShopData:
        """Everything knowable strictly before ``t``."""
        ts = pl.lit(t).dt.cast_time_unit("us")

        def latest_known(df: pl.DataFrame, key: list[str], first_state: dict[str, pl.Expr] | None = None):
            known = pl.col("updated_at") < ts
            df = df.with_columns(known.alias("__known")).sort([*key, "__known", "updated_at"])
            last = df.group_by(key, maintain_order=True).last()
            if first_state:
                last = last.with_columns(
                    [pl.when(pl.col("__known")).then(pl.col(c)).otherwise(e).alias(c) for c, e in first_state.items()]
                )
            return last.drop("__known")

        customers = latest_known(self.customers.filter(pl.col("updated_at") < ts), ["customer_id"])
        customers = customers.filter(pl.col("signup_time") < ts)
        products = latest_known(self.products, ["product_id"])
        orders = latest_known(self.orders.filter(pl.col("order_time") < ts), ["order_id"], {"status": pl.lit("paid")})
        items = self.order_items.filter(pl.col("created_at") < ts).join(
            orders.select("order_id"), on="order_id", how="semi"
        )
        items = latest_known(items, ["order_id", "line_no"])
        deliveries = latest_known(self.deliveries.filter(pl.col("shipped_time") < ts), ["delivery_id"])
        deliveries = deliveries.with_columns(
            pl.when(pl.col("delivered_time") < ts)
            .then(pl.col("delivered_time"))
            .otherwise(None)
            .alias("delivered_time")
        )
        contacts = self.campaign_contacts.filter(pl.col("sent_time") < ts).with_columns(
            [pl.when(pl.col(c) < ts).then(pl.col(c)).otherwise(None).alias(c) for c in ("opened_time", "clicked_time")]
        )
        return replace(
            self,
            customers=customers,
            products=products,
            orders=orders,
            order_items=items,
            events=self.events.filter(pl.col("event_time") < ts),
            reviews=self.reviews.filter((pl.col("review_time") < ts) & (pl.col("updated_at") < ts)),
            deliveries=deliveries,
            campaign_contacts=contacts,
            fx_rates=self.fx_rates.filter(pl.col("date") < pl.lit(t.date())),
        )

    def between(self, start: datetime, end: datetime) -> ShopData:
        """Orders and events with times in ``[start, end)`` (what labels look at; any version)."""
        s, e = pl.lit(start).dt.cast_time_unit("us"), pl.lit(end).dt.cast_time_unit("us")
        orders = self.orders.sort("updated_at").group_by("order_id", maintain_order=True).last()
        return replace(
            self,
            orders=orders.filter((pl.col("order_time") >= s) & (pl.col("order_time") < e)),
            events=self.events.filter((pl.col("event_time") >= s) & (pl.col("event_time") < e)),
        )
