"""Composition report: does an audience over- or under-represent a group of the eligible base?

Models never see gender or age band, but the features they use can correlate with them;
this report makes the outcome visible per audience (by country, lifecycle stage, gender and
age band, and by persona where a persona model is registered) and warns, on the first four,
when a group's share in the audience differs from its share in the base by more than
``audiences.composition_max_ratio`` (either way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

DIMENSIONS = ("country", "lifecycle_stage", "gender", "age_band")
#: dimensions shown but never warned about: an audience is meant to differ from its base by
#: behaviour, and the persona tag (propensity-personas@champion) is behaviour
SHOWN_ONLY = ("persona",)


@dataclass
class Composition:
    audience: str
    rows: list[dict] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def shares(df: pl.DataFrame, dim: str) -> dict[str, float]:
    if df.height == 0 or dim not in df.columns:
        return {}
    counts = df.select(pl.col(dim).fill_null("unknown").cast(pl.String)).to_series().value_counts()
    return {str(k): c / df.height for k, c in counts.iter_rows()}


def compare(
    audience: str, members: pl.DataFrame, base: pl.DataFrame, max_ratio: float, min_share: float
) -> Composition:
    out = Composition(audience)
    for dim in DIMENSIONS + SHOWN_ONLY:
        a, b = shares(members, dim), shares(base, dim)
        for group in sorted(set(a) | set(b)):
            sa, sb = a.get(group, 0.0), b.get(group, 0.0)
            ratio = sa / sb if sb else float("inf")
            out.rows.append({"dimension": dim, "group": group, "audience": sa, "base": sb, "ratio": ratio})
            outside = ratio > max_ratio or ratio < 1 / max_ratio
            if dim in DIMENSIONS and members.height and sb >= min_share and outside:
                out.warnings.append(
                    f"{audience}: {dim}={group} is {sa:.1%} of the audience vs {sb:.1%} of the eligible base "
                    f"(ratio {ratio:.2f}, limit {max_ratio:g})"
                )
    return out


def markdown(reports: list[Composition], title: str) -> str:
    lines = [f"# {title}", ""]
    for r in reports:
        lines += [f"## {r.audience}", ""]
        lines += [f"- WARNING: {w}" for w in r.warnings] or ["- no group outside the allowed ratio"]
        lines += ["", "| dimension | group | audience | base | ratio |", "|---|---|---|---|---|"]
        for row in r.rows:
            shares = f"{row['audience']:.1%} | {row['base']:.1%} | {row['ratio']:.2f}"
            lines.append(f"| {row['dimension']} | {row['group']} | {shares} |")
        lines.append("")
    return "\n".join(lines)
