"""What users wait for beyond the real work: fixed costs of the command line and the stages.

Prints, measured in one run on one shop (ratios, so a busy machine shifts both sides):

1. ``propensity features --snapshot T`` wall (a fresh process, as a user or an Airflow task
   runs it) divided by the feature work that command reports: reading the clean zone plus
   building the snapshot's frames (the two figures it prints; the ratio to the build alone is
   printed too). What is left is the fixed cost: interpreter, imports, settings, checking and
   writing the outputs;
2. the features stage of ``propensity run`` (every snapshot of the training plans, in one
   process, as ``make demo`` runs it) wall divided by the sum of its per-snapshot compute;
3. the import time of ``propensity.cli`` and of each DAG task's entry point, each in a fresh
   interpreter, against ``import polars, pyarrow`` (the floor every stage pays).

Usage::

    python bench/overheads.py                       # a 3,000-customer shop over a year
    python bench/overheads.py --customers 20000 --days 730   # the make demo shop
    python bench/overheads.py --home DIR            # reuse a shop built by a previous run
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

FLOOR = "import polars, pyarrow"
#: what any process of ours imports before it does anything (settings are pydantic, the catalogue YAML)
PROCESS_FLOOR = "import polars, pyarrow, pydantic, yaml"
ENTRY_POINTS = {
    "propensity.cli": "the command line",
    "propensity.airflow.steps": "every DAG task (the adapter)",
    "propensity.collect": "shop_collect.collect",
    "propensity.validation.gate": "shop_validate.validate",
    "propensity.features.snapshot": "build_features.*",
    "propensity.models.train": "train_models.train",
    "propensity.scoring": "score_and_build_audiences.score",
    "propensity.audiences": "score_and_build_audiences.build_audiences",
    "propensity.monitoring.monitor": "monitor_drift.monitor",
}


def import_seconds(statement: str, repeats: int = 3) -> float:
    """Best-of-``repeats`` wall of ``statement`` in a fresh interpreter (after the interpreter's own start-up)."""
    code = f"import time; t = time.perf_counter(); {statement}; print(time.perf_counter() - t)"
    runs = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)]
    for _ in range(repeats - 1):
        runs.append(float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout))
    return min(runs)


def process_seconds(statement: str, repeats: int = 5) -> float:
    """Median wall of a fresh interpreter that runs ``statement`` and exits (start-up and teardown included)."""
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", statement], check=True)
        runs.append(time.perf_counter() - t0)
    return sorted(runs)[len(runs) // 2]


def build_shop(home: Path, customers: int, days: int, start: date) -> None:
    """Simulate, collect and validate a shop under ``home`` unless it is there already."""
    from propensity import pipeline
    from propensity.config import DirtConfig, Settings
    from propensity.simulate import simulate

    s = Settings(home=home, validation={"docs": False})
    if (home / "built").exists():
        return
    t0 = time.perf_counter()
    simulate(s, dirt_cfg=DirtConfig(rate=0.0), customers=customers, days=days, start=start, seed=7)
    span = pipeline.day_range(start, start + timedelta(days=days - 1))
    pipeline.collect(s, span)
    pipeline.validate(s, span).raise_for_critical()
    (home / "built").touch()
    print(f"shop: {customers:,} customers x {days} days built in {time.perf_counter() - t0:.0f} s under {home}")


def cli_features(home: Path, snapshot: date) -> tuple[float, float, float]:
    """(wall, reported build, reported clean-zone read) of one ``propensity features --snapshot``
    in a fresh process."""
    env = {**os.environ, "PROPENSITY_HOME": str(home), "PROPENSITY_VALIDATION__DOCS": "false"}
    exe = Path(sys.executable).with_name("propensity")
    t0 = time.perf_counter()
    out = subprocess.run(
        [str(exe), "features", "--snapshot", snapshot.isoformat()], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - t0
    if out.returncode:
        raise SystemExit(f"propensity features failed:\n{out.stdout}\n{out.stderr}")
    m = re.search(r"\(([\d.]+) s\)\s*$", out.stdout.splitlines()[0])
    r = re.search(r"clean zone read in ([\d.]+) s", out.stdout)
    assert m and r, out.stdout
    return wall, float(m.group(1)), float(r.group(1))


def features_stage(home: Path) -> tuple[float, float, int]:
    """(wall, sum of per-snapshot compute, snapshots) of the features stage of ``propensity run``."""
    from propensity import pipeline
    from propensity.config import Settings
    from propensity.features.snapshot import SnapshotBuilder

    s = Settings(home=home, validation={"docs": False})
    t0 = time.perf_counter()
    records = pipeline.features_plan(s, builder=SnapshotBuilder(s))
    wall = time.perf_counter() - t0
    return wall, sum(r.seconds for r in records), len(records)


def fresh_bytecode() -> None:
    """Compile the package as ``make venv`` does. With ``PYTHONDONTWRITEBYTECODE`` set (our
    machines), a module edited since the venv was built is compiled again in every process:
    16 stale modules added about 0.1 s to each ``features --snapshot`` and pushed its ratio
    from 1.9 to 2.0-2.15 in earlier runs of this bench. A fresh install has none."""
    import compileall

    import propensity

    compileall.compile_dir(Path(propensity.__file__).parent, quiet=1, workers=0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=3000)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--start", type=date.fromisoformat, default=date(2024, 1, 1))
    ap.add_argument("--home", type=Path, default=None, help="shop folder to build or reuse")
    a = ap.parse_args()
    home = a.home or Path(tempfile.mkdtemp(prefix="overheads-"))
    build_shop(home, a.customers, a.days, a.start)
    fresh_bytecode()
    snapshot = a.start + timedelta(days=a.days)

    floor = import_seconds(FLOOR)
    print(f"\nimport floor ({FLOOR}): {floor:.2f} s")
    print(f"{'entry point':<32} {'import s':>9} {'- floor':>8}  used by")
    for module, used_by in ENTRY_POINTS.items():
        t = import_seconds(f"import {module}")
        print(f"{module:<32} {t:>9.2f} {t - floor:>8.2f}  {used_by}")

    runs = sorted((cli_features(home, snapshot) for _ in range(3)), key=lambda r: r[0])
    wall, build, read = runs[1]  # the median run by wall
    work = build + read
    print(f"\n1. propensity features --snapshot {snapshot} (median of 3 by wall): wall {wall:.2f} s;")
    print(f"   feature work {work:.2f} s = clean zone read {read:.2f} s + snapshot build {build:.2f} s;")
    print(f"   fixed cost {wall - work:.2f} s (interpreter, imports, settings, output checks and writes);")
    floor_process = process_seconds(PROCESS_FLOOR)
    print(f"   of which {floor_process:.2f} s is a process that only runs `{PROCESS_FLOOR}` and exits")
    print(f"   ratio wall / feature work = {wall / work:.2f}  (target <= 2); wall / build alone = {wall / build:.2f}")

    wall, compute, n = features_stage(home)
    print(f"\n2. features stage ({n} snapshots of the training plans): wall {wall:.1f} s, compute {compute:.1f} s")
    print(f"   ratio wall / compute = {wall / compute:.2f}  (target <= 1.5)")


if __name__ == "__main__":
    main()
