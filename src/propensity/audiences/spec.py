"""Audience declarations (``conf/audiences.yaml``): validated once, hashed for the manifest.

The YAML is the contract marketers read, so every field is checked up front and a bad
rule fails with the audience's name and the offending column, before any data is read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import polars as pl
import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from propensity.errors import RequestError

CHANNELS = ("email", "sms", "push")
CONSENT_COLUMN = {c: f"{c}_consent" for c in CHANNELS}


class Offer(BaseModel):
    code: str
    description: str = ""
    cost: float = Field(0.0, ge=0, description="cost per treated customer, in the base currency")


class AudienceSpec(BaseModel):
    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9-]*$")
    description: str = ""
    priority: int
    task: str
    rule: str
    rank: Literal["score", "expected_value", "random"] = Field(
        "score", description="random: a hash order, for benchmark or holdout audiences that ignore the model"
    )
    value: str | None = Field(None, description="value column for rank=expected_value")
    max_size: int = Field(..., ge=1)
    budget: float | None = Field(None, gt=0)
    channels: list[str] = Field(..., min_length=1)
    offer: Offer
    exclude_purchased_days: int | None = Field(None, ge=1)
    control_fraction: float | None = Field(None, ge=0, lt=1)

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in CHANNELS]
        if bad:
            raise ValueError(f"unknown channel(s) {bad}; allowed: {list(CHANNELS)}")
        return v

    @model_validator(mode="after")
    def _value(self) -> AudienceSpec:
        if self.rank == "expected_value" and not self.value:
            raise ValueError("rank: expected_value needs a `value` column")
        return self

    def expr(self) -> pl.Expr:
        try:
            return pl.sql_expr(self.rule)
        except Exception as exc:  # polars raises several error types for bad SQL
            raise ValueError(
                f"audience {self.name!r}: rule is not a valid SQL condition: {self.rule!r} ({exc})"
            ) from exc

    def treatment_cap(self) -> int | None:
        """How many treated customers the budget pays for (None: no budget)."""
        if self.budget is None or self.offer.cost <= 0:
            return None
        return int(self.budget // self.offer.cost)


class AudienceBook(BaseModel):
    audiences: list[AudienceSpec]

    @model_validator(mode="after")
    def _unique(self) -> AudienceBook:
        names = [a.name for a in self.audiences]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate audience name(s): {sorted(dup)}")
        return self

    def ordered(self, names: list[str] | None = None) -> list[AudienceSpec]:
        """By priority (lower first), then name; optionally only ``names``."""
        if names:
            unknown = sorted(set(names) - {a.name for a in self.audiences})
            if unknown:
                raise RequestError(f"unknown audience(s) {unknown}; declared: {[a.name for a in self.audiences]}")
        chosen = [a for a in self.audiences if not names or a.name in names]
        return sorted(chosen, key=lambda a: (a.priority, a.name))

    def rule_hash(self, spec: AudienceSpec) -> str:
        """Digest of one audience's declaration: the manifest proves which rules made an export."""
        return hashlib.sha256(json.dumps(spec.model_dump(), sort_keys=True).encode()).hexdigest()[:16]


def load_audiences(path: Path, tasks: list[str] | None = None) -> AudienceBook:
    if not path.is_file():
        raise FileNotFoundError(f"audience declarations not found: {path} (set audiences.file)")
    try:
        book = AudienceBook.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as exc:
        raise RequestError(f"{path}: invalid audience declarations:\n{exc}") from exc
    for a in book.audiences:
        a.expr()
        if tasks is not None and a.task not in tasks:
            raise RequestError(f"{path}: audience {a.name!r}: task {a.task!r} is not configured ({tasks})")
    return book
