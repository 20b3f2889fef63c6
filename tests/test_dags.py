"""The DAGs in ``dags/``: they import cleanly under Airflow, and ``shop_collect``,
``shop_validate`` and ``build_features`` really run.

Airflow work happens in child processes with a throwaway ``AIRFLOW_HOME`` (see
``airflow_env.py``); seeding the sources and checking the lake happen here, with the
library only.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pytest
from airflow_env import DAGS_FOLDER, AirflowEnv, airflow_env  # noqa: F401  (fixture)

from propensity.collect import collect
from propensity.config import DirtConfig, Settings, load_settings
from propensity.contracts import CUSTOMERS, EVENTS, FX_RATES, ORDERS, TABLES
from propensity.lake import Lake
from propensity.orchestration import (
    SNAPSHOT_TASKS,
    SnapshotRequestError,
    clean_asset_name,
    clean_asset_uri,
    dates_from_asset_events,
    features_asset_name,
    features_asset_uri,
    interval_days,
    io_task_args,
    labels_asset_name,
    labels_asset_uri,
    profiles_asset_name,
    profiles_asset_uri,
    raw_asset_name,
    raw_asset_uri,
    run_days,
    selected_snapshot_tasks,
    selected_tables,
    snapshot_dates_for_run,
    snapshot_extras,
    summarize,
    validation_days,
    validation_extra,
)
from propensity.simulate import simulate
from propensity.sources.landing import write_events, write_fx
from propensity.sources.oltp import ShopDB
from propensity.storage import open_store
from propensity.validation import Gate

DAY = date(2025, 3, 1)
NEXT = date(2025, 3, 2)


def ts(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


# Helpers (no Airflow) ---------------------------------------------------------------------


def test_asset_names_are_stable_and_validated() -> None:
    assert raw_asset_uri("orders") == "propensity://raw/orders"
    assert raw_asset_name("orders") == "raw.orders"
    with pytest.raises(KeyError, match="unknown table"):
        raw_asset_uri("nope")


def test_clean_asset_names() -> None:
    assert clean_asset_uri("orders") == "propensity://clean/orders"
    assert clean_asset_name("orders") == "clean.orders"
    with pytest.raises(KeyError, match="unknown table"):
        clean_asset_name("nope")


def test_snapshot_asset_names() -> None:
    # Airflow normalises an empty URI path to "/": the helpers return the form events report
    assert (features_asset_name(), features_asset_uri()) == ("features", "propensity://features/")
    assert (profiles_asset_name(), profiles_asset_uri()) == ("profiles", "propensity://profiles/")
    assert (labels_asset_name("churn"), labels_asset_uri("churn")) == ("labels.churn", "propensity://labels/churn")
    assert SNAPSHOT_TASKS == ("conversion", "repurchase", "churn")
    with pytest.raises(ValueError, match="invalid task name"):
        labels_asset_uri("a/b")


def _raw_event(table: str, dates: list[str] | None, **extra: Any) -> SimpleNamespace:
    """Shaped like Airflow's ``AssetEventDagRunReferenceResult`` (``.asset.uri``, ``.extra``)."""
    extra = {**extra, "dates": dates} if dates is not None else extra
    return SimpleNamespace(asset=SimpleNamespace(name=raw_asset_name(table), uri=raw_asset_uri(table)), extra=extra)


def test_dates_from_asset_events() -> None:
    # the context's triggering_asset_events: asset -> its events since the previous run
    events = {
        "raw.orders": [_raw_event("orders", ["2025-03-02"]), _raw_event("orders", ["2025-03-01", "2025-03-02"])],
        "raw.events": [_raw_event("events", ["2025-03-03"], rows=5)],
        "raw.customers": [_raw_event("customers", None)],  # made by hand in the UI: no dates
        "other": [
            SimpleNamespace(asset=SimpleNamespace(uri="propensity://clean/orders"), extra={"dates": ["2025-01-01"]})
        ],
    }
    assert dates_from_asset_events(events) == ["2025-03-01", "2025-03-02", "2025-03-03"]
    assert dates_from_asset_events(events, "orders") == ["2025-03-01", "2025-03-02"]
    assert dates_from_asset_events(events, "customers") == []
    # a flat iterable of events, or plain dicts, work too; nothing in, nothing out
    flat = [{"asset": {"uri": raw_asset_uri("fx_rates")}, "extra": {"dates": ["2025-03-04"]}}]
    assert dates_from_asset_events(flat) == ["2025-03-04"]
    assert dates_from_asset_events(None) == dates_from_asset_events({}) == []


def test_validation_days_precedence() -> None:
    events = {"raw.orders": [_raw_event("orders", ["2025-03-02", "2025-03-01"])]}
    assert validation_days("orders", triggering_asset_events=events) == ["2025-03-01", "2025-03-02"]
    assert validation_days("events", triggering_asset_events=events) == []  # triggered, but not by events
    assert validation_days("orders", start="2025-02-27", end="2025-02-28", triggering_asset_events=events) == [
        "2025-02-27",
        "2025-02-28",
    ]
    # manual run: no params, no events -> yesterday
    assert validation_days("orders", triggering_asset_events={}, run_after=ts(NEXT, 9)) == [DAY.isoformat()]


def _clean_event(table: str, dates: list[str] | None) -> SimpleNamespace:
    extra = {"dates": dates, "rows_clean": 1, "rows_quarantined": 0} if dates is not None else {}
    return SimpleNamespace(asset=SimpleNamespace(name=clean_asset_name(table), uri=clean_asset_uri(table)), extra=extra)


def test_snapshot_dates_for_run_precedence() -> None:
    events = {
        "clean.orders": [_clean_event("orders", ["2025-03-01"]), _clean_event("orders", ["2025-03-03", "2025-03-02"])],
        "clean.events": [_clean_event("events", ["2025-03-02"])],
        "raw.orders": [_raw_event("orders", ["2025-03-09"])],  # not a clean event: ignored
    }
    assert dates_from_asset_events(events, zone="clean") == ["2025-03-01", "2025-03-02", "2025-03-03"]
    assert dates_from_asset_events(events, "events", zone="clean") == ["2025-03-02"]
    # a snapshot at T uses data < T: after validating 2025-03-03 the newest snapshot is 2025-03-04
    assert snapshot_dates_for_run(triggering_asset_events=events, run_after=ts(date(2025, 3, 9), 1)) == ["2025-03-04"]
    # the param wins
    assert snapshot_dates_for_run(snapshot="2025-02-01", triggering_asset_events=events) == ["2025-02-01"]
    assert snapshot_dates_for_run(snapshot=date(2025, 2, 1)) == ["2025-02-01"]
    # manual run (or events without dates): the day after yesterday, i.e. today in UTC
    assert snapshot_dates_for_run(triggering_asset_events={}, run_after=ts(NEXT, 9)) == [NEXT.isoformat()]
    undated = {"clean.orders": [_clean_event("orders", None)]}
    assert snapshot_dates_for_run(triggering_asset_events=undated, run_after=ts(NEXT, 0)) == [NEXT.isoformat()]
    with pytest.raises(ValueError, match="cannot tell"):
        snapshot_dates_for_run()


def test_snapshot_tasks_and_extras() -> None:
    settings = Settings(home="/nonexistent")
    assert selected_snapshot_tasks(settings) == list(settings.tasks) == selected_snapshot_tasks(settings, [])
    assert selected_snapshot_tasks(settings, ["churn", "churn"]) == ["churn"]
    with pytest.raises(SnapshotRequestError, match="unknown task"):
        selected_snapshot_tasks(settings, ["churm"])

    def record(day: str, complete: bool) -> dict:
        return {
            "snapshot": day,
            "customers": 10,
            "profiles": 10,
            "labels": {"churn": {"rows": 4, "complete": complete}},
        }

    extras = snapshot_extras([record("2025-03-15", False), record("2025-03-01", True)], "file:///lake")
    assert set(extras) == {"features", "profiles", *(labels_asset_name(t) for t in SNAPSHOT_TASKS)}
    assert extras["features"] == {"lake": "file:///lake", "dates": ["2025-03-01", "2025-03-15"], "rows": 20}
    assert extras["labels.churn"] == {
        "lake": "file:///lake",
        "task": "churn",
        "dates": ["2025-03-01", "2025-03-15"],
        "rows": 8,
        "complete": ["2025-03-01"],
    }
    assert extras["labels.conversion"]["dates"] == []  # not built: every outlet still gets an event


