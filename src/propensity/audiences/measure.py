"""Did the campaign work? Treatment vs control after the send, with confidence intervals.

The control group is a random holdout of the same ranked audience (hash of id + audience
+ date), so the difference in outcomes over the window is an unbiased estimate of the
campaign's effect on the treated. Intervals are normal approximations (Wald for the
difference of proportions and of mean revenue; delta method on the log risk ratio for the
relative uplift), which is what a marketer's A/B readout uses at these sample sizes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl

from propensity.errors import RequestError

Z95 = 1.959963984540054


@dataclass
class Uplift:
    audience: str
    date: str
    window_days: int
    n_treatment: int
    n_control: int
    conv_treatment: float
    conv_control: float
    uplift_abs: float
    uplift_abs_ci: tuple[float, float]
    uplift_rel: float | None
    uplift_rel_ci: tuple[float, float] | None
    incremental_conversions: float
    incremental_conversions_ci: tuple[float, float]
    revenue_per_treated: float
    revenue_per_control: float
    incremental_revenue: float
    incremental_revenue_ci: tuple[float, float]
    cost: float
    roi: float | None
    #: per 1,000 contacts (treated members): incremental conversions, and incremental profit =
    #: (incremental revenue x margin - cost) / contacts x 1,000, each with its 95% interval
    conversions_per_1000: float = 0.0
    conversions_per_1000_ci: tuple[float, float] = (0.0, 0.0)
    profit_per_1000: float = 0.0
    profit_per_1000_ci: tuple[float, float] = (0.0, 0.0)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        rel = f"{self.uplift_rel:+.1%}" if self.uplift_rel is not None else "n/a"
        roi = f"{self.roi:+.2f}" if self.roi is not None else "n/a"
        lo, hi = self.uplift_abs_ci
        return (
            f"{self.audience} {self.date} (+{self.window_days}d): conversion treatment {self.conv_treatment:.2%} "
            f"(n={self.n_treatment:,}) vs control {self.conv_control:.2%} (n={self.n_control:,}); "
            f"uplift {self.uplift_abs:+.2%} [95% CI {lo:+.2%}, {hi:+.2%}], relative {rel}; "
            f"incremental conversions {self.incremental_conversions:.1f}, incremental revenue "
            f"{self.incremental_revenue:,.2f}, cost {self.cost:,.2f}, ROI {roi}; per 1,000 contacts: "
            f"{self.conversions_per_1000:+.1f} conversions [{self.conversions_per_1000_ci[0]:+.1f}, "
            f"{self.conversions_per_1000_ci[1]:+.1f}], profit {self.profit_per_1000:+,.1f} "
            f"[{self.profit_per_1000_ci[0]:+,.1f}, {self.profit_per_1000_ci[1]:+,.1f}]"
        )


def outcomes(members: pl.DataFrame, orders: pl.DataFrame, start: date, days: int) -> pl.DataFrame:
    """Per member: converted (any non-cancelled order in the window) and revenue (``net``)."""
    sent = members.select("customer_id", "group", "offer_cost").with_columns(pl.lit(start).alias("dt"))
    return member_outcomes(sent, orders, days).drop("dt")


def member_outcomes(members: pl.DataFrame, orders: pl.DataFrame, window: int) -> pl.DataFrame:
    """``members`` (each with the date ``dt`` it was sent on) with ``orders`` and ``revenue``
    (``net``) of its non-cancelled orders in ``[dt, dt + window)``, and ``converted``."""
    o = orders.filter(pl.col("status") != "cancelled").select(
        "customer_id", pl.col("order_time").dt.date().alias("day"), "net"
    )
    joined = members.select("customer_id", "dt").unique().join(o, on="customer_id", how="inner")
    inside = joined.filter((pl.col("day") >= pl.col("dt")) & (pl.col("day") < pl.col("dt") + pl.duration(days=window)))
    per = inside.group_by("customer_id", "dt").agg(pl.len().alias("orders"), pl.col("net").sum().alias("revenue"))
    return members.join(per, on=["customer_id", "dt"], how="left").with_columns(
        (pl.col("orders").fill_null(0) > 0).alias("converted"), pl.col("revenue").fill_null(0.0)
    )


def uplift(
    audience: str, d: date, window: int, rows: pl.DataFrame, contact_cost: float = 0.0, margin: float = 1.0
) -> Uplift:
    """Uplift statistics from per-member outcomes (``group``, ``converted``, ``revenue``, ``offer_cost``).

    Cost = treated converters x offer cost (the offer is redeemed on a purchase) + contacts x
    ``contact_cost``; ROI = (incremental revenue x ``margin`` - cost) / cost.
    """
    t = rows.filter(pl.col("group") == "treatment")
    c = rows.filter(pl.col("group") == "control")
    nt, nc = t.height, c.height
    if nt == 0 or nc == 0:
        raise RequestError(f"audience {audience!r} at {d}: need both groups to measure (treatment {nt}, control {nc})")
    yt, yc = t["converted"].cast(pl.Float64).to_numpy(), c["converted"].cast(pl.Float64).to_numpy()
    pt, pc = float(yt.mean()), float(yc.mean())
    diff = pt - pc
    se = math.sqrt(pt * (1 - pt) / nt + pc * (1 - pc) / nc)
    ci = (diff - Z95 * se, diff + Z95 * se)
    rel = rel_ci = None
    if pc > 0 and pt > 0:
        rr = pt / pc
        se_log = math.sqrt((1 - pt) / (nt * pt) + (1 - pc) / (nc * pc))
        rel = rr - 1
        rel_ci = (rr * math.exp(-Z95 * se_log) - 1, rr * math.exp(Z95 * se_log) - 1)
    rt, rc = t["revenue"].to_numpy(), c["revenue"].to_numpy()
    dr = float(rt.mean() - rc.mean())
    se_r = math.sqrt(float(np.var(rt, ddof=1)) / nt + float(np.var(rc, ddof=1)) / nc) if nt > 1 and nc > 1 else 0.0
    offer_cost = float(t.filter(pl.col("converted"))["offer_cost"].sum())
    cost = offer_cost + contact_cost * nt
    inc_rev = dr * nt
    # profit per contact: margin on the revenue difference less the cost per contact; the
    # cost is taken as known, so the interval is the revenue difference's, scaled by the margin
    per_contact = dr * margin - cost / nt
    half = Z95 * se_r * margin
    return Uplift(
        audience=audience,
        date=d.isoformat(),
        window_days=window,
        n_treatment=nt,
        n_control=nc,
        conv_treatment=pt,
        conv_control=pc,
        uplift_abs=diff,
        uplift_abs_ci=ci,
        uplift_rel=rel,
        uplift_rel_ci=rel_ci,
        incremental_conversions=diff * nt,
        incremental_conversions_ci=(ci[0] * nt, ci[1] * nt),
        revenue_per_treated=float(rt.mean()),
        revenue_per_control=float(rc.mean()),
        incremental_revenue=inc_rev,
        incremental_revenue_ci=((dr - Z95 * se_r) * nt, (dr + Z95 * se_r) * nt),
        cost=cost,
        roi=(inc_rev * margin - cost) / cost if cost > 0 else None,
        conversions_per_1000=1000 * diff,
        conversions_per_1000_ci=(1000 * ci[0], 1000 * ci[1]),
        profit_per_1000=1000 * per_contact,
        profit_per_1000_ci=(1000 * (per_contact - half), 1000 * (per_contact + half)),
    )


def measure(settings, audience: str, d: date, window: int, contact_cost: float = 0.0, margin: float = 1.0) -> Uplift:
    """Read the audience's members and the clean orders after ``d``; compute :class:`Uplift`."""
    from propensity.audiences import read_members
    from propensity.features.build import orders_in_base
    from propensity.features.inputs import ShopData
    from propensity.lake import Lake

    members = read_members(settings, audience, d)
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    data = ShopData.load(lake)
    end = data.end
    need = datetime(d.year, d.month, d.day, tzinfo=UTC) + timedelta(days=window)
    if end is None or end < need - timedelta(days=1):
        raise RequestError(f"measure {audience} {d}: the clean zone ends at {end}; the {window}-day window is not over")
    t0 = datetime(d.year, d.month, d.day, tzinfo=UTC)
    future = data.between(t0, t0 + timedelta(days=window))
    orders = orders_in_base(future, settings.base_currency)
    return uplift(audience, d, window, outcomes(members, orders, d, window), contact_cost, margin)
