"""A date's audiences published as one set: every file first, one commit manifest per store last.

A marketer's tools read a date's exports together (dedup, budgets, the CRM send), so a
date must never show the new cross-sell beside yesterday's win-back. The lake and the
export store each get **one** manifest per date, written after every data file of every
audience of that date:

* lake: ``audiences/dt=D/audience=<name>.<sha>.parquet`` and ``audiences/dt=D/_manifest.json``
  (a normal lake partition, so :meth:`Lake.read_partition` reads and verifies the whole set);
* exports: ``dt=D/audience=<name>/<name>_<D>_<sha>.csv`` and ``dt=D/manifest.json``.

Data files are content-addressed, so writing the new set never touches the files the old
manifests name; files no manifest names are removed only after both commits. A crash at
any write therefore leaves each store showing the old set or the new one, and a rerun on
the same inputs converges both (and the CRM table, one transaction per date) byte for
byte. Two stores cannot share one atomic write, so each has its own commit, in a fixed
order (:func:`publish_set`); both manifests carry the same ``set_id`` so a reader can
check that lake and exports agree.

Names and paths are checked before the first write, so an audience whose export path
does not fit the file system fails with nothing written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from propensity.errors import LakeIntegrityError, RequestError
from propensity.lake import MANIFEST as LAKE_MANIFEST
from propensity.lake import Lake, parquet_bytes
from propensity.storage import LocalStore, Store
from propensity.zones import AUDIENCES as ZONE

EXPORT_MANIFEST = "manifest.json"
S3_MAX_KEY_BYTES = 1024


@dataclass
class AudienceFiles:
    """One audience's part of a set: all members (lake), the treatment CSV (export), its manifest entry."""

    name: str
    members: pl.DataFrame
    csv: bytes
    doc: dict[str, Any]


def lake_base(day: str) -> str:
    return f"{ZONE}/dt={day}"


def export_base(day: str) -> str:
    return f"dt={day}"


def csv_name(name: str, day: str, data: bytes) -> str:
    return f"audience={name}/{name}_{day}_{hashlib.sha256(data).hexdigest()[:12]}.csv"


def check_paths(lake: Lake, exports: Store, day: str, names: list[str]) -> None:
    """Refuse, before any write, names whose lake or export paths the store cannot hold."""
    for name in names:
        probe = csv_name(name, day, b"")
        for store, key in (
            (exports, f"{export_base(day)}/{probe}"),
            (lake.store, f"{lake_base(day)}/audience={name}.{'0' * 12}.parquet"),
        ):
            problem = path_problem(store, key)
            if problem:
                raise RequestError(f"audience {name!r}: export path {key!r} {problem}; shorten the audience name")


def path_problem(store: Store, key: str) -> str | None:
    """Why ``key`` cannot be written to ``store`` (component or path too long), or None."""
    if isinstance(store, LocalStore):
        path = Path(store.root) / key
        limit = _name_max(Path(store.root))
        for part in key.split("/"):
            if len(part.encode()) > limit:
                return f"has a component of {len(part.encode())} bytes (the file system allows {limit})"
        if len(str(path).encode()) >= 4096:
            return f"is {len(str(path).encode())} bytes long (the file system allows 4095)"
        return None
    full = f"{getattr(store, 'prefix', '')}/{key}".lstrip("/")
    if len(full.encode()) > S3_MAX_KEY_BYTES:
        return f"is {len(full.encode())} bytes long (object keys allow {S3_MAX_KEY_BYTES})"
    return None


def _name_max(root: Path) -> int:
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def set_id(day: str, parts: list[AudienceFiles], payloads: list[bytes]) -> str:
    """Digest of the whole set (``payloads``: each part's members as Parquet): the same inputs
    give the same id in both manifests."""
    h = hashlib.sha256(day.encode())
    for p, payload in sorted(zip(parts, payloads, strict=True), key=lambda pair: pair[0].name):
        h.update(p.name.encode() + hashlib.sha256(payload).digest())
        h.update(hashlib.sha256(p.csv).digest())
    return h.hexdigest()[:16]


