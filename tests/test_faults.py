"""Fault injection for "nothing wrong ever leaves": consent at decision time and audience sets.

Every test runs the real stages on a small simulated shop (SQLite shop DB, lake and
exports on local files, a real CRM table in SQLite): a customer opts out after the
snapshot was built; a partial ``--audiences`` run after a full one; a crash injected at
every write of an audience publish; names too long for the file system; and a
hypothesis property over sequences of consent changes, collections, snapshot builds and
partial runs. The lake, importer and resilience findings of the same issue are in
``test_faults_lake.py``, ``test_faults_inputs.py`` and ``test_faults_resilience.py``.
"""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
import yaml
from conftest import SMALL_SHOP
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from propensity import pipeline
from propensity.audiences import build
from propensity.audiences.sets import read_export, read_export_set, read_set_members
from propensity.config import Settings
from propensity.errors import RequestError
from propensity.lake import Lake
from propensity.sources.oltp import ShopDB
from propensity.storage import LocalStore, open_store

D = date(2025, 5, 1)
LAST_DAY = SMALL_SHOP["start"] + timedelta(days=SMALL_SHOP["days"] - 1)
FLAGS = ("global_opt_out", "email_consent", "sms_consent", "push_consent")


def audience(name: str, priority: int, task: str, rule: str, size: int, channels: list[str]) -> dict:
    return {
        "name": name,
        "priority": priority,
        "task": task,
        "rule": rule,
        "max_size": size,
        "channels": channels,
        "offer": {"code": name.upper(), "cost": 1.0},
    }


# overlapping rules, so dedup across audiences always has work to do
BOOK = [
    audience("first", 1, "churn", "churn_decile >= 6", 300, ["email", "sms", "push"]),
    audience("second", 2, "churn", "churn_decile >= 3", 400, ["email", "push"]),
    audience("third", 3, "repurchase", "repurchase_decile >= 4", 400, ["sms", "email"]),
]
NAMES = [a["name"] for a in BOOK]


def write_book(path: Path, book: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({"audiences": book}))
    return path


def shop_settings(home: Path, book: Path | None = None) -> Settings:
    return Settings(
        home=home,
        validation={"docs": False},
        tasks={"churn": {"horizon_days": 30}, "clv": {"horizon_days": 30}},
        features={"training_span_days": 42, "min_history_days": 30},
        models={"max_rounds": 120, "early_stopping_rounds": 20, "num_leaves": 15},
        audiences={
            "salt": "test-salt",
            "control_fraction": 0.2,
            "file": book or write_book(home / "audiences.yaml", BOOK),
            "crm_db": f"sqlite:///{home / 'crm.db'}",
        },
    )


@pytest.fixture(scope="module")
def trained_home(clean_zone, tmp_path_factory) -> Path:
    """The shared clean shop (shop DB, raw and clean zones) with champions, scored at D."""
    home = tmp_path_factory.mktemp("faults_shop")
    shutil.copytree(clean_zone.home_dir, home, dirs_exist_ok=True)
    s = shop_settings(home)
    record = pipeline.train(s)
    assert all(r.promoted for r in record), record
    pipeline.score(s, D)
    return home


@pytest.fixture
def shop(trained_home, tmp_path) -> Settings:
    """A private copy of the trained shop: tests change consents and publish."""
    home = tmp_path / "shop"
    shutil.copytree(trained_home, home)
    return shop_settings(home)


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_shop(request, shop) -> Settings:
    """``shop``, with its shop database (and so its CRM table) in SQLite or in PostgreSQL."""
    if request.param == "sqlite":
        return shop
    from propensity.contracts import OLTP_TABLES

    url = request.getfixturevalue("postgres").create_database(f"faults_{uuid.uuid4().hex[:12]}")
    source, target = ShopDB(shop.shop_db_url), ShopDB(url)
    try:
        target.create_schema()
        target.replace({name: source.extract(name) for name in OLTP_TABLES})
    finally:
        source.dispose()
        target.dispose()
    audiences = shop.audiences.model_copy(update={"crm_db": None})  # the CRM lives in the shop database
    return shop.model_copy(update={"shop_db": url, "audiences": audiences})


# helpers ------------------------------------------------------------------------------


def change_customers(s: Settings, ids: list[str], values: dict[str, bool], when: datetime) -> None:
    """What the shop does when customers change their consents: the row is updated in place."""
    db = ShopDB(s.shop_db_url)
    t = db.tables["customers"]
    try:
        with db.engine.begin() as conn:
            for i, cid in enumerate(ids):
                ts = when + timedelta(seconds=i)
                ts = ts.replace(tzinfo=None) if db.is_sqlite else ts  # the loader stores naive UTC in SQLite
                conn.execute(t.update().where(t.c.customer_id == cid).values(**values, updated_at=ts))
    finally:
        db.dispose()


