"""Importers: the real UCI Online Retail file and generic order exports (CSV, CSV.gz, Parquet)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from propensity.contracts import contract
from propensity.importers import ImportDataError, ImportReport, import_orders
from propensity.sources.oltp import ShopDB

LOADED = ("customers", "products", "orders", "order_items")

MAPPING = {
    "customer_id": "cust",
    "order_id": "inv",
    "order_time": "ts",
    "amount": "total",
    "quantity": "qty",
    "product_id": "sku",
}
CSV_TEXT = """cust,inv,ts,total,qty,sku,country
c1,o1,2024-03-01 10:00:00,20.00,2,A,Germany
c1,o1,2024-03-01 10:00:00,5.50,1,B,Germany
c2,o2,2024-03-02 11:30:00,9.00,3,A,FR
,o3,2024-03-02 12:00:00,1.00,1,A,FR
c1,o4,2024-03-05 09:15:00,12.00,1,B,Germany
"""


def _db(tmp_path: Path, name: str = "shop.db") -> ShopDB:
    db = ShopDB(f"sqlite:///{tmp_path / name}")
    db.create_schema()
    return db


def _frame(db: ShopDB, name: str) -> pd.DataFrame:
    return db.extract(name).to_pandas()


def _preload(db: ShopDB) -> dict[str, int]:
    """A tiny shop already in the database (written through a successful import)."""
    src = db.engine.url.database + ".seed.csv"
    Path(src).write_text(CSV_TEXT)
    import_orders(src, db, MAPPING)
    return {n: db.count(n) for n in LOADED}


# --------------------------------------------------------------------------- Online Retail


@pytest.mark.slow
def test_online_retail_counts(online_retail_db) -> None:
    """The session's import of the file (shared with the validation and features tests), read only."""
    report = online_retail_db.report
    db = ShopDB(online_retail_db.settings.shop_db_url)

    assert isinstance(report, ImportReport)
    assert report.lines_in == 541_909
    assert report.lines_dropped_no_customer == 135_080
    assert report.customers == 4_372 == db.count("customers")
    assert report.order_items == 541_909 - 135_080 == db.count("order_items")
    assert report.orders == db.count("orders")
    assert report.products == db.count("products")
    assert 0 < report.cancelled_orders < report.orders
    assert report.first_order_time is not None and report.first_order_time.year == 2010
    assert report.last_order_time is not None and report.last_order_time.year == 2011
    assert "541,909" in report.summary()

    orders = _frame(db, "orders")
    is_c = orders.order_id.str.startswith("C")
    assert is_c.sum() == report.cancelled_orders
    assert (orders.status[is_c] == "cancelled").all()
    assert (orders.status[~is_c] == "paid").all()
    assert (orders.currency == "GBP").all()
    assert (orders.gross_amount >= 0).all()

    with db.engine.connect() as conn:  # order_items is 400k rows: check in SQL
        min_qty = conn.execute(sa.text("SELECT min(quantity) FROM order_items")).scalar_one()
        orphans = conn.execute(
            sa.text("SELECT count(*) FROM order_items WHERE product_id NOT IN (SELECT product_id FROM products)")
        ).scalar_one()
    assert min_qty > 0  # cancellations stored as absolute quantities
    assert orphans == 0

    customers = _frame(db, "customers").set_index("customer_id")
    assert not customers.index.str.contains(r"\.").any()  # 12346.0 -> '12346'
    assert customers.loc["12346", "country"] == "GB"
    assert not customers[["email_consent", "sms_consent", "push_consent", "global_opt_out"]].any().any()
    # names country_code does not know are kept raw for validation to quarantine
    unknown = set(customers.country) - set(contract("customers").column("country").allowed or ())
    assert unknown and unknown <= {"Unspecified", "European Community"}


# --------------------------------------------------------------------------- generic exports


