"""The DAGs in ``dags/``: wiring only, partitioned runs, and each one really runs.

Airflow work happens in child processes with a throwaway ``AIRFLOW_HOME`` (see
``airflow_env.py``); ``dag.test()`` has no partition argument, so a run is given its key
the way a trigger with a partition key does (``partition_key`` in the run spec), or names
its partition in the ``date`` param. Seeding the sources and checking the lake happen
here, with the library only.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from airflow_env import DAGS_FOLDER, AirflowEnv, airflow_env  # noqa: F401  (fixture)
from conftest import copy_shop

from propensity import zones
from propensity.airflow import fail_fast, partitions, steps
from propensity.airflow.assets import asset_name, asset_uri
from propensity.airflow.tasks import HEAVY_POOL, MLFLOW_XCOM_KEY
from propensity.collect import collect
from propensity.config import DirtConfig, Settings, load_settings
from propensity.contracts import CUSTOMERS, EVENTS, FX_RATES, ORDERS, TABLES
from propensity.errors import RequestError
from propensity.lake import Lake
from propensity.simulate import simulate
from propensity.sources.landing import write_events, write_fx
from propensity.sources.oltp import ShopDB
from propensity.storage import open_store
from propensity.validation import Gate

DAY = date(2025, 3, 1)
NEXT = date(2025, 3, 2)
DEFAULT_TASKS = ["conversion", "repurchase", "churn", "clv"]


def ts(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


def _event_of(kind: str, key: str | None, partition: str | None, **extra: Any) -> SimpleNamespace:
    return SimpleNamespace(
        asset=SimpleNamespace(name=asset_name(kind, key), uri=asset_uri(kind, key)),
        extra=extra,
        partition_key=partition,
    )


@contextlib.contextmanager
def _fresh_env() -> Iterator[pytest.MonkeyPatch]:
    """No PROPENSITY_* variable of this process leaks into settings built inside."""
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("PROPENSITY_")]:
            mp.delenv(key)
        yield mp


# The adapter, without Airflow ----------------------------------------------------------------


def test_asset_table_names_and_uris() -> None:
    assert (asset_name(zones.RAW, "orders"), asset_uri(zones.RAW, "orders")) == (
        "raw.orders",
        "propensity://raw/orders",
    )
    assert asset_uri(zones.CLEAN, "events") == "propensity://clean/events"
    assert (asset_name(zones.FEATURES), asset_uri(zones.FEATURES)) == ("features", "propensity://features/")
    assert asset_uri(zones.PROFILES) == "propensity://profiles/"
    assert (asset_name(zones.LABELS, "churn"), asset_uri(zones.LABELS, "churn")) == (
        "labels.churn",
        "propensity://labels/churn",
    )
    assert asset_uri(zones.SCORES, "winback90") == "propensity://scores/winback90"
    assert asset_uri("models", "churn") == "propensity://models/churn"
    assert (asset_name(zones.DRIFT), asset_uri(zones.DRIFT)) == ("drift", "propensity://monitoring/drift")
    assert asset_uri(zones.AUDIENCES) == "propensity://audiences/"
    with pytest.raises(ValueError, match="invalid task name"):
        asset_uri(zones.SCORES, "a/b")
    with pytest.raises(KeyError):
        asset_uri(zones.RAW, "nosuchtable")
    with pytest.raises(ValueError, match="no key"):
        asset_uri(zones.FEATURES, "x")


def test_a_run_processes_its_partition_and_never_guesses_one() -> None:
    assert partitions.run_partition("2025-04-10", {"date": "2020-01-01"}) == date(2025, 4, 10)  # the key wins
    assert partitions.run_partition(None, {"date": "2025-04-10"}) == date(2025, 4, 10)
    assert partitions.run_partition("", {"date": "2025-04-10"}) == date(2025, 4, 10)
    with pytest.raises(RequestError, match="names no partition"):
        partitions.run_partition(None, {"date": None})
    with pytest.raises(RequestError, match="not a date"):
        partitions.run_partition("yesterday")
    assert partitions.snapshot_after(date(2025, 4, 10)) == date(2025, 4, 11)
    with pytest.raises(RequestError, match="after the partition day"):
        partitions.days_between(date(2025, 4, 11), date(2025, 4, 10))


def test_event_extras_keep_the_runs_partition_and_zone() -> None:
    events = {
        "raw.orders": [
            _event_of(zones.RAW, "orders", "2025-03-01", days=["2025-02-28", "2025-03-01"]),
            _event_of(zones.RAW, "orders", "2025-03-05", days=["2025-03-05"]),  # another partition: ignored
        ],
        "clean.orders": [_event_of(zones.CLEAN, "orders", "2025-03-01", days=["2025-03-01"])],
    }
    got = partitions.event_extras(events, "propensity://raw/", "2025-03-01")
    assert got == [{"days": ["2025-02-28", "2025-03-01"]}]
    run = steps.Run(date(2025, 3, 1), {}, Settings(home="/nonexistent"))
    assert steps.validation_days(run, events, "2025-03-01") == [date(2025, 2, 28), date(2025, 3, 1)]
    assert steps.validation_days(run, None, None) == [date(2025, 3, 1)]  # a manual run: its own day
    ranged = steps.Run(date(2025, 3, 1), {"start": "2025-02-27"}, run.settings)
    assert steps.validation_days(ranged, events, "2025-03-01") == [
        date(2025, 2, 27) + timedelta(days=i) for i in range(3)
    ]


def test_training_tasks_follow_params_drift_and_the_retraining_weekday() -> None:
    settings = Settings(home="/nonexistent")
    monday = date(2025, 4, 14)
    manual = steps.Run(monday, {"tasks": ["churn", "conversion"]}, settings)
    assert steps.training_tasks(manual, None, None) == (["churn", "conversion"], "manual run")
    with pytest.raises(RequestError, match="unknown task"):
        steps.training_tasks(steps.Run(monday, {"tasks": ["churm"]}, settings), None, None)
    drift = {"drift": [_event_of(zones.DRIFT, None, "2025-04-14", tasks=["churn"])]}
    run = steps.Run(monday, {}, settings)
    assert steps.training_tasks(run, drift, "2025-04-14")[0] == ["churn"]
    features = {"features": [_event_of(zones.FEATURES, None, "2025-04-14", snapshot="2025-04-14")]}
    names, why = steps.training_tasks(run, features, "2025-04-14")  # Monday: everything retrains
    assert names == DEFAULT_TASKS and "retraining weekday" in why
    # the toolkit models follow the same snapshot rule, sit out drift and partial manual runs
    toolkit = ["recommendations", "personas"]
    assert steps.toolkit_models(run, features, "2025-04-14")[0] == toolkit
    assert steps.toolkit_models(run, drift, "2025-04-14")[0] == []
    assert steps.toolkit_models(manual, None, None)[0] == []
    assert steps.toolkit_models(run, None, None) == (toolkit, "manual run")


def test_fail_fast_leaves_ordinary_errors_alone() -> None:
    """A plain ValueError (a library bug) is not a data verdict: it propagates unchanged, so
    Airflow retries it and shows its traceback (FinalError -> AirflowFailException is run below)."""

    @fail_fast
    def task(x: int, params: dict | None = None) -> int:
        if x < 0:
            raise ValueError("bug")
        return x + 1

    assert task(1, params={}) == 2
    with pytest.raises(ValueError, match="bug"):
        task(-1)
    import inspect

    assert list(inspect.signature(task).parameters) == ["x", "params"]  # TaskFlow still sees the context args


def test_shard_groups_and_merge_preconditions() -> None:
    from propensity import scoring

    def rec(task: str, shard: int, version: str = "1") -> dict:
        return {
            "task": task,
            "date": "2025-05-01",
            "shard": shard,
            "shards": 2,
            "model_name": f"propensity-{task}",
            "model_version": version,
            "run_id": f"run-{version}",
        }

    groups = steps.shard_groups([rec("churn", 1), rec("conversion", 0), rec("churn", 0), rec("conversion", 1)])
    assert [(g["name"], g["day"], [r["shard"] for r in g["shards"]]) for g in groups] == [
        ("churn", "2025-05-01", [1, 0]),
        ("conversion", "2025-05-01", [0, 1]),
    ]
    settings, day = Settings(home="/nonexistent"), date(2025, 5, 1)
    with pytest.raises(RequestError, match=r"shards \[0\] scored, expected 0..1"):
        scoring.merge_score_shards(settings, day, "churn", [rec("churn", 0)])
    with pytest.raises(RequestError, match="different champions"):
        scoring.merge_score_shards(settings, day, "churn", [rec("churn", 0), rec("churn", 1, "2")])
    with pytest.raises(RequestError, match="no shard"):
        scoring.merge_score_shards(settings, day, "repurchase", [rec("churn", 0)])


def test_dag_files_are_wiring_only() -> None:
    """No DAG file catches exceptions (fail_fast does, once) or holds stage logic."""
    for path in sorted(DAGS_FOLDER.glob("*.py")):
        tree = ast.parse(path.read_text())
        assert not [n for n in ast.walk(tree) if isinstance(n, ast.Try)], f"{path.name} has a try/except"
        assert len(path.read_text().splitlines()) < 140, f"{path.name} is more than wiring"


# Parsing --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dags_import_with_partitioned_schedules(airflow_env: AirflowEnv) -> None:  # noqa: F811
    report = airflow_env.import_dags()
    assert report["import_errors"] == {}
    files = {str(p) for p in DAGS_FOLDER.glob("*.py") if not p.name.startswith("_")}
    dags = report["dags"]
    assert files <= {d["fileloc"] for d in dags.values()}, "a DAG file defines no DAG"
    for dag_id, dag in dags.items():
        assert dag["catchup"] is False and dag["max_active_runs"] == 1, dag_id
        assert dag["doc_md"] and dag_id in dag["doc_md"], dag_id
        assert all(p["description"] for p in dag["params"].values()), dag_id
        assert dag["params"]["date"]["format"] == "date", dag_id  # a run without a key names its day

    collect_dag = dags["shop_collect"]
    assert collect_dag["timetable"] == "CronPartitionTimetable"
    assert collect_dag["tasks"]["collect"]["outlets"] == [asset_uri(zones.RAW, t) for t in TABLES]
    assert collect_dag["tasks"]["collect"]["retries"] == 3
    assert collect_dag["tasks"]["collect"]["retry_exponential_backoff"] == 2.0

    assert dags["shop_validate"]["timetable"] == "PartitionedAssetTimetable"
    assert dags["shop_validate"]["assets"] == {"type": "AssetAll", "uris": [asset_uri(zones.RAW, t) for t in TABLES]}
    assert dags["build_features"]["assets"] == {"type": "AssetAll", "uris": [asset_uri(zones.CLEAN, t) for t in TABLES]}
    merge = dags["build_features"]["tasks"]["merge_snapshot"]
    assert merge["outlets"] == [
        asset_uri(zones.FEATURES),
        asset_uri(zones.PROFILES),
        *(asset_uri(zones.LABELS, t) for t in DEFAULT_TASKS),
    ]
    assert merge["execution_timeout"] == 4 * 3600
    # scoring waits for train_models to settle the champions of the snapshot (never races training)
    assert dags["score_and_build_audiences"]["assets"] == {"type": "AssetAll", "uris": [asset_uri("champions")]}
    assert dags["train_models"]["tasks"]["champions_ready"]["outlets"] == [asset_uri("champions")]
    assert dags["train_models"]["tasks"]["champions_ready"]["trigger_rule"] == "none_failed"
    assert dags["train_models"]["assets"] == {
        "type": "AssetAny",
        "uris": [asset_uri(zones.FEATURES), asset_uri(zones.DRIFT)],
    }
    assert dags["train_models"]["params"]["tasks"]["items"]["enum"] == DEFAULT_TASKS  # the configured tasks
    assert dags["monitor_drift"]["assets"] == {
        "type": "AssetAll",
        "uris": [asset_uri(zones.SCORES, t) for t in DEFAULT_TASKS],
    }
    score_tasks = dags["score_and_build_audiences"]["tasks"]
    assert score_tasks["merge_scores"]["outlets"] == ["AssetAlias(name='scores', group='scores')"]
    assert score_tasks["build_audiences"]["outlets"] == [asset_uri(zones.AUDIENCES)]
    assert dags["monitor_drift"]["tasks"]["signal_drift"]["outlets"] == [asset_uri(zones.DRIFT)]


# shop_collect ---------------------------------------------------------------------------------


def _rows(contract, rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=contract.arrow_schema)


def _customer(cid: str, updated: datetime) -> dict:
    return {
        "customer_id": cid,
        "signup_time": updated,
        "country": "DE",
        "currency": "EUR",
        "language": "de",
        "acquisition_channel": "organic",
        "email_consent": True,
        "sms_consent": False,
        "push_consent": False,
        "global_opt_out": False,
        "gender": "unknown",
        "age_band": "25-34",
        "created_at": updated,
        "updated_at": updated,
    }


def _order(oid: str, cid: str, updated: datetime, status: str = "paid") -> dict:
    return {
        "order_id": oid,
        "customer_id": cid,
        "order_time": updated,
        "status": status,
        "currency": "EUR",
        "gross_amount": 42.0,
        "discount_amount": 0.0,
        "coupon_code": None,
        "payment_method": "card",
        "created_at": updated,
        "updated_at": updated,
    }


def _event(eid: str, cid: str | None, when: datetime, kind: str = "page_view") -> dict:
    return {
        "event_id": eid,
        "customer_id": cid,
        "session_id": f"s-{cid or 'anon'}",
        "event_time": when,
        "event_type": kind,
        "product_id": None,
        "device": "mobile",
        "traffic_source": "direct",
        "dwell_seconds": 3.5,
    }


def seed_sources(settings: Settings) -> None:
    """A few hand-made rows on DAY in every kind of source, and some on the days around it."""
    db = ShopDB(settings.shop_db_url)
    db.create_schema()
    previous = date(2025, 2, 28)
    db.load(
        "customers",
        _rows(
            CUSTOMERS,
            [
                _customer("c1", ts(DAY, 8)),
                _customer("c2", ts(DAY, 23, 59)),
                _customer("c0", ts(previous, 12)),  # previous day: not in DAY's partition
            ],
        ),
    )
    db.load(
        "orders",
        _rows(
            ORDERS,
            [
                _order("o1", "c1", ts(DAY, 9)),
                _order("o2", "c1", ts(DAY, 10), status="cancelled"),
                _order("o3", "c2", ts(DAY, 23, 59)),
                _order("o4", "c2", ts(NEXT, 0)),  # next day: the interval is half-open
            ],
        ),
    )
    db.dispose()
    landing = open_store(settings.landing_uri)
    day_events = [
        _event("e1", "c1", ts(DAY, 8, 1)),
        _event("e2", "c1", ts(DAY, 8, 2), "product_view"),
        _event("e3", None, ts(DAY, 11)),
        _event("e4", "c2", ts(DAY, 23, 58), "add_to_cart"),
        _event("e5", "c2", ts(DAY, 23, 59), "checkout"),
    ]
    write_events(landing, DAY, _rows(EVENTS, day_events))
    write_events(landing, NEXT, _rows(EVENTS, [_event("e6", "c2", ts(NEXT, 1))]))
    fx = [
        {"date": DAY, "currency": "USD", "base_currency": "EUR", "rate": 0.92},
        {"date": DAY, "currency": "GBP", "base_currency": "EUR", "rate": 1.18},
    ]
    write_fx(open_store(settings.drops_uri), DAY, _rows(FX_RATES, fx))


EXPECTED_DAY_ROWS = {"customers": 2, "orders": 3, "events": 5, "fx_rates": 2}
DAILY_RUN = {"partition_key": DAY.isoformat()}  # what the schedule (or a trigger with a key) creates
# a backfill of two tables in one run: its partition is NEXT, DAY is re-collected as history
BACKFILL_RUN = {"conf": {"date": NEXT.isoformat(), "tables": ["orders", "events"], "start": DAY.isoformat()}}
NO_PARTITION_RUN = {"conf": {}}


@pytest.fixture(scope="module")
def collect_runs(airflow_env: AirflowEnv, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list]:  # noqa: F811
    """Seed the sources under a fresh home, then ``dag.test()`` three ``shop_collect`` runs in one child."""
    home = tmp_path_factory.mktemp("propensity")
    with _fresh_env() as mp:
        mp.setenv("PROPENSITY_HOME", str(home))
        settings = load_settings()
        seed_sources(settings)
    runs = airflow_env.dag_test(
        "shop_collect", [DAILY_RUN, BACKFILL_RUN, NO_PARTITION_RUN], extra_env={"PROPENSITY_HOME": str(home)}, retries=1
    )
    return settings, runs


@pytest.mark.slow
def test_shop_collect_collects_its_partition_day(collect_runs) -> None:
    settings, (run, *_) = collect_runs
    assert run["state"] == "success", run["log"][-5000:]
    assert run["partition_key"] == DAY.isoformat()
    lake = Lake.open(settings.lake_uri)
    for table in TABLES:
        part = lake.read_partition("raw", table, {"dt": DAY.isoformat()})
        assert part is not None, f"raw/{table}/dt={DAY} missing"
        assert part.num_rows == EXPECTED_DAY_ROWS.get(table, 0), table
    assert lake.partitions("raw", "customers") == [{"dt": DAY.isoformat()}]  # one day only
    events = {e["uri"]: e for e in run["asset_events"]}
    assert set(events) == {asset_uri(zones.RAW, t) for t in TABLES}
    assert {e["partition_key"] for e in events.values()} == {DAY.isoformat()}  # downstream runs for DAY
    assert events[asset_uri(zones.RAW, "orders")]["extra"]["days"] == [DAY.isoformat()]
    assert events[asset_uri(zones.RAW, "orders")]["extra"]["rows"] == 3


@pytest.mark.slow
def test_shop_collect_backfills_history_in_one_run(collect_runs) -> None:
    settings, (_, run, _) = collect_runs
    assert run["state"] == "success", run["log"][-5000:]
    lake = Lake.open(settings.lake_uri)
    counts = {
        (table, day): lake.read_partition("raw", table, {"dt": day.isoformat()}).num_rows
        for table in ("orders", "events")
        for day in (DAY, NEXT)
    }
    assert counts == {("orders", DAY): 3, ("orders", NEXT): 1, ("events", DAY): 5, ("events", NEXT): 1}
    assert lake.read_partition("raw", "customers", {"dt": NEXT.isoformat()}) is None  # not selected
    extras = {e["uri"]: e["extra"] for e in run["asset_events"]}
    assert extras[asset_uri(zones.RAW, "orders")]["days"] == [DAY.isoformat(), NEXT.isoformat()]
    assert extras[asset_uri(zones.RAW, "customers")]["days"] == []


@pytest.mark.slow
def test_a_run_without_a_partition_fails_at_once(collect_runs) -> None:
    _, (*_, run) = collect_runs
    assert run["state"] == "failed"
    assert run["tasks"] == {"collect": "failed"}  # not up_for_retry: a final verdict
    assert "RequestError: this run names no partition" in run["log"]
    assert run["asset_events"] == []


# shop_validate --------------------------------------------------------------------------------

VSTART, VDAYS = date(2025, 3, 1), 4
VDATES = [(VSTART + timedelta(days=i)).isoformat() for i in range(VDAYS)]
BAD_DATE = VDATES[2]
DROPPED = "device"


@pytest.fixture(scope="module")
def validate_runs(airflow_env: AirflowEnv, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """A tiny clean shop collected into raw, and a copy whose ``raw/events`` lost a column on
    ``BAD_DATE``; ``shop_validate`` for the last day with the days before as history, on each."""
    good_home, bad_home = tmp_path_factory.mktemp("validate_good"), tmp_path_factory.mktemp("validate_bad")
    with _fresh_env():
        good, bad = load_settings(home=good_home), load_settings(home=bad_home)
    simulate(good, customers=300, days=VDAYS, start=VSTART, seed=1, dirt_cfg=DirtConfig(rate=0))
    collect(good, VSTART, date.fromisoformat(VDATES[-1]))
    shutil.copytree(good.home_dir / "lake", bad.home_dir / "lake")
    lake = Lake.open(bad.lake_uri)
    raw = lake.read_partition("raw", "events", {"dt": BAD_DATE})
    lake.write_partition("raw", "events", {"dt": BAD_DATE}, raw.drop_columns([DROPPED]))
    spec = {"partition_key": VDATES[-1], "conf": {"start": VDATES[0]}}
    ok_run, bad_run = airflow_env.dag_test(
        "shop_validate",
        [
            {**spec, "env": {"PROPENSITY_HOME": str(good_home)}},  # production default: Data Docs on
            {**spec, "env": {"PROPENSITY_HOME": str(bad_home), "PROPENSITY_VALIDATION__DOCS": "false"}},
        ],
        retries=1,  # a critical failure must not retry
    )
    return good, bad, ok_run, bad_run


@pytest.mark.slow
def test_shop_validate_publishes_the_day_and_links_data_docs(validate_runs, airflow_env: AirflowEnv) -> None:  # noqa: F811
    good, _, run, _ = validate_runs
    assert run["state"] == "success", run["log"][-5000:]
    lake = Lake.open(good.lake_uri)
    for table in TABLES:
        for dt in VDATES:
            raw, clean = (lake.read_partition(z, table, {"dt": dt}) for z in ("raw", "clean"))
            assert clean is not None and clean.num_rows == raw.num_rows, (table, dt)
    events = {e["uri"]: e for e in run["asset_events"]}
    assert set(events) == {asset_uri(zones.CLEAN, t) for t in TABLES}
    assert {e["partition_key"] for e in events.values()} == {VDATES[-1]}
    assert events[asset_uri(zones.CLEAN, "orders")]["extra"]["days"] == VDATES
    assert sum(f"orders dt={dt}:" in run["log"] for dt in VDATES) == VDAYS  # one summary line per partition
    [(value,)] = _airflow_rows(
        airflow_env,
        "SELECT value FROM xcom WHERE dag_id = 'shop_validate' AND run_id = ? AND key = 'data_docs'",
        run["run_id"],
    )
    docs = json.loads(value)
    docs = json.loads(docs) if isinstance(docs, str) and docs.startswith('"') else docs
    assert str(docs).startswith("file://") and str(docs).endswith("index.html"), docs


@pytest.mark.slow
def test_a_critical_failure_stops_the_whole_day(validate_runs) -> None:
    _, bad, _, run = validate_runs
    assert run["state"] == "failed", run["log"][-5000:]
    assert run["tasks"] == {"validate": "failed"}  # not up_for_retry: failed for good at once
    log = run["log"]
    assert f"events dt={BAD_DATE}: schema: missing column(s): {DROPPED}" in log
    assert "AirflowFailException" in log and "ValidationFailed" in log
    assert run["asset_events"] == []  # no clean.* event for the day: nothing downstream runs
    lake = Lake.open(bad.lake_uri)
    assert lake.read_partition("clean", "events", {"dt": BAD_DATE}) is None
    assert all(lake.read_partition("clean", "events", {"dt": dt}) is not None for dt in VDATES if dt != BAD_DATE)


# build_features -------------------------------------------------------------------------------

FSTART, FDAYS = date(2025, 1, 1), 110  # 2025-01-01..2025-04-20
FLAST = FSTART + timedelta(days=FDAYS - 1)
DAY_OF_SNAPSHOT = "2025-03-14"  # the run's partition: its snapshot is 2025-03-15
SNAPSHOT = "2025-03-15"
EMPTY_DAY = "2024-11-30"  # before the data: no clean partition of that day
SHARDED_DAY = "2025-03-31"  # snapshot 2025-04-01 built by three mapped shard tasks and merged


@pytest.fixture(scope="module")
def features_runs(airflow_env: AirflowEnv, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """A tiny clean shop in the clean zone; ``build_features`` for a day (partition key), a day
    before the data, a day the clean zone does not reach, and a sharded build."""
    home = tmp_path_factory.mktemp("features")
    with _fresh_env():
        settings = load_settings(home=home)
    simulate(settings, customers=400, days=FDAYS, start=FSTART, seed=3, dirt_cfg=DirtConfig(rate=0))
    collect(settings, FSTART, FLAST)
    quiet = settings.model_copy(update={"validation": settings.validation.model_copy(update={"docs": False})})
    assert not any(o.critical for o in Gate(quiet).validate([FSTART + timedelta(days=i) for i in range(FDAYS)]))
    runs = airflow_env.dag_test(
        "build_features",
        [
            {"partition_key": DAY_OF_SNAPSHOT},
            {"conf": {"date": EMPTY_DAY, "tasks": ["churn"]}},
            {"partition_key": (FLAST + timedelta(days=1)).isoformat()},  # a day with no clean data
            {"partition_key": SHARDED_DAY, "env": {"PROPENSITY_FEATURES__SHARDS": "3"}},
        ],
        extra_env={"PROPENSITY_HOME": str(home)},
        retries=1,
    )
    return settings, runs


@pytest.mark.slow
def test_build_features_publishes_the_snapshot_after_its_day(features_runs) -> None:
    settings, (run, *_) = features_runs
    assert run["state"] == "success", run["log"][-5000:]
    lake = Lake.open(settings.lake_uri)
    features = lake.manifest("features", "", {"snapshot": SNAPSHOT})
    assert features and features["row_count"] > 0 and features["observed_until"] == FLAST.isoformat()
    sharded = (date.fromisoformat(SHARDED_DAY) + timedelta(days=1)).isoformat()
    # the snapshots of the two runs that succeeded, and no other
    assert [p["snapshot"] for p in lake.partitions("features", "")] == [SNAPSHOT, sharded]
    events = {e["uri"]: e for e in run["asset_events"]}
    assert set(events) == {
        asset_uri(zones.FEATURES),
        asset_uri(zones.PROFILES),
        *(asset_uri(zones.LABELS, t) for t in DEFAULT_TASKS),
    }
    assert {e["partition_key"] for e in events.values()} == {SNAPSHOT}  # downstream runs for T = D + 1
    assert events[asset_uri(zones.FEATURES)]["extra"]["rows"] == features["row_count"]
    # data through 2025-04-20: the conversion window [T, T+14 d) is observed, churn's 60 days are not
    assert events[asset_uri(zones.LABELS, "conversion")]["extra"]["complete"] is True
    assert events[asset_uri(zones.LABELS, "churn")]["extra"]["complete"] is False


@pytest.mark.slow
def test_build_features_refuses_what_cannot_be_built(features_runs) -> None:
    settings, (_, empty, beyond, _) = features_runs
    for run, message in (
        (empty, f"RequestError: features for day {EMPTY_DAY}: clean/{{"),  # before the data: no clean day
        (beyond, f"RequestError: features for day {FLAST + timedelta(days=1)}: clean/{{"),
    ):
        assert run["state"] == "failed", run["log"][-5000:]
        assert "up_for_retry" not in run["tasks"].values()
        assert message in run["log"], run["log"][-3000:]
        assert run["asset_events"] == []
    lake = Lake.open(settings.lake_uri)
    assert lake.manifest("features", "", {"snapshot": "2024-12-01"}) is None
    assert lake.manifest("features", "", {"snapshot": (FLAST + timedelta(days=2)).isoformat()}) is None


@pytest.mark.slow
def test_build_features_sharded_equals_unsharded(features_runs) -> None:
    import polars as pl

    from propensity.features.snapshot import SnapshotBuilder

    settings, (*_, run) = features_runs
    assert run["state"] == "success", run["log"][-5000:]
    assert run["log"].count("[DAG TEST] starting task_id=build_snapshot") == 3
    snapshot = (date.fromisoformat(SHARDED_DAY) + timedelta(days=1)).isoformat()
    lake = Lake.open(settings.lake_uri)
    whole = SnapshotBuilder(settings).build(date.fromisoformat(snapshot))
    part = {"snapshot": snapshot}
    assert pl.from_arrow(lake.read_partition("features", "", part)).equals(whole.features)
    assert pl.from_arrow(lake.read_partition("profiles", "", part)).equals(whole.profiles)
    for task, lab in whole.labels.items():
        assert pl.from_arrow(lake.read_partition("labels", "", {"task": task, **part})).equals(lab), task
    assert not lake.store.list("features/_shards/") and not lake.store.list("labels/_shards/")
    assert not lake.store.list("profiles/_shards/")


def _airflow_rows(airflow_env: AirflowEnv, query: str, *args: Any) -> list[tuple]:  # noqa: F811
    with sqlite3.connect(airflow_env.home / "airflow.db") as db:
        return db.execute(query, args).fetchall()


def _xcoms(airflow_env: AirflowEnv, dag_id: str, run_id: str, task_id: str, key: str) -> dict[int, Any]:  # noqa: F811
    rows = _airflow_rows(
        airflow_env,
        "SELECT map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = ?",
        dag_id,
        run_id,
        task_id,
        key,
    )
    out = {}
    for index, value in rows:
        doc = json.loads(value)
        out[index] = json.loads(doc) if isinstance(doc, str) else doc
    return out


# train_models and score_and_build_audiences on configured tasks ---------------------------------

SCORE_DAY = date(2025, 5, 1)  # inside the shared clean shop's 150 days (2025-01-01..2025-05-30)
DRY_DAY = date(2025, 5, 8)
STALE_DAY = date(2025, 6, 5)  # six days after the last observed day: refused
SCORE_SHARDS = 2
WINBACK = {"horizon_days": 30, "label": "purchase", "no_purchase_days": 45, "description": "lapsed for 45 days"}
# order-only style configuration: conversion dropped, a task added in YAML (the README's recipe)
SCORE_CONF = {
    "validation": {"docs": False},
    "tasks": {"conversion": None, "churn": {"horizon_days": 30}, "clv": {"horizon_days": 30}, "winback90": WINBACK},
    "features": {"training_span_days": 42, "min_history_days": 30},
    "models": {"max_rounds": 150, "early_stopping_rounds": 20, "num_leaves": 15},
    "audiences": {"salt": "test-salt", "control_fraction": 0.2},
    "scoring": {"shards": SCORE_SHARDS},
}
CONFIGURED = ["repurchase", "churn", "clv", "winback90"]
AUDIENCES_YAML = {
    "audiences": [
        {
            "name": "win-back",
            "priority": 1,
            "task": "winback90",
            "rule": "winback90_decile >= 6",
            "rank": "score",
            "max_size": 500,
            "channels": ["email", "sms", "push"],
            "offer": {"code": "WB", "description": "welcome back", "cost": 1.0},
        },
        {
            "name": "cross-sell",
            "priority": 2,
            "task": "repurchase",
            "rule": "repurchase_decile >= 7",
            "rank": "score",
            "max_size": 500,
            "channels": ["email", "push"],
            "offer": {"code": "XS", "description": "bundle", "cost": 1.0},
        },
    ]
}


@pytest.fixture(scope="module")
def scoring_shop(clean_zone, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Any]:
    """A copy of the shared clean zone and a YAML configuration the Airflow child reads too."""
    import yaml

    home = tmp_path_factory.mktemp("scoring_shop")
    shutil.copytree(clean_zone.home_dir / "lake" / "clean", home / "lake" / "clean")
    (home / "audiences.yaml").write_text(yaml.safe_dump(AUDIENCES_YAML))
    conf = home / "conf.yaml"
    doc = {
        "home": str(home),
        **SCORE_CONF,
        "audiences": {**SCORE_CONF["audiences"], "file": str(home / "audiences.yaml")},
    }
    conf.write_text(yaml.safe_dump(doc))
    with _fresh_env() as mp:
        mp.setenv("PROPENSITY_CONFIG", str(conf))  # load_settings(conf) would export it for the whole session
        settings = Settings()
    assert list(settings.tasks) == CONFIGURED
    return settings, conf


@pytest.fixture(scope="module")
def scoring_runs(airflow_env: AirflowEnv, scoring_shop) -> tuple[Settings, dict[str, list]]:  # noqa: F811
    """``train_models`` twice on the same data (the second must register nothing), then
    ``score_and_build_audiences`` for SCORE_DAY (partition key), a dry run of one audience at
    DRY_DAY, and a run for a stale snapshot."""
    settings, conf = scoring_shop
    env = {"PROPENSITY_CONFIG": str(conf)}
    train = [{"conf": {"date": SCORE_DAY.isoformat()}}, {"conf": {"date": SCORE_DAY.isoformat()}}]
    trained = airflow_env.dag_test("train_models", train, extra_env=env, timeout=900)
    scored = airflow_env.dag_test(
        "score_and_build_audiences",
        [
            {"partition_key": SCORE_DAY.isoformat()},
            {"conf": {"date": DRY_DAY.isoformat(), "audiences": ["win-back"], "dry_run": True}},
            {"partition_key": STALE_DAY.isoformat()},
        ],
        extra_env=env,
        retries=1,
        timeout=600,
    )
    return settings, {"train": trained, "score": scored}


@pytest.mark.slow
def test_configured_tasks_are_trained_once_and_registered(scoring_runs, airflow_env: AirflowEnv) -> None:  # noqa: F811
    from mlflow import MlflowClient

    settings, runs = scoring_runs
    first, second = runs["train"]
    assert first["state"] == "success", first["log"][-5000:]
    instances = _airflow_rows(
        airflow_env,
        "SELECT map_index, rendered_map_index, pool FROM task_instance WHERE dag_id = 'train_models' "
        "AND run_id = ? AND task_id = 'train' ORDER BY map_index",
        first["run_id"],
    )
    assert [name for _, name, _ in instances] == CONFIGURED  # the configured tasks, the YAML one included
    assert {pool for *_, pool in instances} == {HEAVY_POOL}
    client = MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)
    xcoms = _xcoms(airflow_env, "train_models", first["run_id"], "train", MLFLOW_XCOM_KEY)
    for index, task in enumerate(CONFIGURED):
        ml = xcoms[index]
        assert (ml["model_name"], ml["model_version"], ml["promoted"]) == (f"propensity-{task}", "1", True)
        assert str(client.get_model_version_by_alias(f"propensity-{task}", "champion").version) == "1"
    events = {e["uri"]: e for e in first["asset_events"]}
    assert set(events) == {asset_uri("models", t) for t in CONFIGURED}
    # a manual run of every task trains the toolkit models beside them
    toolkit = _airflow_rows(
        airflow_env,
        "SELECT rendered_map_index, state FROM task_instance WHERE dag_id = 'train_models' "
        "AND run_id = ? AND task_id = 'train_toolkit' ORDER BY map_index",
        first["run_id"],
    )
    assert toolkit == [("recommendations", "success"), ("personas", "success")], toolkit
    for name in ("propensity-recommendations", "propensity-personas"):
        assert client.get_model_version_by_alias(name, "champion").version
    # the same data and parameters again: logged as unchanged, no new version, the champion stays
    assert second["state"] == "success", second["log"][-5000:]
    for task in CONFIGURED:
        versions = client.search_model_versions(f"name = 'propensity-{task}'")
        assert [str(v.version) for v in versions] == ["1"], (task, [v.version for v in versions])
    assert "unchanged" in second["log"]
    assert second["asset_events"] == []  # the served models did not change


@pytest.mark.slow
def test_score_and_build_audiences_scores_every_configured_task(scoring_runs, airflow_env: AirflowEnv) -> None:  # noqa: F811
    from propensity.audiences.sets import read_export_set
    from propensity.scoring import read_scores

    settings, runs = scoring_runs
    run = runs["score"][0]
    assert run["state"] == "success", run["log"][-5000:]
    day = SCORE_DAY.isoformat()
    lake = Lake.open(settings.lake_uri)
    names = _airflow_rows(
        airflow_env,
        "SELECT rendered_map_index FROM task_instance WHERE dag_id = 'score_and_build_audiences' AND run_id = ? "
        "AND task_id = 'score' ORDER BY map_index",
        run["run_id"],
    )
    assert [n for (n,) in names] == [f"{t} shard {i}" for t in CONFIGURED for i in range(SCORE_SHARDS)]
    events = {e["uri"]: e for e in run["asset_events"]}
    for task in CONFIGURED:
        population = lake.manifest("labels", "", {"task": task, "snapshot": day})["row_count"]
        scores = read_scores(settings, task, SCORE_DAY)
        upper = float("inf") if settings.tasks[task].is_value else 1.0  # clv: expected revenue
        assert scores.height == population > 0 and scores["score"].is_between(0, upper).all()
        assert settings.tasks[task].is_value == (scores["score"].max() > 1)
        assert events[asset_uri(zones.SCORES, task)]["partition_key"] == day
        assert events[asset_uri(zones.SCORES, task)]["extra"]["rows"] == population
    assert lake.manifest("scores", "", {"task": "conversion", "dt": day}) is None  # dropped by configuration
    assert not lake.store.list("scores/_shards/")
    audience_event = events[asset_uri(zones.AUDIENCES)]
    assert audience_event["partition_key"] == day and audience_event["extra"]["published"] is True
    store = open_store(settings.export_uri)
    exports = read_export_set(store, day)["exports"]
    for name in ("win-back", "cross-sell"):
        export = exports[name]
        assert export["counts"]["treatment"] == audience_event["extra"]["audiences"][name]["treatment"], name
    win_back = [r for r in lake.read_partition("audiences", "", {"dt": day}).to_pylist() if r["audience"] == "win-back"]
    assert any(r["reason_1"] for r in win_back if r["group"] == "treatment"), "reason codes from the scoring model"
    assert any(f"audiences dt={day} (2 export(s) published):" in ln for ln in run["log"].splitlines())


@pytest.mark.slow
def test_dry_run_and_stale_snapshot_publish_nothing(scoring_runs) -> None:
    settings, runs = scoring_runs
    _, dry, stale = runs["score"]
    lake = Lake.open(settings.lake_uri)
    assert dry["state"] == "success", dry["log"][-5000:]
    assert not [p for p in lake.partitions("audiences", "") if p["dt"] == DRY_DAY.isoformat()]
    assert not [k for k in open_store(settings.export_uri).list("") if f"dt={DRY_DAY}" in k]
    assert f"audiences dt={DRY_DAY} (dry run, nothing published):" in dry["log"]

    assert stale["state"] == "failed", stale["log"][-5000:]
    assert stale["tasks"]["prepare_scoring"] == "failed"
    assert (
        f"StaleSnapshotError: scores {STALE_DAY}: snapshot {STALE_DAY} is 6 days after the last observed day"
        in (stale["log"])
    )
    assert stale["asset_events"] == []
    assert lake.manifest("features", "", {"snapshot": STALE_DAY.isoformat()}) is None  # not even built
    assert not [p for p in lake.partitions("scores", "") if p["dt"] == STALE_DAY.isoformat()]
    assert not [k for k in open_store(settings.export_uri).list("") if f"dt={STALE_DAY}" in k]


# monitor_drift --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def monitor_runs(airflow_env: AirflowEnv, tmp_path_factory: pytest.TempPathFactory):  # noqa: F811
    """Champions trained on the drill's stable shop before its shift day, then ``monitor_drift``
    for the current snapshot on the stable and on the shifted shop (same seed and dates)."""
    from test_drift import CURRENT, DRILL_FEATURES, SHIFT_DAY, drill_shops

    # private copies: training and monitoring write to the lake, which the drift tests read
    drill = drill_shops(tmp_path_factory)
    shops = {name: copy_shop(shop, tmp_path_factory.mktemp(f"drill_{name}")) for name, shop in drill.items()}
    mlflow_dir = tmp_path_factory.mktemp("drill_mlflow")
    env = {
        "PROPENSITY_MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_dir}/mlflow.db",
        "PROPENSITY_MLFLOW_ARTIFACTS": str(mlflow_dir / "artifacts"),
        "PROPENSITY_MODELS__MAX_ROUNDS": "200",
        "PROPENSITY_MODELS__EARLY_STOPPING_ROUNDS": "20",
        **{f"PROPENSITY_FEATURES__{k.upper()}": str(v) for k, v in DRILL_FEATURES.items()},
    }
    train = {"conf": {"date": SHIFT_DAY.isoformat(), "tasks": ["conversion", "repurchase"]}}
    [trained] = airflow_env.dag_test(
        "train_models", [train], extra_env={"PROPENSITY_HOME": str(shops["stable"].home_dir), **env}, timeout=600
    )
    assert trained["state"] == "success", trained["log"][-5000:]
    key = CURRENT.isoformat()
    runs = airflow_env.dag_test(
        "monitor_drift",
        [
            {"partition_key": key, "env": {"PROPENSITY_HOME": str(shops["stable"].home_dir)}},
            {"partition_key": key, "env": {"PROPENSITY_HOME": str(shops["shifted"].home_dir)}},
        ],
        extra_env=env,
    )
    return shops, CURRENT, runs


@pytest.mark.slow
def test_monitor_drift_is_quiet_on_a_stable_shop(monitor_runs) -> None:
    shops, current, (run, _) = monitor_runs
    assert run["state"] == "success", run["log"][-5000:]
    assert run["tasks"] == {"compute_drift": "success", "signal_drift": "skipped"}
    assert run["asset_events"] == []
    report = Lake.open(shops["stable"].lake_uri).read_json(f"drift/dt={current}/report.json")
    assert report["snapshot"] == current.isoformat() and report["breach"] is False
    assert report["skipped"] == {"churn": "propensity-churn has no champion", "clv": "propensity-clv has no champion"}
    assert f"drift conversion snapshot {current}: ok" in run["log"]


@pytest.mark.slow
def test_monitor_drift_signals_a_breach_for_its_snapshot(monitor_runs) -> None:
    shops, current, (_, run) = monitor_runs
    assert run["state"] == "success", run["log"][-5000:]
    [event] = run["asset_events"]
    assert event["uri"] == asset_uri(zones.DRIFT) and event["partition_key"] == current.isoformat()
    assert event["extra"]["tasks"] == ["conversion", "repurchase"]
    report = Lake.open(shops["shifted"].lake_uri).read_json(event["extra"]["report"])
    assert report["breach"] is True and "app_share_30d" in report["tasks"]["conversion"]["drifted"]
