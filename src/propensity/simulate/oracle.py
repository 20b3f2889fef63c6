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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import partial
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
    "aversion",
    "basket_eur",
)
#: trait columns added after some truth stores were written: (column, value when absent)
LATER_TRAITS = {"aversion": 0.0, "basket_eur": float("nan")}


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
    #: (customer index, day) of the campaign sends the shop received (simulate --campaigns)
    sends: tuple[np.ndarray, np.ndarray] = (np.array([], np.int64), np.array([], np.int64))

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
        pq.write_table(pa.table({"idx": self.sends[0], "day": self.sends[1]}), folder / "sends.parquet")
        meta = {"start": self.start.isoformat(), "days": self.days, "customers": len(self.customer_ids)}
        (folder / "promotions.yaml").write_text(self.promotions.dump())
        (folder / "meta.json").write_text(json.dumps(meta, indent=2))

    @classmethod
    def read(cls, folder: Path) -> Truth:
        meta = json.loads((folder / "meta.json").read_text())
        tr = pq.read_table(folder / "traits.parquet").to_pydict()
        n = len(tr["customer_id"])
        traits = {k: np.asarray(tr[k]) if k in tr else np.full(n, LATER_TRAITS[k]) for k in TRAIT_COLUMNS}
        traits["last0"] = traits["last0"].astype(float)
        p = pq.read_table(folder / "purchases.parquet")
        b = pq.read_table(folder / "bumps.parquet")
        sends = folder / "sends.parquet"  # written since campaigns respond with aversion
        c = (
            pq.read_table(sends)
            if sends.exists()
            else pa.table({"idx": pa.array([], pa.int64()), "day": pa.array([], pa.int64())})
        )
        return cls(
            start=date.fromisoformat(meta["start"]),
            days=int(meta["days"]),
            customer_ids=np.asarray(tr["customer_id"], dtype=object),
            traits=traits,
            death_day=np.asarray(tr["death_day"]),
            purchases=(p.column("idx").to_numpy(), p.column("day").to_numpy()),
            bumps=(b.column("idx").to_numpy(), b.column("day").to_numpy(), b.column("value").to_numpy()),
            promotions=_promotions(folder),
            sends=(c.column("idx").to_numpy(), c.column("day").to_numpy()),
        )

    def hazard_bumps(self, sends_before: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every log-hazard bump (customer index, day, value), effective from the day after:
        the recorded experience bumps plus the aversion bump of each campaign send (of the
        sends before day ``sends_before`` only, when given), worked out from the sends exactly
        as the simulator does, fatigue included (:func:`~propensity.simulate.campaigns.aversion_bump`)."""
        from propensity.simulate import campaigns as camp

        sidx, sday = self.sends
        if sends_before is not None:
            sidx, sday = sidx[sday < sends_before], sday[sday < sends_before]
        if not len(sidx):
            return self.bumps
        span = int(max(self.days, sday.max()) + camp.FATIGUE_DAYS + 1)
        keys = np.sort(sidx * span + sday)
        k_idx, k_day = keys // span, keys % span
        fatigue = np.searchsorted(keys, keys, "left") - np.searchsorted(keys, keys - camp.FATIGUE_DAYS, "left")
        value = camp.aversion_bump(self.traits["aversion"][k_idx], fatigue.astype(float))
        hit = value > 0
        bidx, bday, bval = self.bumps
        return (
            np.concatenate([bidx, k_idx[hit]]),
            np.concatenate([bday, k_day[hit]]),
            np.concatenate([bval, value[hit]]),
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
        bidx, bday, bval = self.hazard_bumps()
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
        bidx, bday, bval = self.hazard_bumps()
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

    def effects(self, day: date, customer_ids: np.ndarray, channel: str) -> pa.Table:
        """Each customer's true effect of a campaign sent on ``day`` over ``channel`` with its
        offer, over the response window (:data:`~propensity.simulate.campaigns.RESPONSE_DAYS`):

        * ``p_control`` / ``p_treated``: P(a purchase in the window) without and with the send,
          integrated from the state at ``day`` exactly like :meth:`probabilities` (the send
          replaces the day's background contact, the response rates hold for the window, and an
          averse customer's hazard bump applies from the next day, after the sends it received
          in the fatigue period);
        * ``uplift``: their difference;
        * ``net_revenue_effect``: expected net revenue of the window's first purchase, treated
          minus control: ``basket_eur * ((1 - OFFER_DISCOUNT) * p_treated - p_control)``, with the
          customer's expected basket at catalogue prices. So a sure thing costs the discount
          and a sleeping dog costs its lost purchases.

        Other campaigns' sends in the window are not part of the effect (one campaign at a time)."""
        from propensity.simulate import campaigns as camp

        t0 = (day - self.start).days
        index = {c: i for i, c in enumerate(self.customer_ids.tolist())}
        idx = np.array([index[c] for c in np.asarray(customer_ids).tolist()], dtype=np.int64)
        st = {k: v[idx] for k, v in self.state_at(t0).items()}
        tr = {k: v[idx] for k, v in self.traits.items()}
        cal = dyn.Calendar(self.start, self.days, self.promotions)
        if channel not in camp.CHANNELS:
            raise ValueError(f"unknown channel {channel!r}; known: {list(camp.CHANNELS)}")
        opened = tr[f"open_{channel}"]
        bidx, bday, bval = self.hazard_bumps(sends_before=t0)  # not this campaign's, nor later ones'
        sidx, sday = self.sends
        recent = (sday >= t0 - camp.FATIGUE_DAYS) & (sday < t0)
        fatigue = np.bincount(sidx[recent], minlength=len(self.customer_ids))[idx].astype(float)
        extra = camp.aversion_bump(tr["aversion"], fatigue) * st["alive"]

        def window(treated: bool) -> np.ndarray:
            a_np = st["alive"].astype(float)
            dead = 1.0 - a_np
            bump = st["bump"].copy()
            for t in range(t0, t0 + camp.RESPONSE_DAYS):
                if t > t0:
                    sel = bday == t - 1
                    if sel.any():
                        bump += np.bincount(bidx[sel], weights=bval[sel], minlength=len(self.customer_ids))[idx]
                    if treated and t == t0 + 1:
                        bump = bump + extra
                days_since = np.where(st["bought"], t - np.nan_to_num(st["last"]), t - tr["signup_day"]).astype(float)
                rates, sends, coupon = None, None, dyn.COUPON_P
                if treated:
                    rates = partial(camp.treated_rates, tr, days_since, st["bought"], opened)
                    if t == t0:  # the campaign's send, with its offer, replaces the day's background contact
                        sends, coupon = [(channel, np.ones(len(idx)), opened * dyn.CLICK_P)], 1.0
                h = dyn.hazard(tr, bump, st["n_orders"])
                p_np, _ = dyn.day_no_event_probs(tr, cal, t, days_since, st["bought"], rates, sends, coupon)
                dead += a_np * h
                a_np = a_np * (1.0 - h) * p_np
            return np.clip(1.0 - (a_np + dead), 0.0, 1.0)

        p_c, p_t = window(False), window(True)
        basket = tr["basket_eur"]
        return pa.table(
            {
                "customer_id": pa.array(self.customer_ids[idx].astype(str)),
                "p_control": p_c,
                "p_treated": p_t,
                "uplift": p_t - p_c,
                "net_revenue_effect": basket * ((1.0 - camp.OFFER_DISCOUNT) * p_t - p_c),
            }
        )

    def expected_revenue(self, snapshot: date, horizon: int, reps: int = 64, seed: int = 0) -> pa.Table:
        """Per existing customer: the expected revenue of their purchases in ``[T, T+H)`` at
        catalogue prices (``basket_eur`` per purchase), the ceiling of a value task.

        A purchase resets the customer's intent clock and adds to their loyalty, so the count
        of purchases has no closed form along one path as P(a purchase) has
        (:meth:`probabilities`): it is a Monte Carlo of ``reps`` paths per customer through the
        same daily rates (death by the hazard, then a purchase with 1 - P(no purchase)), with the
        realised experience bumps applied as :meth:`probabilities` applies them. The paths' noise
        lowers the ceiling's Gini: on the demo shop's clv test snapshot 8 paths gave 0.843, 32 gave
        0.874, 64 gave 0.889 and 128 gave 0.889 (a second seed moved none by more than 0.002)."""
        t0 = (snapshot - self.start).days
        if t0 < 0:
            raise ValueError(f"snapshot {snapshot} is before the simulation start {self.start}")
        st = self.state_at(t0)
        idx = np.flatnonzero(st["exists"])
        rep = np.tile(idx, reps)
        tr = {k: v[rep] for k, v in self.traits.items()}
        alive, bought = st["alive"][rep].copy(), st["bought"][rep].copy()
        last, n_orders, bump = st["last"][rep].copy(), st["n_orders"][rep].copy(), st["bump"][rep].copy()
        cal = dyn.Calendar(self.start, self.days, self.promotions)
        bidx, bday, bval = self.hazard_bumps()
        rng = np.random.default_rng(seed)
        count = np.zeros(len(rep))
        for t in range(t0, t0 + horizon):
            if t > t0:
                sel = bday == t - 1
                if sel.any():
                    bump += np.bincount(bidx[sel], weights=bval[sel], minlength=len(self.customer_ids))[rep]
            h = dyn.hazard(tr, bump, n_orders)
            days_since = np.where(bought, t - np.nan_to_num(last), t - tr["signup_day"]).astype(float)
            p_np, _ = dyn.day_no_event_probs(tr, cal, t, days_since, bought)
            alive &= rng.random(len(rep)) >= h
            buys = alive & (rng.random(len(rep)) >= p_np)
            count += buys
            last = np.where(buys, float(t), last)
            bought |= buys
            n_orders += buys
        purchases = count.reshape(reps, len(idx)).mean(axis=0)
        return pa.table(
            {
                "customer_id": pa.array(self.customer_ids[idx].astype(str)),
                "expected_revenue": purchases * np.nan_to_num(self.traits["basket_eur"][idx]),
            }
        )

    def row_expected_revenue(self, rows: pd.DataFrame, horizon: int, reps: int = 64) -> np.ndarray:
        """:meth:`expected_revenue` of each ``(customer_id, snapshot)`` row of ``rows`` (NaN for
        a customer the truth store does not know)."""
        return _per_row(rows, lambda d: self.expected_revenue(d, horizon, reps), "expected_revenue")

    def row_probabilities(self, rows: pd.DataFrame, horizon: int, label: str) -> np.ndarray:
        """The oracle probability of each ``(customer_id, snapshot)`` row of ``rows`` for a task
        whose label is ``label`` (``purchase`` or ``inactive``), each snapshot's rows against that
        snapshot's probabilities; NaN for a customer the truth store does not know (another shop)."""
        return _per_row(rows, lambda d: self.probabilities(d, horizon), LABEL_COLUMNS[label])


def _per_row(rows: pd.DataFrame, table_at: Callable[[date], pa.Table], column: str) -> np.ndarray:
    """``column`` of ``table_at(snapshot)`` (one row per customer) for each ``(customer_id,
    snapshot)`` row of ``rows``, each snapshot's table computed once; NaN for an unknown customer."""
    out = np.full(len(rows), np.nan)
    snaps = pd.to_datetime(rows["snapshot"]).dt.date.to_numpy()
    for d in sorted(set(snaps)):
        values = table_at(d).to_pandas().set_index("customer_id")[column]
        at = snaps == d
        out[at] = rows.loc[at, "customer_id"].map(values).to_numpy(dtype=float)
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
