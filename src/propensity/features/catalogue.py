"""The feature catalogue (``catalogue.yaml``): names, groups, windows, definitions, ranges.

It documents every feature (the README renders it) and declares the feature table's
validation rules, so documentation and checks cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from propensity.config import load_yaml
from propensity.validation import checks as ck

CATALOGUE = Path(__file__).with_name("catalogue.yaml")


@dataclass(frozen=True)
class Feature:
    name: str
    group: str
    window: str
    description: str
    expression: str
    type: str = "numeric"
    range: tuple[float | None, float | None] | None = None

    @property
    def categorical(self) -> bool:
        return self.type == "categorical"


@cache
def load_catalogue(path: Path = CATALOGUE) -> tuple[Feature, ...]:
    doc = load_yaml(path.read_text())
    out = []
    for e in doc["features"]:
        rng = tuple(e["range"]) if e.get("range") else None
        out.append(Feature(**{**e, "range": rng}))
    return tuple(out)


def feature_names() -> list[str]:
    return [f.name for f in load_catalogue()]


def group_features(group: str) -> list[str]:
    return [f.name for f in load_catalogue() if f.group == group]


def categorical_features() -> list[str]:
    return [f.name for f in load_catalogue() if f.categorical]


def feature_checks() -> list[ck.Check]:
    """Validation rules of the feature table, from the catalogue's ranges."""
    checks = [ck.not_null("customer_id"), ck.unique(["customer_id"]), ck.row_count(min_value=1)]
    for f in load_catalogue():
        if f.range:
            lo, hi = f.range
            checks.append(ck.between(f.name, lo, hi))
    return checks


def markdown_table() -> str:
    rows = ["| feature | group | window | description | definition |", "|---|---|---|---|---|"]
    for f in load_catalogue():
        rows.append(f"| `{f.name}` | {f.group} | {f.window} | {f.description} | `{f.expression}` |")
    return "\n".join(rows)
