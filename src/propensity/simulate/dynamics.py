"""The simulated shop's behavioural law: daily rates as pure functions of latent state.

The simulator draws from these rates; the oracle integrates them in closed form. Keeping
both on the same functions is what makes the oracle an exact ceiling rather than a
second model that could drift from the data.

Per customer and day, in this order:
1. death: with probability ``hazard`` an alive customer churns for good (no more sessions);
2. a campaign contact may arrive (channel mix known by calendar); a click opens a session
   and lifts purchase probability, more so with a coupon for price-sensitive customers;
3. otherwise a session happens with probability ``session_p``;
4. a session converts with probability ``purchase_p`` (not cancelled: ``1 - CANCEL_P``).

``intent`` rises as the days since the last purchase approach the customer's cycle, so
browsing trends up before purchases; past twice the cycle, loyalty decays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np

from propensity.calendar import PromotionCalendar

CANCEL_P = 0.03
CLICK_P = 0.4  # P(click | opened)
COUPON_P = 0.5  # share of campaigns carrying a coupon
COUPON_RATE = 0.10
# daily send probability per channel for a consented customer (background campaigns)
SEND_P = {"email": 0.035, "sms": 0.006, "push": 0.012}
PROMO_SEND_MULT = 2.5
LATE_BUMP = 0.45  # log-hazard bump on a late delivery
LOW_RATING_BUMP = 0.7  # log-hazard bump on a rating <= 2


@dataclass(frozen=True)
class Calendar:
    """Known-in-advance shop calendar: seasonality and promotions, by day index from ``start``.

    The promotions are the shop's calendar (``conf/promotions.yaml`` unless configured
    otherwise), the same one the pipeline's calendar features read.
    """

    start: date
    days: int
    promotions: PromotionCalendar = field(default_factory=PromotionCalendar)

    def dates(self, t: np.ndarray | int) -> list[date]:
        return [self.start + timedelta(days=int(x)) for x in np.atleast_1d(t)]

    def season(self, t: int) -> float:
        d = self.start + timedelta(days=t)
        doy = d.timetuple().tm_yday
        weekly = 1.12 if d.weekday() >= 5 else 0.96
        yearly = 1.0 + 0.12 * np.cos(2 * np.pi * (doy - 350) / 365.25)
        promo_boost = 1.0 + 1.5 * self.promo_depth(t)
        return float(weekly * yearly * promo_boost)

    def promo_depth(self, t: int) -> float:
        """Site-wide discount depth on day ``t`` (0 on ordinary days)."""
        return self.promotions.depth(self.start + timedelta(days=t))

    def send_p(self, t: int) -> dict[str, float]:
        mult = PROMO_SEND_MULT if self.promo_depth(t) > 0 else 1.0
        return {k: v * mult for k, v in SEND_P.items()}


def intent(days_since: np.ndarray, cycle: np.ndarray, bought: np.ndarray) -> np.ndarray:
    """Purchase intent in [0, 1]: ramps up towards the cycle; new customers start curious."""
    ramp = 1.0 / (1.0 + np.exp(-(days_since - cycle) / (0.22 * cycle + 1.0)))
    fresh = 0.12 + 0.55 * np.exp(-days_since / 14.0)
    return np.where(bought, ramp, fresh)


def decay(days_since: np.ndarray, cycle: np.ndarray, tau: np.ndarray, bought: np.ndarray) -> np.ndarray:
    """Loyalty decay: engagement fades once a customer is long overdue (or never bought)."""
    grace = np.where(bought, 2.0 * cycle, 45.0)
    return np.exp(-np.maximum(0.0, days_since - grace) / tau)


def session_p(tr: dict[str, np.ndarray], days_since: np.ndarray, bought: np.ndarray, season: float) -> np.ndarray:
    it = intent(days_since, tr["cycle"], bought)
    p = tr["engagement"] * (0.25 + 1.6 * it) * decay(days_since, tr["cycle"], tr["tau"], bought) * season
    return np.clip(p, 0.0, 0.9)


def purchase_p(tr: dict[str, np.ndarray], days_since: np.ndarray, bought: np.ndarray, promo_depth: float) -> np.ndarray:
    """P(purchase | session), before any campaign effect."""
    it = intent(days_since, tr["cycle"], bought)
    base = tr["conv"] * np.where(bought, 0.08 + 1.6 * it**2, 0.35 * (0.3 + it))
    lift = 1.0 + 4.0 * promo_depth * tr["price_sens"]
    return np.clip(base * lift, 0.0, 0.85)


def clicked_purchase_p(tr: dict[str, np.ndarray], q: np.ndarray, coupon: bool) -> np.ndarray:
    """P(purchase | clicked a campaign): clicks carry intent; coupons sway price-sensitive customers."""
    lift = 1.6 + (6.0 * COUPON_RATE * 5.0 * tr["price_sens"] if coupon else 0.0)
    return np.clip(q * lift + 0.01, 0.0, 0.9)


def hazard(tr: dict[str, np.ndarray], bump: np.ndarray, n_orders: np.ndarray) -> np.ndarray:
    """Daily churn hazard: bad experiences raise it; repeat purchases (in the observed window) build loyalty."""
    return np.clip(tr["hazard"] * np.exp(bump) / (1.0 + 0.25 * np.minimum(n_orders, 8)), 0.0, 0.5)


def contact_mix(tr: dict[str, np.ndarray], cal: Calendar, t: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Per channel: (name, P(sent that channel today), P(click | sent)). At most one send a day."""
    out = []
    for ch, p in cal.send_p(t).items():
        sent = p * tr[f"{ch}_consent"] * (1.0 - tr["opted_out"])
        out.append((ch, sent, tr[f"open_{ch}"] * CLICK_P))
    return out


def day_no_event_probs(
    tr: dict[str, np.ndarray],
    cal: Calendar,
    t: int,
    days_since: np.ndarray,
    bought: np.ndarray,
    rates: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    sends: list[tuple[str, np.ndarray, np.ndarray]] | None = None,
    coupon: float = COUPON_P,
) -> tuple[np.ndarray, np.ndarray]:
    """For an alive customer on day ``t``: P(no purchase today), P(no session today).

    Marginalises over the campaign draw exactly (channels are exclusive, coupons are a
    coin flip per campaign), which is what lets the oracle stay closed-form. ``rates`` maps
    the untreated (session, purchase) chances to a campaign response's (see
    :func:`propensity.simulate.campaigns.treated_rates`); ``sends`` replaces the day's
    background contact mix (a campaign's own send on its day), and ``coupon`` is the chance
    that a send carries a coupon (1 for a campaign's, which always carries its offer).
    """
    s = session_p(tr, days_since, bought, cal.season(t))
    q = purchase_p(tr, days_since, bought, cal.promo_depth(t))
    if rates is not None:
        s, q = rates(s, q)
    q = q * (1.0 - CANCEL_P)
    qc = coupon * clicked_purchase_p(tr, q, True) + (1.0 - coupon) * clicked_purchase_p(tr, q, False)
    no_purchase_plain = 1.0 - s * q
    total_sent = np.zeros_like(s)
    p_np = np.zeros_like(s)
    p_ns = np.zeros_like(s)
    for _ch, sent, click in sends if sends is not None else contact_mix(tr, cal, t):
        total_sent += sent
        p_np += sent * ((1.0 - click) * no_purchase_plain + click * (1.0 - qc))
        p_ns += sent * (1.0 - click) * (1.0 - s)
    p_np += (1.0 - total_sent) * no_purchase_plain
    p_ns += (1.0 - total_sent) * (1.0 - s)
    return p_np, p_ns
