"""The rules that always hold, as pure functions over polars frames.

* suppression: global opt-out, no consent for any of the audience's channels, recent
  purchase (where the audience asks), frequency cap across campaigns, and for audiences
  ranked by uplift a predicted effect below ``min_uplift`` (a sleeping dog, whom a contact
  would harm), and for those ranked by incremental profit an expected profit below
  ``min_profit`` (a loss, by default) - each removed
  customer is counted under the first reason that applies, in that order;
* dedup: a customer is in at most one audience per date (priority order);
* channel: the first channel in the audience's order the customer consented to;
* control: a deterministic holdout from a hash of customer id + audience + date, so a
  rerun draws the same control group and different audiences draw independent ones;
* exploration (where the audience declares a share): that share of the members is a random
  draw from the eligible base instead of the top of the ranking, split 50/50 into treatment
  and control. Every member records how it was selected (``selection``: ``ranked`` or
  ``exploration``) and its chance of treatment (``p_treatment``), which is what an uplift
  model needs to learn from either kind.

The candidate frame has one row per customer with the snapshot features (consents
included), profile tags and ``<task>_score`` / ``<task>_decile`` columns, plus
``contacts_recent`` (contacts in the frequency window before the date).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import polars as pl

from propensity.audiences.spec import CONSENT_COLUMN, AudienceSpec
from propensity.errors import RequestError

KEY = "customer_id"
SUPPRESSION_REASONS = (
    "global_opt_out",
    "no_consent",
    "recent_purchase",
    "frequency_cap",
    "negative_uplift",
    "unprofitable",
)
MEMBER_SCHEMA = {
    "audience": pl.String,
    "dt": pl.Date,
    KEY: pl.String,
    "group": pl.String,
    "rank": pl.Int64,
    "channel": pl.String,
    "offer": pl.String,
    "offer_cost": pl.Float64,
    "task": pl.String,
    "score": pl.Float64,
    "decile": pl.Int8,
    "value": pl.Float64,
    "expected_value": pl.Float64,
    "selection": pl.String,
    "p_treatment": pl.Float64,
    "uplift": pl.Float64,
}
#: how a member was chosen: by its rank, or in the audience's random exploration slice
SELECTIONS = ("ranked", "exploration")
#: candidate columns with a campaign kind's predicted effect: ``uplift_<kind>``
UPLIFT_PREFIX = "uplift_"
#: an exploration slice's chance of treatment
EXPLORATION_TREATED = 0.5


def control_draw(ids: pl.Series, audience: str, d: date) -> np.ndarray:
    """Uniform [0, 1) per customer from SHA-256(customer id | audience | date): stable across reruns."""
    tag = f"|{audience}|{d.isoformat()}".encode()
    out = np.empty(len(ids), dtype=np.float64)
    for i, v in enumerate(ids.to_list()):
        h = hashlib.sha256(str(v).encode() + tag).digest()
        out[i] = int.from_bytes(h[:8], "big") / 2.0**64
    return out


def _flag(column: str, missing: bool = False) -> pl.Expr:
    """A 0/1 or boolean feature as a boolean; a missing consent is no consent, a missing opt-out is opted out."""
    return pl.col(column).cast(pl.Boolean).fill_null(missing)


def suppression_reason(c: pl.DataFrame, spec: AudienceSpec, cap: int, value_fill: float = 0.0) -> pl.Series:
    """The first suppression reason per candidate, or null when the customer may be contacted
    (``value_fill``: the value of a candidate without one, see :func:`incremental_profit`)."""
    consented = pl.any_horizontal([_flag(CONSENT_COLUMN[ch]) for ch in spec.channels])
    recent = (
        pl.col("recency_days").is_not_null() & (pl.col("recency_days") < spec.exclude_purchased_days)
        if spec.exclude_purchased_days
        else pl.lit(False)
    )
    floor = spec.min_profit if spec.rank == "incremental_profit" else None
    profit = incremental_profit(spec, f"{spec.task}_score", value_fill)
    loses_money = profit < floor if floor is not None else pl.lit(False)
    expr = (
        pl.when(_flag("global_opt_out", missing=True))
        .then(pl.lit("global_opt_out"))
        .when(~consented)
        .then(pl.lit("no_consent"))
        .when(recent)
        .then(pl.lit("recent_purchase"))
        .when(pl.col("contacts_recent").fill_null(0) >= cap)
        .then(pl.lit("frequency_cap"))
        .when(pl.col(uplift_column(spec)) < spec.min_uplift if spec.by_uplift else pl.lit(False))
        .then(pl.lit("negative_uplift"))
        .when(loses_money)
        .then(pl.lit("unprofitable"))
        .otherwise(pl.lit(None, pl.String))
    )
    return c.select(expr.alias("reason"))["reason"]


def uplift_column(spec: AudienceSpec) -> str:
    """The candidate column with the predicted effect of ``spec``'s campaign kind."""
    return UPLIFT_PREFIX + spec.uplift_kind()


