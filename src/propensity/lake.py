"""The lake: zones of Parquet partitions, each made visible by a manifest written last.

A partition is ``<zone>/<table>/<k=v>/.../part-*.parquet`` plus ``_manifest.json``.
Object stores have no atomic rename, so the manifest is the commit point on every
backend: data files are written first under content-addressed names, then the
manifest listing exactly those files, then files the manifest does not list are
removed. Readers only read partitions that have a manifest and only the files it
lists, so a crashed or concurrent write is never half-visible, and re-writing a
partition with the same rows produces the same bytes.

Readers also hold the store to what the manifest promised. Every file read is checked
against its manifest entry: the size (known from opening the file, no extra request) and
the row count (the Parquet footer, read anyway); with ``checksums`` also the sha256, which
costs reading every byte of the file. A file swapped, truncated or deleted behind the
manifest's back, or a manifest that is not one, raises :class:`LakeIntegrityError` naming
the zone, table, partition and file, instead of being read as if it were what was written.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from propensity.errors import LakeIntegrityError
from propensity.storage import Store, open_store

T = TypeVar("T")

MANIFEST = "_manifest.json"
ROWS_PER_FILE = 2_000_000


def partition_path(zone: str, table: str, parts: Mapping[str, str]) -> str:
    segs = [zone, table, *(f"{k}={v}" for k, v in parts.items())]
    return "/".join(s for s in segs if s)  # zones like features/ have no table level


def split_key(prefix: str, key: str) -> tuple[str, str] | None:
    """``(partition path, file name)`` of a store key under ``prefix`` that lies in a
    ``k=v[/k=v...]`` partition; None for any other key (zone-level files, ``_shards/``...)."""
    path, _, name = key[len(prefix) :].rpartition("/")
    if not path or not all("=" in seg for seg in path.split("/")):
        return None
    return path, name


def partition_values(path: str) -> dict[str, str]:
    """``{"task": "churn", "snapshot": "2025-01-01"}`` from ``task=churn/snapshot=2025-01-01``."""
    return dict(seg.split("=", 1) for seg in path.split("/"))


def describe(zone: str, table: str, parts: Mapping[str, str], file: str) -> str:
    """Where a lake object is, in words an operator can search for (zones like features/ have no table)."""
    partition = "/".join(f"{k}={v}" for k, v in parts.items())
    names = [f"lake zone {zone}", f"table {table}" if table else "", f"partition {partition}", f"file {file}"]
    return ", ".join(n for n in names if n)


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def manifest_problem(doc: Any) -> str | None:
    """What makes ``doc`` not a manifest a reader can trust, or None.

    Readers take a file list, sizes and row counts from a manifest; a document without them
    (or naming files outside its partition) would otherwise surface later as a KeyError.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
        return "not a manifest: it has no list of files"
    for entry in doc["files"]:
        if not isinstance(entry, dict) or not all(_count(entry.get(k)) for k in ("rows", "bytes")):
            return f"not a manifest: file entry {entry!r:.80} has no row count or size"
        name = entry.get("name")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            return f"not a manifest: file entry {entry!r:.80} does not name a file of its partition"
    total = sum(entry["rows"] for entry in doc["files"])
    if "row_count" in doc and doc["row_count"] != total:
        return f"row_count {doc['row_count']!r} is not the sum of its files' rows ({total})"
    return None


