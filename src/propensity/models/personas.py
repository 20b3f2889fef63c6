"""Personas: behavioural segments learnt from the data, with names a marketer can say.

k-means (scikit-learn) on standardised profile and behaviour features of a snapshot, with
``k`` chosen by the silhouette within a configured range. Each cluster is named from its
centroid's two most distinctive traits (the largest standardised distances from the
population's mean, from :data:`TRAITS`) and a noun for who is in it (buyers or browsers), for
example "bargain-hunting mobile browsers".

Names are stable across retrains: a new centroid inherits the name of the previous model's
centroid it is matched to (the Hungarian assignment of standardised distances, both sides in
the new model's scale), when the two are each other's nearest and within
:data:`SAME_PERSONA` of each other. Only new or moved clusters get new names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: feature -> (word when high, word when low), in order of preference when two traits tie.
#: Counts and money are log-scaled first (heavy tails would otherwise make every cluster
#: about its outliers).
TRAITS: dict[str, tuple[str, str]] = {
    "discount_order_share_365d": ("bargain-hunting", "full-price"),
    "revenue_365d": ("big-spending", "low-spending"),
    "orders_365d": ("frequent", "occasional"),
    "recency_days": ("lapsing", "recent"),
    "aov_365d": ("big-basket", "small-basket"),
    "sessions_90d": ("engaged", "quiet"),
    "mobile_share_30d": ("mobile", "desktop"),
    "app_share_30d": ("app-loyal", "web"),
    "category_entropy": ("eclectic", "focused"),
    "cart_abandonment_90d": ("cart-abandoning", "decisive"),
    "tenure_days": ("long-standing", "new"),
    "avg_price_viewed_90d": ("premium-browsing", "budget-browsing"),
}
LOGGED = frozenset({"revenue_365d", "orders_365d", "aov_365d", "sessions_90d", "avg_price_viewed_90d"})
#: rows the silhouette is computed on: it is quadratic in rows
SILHOUETTE_ROWS = 5_000
#: standardised distance under which a new centroid keeps the name of the previous persona it
#: is matched to (and each is the other's nearest): on the test shop, two weeks of growth moved
#: the largest cluster's centroid by 1.06, and the other clusters lay 2.8 and more away
SAME_PERSONA = 2.0


def design(df: pd.DataFrame) -> pd.DataFrame:
    """The traits of ``df`` (a snapshot's features) as numbers: money and counts log-scaled,
    missing values (no orders, no sessions) as the trait's median."""
    cols = {c: pd.to_numeric(df[c], errors="coerce") if c in df.columns else np.nan for c in TRAITS}
    x = pd.DataFrame(cols, index=df.index).astype(float)
    for c in LOGGED:
        x[c] = np.log1p(x[c].clip(lower=0))
    return x


@dataclass
class Personas:
    """A fitted persona model: the scaler (trait means and spreads), centroids and names."""

    mean: np.ndarray
    scale: np.ndarray
    fill: np.ndarray  #: each trait's median, for missing values
    centroids: np.ndarray  #: standardised, k x traits
    names: list[str]
    silhouette: float
    silhouettes: dict[int, float] = field(default_factory=dict)
    traits: list[str] = field(default_factory=lambda: list(TRAITS))

    @property
    def k(self) -> int:
        return len(self.names)

    def standardise(self, df: pd.DataFrame) -> np.ndarray:
        x = design(df)[self.traits].to_numpy()
        x = np.where(np.isnan(x), self.fill[None, :], x)
        return (x - self.mean) / self.scale

    def assign(self, df: pd.DataFrame) -> np.ndarray:
        """Each row's persona name (its nearest centroid)."""
        z = self.standardise(df)
        d = ((z[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        return np.array(self.names, dtype=object)[d.argmin(axis=1)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "traits": self.traits,
            "mean": self.mean.tolist(),
            "scale": self.scale.tolist(),
            "fill": self.fill.tolist(),
            "centroids": self.centroids.tolist(),
            "names": self.names,
            "silhouette": self.silhouette,
            "silhouettes": {str(k): v for k, v in self.silhouettes.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Personas:
        return cls(
            mean=np.array(d["mean"]),
            scale=np.array(d["scale"]),
            fill=np.array(d["fill"]),
            centroids=np.array(d["centroids"]),
            names=list(d["names"]),
            silhouette=float(d["silhouette"]),
            silhouettes={int(k): float(v) for k, v in d.get("silhouettes", {}).items()},
            traits=list(d["traits"]),
        )


def name_of(centroid: np.ndarray, buyers: float, traits: list[str], taken: set[str]) -> str:
    """Two most distinctive traits of a standardised ``centroid`` and a noun (buyers when at
    least half the cluster has ordered), a third trait when the name is taken."""
    order = np.argsort(-np.abs(centroid), kind="stable")
    words = [TRAITS[traits[i]][0 if centroid[i] > 0 else 1] for i in order]
    noun = "buyers" if buyers >= 0.5 else "browsers"
    for n in range(2, len(words) + 1):
        name = " ".join([*words[:n], noun])
        if name not in taken:
            return name
    return f"{' '.join(words[:2])} {noun} {len(taken)}"


def fit_personas(
    df: pd.DataFrame, k_range: tuple[int, int] = (3, 8), seed: int = 0, previous: Personas | None = None
) -> Personas:
    """k-means on ``df``'s standardised traits for each ``k`` in ``k_range`` (inclusive); the ``k``
    with the best silhouette (on a fixed sample) wins. Names come from ``previous`` where a
    centroid matches one of its personas, else from the centroid's traits."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = design(df)
    traits = [c for c in TRAITS if x[c].notna().any() and x[c].std() > 0]
    raw = x[traits].to_numpy()
    fill = np.nanmedian(raw, axis=0)
    raw = np.where(np.isnan(raw), fill[None, :], raw)
    mean, scale = raw.mean(axis=0), raw.std(axis=0)
    scale[scale == 0] = 1.0
    z = (raw - mean) / scale
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(z), min(len(z), SILHOUETTE_ROWS), replace=False)
    fits, scores = {}, {}
    for k in range(k_range[0], k_range[1] + 1):
        if k >= len(z):
            break
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(z)
        fits[k], scores[k] = km, float(silhouette_score(z[sample], km.labels_[sample]))
    if not fits:
        raise ValueError(f"personas: {len(z)} customers are too few for k in {k_range}")
    best = max(scores, key=lambda k: (scores[k], -k))
    km = fits[best]
    centroids = km.cluster_centers_
    # a stable order: largest cluster first
    sizes = np.bincount(km.labels_, minlength=best)
    order = np.argsort(-sizes, kind="stable")
    centroids = centroids[order]
    labels = np.argsort(order)[km.labels_]
    ordered = pd.to_numeric(df["orders_total"], errors="coerce").fillna(0).to_numpy() > 0
    names: list[str | None] = [None] * best
    if previous is not None:
        prev = previous_centroids(previous, traits, mean, scale)
        cost = np.sqrt(((centroids[:, None, :] - prev[None, :, :]) ** 2).sum(axis=2))
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols, strict=True):
            mutual = cost[r].argmin() == c and cost[:, c].argmin() == r
            if mutual and cost[r, c] < SAME_PERSONA:
                names[r] = previous.names[c]
    taken = {n for n in names if n}
    for i in range(best):
        if names[i] is None:
            names[i] = name_of(centroids[i], float(ordered[labels == i].mean()), traits, taken)
            taken.add(names[i])
    return Personas(
        mean=mean,
        scale=scale,
        fill=fill,
        centroids=centroids,
        names=[str(n) for n in names],
        silhouette=scores[best],
        silhouettes=scores,
        traits=traits,
    )


def previous_centroids(previous: Personas, traits: list[str], mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``previous``'s centroids in the new model's standardised scale, over ``traits`` (a trait
    the previous model lacked sits at the new mean)."""
    raw = previous.centroids * previous.scale + previous.mean  # back to trait units
    idx = {t: i for i, t in enumerate(previous.traits)}
    cols = [raw[:, idx[t]] if t in idx else np.full(len(raw), mean[j]) for j, t in enumerate(traits)]
    return (np.column_stack(cols) - mean) / scale
