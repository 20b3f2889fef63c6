"""Customer value on simulated shops: ``bench/clv.py``.

For each shop (an existing home, or one simulated here per seed) it trains the ``clv`` task
as ``propensity train --tasks clv`` does, without registering, and prints the test Gini of
the predicted revenue with its customer-bootstrap 95% interval, the baselines fitted in the
same run (BG/NBD x Gamma-Gamma, historic revenue), the ceiling (the Gini of the truth store's
expected revenue, ``models.value_oracle_paths`` 64), the paired difference to BTYD with its
interval, Spearman, top-decile capture and MAE. The last line pools the shops: the smallest
difference to BTYD and the smallest lower bound (the issue's target: Gini >= BTYD + 0.05).

Usage::

    python bench/clv.py --home /tmp/demo                  # a shop made by make demo
    python bench/clv.py --seeds 3,11 --customers 20000 --work /tmp/clvbench
"""

from __future__ import annotations

import argparse
from datetime import date
from pathlib import Path


def one_shop(s, task: str, as_of: date | None) -> dict:
    """Train ``task`` on shop ``s`` (not registered) and print its row; returns the report entry."""
    from propensity.models.train import Trainer

    r = Trainer(s).train([task], as_of=as_of, register=False)["tasks"][task]
    iv, b = r["intervals"], r["baseline_gini"]
    g, d = iv["model"]["gini"], iv["baselines"]["btyd"]["gini_diff"]
    print(
        f"| {s.home_dir} | {r['formulation']} | {r['test_gini']:.4f} ({g['low']:.4f}-{g['high']:.4f}) | "
        f"{b['btyd']:.4f} | {b['historic']:.4f} | {r['oracle_gini'] or float('nan'):.4f} | "
        f"{d['estimate']:+.4f} ({d['low']:+.4f} to {d['high']:+.4f}) | "
        f"{r['test_spearman']:.4f} | {r['top_decile_capture']:.4f} | {r['test_mae']:.2f} | {r['n_test']:,} |",
        flush=True,
    )
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, action="append", help="an existing simulated shop (repeatable)")
    ap.add_argument("--seeds", default="", help="simulate a shop per seed under --work")
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/propensity-clvbench"))
    ap.add_argument("--task", default="clv")
    ap.add_argument("--as-of", type=date.fromisoformat, default=None)
    a = ap.parse_args()
    from propensity.config import Settings

    oracle = {"models": {"value_oracle_paths": 64}}  # the ceiling: the truth store's expected revenue
    shops = [Settings(home=h, **oracle) for h in a.home or []]
    from recommend import simulated_shop  # bench/ is the script's folder, first on sys.path

    shops += [simulated_shop(a.work, int(x), a.customers, **oracle) for x in a.seeds.split(",") if x]
    print(
        "| shop | formulation | test Gini (95% CI) | BG/NBD x Gamma-Gamma | historic | oracle | Gini - BTYD (95% CI) "
        "| Spearman | top-decile capture | MAE | n_test |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    diffs = [one_shop(s, a.task, a.as_of)["intervals"]["baselines"]["btyd"]["gini_diff"] for s in shops]
    if diffs:
        print(
            f"{len(diffs)} shop(s): Gini - BTYD from {min(d['estimate'] for d in diffs):+.4f} to "
            f"{max(d['estimate'] for d in diffs):+.4f}; smallest 95% lower bound {min(d['low'] for d in diffs):+.4f}"
        )


if __name__ == "__main__":
    main()
