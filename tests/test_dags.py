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
    assert set(tasks) == {"build_snapshots", "summary"}
    build = tasks["build_snapshots"]
    assert build["outlets"] == [
        features_asset_uri(),
        profiles_asset_uri(),
        *(labels_asset_uri(t) for t in SNAPSHOT_TASKS),
    ]
    assert build["retries"] == 3 and build["retry_exponential_backoff"] == 2.0
    assert build["execution_timeout"] == 4 * 3600
    assert tasks["summary"]["outlets"] == []


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


@pytest.fixture(scope="module")
def features_runs(
    airflow_env: AirflowEnv,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Settings, list[dict[str, Any]]]:
    """A tiny clean shop simulated, collected and validated into the clean zone; then
    ``build_features`` runs four times in one Airflow child: one snapshot (params
    ``snapshot``), the conversion training plan (``plan``, ``tasks``), and two runs that
    must fail at once: the churn plan, for which 110 days are too little history, and a
    snapshot before the data starts, whose empty feature table breaks its checks."""
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
        ],
        extra_env={"PROPENSITY_HOME": str(home)},
        retries=1,  # a final failure must not be retried
    )
    return settings, runs


@pytest.mark.slow
def test_build_features_publishes_a_snapshot(features_runs) -> None:
    settings, (run, *_) = features_runs
    assert run["state"] == "success", run["log"][-5000:]
    assert run["tasks"] == {"build_snapshots": "success", "summary": "success"}

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
    assert run["tasks"] == {"build_snapshots": "failed", "summary": "upstream_failed"}  # not up_for_retry
    log = run["log"]
    assert "AirflowFailException" in log and message in log
    assert log.count("[DAG TEST] starting task_id=build_snapshots") == 1, "a final failure was retried"
    assert run["asset_events"] == []
    assert Lake.open(settings.lake_uri).manifest("features", "", {"snapshot": EMPTY_SNAPSHOT}) is None
