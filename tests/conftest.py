"""Shared pytest fixtures.

Service fixtures are session-scoped: starting PostgreSQL or moto costs about a second,
so every test shares one instance and isolates itself (own database, own bucket).
The servers themselves live in :mod:`propensity.services`, which has no pytest
dependency, so the same code can back a local dev stack.

Shops are built once per session too. A simulated shop costs seconds, collecting and
validating it into the lake minutes, so :func:`shared_shop` keeps one shop per set of
parameters in the session's temporary folder, and builds each stage (sources, raw, clean,
bulk) at most once: ``clean_zone`` is the small shop validated day by day, ``clean_bulk``
the same rows put straight into a clean zone (for tests that read it as a whole). The
Online Retail data set is imported once (:func:`online_retail_db`) and collected and
validated once (:func:`online_retail_zone`). Shared shops are READ-ONLY: a test that
writes to one works on a :func:`copy_shop` (copying a lake is cheap next to rebuilding it).

``make test`` runs the suite on pytest-xdist workers (one per core, a module at a time on
one worker, so module-scoped fixtures are built once). "Once per session" then means once
per run, not per worker: shared shops and Online Retail live in the folder every worker
shares (:func:`shared_root`), each built under a file lock (:func:`built_once`) by the
first worker that needs it, while a second one waits and reuses it. Services and the
Airflow child stay per worker (seconds each, and a worker must not depend on another
one's processes).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import shutil
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from propensity.config import DirtConfig, Settings
from propensity.services import PostgresServer, S3Server, postgres_available

#: ``PROPENSITY_TEST_FSYNC=1`` keeps real fsyncs in the test process (see :func:`_no_fsync`).
KEEP_FSYNC = os.environ.get("PROPENSITY_TEST_FSYNC") == "1"


#: The longest modules (``--durations``), started first: each runs whole on one xdist worker,
#: so a long one started last would keep a worker busy after the others are done. The third
#: is short on purpose: xdist hands a worker whose first module has at most two tests a
#: second module at once, which then waits behind it (the integration test: minutes).
FIRST_MODULES = (
    "test_integration.py",
    "test_dags.py",
    "test_closing_loop.py",
    "test_faults.py",
    "test_validation.py",
    "test_faults_resilience.py",
    "test_audiences.py",
    "test_features.py",
    "test_models.py",
    "test_compose.py",
    "test_faults_lake.py",
    "test_stack.py",
    "test_plugin.py",
    "test_collect.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST_MODULES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files in order otherwise


@pytest.fixture(scope="session", autouse=True)
def _no_fsync() -> Iterator[None]:
    """Every local put fsyncs its file before the rename (durability on power loss, which no
    test can observe); on a disk shared with other jobs that was about a quarter of the wall
    time of collecting and validating a shop. Test data is throw-away, so the test
    process skips the flush, as the test PostgreSQL does (``fsync=off``). Atomicity is
    untouched: the write-to-temp + ``os.replace`` still runs, and a test may still patch
    ``os.fsync`` itself."""
    if KEEP_FSYNC:
        yield
        return
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", lambda fd: None)
        yield


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL cluster on 127.0.0.1; skips when it cannot run here."""
    reason = postgres_available()
    if reason is not None:
        pytest.skip(f"PostgreSQL unavailable: {reason}")
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on 127.0.0.1, with its env vars set for the whole session.

    ``monkeypatch`` is function-scoped, hence ``MonkeyPatch.context()``; the variables are
    restored before the server stops.
    """
    with S3Server() as server, pytest.MonkeyPatch.context() as mp:
        for key, value in server.env().items():
            mp.setenv(key, value)
        yield server


# --- real data sets (../shared/datasets beside the checkout; tests skip when absent) ----

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
ONLINE_RETAIL = DATASETS / "online_retail" / "online_retail.csv.gz"
ONLINE_SHOPPERS = DATASETS / "online_shoppers" / "online_shoppers_intention.csv"


# --- simulated shops ------------------------------------------------------------------

CLEAN = DirtConfig(rate=0.0)
SMALL_SHOP = {"customers": 4000, "days": 150, "start": date(2025, 1, 1), "seed": 11}
STAGES = ("sources", "raw", "clean", "bulk")
BULK_LAKE = "bulk_lake"


@contextlib.contextmanager
def scrubbed_env() -> Iterator[pytest.MonkeyPatch]:
    """No ``PROPENSITY_*`` variable of this process (a developer's shell, ``make test``'s
    ``PROPENSITY_HOME``, the S3 server's endpoint) reaches settings built inside."""
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("PROPENSITY_")]:
            mp.delenv(key)
        yield mp


