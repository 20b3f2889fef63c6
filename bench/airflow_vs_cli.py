"""The same shop through both front doors: ``propensity run`` against the Airflow chain.

    .venv/bin/python bench/airflow_vs_cli.py                 # the integration test's shop
    .venv/bin/python bench/airflow_vs_cli.py --customers 1000 --days 90

One shop (``--customers`` x ``--days`` from ``--start``, the integration test's size and small
model settings by default) is simulated twice, into two homes with identical sources. Then, in
this one process:

a. **CLI**: ``propensity run --start S --end D --through audiences`` in a child process: collect
   and validate every day, build the training snapshots, train and register the three models,
   score and build the audiences for ``T = D + 1``.
b. **Airflow**: the ``make up`` stack (api-server, scheduler, dag-processor, triggerer with the
   LocalExecutor, and an MLflow server) on the second home. Every DAG is unpaused through the
   REST API, as the UI's default does, then ``shop_collect`` is triggered for the partition
   ``D`` with ``start = S`` (one run backfills the history) and the scheduler runs the chain:
   ``shop_validate`` (D) -> ``build_features`` (D, snapshot T) -> ``train_models`` (T: trains
   the three tasks, none has a champion yet) -> ``score_and_build_audiences`` (T). The wall time
   runs from the trigger to the success of the scoring run. The runs that unpausing itself
   schedules (each scheduled DAG's latest complete interval) are waited for before the
   trigger and reported apart: they are paid once per unpause, like the stack's start-up.

Printed: both wall times, their ratio (target: Airflow within 2x the CLI), each DAG run's
duration and the slowest task instances, the load average (read ratios, not seconds, on a
shared machine), and the stack's start-up time (paid once per ``make up``, not counted).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from propensity.config import DirtConfig, Settings
from propensity.services import free_port
from propensity.simulate import simulate
from propensity.stack import StackConfig, http_json, start, stop

ROOT = Path(__file__).resolve().parents[1]
CHAIN = ("shop_collect", "shop_validate", "build_features", "train_models", "score_and_build_audiences")
#: the integration test's small models on a short history (3-week horizons, customer holdout)
SMALL_SETTINGS = {
    "PROPENSITY_VALIDATION__DOCS": "false",
    "PROPENSITY_MODELS__MAX_ROUNDS": "150",
    "PROPENSITY_MODELS__EARLY_STOPPING_ROUNDS": "20",
    "PROPENSITY_MODELS__NUM_LEAVES": "15",
    "PROPENSITY_MODELS__MIN_DATA_IN_LEAF": "20",
    "PROPENSITY_FEATURES__TRAINING_SPAN_DAYS": "42",
    "PROPENSITY_FEATURES__MIN_HISTORY_DAYS": "21",
    "PROPENSITY_FEATURES__HOLDOUT": "customers",
    "PROPENSITY_TASKS__REPURCHASE__HORIZON_DAYS": "21",
    "PROPENSITY_TASKS__CHURN__HORIZON_DAYS": "21",
    "PROPENSITY_AUDIENCES__SALT": "bench-salt",
}


def clean_environ(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", "PROPENSITY_", "MLFLOW_"))}
    return {**env, **extra}


def simulate_into(home: Path, args: argparse.Namespace) -> Settings:
    settings = Settings(home=home)
    simulate(
        settings,
        customers=args.customers,
        days=args.days,
        start=args.start,
        seed=args.seed,
        dirt_cfg=DirtConfig(rate=0),
    )
    return settings


def run_cli(home: Path, start_day: date, end_day: date) -> tuple[float, str]:
    """``propensity run --through audiences`` in a child process: its wall time, and the wall
    time of each stage as the command prints it."""
    argv = [str(Path(sys.executable).with_name("propensity")), "run", "--start", str(start_day), "--end", str(end_day)]
    env = clean_environ({"PROPENSITY_HOME": str(home), **SMALL_SETTINGS})
    t0 = time.perf_counter()
    proc = subprocess.run([*argv, "--through", "audiences"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"CLI run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall, " ".join(line.strip("[]") for line in proc.stdout.splitlines() if line.startswith("["))


class Api:
    """Airflow's REST API (``/api/v2``) with a JWT from ``/auth/token``."""

    def __init__(self, cfg: StackConfig) -> None:
        self.base = cfg.airflow_url
        status, body = http_json(
            f"{self.base}/auth/token", "POST", {"username": cfg.username, "password": cfg.password}, timeout=30
        ) or (0, None)
        if status != 201:
            raise SystemExit(f"login failed: {status} {body}")
        self.token = body["access_token"]

    def call(self, method: str, path: str, body: Any = None) -> Any:
        answer = http_json(f"{self.base}/api/v2{path}", method, body, self.token, timeout=60)
        if answer is None or answer[0] >= 300:
            raise SystemExit(f"{method} {path}: {answer}")
        return answer[1]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/dags/{dag_id}/dagRuns?limit=100&order_by=id")["dag_runs"])

    def run_for(self, dag_id: str, key: str) -> dict[str, Any] | None:
        return next((r for r in self.runs(dag_id) if r.get("partition_key") == key), None)


def wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(1.0)
    raise SystemExit(f"{what}: not within {timeout:.0f} s")


def run_airflow(home: Path, start_day: date, end_day: date, timeout: float) -> tuple[float, float, list[str]]:
    """The chain on the ``make up`` stack: (start-up seconds, chain wall seconds, report lines)."""
    cfg = StackConfig.from_settings(Settings(home=home), airflow_port=free_port(), mlflow_port=free_port())
    env = clean_environ(
        {"PROPENSITY_HOME": str(home), **SMALL_SETTINGS, "PROPENSITY_MLFLOW_TRACKING_URI": cfg.mlflow_url}
    )
    t0 = time.perf_counter()
    state = start(cfg, timeout=300, base_env=env)
    try:
        api = Api(cfg)

        def parsed() -> bool:
            return set(CHAIN) <= {d["dag_id"] for d in api.call("GET", "/dags?limit=100")["dags"]}

        wait("the DAGs to be parsed", parsed, 300)
        startup = time.perf_counter() - t0
        day, snapshot = end_day.isoformat(), (end_day + timedelta(days=1)).isoformat()
        keys = dict(zip(CHAIN, (day, day, day, snapshot, snapshot), strict=True))
        for d in api.call("GET", "/dags?limit=100")["dags"]:
            api.call("PATCH", f"/dags/{d['dag_id']}", {"is_paused": False})  # as the UI's default does
        catchup = settle(api)
        t1, origin = time.perf_counter(), datetime.now(UTC)
        body = {"logical_date": None, "partition_key": day, "conf": {"start": str(start_day)}}
        api.call("POST", "/dags/shop_collect/dagRuns", body)

        def done() -> bool:
            for dag_id, key in keys.items():
                run = api.run_for(dag_id, key)
                if run is not None and run["state"] == "failed":
                    raise SystemExit(f"{dag_id} run for {key} failed: see {cfg.airflow_home / 'logs'}")
            run = api.run_for("score_and_build_audiences", snapshot)
            return bool(run and run["state"] == "success")

        wait("the scoring run of the chain", done, timeout)
        chain = time.perf_counter() - t1
        head = (
            f"  unpausing ran {catchup[0]} scheduled catch-up run(s) first: {catchup[1]:.1f} s, paid once, not counted"
        )
        return startup, chain, [head, *report(api, keys), *timeline(api, keys, origin)]
    finally:
        if not os.environ.get("BENCH_KEEP"):
            stop(state, timeout=30)


