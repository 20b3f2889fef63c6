"""The whole chain on real services, driven only through Airflow's REST API.

One test starts what a deployment runs, on 127.0.0.1 and without Docker:

* PostgreSQL (the session's :class:`~propensity.services.PostgresServer`) with one database each
  for Airflow's metadata, MLflow's tracking store and the shop's OLTP system;
* an S3 endpoint (the session's moto :class:`~propensity.services.S3Server`) with buckets for the
  lake, the clickstream landing area, the CSV drops, the audience exports and MLflow's artifacts;
* the local stack of :mod:`propensity.stack` (``make up``): Airflow api-server, scheduler
  (LocalExecutor) and dag-processor on the PostgreSQL metadata DB with the repository's
  ``dags/`` and ``plugins/``, and ``mlflow server`` on PostgreSQL with artifacts on S3;
  every ``PROPENSITY_*`` variable of the Airflow processes points at those services.

It simulates a small clean shop into the sources (shop DB in PostgreSQL, clickstream and FX
drops in S3) from this process, then drives the chain like an operator, over ``/api/v2`` with a
JWT from ``/auth/token``: ``shop_collect`` (its ``start``/``end`` params: every simulated day)
-> ``shop_validate`` and ``build_features`` (started by their Assets) -> ``train_models`` (all
tasks, promote) -> ``score_and_build_audiences`` for the day after the last simulated day. The
scoring DAG stays paused until champions exist (a paused DAG gets no asset-triggered runs), so
its only run is the one asserted on. Runs of scheduled DAGs are triggered for the DAG's due
schedule slot (``logical_date`` = ``next_dagrun_logical_date``): on unpausing, the scheduler
then finds the slot taken instead of starting a second run of its own.

It asserts on what the chain left in the services (lake zones in S3, champions in the
registry, export manifests, CRM rows) and on the MLflow extra link of a finished training task:
fetched through the REST API, it must point at the running MLflow server and name the run the
task logged, which that server must know.

A task failing its first try fails the test at once (its retries back off for minutes), with
the task's log from the Airflow logs folder in the message. The wall time is printed, recorded
as the ``wall_seconds`` property (JUnit XML) and written with the stage and task timings to
``<PROPENSITY_HOME>/integration_timings.json``. On 2 cores it takes about 4.5 minutes, 40% of it
in ``shop_validate``, whose nine table tasks run one at a time (each importing great-expectations).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from propensity.config import DirtConfig, Settings
from propensity.contracts import TABLES
from propensity.services import LOOPBACK, PostgresServer, S3Server, free_port
from propensity.stack import REPO_ROOT, StackConfig, http_json, start, stop

pytestmark = [pytest.mark.slow, pytest.mark.services]

START = date(2025, 1, 1)
DAYS = 100
CUSTOMERS = 2500
SEED = 12
LAST_DAY = START + timedelta(days=DAYS - 1)
SCORE_DAY = LAST_DAY + timedelta(days=1)  # features from every simulated day
TASKS = ["conversion", "repurchase", "churn"]
DAG_IDS = {"shop_collect", "shop_validate", "build_features", "train_models", "score_and_build_audiences"}
HEAVY_POOL = "propensity_heavy"  # train and score tasks run in it; Airflow never schedules into a missing pool
PREFIX = "integration"
BUCKETS = {name: f"{PREFIX}-{name}" for name in ("lake", "landing", "drops", "exports", "mlflow")}
LAKE_PREFIX = "propensity"
EXPORT_PREFIX = "audiences"
SALT = "integration-test-salt"
FAILED_TI_STATES = {"failed", "upstream_failed", "up_for_retry", "removed"}

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
}

# per-stage bounds (seconds): about three times what each stage takes on 2 cores (the test: ~5 min)
STAGE_TIMEOUT = {"dags": 120, "collect": 180, "validate": 360, "features": 180, "train": 300, "score": 240}


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

    def trigger(self, dag_id: str, conf: dict[str, Any], logical_date: str | None = None) -> dict[str, Any]:
        return self.call("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": logical_date, "conf": conf})

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return list(self.call("GET", f"/dags/{dag_id}/dagRuns", limit=100, order_by="id")["dag_runs"])

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
                f"{dag_id} run {run_id} is {run['state']}; tasks: {states()}\n"
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
        lambda: f"tasks: {states()}\n{it.task_logs(dag_id, run_id)}\n{it.daemon_logs()}",
    )


def wait_asset_run(it: Integration, dag_id: str, timeout: float) -> dict[str, Any]:
    """Wait for the asset-triggered run of ``dag_id`` (exactly one), then for its success."""
    api = it.api
    assert api is not None
    t0 = time.monotonic()
    runs = wait_for(
        f"an asset-triggered run of {dag_id}",
        lambda: api.runs(dag_id),
        timeout,
        it.daemon_logs,
    )
    assert len(runs) == 1 and runs[0]["run_type"] == "asset_triggered", runs
    return wait_run(it, dag_id, runs[0]["dag_run_id"], timeout - (time.monotonic() - t0))


# --------------------------------------------------------------------------- the test


def _stage(it: Integration, name: str, t0: float) -> float:
    it.timings[name] = round(time.monotonic() - t0, 1)
    return time.monotonic()


@pytest.mark.timeout(1200)
def test_chain_on_real_services_through_the_rest_api(
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


def _drive_and_check(it: Integration) -> None:
    settings = it.settings()
    assert settings.tracking_uri == it.mlflow_url and settings.lake_uri.startswith("s3://")
    assert set(settings.tasks) == set(TASKS) and settings.tasks["churn"].horizon_days == 21

    # the shop's sources: OLTP tables in PostgreSQL, clickstream and FX drops in S3
    from propensity.simulate import simulate

    t = time.monotonic()
    simulate(settings, customers=CUSTOMERS, days=DAYS, start=START, seed=SEED, dirt_cfg=DirtConfig(rate=0))
    t = _stage(it, "simulate", t)

    api = it.api = AirflowApi(it.cfg.airflow_url, it.cfg.username, it.cfg.password)

    def parsed() -> dict[str, dict[str, Any]] | None:
        found = api.dags()
        scheduled = ("shop_collect", "train_models")
        ready = set(found) >= DAG_IDS and all(found[d]["next_dagrun_logical_date"] for d in scheduled)
        return found if ready else None

    dags = wait_for(
        "the DAGs to be parsed, with their next schedule slots",
        parsed,
        STAGE_TIMEOUT["dags"],
        lambda: f"{api.call('GET', '/importErrors')}\n{it.daemon_logs()}",
    )
    assert api.call("GET", "/importErrors")["total_entries"] == 0
    assert all(dags[d]["is_paused"] for d in DAG_IDS), "DAGs must start paused"
    # the stack created the pool the heavy tasks queue in (without it they are never scheduled)
    assert api.call("GET", f"/pools/{HEAVY_POOL}")["slots"] >= 1
    t = _stage(it, "dags_ready", t)

    # collect every simulated day; validate and features follow on their Assets
    for dag_id in ("shop_validate", "build_features"):
        api.set_paused(dag_id, False)
    collect_run = api.trigger(
        "shop_collect",
        {"start": START.isoformat(), "end": LAST_DAY.isoformat()},
        logical_date=dags["shop_collect"]["next_dagrun_logical_date"],  # the due slot: no extra scheduled run
    )
    api.set_paused("shop_collect", False)
    wait_run(it, "shop_collect", collect_run["dag_run_id"], STAGE_TIMEOUT["collect"])
    api.set_paused("shop_collect", True)  # no scheduled run of the next slot should midnight pass meanwhile
    t = _stage(it, "collect", t)
    wait_asset_run(it, "shop_validate", STAGE_TIMEOUT["validate"])
    t = _stage(it, "validate", t)
    wait_asset_run(it, "build_features", STAGE_TIMEOUT["features"])
    t = _stage(it, "features", t)

    # train, register and promote all three tasks
    train_run = api.trigger(
        "train_models",
        {"tasks": TASKS, "promote": True},
        logical_date=dags["train_models"]["next_dagrun_logical_date"],
    )
    api.set_paused("train_models", False)
    wait_run(it, "train_models", train_run["dag_run_id"], STAGE_TIMEOUT["train"])
    api.set_paused("train_models", True)
    t = _stage(it, "train", t)

    # score and build the audiences for the day after the last simulated day
    assert api.runs("score_and_build_audiences") == [], "a paused DAG gets no asset-triggered runs"
    score_run = api.trigger("score_and_build_audiences", {"date": SCORE_DAY.isoformat()})
    api.set_paused("score_and_build_audiences", False)
    wait_run(it, "score_and_build_audiences", score_run["dag_run_id"], STAGE_TIMEOUT["score"])
    t = _stage(it, "score", t)

    # exactly the runs driven above, nothing scheduled behind our back
    for dag_id in ("shop_collect", "shop_validate", "build_features", "train_models", "score_and_build_audiences"):
        assert len(api.runs(dag_id)) == 1, (dag_id, api.runs(dag_id))

    _check_lake(it)
    _check_registry_and_links(it, train_run["dag_run_id"])
    _check_exports(it, settings)
    _stage(it, "checks", t)


# --------------------------------------------------------------------------- assertions


def _dates(keys: list[str], zone_prefix: str) -> dict[str, set[str]]:
    """``{table: {dt, ...}}`` of the committed partitions (with a manifest) under ``zone_prefix``."""
    found: dict[str, set[str]] = {}
    for key in keys:
        if not key.endswith("/_manifest.json"):
            continue
        table, dt = key[len(zone_prefix) :].split("/")[:2]
        found.setdefault(table, set()).add(dt.removeprefix("dt="))
    return found


def _check_lake(it: Integration) -> None:
    every_day = {(START + timedelta(days=i)).isoformat() for i in range(DAYS)}
    lake = it.keys("lake", f"{LAKE_PREFIX}/")
    for zone in ("raw", "clean"):
        dates = _dates([k for k in lake if k.startswith(f"{LAKE_PREFIX}/{zone}/")], f"{LAKE_PREFIX}/{zone}/")
        assert set(dates) == set(TABLES), f"{zone}: tables {sorted(dates)}"
        for table, got in dates.items():
            assert got == every_day, f"{zone}/{table}: {len(got)} of {DAYS} days, missing {sorted(every_day - got)[:5]}"
    day = SCORE_DAY.isoformat()
    manifests = {k for k in lake if k.endswith("/_manifest.json")}
    expected = {
        f"features/snapshot={day}",
        f"profiles/snapshot={day}",
        *(f"labels/task={task}/snapshot={day}" for task in TASKS),
        *(f"scores/task={task}/dt={day}" for task in TASKS),
    }
    missing = [p for p in sorted(expected) if f"{LAKE_PREFIX}/{p}/_manifest.json" not in manifests]
    assert not missing, f"lake partitions missing: {missing}"
    for task in TASKS:
        scores = it.get_json("lake", f"{LAKE_PREFIX}/scores/task={task}/dt={day}/_manifest.json")
        labels = it.get_json("lake", f"{LAKE_PREFIX}/labels/task={task}/snapshot={day}/_manifest.json")
        assert scores["row_count"] == labels["row_count"] > 0, (task, scores, labels)
    assert not [k for k in lake if k.startswith(f"{LAKE_PREFIX}/scores/_shards/")], "score shards left behind"
    audiences = {
        k.split("/")[2].removeprefix("audience=")
        for k in manifests
        if k.startswith(f"{LAKE_PREFIX}/audiences/audience=") and f"/dt={day}/" in k
    }
    assert audiences, f"no audiences/audience=*/dt={day} partitions in the lake"


def _check_registry_and_links(it: Integration, train_run_id: str) -> None:
    from mlflow import MlflowClient

    api = it.api
    assert api is not None
    # registry_uri too: otherwise a registry URI another test set process-wide (mlflow.set_registry_uri) wins
    client = MlflowClient(tracking_uri=it.mlflow_url, registry_uri=it.mlflow_url)
    instances = [t for t in api.task_instances("train_models", train_run_id) if t["task_id"] == "train"]
    assert sorted(t["rendered_map_index"] for t in instances) == sorted(TASKS), instances
    for ti in instances:
        task, index = ti["rendered_map_index"], ti["map_index"]
        champion = client.get_model_version_by_alias(f"propensity-{task}", "champion")
        payload = api.xcom("train_models", train_run_id, "train", "mlflow", map_index=index)
        assert payload["promoted"] is True and payload["model_version"] == champion.version, (payload, champion)
        assert payload["run_id"] == champion.run_id, (payload, champion.run_id)

        links = api.extra_links("train_models", train_run_id, "train", map_index=index)
        url = links.get("MLflow run")
        expected = f"{it.mlflow_url}/#/experiments/{payload['experiment_id']}/runs/{champion.run_id}"
        assert url == expected, f"{task}: MLflow run link {url!r}, expected {expected!r} (links: {links})"
        version_url = links.get("MLflow model version")
        assert version_url == f"{it.mlflow_url}/#/models/propensity-{task}/versions/{champion.version}", links

        # the link opens on the running server (the #fragment stays in the browser) and the run exists there
        assert (http_json(url, timeout=30) or (None,))[0] == 200, url
        api_url = f"{it.mlflow_url}/api/2.0/mlflow/runs/get?run_id={champion.run_id}"
        status, answer = http_json(api_url, timeout=30) or (None, None)
        assert status == 200, answer
        run = answer["run"]
        assert run["info"]["experiment_id"] == payload["experiment_id"], run["info"]
    assert it.keys("mlflow", "artifacts/"), "MLflow artifacts did not land in the S3 bucket"


def _check_exports(it: Integration, settings: Settings) -> None:
    import sqlalchemy as sa

    from propensity.audiences.spec import load_audiences

    day = SCORE_DAY.isoformat()
    names = [a.name for a in load_audiences(settings.audiences_file, TASKS).ordered()]
    treatment = {}
    for name in names:
        base = f"{EXPORT_PREFIX}/audience={name}/dt={day}"
        manifest = it.get_json("exports", f"{base}/manifest.json")
        counts = manifest["counts"]
        csv = it.s3.get_object(Bucket=BUCKETS["exports"], Key=f"{base}/{manifest['file']}")["Body"].read()
        assert csv.decode().count("\n") - 1 == counts["treatment"], (name, counts)
        lake = it.get_json("lake", f"{LAKE_PREFIX}/audiences/audience={name}/dt={day}/_manifest.json")
        assert lake["row_count"] >= counts["treatment"], (name, lake, counts)
        treatment[name] = counts["treatment"]
    assert sum(treatment.values()) > 0, treatment
    # the CRM table lives in the shop's PostgreSQL database: the treatment groups, nothing else
    engine = sa.create_engine(it.shop_db)
    try:
        with engine.connect() as conn:
            rows = dict(
                conn.execute(
                    sa.text("SELECT audience, count(*) FROM audience_members WHERE dt = :d GROUP BY audience"),
                    {"d": SCORE_DAY},
                ).all()
            )
    finally:
        engine.dispose()
    assert rows == {name: n for name, n in treatment.items() if n}, (rows, treatment)
