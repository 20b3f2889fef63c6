"""How the chain's time and memory grow with the shop, and what shards save: ``bench/scale.py``.

For each shop size it simulates ``--days`` of a shop, then runs every stage in a process of
its own, as Airflow's workers would, and prints per stage: wall time, the clean events the
stage stands on, seconds per million events, and each process's peak RSS:

* ``simulate``, ``collect``, ``validate`` over the whole span;
* ``features plan``: every snapshot of the training plans, one process (as ``propensity run``);
* ``features 1``: the scoring snapshot ``T`` (end + 1) unsharded, for the memory comparison;
* ``features shard i/S`` and ``features merge``: the same snapshot with ``features.shards = S``
  (each shard reads only its customer buckets of the clean history, :mod:`propensity.shards`);
* ``train``: the three tasks from the published snapshots, then the recommender and the personas
  (``propensity train``);
* ``score prepare``, ``score shard``, ``score merge``: ``scoring.shards = S`` (the slowest shard
  and merge are shown; the RSS column is the largest of them);
* ``audiences`` at ``T``.

Then, per stage, the seconds per million events at the largest size over the smallest
(the "linear cost" check: within 1.5x), and the peak RSS of the largest feature shard over
the unsharded build at the largest size (the "bounded memory" check: at most 0.4).

Usage::

    python bench/scale.py --sizes 50000,100000,200000 --shards 4 --work /tmp/scale
    python bench/scale.py --sizes 25000 --days 365       # a quick look
    python bench/scale.py --sizes 50000,400000 --max-train-rows 300000   # training rows capped
    python bench/scale.py --sizes 50000,1000000 --max-train-rows 400000 --max-eval-rows 400000 --resume
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

START = date(2024, 1, 1)


# --- child processes: one stage each, reporting wall, peak RSS and rows --------------------


def _settings(home: Path, shards: int, cap: int | None = None, eval_cap: int | None = None):
    from propensity.config import Settings

    return Settings(
        home=home,
        validation={"docs": False},
        features={"shards": shards},
        scoring={"shards": shards},
        models={"max_train_rows": cap, "max_eval_rows": eval_cap},
    )


def child(
    stage: str,
    home: Path,
    shards: int,
    days: int,
    customers: int,
    arg: str | None,
    cap: int | None,
    eval_cap: int | None = None,
) -> dict[str, Any]:
    """Run one stage in this process; returns what it processed."""
    from propensity import pipeline

    s = _settings(home, shards, cap, eval_cap)
    end = START + timedelta(days=days - 1)
    span = pipeline.day_range(START, end)
    t = end + timedelta(days=1)
    if stage == "simulate":
        from propensity.simulate import simulate

        simulate(s, customers=customers, days=days, start=START, seed=7)
        return {}
    if stage == "collect":
        return {"rows": sum(pipeline.collect(s, span).rows.values())}
    if stage == "validate":
        record = pipeline.validate(s, span)
        record.raise_for_critical()
        return {"rows": record.rows_clean}
    if stage == "features plan":
        from propensity.features.snapshot import SnapshotBuilder

        return {"snapshots": len(pipeline.features_plan(s, builder=SnapshotBuilder(s)))}
    if stage == "features 1":
        return {"customers": pipeline.features(_settings(home, 1), t).customers}
    if stage == "features shard":
        return {"customers": pipeline.features_shard(s, t, int(arg or 0))["customers"]}
    if stage == "features merge":
        return {"customers": pipeline.merge_features(s, t).customers}
    if stage == "train":  # what propensity train runs: the tasks, then recommendations and personas
        return {"models": len(pipeline.train_all(s))}
    if stage == "score prepare":
        return pipeline.prepare_scoring(s, t)
    if stage == "score shard":
        from propensity import scoring

        task, shard = (arg or "").split(":")
        return scoring.score_shard(s, t, task, int(shard))
    if stage == "score merge":
        from propensity import scoring

        task, records = (arg or "").split(":", 1)
        return scoring.merge_score_shards(s, t, task, json.loads(records))
    if stage == "audiences":
        return {"exports": len(pipeline.audiences(s, t).exports)}
    raise SystemExit(f"unknown stage {stage!r}")


def run_child(stage: str, home: Path, a: argparse.Namespace, customers: int, arg: str | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", stage, "--home", str(home), "--shards", str(a.shards)]
    cmd += ["--days", str(a.days), "--customers", str(customers)] + (["--arg", arg] if arg is not None else [])
    cmd += ["--max-train-rows", str(a.max_train_rows)] if a.max_train_rows else []
    cmd += ["--max-eval-rows", str(a.max_eval_rows)] if a.max_eval_rows else []
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"{stage} failed ({customers:,} customers):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["wall"] = wall
    return result


# --- the parent: sizes, stages, table ------------------------------------------------------


def clean_events(home: Path) -> int:
    """Rows in the clean zone's events, from the manifests (what every later stage stands on)."""
    total = 0
    for m in (home / "lake" / "clean" / "events").glob("dt=*/_manifest.json"):
        total += int(json.loads(m.read_text())["row_count"])
    return total


