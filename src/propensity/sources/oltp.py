"""The shop's OLTP database (SQLite by default, PostgreSQL when configured).

Tables are created from the contracts. Loads use the driver's bulk path (``executemany``
on SQLite, ``COPY`` on PostgreSQL) because ORM-style inserts are the bottleneck of a
simulated year; extraction is incremental on each table's watermark column.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import sqlalchemy as sa

from propensity.contracts import OLTP_TABLES, TableContract, contract

_SA_TYPES: dict[str, Any] = {
    "string": sa.Text,
    "int64": sa.BigInteger,
    "float64": sa.Float,
    "bool": sa.Boolean,
    "timestamp": lambda: sa.DateTime(timezone=True),
    "date": sa.Date,
}

SQLITE_TS = "%Y-%m-%d %H:%M:%S.%f"


def sa_table(tc: TableContract, metadata: sa.MetaData) -> sa.Table:
    """The source-side table: keys enforced, everything else nullable.

    Real shop databases let dirt in (null ids, orphans); enforcing the contract is the
    validation stage's job, so the source must be able to hold what real sources hold.
    """
    cols = [sa.Column(c.name, _SA_TYPES[c.dtype](), primary_key=c.name in tc.primary_key) for c in tc.columns]
    return sa.Table(tc.name, metadata, *cols, sa.Index(f"ix_{tc.name}_{tc.watermark}", tc.watermark))


class ShopDB:
    """Bulk load and incremental extraction for the OLTP tables."""

    def __init__(self, url: str) -> None:
        self.url = url
        parsed = sa.engine.make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine = sa.create_engine(url)
        self.metadata = sa.MetaData()
        self.tables = {name: sa_table(contract(name), self.metadata) for name in OLTP_TABLES}

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    def create_schema(self, drop: bool = False) -> None:
        if drop:
            self.metadata.drop_all(self.engine)
        self.metadata.create_all(self.engine)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _raw(self) -> Iterator[Any]:
        conn = self.engine.raw_connection()
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def load(self, name: str, data: pa.Table | pd.DataFrame) -> int:
        """Append rows (conformed to the contract) in one transaction; returns the row count."""
        return self.replace({name: data}, truncate=False)[name]

    def replace(self, data: Mapping[str, pa.Table | pd.DataFrame], truncate: bool = True) -> dict[str, int]:
        """Empty every OLTP table and load ``data`` in ONE transaction (append when not ``truncate``).

        Everything is conformed to the contracts before the transaction starts, so a bad
        table changes nothing, and a failing database rolls back to the previous contents.
        """
        tables = {}
        for name, frame in data.items():
            table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
            tables[name] = contract(name).conform(table)
        with self._raw() as conn:
            cur = conn.cursor()
            if not self.is_sqlite:
                cur.execute("SET TIME ZONE 'UTC'")
            if truncate:
                for name in OLTP_TABLES:
                    cur.execute(f"DELETE FROM {name}")
            for name, table in tables.items():
                if table.num_rows:
                    self._insert(cur, contract(name), table)
        return {name: t.num_rows for name, t in tables.items()}

    def _columns_for_driver(self, tc: TableContract, table: pa.Table) -> list[list[Any]]:
        """Columns as driver-ready Python lists; timestamps as UTC text both drivers accept."""
        df = pl.from_arrow(table)
        assert isinstance(df, pl.DataFrame)
        exprs = []
        for c in tc.columns:
            if c.dtype == "timestamp":
                exprs.append(pl.col(c.name).dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%d %H:%M:%S%.6f"))
            elif c.dtype == "date":
                exprs.append(pl.col(c.name).dt.strftime("%Y-%m-%d"))
            else:
                exprs.append(pl.col(c.name))
        df = df.select(exprs)
        return [df.get_column(c.name).to_list() for c in tc.columns]

    def _insert(self, cur: Any, tc: TableContract, table: pa.Table) -> None:
        """Bulk insert: ``executemany`` on SQLite, ``COPY`` on PostgreSQL."""
        cols = self._columns_for_driver(tc, table)
        names = ", ".join(tc.names)
        if self.is_sqlite:
            sql = f"INSERT INTO {tc.name} ({names}) VALUES ({', '.join('?' * len(tc.names))})"
            cur.executemany(sql, list(zip(*cols, strict=True)))
            return
        buf = io.StringIO()
        writer = csv.writer(buf)
        for row in zip(*cols, strict=True):
            writer.writerow(["\\N" if v is None else v for v in row])
        buf.seek(0)
        cur.copy_expert(f"COPY {tc.name} ({names}) FROM STDIN WITH (FORMAT csv, NULL '\\N')", buf)

    def extract(self, name: str, start: datetime | None = None, end: datetime | None = None) -> pa.Table:
        """Rows whose watermark lies in ``[start, end)``, in contract types, ordered by key."""
        tc = contract(name)
        t = self.tables[name]
        query = sa.select(*[t.c[n] for n in tc.names])
        wm = t.c[tc.watermark]
        if start is not None:
            query = query.where(wm >= _bind_ts(start, self.is_sqlite))
        if end is not None:
            query = query.where(wm < _bind_ts(end, self.is_sqlite))
        query = query.order_by(*[t.c[k] for k in tc.primary_key])
        with self.engine.connect() as conn:
            rows = conn.execute(query).fetchall()
        return rows_to_arrow(tc, rows)

    def count(self, name: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(self.tables[name])).scalar_one()

    def truncate(self, names: list[str] | None = None) -> None:
        with self.engine.begin() as conn:
            for name in names or OLTP_TABLES:
                conn.execute(self.tables[name].delete())


def _bind_ts(ts: datetime, sqlite: bool) -> Any:
    ts = pd.Timestamp(ts)
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return ts.strftime(SQLITE_TS) if sqlite else ts.to_pydatetime()


def rows_to_arrow(tc: TableContract, rows: list[Any]) -> pa.Table:
    """Driver rows to an Arrow table typed by the contract (naive timestamps are UTC).

    Both drivers hand back ``datetime``/``date`` objects (SQLAlchemy parses SQLite's text), which
    Arrow converts in C; only values it refuses (text in another layout) go through pandas'
    lenient parser, which was a third of collecting a day."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in tc.columns]
    arrays = []
    for c, values in zip(tc.columns, columns, strict=True):
        if c.dtype in ("timestamp", "date"):
            try:
                arrays.append(pa.array(values, type=c.arrow_type))
                continue
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                pass
        if c.dtype == "timestamp":
            s = pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="mixed")
            arrays.append(pa.array(s, type=c.arrow_type, from_pandas=True))
        elif c.dtype == "date":
            s = pd.to_datetime(pd.Series(values, dtype=object)).dt.date
            arrays.append(pa.array(s, type=c.arrow_type, from_pandas=True))
        else:
            arrays.append(pa.array(values, type=c.arrow_type))
    return pa.Table.from_arrays(arrays, schema=tc.arrow_schema)
