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
from datetime import date
from pathlib import Path
from typing import Any

from propensity import pipeline
from propensity.config import Settings, load_settings
from propensity.errors import FinalError, StoreError
from propensity.pipeline import STAGES


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
    record = pipeline.collect(s, pipeline.day_range(a.start, a.end), a.tables)
    print_collect(record)
    return 0


def print_collect(record: pipeline.CollectRecord) -> None:
    print_table(f"raw rows {record.days[0]}..{record.days[-1]}", record.rows)
    print(f"{record.partitions} partitions in {record.seconds:.1f} s")


def cmd_validate(s: Settings, a: argparse.Namespace) -> int:
    """Validate raw partitions; prints one summary line per table and date, exits 1 on critical failures."""
    record = pipeline.validate(s, pipeline.day_range(a.date, a.end), a.tables)
    return print_validate(s, record)


def print_validate(s: Settings, record: pipeline.ValidateRecord) -> int:
    """One line per table and date (short ranges) or per table (long ranges); 1 on critical failures."""
    if len(record.days) <= 7:
        for line in record.summaries:
            print(line)
    else:
        for table in record.tables:
            print(f"{table}: {len(record.published[table])} of {len(record.days)} partitions published")
        print(f"{record.rows_clean:,} rows clean, {record.rows_quarantined:,} quarantined")
    if record.critical:
        print(f"CRITICAL: {len(record.critical)} failure(s); those partitions are not published", file=sys.stderr)
        for line in record.critical:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"clean zone: {s.lake_uri}/clean; results: {s.lake_uri}/validation; Data Docs: {record.docs_url or 'off'}")
    return 0


def cmd_features(s: Settings, a: argparse.Namespace) -> int:
    """Build and publish one snapshot (or, with --shard, one customer shard of it)."""
    if a.shard is not None:
        if a.shards is not None and a.shards != s.features.shards:
            s = s.model_copy(update={"features": s.features.model_copy(update={"shards": a.shards})})
        part = pipeline.features_shard(s, a.snapshot, a.shard, a.tasks)
        print(f"snapshot {part['snapshot']} shard {part['shard']}/{s.features.shards}: {part['customers']:,} customers")
        return 0
    record = pipeline.features(s, a.snapshot, a.tasks)
    print(record.summary)
    print(f"clean zone read in {record.read_seconds:.2f} s")
    print(f"-> {s.lake_uri}/features/snapshot={a.snapshot}, profiles/, labels/task=*/")
    return 0


def _bounds(intervals: dict, metric: str) -> str:
    """`` [low, high]`` of a pooled test metric's 95% interval ('' when not computed)."""
    iv = intervals.get("model", {}).get(metric)
    return f" [{iv['low']:.4f}, {iv['high']:.4f}]" if iv and iv.get("low") is not None else ""


def _best_diff(intervals: dict) -> str:
    """The paired AUC difference to the strongest baseline, with its 95% interval."""
    diffs = {b: v["auc_diff"] for b, v in intervals.get("baselines", {}).items()}
    if not diffs:
        return ""
    b, d = min(diffs.items(), key=lambda kv: kv[1]["estimate"])
    return f"  vs {b} {d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"


def _pooled(intervals: dict) -> str:
    return f"test {intervals['n_rows']:,} rows, {intervals['n_positives']:,} positives  " if intervals else ""


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def toolkit_line(t: pipeline.ToolkitRecord) -> str:
    """One line for a recommendations or personas model."""
    r, version = t.report, f"v{t.mlflow.get('model_version')}"
    if t.name == "recommendations":
        base = r["baseline_recall_at_10"]
        return (
            f"{t.name}: recall@10 {r['recall_at_10']:.4f} (popularity {base['popularity']:.4f}, top category "
            f"{base['top_category']:.4f}), hit rate@10 {r['hit_rate_at_10']:.4f}, {r['customers']:,} customers  "
            f"{version} {'champion' if t.promoted else 'not promoted'}"
        )
    return f"{t.name}: k={r['k']}, silhouette {r['silhouette']:.3f}: {', '.join(r['names'])}  {version} champion"


