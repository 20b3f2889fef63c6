"""Campaign audiences: scores + profile tags -> rules -> suppression -> control groups -> exports.

:func:`build` is the whole stage for one date. It reads the day's published scores
(``propensity score``), the snapshot's features and profile tags and recent campaign
contacts; applies the declared audiences (:mod:`.spec`) under the rules that always hold
(:mod:`.select`); computes reason codes for members only; then, unless ``dry_run``,
publishes the date's audiences as one set (:mod:`.sets`): per audience the lake Parquet
(all members, control included) and the pseudonymous CSV export of the treatment group
(:mod:`.publish`), the CRM table where configured, then one commit manifest per store;
and the composition report (:mod:`.composition`). Consents are read at decision time
(:mod:`.consent`), never only from the cached snapshot.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import polars as pl

from propensity.audiences.composition import Composition, compare, markdown
from propensity.audiences.consent import latest_consent, overlay, still_contactable
from propensity.audiences.publish import csv_bytes, product_columns, pseudonymize, resolve_salt, write_crm
from propensity.audiences.select import KEY, SUPPRESSION_REASONS, UPLIFT_PREFIX, Selection, control_draw, select_all
from propensity.audiences.sets import (
    AudienceFiles,
    check_paths,
    publish_set,
    read_lake_set,
    read_set_members,
)
from propensity.audiences.spec import AudienceBook, AudienceSpec, load_audiences
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
from propensity.storage import Store, open_store

log = logging.getLogger(__name__)


@dataclass
class AudienceRun:
    date: date
    selections: list[Selection] = field(default_factory=list)
    compositions: list[Composition] = field(default_factory=list)
    exports: dict[str, str] = field(default_factory=dict)
    models: dict[str, dict[str, str]] = field(default_factory=dict)
    dry_run: bool = False
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Manifests of the audiences a partial run carried over from the date's published set."""

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
        short = {"global_opt_out": "opt-out", "no_consent": "no consent", "recent_purchase": "recent buy"}
        short.update(frequency_cap="freq cap", negative_uplift="harmed", unprofitable="loss")
        head = ["audience", "size", "treatment", "control", *(short[x] for x in SUPPRESSION_REASONS), "dedup"]
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
    treatment sends (the committed audience sets) that have not come back through
    campaign_contacts yet."""
    window = [(d - timedelta(days=i)).isoformat() for i in range(1, days + 1)]
    have = {p["dt"] for p in lake.partitions("clean", "campaign_contacts")}
    frames = []
    parts = [{"dt": x} for x in window if x in have]
    if parts:
        t = lake.read_table("clean", "campaign_contacts", columns=[KEY, "campaign_id"], where=parts)
        frames.append(pl.from_arrow(t))  # type: ignore[arg-type]
    for day in window:
        m = read_set_members(lake, day, columns=[KEY, "group", "audience", "dt"])
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
    settings: Settings, lake: Lake, d: date, tasks: list[str], consent: pl.DataFrame
) -> tuple[pl.DataFrame, dict[str, pl.DataFrame]]:
    """One row per customer: features (consents narrowed by ``consent``, the newest validated
    state: :mod:`.consent`), profile tags, every task's score and decile, recent contacts;
    and the scores frames read, per task."""
    day = d.isoformat()
    feats = _read(lake, "features", {"snapshot": day})
    profiles = _read(lake, "profiles", {"snapshot": day})
    if feats is None or profiles is None:
        raise RequestError(f"features/profiles at snapshot={day} are not published: run propensity score --date {day}")
    c = overlay(feats.join(profiles.drop("snapshot", strict=False), on=KEY, how="left"), consent)
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
    value_tasks = [t for t in tasks if settings.tasks[t].is_value]
    if value_tasks:  # read when a rule names value_tier (build)
        c = c.with_columns(predicted_value_tier(f"{value_tasks[0]}_score"))
    # a stable uniform [0, 1) per customer, for A/B splits declared in rules (e.g. customer_hash < 0.5)
    c = c.with_columns(pl.Series("customer_hash", control_draw(c[KEY], "customer_hash", date(1970, 1, 1))))
    contacts = recent_contacts(lake, d, settings.audiences.frequency_days)
    c = c.join(contacts, on=KEY, how="left").with_columns(pl.col("contacts_recent").fill_null(0))
    return c.sort(KEY), scores


def predicted_value_tier(score: str) -> pl.Expr:
    """``value_tier`` from a value task's predicted revenue (``score``) where the customer has
    one: the top 10% ``high``, the next 30% ``medium``, the rest ``low`` (the profile's cuts of
    past revenue, :func:`propensity.features.profiles.rank_profiles`). A customer outside the
    value task's population (inactive for its window) keeps the profile's tier. Profiles are
    published with the snapshot, before its scores exist, so the audiences read the predicted tier."""
    share = pl.col(score).rank("ordinal", descending=True) / pl.col(score).count()
    tier = (
        pl.when(pl.col(score).is_null())
        .then(pl.col("value_tier"))
        .when(share <= 0.1)
        .then(pl.lit("high"))
        .when(share <= 0.4)
        .then(pl.lit("medium"))
        .otherwise(pl.lit("low"))
    )
    return tier.alias("value_tier")


def with_uplift(settings: Settings, cands: pl.DataFrame, specs: list[AudienceSpec]) -> pl.DataFrame:
    """``cands`` with each uplift-ranked audience's predicted effects (``uplift_<kind>``),
    from the kind's champion uplift model on the candidates' snapshot features."""
    kinds = sorted(
        {s.uplift_kind() for s in specs if s.by_uplift} - {c.removeprefix(UPLIFT_PREFIX) for c in cands.columns}
    )
    if not kinds:
        return cands
    from propensity.models.uplift_train import effects_at, uplift_model_name

    frame = cands.to_pandas()
    for kind in kinds:
        try:
            effect = effects_at(settings, kind, frame)
        except Exception as exc:  # no registered champion, or one that cannot read these features
            raise RequestError(f"audiences: {uplift_model_name(kind)}@champion cannot score: {exc}") from exc
        cands = cands.with_columns(pl.Series(UPLIFT_PREFIX + kind, effect, dtype=pl.Float64))
    return cands


def with_products(settings: Settings, d: date, selections: list[Selection]) -> None:
    """Give the members of each ``offer.products: recommended`` audience their recommended
    products (``product_1..N``), from propensity-recommendations@champion at ``d``. Only
    selected members are looked up, so suppression has already been applied."""
    wanted = [s for s in selections if s.spec.offer.recommended]
    if not wanted:
        return
    from propensity.models.recommend_train import products_for

    ids = [c for s in wanted for c in s.members[KEY].to_list()]
    if not ids:
        return
    lists = products_for(settings, d, ids, settings.recommendations.products)
    for s in wanted:
        s.members = s.members.join(lists, on=KEY, how="left", maintain_order="left")


def with_product_columns(members: pl.DataFrame, n: int) -> pl.DataFrame:
    """``members`` with every ``product_i`` column last (null where not recommended): one schema
    for every audience of a set, whatever its offer."""
    products = product_columns(n)
    missing = [c for c in products if c not in members.columns]
    members = members.with_columns([pl.lit(None, pl.String).alias(c) for c in missing])
    return members.select([c for c in members.columns if c not in products] + products)


def with_personas(settings: Settings, cands: pl.DataFrame) -> pl.DataFrame:
    """``cands`` with the ``persona`` profile tag (propensity-personas@champion on the
    candidates' snapshot features), for rules and the composition report; unchanged while no
    persona model is registered (a rule that names ``persona`` then fails, naming the column)."""
    if not settings.personas.enabled or "persona" in cands.columns:
        return cands
    from propensity.models.personas_train import champion_personas

    model = champion_personas(settings)
    if model is None:
        return cands
    traits = cands.select([c for c in model.traits if c in cands.columns])  # not every candidate column
    return cands.with_columns(pl.Series("persona", model.assign(traits.to_pandas()), dtype=pl.String))


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


def kept_selections(
    lake: Lake, book: AudienceBook, day: str, names: list[str] | None, consent: pl.DataFrame
) -> tuple[list[Selection], dict[str, dict[str, Any]]]:
    """For a partial run (``names``), the date's other published audiences, carried over.

    Their members stay as published, except treatment members whose newest validated state
    revokes the chosen channel or opts them out (counted as ``revoked``): re-committing a
    date must not re-export someone who has since opted out. Audiences no longer declared
    are dropped. Returns the selections and their manifests.
    """
    doc = read_lake_set(lake, day) if names else None
    if doc is None:
        return [], {}
    declared = {a.name: a for a in book.audiences}
    others = [n for n in doc["audiences"] if n not in set(names or []) and n in declared]
    dropped = sorted(set(doc["audiences"]) - set(names or []) - set(others))
    if dropped:
        log.warning("audiences %s at dt=%s are no longer declared: dropped from the date's set", dropped, day)
    if not others:
        return [], {}
    members = read_set_members(lake, day)
    assert members is not None
    out, docs = [], {}
    for name in others:
        m = members.filter(pl.col("audience") == name)
        ok = still_contactable(m, consent) | (m["group"] != "treatment")
        kept_doc = dict(doc["manifests"][name])
        counts = dict(kept_doc["counts"])
        counts["revoked"] = counts.get("revoked", 0) + int((~ok).sum())
        sel = Selection(declared[name], m.filter(ok), matched=counts["matched"], deduplicated=counts["deduplicated"])
        sel.suppressed, sel.capped = dict(counts["suppressed"]), counts["capped"]
        counts.update(treatment=sel.treatment, control=sel.control)
        kept_doc["counts"] = counts
        out.append(sel)
        docs[name] = kept_doc
    return out, docs


def build(
    settings: Settings,
    d: date,
    names: list[str] | None = None,
    dry_run: bool = False,
    enrich: Callable[[pl.DataFrame], pl.DataFrame] | None = None,
) -> AudienceRun:
    """Build (and unless ``dry_run`` publish) the declared audiences for date ``d``.

    ``names`` rebuilds only those audiences: the date's other published audiences keep their
    members, take part in dedup, and the whole set is committed again as one. ``enrich``
    adds columns to the candidates before the rules run: a benchmark gives the simulator's
    true effects as ``uplift_oracle``, so an audience with ``uplift_model: oracle`` ranks by them.
    """
    cfg = settings.audiences
    book = load_audiences(settings.audiences_file, list(settings.tasks))
    specs = book.ordered(names)
    day = d.isoformat()
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    exports = open_store(settings.export_uri, settings.s3_endpoint_url)
    check_paths(lake, exports, day, [s.name for s in specs])
    SnapshotStore(lake).require_fresh(d, settings.scoring.max_staleness_days, "audiences")
    consent = latest_consent(lake)
    kept, kept_docs = kept_selections(lake, book, day, names, consent)
    all_specs = specs + [k.spec for k in kept]
    # the tasks whose columns rules and value rankings name (``<task>_score``), and the value tasks
    # when one names ``value_tier``: it is their predicted revenue's (predicted_value_tier)
    rules = " ".join([s.rule for s in all_specs] + [s.value or "" for s in all_specs])
    named = {t for t, cfg in settings.tasks.items() if f"{t}_" in rules or (cfg.is_value and "value_tier" in rules)}
    tasks = sorted({s.task for s in all_specs} | named)
    cands, scores = candidates(settings, lake, d, tasks, consent)
    cands = with_uplift(settings, enrich(cands) if enrich else cands, specs)
    cands = with_personas(settings, cands)
    taken = {c for k in kept for c in k.members[KEY].to_list()}
    sel = select_all(cands, specs, d, cfg.frequency_cap, cfg.control_fraction, taken=taken)
    with_products(settings, d, sel)
    models = score_models(scores)
    reasons = add_reasons(settings, sel, cands, models)
    salt = resolve_salt(settings)
    for s in sel:
        s.members = s.members.with_columns(pseudonymize(s.members[KEY], salt))
    ordered = sorted(sel + kept, key=lambda s: (s.spec.priority, s.spec.name))
    run = AudienceRun(d, ordered, models=models, dry_run=dry_run, kept=kept_docs)
    dims = [c for c in ("country", "lifecycle_stage", "gender", "age_band", "persona") if c in cands.columns]
    for s in run.selections:
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
        publish(settings, lake, exports, run, book, scores, reasons)
    return run


def manifest(run: AudienceRun, s: Selection, rule_hash: str) -> dict[str, Any]:
    """What an export is: counts, models, snapshot and rule digest (no timestamps: reruns are byte-identical)."""
    if s.spec.name in run.kept:
        return run.kept[s.spec.name]
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
            "revoked": 0,
        },
        "channels": dict(
            sorted(Counter(s.members.filter(pl.col("group") == "treatment")["channel"].to_list()).items())
        ),
        "models": {s.spec.task: run.models[s.spec.task]},
    }


def publish(
    settings: Settings,
    lake: Lake,
    exports: Store,
    run: AudienceRun,
    book: AudienceBook,
    scores: dict[str, pl.DataFrame],
    reasons: dict[str, pl.DataFrame],
) -> None:
    """Scores with reason codes, then the date's whole audience set (:mod:`.sets`), then reports."""
    day = run.date.isoformat()
    for task, table in reasons.items():  # the day's scores again, with the members' reason codes
        m = run.models[task]
        publish_frame(
            lake, task, day, with_reasons(scores[task], table), m["model_name"], m["model_version"], m["run_id"]
        )
    parts = []
    n = settings.recommendations.products
    for s in run.selections:
        members = with_product_columns(s.members, n)
        treated = members.filter(pl.col("group") == "treatment").sort("rank")
        products = product_columns(n) if s.spec.offer.recommended else None
        parts.append(
            AudienceFiles(s.spec.name, members, csv_bytes(treated, products), manifest(run, s, book.rule_hash(s.spec)))
        )
    crm = settings.crm_db_url
    deliver = None
    if crm:
        treated = pl.concat([p.members.filter(pl.col("group") == "treatment") for p in parts])

        def deliver() -> None:
            write_crm(crm, day, treated)

    run.exports = publish_set(lake, exports, day, parts, deliver)
    lake.store.put_text(
        f"reports/audiences/dt={day}/composition.md", markdown(run.compositions, f"Audience composition {day}")
    )
    lake.write_json(f"reports/audiences/dt={day}/summary.json", run.rows())


def read_members(settings: Settings, audience: str, d: date) -> pl.DataFrame:
    """One audience's members (control included) from the date's committed set."""
    lake = Lake.open(settings.lake_uri, settings.s3_endpoint_url)
    m = read_set_members(lake, d.isoformat())
    if m is None or audience not in m["audience"].unique().to_list():
        raise RequestError(f"audience {audience!r} at dt={d} is not published")
    return m.filter(pl.col("audience") == audience)


__all__ = ["AudienceRun", "build", "read_members"]
