"""A throwaway Airflow installation for tests, run in child processes.

Airflow reads its configuration (``AIRFLOW_HOME``, ``AIRFLOW__*``) once, when ``airflow``
is first imported, and configures a process-wide ORM engine from it. Pointing an
already-imported Airflow at another home is not reliable, and importing Airflow inside
the pytest process would also make the test depend on whatever another test imported
first. So every Airflow action here runs in a fresh ``sys.executable`` child whose
environment is built from scratch (no inherited ``AIRFLOW__*``/``PROPENSITY_*``):
the child is this very file run as a script, with a sub-command, printing one JSON
line as its result. Each child costs ~3 s of ``import airflow`` and its first task ~5 s
more to build the in-process Execution API app (20 s and 45 s on a loaded 2-core machine),
so the metadata DB is created (from the ORM, ~1 s) and the DAGs folder parsed once per
session, and several ``dag.test()`` runs can share one child (params are reset between
them: a run's conf does not leak into the next, see :func:`_param_defaults`).

The session's :class:`AirflowEnv` is ``persistent``: ONE child (``serve``) runs every
action of the session, one JSON command per line on its stdin, so Airflow is imported and
the Execution API app built once, not once per DAG under test. Each command still gets
what a fresh child got: the DAGs folder parsed again (DAG files read the configuration
when parsed), the command's extra environment, and afterwards the child's environment
restored exactly (a task exporting ``PROPENSITY_CONFIG`` does not reach the next command).
A command that times out or kills the child ends it; the next command starts a new one.

Use the ``airflow_env`` fixture (session-scoped)::

    from airflow_env import airflow_env  # noqa: F401  (fixture)

    def test_x(airflow_env):
        [run] = airflow_env.dag_test(
            "shop_collect",
            [{"logical_date": "2025-03-02T00:00:00+00:00", "conf": {"tables": ["orders"]}}],
            extra_env={"PROPENSITY_HOME": str(home)},
        )
        assert run["state"] == "success", run["log"]
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DAGS_FOLDER = ROOT / "dags"
RESULT_MARK = "@@RESULT@@ "
RUN_MARK = "@@RUN@@"
DONE_MARK = "@@DONE@@ "  # a persistent child's command is over: "ok" or "error"
_SCRUB_PREFIXES = ("AIRFLOW__", "AIRFLOW_", "PROPENSITY_", "_AIRFLOW")
KEEP_FSYNC_ENV = "PROPENSITY_TEST_FSYNC"  # "1": real fsyncs in the child too (see conftest._no_fsync)


def airflow_environ(home: Path, dags_folder: Path = DAGS_FOLDER) -> dict[str, str]:
    """Environment for a child process using the Airflow installation at ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # Nothing but our DAGs folder: no plugins or providers discovery surprises.
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
            "PYTHONUNBUFFERED": "1",
        }
    )
    if os.environ.get(KEEP_FSYNC_ENV):  # the one PROPENSITY_* switch of the test harness itself
        env[KEEP_FSYNC_ENV] = os.environ[KEEP_FSYNC_ENV]
    return env


