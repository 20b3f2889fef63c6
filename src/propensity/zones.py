"""Lake zone names, defined once (see ``shared/DESIGN.md``, "Lake zones").

A zone is the first path segment under the lake URI. Modules import these names instead
of spelling the strings, so the layout is changed (or grepped for) in one place.
"""

from __future__ import annotations

RAW = "raw"
CLEAN = "clean"
#: compacted copies of clean tables, a read cache held to the clean zone (:mod:`propensity.history`)
HISTORY = "history"
QUARANTINE = "quarantine"
VALIDATION = "validation"
FEATURES = "features"
PROFILES = "profiles"
LABELS = "labels"
SCORES = "scores"
AUDIENCES = "audiences"
REPORTS = "reports"
DRIFT = "drift"

#: Table level of temporary per-shard frames (``features/_shards/...``, ``scores/_shards/...``).
#: It has no ``=``, so readers listing a zone's ``k=v`` partitions never see them.
SHARDS = "_shards"

#: Customer hash buckets (:mod:`propensity.shards`): the history stores customer-keyed tables
#: in bucket ranges, and a run has at most this many feature or scoring shards.
BUCKETS = 64
