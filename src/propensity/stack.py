"""A local Airflow + MLflow stack without Docker: ``python -m propensity.stack up|down|status``.

``up`` starts, under ``settings.airflow_home_dir`` (default ``var/airflow``):

* Airflow ``api-server``, ``scheduler`` (LocalExecutor, parallelism 4), ``dag-processor`` and
  ``triggerer`` on a SQLite metadata DB, with the repository's ``dags/`` and ``plugins/``
  folders and no example DAGs; login through Airflow's SimpleAuthManager with a known user and
  password (default ``admin``/``admin``), written to a passwords file under the Airflow home;
* ``mlflow server`` on the project's tracking backend (``settings.tracking_uri``, by default
  ``sqlite:///<home>/mlflow.db``) serving ``settings.artifacts_uri``, with one worker and no
  job execution, like :class:`propensity.services.MlflowServer`.

Everything binds to 127.0.0.1. It runs ``airflow db migrate`` first, starts every daemon in
its own session (so its process group holds it and all its children), logs each to
``<airflow_home>/logs/stack/<name>.log``, records the PIDs in ``<airflow_home>/stack.json``,
waits until Airflow's ``/api/v2/monitor/health`` (scheduler, DAG processor and triggerer
heartbeating) and MLflow's ``/health`` answer, and prints the URLs and the login.

``down`` stops exactly what ``up`` started: SIGTERM to the process groups of the recorded
daemons, a grace period, then SIGKILL for leftovers. Airflow's children (LocalExecutor
workers, task processes) outlive a plain SIGTERM of their parent, hence the groups; task
processes even move to groups of their own, but stay in the daemon's *session*, so the
sessions are what is swept (see :func:`stack_processes`: a session id cannot be recycled
while any of its processes lives, so a recycled PID is never killed). Every process also
carries ``PROPENSITY_STACK_ID=<id>`` in its environment, to find one that left its session.
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from propensity.config import Settings, load_settings
from propensity.links import MLFLOW_UI_ENV
from propensity.services import LOOPBACK

__all__ = [
    "AIRFLOW_HEALTH_PARTS",
    "MARKER_ENV",
    "StackConfig",
    "StackError",
    "airflow_env",
    "daemon_commands",
    "main",
    "marked_pids",
    "mlflow_env",
    "read_state",
    "stack_processes",
    "start",
    "stop",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout this module runs from (``src/propensity/stack.py``): ``dags/`` and ``plugins/`` live there."""

MARKER_ENV = "PROPENSITY_STACK_ID"
"""Environment variable that tags every process of one stack (inherited by all descendants)."""

STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
PASSWORDS_FILE = "simple_auth_manager_passwords.json"
DEFAULT_AIRFLOW_PORT = 8080
DEFAULT_MLFLOW_PORT = 5000

_SCRUB_PREFIXES = ("AIRFLOW__", "AIRFLOW_", "_AIRFLOW")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback never via a proxy


class StackError(RuntimeError):
    """The stack could not be started or stopped; the message says why (with a log tail)."""


@dataclass(frozen=True)
class StackConfig:
    """Where the stack lives and how it is reached. Build it with :meth:`from_settings`."""

    airflow_home: Path
    propensity_home: Path
    dags_folder: Path
    plugins_folder: Path
    mlflow_backend_uri: str
    mlflow_artifacts: str
    airflow_port: int = DEFAULT_AIRFLOW_PORT
    mlflow_port: int = DEFAULT_MLFLOW_PORT
    username: str = "admin"
    password: str = "admin"
    parallelism: int = 4
    host: str = LOOPBACK
    airflow_db: str | None = None
    """SQLAlchemy URL of Airflow's metadata DB (e.g. PostgreSQL); None: SQLite under the Airflow home."""

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> StackConfig:
        """The stack of ``settings``: its Airflow home, home and MLflow backend; ``overrides`` win."""
        values: dict[str, Any] = {
            "airflow_home": settings.airflow_home_dir,
            "propensity_home": settings.home_dir,
            "dags_folder": REPO_ROOT / "dags",
            "plugins_folder": REPO_ROOT / "plugins",
            "mlflow_backend_uri": settings.tracking_uri,
            "mlflow_artifacts": settings.artifacts_uri,
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def airflow_url(self) -> str:
        return f"http://{self.host}:{self.airflow_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def state_path(self) -> Path:
        return self.airflow_home / STATE_FILE

    @property
    def log_dir(self) -> Path:
        return self.airflow_home / "logs" / "stack"

    @property
    def passwords_file(self) -> Path:
        return self.airflow_home / PASSWORDS_FILE

    @property
    def airflow_db_url(self) -> str:
        return self.airflow_db or f"sqlite:///{self.airflow_home / 'airflow.db'}"


# ------------------------------------------------------------------------------ environments


def _base_env(base: Mapping[str, str] | None) -> dict[str, str]:
    """``base`` (default: ours) minus Airflow variables: the stack's own settings must not be overridden."""
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if not k.startswith(_SCRUB_PREFIXES)}


