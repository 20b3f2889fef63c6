"""The raw-zone gate against injected faults: real great-expectations, a real lake on tmp disk.

One clean simulated shop is collected into raw once per module. Each test copies that lake,
rewrites one raw partition with a fault, runs :class:`Gate` and checks that the fault is
caught, reported with table, column, rule and count, and handled at the right severity:
row-level faults are quarantined while the clean rows are published; critical faults
publish nothing for the partition.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import make_shop

from propensity.collect import collect
from propensity.config import Settings
from propensity.contracts import contract
from propensity.lake import MANIFEST, Lake
from propensity.validation import Gate, PartitionOutcome, ValidationFailed, validate
from propensity.validation.gate import DQ_COLUMNS

START = date(2025, 1, 1)
DAYS = 14
END = START + timedelta(days=DAYS - 1)
DAY = END.isoformat()  # faults go into the last day: 13 days of history before it
CUSTOMERS = 5000  # enough traffic that a 90% drop in events is far outside the volume band

from conftest import ONLINE_RETAIL_DAYS  # noqa: E402

# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_lake(tmp_path_factory) -> Path:
    """A clean shop (dirt off) collected into raw; tests copy it and never change it."""
    home = tmp_path_factory.mktemp("validation_shop")
    settings = make_shop(home, customers=CUSTOMERS, days=DAYS)
    collect(settings, START, END)
    return settings.home_dir / "lake"


@pytest.fixture
def lake_copy(shop_lake, tmp_path) -> Path:
    dst = tmp_path / "lake"
    shutil.copytree(shop_lake, dst)
    return dst


def _settings(tmp_path: Path, lake_dir: Path, **validation) -> Settings:
    """Data Docs off unless asked for: a site costs about as much as the checks, and no fault
    test reads it; the tests that keep the production default render failing results into it."""
    return Settings(home=tmp_path / "home", lake=f"file://{lake_dir}", validation={"docs": False, **validation})


def _inject(lake: Lake, table: str, fault: Callable[[pa.Table], pa.Table], day: str = DAY) -> pa.Table:
    """Rewrite one raw partition with ``fault`` applied, keeping its manifest's metadata."""
    parts = {"dt": day}
    raw = lake.read_partition("raw", table, parts)
    assert raw is not None, f"no raw partition {table} dt={day}"
    meta = {k: v for k, v in lake.manifest("raw", table, parts).items() if k not in ("row_count", "files")}
    bad = fault(raw)
    lake.write_partition("raw", table, parts, bad, meta)
    return bad


# --- faults ----------------------------------------------------------------------------------


def _set(column: str, value, row: int = 0) -> Callable[[pa.Table], pa.Table]:
    """Replace one cell; ``value`` may be a function of the old value."""

    def apply(t: pa.Table) -> pa.Table:
        assert t.num_rows > row, "partition too small for this fault"
        values = t.column(column).to_pylist()
        values[row] = value(values[row]) if callable(value) else value
        i = t.schema.get_field_index(column)
        return t.set_column(i, t.schema.field(i), pa.array(values, t.schema.field(i).type))

    return apply


def _duplicate_first(n: int) -> Callable[[pa.Table], pa.Table]:
    return lambda t: pa.concat_tables([t, t.slice(0, n)])


def _keep_share(share: float) -> Callable[[pa.Table], pa.Table]:
    return lambda t: t.slice(0, int(t.num_rows * share))


def _drop(column: str) -> Callable[[pa.Table], pa.Table]:
    return lambda t: t.drop_columns([column])


