"""The user's scenario of issue #12 on real services: the command line first, then Airflow's
partitioned chain, driven only through Airflow's REST API.

One test starts what a deployment runs, on 127.0.0.1 and without Docker:

* PostgreSQL (the session's :class:`~propensity.services.PostgresServer`) with one database each
  for Airflow's metadata, MLflow's tracking store and the shop's OLTP system;
* an S3 endpoint (the session's moto :class:`~propensity.services.S3Server`) with buckets for the
  lake, the clickstream landing area, the CSV drops, the audience exports and MLflow's artifacts;
* the local stack of :mod:`propensity.stack` (``make up``): Airflow api-server, scheduler
  (LocalExecutor), dag-processor and triggerer on the PostgreSQL metadata DB with the
  repository's ``dags/`` and ``plugins/``, and ``mlflow server`` on PostgreSQL with artifacts
  on S3; every ``PROPENSITY_*`` variable of the Airflow processes points at those services.

The scenario, as the user ran it:

1. a small clean shop is simulated into the sources (shop DB in PostgreSQL, clickstream and FX
   drops in S3): ``DAYS`` days from ``START``, the last one ``D``;
2. the command-line front door, in this process (:mod:`propensity.pipeline`, what ``propensity
   collect|validate|train`` call): collect and validate every day *before* ``D``, train so that
   champions exist. Training builds its snapshots in memory, so the lake has no features,
   scores or audiences yet;
3. every DAG is unpaused through the API (what a user does in the UI). ``shop_collect``'s
   partition timetable then catches up on the real calendar's yesterday, a day the simulated
   shop never saw: its ``shop_validate`` run must fail (an empty day) and stop there;
4. ``shop_collect`` is triggered for the partition ``D`` and the scheduler runs the chain on
   its asset events, one run per partition key: ``shop_validate`` (``D``) -> ``build_features``
   (``D``, publishing the snapshot ``T = D + 1``) -> ``train_models`` (``T``; nothing to train:
   champions exist and ``T`` is a Friday) and ``score_and_build_audiences`` (``T``) ->
   ``monitor_drift`` (``T``) -> on a drift breach, ``train_models`` again for ``T`` (the breached
   tasks).

It then asserts that snapshots, scores, audiences, exports and CRM rows exist for ``T`` and for
no other date (in particular none for the catch-up day and none past the freshness limit), that
no downstream run exists for any other key, that scoring used the champions the command line
trained (the ``mlflow`` XCom and the MLflow extra links of the mapped ``score`` tasks, fetched
through the REST API, must open that run on the running MLflow server), and that Airflow's
health endpoint reports the triggerer healthy.

A task of the chain failing its first try fails the test at once (its retries back off for
minutes), with the task's log from the Airflow logs folder in the message. The wall time is
printed, recorded as the ``wall_seconds`` property (JUnit XML) and written with the stage and
task timings to ``<PROPENSITY_HOME>/integration_timings.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from propensity.config import DirtConfig, Settings
from propensity.contracts import TABLES
from propensity.services import LOOPBACK, PostgresServer, S3Server, free_port
from propensity.stack import AIRFLOW_HEALTH_PARTS, REPO_ROOT, StackConfig, http_json, start, stop

pytestmark = [pytest.mark.slow, pytest.mark.services]

START = date(2025, 1, 1)
DAYS = 100
CUSTOMERS = 2500
SEED = 12
LAST_DAY = START + timedelta(days=DAYS - 1)  # D = 2025-04-10: the day the DAG run collects
SNAPSHOT = LAST_DAY + timedelta(days=1)  # T = 2025-04-11 (a Friday): the snapshot that sees D
DAY_KEY, SNAPSHOT_KEY = LAST_DAY.isoformat(), SNAPSHOT.isoformat()
MAX_STALENESS_DAYS = 2  # scoring.max_staleness_days (default): no export may lie further past the data
TASKS = ["conversion", "repurchase", "churn", "clv"]
DAG_IDS = {
    "shop_collect",
    "shop_validate",
    "build_features",
    "train_models",
    "score_and_build_audiences",
    "monitor_drift",
}
DAY_KEYED = ("shop_collect", "shop_validate", "build_features")  # their partition is the day D
HEAVY_POOL = "propensity_heavy"  # train and score tasks run in it; Airflow never schedules into a missing pool
PREFIX = "integration"
BUCKETS = {name: f"{PREFIX}-{name}" for name in ("lake", "landing", "drops", "exports", "mlflow")}
LAKE_PREFIX = "propensity"
EXPORT_PREFIX = "audiences"
SALT = "integration-test-salt"
FAILED_TI_STATES = {"failed", "upstream_failed", "up_for_retry", "removed"}
FINISHED_RUN_STATES = {"success", "failed"}

# Small models on a short history (every day costs ~1 s of collection and validation on the S3
# server): 3-week horizons for repurchase and churn and a customer holdout leave all three tasks
# enough labelled snapshots in 100 days.
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
    "PROPENSITY_TASKS__CLV__HORIZON_DAYS": "21",
}

# per-stage bounds (seconds): about three times what each stage takes on 2 cores shared with other work
STAGE_TIMEOUT = {
    "dags": 120,
    "collect": 180,
    "validate": 360,
    "features": 360,
    "score": 600,
    "train": 480,
    "monitor": 240,
    "catch_up": 300,
}


# --------------------------------------------------------------------------- REST client


class AirflowApi:
    """A tiny client for Airflow's public REST API (``/api/v2``) with a JWT from ``/auth/token``."""

    def __init__(self, base_url: str, username: str, password: str) -> None:
        self.base_url = base_url.rstrip("/")
        status, body = self.request("POST", "/auth/token", {"username": username, "password": password}, auth=False)
        assert status == 201, f"login failed: {status} {body}"
        self.token = body["access_token"]

    def request(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None, auth: bool = True
    ) -> tuple[int, Any]:
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode(query, doseq=True)
        answer = http_json(url, method, body, self.token if auth else None, timeout=60)
        assert answer is not None, f"{method} {url}: no answer"
        return answer

    def call(self, method: str, path: str, body: Any = None, expect: int = 200, **query: Any) -> Any:
        status, answer = self.request(method, f"/api/v2{path}", body, query or None)
        assert status == expect, f"{method} /api/v2{path} -> {status} (expected {expect}): {answer}"
        return answer

    # -- conveniences

    def dags(self) -> dict[str, dict[str, Any]]:
        return {d["dag_id"]: d for d in self.call("GET", "/dags", limit=100)["dags"]}

    def set_paused(self, dag_id: str, paused: bool) -> None:
        answer = self.call("PATCH", f"/dags/{dag_id}", {"is_paused": paused})
        assert answer["is_paused"] is paused, answer

    def trigger(self, dag_id: str, partition_key: str, conf: dict[str, Any] | None = None) -> dict[str, Any]:
        """A manual run of the partition ``partition_key`` (``logical_date`` is a required field; a
        partitioned run has none)."""
        body = {"logical_date": None, "partition_key": partition_key, "conf": conf or {}}
        return self.call("POST", f"/dags/{dag_id}/dagRuns", body)

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/dags/{dag_id}/dagRuns", limit=100, order_by="id")["dag_runs"])

    def runs_by_key(self, dag_id: str) -> dict[str | None, list[dict[str, Any]]]:
        """Every run of ``dag_id`` grouped by its ``partition_key`` (a field of Airflow's DAGRunResponse)."""
        found: dict[str | None, list[dict[str, Any]]] = {}
        for run in self.runs(dag_id):
            assert "partition_key" in run, f"the REST API's DAG runs have no partition_key: {sorted(run)}"
            found.setdefault(run["partition_key"], []).append(run)
        return found

    def health(self) -> dict[str, Any]:
        """``/api/v2/monitor/health``: ``{part: {"status": "healthy"|"unhealthy"|None, ...}}``."""
        return dict(self.call("GET", "/monitor/health"))

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{_q(run_id)}")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances", limit=100)["task_instances"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str, map_index: int = -1) -> Any:
        entry = self.call(
            "GET", f"/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances/{task_id}/xcomEntries/{key}", map_index=map_index
        )
        value = entry["value"]
        for _ in range(2):  # stored as JSON; older paths store a JSON string
            if not isinstance(value, str):
                break
            with contextlib.suppress(ValueError):
                value = json.loads(value)
                continue
            break
        return value

    def extra_links(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> dict[str, str | None]:
        answer = self.call(
            "GET", f"/dags/{dag_id}/dagRuns/{_q(run_id)}/taskInstances/{task_id}/links", map_index=map_index
        )
        return dict(answer["extra_links"])


def _q(value: str) -> str:
    return urllib.parse.quote(value, safe="")


# --------------------------------------------------------------------------- the environment


@dataclass
class Integration:
    """The running services and how to reach them."""

    home: Path
    env: dict[str, str]  # every PROPENSITY_* / AWS_* / MLFLOW_* variable the Airflow processes get
    cfg: StackConfig
    state: dict[str, Any]
    s3: Any  # boto3 S3 client on the moto server
    shop_db: str
    began: float
    timings: dict[str, float] = field(default_factory=dict)
    task_seconds: dict[str, float] = field(default_factory=dict)  # duration of every task instance that ran
    api: AirflowApi | None = None

    @property
    def mlflow_url(self) -> str:
        return self.cfg.mlflow_url

    def settings(self) -> Settings:
        """:class:`Settings` exactly as the Airflow tasks build them (from the same variables)."""
        with pytest.MonkeyPatch.context() as mp:
            for key in [k for k in os.environ if k.startswith("PROPENSITY_")]:
                mp.delenv(key)
            for key, value in self.env.items():
                mp.setenv(key, value)
            return Settings()

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        found: list[str] = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKETS[bucket], Prefix=prefix):
            found += [o["Key"] for o in page.get("Contents", [])]
        return found

    def get_json(self, bucket: str, key: str) -> Any:
        return json.loads(self.s3.get_object(Bucket=BUCKETS[bucket], Key=key)["Body"].read())

    # -- diagnostics

    def task_logs(self, dag_id: str, run_id: str, only: set[tuple[str, int]] | None = None, lines: int = 60) -> str:
        """The tails of the task logs of a run under the Airflow logs folder (``only``: (task_id, map_index))."""
        root = self.cfg.airflow_home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}"
        parts = []
        for path in sorted(root.glob("task_id=*/**/*.log")):
            rel = path.relative_to(root)
            task_id = rel.parts[0].removeprefix("task_id=")
            index = next((int(p.removeprefix("map_index=")) for p in rel.parts if p.startswith("map_index=")), -1)
            if only is not None and (task_id, index) not in only:
                continue
            text = "\n".join(_render_log_line(ln) for ln in path.read_text(errors="replace").splitlines())
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"----- {rel} -----\n{tail}")
        return "\n".join(parts) or f"(no task logs under {root})"

    def daemon_logs(self, lines: int = 25) -> str:
        parts = []
        for record in self.state["processes"]:
            path = Path(record["log"])
            text = path.read_text(errors="replace").splitlines() if path.exists() else ["(no log)"]
            parts.append(f"----- {record['name']} ({path}) -----\n" + "\n".join(text[-lines:]))
        return "\n".join(parts)


