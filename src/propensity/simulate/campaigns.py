"""Closing the loop: published audiences become campaign sends the simulated shop reacts to.

The simulator reads the treatment groups of the audiences published in the lake (never the
control groups: they are not contacted) and, on each audience's date, sends every member
the audience's channel and offer. For ``RESPONSE_DAYS`` days after a send a treated customer
who is still alive responds, and the response is built so that ranking by propensity is
*not* ranking by effect (real campaigns are not like that either):

* **persuadables**: an offer moves price-sensitive customers who are lapsing (past their
  purchase cycle, loyalty fading) the most (:func:`persuadability`);
* **saturation**: a customer whose purchase is due anyway (intent near its peak, no decay)
  gains little: the reminder and the offer act on the headroom the customer has left;
* **discount cannibalisation**: every purchase in the window redeems the offer's
  ``OFFER_DISCOUNT``, including the purchases that would have happened without the contact,
  so contacting a sure thing loses revenue;
* **sleeping dogs**: a share ``AVERSE_SHARE`` of customers dislike being contacted. For them
  a send raises the churn hazard (a log-hazard bump that grows with the campaign sends they
  received in the ``FATIGUE_DAYS`` before) and damps their purchases in the window.

The daily rates are pure functions (:func:`treated_rates`), shared by the simulator and by
the oracle, which integrates them to give each customer's true effect of a campaign
(:meth:`propensity.simulate.oracle.Truth.effects`): the change in the probability of a
purchase in the window and in expected net revenue. The sends are recorded as
``campaign_contacts`` rows (``campaign_id`` = ``<audience>-<YYYYMMDD>``), so the next
training run sees campaign response as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

import numpy as np
import polars as pl

from propensity.simulate import dynamics as dyn

RESPONSE_DAYS = 14
CHANNELS = ("email", "sms", "push")
#: the campaign offer's discount, redeemed by every purchase in the response window
OFFER_DISCOUNT = 0.15
OFFER_COUPON = "OFFER15"
#: extra daily session chance a reminder gives, times the channel's open rate and the headroom
REMIND = 0.04
#: share of the per-session purchase headroom an offer closes for a fully persuadable customer
PERSUADE = 0.15
#: share of customers a contact annoys (drawn from a stream of its own, so the rest of the world is unchanged)
AVERSE_SHARE = 0.12
#: log-hazard bump of one send to a fully averse customer, times (1 + sends in the FATIGUE_DAYS before)
AVERSION_BUMP = 1.0
FATIGUE_DAYS = 60
#: an averse customer's session and purchase chances in the window are damped by this share of its aversion
AVERSION_DAMP = 0.6


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


def draw_aversion(seed: int, n: int) -> np.ndarray:
    """Each customer's dislike of contact in [0, 1]: 0 for most, U(0.5, 1) for ``AVERSE_SHARE``.
    Its own random stream: adding it changed nothing else the simulator draws."""
    rng = np.random.default_rng([seed, 17])
    averse = rng.random(n) < AVERSE_SHARE
    return np.where(averse, rng.uniform(0.5, 1.0, n), 0.0)


def due(tr: dict[str, np.ndarray], days_since: np.ndarray, bought: np.ndarray) -> np.ndarray:
    """How due a purchase is, in [0, 1]: intent near its peak and loyalty not yet fading."""
    return dyn.intent(days_since, tr["cycle"], bought) * dyn.decay(days_since, tr["cycle"], tr["tau"], bought)


def persuadability(tr: dict[str, np.ndarray], days_since: np.ndarray, bought: np.ndarray) -> np.ndarray:
    """How far an offer can move a customer now, in [0, 1]: price sensitivity times how far the
    customer is lapsing (overdue by up to a cycle and more: 0.3 for a fresh one, 1 when fully
    lapsed; 0.5 for one who never bought), on the headroom left by how due they are."""
    overdue = np.clip((days_since - tr["cycle"]) / tr["cycle"], 0.0, 1.0)
    lapsing = np.where(bought, 0.3 + 0.7 * overdue, 0.5)
    return tr["price_sens"] * lapsing * (1.0 - due(tr, days_since, bought))


def treated_rates(
    tr: dict[str, np.ndarray],
    days_since: np.ndarray,
    bought: np.ndarray,
    open_rate: np.ndarray,
    s: np.ndarray,
    q: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(session chance, purchase chance per session) of a customer in a response window, from
    the untreated ones ``s`` and ``q``: the reminder adds sessions on the headroom left by how
    due the customer is, the offer closes part of the purchase headroom of persuadable
    customers; aversion mutes both and damps what is left (an annoyed customer stays away)."""
    damp = 1.0 - AVERSION_DAMP * tr["aversion"]
    headroom = (1.0 - due(tr, days_since, bought)) * (1.0 - tr["aversion"])
    s_t = (s + (0.9 - s) * np.clip(REMIND * open_rate * headroom, 0.0, 1.0)) * damp
    q_t = (q + (0.85 - q) * PERSUADE * persuadability(tr, days_since, bought) * (1.0 - tr["aversion"])) * damp
    return np.clip(s_t, 0.0, 0.9), np.clip(q_t, 0.0, 0.85)


def aversion_bump(aversion: np.ndarray, recent_sends: np.ndarray) -> np.ndarray:
    """Log-hazard bump of one send: grows with the sends the customer got in the last ``FATIGUE_DAYS``."""
    return AVERSION_BUMP * aversion * (1.0 + recent_sends)


def expected_unit_price(cat, aff_cum: np.ndarray, price_sens: np.ndarray, chunk: int = 50_000) -> np.ndarray:
    """Each customer's expected price (EUR) of a viewed, hence of a bought, product: the
    category by affinity, then within it the product position ``floor(n U^b)`` with
    ``b = 1 + 2.5 price_sens`` (the simulator's draw), in closed form:
    ``P(pos <= j) = ((j + 1) / n) ** (1 / b)``."""
    aff = np.diff(np.concatenate([np.zeros((len(aff_cum), 1)), aff_cum], axis=1), axis=1)
    out = np.zeros(len(price_sens))
    for lo in range(0, len(price_sens), chunk):
        inv_b = 1.0 / (1.0 + 2.5 * price_sens[lo : lo + chunk])[:, None]
        for k, (first, n) in enumerate(zip(cat.cat_lo, cat.cat_n, strict=True)):
            cdf = (np.arange(1, n + 1) / n)[None, :] ** inv_b
            pmf = np.diff(np.concatenate([np.zeros((len(inv_b), 1)), cdf], axis=1), axis=1)
            out[lo : lo + chunk] += aff[lo : lo + chunk, k] * (pmf @ cat.price_eur[first : first + n])
    return out


#: items per order (1 + Poisson(0.5)) times units per item (1 + Poisson(0.25)), as the simulator draws them
UNITS_PER_ORDER = 1.5 * 1.25
