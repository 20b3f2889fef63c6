"""Publishing an audience: lake Parquet, pseudonymous CSV export, manifest last, CRM table.

Atomicity follows the lake's rule: data files are content-addressed (the digest is in
the name) and written first, the manifest that names them is written last, and files no
manifest names are removed afterwards. An interrupted run therefore leaves the previous
export (or nothing) visible, never a half-written one, and a rerun on the same inputs
writes byte-identical files.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import secrets
from datetime import date
from typing import Any

import polars as pl

from propensity.config import Settings
from propensity.scoring import REASON_COLUMNS
from propensity.storage import Store

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
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


def csv_bytes(members: pl.DataFrame) -> bytes:
    """The treatment group as CSV: pseudonymous id, channel, offer, score (6 d.p.), reason codes."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(EXPORT_COLUMNS)
    for row in members.select(EXPORT_COLUMNS).iter_rows():
        pid, channel, offer, score, *reasons = row
        w.writerow([pid, channel, offer, f"{score:.6f}", *[r or "" for r in reasons]])
    return buf.getvalue().encode()


def export_prefix(audience: str, day: str) -> str:
    return f"audience={audience}/dt={day}"


def publish_export(store: Store, audience: str, day: str, data: bytes, manifest: dict[str, Any]) -> str:
    """Write the CSV (content-addressed), then the manifest naming it, then drop stale files."""
    base = export_prefix(audience, day)
    digest = hashlib.sha256(data).hexdigest()
    name = f"{audience}_{day}_{digest[:12]}.csv"
    store.put_bytes(f"{base}/{name}", data)
    doc = {**manifest, "file": name, "sha256": digest, "bytes": len(data)}
    store.put_text(f"{base}/{MANIFEST}", json.dumps(doc, indent=2, sort_keys=True, default=str))
    keep = {f"{base}/{name}", f"{base}/{MANIFEST}"}
    store.delete([k for k in store.list(base + "/") if k not in keep])
    return f"{store.uri}/{base}/{name}"


def read_export_manifest(store: Store, audience: str, day: str) -> dict[str, Any] | None:
    key = f"{export_prefix(audience, day)}/{MANIFEST}"
    return json.loads(store.get_text(key)) if store.exists(key) else None


def write_crm(url: str, day: str, members: pl.DataFrame, audiences: list[str]) -> int:
    """Replace the date's rows of ``audiences`` in ``audience_members`` (treatment only), in one transaction.

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
            conn.execute(table.delete().where(table.c.dt == date.fromisoformat(day), table.c.audience.in_(audiences)))
            if rows:
                conn.execute(table.insert(), rows)
    finally:
        engine.dispose()
    return len(members)
