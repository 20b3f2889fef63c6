"""Recommendations on a simulated shop against its ceiling: ``bench/recommend.py``.

For each shop (an existing home, or one simulated here per seed) it runs what
``propensity train`` runs for ``propensity-recommendations`` (weights chosen on a validation
window, refit, scored out of time) without MLflow, and adds the simulator's own ceiling: the
oracle ranks every product by the customer's true probability of choosing it, the
category affinity times the chance of its price position given the customer's price
sensitivity (:func:`propensity.simulate.engine._pick_products`), never a product already bought.

It prints recall@10 and hit-rate@10 of the model, the popularity and top-category baselines and
the oracle, with bootstrap 95% intervals over customers, and the model's recall over popularity's.

Usage::

    python bench/recommend.py --home /tmp/demo            # a shop made by make demo
    python bench/recommend.py --seeds 7,11 --customers 20000 --work /tmp/recbench
"""

from __future__ import annotations

import argparse
from datetime import date, timedelta
from pathlib import Path

import numpy as np

BOOT = 1000


def oracle_scores(settings, customers: np.ndarray, products: np.ndarray) -> np.ndarray:
    """customers x products: the simulator's probability that a pick is that product."""
    from propensity.simulate.engine import Simulator

    sc = settings.simulation
    sim = Simulator(sc.customers, sc.days, date.fromisoformat(sc.start), sc.seed, products=sc.products)
    cat, tr = sim.cat, sim.tr
    index = {c: i for i, c in enumerate(sim.cids)}
    rows = np.array([index[c] for c in customers])
    aff = np.diff(np.concatenate([np.zeros((len(rows), 1)), tr["aff_cum"][rows]], axis=1), axis=1)
    pid = {p: i for i, p in enumerate(cat.product_id)}
    cols = np.array([pid[p] for p in products])
    k = cat.category[cols]
    pos = cols - cat.cat_lo[k]
    n = cat.cat_n[k].astype(float)
    e = 1.0 + 2.5 * tr["price_sens"][rows]  # pos = floor(n * u ** e)
    p_pos = ((pos[None, :] + 1) / n[None, :]) ** (1 / e[:, None]) - (pos[None, :] / n[None, :]) ** (1 / e[:, None])
    return aff[:, k] * p_pos


def interval(per_customer: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    rng = np.random.default_rng(seed)
    boots = [per_customer[rng.integers(0, len(per_customer), len(per_customer))].mean() for _ in range(BOOT)]
    return float(per_customer.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def one_shop(s) -> dict[str, tuple[float, float, float]]:
    """The bench on one simulated shop (``s``: its settings, the simulation's included)."""
    from propensity.features.snapshot import SnapshotBuilder
    from propensity.models import recommend as rec
    from propensity.models.recommend_train import fit_and_evaluate, test_date

    home = s.home_dir
    builder = SnapshotBuilder(s)
    data = builder.data
    t = test_date(builder.observed_until, s.recommendations.horizon_days, None)
    r = fit_and_evaluate(s, data, t)
    model = r.model
    hist = rec.History.before(data, t, s.recommendations.view_days)
    later = rec.bought_between(data, t, t + timedelta(days=s.recommendations.horizon_days))
    ev = rec.eval_set(model, hist, later)
    b = ev.inter.bought
    oracle = oracle_scores(s, ev.inter.customers, model.products)
    oracle[b.toarray() > 0] = -np.inf
    base = ev.baselines(model)
    tops = {
        "model": model.recommend(b, ev.inter.viewed),
        "popularity": base["popularity"],
        "top category": base["top_category"],
        "oracle": np.argsort(-oracle, axis=1, kind="stable")[:, :10],
    }
    per_customer = ev.per_customer
    out = {}
    for name, top in tops.items():
        recall, hit = per_customer(top)
        out[f"{name} recall@10"] = interval(recall)
        out[f"{name} hit@10"] = interval(hit)
    ratio = per_customer(tops["model"])[0].sum() / max(per_customer(tops["popularity"])[0].sum(), 1e-12)
    days = s.recommendations.horizon_days
    print(f"{home}: test {t}, {len(ev.n_true):,} customers with a new product in {days} days; "
          f"weights {r.params}; model/popularity recall {ratio:.2f}")  # fmt: skip
    for k, (m, lo, hi) in out.items():
        print(f"  {k:<24} {m:.4f} [{lo:.4f}, {hi:.4f}]")
    return out


def simulated_shop(work: Path, seed: int, customers: int, **settings: object):
    """The settings of ``<work>/seed<seed>``: a default shop of ``customers`` simulated with
    ``seed``, collected and validated the first time it is asked for (benches share it)."""
    from propensity import pipeline
    from propensity.config import Settings
    from propensity.simulate import simulate

    home = work / f"seed{seed}"
    s = Settings(home=home, validation={"docs": False}, simulation={"customers": customers, "seed": seed}, **settings)
    if not (home / "lake" / "clean").exists():
        simulate(s)
        start = date.fromisoformat(s.simulation.start)
        days = pipeline.day_range(start, start + timedelta(days=s.simulation.days - 1))
        pipeline.collect(s, days)
        pipeline.validate(s, days).raise_for_critical()
    return s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--home", type=Path, action="append", help="an existing shop simulated with the default settings (repeatable)"
    )
    ap.add_argument("--seeds", default="", help="simulate a shop per seed under --work")
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/propensity-recbench"))
    a = ap.parse_args()
    from propensity.config import Settings

    shops = [Settings(home=h) for h in a.home or []]
    shops += [simulated_shop(a.work, int(x), a.customers) for x in a.seeds.split(",") if x]
    for s in shops:
        one_shop(s)


if __name__ == "__main__":
    main()