def collect_and_validate(s: Settings, day: date) -> None:
    pipeline.collect(s, [day], ["customers"])
    pipeline.validate(s, [day], ["customers"]).raise_for_critical()


def exported(s: Settings, day: date) -> dict[str, pl.DataFrame]:
    """Per audience, the committed export's rows joined back to customer ids through the lake set."""
    exports = open_store(s.export_uri)
    doc = read_export_set(exports, day.isoformat())
    if doc is None:
        return {}
    members = read_set_members(Lake.open(s.lake_uri), day.isoformat())
    assert (
        members is not None
        and doc["set_id"] == Lake.open(s.lake_uri).manifest("audiences", "", {"dt": str(day)})["set_id"]
    )
    ids = members.select("pseudo_id", "customer_id", "audience")
    out = {}
    for name in doc["exports"]:
        csv = pl.read_csv(read_export(exports, day.isoformat(), name), infer_schema=False)
        rows = csv.join(ids.filter(pl.col("audience") == name), on="pseudo_id", how="left")
        assert rows["customer_id"].null_count() == 0, f"{name}: exported ids missing from the lake set"
        out[name] = rows
    return out


def assert_one_audience_per_customer(s: Settings, day: date) -> None:
    members = read_set_members(Lake.open(s.lake_uri), day.isoformat())
    assert members is not None
    twice = members.group_by("customer_id").agg(pl.col("audience").n_unique().alias("n")).filter(pl.col("n") > 1)
    assert twice.height == 0, f"customers in two audiences of {day}: {twice.head(5)}"


# findings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("row", ["clean", "quarantined"])
def test_opt_out_after_the_snapshot_is_never_exported(any_db_shop, row):
    """Finding 1: the snapshot of D was built before the opt-out; audiences reuse it. With
    ``quarantined``, the same update also writes an unknown country code, so the gate
    quarantines the row that carries the opt-out: the revocation must count all the same."""
    shop = any_db_shop
    typo = {"country": "ZZ"} if row == "quarantined" else {}
    build(shop, D)
    first = exported(shop, D)
    by_channel = pl.concat(first.values()).unique("customer_id", keep="first").sort("customer_id")
    victims = by_channel["customer_id"].head(3).to_list()
    revoked = by_channel.filter(pl.col("channel") == "email")["customer_id"].tail(2).to_list()
    today = LAST_DAY + timedelta(days=1)
    noon = datetime(today.year, today.month, today.day, 12, tzinfo=UTC)
    change_customers(shop, victims, {"global_opt_out": True, **typo}, noon)
    change_customers(shop, revoked, {"email_consent": False, **typo}, noon + timedelta(minutes=5))
    collect_and_validate(shop, today)
    quarantined = Lake.open(shop.lake_uri).read_partition("quarantine", "customers", {"dt": today.isoformat()})
    held = set(quarantined.column("customer_id").to_pylist()) if quarantined is not None else set()
    assert (held >= set(victims + revoked)) if typo else not held & set(victims + revoked)
    built_before = Lake.open(shop.lake_uri).manifest("features", "", {"snapshot": D.isoformat()})

    run = build(shop, D)

    assert Lake.open(shop.lake_uri).manifest("features", "", {"snapshot": D.isoformat()}) == built_before
    rows = pl.concat(exported(shop, D).values())
    assert not set(victims) & set(rows["customer_id"]), "an opted-out customer was exported"
    assert rows.filter(pl.col("customer_id").is_in(revoked) & (pl.col("channel") == "email")).height == 0
    assert sum(x.suppressed["global_opt_out"] for x in run.selections) >= len(victims)


def test_partial_run_dedups_against_the_dates_other_audiences(shop):
    """Finding 2: ``--audiences second`` after a full run ignored the date's other audiences."""
    full = build(shop, D)
    assert all(x.members.height for x in full.selections)
    before = {n: r["customer_id"].sort().to_list() for n, r in exported(shop, D).items()}

    partial = build(shop, D, ["second"])

    assert [x.spec.name for x in partial.selections] == NAMES  # the set still holds every audience
    assert_one_audience_per_customer(shop, D)
    after = {n: r["customer_id"].sort().to_list() for n, r in exported(shop, D).items()}
    assert after["first"] == before["first"] and after["third"] == before["third"]
    assert after["second"], "the rerun audience is empty"
    import sqlalchemy as sa

    eng = sa.create_engine(shop.crm_db_url)
    with eng.connect() as c:
        crm = c.execute(sa.text("select audience, count(*) from audience_members group by audience")).fetchall()
    eng.dispose()
    assert {a: n for a, n in crm} == {n: len(v) for n, v in after.items() if v}, "CRM and exports disagree"


