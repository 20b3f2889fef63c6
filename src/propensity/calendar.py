"""The shop's promotion calendar: site-wide sales planned in advance.

Marketing plans Black Friday or a January sale months ahead, so on a snapshot date ``T``
the promotions of the days *after* ``T`` are already known. That makes them legitimate
features of a point-in-time snapshot (how many sale days the label window holds, how
deep they are): without them a model trained on ordinary windows and calibrated on a
Black Friday window mis-states every probability of the weeks that follow.

The calendar is a small YAML file (``conf/promotions.yaml`` by default, or
``calendar.promotions`` in the configuration) with recurring yearly periods
(``from: "11-24"``) and one-off dated ones (``from: 2025-05-01``). The simulated shop
runs on the same calendar, and its truth store keeps a copy, so the oracle integrates
exactly the promotions the simulator applied.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import yaml

from propensity.config import load_yaml
from propensity.errors import FinalError

WINDOWS = (14, 30, 60, 90)
_MONTH_DAY = re.compile(r"^(\d{2})-(\d{2})$")


def feature_names(w: int) -> tuple[str, str]:
    """The calendar features of window ``w``: (sale days ahead, mean discount ahead)."""
    return f"promo_days_next_{w}d", f"promo_discount_next_{w}d"


class CalendarError(FinalError):
    """A promotion calendar entry that cannot be read; the message names file, entry and field."""


@dataclass(frozen=True)
class Promotion:
    """One promotion: a yearly period (``month_day`` bounds) or one dated period, inclusive."""

    name: str
    discount: float
    start: date | tuple[int, int]
    end: date | tuple[int, int]

    def active(self, d: date) -> bool:
        if isinstance(self.start, date) and isinstance(self.end, date):
            return self.start <= d <= self.end
        md = (d.month, d.day)
        lo, hi = self.start, self.end
        return lo <= md <= hi if lo <= hi else (md >= lo or md <= hi)  # a period may wrap New Year

    def as_dict(self) -> dict[str, Any]:
        def fmt(x: date | tuple[int, int]) -> str:
            return x.isoformat() if isinstance(x, date) else f"{x[0]:02d}-{x[1]:02d}"

        return {"name": self.name, "from": fmt(self.start), "to": fmt(self.end), "discount": self.discount}


def _bound(where: str, key: str, value: Any) -> date | tuple[int, int]:
    if isinstance(value, date):
        return value
    text = str(value)
    m = _MONTH_DAY.match(text)
    if m:
        month, day = int(m.group(1)), int(m.group(2))
        try:
            date(2024, month, day)  # a leap year accepts 02-29
        except ValueError:
            raise CalendarError(f"{where}: field {key!r}: {text!r} is not a valid MM-DD day") from None
        return month, day
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise CalendarError(f"{where}: field {key!r}: {text!r} is neither MM-DD (yearly) nor YYYY-MM-DD") from None


def _promotion(where: str, entry: Any) -> Promotion:
    if not isinstance(entry, dict):
        raise CalendarError(f"{where}: expected a mapping with name, from, to, discount; got {entry!r}")
    missing = [k for k in ("name", "from", "to", "discount") if k not in entry]
    if missing:
        raise CalendarError(f"{where}: missing field(s) {missing}")
    unknown = sorted(set(entry) - {"name", "from", "to", "discount"})
    if unknown:
        raise CalendarError(f"{where}: unknown field(s) {unknown}")
    where = f"{where} ({entry['name']})"
    try:
        discount = float(entry["discount"])
    except (TypeError, ValueError):
        raise CalendarError(f"{where}: field 'discount': {entry['discount']!r} is not a number") from None
    if not 0.0 < discount < 1.0:
        raise CalendarError(f"{where}: field 'discount': {discount} must be in (0, 1)")
    start, end = _bound(where, "from", entry["from"]), _bound(where, "to", entry["to"])
    if type(start) is not type(end):
        raise CalendarError(f"{where}: 'from' and 'to' must both be MM-DD or both be YYYY-MM-DD")
    if isinstance(start, date) and isinstance(end, date) and end < start:
        raise CalendarError(f"{where}: field 'to': {end} is before 'from' {start}")
    return Promotion(str(entry["name"]), discount, start, end)


@dataclass(frozen=True)
class PromotionCalendar:
    promotions: tuple[Promotion, ...] = ()

    @classmethod
    def parse(cls, doc: Any, where: str = "promotion calendar") -> PromotionCalendar:
        entries = (doc or {}).get("promotions") if isinstance(doc, dict) or doc is None else None
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            raise CalendarError(f"{where}: 'promotions' must be a list")
        return cls(tuple(_promotion(f"{where}: promotions[{i}]", e) for i, e in enumerate(entries)))

    @classmethod
    def load(cls, path: Path | None) -> PromotionCalendar:
        """The calendar in ``path``; an empty one (no promotions known) for ``None``."""
        if path is None:
            return cls()
        try:
            doc = load_yaml(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CalendarError(f"{path}: cannot read the promotion calendar: {exc}") from exc
        return cls.parse(doc, str(path))

    def dump(self) -> str:
        return yaml.safe_dump({"promotions": [p.as_dict() for p in self.promotions]}, sort_keys=False)

    def depth(self, d: date) -> float:
        """Site-wide discount on day ``d`` (the deepest running promotion; 0 on ordinary days)."""
        return max((p.discount for p in self.promotions if p.active(d)), default=0.0)

    def depths(self, start: date, days: int) -> list[float]:
        return [self.depth(start + timedelta(days=k)) for k in range(days)]

    def features(self, t: date, windows: Iterable[int] = WINDOWS) -> dict[str, float]:
        """Per window ``w``: sale days in ``[t, t+w)`` and their mean discount over the window."""
        out: dict[str, float] = {}
        ws = list(windows)
        depths = self.depths(t, max(ws))
        for w in ws:
            part = depths[:w]
            days, discount = feature_names(w)
            out[days] = float(sum(1 for x in part if x > 0))
            out[discount] = float(sum(part) / w)
        return out


def known_calendar(path: Path | None) -> PromotionCalendar | None:
    """The calendar the pipeline knows: None when none is configured (features stay null),
    as opposed to an empty calendar (known: no sales)."""
    return PromotionCalendar.load(path) if path is not None else None
