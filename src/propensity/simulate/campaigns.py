"""Closing the loop: published audiences become campaign sends the simulated shop reacts to.

The simulator reads the treatment groups of the audiences published in the lake (never the
control groups: they are not contacted) and, on each audience's date, sends every member
the audience's channel. Treated customers who are still alive then respond for
``RESPONSE_DAYS`` days with heterogeneous, trait-dependent effects:

* the reminder brings them back: session probability x (1 + ``VISIT_LIFT`` x open rate of
  the channel);
* the offer converts: purchase probability per session x (1 + ``OFFER_LIFT`` x price
  sensitivity).

Both effects multiply the customer's own propensity, so who gets targeted matters: the
same offer sent to a likely buyer produces more incremental purchases than sent to a
random customer, which is what ``bench/uplift.py`` measures against the control groups.
The sends are recorded as ``campaign_contacts`` rows (``campaign_id`` =
``<audience>-<YYYYMMDD>``), so the next training run sees campaign response as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import polars as pl

RESPONSE_DAYS = 14
VISIT_LIFT = 1.5
OFFER_LIFT = 2.5
CHANNELS = ("email", "sms", "push")


@dataclass
class Campaigns:
    """Treatment sends by simulation day: ``by_day[t] = (customer index, channel code, campaign code)``."""

    by_day: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(v[0]) for v in self.by_day.values())

    @property
    def first_day(self) -> int | None:
        return min(self.by_day) if self.by_day else None


def from_members(members: pl.DataFrame, start: date, customer_ids: np.ndarray) -> Campaigns:
    """Build sends from audience members (``audience``, ``dt``, ``customer_id``, ``group``, ``channel``)."""
    index = {cid: i for i, cid in enumerate(customer_ids.tolist())}
    sent = members.filter(pl.col("group") == "treatment").sort("dt", "audience", "customer_id")
    out = Campaigns()
    for (aud, dt), part in sent.group_by(["audience", "dt"], maintain_order=True):
        t = (dt - start).days
        idx = np.array([index[c] for c in part["customer_id"].to_list() if c in index], dtype=np.int64)
        ch = np.array(
            [CHANNELS.index(c) for c, k in zip(part["channel"], part["customer_id"], strict=True) if k in index]
        )
        name = f"{aud}-{dt.strftime('%Y%m%d')}"
        code = len(out.names)
        out.names.append(name)
        prev = out.by_day.get(t)
        new = (idx, ch, np.full(len(idx), code, dtype=np.int64))
        out.by_day[t] = new if prev is None else tuple(np.concatenate([a, b]) for a, b in zip(prev, new, strict=True))
    return out


def from_lake(settings, start: date, customer_ids: np.ndarray) -> Campaigns:
    """Every published audience's treatment group, as sends (none when nothing is published)."""
    from propensity.lake import Lake

    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    parts = lake.partitions("audiences", "")
    if not parts:
        return Campaigns()
    cols = ["audience", "dt", "customer_id", "group", "channel"]
    frames = [pl.from_arrow(lake.read_partition("audiences", "", p, columns=cols)) for p in parts]
    return from_members(pl.concat(frames), start, customer_ids)  # type: ignore[arg-type]


def visit_lift(open_rate: np.ndarray) -> np.ndarray:
    return 1.0 + VISIT_LIFT * open_rate


def offer_lift(price_sens: np.ndarray) -> np.ndarray:
    return 1.0 + OFFER_LIFT * price_sens