class Crash(RuntimeError):
    """The process dies here."""


def visible(s: Settings, day: date) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """What readers see, per store: each committed export's ids, and each lake audience's ids."""
    exports = open_store(s.export_uri)
    doc = read_export_set(exports, day.isoformat())
    seen_exports = {
        n: sorted(pl.read_csv(read_export(exports, day.isoformat(), n), infer_schema=False)["pseudo_id"].to_list())
        for n in (doc or {}).get("exports", {})
    }
    members = read_set_members(Lake.open(s.lake_uri), day.isoformat())
    seen_lake = (
        {} if members is None else {n: sorted(g["pseudo_id"].to_list()) for (n,), g in members.group_by("audience")}
    )
    return seen_exports, seen_lake


def test_a_crash_at_any_write_of_a_publish_leaves_the_old_set_or_the_new_one(shop, monkeypatch, tmp_path):
    """Finding 3: a crash after the first of three audience writes left a visible mix."""
    build(shop, D)
    old = visible(shop, D)
    # the new declarations change every audience, so any mix would be visible
    new_book = [{**a, "max_size": a["max_size"] // 2} for a in BOOK]
    s = shop_settings(shop.home_dir, write_book(tmp_path / "new.yaml", new_book))
    saved = tmp_path / "saved"
    for part in ("lake/audiences", "lake/scores", "exports", "crm.db"):
        src = shop.home_dir / part
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, saved / part) if src.exists() else None

    def restore() -> None:
        for part in ("lake/audiences", "lake/scores", "exports"):
            shutil.rmtree(shop.home_dir / part, ignore_errors=True)
            shutil.copytree(saved / part, shop.home_dir / part)
        shutil.copy2(saved / "crm.db", shop.home_dir / "crm.db")

    writes: list[str] = []
    crash_at = [0]

    def counted(name, original):
        def wrapper(*args, **kwargs):
            writes.append(name)
            if len(writes) == crash_at[0]:
                raise Crash(f"killed at write {len(writes)} ({name})")
            return original(*args, **kwargs)

        return wrapper

    for method in ("put_bytes", "put_text", "delete"):
        monkeypatch.setattr(LocalStore, method, counted(method, getattr(LocalStore, method)))
    import propensity.audiences as audiences_module

    monkeypatch.setattr(audiences_module, "write_crm", counted("crm", audiences_module.write_crm))

    build(s, D)  # a clean run counts the writes and gives the new set
    new = visible(s, D)
    total = len(writes)
    assert new != old and total > 2 * len(BOOK), (total, writes)
    outcomes = {"old": 0, "new": 0}
    for k in range(1, total + 1):
        restore()
        writes.clear()
        crash_at[0] = k
        with pytest.raises(Crash):
            build(s, D)
        seen = visible(s, D)
        for i, store in enumerate(("exports", "lake")):
            assert seen[i] in (old[i], new[i]), f"a crash at write {k} ({writes[-1]}) left a mix in the {store}"
            outcomes["old" if seen[i] == old[i] else "new"] += 1
        # the lake commits first: exports never run ahead of the record of what was sent
        assert not (seen[0] == new[0] != old[0] and seen[1] == old[1] != new[1]), f"write {k}"
    assert outcomes["old"] and outcomes["new"], outcomes
    restore()
    crash_at[0] = 0
    build(s, D)  # a rerun after a crash converges without manual cleanup
    assert visible(s, D) == new
    assert not [p for p in (shop.home_dir / "exports").rglob("*") if p.is_file() and p.name.startswith(".tmp")]


def test_an_unwritable_name_fails_before_anything_is_published(shop, tmp_path):
    """Finding 3b: a 230-character name published its lake partition, then failed on the CSV."""
    build(shop, D)
    old = visible(shop, D)
    long_book = [*BOOK[:2], {**BOOK[2], "name": "x" * 230}]
    s = shop_settings(shop.home_dir, write_book(tmp_path / "long.yaml", long_book))
    with pytest.raises(RequestError, match=r"x{30}"):
        build(s, D)
    assert visible(shop, D) == old


# the property -------------------------------------------------------------------------------

STEPS = st.one_of(
    # the last item: the same update writes an unknown country code (True) or a valid one
    # (False), so the gate quarantines or publishes the customer's row at the next collect
    st.tuples(st.just("consent"), st.integers(0, 23), st.sampled_from(FLAGS), st.booleans(), st.booleans()),
    st.tuples(st.just("collect")),
    st.tuples(st.just("snapshot")),
    st.tuples(st.just("audiences"), st.sets(st.sampled_from(NAMES))),
)


@pytest.mark.slow
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(STEPS, min_size=2, max_size=7))
def test_no_export_ever_contradicts_the_validated_consent(trained_home, tmp_path_factory, steps):
    """For any sequence of consent changes, collections, snapshot builds and (partial) audience
    runs, no exported member has opted out or lacks consent for their channel in the newest
    validated state known when the set was published, nor in a quarantined row collected after
    it (a revocation counts even when a typo elsewhere got the row quarantined), and no
    customer is in two audiences."""
    home = tmp_path_factory.mktemp("property") / "shop"
    shutil.copytree(trained_home, home)
    s = shop_settings(home)
    build(s, D)
    pool = sorted(pl.concat(exported(s, D).values())["customer_id"].unique().to_list())[:24]
    row: dict[str, dict[str, bool]] = {}  # the flags each changed customer's row holds now
    typo: dict[str, bool] = {}  # whether that row holds an unknown country code
    changed: set[str] = set()  # customers whose row changed since the last collect
    validated: dict[str, dict[str, bool]] = {}  # the newest clean row's flags
    held: dict[str, list[dict[str, bool]]] = {}  # quarantined rows collected after it
    day = LAST_DAY
    clock = 0
    for step in [*steps, ("collect",), ("audiences", set())]:  # every sequence ends in a checked publish
        if step[0] == "consent":
            _, i, flag, value, bad = step
            cid = pool[i % len(pool)]
            clock += 1
            when = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1, minutes=clock)
            change_customers(s, [cid], {flag: value, "country": "ZZ" if bad else "GB"}, when)
            row.setdefault(cid, {})[flag] = value
            typo[cid] = bad
            changed.add(cid)
        elif step[0] == "collect":
            day += timedelta(days=1)
            collect_and_validate(s, day)
            for cid in changed:
                if typo[cid]:
                    held.setdefault(cid, []).append(dict(row[cid]))
                else:
                    validated[cid], held[cid] = dict(row[cid]), []
            changed.clear()
        elif step[0] == "snapshot":
            pipeline.features(s, D)
        else:
            build(s, D, sorted(step[1]) or None)
            for name, rows in exported(s, D).items():
                for cid, channel in rows.select("customer_id", "channel").iter_rows():
                    states = [validated.get(cid, {}), *held.get(cid, [])]
                    assert not any(x.get("global_opt_out", False) for x in states), f"{name}: opted-out {cid} exported"
                    assert all(x.get(f"{channel}_consent", True) for x in states), (
                        f"{name}: {cid} has no {channel} consent"
                    )
            assert_one_audience_per_customer(s, D)