def _verdict(record: Any) -> str:
    """What happened to the registry: the report's outcome (it names the version), else the promotion."""
    r = record.report
    if r.get("outcome"):
        return r["outcome"]
    return f"v{r['model_version']} " + ("PROMOTED to champion" if record.promoted else "kept as challenger")


def value_line(record: Any) -> str:
    """One line for a value task (``label: revenue``): Gini against its baselines."""
    r = record.report
    iv = r.get("intervals") or {}
    base = ", ".join(f"{k} {v:.4f}" for k, v in r["baseline_gini"].items() if v is not None)
    diffs = {b: v["gini_diff"] for b, v in iv.get("baselines", {}).items()}
    best = ""
    if diffs:
        b, d = min(diffs.items(), key=lambda kv: kv[1]["estimate"])
        best = f"  vs {b} {d['estimate']:+.4f} [{d['low']:+.4f}, {d['high']:+.4f}]"
    return (
        f"{record.task:<11} test Gini {_num(r['test_gini'])}{_bounds(iv, 'gini')} ({r.get('formulation')})  "
        f"Spearman {_num(r['test_spearman'])}  top-decile capture {_num(r['top_decile_capture'])}  "
        f"MAE {_num(r['test_mae'])}  baselines: {base}{best}  n_train {r['n_train'] or 0:,}  "
        f"{_verdict(record)}"
    )


def print_train(s: Settings, records: list[Any], report_path: str | None) -> None:
    """One line per task; the JSON report to ``report_path`` (or stdout)."""
    import json

    from propensity.models.train import write_report

    toolkit = [r for r in records if isinstance(r, pipeline.ToolkitRecord)]
    records = [r for r in records if not isinstance(r, pipeline.ToolkitRecord)]
    for record in records:
        r = record.report
        if r.get("label") == "revenue":
            print(value_line(record))
            continue
        oracle = f"{r['oracle_auc']:.4f}" if r.get("oracle_auc") is not None else "n/a"
        base = ", ".join(f"{k} {v:.4f}" for k, v in r["baseline_auc"].items() if v is not None)
        iv = r.get("intervals") or {}
        print(
            f"{record.task:<11} test AUC {_num(r['test_auc'])}{_bounds(iv, 'auc')}  PR AUC {_num(r['test_pr_auc'])}  "
            f"ECE {_num(r['ece'])}{_bounds(iv, 'ece')}  oracle {oracle}  baselines: {base}{_best_diff(iv)}  "
            f"{_pooled(iv)}n_train {r['n_train'] or 0:,}  {_verdict(record)}"
        )
    for t in toolkit:
        print(toolkit_line(t))
    report = {
        "tasks": {r.task: r.report for r in records},
        "parent_run_ids": {r.task: r.parent_run_id for r in records},
        **{t.name: t.report for t in toolkit},
    }
    if report_path:
        write_report(report, Path(report_path))
        print(f"report -> {report_path}")
    else:
        print(json.dumps(report, indent=2, default=float))
    from propensity.links import mlflow_experiment_url, mlflow_ui_base

    ui = mlflow_ui_base(s.tracking_uri)
    experiment = records[0].mlflow.get("experiment_id") if records else None
    where = mlflow_experiment_url(ui, experiment) if ui and experiment else s.tracking_uri
    print(f"MLflow: {where} (experiment {s.models.experiment!r})")


def cmd_train(s: Settings, a: argparse.Namespace) -> int:
    """Train, evaluate, register and gate every task; print (and optionally write) the JSON report.
    With ``--uplift KIND ...``, the uplift models of those campaign kinds instead."""
    if a.uplift:
        report = pipeline.train_uplift(s, a.uplift)
        for r in report.values():
            test = r["test"]
            print(
                f"{r['model']}: {r['learner']}-learner, {r['rounds']} rounds; test Qini {test['qini']:.5f}, "
                f"AUUC {test['auuc']:.5f}, uplift at top 10% {test['uplift_at_10']}; "
                f"v{r['model_version']} {'champion' if r['promoted'] else 'not promoted'}"
            )
        if a.report:
            from propensity.models.train import write_report

            write_report({"uplift": report}, Path(a.report))
        return 0
    print_train(s, pipeline.train_all(s, a.tasks, a.as_of), a.report)
    return 0


