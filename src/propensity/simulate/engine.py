"""The day loop: vectorised over customers, sequential over days, deterministic per seed.

Each day draws deaths, campaign contacts, sessions and purchases from the rates in
:mod:`propensity.simulate.dynamics`, expands sessions into clickstream events, turns
purchase sessions into orders with items, deliveries and reviews, and records the
latent facts (purchases, experience bumps, deaths) the oracle needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pyarrow as pa

from propensity.calendar import PromotionCalendar
from propensity.config import ShiftConfig
from propensity.contracts import EVENT_TYPES
from propensity.simulate import campaigns as camp
from propensity.simulate import dynamics as dyn
from propensity.simulate.world import (
    ACQ,
    AGE_BANDS,
    BASE_CURRENCY,
    CARRIER_LATE,
    CARRIERS,
    CATEGORIES,
    CURRENCIES,
    DEVICES,
    GENDERS,
    MARKETS,
    PAYMENTS,
    TRAFFIC_ORGANIC,
    TRAFFIC_W,
    Catalogue,
    draw_traits,
)

US_PER_DAY = 86_400_000_000
CHANNELS = ("email", "sms", "push")
N_TYPES = len(EVENT_TYPES)
# codes are positions in the contract's EVENT_TYPES, looked up by name (the order there is the contract's)
T_PAGE, T_SEARCH, T_VIEW, T_FAV, T_CART, T_REMOVE, T_CHECKOUT, T_PURCHASE = (
    EVENT_TYPES.index(name)
    for name in (
        "page_view",
        "search",
        "product_view",
        "favorite",
        "add_to_cart",
        "remove_from_cart",
        "checkout",
        "purchase",
    )
)


@dataclass
class Buffers:
    """Per-table column lists filled day by day, concatenated once at the end."""

    cols: dict[str, dict[str, list[np.ndarray]]] = field(default_factory=dict)

    def add(self, table: str, **columns: np.ndarray) -> None:
        t = self.cols.setdefault(table, {})
        for k, v in columns.items():
            t.setdefault(k, []).append(np.asarray(v))

    def get(self, table: str) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) if v else np.array([]) for k, v in self.cols.get(table, {}).items()}


@dataclass
class SimOutput:
    start: date
    days: int
    catalogue: Catalogue
    traits: dict[str, np.ndarray]
    customer_ids: np.ndarray
    death_day: np.ndarray
    tables: dict[str, dict[str, np.ndarray]]
    fx: np.ndarray  # (days, n_currencies) rate to base
    n_events: int
    n_sessions: int
    n_anonymous_sessions: int


def _diurnal_seconds(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds into the day, peaking in the evening like real shop traffic."""
    hours = np.concatenate([rng.normal(20.0, 2.5, n // 2 + 1), rng.normal(12.5, 3.0, n // 2 + 1)])[:n]
    rng.shuffle(hours)
    return np.clip(hours * 3600.0, 0, 86_399).astype(np.int64)


def _pick_products(rng: np.random.Generator, cat: Catalogue, aff_cum: np.ndarray, price_sens: np.ndarray) -> np.ndarray:
    """One product per row: category by affinity, cheaper items for price-sensitive customers."""
    k = (rng.random(len(aff_cum))[:, None] > aff_cum).sum(axis=1)
    k = np.minimum(k, len(cat.cat_n) - 1)
    pos = np.floor(cat.cat_n[k] * rng.random(len(k)) ** (1.0 + 2.5 * price_sens)).astype(np.int64)
    return cat.cat_lo[k] + np.minimum(pos, cat.cat_n[k] - 1)


class Simulator:
    def __init__(
        self,
        customers: int,
        days: int,
        start: date,
        seed: int,
        products: int = 1500,
        shift: ShiftConfig | None = None,
        promotions: PromotionCalendar | None = None,
    ) -> None:
        self.n, self.days, self.start, self.seed = customers, days, start, seed
        self.shift = shift  # opt-in: without it (or before its day) no draw and no rate changes
        self.campaigns = camp.Campaigns()  # audiences sent back into the shop: see simulate.campaigns
        self.rng = np.random.default_rng(seed)
        self.cal = dyn.Calendar(start, days, promotions or PromotionCalendar())
        self.cat = Catalogue.draw(self.rng, products)
        self.tr = draw_traits(self.rng, customers, days)
        # drawn or derived apart from the main stream: adding them left every other draw as it was
        self.tr["aversion"] = camp.draw_aversion(seed, customers)
        self.tr["basket_eur"] = camp.UNITS_PER_ORDER * camp.expected_unit_price(
            self.cat, self.tr["aff_cum"], self.tr["price_sens"]
        )
        self.cids = np.array([f"C{i:07d}" for i in range(customers)], dtype=object)
        self.t0_us = int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp() * 1e6)
        self.markets = self.tr["market"]
        self.cur_idx = np.array([CURRENCIES.index(m.currency) for m in MARKETS])[self.markets]
        self.fx = self._fx_path()

    def _fx_path(self) -> np.ndarray:
        start = np.array([next(m.rate for m in MARKETS if m.currency == c) for c in CURRENCIES])
        steps = self.rng.normal(0.0, 0.004, (self.days, len(CURRENCIES)))
        steps[:, CURRENCIES.index(BASE_CURRENCY)] = 0.0
        return np.round(start * np.exp(np.cumsum(steps, axis=0)), 6)

    def run(self, on_events: Callable[[date, pl.DataFrame], None] | None = None) -> SimOutput:
        n, tr, rng = self.n, self.tr, self.rng
        traits = tr  # the truth store keeps the unshifted traits
        alive = np.ones(n, dtype=bool)
        death_day = np.full(n, -1, dtype=np.int64)
        bought = tr["bought0"].copy()
        last = tr["last0"].copy()
        n_orders = np.zeros(n, dtype=np.int64)  # loyalty counts orders the shop can see
        bump = np.zeros(n)
        schedule: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        buf = Buffers()
        counters = {"event": 0, "session": 0, "order": 0, "contact": 0, "review": 0}
        n_events = n_sessions = n_anon = 0
        signup_sec = rng.integers(0, 86_400, n)
        open_p = np.stack([tr["open_email"], tr["open_sms"], tr["open_push"]], axis=1)
        treated_until = np.full(n, -1, dtype=np.int64)  # last day of a campaign response window
        treated_ch = np.zeros(n, dtype=np.int64)
        campaign = np.full(n, -1, dtype=np.int64)
        sent_days: list[tuple[int, np.ndarray]] = []  # (day, customers) of campaign sends, for fatigue

        for t in range(self.days):
            if self.shift is not None and t == self.shift.day:
                ps = np.clip(tr["price_sens"] * self.shift.price_sensitivity, 0.0, 1.0)
                tr = self.tr = {**tr, "price_sens": ps}
            for idx, val in schedule.pop(t - 1, []):
                np.add.at(bump, idx, val)
            exists = tr["signup_day"] <= t
            active = alive & exists
            # 1. churn for good
            die = active & (rng.random(n) < dyn.hazard(tr, bump, n_orders))
            alive &= ~die
            death_day[die] = t
            active &= ~die
            # 2. campaign contacts (sent to dead customers too; they never open)
            u = rng.random(n)
            channel = np.full(n, -1, dtype=np.int64)
            cum = np.zeros(n)
            for ci, (_ch, sent, _click) in enumerate(dyn.contact_mix(tr, self.cal, t)):
                channel[exists & (u >= cum) & (u < cum + sent)] = ci
                cum = cum + sent
            campaign[:] = -1
            sends = self.campaigns.by_day.get(t)
            if sends is not None:  # audience members get the audience's send instead of the routine one
                idx, ch, code = sends
                channel[idx], campaign[idx] = ch, code
                treated_until[idx], treated_ch[idx] = t + camp.RESPONSE_DAYS - 1, ch
                self._aversion(t, idx, sent_days, alive, buf, schedule)
            contacted = channel >= 0
            coupon_ch = rng.random(len(CHANNELS)) < dyn.COUPON_P
            ch_safe = np.maximum(channel, 0)
            opened = contacted & active & (rng.random(n) < open_p[np.arange(n), ch_safe])
            clicked = opened & (rng.random(n) < dyn.CLICK_P)
            # 3. sessions and 4. purchases
            days_since = np.where(bought, t - np.nan_to_num(last), t - tr["signup_day"]).astype(float)
            s = dyn.session_p(tr, days_since, bought, self.cal.season(t))
            if self.shift is not None and t >= self.shift.day:
                s = np.clip(s * self.shift.sessions, 0.0, 0.9)
            q = dyn.purchase_p(tr, days_since, bought, self.cal.promo_depth(t))
            responding = treated_until >= t
            if responding.any():
                r = np.flatnonzero(responding)
                sub = {k: tr[k][r] for k in ("cycle", "tau", "price_sens", "aversion")}
                s_t, q_t = camp.treated_rates(sub, days_since[r], bought[r], open_p[r, treated_ch[r]], s[r], q[r])
                s, q = s.copy(), q.copy()
                s[r], q[r] = s_t, q_t
            sess = active & (clicked | (rng.random(n) < s))
            q_ok = q * (1.0 - dyn.CANCEL_P)
            qc_ok = np.where(
                coupon_ch[ch_safe] | (campaign >= 0),  # an audience's send always carries its offer
                dyn.clicked_purchase_p(tr, q_ok, True),
                dyn.clicked_purchase_p(tr, q_ok, False),
            )
            p_ok = np.where(clicked, qc_ok, q_ok)
            u = rng.random(n)
            success = sess & (u < p_ok)
            cancel = sess & ~success & (u < p_ok / (1.0 - dyn.CANCEL_P))
            bought |= success
            last[success] = t
            n_orders += success
            buf.add("purchases", idx=np.flatnonzero(success), day=np.full(success.sum(), t))

            self._contacts(t, buf, counters, channel, contacted, opened, clicked, coupon_ch, campaign)
            sid = np.flatnonzero(sess)
            day_events, n_a = self._sessions(
                t,
                sid,
                success,
                cancel,
                clicked,
                channel,
                coupon_ch,
                days_since,
                bought,
                buf,
                counters,
                schedule,
                responding,
            )
            n_events += day_events.height
            n_sessions += len(sid) + n_a
            n_anon += n_a
            if on_events is not None:
                on_events(self.start + timedelta(days=t), day_events)
        tables = {k: buf.get(k) for k in buf.cols}
        tables["signup_sec"] = {"sec": signup_sec}
        return SimOutput(
            self.start,
            self.days,
            self.cat,
            traits,
            self.cids,
            death_day,
            tables,
            self.fx,
            n_events,
            n_sessions,
            n_anon,
        )

    # ---------------------------------------------------------------------------------

    def _aversion(
        self,
        t: int,
        idx: np.ndarray,
        sent_days: list[tuple[int, np.ndarray]],
        alive: np.ndarray,
        buf: Buffers,
        schedule: dict,
    ) -> None:
        """A campaign send on day ``t`` to customers ``idx``: the averse ones among the alive get
        a churn-hazard bump from the next day on, larger after recent sends (fatigue). The sends
        are recorded; the oracle works the bumps out from them (``Truth.hazard_bumps``)."""
        recent = np.zeros(self.n)
        for day, sent in sent_days:
            if day >= t - camp.FATIGUE_DAYS:
                np.add.at(recent, sent, 1.0)
        sent_days.append((t, idx))
        buf.add("sends", idx=idx, day=np.full(len(idx), t))
        hit = idx[(self.tr["aversion"][idx] > 0) & alive[idx]]
        if not len(hit):
            return
        val = camp.aversion_bump(self.tr["aversion"][hit], recent[hit])
        schedule.setdefault(t, []).append((hit, val))

    def _shift_mix(self, t: int, name: str, labels: tuple[str, ...]) -> np.ndarray | None:
        """Weights over ``labels`` from the shift's ``name`` mix on a shifted day; None otherwise."""
        mix = getattr(self.shift, name, None) if self.shift is not None and t >= self.shift.day else None
        if not mix:
            return None
        unknown = sorted(set(mix) - set(labels))
        if unknown:
            raise ValueError(f"simulation.shift.{name}: unknown value(s) {unknown}; known: {list(labels)}")
        w = np.array([float(mix.get(x, 0.0)) for x in labels])
        if w.sum() <= 0:
            raise ValueError(f"simulation.shift.{name}: weights must sum to more than 0")
        return w / w.sum()

    def _contacts(
        self,
        t: int,
        buf: Buffers,
        counters: dict[str, int],
        channel: np.ndarray,
        contacted: np.ndarray,
        opened: np.ndarray,
        clicked: np.ndarray,
        coupon_ch: np.ndarray,
        campaign: np.ndarray,
    ) -> None:
        idx = np.flatnonzero(contacted)
        m = len(idx)
        if m == 0:
            return
        rng = self.rng
        ch = channel[idx]
        sent = self.t0_us + t * US_PER_DAY + (rng.integers(8, 11, m) * 3600 + rng.integers(0, 3600, m)) * 1_000_000
        open_at = sent + (rng.exponential(2.0, m) * 3600e6).astype(np.int64)
        click_at = open_at + (rng.exponential(3.0, m) * 60e6).astype(np.int64)
        buf.add(
            "campaign_contacts",
            num=np.arange(counters["contact"], counters["contact"] + m),
            idx=idx,
            channel=ch,
            day=np.full(m, t),
            coupon=coupon_ch[ch],
            sent=sent,
            opened=np.where(opened[idx], open_at, -1),
            clicked=np.where(clicked[idx], click_at, -1),
            campaign=campaign[idx],
        )
        counters["contact"] += m

    def _sessions(
        self,
        t: int,
        sid: np.ndarray,
        success: np.ndarray,
        cancel: np.ndarray,
        clicked: np.ndarray,
        channel: np.ndarray,
        coupon_ch: np.ndarray,
        days_since: np.ndarray,
        bought: np.ndarray,
        buf: Buffers,
        counters: dict[str, int],
        schedule: dict,
        offer: np.ndarray,
    ) -> tuple[pl.DataFrame, int]:
        rng, tr, cat = self.rng, self.tr, self.cat
        n_reg = len(sid)
        n_anon = int(rng.poisson(1.2 * n_reg + 5))
        m = n_reg + n_anon
        it = np.concatenate([dyn.intent(days_since[sid], tr["cycle"][sid], bought[sid]), rng.beta(1, 6, n_anon)])
        buys = np.concatenate([success[sid] | cancel[sid], np.zeros(n_anon, bool)])
        n_items = np.where(buys, 1 + rng.poisson(0.5, m), 0)
        counts = np.zeros((m, N_TYPES), dtype=np.int64)
        counts[:, T_PAGE] = 1 + rng.poisson(0.6, m)
        counts[:, T_SEARCH] = rng.poisson(0.2 + 0.6 * it)
        views = rng.poisson(0.6 + 4.0 * it)
        carts = np.where(buys, n_items + rng.poisson(0.3, m), rng.binomial(views, np.clip(0.04 + 0.22 * it, 0, 1)))
        views = np.maximum(views, carts)
        counts[:, T_VIEW] = views
        counts[:, T_FAV] = rng.binomial(views, 0.06)
        counts[:, T_CART] = carts
        counts[:, T_REMOVE] = rng.binomial(carts, 0.08)
        counts[:, T_CHECKOUT] = np.where(buys, 1, (carts > 0) & (rng.random(m) < 0.2 + 0.3 * it))
        counts[:, T_PURCHASE] = buys
        total = counts.sum(axis=1)
        e = int(total.sum())
        sess_of = np.repeat(np.arange(m), total)
        etype = np.repeat(np.tile(np.arange(N_TYPES), m), counts.ravel())
        # timing: session start + exponential gaps
        start_s = _diurnal_seconds(rng, m)
        gaps = rng.exponential(35.0, e) * (1.0 + 1.5 * it[sess_of])
        first = np.concatenate([[0], np.cumsum(total)[:-1]])
        cum = np.cumsum(gaps)
        offs = cum - np.repeat(cum[first] - gaps[first], total) - gaps  # 0 for the first event
        ev_us = self.t0_us + t * US_PER_DAY + ((start_s[sess_of] + offs) * 1e6).astype(np.int64)
        ev_us = np.minimum(ev_us, self.t0_us + (t + 1) * US_PER_DAY - 1)  # stays inside its day
        dwell = np.round(np.concatenate([gaps[1:], [0.0]]), 1)
        dwell[np.cumsum(total) - 1] = np.round(rng.exponential(25.0, m), 1)
        # products: views by affinity; favourites/carts/removals from the session's views
        cust = np.concatenate([sid, np.full(n_anon, -1)])
        cust_e = cust[sess_of]
        is_view = etype == T_VIEW
        aff = np.where(
            cust_e[is_view, None] >= 0,
            tr["aff_cum"][np.maximum(cust_e[is_view], 0)],
            np.linspace(1 / len(CATEGORIES), 1, len(CATEGORIES))[None, :],
        )
        ps = np.where(cust_e[is_view] >= 0, tr["price_sens"][np.maximum(cust_e[is_view], 0)], 0.4)
        prod = np.full(e, -1, dtype=np.int64)
        prod[is_view] = _pick_products(rng, cat, aff, ps)
        view_pos = np.flatnonzero(is_view)
        view_first = np.searchsorted(view_pos, first)  # index of each session's first view in view_pos
        refs = np.isin(etype, (T_FAV, T_CART, T_REMOVE))
        rs = sess_of[refs]
        pick = view_first[rs] + np.floor(rng.random(refs.sum()) * np.maximum(views[rs], 1)).astype(np.int64)
        prod[refs] = prod[view_pos[np.minimum(pick, len(view_pos) - 1)]] if len(view_pos) else -1
        # traffic source and device
        traffic_w = self._shift_mix(t, "traffic_mix", TRAFFIC_ORGANIC)
        traffic_w = TRAFFIC_W if traffic_w is None else traffic_w
        traffic = np.array(TRAFFIC_ORGANIC, dtype=object)[rng.choice(len(TRAFFIC_ORGANIC), m, p=traffic_w)]
        reg_click = clicked[sid]
        traffic[:n_reg][reg_click] = np.array(CHANNELS, dtype=object)[channel[sid][reg_click]]
        dev = rng.integers(0, len(DEVICES), m)
        own = rng.random(n_reg) < 0.75
        dev[:n_reg] = np.where(own, tr["device"][sid], dev[:n_reg])
        device_w = self._shift_mix(t, "device_mix", DEVICES)
        if device_w is not None:
            dev = rng.choice(len(DEVICES), m, p=device_w)
        # ids
        s0 = counters["session"]
        e0 = counters["event"]
        counters["session"] += m
        counters["event"] += e
        self._orders(
            t,
            sid,
            success,
            cancel,
            clicked,
            channel,
            coupon_ch,
            n_items[:n_reg],
            etype,
            sess_of,
            prod,
            ev_us,
            buf,
            counters,
            schedule,
            offer,
        )
        cid_e = np.where(cust_e >= 0, self.cids[np.maximum(cust_e, 0)], None)
        pid_e = np.where(prod >= 0, self.cat.product_id[np.maximum(prod, 0)], None)
        df = pl.DataFrame(
            {
                "event_num": np.arange(e0, e0 + e),
                "customer_id": pl.Series(cid_e.tolist(), dtype=pl.String),
                "session_num": s0 + sess_of,
                "event_time": ev_us,
                "event_type": np.array(EVENT_TYPES)[etype],
                "product_id": pl.Series(pid_e.tolist(), dtype=pl.String),
                "device": np.array(DEVICES)[dev][sess_of],
                "traffic_source": pl.Series(traffic[sess_of].tolist(), dtype=pl.String),
                "dwell_seconds": dwell,
            }
        ).select(
            ("E" + pl.col("event_num").cast(pl.String).str.zfill(10)).alias("event_id"),
            "customer_id",
            ("S" + pl.col("session_num").cast(pl.String).str.zfill(9)).alias("session_id"),
            pl.from_epoch("event_time", time_unit="us").dt.replace_time_zone("UTC"),
            "event_type",
            "product_id",
            "device",
            "traffic_source",
            "dwell_seconds",
        )
        return df, n_anon

    def _orders(
        self,
        t: int,
        sid: np.ndarray,
        success: np.ndarray,
        cancel: np.ndarray,
        clicked: np.ndarray,
        channel: np.ndarray,
        coupon_ch: np.ndarray,
        n_items: np.ndarray,
        etype: np.ndarray,
        sess_of: np.ndarray,
        prod: np.ndarray,
        ev_us: np.ndarray,
        buf: Buffers,
        counters: dict[str, int],
        schedule: dict,
        offer: np.ndarray,
    ) -> None:
        rng = self.rng
        buys = success[sid] | cancel[sid]
        osess = np.flatnonzero(buys)
        k = len(osess)
        if k == 0:
            return
        cust = sid[osess]
        onum = np.arange(counters["order"], counters["order"] + k)
        counters["order"] += k
        # items: the first n_items cart events of each purchase session
        cart_pos = np.flatnonzero(etype == T_CART)
        cart_sess = sess_of[cart_pos]
        first_cart = np.searchsorted(cart_sess, osess)
        ni = n_items[osess]
        item_order = np.repeat(np.arange(k), ni)
        line = np.arange(ni.sum()) - np.repeat(np.cumsum(ni) - ni, ni)
        item_prod = prod[cart_pos[first_cart[item_order] + line]]
        qty = 1 + rng.poisson(0.25, len(item_prod))
        cur = self.cur_idx[cust]
        rate = self.fx[t, cur]
        unit = np.round(self.cat.price_eur[item_prod] / rate[item_order], 2).clip(0.01)
        gross = np.bincount(item_order, weights=unit * qty, minlength=k)
        purchase_pos = np.flatnonzero(etype == T_PURCHASE)
        o_time = ev_us[purchase_pos[np.searchsorted(sess_of[purchase_pos], osess)]]
        promo = self.cal.promo_depth(t)
        has_coupon = clicked[cust] & coupon_ch[np.maximum(channel[cust], 0)]
        redeems = offer[cust]  # in a campaign's response window: the offer's discount, on every purchase
        coupon_rate = np.where(redeems, camp.OFFER_DISCOUNT, np.where(has_coupon, dyn.COUPON_RATE, 0.0))
        disc = np.round(gross * (promo + coupon_rate), 2)
        coupon_code = np.where(
            redeems, camp.OFFER_COUPON, np.where(has_coupon, "SAVE10", np.where(promo > 0, "PROMO", None))
        )
        ok = success[cust]
        market = self.markets[cust]
        late_p = np.array([m.late_p for m in MARKETS])[market]
        carrier = rng.integers(0, len(CARRIERS), k)
        late = ok & (rng.random(k) < late_p * CARRIER_LATE[carrier])
        promised = np.array([m.promised_days for m in MARKETS])[market]
        ship_us = o_time + (rng.uniform(0.1, 1.2, k) * US_PER_DAY).astype(np.int64)
        transit = np.where(late, promised + 1 + rng.geometric(0.45, k), promised * rng.uniform(0.5, 1.0, k))
        deliv_us = ship_us + (transit * US_PER_DAY).astype(np.int64)
        refund = ok & (rng.random(k) < 0.03 + 0.12 * late)
        refund_us = deliv_us + (rng.uniform(2, 14, k) * US_PER_DAY).astype(np.int64)
        cancel_us = o_time + (rng.uniform(5, 120, k) * 60e6).astype(np.int64)
        review = ok & (rng.random(k) < 0.2 + 0.2 * late)
        review_us = deliv_us + (rng.uniform(0.5, 10, k) * US_PER_DAY).astype(np.int64)
        rating = np.clip(np.round(4.35 - 1.7 * late + rng.normal(0, 0.9, k)), 1, 5).astype(np.int64)
        review_prod = item_prod[np.cumsum(ni) - ni]
        # latent experience bumps, effective from the day after they happen
        for mask, when, val in (
            (late, deliv_us, dyn.LATE_BUMP),
            (review & (rating <= 2), review_us, dyn.LOW_RATING_BUMP),
        ):
            if mask.any():
                bday = (when[mask] - self.t0_us) // US_PER_DAY
                for d in np.unique(bday):
                    sel = bday == d
                    schedule.setdefault(int(d), []).append((cust[mask][sel], np.full(sel.sum(), val)))
                buf.add(
                    "bumps",
                    idx=cust[mask],
                    day=(when[mask] - self.t0_us) // US_PER_DAY,
                    value=np.full(mask.sum(), val),
                )
        status = np.where(~ok, 2, np.where(refund, 1, 0))  # 0 paid, 1 refunded, 2 cancelled
        buf.add(
            "orders",
            num=onum,
            idx=cust,
            time=o_time,
            status=status,
            cur=cur,
            gross=np.round(gross, 2),
            disc=disc,
            coupon=coupon_code,
            pay=rng.integers(0, len(PAYMENTS), k),
            refund_us=refund_us,
            cancel_us=cancel_us,
        )
        buf.add(
            "order_items",
            onum=onum[item_order],
            line=line,
            prod=item_prod,
            qty=qty,
            unit=unit,
            time=o_time[item_order],
        )
        buf.add(
            "deliveries",
            onum=onum[ok],
            carrier=carrier[ok],
            promised=promised[ok],
            ship=ship_us[ok],
            deliv=deliv_us[ok],
        )
        r = review
        buf.add("reviews", onum=onum[r], idx=cust[r], prod=review_prod[r], rating=rating[r], time=review_us[r])


def _ts(micros: np.ndarray) -> pl.Series:
    return pl.from_epoch(pl.Series(np.asarray(micros, dtype=np.int64)), time_unit="us").dt.replace_time_zone("UTC")


def _ids(prefix: str, nums: np.ndarray, width: int) -> pl.Series:
    return prefix + pl.Series(nums).cast(pl.String).str.zfill(width)


def tables_from_output(
    out: SimOutput, start_us: int, days: int | None = None, campaign_names: list[str] | None = None
) -> dict[str, pa.Table]:
    """Source-system rows (OLTP tables + FX drops) as they stand at the end of the first ``days`` days.

    ``days`` below the simulated horizon hides the future: the shop's systems only hold
    what happened before it (the rest of the world is already drawn, so a later run that
    reveals more days, or sends campaigns, agrees on the past).
    """
    visible = out.days if days is None else days
    end_us = start_us + visible * US_PER_DAY
    tr = out.traits
    cids = out.customer_ids
    cat = out.catalogue
    tables: dict[str, pl.DataFrame] = {}

    signup_us = start_us + tr["signup_day"] * US_PER_DAY + out.tables["signup_sec"]["sec"] * 1_000_000
    exists = tr["signup_day"] < visible
    m = tr["market"]
    # customers who existed before the window were migrated into this system on day 0
    upd = np.maximum(signup_us, start_us)
    tables["customers"] = pl.DataFrame(
        {
            "customer_id": cids[exists],
            "signup_time": _ts(signup_us[exists]),
            "country": np.array([x.country for x in MARKETS])[m][exists],
            "currency": np.array([x.currency for x in MARKETS])[m][exists],
            "language": np.array([x.language for x in MARKETS])[m][exists],
            "acquisition_channel": np.array(ACQ)[tr["acq"]][exists],
            "email_consent": tr["email_consent"][exists] > 0,
            "sms_consent": tr["sms_consent"][exists] > 0,
            "push_consent": tr["push_consent"][exists] > 0,
            "global_opt_out": tr["opted_out"][exists] > 0,
            "gender": np.array(GENDERS)[tr["gender"]][exists],
            "age_band": np.array(AGE_BANDS)[tr["age"]][exists],
            "created_at": _ts(upd[exists]),
            "updated_at": _ts(upd[exists]),
        }
    )
    tables["products"] = pl.DataFrame(
        {
            "product_id": cat.product_id,
            "category": np.array([c[0] for c in CATEGORIES])[cat.category],
            "brand": cat.brand,
            "list_price": cat.price_eur,
            "currency": np.full(len(cat.product_id), BASE_CURRENCY),
            "created_at": _ts(np.full(len(cat.product_id), start_us)),
            "updated_at": _ts(np.full(len(cat.product_id), start_us)),
        }
    )
    o = out.tables.get("orders", {})
    if o:
        refunded = (o["status"] == 1) & (o["refund_us"] < end_us)
        status = np.where(o["status"] == 2, "cancelled", np.where(refunded, "refunded", "paid"))
        upd = np.where(o["status"] == 2, o["cancel_us"], np.where(refunded, o["refund_us"], o["time"]))
        upd = np.minimum(upd, end_us - 1)
        tables["orders"] = pl.DataFrame(
            {
                "order_id": _ids("O", o["num"], 8),
                "customer_id": cids[o["idx"]],
                "order_time": _ts(o["time"]),
                "status": status,
                "currency": np.array(CURRENCIES)[o["cur"]],
                "gross_amount": o["gross"],
                "discount_amount": o["disc"],
                "coupon_code": pl.Series(o["coupon"].tolist(), dtype=pl.String),
                "payment_method": np.array(PAYMENTS)[o["pay"]],
                "created_at": _ts(o["time"]),
                "updated_at": _ts(upd),
            }
        )
        it = out.tables["order_items"]
        tables["order_items"] = pl.DataFrame(
            {
                "order_id": _ids("O", it["onum"], 8),
                "line_no": it["line"],
                "product_id": cat.product_id[it["prod"]],
                "quantity": it["qty"],
                "unit_price": it["unit"],
                "created_at": _ts(it["time"]),
                "updated_at": _ts(it["time"]),
            }
        )
        d = out.tables["deliveries"]
        shipped = d["ship"] < end_us
        delivered = d["deliv"] < end_us
        tables["deliveries"] = (
            pl.DataFrame(
                {
                    "delivery_id": _ids("D", d["onum"], 8),
                    "order_id": _ids("O", d["onum"], 8),
                    "shipped_time": _ts(d["ship"]),
                    "delivered_time": _ts(np.where(delivered, d["deliv"], 0)),
                    "promised_days": d["promised"],
                    "carrier": np.array(CARRIERS)[d["carrier"]],
                    "created_at": _ts(d["ship"]),
                    "updated_at": _ts(np.where(delivered, d["deliv"], d["ship"])),
                }
            )
            .with_columns(
                pl.when(pl.Series(delivered)).then(pl.col("delivered_time")).otherwise(None).alias("delivered_time")
            )
            .filter(pl.Series(shipped))
        )
        r = out.tables.get("reviews", {})
        if r and len(r["onum"]):
            keep = r["time"] < end_us
            tables["reviews"] = pl.DataFrame(
                {
                    "review_id": _ids("R", r["onum"], 8),
                    "customer_id": cids[r["idx"]],
                    "order_id": _ids("O", r["onum"], 8),
                    "product_id": cat.product_id[r["prod"]],
                    "rating": r["rating"],
                    "review_time": _ts(r["time"]),
                    "created_at": _ts(r["time"]),
                    "updated_at": _ts(r["time"]),
                }
            ).filter(pl.Series(keep))
    c = out.tables.get("campaign_contacts", {})
    if c:
        opened = (c["opened"] >= 0) & (c["opened"] < end_us)
        clicked = (c["clicked"] >= 0) & (c["clicked"] < end_us)
        ch = np.array(CHANNELS)[c["channel"]]
        day_str = np.array([(out.start + timedelta(days=int(x))).strftime("%Y%m%d") for x in range(out.days)])
        tables["campaign_contacts"] = pl.DataFrame(
            {
                "contact_id": _ids("K", c["num"], 9),
                "campaign_id": pl.Series(ch, dtype=pl.String) + "-" + pl.Series(day_str[c["day"]]),
                "__campaign": c["campaign"] if "campaign" in c else np.full(len(c["idx"]), -1),
                "customer_id": cids[c["idx"]],
                "channel": ch,
                "offer": pl.Series(np.where(c["coupon"], "SAVE10", None).tolist(), dtype=pl.String),
                "sent_time": _ts(c["sent"]),
                "opened_time": _ts(np.where(opened, c["opened"], 0)),
                "clicked_time": _ts(np.where(clicked, c["clicked"], 0)),
                "created_at": _ts(c["sent"]),
                "updated_at": _ts(np.where(clicked, c["clicked"], np.where(opened, c["opened"], c["sent"]))),
            }
        ).with_columns(
            pl.when(pl.Series(opened)).then(pl.col("opened_time")).otherwise(None).alias("opened_time"),
            pl.when(pl.Series(clicked)).then(pl.col("clicked_time")).otherwise(None).alias("clicked_time"),
        )
        if campaign_names:
            ours = pl.col("__campaign").replace_strict(
                dict(enumerate(campaign_names)), default=None, return_dtype=pl.String
            )
            tables["campaign_contacts"] = tables["campaign_contacts"].with_columns(
                ours.fill_null(pl.col("campaign_id")).alias("campaign_id")
            )
        tables["campaign_contacts"] = tables["campaign_contacts"].drop("__campaign")
    end = pl.lit(end_us).cast(pl.Datetime("us", "UTC"))
    tables = {k: v.filter(pl.col("created_at") < end) if "created_at" in v.columns else v for k, v in tables.items()}
    return {k: v.to_arrow() for k, v in tables.items()}


def fx_table(out: SimOutput, t: int) -> pa.Table:
    day = out.start + timedelta(days=t)
    return pa.table(
        {
            "date": pa.array([day] * len(CURRENCIES), pa.date32()),
            "currency": list(CURRENCIES),
            "base_currency": [BASE_CURRENCY] * len(CURRENCIES),
            "rate": out.fx[t],
        }
    )