def make_shop(home, dirt: DirtConfig = CLEAN, **overrides) -> Settings:
    """Simulate a fresh small shop under ``home`` and return its settings (for tests that
    compare two builds or change the sources; others use :func:`shared_shop`)."""
    from propensity.simulate import simulate

    settings = Settings(home=home)
    simulate(settings, dirt_cfg=dirt, **{**SMALL_SHOP, **overrides})
    return settings


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary folder every xdist worker of this run shares (without xdist, the
    session's own): pytest-xdist gives each worker ``<run>/popen-gwN`` as its base."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@contextlib.contextmanager
def built_once(done: Path) -> Iterator[bool]:
    """Build what ``done`` marks at most once per run, across workers.

    Yields ``True`` when the caller must build it (then ``done`` is written, unless the
    build raised: the next caller tries again) and ``False`` when a worker already did.
    An exclusive lock on ``<done>.lock`` is held throughout, so a second worker waits for
    the first one's build instead of starting its own on half-written files.
    """
    done.parent.mkdir(parents=True, exist_ok=True)
    with open(done.with_name(done.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            needed = not done.exists()
            yield needed
            if needed:
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def bulk_lake(settings: Settings) -> Settings:
    """A shared shop's sources with the lake of its ``bulk`` stage."""
    return settings.model_copy(update={"lake": f"file://{settings.home_dir / BULK_LAKE}"})


def _shop_key(params: dict[str, Any], dirt: DirtConfig) -> str:
    text = json.dumps({**params, "dirt": dirt.model_dump(mode="json")}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def shared_shop(
    tmp_path_factory: pytest.TempPathFactory, stage: str = "clean", dirt: DirtConfig = CLEAN, **overrides: Any
) -> Settings:
    """The run's shop for ``SMALL_SHOP | overrides`` (and ``dirt``), built up to ``stage``:

    * ``sources``: simulated (shop DB, clickstream landing, FX drops, oracle);
    * ``raw``: and every day collected into the lake's raw zone;
    * ``clean``: and every day validated into clean/quarantine (Data Docs off);
    * ``bulk``: the sources straight into the clean zone of a lake of its own
      (:func:`bulk_clean`: the same rows as ``clean``, one partition per table).

    Each stage is built once per run and parameters (:func:`built_once`), whichever test
    asks first, in place (``bulk`` beside the others). READ-ONLY: never write to it (use
    :func:`copy_shop`), and never rely on a stage or zone being absent.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}: one of {STAGES}")
    params = {**SMALL_SHOP, **overrides}
    key = _shop_key(params, dirt)
    home = shared_root(tmp_path_factory) / "shops" / key
    with scrubbed_env():
        settings = Settings(home=home, validation={"docs": False})
    days = [params["start"] + timedelta(days=i) for i in range(params["days"])]
    needed = {"sources": ["sources"], "raw": ["sources", "raw"], "clean": ["sources", "raw", "clean"]}
    for step in needed.get(stage, ["sources", "bulk"]):
        with built_once(home.parent / f"{key}.{step}") as build:
            if build:
                _build_stage(settings, step, days, params, dirt)
    return bulk_lake(settings) if stage == "bulk" else settings


def _build_stage(settings: Settings, stage: str, days: list[date], params: dict[str, Any], dirt: DirtConfig) -> None:
    """One stage of a shared shop (see :func:`shared_shop`), on what the stages before it built."""
    if stage == "sources":
        from propensity.simulate import simulate

        simulate(settings, dirt_cfg=dirt, **params)
    elif stage == "raw":
        from propensity.collect import collect

        collect(settings, days[0], days[-1])
    elif stage == "clean":
        from propensity.validation import Gate

        Gate(settings).validate(days)
    else:
        bulk_clean(bulk_lake(settings), days[0], len(days))


def bulk_clean(settings: Settings, start: date, days: int) -> None:
    """A simulated shop's sources straight into the clean zone, one partition per table (at the
    last day), for tests of what reads the clean zone as a whole (features, training, drift).

    On a clean shop, collection and validation publish the same rows day by day
    (``test_collect.py`` checks it); through them a shop of many months costs minutes
    instead of seconds. What looks up a day's clean partition (the DAGs' feature and scoring
    tasks, audiences' recent contacts) needs :func:`shared_shop`'s ``clean`` stage instead.
    """
    import pyarrow as pa

    from propensity.collect import Collector
    from propensity.contracts import TABLES, contract

    collector = Collector(settings)
    try:
        for name in TABLES:
            if contract(name).source == "oltp":
                data = collector.db.extract(name)
            else:
                data = pa.concat_tables([collector.extract(name, start + timedelta(days=i)) for i in range(days)])
            collector.lake.write_partition("clean", name, {"dt": (start + timedelta(days=days - 1)).isoformat()}, data)
    finally:
        collector.close()


def copy_shop(settings: Settings, home: Path, parts: Iterable[str] = ("",), **update: Any) -> Settings:
    """A private copy of a (shared) shop under ``home``: only ``parts``, paths below its home
    (the whole home by default; ``"lake/..."`` is below its lake, wherever that is), with
    settings updated by ``update``. The copy's lake is ``<home>/lake``."""
    home = Path(home)
    lake = Path(settings.lake_uri.removeprefix("file://"))
    parts = list(parts)
    if "" in parts and lake != settings.home_dir / "lake":
        parts.append("lake")  # the whole home, and its lake from wherever it is
    for part in parts:
        src = lake / part.removeprefix("lake").lstrip("/") if part.split("/")[0] == "lake" else settings.home_dir / part
        dst = home / part
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    return settings.model_copy(update={"home": home, "lake": None, **update})


@pytest.fixture(scope="session")
def clean_shop(tmp_path_factory) -> Settings:
    """The clean (dirt-off) small shop's sources, shared by read-only tests."""
    return shared_shop(tmp_path_factory, "sources")


@pytest.fixture(scope="session")
def clean_zone(tmp_path_factory) -> Settings:
    """The clean shop collected into raw and validated into clean (Data Docs off for speed)."""
    return shared_shop(tmp_path_factory, "clean")


@pytest.fixture(scope="session")
def clean_bulk(tmp_path_factory) -> Settings:
    """The clean shop's rows in the clean zone of a lake of their own, one partition per table
    (seconds instead of minutes): for tests that read the clean zone as a whole."""
    return shared_shop(tmp_path_factory, "bulk")


# --- the Online Retail data set, imported, collected and validated once ------------------

ONLINE_RETAIL_DAYS = (date(2010, 12, 1), date(2011, 12, 9))


@dataclass
class OnlineRetail:
    settings: Settings  # default settings (Data Docs on), home in the session's temporary folder
    report: Any  # the importer's ImportReport
    outcomes: list  # one PartitionOutcome per table and day
    seconds: dict[str, float]


@pytest.fixture(scope="session")
def online_retail_db(tmp_path_factory) -> OnlineRetail:
    """UCI Online Retail imported into a shop DB (nothing collected yet), once per run. READ-ONLY."""
    if not ONLINE_RETAIL.exists():
        pytest.skip(f"dataset not available: {ONLINE_RETAIL}")
    with scrubbed_env():
        settings = Settings(home=shared_root(tmp_path_factory) / "online_retail")
    saved = settings.home_dir.parent / "online_retail.import.pickle"
    with built_once(saved) as build:
        if build:
            from propensity.importers import import_online_retail
            from propensity.sources.oltp import ShopDB

            settings.home_dir.mkdir(parents=True, exist_ok=True)
            t0 = time.perf_counter()
            db = ShopDB(settings.shop_db_url)
            try:
                report = import_online_retail(ONLINE_RETAIL, db)
            finally:
                db.dispose()
            saved.write_bytes(pickle.dumps((report, {"import": time.perf_counter() - t0})))
    report, seconds = pickle.loads(saved.read_bytes())
    return OnlineRetail(settings, report, [], seconds)


@pytest.fixture(scope="session")
def online_retail_zone(online_retail_db: OnlineRetail) -> OnlineRetail:
    """Online Retail collected into raw and validated into clean/quarantine over its whole
    span, with the production settings (Data Docs on), once per run. READ-ONLY: copy what
    you write to."""
    shop = online_retail_db
    saved = shop.settings.home_dir.parent / "online_retail.zone.pickle"
    with built_once(saved) as build:
        if build:
            from propensity.collect import collect
            from propensity.validation import Gate

            first, last = ONLINE_RETAIL_DAYS
            t0 = time.perf_counter()
            collect(shop.settings, first, last)
            t1 = time.perf_counter()
            outcomes = Gate(shop.settings).validate([first + timedelta(days=i) for i in range((last - first).days + 1)])
            saved.write_bytes(pickle.dumps((outcomes, {"collect": t1 - t0, "validate": time.perf_counter() - t1})))
    if not shop.outcomes:
        outcomes, seconds = pickle.loads(saved.read_bytes())
        shop.outcomes = outcomes
        shop.seconds |= seconds
    return shop
