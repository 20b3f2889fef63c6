"""Resilience faults of issue #13 ("Nothing wrong ever leaves", smaller issues), on real components.

* An S3 object store restarted mid-collect (a moto server stopped and started again on its port).
* A ``train`` process killed between registering a version and gating it (a real SIGKILL).
* ``promote`` of a version that failed the gate, was never gated, or does not exist.
* ``rollback`` after a promotion back to an earlier champion.
* Temporary files left by a process killed mid-write.

MLflow is a real tracking server and registry (SQLite backend, artifacts in a folder it serves);
S3 is moto's HTTP server; files and processes are real.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import date, timedelta
from pathlib import Path

import boto3
import pytest
from conftest import CLEAN
from mlflow import MlflowClient

import propensity
from propensity.cli import main
from propensity.collect import collect, rows_per_table
from propensity.config import Settings
from propensity.contracts import TABLES
from propensity.errors import RequestError
from propensity.lake import MANIFEST, Lake
from propensity.models.registry import gate_and_alias, promote, rollback
from propensity.services import MlflowServer, S3Server, free_port
from propensity.simulate import simulate
from propensity.storage import LocalStore, S3Store

START = date(2025, 1, 1)
SRC = Path(propensity.__file__).resolve().parents[1]  # children import the same propensity as this process


# --- S3: the object store restarts mid-collect ------------------------------------------


@pytest.fixture
def moto(monkeypatch) -> S3Server:
    """A moto server of this test alone, on a fixed port, so it can be stopped and started again there."""
    server = S3Server(port=free_port()).start()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


class Restart:
    """Stops ``server`` just before the ``at``-th S3 PUT and starts it again ``down`` seconds later.

    moto forgets everything on stop. With ``durable`` the restarted server gets its buckets and
    objects back, as a real object store has them after a restart; without, it comes back
    empty. Requests sent while the state is being restored wait for it (a botocore
    ``before-send`` hook on boto3's default session, which the stores' clients copy), so the
    test never races the restore. Attempts sent while the server is down are counted: they
    are the retries the store made.
    """

    def __init__(self, server: S3Server, at: int, down: float | None, durable: bool = True) -> None:
        self.server, self.at, self.down, self.durable = server, at, down, durable
        self.puts = 0
        self.refused = 0
        self.saved: dict[str, dict[str, bytes]] = {}
        self.stopped = threading.Event()
        self.restoring = threading.Event()
        self.restored = threading.Event()
        self.thread: threading.Thread | None = None

    def client(self):
        """A client of a session of its own: the default session's hook would hold its requests back."""
        return boto3.session.Session().client("s3", endpoint_url=self.server.endpoint_url, region_name="us-east-1")

    def on_put(self) -> None:
        self.puts += 1
        if self.puts != self.at:
            return
        if self.durable:
            client = self.client()
            for bucket in (b["Name"] for b in client.list_buckets()["Buckets"]):
                keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
                self.saved[bucket] = {k: client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys}
        self.server.stop()
        self.stopped.set()
        if self.down is not None:
            self.thread = threading.Thread(target=self._come_back, daemon=True)
            self.thread.start()

    def _come_back(self) -> None:
        time.sleep(self.down or 0.0)
        self.restoring.set()
        self.server.start()
        client = self.client()
        for bucket, objects in self.saved.items():
            client.create_bucket(Bucket=bucket)
            for key, body in objects.items():
                client.put_object(Bucket=bucket, Key=key, Body=body)
        self.restored.set()

    def before_send(self, **_: object) -> None:
        if self.restoring.is_set():
            self.restored.wait(60)
        elif self.stopped.is_set():
            self.refused += 1

    def join(self) -> None:
        if self.thread is not None:
            self.thread.join(60)


