"""Parent keys for the referential checks, from an index instead of the whole raw history.

A child row (an order's ``customer_id``) must name a key that exists in the parent's raw
zone on any date, because change-data capture files a customer under the day it last
changed. Reading every raw partition of every parent table made a one-day validation
read the shop's whole history: its object-store calls grew with the shop's age.

The index ``validation/_keys/<table>.<column>/`` is a lake partition holding the distinct
keys, and its manifest records which raw partitions (by their content-addressed file
names) it covers. One listing of the parent's raw zone tells which partitions are new
(read only those, then rewrite the index) and whether a covered one was rewritten or
removed (rebuild from scratch). So a day's run reads the index plus that day's new
partitions, and a re-collected day can never leave a key behind that no longer exists.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from propensity.errors import LakeIntegrityError
from propensity.lake import MANIFEST, Lake
from propensity.zones import RAW
from propensity.zones import VALIDATION as INDEX_ZONE

log = logging.getLogger(__name__)


def raw_files(lake: Lake, table: str) -> dict[str, tuple[str, ...]]:
    """Per committed raw partition of ``table`` (its ``dt``), the data file names, from one listing."""
    prefix = f"{RAW}/{table}/"
    files: dict[str, list[str]] = defaultdict(list)
    committed = set()
    for key in lake.store.list(prefix):
        seg, _, name = key[len(prefix) :].partition("/")
        if not seg.startswith("dt=") or "/" in name:
            continue
        if name == MANIFEST:
            committed.add(seg[3:])
        elif name.endswith(".parquet"):
            files[seg[3:]].append(name)
    return {dt: tuple(sorted(files[dt])) for dt in sorted(committed)}


def index_name(table: str, column: str) -> str:
    return f"_keys/{table}.{column}"


def key_index(lake: Lake, table: str, column: str) -> pa.Array:
    """The distinct ``column`` values over every raw partition of ``table``, kept up to date."""
    current = raw_files(lake, table)
    name = index_name(table, column)
    try:
        doc = lake.manifest(INDEX_ZONE, name, {})
        known = {dt: tuple(files) for dt, files in (doc or {}).get("sources", {}).items()}
        changed = [dt for dt, files in known.items() if current.get(dt) != files]
        base = None if doc is None or changed else lake.read_partition(INDEX_ZONE, name, {})
    except LakeIntegrityError as exc:  # the index is derived: rebuild it rather than fail the day
        log.warning("rebuilding the %s key index: %s", name, exc)
        base, known = None, {}
    if base is None:
        known = {}
    todo = [dt for dt in current if dt not in known]
    keys = base.column(column).combine_chunks() if base is not None else None
    if not todo:
        return keys if keys is not None else pa.array([], pa.string())
    new = lake.read_table(RAW, table, columns=[column], where=[{"dt": dt} for dt in todo])
    parts = [a for a in (keys, new.column(column).combine_chunks() if new is not None else None) if a is not None]
    if len(parts) == 2 and parts[1].type != parts[0].type:
        parts[1] = parts[1].cast(parts[0].type)
    merged = pc.unique(pa.concat_arrays(parts)) if parts else pa.array([], pa.string())
    lake.write_partition(INDEX_ZONE, name, {}, pa.table({column: merged}), {"sources": current})
    return merged
