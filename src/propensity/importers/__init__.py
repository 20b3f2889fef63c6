"""Importers: load real shop data (exports, public data sets) into the canonical OLTP tables.

Each importer replaces the shop's OLTP contents (customers, products, orders, order_items;
the other OLTP tables are emptied) after reading and checking the whole input, so a bad
file raises :class:`ImportDataError` and leaves the database unchanged.

* :func:`import_online_retail` — the UCI Online Retail invoice lines.
* :func:`import_orders` — any order export (CSV, CSV.gz, Parquet) with a column map.
"""

from propensity.importers.online_retail import import_online_retail
from propensity.importers.orders import (
    CANONICAL,
    OPTIONAL,
    REQUIRED,
    ImportDataError,
    ImportReport,
    import_orders,
)

__all__ = [
    "CANONICAL",
    "OPTIONAL",
    "REQUIRED",
    "ImportDataError",
    "ImportReport",
    "import_online_retail",
    "import_orders",
]
