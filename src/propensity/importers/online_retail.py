"""Import the UCI "Online Retail" data set (id 352) as a shop's OLTP contents.

Columns: InvoiceNo, StockCode, Description, Quantity, InvoiceDate, UnitPrice (GBP),
CustomerID, Country. Mapping to the canonical tables:

* Lines without CustomerID are dropped (counted in the report). ``12346.0`` -> ``'12346'``.
* Each invoice is an order (``order_id = InvoiceNo``); its lines are order_items with
  ``line_no`` = 0-based position within the invoice in file order. A leading ``C`` marks
  a cancellation: status ``cancelled`` and quantities stored as absolute values; other
  invoices are ``paid``. ``gross_amount = sum(|quantity| * unit_price)``, no discount,
  currency GBP, payment method ``unknown``. ``order_time`` is the invoice's earliest
  InvoiceDate (a few invoices span two minutes); created/updated = order_time.
* InvoiceDate carries no zone; it is read in ``tz`` (default UTC, as UCI documents none).
* Customers: signup = first invoice; country = ISO code of the most frequent Country of
  their lines (ties: alphabetical); names ``country_code`` does not know ('Unspecified',
  'European Community') are kept raw so validation quarantines them with a reason.
  Currency GBP, acquisition channel ``import``, no consents, gender/age band ``unknown``.
* Products (from the kept lines): ``product_id = StockCode``; category = last word of the
  product's most frequent description, upper-cased ('UNKNOWN' without one); no brand;
  list price = median positive unit price, else median absolute price, else 0.01.
* Bad values the contract types can hold (zero unit prices) are kept for validation.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from propensity.importers.orders import (
    ImportDataError,
    ImportReport,
    build_customers,
    check_csv,
    list_prices,
    load_and_report,
    most_frequent,
    no_customers,
    normalize_ids,
    parse_numbers,
    parse_times,
)
from propensity.sources.oltp import ShopDB

__all__ = ["COLUMNS", "DEFAULT_PATH", "category_from_description", "import_online_retail"]

DEFAULT_PATH = Path("../shared/datasets/online_retail/online_retail.csv.gz")  # relative to the checkout
COLUMNS: tuple[str, ...] = (
    "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice", "CustomerID", "Country",
)  # fmt: skip
CURRENCY = "GBP"
# Country for a customer whose lines carry no Country at all: not an assigned ISO code,
# so validation quarantines it (the Online Retail file has a Country on every line).
NO_COUNTRY = "ZZ"


def category_from_description(description: pd.Series) -> pd.Series:
    """Last alphanumeric word of the description, upper-cased; 'UNKNOWN' when there is none."""
    word = description.astype("str").str.extract(r"([A-Za-z0-9]+)[^A-Za-z0-9]*$", expand=False)
    return word.str.upper().where(word.notna() & description.notna(), "UNKNOWN").astype("str")


def import_online_retail(path: str | Path, db: ShopDB, *, tz: str = "UTC") -> ImportReport:
    """Replace the shop's OLTP contents with the Online Retail invoices; see the module docstring.

    ``path`` is usually :data:`DEFAULT_PATH`. Raises :class:`ImportDataError` before
    writing anything when the file is unusable.
    """
    t0 = time.perf_counter()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Online Retail file not found: {path}")
    check_csv(path)
    try:
        raw = pd.read_csv(
            path,
            dtype={c: "str" for c in ("InvoiceNo", "StockCode", "Description", "InvoiceDate", "Country")}
            | {"CustomerID": "str", "Quantity": "str", "UnitPrice": "str"},
            keep_default_na=False,
            na_values=[""],
        )
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ImportDataError(f"{path}: cannot read file: {exc}") from exc
    missing = [c for c in COLUMNS if c not in raw.columns]
    if missing:
        raise ImportDataError(
            f"{path}: not an Online Retail file: missing column(s) {', '.join(missing)}; "
            f"available columns: {', '.join(raw.columns)}"
        )
    lines_in = len(raw)
    rows = pd.Series(np.arange(1, lines_in + 1), index=raw.index)

    customer = normalize_ids(raw["CustomerID"])
    keep = customer.notna()
    if not keep.any():
        raise no_customers(path, lines_in, "CustomerID")
    dropped = int((~keep).sum())
    raw, customer, rows = raw[keep], customer[keep], rows[keep]

    invoice = normalize_ids(raw["InvoiceNo"])
    stock = normalize_ids(raw["StockCode"])
    for col, s in (("InvoiceNo", invoice), ("StockCode", stock)):
        bad = s.isna()
        if bad.any():
            first = int(rows[bad].iloc[0])
            raise ImportDataError(f"{path}: column {col}: missing value at data row {first} (1-based)")
    when = parse_times(raw["InvoiceDate"], path=path, column="InvoiceDate", row_numbers=rows, tz=tz,
                       fmt="%Y-%m-%d %H:%M:%S")  # fmt: skip
    qty = parse_numbers(raw["Quantity"], path=path, column="Quantity", row_numbers=rows, integer=True)
    price = parse_numbers(raw["UnitPrice"], path=path, column="UnitPrice", row_numbers=rows)

    cancelled_line = invoice.str.startswith("C")
    lines = pd.DataFrame(
        {
            "order_id": invoice,
            "customer_id": customer,
            "t": when,
            "product_id": stock,
            "quantity": np.where(cancelled_line, qty.abs(), qty),
            "unit_price": price,
            "amount": qty.abs() * price,
            "cancelled": cancelled_line,
        }
    )

    g = lines.groupby("order_id", sort=False)
    conflicted = g["customer_id"].nunique()
    conflicted = conflicted[conflicted > 1]
    if len(conflicted):
        raise ImportDataError(
            f"{path}: column CustomerID: invoice {conflicted.index[0]!r} has lines of different customers"
        )
    orders = pd.DataFrame(
        {
            "customer_id": g["customer_id"].first(),
            "order_time": g["t"].min(),
            "status": np.where(g["cancelled"].first(), "cancelled", "paid"),
            "gross_amount": g["amount"].sum(),
        }
    ).reset_index()
    orders["currency"] = CURRENCY
    orders["discount_amount"] = 0.0
    orders["coupon_code"] = None
    orders["payment_method"] = "unknown"
    orders["created_at"] = orders["order_time"]
    orders["updated_at"] = orders["order_time"]

    order_time = lines.order_id.map(orders.set_index("order_id")["order_time"])
    items = pd.DataFrame(
        {
            "order_id": lines.order_id,
            "line_no": g.cumcount(),
            "product_id": lines.product_id,
            "quantity": lines.quantity,
            "unit_price": lines.unit_price,
            "created_at": order_time,
            "updated_at": order_time,
        }
    )

    description = raw["Description"].str.strip()
    products = pd.DataFrame({"product_id": np.sort(lines.product_id.unique())})
    top_description = most_frequent(lines.product_id, description.where(description != ""))
    products["category"] = category_from_description(products.product_id.map(top_description))
    products["brand"] = None
    products["list_price"] = products.product_id.map(list_prices(lines.product_id, lines.unit_price))
    products["currency"] = CURRENCY
    first_seen = lines.groupby("product_id")["t"].min()
    products["created_at"] = products.product_id.map(first_seen)
    products["updated_at"] = products["created_at"]

    customers = build_customers(lines.customer_id, lines.t, raw["Country"], CURRENCY, default_country=NO_COUNTRY)

    return load_and_report(db, path, customers, products, orders, items, lines_in, dropped, t0)
