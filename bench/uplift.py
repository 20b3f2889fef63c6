"""Target the persuadable: four arms of the same size and budget, measured against their control groups.

The loop runs on the simulator (with its campaign response: persuadables, saturation, offer
cannibalisation, sleeping dogs; :mod:`propensity.simulate.campaigns`), end to end through
the library's stages:

1. simulate a shop whose systems end the day before the first campaign; collect, validate,
   train the propensity model of the offer's question (a task ``purchase``: who, among the
   customers active in the last year, buys in the 14-day window), its champion;
2. **exploration**: on ``--explore`` dates an ``explore`` audience sends the offer to a random
   slice of the eligible base (``exploration: 1``: half treated, half control); the shop
   responds (re-simulated with the sends), and the uplift model ``propensity-uplift-bench15``
   is trained on those members (:mod:`propensity.models.uplift_train`);
3. **four arms** on each of ``--dates`` campaign dates, each on its own quarter of the base
   (``customer_hash``), each ``--size`` members with half held out as control:
   ``random`` (a hash order), ``propensity`` (the purchase score), ``uplift`` (the uplift
   model's incremental profit) and ``oracle`` (the same profit formula on the simulator's
   true effects: the ceiling); no arm drops unprofitable contacts, so all have the same size;
4. every member's outcome over the 14 days after its send: converted, and its profit:
   gross x margin - discounts - the offer's cost when redeemed. An arm's realised incremental
   conversions and profit per 1,000 contacts are its treatment minus control means, pooled
   over the dates; a bootstrap over members (within date, arm and group) gives the 95% intervals;
5. the same two figures expected from the truth store for the same treated members (their
   exact effects, so no outcome noise: at these sizes the realised profit's interval is about
   +-250 per 1,000 contacts, wider than any difference between the arms). The last line is on
   the expected figures.

Run: ``.venv/bin/python bench/uplift.py [--customers 20000] [--dates 6] [--explore 4] [--home DIR]``.
The last line reads ``uplift/propensity profit ratio R (95% CI LO-HI); uplift share of oracle S``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from propensity.audiences import build, read_members
from propensity.collect import collect
from propensity.config import DirtConfig, Settings
from propensity.features.build import orders_in_base
from propensity.features.inputs import ShopData
from propensity.lake import Lake
from propensity.models.train import Trainer
from propensity.models.uplift_train import train_uplift
from propensity.scoring import score
from propensity.simulate import simulate
from propensity.simulate.oracle import Truth
from propensity.validation import Gate

WINDOW = 14
OFFER_COST, DISCOUNT = 1.0, 0.15  # the simulator's offer: 15% off every purchase in the window
OFFER = f"{{code: BENCH15, cost: {OFFER_COST}, discount: {DISCOUNT}}}"
ARMS = ("random", "propensity", "uplift", "oracle")
#: the offer's question as a task: who buys in the response window, among everyone active in the last year
PURCHASE_TASK = {
    "horizon_days": 14,
    "label": "purchase",
    "active_days": 365,
    "test_snapshots": 2,
    "description": "customers active (a session or a purchase) in the last 365 days: a purchase in the next 14 days?",
}
MARGIN = 0.3
EXPLORE = """audiences:
  - name: explore
    priority: 1
    task: purchase
    rule: "TRUE"
    rank: random
    exploration: 1.0
    max_size: {explore_size}
    channels: [email]
    offer: {offer}
