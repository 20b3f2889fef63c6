"""Campaign audiences: scores + profile tags -> rules -> suppression -> control groups -> exports.

:func:`build` is the whole stage for one date. It reads the day's published scores
(``propensity score``), the snapshot's features and profile tags and recent campaign
contacts; applies the declared audiences (:mod:`.spec`) under the rules that always hold
(:mod:`.select`); computes reason codes for members only; then, unless ``dry_run``,
publishes per audience the lake Parquet (all members, control included), the
pseudonymous CSV export of the treatment group with its manifest (:mod:`.publish`), the
CRM table where configured, and the composition report (:mod:`.composition`).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import polars as pl

from propensity.audiences.composition import Composition, compare, markdown
from propensity.audiences.publish import csv_bytes, pseudonymize, publish_export, resolve_salt, write_crm
from propensity.audiences.select import KEY, SUPPRESSION_REASONS, Selection, control_draw, select_all
from propensity.audiences.spec import load_audiences
from propensity.config import Settings
from propensity.errors import RequestError
from propensity.features.store import SnapshotStore
from propensity.lake import Lake
from propensity.scoring import (
    REASON_COLUMNS,
    load_champion,
    publish_frame,
    reason_codes,
    reason_frame,
    with_reasons,
)
from propensity.storage import open_store

log = logging.getLogger(__name__)

from propensity.zones import AUDIENCES as ZONE  # noqa: E402


@dataclass
class AudienceRun:
    date: date
    selections: list[Selection] = field(default_factory=list)
    compositions: list[Composition] = field(default_factory=list)
    exports: dict[str, str] = field(default_factory=dict)
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    dry_run: bool = False

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for s in self.selections:
            treated = s.members.filter(pl.col("group") == "treatment")
            top = Counter(r for c in REASON_COLUMNS if c in treated.columns for r in treated[c].drop_nulls().to_list())
            out.append(
                {
                    "audience": s.spec.name,
                    "size": s.members.height,
                    "treatment": s.treatment,
                    "control": s.control,
                    **{f"suppressed_{r}": s.suppressed.get(r, 0) for r in SUPPRESSION_REASONS},
                    "deduplicated": s.deduplicated,
                    "top_reasons": ", ".join(k for k, _ in top.most_common(3)),
                }
            )
        return out

    def table(self) -> str:
        """The summary table the CLI and the DAG log print."""
        head = ["audience", "size", "treatment", "control", "opt-out", "no consent", "recent buy", "freq cap", "dedup"]
        w = max([len("audience")] + [len(x.spec.name) for x in self.selections])
        lines = [" | ".join([f"{head[0]:<{w}}", *(f"{h:>10}" for h in head[1:])]) + " | top reason codes"]
        for r in self.rows():
            vals = [r["audience"], r["size"], r["treatment"], r["control"]]
            vals += [r[f"suppressed_{x}"] for x in SUPPRESSION_REASONS] + [r["deduplicated"]]
            lines.append(" | ".join([f"{vals[0]:<{w}}", *(f"{v:>10,}" for v in vals[1:])]) + f" | {r['top_reasons']}")
        return "\n".join(lines)


def _read(lake: Lake, zone: str, parts: dict[str, str]) -> pl.DataFrame | None:
    t = lake.read_partition(zone, "", parts)
    return pl.from_arrow(t) if t is not None else None  # type: ignore[return-value]


def recent_contacts(lake: Lake, d: date, days: int) -> pl.DataFrame:
    """Contacts per customer in ``[d - days, d)``: the shop's campaign_contacts plus our own
    treatment sends that have not come back through campaign_contacts yet."""
    window = [(d - timedelta(days=i)).isoformat() for i in range(1, days + 1)]
    have = {p["dt"] for p in lake.partitions("clean", "campaign_contacts")}
    frames = []
    parts = [{"dt": x} for x in window if x in have]
    if parts:
        t = lake.read_table("clean", "campaign_contacts", columns=[KEY, "campaign_id"], where=parts)
        frames.append(pl.from_arrow(t))  # type: ignore[arg-type]
    for p in lake.partitions(ZONE, ""):
        if p.get("dt") in window:
            m = _read(lake, ZONE, p)
            if m is not None and m.height:
                sent = m.filter(pl.col("group") == "treatment")
                frames.append(
                    sent.select(KEY, (pl.col("audience") + "-" + pl.col("dt").cast(pl.String)).alias("campaign_id"))
                )
    if not frames:
        return pl.DataFrame(schema={KEY: pl.String, "contacts_recent": pl.UInt32})
    both = pl.concat([f.cast({KEY: pl.String, "campaign_id": pl.String}) for f in frames]).unique()
    return both.group_by(KEY).agg(pl.len().alias("contacts_recent"))


def candidates(
    settings: Settings, lake: Lake, d: date, tasks: list[str]
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """One row per customer: features, profile tags, every task's score and decile, recent contacts;
    and the scores frames read, per task."""
    day = d.isoformat()
    feats = _read(lake, "features", {"snapshot": day})
    profiles = _read(lake, "profiles", {"snapshot": day})
    if feats is None or profiles is None:
        raise RequestError(f"features/profiles at snapshot={day} are not published: run propensity score --date {day}")
    c = feats.join(profiles.drop("snapshot", strict=False), on=KEY, how="left")
    scores = {}
    for task in tasks:
        sc = _read(lake, "scores", {"task": task, "dt": day})
        if sc is None:
            raise RequestError(f"scores/task={task}/dt={day} is not published: run propensity score --date {day} first")
        scores[task] = sc
        c = c.join(
            sc.select(KEY, pl.col("score").alias(f"{task}_score"), pl.col("decile").alias(f"{task}_decile")),
            on=KEY,
            how="left",
        )
    # a stable uniform [0, 1) per customer, for A/B splits declared in rules (e.g. customer_hash < 0.5)
    c = c.with_columns(pl.Series("customer_hash", control_draw(c[KEY], "customer_hash", date(1970, 1, 1))))
    contacts = recent_contacts(lake, d, settings.audiences.frequency_days)
    c = c.join(contacts, on=KEY, how="left").with_columns(pl.col("contacts_recent").fill_null(0))
    return c.sort(KEY), scores


def score_models(scores: dict[str, pl.DataFrame]) -> dict[str, dict[str, Any]]:
    """Per task, the model that made its scores (name, version, run id)."""
    cols = ("model_name", "model_version", "run_id")
    return {t: {k: sc[k][0] if sc.height else None for k in cols} for t, sc in scores.items()}


def add_reasons(
    settings: Settings, sel: list[Selection], cands: pl.DataFrame, models: dict[str, dict[str, Any]]
) -> dict[str, pl.DataFrame]:
    """Reason codes for members only, per task, from the model version that made the task's scores
    (``models``: :func:`score_models`), never the current champion, which may have moved since;
    returns the member frames of each task (for the scores)."""
    k = settings.scoring.reason_codes
    by_task: dict[str, list[Selection]] = {}
    for s in sel:
        by_task.setdefault(s.spec.task, []).append(s)
    filled = {}
    for task, group in by_task.items():
        ids = pl.concat([s.members.select(KEY) for s in group])
        if not ids.height:
            continue
        model = load_champion(settings, task, version=models[task]["model_version"]).model
        rows = cands.join(ids, on=KEY, how="semi")
        table = reason_frame(rows[KEY], reason_codes(model, rows, k))
        filled[task] = table
        for s in group:
            s.members = s.members.join(table, on=KEY, how="left").sort("rank")
    for s in sel:
        for c in REASON_COLUMNS:
            if c not in s.members.columns:
                s.members = s.members.with_columns(pl.lit(None, pl.String).alias(c))
    return filled


def build(settings: Settings, d: date, names: list[str] | None = None, dry_run: bool = False) -> AudienceRun:
    """Build (and unless ``dry_run`` publish) the declared audiences for date ``d``."""
    cfg = settings.audiences
    book = load_audiences(settings.audiences_file, list(settings.tasks))
    specs = book.ordered(names)
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    SnapshotStore(lake).require_fresh(d, settings.scoring.max_staleness_days, "audiences")
    tasks = sorted({s.task for s in specs} | {t for t in settings.tasks if f"{t}_" in " ".join(s.rule for s in specs)})
    cands, scores = candidates(settings, lake, d, tasks)
    sel = select_all(cands, specs, d, cfg.frequency_cap, cfg.control_fraction)
    models = score_models(scores)
    reasons = add_reasons(settings, sel, cands, models)
    salt = resolve_salt(settings)
    for s in sel:
        s.members = s.members.with_columns(pseudonymize(s.members[KEY], salt))
    run = AudienceRun(d, sel, models=models, dry_run=dry_run)
    dims = [c for c in ("country", "lifecycle_stage", "gender", "age_band") if c in cands.columns]
    for s in sel:
        base = cands.filter(pl.col(f"{s.spec.task}_score").is_not_null()).select(KEY, *dims)
        run.compositions.append(
            compare(
                s.spec.name,
                base.join(s.members.select(KEY), on=KEY, how="semi"),
                base,
                cfg.composition_max_ratio,
                cfg.composition_min_share,
            )
        )
    for comp in run.compositions:
        for w in comp.warnings:
            log.warning("composition: %s", w)
    if not dry_run:
        publish(settings, lake, run, book, scores, reasons)
    return run


def manifest(run: AudienceRun, s: Selection, rule_hash: str) -> dict[str, Any]:
    """What an export is: counts, models, snapshot and rule digest (no timestamps: reruns are byte-identical)."""
    return {
        "audience": s.spec.name,
        "dt": run.date.isoformat(),
        "feature_snapshot": run.date.isoformat(),
        "rule": s.spec.rule,
        "rule_hash": rule_hash,
        "offer": s.spec.offer.model_dump(),
        "counts": {
            "matched": s.matched,
            "deduplicated": s.deduplicated,
            "treatment": s.treatment,
            "control": s.control,
            "capped": s.capped,
            "suppressed": dict(s.suppressed),
        },
        "channels": dict(
            sorted(Counter(s.members.filter(pl.col("group") == "treatment")["channel"].to_list()).items())
        ),
        "models": run.models,
    }


def publish(
    settings: Settings,
    lake: Lake,
    run: AudienceRun,
    book: Any,
    scores: dict[str, pl.DataFrame],
    reasons: dict[str, pl.DataFrame],
) -> None:
    day = run.date.isoformat()
    store = open_store(settings.export_uri, settings.s3_endpoint_url)
    for task, table in reasons.items():  # the day's scores again, with the members' reason codes
        m = run.models[task]
        publish_frame(
            lake, task, day, with_reasons(scores[task], table), m["model_name"], m["model_version"], m["run_id"]
        )
    for s in run.selections:
        doc = manifest(run, s, book.rule_hash(s.spec))
        lake.write_partition(ZONE, "", {"audience": s.spec.name, "dt": day}, s.members.to_arrow(), doc)
        treated = s.members.filter(pl.col("group") == "treatment").sort("rank")
        run.exports[s.spec.name] = publish_export(store, s.spec.name, day, csv_bytes(treated), doc)
    crm = settings.crm_db_url
    if crm:
        treated = pl.concat([s.members.filter(pl.col("group") == "treatment") for s in run.selections])
        write_crm(crm, day, treated, [s.spec.name for s in run.selections])
    lake.store.put_text(
        f"reports/audiences/dt={day}/composition.md", markdown(run.compositions, f"Audience composition {day}")
    )
    lake.write_json(f"reports/audiences/dt={day}/summary.json", run.rows())


def read_members(settings: Settings, audience: str, d: date) -> pl.DataFrame:
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    m = _read(lake, ZONE, {"audience": audience, "dt": d.isoformat()})
    if m is None:
        raise RequestError(f"audience {audience!r} at dt={d} is not published")
    return m


__all__ = ["AudienceRun", "build", "read_members"]
