"""What an audience becomes outside the lake: pseudonymous ids, the CSV export, the CRM table.

How a date's files are written and committed as one set is :mod:`.sets`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import secrets
from datetime import date

import polars as pl

from propensity.config import Settings
from propensity.scoring import REASON_COLUMNS

log = logging.getLogger(__name__)

EXPORT_COLUMNS = ["pseudo_id", "channel", "offer", "score", *REASON_COLUMNS]


def resolve_salt(settings: Settings) -> str:
    """The pseudonymisation salt: configuration/env first, else a per-installation secret file.

    The file is generated once under ``<home>/secrets`` (mode 600) so a fresh demo works
    without setup while the salt still never lives in code; production sets
    ``PROPENSITY_AUDIENCES__SALT`` from its secret store.
    """
    if settings.audiences.salt:
        return settings.audiences.salt
    path = settings.home_dir / "secrets" / "audience_salt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(secrets.token_hex(32))
        tmp.chmod(0o600)
        tmp.replace(path)
        log.warning("generated a pseudonymisation salt in %s; set PROPENSITY_AUDIENCES__SALT in production", path)
    return path.read_text().strip()


def pseudonymize(ids: pl.Series, salt: str) -> pl.Series:
    """Salted SHA-256 of each customer id (hex): stable per salt, irreversible without it."""
    pre = salt.encode() + b":"
    return pl.Series("pseudo_id", [hashlib.sha256(pre + str(v).encode()).hexdigest() for v in ids], pl.String)


def product_columns(n: int) -> list[str]:
    """The export columns of an ``offer.products: recommended`` audience, best product first."""
    return [f"product_{i + 1}" for i in range(n)]


def csv_bytes(members: pl.DataFrame, products: list[str] | None = None) -> bytes:
    """The treatment group as CSV: pseudonymous id, channel, offer, score (6 d.p.), reason codes,
    and with ``products`` those product columns (a recommended offer)."""
    columns = EXPORT_COLUMNS + (products or [])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in members.select(columns).iter_rows():
        pid, channel, offer, score, *rest = row
        w.writerow([pid, channel, offer, f"{score:.6f}", *[r or "" for r in rest]])
    return buf.getvalue().encode()


def write_crm(url: str, day: str, members: pl.DataFrame) -> int:
    """Replace the date's rows in ``audience_members`` with ``members`` (treatment only), in one
    transaction: the CRM holds the date's whole set, like the exports.

    The CRM lives inside the shop, so next to the pseudonymous id it gets the customer id
    it needs to send.
    """
    import sqlalchemy as sa

    meta = sa.MetaData()
    table = sa.Table(
        "audience_members",
        meta,
        sa.Column("audience", sa.String(64), primary_key=True),
        sa.Column("dt", sa.Date, primary_key=True),
        sa.Column("pseudo_id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(64), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("offer", sa.String(64), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        *[sa.Column(c, sa.String(128)) for c in REASON_COLUMNS],
    )
    engine = sa.create_engine(url)
    try:
        meta.create_all(engine, checkfirst=True)
        rows = members.select(table.columns.keys()).to_dicts()
        with engine.begin() as conn:
            conn.execute(table.delete().where(table.c.dt == date.fromisoformat(day)))
            if rows:
                conn.execute(table.insert(), rows)
    finally:
        engine.dispose()
    return len(members)
