"""Shared pytest fixtures.

Service fixtures are session-scoped: starting PostgreSQL or moto costs about a second,
so every test shares one instance and isolates itself (own database, own bucket).
The servers themselves live in :mod:`propensity.services`, which has no pytest
dependency, so the same code can back a local dev stack.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from propensity.services import PostgresServer, S3Server, postgres_available


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

from pathlib import Path  # noqa: E402

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"
ONLINE_RETAIL = DATASETS / "online_retail" / "online_retail.csv.gz"
ONLINE_SHOPPERS = DATASETS / "online_shoppers" / "online_shoppers_intention.csv"


# --- simulated shops ------------------------------------------------------------------

from datetime import date  # noqa: E402

from propensity.config import DirtConfig, Settings  # noqa: E402

CLEAN = DirtConfig(rate=0.0)
SMALL_SHOP = {"customers": 4000, "days": 150, "start": date(2025, 1, 1), "seed": 11}


def make_shop(home, dirt: DirtConfig = CLEAN, **overrides) -> Settings:
    """Simulate a small shop under ``home`` and return its settings."""
    from propensity.simulate import simulate

    settings = Settings(home=home)
    simulate(settings, dirt_cfg=dirt, **{**SMALL_SHOP, **overrides})
    return settings


@pytest.fixture(scope="session")
def clean_shop(tmp_path_factory) -> Settings:
    """A clean (dirt-off) simulated shop shared by read-only tests."""
    return make_shop(tmp_path_factory.mktemp("clean_shop"))


@pytest.fixture(scope="session")
def clean_zone(clean_shop) -> Settings:
    """The clean shop collected into raw and validated into clean (Data Docs off for speed)."""
    from datetime import timedelta

    from propensity.collect import collect
    from propensity.lake import Lake
    from propensity.validation import Gate

    s = clean_shop.model_copy(update={"validation": clean_shop.validation.model_copy(update={"docs": False})})
    lake = Lake.open(s.lake_uri)
    days = [SMALL_SHOP["start"] + timedelta(days=i) for i in range(SMALL_SHOP["days"])]
    if not lake.partitions("raw", "orders"):
        collect(s, days[0], days[-1])
    if len(lake.partitions("clean", "orders")) < len(days):
        Gate(s).validate(days)
    return s
