"""Real services on 127.0.0.1 for tests and a local dev stack, without Docker.

Mocks hide the bugs that matter most in this project (SQL dialect quirks, transaction
behaviour, S3 listing and endpoint handling), so the tests talk to real servers:

* :class:`PostgresServer` runs a throw-away PostgreSQL cluster from Debian's server
  binaries (``/usr/lib/postgresql/<version>/bin``) in a temporary directory.
* :class:`S3Server` runs moto's server mode, a real HTTP endpoint that speaks the S3 API,
  so boto3, pyarrow and MLflow all go through their normal network code paths.

Both listen on loopback only, on a port picked at start-up, so several test sessions (or
a test session next to a dev stack) never collide. Start-up waits are bounded and fail
with :class:`ServiceError` carrying the tail of the service's log, because "timed out"
alone is useless when a CI run fails. Both are context managers and also register an
``atexit`` hook, so a forgotten ``stop()`` does not leak a server past the interpreter
(a SIGKILLed interpreter still leaks; nothing in-process can prevent that).

This module deliberately imports neither pytest nor Airflow: the test fixtures in
``tests/conftest.py`` and a future local dev stack both build on it.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, NoReturn, Self

__all__ = [
    "LOOPBACK",
    "PostgresServer",
    "S3Server",
    "ServiceError",
    "find_postgres_bin",
    "free_port",
    "postgres_available",
]

LOOPBACK = "127.0.0.1"
"""Every service binds here only: nothing is reachable from outside the machine."""

POSTGRES_ROOT = Path("/usr/lib/postgresql")
"""Where Debian's ``postgresql-<version>`` packages put their server binaries."""

POSTGRES_OS_USER = "postgres"
"""OS account that owns the cluster when we run as root (``initdb`` refuses root)."""

POSTGRES_SUPERUSER = "postgres"
"""Database superuser created by ``initdb -U``; independent of the OS user."""

_BIND_ERRORS = ("Address already in use", "could not bind", "could not create any TCP/IP sockets")


class ServiceError(RuntimeError):
    """A service failed to start or stop; the message includes the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now.

    The OS picks the port (bind to port 0), which avoids guessing. The socket is closed
    before the service binds, so another process can grab the port in between; the
    servers below detect a bind failure and retry with a fresh port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _log_tail(path: Path | None, lines: int = 40) -> str:
    if path is None or not path.exists():
        return "(no log)"
    text = path.read_text(errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _port_in_use_error(log: Path | None) -> bool:
    tail = _log_tail(log, 200)
    return any(marker in tail for marker in _BIND_ERRORS)


def _run_bounded(cmd: Sequence[str], *, timeout: float, log: IO[bytes], cwd: Path, what: str) -> int:
    """Run ``cmd`` with output appended to ``log``; kill its whole process group on timeout.

    ``subprocess.run(timeout=...)`` only kills the direct child, which here is often
    ``runuser`` while the real work happens in a grandchild, hence the own session.
    """
    proc = subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=_clean_env(),
        start_new_session=True,
    )
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise ServiceError(f"{what} did not finish within {timeout:.0f}s") from None


def _clean_env() -> dict[str, str]:
    """The caller's environment minus libpq/PostgreSQL variables (PGDATA, PGPORT, ...).

    They would silently redirect ``pg_ctl`` or ``initdb`` to another cluster.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


# --------------------------------------------------------------------------- PostgreSQL


def _version_key(path: Path) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in path.name.split("."))
    except ValueError:
        return (-1,)


def find_postgres_bin(root: Path | None = None) -> Path | None:
    """The ``bin`` directory of the highest installed PostgreSQL version, or None.

    Debian installs each major version side by side (``/usr/lib/postgresql/15/bin``) and
    keeps ``initdb``/``pg_ctl`` off ``PATH``, so we look there rather than on ``PATH``.
    """
    root = POSTGRES_ROOT if root is None else root
    if not root.is_dir():
        return None
    candidates = [d for d in root.iterdir() if (d / "bin" / "initdb").is_file()]
    if not candidates:
        return None
    return max(candidates, key=_version_key) / "bin"