def test_validation_extra() -> None:
    def outcome(dt: str, clean: int, bad: int, published: bool = True) -> SimpleNamespace:
        return SimpleNamespace(dt=dt, rows_clean=clean, rows_quarantined=bad, published=published)

    outcomes = [outcome("2025-03-02", 5, 1), outcome("2025-03-01", 3, 0), outcome("2025-03-03", 0, 0, False)]
    assert validation_extra(outcomes) == {"dates": ["2025-03-01", "2025-03-02"], "rows_clean": 8, "rows_quarantined": 1}


def test_interval_days() -> None:
    assert interval_days(ts(DAY, 0), ts(NEXT, 0)) == [DAY]
    assert interval_days(ts(DAY, 0), ts(date(2025, 3, 4), 0)) == [DAY, NEXT, date(2025, 3, 3)]
    assert interval_days(ts(DAY, 6), ts(NEXT, 6)) == [DAY, NEXT]  # days overlapping the interval
    assert interval_days(ts(DAY, 0), ts(DAY, 0)) == []  # zero-length (trigger timetable)
    assert interval_days(datetime(2025, 3, 1), datetime(2025, 3, 2)) == [DAY]  # naive = UTC


def test_run_days_precedence() -> None:
    interval = {"data_interval_start": ts(DAY, 0), "data_interval_end": ts(NEXT, 0)}
    assert run_days(**interval) == [DAY]
    assert run_days(start="2025-02-27", end="2025-02-28", **interval) == [date(2025, 2, 27), date(2025, 2, 28)]
    assert run_days(start="2025-02-27", **interval) == [date(2025, 2, 27)]
    assert run_days(end="2025-02-27") == [date(2025, 2, 27)]
    # manual run without logical date: no data interval -> yesterday relative to run_after
    assert run_days(run_after=ts(NEXT, 9, 30)) == [DAY]
    with pytest.raises(ValueError, match="before start"):
        run_days(start="2025-03-02", end="2025-03-01")
    with pytest.raises(ValueError, match="cannot tell"):
        run_days()


def test_selected_tables_and_summary() -> None:
    assert selected_tables(None) == list(TABLES) == selected_tables([])
    assert selected_tables(["orders", "events", "orders"]) == ["orders", "events"]
    with pytest.raises(KeyError):
        selected_tables(["orderz"])
    results = [[{"table": "orders", "row_count": 2}, {"table": "orders", "row_count": 1}], None]
    assert summarize(results) == {"orders": {"partitions": 2, "rows": 3}}
    args = io_task_args()
    assert args["retries"] > 0 and args["retry_exponential_backoff"] == 2.0


# DAG import -------------------------------------------------------------------------------


@pytest.mark.slow
def test_dags_import_without_errors(airflow_env: AirflowEnv) -> None:  # noqa: F811
    report = airflow_env.import_dags()
    assert report["import_errors"] == {}
    files = {str(p) for p in DAGS_FOLDER.glob("*.py") if not p.name.startswith("_")}
    assert files <= {d["fileloc"] for d in report["dags"].values()}, "a DAG file defines no DAG"

    dag = report["dags"]["shop_collect"]
    assert (dag["timetable"], dag["schedule"], dag["timezone"]) == ("CronDataIntervalTimetable", "0 0 * * *", "UTC")
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1
    assert {"propensity", "collect"} <= set(dag["tags"])
    assert dag["doc_md"] and "shop_collect" in dag["doc_md"]
    assert set(dag["params"]) == {"tables", "start", "end"}
    assert all(p["description"] for p in dag["params"].values())
    assert dag["params"]["start"]["format"] == "date"

    tasks = dag["tasks"]
    assert set(tasks) == {f"collect_{t}" for t in TABLES} | {"summary"}
    for table in TABLES:
        task = tasks[f"collect_{table}"]
        assert task["outlets"] == [raw_asset_uri(table)]
        assert task["retries"] == 3 and task["retry_exponential_backoff"] == 2.0
        assert task["execution_timeout"]
    assert tasks["summary"]["trigger_rule"] == "none_failed"


@pytest.mark.slow
def test_shop_validate_dag_is_asset_scheduled(airflow_env: AirflowEnv) -> None:  # noqa: F811
    report = airflow_env.import_dags()
    assert report["import_errors"] == {}
    dag = report["dags"]["shop_validate"]
    # schedule=[...]: an AssetAll over every raw table, so one run per collection
    assert dag["timetable"] == "AssetTriggeredTimetable"
    assert dag["assets"] == {"type": "AssetAll", "uris": [raw_asset_uri(t) for t in TABLES]}
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1
    assert {"propensity", "validate"} <= set(dag["tags"])
    assert dag["doc_md"] and "shop_validate" in dag["doc_md"] and "AssetAny" in dag["doc_md"]
    assert set(dag["params"]) == {"tables", "start", "end"}
    assert all(p["description"] for p in dag["params"].values())
    assert dag["params"]["start"]["format"] == dag["params"]["end"]["format"] == "date"

    tasks = dag["tasks"]
    assert set(tasks) == {f"validate_{t}" for t in TABLES}
    for table in TABLES:
        task = tasks[f"validate_{table}"]
        assert task["outlets"] == [clean_asset_uri(table)]
        assert task["retries"] == 3 and task["retry_exponential_backoff"] == 2.0


@pytest.mark.slow
def test_build_features_dag_is_scheduled_on_clean_assets(airflow_env: AirflowEnv) -> None:  # noqa: F811
    report = airflow_env.import_dags()
    assert report["import_errors"] == {}
    dag = report["dags"]["build_features"]
    # schedule=[...]: an AssetAll over every clean table, so one run per validate run
    assert dag["timetable"] == "AssetTriggeredTimetable"
    assert dag["assets"] == {"type": "AssetAll", "uris": [clean_asset_uri(t) for t in TABLES]}
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1
    assert {"propensity", "features"} <= set(dag["tags"])
    assert dag["doc_md"] and "build_features" in dag["doc_md"] and "AssetAny" in dag["doc_md"]
    params = dag["params"]
    assert set(params) == {"snapshot", "tasks", "plan"}
    assert all(p["description"] for p in params.values())
    assert params["snapshot"]["format"] == "date"
    assert params["tasks"]["items"]["enum"] == list(SNAPSHOT_TASKS)
    assert params["plan"]["type"] == "boolean"

    tasks = dag["tasks"]
    assert set(tasks) == {"shards", "build_snapshots", "merge_snapshots", "summary"}
    build, merge = tasks["build_snapshots"], tasks["merge_snapshots"]
    assert merge["outlets"] == [
        features_asset_uri(),
        profiles_asset_uri(),
        *(labels_asset_uri(t) for t in SNAPSHOT_TASKS),
    ]
    assert build["outlets"] == [] and tasks["summary"]["outlets"] == []
    for t in (build, merge):
        assert t["retries"] == 3 and t["retry_exponential_backoff"] == 2.0
        assert t["execution_timeout"] == 4 * 3600


# A real run -------------------------------------------------------------------------------


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
# A daily data-interval timetable infers [D, D+1) for a manual run at D+1 00:00, so the run
# that collects DAY has logical date NEXT (like the scheduled run for DAY).
DAILY_RUN = {"logical_date": f"{NEXT}T00:00:00+00:00"}
# A manual backfill from the trigger form: explicit dates win over a far-away interval,
# and only the selected tables run.
BACKFILL_RUN = {
    "logical_date": "2025-06-01T00:00:00+00:00",
    "conf": {"tables": ["orders", "events"], "start": str(DAY), "end": str(NEXT)},
}


