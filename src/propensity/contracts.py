"""Table contracts: the single definition of every canonical table.

Columns, types, nullability, keys, value sets, ranges and foreign keys are declared
here once. The simulator, the importers, collection, validation suites, features and
tests all read these objects; nothing else lists a table's columns by hand. Changing
a contract is therefore a visible, reviewed event (its ``schema_hash`` changes).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

from propensity.codes import ISO_COUNTRIES, ISO_CURRENCIES, ISO_LANGUAGES

DType = Literal["string", "int64", "float64", "bool", "timestamp", "date"]
Source = Literal["oltp", "clickstream", "drop"]

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}

EVENT_TYPES = (
    "page_view",
    "product_view",
    "search",
    "favorite",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
)
ORDER_STATUSES = ("paid", "cancelled", "refunded")
CHANNELS = ("email", "sms", "push")
DEVICES = ("desktop", "mobile", "tablet", "app")
TRAFFIC_SOURCES = (
    "direct",
    "organic",
    "paid_search",
    "social",
    "email",
    "sms",
    "push",
    "affiliate",
    "referral",
)
ACQUISITION_CHANNELS = ("organic", "paid_search", "social", "affiliate", "referral", "direct", "import")
PAYMENT_METHODS = ("card", "paypal", "bank_transfer", "cash_on_delivery", "wallet", "unknown")
GENDERS = ("female", "male", "other", "unknown")
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+", "unknown")


@dataclass(frozen=True)
class Column:
    """One column: its type, whether it may be null, and the values it may take.

    ``gt``/``ge``/``le`` are numeric bounds (``gt=0`` is "strictly positive").
    ``allowed`` is a closed value set. ``sensitive`` marks attributes kept for
    fairness reports but never used as model features by default.
    """

    name: str
    dtype: DType
    nullable: bool = True
    allowed: frozenset[str] | None = None
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    description: str = ""
    sensitive: bool = False

    @property
    def arrow_type(self) -> pa.DataType:
        return ARROW_TYPES[self.dtype]


@dataclass(frozen=True)
class ForeignKey:
    column: str
    ref_table: str
    ref_column: str


@dataclass(frozen=True)
class TableContract:
    """A canonical table.

    ``watermark`` is the column whose value places a row in a daily ``dt=`` partition
    of the raw zone: rows are extracted incrementally by it. ``source`` says which
    source system holds the table in a shop.
    """

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    watermark: str
    source: Source
    foreign_keys: tuple[ForeignKey, ...] = field(default_factory=tuple)
    description: str = ""

    def __post_init__(self) -> None:
        names = self.names
        if len(set(names)) != len(names):
            raise ValueError(f"contract {self.name}: duplicate column names")
        for col in (*self.primary_key, self.watermark, *(fk.column for fk in self.foreign_keys)):
            if col not in names:
                raise ValueError(f"contract {self.name}: unknown column {col!r}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name} has no column {name!r}")

    @property
    def arrow_schema(self) -> pa.Schema:
        """Storage schema: every field nullable, so raw data keeps its nulls for validation to judge."""
        return pa.schema([pa.field(c.name, c.arrow_type) for c in self.columns])

    @property
    def schema_hash(self) -> str:
        """Stable digest of names, types and nullability: changes exactly when the schema does."""
        payload = [(c.name, c.dtype, c.nullable) for c in self.columns]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]

    def conform(self, table: pa.Table) -> pa.Table:
        """Select and cast ``table`` to this contract's column order and types.

        Missing columns are an error (naming the table and column); extra columns are
        dropped. Casting is safe: an unrepresentable value raises instead of wrapping.
        """
        missing = [n for n in self.names if n not in table.column_names]
        if missing:
            raise ValueError(f"table {self.name}: missing column(s) {', '.join(missing)}")
        arrays = []
        for c in self.columns:
            arr = table.column(c.name)
            if arr.type != c.arrow_type:
                try:
                    arr = arr.cast(c.arrow_type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ValueError(f"table {self.name}: column {c.name} cannot be read as {c.dtype}: {exc}") from exc
            arrays.append(arr)
        return pa.Table.from_arrays(arrays, schema=self.arrow_schema)

    def empty(self) -> pa.Table:
        return self.arrow_schema.empty_table()


def _ts(name: str, nullable: bool = False, description: str = "") -> Column:
    return Column(name, "timestamp", nullable=nullable, description=description)


def _audit() -> tuple[Column, Column]:
    """created/updated timestamps every OLTP table carries; updated_at drives incremental extraction."""
    return (
        _ts("created_at", description="row creation time in the source system"),
        _ts("updated_at", description="last change in the source system; extraction watermark"),
    )


_COUNTRY = frozenset(ISO_COUNTRIES)
_CURRENCY = frozenset(ISO_CURRENCIES)

CUSTOMERS = TableContract(
    name="customers",
    description="registered customers with consents and profile attributes",
    source="oltp",
    primary_key=("customer_id",),
    watermark="updated_at",
    columns=(
        Column("customer_id", "string", nullable=False),
        _ts("signup_time"),
        Column("country", "string", nullable=False, allowed=_COUNTRY, description="ISO 3166-1 alpha-2"),
        Column("currency", "string", nullable=False, allowed=_CURRENCY, description="ISO 4217"),
        Column("language", "string", allowed=frozenset(ISO_LANGUAGES), description="ISO 639-1"),
        Column("acquisition_channel", "string", allowed=frozenset(ACQUISITION_CHANNELS)),
        Column("email_consent", "bool", nullable=False),
        Column("sms_consent", "bool", nullable=False),
        Column("push_consent", "bool", nullable=False),
        Column("global_opt_out", "bool", nullable=False),
        Column("gender", "string", allowed=frozenset(GENDERS), sensitive=True),
        Column("age_band", "string", allowed=frozenset(AGE_BANDS), sensitive=True),
        *_audit(),
    ),
)

PRODUCTS = TableContract(
    name="products",
    description="catalogue with list prices",
    source="oltp",
    primary_key=("product_id",),
    watermark="updated_at",
    columns=(
        Column("product_id", "string", nullable=False),
        Column("category", "string", nullable=False),
        Column("brand", "string"),
        Column("list_price", "float64", nullable=False, gt=0),
        Column("currency", "string", nullable=False, allowed=_CURRENCY),
        *_audit(),
    ),
)

ORDERS = TableContract(
    name="orders",
    description="orders; status changes (cancel, refund) bump updated_at",
    source="oltp",
    primary_key=("order_id",),
    watermark="updated_at",
    foreign_keys=(ForeignKey("customer_id", "customers", "customer_id"),),
    columns=(
        Column("order_id", "string", nullable=False),
        Column("customer_id", "string", nullable=False),
        _ts("order_time"),
        Column("status", "string", nullable=False, allowed=frozenset(ORDER_STATUSES)),
        Column("currency", "string", nullable=False, allowed=_CURRENCY),
        Column("gross_amount", "float64", nullable=False, ge=0, description="before discount, order currency"),
        Column("discount_amount", "float64", nullable=False, ge=0),
        Column("coupon_code", "string"),
        Column("payment_method", "string", allowed=frozenset(PAYMENT_METHODS)),
        *_audit(),
    ),
)

ORDER_ITEMS = TableContract(
    name="order_items",
    description="order lines",
    source="oltp",
    primary_key=("order_id", "line_no"),
    watermark="updated_at",
    foreign_keys=(
        ForeignKey("order_id", "orders", "order_id"),
        ForeignKey("product_id", "products", "product_id"),
    ),
    columns=(
        Column("order_id", "string", nullable=False),
        Column("line_no", "int64", nullable=False, ge=0),
        Column("product_id", "string", nullable=False),
        Column("quantity", "int64", nullable=False, gt=0),
        Column("unit_price", "float64", nullable=False, gt=0, description="order currency"),
        *_audit(),
    ),
)

EVENTS = TableContract(
    name="events",
    description="clickstream; customer_id is null for anonymous visitors",
    source="clickstream",
    primary_key=("event_id",),
    watermark="event_time",
    foreign_keys=(
        ForeignKey("customer_id", "customers", "customer_id"),
        ForeignKey("product_id", "products", "product_id"),
    ),
    columns=(
        Column("event_id", "string", nullable=False),
        Column("customer_id", "string"),
        Column("session_id", "string", nullable=False),
        _ts("event_time"),
        Column("event_type", "string", nullable=False, allowed=frozenset(EVENT_TYPES)),
        Column("product_id", "string"),
        Column("device", "string", allowed=frozenset(DEVICES)),
        Column("traffic_source", "string", allowed=frozenset(TRAFFIC_SOURCES)),
        Column("dwell_seconds", "float64", ge=0),
    ),
)

REVIEWS = TableContract(
    name="reviews",
    description="product ratings left after delivery",
    source="oltp",
    primary_key=("review_id",),
    watermark="updated_at",
    foreign_keys=(
        ForeignKey("customer_id", "customers", "customer_id"),
        ForeignKey("order_id", "orders", "order_id"),
    ),
    columns=(
        Column("review_id", "string", nullable=False),
        Column("customer_id", "string", nullable=False),
        Column("order_id", "string", nullable=False),
        Column("product_id", "string"),
        Column("rating", "int64", nullable=False, ge=1, le=5),
        _ts("review_time"),
        *_audit(),
    ),
)

DELIVERIES = TableContract(
    name="deliveries",
    description="shipments: promised vs actual delivery",
    source="oltp",
    primary_key=("delivery_id",),
    watermark="updated_at",
    foreign_keys=(ForeignKey("order_id", "orders", "order_id"),),
    columns=(
        Column("delivery_id", "string", nullable=False),
        Column("order_id", "string", nullable=False),
        _ts("shipped_time", nullable=True),
        _ts("delivered_time", nullable=True),
        Column("promised_days", "int64", nullable=False, ge=0),
        Column("carrier", "string"),
        *_audit(),
    ),
)

CAMPAIGN_CONTACTS = TableContract(
    name="campaign_contacts",
    description="marketing sends and their opens and clicks",
    source="oltp",
    primary_key=("contact_id",),
    watermark="updated_at",
    foreign_keys=(ForeignKey("customer_id", "customers", "customer_id"),),
    columns=(
        Column("contact_id", "string", nullable=False),
        Column("campaign_id", "string", nullable=False),
        Column("customer_id", "string", nullable=False),
        Column("channel", "string", nullable=False, allowed=frozenset(CHANNELS)),
        Column("offer", "string"),
        _ts("sent_time"),
        _ts("opened_time", nullable=True),
        _ts("clicked_time", nullable=True),
        *_audit(),
    ),
)

FX_RATES = TableContract(
    name="fx_rates",
    description="daily rates: amount_in_base = amount * rate",
    source="drop",
    primary_key=("date", "currency"),
    watermark="date",
    columns=(
        Column("date", "date", nullable=False),
        Column("currency", "string", nullable=False, allowed=_CURRENCY),
        Column("base_currency", "string", nullable=False, allowed=_CURRENCY),
        Column("rate", "float64", nullable=False, gt=0),
    ),
)

TABLES: dict[str, TableContract] = {
    t.name: t
    for t in (
        CUSTOMERS,
        PRODUCTS,
        ORDERS,
        ORDER_ITEMS,
        EVENTS,
        REVIEWS,
        DELIVERIES,
        CAMPAIGN_CONTACTS,
        FX_RATES,
    )
}
OLTP_TABLES: tuple[str, ...] = tuple(n for n, t in TABLES.items() if t.source == "oltp")


def contract(name: str) -> TableContract:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {', '.join(TABLES)}") from None


def tables(names: Iterable[str] | None = None) -> list[TableContract]:
    return [contract(n) for n in names] if names else list(TABLES.values())