def _retype(column: str, to: pa.DataType) -> Callable[[pa.Table], pa.Table]:
    def apply(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index(column)
        return t.set_column(i, pa.field(column, to), t.column(column).cast(to))

    return apply


def _add_column(name: str) -> Callable[[pa.Table], pa.Table]:
    return lambda t: t.append_column(name, pa.array(["x"] * t.num_rows, pa.string()))


BOT_EVENTS = 2000


def _bot_session(t: pa.Table) -> pa.Table:
    """One anonymous session viewing 2,000 products within 5 minutes (400 events/minute)."""
    noon = datetime.fromisoformat(DAY).replace(hour=12, tzinfo=UTC)
    product = pc.drop_null(t.column("product_id"))[0].as_py()
    n = BOT_EVENTS
    bot = pa.table(
        {
            "event_id": [f"E-BOT-{i:06d}" for i in range(n)],
            "customer_id": [None] * n,
            "session_id": ["S-BOT-1"] * n,
            "event_time": [noon + timedelta(seconds=300 * i / n) for i in range(n)],
            "event_type": ["product_view"] * n,
            "product_id": [product] * n,
            "device": ["desktop"] * n,
            "traffic_source": ["direct"] * n,
            "dwell_seconds": [0.1] * n,
        },
        schema=contract("events").arrow_schema,
    )
    return pa.concat_tables([t, bot])


def _next_year(ts: datetime) -> datetime:
    return ts + timedelta(days=365)


@dataclass(frozen=True)
class Fault:
    id: str
    table: str
    inject: Callable[[pa.Table], pa.Table]
    rule: str
    column: str
    count: int | None = None  # row-level: rows quarantined
    critical: bool = False
    detail: str = ""  # must appear in the message: the offending value, or the schema detail

    def __str__(self) -> str:
        return self.id


ROW_FAULTS = [
    Fault("duplicate_event_ids", "events", _duplicate_first(5), "unique_key", "event_id", 5),
    Fault("null_event_id", "events", _set("event_id", None), "not_null", "event_id", 1),
    Fault("null_customer_id", "orders", _set("customer_id", None), "not_null", "customer_id", 1),
    Fault("negative_price", "order_items", _set("unit_price", -5.0), "range", "unit_price", 1, detail="-5.0"),
    Fault("zero_quantity", "order_items", _set("quantity", 0), "range", "quantity", 1, detail="e.g. 0"),
    Fault("future_event_time", "events", _set("event_time", _next_year), "in_interval", "event_time", 1, detail="2026"),
    Fault("future_order_time", "orders", _set("order_time", _next_year), "not_future", "order_time", 1, detail="2026"),
    Fault("unknown_country", "customers", _set("country", "XX"), "value_set", "country", 1, detail="XX"),
    Fault("bad_currency", "orders", _set("currency", "XYZ"), "value_set", "currency", 1, detail="XYZ"),
    Fault("unknown_event_type", "events", _set("event_type", "hover"), "value_set", "event_type", 1, detail="hover"),
    Fault("orphan_order_item", "order_items", _set("order_id", "O-ORPHAN"), "foreign_key", "order_id", 1, "O-ORPHAN"),
    Fault("rating_out_of_range", "reviews", _set("rating", 7), "range", "rating", 1, detail="e.g. 7"),
    Fault("bot_session", "events", _bot_session, "bot_session", "session_id", BOT_EVENTS, detail="S-BOT-1"),
]

CRITICAL_FAULTS = [
    Fault("missing_column", "order_items", _drop("quantity"), "schema", "quantity", critical=True,
          detail="schema: missing column(s): quantity"),
    Fault("retyped_column", "order_items", _retype("quantity", pa.string()), "schema", "quantity", critical=True,
          detail="schema: retyped column(s): quantity (string instead of int64)"),
    Fault("extra_column", "orders", _add_column("debug_flag"), "schema", "debug_flag", critical=True,
          detail="schema: extra column(s): debug_flag"),
    Fault("empty_partition", "events", _keep_share(0.0), "empty_partition", "row_count", critical=True),
    Fault("volume_drop_90pct", "events", _keep_share(0.1), "volume", "row_count", critical=True),
]  # fmt: skip


def _finding(messages: list[str], rule: str, column: str) -> str:
    hits = [m for m in messages if m.startswith(f"{rule} on column {column}: ")]
    assert len(hits) == 1, f"expected one {rule} message on {column}, got {messages}"
    return hits[0]


@pytest.mark.parametrize("fault", ROW_FAULTS, ids=str)
def test_row_level_fault_is_quarantined(fault: Fault, lake_copy, tmp_path):
    settings = _settings(tmp_path, lake_copy)
    lake = Lake.open(settings.lake_uri)
    bad = _inject(lake, fault.table, fault.inject)

    [out] = Gate(settings).validate([DAY], [fault.table])

    # caught, with table, column, rule and count in the message
    assert out.table == fault.table and out.dt == DAY
    assert out.critical == []
    msg = _finding(out.findings, fault.rule, fault.column)
    assert msg.startswith(f"{fault.rule} on column {fault.column}: {fault.count:,} row(s) ")
    assert fault.detail in msg
    assert len(out.findings) == 1, out.findings  # nothing else fires on a clean shop
    # row severity: published, the bad rows quarantined with rule, column and reason
    assert out.published
    assert out.rows_in == bad.num_rows
    assert out.quarantined == {fault.rule: fault.count}
    assert out.rows_clean == out.rows_in - fault.count
    parts = {"dt": DAY}
    clean = lake.read_partition("clean", fault.table, parts)
    assert clean is not None and clean.num_rows == out.rows_clean
    assert clean.schema.equals(contract(fault.table).arrow_schema)
    q = lake.read_partition("quarantine", fault.table, parts)
    assert q is not None and q.num_rows == fault.count
    assert q.column_names == [*contract(fault.table).names, *DQ_COLUMNS]
    assert set(q.column("dq_rule").to_pylist()) == {fault.rule}
    assert set(q.column("dq_column").to_pylist()) == {fault.column}
    [reason] = set(q.column("dq_reason").to_pylist())
    assert reason and reason in msg
    # clean rows still flow: nothing lost, nothing duplicated
    key = contract(fault.table).primary_key
    if fault.rule not in ("unique_key", "not_null"):
        seen = {tuple(r.values()) for r in clean.select(list(key)).to_pylist()}
        seen |= {tuple(r.values()) for r in q.select(list(key)).to_pylist()}
        assert seen == {tuple(r.values()) for r in bad.select(list(key)).to_pylist()}
    manifest = lake.manifest("clean", fault.table, parts)
    assert manifest["rows_in"] == out.rows_in and manifest["quarantined_by_rule"] == {fault.rule: fault.count}


@pytest.mark.parametrize("fault", CRITICAL_FAULTS, ids=str)
def test_critical_fault_stops_publication(fault: Fault, lake_copy, tmp_path):
    settings = _settings(tmp_path, lake_copy, docs=True)
    lake = Lake.open(settings.lake_uri)
    bad = _inject(lake, fault.table, fault.inject)

    [out] = Gate(settings).validate([DAY], [fault.table])

    assert out.table == fault.table and out.dt == DAY
    assert not out.published
    assert out.rows_in == bad.num_rows
    hits = [m for m in out.critical if m.startswith(f"{fault.rule}: ")]
    assert len(hits) == 1, out.critical
    msg = hits[0]
    assert fault.column in msg
    if fault.rule == "schema":
        assert msg == fault.detail
    else:  # volume and empty partitions report the count against the band they missed
        assert msg.startswith(f"{fault.rule}: column row_count = {bad.num_rows:,}, expected within [")
        lo = float(re.search(r"within \[([\d,.]+),", msg).group(1).replace(",", ""))
        assert bad.num_rows < lo
    # nothing written to clean/ or quarantine/ for this table and date
    assert lake.manifest("clean", fault.table, {"dt": DAY}) is None
    assert lake.manifest("quarantine", fault.table, {"dt": DAY}) is None
    assert lake.store.list(f"clean/{fault.table}/") == []
    assert lake.store.list(f"quarantine/{fault.table}/") == []
    assert out.rows_clean == 0 and out.quarantined == {}


def test_empty_partition_also_trips_the_volume_band(lake_copy, tmp_path):
    settings = _settings(tmp_path, lake_copy)
    _inject(Lake.open(settings.lake_uri), "events", _keep_share(0.0))
    [out] = Gate(settings).validate([DAY], ["events"])
    assert sorted(m.split(":")[0] for m in out.critical) == ["empty_partition", "volume"]


@pytest.mark.parametrize("run", ["the day", "with the day before"])
def test_a_day_without_failing_rows_has_no_quarantine_partition(lake_copy, tmp_path, run):
    """The quarantine holds failing rows only: a day fixed at the source and validated again
    loses the quarantine partition its first validation wrote, whether it is validated alone
    or in a run over several days (which lists each zone once for all of them)."""
    settings = _settings(tmp_path, lake_copy)
    lake = Lake.open(settings.lake_uri)
    parts = {"dt": DAY}
    good = lake.read_partition("raw", "reviews", parts)
    _inject(lake, "reviews", _set("rating", 7))
    [first] = Gate(settings).validate([DAY], ["reviews"])
    assert first.published and first.quarantined == {"range": 1}
    assert lake.manifest("quarantine", "reviews", parts)["row_count"] == 1

    _inject(lake, "reviews", lambda _: good)
    before = (END - timedelta(days=1)).isoformat()
    *_, again = Gate(settings).validate([DAY] if run == "the day" else [before, DAY], ["reviews"])

    assert again.published and again.quarantined == {} and again.rows_clean == good.num_rows
    assert lake.manifest("quarantine", "reviews", parts) is None
    assert lake.store.list(f"quarantine/reviews/dt={DAY}/") == []
    assert lake.read_json(f"validation/reviews/dt={DAY}/result.json")["quarantined_by_rule"] == {}


def test_severity_override_makes_a_row_rule_critical(lake_copy, tmp_path):
    settings = _settings(tmp_path, lake_copy, severity={"order_items.range": "critical"})
    lake = Lake.open(settings.lake_uri)
    _inject(lake, "order_items", _set("unit_price", -5.0))

    [out] = Gate(settings).validate([DAY], ["order_items"])

    assert not out.published
    assert out.findings == []
    [msg] = out.critical
    assert msg.startswith("range on column unit_price: 1 row(s) must be > 0") and "-5.0" in msg
    assert lake.manifest("clean", "order_items", {"dt": DAY}) is None
    assert lake.manifest("quarantine", "order_items", {"dt": DAY}) is None
    # the override is per table: the same rule elsewhere stays row-level
    _inject(lake, "reviews", _set("rating", 7))
    [rev] = Gate(settings).validate([DAY], ["reviews"])
    assert rev.published and rev.quarantined == {"range": 1}


def test_key_rule_failing_most_rows_is_escalated(lake_copy, tmp_path):
    settings = _settings(tmp_path, lake_copy)
    lake = Lake.open(settings.lake_uri)
    bad = _inject(lake, "orders", lambda t: t.set_column(1, "customer_id", pa.nulls(t.num_rows, pa.string())))
    [out] = Gate(settings).validate([DAY], ["orders"])
    assert not out.published
    [msg] = out.critical
    assert msg.startswith(f"not_null on column customer_id: {bad.num_rows:,} row(s) must not be null")
    assert msg.endswith("100% of the partition, escalated to critical")
    assert lake.manifest("clean", "orders", {"dt": DAY}) is None


def _published_files(lake: Lake) -> dict[str, object]:
    """Every clean/quarantine object; manifests without their wall-clock ``written_at``."""
    out: dict[str, object] = {}
    for key in lake.store.list("clean/") + lake.store.list("quarantine/"):
        if key.endswith(MANIFEST):
            doc = json.loads(lake.store.get_text(key))
            doc.pop("written_at")
            out[key] = doc
        else:
            out[key] = lake.store.get_bytes(key)
    return out


@pytest.mark.slow  # every table validated twice, with Data Docs
def test_revalidation_is_idempotent(lake_copy, tmp_path):
    settings = _settings(tmp_path, lake_copy, docs=True)
    lake = Lake.open(settings.lake_uri)
    _inject(lake, "order_items", _set("unit_price", -5.0))
    _inject(lake, "events", _duplicate_first(3))

    first = Gate(settings).validate([DAY])
    files1 = _published_files(lake)
    second = Gate(settings).validate([DAY])
    files2 = _published_files(lake)

    assert [o.to_json() for o in first] == [o.to_json() for o in second]
    assert files1 == files2
    # one clean file per table, one quarantine file for each table with failing rows (here 2)
    assert sum(k.endswith(".parquet") for k in files1) == len(first) + sum(bool(o.quarantined) for o in first)
    by_table = {o.table: o for o in first}
    assert by_table["order_items"].quarantined == {"range": 1}
    assert by_table["events"].quarantined == {"unique_key": 3}
    assert all(o.published and not o.critical for o in first)


@pytest.mark.parametrize(
    ("table", "fault", "column", "rule"),
    [("events", _keep_share(0.1), "row_count", "volume"), ("order_items", _drop("quantity"), "quantity", "schema")],
    ids=["volume", "schema"],
)
def test_validate_raises_naming_table_dt_column_rule(table, fault, column, rule, lake_copy, tmp_path):
    settings = _settings(tmp_path, lake_copy)
    lake = Lake.open(settings.lake_uri)
    _inject(lake, table, fault)

    with pytest.raises(ValidationFailed) as err:
        validate(settings, [DAY], ["orders", table])

    text = str(err.value)
    line = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith(f"{table} dt={DAY}: "))
    assert f": {rule}: " in line and column in line
    assert "1 partition(s)" in text
    outcomes = {o.table: o for o in err.value.outcomes}
    assert not outcomes[table].published
    # the good table of the same run is published before the raise
    assert outcomes["orders"].published and not outcomes["orders"].critical
    assert lake.manifest("clean", "orders", {"dt": DAY}) is not None
    assert lake.manifest("clean", table, {"dt": DAY}) is None
    # without raising, the same outcomes come back
    again = validate(settings, [DAY], ["orders", table], raise_on_critical=False)
    assert [o.critical for o in again] == [o.critical for o in err.value.outcomes]