@pytest.fixture(scope="module")
def collect_runs(
    airflow_env: AirflowEnv,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Settings, dict[str, Any], dict[str, Any]]:
    """Seed the sources under a fresh PROPENSITY_HOME, then ``dag.test()`` the daily run and
    the backfill run of ``shop_collect``, one after the other in one Airflow child process."""
    home = tmp_path_factory.mktemp("propensity")
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("PROPENSITY_")]:
            mp.delenv(key)
        mp.setenv("PROPENSITY_HOME", str(home))
        settings = load_settings()
        seed_sources(settings)
    daily, backfill = airflow_env.dag_test(
        "shop_collect", [DAILY_RUN, BACKFILL_RUN], extra_env={"PROPENSITY_HOME": str(home)}
    )
    return settings, daily, backfill


@pytest.mark.slow
def test_shop_collect_daily_run(collect_runs: tuple[Settings, dict[str, Any], dict[str, Any]]) -> None:
    settings, run, _ = collect_runs
    assert run["state"] == "success", run["log"][-5000:]
    assert run["data_interval"][0].startswith(str(DAY)) and run["data_interval"][1].startswith(str(NEXT))
    assert set(run["tasks"].values()) == {"success"}, run["tasks"]

    lake = Lake.open(settings.lake_uri)
    for table in TABLES:
        part = lake.read_partition("raw", table, {"dt": DAY.isoformat()})
        assert part is not None, f"raw/{table}/dt={DAY} missing"
        assert part.num_rows == EXPECTED_DAY_ROWS.get(table, 0), table
        assert part.schema == TABLES[table].arrow_schema
    customers = lake.read_partition("raw", "customers", {"dt": DAY.isoformat()})
    assert sorted(customers.column("customer_id").to_pylist()) == ["c1", "c2"]
    assert lake.partitions("raw", "customers") == [{"dt": DAY.isoformat()}]  # one day only

    events = {e["uri"]: e["extra"] for e in run["asset_events"]}
    assert set(events) == {raw_asset_uri(t) for t in TABLES}
    assert events[raw_asset_uri("orders")]["rows"] == 3
    assert events[raw_asset_uri("orders")]["dates"] == [DAY.isoformat()]
    assert "collected orders: 3 rows over 1 day(s)" in run["log"]
    summary = [ln for ln in run["log"].splitlines() if "partition(s)" in ln]
    assert len(summary) == len(TABLES) and any(
        ln.split()[3:7] == ["orders", "1", "partition(s)", "3"] for ln in summary
    )


@pytest.mark.slow
def test_shop_collect_params_backfill(collect_runs: tuple[Settings, dict[str, Any], dict[str, Any]]) -> None:
    settings, _, run = collect_runs
    assert run["state"] == "success", run["log"][-5000:]
    states = dict(run["tasks"])
    assert states.pop("collect_orders") == states.pop("collect_events") == states.pop("summary") == "success"
    assert set(states.values()) == {"skipped"}

    lake = Lake.open(settings.lake_uri)
    counts = {
        (table, day): lake.read_partition("raw", table, {"dt": day.isoformat()}).num_rows
        for table in ("orders", "events")
        for day in (DAY, NEXT)
    }
    # DAY re-collected (idempotent: same counts), NEXT added
    assert counts == {("orders", DAY): 3, ("orders", NEXT): 1, ("events", DAY): 5, ("events", NEXT): 1}
    assert lake.read_partition("raw", "customers", {"dt": NEXT.isoformat()}) is None  # skipped
    assert {e["uri"] for e in run["asset_events"]} == {raw_asset_uri("orders"), raw_asset_uri("events")}
    assert "collected orders: 4 rows over 2 day(s) 2025-03-01..2025-03-02" in run["log"]
    summary = [ln for ln in run["log"].splitlines() if "partition(s)" in ln]
    assert [ln.split()[3:5] for ln in summary] == [["orders", "2"], ["events", "2"]], summary
    assert "XCom not found" not in run["log"]  # the summary only pulls the tables that ran


# shop_validate ----------------------------------------------------------------------------

VSTART, VDAYS = date(2025, 3, 1), 4
VDATES = [(VSTART + timedelta(days=i)).isoformat() for i in range(VDAYS)]
BAD_DATE = VDATES[2]
DROPPED = "device"
VALIDATE_CONF = {"start": VDATES[0], "end": VDATES[-1]}


@pytest.fixture(scope="module")
def validate_runs(
    airflow_env: AirflowEnv,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Settings, Settings, dict[str, Any], dict[str, Any]]:
    """A tiny clean shop collected into raw, and a copy whose ``raw/events`` lost a column on
    ``BAD_DATE``; ``shop_validate`` runs (params start/end) on each, in one Airflow child:
    the runs differ only in their ``PROPENSITY_HOME``."""
    good_home, bad_home = tmp_path_factory.mktemp("validate_good"), tmp_path_factory.mktemp("validate_bad")
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("PROPENSITY_")]:
            mp.delenv(key)
        good = load_settings(home=good_home)
        bad = load_settings(home=bad_home)
    simulate(good, customers=300, days=VDAYS, start=VSTART, seed=1, dirt_cfg=DirtConfig(rate=0))
    collect(good, VSTART, date.fromisoformat(VDATES[-1]))
    shutil.copytree(good.home_dir / "lake", bad.home_dir / "lake")
    lake = Lake.open(bad.lake_uri)
    raw = lake.read_partition("raw", "events", {"dt": BAD_DATE})
    lake.write_partition("raw", "events", {"dt": BAD_DATE}, raw.drop_columns([DROPPED]))

    # The first run keeps the production default (GX file project and Data Docs under
    # <home>/gx); the second skips Data Docs, which halves its time (~14 s -> ~6 s).
    ok_run, bad_run = airflow_env.dag_test(
        "shop_validate",
        [
            {
                "logical_date": "2025-03-05T06:00:00+00:00",
                "conf": VALIDATE_CONF,
                "env": {"PROPENSITY_HOME": str(good_home)},
            },
            {
                "logical_date": "2025-03-05T07:00:00+00:00",
                "conf": VALIDATE_CONF,
                "env": {"PROPENSITY_HOME": str(bad_home), "PROPENSITY_VALIDATION__DOCS": "false"},
            },
        ],
        # A retry would be visible (and slow: dag.test waits for its delay): a critical failure must not retry.
        retries=1,
    )
    return good, bad, ok_run, bad_run


@pytest.mark.slow
def test_shop_validate_publishes_clean_partitions(validate_runs) -> None:
    good, _, run, _ = validate_runs
    assert run["state"] == "success", run["log"][-5000:]
    assert run["tasks"] == {f"validate_{t}": "success" for t in TABLES}

    lake = Lake.open(good.lake_uri)
    raw_rows = {t: 0 for t in TABLES}
    for table in TABLES:
        for dt in VDATES:
            raw = lake.read_partition("raw", table, {"dt": dt})
            clean = lake.read_partition("clean", table, {"dt": dt})
            assert clean is not None, f"clean/{table}/dt={dt} missing"
            assert clean.num_rows == raw.num_rows, (table, dt)  # dirt off: everything passes
            raw_rows[table] += raw.num_rows

    events = {e["uri"]: e["extra"] for e in run["asset_events"]}
    assert set(events) == {clean_asset_uri(t) for t in TABLES}
    for table in TABLES:
        extra = events[clean_asset_uri(table)]
        assert extra["dates"] == VDATES
        assert (extra["rows_clean"], extra["rows_quarantined"]) == (raw_rows[table], 0)
        assert extra["lake"] == good.lake_uri
    summaries = [ln for ln in run["log"].splitlines() if "critical [published]" in ln]
    assert len(summaries) == len(TABLES) * VDAYS, "one summary line per partition"
    assert f"validated events: {VDAYS} partition(s), {VDAYS} published, {raw_rows['events']} rows clean" in run["log"]
    assert "great_expectations._docs_decorators" not in run["log"]
    first = lake.read_partition("raw", "events", {"dt": VDATES[0]}).num_rows
    assert f"events dt={VDATES[0]}: {first:,} in, {first:,} clean, 0 quarantined (none), 0 critical" in run["log"]