def _running_as_root() -> bool:
    return os.geteuid() == 0


def postgres_available() -> str | None:
    """None if :class:`PostgresServer` can run here, else a human-readable reason why not."""
    if not sys.platform.startswith("linux"):
        return f"PostgresServer supports Linux only (this is {sys.platform})"
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        return (
            f"no PostgreSQL server binaries under {POSTGRES_ROOT}/*/bin "
            "(run scripts/ensure-postgres.sh to install Debian's postgresql package)"
        )
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (bin_dir / name).is_file()]
    if missing:
        return f"{bin_dir} lacks {', '.join(missing)}"
    if _running_as_root():
        try:
            pwd.getpwnam(POSTGRES_OS_USER)
        except KeyError:
            return f"running as root but there is no {POSTGRES_OS_USER!r} OS user to run PostgreSQL as"
        if not (shutil.which("runuser") or shutil.which("su")):
            return "running as root but neither runuser nor su is available to drop privileges"
    if importlib.util.find_spec("psycopg2") is None:
        return "psycopg2 is not installed"
    return None


class _Service:
    """``with Server() as s:`` starts on entry and stops on exit, for every server below."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class PostgresServer(_Service):
    """A private, disposable PostgreSQL cluster on 127.0.0.1.

    ``initdb`` creates a fresh cluster in a temporary directory, configured for tests:
    loopback TCP plus a unix socket inside the temp dir (never ``/var/run/postgresql``,
    so the system cluster is untouched), ``trust`` authentication, and durability turned
    off (``fsync``, ``synchronous_commit``, ``full_page_writes``) because the data is
    thrown away anyway. Connect as superuser ``postgres`` without a password.

    When running as root the directory is handed to the ``postgres`` OS user and the
    binaries run through ``runuser``, because ``initdb`` and ``postgres`` refuse root.

    Usage::

        with PostgresServer() as pg:
            engine = sqlalchemy.create_engine(pg.create_database("airflow"))
    """

    def __init__(
        self,
        dbname: str = "postgres",
        *,
        port: int | None = None,
        bin_dir: Path | None = None,
        base_dir: Path | None = None,
        startup_timeout: float = 60.0,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """``dbname`` is the database :attr:`url` points at; it is created on start unless it
        is ``postgres``. ``settings`` are extra ``postgresql.conf`` lines (values inserted verbatim,
        e.g. ``{"max_connections": "300"}``); ``base_dir`` is where the temp dir goes
        (default: the system temp dir) and must be traversable by the postgres OS user."""
        self.dbname = dbname
        self.requested_port = port
        self.port: int | None = port
        self.bin_dir = bin_dir
        self.base_dir = base_dir
        self.startup_timeout = startup_timeout
        self.settings = dict(settings or {})
        self.tmpdir: Path | None = None
        self.pid: int | None = None
        self.startup_seconds: float | None = None

    # -- addresses

    @property
    def url(self) -> str:
        """SQLAlchemy URL of :attr:`dbname`: ``postgresql+psycopg2://postgres@127.0.0.1:PORT/DB``."""
        return self.url_for(self.dbname)

    @property
    def dsn(self) -> str:
        """libpq keyword/value connection string for :attr:`dbname` (psycopg2, ``psql``)."""
        return self.dsn_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        return f"postgresql+psycopg2://{POSTGRES_SUPERUSER}@{LOOPBACK}:{self._require_port()}/{dbname}"

    def dsn_for(self, dbname: str) -> str:
        return f"host={LOOPBACK} port={self._require_port()} user={POSTGRES_SUPERUSER} dbname={dbname}"

    @property
    def data_dir(self) -> Path:
        return self._require_tmpdir() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._require_tmpdir() / "run"

    @property
    def log_path(self) -> Path:
        return self._require_tmpdir() / "server.log"

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _require_port(self) -> int:
        if self.port is None:
            raise ServiceError("PostgresServer has no port yet: call start() first")
        return self.port

    def _require_tmpdir(self) -> Path:
        if self.tmpdir is None:
            raise ServiceError("PostgresServer has no directory yet: call start() first")
        return self.tmpdir

    # -- life cycle

    def start(self, attempts: int = 3) -> Self:
        """Create the cluster and start it; retries on a new port if the port was taken."""
        if self.running:
            return self
        reason = postgres_available() if self.bin_dir is None else None
        if reason:
            raise ServiceError(f"cannot start PostgreSQL: {reason}")
        self.bin_dir = self.bin_dir or find_postgres_bin()
        assert self.bin_dir is not None
        began = time.monotonic()
        self._init_cluster()
        fixed_port = self.requested_port is not None
        for attempt in range(1, attempts + 1):
            if not fixed_port:
                self.port = free_port()
            try:
                self._start_cluster()
                break
            except ServiceError:
                if fixed_port or attempt == attempts or not _port_in_use_error(self.log_path):
                    self._discard()
                    raise
        atexit.register(self.stop)
        if self.dbname != "postgres":  # initdb only makes "postgres"; make url usable at once
            try:
                self.create_database(self.dbname)
            except Exception:
                self.stop()
                raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``) and delete its directory. Idempotent."""
        atexit.unregister(self.stop)
        if self.tmpdir is None:
            return
        try:
            if self.pid is not None or self._read_pid() is not None:
                self._stop_cluster()
        finally:
            self._discard()

    # -- databases

    def create_database(self, name: str) -> str:
        """``CREATE DATABASE name`` and return its SQLAlchemy URL.

        One database per component (Airflow metadata, MLflow tracking, feature store)
        keeps their schemas apart within the single test cluster.
        """
        import psycopg2
        from psycopg2 import sql

        conn = psycopg2.connect(self.dsn_for("postgres"))
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        return self.url_for(name)

    # -- internals

    def _as_owner(self, cmd: Sequence[str]) -> list[str]:
        """``cmd`` run as the postgres OS user when we are root, else unchanged."""
        if not _running_as_root():
            return list(cmd)
        if shutil.which("runuser"):
            return ["runuser", "-u", POSTGRES_OS_USER, "--", *cmd]
        return ["su", POSTGRES_OS_USER, "-s", "/bin/sh", "-c", "exec " + shlex.join(cmd)]

    def _give_to_owner(self, path: Path) -> None:
        if _running_as_root():
            entry = pwd.getpwnam(POSTGRES_OS_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _init_cluster(self) -> None:
        assert self.bin_dir is not None
        self.tmpdir = Path(tempfile.mkdtemp(prefix="propensity-pg-", dir=self.base_dir))
        self._give_to_owner(self.tmpdir)
        self.socket_dir.mkdir()
        self._give_to_owner(self.socket_dir)
        initdb_log = self.tmpdir / "initdb.log"
        cmd = [
            str(self.bin_dir / "initdb"),
            "--pgdata", str(self.data_dir),
            "--username", POSTGRES_SUPERUSER,
            "--auth", "trust",
            "--encoding", "UTF8",
            "--no-locale",  # C collation: fast and identical on every machine
            "--no-sync",  # no fsync of the fresh cluster, saves seconds on slow disks
        ]  # fmt: skip
        try:
            with initdb_log.open("ab") as log:
                rc = _run_bounded(
                    self._as_owner(cmd), timeout=self.startup_timeout, log=log, cwd=self.tmpdir, what="initdb"
                )
            if rc != 0:
                raise ServiceError(f"initdb exited with {rc}")
        except ServiceError as exc:
            tail = _log_tail(initdb_log)
            self._discard()
            raise ServiceError(f"{exc}; initdb log tail:\n{tail}") from None
        (self.data_dir / "pg_hba.conf").write_text(
            "# written by propensity.services: loopback only, no passwords\n"
            "local all all trust\n"
            f"host  all all {LOOPBACK}/32 trust\n"
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'propensity.conf'\n")

    def _write_settings(self) -> None:
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "port": str(self._require_port()),
            "unix_socket_directories": f"'{self.socket_dir}'",
            # durability is pointless for a throw-away cluster and costs a lot of time
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "wal_level": "minimal",
            "max_wal_senders": "0",
            "jit": "off",  # JIT compile time dominates the small queries of tests
            "timezone": "'UTC'",
            **self.settings,
        }
        path = self.data_dir / "propensity.conf"
        path.write_text("".join(f"{key} = {value}\n" for key, value in settings.items()))
        self._give_to_owner(path)

    def _pg_ctl(self, *args: str, timeout: float, what: str) -> int:
        assert self.bin_dir is not None
        cmd = [str(self.bin_dir / "pg_ctl"), "--pgdata", str(self.data_dir), *args]
        with (self._require_tmpdir() / "pg_ctl.log").open("ab") as log:
            # pg_ctl's own -t is the primary bound; ours only catches a hung pg_ctl
            return _run_bounded(
                self._as_owner(cmd), timeout=timeout + 15, log=log, cwd=self._require_tmpdir(), what=what
            )

    def _start_cluster(self) -> None:
        self._write_settings()
        timeout = max(1, round(self.startup_timeout))
        try:
            rc = self._pg_ctl(
                "--log", str(self.log_path), "--wait", "--timeout", str(timeout), "start",
                timeout=timeout, what="pg_ctl start",
            )  # fmt: skip
            if rc != 0:
                raise ServiceError(f"pg_ctl start exited with {rc}")
        except ServiceError as exc:
            self.pid = self._read_pid()
            if self.pid is not None:  # started but not ready in time: do not leak it
                self._stop_cluster(mode="immediate")
            raise ServiceError(
                f"PostgreSQL did not start on {LOOPBACK}:{self.port} ({exc}); log tail:\n{_log_tail(self.log_path)}"
            ) from None
        self.pid = self._read_pid()

    def _read_pid(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except (OSError, ServiceError):
            return None
        return int(first) if first.strip().isdigit() else None

    def _stop_cluster(self, mode: str = "fast") -> None:
        """``pg_ctl stop``; falls back to SIGKILL so ``stop()`` never leaves a server behind."""
        pid = self.pid
        try:
            rc = self._pg_ctl("--mode", mode, "--wait", "--timeout", "30", "stop", timeout=30, what="pg_ctl stop")
        except ServiceError:
            rc = -1
        if rc != 0 and pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, timeout=10)
        self.pid = None

    def _discard(self) -> None:
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        self.tmpdir = None
        self.pid = None
        self.port = self.requested_port  # a restart picks a fresh port unless one was requested


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # the state follows the parenthesised command name, which may itself contain spaces
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --------------------------------------------------------------------------------- S3


class S3Server(_Service):
    """moto's S3-compatible server as a real HTTP endpoint on 127.0.0.1.

    It runs as a subprocess of the current interpreter (``sys.executable -m moto.server``),
    so it uses the moto installed in the same virtualenv, and in its own process group,
    so :meth:`stop` takes down any helper processes too. State lives in memory only and
    disappears on stop; :meth:`reset` clears it between tests without a restart.

    Clients find it through :meth:`env` (dummy credentials plus the endpoint variables
    read by :mod:`propensity.storage` and MLflow).
    """

    def __init__(self, *, port: int | None = None, region: str = "us-east-1", startup_timeout: float = 30.0) -> None:
        self.requested_port = port
        self.port: int | None = port
        self.region = region
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.tmpdir: Path | None = None
        self.startup_seconds: float | None = None
        self._log: IO[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        if self.port is None:
            raise ServiceError("S3Server has no port yet: call start() first")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def log_path(self) -> Path | None:
        return self.tmpdir / "moto.log" if self.tmpdir is not None else None

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3, pyarrow, propensity and MLflow here."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "PROPENSITY_S3_ENDPOINT_URL": self.endpoint_url,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url,
        }

    def start(self, attempts: int = 3) -> Self:
        """Start moto and wait until it answers HTTP; retries on a new port if it was taken."""
        if self.process is not None:
            return self
        began = time.monotonic()
        fixed_port = self.requested_port is not None
        self.tmpdir = Path(tempfile.mkdtemp(prefix="propensity-s3-"))
        for attempt in range(1, attempts + 1):
            if not fixed_port:
                self.port = free_port()
            try:
                self._spawn_and_wait()
                break
            except ServiceError:
                retry = not fixed_port and attempt < attempts and _port_in_use_error(self.log_path)
                if not retry:
                    self.stop()
                    raise
                self._kill()
        self.startup_seconds = time.monotonic() - began
        atexit.register(self.stop)
        return self

    def stop(self) -> None:
        """Terminate the server's process group and delete its log directory. Idempotent."""
        atexit.unregister(self.stop)
        self._kill()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        self.port = self.requested_port  # a restart picks a fresh port unless one was requested

    def reset(self) -> None:
        """Drop all buckets and objects (moto's ``/moto-api/reset``)."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with _OPENER.open(request, timeout=10):
            pass

    name = "moto server"

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)]

    def _env(self) -> dict[str, str]:
        return {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

    def _ready(self) -> bool:
        return _answers_http(self.endpoint_url)

    def _spawn_and_wait(self) -> None:
        assert self.log_path is not None
        self._log = self.log_path.open("ab")
        env = self._env()
        cmd = self._command()
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = self.process.poll()
            if code is not None:
                self._fail(f"{self.name} exited with {code}")
            if self._ready():
                return
            if time.monotonic() > deadline:
                self._fail(f"{self.name} did not answer HTTP within {self.startup_timeout:.0f}s")
            time.sleep(0.05)

    def _fail(self, message: str) -> NoReturn:
        raise ServiceError(f"{message} at {self.endpoint_url}; log tail:\n{_log_tail(self.log_path)}")

    def _kill(self) -> None:
        proc, self.process = self.process, None
        if proc is not None:
            for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""urllib opener that ignores HTTP(S)_PROXY: loopback must never go through a proxy."""


