"""Import a shop's order export (CSV, CSV.gz or Parquet) into the canonical OLTP tables.

``import_orders`` takes a column map ``{canonical: source}`` and derives customers,
products, orders and order_items from order lines; it *replaces* the shop's OLTP
contents. The whole file is read, parsed and checked before anything is written, so a
bad file leaves the database untouched and the error names the file, the column, the
1-based data row (header excluded) and the offending value.

This module also holds the pieces every importer shares: :class:`ImportReport`,
:class:`ImportDataError` and the replace-the-OLTP-contents writer.

Decisions (documented here because the export does not carry them):

* ``amount`` is the *line* amount; ``unit_price = amount / quantity`` (``quantity``
  defaults to 1; a zero quantity keeps ``unit_price = amount`` instead of dividing by
  zero). Negative amounts or quantities are kept as given: the validation stage
  quarantines them with a reason.
* Rows without a customer id are dropped (guest checkouts) and counted in the report.
* Lines without a product id get a placeholder product: ``cat:<category>`` when the row
  has a category, else ``UNKNOWN`` (category ``UNKNOWN``).
* A product's ``list_price`` is the median positive unit price of its lines; when no line
  has a positive price, the median absolute price, and 0.01 when that is zero too (the
  product must be loadable; the zero/negative line prices stay on ``order_items``).
* Without a ``country`` column every customer gets the ``country`` argument (default
  ``'GB'``); without a ``currency`` column every order gets the ``currency`` argument
  (default ``'EUR'``). Country names are mapped to ISO codes with
  :func:`propensity.codes.country_code`; unknown names are kept raw for validation to
  quarantine.
* Naive timestamps are read in ``tz`` (default UTC); timestamps with an offset are
  converted to UTC.
* Customers: signup = first order, acquisition channel ``import``, all consents False
  and not opted out (consent unknown → not contactable), gender/age band ``unknown``,
  language from the country where one language is obvious, else None.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import lzma
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from propensity.codes import ISO_COUNTRIES, ISO_CURRENCIES, country_code
from propensity.contracts import contract
from propensity.errors import DataQualityError
from propensity.sources.oltp import ShopDB

__all__ = ["CANONICAL", "OPTIONAL", "REQUIRED", "ImportDataError", "ImportReport", "import_orders"]

REQUIRED: tuple[str, ...] = ("customer_id", "order_id", "order_time", "amount")
OPTIONAL: tuple[str, ...] = ("quantity", "product_id", "category", "country", "currency", "status")
CANONICAL: tuple[str, ...] = REQUIRED + OPTIONAL


@contextmanager
def _open_zip(path: Path, mode: str = "rb") -> Iterator[IO[bytes]]:
    """The archive's first member, the one file pandas reads from a zipped CSV."""
    with zipfile.ZipFile(path) as archive, archive.open(archive.namelist()[0]) as fh:
        yield fh


# Compressions pandas infers from the file name that the CSV shape check reads too; it
# refuses the others pandas knows (.zst, .tar) rather than read compressed bytes as text.
OPENERS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zip": _open_zip}
UNREADABLE = (".zst", ".tar", ".tgz")

# Tables an import writes, in load order (parents first). Every other OLTP table is emptied.
IMPORT_TABLES: tuple[str, ...] = ("customers", "products", "orders", "order_items")

# ISO 3166 alpha-2 -> ISO 639-1, only where one language is the obvious choice.
# Multilingual countries (BE, CH, CA, SG, ZA, HK, LU, MT, IN, ...) get no language.
LANGUAGE_BY_COUNTRY: dict[str, str] = {
    "GB": "en", "IE": "en", "US": "en", "AU": "en", "NZ": "en", "JE": "en", "GG": "en", "IM": "en",
    "DE": "de", "AT": "de", "FR": "fr", "ES": "es", "IT": "it", "PT": "pt", "BR": "pt", "NL": "nl",
    "SE": "sv", "NO": "no", "DK": "da", "FI": "fi", "IS": "is", "PL": "pl", "CZ": "cs", "SK": "sk",
    "GR": "el", "CY": "el", "LT": "lt", "LV": "lv", "EE": "et", "HU": "hu", "RO": "ro", "BG": "bg",
    "HR": "hr", "SI": "sl", "JP": "ja", "KR": "ko", "CN": "zh", "IL": "he", "SA": "ar", "AE": "ar",
    "BH": "ar", "LB": "ar", "TR": "tr", "RU": "ru", "UA": "uk", "TH": "th", "VN": "vi", "ID": "id",
}  # fmt: skip

