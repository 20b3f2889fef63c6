"""Does targeting by propensity pay? Incremental conversions of model-targeted vs random audiences.

The loop runs on the simulator, end to end through the library:

1. simulate a shop whose systems end the day before the first campaign date; collect,
   validate, train the conversion model (champion);
2. on each campaign date: score, then build two audiences of the same size on two random
   halves of the eligible base (``customer_hash`` split): ``targeted`` takes the top
   conversion scores, ``random`` a hash-random draw; both keep a 50% control group;
3. re-simulate with the published audiences sent (the world is the same, the shop responds
   to the sends) up to the next date, collect and validate the changed days, repeat;
4. measure every audience over the 14 days after its send (treatment vs control) and pool
   the dates; a bootstrap over members gives the interval of the ratio.

Run: ``.venv/bin/python bench/uplift.py [--customers 20000] [--dates 4]``.
Prints per-date uplift and the pooled ratio targeted / random with its 95% interval.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from propensity.audiences import build, read_members
from propensity.audiences.measure import outcomes, uplift
from propensity.collect import collect
from propensity.config import DirtConfig, Settings
from propensity.features.build import orders_in_base
from propensity.features.inputs import ShopData
from propensity.lake import Lake
from propensity.models.train import Trainer
from propensity.scoring import score
from propensity.simulate import simulate
from propensity.validation import Gate

AUDIENCES = """
audiences:
  - name: targeted
    priority: 1
    task: conversion
    rule: "customer_hash < 0.5"
    rank: score
    max_size: {size}
    channels: [email, push, sms]
    offer: {{code: BENCH, cost: 1.0}}
    control_fraction: 0.5
  - name: random
    priority: 2
    task: conversion
    rule: "customer_hash >= 0.5"
    rank: random
    max_size: {size}
    channels: [email, push, sms]
    offer: {{code: BENCH, cost: 1.0}}
    control_fraction: 0.5
"""
WINDOW = 14


def days(a: date, b: date) -> list[date]:
    return [a + timedelta(days=i) for i in range((b - a).days + 1)]


def refresh(s: Settings, start: date, end: date) -> None:
    """Collect and validate ``start..end`` (the days a re-simulation may have changed)."""
    collect(s, start, end)
    Gate(s).validate(days(start, end))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=20_000)
    p.add_argument("--dates", type=int, default=6)
    p.add_argument("--every", type=int, default=14, help="days between campaign dates")
    p.add_argument("--size", type=int, default=300, help="members per audience and date (treatment + control)")
    p.add_argument("--first", type=int, default=330, help="day index of the first campaign")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--home", type=Path, help="keep the run here (default: a temp dir, removed)")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    t_all = time.perf_counter()

    home = a.home or Path(tempfile.mkdtemp(prefix="uplift-"))
    start = date(2025, 1, 1)
    dates = [start + timedelta(days=a.first + k * a.every) for k in range(a.dates)]
    horizon = a.first + (a.dates - 1) * a.every + WINDOW + 1
    conf = home / "audiences.yaml"
    home.mkdir(parents=True, exist_ok=True)
    conf.write_text(AUDIENCES.format(size=a.size))
    s = Settings(
        home=home,
        validation={"docs": False},
        tasks={"repurchase": None, "churn": None},
        audiences={"file": str(conf), "salt": "bench-uplift", "frequency_cap": 3},
    )
    world = {"customers": a.customers, "days": horizon, "start": start, "seed": a.seed, "dirt_cfg": DirtConfig(rate=0)}

    t0 = time.perf_counter()
    simulate(s, until=dates[0] - timedelta(days=1), **world)
    refresh(s, start, dates[0] - timedelta(days=1))
    report = Trainer(s).train(["conversion"])
    r = report["tasks"]["conversion"]
    took = time.perf_counter() - t0
    print(f"setup: {a.customers:,} customers, conversion model test AUC {r['test_auc']:.3f} ({took:.0f} s)")

    for k, d in enumerate(dates):
        t1 = time.perf_counter()
        if k:
            simulate(s, until=d - timedelta(days=1), campaigns=True, **world)
            refresh(s, dates[0], d - timedelta(days=1))
        score(s, d, ["conversion"])
        run = build(s, d)
        sizes = ", ".join(f"{x.spec.name} {x.treatment}+{x.control}" for x in run.selections)
        print(f"{d}: audiences {sizes} ({time.perf_counter() - t1:.0f} s)")

    last = dates[-1] + timedelta(days=WINDOW - 1)
    simulate(s, until=last, campaigns=True, **world)
    refresh(s, dates[0], last)

    lake = Lake.open(s.lake_uri)
    data = ShopData.load(lake)
    orders = orders_in_base(data, s.base_currency)
    rows: dict[str, list[pl.DataFrame]] = {"targeted": [], "random": []}
    print(
        f"\n{'date':<11} {'audience':<9} {'n_t':>5} {'n_c':>5} {'conv_t':>7} {'conv_c':>7} {'incr. conv [95% CI]':>26}"
    )
    for d in dates:
        for name in rows:
            out = outcomes(read_members(s, name, d), orders, d, WINDOW)
            u = uplift(name, d, WINDOW, out)
            rows[name].append(out)
            lo, hi = u.incremental_conversions_ci
            print(
                f"{d!s:<11} {name:<9} {u.n_treatment:>5} {u.n_control:>5} {u.conv_treatment:>7.1%} "
                f"{u.conv_control:>7.1%} {u.incremental_conversions:>8.1f} [{lo:>6.1f}, {hi:>6.1f}]"
            )

    def pooled(parts: list[pl.DataFrame], rng: np.random.Generator | None = None) -> float:
        total = 0.0
        for part in parts:
            t = part.filter(pl.col("group") == "treatment")["converted"].to_numpy()
            c = part.filter(pl.col("group") == "control")["converted"].to_numpy()
            if rng is not None:
                t, c = rng.choice(t, len(t)), rng.choice(c, len(c))
            total += (t.mean() - c.mean()) * len(t)
        return total

    rng = np.random.default_rng(0)
    point = {n: pooled(parts) for n, parts in rows.items()}
    boot = np.array([[pooled(rows[n], rng) for n in rows] for _ in range(2000)])
    ratio = boot[:, 0] / np.where(boot[:, 1] > 0, boot[:, 1], np.nan)
    lo, hi = np.nanpercentile(ratio, [2.5, 97.5])
    share_neg = float(np.mean(boot[:, 1] <= 0))
    for i, n in enumerate(rows):
        blo, bhi = np.percentile(boot[:, i], [2.5, 97.5])
        print(f"pooled {n:<9} incremental conversions {point[n]:7.1f} [95% CI {blo:.1f}, {bhi:.1f}]")
    print(
        f"ratio targeted / random: {point['targeted'] / point['random']:.2f}x "
        f"[bootstrap 95% CI {lo:.2f}, {hi:.2f}; random <= 0 in {share_neg:.1%} of resamples]"
    )
    print(f"total {time.perf_counter() - t_all:.0f} s; home {home}")
    if a.home is None:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