def incremental_profit(spec: AudienceSpec, score: str, value_fill: float = 0.0) -> pl.Expr:
    """Expected profit of contacting a customer, against not contacting them:
    ``u * v * (margin - discount) - discount * p * v - cost * (p + u) - contact_cost``, with
    ``u`` the predicted effect on P(purchase), ``p`` the task score (P(purchase) without
    contact) and ``v`` the value column (an order's value): the margin of the incremental
    orders net of their discount, the discount given away on the orders that would have
    happened anyway (cannibalised), the offer's cost per redemption, the contact's cost.

    A customer without a value (no order yet, so no average order value) counts at
    ``value_fill``, the median of the audience's matched candidates (:func:`value_prior`): as 0
    every incremental order of a new customer was worth nothing, so the ranking preferred
    anyone without a purchase history to every buyer, whatever their predicted effect."""
    u = pl.col(uplift_column(spec))
    p = pl.col(score)
    v = pl.col(spec.value or "").cast(pl.Float64).fill_null(value_fill)
    o = spec.offer
    return u * v * (spec.margin - o.discount) - o.discount * p * v - o.cost * (p + u) - spec.contact_cost


def value_prior(matched: pl.DataFrame, spec: AudienceSpec) -> float:
    """The median of ``spec``'s value column over the matched candidates that have one (0 when none do)."""
    if not spec.value or spec.value not in matched.columns:
        return 0.0
    med = matched[spec.value].cast(pl.Float64).median()
    return float(med) if med is not None else 0.0


def first_channel(c: pl.DataFrame, channels: list[str]) -> pl.Series:
    expr = pl.lit(None, pl.String)
    for ch in reversed(channels):
        expr = pl.when(_flag(CONSENT_COLUMN[ch])).then(pl.lit(ch)).otherwise(expr)
    return c.select(expr.alias("channel"))["channel"]


@dataclass
class Selection:
    """One audience's outcome at one date."""

    spec: AudienceSpec
    members: pl.DataFrame
    matched: int = 0
    deduplicated: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)
    capped: int = 0

    @property
    def treatment(self) -> int:
        return int((self.members["group"] == "treatment").sum())

    @property
    def control(self) -> int:
        return int((self.members["group"] == "control").sum())