# --- no false alarms -----------------------------------------------------------------------


@pytest.mark.slow
def test_no_false_alarms_on_a_clean_year(tmp_path):
    t0 = time.perf_counter()
    settings = make_shop(tmp_path / "home", customers=1000, days=365)
    end = START + timedelta(days=364)
    collect(settings, START, end)
    t1 = time.perf_counter()
    days = [START + timedelta(days=i) for i in range(365)]
    outcomes = Gate(settings).validate(days)
    t2 = time.perf_counter()
    print(f"\nclean year: simulate+collect {t1 - t0:.1f} s, validate {t2 - t1:.1f} s, "
          f"{sum(o.rows_in for o in outcomes):,} rows in {len(outcomes):,} partitions")  # fmt: skip

    assert len(outcomes) == 365 * 9
    noisy = [o.summary() + " " + "; ".join(o.critical + o.findings) for o in outcomes if o.critical or o.findings]
    assert noisy == []
    assert all(o.published and o.rows_quarantined == 0 and o.rows_clean == o.rows_in for o in outcomes)
    assert sum(o.rows_in for o in outcomes if o.table == "events") > 0


# --- Online Retail ---------------------------------------------------------------------------

FINDING = re.compile(r"^(\w+) on column (\S+): ([\d,]+) row\(s\)")