def raw_rows(settings: Settings, dt: str, table: str = "events") -> int:
    return Lake.open(settings.lake_uri).read_partition("raw", table, {"dt": dt}).num_rows


@pytest.mark.slow
def test_shop_validate_fails_loudly_on_critical_failure(validate_runs) -> None:
    _, bad, _, run = validate_runs
    assert run["state"] == "failed", run["log"][-5000:]
    states = dict(run["tasks"])
    assert states.pop("validate_events") == "failed"  # not up_for_retry: failed for good at once
    assert set(states.values()) == {"success"}, states  # the other tables are independent

    log = run["log"]
    assert f"events dt={BAD_DATE}: schema: missing column(s): {DROPPED}" in log  # the ValidationFailed message
    assert f"events dt={BAD_DATE}: 0 clean, 0 quarantined (none), 1 critical [NOT PUBLISHED]" in log.replace(
        f"events dt={BAD_DATE}: {raw_rows(bad, BAD_DATE):,} in, ", f"events dt={BAD_DATE}: "
    )
    assert f"validated events: {VDAYS} partition(s), {VDAYS - 1} published" in log
    assert "AirflowFailException" in log
    assert log.count("validating events:") == 1, "a critical failure was retried"

    # nothing downstream triggers from events; the other tables published theirs
    uris = {e["uri"] for e in run["asset_events"]}
    assert uris == {clean_asset_uri(t) for t in TABLES if t != "events"}
    lake = Lake.open(bad.lake_uri)
    assert lake.read_partition("clean", "events", {"dt": BAD_DATE}) is None
    # the events partitions that passed are still published
    assert all(lake.read_partition("clean", "events", {"dt": dt}) is not None for dt in VDATES if dt != BAD_DATE)


# build_features ---------------------------------------------------------------------------

FSTART, FDAYS = date(2025, 1, 1), 110  # 2025-01-01..2025-04-20
SNAPSHOT = "2025-03-15"
# conversion (horizon 14 d, 60 d minimum history): test 2025-04-07, validation 2025-03-24, train 2025-03-10
CONVERSION_PLAN = ["2025-03-10", "2025-03-24", "2025-04-07"]
EMPTY_SNAPSHOT = "2024-12-01"  # before the data: no customers, the features' row_count check fails
SHARDED_SNAPSHOT = "2025-04-01"  # built by three mapped shard tasks and merged


@pytest.fixture(scope="module")
def features_runs(
    airflow_env: AirflowEnv,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Settings, list[dict[str, Any]]]:
    """A tiny clean shop simulated, collected and validated into the clean zone; then
    ``build_features`` runs four times in one Airflow child: one snapshot (params
    ``snapshot``), the conversion training plan (``plan``, ``tasks``), and two runs that
    must fail at once: the churn plan, for which 110 days are too little history, and a
    snapshot before the data starts, whose empty feature table breaks its checks; finally a
    snapshot built by three customer shards (``features.shards``) and merged."""
    home = tmp_path_factory.mktemp("features")
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("PROPENSITY_")]:
            mp.delenv(key)
        settings = load_settings(home=home)
    last = FSTART + timedelta(days=FDAYS - 1)
    simulate(settings, customers=400, days=FDAYS, start=FSTART, seed=3, dirt_cfg=DirtConfig(rate=0))
    collect(settings, FSTART, last)
    quiet = settings.model_copy(update={"validation": settings.validation.model_copy(update={"docs": False})})
    outcomes = Gate(quiet).validate([FSTART + timedelta(days=i) for i in range(FDAYS)])
    assert not any(o.critical for o in outcomes)

    runs = airflow_env.dag_test(
        "build_features",
        [
            {"logical_date": "2025-04-21T06:00:00+00:00", "conf": {"snapshot": SNAPSHOT}},
            {"logical_date": "2025-04-21T07:00:00+00:00", "conf": {"plan": True, "tasks": ["conversion"]}},
            {"logical_date": "2025-04-21T08:00:00+00:00", "conf": {"plan": True, "tasks": ["churn"]}},
            {"logical_date": "2025-04-21T09:00:00+00:00", "conf": {"snapshot": EMPTY_SNAPSHOT, "tasks": ["churn"]}},
            {
                "logical_date": "2025-04-21T10:00:00+00:00",
                "conf": {"snapshot": SHARDED_SNAPSHOT},
                "env": {"PROPENSITY_FEATURES__SHARDS": "3"},
            },
        ],
        extra_env={"PROPENSITY_HOME": str(home)},
        retries=1,  # a final failure must not be retried
    )
    return settings, runs


@pytest.mark.slow
def test_build_features_publishes_a_snapshot(features_runs) -> None:
    settings, (run, *_) = features_runs
    assert run["state"] == "success", run["log"][-5000:]
    assert run["tasks"] == {s: "success" for s in ("shards", "build_snapshots", "merge_snapshots", "summary")}

    lake = Lake.open(settings.lake_uri)
    part = {"snapshot": SNAPSHOT}
    features = lake.manifest("features", "", part)
    profiles = lake.manifest("profiles", "", part)
    assert features and profiles and features["row_count"] > 0
    assert profiles["row_count"] == features["row_count"]
    labels = {t: lake.manifest("labels", "", {"task": t, "snapshot": SNAPSHOT}) for t in settings.tasks}
    assert all(labels.values()), labels

    events = {e["uri"]: e["extra"] for e in run["asset_events"]}
    assert set(events) == {features_asset_uri(), profiles_asset_uri(), *(labels_asset_uri(t) for t in SNAPSHOT_TASKS)}
    assert events[features_asset_uri()] == {
        "lake": settings.lake_uri,
        "dates": [SNAPSHOT],
        "rows": features["row_count"],
    }
    churn = events[labels_asset_uri("churn")]
    assert (churn["dates"], churn["rows"]) == ([SNAPSHOT], labels["churn"]["row_count"])
    # data through 2025-04-20: the conversion window [T, T+14 d) is observed, churn's 60 days are not
    assert events[labels_asset_uri("conversion")]["complete"] == [SNAPSHOT] and churn["complete"] == []

    summaries = [ln for ln in run["log"].splitlines() if f"snapshot {SNAPSHOT}: " in ln and "features;" in ln]
    assert len(summaries) >= 2, "the build task and the summary task log Snapshot.summary()"
    assert "label window not complete" in summaries[-1]


@pytest.mark.slow
def test_build_features_sharded_equals_unsharded(features_runs) -> None:
    """Three mapped shard tasks + a merge publish exactly what one unsharded build produces."""
    from propensity.features.snapshot import SnapshotBuilder

    settings, runs = features_runs
    run = runs[4]
    assert run["state"] == "success", run["log"][-5000:]
    assert run["tasks"] == {s: "success" for s in ("shards", "build_snapshots", "merge_snapshots", "summary")}
    assert run["log"].count("[DAG TEST] starting task_id=build_snapshots") == 3
    lake = Lake.open(settings.lake_uri)
    whole = SnapshotBuilder(settings).build(date.fromisoformat(SHARDED_SNAPSHOT))
    part = {"snapshot": SHARDED_SNAPSHOT}
    assert pl.from_arrow(lake.read_partition("features", "", part)).equals(whole.features)
    assert pl.from_arrow(lake.read_partition("profiles", "", part)).equals(whole.profiles)
    for task, lab in whole.labels.items():
        assert pl.from_arrow(lake.read_partition("labels", "", {"task": task, **part})).equals(lab), task
    assert not lake.store.list("features/_shards/") and not lake.store.list("labels/_shards/")  # hand-offs removed
    events = {e["uri"]: e["extra"] for e in run["asset_events"]}
    assert events[features_asset_uri()]["dates"] == [SHARDED_SNAPSHOT]