def _render_log_line(line: str) -> str:
    """Airflow 3 task logs are JSON lines: ``timestamp level logger: event`` (+ the error detail)."""
    try:
        doc = json.loads(line)
    except ValueError:
        return line
    if not isinstance(doc, dict):
        return line
    text = f"{doc.get('timestamp', '')} {doc.get('level', '')} {doc.get('logger', '')}: {doc.get('event', '')}"
    if doc.get("error_detail"):
        text += "\n" + json.dumps(doc["error_detail"], default=str)[:4000]
    return text


def _clean_environ() -> dict[str, str]:
    """This process's environment without Airflow or propensity settings (the stack's must win)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "_AIRFLOW", "PROPENSITY_"))}


@pytest.fixture(scope="module")
def integration(
    postgres: PostgresServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Integration]:
    """PostgreSQL + S3 (session servers, own databases and buckets) and the Airflow + MLflow stack on
    them; stops every process of the stack afterwards, also when the test failed."""
    began = time.monotonic()
    home = tmp_path_factory.mktemp("integration")
    timings: dict[str, float] = {}
    urls = {name: postgres.create_database(f"{PREFIX}_{name}") for name in ("airflow", "mlflow", "shop")}
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name=s3_server.region)
    for bucket in BUCKETS.values():
        s3.create_bucket(Bucket=bucket)
    airflow_port, mlflow_port = free_port(), free_port()
    cfg = StackConfig(
        airflow_home=home / "airflow",
        propensity_home=home,
        dags_folder=REPO_ROOT / "dags",
        plugins_folder=REPO_ROOT / "plugins",
        mlflow_backend_uri=urls["mlflow"],
        mlflow_artifacts=f"s3://{BUCKETS['mlflow']}/artifacts",
        airflow_port=airflow_port,
        mlflow_port=mlflow_port,
        airflow_db=urls["airflow"],
    )
    env = {
        **s3_server.env(),  # AWS_* (moto's dummy credentials), PROPENSITY_S3_ENDPOINT_URL, MLFLOW_S3_ENDPOINT_URL
        "PROPENSITY_HOME": str(home),
        "PROPENSITY_LAKE": f"s3://{BUCKETS['lake']}/{LAKE_PREFIX}",
        "PROPENSITY_LANDING": f"s3://{BUCKETS['landing']}/clickstream",
        "PROPENSITY_DROPS": f"s3://{BUCKETS['drops']}/fx",
        "PROPENSITY_AUDIENCES__EXPORT": f"s3://{BUCKETS['exports']}/{EXPORT_PREFIX}",
        "PROPENSITY_AUDIENCES__SALT": SALT,
        "PROPENSITY_SHOP_DB": urls["shop"],
        "PROPENSITY_MLFLOW_TRACKING_URI": f"http://{LOOPBACK}:{mlflow_port}",
        **SMALL_SETTINGS,
    }
    t0 = time.monotonic()
    state = start(cfg, timeout=300, base_env={**_clean_environ(), **env})
    timings["stack_up"] = time.monotonic() - t0
    try:
        yield Integration(home, env, cfg, state, s3, urls["shop"], began, timings)
    finally:
        survivors = stop(state, timeout=30)
        assert not survivors, f"stack processes survived SIGKILL: {survivors}"


# --------------------------------------------------------------------------- waiting


def wait_for(what: str, check: Callable[[], Any], timeout: float, diagnose: Callable[[], str], every: float = 1.0):
    """Poll ``check`` until it returns something truthy; fail with ``diagnose()`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s\n{diagnose()}")
        time.sleep(every)


def runs_summary(api: AirflowApi) -> str:
    """One line per DAG: its runs as ``key=state (run_type)``, for failure messages."""
    lines = []
    for dag_id in sorted(DAG_IDS):
        runs = api.runs(dag_id)
        lines.append(f"{dag_id}: " + ", ".join(f"{r['partition_key']}={r['state']} ({r['run_type']})" for r in runs))
    return "\n".join(lines)


def wait_run(it: Integration, dag_id: str, run_id: str, timeout: float) -> dict[str, Any]:
    """Wait until the run succeeds; fail at once (with the task logs) when it fails or a task fails a try."""
    api = it.api
    assert api is not None

    def states() -> str:
        tis = api.task_instances(dag_id, run_id)
        return ", ".join(f"{t['task_id']}[{t['map_index']}]={t['state']}" for t in tis)

    def check() -> dict[str, Any] | None:
        run = api.run(dag_id, run_id)
        tis = api.task_instances(dag_id, run_id)
        bad = {(t["task_id"], t["map_index"]) for t in tis if t["state"] in FAILED_TI_STATES}
        if run["state"] == "failed" or bad:
            pytest.fail(
                f"{dag_id} run {run_id} (partition {run.get('partition_key')}) is {run['state']}; tasks: {states()}\n"
                f"{it.task_logs(dag_id, run_id, bad or None)}"
            )
        if run["state"] != "success":
            return None
        for ti in tis:
            name = (
                ti["task_id"]
                if ti["map_index"] < 0
                else f"{ti['task_id']}[{ti['rendered_map_index'] or ti['map_index']}]"
            )
            it.task_seconds[f"{dag_id}.{name}"] = round(ti["duration"] or 0.0, 1)
        return run

    return wait_for(
        f"{dag_id} run {run_id} to succeed",
        check,
        timeout,
        lambda: f"tasks: {states()}\n{it.task_logs(dag_id, run_id)}\n{runs_summary(api)}\n{it.daemon_logs()}",
    )


def wait_created(it: Integration, dag_id: str, key: str, timeout: float) -> dict[str, Any]:
    """Wait until the scheduler has created the run of ``dag_id`` for the partition ``key`` (exactly one)."""
    api = it.api
    assert api is not None

    def created() -> dict[str, Any] | None:
        runs = api.runs_by_key(dag_id).get(key, [])
        assert len(runs) <= 1, f"{dag_id}: {len(runs)} runs for partition {key}: {runs}"
        return runs[0] if runs else None

    return wait_for(
        f"a run of {dag_id} for partition {key}",
        created,
        timeout,
        lambda: f"{runs_summary(api)}\n{it.daemon_logs()}",
    )


def wait_asset_run(it: Integration, dag_id: str, key: str, timeout: float) -> dict[str, Any]:
    """Wait for the asset-triggered run of ``dag_id`` for the partition ``key`` (exactly one), then
    for its success (failing at once, with the logs, when one of its tasks fails a try)."""
    t0 = time.monotonic()
    run = wait_created(it, dag_id, key, timeout)
    assert run["run_type"] == "asset_triggered", run
    return wait_run(it, dag_id, run["dag_run_id"], timeout - (time.monotonic() - t0))


def wait_finished(it: Integration, dag_id: str, key: str, timeout: float) -> dict[str, Any]:
    """Wait until the run of ``dag_id`` for ``key`` has finished, whatever its outcome (for the
    runs expected to fail: the caller asserts on the state)."""
    api = it.api
    assert api is not None
    t0 = time.monotonic()
    run_id = wait_created(it, dag_id, key, timeout)["dag_run_id"]
    return wait_for(
        f"{dag_id} run {run_id} to finish",
        lambda: (run := api.run(dag_id, run_id))["state"] in FINISHED_RUN_STATES and run,
        timeout - (time.monotonic() - t0),
        lambda: f"{runs_summary(api)}\n{it.task_logs(dag_id, run_id)}\n{it.daemon_logs()}",
    )


def yesterdays(since: datetime) -> set[str]:
    """The partition keys a daily partition timetable may catch up on between ``since`` and now:
    yesterday in UTC (and the next day too, should the test straddle midnight)."""
    first, last = since.date() - timedelta(days=1), datetime.now(UTC).date() - timedelta(days=1)
    return {(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)}


# --------------------------------------------------------------------------- the test


def _stage(it: Integration, name: str, t0: float) -> float:
    it.timings[name] = round(time.monotonic() - t0, 1)
    return time.monotonic()


@pytest.mark.timeout(2400)
def test_command_line_then_partitioned_chain_through_the_rest_api(
    integration: Integration, record_property: pytest.RecordProperty, capsys: pytest.CaptureFixture[str]
) -> None:
    it = integration
    try:
        _drive_and_check(it)
    finally:
        wall = round(time.monotonic() - it.began, 1)
        it.timings = {k: round(v, 1) for k, v in it.timings.items()}
        record_property("wall_seconds", wall)
        record_property("stage_seconds", json.dumps(it.timings))
        (it.home / "integration_timings.json").write_text(
            json.dumps({"wall_seconds": wall, "stages": it.timings, "tasks": it.task_seconds}, indent=2)
        )
        with capsys.disabled():
            print(f"\nintegration chain: wall {wall:.0f}s; stages {it.timings}")
            print(f"task durations: {it.task_seconds}")


@dataclass
class FrontDoor:
    """What the command line left: the champion version each task's training registered."""

    champions: dict[str, Any]  # task -> MLflow ModelVersion with the alias champion
    versions: dict[str, int]  # task -> registered versions of propensity-<task>


@dataclass
class Drift:
    """What ``monitor_drift`` decided for ``T``, and the ``train_models`` run a breach started."""

    breached: list[str]
    retrain_run_id: str | None


def _drive_and_check(it: Integration) -> None:
    """The scenario of the module docstring, step by step, then every check on what it left."""
    settings = it.settings()
    assert settings.tracking_uri == it.mlflow_url and settings.lake_uri.startswith("s3://")
    assert set(settings.tasks) == set(TASKS) and settings.tasks["churn"].horizon_days == 21
    assert settings.scoring.max_staleness_days == MAX_STALENESS_DAYS
    assert SNAPSHOT.weekday() != settings.models.retrain_weekday, "T must not be a retraining day"

    # 1. the shop's sources: OLTP tables in PostgreSQL, clickstream and FX drops in S3
    from propensity.simulate import simulate

    t = time.monotonic()
    simulate(settings, customers=CUSTOMERS, days=DAYS, start=START, seed=SEED, dirt_cfg=DirtConfig(rate=0))
    t = _stage(it, "simulate", t)

    # 2. the command line: history up to the day before D, then champions
    front = _front_door(it, settings, t)
    t = time.monotonic()

    # 3. the DAGs, parsed and healthy; unpaused all at once (the scheduler catches up on yesterday)
    api = it.api = AirflowApi(it.cfg.airflow_url, it.cfg.username, it.cfg.password)
    dags = wait_for(
        "the DAGs to be parsed",
        lambda: (found := api.dags()).keys() >= DAG_IDS and found,
        STAGE_TIMEOUT["dags"],
        lambda: f"{api.call('GET', '/importErrors')}\n{it.daemon_logs()}",
    )
    assert api.call("GET", "/importErrors")["total_entries"] == 0, api.call("GET", "/importErrors")
    assert all(dags[d]["is_paused"] for d in DAG_IDS), "DAGs must start paused"
    # the stack created the pool the heavy tasks queue in (without it they are never scheduled)
    assert api.call("GET", f"/pools/{HEAVY_POOL}")["slots"] >= 1
    _check_health(api)
    t = _stage(it, "dags_ready", t)

    unpaused_at = datetime.now(UTC)
    for dag_id in sorted(DAG_IDS):
        api.set_paused(dag_id, False)

    # 4. the day D through the API; the scheduler runs the chain on the partitioned asset events
    collect_run = api.trigger("shop_collect", DAY_KEY)
    assert collect_run["partition_key"] == DAY_KEY and collect_run["run_type"] == "manual", collect_run
    wait_run(it, "shop_collect", collect_run["dag_run_id"], STAGE_TIMEOUT["collect"])
    t = _stage(it, "collect", t)
    validate_run = wait_asset_run(it, "shop_validate", DAY_KEY, STAGE_TIMEOUT["validate"])
    t = _stage(it, "validate", t)
    wait_asset_run(it, "build_features", DAY_KEY, STAGE_TIMEOUT["features"])
    t = _stage(it, "features", t)
    train_run = wait_asset_run(it, "train_models", SNAPSHOT_KEY, STAGE_TIMEOUT["train"])
    t = _stage(it, "train", t)
    score_run = wait_asset_run(it, "score_and_build_audiences", SNAPSHOT_KEY, STAGE_TIMEOUT["score"])
    t = _stage(it, "score", t)
    monitor_run = wait_asset_run(it, "monitor_drift", SNAPSHOT_KEY, STAGE_TIMEOUT["monitor"])
    t = _stage(it, "monitor", t)
    drift = _check_training_and_drift(it, train_run["dag_run_id"], monitor_run["dag_run_id"])
    t = _stage(it, "retrain", t)

    # the calendar's catch-up run: collected an empty day, which validation refuses
    catch_up = _check_catch_up(it, unpaused_at)
    t = _stage(it, "catch_up", t)

    _check_runs(api, catch_up, drift)
    _check_lake(it, catch_up)
    _check_registry_and_links(it, front, drift, score_run["dag_run_id"])
    _check_data_docs(api, validate_run["dag_run_id"])
    _check_exports(it, settings, catch_up)
    _check_health(api)
    _stage(it, "checks", t)


def _front_door(it: Integration, settings: Settings, t: float) -> FrontDoor:
    """``propensity collect``/``validate``/``train`` as the command line runs them (in process):
    every day before ``D``, then a champion per task; nothing of the snapshot chain is published."""
    from mlflow import MlflowClient

    from propensity import pipeline

    history = pipeline.day_range(START, LAST_DAY - timedelta(days=1))
    collected = pipeline.collect(settings, history)
    assert collected.days == [d.isoformat() for d in history] and set(collected.tables) == set(TABLES)
    assert collected.rows["orders"] > 0 and collected.rows["events"] > 0, collected.rows
    t = _stage(it, "cli_collect", t)
    validated = pipeline.validate(settings, history)
    assert validated.passed, validated.critical[:10]
    assert all(len(days) == len(history) for days in validated.published.values()), validated.published
    t = _stage(it, "cli_validate", t)
    trained = pipeline.train(settings)
    assert [r.task for r in trained] == TASKS, [r.task for r in trained]
    assert all(r.promoted for r in trained), {r.task: r.report.get("verdict") for r in trained}
    _stage(it, "cli_train", t)

    lake = it.keys("lake", f"{LAKE_PREFIX}/")
    published = sorted({k.split("/")[1] for k in lake})
    assert {"raw", "clean"} <= set(published), published
    derived = ("features", "profiles", "labels", "scores", "audiences", "drift")
    assert not [z for z in published if z in derived], f"training published derived zones: {published}"
    assert it.keys("exports") == [], "training exported audiences"

    # registry_uri too: otherwise a registry URI another test set process-wide (mlflow.set_registry_uri) wins
    client = MlflowClient(tracking_uri=it.mlflow_url, registry_uri=it.mlflow_url)
    champions = {task: client.get_model_version_by_alias(f"propensity-{task}", "champion") for task in TASKS}
    for record in trained:
        assert record.mlflow["model_version"] == champions[record.task].version, (record.mlflow, champions)
        assert record.mlflow["run_id"] == champions[record.task].run_id, (record.mlflow, champions)
    versions = {task: len(client.search_model_versions(f"name='propensity-{task}'")) for task in TASKS}
    return FrontDoor(champions, versions)


# --------------------------------------------------------------------------- assertions


def _check_health(api: AirflowApi) -> None:
    """Every part the UI's health badge shows is healthy; the triggerer is heartbeating (``make up`` runs it)."""
    health = api.health()
    assert all((health.get(part) or {}).get("status") == "healthy" for part in AIRFLOW_HEALTH_PARTS), health
    # no triggerer job at all reads as status None (not "unhealthy"), which the UI still shows red
    assert health["triggerer"]["status"] == "healthy" and health["triggerer"]["latest_triggerer_heartbeat"], health


def _check_training_and_drift(it: Integration, train_run_id: str, monitor_run_id: str) -> Drift:
    """``train_models`` for ``T`` selected nothing (champions exist, ``T`` is no retraining day), and
    ``monitor_drift`` decided. A breach emits ``drift`` under ``T``, which starts a second
    ``train_models`` run for ``T`` retraining exactly the breached tasks: it is awaited like the
    chain's runs (on this young shop the 30/90-day windows fill up between the champions' test
    snapshot and ``T``, so repurchase and churn do breach)."""
    api = it.api
    assert api is not None
    selected = api.xcom("train_models", train_run_id, "select_tasks", "return_value")
    assert selected == [], f"train_models trained {selected} on snapshot {SNAPSHOT_KEY}"
    trains = [ti for ti in api.task_instances("train_models", train_run_id) if ti["task_id"] == "train"]
    assert trains and all(ti["state"] == "skipped" for ti in trains), trains

    report = api.xcom("monitor_drift", monitor_run_id, "compute_drift", "return_value")
    assert report["snapshot"] == SNAPSHOT_KEY and set(report["report"]["tasks"]) == set(TASKS), report["lines"]
    breached = list(report["breached_tasks"])
    assert bool(breached) is report["breach"] and set(breached) <= set(TASKS), report["lines"]
    [signal] = [ti for ti in api.task_instances("monitor_drift", monitor_run_id) if ti["task_id"] == "signal_drift"]
    assert signal["state"] == ("success" if breached else "skipped"), (signal, report["lines"])
    if not breached:
        return Drift([], None)

    def retrain_run() -> dict[str, Any] | None:
        runs = api.runs_by_key("train_models").get(SNAPSHOT_KEY, [])
        assert len(runs) <= 2, runs
        return runs[-1] if len(runs) == 2 else None

    run = wait_for(
        f"the train_models run for {SNAPSHOT_KEY} that the drift of {breached} triggers",
        retrain_run,
        STAGE_TIMEOUT["dags"],
        lambda: runs_summary(api),
    )
    assert run["run_type"] == "asset_triggered", run
    wait_run(it, "train_models", run["dag_run_id"], STAGE_TIMEOUT["train"])
    selected = api.xcom("train_models", run["dag_run_id"], "select_tasks", "return_value")
    assert selected == [t for t in TASKS if t in breached], (selected, breached)
    return Drift(breached, run["dag_run_id"])


def _check_catch_up(it: Integration, unpaused_at: datetime) -> set[str]:
    """The run ``shop_collect``'s timetable created on unpausing (yesterday's partition) collected an
    empty day; its ``shop_validate`` run failed at once on it (a verdict, no retry) and emitted
    nothing, so nothing downstream ran for it. Returns the catch-up keys."""
    api = it.api
    assert api is not None
    allowed = yesterdays(unpaused_at)
    keys = set(api.runs_by_key("shop_collect")) - {DAY_KEY}
    assert keys and keys <= allowed, f"shop_collect caught up on {sorted(keys)}, expected one of {sorted(allowed)}"
    for key in sorted(keys):
        [collect] = api.runs_by_key("shop_collect")[key]
        assert collect["run_type"] == "scheduled", collect
        collect = wait_finished(it, "shop_collect", key, STAGE_TIMEOUT["catch_up"])
        assert collect["state"] == "success", (collect, it.task_logs("shop_collect", collect["dag_run_id"]))
        validate = wait_finished(it, "shop_validate", key, STAGE_TIMEOUT["catch_up"])
        run_id = validate["dag_run_id"]
        assert validate["state"] == "failed" and validate["run_type"] == "asset_triggered", validate
        [ti] = [t for t in api.task_instances("shop_validate", run_id) if t["task_id"] == "validate"]
        log = it.task_logs("shop_validate", run_id, {("validate", -1)}, lines=200)
        assert ti["state"] == "failed" and ti["try_number"] == 1, (ti, log)  # final: not retried
        assert "ValidationFailed" in log and f"dt={key}" in log, log
    return keys


def _check_runs(api: AirflowApi, catch_up: set[str], drift: Drift) -> None:
    """Exactly the runs of the scenario, each for its own partition key, and nothing behind our back."""
    expected = {
        "shop_collect": {DAY_KEY: 1, **dict.fromkeys(catch_up, 1)},
        "shop_validate": {DAY_KEY: 1, **dict.fromkeys(catch_up, 1)},
        "build_features": {DAY_KEY: 1},
        "score_and_build_audiences": {SNAPSHOT_KEY: 1},
        "train_models": {SNAPSHOT_KEY: 2 if drift.breached else 1},
        "monitor_drift": {SNAPSHOT_KEY: 1},
    }
    for dag_id, counts in expected.items():
        runs = api.runs_by_key(dag_id)
        got = {key: len(found) for key, found in runs.items()}
        assert got == counts, f"{dag_id}: runs per partition {got}, expected {counts}\n{runs_summary(api)}"
        for key, found in runs.items():
            want = "success" if key in (DAY_KEY, SNAPSHOT_KEY) or dag_id == "shop_collect" else "failed"
            assert all(r["state"] == want for r in found), (dag_id, key, found)


def _partition_dates(keys: list[str], prefix: str, field_name: str) -> dict[str, set[str]]:
    """``{group: {value, ...}}`` of the ``<field_name>=<value>`` path segments under ``prefix``; the
    group is the path between ``prefix`` and that segment (a table, ``task=churn``, or ``""``).
    Every key counts, committed or not: a half-written partition is a partition too."""
    found: dict[str, set[str]] = {}
    for key in keys:
        if not key.startswith(prefix):
            continue
        parts = key[len(prefix) :].split("/")
        index = next((i for i, p in enumerate(parts) if p.startswith(f"{field_name}=")), None)
        if index is not None:
            found.setdefault("/".join(parts[:index]), set()).add(parts[index].removeprefix(f"{field_name}="))
    return found


def _committed(keys: list[str]) -> list[str]:
    return [k for k in keys if k.endswith("/_manifest.json")]


def _check_lake(it: Integration, catch_up: set[str]) -> None:
    every_day = {(START + timedelta(days=i)).isoformat() for i in range(DAYS)}
    lake = it.keys("lake", f"{LAKE_PREFIX}/")
    for zone in ("raw", "clean"):
        prefix = f"{LAKE_PREFIX}/{zone}/"
        committed = _partition_dates(_committed(lake), prefix, "dt")
        assert set(committed) == set(TABLES), f"{zone}: tables {sorted(committed)}"
        for table, got in committed.items():
            assert got >= every_day, f"{zone}/{table}: missing {sorted(every_day - got)[:5]}"
        stray = {t: sorted(d - every_day - catch_up) for t, d in _partition_dates(lake, prefix, "dt").items()}
        assert not any(stray.values()), f"{zone}: partitions of days nobody collected: {stray}"
    raw = _partition_dates(_committed(lake), f"{LAKE_PREFIX}/raw/", "dt")
    assert all(catch_up <= days for days in raw.values()), "the catch-up day was not collected"

    snapshots = {
        "features": _partition_dates(lake, f"{LAKE_PREFIX}/features/", "snapshot"),
        "profiles": _partition_dates(lake, f"{LAKE_PREFIX}/profiles/", "snapshot"),
        "labels": _partition_dates(lake, f"{LAKE_PREFIX}/labels/", "snapshot"),
    }
    dated = {
        "scores": _partition_dates(lake, f"{LAKE_PREFIX}/scores/", "dt"),
        "audiences": _partition_dates(lake, f"{LAKE_PREFIX}/audiences/", "dt"),
        "drift": _partition_dates(lake, f"{LAKE_PREFIX}/drift/", "dt"),
    }
    per_task = {f"task={task}": {SNAPSHOT_KEY} for task in TASKS}
    assert snapshots["features"] == snapshots["profiles"] == {"": {SNAPSHOT_KEY}}, snapshots
    assert snapshots["labels"] == per_task, snapshots["labels"]
    assert dated["scores"] == per_task, dated["scores"]  # no scores/_shards/ left behind either
    assert dated["drift"] == {"": {SNAPSHOT_KEY}}, dated["drift"]
    assert dated["audiences"] == {"": {SNAPSHOT_KEY}}, dated["audiences"]  # one set per date
    manifests = set(_committed(lake))
    expected = [
        f"features/snapshot={SNAPSHOT_KEY}",
        f"profiles/snapshot={SNAPSHOT_KEY}",
        *(f"labels/task={task}/snapshot={SNAPSHOT_KEY}" for task in TASKS),
        *(f"scores/task={task}/dt={SNAPSHOT_KEY}" for task in TASKS),
        f"audiences/dt={SNAPSHOT_KEY}",
    ]
    missing = [p for p in expected if f"{LAKE_PREFIX}/{p}/_manifest.json" not in manifests]
    assert not missing, f"lake partitions not committed: {missing}"
    features = it.get_json("lake", f"{LAKE_PREFIX}/features/snapshot={SNAPSHOT_KEY}/_manifest.json")
    assert features.get("observed_until") == DAY_KEY, features  # built by the run for D, on every day up to D
    for task in TASKS:
        scores = it.get_json("lake", f"{LAKE_PREFIX}/scores/task={task}/dt={SNAPSHOT_KEY}/_manifest.json")
        labels = it.get_json("lake", f"{LAKE_PREFIX}/labels/task={task}/snapshot={SNAPSHOT_KEY}/_manifest.json")
        assert scores["row_count"] == labels["row_count"] > 0, (task, scores, labels)


def _check_mlflow_links(it: Integration, dag_id: str, run_id: str, ti: dict[str, Any]) -> dict[str, Any]:
    """The ``mlflow`` XCom of a task instance and its "MLflow run"/"MLflow model version" extra links
    (resolved by the plugin in the API server): they name that run and version on the running MLflow
    server, which opens the link and knows the run. Returns the XCom."""
    api = it.api
    assert api is not None
    task_id, index = ti["task_id"], ti["map_index"]
    payload = api.xcom(dag_id, run_id, task_id, "mlflow", map_index=index)
    links = api.extra_links(dag_id, run_id, task_id, map_index=index)
    what = f"{dag_id}.{task_id}[{ti['rendered_map_index']}]"
    url = links.get("MLflow run")
    expected = f"{it.mlflow_url}/#/experiments/{payload['experiment_id']}/runs/{payload['run_id']}"
    assert url == expected, f"{what}: MLflow run link {url!r}, expected {expected!r} (links: {links})"
    version = f"{it.mlflow_url}/#/models/{payload['model_name']}/versions/{payload['model_version']}"
    assert links.get("MLflow model version") == version, (what, links)
    assert not links.get("Data Docs"), (what, links)  # no data_docs XCom: the link is disabled

    # the link opens on the running server (the #fragment stays in the browser) and the run exists there
    assert (http_json(url, timeout=30) or (None,))[0] == 200, url
    api_url = f"{it.mlflow_url}/api/2.0/mlflow/runs/get?run_id={payload['run_id']}"
    status, answer = http_json(api_url, timeout=30) or (None, None)
    assert status == 200, (what, answer)
    assert answer["run"]["info"]["experiment_id"] == payload["experiment_id"], (what, answer["run"]["info"])
    return dict(payload)


def _check_registry_and_links(it: Integration, front: FrontDoor, drift: Drift, score_run_id: str) -> None:
    """Scoring used the champions the command line trained (the ``mlflow`` XCom and MLflow links of
    every mapped ``score`` instance). The chain registered no version except for drift: the
    retraining run's ``train`` instances name the versions they registered, and the champion is
    theirs exactly when they say it was promoted."""
    from mlflow import MlflowClient

    api = it.api
    assert api is not None
    instances = [t for t in api.task_instances("score_and_build_audiences", score_run_id) if t["task_id"] == "score"]
    scored = sorted(str(t["rendered_map_index"]).split(" shard ")[0] for t in instances)
    assert scored == sorted(TASKS), instances  # one shard per task (scoring.shards = 1)
    for ti in instances:
        task = str(ti["rendered_map_index"]).split(" shard ")[0]
        payload = _check_mlflow_links(it, "score_and_build_audiences", score_run_id, ti)
        champion = front.champions[task]
        assert payload["run_id"] == champion.run_id, (task, payload, champion.run_id)
        assert payload["model_name"] == f"propensity-{task}" and payload["model_version"] == champion.version, payload

    # registry_uri too: otherwise a registry URI another test set process-wide (mlflow.set_registry_uri) wins
    client = MlflowClient(tracking_uri=it.mlflow_url, registry_uri=it.mlflow_url)
    champions = {task: client.get_model_version_by_alias(f"propensity-{task}", "champion") for task in TASKS}
    versions = {task: len(client.search_model_versions(f"name='propensity-{task}'")) for task in TASKS}
    for task in sorted(set(TASKS) - set(drift.breached)):
        assert champions[task].version == front.champions[task].version, (task, champions[task].version)
        assert versions[task] == front.versions[task], (task, versions[task], front.versions[task])
    if drift.retrain_run_id is not None:
        instances = [t for t in api.task_instances("train_models", drift.retrain_run_id) if t["task_id"] == "train"]
        assert sorted(t["rendered_map_index"] for t in instances) == sorted(drift.breached), instances
        for ti in instances:
            task = ti["rendered_map_index"]
            payload = _check_mlflow_links(it, "train_models", drift.retrain_run_id, ti)
            assert payload["model_name"] == f"propensity-{task}", payload
            assert versions[task] == front.versions[task] + 1, (task, versions[task], front.versions[task])
            now = payload["model_version"] if payload["promoted"] else front.champions[task].version
            assert champions[task].version == now, (task, payload, champions[task].version)
    assert it.keys("mlflow", "artifacts/"), "MLflow artifacts did not land in the S3 bucket"


def _check_data_docs(api: AirflowApi, validate_run_id: str) -> None:
    """Data Docs are off in SMALL_SETTINGS: the validation task says so (XCom ``data_docs`` None), so
    its "Data Docs" link is disabled rather than pointing at a page that does not exist."""
    assert api.xcom("shop_validate", validate_run_id, "validate", "data_docs") is None
    assert not api.extra_links("shop_validate", validate_run_id, "validate").get("Data Docs")


def _check_exports(it: Integration, settings: Settings, catch_up: set[str]) -> None:
    """One export per audience for ``T`` and none for any other date (none past the freshness limit,
    none for the catch-up day); the CRM table holds the treatment groups of ``T`` only."""
    import sqlalchemy as sa

    from propensity.audiences.spec import load_audiences

    exports = _partition_dates(it.keys("exports", f"{EXPORT_PREFIX}/"), f"{EXPORT_PREFIX}/", "dt")
    dates = set().union(*exports.values()) if exports else set()
    limit = (SNAPSHOT + timedelta(days=MAX_STALENESS_DAYS)).isoformat()
    assert not [d for d in dates if d > limit], f"exports past {limit}: {sorted(dates)}"
    assert not dates & catch_up, f"exports for the catch-up day {sorted(catch_up)}: {sorted(dates)}"
    assert dates == {SNAPSHOT_KEY}, f"export dates {sorted(dates)}"

    names = [a.name for a in load_audiences(settings.audiences_file, TASKS).ordered()]
    # one committed set per date: dt=T/manifest.json lists every audience, lake and exports agree
    export_set = it.get_json("exports", f"{EXPORT_PREFIX}/dt={SNAPSHOT_KEY}/manifest.json")
    lake_set = it.get_json("lake", f"{LAKE_PREFIX}/audiences/dt={SNAPSHOT_KEY}/_manifest.json")
    assert sorted(export_set["exports"]) == sorted(names) == sorted(lake_set["manifests"]), export_set
    assert export_set["set_id"] == lake_set["set_id"]
    treatment = {}
    for name in names:
        counts = export_set["exports"][name]["counts"]
        key = f"{EXPORT_PREFIX}/dt={SNAPSHOT_KEY}/{export_set['exports'][name]['file']}"
        csv = it.s3.get_object(Bucket=BUCKETS["exports"], Key=key)["Body"].read()
        assert csv.decode().count("\n") - 1 == counts["treatment"], (name, counts)
        assert counts["treatment"] + counts["control"] == sum(
            f["rows"] for f in lake_set["files"] if f["name"].startswith(f"audience={name}.")
        ), (name, lake_set, counts)
        treatment[name] = counts["treatment"]
    assert sum(treatment.values()) > 0, treatment
    # the CRM table lives in the shop's PostgreSQL database: the treatment groups of T, nothing else
    engine = sa.create_engine(it.shop_db)
    try:
        with engine.connect() as conn:
            rows = {
                (str(day), audience): n
                for day, audience, n in conn.execute(
                    sa.text("SELECT dt, audience, count(*) FROM audience_members GROUP BY dt, audience")
                ).all()
            }
    finally:
        engine.dispose()
    assert rows == {(SNAPSHOT_KEY, name): n for name, n in treatment.items() if n}, (rows, treatment)