def parse_manifest(data: bytes, where: str) -> dict[str, Any]:
    """A manifest's JSON, or :class:`LakeIntegrityError` naming ``where`` (never a bare codec error)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LakeIntegrityError(f"{where}: not a readable manifest ({exc})") from None
    problem = manifest_problem(doc)
    if problem:
        raise LakeIntegrityError(f"{where}: {problem}")
    return doc


#: the keys of a manifest's file entry that :class:`DataFile` holds itself
_ENTRY_KEYS = frozenset({"name", "rows", "bytes", "sha256"})


@dataclass(frozen=True)
class DataFile:
    """One file a manifest lists, with what the manifest promised about it."""

    where: str  #: :func:`describe` of the file
    path: str  #: in :attr:`Store.arrow_fs`
    rows: int
    size: int
    sha256: str | None
    #: what the writer recorded about the file besides the above (:meth:`Lake.write_files`)
    meta: Mapping[str, Any] = field(default_factory=dict)

    def error(self, problem: str) -> LakeIntegrityError:
        return LakeIntegrityError(f"{self.where}: {problem}")


# pyarrow reports a malformed footer or page as OSError (thrift), like a dropped connection;
# only the former is a verdict on the file, the latter must stay retryable
_CORRUPT = re.compile(r"thrift|page header|magic bytes|corrupt|out of specification|decompress|deserializ", re.I)


def _is_corrupt(exc: BaseException) -> bool:
    if isinstance(exc, pa.ArrowInvalid):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and bool(_CORRUPT.search(str(exc)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: cast where the type differs, nulls where absent
    (what a Parquet dataset read with one schema does for files written over time)."""
    if table.schema.equals(schema):
        return table
    cols = [
        table.column(f.name).cast(f.type) if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(cols, schema=schema)


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
    """The zones over ``store``. With ``checksums``, reads also verify each file's sha256: it
    catches a same-size rewrite, at the price of reading whole files even for one column."""

    store: Store
    checksums: bool = False

    @classmethod
    def open(cls, uri: str, endpoint_url: str | None = None) -> Lake:
        return cls(open_store(uri, endpoint_url))

    @property
    def uri(self) -> str:
        return self.store.uri

    @property
    def io_threads(self) -> int:
        """Partitions or files read or written at once (the store's :attr:`~Store.io_threads`)."""
        return self.store.io_threads

    # writing --------------------------------------------------------------------------

    def write_partition(
        self,
        zone: str,
        table: str,
        parts: Mapping[str, str],
        data: pa.Table,
        manifest: Mapping[str, Any] | None = None,
        existing: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Atomically replace one partition with ``data``; returns the manifest written.

        ``existing`` is the partition's keys from a listing the caller made for many partitions
        at once (:meth:`listing`); without it the partition is listed after the commit, to
        remove the files the new manifest no longer names."""
        chunks = [(data.slice(start, ROWS_PER_FILE), {}) for start in range(0, max(data.num_rows, 1), ROWS_PER_FILE)]
        return self.write_files(zone, table, parts, chunks, manifest, existing)

    def write_files(
        self,
        zone: str,
        table: str,
        parts: Mapping[str, str],
        chunks: Iterable[tuple[pa.Table, Mapping[str, Any]]],
        manifest: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        existing: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """:meth:`write_partition` with the caller's split into files: each chunk is one file,
        and its mapping is stored in the file's manifest entry (read back as :attr:`DataFile.meta`).

        ``chunks`` may be a generator: each file is written before the next chunk is made, so
        a partition larger than memory can be written a piece at a time. ``manifest`` may be
        a function, called after the last chunk (for what the chunks' making found out)."""
        base = partition_path(zone, table, parts)
        files = []
        rows = 0
        for i, (chunk, meta) in enumerate(chunks):
            payload = parquet_bytes(chunk)
            digest = hashlib.sha256(payload).hexdigest()
            name = f"part-{i:05d}-{digest[:12]}.parquet"
            self.store.put_bytes(f"{base}/{name}", payload)
            files.append({**meta, "name": name, "rows": chunk.num_rows, "bytes": len(payload), "sha256": digest})
            rows += chunk.num_rows
        extra = manifest() if callable(manifest) else manifest
        doc = {
            "zone": zone,
            "table": table,
            "partition": dict(parts),
            "row_count": rows,
            "files": files,
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        self.store.put_text(f"{base}/{MANIFEST}", json.dumps(doc, indent=2, sort_keys=True, default=str))
        keep = {f"{base}/{f['name']}" for f in files} | {f"{base}/{MANIFEST}"}
        listed = self.store.list(base + "/") if existing is None else existing
        stale = [k for k in listed if k not in keep and "/" not in k[len(base) + 1 :]]
        if stale:
            self.store.delete(stale)
        return doc

    def delete_partition(
        self, zone: str, table: str, parts: Mapping[str, str], existing: Iterable[str] | None = None
    ) -> None:
        """Unpublish a partition: the manifest goes first, so readers stop seeing it at once.
        With ``existing`` (see :meth:`write_partition`), a partition that has no files costs
        no call at all."""
        base = partition_path(zone, table, parts)
        if existing is not None:
            keys = list(existing)
            if not keys:
                return
            manifest = f"{base}/{MANIFEST}"
            self.store.delete([k for k in keys if k == manifest])  # the commit point first
            self.store.delete([k for k in keys if k != manifest])
            return
        self.store.delete([f"{base}/{MANIFEST}"])
        self.store.delete(self.store.list(base + "/"))

    def listing(self, zone: str, table: str) -> dict[str, list[str]]:
        """Every key under ``zone/table/``, by the folder that holds it (a partition's path):
        one listing for a run that writes many partitions of the table, instead of one each."""
        by_folder: dict[str, list[str]] = {}
        for key in self.store.list(f"{zone}/{table}/"):
            by_folder.setdefault(key.rpartition("/")[0], []).append(key)
        return by_folder

    # reading --------------------------------------------------------------------------

    def manifest(self, zone: str, table: str, parts: Mapping[str, str]) -> dict[str, Any] | None:
        """The partition's manifest, None when unpublished; :class:`LakeIntegrityError` when unreadable."""
        key = f"{partition_path(zone, table, parts)}/{MANIFEST}"
        try:  # one GET, not HEAD + GET: every stage reads manifests by the hundred
            data = self.store.get_bytes(key)
        except FileNotFoundError:
            return None
        return parse_manifest(data, describe(zone, table, parts, MANIFEST))

    def partitions(self, zone: str, table: str) -> list[dict[str, str]]:
        """Visible partitions (those with a manifest), sorted by their values."""
        prefix = "/".join(s for s in (zone, table) if s) + "/"
        found = []
        for key in self.store.list(prefix):
            split = split_key(prefix, key)
            if split is not None and split[1] == MANIFEST:
                found.append(partition_values(split[0]))
        return sorted(found, key=lambda p: tuple(p.values()))

    def data_files(self, zone: str, table: str, parts: Mapping[str, str]) -> list[DataFile]:
        """The files a partition's manifest lists, with its promises; [] if unpublished."""
        doc = self.manifest(zone, table, parts)
        if doc is None:
            return []
        base = partition_path(zone, table, parts)
        return [
            DataFile(
                describe(zone, table, parts, f["name"]),
                self.store.arrow_path(f"{base}/{f['name']}"),
                f["rows"],
                f["bytes"],
                f.get("sha256"),
                {k: v for k, v in f.items() if k not in _ENTRY_KEYS},
            )
            for f in doc["files"]
        ]

    def read_file(
        self,
        f: DataFile,
        decode: Callable[[pa.NativeFile], T],
        height: Callable[[T], int],
        decode_errors: tuple[type[BaseException], ...] = (),
    ) -> T:
        """``decode`` one file, holding it to its manifest entry: size, then (with ``checksums``)
        sha256, then the rows decoded. ``decode_errors`` are the decoder's "not Parquet" errors
        (Polars has its own); pyarrow's are known here. Connection errors pass through untouched."""
        try:
            fh = self.store.arrow_fs.open_input_file(f.path)
        except FileNotFoundError:
            raise f.error("missing: the manifest lists it but the store has no such file") from None
        with fh:
            size = fh.size()
            if size != f.size:
                raise f.error(f"{size:,} bytes where the manifest says {f.size:,}")
            source: pa.NativeFile = fh
            if self.checksums and f.sha256:
                buf = fh.read_buffer()
                digest = hashlib.sha256(buf).hexdigest()
                if digest != f.sha256:
                    raise f.error(f"sha256 {digest[:12]}... where the manifest says {f.sha256[:12]}...")
                source = pa.BufferReader(buf)
            try:
                out = decode(source)
            except Exception as exc:
                if not (isinstance(exc, decode_errors) or _is_corrupt(exc)):
                    raise
                raise f.error(f"not readable as Parquet ({_first_line(exc)})") from None
        rows = height(out)
        if rows != f.rows:
            raise f.error(f"{rows:,} rows where the manifest says {f.rows:,}")
        return out

    def _read_arrow(self, f: DataFile, columns: list[str] | None) -> tuple[pa.Table, pa.Schema]:
        """One file as Arrow (the columns it has of ``columns``), with its full schema."""

        def decode(source: pa.NativeFile) -> tuple[pa.Table, pa.Schema]:
            pf = pq.ParquetFile(source)
            schema = pf.schema_arrow
            present = None if columns is None else [c for c in columns if c in schema.names]
            return pf.read(columns=present), schema

        return self.read_file(f, decode, lambda out: out[0].num_rows)

    def _read(self, files: list[DataFile], columns: list[str] | None, schema: pa.Schema | None = None) -> pa.Table:
        """Read and verify ``files`` a few at a time, as one table in ``schema`` (default: the first file's)."""
        if len(files) == 1:
            parts = [self._read_arrow(files[0], columns)]
        else:
            with ThreadPoolExecutor(self.io_threads) as pool:
                parts = list(pool.map(lambda f: self._read_arrow(f, columns), files))
        target = schema or parts[0][1]
        if columns is not None:
            target = pa.schema([target.field(c) for c in columns])
        return pa.concat_tables([_conform(t, target) for t, _ in parts])

    def read_partition(
        self, zone: str, table: str, parts: Mapping[str, str], columns: list[str] | None = None
    ) -> pa.Table | None:
        files = self.data_files(zone, table, parts)
        return self._read(files, columns) if files else None

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
        files = [f for p in chosen for f in self.data_files(zone, table, p)]
        if not files:
            return schema.empty_table() if schema is not None else None
        return self._read(files, columns, schema)

    def write_json(self, key: str, doc: Any) -> None:
        self.store.put_text(key, json.dumps(doc, indent=2, sort_keys=True, default=str))

    def read_json(self, key: str) -> Any:
        return json.loads(self.store.get_text(key))