"""
#: one arm: a quarter of the base by customer hash, half of its members held out as control
ARM = """  - name: {name}
    priority: {priority}
    task: purchase
    rule: "customer_hash >= {lo} AND customer_hash < {hi}"
    max_size: {size}
    channels: [email]
    offer: {offer}
    control_fraction: 0.5
{ranking}
"""
#: no arm drops predicted sleeping dogs or unprofitable contacts: every arm fills its size
PROFIT = """    rank: incremental_profit
    value: aov_365d
    margin: {margin}
    min_uplift: -1.0
    min_profit: null"""
RANKINGS = {
    "random": "    rank: random",
    "propensity": "    rank: score",
    "uplift": PROFIT,
    # the ceiling: the truth store's expected incremental profit of each customer (see oracle_column)
    "oracle": "    rank: uplift\n    uplift_model: oracle\n    min_uplift: -1.0e9",
}


def audiences_yaml(explore_size: int, size: int) -> str:
    arms = [
        ARM.format(
            name=arm,
            priority=k + 2,
            lo=k / 4,
            hi=(k + 1) / 4 if k < 3 else 2,
            size=size,
            offer=OFFER,
            ranking=RANKINGS[arm].format(margin=MARGIN),
        )
        for k, arm in enumerate(ARMS)
    ]
    return EXPLORE.format(explore_size=explore_size, offer=OFFER) + "".join(arms)


def days(a: date, b: date) -> list[date]:
    return [a + timedelta(days=i) for i in range((b - a).days + 1)]


def refresh(s: Settings, start: date, end: date) -> None:
    """Collect and validate ``start..end`` (the days a re-simulation may have changed)."""
    collect(s, start, end)
    Gate(s).validate(days(start, end))


def true_effects(truth: Truth, d: date, ids: np.ndarray) -> pl.DataFrame:
    """Per customer, the truth store's effect of an email send on ``d``: ``uplift`` (purchase
    probability) and ``profit`` (expected incremental profit in EUR, the bench's accounting:
    margin on the basket's extra purchases, the discount on every purchase in the window,
    the offer's cost per redemption)."""
    e = pl.from_arrow(truth.effects(d, ids, "email"))
    basket = truth.traits["basket_eur"][np.searchsorted(truth.customer_ids.astype(str), e["customer_id"].to_numpy())]
    p_t, p_c = e["p_treated"].to_numpy(), e["p_control"].to_numpy()
    profit = MARGIN * basket * (p_t - p_c) - DISCOUNT * basket * p_t - OFFER_COST * p_t
    return e.select("customer_id", "uplift").with_columns(pl.Series("profit", profit))


def oracle_column(s: Settings, d: date):
    """The candidates enrichment that gives the oracle arm its ranking: each customer's true
    expected incremental profit of the send on ``d`` (as ``uplift_oracle``, ranked by ``rank: uplift``)."""

    def enrich(cands: pl.DataFrame) -> pl.DataFrame:
        truth = Truth.read(s.truth_dir)
        known = set(truth.customer_ids.tolist())
        ids = np.array([c for c in cands["customer_id"].to_list() if c in known], dtype=object)
        eff = true_effects(truth, d, ids).select("customer_id", pl.col("profit").alias("uplift_oracle"))
        return cands.join(eff, on="customer_id", how="left")

    return enrich


def member_outcomes(members: pl.DataFrame, orders: pl.DataFrame, d: date, offer_cost: float) -> pl.DataFrame:
    """Per member: converted (a non-cancelled order in the window) and profit (base currency)."""
    t0 = pl.lit(datetime(d.year, d.month, d.day, tzinfo=UTC)).dt.cast_time_unit("us")
    o = orders.filter(
        (pl.col("order_time") >= t0)
        & (pl.col("order_time") < t0 + pl.duration(days=WINDOW))
        & (pl.col("status") != "cancelled")
    ).select(
        "customer_id",
        (pl.col("gross_amount") * pl.col("rate") * MARGIN - pl.col("discount_amount") * pl.col("rate")).alias("p"),
    )
    per = o.group_by("customer_id").agg(pl.len().alias("orders"), pl.col("p").sum().alias("gross_profit"))
    out = members.select("customer_id", "group").join(per, on="customer_id", how="left")
    out = out.with_columns(
        (pl.col("orders").fill_null(0) > 0).alias("converted"), pl.col("gross_profit").fill_null(0.0)
    )
    redeemed = (pl.col("group") == "treatment") & pl.col("converted")
    return out.with_columns(
        (pl.col("gross_profit") - pl.when(redeemed).then(offer_cost).otherwise(0.0)).alias("profit")
    )


def per_thousand(parts: list[pl.DataFrame], rng: np.random.Generator | None = None) -> tuple[float, float]:
    """(incremental conversions, incremental profit) per 1,000 contacts, pooled over dates;
    with ``rng``, on a bootstrap resample of each date's treatment and control groups."""
    conv = prof = treated = 0.0
    for part in parts:
        t, c = part.filter(pl.col("group") == "treatment"), part.filter(pl.col("group") == "control")
        tc, cc = t["converted"].to_numpy().astype(float), c["converted"].to_numpy().astype(float)
        tp, cp = t["profit"].to_numpy(), c["profit"].to_numpy()
        if rng is not None:
            i, j = rng.integers(0, len(tc), len(tc)), rng.integers(0, len(cc), len(cc))
            tc, tp, cc, cp = tc[i], tp[i], cc[j], cp[j]
        conv += (tc.mean() - cc.mean()) * len(tc)
        prof += (tp.mean() - cp.mean()) * len(tc)
        treated += len(tc)
    return 1000 * conv / treated, 1000 * prof / treated


def table(point: dict[str, tuple[float, float]], boot: np.ndarray) -> None:
    """One row per arm: incremental conversions and profit with their bootstrap 95% intervals."""
    print(f"{'arm':<11} {'incr. conversions [95% CI]':>30} {'incr. profit [95% CI]':>32}")
    for i, arm in enumerate(ARMS):
        (c, pr), (clo, chi), (plo, phi) = point[arm], *(np.percentile(boot[:, i, j], [2.5, 97.5]) for j in (0, 1))
        print(f"{arm:<11} {c:>9.1f} [{clo:>7.1f}, {chi:>7.1f}]      {pr:>9.1f} [{plo:>8.1f}, {phi:>8.1f}]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--explore", type=int, default=4, help="exploration dates before the arms")
    p.add_argument("--explore-size", type=int, default=6_000, help="members of each exploration slice")
    p.add_argument("--dates", type=int, default=6, help="campaign dates with the four arms")
    p.add_argument("--every", type=int, default=14, help="days between campaign dates")
    p.add_argument("--size", type=int, default=1_000, help="members per arm and date (treatment + control)")
    p.add_argument("--first", type=int, default=330, help="day index of the first campaign")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--home", type=Path, help="keep the run here (default: a temp dir, removed)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t_all = time.perf_counter()

    home = a.home or Path(tempfile.mkdtemp(prefix="uplift-"))
    start = date(2025, 1, 1)
    n = a.explore + a.dates
    all_dates = [start + timedelta(days=a.first + k * a.every) for k in range(n)]
    explore, arms = all_dates[: a.explore], all_dates[a.explore :]
    horizon = a.first + (n - 1) * a.every + WINDOW + 1
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "audiences.yaml"
    conf.write_text(audiences_yaml(a.explore_size, a.size))
    s = Settings(
        home=home,
        validation={"docs": False},
        tasks={"conversion": None, "repurchase": None, "churn": None, "purchase": PURCHASE_TASK},
        audiences={"file": str(conf), "salt": "bench-uplift", "frequency_cap": 20},
        uplift={"test_campaigns": 1},
    )
    world = {"customers": a.customers, "days": horizon, "start": start, "seed": a.seed, "dirt_cfg": DirtConfig(rate=0)}

    t0 = time.perf_counter()
    simulate(s, until=all_dates[0] - timedelta(days=1), **world)
    refresh(s, start, all_dates[0] - timedelta(days=1))
    r = Trainer(s).train(["purchase"])["tasks"]["purchase"]
    took = time.perf_counter() - t0
    print(f"setup: {a.customers:,} customers, purchase model test AUC {r['test_auc']:.3f} ({took:.0f} s)")

    def campaign(k: int, d: date, names: list[str], enrich=None) -> None:
        t1 = time.perf_counter()
        if k:
            simulate(s, until=d - timedelta(days=1), campaigns=True, **world)
            refresh(s, all_dates[0], d - timedelta(days=1))
        score(s, d, ["purchase"])
        run = build(s, d, names, enrich=enrich)
        sizes = ", ".join(f"{x.spec.name} {x.treatment}+{x.control}" for x in run.selections)
        print(f"{d}: {sizes} ({time.perf_counter() - t1:.0f} s)", flush=True)

    for k, d in enumerate(explore):
        campaign(k, d, ["explore"])
    simulate(s, until=arms[0] - timedelta(days=1), campaigns=True, **world)
    refresh(s, all_dates[0], arms[0] - timedelta(days=1))
    up = train_uplift(s, "bench15")
    q = up.baseline_qini
    print(
        f"uplift model: {up.learner}-learner, {up.rounds} rounds, {up.n_train:,} training members; out-of-time "
        f"Qini {up.metrics['qini']:.5f} (propensity score {q.get('propensity', float('nan')):.5f}, "
        f"oracle {q.get('oracle', float('nan')):.5f})"
    )
    for k, d in enumerate(arms):
        campaign(len(explore) + k, d, list(ARMS), enrich=oracle_column(s, d))

    last = arms[-1] + timedelta(days=WINDOW - 1)
    simulate(s, until=last, campaigns=True, **world)
    refresh(s, all_dates[0], last)
    orders = orders_in_base(ShopData.load(Lake.open(s.lake_uri)), s.base_currency)
    parts = {arm: [member_outcomes(read_members(s, arm, d), orders, d, OFFER_COST) for d in arms] for arm in ARMS}

    rng = np.random.default_rng(0)
    point = {arm: per_thousand(ps) for arm, ps in parts.items()}
    boot = np.array([[per_thousand(parts[arm], rng) for arm in ARMS] for _ in range(1000)])  # (B, arm, 2)
    print(f"\nrealised against the control groups, per 1,000 contacts, pooled over {len(arms)} dates:")
    table(point, boot)
    truth = Truth.read(s.truth_dir)
    expected = {
        arm: pl.concat(
            [
                true_effects(truth, d, m.filter(pl.col("group") == "treatment")["customer_id"].to_numpy())
                for d in arms
                for m in [read_members(s, arm, d)]
            ]
        )
        for arm in ARMS
    }
    e_point = {arm: (1000 * e["uplift"].mean(), 1000 * e["profit"].mean()) for arm, e in expected.items()}
    e_boot = np.empty((1000, len(ARMS), 2))
    for b in range(1000):
        for i, arm in enumerate(ARMS):
            e = expected[arm]
            k = rng.integers(0, e.height, e.height)
            e_boot[b, i] = 1000 * e["uplift"].to_numpy()[k].mean(), 1000 * e["profit"].to_numpy()[k].mean()
    print("\nexpected from the truth store for the same treated members (no outcome noise), per 1,000 contacts:")
    table(e_point, e_boot)
    u, pz, o = ARMS.index("uplift"), ARMS.index("propensity"), ARMS.index("oracle")
    diff = e_boot[:, u, 1] - e_boot[:, pz, 1]
    dlo, dhi = np.percentile(diff, [2.5, 97.5])
    ratio = e_boot[:, u, 1] / e_boot[:, pz, 1]
    lo, hi = np.percentile(ratio, [2.5, 97.5])
    r_point = e_point["uplift"][1] / e_point["propensity"][1]
    share = e_point["uplift"][1] / e_point["oracle"][1]
    slo, shi = np.percentile(e_boot[:, u, 1] / e_boot[:, o, 1], [2.5, 97.5])
    gain = e_point["uplift"][1] - e_point["propensity"][1]
    negative = np.mean(e_boot[:, pz, 1] <= 0)
    print(f"uplift - propensity expected profit per 1,000 contacts: {gain:+.1f} (95% CI {dlo:+.1f} to {dhi:+.1f})")
    print(f"propensity profit <= 0 in {negative:.1%} of resamples (a ratio to it is then negative and means nothing)")
    print(f"uplift share of oracle profit 95% CI {slo:.2f}-{shi:.2f}; total {time.perf_counter() - t_all:.0f} s")
    ratio_text = f"{r_point:.2f} (95% CI {lo:.2f}-{hi:.2f})"
    print(f"uplift/propensity profit ratio {ratio_text}; uplift share of oracle {share:.2f}")
    if a.home is None:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