def one_size(customers: int, a: argparse.Namespace) -> list[tuple[str, float, float, str]]:
    """(stage, wall, peak RSS MB, note) for one shop size."""
    home = a.work / f"c{customers}-d{a.days}"
    rows: list[tuple[str, float, float, str]] = []

    def stage(name: str, arg: str | None = None, label: str | None = None) -> dict[str, Any]:
        # Each stage's result is kept beside the shop, so ``--resume`` can continue a long run
        # (a 1M-customer shop takes about an hour) from the first stage that did not finish.
        kept = home / ".bench" / f"{(label or name).replace('/', '-').replace(' ', '_')}.json"
        if a.resume and kept.exists():
            r = json.loads(kept.read_text())
        else:
            r = run_child(name, home, a, customers, arg)
            kept.parent.mkdir(parents=True, exist_ok=True)
            kept.write_text(json.dumps(r, default=str))
        rows.append((label or name, r["wall"], r["rss_mb"], r.get("note", "")))
        print(f"  {label or name:<22} {r['wall']:8.1f} s  {r['rss_mb']:8.0f} MB", flush=True)
        return r

    print(f"\n{customers:,} customers x {a.days} days under {home}", flush=True)
    if a.resume or not (home / "lake" / "clean").exists():
        for name in ("simulate", "collect", "validate"):
            stage(name)
    stage("features plan")
    stage("features 1")
    for i in range(a.shards):
        stage("features shard", str(i), f"features shard {i}/{a.shards}")
    stage("features merge")
    stage("train")
    prep = stage("score prepare")
    by_task: dict[str, list[dict[str, Any]]] = {}
    for unit in prep["units"]:
        r = stage("score shard", f"{unit['name']}:{unit['shard']}", f"score {unit['name']} {unit['shard']}/{a.shards}")
        by_task.setdefault(unit["name"], []).append({k: v for k, v in r.items() if k not in ("wall", "rss_mb")})
    for task, records in by_task.items():
        stage("score merge", f"{task}:{json.dumps(records)}", f"score merge {task}")
    stage("audiences")
    return rows


def summarise(results: dict[int, tuple[int, list[tuple[str, float, float, str]]]], shards: int) -> None:
    sizes = sorted(results)
    print("\nper stage: wall s / s per million clean events / peak RSS MB")
    header = f"{'stage':<24}" + "".join(f"{f'{n:,} ({results[n][0] / 1e6:.1f}M ev)':>34}" for n in sizes)
    print(header)
    names = list(dict.fromkeys(name for n in sizes for name, *_ in results[n][1]))
    per_m: dict[str, list[float]] = {}
    for name in names:
        cells = []
        for n in sizes:
            events, rows = results[n]
            hit = [r for r in rows if r[0] == name]
            if not hit:
                cells.append(f"{'-':>34}")
                continue
            _, wall, rss, _ = hit[0]
            per = wall / (events / 1e6)
            per_m.setdefault(name, []).append(per)
            cells.append(f"{f'{wall:.1f} / {per:.2f} / {rss:.0f}':>34}")
        print(f"{name:<24}" + "".join(cells))
    if len(sizes) > 1:
        print(f"\nlinear cost: s per million events, {sizes[-1]:,} over {sizes[0]:,} customers (target <= 1.5)")
        for name, pers in per_m.items():
            if len(pers) == len(sizes):
                print(f"  {name:<24} {pers[-1] / pers[0]:.2f}")
    largest = results[sizes[-1]][1]
    whole = next(r[2] for r in largest if r[0] == "features 1")
    shard = max(r[2] for r in largest if r[0].startswith("features shard"))
    print(
        f"\nbounded memory at {sizes[-1]:,} customers: largest feature shard {shard:.0f} MB / unsharded "
        f"{whole:.0f} MB = {shard / whole:.2f} with {shards} shards (target <= 0.4)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="50000,100000", help="customers per shop, comma-separated")
    ap.add_argument("--days", type=int, default=730)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/propensity-scale"))
    ap.add_argument(
        "--max-train-rows", type=int, default=None, help="models.max_train_rows for the train stage (default: no cap)"
    )
    ap.add_argument(
        "--max-eval-rows", type=int, default=None, help="models.max_eval_rows for the train stage (default: no cap)"
    )
    ap.add_argument(
        "--resume", action="store_true", help="reuse the stage results kept under each shop from an earlier run"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--customers", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--arg", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        out = child(a.child, a.home, a.shards, a.days, a.customers, a.arg, a.max_train_rows, a.max_eval_rows)
        out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
        print(json.dumps(out, default=str))
        return
    results = {}
    for customers in (int(x) for x in a.sizes.split(",")):
        rows = one_size(customers, a)
        results[customers] = (clean_events(a.work / f"c{customers}-d{a.days}"), rows)
    summarise(results, a.shards)


if __name__ == "__main__":
    main()
