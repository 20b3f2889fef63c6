"""Audience declarations (``conf/audiences.yaml``): validated once, hashed for the manifest.

The YAML is the contract marketers read, so every field is checked up front and a bad
rule fails with the audience's name and the offending column, before any data is read.
Every error is one line naming the file and the audience: an unknown key (a typo such as
``controlfraction`` would otherwise drop the control group the marketer asked for), a bad
value, or a name that cannot become a lake partition, an export folder and a CRM key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from propensity.config import ConfigError, dotted, read_yaml_mapping, unknown_keys
from propensity.errors import RequestError

CHANNELS = ("email", "sms", "push")
CONSENT_COLUMN = {c: f"{c}_consent" for c in CHANNELS}
#: the CRM table's ``audience_members.audience`` and ``offer`` columns are VARCHAR(64)
MAX_NAME_LENGTH = 64
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]*")
SHOWN_NAME = 40  # characters of a bad name quoted in an error message


def check_name(name: str) -> str:
    """An audience name, or ValueError: it becomes a lake partition (``audience=<name>``), an
    export folder and the CRM key, so anything a path or the CRM column cannot hold is refused
    at load time, before any partition is published."""
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(f"is {len(name)} characters long; at most {MAX_NAME_LENGTH} (the CRM's audience column)")
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"only lower-case letters, digits and '-' (not first) are allowed, got {name!r}")
    return name


class _Strict(BaseModel):
    """Audience YAML models refuse undeclared keys (``load_audiences`` names them first)."""

    model_config = ConfigDict(extra="forbid")


class Offer(_Strict):
    code: str = Field(..., max_length=MAX_NAME_LENGTH)
    description: str = ""
    cost: float = Field(0.0, ge=0, description="cost per treated customer, in the base currency")
    discount: float = Field(
        0.0, ge=0, lt=1, description="share of the order value the offer gives away on a purchase in the window"
    )
    products: Literal["none", "recommended"] = Field(
        "none",
        description="recommended: each member's export row carries product_1..N, the products "
        "propensity-recommendations@champion recommends for them at the date (N: recommendations.products)",
    )

    @property
    def recommended(self) -> bool:
        return self.products == "recommended"


class AudienceSpec(_Strict):
    name: str
    description: str = ""
    priority: int
    task: str
    rule: str
    rank: Literal["score", "expected_value", "random", "uplift", "incremental_profit"] = Field(
        "score",
        description="random: a hash order, for benchmark or holdout audiences that ignore the model; uplift: "
        "the predicted effect of the contact (propensity-uplift-<kind>@champion); incremental_profit: that effect "
        "in money (see incremental_profit)",
    )
    value: str | None = Field(
        None, description="value column (an order's value) for expected_value and incremental_profit"
    )
    uplift_model: str | None = Field(
        None,
        description="campaign kind of the uplift model for rank uplift/incremental_profit (default: the offer code)",
    )
    margin: float = Field(0.3, gt=0, le=1, description="gross margin on an incremental order, for incremental_profit")
    contact_cost: float = Field(0.0, ge=0, description="cost of one contact, for incremental_profit")
    min_profit: float | None = Field(
        0.0,
        description="with rank incremental_profit, contacts expected to earn less than this are suppressed "
        "(null: none, e.g. fixed-size benchmark arms)",
    )
    min_uplift: float = Field(
        0.0,
        description="with rank uplift/incremental_profit, customers predicted below this effect (sleeping dogs) "
        "are suppressed",
    )
    max_size: int = Field(..., ge=1)
    budget: float | None = Field(None, gt=0)
    channels: list[str] = Field(..., min_length=1)
    offer: Offer
    exclude_purchased_days: int | None = Field(None, ge=1)
    control_fraction: float | None = Field(None, ge=0, lt=1)
    exploration: float | None = Field(
        None,
        gt=0,
        le=1,
        description="share of the audience drawn at random from its eligible base (after the rule, dedup and "
        "suppression) instead of by rank, and split 50/50 into treatment and control: unconfounded data for "
        "uplift models (the ranked members' control group only shows the effect on the top of the ranking)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v)

    @field_validator("offer", mode="before")
    @classmethod
    def _offer(cls, v: Any) -> Any:
        """``offer: recommended`` is short for an offer of recommended products and nothing else."""
        return {"code": "RECOMMENDED", "products": "recommended"} if v == "recommended" else v

    @field_validator("channels")
    @classmethod
    def _channels(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in CHANNELS]
        if bad:
            raise ValueError(f"unknown channel(s) {bad}; allowed: {list(CHANNELS)}")
        return v

    @model_validator(mode="after")
    def _value(self) -> AudienceSpec:
        if self.rank in ("expected_value", "incremental_profit") and not self.value:
            raise ValueError(f"rank: {self.rank} needs a `value` column")
        return self

    @property
    def by_uplift(self) -> bool:
        return self.rank in ("uplift", "incremental_profit")

    def uplift_kind(self) -> str:
        """The campaign kind whose uplift model ranks this audience."""
        from propensity.models.uplift_train import campaign_kind

        return campaign_kind(self.uplift_model or self.offer.code)

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


class AudienceBook(_Strict):
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


def _audience_label(doc: dict[str, Any], index: int) -> str:
    """``audience 'win-back'``; by position (and a shortened name) when the name itself is bad."""
    entries = doc.get("audiences")
    entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
    name = entry.get("name") if isinstance(entry, dict) else None
    if isinstance(name, str) and len(name) <= MAX_NAME_LENGTH and NAME_PATTERN.fullmatch(name):
        return f"audience {name!r}"
    if name is None:
        return f"audience #{index + 1}"
    shown = name[:SHOWN_NAME] + "..." if isinstance(name, str) and len(name) > SHOWN_NAME else name
    return f"audience #{index + 1} ({shown!r})"


def _split(doc: dict[str, Any], loc: tuple[str | int, ...]) -> tuple[str, tuple[str | int, ...]]:
    """(the audience a location is in, or '' above them; the location inside it)."""
    if len(loc) >= 2 and loc[0] == "audiences" and isinstance(loc[1], int):
        return _audience_label(doc, loc[1]), loc[2:]
    return "", loc


def _one_line(path: Path, problems: list[tuple[str, str]]) -> str:
    """``<file>: audience 'a': p1; p2; audience 'b': p3``: grouped by audience, in document order."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for where, problem in problems:
        grouped[where].append(" ".join(problem.split()))
    parts = [f"{where}: {'; '.join(ps)}" if where else "; ".join(ps) for where, ps in grouped.items()]
    return f"{path}: {'; '.join(parts)}"


