"""The ``propensity`` command line: thin wrappers over the library, one subcommand per stage.

Every subcommand takes ``--config FILE`` (YAML, see :mod:`propensity.config`). Errors in
user input exit with status 2 and a one-line message instead of a traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from pathlib import Path

from propensity.config import Settings, load_settings

STAGES = ("collect", "validate", "features", "train", "score", "audiences")


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def _mapping(text: str) -> dict[str, str]:
    out = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in pair:
            raise argparse.ArgumentTypeError(f"expected canonical=source, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def print_table(title: str, rows: dict[str, int]) -> None:
    width = max([len(k) for k in rows] + [len(title)])
    print(f"{title:<{width}}  {'rows':>12}")
    print(f"{'-' * width}  {'-' * 12}")
    for k, v in rows.items():
        print(f"{k:<{width}}  {v:>12,}")


# commands ------------------------------------------------------------------------------


def cmd_simulate(s: Settings, a: argparse.Namespace) -> int:
    from propensity.config import DirtConfig
    from propensity.simulate import simulate

    dirt = s.simulation.dirt
    if a.dirt_rate is not None:
        dirt = DirtConfig(**{**dirt.model_dump(), "rate": a.dirt_rate})
    report = simulate(s, a.customers, a.days, a.start, a.seed, dirt, until=a.until, campaigns=a.campaigns)
    print(report.summary())
    print(f"sources: {s.shop_db_url} | {s.landing_uri} | {s.drops_uri}; truth: {s.truth_dir}")
    return 0


def cmd_import(s: Settings, a: argparse.Namespace) -> int:
    from propensity.importers import import_online_retail, import_orders
    from propensity.sources.oltp import ShopDB

    db = ShopDB(s.shop_db_url)
    try:
        if a.kind == "online-retail":
            report = import_online_retail(Path(a.path), db)
        else:
            report = import_orders(Path(a.path), db, a.map or {}, currency=a.currency, country=a.country)
    finally:
        db.dispose()
    print(report.summary())
    return 0


def cmd_collect(s: Settings, a: argparse.Namespace) -> int:
    from propensity.collect import collect, rows_per_table

    t0 = time.perf_counter()
    manifests = collect(s, a.start, a.end, a.tables)
    print_table(f"raw rows {a.start}..{a.end}", rows_per_table(manifests))
    print(f"{len(manifests)} partitions in {time.perf_counter() - t0:.1f} s -> {s.lake_uri}/raw")
    return 0


def cmd_validate(s: Settings, a: argparse.Namespace) -> int:
    """Validate raw partitions; prints one summary line per table and date, exits 1 on critical failures."""
    from propensity.collect import days
    from propensity.validation import Gate

    dts = days(a.date, a.end or a.date)
    outcomes = Gate(s).validate(dts, a.tables)
    print_outcomes(outcomes, per_day=len(dts) <= 7)
    bad = [o for o in outcomes if o.critical]
    if bad:
        print(f"CRITICAL: {len(bad)} partition(s) not published", file=sys.stderr)
        for o in bad:
            for msg in o.critical:
                print(f"  {o.table} dt={o.dt}: {msg}", file=sys.stderr)
        return 1
    print(f"clean zone: {s.lake_uri}/clean; results: {s.lake_uri}/validation; Data Docs: {s.gx_dir}")
    return 0


def print_outcomes(outcomes: list, per_day: bool) -> None:
    """One line per table and date (short ranges) or per table (long ranges)."""
    if per_day:
        for o in outcomes:
            print(o.summary())
        return
    by_table: dict[str, dict] = {}
    for o in outcomes:
        t = by_table.setdefault(o.table, {"in": 0, "clean": 0, "q": {}, "critical": 0, "n": 0})
        t["in"] += o.rows_in
        t["clean"] += o.rows_clean
        t["critical"] += bool(o.critical)
        t["n"] += 1
        for k, v in o.quarantined.items():
            t["q"][k] = t["q"].get(k, 0) + v
    for name, t in by_table.items():
        q = ", ".join(f"{k} {v:,}" for k, v in sorted(t["q"].items())) or "none"
        print(
            f"{name}: {t['n']} partitions, {t['in']:,} in, {t['clean']:,} clean, "
            f"{sum(t['q'].values()):,} quarantined ({q}), {t['critical']} with critical failures"
        )


def cmd_features(s: Settings, a: argparse.Namespace) -> int:
    """Build and publish one snapshot: features, profiles, labels per task."""
    from propensity.features.snapshot import SnapshotBuilder

    snap = SnapshotBuilder(s).build_and_publish(a.snapshot, a.tasks)
    print(snap.summary())
    print(f"-> {s.lake_uri}/features/snapshot={a.snapshot}, profiles/, labels/task=*/")
    return 0


def build_planned_snapshots(s: Settings, tasks: list[str] | None, as_of: date | None):
    """Every snapshot the tasks' out-of-time plans need, built once and published."""
    from propensity.features.snapshot import SnapshotBuilder
    from propensity.features.training import plan_snapshots

    builder = SnapshotBuilder(s)
    first, last = builder.data.start, builder.observed_until
    if first is None or last is None:
        raise ValueError("the clean zone has no orders or events: run collect and validate first")
    plans = {n: plan_snapshots(n, s.tasks[n], first.date(), last, s.features, as_of) for n in tasks or list(s.tasks)}
    dates = sorted({d for p in plans.values() for d in p.all()})
    snaps = {}
    for d in dates:
        snaps[d] = builder.build_and_publish(d, list(plans))
        print(snaps[d].summary())
    return builder, plans, snaps


