"""The simulated shop: sources with known truth, so model quality can be measured against a ceiling.

``simulate`` runs the day loop (:mod:`.engine`), writes what a shop's systems would hold
(OLTP database, clickstream landing files, FX CSV drops) and the latent truth the oracle
(:mod:`.oracle`) reads. Same seed, same files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import polars as pl

from propensity.calendar import PromotionCalendar
from propensity.config import DirtConfig, Settings
from propensity.contracts import OLTP_TABLES
from propensity.simulate import dirt
from propensity.simulate.campaigns import from_lake as campaign_sends
from propensity.simulate.engine import Simulator, fx_table, tables_from_output
from propensity.simulate.oracle import Truth
from propensity.sources.landing import EVENTS_PREFIX, FX_PREFIX, write_events, write_fx
from propensity.sources.oltp import ShopDB
from propensity.storage import open_store


@dataclass
class SimReport:
    customers: int
    days: int
    start: date
    seed: int
    rows: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    anonymous_sessions: int = 0
    seconds: float = 0.0
    seconds_by_phase: dict[str, float] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.rows.get("events", 0) / self.seconds if self.seconds else 0.0

    def summary(self) -> str:
        lines = [f"simulated {self.customers:,} customers x {self.days} days from {self.start} (seed {self.seed})"]
        lines += [f"  {name:<18}{count:>12,}" for name, count in self.rows.items()]
        lines.append(f"  sessions {self.sessions:,} ({self.anonymous_sessions:,} anonymous)")
        lines.append(f"  {self.seconds:.1f} s, {self.events_per_second:,.0f} events/s")
        return "\n".join(lines)


def simulate(
    settings: Settings,
    customers: int | None = None,
    days: int | None = None,
    start: date | None = None,
    seed: int | None = None,
    dirt_cfg: DirtConfig | None = None,
    until: date | None = None,
    campaigns: bool = False,
) -> SimReport:
    """Simulate a shop and write its source systems and truth store, replacing earlier runs.

    ``until`` (inclusive) hides the days after it from the source systems: the world is
    drawn for the whole horizon, so a later run with a later ``until`` agrees on the past.
    ``campaigns`` sends the treatment groups of the audiences published in the lake
    (:mod:`.campaigns`): the shop's future then includes their response, while every day
    before the first send stays exactly as it was (keep dirt off for that guarantee: dirt
    is drawn over whole tables).
    """
    sc = settings.simulation
    customers = customers if customers is not None else sc.customers
    days = days if days is not None else sc.days
    start = start or date.fromisoformat(sc.start)
    seed = seed if seed is not None else sc.seed
    dcfg = dirt_cfg if dirt_cfg is not None else sc.dirt
    visible = days if until is None else (until - start).days + 1
    if not 0 < visible <= days:
        raise ValueError(f"simulate: --until {until} must fall within {start} .. {start + timedelta(days=days - 1)}")
    t_start = time.perf_counter()
    phases: dict[str, float] = {}

    landing = open_store(settings.landing_uri, settings.s3_endpoint_url)
    drops = open_store(settings.drops_uri, settings.s3_endpoint_url)
    landing.delete(landing.list(EVENTS_PREFIX + "/"))
    drops.delete(drops.list(FX_PREFIX + "/"))
    dirt_rng = np.random.default_rng([seed, 1])
    n_events = 0

    def on_events(day: date, df: pl.DataFrame) -> None:
        nonlocal n_events
        if (day - start).days >= visible:
            return
        df = dirt.events(df, dcfg, dirt_rng, (day - start).days)
        n_events += df.height
        write_events(landing, day, df.to_arrow())

    promotions = PromotionCalendar.load(settings.promotions_file)
    sim = Simulator(customers, days, start, seed, products=sc.products, shift=sc.shift, promotions=promotions)
    if campaigns:
        sim.campaigns = campaign_sends(settings, start, sim.cids)
    out = sim.run(on_events)
    phases["days+events"] = time.perf_counter() - t_start

    t1 = time.perf_counter()
    tables = tables_from_output(out, sim.t0_us, visible, sim.campaigns.names)
    for name, fn in (
        ("customers", dirt.customers),
        ("orders", dirt.orders),
        ("order_items", dirt.order_items),
    ):
        if name in tables:
            tables[name] = fn(pl.from_arrow(tables[name]), dcfg, dirt_rng).to_arrow()  # type: ignore[arg-type]
    db = ShopDB(settings.shop_db_url)
    db.create_schema(drop=True)
    rows = {name: 0 for name in OLTP_TABLES}
    rows.update(db.replace({name: tables[name] for name in OLTP_TABLES if name in tables}))
    db.dispose()
    phases["oltp"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    for t in range(visible):
        write_fx(drops, start + timedelta(days=t), fx_table(out, t))
    rows["fx_rates"] = visible * out.fx.shape[1]
    rows["events"] = n_events
    purchases = out.tables.get("purchases", {})
    bumps = out.tables.get("bumps", {})
    sends = out.tables.get("sends", {})
    empty_i = np.array([], dtype=np.int64)
    Truth(
        start=start,
        days=days,
        customer_ids=out.customer_ids,
        traits=out.traits,
        death_day=out.death_day,
        purchases=(
            purchases.get("idx", empty_i).astype(np.int64),
            purchases.get("day", empty_i).astype(np.int64),
        ),
        bumps=(
            bumps.get("idx", empty_i).astype(np.int64),
            bumps.get("day", empty_i).astype(np.int64),
            bumps.get("value", np.array([], dtype=float)).astype(float),
        ),
        promotions=promotions,
        sends=(sends.get("idx", empty_i).astype(np.int64), sends.get("day", empty_i).astype(np.int64)),
    ).write(settings.truth_dir)
    phases["drops+truth"] = time.perf_counter() - t2
    return SimReport(
        customers=customers,
        days=days,
        start=start,
        seed=seed,
        rows=rows,
        sessions=out.n_sessions,
        anonymous_sessions=out.n_anonymous_sessions,
        seconds=time.perf_counter() - t_start,
        seconds_by_phase=phases,
    )