#: seconds the scheduler sleeps when a loop found nothing to do (Airflow's default: 1)
SCHEDULER_IDLE_SLEEP = "0.25"


def airflow_env(
    cfg: StackConfig, stack_id: str, jwt_secret: str, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Environment of every Airflow process of the stack (configuration by ``AIRFLOW__*`` variables only).

    Inherited ``AIRFLOW*`` variables are dropped so a shell's leftovers cannot point the
    stack at another database; ``PROPENSITY_*`` ones are kept (tasks read their settings
    from them), with ``PROPENSITY_HOME`` made absolute.
    """
    env = _base_env(base)
    env.update(
        {
            "AIRFLOW_HOME": str(cfg.airflow_home),
            "AIRFLOW_CONFIG": str(cfg.airflow_home / "airflow.cfg"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(cfg.dags_folder),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(cfg.plugins_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(cfg.parallelism),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.airflow_url}/execution/",
            "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager."
            "SimpleAuthManager",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{cfg.username}:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(cfg.passwords_file),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": cfg.airflow_db_url,
            "AIRFLOW__API__HOST": cfg.host,
            "AIRFLOW__API__PORT": str(cfg.airflow_port),
            "AIRFLOW__API__BASE_URL": cfg.airflow_url,
            "AIRFLOW__API__WORKERS": "1",
            # api-server, scheduler and task workers must share it to trust each other's tokens
            "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret,
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(cfg.airflow_home / "logs"),
            # the chain hands over about 15 times (asset event -> next run, task -> next task), and
            # each hand-over waits for the scheduler's next loop: 1 s by default, about 13 s of a
            # 41 s chain on the integration shop (bench/airflow_vs_cli.py prints the timeline)
            "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": SCHEDULER_IDLE_SLEEP,
            "PROPENSITY_HOME": str(cfg.propensity_home),
            MLFLOW_UI_ENV: cfg.mlflow_url,  # read by plugins/propensity_links.py
            MARKER_ENV: stack_id,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def mlflow_env(cfg: StackConfig, stack_id: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of ``mlflow server``: no job execution (no extra job-runner processes)."""
    env = _base_env(base)
    env.update(
        {
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PROPENSITY_HOME": str(cfg.propensity_home),
            MARKER_ENV: stack_id,
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def daemon_commands(cfg: StackConfig, python: str = sys.executable) -> dict[str, list[str]]:
    """The argv of each daemon, by name: ``api-server``, ``scheduler``, ``dag-processor``,
    ``triggerer``, ``mlflow``.

    The triggerer runs deferred tasks and asset watchers; without one Airflow's health
    endpoint (and the UI's health badge) reports it missing, and a deferrable task would wait
    for ever. The scheduler and the triggerer skip their log servers (they would listen on all
    interfaces; the API server reads task logs from the local log folder anyway).
    """
    airflow = [python, "-m", "airflow"]
    return {
        "api-server": [*airflow, "api-server", "--host", cfg.host, "--port", str(cfg.airflow_port), "--workers", "1"],
        "scheduler": [*airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [*airflow, "dag-processor"],
        "triggerer": [*airflow, "triggerer", "--skip-serve-logs"],
        "mlflow": [
            python, "-m", "mlflow", "server",
            "--host", cfg.host, "--port", str(cfg.mlflow_port),
            "--backend-store-uri", cfg.mlflow_backend_uri,
            "--artifacts-destination", cfg.mlflow_artifacts,
            "--serve-artifacts", "--workers", "1",
        ],
    }  # fmt: skip


def write_passwords_file(cfg: StackConfig) -> Path:
    """Write SimpleAuthManager's passwords file (``{"user": "password"}``, mode 0600) with the known login."""
    cfg.passwords_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(cfg.passwords_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps({cfg.username: cfg.password}) + "\n")
    return cfg.passwords_file


# ------------------------------------------------------------------------------ state file


def read_state(path: Path) -> dict[str, Any] | None:
    """The stack's state (``stack.json``), or None if there is none or it is unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write the state atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(airflow_home: Path) -> Iterator[None]:
    """Serialise ``up``/``down`` on one Airflow home (two ``make up`` at once start one stack)."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    with (airflow_home / LOCK_FILE).open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another `propensity.stack` command is running on {airflow_home}") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ------------------------------------------------------------------------------ processes


@dataclass(frozen=True)
class ProcInfo:
    """What ``/proc/<pid>/stat`` says about a live (non-zombie) process."""

    pid: int
    pgid: int
    sid: int
    start_time: int  # clock ticks after boot: with the PID, identifies a process for good


def proc_info(pid: int) -> ProcInfo | None:
    """``pid``'s process group, session and start time, or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name may contain spaces and parentheses
    if fields[0] in ("Z", "X"):
        return None
    return ProcInfo(pid=pid, pgid=int(fields[2]), sid=int(fields[3]), start_time=int(fields[19]))


def has_marker(pid: int, stack_id: str) -> bool:
    """True if ``pid``'s environment carries the marker of the stack ``stack_id``.

    Never a false positive (the id is random), but a process that rewrote its environment
    block (``setproctitle`` may) loses it: see :func:`stack_processes` for the main test.
    """
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone, or not ours to read
        return False
    return f"{MARKER_ENV}={stack_id}".encode() in environ.split(b"\0")


def _live_processes() -> Iterator[ProcInfo]:
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != me and (info := proc_info(int(name))) is not None:
            yield info


def _sessions(state: Mapping[str, Any]) -> dict[int, int]:
    """Session id -> start time of its leader, for each daemon the state records."""
    return {r["pid"]: r["start_time"] for r in state.get("processes", []) if r.get("start_time") is not None}


def stack_processes(state: Mapping[str, Any]) -> list[ProcInfo]:
    """Every live process of the stack in ``state``.

    Each daemon was started as the leader of a new session, and its descendants stay in that
    session even when they move to process groups of their own (Airflow's task processes
    do). A session id cannot be handed out as a new PID while any process of the session
    lives, so "in a recorded session and started no earlier than its leader" identifies our
    processes without ever matching a recycled PID. Processes carrying the stack's
    environment marker are included too, in case one left the session (``setsid``).
    """
    sessions = _sessions(state)
    stack_id = state["stack_id"]
    return [
        p
        for p in _live_processes()
        if (p.sid in sessions and p.start_time >= sessions[p.sid]) or has_marker(p.pid, stack_id)
    ]


def marked_pids(stack_id: str) -> list[int]:
    """Live processes carrying the environment marker of the stack ``stack_id``."""
    return sorted(p.pid for p in _live_processes() if has_marker(p.pid, stack_id))


def _signal(state: Mapping[str, Any], sig: signal.Signals) -> int:
    """Send ``sig`` to every process group of the stack's sessions, and to stray marked processes.

    Returns how many processes there were.
    """
    sessions = _sessions(state)
    procs = stack_processes(state)
    groups = {p.pgid for p in procs if p.sid in sessions}  # a group never spans sessions: all ours
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
    for p in procs:
        if p.pgid not in groups:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)
    return len(procs)


def _wait_gone(state: Mapping[str, Any], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := stack_processes(state)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return sorted(p.pid for p in left)


def stop(state: Mapping[str, Any], timeout: float = 30.0) -> list[int]:
    """Stop every process of the stack in ``state``: SIGTERM, wait up to ``timeout``, then SIGKILL.

    Returns the PIDs that survived even SIGKILL (normally none).
    """
    if not _signal(state, signal.SIGTERM):
        return []
    if not _wait_gone(state, timeout):
        return []
    _signal(state, signal.SIGKILL)
    return _wait_gone(state, 10.0)


def alive(state: Mapping[str, Any]) -> dict[str, bool]:
    """For each recorded daemon: is it (the very process that was started) still running?"""
    result = {}
    for record in state.get("processes", []):
        info = proc_info(record["pid"])
        result[record["name"]] = info is not None and info.start_time == record["start_time"]
    return result


# ------------------------------------------------------------------------------ start


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").rstrip()
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


AIRFLOW_HEALTH_PARTS = ("metadatabase", "scheduler", "dag_processor", "triggerer")
"""The parts of ``/api/v2/monitor/health`` that must say ``healthy`` (the UI's health badge shows them all)."""

HEAVY_POOL_SLOTS = 3  # of parallelism 4: one slot stays free for the light tasks


def airflow_cli(cfg: StackConfig, env: Mapping[str, str], args: Sequence[str], timeout: float = 600.0) -> None:
    """Run ``airflow <args>`` to completion (own process group, killed on timeout); output to the stack logs."""
    what = "airflow " + " ".join(args)
    log_path = cfg.log_dir / f"{'-'.join(args[:2])}.log"
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "airflow", *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cfg.airflow_home,
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise StackError(f"{what} did not finish in {timeout:.0f}s; log tail:\n{_log_tail(log_path)}") from None
    if code != 0:
        raise StackError(f"{what} exited with {code}; log tail:\n{_log_tail(log_path)}")


def migrate_db(cfg: StackConfig, env: Mapping[str, str], timeout: float = 600.0) -> None:
    """``airflow db migrate`` (creates or upgrades the metadata DB, SQLite unless ``cfg.airflow_db``), then the
    pool the heavy tasks (snapshot and scoring shards, training) queue in: without it they are never scheduled."""
    from propensity.airflow.tasks import HEAVY_POOL

    airflow_cli(cfg, env, ["db", "migrate"], timeout)
    airflow_cli(cfg, env, ["pools", "set", HEAVY_POOL, str(HEAVY_POOL_SLOTS), "snapshots, scoring and training"])


def spawn(name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path) -> dict[str, Any]:
    """Start one daemon in a new session (its own process group); returns its state record."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        log.write(f"\n==== {datetime.now(UTC).isoformat()} {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
    info = proc_info(proc.pid)
    return {
        "name": name,
        "pid": proc.pid,
        "pgid": proc.pid,  # start_new_session: it leads its own session and group
        "start_time": info.start_time if info else None,
        "argv": list(argv),
        "log": str(log_path),
    }


def http_json(
    url: str, method: str = "GET", body: Any = None, token: str | None = None, timeout: float = 3.0
) -> tuple[int, Any] | None:
    """(status, parsed JSON or text, None for an empty body) of one request to a loopback service
    (never through a proxy), or None if nothing answers yet. HTTP errors are answers, not exceptions."""
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with _OPENER.open(request, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return None
    if not raw:
        return status, None
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def airflow_ready(cfg: StackConfig) -> bool:
    """Airflow's health endpoint answers and the scheduler, DAG processor and triggerer are heartbeating
    (every part the UI's health badge shows)."""
    answer = http_json(f"{cfg.airflow_url}/api/v2/monitor/health")
    if answer is None or answer[0] != 200 or not isinstance(answer[1], dict):
        return False
    health = answer[1]
    return all((health.get(part) or {}).get("status") == "healthy" for part in AIRFLOW_HEALTH_PARTS)


def mlflow_ready(cfg: StackConfig) -> bool:
    """MLflow's ``/health`` answers 200."""
    answer = http_json(f"{cfg.mlflow_url}/health")
    return answer is not None and answer[0] == 200


def wait_ready(cfg: StackConfig, state: Mapping[str, Any], timeout: float) -> None:
    """Wait until both endpoints are ready; fail early (with its log tail) if a daemon dies."""
    deadline = time.monotonic() + timeout
    pending = {"airflow": lambda: airflow_ready(cfg), "mlflow": lambda: mlflow_ready(cfg)}
    while pending:
        for name, ready in list(pending.items()):
            if ready():
                del pending[name]
        for record in state["processes"]:
            if proc_info(record["pid"]) is None:
                tail = _log_tail(Path(record["log"]))
                raise StackError(f"{record['name']} exited during start-up; log tail:\n{tail}")
        if not pending:
            return
        if time.monotonic() > deadline:
            tails = "\n".join(
                f"--- {r['name']} ({r['log']}):\n{_log_tail(Path(r['log']), 15)}" for r in state["processes"]
            )
            raise StackError(f"{', '.join(pending)} not ready within {timeout:.0f}s\n{tails}")
        time.sleep(0.5)


def start(cfg: StackConfig, timeout: float = 240.0, base_env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Migrate the DB, start the daemons, wait until they answer; returns the state (also written to disk).

    On failure (or Ctrl-C) everything started so far is stopped again.
    """
    for folder in (cfg.dags_folder, cfg.plugins_folder):
        if not folder.is_dir():
            raise StackError(f"{folder} is not a directory (run from a checkout, or pass --dags/--plugins)")
    if cfg.mlflow_backend_uri.startswith(("http://", "https://")):
        raise StackError(
            f"the settings point MLflow at a tracking server ({cfg.mlflow_backend_uri}); the local stack serves "
            "a database backend (unset PROPENSITY_MLFLOW_TRACKING_URI to use <home>/mlflow.db)"
        )
    for what, port in (("Airflow", cfg.airflow_port), ("MLflow", cfg.mlflow_port)):
        if not _port_free(cfg.host, port):
            raise StackError(f"{what} port {cfg.host}:{port} is in use (choose another with --{what.lower()}-port)")
    cfg.log_dir.mkdir(parents=True, exist_ok=True)
    cfg.propensity_home.mkdir(parents=True, exist_ok=True)
    if cfg.mlflow_artifacts.startswith("file://") or "://" not in cfg.mlflow_artifacts:  # a local folder
        Path(cfg.mlflow_artifacts.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    stack_id = uuid.uuid4().hex
    af_env = airflow_env(cfg, stack_id, jwt_secret=secrets.token_urlsafe(64), base=base_env)
    ml_env = mlflow_env(cfg, stack_id, base=base_env)
    write_passwords_file(cfg)
    migrate_db(cfg, af_env)
    state: dict[str, Any] = {
        "stack_id": stack_id,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "airflow_home": str(cfg.airflow_home),
        "airflow_url": cfg.airflow_url,
        "mlflow_url": cfg.mlflow_url,
        "username": cfg.username,
        "processes": [],
    }
    try:
        for name, argv in daemon_commands(cfg).items():
            env = ml_env if name == "mlflow" else af_env
            state["processes"].append(spawn(name, argv, env, cfg.log_dir / f"{name}.log", cfg.airflow_home))
            write_state(cfg.state_path, state)  # recorded at once: `down` works even if we die now
        wait_ready(cfg, state, timeout)
    except BaseException:
        stop(state)
        cfg.state_path.unlink(missing_ok=True)
        raise
    return state


# ------------------------------------------------------------------------------ command line


def _login(cfg: StackConfig) -> str:
    """``user / password`` as the running stack has them (its passwords file), else as configured."""
    try:
        password = json.loads(cfg.passwords_file.read_text())[cfg.username]
    except (OSError, ValueError, KeyError):
        password = cfg.password
    return f"{cfg.username} / {password}"


def _banner(cfg: StackConfig, state: Mapping[str, Any]) -> str:
    pids = ", ".join(f"{r['name']} {r['pid']}" for r in state["processes"])
    return (
        f"Airflow  {state['airflow_url']}   login: {_login(cfg)}\n"
        f"MLflow   {state['mlflow_url']}\n"
        f"home     {cfg.airflow_home} (logs in {cfg.log_dir}, state in {cfg.state_path})\n"
        f"pids     {pids}\n"
        "DAGs start paused: unpause them in the UI. Stop everything with `make down`."
    )


def cmd_up(cfg: StackConfig, timeout: float) -> int:
    with _locked(cfg.airflow_home):
        state = read_state(cfg.state_path)
        if state is not None:
            status = alive(state)
            if all(status.values()) and status:
                print(f"The stack is already running (started {state['started_at']}):")
                print(_banner(cfg, state))
                return 0
            if any(status.values()) or stack_processes(state):
                dead = ", ".join(name for name, ok in status.items() if not ok)
                print(f"The stack is partly running ({dead} stopped): `make down`, then `make up`.", file=sys.stderr)
                return 1
            cfg.state_path.unlink()  # stale: nothing of it runs any more (reboot, kill -9)
        began = time.monotonic()
        print(f"Starting Airflow and MLflow under {cfg.airflow_home} ...", flush=True)
        state = start(cfg, timeout=timeout)
        print(f"Ready in {time.monotonic() - began:.0f}s.")
        print(_banner(cfg, state))
        return 0


def cmd_down(cfg: StackConfig, timeout: float) -> int:
    with _locked(cfg.airflow_home):
        state = read_state(cfg.state_path)
        if state is None:
            print(f"No stack state at {cfg.state_path}: nothing to stop.")
            return 0
        names = ", ".join(r["name"] for r in state["processes"])
        survivors = stop(state, timeout=timeout)
        if survivors:
            print(f"Could not stop pids {survivors}; state kept at {cfg.state_path}.", file=sys.stderr)
            return 1
        cfg.state_path.unlink(missing_ok=True)
        print(f"Stopped {names}.")
        return 0


def cmd_status(cfg: StackConfig) -> int:
    state = read_state(cfg.state_path)
    if state is None:
        print("Not running.")
        return 1
    status = alive(state)
    for record in state["processes"]:
        print(f"{record['name']:<14} pid {record['pid']:<8} {'running' if status[record['name']] else 'STOPPED'}")
    print(f"Airflow {state['airflow_url']}  MLflow {state['mlflow_url']}")
    return 0 if status and all(status.values()) else 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m propensity.stack", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--config", help="YAML settings file (as for the propensity command)")
    airflow_port = _env_int("PROPENSITY_STACK_AIRFLOW_PORT", DEFAULT_AIRFLOW_PORT)
    mlflow_port = _env_int("PROPENSITY_STACK_MLFLOW_PORT", DEFAULT_MLFLOW_PORT)
    parser.add_argument("--airflow-port", type=int, default=airflow_port, help=f"default {airflow_port}")
    parser.add_argument("--mlflow-port", type=int, default=mlflow_port, help=f"default {mlflow_port}")
    parser.add_argument("--password", default=os.environ.get("PROPENSITY_STACK_PASSWORD", "admin"))
    parser.add_argument("--dags", type=Path, help="DAGs folder (default: the checkout's dags/)")
    parser.add_argument("--plugins", type=Path, help="plugins folder (default: the checkout's plugins/)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds to wait (up: 240, down: 30)")
    args = parser.parse_args(argv)
    cfg = StackConfig.from_settings(
        load_settings(args.config),
        airflow_port=args.airflow_port,
        mlflow_port=args.mlflow_port,
        password=args.password,
        dags_folder=args.dags.resolve() if args.dags else None,
        plugins_folder=args.plugins.resolve() if args.plugins else None,
    )
    try:
        if args.command == "up":
            return cmd_up(cfg, args.timeout or 240.0)
        if args.command == "down":
            return cmd_down(cfg, args.timeout or 30.0)
        return cmd_status(cfg)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