# Status spellings seen in exports -> canonical status; anything else is kept raw.
STATUS_SYNONYMS: dict[str, str] = {
    "paid": "paid", "complete": "paid", "completed": "paid", "shipped": "paid", "delivered": "paid",
    "fulfilled": "paid", "processing": "paid", "cancelled": "cancelled", "canceled": "cancelled",
    "void": "cancelled", "voided": "cancelled", "refunded": "refunded", "returned": "refunded",
    "refund": "refunded",
}  # fmt: skip


class ImportDataError(DataQualityError):
    """An import file cannot be loaded; the message names the file, column, row and value."""


@dataclass
class ImportReport:
    """What an import loaded."""

    source: str
    lines_in: int
    lines_dropped_no_customer: int
    customers: int
    orders: int
    cancelled_orders: int
    order_items: int
    products: int
    first_order_time: datetime | None
    last_order_time: datetime | None
    unknown_countries: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        span = (
            f"{self.first_order_time:%Y-%m-%d %H:%M} .. {self.last_order_time:%Y-%m-%d %H:%M} UTC"
            if self.first_order_time is not None and self.last_order_time is not None
            else "no orders"
        )
        return (
            f"imported {Path(self.source).name}: {self.lines_in:,} lines in, "
            f"{self.lines_dropped_no_customer:,} dropped without customer; "
            f"{self.customers:,} customers ({self.unknown_countries:,} with unknown country), "
            f"{self.orders:,} orders ({self.cancelled_orders:,} cancelled), "
            f"{self.order_items:,} order items, {self.products:,} products; {span}; "
            f"{self.seconds:.1f}s"
        )


# --------------------------------------------------------------------------- parsing helpers


