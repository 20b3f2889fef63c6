"""The lake: zones of Parquet partitions, each made visible by a manifest written last.

A partition is ``<zone>/<table>/<k=v>/.../part-*.parquet`` plus ``_manifest.json``.
Object stores have no atomic rename, so the manifest is the commit point on every
backend: data files are written first under content-addressed names, then the
manifest listing exactly those files, then files the manifest does not list are
removed. Readers only read partitions that have a manifest and only the files it
lists, so a crashed or concurrent write is never half-visible, and re-writing a
partition with the same rows produces the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from propensity.storage import Store, open_store

MANIFEST = "_manifest.json"
ROWS_PER_FILE = 2_000_000


def partition_path(zone: str, table: str, parts: Mapping[str, str]) -> str:
    segs = [zone, table, *(f"{k}={v}" for k, v in parts.items())]
    return "/".join(s for s in segs if s)  # zones like features/ have no table level


def parquet_bytes(table: pa.Table) -> bytes:
    """Deterministic Parquet encoding (no timestamps in metadata, fixed codec)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True, use_dictionary=True)
    return buf.getvalue()


def table_hash(table: pa.Table) -> str:
    """Digest of a table's schema and content, independent of how it is chunked."""
    h = hashlib.sha256(str(table.schema).encode())
    h.update(parquet_bytes(table.combine_chunks()))
    return h.hexdigest()[:16]


@dataclass
class Lake:
    store: Store

    @classmethod
    def open(cls, uri: str, endpoint_url: str | None = None) -> Lake:
        return cls(open_store(uri, endpoint_url))

    @property
    def uri(self) -> str:
        return self.store.uri

    # writing --------------------------------------------------------------------------

    def write_partition(
        self,
        zone: str,
        table: str,
        parts: Mapping[str, str],
        data: pa.Table,
        manifest: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Atomically replace one partition with ``data``; returns the manifest written."""
        base = partition_path(zone, table, parts)
        files = []
        for i, start in enumerate(range(0, max(data.num_rows, 1), ROWS_PER_FILE)):
            chunk = data.slice(start, ROWS_PER_FILE)
            payload = parquet_bytes(chunk)
            digest = hashlib.sha256(payload).hexdigest()
            name = f"part-{i:05d}-{digest[:12]}.parquet"
            self.store.put_bytes(f"{base}/{name}", payload)
            files.append({"name": name, "rows": chunk.num_rows, "bytes": len(payload), "sha256": digest})
        doc = {
            "zone": zone,
            "table": table,
            "partition": dict(parts),
            "row_count": data.num_rows,
            "files": files,
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **(manifest or {}),
        }
        self.store.put_text(f"{base}/{MANIFEST}", json.dumps(doc, indent=2, sort_keys=True, default=str))
        keep = {f"{base}/{f['name']}" for f in files} | {f"{base}/{MANIFEST}"}
        stale = [k for k in self.store.list(base + "/") if k not in keep and "/" not in k[len(base) + 1 :]]
        self.store.delete(stale)
        return doc

    def delete_partition(self, zone: str, table: str, parts: Mapping[str, str]) -> None:
        """Unpublish a partition: the manifest goes first, so readers stop seeing it at once."""
        base = partition_path(zone, table, parts)
        self.store.delete([f"{base}/{MANIFEST}"])
        self.store.delete(self.store.list(base + "/"))

    # reading --------------------------------------------------------------------------

    def manifest(self, zone: str, table: str, parts: Mapping[str, str]) -> dict[str, Any] | None:
        key = f"{partition_path(zone, table, parts)}/{MANIFEST}"
        if not self.store.exists(key):
            return None
        return json.loads(self.store.get_text(key))

    def partitions(self, zone: str, table: str) -> list[dict[str, str]]:
        """Visible partitions (those with a manifest), sorted by their values."""
        prefix = "/".join(s for s in (zone, table) if s) + "/"
        found = []
        for key in self.store.list(prefix):
            if not key.endswith("/" + MANIFEST):
                continue
            segs = key[len(prefix) : -len(MANIFEST) - 1].split("/")
            if all("=" in s for s in segs):
                found.append(dict(s.split("=", 1) for s in segs))
        return sorted(found, key=lambda p: tuple(p.values()))

    def files(self, zone: str, table: str, parts: Mapping[str, str]) -> list[str]:
        """Paths (in :attr:`Store.arrow_fs`) of the files a partition's manifest lists; [] if unpublished."""
        return self._files(zone, table, parts)

    def _files(self, zone: str, table: str, parts: Mapping[str, str]) -> list[str]:
        doc = self.manifest(zone, table, parts)
        if doc is None:
            return []
        base = partition_path(zone, table, parts)
        return [self.store.arrow_path(f"{base}/{f['name']}") for f in doc["files"]]

    def read_partition(
        self, zone: str, table: str, parts: Mapping[str, str], columns: list[str] | None = None
    ) -> pa.Table | None:
        files = self._files(zone, table, parts)
        if not files:
            return None
        return pq.read_table(files, filesystem=self.store.arrow_fs, columns=columns, partitioning=None)

    def read_table(
        self,
        zone: str,
        table: str,
        columns: list[str] | None = None,
        where: Iterable[Mapping[str, str]] | None = None,
        schema: pa.Schema | None = None,
    ) -> pa.Table | None:
        """Concatenate the visible partitions (all, or those in ``where``).

        Returns None when nothing is visible and no ``schema`` is given, else an empty table.
        """
        chosen = list(where) if where is not None else self.partitions(zone, table)
        files = [f for p in chosen for f in self._files(zone, table, p)]
        if not files:
            return schema.empty_table() if schema is not None else None
        dataset_schema = schema or pq.read_schema(files[0], filesystem=self.store.arrow_fs)
        dataset = pq.ParquetDataset(files, filesystem=self.store.arrow_fs, schema=dataset_schema, partitioning=None)
        return dataset.read(columns=columns)

    def write_json(self, key: str, doc: Any) -> None:
        self.store.put_text(key, json.dumps(doc, indent=2, sort_keys=True, default=str))

    def read_json(self, key: str) -> Any:
        return json.loads(self.store.get_text(key))