def cmd_score(s: Settings, a: argparse.Namespace) -> int:
    """Score every task's eligible population at ``--date`` with the champions."""
    record = pipeline.score(s, a.date, a.tasks)
    for line in record.lines:
        print(line)
    print(f"-> {s.lake_uri}/scores/task=*/dt={a.date}")
    return 0


def cmd_audiences(s: Settings, a: argparse.Namespace) -> int:
    """Build (and publish, unless --dry-run) the declared audiences at ``--date``."""
    print_audiences(s, pipeline.audiences(s, a.date, a.audiences, dry_run=a.dry_run))
    return 0


def print_audiences(s: Settings, record: pipeline.AudienceRecord) -> None:
    print(record.table)
    if record.warnings:
        print(f"{len(record.warnings)} composition warning(s), see reports/audiences/dt={record.date}/composition.md")
    if record.dry_run:
        print("dry run: nothing published")
        return
    for name, uri in record.exports.items():
        print(f"export {name}: {uri}")
    print(f"members: {s.lake_uri}/audiences/dt={record.date}; set: {s.export_uri}/dt={record.date}/manifest.json")
    print(f"composition: {s.lake_uri}/reports/audiences/dt={record.date}")


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

    print(promote(s, a.task, str(a.version), force=a.force))
    return 0


def cmd_rollback(s: Settings, a: argparse.Namespace) -> int:
    from propensity.models.registry import rollback

    print(rollback(s, a.task))
    return 0


def cmd_run(s: Settings, a: argparse.Namespace) -> int:
    """Run the chain stage by stage up to ``--through``: the same stage functions the DAGs call.

    Each stage's output ends with its wall time, so a user sees where a run's minutes go."""
    clock = [time.perf_counter()]

    def echo(stage: str, record: object) -> None:
        if stage == "collect":
            print_collect(record)  # type: ignore[arg-type]
        elif stage == "validate":
            print_validate(s, record)  # type: ignore[arg-type]
        elif stage == "features":
            print(f"{len(record)} snapshot(s) published")  # type: ignore[arg-type]
        elif stage == "train":
            print_train(s, record, a.report)  # type: ignore[arg-type]
        elif stage == "score":
            print("\n".join(record.lines))  # type: ignore[attr-defined]
        elif stage == "audiences":
            print_audiences(s, record)  # type: ignore[arg-type]
        now = time.perf_counter()
        print(f"[{stage}: {now - clock[0]:.1f} s]", flush=True)
        clock[0] = now

    options = pipeline.RunOptions(through=a.through, tasks=a.tasks, as_of=a.as_of, dry_run=a.dry_run)
    try:
        pipeline.run(s, a.start, a.end, options, echo)
    except FinalError as exc:
        from propensity.validation.gate import ValidationFailed

        if isinstance(exc, ValidationFailed):
            return 1  # print_validate has said which partitions failed
        raise
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


ALLOW_GAPS_HELP = "build over days with no clean partition, for a shop really closed (features.allow_gaps)"


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
    fea.add_argument("--shard", type=int, help="build only this customer hash shard (parked for the merge)")
    fea.add_argument("--shards", type=int, help="number of shards (default: features.shards)")
    fea.add_argument("--allow-gaps", action="store_true", help=ALLOW_GAPS_HELP)

    tr = sub.add_parser("train", parents=[common], help="train, evaluate, register and gate the models")
    tr.add_argument("--tasks", nargs="+")
    tr.add_argument("--as-of", type=_date, help="test snapshot (default: the latest fully labelled)")
    tr.add_argument("--report", help="write the JSON report here")
    tr.add_argument(
        "--uplift",
        nargs="+",
        metavar="KIND",
        help="train the uplift models of these campaign kinds (offer codes) from past campaigns instead",
    )

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
    pr.add_argument("--force", action="store_true", help="promote a version that failed the gate or was never gated")
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
    run.add_argument("--allow-gaps", action="store_true", help=ALLOW_GAPS_HELP)
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
        if getattr(args, "allow_gaps", False):
            gaps = settings.features.model_copy(update={"allow_gaps": True})
            settings = settings.model_copy(update={"features": gaps})
        return COMMANDS[args.command](settings, args)
    except (FinalError, StoreError, ValueError, FileNotFoundError, KeyError) as exc:
        print(f"propensity {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