def _csv_lines(path: Path) -> Iterator[str]:
    """The file's lines decoded one at a time, so a byte that is not UTF-8 is reported with its line.

    pandas decodes in blocks and reports a byte position inside a block, which no one can
    find in the file. ``\\n`` never occurs inside a multi-byte UTF-8 sequence, so splitting
    the bytes on it first is safe. A UTF-8 byte-order mark is accepted, as pandas does.
    """
    suffix = path.suffix.lower()
    if suffix in UNREADABLE or path.name.lower().endswith(".tar.gz"):
        raise ImportDataError(f"{path}: cannot check a {suffix} file; use CSV, or CSV in .gz, .bz2, .xz or .zip")
    opener = OPENERS.get(suffix, open)
    with opener(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                yield raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                at = len(raw[: exc.start].decode("utf-8", errors="replace")) + 1
                row = f" (data row {number - 1})" if number > 1 else " (the header)"
                raise ImportDataError(
                    f"{path}: line {number}{row} is not UTF-8: byte 0x{raw[exc.start]:02x} at character {at}; "
                    "save the file as UTF-8"
                ) from None


def check_csv(path: Path, sep: str = ",") -> int:
    """Number of data rows of a CSV export, after refusing what pandas would silently misread.

    A row with more fields than the header is refused: pandas takes an unquoted decimal
    comma (``12,50``) or thousands separator (``1,234.56``) for an extra column, so it
    imports 12.0 or 1.0, or shifts the first row onto an index column. A file with a
    header and no rows, or no header, is refused with a line instead of crashing later.
    Rows are counted as pandas counts them (blank lines skipped, quoted fields may span
    lines), so ``data row`` agrees with the other errors; ``line`` is where the row ends.
    """
    reader = csv.reader(_csv_lines(path), delimiter=sep)
    width = rows = 0
    try:
        for record in reader:
            if not record:
                continue
            if not width:
                width = len(record)
                continue
            rows += 1
            if len(record) > width:
                raise ImportDataError(
                    f"{path}: data row {rows} (line {reader.line_num}) has {len(record)} fields but the header "
                    f'has {width}; quote a field that holds the separator, e.g. "12,50"'
                )
    except csv.Error as exc:
        raise ImportDataError(f"{path}: line {reader.line_num}: cannot parse as CSV: {exc}") from None
    if not width:
        raise ImportDataError(f"{path}: empty file: no header and no data rows")
    if not rows:
        raise no_rows(path)
    return rows


def no_rows(path: Path) -> ImportDataError:
    """Why an error and not an empty import: replacing a shop with nothing is never what an export meant."""
    return ImportDataError(f"{path}: has a header but no data rows")


def no_customers(path: Path, rows: int, column: str) -> ImportDataError:
    return ImportDataError(f"{path}: none of the {rows:,} data rows has a customer id (column {column!r})")


def _row_error(path: str | Path, column: str, what: str, bad: pd.Series, row_numbers: pd.Series) -> None:
    """Raise for the first bad row of ``bad`` (a boolean mask aligned with the frame)."""
    if not bad.any():
        return
    idx = bad.to_numpy().nonzero()[0]
    first = idx[0]
    more = f"; {len(idx) - 1:,} more bad row(s) in this column" if len(idx) > 1 else ""
    raise ImportDataError(
        f"{path}: column {column}: {what} at data row {int(row_numbers.iloc[first])} (1-based, header excluded){more}"
    )


def _blank(s: pd.Series) -> pd.Series:
    """True where a value is missing or an empty/whitespace string."""
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_datetime64_any_dtype(s):
        return s.isna()
    return s.isna() | (s.astype("str").str.strip() == "")


def normalize_ids(s: pd.Series) -> pd.Series:
    """Ids as stripped strings; integral floats lose their '.0' (12346.0 -> '12346'); blanks -> NA."""
    if pd.api.types.is_float_dtype(s):
        integral = s.notna() & (s == np.floor(s))
        out = s.astype("str")
        out = out.where(~integral, s.where(integral).astype("Int64").astype("str"))
    elif pd.api.types.is_integer_dtype(s) or pd.api.types.is_bool_dtype(s):
        out = s.astype("str")
    else:
        out = s.astype("str").str.strip().str.replace(r"^(\d+)\.0+$", r"\1", regex=True)
    out = out.where(~_blank(s))
    return out.where(out != "", None).astype("str")


def parse_times(
    s: pd.Series,
    *,
    path: str | Path,
    column: str,
    row_numbers: pd.Series,
    tz: str = "UTC",
    fmt: str | None = None,
) -> pd.Series:
    """Parse to tz-aware UTC timestamps; any missing or unparseable value raises ImportDataError."""
    missing = _blank(s)
    _row_error(path, column, "missing date/time", missing, row_numbers)
    if pd.api.types.is_datetime64_any_dtype(s):
        out = s
    else:
        text = s.astype("str").str.strip()
        out = _to_datetime(text, fmt)
        bad = out.isna()
        if bad.any():
            shown = text[bad].iloc[0]
            _row_error(path, column, f"cannot parse {shown!r} as a date/time", bad, row_numbers)
    if getattr(out.dt, "tz", None) is None:
        try:
            out = out.dt.tz_localize(tz, ambiguous="NaT", nonexistent="shift_forward")
        except Exception as exc:  # unknown zone name
            raise ImportDataError(f"{path}: column {column}: cannot localise to time zone {tz!r}: {exc}") from exc
        _row_error(path, column, f"ambiguous local time in {tz}", out.isna(), row_numbers)
    return out.dt.tz_convert("UTC").dt.as_unit("us")


def _to_datetime(text: pd.Series, fmt: str | None) -> pd.Series:
    """Strict-per-value parse: ISO 8601 first, then the format inferred from the first value."""
    formats = [fmt] if fmt else ["ISO8601", None]
    best: pd.Series | None = None
    for f in formats:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "could not infer format": we report bad rows
            try:
                out = pd.to_datetime(text, format=f, errors="coerce")
            except (ValueError, TypeError):  # mixed offsets (or offsets and naive): every value as UTC
                out = pd.to_datetime(text, format=f, errors="coerce", utc=True)
        if best is None or out.isna().sum() < best.isna().sum():
            best = out
        if not best.isna().any():
            break
    assert best is not None
    return best


def parse_numbers(
    s: pd.Series, *, path: str | Path, column: str, row_numbers: pd.Series, integer: bool = False
) -> pd.Series:
    """Parse to float64 (or int64 when ``integer``); missing/non-numeric values raise ImportDataError."""
    _row_error(path, column, "missing value", _blank(s), row_numbers)
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        out = s.astype("float64")
    else:
        text = s.astype("str").str.strip()
        out = pd.to_numeric(text, errors="coerce").astype("float64")
        bad = out.isna()
        if bad.any():
            _row_error(path, column, f"{text[bad].iloc[0]!r} is not a number", bad, row_numbers)
    bad = ~np.isfinite(out)
    if bad.any():
        _row_error(path, column, f"{s[bad].iloc[0]!r} is not a finite number", bad, row_numbers)
    if integer:
        bad = out != np.round(out)
        if bad.any():
            _row_error(path, column, f"{s[bad].iloc[0]!r} is not a whole number", bad, row_numbers)
        return out.astype("int64")
    return out


def most_frequent(keys: pd.Series, values: pd.Series) -> pd.Series:
    """Per key, its most frequent non-null value (ties: the smallest value), indexed by key."""
    df = pd.DataFrame({"k": keys.reset_index(drop=True), "v": values.reset_index(drop=True)}).dropna()
    counts = df.groupby(["k", "v"], sort=False).size().rename("n").reset_index()
    counts = counts.sort_values(["k", "n", "v"], ascending=[True, False, True], kind="stable")
    return counts.drop_duplicates("k").set_index("k")["v"]


def countries_to_iso(raw: pd.Series) -> pd.Series:
    """Map country names/codes to ISO alpha-2; unknown names are kept raw (validation quarantines them)."""
    uniq = pd.unique(raw.dropna())
    mapping = {v: (country_code(v) or str(v).strip()) for v in uniq}
    return raw.map(mapping)


def language_for(countries: pd.Series) -> pd.Series:
    return countries.map(LANGUAGE_BY_COUNTRY).astype(object).where(lambda s: s.notna(), None)


def list_prices(product_ids: pd.Series, unit_prices: pd.Series) -> pd.Series:
    """Median positive unit price per product; fallback median |price|, then 0.01."""
    df = pd.DataFrame({"p": product_ids.reset_index(drop=True), "u": unit_prices.reset_index(drop=True)})
    pos = df[df.u > 0].groupby("p")["u"].median()
    absolute = df.assign(u=df.u.abs()).groupby("p")["u"].median()
    out = pos.reindex(absolute.index).fillna(absolute)
    return out.where(out > 0, 0.01)


# --------------------------------------------------------------------------- building + writing


def build_customers(
    customer_ids: pd.Series,
    times: pd.Series,
    raw_country: pd.Series | None,
    currency: pd.Series | str,
    default_country: str,
) -> pd.DataFrame:
    """Customers from order lines: signup = first line time; country/currency = most frequent."""
    df = pd.DataFrame({"customer_id": customer_ids.reset_index(drop=True), "t": times.reset_index(drop=True)})
    first = df.groupby("customer_id", sort=True)["t"].min()
    out = pd.DataFrame({"customer_id": first.index.astype("str"), "signup_time": first.reset_index(drop=True)})
    if raw_country is not None:
        country = most_frequent(customer_ids, countries_to_iso(raw_country))
        out["country"] = out.customer_id.map(country).fillna(default_country)
    else:
        out["country"] = default_country
    if isinstance(currency, str):
        out["currency"] = currency
    else:
        out["currency"] = out.customer_id.map(most_frequent(customer_ids, currency))
    out["language"] = language_for(out["country"])
    out["acquisition_channel"] = "import"
    for col in ("email_consent", "sms_consent", "push_consent", "global_opt_out"):
        out[col] = False
    out["gender"] = "unknown"
    out["age_band"] = "unknown"
    out["created_at"] = out["signup_time"]
    out["updated_at"] = out["signup_time"]
    return out


def to_contract_table(name: str, df: pd.DataFrame, source: str | Path) -> pa.Table:
    """Conform a frame to the contract and check what the database would reject (nulls, duplicate keys)."""
    tc = contract(name)
    table = tc.conform(pa.Table.from_pandas(df, preserve_index=False))
    for c in tc.columns:
        if not c.nullable and table.column(c.name).null_count:
            raise ImportDataError(f"{source}: derived table {name}: column {c.name} has null values")
    keys = df[list(tc.primary_key)]
    dup = keys.duplicated()
    if dup.any():
        example = keys[dup].iloc[0].to_dict()
        raise ImportDataError(f"{source}: derived table {name}: duplicate primary key {example}")
    return table


def replace_oltp(db: ShopDB, frames: Mapping[str, pd.DataFrame], source: str | Path) -> dict[str, int]:
    """Conform and check every table first, then replace the OLTP contents in one transaction.

    All checking happens before the first write and the replacement is a single
    transaction, so a bad import, or a database failure midway, changes nothing.
    """
    tables = {name: to_contract_table(name, frames[name], source) for name in IMPORT_TABLES}
    db.create_schema()
    return db.replace(tables)


def load_and_report(
    db: ShopDB,
    path: str | Path,
    customers: pd.DataFrame,
    products: pd.DataFrame,
    orders: pd.DataFrame,
    items: pd.DataFrame,
    lines_in: int,
    dropped: int,
    t0: float,
) -> ImportReport:
    """Replace the shop's OLTP contents with the imported tables and report what landed (every importer ends here)."""
    counts = replace_oltp(
        db, {"customers": customers, "products": products, "orders": orders, "order_items": items}, path
    )
    return ImportReport(
        source=str(path),
        lines_in=lines_in,
        lines_dropped_no_customer=dropped,
        customers=counts["customers"],
        orders=counts["orders"],
        cancelled_orders=int((orders.status == "cancelled").sum()),
        order_items=counts["order_items"],
        products=counts["products"],
        first_order_time=orders.order_time.min().to_pydatetime() if len(orders) else None,
        last_order_time=orders.order_time.max().to_pydatetime() if len(orders) else None,
        unknown_countries=int((~customers.country.isin(ISO_COUNTRIES)).sum()),
        seconds=time.perf_counter() - t0,
    )


# --------------------------------------------------------------------------- generic import


def _is_parquet(path: Path) -> bool:
    """Parquet by name, or by magic bytes when the name says neither Parquet nor CSV."""
    name = path.name.lower()
    if name.endswith((".parquet", ".pq", ".parq")):
        return True
    if name.endswith((".csv", ".csv.gz", ".gz", ".txt", ".tsv")):
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == b"PAR1"


def _sep(path: Path) -> str:
    return "\t" if path.name.lower().endswith((".tsv", ".tsv.gz")) else ","


def _read(path: Path, columns: Iterable[str] | None = None) -> pd.DataFrame:
    try:
        if _is_parquet(path):
            return pd.read_parquet(path, columns=list(columns) if columns is not None else None)
        return pd.read_csv(path, sep=_sep(path), dtype="str", keep_default_na=False, na_values=[""], usecols=columns)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ImportDataError(f"{path}: cannot read file: {exc}") from exc


def _header(path: Path) -> list[str]:
    if _is_parquet(path):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    try:
        return list(pd.read_csv(path, sep=_sep(path), dtype="str", nrows=0).columns)
    except Exception as exc:
        raise ImportDataError(f"{path}: cannot read header: {exc}") from exc


def resolve_mapping(path: Path, available: list[str], mapping: Mapping[str, str] | None) -> dict[str, str]:
    """``{canonical: source}`` for every canonical name present; errors name the file and both columns."""
    mapping = dict(mapping or {})
    unknown = sorted(set(mapping) - set(CANONICAL))
    if unknown:
        raise ImportDataError(
            f"{path}: unknown canonical column(s) {', '.join(unknown)} in mapping; "
            f"canonical names are: {', '.join(CANONICAL)}"
        )
    listing = ", ".join(available)
    resolved: dict[str, str] = {}
    for canon in CANONICAL:
        if canon in mapping:
            src = mapping[canon]
            if src not in available:
                kind = "required" if canon in REQUIRED else "optional"
                raise ImportDataError(
                    f"{path}: {kind} column {canon} is mapped to source column {src!r}, which is not "
                    f"in the file; available columns: {listing}"
                )
            resolved[canon] = src
        elif canon in available:
            resolved[canon] = canon
        elif canon in REQUIRED:
            raise ImportDataError(
                f"{path}: required column {canon} is not mapped and the file has no column {canon!r}; "
                f"pass mapping={{{canon!r}: '<source column>'}}; available columns: {listing}"
            )
    return resolved


def _statuses(raw: pd.Series) -> pd.Series:
    text = raw.astype("str").str.strip()
    low = text.str.lower()
    mapped = low.map(STATUS_SYNONYMS)
    return mapped.fillna(text).where(~_blank(raw), "paid")


def import_orders(
    path: str | Path,
    db: ShopDB,
    mapping: Mapping[str, str] | None = None,
    *,
    currency: str = "EUR",
    country: str = "GB",
    tz: str = "UTC",
    date_format: str | None = None,
) -> ImportReport:
    """Replace the shop's OLTP contents with an order export.

    ``mapping`` is ``{canonical: source column}``; canonical names are ``customer_id``,
    ``order_id``, ``order_time``, ``amount`` (required) and ``quantity``, ``product_id``,
    ``category``, ``country``, ``currency``, ``status`` (optional). An unmapped canonical
    name uses a same-named source column when the file has one. Rows sharing an
    ``order_id`` are lines of one order. ``currency``/``country`` are the defaults when the
    file has no such column; ``tz`` is the zone of naive timestamps; ``date_format`` a
    strftime format (default: ISO 8601, else inferred).

    Raises :class:`ImportDataError` (a ValueError) before writing anything when the file
    is unusable.
    """
    t0 = time.perf_counter()
    path = Path(path)
    if currency not in ISO_CURRENCIES:
        raise ValueError(f"currency argument {currency!r} is not an ISO 4217 code")
    default_country = country_code(country)
    if default_country is None or default_country not in ISO_COUNTRIES:
        raise ValueError(f"country argument {country!r} is not a known country")
    if not path.is_file():
        raise FileNotFoundError(f"import file not found: {path}")
    if not _is_parquet(path):
        check_csv(path, _sep(path))
    cols = resolve_mapping(path, _header(path), mapping)
    raw = _read(path, columns=sorted(set(cols.values())))
    lines_in = len(raw)
    if not lines_in:
        raise no_rows(path)
    rows = pd.Series(np.arange(1, lines_in + 1), index=raw.index)

    def label(canon: str) -> str:
        src = cols[canon]
        return repr(src) if src == canon else f"{src!r} ({canon})"

    customer = normalize_ids(raw[cols["customer_id"]])
    keep = customer.notna()
    if not keep.any():
        raise no_customers(path, lines_in, cols["customer_id"])
    dropped = int((~keep).sum())
    raw, customer, rows = raw[keep], customer[keep], rows[keep]

    order_id = normalize_ids(raw[cols["order_id"]])
    _row_error(path, label("order_id"), "missing order id", order_id.isna(), rows)
    order_time = parse_times(raw[cols["order_time"]], path=path, column=label("order_time"),
                             row_numbers=rows, tz=tz, fmt=date_format)  # fmt: skip
    amount = parse_numbers(raw[cols["amount"]], path=path, column=label("amount"), row_numbers=rows)
    if "quantity" in cols:
        quantity = parse_numbers(
            raw[cols["quantity"]], path=path, column=label("quantity"), row_numbers=rows, integer=True
        )
    else:
        quantity = pd.Series(1, index=raw.index, dtype="int64")

    lines = pd.DataFrame(
        {
            "order_id": order_id.astype("str"),
            "customer_id": customer.astype("str"),
            "order_time": order_time,
            "amount": amount,
            "quantity": quantity,
            "row": rows,
        }
    )
    # One order, one customer.
    per_order = lines.groupby("order_id", sort=False)["customer_id"].nunique()
    conflicted = per_order[per_order > 1]
    if len(conflicted):
        oid = conflicted.index[0]
        sample = lines[lines.order_id == oid]
        raise ImportDataError(
            f"{path}: column {label('customer_id')}: order {oid!r} has lines of different customers "
            f"({', '.join(sorted(sample.customer_id.unique())[:3])}) at data rows "
            f"{', '.join(str(r) for r in sample.row.head(5))}; {len(conflicted):,} such order(s)"
        )

    lines["currency"] = (
        raw[cols["currency"]].astype("str").str.strip().str.upper().where(~_blank(raw[cols["currency"]]), currency)
        if "currency" in cols
        else currency
    )
    lines["status"] = _statuses(raw[cols["status"]]) if "status" in cols else "paid"
    category = (
        raw[cols["category"]].astype("str").str.strip().where(~_blank(raw[cols["category"]]))
        if "category" in cols
        else pd.Series(None, index=raw.index, dtype="str")
    )
    product = (
        normalize_ids(raw[cols["product_id"]])
        if "product_id" in cols
        else pd.Series(None, index=raw.index, dtype="str")
    )
    placeholder = ("cat:" + category).where(category.notna(), "UNKNOWN")
    lines["product_id"] = product.where(product.notna(), placeholder).astype("str")
    lines["category"] = category.where(category.notna(), "UNKNOWN").astype("str")
    lines["unit_price"] = np.where(quantity != 0, amount / quantity.where(quantity != 0, 1), amount)

    # Orders: first line decides status/currency; time = earliest line.
    g = lines.groupby("order_id", sort=False)
    orders = pd.DataFrame(
        {
            "customer_id": g["customer_id"].first(),
            "order_time": g["order_time"].min(),
            "status": g["status"].first(),
            "currency": g["currency"].first(),
            "gross_amount": g["amount"].sum(),
        }
    ).reset_index()
    orders["discount_amount"] = 0.0
    orders["coupon_code"] = None
    orders["payment_method"] = "unknown"
    orders["created_at"] = orders["order_time"]
    orders["updated_at"] = orders["order_time"]

    lines["ot"] = lines.order_id.map(orders.set_index("order_id")["order_time"])
    lines["line_no"] = lines.groupby("order_id", sort=False).cumcount()
    items = pd.DataFrame(
        {
            "order_id": lines.order_id,
            "line_no": lines.line_no,
            "product_id": lines.product_id,
            "quantity": lines.quantity,
            "unit_price": lines.unit_price,
            "created_at": lines.ot,
            "updated_at": lines.ot,
        }
    )

    pg = lines.groupby("product_id", sort=True)
    first_seen = pg["order_time"].min()
    products = pd.DataFrame({"product_id": first_seen.index.astype("str")})
    products["category"] = products.product_id.map(most_frequent(lines.product_id, lines.category))
    products["brand"] = None
    products["list_price"] = products.product_id.map(list_prices(lines.product_id, lines.unit_price))
    products["currency"] = products.product_id.map(most_frequent(lines.product_id, lines.currency))
    products["created_at"] = products.product_id.map(first_seen)
    products["updated_at"] = products["created_at"]

    customers = build_customers(
        lines.customer_id,
        lines.order_time,
        raw[cols["country"]].where(~_blank(raw[cols["country"]])) if "country" in cols else None,
        lines.currency if "currency" in cols else currency,
        default_country,
    )
    return load_and_report(db, path, customers, products, orders, items, lines_in, dropped, t0)