def cmd_train(s: Settings, a: argparse.Namespace, builder=None, snapshots=None) -> int:
    """Train, evaluate, register and gate every task; print (and optionally write) the JSON report."""
    import json

    from propensity.models.train import Trainer, write_report

    report = Trainer(s, builder, snapshots).train(a.tasks, a.as_of)
    for name, r in report["tasks"].items():
        oracle = f"{r['oracle_auc']:.4f}" if r["oracle_auc"] is not None else "n/a"
        base = ", ".join(f"{k} {v:.4f}" for k, v in r["baseline_auc"].items() if v is not None)
        print(
            f"{name:<11} test AUC {r['test_auc']:.4f}  PR AUC {r['test_pr_auc']:.4f}  ECE {r['ece']:.4f}  "
            f"oracle {oracle}  baselines: {base}  n_train {r['n_train']:,}  v{r['model_version']} "
            f"{'PROMOTED to champion' if r['promoted'] else 'kept as challenger'}"
        )
    if a.report:
        write_report(report, Path(a.report))
        print(f"report -> {a.report}")
    else:
        print(json.dumps(report, indent=2, default=float))
    print(f"MLflow: {s.tracking_uri} (experiment {s.models.experiment!r})")
    return 0


def cmd_score(s: Settings, a: argparse.Namespace, builder=None) -> int:
    """Score every task's eligible population at ``--date`` with the champions."""
    from propensity.scoring import score

    run = score(s, a.date, a.tasks, builder=builder)
    for line in run.summary():
        print(line)
    print(f"-> {s.lake_uri}/scores/task=*/dt={a.date}")
    return 0


def cmd_audiences(s: Settings, a: argparse.Namespace) -> int:
    """Build (and publish, unless --dry-run) the declared audiences at ``--date``."""
    from propensity.audiences import build

    run = build(s, a.date, a.audiences, dry_run=a.dry_run)
    print(run.table())
    warned = sum(len(c.warnings) for c in run.compositions)
    if warned:
        print(f"{warned} composition warning(s), see the log and reports/audiences/dt={a.date}/composition.md")
    if a.dry_run:
        print("dry run: nothing published")
    else:
        for name, uri in run.exports.items():
            print(f"export {name}: {uri}")
        print(f"members: {s.lake_uri}/audiences/audience=*/dt={a.date}; composition: {s.lake_uri}/reports/audiences")
    return 0


def cmd_measure(s: Settings, a: argparse.Namespace) -> int:
    """Treatment vs control after a send: uplift with confidence intervals, revenue and ROI."""
    import json

    from propensity.audiences.measure import measure

    u = measure(s, a.audience, a.date, a.window, a.contact_cost, a.margin)
    print(u.summary())
    if a.report:
        Path(a.report).write_text(json.dumps(u.to_dict(), indent=2))
    return 0


def cmd_promote(s: Settings, a: argparse.Namespace) -> int:
    from propensity.models.registry import promote

    print(promote(s, a.task, str(a.version)))
    return 0


def cmd_rollback(s: Settings, a: argparse.Namespace) -> int:
    from propensity.models.registry import rollback

    print(rollback(s, a.task))
    return 0


def cmd_run(s: Settings, a: argparse.Namespace) -> int:
    """Run the chain stage by stage up to ``--through`` over the sources that are present."""
    stages = STAGES[: STAGES.index(a.through) + 1]
    if "collect" in stages:
        cmd_collect(s, argparse.Namespace(start=a.start, end=a.end, tables=None))
    if "validate" in stages:
        rc = cmd_validate(s, argparse.Namespace(date=a.start, end=a.end, tables=None))
        if rc:
            return rc
    builder = snaps = None
    if "features" in stages:
        builder, _, snaps = build_planned_snapshots(s, a.tasks, a.as_of)
    if "train" in stages:
        rc = cmd_train(s, a, builder, snaps)
        if rc:
            return rc
    day = a.end + timedelta(days=1)  # the snapshot that sees every collected day
    if "score" in stages:
        cmd_score(s, argparse.Namespace(date=day, tasks=a.tasks), builder)
    if "audiences" in stages:
        return cmd_audiences(s, argparse.Namespace(date=day, audiences=None, dry_run=a.dry_run))
    return 0


COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {
    "simulate": cmd_simulate,
    "import": cmd_import,
    "collect": cmd_collect,
    "validate": cmd_validate,
    "features": cmd_features,
    "train": cmd_train,
    "score": cmd_score,
    "audiences": cmd_audiences,
    "measure": cmd_measure,
    "promote": cmd_promote,
    "rollback": cmd_rollback,
    "run": cmd_run,
}


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's defaults must not overwrite what was given before the subcommand
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="YAML file (also: $PROPENSITY_CONFIG)")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="propensity", description=__doc__, parents=[common])
    sub = p.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", parents=[common], help="simulate a shop into the source systems")
    sim.add_argument("--customers", type=int)
    sim.add_argument("--days", type=int)
    sim.add_argument("--start", type=_date)
    sim.add_argument("--seed", type=int)
    sim.add_argument("--dirt-rate", type=float, help="0 switches dirt off")
    sim.add_argument("--until", type=_date, help="last day the shop's systems show (the world runs to --days)")
    sim.add_argument(
        "--campaigns", action="store_true", help="send the audiences published in the lake; the shop responds"
    )

    imp = sub.add_parser("import", parents=[common], help="load real data into the source tables")
    imp_sub = imp.add_subparsers(dest="kind", required=True)
    orr = imp_sub.add_parser("online-retail", parents=[common], help="UCI Online Retail CSV")
    orr.add_argument("path")
    io = imp_sub.add_parser("orders", parents=[common], help="any order export (CSV or Parquet)")
    io.add_argument("path")
    io.add_argument("--map", type=_mapping, help="canonical=source,... e.g. customer_id=cust,order_id=inv")
    io.add_argument("--currency", default="EUR", help="currency when the file has none")
    io.add_argument("--country", default="GB", help="country when the file has none")

    col = sub.add_parser("collect", parents=[common], help="extract sources into the raw zone")
    col.add_argument("--start", type=_date, required=True)
    col.add_argument("--end", type=_date, help="inclusive; default: --start")
    col.add_argument("--tables", nargs="+")

    val = sub.add_parser("validate", parents=[common], help="data-quality gate: raw -> clean / quarantine")
    val.add_argument("--date", type=_date, required=True)
    val.add_argument("--end", type=_date, help="inclusive; validate a range --date..--end")
    val.add_argument("--tables", nargs="+")

    fea = sub.add_parser("features", parents=[common], help="build one snapshot: features, profiles, labels")
    fea.add_argument("--snapshot", type=_date, required=True)
    fea.add_argument("--tasks", nargs="+")

    tr = sub.add_parser("train", parents=[common], help="train, evaluate, register and gate the models")
    tr.add_argument("--tasks", nargs="+")
    tr.add_argument("--as-of", type=_date, help="test snapshot (default: the latest fully labelled)")
    tr.add_argument("--report", help="write the JSON report here")

    sc = sub.add_parser("score", parents=[common], help="score every eligible customer with the champions")
    sc.add_argument("--date", type=_date, required=True, help="snapshot date: data before this day")
    sc.add_argument("--tasks", nargs="+")

    au = sub.add_parser("audiences", parents=[common], help="build campaign audiences from the day's scores")
    au.add_argument("--date", type=_date, required=True)
    au.add_argument("--audiences", nargs="+", help="only these (default: all declared)")
    au.add_argument("--dry-run", action="store_true", help="compute and report, publish nothing")

    me = sub.add_parser("measure", parents=[common], help="uplift of an audience: treatment vs control")
    me.add_argument("--audience", required=True)
    me.add_argument("--date", type=_date, required=True, help="the audience's date (the send)")
    me.add_argument("--window", type=int, default=14, help="days after the send")
    me.add_argument("--contact-cost", type=float, default=0.0, help="cost per treated contact")
    me.add_argument("--margin", type=float, default=1.0, help="share of revenue that is profit, for ROI")
    me.add_argument("--report", help="write the JSON result here")

    pr = sub.add_parser("promote", parents=[common], help="make a model version the champion")
    pr.add_argument("--task", required=True)
    pr.add_argument("--version", required=True)
    rb = sub.add_parser("rollback", parents=[common], help="restore the previous champion")
    rb.add_argument("--task", required=True)

    run = sub.add_parser("run", parents=[common], help="run the chain up to a stage in one process")
    run.add_argument("--start", type=_date, required=True)
    run.add_argument("--end", type=_date, required=True)
    run.add_argument("--through", choices=STAGES, default=STAGES[-1])
    run.add_argument("--as-of", type=_date, help="test snapshot (default: the latest fully labelled)")
    run.add_argument("--tasks", nargs="+")
    run.add_argument("--report", help="with --through train: write the JSON report here")
    run.add_argument("--dry-run", action="store_true", help="with --through audiences: publish no audience")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if getattr(args, "end", "unset") is None and hasattr(args, "start"):
        args.end = args.start
    try:
        settings = load_settings(getattr(args, "config", None))
        return COMMANDS[args.command](settings, args)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        print(f"propensity {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