def _unknown_key_problems(doc: dict[str, Any]) -> list[tuple[str, str]]:
    problems = []
    for unknown in unknown_keys(AudienceBook, doc):
        where, inside = _split(doc, unknown.path)
        problems.append((where, f"unknown key {dotted(inside)!r} ({unknown.hint()})"))
    return problems


def _validation_problems(doc: dict[str, Any], exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors():
        where, inside = _split(doc, tuple(err["loc"]))
        message = err["msg"].removeprefix("Value error, ")
        problems.append((where, f"{dotted(inside)}: {message}" if inside else message))
    return problems


def load_audiences(path: Path, tasks: list[str] | None = None) -> AudienceBook:
    """Read and check the audience declarations; any problem is one :class:`ConfigError` line."""
    if not path.is_file():
        raise FileNotFoundError(f"audience declarations not found: {path} (set audiences.file)")
    doc = read_yaml_mapping(path, "audience declarations")
    unknown = _unknown_key_problems(doc)
    if unknown:
        raise ConfigError(_one_line(path, unknown))
    try:
        book = AudienceBook.model_validate(doc)
    except ValidationError as exc:
        raise ConfigError(_one_line(path, _validation_problems(doc, exc))) from None
    for a in book.audiences:
        try:
            a.expr()
        except ValueError as exc:
            raise ConfigError(_one_line(path, [("", str(exc))])) from None
        if tasks is not None and a.task not in tasks:
            raise ConfigError(f"{path}: audience {a.name!r}: task {a.task!r} is not configured ({tasks})")
    return book