def _answers_http(url: str) -> bool:
    """True once anything answers HTTP at ``url`` (an HTTP error status counts as an answer)."""
    try:
        with _OPENER.open(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return False


class MlflowServer(S3Server):
    """``mlflow server`` on 127.0.0.1: a real tracking server and model registry.

    The backend store is any SQLAlchemy URL (SQLite file, PostgreSQL); artifacts are
    proxied by the server (``--serve-artifacts``) to ``artifacts_destination`` (a folder or
    ``s3://bucket/prefix``; pass the S3 endpoint variables in ``extra_env``). One worker
    and no job execution keep it light, as recommended for local use.
    """

    name = "mlflow server"

    def __init__(
        self,
        backend_store_uri: str,
        artifacts_destination: str,
        *,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        startup_timeout: float = 90.0,
    ) -> None:
        super().__init__(port=port, startup_timeout=startup_timeout)
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = artifacts_destination
        self.extra_env = dict(extra_env or {})

    @property
    def tracking_uri(self) -> str:
        return self.endpoint_url

    def _command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--host", LOOPBACK, "--port", str(self.port),
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", self.artifacts_destination,
            "--serve-artifacts", "--workers", "1",
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **self.extra_env}

    def _ready(self) -> bool:
        try:
            with _OPENER.open(f"{self.endpoint_url}/health", timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False
