"""What capping the training rows costs: ``models.max_train_rows`` against no cap, per task and seed.

Above the cap, each training snapshot is sampled to its equal share of the cap as it is
loaded: negatives (and positives too when they are half the share or more), each row
weighted by the inverse of its sampling rate (:func:`propensity.models.train.sample_snapshot`);
validation, calibration and test rows are never sampled. For each seed (the sampling's and LightGBM's)
and cap, every task is trained in a process of its own on a shop's published snapshots, and
this prints the training rows, the fit time, the process's peak RSS, the pooled test AUC with
its 95% interval, and the paired AUC difference to the uncapped model of the same seed, with
its interval (customers resampled as clusters, as in the training report).

Usage::

    python bench/negative_sampling.py --home /tmp/demo_r1 --caps 40000,20000 --seeds 7,3,5
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TASKS = ("conversion", "repurchase", "churn")


def child(home: Path, task: str, cap: int | None, seed: int, out: Path) -> None:
    """Train ``task`` with the cap and seed; save test labels, scores and customer ids."""
    import numpy as np

    from propensity.config import Settings
    from propensity.models.train import Trainer

    s = Settings(home=home, validation={"docs": False})
    s = s.model_copy(update={"models": s.models.model_copy(update={"max_train_rows": cap, "seed": seed})})
    t = Trainer(s)
    plan = t.plans([task], None)[task]
    fr = t.frames(task, plan, [task])
    t0 = time.perf_counter()
    result, _ = t.evaluate(task, fr, t0)
    np.savez(
        out,
        y=fr.test["label"].to_numpy(),
        p=np.asarray(result.test_scores),
        groups=fr.test["customer_id"].astype(str).to_numpy().astype("U"),
    )
    print(
        json.dumps(
            {
                "rows": len(fr.train),
                "seconds": time.perf_counter() - t0,
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rate": result.metrics.get("train_negative_rate", 1.0),
            }
        )
    )


def run(home: Path, task: str, cap: int | None, seed: int, work: Path) -> tuple[dict, Path]:
    out = work / f"{task}-{cap}-{seed}.npz"
    cmd = [sys.executable, __file__, "--child", task, "--home", str(home), "--seed", str(seed), "--out", str(out)]
    cmd += ["--cap", str(cap)] if cap else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{task} cap={cap} seed={seed} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, required=True, help="a shop with its training snapshots published")
    ap.add_argument("--caps", default="40000,20000")
    ap.add_argument("--seeds", default="7,3,5")
    ap.add_argument("--child")
    ap.add_argument("--cap", type=int)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.child:
        child(a.home, a.child, a.cap, a.seed, a.out)
        return

    import numpy as np

    from propensity.models.intervals import evaluate_with_intervals

    caps = [int(c) for c in a.caps.split(",")]
    seeds = [int(x) for x in a.seeds.split(",")]
    work = Path(tempfile.mkdtemp(prefix="negative-sampling-"))
    print(
        f"{'task':<11} {'seed':>4} {'cap':>8} {'rows':>8} {'rate':>6} {'fit s':>6} {'RSS MB':>7}  "
        f"{'test AUC [95%]':<26} diff to uncapped [95%]"
    )
    for task in TASKS:
        for seed in seeds:
            base, base_out = run(a.home, task, None, seed, work)
            ref = np.load(base_out)
            for cap in [None, *caps]:
                r, out = (base, base_out) if cap is None else run(a.home, task, cap, seed, work)
                d = np.load(out)
                iv = evaluate_with_intervals(
                    d["y"], d["p"], groups=d["groups"], baselines={"uncapped": ref["p"]}, n_boot=500, seed=seed
                )
                auc = iv["model"]["auc"]
                cell = f"{auc['estimate']:.4f} [{auc['low']:.4f}, {auc['high']:.4f}]"
                diff = iv["baselines"]["uncapped"]["auc_diff"] if cap is not None else None
                dcell = f"{diff['estimate']:+.4f} [{diff['low']:+.4f}, {diff['high']:+.4f}]" if diff else "-"
                print(
                    f"{task:<11} {seed:>4} {cap or '-':>8} {r['rows']:>8,} {r['rate']:>6.3f} {r['seconds']:>6.1f} "
                    f"{r['rss_mb']:>7.0f}  {cell:<26} {dcell}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