@pytest.fixture
def restart(moto, monkeypatch):
    """Install a :class:`Restart` (built by the returned factory) around every S3 PUT."""
    made: list[Restart] = []

    def make(at: int, down: float | None, durable: bool = True) -> Restart:
        r = Restart(moto, at, down, durable)
        original = S3Store.put_bytes
        one_at_a_time = threading.Lock()

        def put_bytes(self: S3Store, key: str, data: bytes) -> None:
            # stages PUT from thread pools; the saved copy stands for what a real store keeps
            # across a restart, so no PUT may be in flight while it is taken and the server stops
            with one_at_a_time:
                r.on_put()
                original(self, key, data)

        monkeypatch.setattr(S3Store, "put_bytes", put_bytes)
        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        boto3.DEFAULT_SESSION.events.register("before-send.s3", r.before_send)
        made.append(r)
        return r

    yield make
    for r in made:
        r.join()
        boto3.DEFAULT_SESSION.events.unregister("before-send.s3", r.before_send)


def s3_shop(home: Path, endpoint: str) -> Settings:
    """A tiny simulated shop whose lake is on S3 (sources stay local: they are not the store that restarts)."""
    s = Settings(home=home, lake="s3://lake/propensity", s3_endpoint_url=endpoint)
    simulate(s, customers=300, days=3, start=START, seed=5, dirt_cfg=CLEAN)
    return s


def lake_problems(lake: Lake) -> list[str]:
    """Every manifest entry whose file is missing or has another size: a consistent lake has none."""
    problems = []
    for key in lake.store.list():
        if not key.endswith("/" + MANIFEST):
            continue
        base = key[: -len(MANIFEST) - 1]
        for f in json.loads(lake.store.get_text(key))["files"]:
            path = f"{base}/{f['name']}"
            if not lake.store.exists(path):
                problems.append(f"{path}: listed, missing")
            elif len(lake.store.get_bytes(path)) != f["bytes"]:
                problems.append(f"{path}: listed with {f['bytes']} bytes, has another size")
    return problems


@pytest.mark.services
def test_collect_retries_through_an_s3_restart(tmp_path, moto, restart):
    s = s3_shop(tmp_path / "shop", moto.endpoint_url)
    r = restart(at=12, down=3.0)
    manifests = collect(s, START, START + timedelta(days=2))  # the store restarts, down for 3 s, in this run
    assert r.restored.is_set() and r.refused >= 2, "the outage happened and the store retried through it"
    lake = Lake.open(s.lake_uri)
    assert lake_problems(lake) == []
    assert sum(len(lake.partitions("raw", t)) for t in TABLES) == len(manifests) == 3 * len(TABLES)
    rows = rows_per_table(manifests)
    assert {t: lake.read_table("raw", t).num_rows for t in TABLES} == rows and sum(rows.values()) > 0


@pytest.mark.services
def test_collect_against_a_dead_store_fails_in_one_line_and_the_rerun_succeeds(
    tmp_path, moto, restart, monkeypatch, capsys
):
    s = s3_shop(tmp_path / "shop", moto.endpoint_url)
    monkeypatch.delenv("PROPENSITY_CONFIG", raising=False)
    monkeypatch.setenv("PROPENSITY_HOME", str(s.home))
    monkeypatch.setenv("PROPENSITY_LAKE", s.lake_uri)
    monkeypatch.setenv("PROPENSITY_S3_OUTAGE_SECONDS", "1")  # a short retry budget for the test
    argv = ["collect", "--start", START.isoformat(), "--end", (START + timedelta(days=2)).isoformat()]
    r = restart(at=12, down=None, durable=False)  # the store goes down and stays down
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    # days are collected a few at a time: whichever call meets the dead store first is named
    assert re.match(r"propensity collect: error: S3 (put|list|get) of s3://lake/propensity/raw/", err[0]), err[0]
    assert moto.endpoint_url in err[0] and "after 1 s of retries" in err[0], err[0]
    assert r.refused >= 2, "retried before giving up"

    moto.start()  # back, and empty: what the first run wrote is lost
    assert main(argv) == 0
    lake = Lake.open(s.lake_uri)
    assert lake_problems(lake) == []
    assert sum(len(lake.partitions("raw", t)) for t in TABLES) == 3 * len(TABLES)


