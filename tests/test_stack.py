"""``make up`` / ``make down``: the real local stack (``python -m propensity.stack``), end to end.

One test starts the whole stack (Airflow api-server, scheduler, dag-processor, triggerer and MLflow)
on free ports under a temporary ``PROPENSITY_HOME``, talks to it like a user would (health
endpoints, a JWT from Airflow's login endpoint, the DAG list), checks that a second ``up``
only reports, then ``down`` and checks that no process of the stack's sessions survives.
The pure parts (environments, commands, state file) are tested without starting anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from propensity.config import Settings
from propensity.services import LOOPBACK, free_port
from propensity.stack import (
    MARKER_ENV,
    StackConfig,
    airflow_env,
    alive,
    daemon_commands,
    http_json,
    mlflow_env,
    read_state,
    spawn,
    stack_processes,
    stop,
    write_passwords_file,
    write_state,
)

REPO_DAGS = {"shop_collect", "shop_validate", "build_features"}
DAEMONS = {"api-server", "scheduler", "dag-processor", "triggerer", "mlflow"}


def _config(tmp_path: Path, **overrides: Any) -> StackConfig:
    return StackConfig.from_settings(Settings(home=tmp_path / "home"), **overrides)


# --------------------------------------------------------------------------- pure parts


def test_config_follows_settings(tmp_path: Path) -> None:
    cfg = _config(tmp_path, airflow_port=18080)
    home = (tmp_path / "home").resolve()
    assert cfg.airflow_home == home / "airflow"
    assert cfg.mlflow_backend_uri == f"sqlite:///{home / 'mlflow.db'}"
    assert cfg.mlflow_artifacts == str(home / "mlartifacts")
    assert cfg.airflow_url == "http://127.0.0.1:18080" and cfg.mlflow_url == "http://127.0.0.1:5000"
    assert cfg.dags_folder.name == "dags" and (cfg.dags_folder / "shop_collect.py").is_file()
    assert cfg.state_path.parent == cfg.log_dir.parent.parent == cfg.airflow_home


def test_environments_and_commands(tmp_path: Path) -> None:
    cfg = _config(tmp_path, airflow_port=18080, mlflow_port=15000)
    base = {"PATH": "/usr/bin", "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor", "AIRFLOW_HOME": "/elsewhere"}
    env = airflow_env(cfg, "id1", "s" * 64, base=base)
    assert env["PATH"] == "/usr/bin"
    assert env["AIRFLOW_HOME"] == str(cfg.airflow_home)  # inherited Airflow settings never leak in
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor" and env["AIRFLOW__CORE__PARALLELISM"] == "4"
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("sqlite:///")
    assert env["AIRFLOW__API__HOST"] == LOOPBACK
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18080/execution/"
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
    assert env["PROPENSITY_MLFLOW_UI_URL"] == "http://127.0.0.1:15000"
    assert env[MARKER_ENV] == "id1"
    ml = mlflow_env(cfg, "id1", base=base)
    assert ml["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false" and ml[MARKER_ENV] == "id1"
    commands = daemon_commands(cfg)
    assert set(commands) == DAEMONS
    for argv in commands.values():
        if "--host" in argv:
            assert argv[argv.index("--host") + 1] == LOOPBACK
    for name in ("scheduler", "triggerer"):  # their log servers would bind every interface
        assert "--skip-serve-logs" in commands[name], commands[name]
    assert commands["triggerer"][2:4] == ["airflow", "triggerer"], commands["triggerer"]
    assert commands["mlflow"][commands["mlflow"].index("--workers") + 1] == "1"


def test_passwords_and_state_files(tmp_path: Path) -> None:
    cfg = _config(tmp_path, password="s3cret")
    path = write_passwords_file(cfg)
    assert json.loads(path.read_text()) == {"admin": "s3cret"}
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_state(cfg.state_path) is None
    write_state(cfg.state_path, {"stack_id": "x", "processes": []})
    assert read_state(cfg.state_path) == {"stack_id": "x", "processes": []}
    assert stack_processes({"stack_id": "x", "processes": []}) == []  # nothing runs under an unknown id


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
# like Airflow's task runner: a child that moves to a process group of its own
subprocess.Popen([sys.executable, "-c", "import os, signal, time; os.setpgid(0, 0); "
                  "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
time.sleep(600)
"""


