"""The truth store and the oracle: what the best possible model would predict.

The simulator writes its latent facts under ``<home>/truth`` (traits, deaths,
purchases, experience bumps). The pipeline never reads them; evaluation code does, to
compute for any snapshot ``T`` and horizon ``H`` the exact probability of each outcome
given the full latent state at ``T``. The recursion integrates the same daily rates the
simulator draws from (:mod:`propensity.simulate.dynamics`) along the "nothing happened
yet" path, so no Monte-Carlo noise enters the ceiling.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from propensity.calendar import PromotionCalendar
from propensity.simulate import dynamics as dyn

#: the oracle's column for a task's label (:attr:`~propensity.config.TaskConfig.label`)
LABEL_COLUMNS = {"purchase": "p_purchase", "inactive": "p_inactive"}

TRAIT_COLUMNS = (
    "signup_day",
    "market",
    "engagement",
    "cycle",
    "tau",
    "conv",
    "price_sens",
    "hazard",
    "open_email",
    "open_sms",
    "open_push",
    "email_consent",
    "sms_consent",
    "push_consent",
    "opted_out",
    "bought0",
    "last0",
    "n0",
)


@dataclass
class Truth:
    start: date
    days: int
    customer_ids: np.ndarray
    traits: dict[str, np.ndarray]
    death_day: np.ndarray  # -1: alive at the end
    purchases: tuple[np.ndarray, np.ndarray]  # (customer index, day) of non-cancelled orders
    bumps: tuple[np.ndarray, np.ndarray, np.ndarray]  # (customer index, day, log-hazard bump)
    promotions: PromotionCalendar = field(default_factory=PromotionCalendar)  # the calendar the simulator ran on

    def write(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        cols = {"customer_id": self.customer_ids.astype(str), "death_day": self.death_day}
        cols.update({k: self.traits[k] for k in TRAIT_COLUMNS})
        pq.write_table(pa.table(cols), folder / "traits.parquet")
        pq.write_table(pa.table({"idx": self.purchases[0], "day": self.purchases[1]}), folder / "purchases.parquet")
        pq.write_table(
            pa.table({"idx": self.bumps[0], "day": self.bumps[1], "value": self.bumps[2]}),
            folder / "bumps.parquet",
        )
        meta = {"start": self.start.isoformat(), "days": self.days, "customers": len(self.customer_ids)}
        (folder / "promotions.yaml").write_text(self.promotions.dump())
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def read(cls, folder: Path) -> Truth:
        meta = json.loads((folder / "meta.json").read_text())
        tr = pq.read_table(folder / "traits.parquet").to_pydict()
        traits = {k: np.asarray(tr[k]) for k in TRAIT_COLUMNS}
        traits["last0"] = traits["last0"].astype(float)
        p = pq.read_table(folder / "purchases.parquet")
        b = pq.read_table(folder / "bumps.parquet")
        return cls(
            start=date.fromisoformat(meta["start"]),
            days=int(meta["days"]),
            customer_ids=np.asarray(tr["customer_id"], dtype=object),
            traits=traits,
            death_day=np.asarray(tr["death_day"]),
            purchases=(p.column("idx").to_numpy(), p.column("day").to_numpy()),
            bumps=(b.column("idx").to_numpy(), b.column("day").to_numpy(), b.column("value").to_numpy()),
            promotions=_promotions(folder),
        )

    def state_at(self, t: int) -> dict[str, np.ndarray]:
        """Latent state at the start of day ``t`` (before anything happens that day)."""
        n = len(self.customer_ids)
        pidx, pday = self.purchases
        before = pday < t
        has = np.zeros(n, bool)
        has[pidx[before]] = True
        latest = np.full(n, -np.inf)
        np.maximum.at(latest, pidx[before], pday[before].astype(float))
        last = np.where(has, latest, self.traits["last0"])  # window purchases postdate last0
        n_orders = np.bincount(pidx[before], minlength=n)
        bidx, bday, bval = self.bumps
        bump = np.bincount(bidx[bday < t], weights=bval[bday < t], minlength=n)
        return {
            "exists": self.traits["signup_day"] <= t,
            "alive": (self.death_day < 0) | (self.death_day >= t),
            "bought": self.traits["bought0"].astype(bool) | has,
            "last": last,
            "n_orders": n_orders,
            "bump": bump,
        }

    def probabilities(self, snapshot: date, horizon: int) -> pa.Table:
        """Per existing customer: P(a purchase in [T, T+H)) and P(no session and no purchase in it).

        ``p_purchase`` is the oracle for conversion and repurchase (first/next purchase),
        ``p_inactive`` the oracle for churn.
        """
        t0 = (snapshot - self.start).days
        if t0 < 0:
            raise ValueError(f"snapshot {snapshot} is before the simulation start {self.start}")
        st = self.state_at(t0)
        tr = self.traits
        cal = dyn.Calendar(self.start, self.days, self.promotions)
        a_np = st["alive"].astype(float)  # alive and no purchase yet
        a_ns = a_np.copy()  # alive and no session/purchase yet
        dead_np = 1.0 - a_np
        dead_ns = 1.0 - a_ns
        bidx, bday, bval = self.bumps
        bump = st["bump"].copy()
        for t in range(t0, t0 + horizon):
            if t > t0:
                sel = bday == t - 1
                if sel.any():
                    bump += np.bincount(bidx[sel], weights=bval[sel], minlength=len(bump))
            h = dyn.hazard(tr, bump, st["n_orders"])
            days_since = np.where(st["bought"], t - np.nan_to_num(st["last"]), t - tr["signup_day"]).astype(float)
            p_np, p_ns = dyn.day_no_event_probs(tr, cal, t, days_since, st["bought"])
            dead_np += a_np * h
            dead_ns += a_ns * h
            a_np = a_np * (1.0 - h) * p_np
            a_ns = a_ns * (1.0 - h) * p_ns
        ex = st["exists"]
        return pa.table(
            {
                "customer_id": pa.array(self.customer_ids[ex].astype(str)),
                # clip: 1 - (a + dead) can round to -1e-16
                "p_purchase": np.clip(1.0 - (a_np + dead_np)[ex], 0.0, 1.0),
                "p_inactive": np.clip((a_ns + dead_ns)[ex], 0.0, 1.0),
            }
        )

    def row_probabilities(self, rows: pd.DataFrame, horizon: int, label: str) -> np.ndarray:
        """The oracle probability of each ``(customer_id, snapshot)`` row of ``rows`` for a task
        whose label is ``label`` (``purchase`` or ``inactive``), each snapshot's rows against that
        snapshot's probabilities; NaN for a customer the truth store does not know (another shop)."""
        column = LABEL_COLUMNS[label]
        out = np.full(len(rows), np.nan)
        snaps = pd.to_datetime(rows["snapshot"]).dt.date.to_numpy()
        for d in sorted(set(snaps)):
            probs = self.probabilities(d, horizon).to_pandas().set_index("customer_id")[column]
            at = snaps == d
            out[at] = rows.loc[at, "customer_id"].map(probs).to_numpy(dtype=float)
        return out


def _promotions(folder: Path) -> PromotionCalendar:
    path = folder / "promotions.yaml"
    if not path.exists():  # written since the calendar became configurable
        raise FileNotFoundError(
            f"{path}: the truth store predates promotion calendars; run `propensity simulate` again"
        )
    return PromotionCalendar.load(path)


def oracle_probabilities(truth_dir: Path, snapshot: date, horizon: int) -> pa.Table:
    return Truth.read(Path(truth_dir)).probabilities(snapshot, horizon)