@pytest.fixture(scope="module")
def online_retail(online_retail_zone) -> tuple[Settings, list[PartitionOutcome]]:
    """UCI Online Retail imported, collected and validated with the production settings
    (built once per session, shared with the features tests)."""
    settings, outcomes, seconds = online_retail_zone.settings, online_retail_zone.outcomes, online_retail_zone.seconds
    first, last = ONLINE_RETAIL_DAYS
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)]

    flagged: Counter[tuple[str, str, str]] = Counter()
    for o in outcomes:
        for f in o.findings:
            rule, column, n = FINDING.match(f).groups()
            flagged[(o.table, rule, column)] += int(n.replace(",", ""))
    quarantined: Counter[tuple[str, str]] = Counter()
    for o in outcomes:
        for rule, n in o.quarantined.items():
            quarantined[(o.table, rule)] += n
    critical = Counter((o.table, m.split(":")[0]) for o in outcomes for m in o.critical)
    print(
        f"\nOnline Retail: import+collect {seconds['import'] + seconds['collect']:.1f} s, "
        f"validate {len(days)} days {seconds['validate']:.1f} s"
    )
    print(f"  rows in: {sum(o.rows_in for o in outcomes):,}; partitions published "
          f"{sum(o.published for o in outcomes):,}/{len(outcomes):,}")  # fmt: skip
    print("  rows flagged by row rules (all partitions):", dict(flagged))
    print("  rows quarantined (published partitions):", dict(quarantined))
    print("  critical messages by table and rule:", dict(critical))
    for o in outcomes:
        for m in o.critical:
            print(f"    {o.table} dt={o.dt} ({date.fromisoformat(o.dt):%a}): {m}")
    return settings, outcomes