def test_stop_reaches_escaped_groups_escalates_and_spares_others(tmp_path: Path) -> None:
    stack_id = uuid.uuid4().hex
    env = {**os.environ, MARKER_ENV: stack_id}
    record = spawn("stubborn", [sys.executable, "-c", STUBBORN], env, tmp_path / "stubborn.log", tmp_path)
    state = {"stack_id": stack_id, "processes": [record]}
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        procs = stack_processes(state)
        while len({p.pgid for p in procs}) < 2 and time.monotonic() < deadline:  # grandchild in its own group
            time.sleep(0.1)
            procs = stack_processes(state)
        assert len(procs) == 2 and len({p.pgid for p in procs}) == 2, procs
        assert alive(state) == {"stubborn": True}
        assert bystander.pid not in {p.pid for p in procs}
        began = time.monotonic()
        assert stop(state, timeout=1.0) == []  # SIGTERM is ignored: SIGKILL after the grace period
        assert time.monotonic() - began < 15
        assert stack_processes(state) == [] and alive(state) == {"stubborn": False}
        assert bystander.poll() is None  # not ours: untouched
    finally:
        stop(state, timeout=1.0)  # never leak the stubborn pair, even when an assertion failed
        bystander.kill()
        bystander.wait()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(record["pid"], 0)  # reap our direct child (a zombie after SIGKILL)


# --------------------------------------------------------------------------- the real stack


def _request(url: str, data: dict[str, Any] | None = None, token: str | None = None) -> tuple[int, Any] | None:
    return http_json(url, "POST" if data is not None else "GET", data, token, timeout=30)


def _sessions_alive(sids: set[int]) -> list[str]:
    """``pid (state) cmdline`` of every non-zombie process in one of the sessions ``sids``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(fields[3]) in sids and fields[0] not in ("Z", "X"):
            found.append(f"{name} ({fields[0]}) {cmdline[:120]}")
    return found


@pytest.mark.slow
def test_up_serves_airflow_and_mlflow_and_down_stops_everything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", "PROPENSITY_"))}
    env["PROPENSITY_HOME"] = str(home)
    airflow_port, mlflow_port = free_port(), free_port()
    stack = [sys.executable, "-m", "propensity.stack"]
    up_args = [*stack, "up", "--airflow-port", str(airflow_port), "--mlflow-port", str(mlflow_port)]
    airflow, mlflow = f"http://{LOOPBACK}:{airflow_port}", f"http://{LOOPBACK}:{mlflow_port}"
    state_path = home / "airflow" / "stack.json"
    state: dict[str, Any] | None = None
    timings: dict[str, float] = {}
    try:
        t0 = time.monotonic()
        up = subprocess.run(up_args, env=env, capture_output=True, text=True, timeout=420)
        timings["up"] = time.monotonic() - t0
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads(state_path.read_text())
        assert airflow in up.stdout and mlflow in up.stdout and "admin / admin" in up.stdout, up.stdout
        assert {p["name"] for p in state["processes"]} == DAEMONS
        for record in state["processes"]:
            assert Path(record["log"]).parent == home / "airflow" / "logs" / "stack"

        status, health = _request(f"{airflow}/api/v2/monitor/health")
        assert status == 200 and health["metadatabase"]["status"] == "healthy", health
        assert health["scheduler"]["status"] == "healthy" and health["dag_processor"]["status"] == "healthy"
        # no triggerer job at all reads as status None, which the UI's health badge shows red
        assert health["triggerer"]["status"] == "healthy" and health["triggerer"]["latest_triggerer_heartbeat"], health
        assert _request(f"{mlflow}/health") == (200, "OK")

        status, login = _request(f"{airflow}/auth/token", {"username": "admin", "password": "admin"})
        assert status == 201, login
        token = login["access_token"]
        assert _request(f"{airflow}/auth/token", {"username": "admin", "password": "wrong"})[0] == 401
        assert _request(f"{airflow}/api/v2/dags")[0] == 401  # the API needs the token

        t0 = time.monotonic()
        while True:  # the dag-processor may still be parsing them
            status, dags = _request(f"{airflow}/api/v2/dags?limit=100", token=token)
            assert status == 200, dags
            dag_ids = {d["dag_id"] for d in dags["dags"]}
            if dag_ids >= REPO_DAGS or time.monotonic() - t0 > 180:
                break
            time.sleep(1.0)
        timings["dags"] = time.monotonic() - t0
        assert dag_ids >= REPO_DAGS, f"DAGs listed after {timings['dags']:.0f}s: {sorted(dag_ids)}"

        again = subprocess.run(up_args, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr
        assert json.loads(state_path.read_text())["stack_id"] == state["stack_id"]
    finally:
        t0 = time.monotonic()
        down = subprocess.run([*stack, "down"], env=env, capture_output=True, text=True, timeout=120)
        timings["down"] = time.monotonic() - t0
        rounded = {k: round(v, 1) for k, v in timings.items()}
        print(f"stack timings: {rounded}")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not state_path.exists()
    sids = {p["pid"] for p in state["processes"]}
    assert _sessions_alive(sids) == []
    assert stack_processes(state) == []
    second = subprocess.run([*stack, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "nothing to stop" in second.stdout