@dataclass
class AirflowEnv:
    """An initialised Airflow home; runs Airflow actions in isolated child processes
    (one child per action, or with ``persistent`` one child for every action; see the module
    docstring). A persistent environment is ended with :meth:`close`."""

    home: Path
    dags_folder: Path = DAGS_FOLDER
    timings: dict[str, float] = field(default_factory=dict)
    dag_report: dict[str, Any] | None = None
    persistent: bool = False
    _worker: subprocess.Popen | None = field(default=None, repr=False)
    _output: queue.Queue | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        return airflow_environ(self.home, self.dags_folder)

    def run(self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 300) -> Any:
        """Run a sub-command of this file in a child process; returns its JSON result."""
        t0 = time.perf_counter()
        if self.persistent:
            ok, output = self._ask(list(args), extra_env or {}, timeout)
            status = "persistent child"
        else:
            proc = subprocess.run(
                [sys.executable, __file__, *args],
                env={**self.env, **(extra_env or {})},
                cwd=self.home,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,  # one stream, so log lines keep their order
                text=True,
                timeout=timeout,
            )
            ok, output, status = proc.returncode == 0, proc.stdout, f"rc={proc.returncode}"
        self.timings[args[0]] = round(time.perf_counter() - t0, 2)
        lines = [ln for ln in output.splitlines() if ln.startswith(RESULT_MARK)]
        if not ok or not lines:
            raise AssertionError(f"airflow child {args} failed ({status})\n--- output ---\n{output[-20000:]}")
        result = json.loads(lines[-1][len(RESULT_MARK) :])
        if isinstance(result, dict):
            result["_log"] = output
        return result

    def _ask(self, args: list[str], extra_env: dict[str, str], timeout: float) -> tuple[bool, str]:
        """One command to the persistent child (started if needed): (succeeded, its output)."""
        if self._worker is None or self._worker.poll() is not None:
            self._start()
        assert self._worker is not None and self._worker.stdin is not None and self._output is not None
        self._worker.stdin.write(json.dumps({"args": args, "env": extra_env}) + "\n")
        self._worker.stdin.flush()
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._output.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise AssertionError(
                    f"airflow child {args} timed out after {timeout:.0f} s\n--- output ---\n{''.join(lines)[-20000:]}"
                ) from None
            if line is None:  # the child is gone
                self.close()
                return False, "".join(lines) + "\n(the persistent airflow child exited)"
            if line.startswith(DONE_MARK):
                return line[len(DONE_MARK) :].strip() == "ok", "".join(lines)
            lines.append(line)

    def _start(self) -> None:
        self.close()
        self._worker = subprocess.Popen(
            [sys.executable, __file__, "serve"],
            env=self.env,
            cwd=self.home,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._output = out = queue.Queue()
        stream = self._worker.stdout

        def pump() -> None:
            for line in stream:
                out.put(line)
            out.put(None)

        threading.Thread(target=pump, name="airflow-child-output", daemon=True).start()

    def close(self) -> None:
        """End the persistent child, if any (it exits when its stdin closes)."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        with contextlib.suppress(OSError):
            worker.stdin.close()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    def init_db(self) -> dict[str, Any]:
        """Create the metadata DB; the same child also parses the DAGs (saves one ``import airflow``)."""
        result = self.run("init-db")
        self.dag_report = result.pop("dags_report")
        return result

    def import_dags(self, fresh: bool = False) -> dict[str, Any]:
        """Parse the DAGs folder with Airflow's DagBag: import errors and a summary per DAG.

        Returns the report made when the DB was initialised unless ``fresh``.
        """
        if fresh or self.dag_report is None:
            self.dag_report = self.run("import-dags")
        return self.dag_report

    def dag_test(
        self,
        dag_id: str,
        runs: list[dict[str, Any]],
        extra_env: dict[str, str] | None = None,
        retries: int = 0,
        timeout: float = 300,
    ) -> list[dict[str, Any]]:
        """``dag.test()`` each of ``runs`` in turn, in ONE child process; one result per run.

        A run is ``{"logical_date": "2025-03-02T00:00:00+00:00", "conf": {...}}``, optionally
        with ``"env": {...}``: variables set in the child's environment for that run only (tasks
        run in-process and read e.g. ``PROPENSITY_HOME`` when they start). A result
        holds the run state, data interval, task states, the asset events the run emitted,
        its wall time and its own part of the log (``"log"``). Batching runs matters: every
        child pays ~3 s for ``import airflow`` and the first task of a child ~5 s to build the
        in-process Execution API app, next to ~1 s per run for the tasks themselves.

        ``dag.test()`` honours retries *and their delays* (it polls until an up-for-retry task
        is due), so a failing task with backoff would stall the test for minutes: every
        task's ``retries`` is overridden (0 by default) to fail fast.
        """
        result = self.run("dag-test", dag_id, json.dumps(runs), str(retries), extra_env=extra_env, timeout=timeout)
        log = result.pop("_log")
        parts = log.split(RUN_MARK)
        for i, run in enumerate(result["runs"]):
            run["log"] = parts[i + 1] if i + 1 < len(parts) else log
        return result["runs"]


@pytest.fixture(scope="session")
def airflow_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowEnv]:
    """A fresh AIRFLOW_HOME with an initialised SQLite metadata DB, shared by the session,
    and one persistent Airflow child for all of its actions."""
    home = tmp_path_factory.mktemp("airflow_home")
    (home / "plugins").mkdir()
    env = AirflowEnv(home, persistent=True)
    try:
        env.init_db()
        yield env
    finally:
        env.close()


# Child-process side -------------------------------------------------------------------


def value(enum: Any) -> str | None:
    """``TaskInstanceState.SUCCESS`` -> ``"success"`` (``str()`` of Airflow's str-enums is the member name)."""
    return None if enum is None else str(getattr(enum, "value", enum))


def _emit(result: Any) -> None:
    print(RESULT_MARK + json.dumps(result, default=str), flush=True)


def _init_db() -> dict[str, Any]:
    """Create the metadata schema straight from the ORM (what ``airflow db migrate`` does on an
    empty DB, minus the Alembic stamp and external DB managers: ~1 s instead of ~4.5 s)."""
    t0 = time.perf_counter()
    from airflow import settings
    from airflow.models.base import Base
    from airflow.utils import db

    t1 = time.perf_counter()
    db.import_all_models()
    Base.metadata.create_all(settings.engine)
    db.add_default_pool_if_not_exists()
    db.synchronize_log_template()
    t2 = time.perf_counter()
    report = _import_dags()
    return {
        "import_s": round(t1 - t0, 2),
        "init_s": round(t2 - t1, 2),
        "parse_s": round(time.perf_counter() - t2, 2),
        "dags_report": report,
    }


def _asset_condition(timetable: Any) -> dict[str, Any] | None:
    """``{"type": "AssetAll", "uris": [...]}`` for an asset-triggered schedule, else ``None``.

    ``schedule=[a, b]`` becomes ``AssetAll(a, b)``; nested conditions are flattened (type
    of the outermost condition, every asset URI below it).
    """
    condition = getattr(timetable, "asset_condition", None)
    if condition is None:
        return None
    uris: list[str] = []

    def walk(node: Any) -> None:
        if hasattr(node, "objects"):
            for child in node.objects:
                walk(child)
        else:
            uris.append(getattr(node, "uri", None) or str(node))

    walk(condition)
    return {"type": type(condition).__name__, "uris": uris}


def _import_dags() -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    dags = {
        dag_id: {
            "fileloc": dag.fileloc,
            "timetable": type(dag.timetable).__name__,
            "schedule": getattr(dag.timetable, "expression", None),
            "timezone": str(getattr(dag.timetable, "timezone", "")),
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "max_active_tasks": dag.max_active_tasks,
            "assets": _asset_condition(dag.timetable),
            "tags": sorted(dag.tags),
            "params": {k: dict(p.schema, description=p.description) for k, p in dag.params.items()},
            "doc_md": dag.doc_md,
            "tasks": {
                t.task_id: {
                    "retries": t.retries,
                    "retry_exponential_backoff": t.retry_exponential_backoff,
                    "execution_timeout": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                    "outlets": [getattr(o, "uri", str(o)) for o in t.outlets],
                    "trigger_rule": value(t.trigger_rule),
                }
                for t in dag.tasks
            },
        }
        for dag_id, dag in bag.dags.items()
    }
    return {"import_errors": {str(k): v for k, v in bag.import_errors.items()}, "dags": dags}


def _param_defaults(dag: Any) -> list[tuple[Any, Any]]:
    """Every ``Param`` of ``dag`` and its tasks with its declared value, to reset between runs.

    The task runner merges ``dag_run.conf`` into a ``ParamsDict`` that *shares* the DAG's
    ``Param`` objects, and ``Param.resolve(value)`` stores the value on them: in a worker
    (one process per task) that is harmless, but in one ``dag.test()`` process a run would
    inherit the previous run's conf for every key its own conf leaves out.
    """
    holders = [dag.params, *(t.params for t in dag.tasks)]
    return [(param, copy.deepcopy(param.value)) for holder in holders for _, param in holder.items()]


@contextlib.contextmanager
def _partition(key: str | None) -> Any:
    """``dag.test()`` has no partition argument: give the run it creates ``key`` (what a trigger
    with a partition key, or a partitioned schedule, does), so its asset events carry the key."""
    if key is None:
        yield
        return
    from unittest import mock

    from airflow.serialization.definitions.dag import SerializedDAG

    original = SerializedDAG.create_dagrun

    def create_dagrun(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["partition_key"] = key
        kwargs["partition_date"] = self.timetable.resolve_partition_date(key)
        return original(self, *args, **kwargs)

    with mock.patch.object(SerializedDAG, "create_dagrun", create_dagrun):
        yield


def _dag_test(dag_id: str, runs: str, retries: str) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.sdk import timezone
    from airflow.utils.session import create_session

    bag = DagBag(dag_folder=os.environ["AIRFLOW__CORE__DAGS_FOLDER"])
    if bag.import_errors:
        raise SystemExit(f"import errors: {bag.import_errors}")
    dag = bag.dags[dag_id]
    for t in dag.tasks:
        t.retries = int(retries)
    defaults = _param_defaults(dag)
    results = []
    for spec in json.loads(runs):
        print(RUN_MARK, flush=True)
        for param, default in defaults:
            param.value = copy.deepcopy(default)
        saved = {k: os.environ.get(k) for k in spec.get("env") or {}}
        os.environ.update(spec.get("env") or {})
        t0 = time.perf_counter()
        # dag.test() replaces an earlier run with the same logical date (None included), with its
        # task instances and XComs: a run without one gets a unique one, so every run stays inspectable
        logical = timezone.parse(spec["logical_date"]) if spec.get("logical_date") else timezone.utcnow()
        try:
            with _partition(spec.get("partition_key")):
                dr = dag.test(logical_date=logical, run_conf=spec.get("conf") or None)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        seconds = round(time.perf_counter() - t0, 2)
        with create_session() as session:
            tis = {ti.task_id: value(ti.state) for ti in dr.get_task_instances(session=session)}
            events = [
                {"uri": uri, "extra": extra, "source_task_id": task_id, "partition_key": key}
                for uri, extra, task_id, key in session.query(
                    AssetModel.uri, AssetEvent.extra, AssetEvent.source_task_id, AssetEvent.partition_key
                )
                .join(AssetEvent, AssetEvent.asset_id == AssetModel.id)
                .filter(AssetEvent.source_dag_id == dag_id, AssetEvent.source_run_id == dr.run_id)
                .all()
            ]
        results.append(
            {
                "state": value(dr.state),
                "run_id": dr.run_id,
                "partition_key": dr.partition_key,
                "logical_date": dr.logical_date,
                "data_interval": [dr.data_interval_start, dr.data_interval_end],
                "tasks": tis,
                "asset_events": events,
                "dag_test_s": seconds,
            }
        )
    return {"runs": results}


HANDLERS = {"init-db": _init_db, "import-dags": _import_dags, "dag-test": _dag_test}


def _serve() -> None:
    """The persistent child: one JSON command per stdin line, each followed by ``DONE_MARK``;
    the environment is the command's during it and restored exactly after it."""
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        before = dict(os.environ)
        os.environ.update(command.get("env") or {})
        status = "ok"
        try:
            name, *args = command["args"]
            _emit(HANDLERS[name](*args))
        except KeyboardInterrupt:
            raise
        except BaseException:  # SystemExit too: report it, keep serving
            traceback.print_exc()
            status = "error"
        finally:
            os.environ.clear()
            os.environ.update(before)
            sys.stderr.flush()
            print(DONE_MARK + status, flush=True)


def main(argv: list[str]) -> None:
    command, *args = argv
    if os.environ.get(KEEP_FSYNC_ENV) != "1":
        os.fsync = lambda fd: None  # throw-away lake, as in the pytest process (conftest._no_fsync)
    if command == "serve":
        _serve()
    else:
        _emit(HANDLERS[command](*args))


if __name__ == "__main__":
    main(sys.argv[1:])