@pytest.mark.slow
def test_build_features_training_plan(features_runs) -> None:
    settings, (_, run, *_) = features_runs
    assert run["state"] == "success", run["log"][-5000:]
    lake = Lake.open(settings.lake_uri)
    for day in CONVERSION_PLAN:
        assert lake.manifest("features", "", {"snapshot": day}), day
        assert lake.manifest("labels", "", {"task": "conversion", "snapshot": day}), day
        assert lake.manifest("labels", "", {"task": "churn", "snapshot": day}) is None  # not selected
    events = {e["uri"]: e["extra"] for e in run["asset_events"]}
    assert events[features_asset_uri()]["dates"] == CONVERSION_PLAN
    assert events[labels_asset_uri("conversion")]["dates"] == CONVERSION_PLAN
    assert events[labels_asset_uri("conversion")]["complete"] == CONVERSION_PLAN  # fully labelled plan
    assert events[labels_asset_uri("churn")]["dates"] == []  # an event (every outlet gets one), nothing built
    assert sum("features;" in ln and "conversion:" in ln for ln in run["log"].splitlines()) >= 2 * len(CONVERSION_PLAN)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("index", "message"),
    [
        (2, "SnapshotRequestError: task churn: not enough history"),
        (3, f"FrameValidationError: features.{EMPTY_SNAPSHOT}: row_count on column *: observed 0"),
    ],
    ids=["plan-without-history", "snapshot-breaks-checks"],
)
def test_build_features_fails_without_retry(features_runs, index: int, message: str) -> None:
    settings, runs = features_runs
    run = runs[index]
    assert run["state"] == "failed", run["log"][-5000:]
    assert run["tasks"] == {  # not up_for_retry
        "shards": "success",
        "build_snapshots": "failed",
        "merge_snapshots": "upstream_failed",
        "summary": "upstream_failed",
    }
    log = run["log"]
    assert "AirflowFailException" in log and message in log
    assert log.count("[DAG TEST] starting task_id=build_snapshots") == 1, "a final failure was retried"
    assert run["asset_events"] == []
    assert Lake.open(settings.lake_uri).manifest("features", "", {"snapshot": EMPTY_SNAPSHOT}) is None


# train_models and monitor_drift -----------------------------------------------------------

import json  # noqa: E402
import sqlite3  # noqa: E402

from mlflow import MlflowClient  # noqa: E402
from test_drift import CURRENT as DRILL_SNAPSHOT  # noqa: E402
from test_drift import DRILL_FEATURES, SHIFT_DAY, drill_shops  # noqa: E402

from propensity.orchestration import (  # noqa: E402
    HEAVY_POOL,
    MLFLOW_XCOM_KEY,
    drift_asset_name,
    drift_asset_uri,
    drift_extra,
    models_asset_name,
    models_asset_uri,
    models_extra,
    tasks_from_drift_events,
    training_tasks,
)

MLFLOW_KEYS = {"tracking_uri", "experiment_id", "run_id", "model_name", "model_version", "promoted"}


def test_models_and_drift_asset_names() -> None:
    assert (models_asset_name("churn"), models_asset_uri("churn")) == ("models.churn", "propensity://models/churn")
    assert (drift_asset_name(), drift_asset_uri()) == ("drift", "propensity://monitoring/drift")
    with pytest.raises(ValueError, match="invalid task name"):
        models_asset_uri("a b")


def _drift_event(tasks: list[str] | None) -> SimpleNamespace:
    extra = {"snapshot": "2026-06-21", "tasks": tasks} if tasks is not None else {}
    return SimpleNamespace(asset=SimpleNamespace(name=drift_asset_name(), uri=drift_asset_uri()), extra=extra)


def test_training_tasks_follow_params_and_drift_events() -> None:
    settings = Settings(home="/nonexistent")
    assert training_tasks(settings) == list(SNAPSHOT_TASKS) == training_tasks(settings, [])
    assert training_tasks(settings, ["churn", "conversion"]) == ["churn", "conversion"]
    with pytest.raises(SnapshotRequestError, match="unknown task"):
        training_tasks(settings, ["churm"])
    # a drift-triggered run (params at their defaults) retrains the breached tasks only
    events = {"drift": [_drift_event(["churn"]), _drift_event(["conversion", "churn"])]}
    assert tasks_from_drift_events(events) == ["churn", "conversion"]
    assert training_tasks(settings, list(SNAPSHOT_TASKS), events) == ["conversion", "churn"]
    assert training_tasks(settings, ["repurchase"], events) == []  # breached tasks outside the selection
    # no drift event (cron or manual run), or one naming no task: the params decide
    assert tasks_from_drift_events({"raw.orders": [_raw_event("orders", ["2025-03-01"])]}) is None
    assert training_tasks(settings, None, {"drift": [_drift_event(None)]}) == list(SNAPSHOT_TASKS)


def test_training_and_drift_extras() -> None:
    from propensity.links import XCOM_MLFLOW

    assert MLFLOW_XCOM_KEY == XCOM_MLFLOW  # the key the MLflow link plugin reads
    record = {
        "task": "churn",
        "test_auc": 0.81,
        MLFLOW_XCOM_KEY: {"model_name": "propensity-churn", "model_version": "3", "run_id": "r1", "promoted": True},
    }
    assert models_extra(record) == {
        "task": "churn",
        "model_name": "propensity-churn",
        "model_version": "3",
        "run_id": "r1",
        "test_auc": 0.81,
    }
    report = {"snapshot": "2026-06-21", "breached_tasks": ["churn"], "keys": {"json": "drift/dt=2026-06-21/r.json"}}
    assert drift_extra(report, "file:///lake") == {
        "lake": "file:///lake",
        "snapshot": "2026-06-21",
        "tasks": ["churn"],
        "report": "drift/dt=2026-06-21/r.json",
    }


@pytest.mark.slow
def test_train_and_monitor_dags_declare_schedule_params_and_assets(airflow_env: AirflowEnv) -> None:  # noqa: F811
    report = airflow_env.import_dags()
    assert report["import_errors"] == {}
    train = report["dags"]["train_models"]
    # weekly cron OR the drift asset (the cron expression is checked on the serialized DAG below)
    assert train["timetable"] == "AssetOrTimeSchedule"
    assert train["assets"] == {"type": "Asset", "uris": [drift_asset_uri()]}
    assert train["catchup"] is False and train["max_active_runs"] == 1
    assert {"propensity", "train", "models"} <= set(train["tags"])
    assert train["doc_md"] and "train_models" in train["doc_md"] and "propensity_heavy" in train["doc_md"]
    params = train["params"]
    assert set(params) == {"tasks", "snapshot", "tuning_trials", "promote"}
    assert all(p["description"] for p in params.values())
    assert params["tasks"]["items"]["enum"] == list(SNAPSHOT_TASKS)
    assert params["snapshot"]["format"] == "date"
    assert params["tuning_trials"]["type"] == ["null", "integer"] and params["promote"]["type"] == "boolean"
    tasks = train["tasks"]
    assert set(tasks) == {"select_tasks", "train", "summary"}
    assert tasks["train"]["retries"] == 3 and tasks["train"]["retry_exponential_backoff"] == 2.0
    assert tasks["train"]["execution_timeout"] == 4 * 3600
    assert tasks["train"]["outlets"] == ["AssetAlias(name='models', group='models')"]

    monitor = report["dags"]["monitor_drift"]
    schedule = (monitor["timetable"], monitor["schedule"], monitor["timezone"])
    assert schedule == ("CronTriggerTimetable", "0 6 * * *", "UTC")
    assert monitor["catchup"] is False and monitor["max_active_runs"] == 1
    assert {"propensity", "monitoring", "drift"} <= set(monitor["tags"])
    assert monitor["doc_md"] and "monitor_drift" in monitor["doc_md"]
    assert set(monitor["params"]) == {"snapshot", "tasks"} and all(p["description"] for p in monitor["params"].values())
    assert set(monitor["tasks"]) == {"compute_drift", "signal_drift"}
    assert monitor["tasks"]["compute_drift"]["retries"] == 3
    assert monitor["tasks"]["signal_drift"]["outlets"] == [drift_asset_uri()]