def _check_small_shop(db: ShopDB, report: ImportReport) -> None:
    assert report.lines_in == 5
    assert report.lines_dropped_no_customer == 1
    assert (report.customers, report.orders, report.order_items, report.products) == (2, 3, 4, 2)
    assert report.cancelled_orders == 0

    customers = _frame(db, "customers").set_index("customer_id")
    assert customers.loc["c1", "country"] == "DE"
    assert customers.loc["c1", "language"] == "de"
    assert customers.loc["c2", "country"] == "FR"
    assert customers.loc["c1", "signup_time"] == pd.Timestamp("2024-03-01 10:00", tz="UTC")
    assert (customers.currency == "EUR").all()
    assert (customers.acquisition_channel == "import").all()

    orders = _frame(db, "orders").set_index("order_id")
    assert sorted(orders.index) == ["o1", "o2", "o4"]
    assert orders.loc["o1", "gross_amount"] == pytest.approx(25.5)
    assert orders.loc["o1", "customer_id"] == "c1"
    assert orders.loc["o2", "order_time"] == pd.Timestamp("2024-03-02 11:30", tz="UTC")
    assert (orders.status == "paid").all()

    items = _frame(db, "order_items").set_index(["order_id", "line_no"])
    assert items.loc[("o1", 0), "product_id"] == "A"
    assert items.loc[("o1", 0), "quantity"] == 2
    assert items.loc[("o1", 0), "unit_price"] == pytest.approx(10.0)
    assert items.loc[("o1", 1), "product_id"] == "B"
    assert items.loc[("o2", 0), "unit_price"] == pytest.approx(3.0)

    products = _frame(db, "products").set_index("product_id")
    assert products.loc["A", "list_price"] == pytest.approx(6.5)  # median of 10 and 3
    assert (products.category == "UNKNOWN").all()


def test_generic_csv_with_mapping(tmp_path: Path) -> None:
    src = tmp_path / "orders.csv"
    src.write_text(CSV_TEXT)
    db = _db(tmp_path)
    _check_small_shop(db, import_orders(src, db, MAPPING))


def test_generic_csv_gz(tmp_path: Path) -> None:
    src = tmp_path / "orders.csv.gz"
    pd.read_csv(pd.io.common.StringIO(CSV_TEXT), dtype=str).to_csv(src, index=False, compression="gzip")
    db = _db(tmp_path)
    _check_small_shop(db, import_orders(src, db, MAPPING))


def test_generic_parquet_typed_columns(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "cust": [101.0, 101.0, 202.0, None, 101.0],  # float ids as pandas writes them with a null
            "inv": [1, 1, 2, 3, 4],
            "ts": pd.to_datetime(
                [
                    "2024-03-01 10:00",
                    "2024-03-01 10:00",
                    "2024-03-02 11:30",
                    "2024-03-02 12:00",
                    "2024-03-05 09:15",
                ]
            ),
            "total": [20.0, 5.5, 9.0, 1.0, 12.0],
            "qty": [2, 1, 3, 1, 1],
            "sku": ["A", "B", "A", "A", "B"],
            "status": ["completed", "completed", "Canceled", "paid", "refunded"],
        }
    )
    src = tmp_path / "export.parquet"
    df.to_parquet(src, index=False)
    db = _db(tmp_path)
    report = import_orders(src, db, {k: v for k, v in MAPPING.items()}, currency="USD", country="US")

    assert (report.customers, report.orders, report.order_items, report.products) == (2, 3, 4, 2)
    assert report.lines_dropped_no_customer == 1
    assert report.cancelled_orders == 1
    orders = _frame(db, "orders").set_index("order_id")
    assert sorted(orders.index) == ["1", "2", "4"]
    assert orders.status.to_dict() == {"1": "paid", "2": "cancelled", "4": "refunded"}
    assert (orders.currency == "USD").all()
    customers = _frame(db, "customers").set_index("customer_id")
    assert sorted(customers.index) == ["101", "202"]
    assert (customers.country == "US").all()
    assert (customers.language == "en").all()