@pytest.mark.slow
def test_online_retail_quarantines_with_understandable_reasons(online_retail):
    settings, outcomes = online_retail
    lake = Lake.open(settings.lake_uri)
    rules = {(o.table, FINDING.match(f).group(1), FINDING.match(f).group(2)) for o in outcomes for f in o.findings}
    # zero unit prices (free samples, adjustments) and country names with no ISO code
    assert rules <= {("order_items", "range", "unit_price"), ("customers", "value_set", "country")}
    q_items = lake.read_table("quarantine", "order_items")
    assert q_items.num_rows > 0
    assert set(q_items.column("unit_price").to_pylist()) == {0.0}
    assert set(q_items.column("dq_reason").to_pylist()) == {"must be > 0"}
    q_cust = lake.read_table("quarantine", "customers")
    assert set(q_cust.column("dq_rule").to_pylist()) == {"value_set"}
    assert {"Unspecified", "European Community"} & set(q_cust.column("country").to_pylist())
    assert set(q_cust.column("dq_reason").to_pylist()) == {"must be an ISO 3166-1 alpha-2 country code"}
    # every published partition balances
    for o in outcomes:
        if o.published:
            assert o.rows_clean + o.rows_quarantined == o.rows_in


@pytest.mark.slow
def test_online_retail_has_no_critical_failures(online_retail):
    _, outcomes = online_retail
    assert [f"{o.table} dt={o.dt}: {m}" for o in outcomes for m in o.critical] == []