def settle(api: Api, quiet_polls: int = 3, timeout: float = 600) -> tuple[int, float]:
    """Wait until the runs that unpausing schedules are done: (how many, seconds).

    Unpausing a DAG with a schedule creates a run for its latest complete interval (the shop's
    yesterday, with no data in a simulated past). That is paid once per unpause, not per chain,
    and it would otherwise hold the chain's runs back (one active run per DAG)."""
    t0, seen, quiet = time.perf_counter(), set(), 0
    while quiet < quiet_polls:
        if time.perf_counter() - t0 > timeout:
            raise SystemExit("the runs scheduled by unpausing did not finish")
        active = api.call("GET", "/dags/~/dagRuns?state=queued&state=running&limit=100")["dag_runs"]
        seen |= {(r["dag_id"], r["dag_run_id"]) for r in active}
        quiet = 0 if active or (not seen and time.perf_counter() - t0 < 10) else quiet + 1
        time.sleep(1)
    return len(seen), time.perf_counter() - t0


def report(api: Api, keys: dict[str, str]) -> list[str]:
    """Each chain run's duration and its three slowest task instances."""
    lines = []
    for dag_id, key in keys.items():
        run = api.run_for(dag_id, key) or {}
        tis = api.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run.get('dag_run_id', ''), safe='')}/taskInstances")
        slow = sorted(tis["task_instances"], key=lambda t: -(t["duration"] or 0))[:3]
        tasks = ", ".join(
            f"{t['task_id']}[{t['rendered_map_index'] or t['map_index']}] {t['duration'] or 0:.0f}s" for t in slow
        )
        lines.append(f"  {dag_id:<26} {key}  {_seconds(run.get('start_date'), run.get('end_date')):6.1f} s   {tasks}")
    return lines


def timeline(api: Api, keys: dict[str, str], origin: datetime) -> list[str]:
    """Every run and task instance of the chain, in seconds after the trigger: where the wall
    goes between tasks (queueing, scheduling, the next DAG run's creation) as well as in them."""
    rows = []

    def stamps(queued: str | None, start: str | None, end: str | None) -> str:
        at = [f"{_seconds(origin.isoformat(), x):+6.1f}" if x else "     -" for x in (queued, start, end)]
        return f"  {at[0]} queued  {at[1]} start  {at[2]} end"

    for dag_id, key in keys.items():
        run = api.run_for(dag_id, key) or {}
        rows.append(
            (
                run.get("queued_at") or "",
                f"{stamps(run.get('queued_at'), run.get('start_date'), run.get('end_date'))}  {dag_id} run",
            )
        )
        tis = api.call("GET", f"/dags/{dag_id}/dagRuns/{quote(run.get('dag_run_id', ''), safe='')}/taskInstances")
        for t in tis["task_instances"]:
            name = f"{dag_id}.{t['task_id']}[{t['rendered_map_index'] or t['map_index']}]"
            rows.append(
                (
                    t.get("queued_when") or "",
                    f"{stamps(t.get('queued_when'), t.get('start_date'), t.get('end_date'))}    {name}",
                )
            )
    return ["timeline (seconds after the trigger):", *(line for _, line in sorted(rows))]


def _seconds(a: str | None, b: str | None) -> float:
    if not a or not b:
        return float("nan")
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--customers", type=int, default=2500)
    p.add_argument("--days", type=int, default=100)
    p.add_argument("--start", type=date.fromisoformat, default=date(2025, 1, 1))
    p.add_argument("--seed", type=int, default=12)
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args(argv)
    end_day = args.start + timedelta(days=args.days - 1)
    root = Path(tempfile.mkdtemp(prefix="airflow_vs_cli-"))
    try:
        simulate_into(root / "cli", args)
        simulate_into(root / "airflow", args)
        print(
            f"shop: {args.customers:,} customers x {args.days} days ({args.start}..{end_day}); load {os.getloadavg()}"
        )
        cli, stages = run_cli(root / "cli", args.start, end_day)
        print(f"CLI     propensity run --through audiences: {cli:7.1f} s ({stages})")
        startup, chain, lines = run_airflow(root / "airflow", args.start, end_day, args.timeout)
        print(f"Airflow chain, trigger -> audiences: {chain:7.1f} s (stack start-up, paid once: {startup:.1f} s)")
        print("\n".join(lines))
        print(f"ratio Airflow / CLI: {chain / cli:.2f}x (target <= 2.0); load {os.getloadavg()}")
    finally:
        if not os.environ.get("BENCH_KEEP"):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