def test_generic_whole_orders_same_named_columns_and_placeholders(tmp_path: Path) -> None:
    src = tmp_path / "orders.csv"
    src.write_text(
        "customer_id,order_id,order_time,amount,category,currency\n"
        "u1,A-1,2024-01-02T08:00:00+01:00,30,shoes,eur\n"
        "u2,A-2,2024-01-03T09:00:00Z,15,,GBP\n"
        "u1,A-3,2024-02-01T10:00:00Z,10,shoes,EUR\n"
    )
    db = _db(tmp_path)
    report = import_orders(src, db, {}, country="Ireland")  # every name matches a source column
    assert (report.customers, report.orders, report.order_items, report.products) == (2, 3, 3, 2)
    orders = _frame(db, "orders").set_index("order_id")
    assert orders.loc["A-1", "order_time"] == pd.Timestamp("2024-01-02 07:00", tz="UTC")
    assert orders.loc["A-2", "currency"] == "GBP"
    items = _frame(db, "order_items").set_index("order_id")
    assert items.loc["A-1", "product_id"] == "cat:shoes"
    assert items.loc["A-2", "product_id"] == "UNKNOWN"
    assert (items.quantity == 1).all()
    products = _frame(db, "products").set_index("product_id")
    assert products.loc["cat:shoes", "category"] == "shoes"
    assert products.loc["cat:shoes", "list_price"] == pytest.approx(20.0)
    assert products.loc["UNKNOWN", "category"] == "UNKNOWN"
    customers = _frame(db, "customers").set_index("customer_id")
    assert (customers.country == "IE").all()
    assert customers.loc["u1", "currency"] == "EUR"


def test_import_replaces_previous_contents(tmp_path: Path) -> None:
    db = _db(tmp_path)
    _preload(db)
    src = tmp_path / "other.csv"
    src.write_text("customer_id,order_id,order_time,amount\nz,9,2024-05-01,3\n")
    import_orders(src, db)
    assert [db.count(n) for n in LOADED] == [1, 1, 1, 1]
    assert _frame(db, "orders").order_id.tolist() == ["9"]


# --------------------------------------------------------------------------- errors


def test_missing_required_column_names_file_and_column(tmp_path: Path) -> None:
    db = _db(tmp_path)
    before = _preload(db)
    src = tmp_path / "broken.csv"
    src.write_text(CSV_TEXT.replace("ts,", "when,", 1))
    with pytest.raises(ImportDataError) as exc:
        import_orders(src, db, MAPPING)
    msg = str(exc.value)
    assert "broken.csv" in msg and "order_time" in msg and "'ts'" in msg
    assert "available columns: cust, inv, when" in msg
    assert isinstance(exc.value, ValueError)
    assert {n: db.count(n) for n in LOADED} == before

    # not mapped and no same-named column
    with pytest.raises(ImportDataError, match=r"broken\.csv.*required column amount.*available columns"):
        import_orders(src, db, {"customer_id": "cust", "order_id": "inv", "order_time": "when"})
    assert {n: db.count(n) for n in LOADED} == before


def test_unparseable_date_names_file_column_row_and_value(tmp_path: Path) -> None:
    db = _db(tmp_path)
    before = _preload(db)
    seed_orders = _frame(db, "orders")
    src = tmp_path / "bad_dates.csv"
    lines = CSV_TEXT.splitlines()
    lines[3] = lines[3].replace("2024-03-02 11:30:00", "next tuesday")  # data row 3
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(ImportDataError) as exc:
        import_orders(src, db, MAPPING)
    msg = str(exc.value)
    assert "bad_dates.csv" in msg
    assert "'ts'" in msg and "order_time" in msg
    assert "data row 3" in msg
    assert "next tuesday" in msg
    assert {n: db.count(n) for n in LOADED} == before
    pd.testing.assert_frame_equal(_frame(db, "orders"), seed_orders)


def test_non_numeric_amount_names_row(tmp_path: Path) -> None:
    db = _db(tmp_path)
    before = _preload(db)
    src = tmp_path / "bad_amount.csv"
    src.write_text(CSV_TEXT.replace("9.00", "nine", 1))
    with pytest.raises(ImportDataError, match=r"bad_amount\.csv.*'total' \(amount\).*'nine'.*data row 3"):
        import_orders(src, db, MAPPING)
    assert {n: db.count(n) for n in LOADED} == before


def test_unknown_canonical_name_in_mapping(tmp_path: Path) -> None:
    src = tmp_path / "orders.csv"
    src.write_text(CSV_TEXT)
    with pytest.raises(ImportDataError, match="unknown canonical column"):
        import_orders(src, _db(tmp_path), {**MAPPING, "price": "total"})


def test_order_with_two_customers_is_an_error(tmp_path: Path) -> None:
    src = tmp_path / "orders.csv"
    src.write_text(CSV_TEXT.replace("c2,o2", "c2,o1", 1))
    with pytest.raises(ImportDataError, match=r"order 'o1' has lines of different customers"):
        import_orders(src, _db(tmp_path), MAPPING)