def test_data_docs_are_built_once_per_gate_run_with_a_page_per_suite(tmp_path):
    """The site is rendered after the run, not after each of its checkpoints (one index build
    instead of two per table), and still shows every suite the run validated."""
    settings = make_shop(tmp_path / "home", customers=50, days=2)
    collect(settings, START, START + timedelta(days=1))
    settings = settings.model_copy(update={"validation": settings.validation.model_copy(update={"docs": True})})
    gate = Gate(settings)
    builds: list[dict] = []
    original = gate.runner.context.build_data_docs

    def counted(**kwargs):
        builds.append(kwargs)
        return original(**kwargs)

    suites: list[str] = []
    run = gate.runner.run

    def recorded(name, df, checks):
        suites.append(name)
        return run(name, df, checks)

    gate.runner.context.build_data_docs = counted
    gate.runner.run = recorded
    gate.validate([START, START + timedelta(days=1)], ["customers", "orders"])
    assert len(builds) == 1 and len(suites) >= 3, suites  # both tables' partitions, some rows
    site = settings.gx_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
    index = (site / "index.html").read_text()
    for suite in suites:
        (page,) = (site / "validations" / Path(*suite.split("."))).rglob("*.html")
        assert str(page.relative_to(site)) in index


def test_a_run_validated_in_small_batches_publishes_what_one_pass_does(lake_copy, tmp_path, monkeypatch):
    """A run holds BATCH_ROWS raw rows at a time (consecutive days), not its whole range:
    with batches of a day or two it reaches the same verdicts, volume bands included, and
    publishes the same clean and quarantine files as one pass over the fortnight."""
    from propensity.validation import gate

    other = tmp_path / "other"
    shutil.copytree(lake_copy, other)
    days = [(START + timedelta(days=i)).isoformat() for i in range(DAYS)]
    results = []
    for lake_dir, batch in ((lake_copy, 10**9), (other, 2_000)):
        settings = _settings(tmp_path / f"b{batch}", lake_dir)
        lake = Lake.open(settings.lake_uri)
        _inject(lake, "order_items", _set("unit_price", -5.0))
        _inject(lake, "events", _duplicate_first(3))
        monkeypatch.setattr(gate, "BATCH_ROWS", batch)
        outcomes = Gate(settings).validate(days)
        results.append(([o.to_json() for o in outcomes], _published_files(lake)))
    assert results[0] == results[1]
    assert {o["table"] for o in results[0][0] if o["quarantined_by_rule"]} == {"order_items", "events"}
    assert all(o["published"] for o in results[0][0])