def publish_set(
    lake: Lake,
    exports: Store,
    day: str,
    parts: list[AudienceFiles],
    deliver: Callable[[], None] | None = None,
) -> dict[str, str]:
    """Write every audience of ``day``; commit the lake; ``deliver`` (the CRM transaction); commit
    the exports; clean up.

    The lake is the record of what was sent (the frequency cap and measurement read it), so
    it commits first: a crash between the commits leaves the lake ahead of the exports,
    which can only over-suppress, never contact someone twice unrecorded.

    Returns the export URI of each audience's CSV.
    """
    check_paths(lake, exports, day, [p.name for p in parts])
    payloads = [parquet_bytes(p.members.to_arrow()) for p in parts]  # encoded once: digest and file
    sid = set_id(day, parts, payloads)
    lbase, ebase = lake_base(day), export_base(day)
    lake_files, export_entries, uris = [], {}, {}
    for p, payload in zip(parts, payloads, strict=True):
        digest = hashlib.sha256(payload).hexdigest()
        name = f"audience={p.name}.{digest[:12]}.parquet"  # names hold no dots: unambiguous
        lake.store.put_bytes(f"{lbase}/{name}", payload)
        lake_files.append({"name": name, "rows": p.members.height, "bytes": len(payload), "sha256": digest})
        cname = csv_name(p.name, day, p.csv)
        exports.put_bytes(f"{ebase}/{cname}", p.csv)
        export_entries[p.name] = {
            **p.doc,
            "file": cname,
            "sha256": hashlib.sha256(p.csv).hexdigest(),
            "bytes": len(p.csv),
        }
        uris[p.name] = f"{exports.uri}/{ebase}/{cname}"
    common = {"dt": day, "set_id": sid, "audiences": sorted(export_entries)}
    lake_doc = {
        **common,
        "zone": ZONE,
        "table": "",
        "partition": {"dt": day},
        "row_count": sum(f["rows"] for f in lake_files),
        "files": lake_files,
        "manifests": {p.name: p.doc for p in parts},
    }
    lake.store.put_text(f"{lbase}/{LAKE_MANIFEST}", _dump(lake_doc))
    if deliver is not None:
        deliver()
    exports.put_text(f"{ebase}/{EXPORT_MANIFEST}", _dump({**common, "exports": export_entries}))
    _remove_unlisted(lake.store, lbase, {f["name"] for f in lake_files} | {LAKE_MANIFEST})
    _remove_unlisted(exports, ebase, {e["file"] for e in export_entries.values()} | {EXPORT_MANIFEST})
    return uris


def _dump(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=True, default=str)


def _remove_unlisted(store: Store, base: str, keep: set[str]) -> None:
    store.delete([k for k in store.list(base + "/") if k[len(base) + 1 :] not in keep])


# reading ------------------------------------------------------------------------------


def read_lake_set(lake: Lake, day: str) -> dict[str, Any] | None:
    """The committed lake manifest of ``day``'s set, or None when nothing is published."""
    return lake.manifest(ZONE, "", {"dt": day})


def read_set_members(lake: Lake, day: str, columns: list[str] | None = None) -> pl.DataFrame | None:
    """Every member of every audience of ``day`` (verified against the manifest), or None."""
    t = lake.read_partition(ZONE, "", {"dt": day}, columns=columns)
    return pl.from_arrow(t) if t is not None else None  # type: ignore[return-value]


def read_export_set(exports: Store, day: str) -> dict[str, Any] | None:
    """The committed export manifest of ``day``: one entry per audience, or None."""
    key = f"{export_base(day)}/{EXPORT_MANIFEST}"
    if not exports.exists(key):
        return None
    raw = exports.get_bytes(key)
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LakeIntegrityError(f"exports {exports.uri}/{key}: manifest is not valid JSON ({exc})") from exc


def read_export(exports: Store, day: str, audience: str) -> bytes:
    """One audience's committed CSV, checked against the sha256 its manifest records."""
    doc = read_export_set(exports, day)
    if doc is None or audience not in doc["exports"]:
        raise RequestError(f"audience {audience!r} at dt={day} has no committed export")
    entry = doc["exports"][audience]
    key = f"{export_base(day)}/{entry['file']}"
    data = exports.get_bytes(key)
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise LakeIntegrityError(f"exports {exports.uri}/{key}: sha256 differs from dt={day}/{EXPORT_MANIFEST}")
    return data