def test_quarantined_rows_revoke_but_never_grant():
    """The consent overlay's rule for quarantined customer rows, case by case."""
    from propensity.audiences.consent import SCHEMA, with_revocations

    def at(day: int) -> datetime:
        return datetime(2025, 3, day, tzinfo=UTC)

    def frame(rows: list[tuple]) -> pl.DataFrame:
        return pl.DataFrame(rows, schema=SCHEMA, orient="row")

    newest = frame(
        [
            ("opts-out", at(1), True, True, True, False),
            ("older-opt-out", at(10), True, True, True, False),
            ("grant", at(1), False, True, True, False),
            ("no-date", at(1), True, True, True, False),
            ("untouched", at(1), True, False, True, False),
        ]
    )
    quarantined = frame(
        [
            ("opts-out", at(2), True, True, True, True),
            ("older-opt-out", at(9), True, True, True, True),  # a clean row after it opted back in
            ("grant", at(2), True, True, True, False),  # a quarantined grant waits for a clean row
            ("no-date", None, True, False, True, False),  # no usable time: the withdrawal counts
            ("only-quarantined", at(2), False, True, True, True),
            (None, at(2), False, False, False, True),
        ]
    )
    out = with_revocations(newest, quarantined).sort("customer_id")
    got = {r["customer_id"]: r for r in out.iter_rows(named=True)}
    assert got["opts-out"]["global_opt_out"] is True
    assert got["older-opt-out"]["global_opt_out"] is False
    assert got["grant"]["email_consent"] is False
    assert got["no-date"]["sms_consent"] is False and got["no-date"]["global_opt_out"] is False
    assert got["untouched"] == {**newest.row(4, named=True)}
    assert got["only-quarantined"]["global_opt_out"] is True and got["only-quarantined"]["email_consent"] is False
    assert None not in got