def select_one(
    candidates: pl.DataFrame,
    spec: AudienceSpec,
    d: date,
    taken: set[str],
    cap: int,
    control_fraction: float,
) -> Selection:
    """Rule -> dedup -> suppression -> rank -> size/budget -> control split -> channel."""
    score, decile = f"{spec.task}_score", f"{spec.task}_decile"
    for col in (score, decile):
        if col not in candidates.columns:
            raise RequestError(f"audience {spec.name!r}: column {col!r}: rule needs_scores: no {spec.task} scores")
    ranked_by = pl.col(score).is_not_null()
    if spec.by_uplift:
        if uplift_column(spec) not in candidates.columns:
            raise RequestError(
                f"audience {spec.name!r}: rank {spec.rank} needs the predictions of "
                f"propensity-uplift-{spec.uplift_kind()}: none were made (train it with train --uplift)"
            )
        ranked_by = ranked_by & pl.col(uplift_column(spec)).is_not_null()
    try:
        matched = candidates.filter(ranked_by & spec.expr().fill_null(False))
    except pl.exceptions.PolarsError as exc:
        raise RequestError(f"audience {spec.name!r}: rule {spec.rule!r} cannot be evaluated: {exc}") from exc
    sel = Selection(spec, pl.DataFrame(schema=MEMBER_SCHEMA), matched=matched.height)
    fresh = matched.filter(~pl.col(KEY).is_in(list(taken)))
    sel.deduplicated = matched.height - fresh.height
    fill = value_prior(matched, spec) if spec.rank == "incremental_profit" else 0.0
    reason = suppression_reason(fresh, spec, cap, fill)
    sel.suppressed = {r: int((reason == r).sum()) for r in SUPPRESSION_REASONS}
    ok = fresh.filter(reason.is_null())
    value = pl.col(spec.value).cast(pl.Float64).fill_null(0.0) if spec.value else pl.lit(None, pl.Float64)
    if spec.rank == "incremental_profit":
        worth = incremental_profit(spec, score, fill)
    elif spec.value:
        worth = pl.col(score) * pl.col("value")
    else:
        worth = pl.lit(None, pl.Float64)
    uplift = pl.col(uplift_column(spec)) if spec.by_uplift else pl.lit(None, pl.Float64)
    ranked = ok.with_columns(value.alias("value")).with_columns(worth.alias("expected_value"), uplift.alias("uplift"))
    if spec.rank == "random":  # a draw independent of the control split's (different salt)
        ranked = ranked.with_columns(pl.Series("__order", control_draw(ranked[KEY], "rank:" + spec.name, d)))
        rank_col = "__order"
    else:
        rank_col = {"expected_value": "expected_value", "incremental_profit": "expected_value", "uplift": "uplift"}.get(
            spec.rank, score
        )
    ranked = ranked.sort([rank_col, KEY], descending=[True, False], nulls_last=True)
    fraction = spec.control_fraction if spec.control_fraction is not None else control_fraction
    explore = exploration_slice(ranked[KEY], spec, d)
    is_control = np.where(
        explore,
        control_draw(ranked[KEY], "explore:" + spec.name, d) < 1.0 - EXPLORATION_TREATED,
        control_draw(ranked[KEY], spec.name, d) < fraction,
    )
    treat_cap = spec.treatment_cap()
    if treat_cap is not None:  # an exploration slice larger than the budget is cut to it as well
        explore &= np.cumsum(explore & ~is_control) <= treat_cap
    # the ranked members are a prefix of the ranking (a clean top-N of what exploration left);
    # both kinds count against the size and the budget
    order = np.flatnonzero(~explore)
    fits = np.arange(len(order)) < spec.max_size - int(explore.sum())
    if treat_cap is not None:
        fits &= np.cumsum(~is_control[order]) <= treat_cap - int((explore & ~is_control).sum())
    n_ranked = int(np.argmin(fits)) if not fits.all() else len(order)
    keep = explore.copy()
    keep[order[:n_ranked]] = True
    sel.capped = len(order) - n_ranked
    top = ranked.filter(pl.Series(keep))
    positions = np.flatnonzero(keep)
    is_control = is_control[keep]
    explored = explore[keep]
    members = top.select(
        pl.lit(spec.name).alias("audience"),
        pl.lit(d).alias("dt"),
        pl.col(KEY),
        pl.Series("group", np.where(is_control, "control", "treatment")),
        pl.Series("rank", positions + 1, dtype=pl.Int64),
        first_channel(top, spec.channels).alias("channel"),
        pl.lit(spec.offer.code).alias("offer"),
        pl.lit(spec.offer.cost).alias("offer_cost"),
        pl.lit(spec.task).alias("task"),
        pl.col(score).alias("score"),
        pl.col(decile).cast(pl.Int8).alias("decile"),
        pl.col("value"),
        pl.col("expected_value"),
        pl.Series("selection", np.where(explored, SELECTIONS[1], SELECTIONS[0])),
        pl.Series("p_treatment", np.where(explored, EXPLORATION_TREATED, 1.0 - fraction)),
        pl.col("uplift"),
    )
    sel.members = members.cast(MEMBER_SCHEMA)  # type: ignore[arg-type]
    return sel


def exploration_slice(ids: pl.Series, spec: AudienceSpec, d: date) -> np.ndarray:
    """Which of the eligible customers ``ids`` form the audience's exploration slice: the
    ``exploration`` share of its size (of ``max_size``, or of the eligible base when smaller),
    those with the lowest draw of a hash salted by the audience and date, so the slice is a
    uniform random sample of the eligible base, the same on a rerun."""
    out = np.zeros(len(ids), dtype=bool)
    if not spec.exploration or not len(ids):
        return out
    n = round(spec.exploration * min(spec.max_size, len(ids)))
    out[np.argsort(control_draw(ids, "sample:" + spec.name, d), kind="stable")[:n]] = True
    return out


def select_all(
    candidates: pl.DataFrame,
    specs: list[AudienceSpec],
    d: date,
    cap: int,
    control_fraction: float,
    taken: set[str] | None = None,
) -> list[Selection]:
    """Every audience in priority order; earlier audiences take their members (control included) first.

    ``taken``: customers already in another audience of the date (a partial run's carried-over ones).
    """
    taken = set(taken or ())
    out = []
    for spec in specs:
        sel = select_one(candidates, spec, d, taken, cap, control_fraction)
        taken.update(sel.members[KEY].to_list())
        out.append(sel)
    return out