# --- MLflow: a real tracking server and registry -----------------------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    with MlflowServer(f"sqlite:///{root}/mlflow.db", str(root / "artifacts")) as server:
        yield server


@pytest.fixture
def reg_settings(registry, tmp_path) -> Settings:
    """Settings on the registry server, with MLflow pointed at it (as training leaves it for the gate)."""
    from propensity.models.tracking import configure

    s = Settings(home=tmp_path, mlflow_tracking_uri=registry.tracking_uri)
    configure(s)
    return s


def client_of(s: Settings) -> MlflowClient:
    return MlflowClient(s.tracking_uri, registry_uri=s.tracking_uri)


def register_versions(s: Settings, task: str, n: int, tmp_path: Path) -> MlflowClient:
    """``n`` versions of ``propensity-<task>`` (a placeholder artifact each): the registry side only."""
    client = client_of(s)
    experiment = client.get_experiment_by_name("faults-registry") or client.get_experiment(
        client.create_experiment("faults-registry")
    )
    run = client.create_run(experiment.experiment_id)
    artifact = tmp_path / "model.txt"
    artifact.write_text("placeholder")
    client.log_artifact(run.info.run_id, str(artifact), "model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(f"propensity-{task}")
    for _ in range(n):
        client.create_model_version(f"propensity-{task}", f"runs:/{run.info.run_id}/model", run.info.run_id)
    return client


def champion(client: MlflowClient, task: str) -> str:
    return client.get_model_version_by_alias(f"propensity-{task}", "champion").version


@pytest.mark.services
def test_promote_refuses_a_rejected_or_ungated_version_without_force(reg_settings, tmp_path, capsys, monkeypatch):
    s, task = reg_settings, "gated"
    client = register_versions(s, task, 3, tmp_path)
    gate_and_alias(s, task, "1", 0.8, None, None)  # the gate: no champion yet, above the floor -> champion
    gate_and_alias(s, task, "2", 0.4, None, None)  # below the default floor (0.5): rejected
    assert champion(client, task) == "1"
    decision = client.get_model_version(f"propensity-{task}", "2").tags["gate.decision"]
    assert decision == "rejected"

    with pytest.raises(RequestError, match=r"propensity-gated v2 .*gate decision: rejected.*--force"):
        promote(s, task, "2")
    with pytest.raises(RequestError, match=r"propensity-gated v3 .*never gated.*--force"):
        promote(s, task, "3")
    assert champion(client, task) == "1", "nothing moved"

    argv = ["promote", "--task", task, "--version", "3"]
    monkeypatch.delenv("PROPENSITY_CONFIG", raising=False)
    monkeypatch.setenv("PROPENSITY_MLFLOW_TRACKING_URI", s.tracking_uri)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "v3" in err[0] and "--force" in err[0], err
    assert main([*argv, "--force"]) == 0
    assert "champion -> v3" in capsys.readouterr().out
    assert champion(client, task) == "3"
    tags = client.get_model_version(f"propensity-{task}", "3").tags
    assert tags.get("promotion.forced") == "true" and "gate.decision" not in tags, "the gate verdict is not faked"


@pytest.mark.services
def test_promote_of_an_unknown_version_is_one_line_naming_the_known_ones(reg_settings, tmp_path, capsys, monkeypatch):
    s, task = reg_settings, "unknown"
    register_versions(s, task, 2, tmp_path)
    with pytest.raises(RequestError, match=r"propensity-unknown has no version 7; known versions: 1, 2"):
        promote(s, task, "7")
    with pytest.raises(RequestError, match=r"propensity-nosuchtask has no version 1; known versions: none"):
        promote(s, "nosuchtask", "1")
    monkeypatch.delenv("PROPENSITY_CONFIG", raising=False)
    monkeypatch.setenv("PROPENSITY_MLFLOW_TRACKING_URI", s.tracking_uri)
    assert main(["promote", "--task", task, "--version", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["propensity promote: error: propensity-unknown has no version 7; known versions: 1, 2"]


@pytest.mark.services
def test_rollback_follows_the_champion_history(reg_settings, tmp_path):
    s, task = reg_settings, "history"
    client = register_versions(s, task, 3, tmp_path)
    for v in ("2", "3"):
        client.set_model_version_tag(f"propensity-{task}", v, "gate.decision", "passed, not promoted")
    gate_and_alias(s, task, "1", 0.8, None, None)
    assert champion(client, task) == "1"

    # the sequence: promote v2, promote v1 (back), rollback -> must not reinstate v2
    promote(s, task, "2")
    promote(s, task, "1")
    with pytest.raises(RequestError, match=r"propensity-history v1 is the first champion on record"):
        rollback(s, task)
    assert champion(client, task) == "1"

    # a straight line rolls back one step at a time, never to a rolled-back version
    promote(s, task, "2")
    promote(s, task, "3")
    assert "v3 -> v2" in rollback(s, task)
    assert "v2 -> v1" in rollback(s, task)
    with pytest.raises(RequestError, match="first champion on record"):
        rollback(s, task)
    promote(s, task, "3")  # v2 was rolled back: rolling back from v3 goes to v1
    assert "v3 -> v1" in rollback(s, task)
    assert champion(client, task) == "1"
    assert client.get_model_version(f"propensity-{task}", "2").tags.get("rolled_back") == "true"


# --- a train killed between registering and gating ---------------------------------------


KILLED_TRAIN = """
import json, os, signal, sys
from propensity.config import Settings
from propensity.models import train

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # the process dies between registering the version and gating it

train.gate_and_alias = killed
train.Trainer(Settings(**json.loads(sys.argv[1]))).train(["conversion"])
"""


@pytest.fixture(scope="module")
def tiny_shop(registry, tmp_path_factory) -> Settings:
    """A small shop conversion trains on in seconds: 400 customers, 75 days (out-of-time split, 14-day horizon)."""
    from propensity.validation import Gate

    s = Settings(
        home=tmp_path_factory.mktemp("tiny_shop"),
        mlflow_tracking_uri=registry.tracking_uri,
        validation={"docs": False},
        features={"training_span_days": 28, "min_history_days": 30, "snapshot_every_days": 7},
        models={
            "max_rounds": 30,
            "early_stopping_rounds": 10,
            "min_data_in_leaf": 20,
            "floors": {"conversion": 0.5},
            "experiment": "killed-train",
        },
    )
    days = 75
    simulate(s, customers=400, days=days, start=START, seed=21, dirt_cfg=CLEAN)
    collect(s, START, START + timedelta(days=days - 1))
    Gate(s).validate([START + timedelta(days=i) for i in range(days)])
    return s


@pytest.mark.services
@pytest.mark.slow
def test_a_killed_train_is_settled_on_the_next_start(tiny_shop):
    from propensity.models.train import Trainer

    s = tiny_shop
    client = client_of(s)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.run(
        [sys.executable, "-c", KILLED_TRAIN, s.model_dump_json()], env=env, capture_output=True, timeout=600
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    experiment = client.get_experiment_by_name("killed-train")
    running = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    assert len(running) == 2, "the killed process left its parent and child runs RUNNING"
    orphan = client.get_model_version("propensity-conversion", "1")
    assert "gate.decision" not in orphan.tags, "and a version registered but never gated"

    report = Trainer(s).train(["conversion"])  # the next start
    assert report["tasks"]["conversion"]["model_version"] == "2"
    for run in running:
        settled = client.get_run(run.info.run_id)
        assert settled.info.status == "FAILED"
        assert "was killed" in settled.data.tags["propensity.abandoned"]
    assert not client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    tags = client.get_model_version("propensity-conversion", "1").tags
    assert tags["gate.decision"] == "abandoned"
    with pytest.raises(RequestError, match=r"propensity-conversion v1 .*gate decision: abandoned.*--force"):
        promote(s, "conversion", "1")


# --- temporary files of a process killed mid-write ----------------------------------------


KILLED_WRITE = """
import os, signal, sys
from propensity.storage import LocalStore

def killed(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)  # the data is written, the rename never happens

os.replace = killed
LocalStore(sys.argv[1]).put_bytes(sys.argv[2], b"x" * 100_000)
"""


def killed_write(root: Path, key: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    child = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(root), key], env=env, timeout=120)
    assert child.returncode == -signal.SIGKILL


def tmp_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob(".tmp-*"))


def test_temporary_files_of_a_killed_writer_are_cleaned_up(tmp_path):
    root = tmp_path / "lake"
    store = LocalStore(root)
    killed_write(root, "raw/orders/dt=2025-01-01/part-00000.parquet")
    killed_write(root, "raw/events/dt=2025-01-01/part-00000.parquet")
    assert len(tmp_files(root)) == 2, "the kill left its temporary files behind"

    # a write into the directory cleans up there; a listing cleans up what it walks, and never shows it
    store.put_bytes("raw/orders/dt=2025-01-01/part-00001.parquet", b"ok")
    assert [p.parent.parent.name for p in tmp_files(root)] == ["events"]
    assert store.list("raw/events/") == []
    assert tmp_files(root) == []

    # a live writer's file stays; a file of unknown owner older than an hour goes
    folder = root / "raw" / "orders" / "dt=2025-01-01"
    live = folder / f".tmp-{os.getpid()}-0123456789ab-part-00002.parquet"
    legacy = folder / f".tmp-{'f' * 32}-part-00003.parquet"
    for path in (live, legacy):
        path.write_bytes(b"in flight")
    old = time.time() - 2 * 3600
    os.utime(legacy, (old, old))
    assert store.list("raw/orders/") == ["raw/orders/dt=2025-01-01/part-00001.parquet"]
    assert tmp_files(root) == [live]


def test_s3_retries_follow_the_environment(monkeypatch):
    from propensity.storage import RetryPolicy, backoff_delays

    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("PROPENSITY_S3_OUTAGE_SECONDS", "10")
    store = S3Store("bucket", endpoint_url="http://127.0.0.1:9")
    assert store.retry == RetryPolicy("adaptive", 7, 10.0)
    assert store.client.meta.config.retries == {"mode": "adaptive", "total_max_attempts": 7}
    assert store.child("x").retry == store.retry
    assert list(backoff_delays(10.0)) == [0.5, 1.0, 2.0, 4.0, 2.5], "capped doubling, exactly the budget"
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "zero")
    with pytest.raises(ValueError, match="AWS_MAX_ATTEMPTS='zero' is not a number"):
        RetryPolicy.from_env()


def test_abandonment_asks_this_hosts_processes_and_judges_other_hosts_by_age():
    from propensity.models.tracking import abandonment

    def run(pid: str, host: str, start: str = "100") -> dict[str, str]:
        return {"propensity.pid": pid, "propensity.host": host, "propensity.process_start": start}

    alive = {42: "100", 43: "999"}  # 43 is a recycled pid: another process started later

    def ask(tags: dict[str, str], hours: float = 0.1) -> str | None:
        return abandonment(tags, timedelta(hours=hours), "here", alive.__contains__, alive.get)

    assert ask(run("42", "here")) is None, "a live training process"
    assert "was killed" in ask(run("41", "here"))
    assert "belongs to another process" in ask(run("43", "here"))
    assert ask(run("41", "elsewhere")) is None, "another host's process cannot be asked: only age tells"
    assert "longer than any training" in ask(run("41", "elsewhere"), hours=30)
    assert "left no pid" in ask({}, hours=30)


def test_champion_history_pushes_new_versions_and_cuts_back_on_a_return():
    from propensity.models.registry import promoted, reconcile

    assert promoted(["1"], "2") == (["1", "2"], [])
    assert promoted(["1", "2", "3"], "1") == (["1"], ["2", "3"]), "a return leaves the later ones behind"
    assert reconcile([], "4") == ["4"], "a registry from before the history starts it at its champion"
    assert reconcile(["1", "2", "3"], "2") == ["1", "2"], "the alias is the truth"
    assert reconcile(["1", "2", "3"], "3", existing=["2", "3"]) == ["2", "3"], "deleted versions drop out"