def _drill_env(mlflow_dir: Any) -> dict[str, str]:
    """MLflow under a temporary folder; small boosting budgets keep the runs short."""
    return {
        "PROPENSITY_MLFLOW_TRACKING_URI": f"sqlite:///{mlflow_dir}/mlflow.db",
        "PROPENSITY_MLFLOW_ARTIFACTS": str(mlflow_dir / "artifacts"),
        "PROPENSITY_MODELS__MAX_ROUNDS": "200",
        "PROPENSITY_MODELS__EARLY_STOPPING_ROUNDS": "20",
        **{f"PROPENSITY_FEATURES__{k.upper()}": str(v) for k, v in DRILL_FEATURES.items()},
    }


@pytest.fixture(scope="module")
def train_runs(
    airflow_env: AirflowEnv,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[dict[str, Settings], dict[str, str], list[dict[str, Any]]]:
    """The drill's stable shop (``test_drift``) trained by ``train_models`` before its shift day:
    conversion and repurchase (one mapped instance each), then conversion again with
    ``promote=false``."""
    shops = drill_shops(tmp_path_factory)
    env = _drill_env(tmp_path_factory.mktemp("drill_mlflow"))
    runs = airflow_env.dag_test(
        "train_models",
        [
            {
                "logical_date": "2026-06-22T03:00:00+00:00",
                "conf": {"tasks": ["conversion", "repurchase"], "snapshot": SHIFT_DAY.isoformat()},
            },
            {
                "logical_date": "2026-06-22T04:00:00+00:00",
                "conf": {"tasks": ["conversion"], "snapshot": SHIFT_DAY.isoformat(), "promote": False},
            },
        ],
        extra_env={"PROPENSITY_HOME": str(shops["stable"].home_dir), **env},
        timeout=600,
    )
    return shops, env, runs


def _airflow_rows(airflow_env: AirflowEnv, query: str, *args: Any) -> list[tuple]:  # noqa: F811
    with sqlite3.connect(airflow_env.home / "airflow.db") as db:
        return db.execute(query, args).fetchall()


def _mlflow_xcoms(airflow_env: AirflowEnv, run_id: str) -> dict[int, dict[str, Any]]:  # noqa: F811
    rows = _airflow_rows(
        airflow_env,
        "SELECT map_index, value FROM xcom WHERE dag_id = 'train_models' AND run_id = ? AND task_id = 'train' "
        "AND key = ?",
        run_id,
        MLFLOW_XCOM_KEY,
    )
    out = {}
    for index, value in rows:
        doc = json.loads(value)
        out[index] = json.loads(doc) if isinstance(doc, str) else doc
    return out


@pytest.mark.slow
def test_train_models_maps_over_tasks_registers_and_gates(train_runs, airflow_env: AirflowEnv) -> None:  # noqa: F811
    _, env, (run, held) = train_runs
    assert run["state"] == "success", run["log"][-5000:]
    assert run["tasks"] == {"select_tasks": "success", "train": "success", "summary": "success"}
    names = _airflow_rows(
        airflow_env,
        "SELECT map_index, rendered_map_index, pool FROM task_instance WHERE dag_id = 'train_models' "
        "AND run_id = ? AND task_id = 'train' ORDER BY map_index",
        run["run_id"],
    )
    assert [(i, name) for i, name, _ in names] == [(0, "conversion"), (1, "repurchase")]  # one per task
    assert {pool for *_, pool in names} == {HEAVY_POOL}

    # the MLflow XCom the link plugin reads, per mapped instance
    xcoms = _mlflow_xcoms(airflow_env, run["run_id"])
    assert set(xcoms) == {0, 1}
    uri = env["PROPENSITY_MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)  # not a registry another test made the default
    experiment = client.get_experiment_by_name("propensity")
    for index, task in enumerate(("conversion", "repurchase")):
        ml = xcoms[index]
        assert set(ml) == MLFLOW_KEYS
        assert (ml["model_name"], ml["model_version"], ml["promoted"]) == (f"propensity-{task}", "1", True)
        assert ml["tracking_uri"] == env["PROPENSITY_MLFLOW_TRACKING_URI"]
        assert ml["experiment_id"] == experiment.experiment_id  # the configured experiment, not "Default"
        mlflow_run = client.get_run(ml["run_id"])
        assert mlflow_run.data.params["task"] == task and mlflow_run.data.params["test_snapshot"] == str(SHIFT_DAY)
        assert "reference.json" in {a.path for a in client.list_artifacts(ml["run_id"])}
        assert str(client.get_model_version_by_alias(f"propensity-{task}", "champion").version) == "1"

    # through the alias, each instance updated its own task's models asset
    events = {e["uri"]: e["extra"] for e in run["asset_events"]}
    assert set(events) == {models_asset_uri("conversion"), models_asset_uri("repurchase")}
    assert events[models_asset_uri("conversion")]["model_version"] == "1"
    assert events[models_asset_uri("conversion")]["run_id"] == xcoms[0]["run_id"]
    summary = [ln for ln in run["log"].splitlines() if "AUC" in ln and "champion  run" in ln]
    assert len(summary) >= 2

    # promote=false: registered and gated (it passes: same data, same seed), champion unchanged
    assert held["state"] == "success", held["log"][-5000:]
    ml = _mlflow_xcoms(airflow_env, held["run_id"])[0]
    assert (ml["model_version"], ml["promoted"]) == ("2", False)
    assert str(client.get_model_version_by_alias("propensity-conversion", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("propensity-conversion", "challenger").version) == "2"
    assert client.get_model_version("propensity-conversion", "2").tags["gate.decision"] == "passed, not promoted"
    assert held["asset_events"] == []  # the served model did not change

    # the serialized DAG keeps the weekly cron inside the asset-or-time schedule
    [(data,)] = _airflow_rows(airflow_env, "SELECT data FROM serialized_dag WHERE dag_id = 'train_models'")
    timetable = json.loads(data)["dag"]["timetable"]
    assert timetable["__type"].endswith("AssetOrTimeSchedule")
    cron = timetable["__var"]["timetable"]
    assert cron["__type"].endswith("CronTriggerTimetable")
    assert (cron["__var"]["expression"], cron["__var"]["timezone"]) == ("0 3 * * 1", "UTC")


@pytest.fixture(scope="module")
def monitor_runs(
    airflow_env: AirflowEnv,  # noqa: F811
    train_runs,
) -> tuple[dict[str, Settings], list[dict[str, Any]]]:
    """``monitor_drift`` against the champions trained before the shift day, on the stable
    shop and on the shifted one (same seed, same dates), in one Airflow child."""
    shops, env, _ = train_runs
    runs = airflow_env.dag_test(
        "monitor_drift",
        [
            {
                "logical_date": "2026-06-21T06:00:00+00:00",
                "env": {"PROPENSITY_HOME": str(shops["stable"].home_dir)},
            },
            {
                "logical_date": "2026-06-21T07:00:00+00:00",
                "env": {"PROPENSITY_HOME": str(shops["shifted"].home_dir)},
            },
        ],
        extra_env=env,
    )
    return shops, runs


@pytest.mark.slow
def test_monitor_drift_is_quiet_on_a_stable_shop(monitor_runs) -> None:
    shops, (run, _) = monitor_runs
    assert run["state"] == "success", run["log"][-5000:]
    assert run["tasks"] == {"compute_drift": "success", "signal_drift": "skipped"}
    assert run["asset_events"] == []  # no breach, no drift event, no retraining
    report = Lake.open(shops["stable"].lake_uri).read_json(f"drift/dt={DRILL_SNAPSHOT}/report.json")
    assert report["snapshot"] == DRILL_SNAPSHOT.isoformat() and report["breach"] is False
    assert set(report["tasks"]) == {"conversion", "repurchase"}
    assert report["skipped"] == {"churn": "propensity-churn has no champion"}
    assert report["tasks"]["conversion"]["model"]["model_version"] == "1"  # the champion, not the held v2
    log = run["log"]
    assert f"drift conversion snapshot {DRILL_SNAPSHOT}: ok" in log
    top = [ln for ln in log.splitlines() if " conversion " in ln and " PSI " in ln]
    assert len(top) >= 10, "the 10 features with the highest PSI are logged"
    assert "no drift breach" in log


@pytest.mark.slow
def test_monitor_drift_signals_a_breach(monitor_runs) -> None:
    shops, (_, run) = monitor_runs
    assert run["state"] == "success", run["log"][-5000:]
    assert run["tasks"] == {"compute_drift": "success", "signal_drift": "success"}
    [event] = run["asset_events"]
    assert event["uri"] == drift_asset_uri() and event["source_task_id"] == "signal_drift"
    assert event["extra"]["tasks"] == ["conversion", "repurchase"]
    assert event["extra"]["snapshot"] == DRILL_SNAPSHOT.isoformat()
    lake = Lake.open(shops["shifted"].lake_uri)
    report = lake.read_json(event["extra"]["report"])
    assert report["breach"] is True and report["breached_tasks"] == ["conversion", "repurchase"]
    assert "app_share_30d" in report["tasks"]["conversion"]["drifted"]
    assert "## conversion: BREACH" in lake.store.get_text(f"drift/dt={DRILL_SNAPSHOT}/report.md")
    assert f"drift conversion snapshot {DRILL_SNAPSHOT}: BREACH" in run["log"]


# score_and_build_audiences ----------------------------------------------------------------

import polars as pl  # noqa: E402
import yaml  # noqa: E402
from polars.testing import assert_frame_equal  # noqa: E402

from propensity import orchestration as orch  # noqa: E402
from propensity.audiences.publish import read_export_manifest  # noqa: E402
from propensity.audiences.spec import load_audiences  # noqa: E402
from propensity.scoring import merge_shards, read_scores, score  # noqa: E402

SCORE_DAY = date(2025, 5, 1)  # the scored shop's date, as in test_audiences
DRY_DAY = date(2025, 5, 8)  # a second date, scored and selected but not published (dry run)
SCORE_SHARDS = 2
# tiny models on the small shop, as test_audiences' scored_shop; YAML because the Airflow child
# must see the same settings (PROPENSITY_CONFIG) as this process
SCORE_CONF = {
    "validation": {"docs": False},
    "tasks": {"churn": {"horizon_days": 30}},
    "features": {"training_span_days": 42, "min_history_days": 30},
    "models": {"max_rounds": 150, "early_stopping_rounds": 20, "num_leaves": 15},
    "audiences": {"salt": "test-salt", "control_fraction": 0.2},
    "scoring": {"shards": SCORE_SHARDS},
}


def _features_event(dates: list[str] | None) -> SimpleNamespace:
    extra = {"lake": "file:///lake", "dates": dates, "rows": 1} if dates is not None else {}
    return SimpleNamespace(asset=SimpleNamespace(name=features_asset_name(), uri=features_asset_uri()), extra=extra)


def test_scoring_assets_and_date_precedence() -> None:
    assert (orch.scores_asset_name("churn"), orch.scores_asset_uri("churn")) == (
        "scores.churn",
        "propensity://scores/churn",
    )
    assert (orch.audiences_asset_name(), orch.audiences_asset_uri()) == ("audiences", "propensity://audiences/")
    with pytest.raises(ValueError, match="invalid task name"):
        orch.scores_asset_uri("a/b")
    events = {
        "features": [_features_event(["2025-04-30"]), _features_event(["2025-05-01", "2025-04-17"])],
        "clean.orders": [_clean_event("orders", ["2025-06-01"])],  # not a features event: ignored
    }
    # the latest snapshot the triggering features events published is scored
    assert orch.scoring_date(triggering_asset_events=events, run_after=ts(date(2025, 5, 9), 1)) == "2025-05-01"
    # the param wins; then the logical date; then run_after's day (today's snapshot)
    assert orch.scoring_date(date="2025-03-01", triggering_asset_events=events) == "2025-03-01"
    assert orch.scoring_date(triggering_asset_events={}, logical_date=ts(DAY, 0), run_after=ts(NEXT, 9)) == str(DAY)
    undated = {"features": [_features_event(None)]}
    assert orch.scoring_date(triggering_asset_events=undated, run_after=ts(NEXT, 23, 59)) == str(NEXT)
    with pytest.raises(ValueError, match="cannot tell"):
        orch.scoring_date()


def test_shard_groups_and_merge_preconditions() -> None:
    def rec(task: str, shard: int, version: str = "1") -> dict:
        return {
            "task": task,
            "date": "2025-05-01",
            "shard": shard,
            "shards": 2,
            "key": f"scores/_shards/task={task}/dt=2025-05-01/shard={shard}",
            "model_name": f"propensity-{task}",
            "model_version": version,
            "run_id": f"run-{version}",
        }

    groups = orch.shard_groups([rec("churn", 1), rec("conversion", 0), rec("churn", 0), rec("conversion", 1)])
    assert [(g["name"], g["day"], [r["shard"] for r in g["shards"]]) for g in groups] == [
        ("churn", "2025-05-01", [1, 0]),
        ("conversion", "2025-05-01", [0, 1]),
    ]
    assert orch.shard_partition("churn", "2025-05-01", 1) == {"task": "churn", "dt": "2025-05-01", "shard": "1"}
    # checked before the lake is touched: every shard, one champion version
    settings = Settings(home="/nonexistent")
    with pytest.raises(orch.ScoringRequestError, match=r"shards \[0\] scored, expected 0..1"):
        orch.merge_score_shards(settings, "2025-05-01", "churn", [rec("churn", 0)])
    with pytest.raises(orch.ScoringRequestError, match="different champions"):
        orch.merge_score_shards(settings, "2025-05-01", "churn", [rec("churn", 0), rec("churn", 1, "2")])
    with pytest.raises(orch.ScoringRequestError, match="no shard"):
        orch.merge_score_shards(settings, "2025-05-01", "repurchase", [rec("churn", 0)])


@pytest.mark.slow
def test_score_dag_declares_schedule_params_and_assets(airflow_env: AirflowEnv) -> None:  # noqa: F811
    report = airflow_env.import_dags()
    assert report["import_errors"] == {}
    dag = report["dags"]["score_and_build_audiences"]
    # the last link of the chain: runs when build_features publishes a snapshot
    assert dag["timetable"] == "AssetTriggeredTimetable"
    assert dag["assets"] == {"type": "AssetAll", "uris": [features_asset_uri()]}
    assert dag["catchup"] is False and dag["max_active_runs"] == 1
    assert {"propensity", "score", "audiences"} <= set(dag["tags"])
    assert dag["doc_md"] and "score_and_build_audiences" in dag["doc_md"] and "propensity_heavy" in dag["doc_md"]
    params = dag["params"]
    assert set(params) == {"date", "audiences", "dry_run"}
    assert all(p["description"] for p in params.values())
    assert params["date"]["format"] == "date" and params["date"]["type"] == ["null", "string"]
    assert params["audiences"]["type"] == ["null", "array"] and params["dry_run"]["type"] == "boolean"

    tasks = dag["tasks"]
    assert set(tasks) == {"prepare_scoring", "score", "gather_shards", "merge_scores", "build_audiences"}
    for name in ("prepare_scoring", "score", "merge_scores", "build_audiences"):  # lake / MLflow I/O
        assert tasks[name]["retries"] == 3 and tasks[name]["retry_exponential_backoff"] == 2.0, name
        assert tasks[name]["execution_timeout"], name
    assert tasks["score"]["execution_timeout"] == 3600
    assert tasks["merge_scores"]["outlets"] == ["AssetAlias(name='scores', group='scores')"]
    assert tasks["build_audiences"]["outlets"] == [orch.audiences_asset_uri()]
    assert tasks["score"]["outlets"] == tasks["prepare_scoring"]["outlets"] == []


@pytest.fixture(scope="module")
def scoring_shop(clean_zone, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Any]:
    """A copy of the shared clean zone with champions trained (tiny models) for all three tasks,
    and the YAML configuration (``scoring.shards: 2``) the Airflow child reads."""
    from propensity.models.train import Trainer

    home = tmp_path_factory.mktemp("scoring_shop")
    shutil.copytree(clean_zone.home_dir / "lake" / "clean", home / "lake" / "clean")
    conf = home / "conf.yaml"
    conf.write_text(yaml.safe_dump({"home": str(home), **SCORE_CONF}))
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("PROPENSITY_")]:
            mp.delenv(key)
        settings = Settings(**yaml.safe_load(conf.read_text()))
    report = Trainer(settings).train()
    assert all(r["promoted"] for r in report["tasks"].values()), report
    return settings, conf


@pytest.fixture(scope="module")
def scoring_runs(airflow_env: AirflowEnv, scoring_shop) -> tuple[Settings, list[dict[str, Any]]]:  # noqa: F811
    """``score_and_build_audiences`` twice in one Airflow child: the date from the run's logical
    date (its snapshot is built first), then a dry run of one audience at another date (params)."""
    settings, conf = scoring_shop
    runs = airflow_env.dag_test(
        "score_and_build_audiences",
        [
            {"logical_date": f"{SCORE_DAY}T00:00:00+00:00"},
            {
                "logical_date": f"{SCORE_DAY}T06:00:00+00:00",
                "conf": {"date": str(DRY_DAY), "audiences": ["win-back"], "dry_run": True},
            },
        ],
        extra_env={"PROPENSITY_CONFIG": str(conf)},
        timeout=600,
    )
    return settings, runs


def _scoring_rows(airflow_env: AirflowEnv, query: str, *args: Any) -> list[tuple]:  # noqa: F811
    with sqlite3.connect(airflow_env.home / "airflow.db") as db:
        return db.execute(query, args).fetchall()


@pytest.mark.slow
def test_score_and_build_audiences_publishes_scores_and_audiences(
    scoring_runs,
    airflow_env: AirflowEnv,  # noqa: F811
) -> None:
    settings, (run, _) = scoring_runs
    assert run["state"] == "success", run["log"][-5000:]
    assert set(run["tasks"].values()) == {"success"}, run["tasks"]
    tasks, day = list(settings.tasks), SCORE_DAY.isoformat()
    lake = Lake.open(settings.lake_uri)

    # tasks x shards mapped instances, named, in the heavy pool; each pushed its champion's MLflow coordinates
    instances = _scoring_rows(
        airflow_env,
        "SELECT map_index, rendered_map_index, pool, state FROM task_instance WHERE dag_id = "
        "'score_and_build_audiences' AND run_id = ? AND task_id = 'score' ORDER BY map_index",
        run["run_id"],
    )
    assert [name for _, name, *_ in instances] == [f"{t} shard {i}" for t in tasks for i in range(SCORE_SHARDS)]
    assert {(pool, state) for *_, pool, state in instances} == {(orch.HEAVY_POOL, "success")}
    xcoms = _scoring_rows(
        airflow_env,
        "SELECT map_index, value FROM xcom WHERE dag_id = 'score_and_build_audiences' AND run_id = ? "
        "AND task_id = 'score' AND key = ? ORDER BY map_index",
        run["run_id"],
        orch.MLFLOW_XCOM_KEY,
    )
    assert [i for i, _ in xcoms] == list(range(len(tasks) * SCORE_SHARDS))
    for index, value in xcoms:
        doc = json.loads(value)
        ml = json.loads(doc) if isinstance(doc, str) else doc
        task = tasks[index // SCORE_SHARDS]
        assert set(ml) == {"tracking_uri", "experiment_id", "run_id", "model_name", "model_version"}
        assert (ml["model_name"], ml["model_version"]) == (f"propensity-{task}", "1")
        assert ml["tracking_uri"] == settings.tracking_uri
        assert MlflowClient(settings.tracking_uri).get_run(ml["run_id"]).info.experiment_id == ml["experiment_id"]

    # scores: the whole eligible population of every task, one champion, shards cleaned up
    events = {e["uri"]: e for e in run["asset_events"]}
    for task in tasks:
        population = lake.manifest("labels", "", {"task": task, "snapshot": day})["row_count"]
        scores = read_scores(settings, task, SCORE_DAY)
        assert scores.height == population > 0 and scores["customer_id"].n_unique() == population
        assert scores["score"].is_between(0, 1).all() and set(scores["decile"].unique()) == set(range(1, 11))
        assert lake.manifest("scores", "", {"task": task, "dt": day})["model_version"] == "1"
        event = events[orch.scores_asset_uri(task)]
        assert event["source_task_id"] == "merge_scores"
        assert (event["extra"]["dates"], event["extra"]["rows"]) == ([day], population)
    assert not [k for k in lake.store.list("scores/_shards/") if k.endswith("_manifest.json")]
    assert sorted(p["task"] for p in lake.partitions("scores", "") if p["dt"] == day) == sorted(tasks)

    # audiences: lake partitions and export manifests of every declared audience
    names = [a.name for a in load_audiences(settings.audiences_file, tasks).ordered()]
    store = open_store(settings.export_uri)
    audience_event = events[orch.audiences_asset_uri()]["extra"]
    assert audience_event["dates"] == [day] and audience_event["dry_run"] is False
    assert set(audience_event["audiences"]) == set(names)
    for name in names:
        members = lake.manifest("audiences", "", {"audience": name, "dt": day})
        assert members and members["row_count"] == audience_event["audiences"][name]["size"], name
        export = read_export_manifest(store, name, day)
        assert export["counts"]["treatment"] == audience_event["audiences"][name]["treatment"], name

    # the summary table in the task log: heading, header row and one row per audience
    log = run["log"].splitlines()
    assert any(f"audiences dt={day} ({len(names)} export(s) published):" in ln for ln in log)
    assert any("audience" in ln and "treatment" in ln and "top reason codes" in ln for ln in log)
    for name in names:
        assert any(f"] {name} " in ln and ln.count("|") >= 9 for ln in log), name


@pytest.mark.slow
def test_score_and_build_audiences_dry_run_publishes_no_audience(scoring_runs) -> None:
    settings, (_, run) = scoring_runs
    assert run["state"] == "success", run["log"][-5000:]
    day = DRY_DAY.isoformat()
    lake = Lake.open(settings.lake_uri)
    # the date param wins over the logical date; scores are published (the audiences read them) ...
    assert all(read_scores(settings, t, DRY_DAY).height > 0 for t in settings.tasks)
    # ... the audiences are selected and reported, but nothing of them is published
    assert not [p for p in lake.partitions("audiences", "") if p["dt"] == day]
    assert not [k for k in open_store(settings.export_uri).list("") if f"dt={day}" in k]
    event = next(e["extra"] for e in run["asset_events"] if e["uri"] == orch.audiences_asset_uri())
    assert (event["dates"], event["dry_run"], list(event["audiences"])) == ([], True, ["win-back"])
    assert f"audiences dt={day} (dry run, nothing published):" in run["log"]


@pytest.mark.slow
def test_sharded_scoring_equals_unsharded(scoring_shop) -> None:
    """Scoring shard by shard and merging gives exactly the unsharded scores and deciles."""
    base, _ = scoring_shop
    shards = 3
    settings = base.model_copy(update={"scoring": base.scoring.model_copy(update={"shards": shards})})
    whole = score(settings, SCORE_DAY, publish=False)
    parts = [score(settings, SCORE_DAY, shard=i, publish=False) for i in range(shards)]
    for task, expected in whole.scores.items():
        frames = [p.scores[task] for p in parts]
        assert all(f.height > 0 for f in frames), "every shard has customers"
        assert sum(f.height for f in frames) == expected.height  # a partition: disjoint and complete
        assert pl.concat([f.select("customer_id") for f in frames])["customer_id"].n_unique() == expected.height
        assert_frame_equal(merge_shards(frames), expected)
